import pytest
import torch
from transformers import AutoModel

from fellrec.models.adapters import ClientAdapters, LoRASettings


@pytest.fixture()
def adapters(tiny_encoder_dir):
    return ClientAdapters(AutoModel.from_pretrained(tiny_encoder_dir), LoRASettings(r=2), 3)


def test_clients_start_identical_and_only_adapters_train(adapters):
    theta = adapters.get_matrix()
    assert theta.shape == (3, adapters.num_parameters)
    assert torch.equal(theta[0], theta[1]) and torch.equal(theta[0], theta[2])
    # 3 layers x (query, value) x (A: r x 32 + B: 32 x r) with r = 2
    assert adapters.num_parameters == 3 * 2 * (2 * 32 + 32 * 2)
    trainable = [n for n, p in adapters.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and "client_0" in n for n in trainable)


def test_activation_switches_the_trainable_adapter(adapters):
    adapters.activate(2)
    trainable = [n for n, p in adapters.model.named_parameters() if p.requires_grad]
    assert all("client_2" in n for n in trainable)


def test_vectors_round_trip_per_client(adapters):
    new = torch.randn(3, adapters.num_parameters)
    adapters.set_matrix(new)
    assert torch.allclose(adapters.get_matrix(), new)
    state = adapters.state_dict(1)
    assert list(state) == adapters.keys
    assert torch.allclose(torch.cat([v.reshape(-1) for v in state.values()]), new[1])
    with pytest.raises(ValueError, match="expected"):
        adapters.set_vector(0, torch.zeros(5))


def test_bad_target_modules_name_the_setting(tiny_encoder_dir):
    with pytest.raises(ValueError, match="target_modules"):
        ClientAdapters(
            AutoModel.from_pretrained(tiny_encoder_dir), LoRASettings(target_modules=["nope"]), 2
        )

"""``model.hidden_defence``: per-token clipping and Gaussian noise on the states that cross."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
from transformers import AutoModelForCausalLM

from fellrec.cli import main
from fellrec.models.front_copy import front_copy_recovery, front_states
from fellrec.models.hidden_defence import (
    ClientNoise,
    HiddenDefence,
    clip_token_norms,
    defend_hidden_states,
    stream_seed,
)
from fellrec.models.inversion import token_recovery
from fellrec.models.split import make_trunk
from fellrec.models.transport import LocalTransport
from fellrec.training.host.module_settings import ModuleSettings
from test_cost_attack_commands import write_config
from test_inversion import mixing_llama, random_batches


def test_clipping_scales_long_vectors_to_the_bound_and_keeps_short_ones():
    hidden = torch.tensor([[[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]]])  # norms 5, 0.5, 0
    clipped = clip_token_norms(hidden, 1.0)
    expected = torch.tensor([[[0.6, 0.8], [0.3, 0.4], [0.0, 0.0]]])
    assert torch.allclose(clipped, expected, atol=1e-7)


def test_the_gradient_flows_through_the_clipping():
    hidden = torch.tensor([3.0, 4.0], requires_grad=True)
    (clip_token_norms(hidden, 1.0) * torch.tensor([1.0, 0.0])).sum().backward()
    # d(h / |h|)/dh . g = (I - u u^T) g / |h| with u = (0.6, 0.8), g = (1, 0), |h| = 5.
    assert hidden.grad is not None
    assert torch.allclose(hidden.grad, torch.tensor([0.64 / 5, -0.48 / 5]), atol=1e-7)


def test_noise_is_clip_times_the_multiplier_drawn_from_the_generator():
    hidden = torch.tensor([[3.0, 4.0], [0.3, 0.4]])
    defended = defend_hidden_states(hidden, 2.0, 0.5, torch.Generator().manual_seed(7))
    draw = torch.randn((2, 2), generator=torch.Generator().manual_seed(7))
    # Clipped to norm 2: (1.2, 1.6); the short one stays; noise std 0.5 * 2 = 1.
    expected = torch.tensor([[1.2, 1.6], [0.3, 0.4]]) + draw * 1.0
    assert torch.allclose(defended, expected, atol=1e-6)
    assert torch.equal(defend_hidden_states(hidden, 2.0, 0.0), clip_token_norms(hidden, 2.0))


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"clip": 0.0}, "model.hidden_defence.clip must be > 0"),
        ({"clip": -1.0}, "model.hidden_defence.clip must be > 0"),
        ({"clip": math.inf}, "model.hidden_defence.clip must be > 0"),
        ({"clip": 1.0, "noise": -0.1}, "model.hidden_defence.noise must be >= 0"),
        ({"clip": 1.0, "noise": math.nan}, "model.hidden_defence.noise must be >= 0"),
        ({"noise": 0.5}, "set model.hidden_defence.clip too"),
    ],
)
def test_invalid_settings_are_refused_naming_the_key(settings, named):
    with pytest.raises(ValueError, match=re.escape(named)):
        HiddenDefence(**settings).validate()


def test_the_defence_needs_split_execution():
    with pytest.raises(ValueError, match=r"model\.hidden_defence defends the hidden states"):
        ModuleSettings(split_execution=False, hidden_defence=HiddenDefence(clip=1.0))
    settings = ModuleSettings(hidden_defence=HiddenDefence(clip=1.0, noise=0.1))
    assert settings.hparams["hidden_defence"] == {"clip": 1.0, "noise": 0.1, "seed": None}


def _step(model, settings, client: int = 2):
    """One split forward and backward of ``client``; what crossed, the output, a gradient."""
    model.zero_grad(set_to_none=True)
    transport = LocalTransport(record=True)
    defence = ClientNoise(settings, lambda: client) if settings is not None else None
    trunk = make_trunk(model, True, 1, 1, transport, defence=defence)
    ids, mask = random_batches(1, 500, seed=3)[0]
    torch.manual_seed(0)  # the same dropout draws in every call
    out = trunk(ids, mask)
    out.square().mean().backward()
    sent = transport.payloads[0].tensors["hidden_states"]
    grad = model.get_input_embeddings().weight.grad
    return sent, out.detach(), grad.clone()


def test_off_is_bit_identical_to_no_defence(tiny_llama_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    transport = LocalTransport(record=True)
    ids, mask = random_batches(1, 500, seed=3)[0]
    before = make_trunk(model, True, 1, 1, transport)(ids, mask)
    with pytest.raises(ValueError, match="needs an enabled"):
        ClientNoise(HiddenDefence(), lambda: 0)
    # The module's settings off: no defence reaches the trunk, the run is today's, bit for bit.
    settings = ModuleSettings(k_front=1, k_back=1)
    assert not settings.recommender_settings().hidden_defence.enabled
    assert settings.hparams["hidden_defence"] == {"clip": None, "noise": 0.0, "seed": None}
    again = make_trunk(model, True, 1, 1, LocalTransport(record=True), defence=None)(ids, mask)
    assert torch.equal(before, again)


def test_the_server_receives_the_defended_states_seeded_and_differentiable(tiny_llama_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    clean, _, _ = _step(model, None)
    defence = HiddenDefence(clip=0.5, noise=0.3, seed=11)
    sent, out, grad = _step(model, defence, client=2)
    # Exactly the clipped states plus noise from client 2's own stream of the seed.
    stream = torch.Generator().manual_seed(stream_seed(11, 2))
    assert torch.equal(sent, defence(clean, stream))
    assert not torch.equal(sent, clean)
    # A rerun with the same seed is bit-identical; gradients reach the client's embeddings.
    again = _step(model, defence, client=2)
    assert all(torch.equal(a, b) for a, b in zip(again, (sent, out, grad), strict=True))
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    # Another client, or no seed (fresh entropy), draws other noise; torch's own random state
    # (which the config seeds and the process transport sends) is not what the noise comes from.
    assert not torch.equal(_step(model, defence, client=3)[0], sent)
    assert not torch.equal(_step(model, HiddenDefence(clip=0.5, noise=0.3))[0], sent)
    # Clipping alone bounds every token's norm.
    clipped, _, _ = _step(model, HiddenDefence(clip=0.5))
    assert clipped.norm(dim=-1).max() <= 0.5 + 1e-5


def test_strong_noise_brings_both_attacks_to_chance():
    """No defence: the tiny model gives every token away; strong noise: chance (1/500)."""
    model = mixing_llama(0.2)
    public, victims = random_batches(20, 500, 1), random_batches(1, 500, 2, width=8)
    victims = [(ids[:6], mask[:6]) for ids, mask in victims]
    strong = HiddenDefence(clip=1.0, noise=5.0)
    (plain,) = token_recovery(model, public, victims, [0])
    (noised,) = token_recovery(model, public, victims, [0], defence=strong)
    assert plain["token_recovery"] >= 0.95
    assert noised["token_recovery"] < 0.05
    table = model.get_input_embeddings().weight
    states = front_states(model, victims, [1])
    (copy,) = front_copy_recovery(model, public, victims, states, table, shortlist=500)
    generator = torch.Generator().manual_seed(0)
    sent = {1: [strong(h, generator) for h in states[1]]}
    (defended,) = front_copy_recovery(
        model, public, victims, sent, table, shortlist=500, defence=strong
    )
    assert copy["token_recovery"] == 1.0
    assert defended["token_recovery"] < 0.05


def test_fellrec_attack_attacks_the_defended_states_and_records_the_setting(
    tmp_path, tiny_encoder_dir
):
    config = write_config(tmp_path, tiny_encoder_dir, False, recommender="sequential")
    found = {}
    for name, flags in (
        ("none", []),
        ("strong", ["--model.hidden_defence.clip", "1.0", "--model.hidden_defence.noise", "20"]),
    ):
        output = tmp_path / name
        args = ["attack", "--config", str(config), "--k-fronts", "1", "--output", str(output)]
        main([*args, "--public-texts", "60", "--victims", "8", *flags])
        found[name] = json.loads((output / "privacy.json").read_text())["privacy"]
    assert found["none"]["hidden_defence"] == {"clip": None, "noise": None, "noise_std": None}
    assert found["strong"]["hidden_defence"] == {"clip": 1.0, "noise": 20.0, "noise_std": 20.0}
    for attack in ("linear", "front_copy"):
        curves = {
            name: (privacy["curve"] if attack == "linear" else privacy["front_copy"]["curve"])
            for name, privacy in found.items()
        }
        assert curves["none"][0]["token_recovery"] >= 0.5, attack
        assert curves["strong"][0]["token_recovery"] <= 0.15, attack  # chance: 1/40


def test_a_deployed_client_runs_the_federations_defence():
    pytest.importorskip("flwr", reason="fellrec.deploy needs Flower (Python >= 3.11)")
    from fellrec.deploy.client_session import client_module_like
    from fellrec.training.host.federated_module import FederatedModule

    settings = HiddenDefence(clip=1.0, noise=0.1, seed=1)
    client = client_module_like(FederatedModule(hidden_defence=settings), 2)
    assert client.hidden_defence == settings
    assert client.recommender_settings().hidden_defence == settings


def test_each_round_draws_its_own_stream_and_a_resumed_round_replays_it(tmp_path, tiny_encoder_dir):
    from lightning.pytorch.callbacks import Callback

    from federation_helpers import tiny_run
    from fellrec.federation.strategies import FedAvg
    from fellrec.models.hidden_defence import ClientNoise

    noise = ClientNoise(HiddenDefence(clip=1.0, noise=0.5, seed=4), lambda: 0)
    states = torch.zeros(1, 3, 2)
    first = noise(states)
    noise.start("train", 1)
    second = noise(states)
    noise.start("train", 0)
    assert torch.equal(noise(states), first) and not torch.equal(first, second)
    # A pass replayed from the same parameters adds the same noise; from others, other noise;
    # an evaluation pass never adds a training round's noise.
    noise.start("train", 0, {0: 123})
    sent = noise(states)
    noise.start("train", 0, {0: 123})
    assert torch.equal(noise(states), sent)
    noise.start("train", 0, {0: 124})
    assert not torch.equal(noise(states), sent)
    noise.start("validation", 0, {0: 123})
    evaluated = noise(states)
    noise.start("test", 0, {0: 123})
    assert not torch.equal(evaluated, sent) and not torch.equal(noise(states), evaluated)
    with pytest.raises(ValueError, match="stage is one of"):
        noise.start("predict")

    class StopInRoundOne(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.current_epoch == 1 and batch_idx == 2:
                raise RuntimeError("simulated crash")

    def run(root, callbacks, ckpt_path=None):
        trainer, model, data, _ = tiny_run(
            root,
            tiny_encoder_dir,
            FedAvg(),
            rounds=2,
            model_options={"hidden_defence": HiddenDefence(clip=2.0, noise=0.2)},
            extra_callbacks=callbacks,
        )
        trainer.fit(model, datamodule=data, ckpt_path=ckpt_path)
        return model

    # Unseeded (fresh entropy): the resumed run keeps the interrupted one's base.
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(tmp_path / "cut", [StopInRoundOne()])
    saved = torch.load(tmp_path / "cut" / "checkpoints" / "last.ckpt", weights_only=True)
    resumed = run(tmp_path / "cut", [], ckpt_path="last")
    assert resumed.hidden_noise.base == saved["fellrec_hidden_noise_base"]
    # The last pass was a validation: its own stream, bound to the parameters it evaluated.
    assert resumed.hidden_noise._stream == ("validation", 0)

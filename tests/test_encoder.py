import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from fellrec.models.encoder import SequenceEncoderRecommender, pool
from fellrec.models.text import HistoryRenderer


@pytest.fixture(scope="module")
def recommender(tiny_encoder_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder_dir)
    titles = ["red apple pie", "blue sky", "green tea", "a much longer item title here"]
    renderer = HistoryRenderer(tokenizer, titles, 8, 32)
    return SequenceEncoderRecommender(AutoModel.from_pretrained(tiny_encoder_dir), renderer)


def test_mean_pooling_ignores_padding():
    hidden = torch.tensor([[[1.0, 1.0], [3.0, 3.0], [100.0, 100.0]]])
    assert torch.equal(pool(hidden, torch.tensor([[1, 1, 0]]), "mean"), torch.tensor([[2.0, 2.0]]))
    assert torch.equal(pool(hidden, torch.tensor([[1, 1, 0]]), "cls"), torch.tensor([[1.0, 1.0]]))


def test_item_table_matches_one_by_one_encoding(recommender):
    table = recommender.encode_items(batch_size=3)  # sorted by length, batched with padding
    assert table.shape == (4, 32)
    for item in range(4):
        ids, mask = recommender.renderer.render_items([item])
        with torch.no_grad():
            recommender.encoder.eval()
            single = recommender.encode(ids, mask)[0]
        assert torch.allclose(table[item], single, atol=1e-5)
    assert torch.allclose(table.norm(dim=1), torch.ones(4), atol=1e-5)


def test_full_softmax_loss_is_cross_entropy_of_scaled_cosines(recommender):
    table = recommender.encode_items()
    users = recommender.encode_histories(torch.tensor([[-1, 0], [1, 2]]))
    logits = users @ table.T / 0.05
    expected = torch.nn.functional.cross_entropy(logits, torch.tensor([2, 3]), reduction="none")
    got = recommender.loss(users, table, torch.tensor([2, 3]))
    assert torch.allclose(got, expected, atol=1e-5)


def test_sampled_negatives_loss_is_finite_and_differentiable(recommender):
    table = recommender.encode_items()
    recommender.encoder.train()
    users = recommender.encode_histories(torch.tensor([[0, 1]]))
    loss = recommender.loss(
        users, table, torch.tensor([3]), num_negatives=3, generator=torch.Generator().manual_seed(0)
    )
    loss.sum().backward()
    assert torch.isfinite(loss).all()
    assert any(p.grad is not None for p in recommender.encoder.parameters())


def test_invalid_settings_fail(recommender):
    with pytest.raises(ValueError, match="pooling"):
        SequenceEncoderRecommender(recommender.encoder, recommender.renderer, pooling="max")
    with pytest.raises(ValueError, match="temperature"):
        SequenceEncoderRecommender(recommender.encoder, recommender.renderer, temperature=0)

"""Per-item components: hybrid item vectors, biased cosine scores, parameter counts."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fellrec.models.item_components import (
    ItemComponents,
    ItemSettings,
    centered_text_table,
    gaussian_noise_scale,
    item_component_parameters,
    log_popularity_bias,
    noised_counts,
    ridge_from_text,
    rows_of,
)


def test_scores_are_scaled_cosines_plus_biases() -> None:
    items = ItemComponents(3, 2, ItemSettings(ids=False), temperature=0.5)
    with torch.no_grad():
        items.bias.copy_(torch.tensor([0.0, 1.0, -1.0]))
    users = torch.tensor([[3.0, 0.0]])  # cosine ignores the length
    vectors = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, 0.0]])
    # cos = (1, 0, -1); / 0.5 -> (2, 0, -2); + bias -> (2, 1, -3)
    torch.testing.assert_close(items.logits(users, vectors), torch.tensor([[2.0, 1.0, -3.0]]))


def test_candidate_scores_use_the_candidates_biases() -> None:
    items = ItemComponents(3, 2, ItemSettings(ids=False), temperature=1.0)
    with torch.no_grad():
        items.bias.copy_(torch.tensor([0.0, 1.0, 2.0]))
    users = torch.tensor([[1.0, 0.0]])
    candidates = torch.tensor([[2, 0]])
    vectors = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # (B, K, H)
    torch.testing.assert_close(
        items.logits(users, vectors, candidates), torch.tensor([[1.0 + 2.0, 0.0 + 0.0]])
    )


def test_hybrid_vector_is_text_plus_projected_id() -> None:
    items = ItemComponents(4, 3, ItemSettings(id_dim=2, bias=False), temperature=0.05)
    text = torch.randn(4, 3)
    expected = text + items.id_embedding @ items.id_projection.weight.T
    torch.testing.assert_close(items.item_vectors(text), expected)
    rows = torch.tensor([[3, 1]])
    torch.testing.assert_close(items.item_vectors(text[rows], rows), expected[rows])


def test_id_only_and_text_only_vectors() -> None:
    ids_only = ItemComponents(4, 3, ItemSettings(), temperature=0.05)
    torch.testing.assert_close(ids_only.item_vectors(None), ids_only.id_embedding)
    text_only = ItemComponents(4, 3, ItemSettings(ids=False), temperature=0.05)
    text = torch.randn(4, 3)
    assert torch.equal(text_only.item_vectors(text), text)
    with pytest.raises(ValueError, match=r"model\.items\.ids"):
        text_only.item_vectors(None)


def test_temperature_is_learned_or_fixed() -> None:
    learned = ItemComponents(2, 2, ItemSettings(), temperature=0.05)
    assert isinstance(learned.log_scale, torch.nn.Parameter)
    assert math.isclose(learned.scale.item(), 20.0, rel_tol=1e-6)
    fixed = ItemComponents(2, 2, ItemSettings(learn_temperature=False), temperature=0.05)
    assert "log_scale" not in dict(fixed.named_parameters())


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        (ItemSettings(), 10 * 8 + 10 + 1),  # ids at the hidden width, bias, temperature
        (ItemSettings(id_dim=2), 10 * 2 + 2 * 8 + 10 + 1),  # + the projection
        (ItemSettings(ids=False, learn_temperature=False), 10),
    ],
)
def test_counted_parameters_equal_the_built_ones(settings: ItemSettings, expected: int) -> None:
    built = sum(p.numel() for p in ItemComponents(10, 8, settings, 0.05).parameters())
    assert item_component_parameters(10, 8, settings) == built == expected


def test_centering_spreads_a_narrow_cone() -> None:
    torch.manual_seed(0)
    table = torch.randn(50, 16) * 0.1 + torch.ones(16)  # all rows point the same way
    raw = torch.nn.functional.normalize(table, dim=-1)
    assert float((raw @ raw.T).mean()) > 0.9
    centered = centered_text_table(table)
    torch.testing.assert_close(centered.norm(dim=-1), torch.ones(50))
    assert abs(float((centered @ centered.T).mean())) < 0.05


def test_invalid_settings_name_the_setting() -> None:
    with pytest.raises(ValueError, match=r"model\.items\.id_dim"):
        ItemSettings(id_dim=0).validate()
    with pytest.raises(ValueError, match=r"model\.items\.lr"):
        ItemSettings(lr=0.0).validate()
    with pytest.raises(ValueError, match=r"model\.items\.bias_init .*log_popularity"):
        ItemSettings(bias_init="popular").validate()
    with pytest.raises(ValueError, match=r"model\.items\.bias: true"):
        ItemSettings(bias=False, bias_init="log_popularity").validate()
    with pytest.raises(ValueError, match=r"model\.items\.weight_decay"):
        ItemSettings(weight_decay=-0.1).validate()
    with pytest.raises(ValueError, match=r"model\.items\.cold_start .*text_ridge"):
        ItemSettings(cold_start="knn").validate()
    with pytest.raises(ValueError, match=r"model\.items\.text: true"):
        ItemSettings(cold_start="text_ridge", text=False).validate()
    with pytest.raises(ValueError, match=r"model\.items\.cold_start_ridge"):
        ItemSettings(cold_start_ridge=0.0).validate()


def test_log_popularity_biases_are_centered_log_counts() -> None:
    # log(1 + (0, 1, 3, 7)) = (0, ln 2, ln 4, ln 8) = ln 2 * (0, 1, 2, 3); mean ln 2 * 1.5
    expected = math.log(2.0) * torch.tensor([-1.5, -0.5, 0.5, 1.5])
    torch.testing.assert_close(log_popularity_bias(torch.tensor([0.0, 1.0, 3.0, 7.0])), expected)
    # Alone, the biases' softmax is the add-one smoothed popularity distribution.
    counts = torch.tensor([0.0, 2.0, 5.0])
    torch.testing.assert_close(
        torch.softmax(log_popularity_bias(counts), 0), (counts + 1) / (counts + 1).sum()
    )
    with pytest.raises(ValueError, match=">= 0"):
        log_popularity_bias(torch.tensor([1.0, -1.0]))


def test_biases_start_from_popularity_only_with_matching_counts() -> None:
    items = ItemComponents(3, 2, ItemSettings(bias_init="log_popularity"), temperature=0.05)
    items.start_from_popularity(torch.tensor([0.0, 0.0, 3.0]))
    torch.testing.assert_close(
        items.bias.detach(), log_popularity_bias(torch.tensor([0.0, 0.0, 3.0]))
    )
    with pytest.raises(ValueError, match="3 items"):
        items.start_from_popularity(torch.ones(4))
    without = ItemComponents(3, 2, ItemSettings(bias=False), temperature=0.05)
    with pytest.raises(ValueError, match=r"model\.items\.bias"):
        without.start_from_popularity(torch.ones(3))


def test_row_gradients_sum_repeated_items_in_index_order() -> None:
    # float32 addition is not associative: 1e8 + 1 - 1e8 is 0 left to right, 1 in other orders.
    # rows_of must give the left-to-right sum, whatever the thread count (plain indexing adds
    # repeated rows with atomic adds in thread order on a multi-threaded CPU).
    table = torch.zeros(3, 2, requires_grad=True)
    items = torch.tensor([1, 0, 1, 1])
    upstream = torch.tensor([[1e8, 1.0], [5.0, 5.0], [1.0, 1e8], [-1e8, -1e8]])
    (rows_of(table, items) * upstream).sum().backward()
    assert table.grad is not None
    assert table.grad.tolist() == [[5.0, 5.0], [0.0, 0.0], [0.0, 0.0]]


def test_rows_of_a_bias_vector_keep_the_index_shape() -> None:
    bias = torch.tensor([0.5, -1.0, 2.0])
    picked = rows_of(bias, torch.tensor([[2, 0], [1, 1]]))
    assert picked.tolist() == [[2.0, 0.5], [-1.0, -1.0]]


def gaussian_delta(sigma: float, epsilon: float) -> float:
    """The exact delta of the Gaussian mechanism (sensitivity 1) at epsilon (Balle & Wang 2018)."""
    from scipy.stats import norm

    return float(
        norm.cdf(1 / (2 * sigma) - epsilon * sigma)
        - math.exp(epsilon) * norm.cdf(-1 / (2 * sigma) - epsilon * sigma)
    )


@pytest.mark.parametrize(("epsilon", "delta"), [(1.0, 1e-5), (4.0, 1e-6), (0.5, 1e-3)])
def test_count_noise_meets_its_privacy_guarantee(epsilon, delta) -> None:
    sigma = gaussian_noise_scale(epsilon, delta)
    # Enough noise: the exact privacy profile of the Gaussian mechanism stays within delta...
    assert gaussian_delta(sigma, epsilon) <= delta
    # ...and not absurdly much (RDP's bound is close to the exact one: within 25%).
    assert gaussian_delta(sigma / 1.25, epsilon) > delta


def test_bad_count_noise_settings_are_refused() -> None:
    with pytest.raises(ValueError, match=r"bias_init_epsilon must be > 0"):
        ItemSettings(bias_init="dp_log_popularity", bias_init_epsilon=0.0).validate()
    with pytest.raises(ValueError, match=r"bias_init_delta must be in \(0, 1\)"):
        ItemSettings(bias_init="dp_log_popularity", bias_init_delta=1.0).validate()
    with pytest.raises(ValueError, match=r"share_noise_ids must be >= 0"):
        ItemSettings(share_noise_ids=-0.1).validate()
    with pytest.raises(ValueError, match=r"share_noise_bias > 0 needs model.items.bias"):
        ItemSettings(bias=False, share_noise_bias=0.1).validate()


def test_noised_counts_add_seeded_noise_and_clip_at_zero() -> None:
    counts = torch.tensor([0.0, 5.0, 100.0])
    noise = torch.randn(3, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 2.0
    expected = (counts.double() + noise).clamp_min(0)
    found = noised_counts(counts, 2.0, torch.Generator().manual_seed(3))
    torch.testing.assert_close(found, expected)
    assert found.min() >= 0


def test_dp_popularity_start_differs_from_the_counts_and_repeats_with_its_seed() -> None:
    counts = torch.tensor([0.0, 0.0, 3.0, 50.0, 200.0])
    exact = ItemComponents(5, 2, ItemSettings(bias_init="log_popularity"), temperature=0.2)
    exact.start_from_popularity(counts)
    settings = ItemSettings(bias_init="dp_log_popularity", bias_init_epsilon=1.0)
    noisy = [ItemComponents(5, 2, settings, temperature=0.2) for _ in range(3)]
    for components, seed in zip(noisy, (7, 7, 8), strict=True):
        components.start_from_popularity(counts, seed=seed)
    assert torch.equal(noisy[0].bias, noisy[1].bias) and not torch.equal(
        noisy[0].bias, noisy[2].bias
    )
    assert not torch.allclose(noisy[0].bias, exact.bias)
    assert noisy[0].bias.argmax() == 4  # noise of ~4 interactions keeps the clear winner


def test_share_noise_moves_every_row_and_bias_but_not_the_temperature() -> None:
    settings = ItemSettings(share_noise_ids=0.5, share_noise_bias=2.0)
    items = ItemComponents(400, 8, settings, temperature=0.2)
    rows, bias, scale = items.id_embedding.clone(), items.bias.clone(), items.log_scale.clone()
    items.add_share_noise(torch.Generator().manual_seed(0))
    assert items.shares_noise
    assert ((items.id_embedding - rows).norm(dim=1) > 0).all() and (items.bias != bias).all()
    assert (items.id_embedding - rows).std().item() == pytest.approx(0.5, rel=0.05)
    assert (items.bias - bias).std().item() == pytest.approx(2.0, rel=0.15)
    assert torch.equal(items.log_scale, scale)
    assert not ItemComponents(3, 2, ItemSettings(), temperature=0.2).shares_noise


def test_the_share_noise_is_not_the_servers_to_replay(tmp_path, tiny_encoder_dir) -> None:
    """Seeded by a secret, not model.seed: unseeded runs differ, a seeded one reruns exactly."""
    from federation_helpers import tiny_run
    from fellrec.federation.strategies import Local

    def released(name: str, seed: int | None) -> torch.Tensor:
        items = ItemSettings(share_noise_ids=0.5, bias_init_seed=seed)
        trainer, model, data, _ = tiny_run(
            tmp_path / name,
            tiny_encoder_dir,
            Local(),
            rounds=1,
            model_options={"recommender": "sequential", "items": items},
        )
        trainer.fit(model, datamodule=data)
        return model.adapters.get_matrix()

    assert not torch.equal(released("a", None), released("b", None))  # same model.seed
    assert torch.equal(released("c", 3), released("d", 3))


def test_ridge_from_text_by_hand() -> None:
    # Known x = 0, 1, 2 with y = 0, 2, 4: centred x (-1, 0, 1), y (-2, 0, 2); Gram 2 + ridge,
    # cross term 4. Ridge 2: slope 4 / 4 = 1, so x = 3 gives mean 2 + (3 - 1) * 1 = 4.
    text = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    targets = torch.tensor([0.0, 2.0, 4.0, -99.0])  # the unknown row's value is never read
    known = torch.tensor([True, True, True, False])
    predicted = ridge_from_text(text, targets, known, ridge=2.0)
    torch.testing.assert_close(predicted, torch.tensor([1.0, 2.0, 3.0, 4.0]))
    # A vanishing penalty recovers the exact linear map (slope 2: x = 3 -> 6).
    assert float(ridge_from_text(text, targets, known, ridge=1e-9)[3]) == pytest.approx(6.0)
    with pytest.raises(ValueError, match=r"model\.items\.cold_start_ridge must be > 0"):
        ridge_from_text(text, targets, known, ridge=0.0)


def test_ridge_from_text_recovers_a_linear_map_of_rows() -> None:
    generator = torch.Generator().manual_seed(0)
    text = torch.randn(40, 3, generator=generator)
    weights = torch.randn(3, 5, generator=generator)
    rows = 0.5 + text @ weights
    known = torch.ones(40, dtype=torch.bool)
    known[[3, 17]] = False
    predicted = ridge_from_text(
        text, rows.clone().index_fill_(0, torch.tensor([3, 17]), 0), known, 1e-9
    )
    torch.testing.assert_close(predicted, rows, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="at least one item"):
        ridge_from_text(text, rows, torch.zeros(40, dtype=torch.bool), 1.0)
    with pytest.raises(ValueError, match=r"model\.items\.cold_start_ridge"):
        ridge_from_text(text, rows, known, -1.0)


def _cold_components(cold_start: str) -> ItemComponents:
    torch.manual_seed(0)
    components = ItemComponents(6, 4, ItemSettings(cold_start=cold_start), temperature=0.5)
    with torch.no_grad():
        components.bias.copy_(torch.tensor([0.5, -0.5, 1.0, 0.0, 2.0, -1.0]))
    return components


def test_cold_items_are_scored_from_their_text_only_when_asked() -> None:
    text = torch.randn(6, 4, generator=torch.Generator().manual_seed(1))
    users = torch.randn(3, 4, generator=torch.Generator().manual_seed(2))
    unknown = torch.tensor([False, False, False, False, True, False])
    plain = _cold_components("none")
    expected = plain.logits(users, plain.item_vectors(text))
    assert torch.equal(plain.catalog_logits(users, text, unknown), expected)
    cold = _cold_components("text_ridge")
    assert torch.equal(cold.catalog_logits(users, text, None), expected)  # nothing held out
    scores = cold.catalog_logits(users, text, unknown)
    known = ~unknown
    torch.testing.assert_close(scores[:, known], expected[:, known])  # trained items unchanged
    ids = ridge_from_text(text, cold.id_vectors(), known, 1.0)[4]
    bias = ridge_from_text(text, cold.bias, known, 1.0)[4]
    vector = F.normalize(text[4] + ids, dim=-1)
    by_hand = F.normalize(users, dim=-1) @ vector / 0.5 + bias
    torch.testing.assert_close(scores[:, 4], by_hand)
    assert not torch.allclose(scores[:, 4], expected[:, 4])


def test_cold_rows_are_computed_once_per_parameter_state_and_handle_a_projection() -> None:
    torch.manual_seed(0)
    components = ItemComponents(6, 4, ItemSettings(id_dim=2, cold_start="text_ridge"), 0.5)
    text = torch.randn(6, 4, generator=torch.Generator().manual_seed(1))
    unknown = torch.tensor([False, True, False, False, False, False])
    ids, bias = components.cold_start_rows(text, unknown)
    assert ids is not None and bias is not None and ids.shape == (6, 4)
    torch.testing.assert_close(ids[~unknown], components.id_vectors()[~unknown].detach())
    again = components.cold_start_rows(text, unknown)
    assert again[0] is ids and again[1] is bias  # cached while nothing changed
    with torch.no_grad():
        components.bias.add_(1.0)  # an optimizer step or a load changes a parameter in place
    moved = components.cold_start_rows(text, unknown)[1]
    assert moved is not None and moved is not bias
    torch.testing.assert_close(moved, bias + 1.0)  # the map's intercept moves with the biases
    components.double()  # a move or cast swaps the storage without a new version
    recast = components.cold_start_rows(text, unknown)[1]
    assert recast is not None and recast.dtype == torch.float64


def test_a_wide_text_table_with_few_known_items_stays_bounded() -> None:
    # More text dimensions than known items (a 2048-wide LLM on a small catalog): the penalty
    # keeps the system regular; unpenalised, solvers return rows in the hundreds.
    generator = torch.Generator().manual_seed(0)
    text = F.normalize(torch.randn(300, 512, generator=generator), dim=-1)
    targets = torch.randn(300, generator=generator)
    known = torch.ones(300, dtype=torch.bool)
    known[270:] = False
    predicted = ridge_from_text(text, targets, known, 1.0)
    assert float(predicted[~known].abs().max()) < 3.0


def test_cold_rows_of_a_table_made_under_inference_mode() -> None:
    # Lightning evaluates under torch.inference_mode: the encoder family builds its item table
    # there, and an inference tensor has no version counter to key a cache on.
    torch.manual_seed(0)
    components = ItemComponents(6, 4, ItemSettings(cold_start="text_ridge"), 0.5)
    unknown = torch.tensor([False, True, False, False, False, False])
    users = torch.randn(2, 4)
    with torch.inference_mode():
        text = torch.randn(6, 4)
        first = components.catalog_logits(users, text, unknown)
        assert torch.equal(components.catalog_logits(users, text, unknown), first)

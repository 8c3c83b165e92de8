"""The parameter attack and the report leak as pure functions, on hand-made vectors."""

from __future__ import annotations

import pytest
import torch

from fellrec.attacks.item_leak import (
    counts_from_log_popularity,
    item_layout,
    item_signals,
    score_client,
    score_round,
    summarize_signals,
)
from fellrec.attacks.reports import example_count_leak
from fellrec.models.item_components import log_popularity_bias

KEYS = ["base.lora_A.weight", "items.bias", "items.id_embedding", "items.log_scale"]
SHAPES = [(2, 3), (4,), (4, 2), ()]


def test_layout_finds_rows_and_biases_in_the_flat_vector():
    layout = item_layout(KEYS, SHAPES)
    assert layout.bias == (6, 10)
    assert layout.ids == (10, 18, 4, 2)
    assert layout.has_items
    assert not item_layout(KEYS[:1], SHAPES[:1]).has_items
    with pytest.raises(ValueError, match="3 parameter names for 4 shapes"):
        item_layout(KEYS[:3], SHAPES)


def vector(bias, ids):
    """A flat vector in the layout of KEYS: adapter (6 zeros), biases, ID rows, temperature."""
    return torch.cat(
        [torch.zeros(6), torch.tensor(bias), torch.tensor(ids).flatten(), torch.ones(1)]
    )


def test_signals_are_the_biases_their_change_and_the_row_moves():
    layout = item_layout(KEYS, SHAPES)
    sent = vector([0.0, 0.0, 0.0, 0.0], [[0.0, 0.0]] * 4)
    received = vector([1.0, -0.5, 0.0, 2.0], [[3.0, 4.0], [0.0, 0.0], [1.0, 0.0], [0.0, -2.0]])
    signals = item_signals(layout, sent, received)
    assert signals["bias"].tolist() == [1.0, -0.5, 0.0, 2.0]
    assert signals["bias_update"].tolist() == [1.0, -0.5, 0.0, 2.0]
    assert signals["id_update"].tolist() == pytest.approx([5.0, 0.0, 1.0, 2.0])


def test_log_popularity_biases_give_the_counts_back_exactly():
    counts = torch.tensor([0.0, 3.0, 1.0, 0.0, 12.0, 7.0])
    assert torch.equal(counts_from_log_popularity(log_popularity_bias(counts)), counts.double())


def test_a_client_is_scored_on_every_signal():
    layout = item_layout(KEYS, SHAPES)
    counts = torch.tensor([2.0, 0.0, 1.0, 0.0])
    start = vector(log_popularity_bias(counts).tolist(), [[0.0, 0.0]] * 4)
    # Trained rows (items 0 and 2) moved less than the others, as under Adam.
    received = start.clone()
    received[10:18] += torch.tensor([0.1, 0.0, 0.5, 0.5, 0.0, 0.1, 0.5, 0.5])
    scored = score_client(layout, start, received, counts)
    assert (scored["members"], scored["items"]) == (2, 4)
    assert scored["signals"]["bias"]["auc"] == pytest.approx(1.0)
    assert scored["signals"]["bias"]["counts_exact"] == pytest.approx(1.0)
    assert scored["signals"]["bias_update"]["auc"] == pytest.approx(0.5)  # nothing changed
    assert scored["signals"]["id_update"]["auc"] == pytest.approx(0.0)
    assert scored["signals"]["id_update"]["auc_either"] == pytest.approx(1.0)
    assert scored["best_auc"] == pytest.approx(1.0)
    only = score_client(layout, start, start, counts, signals=("bias",))
    assert list(only["signals"]) == ["bias"]
    rows = score_round(layout, start[None], received[None], {7: counts}, [7])
    assert rows[0]["client"] == 7
    summary = summarize_signals(rows)
    assert summary["id_update"] == {"min": 1.0, "mean": 1.0, "max": 1.0}


def test_the_example_count_sizes_the_clients_data():
    leaks = example_count_leak([20.0, 6.0], 2, 10, [10, 3], [95, 31])
    assert leaks[0]["windows_reported"] == 10.0 and leaks[0]["windows_exact"]
    assert leaks[0]["interactions_estimate"] == 100.0
    assert leaks[0]["relative_error"] == pytest.approx(5 / 95)
    assert leaks[1]["relative_error"] == pytest.approx(1 / 31)
    blind = example_count_leak([7.0], 1, None, [8], [40])
    assert not blind[0]["windows_exact"] and blind[0]["interactions_estimate"] is None
    with pytest.raises(ValueError, match="2 reports, 1 window counts"):
        example_count_leak([1.0, 2.0], 1, 1, [1], [1, 2])

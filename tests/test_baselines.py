"""Classic baselines (BPR-MF, SASRec) through fellrec's own evaluation and run directories."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fellrec.baselines.bpr import BPRSettings, bpr_scorer, fit_bpr
from fellrec.baselines.sasrec import SASRec, SASRecSettings, fit_sasrec, sasrec_scorer
from fellrec.baselines.selection import BestOnValidation, due
from fellrec.cli import main
from fellrec.data.schema import IndexedDataset
from fellrec.data.split import leave_one_out_split
from fellrec.metrics.popularity import evaluate_popularity, evaluate_scorer
from fellrec.reporting.runs import load_run
from test_cli import write_tiny_config

NUM_ITEMS = 30


def cyclic_dataset(num_users: int = 60, length: int = 14) -> IndexedDataset:
    """Every user walks the catalog in order from a random start: the next item is always +1."""
    rng = np.random.default_rng(0)
    users, items = [], []
    for user in range(num_users):
        start = int(rng.integers(NUM_ITEMS))
        users += [user] * length
        items += [(start + step) % NUM_ITEMS for step in range(length)]
    count = len(users)
    return IndexedDataset(
        name="cyclic",
        user_ids=np.array([str(u) for u in range(num_users)], dtype=object),
        item_ids=np.array([str(i) for i in range(NUM_ITEMS)], dtype=object),
        users=np.asarray(users, dtype=np.int64),
        items=np.asarray(items, dtype=np.int64),
        timestamps=np.arange(count, dtype=np.int64),
        titles=[f"item {i}" for i in range(NUM_ITEMS)],
        categories=[()] * NUM_ITEMS,
    )


def test_sasrec_learns_a_sequential_rule_popularity_cannot() -> None:
    split = leave_one_out_split(cyclic_dataset(), history_length=4)

    def validate(score) -> float:
        return float(evaluate_scorer(score, split.valid, NUM_ITEMS)["ndcg@10"].mean())

    settings = SASRecSettings(hidden=16, max_epochs=30, eval_every=5, lr=5e-3, dropout=0.0)
    model, record = fit_sasrec(split, NUM_ITEMS, 4, settings, validate)
    test = evaluate_scorer(sasrec_scorer(model, 4), split.test, NUM_ITEMS)["ndcg@10"]
    popularity = evaluate_popularity(split.train_sequences, split.test, NUM_ITEMS)["ndcg@10"]
    assert float(test.mean()) > 0.9 > 2 * float(popularity.mean())
    assert record["best_validation"] == max(p["validation"] for p in record["validation"])
    assert 0 <= record["best_epoch"] < record["epochs_run"] <= 30


def test_sasrec_states_are_causal() -> None:
    torch.manual_seed(0)
    model = SASRec(NUM_ITEMS, 5, SASRecSettings(hidden=8, dropout=0.0)).eval()
    a = model(torch.tensor([[-1, 1, 2, 3, 4]]))
    b = model(torch.tensor([[-1, 1, 2, 7, 8]]))
    torch.testing.assert_close(a[:, :3], b[:, :3])


def test_bpr_beats_random_on_two_taste_groups() -> None:
    # Users 0-29 take items 0-14, users 30-59 items 15-29: factors must tell the groups apart.
    rng = np.random.default_rng(1)
    users, items = [], []
    for user in range(60):
        pool = np.arange(15) + (0 if user < 30 else 15)
        chosen = rng.choice(pool, size=8, replace=False)
        users += [user] * 8
        items += chosen.tolist()
    data = IndexedDataset(
        name="groups",
        user_ids=np.array([str(u) for u in range(60)], dtype=object),
        item_ids=np.array([str(i) for i in range(NUM_ITEMS)], dtype=object),
        users=np.asarray(users, dtype=np.int64),
        items=np.asarray(items, dtype=np.int64),
        timestamps=np.arange(len(users), dtype=np.int64),
        titles=[f"item {i}" for i in range(NUM_ITEMS)],
        categories=[()] * NUM_ITEMS,
    )
    split = leave_one_out_split(data, history_length=4)

    def validate(score) -> float:
        return float(evaluate_scorer(score, split.valid, NUM_ITEMS)["recall@10"].mean())

    settings = BPRSettings(dim=8, lr=0.05, max_epochs=60, eval_every=10)
    model, _ = fit_bpr(split, 60, NUM_ITEMS, settings, validate)
    recall = evaluate_scorer(bpr_scorer(model), split.test, NUM_ITEMS)["recall@10"]
    # The target is one of the user's group's 15 - 6 unseen items: a group-aware top 10 finds it
    # most of the time, a random one 10/24 of the time.
    assert float(recall.mean()) > 0.7


def test_selection_keeps_the_best_weights_and_stops_when_stale() -> None:
    model = torch.nn.Linear(1, 1, bias=False)
    selection = BestOnValidation(patience=2)
    for epoch, (weight, value) in enumerate([(1.0, 0.1), (2.0, 0.3), (3.0, 0.2), (4.0, 0.25)]):
        with torch.no_grad():
            model.weight.fill_(weight)
        stop = selection.update(epoch, value, model)
    assert stop and selection.best_epoch == 1
    selection.restore(model)
    assert model.weight.item() == 2.0
    assert [due(e, 5, 12) for e in (3, 4, 9, 11)] == [False, True, True, True]


def test_baselines_command_writes_runs_the_report_reads(tmp_path, tiny_encoder_dir, capsys):
    config = write_tiny_config(tmp_path, tiny_encoder_dir, window_stride=4)
    output = tmp_path / "baselines"
    args = ["baselines", "--config", str(config), "--output", str(output)]
    main([*args, "--sasrec.max_epochs", "2", "--sasrec.hidden", "8", "--bpr.max_epochs", "5"])
    for name in ("bpr", "sasrec"):
        results = load_run(output / name)  # the schema of a federated run
        assert results["strategy"] == name
        assert results["overall"]["users"] > 0 and len(results["clients"]) == 3
        assert results["popularity"]["overall"]["ndcg@10"] >= 0
        assert set(results["ci"]["overall"]) >= {"ndcg@10", "recall@10"}
        assert results["training"]["selection_metric"] == "ndcg@10"
        # The federated runs' slices, by the same code, beside the popularity baseline's.
        slices = results["slices"]
        users = sum(slices["groups"][f"history/{g}"]["users"] for g in ("short", "medium", "long"))
        assert users == results["overall"]["users"]
        assert slices["definition"] == results["popularity"]["slices"]["definition"]
    out = capsys.readouterr().out
    assert "sasrec test ndcg@10" in out
    # A second call finds them finished.
    main(args)
    assert "already finished" in capsys.readouterr().out
    recorded = json.loads((output / "sasrec" / "results.json").read_text())["config"]
    assert recorded["sasrec"]["max_epochs"] == 2


def test_unknown_baseline_is_refused(tmp_path, tiny_encoder_dir, capsys):
    config = write_tiny_config(tmp_path, tiny_encoder_dir)
    with pytest.raises(SystemExit):
        main(["baselines", "--config", str(config), "--baselines", "bpr,itemknn"])
    assert "itemknn" in capsys.readouterr().err

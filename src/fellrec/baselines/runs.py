"""Train a classic baseline on a federation's data and write it as a run directory.

A baseline run's ``results.json`` has the schema of a federated run's (strategy, overall,
clients, balance, confidence intervals, popularity, history), so ``fellrec report`` and
``fellrec compare`` put it in the same tables: trained centrally on every training interaction,
selected on the validation users, evaluated on each client's test users.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from fellrec.baselines.bpr import BPRSettings, bpr_scorer, fit_bpr
from fellrec.baselines.sasrec import SASRecSettings, fit_sasrec, sasrec_scorer
from fellrec.data.pipeline import FederatedData
from fellrec.metrics.bootstrap import confidence_intervals
from fellrec.metrics.popularity import Scorer, evaluate_scorer
from fellrec.metrics.slices import define_slices, slice_summary
from fellrec.metrics.summary import client_sums, metric_names, summarize

#: Baselines that train (popularity is in every run's results already).
BASELINES = ("bpr", "sasrec")
#: The validation metric the baselines are selected by (as the federated runs' default).
SELECTION_METRIC = "ndcg@10"


def _validator(data: FederatedData, metric: str) -> Any:
    num_items = data.dataset.num_items

    def validate(score: Scorer) -> float:
        return float(evaluate_scorer(score, data.split.valid, num_items)[metric].mean())

    return validate


def baseline_results(
    name: str,
    data: FederatedData,
    history_length: int,
    popularity: dict[str, Any] | None = None,
    sasrec: SASRecSettings | None = None,
    bpr: BPRSettings | None = None,
    config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train baseline ``name`` on ``data`` and evaluate it like a federated run.

    Args:
        name: ``bpr`` or ``sasrec``.
        data: The prepared data (split, clients).
        history_length: ``H``: SASRec reads the same last ``H`` items the other models read.
        popularity: The data's popularity summary, stored alongside for reference.
        sasrec: SASRec settings (defaults if None).
        bpr: BPR settings (defaults if None).
        config: The run config to record.

    Returns:
        The ``results.json`` content.

    Raises:
        ValueError: For an unknown baseline name.
    """
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; choose from {', '.join(BASELINES)}")
    started = time.perf_counter()
    validate = _validator(data, SELECTION_METRIC)
    num_items = data.dataset.num_items
    settings: Any
    scorer: Scorer
    if name == "sasrec":
        settings = sasrec or SASRecSettings()
        model, record = fit_sasrec(data.split, num_items, history_length, settings, validate)
        scorer = sasrec_scorer(model, history_length)
    else:
        settings = bpr or BPRSettings()
        bpr_model, record = fit_bpr(
            data.split, data.dataset.num_users, num_items, settings, validate
        )
        scorer = bpr_scorer(bpr_model)
    per_user = evaluate_scorer(scorer, data.split.test, num_items)
    names = metric_names()
    clients = torch.from_numpy(np.asarray(data.assignment[data.split.test.users]))
    sums, counts = client_sums(per_user, clients, data.num_clients, names)
    summary = summarize(sums, counts, names)
    summary["ci"] = confidence_intervals(per_user, clients, data.num_clients, names)
    slices = define_slices(data.split.train_sequences, data.assignment, num_items, data.num_clients)
    summary["slices"] = slice_summary(
        per_user,
        slices.membership(data.split.test.users, data.split.test.targets),
        clients,
        data.num_clients,
        names,
        slices.cuts(),
    )
    return {
        "strategy": name,
        "strategy_settings": {"name": name, "centralized": True, **asdict(settings)},
        "config": config or {},
        "rounds_run": record["epochs_run"],
        "best_round": record["best_epoch"],
        "client_best_rounds": [],
        **summary,
        "popularity": popularity,
        "resources": None,
        "privacy": None,
        "history": [],
        "training": {**record, "selection_metric": SELECTION_METRIC},
        "seconds": time.perf_counter() - started,
    }

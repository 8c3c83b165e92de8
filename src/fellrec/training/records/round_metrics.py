"""The scalar keys a federated round logs, computed from its history record and evaluation.

One function per moment of the round, shared by the live run (``FederatedLoop`` logs them through
``log_dict``) and a resumed one (which replays the finished rounds from the checkpoint's history
into loggers that cannot keep their own record, such as a new wandb run), so that both carry the
same keys with the same values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from fellrec.metrics.slices import SLICE_LOGGED_METRICS


def aggregation_metrics(record: Mapping[str, Any]) -> dict[str, float]:
    """``round``, ``client/<slot>/train/loss``, ``client/<slot>/lr``, heating weights and epsilon.

    Args:
        record: A round's history record (``round``, ``train_loss``, ``lr`` and optionally
            ``heating_weight``); a slot that did not take part has ``None`` as its loss.
    """
    metrics = {"round": float(record["round"])}
    weights = record.get("heating_weight")
    spent = record.get("dp", {}).get("epsilon")
    for slot, lr in enumerate(record["lr"]):
        if spent is not None and spent[slot] is not None:
            metrics[f"client/{slot}/dp/epsilon"] = float(spent[slot])
        loss = record["train_loss"][slot]
        if loss is not None:
            metrics[f"client/{slot}/train/loss"] = float(loss)
        metrics[f"client/{slot}/lr"] = float(lr)
        if weights is not None and weights[slot] is not None and not math.isnan(weights[slot]):
            metrics[f"client/{slot}/heating_weight"] = float(weights[slot])
    return metrics


def validation_metrics(summary: Mapping[str, Any]) -> dict[str, float]:
    """``val/<metric>``, ``client/<i>/val/<metric>`` and ``balance/val/<metric>/<stat>``.

    Args:
        summary: ``summarize()`` output of a validation pass.
    """
    metrics = {f"val/{k}": float(v) for k, v in summary["overall"].items() if k != "users"}
    for client, row in summary["clients"].items():
        for key, value in row.items():
            if key != "users":
                metrics[f"client/{client}/val/{key}"] = float(value)
    for metric, stats in summary["balance"].items():
        for stat, value in stats.items():
            metrics[f"balance/val/{metric}/{stat}"] = float(value)
    metrics.update(slice_metrics(summary.get("slices"), "val", intervals=False))
    return metrics


def slice_metrics(
    slices: Mapping[str, Any] | None, stage: str, intervals: bool = True
) -> dict[str, float]:
    """``slice/<stage>/<grouping>/<group>/<metric>`` (and ``/users``) of the logged metrics.

    Args:
        slices: The slices of a summary (:func:`fellrec.metrics.slices.slice_summary`), or None.
        stage: ``val`` or ``test``.
        intervals: Add each value's bootstrap interval as ``.../<metric>/ci_low`` and
            ``.../<metric>/ci_high``.
    """
    metrics: dict[str, float] = {}
    groups = (slices or {}).get("groups") or {}
    for name, row in groups.items():
        prefix = f"slice/{stage}/{name}"
        metrics[f"{prefix}/users"] = float(row["users"])
        for metric in SLICE_LOGGED_METRICS:
            if metric not in row:
                continue
            metrics[f"{prefix}/{metric}"] = float(row[metric])
            bounds = (row.get("ci") or {}).get(metric)
            if intervals and bounds:
                metrics[f"{prefix}/{metric}/ci_low"] = float(bounds[0])
                metrics[f"{prefix}/{metric}/ci_high"] = float(bounds[1])
    return metrics


def round_metrics(record: Mapping[str, Any]) -> dict[str, float]:
    """Every scalar a finished round logged: aggregation and, when it ran, validation."""
    metrics = aggregation_metrics(record)
    if isinstance(record.get("val"), Mapping):
        metrics.update(validation_metrics(record["val"]))
    return metrics


def logged_test_metrics(summary: Mapping[str, Any]) -> dict[str, float]:
    """``test/<metric>`` of the overall row (the user count left out) and the slices' values.

    Args:
        summary: The round engine's test summary.
    """
    overall = summary["overall"]
    assert isinstance(overall, dict)
    metrics = {f"test/{k}": float(v) for k, v in overall.items() if k != "users"}
    metrics.update(slice_metrics(summary.get("slices"), "test"))
    return metrics

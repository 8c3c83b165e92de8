"""Per-round and end-of-test tables and images for wandb, through Lightning's ``WandbLogger``.

wandb is reached only through the logger (``log_table``, ``log_image``, ``experiment``), so runs
without a WandbLogger, or without wandb installed, never touch it. The scalar per-client and balance
keys are logged by :class:`fellrec.training.rounds.loop.FederatedLoop` itself (through ``log_dict``,
for every logger); this module adds what only wandb shows: tables, the similarity heatmap, summary
values and the round as the x-axis.

Keys: ``federation/clients`` (table per round), ``federation/similarity`` (image per round),
``test/clients`` (table: each client and an ``overall`` row), ``test/slices`` (table: test
NDCG@10 with its interval per evaluation slice, the run beside popularity), ``resources`` and
``privacy``
(tables, when the results hold them); summary values ``test/<metric>``,
``test/client/<i>/<metric>``, ``test/balance/<metric>/<stat>`` and the numbers of the resource
accounting, ``resources/<section>/<quantity>`` (e.g. ``resources/client/memory_bytes``), and
``privacy/token_recovery/k_front=<k>``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import lightning as L
from lightning.pytorch.loggers import WandbLogger

from fellrec.reporting import history as hist
from fellrec.reporting import tables
from fellrec.reporting.document import Table

#: History key of the federated round (the x-axis of every per-round chart).
ROUND_KEY = "round"
ROUND_TABLE_KEY = "federation/clients"
SIMILARITY_KEY = "federation/similarity"
TEST_TABLE_KEY = "test/clients"
SLICE_TABLE_KEY = "test/slices"
RESOURCES_KEY = "resources"
PRIVACY_KEY = "privacy"


def wandb_loggers(trainer: L.Trainer) -> list[WandbLogger]:
    """The trainer's wandb loggers (usually none or one)."""
    return [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]


def use_round_axis(trainer: L.Trainer) -> None:
    """Plot every key against the federated round instead of Lightning's global step.

    ``step_sync`` fills in the latest round on rows that do not carry it (tables, images).
    """
    for logger in wandb_loggers(trainer):
        experiment = logger.experiment
        experiment.define_metric(ROUND_KEY)
        experiment.define_metric("*", step_metric=ROUND_KEY, step_sync=True)


def _cell(value: Any) -> Any:
    """Scalars as they are; anything else (lists, dicts) as JSON text, which a table can hold."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return json.dumps(value, default=str)


def _log_table(logger: WandbLogger, key: str, table: Table, step: int) -> None:
    rows = [[_cell(value) for value in row] for row in table.rows]
    logger.log_table(key=key, columns=table.columns, data=rows, step=step)


def log_round(
    trainer: L.Trainer, record: Mapping[str, Any], clients: int, step: int | None = None
) -> None:
    """Log one round's per-client table and (when the strategy has one) its similarity heatmap.

    Args:
        trainer: The trainer (its wandb loggers receive the round).
        record: The round's history record (see :mod:`fellrec.reporting.history`).
        clients: Number of clients.
        step: The global step to log at; default the trainer's (a resumed run replays the
            rounds before its checkpoint at their own steps).
    """
    loggers = wandb_loggers(trainer)
    if not loggers:
        return
    round_index = int(record.get("round", 0))
    table = tables.round_client_table(record, clients)
    similarity = record.get("similarity")
    image = None
    if isinstance(similarity, list) and similarity:
        # Plotting loads matplotlib; only runs that log images pay for it.
        from fellrec.reporting.plots import rgb_array, similarity_figure

        matrix = [[hist.as_float(v) for v in row] for row in similarity]
        image = rgb_array(similarity_figure(matrix, f"client similarity, round {round_index}"))
    step = trainer.global_step if step is None else step
    for logger in loggers:
        _log_table(logger, ROUND_TABLE_KEY, table, step)
        if image is not None:
            logger.log_image(
                key=SIMILARITY_KEY,
                images=[image],
                step=step,
                caption=[f"round {round_index}"],
            )


def summary_values(results: Mapping[str, Any]) -> dict[str, float]:
    """Flat summary values of a run's test results (and resource accounting, when present)."""
    values: dict[str, float] = {}

    def put(key: str, value: Any) -> None:
        if isinstance(value, int | float) and not isinstance(value, bool):
            values[key] = float(value)

    for metric, value in (results.get("overall") or {}).items():
        put(f"test/{metric}", value)
    for client, row in (results.get("clients") or {}).items():
        for metric, value in row.items():
            put(f"test/client/{client}/{metric}", value)
    for metric, stats in (results.get("balance") or {}).items():
        for stat, value in (stats or {}).items():
            put(f"test/balance/{metric}/{stat}", value)
    resources = results.get("resources")
    if isinstance(resources, Mapping):
        _flatten_numbers(resources, "resources", put)
    for point in tables.privacy_curve(results) or []:
        put(f"privacy/token_recovery/k_front={point.get('k_front')}", point.get("token_recovery"))
    return values


def _flatten_numbers(tree: Mapping[str, Any], prefix: str, put: Any) -> None:
    """``put(prefix/a/b, value)`` for every leaf of nested dicts (the display table is skipped)."""
    for key, value in tree.items():
        if isinstance(value, Mapping):
            _flatten_numbers(value, f"{prefix}/{key}", put)
        elif key != "table":
            put(f"{prefix}/{key}", value)


def log_test(trainer: L.Trainer, results: Mapping[str, Any]) -> None:
    """Log the test results (per client and overall) as summary values and tables.

    Args:
        trainer: The trainer (its wandb loggers receive the results).
        results: ``results.json``'s contents, or at least its ``overall``/``clients``/``balance``.
    """
    loggers = wandb_loggers(trainer)
    if not loggers:
        return
    values = summary_values(results)
    resources = tables.resources_table(results)
    curve = tables.privacy_curve(results)
    slices = tables.slice_table({"run": results}, "ndcg@10")
    for logger in loggers:
        logger.experiment.summary.update(values)
        _log_table(logger, TEST_TABLE_KEY, tables.evaluation_table(results), trainer.global_step)
        if slices is not None:
            _log_table(logger, SLICE_TABLE_KEY, slices, trainer.global_step)
        if resources is not None:
            _log_table(logger, RESOURCES_KEY, resources, trainer.global_step)
        if curve is not None:
            rows = [[point.get("k_front"), point.get("token_recovery")] for point in curve]
            privacy = Table(["k_front", "token_recovery"], rows)
            _log_table(logger, PRIVACY_KEY, privacy, trainer.global_step)

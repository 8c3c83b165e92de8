"""What a run records and announces once when fitting starts, before its first round.

The user -> client map is saved next to the run (``clients.csv``), the partition is logged as a
table, clients with too few evaluation users to trust are warned about, and the estimate of what
the configuration costs (computed by the caller, cheaply, on every process) is logged; all of it
on rank zero.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from lightning.pytorch.utilities import rank_zero_warn

from fellrec.models.low_precision import cpu_bf16_matrix_units
from fellrec.models.resource_tables import format_report, padding_note
from fellrec.training.batches.datamodule import FederatedDataModule, federated_datamodule
from fellrec.training.records.results import run_directory

if TYPE_CHECKING:
    import lightning as L

log = logging.getLogger(__name__)


def log_resources(report: dict[str, Any]) -> None:
    """Log what this configuration costs on the client and on the server.

    Args:
        report: The run's ``"resources"`` section
            (:func:`~fellrec.training.records.accounting.resource_summary_of`).
    """
    if "table" not in report:
        log.info("resources: no estimate (%s)", report["unavailable"])
        return
    assumed = report["assumed"]
    log.info(
        "resources (estimated per step):\n%s\n%s",
        format_report(report),
        padding_note(assumed["batch_size"], assumed["seq_len"]),
    )


def warn_small_clients(datamodule: FederatedDataModule, min_eval_users: int) -> None:
    """Warn about clients whose validation or test users are too few to trust.

    Args:
        datamodule: The run's data (its per-client evaluation user counts).
        min_eval_users: ``loop.min_eval_users``: fewer users than this are warned about.
    """
    for period, counts in datamodule.eval_user_counts().items():
        small = [(c, int(n)) for c, n in enumerate(counts) if n < min_eval_users]
        if small:
            listed = ", ".join(f"client {c}: {n}" for c, n in small)
            rank_zero_warn(
                f"few {period} users ({listed}; loop.min_eval_users={min_eval_users}): "
                "their metrics are noisy, see the confidence intervals under 'ci' in "
                "results.json"
            )


def precision_hint(accelerator: str, precision: str, bf16_units: bool) -> str | None:
    """A recommendation to train in bf16-mixed, when this CPU would run it faster.

    Args:
        accelerator: The trainer's accelerator class name, lower case (``cpuaccelerator``, ...).
        precision: ``--trainer.precision`` as the trainer holds it.
        bf16_units: Whether the CPU multiplies bf16 in hardware (:func:`cpu_bf16_matrix_units`).

    Returns:
        The line to log, or None.
    """
    if not accelerator.startswith("cpu") or precision != "32-true" or not bf16_units:
        return None
    return (
        "this CPU multiplies bf16 in hardware: --trainer.precision bf16-mixed trains the "
        "MovieLens-100K recipe 1.3x (quiet machine) to 1.7x (busy one) faster, quality within "
        "seed noise (benchmarks/README.md, bench_train_step.py); fp32 stays the default so "
        "results match on every machine"
    )


def record_fit_start(trainer: L.Trainer, resources: dict[str, Any], min_eval_users: int) -> None:
    """Save the user -> client map, log the partition and the resources, warn on small clients.

    Call it on every process: finding the run's directory is a collective under DDP.

    Args:
        trainer: The trainer starting to fit.
        resources: What the configuration costs (see :func:`log_resources`).
        min_eval_users: ``loop.min_eval_users`` (see :func:`warn_small_clients`).
    """
    directory = run_directory(trainer)  # a collective: every process must ask
    if not trainer.is_global_zero:
        return
    datamodule = federated_datamodule(trainer)
    datamodule.save_assignment(directory)
    log.info("clients:\n%s", datamodule.partition_table())
    warn_small_clients(datamodule, min_eval_users)
    log_resources(resources)
    hint = precision_hint(
        type(trainer.accelerator).__name__.lower(),
        str(trainer.precision),
        cpu_bf16_matrix_units(),
    )
    if hint is not None:
        log.info(hint)

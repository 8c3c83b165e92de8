"""A run's outputs: ``results.json`` and each client's adapter in Hugging Face peft format.

They go into the run's log directory (:func:`run_directory`); callbacks other than the round loop
add their sections to ``results.json`` (:class:`RunSection`, gathered by :func:`run_sections`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import yaml

from fellrec.run_directory import RESULTS_FILE
from fellrec.training.accounting import resource_summary
from fellrec.training.adapter_cards import describe_adapters
from fellrec.training.datamodule import federated_datamodule

if TYPE_CHECKING:
    import lightning as L

    from fellrec.training.federated_module import FederatedModule


def json_safe(value: Any) -> Any:
    """JSON has no NaN/inf: replace them with None, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def run_config(directory: Path, module: FederatedModule) -> dict[str, Any]:
    """The run's full config (LightningCLI's saved ``config.yaml``) or the hyper-parameters."""
    saved = directory / "config.yaml"
    if saved.exists():
        loaded = yaml.safe_load(saved.read_text())
        if isinstance(loaded, dict):
            return loaded
    config: dict[str, Any] = {"model": dict(module.hparams)}
    datamodule = getattr(module.trainer, "datamodule", None)
    if datamodule is not None:
        config["data"] = dict(datamodule.hparams)
    return json.loads(json.dumps(config, default=str))


@runtime_checkable
class RunSection(Protocol):
    """A callback that contributes a section of ``results.json`` (e.g. the privacy probe).

    The round loop asks every callback of this kind for its section after testing and writes
    them with the rest, once.
    """

    section_name: str

    def section(self, trainer: L.Trainer, module: L.LightningModule) -> dict[str, Any] | None:
        """The section's content (None: nothing to report)."""
        ...


def run_sections(trainer: L.Trainer, module: L.LightningModule) -> dict[str, Any]:
    """Every :class:`RunSection` callback's section of ``results.json``, by section name."""
    return {
        callback.section_name: callback.section(trainer, module)
        for callback in trainer.callbacks  # type: ignore[attr-defined]
        if isinstance(callback, RunSection)
    }


def run_directory(trainer: L.Trainer) -> Path:
    """The run's log directory. Under DDP this broadcasts, so call it on every process."""
    return Path(trainer.log_dir or trainer.default_root_dir)


@dataclass(frozen=True)
class RunRecord:
    """What the round loop knows about a finished run, as plain values.

    Attributes:
        strategy: The strategy's name and settings (``Strategy.describe()``).
        rounds_run: Rounds trained.
        best_round: The round of the best overall validation score (-1: none).
        client_best_rounds: Each client's selected round.
        history: The rounds' records (losses, learning rates, weights, validation).
    """

    strategy: dict[str, Any]
    rounds_run: int
    best_round: int
    client_best_rounds: list[int]
    history: list[dict[str, Any]]


def write_run_outputs(
    directory: Path,
    module: FederatedModule,
    record: RunRecord,
    test_summary: dict[str, Any],
    sections: dict[str, Any] | None = None,
    gathered_adapters: dict[str, Any] | None = None,
) -> Path:
    """Write ``results.json`` and ``adapters/client_<i>/`` (peft format) into ``directory``.

    Args:
        directory: The run's log directory.
        module: The evaluated module (holding the selected adapters).
        record: The loop's record of the run (rounds run, selected rounds, history).
        test_summary: ``summarize()`` output of the test metrics.
        sections: More sections by name, from :class:`RunSection` callbacks (``"privacy"`` is
            always present, None when no probe ran).
        gathered_adapters: The adapters gathered whole on every process
            (:meth:`~fellrec.models.adapters.ClientAdapters.gathered_state`) when the module's
            blocks are sharded.

    Returns:
        The path of ``results.json``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    datamodule = federated_datamodule(module.trainer)
    results = {
        "strategy": record.strategy["name"],
        "strategy_settings": record.strategy,
        "config": run_config(directory, module),
        "rounds_run": record.rounds_run,
        "best_round": record.best_round,
        "client_best_rounds": record.client_best_rounds,
        **test_summary,
        "popularity": datamodule.popularity,
        "resources": resource_summary(module),
        "privacy": None,
        **(sections or {}),
        "history": record.history,
    }
    path = directory / RESULTS_FILE
    path.write_text(json.dumps(json_safe(results), indent=2))
    if module.adapters is not None:
        module.adapters.save(directory / "adapters", gathered_adapters)
        describe_adapters(
            directory / "adapters",
            backbone_setting=str(module.hparams.get("backbone", "")),
            strategy=str(record.strategy["name"]),
            recommender=str(module.hparams.get("recommender", "")),
            selected_rounds=results["client_best_rounds"] or [-1] * module.num_clients,
            rounds_run=record.rounds_run,
            client_metrics=test_summary.get("clients", {}),
        )
    return path

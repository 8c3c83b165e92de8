"""A run's outputs: ``results.json`` and each client's adapter in Hugging Face peft format.

They go into the run's log directory (:func:`run_directory`); callbacks other than the round loop
add their sections to ``results.json`` (:class:`RunSection`, gathered by :func:`run_sections`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import yaml

from fellrec.federation.results_file import RESULTS_FILE, write_results
from fellrec.training.records.adapter_cards import AdapterHolder, export_adapters

__all__ = ["RESULTS_FILE", "RunSection", "run_directory", "run_sections", "write_run_outputs"]

if TYPE_CHECKING:
    import lightning as L

    from fellrec.federation.engine import RoundEngine


def run_config(directory: Path, trainer: L.Trainer, module: L.LightningModule) -> dict[str, Any]:
    """The run's full config (LightningCLI's saved ``config.yaml``) or the hyper-parameters.

    Args:
        directory: The run's log directory.
        trainer: The run's trainer (its data module's hyper-parameters, when it has one).
        module: The run's module (its hyper-parameters).
    """
    saved = directory / "config.yaml"
    if saved.exists():
        loaded = yaml.safe_load(saved.read_text())
        if isinstance(loaded, dict):
            return loaded
    config: dict[str, Any] = {"model": dict(module.hparams)}
    datamodule = getattr(trainer, "datamodule", None)
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


def write_run_outputs(
    directory: Path,
    holder: AdapterHolder,
    engine: RoundEngine,
    test_summary: dict[str, Any],
    *,
    config: dict[str, Any],
    resources: dict[str, Any],
    sections: dict[str, Any] | None = None,
    gathered_adapters: dict[str, Any] | None = None,
) -> Path:
    """Write ``results.json`` and ``adapters/client_<i>/`` (peft format) into ``directory``.

    Args:
        directory: The run's log directory.
        holder: The evaluated module (holding the selected adapters).
        engine: The round engine of the run (its record, its clients and the results' schema).
        test_summary: The engine's test summary (metrics, intervals, popularity baseline).
        config: The run's config (:func:`run_config`).
        resources: The ``"resources"`` section
            (:func:`~fellrec.training.records.accounting.resource_summary_of`).
        sections: More sections by name, from :class:`RunSection` callbacks (``"privacy"`` is
            always present, None when no probe ran).
        gathered_adapters: The adapters gathered whole on every process
            (:meth:`~fellrec.models.adapters.ClientAdapters.gathered_state`) when the module's
            blocks are sharded.

    Returns:
        The path of ``results.json``.
    """
    results = engine.results(
        test_summary,
        config=config,
        resources=resources,
        **(sections or {}),
    )
    path = write_results(directory, results)
    export_adapters(
        holder,
        directory / "adapters",
        strategy=engine.strategy.name,
        selected_rounds=results["client_best_rounds"] or [-1] * engine.num_clients,
        rounds_run=engine.rounds_run,
        client_metrics=test_summary.get("clients", {}),
        gathered=gathered_adapters,
    )
    return path

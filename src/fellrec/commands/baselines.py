"""``fellrec baselines``: BPR-MF and SASRec on a run's data, clients and split, as run directories.

Reads the same YAML as ``fellrec fit`` (the ``data:`` section decides the data, split and
clients), trains each baseline centrally on all training interactions, selects it on the
validation users and writes ``<output>/<baseline>/results.json`` in the schema of a federated run,
so ``fellrec report`` compares them directly::

    fellrec baselines --config configs/ml100k-minilm-base.yaml --baselines bpr,sasrec
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from jsonargparse import ArgumentParser

from fellrec.baselines.bpr import BPRSettings
from fellrec.baselines.runs import BASELINES, baseline_results
from fellrec.baselines.sasrec import SASRecSettings
from fellrec.config_errors import parse_checked
from fellrec.config_parser import config_parser, instantiate
from fellrec.federation.results_file import write_results


def parse_baselines(text: str) -> list[str]:
    """Baseline names from ``a,b`` (order kept, repeats dropped).

    Raises:
        ValueError: For an empty list or an unknown name (the known ones are listed).
    """
    names = list(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in BASELINES]
    if not names or unknown:
        raise ValueError(
            f"--baselines: unknown or empty ({', '.join(unknown) or text!r}); "
            f"choose from {', '.join(BASELINES)}"
        )
    return names


def build_parser() -> ArgumentParser:
    """The ``fellrec baselines`` parser: the run config plus this command's flags."""
    parser = config_parser(
        "fellrec baselines",
        "Train BPR-MF and SASRec centrally on the run's data and split; evaluate them per "
        "client like a federated run; write <output>/<name>/results.json.",
    )
    parser.add_argument(
        "--baselines", type=str, default=",".join(BASELINES), help="comma-separated baselines"
    )
    parser.add_argument(
        "--output",
        type=str,
        default=None,
        help="root of the baseline runs (default: the config's trainer.default_root_dir)",
    )
    parser.add_class_arguments(SASRecSettings, "sasrec")
    parser.add_class_arguments(BPRSettings, "bpr")
    return parser


def run_baselines(
    config_args: list[str], names: list[str], output: Path | None = None
) -> list[Path]:
    """Run baselines for ``fellrec baselines`` and ``fellrec compare``; return their directories.

    Args:
        config_args: ``--config FILE`` and ``--section.key value`` arguments.
        names: The baselines to run.
        output: Root of the runs (default: the config's ``trainer.default_root_dir``).
    """
    parser = build_parser()
    parsed = parser.parse_args([*config_args, "--baselines", ",".join(names)])
    return _run(parser, parsed, names, output)


def _run(parser: ArgumentParser, parsed: Any, names: list[str], output: Path | None) -> list[Path]:
    objects = instantiate(parser, parsed)
    datamodule = objects.data
    sasrec, bpr = objects.sasrec, objects.bpr
    trainer = parsed.get("trainer")
    root = trainer.get("default_root_dir") if isinstance(trainer, dict) else None
    base = output or Path(parsed.get("output") or root or "runs/baselines")
    datamodule.setup("fit")
    recorded = {"data": dict(datamodule.hparams), "sasrec": asdict(sasrec), "bpr": asdict(bpr)}
    directories = []
    for name in names:
        directory = base / name
        if (directory / "results.json").is_file():
            print(f"baselines: {name} already finished ({directory / 'results.json'}); skipped")
            directories.append(directory)
            continue
        print(f"baselines: training {name} on {datamodule.data.dataset.name}")
        results = baseline_results(
            name,
            datamodule.data,
            datamodule.settings.history_length,
            popularity=datamodule.popularity,
            sasrec=sasrec,
            bpr=bpr,
            config=recorded,
        )
        path = write_results(directory, results)
        overall = results["overall"]
        print(
            f"baselines: {name} test ndcg@10 {overall['ndcg@10']:.4f} recall@10 "
            f"{overall['recall@10']:.4f} (best epoch {results['best_round']}, "
            f"{results['seconds']:.0f} s) -> {path}"
        )
        directories.append(directory)
    return directories


def main(args: list[str]) -> None:
    """``fellrec baselines --config X.yaml [--baselines bpr,sasrec] [--output DIR]``."""
    parser = build_parser()
    parsed = parse_checked(parser, args, "fellrec baselines")
    names = parse_baselines(parsed.baselines)
    _run(parser, parsed, names, Path(parsed.output) if parsed.output else None)

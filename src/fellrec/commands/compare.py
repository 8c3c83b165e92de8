"""``fellrec compare``: several strategies on the same data, clients and seed, then one report.

Each strategy is an ordinary ``fellrec fit`` of the same config(s) with only ``loop.strategy``
switched, run in this process one after another, in ``<root>/<strategy>``. A strategy whose
directory already holds ``results.json`` is skipped; one with a ``checkpoints/last.ckpt`` but no
results resumes from it. The settings of the strategy the config names are kept when that strategy
runs (e.g. FELLRec's ``alpha``); the others run with their defaults. Then ``<root>/report.md`` and
``report.html`` compare the runs; ``--baselines bpr,sasrec`` adds the classic baselines (trained
centrally on the same data, split and clients, :mod:`fellrec.commands.baselines`).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from fellrec.federation.strategies import STRATEGIES, strategy_from_name
from fellrec.reporting.report import write_report
from fellrec.reporting.runs import RESULTS_FILE

ROOT_KEY = "trainer.default_root_dir"
LOGGER_KEY = "trainer.logger"


def parser() -> argparse.ArgumentParser:
    """The command's own flags; every other ``--section.key value`` goes to each fit."""
    result = argparse.ArgumentParser(
        prog="fellrec compare",
        description=(
            "Run several strategies on the same data, clients and seed (one after another, each "
            "in <root>/<strategy>, skipping finished ones), then write <root>/report.md and "
            "report.html. Other --section.key value options apply to every run."
        ),
        allow_abbrev=False,
    )
    result.add_argument(
        "--config", action="append", required=True, metavar="FILE", help="YAML config (repeatable)"
    )
    result.add_argument(
        "--strategies",
        required=True,
        metavar="NAMES",
        help=f"comma-separated, from: {', '.join(STRATEGIES)}",
    )
    result.add_argument(
        "--output",
        metavar="DIR",
        default=None,
        help="root of the runs and the report (default: the config's trainer.default_root_dir)",
    )
    result.add_argument(
        "--baselines",
        default=None,
        metavar="NAMES",
        help="also train these classic baselines on the same data and clients (bpr, sasrec) "
        "into <root>/<name>, and report them beside the strategies",
    )
    result.add_argument(
        "--group",
        default=None,
        help="wandb group shared by the runs (default: compare-<root directory name>)",
    )
    return result


def parse_strategies(text: str) -> list[str]:
    """Strategy names from ``a,b,c`` (order kept, repeats dropped).

    Raises:
        ValueError: For an empty list or an unknown name (all known names are listed).
    """
    names = list(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    if not names:
        raise ValueError("--strategies is empty; choose from " + ", ".join(STRATEGIES))
    unknown = [name for name in names if name not in STRATEGIES]
    if unknown:
        raise ValueError(
            f"--strategies: unknown strategy {', '.join(map(repr, unknown))}; "
            f"choose from {', '.join(STRATEGIES)}"
        )
    return names


def strategy_class_path(name: str) -> str:
    """The import path of a strategy class, as ``--loop.strategy`` takes it."""
    return str(strategy_from_name(name).class_spec()["class_path"])


def _lookup(tree: Any, dotted: str) -> tuple[bool, Any]:
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return False, None
        tree = tree[part]
    return True, tree


def config_value(configs: Sequence[Path], overrides: Sequence[str], dotted: str) -> Any:
    """A setting as the fit will see it: the last config that sets it, then ``--dotted value``."""
    value = None
    for path in configs:
        if not path.is_file():
            raise ValueError(f"--config {path}: no such file")
        found, candidate = _lookup(yaml.safe_load(path.read_text()) or {}, dotted)
        if found:
            value = candidate
    flag = f"--{dotted}"
    for index, arg in enumerate(overrides):
        if arg == flag and index + 1 < len(overrides):
            value = overrides[index + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    return value


def _without(overrides: Sequence[str], dotted: str) -> list[str]:
    """``overrides`` without ``--dotted value`` or ``--dotted=value`` (compare sets that key)."""
    flag, kept, skip = f"--{dotted}", [], False
    for arg in overrides:
        if skip:
            skip = False
        elif arg == flag:
            skip = True
        elif not arg.startswith(flag + "="):
            kept.append(arg)
    return kept


def is_wandb_logger(spec: Any) -> bool:
    """Whether a ``trainer.logger`` value is one WandbLogger (class path string or dict)."""
    if isinstance(spec, str):
        return spec.split(".")[-1] == "WandbLogger"
    if isinstance(spec, dict):
        return is_wandb_logger(spec.get("class_path"))
    return False


def fit_arguments(
    configs: Sequence[Path],
    overrides: Sequence[str],
    strategy: str,
    run_dir: Path,
    group: str | None,
) -> list[str]:
    """The ``fellrec fit`` arguments of one strategy's run.

    Args:
        configs: The YAML configs, in order.
        overrides: Extra ``--section.key value`` arguments (without ``trainer.default_root_dir``).
        strategy: Strategy name.
        run_dir: The run's directory.
        group: wandb group, set (with the run name and save directory) when the logger is a
            WandbLogger; ``None`` otherwise.
    """
    args = ["fit"]
    for path in configs:
        args += ["--config", str(path)]
    args += ["--loop.strategy", strategy_class_path(strategy), *overrides]
    args += ["--trainer.default_root_dir", str(run_dir)]
    args += ["--checkpoint.dirpath", str(run_dir / "checkpoints")]
    if group is not None:
        # The logger's save_dir is where Lightning puts the run's outputs: keep it per strategy.
        for key, value in (("group", group), ("name", strategy), ("save_dir", str(run_dir))):
            args += [f"--trainer.logger.init_args.{key}", value]
    last = run_dir / "checkpoints" / "last.ckpt"
    if last.is_file():
        args += ["--ckpt_path", str(last)]
    return args


@contextmanager
def _wandb_names(group: str, name: str) -> Iterator[None]:
    """Set ``WANDB_RUN_GROUP``/``WANDB_NAME`` (they also reach wandb loggers inside lists)."""
    saved = {key: os.environ.get(key) for key in ("WANDB_RUN_GROUP", "WANDB_NAME")}
    os.environ.update({"WANDB_RUN_GROUP": group, "WANDB_NAME": name})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def finish_wandb_run() -> None:
    """End the wandb run a WandbLogger opened, so that the next strategy gets its own run.

    In one process WandbLogger reuses a live run (on purpose: fit then test share it). fellrec does
    not import wandb; if Lightning's logger loaded it, its current run is closed here.
    """
    wandb = sys.modules.get("wandb")
    run = getattr(wandb, "run", None) if wandb is not None else None
    if run is not None:
        run.finish()


def main(args: list[str]) -> None:
    """Run ``fellrec compare``.

    Raises:
        ValueError: For unknown strategies, a missing config or an unknown root directory (before
            any training), or a run that wrote no ``results.json`` where expected.
    """
    from fellrec.lightning_cli import run_lightning_cli

    options, overrides = parser().parse_known_args(args)
    strategies = parse_strategies(options.strategies)
    configs = [Path(c) for c in options.config]
    root_value = options.output or config_value(configs, overrides, ROOT_KEY)
    if not root_value:
        raise ValueError("set --output DIR or trainer.default_root_dir in the config")
    root = Path(root_value)
    overrides = _without(overrides, ROOT_KEY)
    wandb = is_wandb_logger(config_value(configs, overrides, LOGGER_KEY))
    group = options.group or f"compare-{root.resolve().name}"
    run_dirs = [root / name for name in strategies]
    for name, run_dir in zip(strategies, run_dirs, strict=True):
        if (run_dir / RESULTS_FILE).is_file():
            print(f"compare: {name} already finished ({run_dir / RESULTS_FILE}); skipped")
            continue
        print(f"compare: fitting {name} in {run_dir}")
        arguments = fit_arguments(configs, overrides, name, run_dir, group if wandb else None)
        with _wandb_names(group, name), warnings.catch_warnings():
            # LightningCLI cautions when sys.argv (here `compare ...`) and args both exist.
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
            try:
                run_lightning_cli(arguments)
            finally:
                finish_wandb_run()
        if not (run_dir / RESULTS_FILE).is_file():
            raise ValueError(
                f"the {name} run wrote no {RESULTS_FILE} in {run_dir} (interrupted, or does "
                "trainer.logger set its own save_dir?)"
            )
    if options.baselines:
        from fellrec.commands.baselines import parse_baselines, run_baselines

        config_args = [arg for path in configs for arg in ("--config", str(path))]
        names = parse_baselines(options.baselines)
        run_dirs += run_baselines([*config_args, *overrides], names, root)
    markdown, page = write_report(run_dirs, root)
    print(f"compare: report written to {markdown} and {page}")

"""The ``fellrec`` command: a dispatcher to LightningCLI's fit/validate/test and the commands.

``fit``, ``validate``, ``test`` and ``predict`` run :mod:`fellrec.lightning_cli`; every other
command is a module of :mod:`fellrec.commands` (``fellrec data stats|fetch|export-silos``,
``cost``, ``attack``, ...), imported only when it runs. All of them read the same YAML schema:
``model:`` (FederatedModule), ``data:`` (FederatedDataModule), ``trainer:``, ``loop:``
(FederatedLoop) and ``checkpoint:`` (ModelCheckpoint).
"""

from __future__ import annotations

import importlib
import logging
import sys

import yaml

from fellrec import __version__
from fellrec.command_errors import report_error
from fellrec.commands import COMMANDS
from fellrec.data.schema import DataFormatError
from fellrec.lightning_cli import quiet_third_party_output, run_lightning_cli
from fellrec.preflight import preflight

OVERVIEW = f"""\
fellrec {__version__} -- federated fine-tuning of LLM-based recommenders (FELLRec)

usage: fellrec <command> [options]

commands:
  fit         train a federation (then test it and write results.json)
  validate    evaluate a saved run on the validation users   (--ckpt_path)
  test        evaluate a saved run on the test users         (--ckpt_path)
  data stats  load, split and partition the data; print statistics and the popularity baseline
  data fetch  download MovieLens-100K (from the recbole wheel on PyPI) as RecBole files
  data export-silos  write a simulated partition as silo files (one directory per client)
  cost        client/server parameters, memory, FLOPs and bytes per step for a range of k_front
  attack      an honest-but-curious server's token recovery from hidden states, per k_front
  report      Markdown + HTML report comparing run directories
  compare     run several strategies on the same data, clients and seed, then report
  baselines   train BPR-MF and SASRec on the same data, split and clients (run directories)
  serve-blocks  a block server: the middle blocks of runs with model.transport: process

Every command takes --config FILE.yaml (repeatable) and --help.
Quickstart:  fellrec fit --config configs/quickstart.yaml
"""


def main(argv: list[str] | None = None, checked: bool = False) -> None:
    """Run a ``fellrec`` command (the console script is :func:`fellrec.console.main`).

    Args:
        argv: The arguments after ``fellrec`` (``None``: ``sys.argv``).
        checked: Whether :func:`fellrec.preflight.preflight` already checked them.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    quiet_third_party_output()
    if not args or args[0] in ("-h", "--help"):
        print(OVERVIEW)
        return
    if args[0] in ("-V", "--version"):
        print(f"fellrec {__version__}")
        return
    try:
        if not checked:
            preflight(args)
        if args[0] in COMMANDS:
            module = importlib.import_module(COMMANDS[args[0]][0])
            module.main(args[1:])
        else:
            run_lightning_cli(None if argv is None else args)
    except (ValueError, OSError, yaml.YAMLError, DataFormatError) as error:
        # OSError covers unreadable or unwritable paths (its message names the path).
        report_error(error)
        raise SystemExit(2) from None

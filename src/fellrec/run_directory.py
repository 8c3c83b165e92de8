"""What a run directory already holds, so that a new fit never replaces another run's record.

A run's record (``results.json``, its round checkpoints, ``metrics.csv``, ``config.yaml``) is
rewritten only by that run: resuming it (``--ckpt_path``) continues it, a new ``fellrec fit`` into
its ``trainer.default_root_dir`` is refused. A directory that holds no result and no checkpoint (a
run that failed or was stopped before its first round ended) may be fitted into again: there is
nothing in it to lose. Light on purpose (stdlib only): the fast checks before the heavy imports
(:mod:`fellrec.preflight`) use it as well as the CLI.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

#: The file a finished run writes into its directory
#: (``fellrec.training.records.results.RESULTS_FILE``).
RESULTS_FILE = "results.json"
#: Where the CLI keeps a run's checkpoints unless ``checkpoint.dirpath`` says otherwise.
CHECKPOINT_DIR = "checkpoints"
#: The files that mark a directory as holding a run's record (written by its loggers and the CLI).
RECORD_FILES = (RESULTS_FILE, "metrics.csv", "config.yaml")


class OccupiedRunDirectory(ValueError):
    """A new fit was pointed at a directory that holds another run's results or checkpoints."""


def recorded_files(root: Path, checkpoint_dir: Path | None = None) -> list[Path]:
    """The files of an earlier run's record in ``root``: its results and its checkpoints.

    Args:
        root: ``trainer.default_root_dir``.
        checkpoint_dir: ``checkpoint.dirpath`` (default ``<root>/checkpoints``).

    Returns:
        ``results.json`` (if present) and every ``*.ckpt`` under the checkpoint directory.
    """
    found = [root / RESULTS_FILE] if (root / RESULTS_FILE).is_file() else []
    checkpoints = checkpoint_dir if checkpoint_dir is not None else root / CHECKPOINT_DIR
    if checkpoints.is_dir():
        found += sorted(checkpoints.glob("*.ckpt"))
    return found


def holds_run_record(directory: Path) -> bool:
    """Whether ``directory`` holds a run's record: results, ``metrics.csv`` or its config."""
    return any((directory / name).is_file() for name in RECORD_FILES)


def refuse_occupied(
    root: Path, checkpoint_dir: Path | None = None, *, resuming: bool = False
) -> None:
    """Refuse a fit that would write into another run's record.

    A new fit (not ``resuming``) may not start in a directory that holds a run's results or
    checkpoints. A fit, new or resumed, may not write its checkpoints into a ``checkpoint.dirpath``
    outside ``root`` that holds another run's checkpoints while ``root`` holds no record of its
    own (a saved ``config.yaml``'s ``checkpoint.dirpath``, read for a run in a new directory):
    there they would sit beside that run's, and its ``--ckpt_path last`` would pick them up.

    Args:
        root: ``trainer.default_root_dir``.
        checkpoint_dir: ``checkpoint.dirpath`` (default ``<root>/checkpoints``).
        resuming: The fit resumes from a checkpoint (``ckpt_path``).

    Raises:
        OccupiedRunDirectory: Naming ``trainer.default_root_dir`` (or ``checkpoint.dirpath``,
            when only a checkpoint directory outside it is taken), what it holds, and the ways
            on: resume that run, or give the new one a directory of its own.
    """
    found = recorded_files(root, checkpoint_dir)
    if not found:
        return
    others = f" and {len(found) - 1} more" if len(found) > 1 else ""
    if (
        checkpoint_dir is not None
        and not holds_run_record(root)
        and not checkpoint_dir.expanduser().resolve().is_relative_to(root.expanduser().resolve())
    ):
        raise OccupiedRunDirectory(
            f"checkpoint.dirpath={str(checkpoint_dir)!r} already holds another run's checkpoints "
            f"({found[0].name}{others}); this fit would write its own beside them. Give it a "
            f"directory of its own with --checkpoint.dirpath {root / CHECKPOINT_DIR}, or resume "
            "that run in its own directory"
        )
    if resuming:
        return
    shown = [
        str(path.relative_to(root)) if path.is_relative_to(root) else str(path)
        for path in found[:3]
    ]
    more = f" and {len(found) - 3} more" if len(found) > 3 else ""
    raise OccupiedRunDirectory(
        f"trainer.default_root_dir={str(root)!r} already holds a run ({', '.join(shown)}{more}); "
        "a new fit would replace its record. Resume or extend that run with --ckpt_path last, "
        "give this one a directory of its own with --trainer.default_root_dir NEW_DIR, or delete "
        f"{root} to start over"
    )


def check_writable(directory: Path, setting_name: str) -> None:
    """``directory`` can be created (if needed) and written: a file is made there and removed.

    What had to be created for the test is removed again.

    Raises:
        OSError: Naming the setting, the directory and the reason.
    """
    path = directory.expanduser()
    missing = []
    probe = path
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".fellrec-write-test-"):
            pass
    except OSError as error:
        reason = error.strerror or str(error)
        raise OSError(f"{setting_name}={str(directory)!r} cannot be written: {reason}") from None
    finally:
        for created in missing:  # deepest first; each is empty unless someone else wrote there
            try:
                created.rmdir()
            except OSError:
                break

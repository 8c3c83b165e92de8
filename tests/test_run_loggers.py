"""Where a run's loggers and checkpoints write, whatever a saved config.yaml says."""

from __future__ import annotations

from pathlib import Path

import pytest
from jsonargparse import Namespace

from fellrec.run_directory import OccupiedRunDirectory, refuse_occupied
from fellrec.run_loggers import RUN_CSV_LOGGER, into_run_directory, with_run_csv_logger

WANDB = "lightning.pytorch.loggers.WandbLogger"


def logger(class_path: str, save_dir: str | None) -> Namespace:
    return Namespace(class_path=class_path, init_args=Namespace(save_dir=save_dir))


def test_the_metrics_logger_always_writes_into_the_run_directory(tmp_path):
    saved = [logger(RUN_CSV_LOGGER, str(tmp_path / "old"))]
    setting = with_run_csv_logger(saved, str(tmp_path / "new"))
    assert into_run_directory(setting, str(tmp_path / "new")) == []
    assert setting[0].init_args.save_dir == str(tmp_path / "new")


def test_the_logger_path_recorded_before_the_move_is_pointed_too(tmp_path):
    saved = logger("fellrec.training.run_logger.RunCSVLogger", str(tmp_path / "old"))
    into_run_directory(saved, str(tmp_path / "new"))
    assert saved.init_args.save_dir == str(tmp_path / "new")


def test_wandb_unset_takes_the_run_directory(tmp_path):
    setting = with_run_csv_logger([logger(WANDB, None), logger(WANDB, ".")], str(tmp_path))
    assert into_run_directory(setting, str(tmp_path)) == []
    assert [item.init_args.save_dir for item in setting[:2]] == [str(tmp_path)] * 2


def test_wandb_in_another_runs_directory_is_moved_with_a_notice(tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    (old / "results.json").write_text("{}")
    setting = with_run_csv_logger([logger(WANDB, str(old))], str(tmp_path / "new"))
    (notice,) = into_run_directory(setting, str(tmp_path / "new"))
    assert setting[0].init_args.save_dir == str(tmp_path / "new")
    assert notice.startswith(f"trainer.logger[0].init_args.save_dir={str(old)!r} holds a recorded")


def test_wandb_in_a_directory_of_its_own_is_left_alone(tmp_path):
    own = tmp_path / "wandb-runs"
    own.mkdir()
    (own / "notes.txt").write_text("not a run")
    setting = [logger(WANDB, str(own))]
    assert into_run_directory(setting, str(tmp_path / "new")) == []
    assert setting[0].init_args.save_dir == str(own)


def test_wandb_already_in_the_run_directory_stays(tmp_path):
    (tmp_path / "metrics.csv").write_text("")
    setting = [logger(WANDB, str(tmp_path))]
    assert into_run_directory(setting, str(Path(tmp_path))) == []
    assert setting[0].init_args.save_dir == str(tmp_path)


def test_no_logger_and_true_and_false_pass_through(tmp_path):
    for setting in (None, True, False):
        assert into_run_directory(setting, str(tmp_path)) == []


def test_a_resumed_run_keeps_its_own_wandb_directory(tmp_path):
    own = tmp_path / "wandb-of-this-run"
    own.mkdir()
    (own / "results.json").write_text("{}")  # the first logger's directory holds the record
    setting = with_run_csv_logger([logger(WANDB, str(own))], str(tmp_path / "root"))
    assert into_run_directory(setting, str(tmp_path / "root"), resuming_in_place=True) == []
    assert setting[0].init_args.save_dir == str(own)
    assert setting[1].init_args.save_dir == str(tmp_path / "root")  # metrics.csv: the root


@pytest.mark.parametrize(
    ("versioned", "moved"), [(False, True), (True, False)], ids=["unversioned", "versioned"]
)
def test_other_loggers_leave_a_recorded_directory(tmp_path, versioned, moved):
    old = tmp_path / "old"
    record = old / "lightning_logs" / "version_0" if versioned else old
    record.mkdir(parents=True)
    (record / "metrics.csv").write_text("")
    setting = [logger("lightning.pytorch.loggers.CSVLogger", str(old))]
    notices = into_run_directory(setting, str(tmp_path / "new"))
    assert (setting[0].init_args.save_dir == str(tmp_path / "new")) is moved
    assert len(notices) == int(moved)


def _checkpoints(directory):
    directory.mkdir(parents=True)
    (directory / "last.ckpt").write_bytes(b"")
    return directory


def test_another_runs_checkpoint_directory_is_refused_even_when_resuming(tmp_path):
    old_checkpoints = _checkpoints(tmp_path / "old" / "checkpoints")
    for resuming in (False, True):
        with pytest.raises(OccupiedRunDirectory, match=r"checkpoint\.dirpath=.* another run's"):
            refuse_occupied(tmp_path / "new", old_checkpoints, resuming=resuming)


def test_a_run_resumed_in_its_own_directory_is_not_refused(tmp_path):
    root = tmp_path / "run"
    _checkpoints(root / "checkpoints")
    (root / "results.json").write_text("{}")
    refuse_occupied(root, root / "checkpoints", resuming=True)
    elsewhere = _checkpoints(tmp_path / "fast-disk")  # its checkpoints kept outside the root
    refuse_occupied(root, elsewhere, resuming=True)
    with pytest.raises(OccupiedRunDirectory, match=r"trainer\.default_root_dir=.* already holds"):
        refuse_occupied(root, root / "checkpoints")

"""`fellrec compare`: strategies on the same data one after another, skipping finished ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from fellrec.cli import main
from fellrec.commands.compare import (
    config_value,
    fit_arguments,
    is_wandb_logger,
    parse_strategies,
)
from fellrec.reporting.report import REPORT_HTML, REPORT_MD
from fellrec.training.records.results import RESULTS_FILE
from test_cli import write_tiny_config
from test_wandb_offline import read_offline_run, wandb_logger_config


@pytest.fixture(scope="module")
def compared(tmp_path_factory, tiny_encoder_dir):
    directory = tmp_path_factory.mktemp("compare")
    config = write_tiny_config(directory, tiny_encoder_dir)
    settings = yaml.safe_load(config.read_text())
    settings["trainer"]["logger"] = wandb_logger_config()
    config.write_text(yaml.safe_dump(settings))
    root = directory / "runs"
    args = ["compare", "--config", str(config), "--strategies", "local,fedavg"]
    args += ["--output", str(root), "--group", "paper-table", "--trainer.max_epochs", "1"]
    args += ["--baselines", "bpr"]
    main(args)
    return args, root


def test_each_strategy_runs_in_its_own_directory_on_the_same_data(compared):
    _, root = compared
    local = json.loads((root / "local" / RESULTS_FILE).read_text())
    fedavg = json.loads((root / "fedavg" / RESULTS_FILE).read_text())
    assert (local["strategy"], fedavg["strategy"]) == ("local", "fedavg")
    assert local["rounds_run"] == fedavg["rounds_run"] == 1  # the override reached both
    # Same data, clients and seed: identical test users per client and popularity baseline.
    assert local["popularity"] == fedavg["popularity"]
    users = {c: row["users"] for c, row in local["clients"].items()}
    assert users == {c: row["users"] for c, row in fedavg["clients"].items()}
    assert (root / "local" / "clients.csv").read_text() == (
        root / "fedavg" / "clients.csv"
    ).read_text()
    assert (root / "local" / "plots").is_dir()


def test_runs_share_a_wandb_group_and_are_named_by_strategy(compared):
    _, root = compared
    for strategy in ("local", "fedavg"):
        run = read_offline_run(root / strategy)  # save_dir was set to the run's directory
        assert run.run.run_group == "paper-table"
        assert run.run.display_name == strategy
        assert "test/client/0/ndcg@10" in run.summary


def test_report_has_a_row_per_strategy(compared):
    _, root = compared
    markdown = (root / REPORT_MD).read_text()
    assert (root / REPORT_HTML).is_file()
    for strategy in ("local", "fedavg"):
        results = json.loads((root / strategy / RESULTS_FILE).read_text())
        ndcg = f"{results['overall']['ndcg@10']:.4f}"
        rows = [line for line in markdown.splitlines() if line.startswith(f"| {strategy} |")]
        assert any(ndcg in row.replace("**", "") for row in rows), strategy


def test_baselines_run_on_the_same_clients_and_join_the_report(compared):
    _, root = compared
    bpr = json.loads((root / "bpr" / RESULTS_FILE).read_text())
    local = json.loads((root / "local" / RESULTS_FILE).read_text())
    assert bpr["strategy"] == "bpr"
    assert {c: r["users"] for c, r in bpr["clients"].items()} == {
        c: r["users"] for c, r in local["clients"].items()
    }
    assert bpr["popularity"] == local["popularity"]
    assert any(line.startswith("| bpr |") for line in (root / REPORT_MD).read_text().splitlines())


def test_rerun_skips_finished_strategies(compared, capsys):
    args, root = compared
    stamps = {s: (root / s / RESULTS_FILE).stat().st_mtime_ns for s in ("local", "fedavg")}
    main(args)
    out = capsys.readouterr().out
    assert "local already finished" in out and "fedavg already finished" in out
    assert stamps == {s: (root / s / RESULTS_FILE).stat().st_mtime_ns for s in stamps}
    assert not list((root / "local" / "wandb").glob("offline-run-*"))[1:]  # no second run


def test_unknown_strategy_fails_before_any_training(tmp_path, tiny_encoder_dir, capsys):
    config = write_tiny_config(tmp_path, tiny_encoder_dir)
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", "--config", str(config), "--strategies", "local,fedmagic"])
    assert exit_info.value.code == 2
    assert "unknown strategy 'fedmagic'" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists()  # nothing was prepared


def test_parse_strategies_keeps_order_and_drops_repeats():
    assert parse_strategies(" fellrec, fedavg,fellrec ,local") == ["fellrec", "fedavg", "local"]
    with pytest.raises(ValueError, match="empty"):
        parse_strategies(" , ")


def test_config_value_follows_config_order_then_overrides(tmp_path):
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text(yaml.safe_dump({"trainer": {"default_root_dir": "runs/a", "max_epochs": 3}}))
    second.write_text(yaml.safe_dump({"trainer": {"default_root_dir": "runs/b"}}))
    key = "trainer.default_root_dir"
    assert config_value([first, second], [], key) == "runs/b"
    assert config_value([first, second], ["--trainer.default_root_dir", "x"], key) == "x"
    assert config_value([first], ["--trainer.default_root_dir=y"], key) == "y"
    assert config_value([second], [], "trainer.max_epochs") is None
    with pytest.raises(ValueError, match="no such file"):
        config_value([tmp_path / "missing.yaml"], [], key)


def test_fit_arguments_switch_only_the_strategy_and_directories(tmp_path):
    config = tmp_path / "c.yaml"
    run = tmp_path / "runs" / "fedprox"
    args = fit_arguments([config], ["--data.seed", "3"], "fedprox", run, group="g")
    assert args[:3] == ["fit", "--config", str(config)]
    assert args[args.index("--loop.strategy") + 1] == "fellrec.federation.strategies.FedProx"
    assert args[args.index("--trainer.default_root_dir") + 1] == str(run)
    assert args[args.index("--checkpoint.dirpath") + 1] == str(run / "checkpoints")
    assert args[args.index("--trainer.logger.init_args.group") + 1] == "g"
    assert args[args.index("--trainer.logger.init_args.name") + 1] == "fedprox"
    assert "--data.seed" in args and "--ckpt_path" not in args
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    resumed = fit_arguments([config], [], "fedprox", run, group=None)
    assert resumed[-2:] == ["--ckpt_path", str(run / "checkpoints" / "last.ckpt")]
    assert not any(a.startswith("--trainer.logger") for a in resumed)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("lightning.pytorch.loggers.WandbLogger", True),
        ({"class_path": "WandbLogger", "init_args": {}}, True),
        ({"class_path": "lightning.pytorch.loggers.CSVLogger"}, False),
        (None, False),
        ([{"class_path": "lightning.pytorch.loggers.WandbLogger"}], False),
    ],
)
def test_is_wandb_logger(spec, expected):
    assert is_wandb_logger(spec) is expected


def test_results_file_name_matches_the_training_side():
    from fellrec.reporting.runs import RESULTS_FILE as REPORTING_RESULTS_FILE

    assert Path(REPORTING_RESULTS_FILE) == Path(RESULTS_FILE)

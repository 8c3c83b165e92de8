"""wandb through Lightning's WandbLogger (configured in YAML), offline, read back from its file."""

from __future__ import annotations

import csv
import json
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from unittest.mock import MagicMock

import pytest
import yaml
from lightning.pytorch.loggers import CSVLogger, WandbLogger

from fellrec.cli import main
from fellrec.commands.compare import finish_wandb_run
from fellrec.reporting import wandb_log
from fellrec.training.records.results import RESULTS_FILE
from test_cli import write_tiny_config

pytest.importorskip("wandb")
import wandb
from google.protobuf.message import DecodeError
from wandb.proto import wandb_internal_pb2

WANDB_LOGGER = "lightning.pytorch.loggers.WandbLogger"
_BLOCK, _HEADER = 32768, 7  # the run file is a LevelDB-style log of 32 KiB blocks


def _log_chunks(data: bytes):
    """Records of wandb's transaction log: `:W&B` header, then 7-byte record headers per block."""
    assert data[:4] == b":W&B", "not a wandb run file"
    position, pending = 7, b""
    while position + _HEADER <= len(data):
        left = _BLOCK - position % _BLOCK
        if left < _HEADER:  # a block's tail too short for a header is zero padding
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + _HEADER])
        position += _HEADER
        chunk = data[position : position + length]
        position += length
        if kind == 1:  # full
            yield chunk
        elif kind == 2:  # first
            pending = chunk
        elif kind == 3:  # middle
            pending += chunk
        elif kind == 4:  # last
            yield pending + chunk
            pending = b""
        elif kind == 0 and length == 0:
            break


@dataclass
class OfflineRun:
    """What an offline run recorded: run settings, metric definitions, history rows, summary."""

    directory: Path
    run: object = None
    metrics: list = field(default_factory=list)
    history: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)

    def table(self, row: dict, key: str) -> dict:
        """The JSON of a table logged under ``key`` in a history row."""
        return json.loads((self.directory / "files" / row[f"{key}/path"]).read_text())


def read_offline_run(root: Path, timeout: float = 20.0, expected_runs: int = 1) -> OfflineRun:
    """Parse the newest ``<root>/wandb/offline-run-*/run-*.wandb`` with wandb's own records.

    wandb's service may still be writing the file for a moment after ``finish()`` returns: read
    until the run's ``exit`` record is there.
    """
    runs = sorted((root / "wandb").glob("offline-run-*"))
    assert len(runs) == expected_runs, f"expected {expected_runs} runs in {root}/wandb: {runs}"
    deadline = time.monotonic() + timeout
    while True:
        result, finished = _parse_run(runs[-1])
        if finished or time.monotonic() > deadline:
            assert finished, f"{runs[0]} has no exit record after {timeout} s"
            return result
        time.sleep(0.2)


def _parse_run(directory: Path) -> tuple[OfflineRun, bool]:
    files = list(directory.glob("run-*.wandb"))
    assert len(files) == 1
    result, finished = OfflineRun(directory=directory), False
    for chunk in _log_chunks(files[0].read_bytes()):
        record = wandb_internal_pb2.Record()
        try:
            record.ParseFromString(chunk)
        except DecodeError:  # a record still being written
            return result, False
        kind = record.WhichOneof("record_type")
        if kind == "run":
            result.run = record.run
        elif kind == "metric":
            result.metrics.append(record.metric)
        elif kind == "history":
            result.history.append(
                {
                    "/".join(item.nested_key) or item.key: json.loads(item.value_json)
                    for item in record.history.item
                }
            )
        elif kind == "summary":
            for item in record.summary.update:
                result.summary["/".join(item.nested_key) or item.key] = json.loads(item.value_json)
        elif kind == "exit":
            finished = True
    return result, finished


def wandb_logger_config(project: str = "fellrec-test") -> dict:
    return {"class_path": WANDB_LOGGER, "init_args": {"project": project, "offline": True}}


@pytest.fixture(scope="module")
def wandb_run(tmp_path_factory, tiny_encoder_dir):
    directory = tmp_path_factory.mktemp("wandb")
    config = write_tiny_config(directory, tiny_encoder_dir)
    settings = yaml.safe_load(config.read_text())
    root = directory / "run"
    settings["trainer"]["default_root_dir"] = str(root)
    settings["trainer"]["logger"] = wandb_logger_config()
    settings["trainer"]["logger"]["init_args"]["save_dir"] = str(root)
    config.write_text(yaml.safe_dump(settings))
    try:
        main(["fit", "--config", str(config)])
    finally:
        finish_wandb_run()
    results = json.loads((root / RESULTS_FILE).read_text())
    return results, read_offline_run(root), root


def test_rounds_are_the_step_axis(wandb_run):
    _, run, _ = wandb_run
    globs = [m for m in run.metrics if m.glob_name == "*"]
    # Lightning defines the global step first; the loop's definition comes later and wins.
    assert globs[-1].step_metric == "round" and globs[-1].options.step_sync
    assert any(m.name == "round" for m in run.metrics)
    assert all("round" in row for row in run.history)


def test_per_client_and_balance_keys_each_round(wandb_run):
    results, run, _ = wandb_run
    rows = [row for row in run.history if "val/ndcg@10" in row]
    assert [row["round"] for row in rows] == [0, 1]
    for row, record in zip(rows, results["history"], strict=True):
        for client in range(3):
            assert row[f"client/{client}/val/ndcg@10"] == pytest.approx(
                record["val"]["clients"][str(client)]["ndcg@10"], abs=1e-6
            )
            assert row[f"client/{client}/train/loss"] == pytest.approx(
                record["train_loss"][client], rel=1e-5
            )
            assert row[f"client/{client}/lr"] == pytest.approx(record["lr"][client], rel=1e-5)
            assert f"client/{client}/heating_weight" in row
        for stat in ("mean", "std", "min", "max", "gap", "gini", "jain"):
            assert row[f"balance/val/ndcg@10/{stat}"] == pytest.approx(
                record["val"]["balance"]["ndcg@10"][stat], abs=1e-6
            )


def test_round_tables_and_similarity_heatmaps(wandb_run):
    results, run, _ = wandb_run
    table_rows = [row for row in run.history if "federation/clients/path" in row]
    assert [row["round"] for row in table_rows] == [0, 1]
    for row, record in zip(table_rows, results["history"], strict=True):
        assert row["federation/clients/_type"] == "table-file"
        table = run.table(row, "federation/clients")
        columns = table["columns"]
        assert columns[:2] == ["client", "users"]
        assert {"ndcg@10", "train_loss", "lr", "heating_weight"} <= set(columns)
        assert [r[0] for r in table["data"]] == [0, 1, 2]
        for client, values in enumerate(table["data"]):
            cell = dict(zip(columns, values, strict=True))
            assert cell["lr"] == pytest.approx(record["lr"][client])
            assert cell["heating_weight"] == pytest.approx(record["heating_weight"][client])
            assert cell["ndcg@10"] == pytest.approx(
                record["val"]["clients"][str(client)]["ndcg@10"]
            )
    images = [row for row in run.history if "federation/similarity/filenames" in row]
    assert [row["round"] for row in images] == [0, 1]
    for row in images:
        png = run.directory / "files" / row["federation/similarity/filenames"][0]
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_test_results_as_summary_and_table(wandb_run):
    results, run, _ = wandb_run
    for client, row in results["clients"].items():
        assert run.summary[f"test/client/{client}/ndcg@10"] == pytest.approx(row["ndcg@10"])
    assert run.summary["test/ndcg@10"] == pytest.approx(results["overall"]["ndcg@10"], abs=1e-6)
    assert run.summary["test/balance/ndcg@10/jain"] == pytest.approx(
        results["balance"]["ndcg@10"]["jain"]
    )
    (row,) = [row for row in run.history if "test/clients/path" in row]
    table = run.table(row, "test/clients")
    assert [r[0] for r in table["data"]] == ["0", "1", "2", "overall"]
    overall = dict(zip(table["columns"], table["data"][-1], strict=True))
    assert overall["ndcg@10"] == pytest.approx(results["overall"]["ndcg@10"])
    assert overall["users"] == results["overall"]["users"]
    # The run's resource accounting: its display table and its numbers.
    (row,) = [row for row in run.history if "resources/path" in row]
    assert len(run.table(row, "resources")["data"]) == len(results["resources"]["table"])
    memory = results["resources"]["client"]["memory_bytes"]
    assert run.summary["resources/client/memory_bytes"] == memory


def test_the_run_lands_in_the_configured_project_and_directory(wandb_run):
    _, run, _ = wandb_run
    assert run.run.project == "fellrec-test"
    assert run.directory.parent.parent.name == "run"  # <default_root_dir>/wandb/offline-run-*


def test_a_wandb_run_still_writes_metrics_csv_and_hparams(wandb_run):
    results, _, root = wandb_run
    with (root / "metrics.csv").open(newline="") as file:
        rows = list(csv.DictReader(file))
    assert [row["epoch"] for row in rows] == ["0", "1", "2"]  # two rounds, then the test
    assert float(rows[-1]["test/ndcg@10"]) == pytest.approx(results["overall"]["ndcg@10"])
    assert yaml.safe_load((root / "hparams.yaml").read_text())["num_clients"] == 3


class RecordingWandbLogger(WandbLogger):
    """A WandbLogger that records what it is asked to log instead of starting wandb."""

    def __init__(self):
        super().__init__(offline=True)
        self.tables = {}
        self.summary = {}

    @property
    def experiment(self):
        return SimpleNamespace(summary=self.summary)

    def log_table(self, key, columns=None, data=None, dataframe=None, step=None):
        self.tables[key] = (columns, data)


def test_resources_and_privacy_become_tables_and_summary_values():
    logger = RecordingWandbLogger()
    trainer = SimpleNamespace(loggers=[logger], global_step=7)
    results = {
        "overall": {"ndcg@10": 0.3, "users": 10},
        "clients": {"0": {"users": 10, "ndcg@10": 0.3}},
        "balance": {"ndcg@10": {"jain": 1.0}},
        "resources": {
            "k_front": 1,
            "split": True,
            "lora_target_modules": ["query", "value"],
            "client": {"memory_bytes": 6437504, "blocks": 2},
            "measured": {"bytes_per_step": 144474.0},
            "table": [
                {"quantity": "blocks", "client": "2", "server": "1"},
                {"quantity": "shape", "client": [2, 3], "server": None},
            ],
        },
        "privacy": {"curve": [{"k_front": 1, "token_recovery": 0.9}]},
    }
    wandb_log.log_test(trainer, results)
    columns, rows = logger.tables["resources"]
    assert columns == ["quantity", "client", "server"]
    assert rows == [["blocks", "2", "1"], ["shape", "[2, 3]", None]]  # lists travel as JSON text
    assert logger.tables["privacy"] == (["k_front", "token_recovery"], [[1, 0.9]])
    assert logger.summary["resources/client/memory_bytes"] == 6437504.0
    assert logger.summary["resources/measured/bytes_per_step"] == 144474.0
    assert logger.summary["resources/k_front"] == 1.0
    assert not any(key.startswith("resources/table") for key in logger.summary)
    assert "resources/split" not in logger.summary  # booleans are settings, not numbers
    assert logger.summary["privacy/token_recovery/k_front=1"] == 0.9
    assert logger.summary["test/client/0/ndcg@10"] == 0.3
    assert logger.tables["test/clients"][1][-1] == ["overall", 10, 0.3]


def test_runs_without_a_wandb_logger_log_nothing():
    # A CSV logger stands for every other logger: the wandb extras must not call any of its
    # methods (its scalars come from the loop's log_dict), nor start a wandb run.
    other = MagicMock(spec=CSVLogger)
    results = {
        "overall": {"ndcg@10": 0.3, "users": 10},
        "clients": {"0": {"users": 10, "ndcg@10": 0.3}},
        "balance": {"ndcg@10": {"jain": 1.0}},
        "privacy": {"curve": [{"k_front": 1, "token_recovery": 0.9}]},
    }
    for loggers in ([], [other]):
        trainer = SimpleNamespace(loggers=loggers, global_step=0)
        wandb_log.log_test(trainer, results)
        wandb_log.log_round(trainer, {"round": 0, "similarity": [[1.0]]}, 1)
        wandb_log.use_round_axis(trainer)
    assert other.mock_calls == []
    assert wandb.run is None


def test_a_resumed_run_has_every_round_in_its_new_wandb_run(tmp_path, tiny_encoder_dir):
    config = write_tiny_config(tmp_path, tiny_encoder_dir)
    settings = yaml.safe_load(config.read_text())
    root = tmp_path / "run"
    settings["trainer"]["logger"] = wandb_logger_config()
    settings["trainer"]["logger"]["init_args"]["save_dir"] = str(root)
    config.write_text(yaml.safe_dump(settings))
    args = ["fit", "--config", str(config), "--trainer.default_root_dir", str(root)]
    try:  # round 0, then a resume that runs round 1 in a new wandb run
        main([*args, "--trainer.max_epochs", "1"])
        finish_wandb_run()
        main([*args, "--trainer.max_epochs", "2", "--ckpt_path", "last"])
    finally:
        finish_wandb_run()
    run = read_offline_run(root, expected_runs=2)
    history = json.loads((root / RESULTS_FILE).read_text())["history"]
    rows = [row for row in run.history if "val/ndcg@10" in row]
    assert [row["round"] for row in rows] == [0, 1]
    for row, record in zip(rows, history, strict=True):
        assert row["val/ndcg@10"] == pytest.approx(record["val"]["overall"]["ndcg@10"], abs=1e-6)
        assert row["client/0/train/loss"] == pytest.approx(record["train_loss"][0], rel=1e-5)
    tables = [row for row in run.history if f"{wandb_log.ROUND_TABLE_KEY}/path" in row]
    assert len(tables) == 2  # the replayed round's table, then the new round's

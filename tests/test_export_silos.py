"""``fellrec data export-silos``: a simulated partition written as silos simulates exactly the same.

The property: the silos' simulation gives every client the same training examples (in the same
order), the same validation and test users (histories, targets, consumed items), the same item
indices and the same batches as the original simulation; and therefore the same per-client
metrics in a real ``fellrec fit``. A deployed client reads only its own silo and the catalog.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from fellrec.cli import main
from fellrec.config_parser import DATA_SECTIONS, config_parser, instantiate
from fellrec.data.export import export_silos
from fellrec.data.pipeline import FederatedData
from fellrec.training.batches.datamodule import FederatedDataModule
from fellrec.training.records.results import RESULTS_FILE
from test_cli import write_tiny_config

SYNTHETIC = {"num_users": 40, "num_items": 40, "num_categories": 4}


def write_tied_tables(directory: Path) -> dict[str, Any]:
    """The synthetic data as tabular files with coarse times: many ties, kept in file order."""
    from fellrec.data.synthetic import generate_synthetic

    raw = generate_synthetic(seed=0, **SYNTHETIC)
    interactions = raw.interactions.assign(timestamp=raw.interactions["timestamp"] // 2_000_000)
    interactions.to_csv(directory / "interactions.csv", index=False)
    items = raw.items.assign(categories=["|".join(c) for c in raw.items["categories"]])
    items.to_csv(directory / "items.csv", index=False)
    return {
        "format": "tabular",
        "path": str(directory / "interactions.csv"),
        "options": {"items": str(directory / "items.csv"), "category_column": "categories"},
        "kcore": 2,
    }


def write_config(directory: Path, **data: Any) -> Path:
    config = {
        "data": {
            "dataset": {"format": "synthetic", "options": dict(SYNTHETIC), "kcore": 2},
            "history_length": 3,
            "num_clients": 3,
            "batch_size": 4,
            "local_epochs": 2,
            "cache_dir": str(directory / "cache"),
            **data,
        }
    }
    path = directory / "base.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def datamodule(*args: str) -> FederatedDataModule:
    """The data module of ``fellrec fit`` with these ``--config``/``--data.*`` arguments, set up."""
    parser = config_parser("test", "", DATA_SECTIONS)
    module = instantiate(parser, parser.parse_args(list(args))).data
    module.setup("fit")
    return module


def client_view(module: FederatedDataModule, client: int) -> dict[str, Any]:
    """Everything one client trains and is evaluated on, in its order, free of user indices."""
    data: FederatedData = module.data
    rows = np.flatnonzero(data.example_clients() == client)
    position = {int(row): p for p, row in enumerate(rows)}
    view: dict[str, Any] = {
        "items": data.dataset.item_ids.tolist(),
        "texts": (data.dataset.titles, data.dataset.categories),
        "histories": data.examples.histories[rows].tolist(),
        "targets": data.examples.targets[rows].tolist(),
        "batches": [
            [position[int(i)] for i in batch.indices]
            for round_index in (0, 1)
            for batch in module.round_plan(round_index)
            if batch.client == client
        ],
    }
    for period, users in (("valid", data.split.valid), ("test", data.split.test)):
        chosen = np.flatnonzero(data.assignment[users.users] == client)
        view[period] = [
            (
                str(data.dataset.user_ids[users.users[p]]),
                users.histories[p].tolist(),
                users.targets[p].tolist(),
                users.consumed[p].tolist(),
            )
            for p in chosen
        ]
    return view


@pytest.mark.parametrize(
    ("split", "partition"),
    [
        ("leave_one_out", "kmeans"),
        ("leave_one_out", "iid"),
        ("leave_one_out", "dirichlet"),
        ("leave_one_out", "attribute"),
        ("temporal", "kmeans"),
        ("leave_one_out", "tabular-ties"),
        ("temporal", "tabular-ties"),
    ],
)
def test_the_silo_simulation_equals_the_original(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, split: str, partition: str
) -> None:
    settings: dict[str, Any] = {"partition": partition, "partition_attribute": "segment"}
    if partition == "tabular-ties":
        settings = {"partition": "iid", "dataset": write_tied_tables(tmp_path)}
    base = write_config(tmp_path, split=split, **settings)
    original = datamodule("--config", str(base))
    monkeypatch.chdir(tmp_path)  # relative paths in the overlay, as a user would write them
    exported = export_silos(original.data, Path("export"))
    overlay = yaml.safe_load(exported.overlay.read_text())["data"]
    assert overlay["silos"] == [f"export/client_{c}/interactions.csv" for c in range(3)]
    assert ("temporal_cutoffs" in overlay) == (split == "temporal")
    assert overlay["split"] == split  # the split it was exported with, override or not
    silos = datamodule("--config", str(base), "--config", str(exported.overlay))
    assert silos.data.silos and silos.data.num_clients == 3
    for client in range(3):
        assert client_view(silos, client) == client_view(original, client)

    # A deployed client: a working directory holding only its silo, the catalog and the config.
    node = tmp_path / "node-1"
    (node / "export" / "client_1").mkdir(parents=True)
    shutil.copy(tmp_path / "export" / "catalog.csv", node / "export")
    shutil.copy(exported.silos[1], node / "export" / "client_1")
    shutil.copy(base, node)
    shutil.copy(exported.overlay, node)
    monkeypatch.chdir(node)
    deployed = ["--config", "base.yaml", "--config", "silos.yaml", "--data.cache_dir", "cache"]
    for served in (
        ["--data.client", "1"],
        ["--data.silo", "export/client_1", "--data.client", "1"],
    ):
        alone = datamodule(*deployed, *served)
        assert sorted(p.name for p in node.iterdir()) == [
            "base.yaml",
            "cache",
            "export",
            "silos.yaml",
        ]
        assert set(alone.data.assignment.tolist()) == {1}
        assert client_view(alone, 1) == client_view(original, 1)
        shutil.rmtree(node / "cache")


def test_export_refuses_a_non_empty_directory_unless_forced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = write_config(tmp_path, split="leave_one_out", partition="iid")
    output = tmp_path / "out"
    output.mkdir()
    (output / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit):
        main(["data", "export-silos", "--config", str(base), "--output", str(output)])
    assert "is not empty; choose a new one, or pass --force" in capsys.readouterr().err
    main(["data", "export-silos", "--config", str(base), "--output", str(output), "--force"])
    printed = capsys.readouterr().out
    assert f"fellrec fit --config {base} --config {output / 'silos.yaml'}" in printed
    assert (output / "notes.txt").read_text() == "mine"  # what it did not write stays
    assert len(list(output.glob("client_*/interactions.csv"))) == 3


def test_a_fit_of_the_exported_silos_equals_the_original_fit(
    tmp_path: Path, tiny_encoder_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """2 rounds of a tiny model: the same per-client metrics and training losses."""
    config = write_tiny_config(
        tmp_path,
        tiny_encoder_dir,
        dataset={"format": "synthetic", "options": dict(SYNTHETIC)},
        split="leave_one_out",
        partition="kmeans",
        max_train_examples=None,
    )
    monkeypatch.chdir(tmp_path)
    main(["fit", "--config", str(config), "--trainer.default_root_dir", "original"])
    main(["data", "export-silos", "--config", str(config), "--output", "silos"])
    overlay = ["--config", "silos/silos.yaml"]
    main(["fit", "--config", str(config), *overlay, "--trainer.default_root_dir", "from-silos"])
    expected = json.loads((tmp_path / "original" / RESULTS_FILE).read_text())
    got = json.loads((tmp_path / "from-silos" / RESULTS_FILE).read_text())
    assert got["client_best_rounds"] == expected["client_best_rounds"]
    for client in ("0", "1", "2"):
        assert got["clients"][client] == pytest.approx(expected["clients"][client], abs=1e-6)
    for record, reference in zip(got["history"], expected["history"], strict=True):
        assert record["train_loss"] == pytest.approx(reference["train_loss"], abs=1e-6)
    # The popularity baseline is the one thing that changes: each silo counts its own data.
    assert got["popularity"]["clients"] != expected["popularity"]["clients"]


def test_a_share_of_evaluated_users_is_the_same_people_in_silos_and_centrally(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = write_config(tmp_path, split="leave_one_out", eval_user_fraction=0.5)
    original = datamodule("--config", str(base))
    everyone = datamodule("--config", str(base), "--data.eval_user_fraction", "1")
    for period in ("valid", "test"):
        kept = getattr(original.data.split, period).users
        full = getattr(everyone.data.split, period).users
        assert 0 < len(kept) < len(full) and set(kept) <= set(full)
    # The same users in both periods (each keeps its own targets), training untouched.
    both = set(everyone.data.split.valid.users) & set(everyone.data.split.test.users)
    assert set(original.data.split.valid.users) & both == set(original.data.split.test.users) & both
    assert original.data.examples.targets.tolist() == everyone.data.examples.targets.tolist()
    monkeypatch.chdir(tmp_path)
    exported = export_silos(everyone.data, Path("export"))
    silos = datamodule("--config", str(base), "--config", str(exported.overlay))
    served = datamodule(
        "--config", str(base), "--config", str(exported.overlay), "--data.client", "2"
    )
    for client in range(3):
        assert client_view(silos, client) == client_view(original, client)
    assert client_view(served, 2) == client_view(original, 2)

"""A deployment whose every party holds only its own data equals the simulation of those silos.

Real processes on loopback: a SuperLink, one SuperNode and one client worker per client, each
party in a working directory of its own that holds only its silo, the public catalog and the
config (the export the silos came from is deleted before the deployment starts, and each party
has its own data cache), so a client cannot read another's interactions; the server's directory
holds no data at all.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

pytest.importorskip(
    "flwr", reason="the flower extra is not installed (Flower needs Python >= 3.11)"
)

from safetensors.torch import load_file

from fellrec.cli import main
from fellrec.deploy.server import PARAMETERS_FILE
from fellrec.lightning_cli import make_cli
from fellrec.training.rounds.loop import FederatedLoop
from test_cli import write_tiny_config

APP = Path(__file__).resolve().parent.parent / "flower-app"
STRATEGIES = ("FELLRec", "FedAvg")


def _party(root: Path, name: str, files: list[Path], source: Path) -> Path:
    """A party's own directory holding copies of ``files`` (paths relative to ``source``)."""
    directory = root / name
    for relative in files:
        target = directory / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if (source / relative).is_dir():
            shutil.copytree(source / relative, target)
        else:
            shutil.copy2(source / relative, target)
    return directory


@pytest.mark.slow
def test_silos_deployed_in_their_own_directories_equal_their_simulation(
    tmp_path, tiny_encoder_dir, monkeypatch
):
    from flower_deployment import Deployment

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FELLREC_CACHE", str(tmp_path / "cache-simulation"))
    config = write_tiny_config(
        tmp_path, tiny_encoder_dir, num_clients=2, max_train_examples=None, cache_dir=None
    )
    config = config.rename(tmp_path / "config.yaml").relative_to(tmp_path)
    # The clients of a simulated (iid) partition, as silo files with relative paths.
    main(["data", "export-silos", "--config", str(config), "--output", "silos"])
    overlay = Path("silos/silos.yaml")
    data = yaml.safe_load(overlay.read_text())["data"]
    assert data["silos"] == [f"silos/client_{c}/interactions.csv" for c in (0, 1)]

    # The simulation of those silos, in this process, per strategy.
    expected: dict[str, tuple[dict, torch.Tensor]] = {}
    for strategy in STRATEGIES:
        root = tmp_path / f"simulated-{strategy}"
        cli = make_cli(
            [
                "fit",
                *("--config", str(config), "--config", str(overlay)),
                *("--loop.strategy", f"fellrec.federation.strategies.{strategy}"),
                *("--trainer.default_root_dir", str(root)),
            ]
        )
        loop = next(c for c in cli.trainer.callbacks if isinstance(c, FederatedLoop))
        assert loop.selection is not None and loop.selection.best_parameters is not None
        results = json.loads((root / "results.json").read_text())
        expected[strategy] = (results, loop.selection.best_parameters.clone())

    # Each party gets its own directory: the configs, the catalog and its own silo only.
    parties = tmp_path / "parties"
    shared = [config, overlay]
    server = _party(parties, "server", shared, tmp_path)
    clients = [
        _party(
            parties,
            f"client-{c}",
            [*shared, Path("silos/catalog.csv"), Path(data["silos"][c])],
            tmp_path,
        )
        for c in (0, 1)
    ]
    shutil.rmtree(tmp_path / "silos")  # no other copy of any silo is left
    for c, directory in enumerate(clients):
        present = sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())
        assert present == sorted(
            ["config.yaml", "silos/silos.yaml", "silos/catalog.csv", data["silos"][c]]
        )

    with Deployment(tmp_path / "flower") as deployment:
        deployment.start_superlink(cwd=server)
        for c, directory in enumerate(clients):
            own = {"FELLREC_CACHE": str(directory / ".cache")}
            deployment.start_worker(c, cwd=directory, env=own)
            deployment.start_supernode(c, 2, silo=data["silos"][c], cwd=directory, env=own)
        deployment.wait_online(2)
        for strategy in STRATEGIES:
            overrides = (
                f"--loop.strategy fellrec.federation.strategies.{strategy} "
                f"--trainer.default_root_dir deployed-{strategy}"
            )
            run_id, output = deployment.run(
                APP,
                {
                    "fellrec-config": f"{config},{overlay}",
                    "fellrec-overrides": overrides,
                    "wait-timeout": 120.0,
                },
            )
            status = deployment.status(run_id)
            assert status["status"] == "finished:completed", (
                f"{status}\n{output}\n{deployment.log('worker-0')}\n{deployment.log('superlink')}"
            )
    assert deployment.alive() == []

    for strategy in STRATEGIES:
        simulated, selected = expected[strategy]
        deployed_root = server / f"deployed-{strategy}"
        deployed = json.loads((deployed_root / "results.json").read_text())
        assert list(deployed) == list(simulated)  # one results.json schema
        assert deployed["client_best_rounds"] == simulated["client_best_rounds"]
        for client in ("0", "1"):
            assert deployed["clients"][client] == pytest.approx(
                simulated["clients"][client], abs=1e-6
            )
            # Each silo's own popularity baseline, computed where the silo is.
            assert deployed["popularity"]["clients"][client] == pytest.approx(
                simulated["popularity"]["clients"][client], abs=1e-12
            )
        for record, reference in zip(deployed["history"], simulated["history"], strict=True):
            assert record["train_loss"] == pytest.approx(reference["train_loss"], abs=1e-6)
            assert record["lr"] == pytest.approx(reference["lr"], abs=1e-9)
            for client in ("0", "1"):
                assert record["val"]["clients"][client] == pytest.approx(
                    reference["val"]["clients"][client], abs=1e-6
                )
        parameters = load_file(str(deployed_root / PARAMETERS_FILE))
        for client in (0, 1):
            torch.testing.assert_close(
                parameters[f"client_{client}"], selected[client], rtol=0, atol=1e-6
            )
        # Each client exported its selected adapter where it runs, not on the server.
        for c, directory in enumerate(clients):
            assert (directory / f"deployed-{strategy}" / "adapters" / f"client_{c}").is_dir()

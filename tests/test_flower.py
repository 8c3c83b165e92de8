"""Flower deployment: messages, refusals, and a simulation equal to the in-process run."""

from __future__ import annotations

import json
import re
import sys

import pytest
import torch
from safetensors.torch import load_file

# The `flower` extra installs Flower where it runs: Python >= 3.11 (flwr >= 1.31 needs it).
pytest.importorskip(
    "flwr",
    reason="Flower (the flower extra) needs Python >= 3.11"
    if sys.version_info < (3, 11)
    else "the flower extra is not installed (pip install -e '.[flower]')",
)

from fellrec.deploy.client_session import check_deployable
from fellrec.deploy.messages import (
    EvaluationReport,
    TrainReport,
    evaluate_content,
    evaluation_request_from,
    parameters_from,
    round_config_from,
    train_content,
)
from fellrec.deploy.run_config import CONFIG_KEY, RunSettings, config_fingerprint
from fellrec.deploy.server import PARAMETERS_FILE
from fellrec.federation.engine import RESULTS_KEYS
from fellrec.federation.protocol import ClientRoundConfig
from fellrec.federation.strategies import Centralized, FedAvg
from fellrec.training.host.federated_module import FederatedModule
from test_cli import write_tiny_config


def test_a_train_message_carries_the_parameters_and_the_round_config_only():
    vector = torch.linspace(-1, 1, 7)
    config = ClientRoundConfig(round=3, lr_scale=0.25, proximal_mu=0.01, trains=True)
    content = train_content(vector, config)
    assert set(content) == {"parameters", "config"}
    assert torch.equal(parameters_from(content), vector)
    assert round_config_from(content) == config
    assert set(content["config"]) == {"round", "lr-scale", "proximal-mu", "trains"}


def test_reports_round_trip():
    train = TrainReport(
        client=2, parameters=torch.arange(4.0), loss_sum=3.5, examples=7.0, diverged=False
    )
    back = TrainReport.from_content(train.content())
    assert back.client == 2 and back.loss_sum == 3.5 and back.examples == 7.0
    assert not back.diverged and torch.equal(back.parameters, train.parameters)
    assert back.privacy_spent is None and "dp-epsilon" not in train.content()["report"]
    private = TrainReport(2, torch.arange(4.0), 3.5, 7.0, False, privacy_spent=(4.25, 0.005))
    assert TrainReport.from_content(private.content()).privacy_spent == (4.25, 0.005)
    values = torch.rand(5, 3, dtype=torch.float64)
    evaluation = EvaluationReport(client=1, sums=values.sum(0), users=5.0, values=values)
    again = EvaluationReport.from_content(evaluation.content())
    assert again.client == 1 and again.users == 5.0
    assert torch.equal(again.values, values) and torch.equal(again.sums, values.sum(0))
    assert again.popularity is None
    evaluation = EvaluationReport(1, values.sum(0), 5.0, values, values.sum(0) / 2, values / 2)
    again = EvaluationReport.from_content(evaluation.content())
    assert again.popularity is not None and torch.equal(again.popularity, values.sum(0) / 2)
    assert again.popularity_values is not None and torch.equal(again.popularity_values, values / 2)
    with pytest.raises(ValueError, match="go together"):
        EvaluationReport(1, values.sum(0), 5.0, values, popularity=values.sum(0))
    with pytest.raises(ValueError, match="stage"):
        evaluate_content(torch.zeros(2), "training")


def test_run_settings_come_from_the_flower_run_config():
    settings = RunSettings.from_flower(
        {CONFIG_KEY: "a.yaml, b.yaml", "fellrec-overrides": "--model.lr 0.01"}
    )
    assert settings.arguments("--data.client", "1") == [
        "--config",
        "a.yaml",
        "--config",
        "b.yaml",
        "--model.lr",
        "0.01",
        "--data.client",
        "1",
    ]
    with pytest.raises(ValueError, match="fellrec-config"):
        RunSettings.from_flower({})


def test_settings_a_deployment_cannot_run_are_refused():
    with pytest.raises(ValueError, match="not a federation"):
        check_deployable(FederatedModule(), Centralized())
    with pytest.raises(ValueError, match="reset_optimizer_each_round"):
        check_deployable(FederatedModule(reset_optimizer_each_round=False), FedAvg())


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["FELLRec", "FedAvg"])
def test_a_flower_simulation_equals_the_in_process_run(tmp_path, tiny_encoder_dir, strategy):
    """3 clients x 2 rounds: the same per-client test metrics and selected parameters."""
    from fellrec.deploy.simulation import simulate
    from fellrec.lightning_cli import make_cli
    from fellrec.training.rounds.loop import FederatedLoop

    config = write_tiny_config(tmp_path, tiny_encoder_dir)
    chosen = ["--loop.strategy", f"fellrec.federation.strategies.{strategy}"]
    in_process = tmp_path / "in-process"
    cli = make_cli(
        ["fit", "--config", str(config), *chosen, "--trainer.default_root_dir", str(in_process)]
    )
    loop = next(c for c in cli.trainer.callbacks if isinstance(c, FederatedLoop))
    flower = tmp_path / "flower"
    simulate(RunSettings((str(config),), (*chosen, "--trainer.default_root_dir", str(flower))))

    expected = json.loads((in_process / "results.json").read_text())
    got = json.loads((flower / "results.json").read_text())
    assert list(got) == list(expected)  # one schema
    assert got["deployment"]["engine"] == "flower" and got["strategy"] == expected["strategy"]
    assert got["client_best_rounds"] == expected["client_best_rounds"]
    for client in ("0", "1", "2"):
        assert got["clients"][client] == pytest.approx(expected["clients"][client], abs=1e-6)
    for section in ("overall", "clients", "balance", "ci"):  # the same baseline, intervals too
        assert got["popularity"][section] == expected["popularity"][section]
    for client in ("0", "1", "2"):  # intervals over the same users, resampled the same way
        for metric, interval in expected["ci"]["clients"][client].items():
            assert got["ci"]["clients"][client][metric] == pytest.approx(interval, abs=1e-6)
    for record, reference in zip(got["history"], expected["history"], strict=True):
        assert record["train_loss"] == pytest.approx(reference["train_loss"], abs=1e-6)
        assert record["lr"] == pytest.approx(reference["lr"], abs=1e-9)
    selected = load_file(str(flower / PARAMETERS_FILE))
    assert loop.selection is not None and loop.selection.best_parameters is not None
    for client in range(3):
        torch.testing.assert_close(
            selected[f"client_{client}"],
            loop.selection.best_parameters[client],
            rtol=0,
            atol=1e-6,
        )


@pytest.mark.slow
def test_a_simulation_log_written_to_a_file_is_plain_text(tmp_path, tiny_encoder_dir):
    """``python -m fellrec.deploy.simulation > file``: no colours, no deprecations (35-65 s)."""
    import os
    import subprocess

    from test_cli import cli_environment

    config = write_tiny_config(tmp_path, tiny_encoder_dir, num_clients=2)
    log = tmp_path / "simulation.log"
    root = tmp_path / "flower"
    command = [sys.executable, "-m", "fellrec.deploy.simulation", "--config", str(config)]
    with log.open("w") as out:
        subprocess.run(
            [*command, "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(root)],
            env={**cli_environment(), "TERM": os.environ.get("TERM", "xterm")},
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=600,
            check=True,
        )
    text = log.read_text()
    assert "\x1b[" not in text  # no ANSI escape codes (Flower's levels, Ray's prefixes)
    assert "deprecat" not in text.lower()  # jsonargparse's and run_simulation's notices
    pattern = r"^(INFO :\s+)?round 0: val ndcg@10 mean [\d.]+ worst [\d.]+"
    assert re.search(pattern, text, re.MULTILINE), text
    assert f"results in {root / 'results.json'}" in text


class FakeGrid:
    """A grid whose clients answer at once with fixed reports; ``silent`` maps round -> clients.

    A client that is silent in a round comes back on a new node (a restarted SuperNode).
    """

    def __init__(
        self,
        num_clients: int,
        size: int,
        silent: dict[int, set[int]],
        claims: dict[int, int] | None = None,
        hashes: dict[int, tuple[str, str]] | None = None,
    ):
        self.num_clients, self.size, self.silent = num_clients, size, silent
        self.sent: list[tuple[str, int, dict]] = []
        self.node_of = {c: 100 + c for c in range(num_clients)}
        #: The partition id a client's node claims (default its own), and the config and
        #: catalog fingerprints it describes (default none).
        self.claims = claims or {}
        self.hashes = hashes or {}

    def get_node_ids(self):
        return list(self.node_of.values())

    def send_and_receive(self, messages, timeout=None):
        from fellrec.deploy.messages import NodeDescription
        from fellrec.metrics.summary import metric_names

        replies = []
        client_of = {node: client for client, node in self.node_of.items()}
        for message in messages:
            client = client_of.get(message.metadata.dst_node_id)
            if client is None:
                continue  # a node that is gone
            kind = message.metadata.message_type
            self.sent.append((kind, client, message.content))
            if kind == "query":
                described = NodeDescription(
                    self.claims.get(client, client),
                    torch.zeros(self.size),
                    metric_names(),
                    *self.hashes.get(client, (None, None)),
                )
                content = described.content()
            elif kind == "train":
                config = round_config_from(message.content)
                if client in self.silent.get(config.round, set()):
                    self.node_of[client] += 100  # disconnected; restarts on a new node
                    continue
                trained = parameters_from(message.content) + (client + 1)
                content = TrainReport(client, trained, 2.0 * (client + 1), 2.0, False).content()
            else:
                values = torch.full(
                    (3, len(metric_names())), 0.1 * (client + 1), dtype=torch.float64
                )
                stage, _ = evaluation_request_from(message.content)
                # At the test the client also reports the popularity baseline: half its scores.
                popularity = values / 2 if stage == "test" else None
                content = EvaluationReport(
                    client,
                    values.sum(0),
                    3.0,
                    values,
                    None if popularity is None else popularity.sum(0),
                    popularity,
                )
                content = content.content()
            reply = FakeReply(content, self.node_of[client])
            replies.append(reply)
        return replies


class FakeMessage:
    def __init__(self, content, node, kind):
        self.content = content
        self.metadata = type("Metadata", (), {"dst_node_id": node, "message_type": kind})()


class FakeReply:
    def __init__(self, content, node):
        self.content = content
        self.metadata = type("Metadata", (), {"src_node_id": node})()
        self.error = None

    def has_error(self):
        return False


def test_a_client_that_does_not_answer_sits_the_round_out_and_rejoins(tmp_path, caplog):
    caplog.set_level("INFO", logger="fellrec.deploy")
    from fellrec.deploy.run_config import LoadedRun
    from fellrec.deploy.server import FederationServer
    from fellrec.training.batches.datamodule import FederatedDataModule
    from fellrec.training.rounds.loop import FederatedLoop

    run = LoadedRun(
        model=FederatedModule(lr=0.1),
        datamodule=FederatedDataModule(num_clients=3),
        loop=FederatedLoop(strategy=FedAvg(), bootstrap_resamples=0),
        rounds=3,
        root=str(tmp_path),
        trainer_settings={},
    )
    grid = FakeGrid(num_clients=3, size=4, silent={1: {2}})
    results = json.loads(
        FederationServer(run, grid, sleep=lambda s: None, make_message=FakeMessage)
        .fit()
        .read_text()
    )
    # The one schema `fellrec fit` writes too (tests/test_federated_fit.py checks its side).
    assert list(results) == list(RESULTS_KEYS) and results["resources"] is None
    history = results["history"]
    assert [r["absent"] for r in history] == [[], [2], []]  # it rejoined on a new node
    assert history[1]["train_loss"] == [1.0, 2.0, None]  # mean loss = loss sum / examples
    assert history[2]["train_loss"][2] == 3.0  # back in round 2, from its new node
    assert "round 1: clients [2] did not report" in caplog.text
    assert "client 2 rejoined (node 202)" in caplog.text
    # Round 0: FedAvg of 0+1, 0+2, 0+3 (equal sizes) = 2 for everyone; round 1 without client 2:
    # mean of 2+1 and 2+2 = 3.5 for everyone; round 2: 3.5 + mean(1, 2, 3) = 5.5.
    trains = [content for kind, _, content in grid.sent if kind == "train"]
    assert [float(parameters_from(c)[0]) for c in trains] == [0, 0, 0, 2, 2, 2, 3.5, 3.5, 3.5]
    assert results["clients"]["2"]["users"] == 3
    # Each client's popularity baseline over its 3 test users: 0.05 x (client + 1) per user.
    popularity = results["popularity"]
    assert [popularity["clients"][c]["ndcg@10"] for c in "012"] == pytest.approx([0.05, 0.1, 0.15])
    assert popularity["overall"]["users"] == 9
    selected = load_file(str(tmp_path / PARAMETERS_FILE))
    assert torch.equal(selected["client_0"], torch.full((4,), 2.0))  # ties keep the first round


def test_only_parameters_round_configs_losses_counts_and_metrics_cross(tmp_path):
    """Record every payload of a deployed run: nothing but what the protocol names crosses."""
    from fellrec.deploy.run_config import LoadedRun
    from fellrec.deploy.server import FederationServer
    from fellrec.training.batches.datamodule import FederatedDataModule
    from fellrec.training.rounds.loop import FederatedLoop

    run = LoadedRun(
        model=FederatedModule(lr=0.1),
        datamodule=FederatedDataModule(num_clients=2),
        loop=FederatedLoop(bootstrap_resamples=0),
        rounds=2,
        root=str(tmp_path),
        trainer_settings={},
    )
    grid = FakeGrid(num_clients=2, size=5, silent={})
    FederationServer(run, grid, sleep=lambda s: None, make_message=FakeMessage).fit()
    layouts: dict[str, list[dict]] = {}
    for kind, _, content in grid.sent:
        layout = {
            key: {name: tuple(getattr(value, "shape", ())) for name, value in record.items()}
            for key, record in content.items()
        }
        layouts.setdefault(kind, []).append(layout)
    assert layouts["query"] == [{}, {}]  # the server asks who is who, and sends nothing
    scalar = ()
    config = {"round": scalar, "lr-scale": scalar, "proximal-mu": scalar, "trains": scalar}
    # Per round and client: one parameter vector (P = 5) and the round config.
    assert layouts["train"] == [{"parameters": {"0": (5,)}, "config": config}] * 4
    validation = {"parameters": {"0": (5,)}, "config": {"stage": scalar}}
    # The final test also names each client's selected round (for the card of its adapter).
    selected = {"stage": scalar, "selected-round": scalar, "rounds-run": scalar}
    test = {"parameters": {"0": (5,)}, "config": selected}
    assert layouts["evaluate"] == [validation] * 4 + [test] * 2
    # Replies: the parameters plus a loss sum, an example count and a divergence flag (train);
    # metric sums, per-user values and a user count (evaluate).
    reply = TrainReport(0, torch.zeros(5), 1.0, 2.0, False).content()
    assert {key: sorted(record) for key, record in reply.items()} == {
        "parameters": ["0"],
        "report": ["diverged", "examples", "loss-sum", "partition-id"],
    }
    values = torch.zeros(3, 2, dtype=torch.float64)
    reply = EvaluationReport(0, values.sum(0), 3.0, values).content()
    assert {key: sorted(record) for key, record in reply.items()} == {
        "values": ["0", "1"],
        "report": ["partition-id", "users"],
    }
    # The final test adds the popularity baseline's sums (M,) and per-user values (U, M) over
    # the same users.
    reply = EvaluationReport(0, values.sum(0), 3.0, values, values.sum(0), values).content()
    assert [array.shape for array in reply.array_records["values"].to_numpy_ndarrays()] == [
        (2,),
        (3, 2),
        (2,),
        (3, 2),
    ]


class CrashingGrid(FakeGrid):
    """A grid whose server dies (raises) when round ``crash_round`` is sent out."""

    def __init__(self, crash_round: int, **kwargs):
        super().__init__(**kwargs)
        self.crash_round = crash_round

    def send_and_receive(self, messages, timeout=None):
        messages = list(messages)
        for message in messages:
            kind = message.metadata.message_type
            if kind == "train" and round_config_from(message.content).round == self.crash_round:
                raise KeyboardInterrupt("the server process dies")
        return super().send_and_receive(messages, timeout)


def _deployed_run(root, rounds=3):
    from fellrec.deploy.run_config import LoadedRun
    from fellrec.training.batches.datamodule import FederatedDataModule
    from fellrec.training.rounds.loop import FederatedLoop

    return LoadedRun(
        model=FederatedModule(lr=0.1),
        datamodule=FederatedDataModule(num_clients=2),
        loop=FederatedLoop(bootstrap_resamples=0),
        rounds=rounds,
        root=str(root),
        trainer_settings={},
    )


def test_a_server_that_dies_resumes_after_its_last_round_and_ends_as_if_uninterrupted(tmp_path):
    from fellrec.deploy.server import STATE_FILE, FederationServer

    def serve(root, grid, **options):
        server = FederationServer(
            _deployed_run(root), grid, sleep=lambda s: None, make_message=FakeMessage, **options
        )
        return server.fit()

    whole = json.loads(serve(tmp_path / "whole", FakeGrid(2, 4, {1: {1}})).read_text())
    with pytest.raises(KeyboardInterrupt):
        serve(tmp_path / "resumed", CrashingGrid(2, num_clients=2, size=4, silent={1: {1}}))
    assert (tmp_path / "resumed" / STATE_FILE).exists()
    with pytest.raises(FileExistsError, match="resume it"):
        serve(tmp_path / "resumed", FakeGrid(2, 4, {}))  # never overwrites a run's state
    grid = FakeGrid(2, 4, {1: {1}})
    resumed = json.loads(serve(tmp_path / "resumed", grid, resume=True).read_text())
    assert [r for k, _, c in grid.sent if k == "train" for r in [round_config_from(c).round]] == [
        2,
        2,
    ]
    timing = {"train_seconds", "val_seconds", "seconds"}
    strip = [{k: v for k, v in r.items() if k not in timing} for r in resumed["history"]]
    assert strip == [{k: v for k, v in r.items() if k not in timing} for r in whole["history"]]
    for key in ("clients", "overall", "client_best_rounds", "best_round"):
        assert resumed[key] == whole[key]
    with pytest.raises(FileNotFoundError, match=r"there is no .*server_state\.pt"):
        serve(tmp_path / "fresh", FakeGrid(2, 4, {}), resume=True)


@pytest.mark.slow
def test_a_loopback_deployment_runs_the_federation_as_the_simulation_does(
    tmp_path, tiny_encoder_dir
):
    """SuperLink and two SuperNodes as real processes, `flwr run` of the shipped app: 1 round."""
    from pathlib import Path

    from fellrec.lightning_cli import make_cli
    from flower_deployment import Deployment

    config = write_tiny_config(tmp_path, tiny_encoder_dir, num_clients=2)
    common = ["--trainer.max_epochs", "1"]
    in_process = tmp_path / "in-process"
    make_cli(
        ["fit", "--config", str(config), *common, "--trainer.default_root_dir", str(in_process)]
    )
    deployed = tmp_path / "deployed"
    app = Path(__file__).resolve().parent.parent / "flower-app"
    with Deployment(tmp_path / "flower") as deployment:
        deployment.start_superlink()
        for partition in (0, 1):
            deployment.start_supernode(partition, 2)
        deployment.wait_online(2)
        overrides = " ".join([*common, "--trainer.default_root_dir", str(deployed)])
        run_id, output = deployment.run(
            app,
            {"fellrec-config": str(config), "fellrec-overrides": overrides, "wait-timeout": 120.0},
        )
        status = deployment.status(run_id)
        assert status["status"] == "finished:completed", (
            f"{status}\n{output}\n{deployment.log('supernode-0')}"
        )
    assert deployment.alive() == []  # no stray process
    expected = json.loads((in_process / "results.json").read_text())
    got = json.loads((deployed / "results.json").read_text())
    assert got["deployment"]["engine"] == "flower" and len(got["deployment"]["nodes"]) == 2
    for client in ("0", "1"):
        assert got["clients"][client] == pytest.approx(expected["clients"][client], abs=1e-6)
    assert got["popularity"]["clients"] == expected["popularity"]["clients"]
    # The stream shows fellrec's lines: the round, and the last line with where the results are.
    assert re.search(r"round 0: val ndcg@10 mean [\d.]+ worst [\d.]+", output), output
    assert f"results in {deployed / 'results.json'}" in output, output


@pytest.mark.slow
def test_a_node_that_stops_mid_round_sits_it_out_and_rejoins_with_its_worker_still_warm(
    tmp_path, tiny_encoder_dir
):
    """Real processes: client workers keep the model across messages; a SuperNode stopped while
    its client trains round 0 is left out of that round, restarts on a new node id and takes part
    again; each client exports its selected adapter."""
    from pathlib import Path

    from flower_deployment import Deployment

    config = write_tiny_config(tmp_path, tiny_encoder_dir, num_clients=2)
    deployed = tmp_path / "deployed"
    app = Path(__file__).resolve().parent.parent / "flower-app"
    with Deployment(tmp_path / "flower") as deployment:
        deployment.start_superlink()
        for partition in (0, 1):
            deployment.start_worker(partition)
            deployment.start_supernode(partition, 2)
        deployment.wait_online(2)
        overrides = f"--trainer.max_epochs 3 --trainer.default_root_dir {deployed}"
        run = deployment.start_run(
            app,
            {
                "fellrec-config": str(config),
                "fellrec-overrides": overrides,
                "round-timeout": 120.0,
                "wait-timeout": 120.0,
            },
        )
        deployment.wait_for_log("worker-1", "client 1: train", 180, run)
        deployment.stop_supernode(1)  # while client 1 trains round 0
        deployment.start_supernode(1, 2)
        run.wait(420)
        workers = [(deployment.logs / f"worker-{c}.log").read_text() for c in (0, 1)]
        server_output = deployment.log("run")
    assert deployment.alive() == []  # no stray process
    results = json.loads((deployed / "results.json").read_text())
    absent = [record["absent"] for record in results["history"]]
    assert absent[0] == [1] and absent[-1] == [], f"{absent}\n{server_output}"
    assert results["history"][-1]["train_loss"][1] is not None  # client 1 trained again
    assert results["clients"]["1"]["users"] > 0
    for client, log in enumerate(workers):
        # Every message of the run, one model load per worker (the restart included).
        assert log.count(f"client {client}: loading its model and data") == 1
        assert log.count(f"client {client}: train") >= 2
    for client in (0, 1):
        folder = deployed / "adapters" / f"client_{client}"
        assert (folder / "adapter_config.json").is_file()
        card = (folder / "README.md").read_text()
        assert f"round {results['client_best_rounds'][client]}" in card


@pytest.mark.slow
def test_a_tls_deployment_with_node_authentication_admits_only_registered_nodes(
    tmp_path, tiny_encoder_dir
):
    """The README's across-machines setup on loopback: TLS with a CA made here, SuperNode
    authentication; the registered nodes run one round, an unregistered one is turned away."""
    from pathlib import Path

    from flower_credentials import make_node_key, make_tls
    from flower_deployment import CONNECTION, Deployment

    config = write_tiny_config(tmp_path, tiny_encoder_dir, num_clients=2)
    credentials = tmp_path / "credentials"
    tls = make_tls(credentials)
    keys = [make_node_key(credentials, f"node-{partition}") for partition in (0, 1)]
    stranger, _ = make_node_key(credentials, "stranger")
    deployed = tmp_path / "deployed"
    app = Path(__file__).resolve().parent.parent / "flower-app"
    with Deployment(tmp_path / "flower", tls=tls, node_auth=True) as deployment:
        deployment.start_superlink()
        for partition, (private, public) in enumerate(keys):
            deployment.register_node(public)
            deployment.start_supernode(partition, 2, private_key=private)
        intruder = deployment.start_supernode(1, 2, private_key=stranger, name="stranger")
        deployment.wait_online(2)
        overrides = f"--trainer.max_epochs 1 --trainer.default_root_dir {deployed}"
        run_id, output = deployment.run(
            app,
            {"fellrec-config": str(config), "fellrec-overrides": overrides, "wait-timeout": 120.0},
        )
        status = deployment.status(run_id)
        listed = deployment.flwr("supernode", "ls", CONNECTION, "--format", "json")
        intruder_exit = intruder.poll()
        intruder_log = deployment.log("stranger")
    assert deployment.alive() == []  # no stray process
    assert status["status"] == "finished:completed", f"{status}\n{output}"
    nodes = json.loads(listed.stdout)["nodes"]
    assert sorted(node["status"] for node in nodes) == ["online", "online"], listed.stdout
    assert intruder_exit is not None and intruder_exit != 0, intruder_log
    assert "Failed to activate SuperNode" in intruder_log
    results = json.loads((deployed / "results.json").read_text())
    assert len(results["deployment"]["nodes"]) == 2
    assert all(results["clients"][client]["users"] > 0 for client in ("0", "1"))


def test_nodes_that_claim_one_partition_or_differ_in_config_or_catalog_are_refused(tmp_path):
    from fellrec.deploy.server import FederationServer

    def serve(grid, config=None):
        run = _deployed_run(tmp_path / "run")
        if config is not None:
            run.config = config
        return FederationServer(run, grid, sleep=lambda s: None, make_message=FakeMessage).fit()

    with pytest.raises(ValueError, match=r"nodes 100 and 101 both say they are client 0"):
        serve(FakeGrid(2, 4, {}, claims={1: 0}))
    with pytest.raises(ValueError, match=r"node 101 says it is client 5 .*clients 0-1"):
        serve(FakeGrid(2, 4, {}, claims={1: 5}))
    config = {"model": {"lr": 0.1}, "data": {"num_clients": 2}, "trainer": {"max_epochs": 3}}
    server_hash = config_fingerprint(config)
    with pytest.raises(ValueError, match=r"node 101 \(client 1\) runs another fellrec config"):
        serve(FakeGrid(2, 4, {}, hashes={0: (server_hash, "a"), 1: ("other", "a")}), config)
    with pytest.raises(ValueError, match=r"node 101 \(client 1\) indexes another item catalog"):
        serve(FakeGrid(2, 4, {}, hashes={0: (server_hash, "a"), 1: (server_hash, "b")}), config)
    done = serve(FakeGrid(2, 4, {}, hashes={0: (server_hash, "a"), 1: (server_hash, "a")}), config)
    assert json.loads(done.read_text())["config"] == config


def test_the_config_fingerprint_ignores_what_each_party_keeps_for_itself():
    config = {
        "model": {"lr": 0.1},
        "data": {"num_clients": 2, "client": None, "dataset": {"format": "tabular", "path": "a"}},
        "loop": {},
        "trainer": {"max_epochs": 3, "default_root_dir": "runs/a", "accelerator": "cpu"},
    }
    node = {
        **config,
        "data": {
            "num_clients": 2,
            "client": 1,
            "silo": "my-silo",
            "catalog": "/elsewhere/catalog.csv",
            "cache_dir": "/tmp/cache",
            "dataset": {"format": "tabular", "path": "b"},
        },
        "trainer": {"max_epochs": 3, "default_root_dir": "runs/b", "accelerator": "gpu"},
    }
    assert config_fingerprint(node) == config_fingerprint(config)
    own_server = {**node, "model": {"lr": 0.1, "block_server": {"address": "10.0.0.2:7200"}}}
    assert config_fingerprint(own_server) == config_fingerprint(config)
    for changed in (
        {**config, "model": {"lr": 0.2}},
        {**config, "data": {**config["data"], "num_clients": 3}},
        {**config, "trainer": {**config["trainer"], "max_epochs": 4}},
    ):
        assert config_fingerprint(changed) != config_fingerprint(config)


def test_a_deployment_stops_early_by_the_rule_of_the_simulations_early_stopping(tmp_path):
    from fellrec.deploy.server import FederationServer

    run = _deployed_run(tmp_path, rounds=6)
    run.stop_patience = 2
    # Every client's scores are the same every round: round 0 stays the best, so the rounds
    # after it do not improve and the run stops after round 2, as EarlyStopping(patience=2) would.
    results = json.loads(
        FederationServer(run, FakeGrid(2, 4, {}), sleep=lambda s: None, make_message=FakeMessage)
        .fit()
        .read_text()
    )
    assert results["rounds_run"] == 3 and [r["round"] for r in results["history"]] == [0, 1, 2]


def test_trainer_settings_that_a_deployment_would_run_differently_are_named():
    from lightning.pytorch import Trainer
    from lightning.pytorch.callbacks import EarlyStopping

    from fellrec.deploy.run_config import round_settings

    def settings(**options):
        trainer = Trainer(logger=False, enable_checkpointing=False, **options)
        return round_settings(trainer, "ndcg@10")

    assert settings() == (None, ())
    plain = EarlyStopping(monitor="val/ndcg@10", mode="max", patience=4)
    assert settings(callbacks=[plain]) == (4, ())
    _, reasons = settings(limit_val_batches=0.5, check_val_every_n_epoch=2)
    assert [r.split(":")[0] for r in reasons] == [
        "trainer.limit_val_batches=0.5",
        "trainer.check_val_every_n_epoch=2",
    ]
    _, reasons = settings(callbacks=[EarlyStopping(monitor="val/recall@10", mode="max")])
    assert "monitor='val/recall@10'" in reasons[0]
    with pytest.raises(ValueError, match=r"limit_val_batches=0\.5: \.\.\.; remove the setting"):
        check_deployable(FederatedModule(), FedAvg(), ("trainer.limit_val_batches=0.5: ...",))


def test_a_deployed_state_is_checked_before_the_nodes_are_waited_for(tmp_path):
    from fellrec.deploy.server import STATE_FILE, FederationServer

    config = {"model": {"lr": 0.1}, "data": {"num_clients": 2}, "trainer": {"max_epochs": 3}}

    def server(grid, resume=True, changed=None, wait=0.0):
        run = _deployed_run(tmp_path, rounds=2)
        run.config = {**config, **(changed or {})}
        grid.hashes = {c: (config_fingerprint(run.config), "catalog") for c in range(2)}
        return FederationServer(
            run,
            grid,
            resume=resume,
            wait_timeout=wait,
            sleep=lambda s: None,
            make_message=FakeMessage,
        )

    class NoNodes(FakeGrid):
        def get_node_ids(self):
            return []

    server(FakeGrid(2, 4, {}), resume=False).fit()
    assert (tmp_path / STATE_FILE).exists()
    # A wrong `resume` or a mismatching state is said before any node is waited for.
    with pytest.raises(FileExistsError, match="resume it"):
        server(NoNodes(2, 4, {}), resume=False, wait=600.0).fit()
    with pytest.raises(ValueError, match="saved by a run with another config"):
        server(NoNodes(2, 4, {}), changed={"model": {"lr": 0.2}}, wait=600.0).fit()
    # More rounds may be asked of a resume (trainer.max_epochs is not part of the check).
    resumed = server(FakeGrid(2, 4, {}), changed={"trainer": {"max_epochs": 5}})
    resumed.run.rounds = 3
    assert json.loads(resumed.fit().read_text())["rounds_run"] == 3
    torch.save({"rounds_run": 1, "theta": torch.zeros(2, 4)}, tmp_path / STATE_FILE)
    with pytest.raises(ValueError, match="written by another fellrec version"):
        server(NoNodes(2, 4, {}), wait=600.0).fit()
    with pytest.raises(ValueError, match="4 parameters per client, the clients 5"):
        torch.save(  # a state of the right layout, saved with a smaller model
            {
                "layout": 2,
                "config_hash": server(FakeGrid(2, 4, {}))._fingerprint(),
                "engine": {"rounds_run": 1, "lr_scale": None, "history": []},
                "parameters": torch.zeros(2, 4),
            },
            tmp_path / STATE_FILE,
        )
        server(FakeGrid(2, 5, {})).fit()


def test_a_second_node_for_a_connected_client_is_left_out_at_rejoin(tmp_path, caplog):
    from fellrec.deploy.remote_clients import RemoteClients

    caplog.set_level("INFO", logger="fellrec.deploy")
    grid = FakeGrid(2, 4, {})
    clients = RemoteClients(grid, 2, sleep=lambda s: None, make_message=FakeMessage)
    clients.connect()
    grid.node_of[2] = 300  # another node comes up and says it is client 0 ...
    grid.claims[2] = 0
    grid.num_clients = 3
    clients.rejoin()
    assert clients.nodes == {0: 100, 1: 101}  # ... while node 100 is still connected
    assert "node 300 says it is client 0, which node 100 (still connected) is" in caplog.text
    del grid.node_of[0]  # node 100 goes away: the newcomer takes client 0 over
    clients.rejoin()
    assert clients.nodes == {0: 300, 1: 101}

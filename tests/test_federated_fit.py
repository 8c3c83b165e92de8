"""Integration: real Lightning runs of tiny federations (tiny real encoder, synthetic catalog)."""

from __future__ import annotations

import json

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from peft import PeftModel
from transformers import AutoModel

from federation_helpers import tiny_run
from fellrec.federation.engine import RESULTS_KEYS
from fellrec.federation.strategies import Centralized, FedAvg, FedProx, FELLRec, Local
from fellrec.metrics.slices import SLICE_NAMES
from fellrec.training.host.client_checkpoints import client_state
from fellrec.training.records.results import RESULTS_FILE


def flatten(tree, prefix=""):
    """Nested dicts -> {"a/b": value} (pytest.approx compares flat mappings only)."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def fit_and_test(trainer, model, data):
    trainer.fit(model, datamodule=data)
    trainer.test(model, datamodule=data, verbose=False)


@pytest.fixture(scope="module")
def fellrec_run(tmp_path_factory, tiny_encoder_dir):
    root = tmp_path_factory.mktemp("fellrec-run")
    trainer, model, data, loop = tiny_run(root, tiny_encoder_dir, FELLRec())
    fit_and_test(trainer, model, data)
    return root, trainer, model, data, loop


def test_fellrec_round_personalizes_and_heats_learning_rates(fellrec_run):
    root, trainer, model, data, loop = fellrec_run
    assert loop.rounds_run == 2 and len(loop.history) == 2
    # Personalized aggregation leaves every client with its own adapter.
    theta = model.adapters.get_matrix()
    assert not torch.allclose(theta[0], theta[1])
    # Round 1 ran with lr * w from round 0's heating weights, written into each optimizer.
    weights = torch.tensor(loop.history[0]["heating_weight"], dtype=torch.float64)
    assert ((weights > 0) & (weights <= 1)).all()
    round_lrs = torch.tensor(
        [opt.param_groups[0]["round_lr"] for opt in model.client_optimizers()], dtype=torch.float64
    )
    assert torch.allclose(round_lrs, model.lr * weights)
    # ... and the lrs of the next round are logged per client.
    assert loop.history[1]["lr"] == pytest.approx(
        (model.lr * torch.tensor(loop.history[1]["heating_weight"], dtype=torch.float64)).tolist()
    )


def test_results_json_schema(fellrec_run):
    root, *_ = fellrec_run
    results = json.loads((root / RESULTS_FILE).read_text())
    # The one schema a deployed server writes too (tests/test_flower.py checks its side).
    assert list(results) == list(RESULTS_KEYS) and results["deployment"] is None
    assert results["strategy"] == "fellrec"
    assert results["rounds_run"] == 2 and results["best_round"] in (0, 1)
    assert isinstance(results["config"], dict)
    for k in (5, 10, 20):
        for family in ("recall", "ndcg", "hit", "mrr"):
            assert 0.0 <= results["overall"][f"{family}@{k}"] <= 1.0
    assert set(results["clients"]) == {"0", "1", "2"}
    assert sum(c["users"] for c in results["clients"].values()) == results["overall"]["users"]
    assert set(results["balance"]["ndcg@10"]) == {
        "mean",
        "std",
        "min",
        "max",
        "gap",
        "gini",
        "jain",
    }
    assert "ndcg@10" in results["popularity"]["overall"]
    assert (root / "clients.csv").read_text().startswith("user_id,client")
    # Bootstrap intervals over the test users bracket every overall and per-client value.
    intervals = results["ci"]
    assert intervals["confidence"] == 0.95 and intervals["resamples"] == 1000
    low, high = intervals["overall"]["ndcg@10"]
    assert low <= results["overall"]["ndcg@10"] <= high
    for client, row in results["clients"].items():
        low, high = intervals["clients"][client]["recall@10"]
        assert low <= row["recall@10"] <= high
    assert set(results["popularity"]["ci"]["overall"]) == set(intervals["overall"])


def test_results_carry_the_evaluation_slices(fellrec_run):
    root, trainer, model, data, loop = fellrec_run
    results = json.loads((root / RESULTS_FILE).read_text())
    slices, overall = results["slices"], results["overall"]
    groups = slices["groups"]
    assert list(groups) == list(SLICE_NAMES)
    # Each slice holds the test users the data's definition puts in it.
    test = data.data.split.test
    membership = data.slices.membership(test.users, test.targets)
    assert {name: row["users"] for name, row in groups.items()} == {
        name: int(mask.sum()) for name, mask in membership.items()
    }
    # History slices partition the users: their user-weighted mean is the overall value.
    history = [groups[f"history/{g}"] for g in ("short", "medium", "long")]
    assert sum(row["users"] for row in history) == overall["users"]
    weighted = sum(row["users"] * row.get("ndcg@10", 0.0) for row in history)
    assert weighted / overall["users"] == pytest.approx(overall["ndcg@10"])
    for row in groups.values():
        if row["users"]:
            low, high = row["ci"]["ndcg@10"]
            assert low <= row["ndcg@10"] <= high
    cuts = slices["definition"]["popularity"]
    assert cuts["head_min_count"] >= cuts["torso_min_count"] >= 1
    assert sum(cuts["interactions"].values()) == sum(
        len(s) for s in data.data.split.train_sequences
    )
    # The popularity baseline is sliced the same way, on the same users.
    baseline = results["popularity"]["slices"]["groups"]
    assert {k: v["users"] for k, v in baseline.items()} == {
        k: v["users"] for k, v in groups.items()
    }
    # Every validation round records its slices; the loggers get both.
    assert groups.keys() == results["history"][-1]["val"]["slices"]["groups"].keys()
    header = (root / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "slice/test/popularity/tail/ndcg@10/ci_low" in header
    assert "slice/val/history/short/recall@10" in header


def test_adapters_saved_in_peft_format(fellrec_run, tiny_encoder_dir):
    root, trainer, model, *_ = fellrec_run
    loaded = PeftModel.from_pretrained(
        AutoModel.from_pretrained(tiny_encoder_dir), str(root / "adapters" / "client_1")
    )
    state = {n: p for n, p in loaded.named_parameters() if "lora_" in n}
    saved = torch.cat(
        [
            state[
                k.replace(".lora_A.", ".lora_A.default.").replace(".lora_B.", ".lora_B.default.")
            ].reshape(-1)
            for k in model.adapters.keys
        ]
    )
    assert torch.allclose(saved, model.adapters.get_vector(1))
    folder = root / "adapters" / "client_1"
    base = json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert base == str(tiny_encoder_dir)  # the backbone setting as the run was given it
    card = (folder / "README.md").read_text()
    results = json.loads((root / RESULTS_FILE).read_text())
    assert "# fellrec adapter: client 1 of 3" in card
    assert f"round {results['client_best_rounds'][1]} of the 2 rounds run" in card
    assert f"| test ndcg@10 | {results['clients']['1']['ndcg@10']:.4f} |" in card


def test_a_local_checkpoint_holds_the_hosts_adapters_and_nothing_of_a_block_server(fellrec_run):
    # In process the server-block null object adds nothing: the keys are those checkpoints
    # had before it, so old checkpoints and new ones load alike.
    root, _, model, _, _ = fellrec_run
    checkpoint = torch.load(root / "checkpoints" / "last.ckpt", weights_only=False)
    assert {key for key in checkpoint if key.startswith("fellrec_")} == {"fellrec_train_traffic"}
    assert set(checkpoint["state_dict"]) == set(client_state(model.state_dict()))
    assert checkpoint["state_dict"]  # the adapters themselves


def test_fedavg_round_leaves_identical_adapters(tmp_path, tiny_encoder_dir):
    trainer, model, data, loop = tiny_run(tmp_path, tiny_encoder_dir, FedAvg(), rounds=1)
    trainer.fit(model, datamodule=data)
    theta = model.adapters.get_matrix()
    assert torch.equal(theta[0], theta[1]) and torch.equal(theta[1], theta[2])
    assert not torch.equal(theta[0], model.round_anchor[0])  # it did train
    # One shared model: validation encoded the catalog once for all clients.
    assert len({id(table) for table in model.backend.item_tables.values()}) == 1


@pytest.mark.parametrize(
    "strategy", [Local(), Centralized(), FedProx(mu=0.1)], ids=lambda s: s.name
)
def test_baseline_strategies_run_end_to_end(tmp_path, tiny_encoder_dir, strategy):
    trainer, model, data, loop = tiny_run(tmp_path, tiny_encoder_dir, strategy, rounds=1)
    fit_and_test(trainer, model, data)
    results = json.loads((tmp_path / RESULTS_FILE).read_text())
    assert results["strategy"] == strategy.name
    assert results["slices"]["groups"]["client_items/seen"]["users"] > 0  # same slices for all
    theta = model.adapters.get_matrix()
    if strategy.shares_model:
        assert torch.equal(theta[0], theta[2])
    else:
        assert not torch.equal(theta[0], theta[2])


def test_new_items_are_held_out_of_training_and_reported(tmp_path, tiny_encoder_dir):
    options = {"split": "leave_one_out", "new_items": 0.25, "max_train_examples": None}
    trainer, model, data, loop = tiny_run(
        tmp_path, tiny_encoder_dir, FedAvg(), rounds=1, data_options=options
    )
    seen_inputs = []

    class _Inputs(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen_inputs.append(torch.cat([batch.histories.flatten(), batch.targets]))

    trainer.callbacks.append(_Inputs())
    fit_and_test(trainer, model, data)
    held = torch.from_numpy(data.data.split.new_items)
    assert len(held) == 15  # a quarter of the 60 items
    assert not torch.isin(torch.cat(seen_inputs), held).any()  # never an input or a target
    results = json.loads((tmp_path / RESULTS_FILE).read_text())
    new = results["slices"]["groups"]["popularity/new"]
    test = data.data.split.test
    with_new = sum(bool(torch.isin(torch.from_numpy(t), held).any()) for t in test.targets)
    assert new["users"] >= with_new > 0  # reported, not skipped
    assert 0.0 <= new["ndcg@10"] <= 1.0
    assert results["slices"]["definition"]["popularity"]["items"]["new"] >= len(held)


class _StopMidRound(Callback):
    """Simulates a crash in the middle of a round."""

    def __init__(self, round_index: int, batch_index: int) -> None:
        self.round_index = round_index
        self.batch_index = batch_index

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch == self.round_index and batch_idx == self.batch_index:
            raise RuntimeError("simulated crash")


@pytest.mark.parametrize("recommender", ["encoder", "sequential"])
def test_resume_mid_round_equals_uninterrupted_run(tmp_path, tiny_encoder_dir, recommender):
    full_root, cut_root = tmp_path / "full", tmp_path / "cut"
    options = {"model_options": {"recommender": recommender}}
    trainer, model, data, _ = tiny_run(full_root, tiny_encoder_dir, FELLRec(), rounds=3, **options)
    fit_and_test(trainer, model, data)
    expected = json.loads((full_root / RESULTS_FILE).read_text())

    trainer, model, data, _ = tiny_run(
        cut_root,
        tiny_encoder_dir,
        FELLRec(),
        rounds=3,
        extra_callbacks=[_StopMidRound(2, 3)],
        **options,
    )
    with pytest.raises(RuntimeError, match="simulated crash"):
        trainer.fit(model, datamodule=data)
    assert (cut_root / "checkpoints" / "last.ckpt").exists()

    trainer, model, data, _ = tiny_run(cut_root, tiny_encoder_dir, FELLRec(), rounds=3, **options)
    trainer.fit(model, datamodule=data, ckpt_path="last")
    trainer.test(model, datamodule=data, verbose=False)
    resumed = json.loads((cut_root / RESULTS_FILE).read_text())
    assert resumed["rounds_run"] == 3
    assert resumed["best_round"] == expected["best_round"]
    assert flatten(resumed["overall"]) == pytest.approx(flatten(expected["overall"]), abs=1e-6)
    assert flatten(resumed["clients"]) == pytest.approx(flatten(expected["clients"]), abs=1e-6)
    assert flatten(resumed["balance"]) == pytest.approx(flatten(expected["balance"]), abs=1e-6)


def test_diverging_client_keeps_its_adapter_and_spares_the_others(tmp_path, tiny_encoder_dir):
    class _PoisonClient(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch.client == 1:
                pl_module.recommender.temperature = float("nan")

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            pl_module.recommender.temperature = 0.05

    trainer, model, data, loop = tiny_run(
        tmp_path, tiny_encoder_dir, FELLRec(), rounds=1, extra_callbacks=[_PoisonClient()]
    )
    with pytest.warns(UserWarning, match="client 1's loss became NaN"):
        trainer.fit(model, datamodule=data)
    theta, start = model.adapters.get_matrix(), model.round_anchor  # after / before the round
    assert loop.history[0]["diverged"] == [1]
    assert torch.equal(theta[1], start[1])
    assert torch.isfinite(theta).all()
    assert not torch.equal(theta[0], start[0])


def test_client_module_fits_one_client_alone(tmp_path, tiny_encoder_dir):
    from fellrec.training.host.client_module import ClientModule

    trainer, model, data, loop = tiny_run(
        tmp_path, tiny_encoder_dir, Local(), rounds=1, data_options={"client": 1}
    )
    client = ClientModule(
        client=1, backbone=str(tiny_encoder_dir), lr=5e-3, max_history_tokens=48, max_item_tokens=8
    )
    fit_and_test(trainer, client, data)
    assert client.adapters.get_matrix().shape[0] == 1  # its own adapter only
    assert not torch.equal(client.adapters.get_matrix(), client.round_anchor)
    results = json.loads((tmp_path / RESULTS_FILE).read_text())
    assert results["clients"]["1"]["users"] > 0
    assert results["clients"]["0"]["users"] == 0 and results["clients"]["2"]["users"] == 0
    assert (tmp_path / "adapters" / "client_1" / "adapter_model.safetensors").exists()


@pytest.mark.parametrize("recommender", ["encoder", "sequential"])
def test_a_client_alone_takes_the_steps_it_takes_in_the_federation(
    tmp_path, tiny_encoder_dir, recommender
):
    """A silo's batches, seeds and initial adapter are the simulation's: same adapter after it."""
    from fellrec.training.host.client_module import ClientModule

    settings = {
        "recommender": recommender,
        "lr": 5e-3,
        "max_history_tokens": 48,
        "max_item_tokens": 8,
    }
    trainer, model, data, _ = tiny_run(
        tmp_path / "all", tiny_encoder_dir, Local(), rounds=1, model_options=settings
    )
    trainer.fit(model, datamodule=data)
    for client in (0, 2):
        trainer, _, data, _ = tiny_run(
            tmp_path / f"alone-{client}",
            tiny_encoder_dir,
            Local(),
            rounds=1,
            data_options={"client": client},
            model_options=settings,
        )
        alone = ClientModule(client=client, backbone=str(tiny_encoder_dir), **settings)
        trainer.fit(alone, datamodule=data)
        torch.testing.assert_close(
            alone.adapters.get_matrix()[0], model.adapters.get_matrix()[client], rtol=0, atol=1e-7
        )


def test_client_module_refuses_another_clients_data(tmp_path, tiny_encoder_dir):
    from fellrec.training.host.client_module import ClientModule

    trainer, _, data, _ = tiny_run(tmp_path, tiny_encoder_dir, Local(), rounds=1)
    client = ClientModule(client=1, backbone=str(tiny_encoder_dir))
    with pytest.raises(ValueError, match=r"FederatedDataModule\(client=1\)"):
        trainer.fit(client, datamodule=data)


def test_client_without_examples_is_left_out_with_a_warning(tmp_path, tiny_encoder_dir):
    trainer, model, data, loop = tiny_run(tmp_path, tiny_encoder_dir, FELLRec(), rounds=1)
    full_plan = data.round_plan
    data.round_plan = lambda round_index: [b for b in full_plan(round_index) if b.client != 2]
    with pytest.warns(UserWarning, match="client 2 had no training example"):
        trainer.fit(model, datamodule=data)
    theta = model.adapters.get_matrix()
    assert torch.equal(theta[2], model.round_anchor[2])  # untouched and not mixed in
    assert loop.history[0]["train_loss"][2] is None
    assert not torch.equal(theta[0], model.round_anchor[0])


def test_clients_with_few_evaluation_users_are_warned_about(tmp_path, tiny_encoder_dir):
    trainer, model, data, loop = tiny_run(tmp_path, tiny_encoder_dir, FELLRec(), rounds=1)
    loop.min_eval_users = 10_000  # more than any client has
    with pytest.warns(UserWarning, match=r"few validation users \(client 0: \d+.*min_eval_users"):
        trainer.fit(model, datamodule=data)


def test_the_loop_strategy_is_settled_against_the_deprecated_key_and_the_host():
    from fellrec.training.rounds.loop import DEFAULT_STRATEGY, resolve_strategy

    assert resolve_strategy(FedAvg(), None).name == "fedavg"
    assert resolve_strategy(DEFAULT_STRATEGY, FedAvg()).name == "fedavg"  # old configs
    assert resolve_strategy(FedAvg(), FedAvg()).name == "fedavg"
    with pytest.raises(ValueError, match=r"disagree; set loop\.strategy only"):
        resolve_strategy(FedAvg(), Local())
    assert resolve_strategy(DEFAULT_STRATEGY, None, host=Local()).name == "local"
    with pytest.raises(ValueError, match="runs only the 'local' strategy"):
        resolve_strategy(FedAvg(), None, host=Local())

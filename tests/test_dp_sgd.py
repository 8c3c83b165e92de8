"""User-level DP-SGD inside each client: sampling plan, clipping, noise, accounting, a real fit."""

from __future__ import annotations

import csv
import json
import math
import re

import numpy as np
import pytest
import torch

from conftest import build_tiny_encoder
from federation_helpers import tiny_run
from fellrec.federation.strategies import FedAvg, Local
from fellrec.models.adapters import LoRASettings
from fellrec.models.item_components import ItemSettings
from fellrec.training.batches.round_batching import UserSampling
from fellrec.training.batches.schedule import plan_user_sampled_round, user_sampled_steps
from fellrec.training.dp.dp_sgd import (
    DPSGDSettings,
    UserGradientSum,
    check_dp_sgd_compatible,
    clip_factor,
    epsilon_spent,
)
from fellrec.training.host.federated_module import FederatedModule


def test_the_accountant_gives_opacus_published_value():
    # opacus/tests/accountants_test.py::test_rdp_accountant: sigma 1.5, q 0.04, 90 epochs.
    assert epsilon_spent([(1.5, 0.04, int(90 / 0.04))], 1e-5) == pytest.approx(7.32911117143)
    assert epsilon_spent([(1.5, 0.04, 0)], 1e-5) == 0.0
    # More steps, less noise or a larger sample rate cost more.
    assert epsilon_spent([(1.5, 0.04, 100)], 1e-5) < epsilon_spent([(1.5, 0.04, 200)], 1e-5)
    assert epsilon_spent([(2.0, 0.04, 100)], 1e-5) < epsilon_spent([(1.0, 0.04, 100)], 1e-5)


def test_clipping_and_noise_on_hand_computed_gradients():
    assert clip_factor(torch.tensor(5.0), 1.0) == pytest.approx(0.2)
    assert clip_factor(torch.tensor(0.5), 1.0) == 1.0
    first = torch.nn.Parameter(torch.zeros(2))
    second = torch.nn.Parameter(torch.zeros(1))
    settings = DPSGDSettings(noise_multiplier=0.5, max_grad_norm=1.0)
    total = UserGradientSum([first, second], settings)
    first.grad, second.grad = torch.tensor([3.0, 4.0]), torch.tensor([0.0])  # norm 5: clipped
    assert total.add_user() == pytest.approx(5.0)
    assert first.grad is None and second.grad is None  # cleared for the next user
    first.grad = torch.tensor([0.0, 0.0])  # second left without a gradient: counts as zero
    second.grad = torch.tensor([0.5])
    assert total.add_user() == pytest.approx(0.5)
    assert total.users == 2
    torch.testing.assert_close(total.total, torch.tensor([0.6, 0.8, 0.5]))
    total.release(expected_users=4.0, generator=torch.Generator().manual_seed(7))
    noise = torch.randn(3, generator=torch.Generator().manual_seed(7))
    expected = (torch.tensor([0.6, 0.8, 0.5]) + 0.5 * 1.0 * noise) / 4.0
    torch.testing.assert_close(torch.cat([first.grad, second.grad]), expected)


def test_settings_are_checked_naming_the_key():
    for field, value, message in [
        ("noise_multiplier", 0.0, "model.dp_sgd.noise_multiplier must be > 0"),
        ("max_grad_norm", float("nan"), "model.dp_sgd.max_grad_norm must be > 0"),
        ("expected_users", 0, "model.dp_sgd.expected_users must be >= 1"),
        ("windows_per_user", 0, "model.dp_sgd.windows_per_user must be >= 1"),
        ("delta", 1.0, "model.dp_sgd.delta must be in (0, 1)"),
    ]:
        with pytest.raises(ValueError, match=re.escape(message)):
            DPSGDSettings(**{field: value}).validate()
    settings = DPSGDSettings(expected_users=10)
    assert settings.sample_rate(40) == 0.25 and settings.sample_rate(5) == 1.0
    assert settings.steps_per_round(41, 2) == 2 * 5
    assert settings.client_delta(200) == 1 / 200
    assert DPSGDSettings(delta=1e-6).client_delta(200) == 1e-6


def test_configurations_where_clipping_cannot_cover_everything_are_refused():
    with pytest.raises(ValueError, match=re.escape("model.dp_sgd needs model.transport: local")):
        check_dp_sgd_compatible(DPSGDSettings(), "process", ItemSettings())
    for init in ("log_popularity", "dp_log_popularity"):
        with pytest.raises(
            ValueError, match=re.escape("model.dp_sgd needs model.items.bias_init: zeros")
        ):
            check_dp_sgd_compatible(DPSGDSettings(), "local", ItemSettings(bias_init=init))
    with pytest.raises(
        ValueError, match=re.escape("model.dp_sgd needs model.items.bias_init: zeros")
    ):
        FederatedModule(dp_sgd=DPSGDSettings(), items=ItemSettings(bias_init="log_popularity"))


def _plan(users, owners, **options):
    settings = {
        "num_clients": 2,
        "expected_users": 3,
        "windows_per_user": 2,
        "local_epochs": 1,
        "seed": 0,
        "round_index": 0,
    }
    settings.update(options)
    return plan_user_sampled_round(np.asarray(users), np.asarray(owners), **settings)


def test_the_plan_samples_users_of_one_client_with_at_most_their_window_cap():
    # Client 0: users 0..5 (user u has u + 1 windows); client 1: users 10..11.
    users = [u for u in range(6) for _ in range(u + 1)] + [10, 10, 11]
    clients = [0] * 21 + [1] * 3
    plan = _plan(users, clients, round_index=3)
    users_arr, clients_arr = np.asarray(users), np.asarray(clients)
    assert [b.client for b in plan] == [0, 0, 1]  # ceil(6/3) steps, then ceil(2/3) = 1
    assert user_sampled_steps(6, 3, 1) == 2 and user_sampled_steps(2, 3, 1) == 1
    for batch in plan:
        assert batch.step_end and batch.step_examples == len(batch.indices)
        assert (clients_arr[batch.indices] == batch.client).all()
        _, counts = np.unique(users_arr[batch.indices], return_counts=True)
        assert (counts <= 2).all()
        assert len(set(batch.indices.tolist())) == len(batch.indices)  # no window twice
    assert [b.client_start for b in plan] == [True, False, True]
    # Client 1 has 2 users, fewer than expected: every user every step, all its windows.
    assert sorted(plan[-1].indices.tolist()) == [21, 22, 23]
    # Seeded by (seed, round, client): the same again, another round differs somewhere.
    again = _plan(users, clients, round_index=3)
    assert all(np.array_equal(a.indices, b.indices) for a, b in zip(plan, again, strict=True))
    # A silo plans alone exactly what the federation plans for it.
    alone = _plan(users, clients, round_index=3, clients=[1])
    assert np.array_equal(alone[0].indices, plan[-1].indices)


def test_users_are_sampled_at_the_poisson_rate():
    users = np.repeat(np.arange(40), 3)
    clients = np.zeros(120, dtype=np.int64)
    joined = []
    for round_index in range(200):
        for batch in _plan(
            users, clients, num_clients=1, expected_users=10, round_index=round_index
        ):
            joined.append(len(np.unique(users[batch.indices])))
    # 800 steps of Binomial(40, 0.25): mean 10, its standard error ~0.1.
    assert np.mean(joined) == pytest.approx(10.0, abs=0.5)
    assert 0 in joined or min(joined) < 5  # sizes vary: Poisson sampling, not fixed batches


def test_a_pooled_plan_samples_all_users_as_one_client():
    users = np.arange(10)
    clients = np.asarray([0] * 5 + [1] * 5)
    plan = _plan(users, clients, expected_users=10, pooled=True)
    assert len(plan) == 1 and plan[0].client == 0 and sorted(plan[0].indices) == list(range(10))


@pytest.fixture(scope="module")
def still_encoder(tmp_path_factory):
    """A tiny encoder without dropout: a user's gradient is a function of the parameters."""
    return build_tiny_encoder(tmp_path_factory.mktemp("still-encoder"), dropout=0.0)


def test_a_dp_fit_clips_each_user_noises_the_sum_and_reports_epsilon(
    tmp_path, still_encoder, monkeypatch
):
    settings = DPSGDSettings(
        noise_multiplier=1e-9, max_grad_norm=0.05, expected_users=4, windows_per_user=2
    )
    checked: list[float] = []
    original = FederatedModule._dp_training_step

    def recompute(module, batch, client, slot, config):
        """Before the real step: the expected gradient from each user's own backward."""
        if len(checked) < 2 and batch.targets.numel() > 0:
            _, params = module._own_keys_and_parameters(slot)
            module.backend.prepare(slot)
            expected = torch.zeros(sum(p.numel() for p in params))
            norms = []
            for user in torch.unique(batch.users).tolist():
                rows = (batch.users == user).nonzero().flatten()
                loss = module.backend.losses(
                    slot, batch.histories[rows], batch.targets[rows], module._generator
                ).mean()
                # backward, not autograd.grad: the split's server side joins through .grad.
                loss.backward()
                flat = torch.cat(
                    [
                        (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                        for p in params
                    ]
                )
                for p in params:
                    p.grad = None
                norms.append(float(flat.norm()))
                expected += flat * min(1.0, 0.05 / float(flat.norm()))
            users = module.dp.users[client]
            expected /= settings.sample_rate(users) * users
            seen = {}
            real_step = module._optimizer_step

            def capture(*args):
                seen["grad"] = torch.cat([p.grad.reshape(-1) for p in params])

            module._optimizer_step = capture
            original(module, batch, client, slot, config)
            module._optimizer_step = real_step
            torch.testing.assert_close(seen["grad"], expected, rtol=1e-4, atol=1e-7)
            assert max(norms) > 0.05  # the clipping was exercised
            checked.append(max(norms))
            real_step(client, slot, config.proximal_mu if config is not None else 0.0)
            return
        original(module, batch, client, slot, config)

    monkeypatch.setattr(FederatedModule, "_dp_training_step", recompute)
    trainer, model, data, loop = tiny_run(
        tmp_path,
        still_encoder,
        FedAvg(),
        rounds=2,
        model_options={
            "recommender": "sequential",
            "lora": LoRASettings(dropout=0.0),
            "dp_sgd": settings,
        },
    )
    trainer.fit(model, datamodule=data)
    assert len(checked) == 2
    # Each round's record holds each client's (epsilon, delta) from the accountant.
    for round_index, record in enumerate(loop.history):
        for client in range(3):
            users = data.training_users(client)
            steps = settings.steps_per_round(users, 1) * (round_index + 1)
            assert record["dp"]["delta"][client] == pytest.approx(1 / users)
            assert record["dp"]["epsilon"][client] == pytest.approx(
                epsilon_spent([(1e-9, settings.sample_rate(users), steps)], 1 / users)
            )
    assert loop.engine.results({})["dp_sgd"] == {"after_round": 1, **loop.history[-1]["dp"]}
    with open(tmp_path / "metrics.csv") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("client/0/dp/epsilon")]
    assert [float(row["client/0/dp/epsilon"]) for row in rows] == pytest.approx(
        [r["dp"]["epsilon"][0] for r in loop.history]
    )
    assert all(math.isfinite(e) for e in loop.history[-1]["dp"]["epsilon"])


def test_a_seeded_dp_fit_reruns_bit_identically_and_an_unseeded_one_does_not(
    tmp_path, still_encoder
):
    """Without model.dp_sgd.seed the sampling and noise come from fresh entropy (secret)."""
    matrices = []
    for name, seed in (("a", 5), ("b", 5), ("c", None), ("d", None)):
        options = {
            "recommender": "sequential",
            "dp_sgd": DPSGDSettings(expected_users=4, seed=seed),
        }
        trainer, model, data, _ = tiny_run(
            tmp_path / name, still_encoder, FedAvg(), rounds=1, model_options=options
        )
        trainer.fit(model, datamodule=data)
        matrices.append(model.adapters.get_matrix())
    assert torch.equal(matrices[0], matrices[1])
    assert not torch.equal(matrices[2], matrices[3])


def test_each_party_keeps_its_own_dp_seed_out_of_the_federation_fingerprint():
    pytest.importorskip("flwr", reason="fellrec.deploy needs Flower (Python >= 3.11)")
    from fellrec.deploy.run_config import config_fingerprint

    def config(seed):
        return {"model": {"dp_sgd": {"noise_multiplier": 1.0, "seed": seed}}, "data": {}}

    assert config_fingerprint(config(1)) == config_fingerprint(config(2))
    other = config(1)
    other["model"]["dp_sgd"]["noise_multiplier"] = 2.0
    assert config_fingerprint(other) != config_fingerprint(config(1))


def test_a_dp_client_alone_sends_what_it_sends_in_the_federation(tmp_path, still_encoder):
    """A silo samples the same users and draws the same noise as its simulation (deployment)."""
    from fellrec.training.host.client_module import ClientModule

    settings = {
        "recommender": "sequential",
        "lr": 5e-3,
        "max_history_tokens": 48,
        "max_item_tokens": 8,
        "dp_sgd": DPSGDSettings(expected_users=4, seed=11),
    }
    trainer, model, data, _ = tiny_run(
        tmp_path / "all", still_encoder, Local(), rounds=1, model_options=settings
    )
    trainer.fit(model, datamodule=data)
    trainer, _, data, _ = tiny_run(
        tmp_path / "alone",
        still_encoder,
        Local(),
        rounds=1,
        data_options={"client": 2},
        model_options=settings,
    )
    alone = ClientModule(client=2, backbone=str(still_encoder), **settings)
    trainer.fit(alone, datamodule=data)
    torch.testing.assert_close(
        alone.adapters.get_matrix()[0], model.release_parameters()[2], rtol=0, atol=1e-7
    )
    assert alone.dp.users == {2: model.dp.users[2]}


def test_a_resumed_dp_run_keeps_its_secret(tmp_path, still_encoder):
    """The fresh secret is checkpointed: a resumed run samples and noises as before."""
    from lightning.pytorch.callbacks import Callback

    class StopInRoundOne(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.current_epoch == 1:
                raise RuntimeError("simulated crash")

    options = {"recommender": "sequential", "dp_sgd": DPSGDSettings(expected_users=4)}
    trainer, model, data, _ = tiny_run(
        tmp_path,
        still_encoder,
        FedAvg(),
        rounds=2,
        model_options=options,
        extra_callbacks=[StopInRoundOne()],
    )
    with pytest.raises(RuntimeError, match="simulated crash"):
        trainer.fit(model, datamodule=data)
    secret = model.dp.secret
    trainer, resumed, data, _ = tiny_run(
        tmp_path, still_encoder, FedAvg(), rounds=2, model_options=options
    )
    trainer.fit(resumed, datamodule=data, ckpt_path="last")
    assert resumed.dp.secret == secret
    assert data.round_batching.user_sampling == UserSampling(4, 4, secret)


def test_a_run_resumed_with_other_dp_settings_accounts_each_round_with_its_own(
    tmp_path, still_encoder
):
    """The ledger in the checkpoint: round 0 at sigma 1, round 1 (resumed) at sigma 3."""
    from lightning.pytorch.callbacks import Callback

    class StopInRoundOne(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.current_epoch == 1:
                raise RuntimeError("simulated crash")

    def options(sigma):
        settings = DPSGDSettings(expected_users=4, noise_multiplier=sigma, loss_noise=1e9)
        return {"recommender": "sequential", "dp_sgd": settings}

    trainer, model, data, loop = tiny_run(
        tmp_path,
        still_encoder,
        FedAvg(),
        rounds=2,
        model_options=options(1.0),
        extra_callbacks=[StopInRoundOne()],
    )
    with pytest.raises(RuntimeError, match="simulated crash"):
        trainer.fit(model, datamodule=data)
    first = loop.history[0]["dp"]["epsilon"]
    trainer, resumed, data, loop = tiny_run(
        tmp_path, still_encoder, FedAvg(), rounds=2, model_options=options(3.0)
    )
    trainer.fit(resumed, datamodule=data, ckpt_path="last")
    for client in range(3):
        users = data.training_users(client)
        rate, steps = resumed.dp_sgd.sample_rate(users), resumed.dp_sgd.steps_per_round(users, 1)
        sigma_0, sigma_1 = (1.0 / math.sqrt(s**-2 + 1e-18) for s in (1.0, 3.0))
        assert first[client] == pytest.approx(epsilon_spent([(sigma_0, rate, steps)], 1 / users))
        both = epsilon_spent([(sigma_0, rate, steps), (sigma_1, rate, steps)], 1 / users)
        assert loop.history[-1]["dp"]["epsilon"][client] == pytest.approx(both)
        # Not what the new settings alone would claim for both rounds.
        alone = epsilon_spent([(sigma_1, rate, 2 * steps)], 1 / users)
        assert both > alone * 1.5


def test_the_ledger_merges_like_settings_and_counts_missing_rounds_with_the_current():
    from fellrec.training.dp.dp_training import PrivacyLedger

    ledger = PrivacyLedger(releases=[2.0])
    ledger.record(0, 0, 11, (1.0, 0.5, 3))
    ledger.record(0, 1, 12, (1.0, 0.5, 3))
    ledger.record(0, 2, 13, (4.0, 0.5, 3))
    ledger.record(0, 2, 13, (2.0, 0.5, 3))  # replayed from the same parameters: one release
    assert ledger.history(0, 3, (9.0, 0.1, 1)) == [(1.0, 0.5, 6), (2.0, 0.5, 3)]
    # Rounds 3 and 4 are not recorded (a restarted node): the current settings count them.
    assert ledger.history(0, 5, (9.0, 0.1, 1)) == [(1.0, 0.5, 6), (2.0, 0.5, 3), (9.0, 0.1, 2)]
    assert ledger.history(1, 2, (9.0, 0.1, 1)) == [(9.0, 0.1, 2)]
    # Round 1 asked again from other parameters: other noise, a second release, counted.
    ledger.record(0, 1, 99, (1.0, 0.5, 3))
    assert ledger.history(0, 3, (9.0, 0.1, 1)) == [(1.0, 0.5, 9), (2.0, 0.5, 3)]
    back = PrivacyLedger.from_state(json.loads(json.dumps(ledger.state())))
    assert back == ledger


def test_a_round_asked_again_out_of_order_still_counts():
    """Six rounds, then round 2 again from other parameters: seven releases, never fewer."""
    from fellrec.training.dp.dp_training import UserLevelDPSGD

    settings = DPSGDSettings(expected_users=4, noise_multiplier=1.0, loss_noise=1e9)
    dp = UserLevelDPSGD(settings, {0: 40}, secret=1)
    for round_index in range(6):
        dp.start_round(round_index, [100 + round_index], [0], 1)
    six = float(dp.privacy_spent(1, 1)[0, 0])
    dp.start_round(2, [999], [0], 1)
    seven = float(dp.privacy_spent(1, 1)[0, 0])
    rate, steps = settings.sample_rate(40), settings.steps_per_round(40, 1)
    sigma = settings.step_noise_multiplier
    assert six == pytest.approx(epsilon_spent([(sigma, rate, 6 * steps)], 1 / 40))
    assert seven == pytest.approx(epsilon_spent([(sigma, rate, 7 * steps)], 1 / 40))
    dp.start_round(2, [999], [0], 1)  # the same question again: nothing new
    assert float(dp.privacy_spent(1, 1)[0, 0]) == pytest.approx(seven)


def test_the_popularity_start_counts_each_user_once_per_item_with_user_level_noise():
    from fellrec.training.dp.dp_sgd import dp_user_popularity

    users = [np.asarray([0, 0, 1]), np.asarray([1, 2, 3])]
    counts = dp_user_popularity(users, 5, 3, 0.5, torch.Generator().manual_seed(3))
    noise = torch.randn(5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    expected = torch.tensor([1.0, 2.0, 1.0, 1.0, 0.0], dtype=torch.float64) + noise * 0.5 * 3**0.5
    torch.testing.assert_close(counts, expected.clamp_min(0))
    # Capped at 2 items per user: 4 counts in all, the second user's a random 2 of its 3.
    capped = dp_user_popularity(users, 5, 2, 1e-12, torch.Generator().manual_seed(3))
    assert float(capped.sum()) == pytest.approx(4.0) and capped[0] == pytest.approx(1.0)
    assert float(capped.max()) <= 2.0 + 1e-9


def test_the_popularity_release_is_composed_in_the_same_accountant():
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = [(2.0, 1.0, 1), (1.0, 0.25, 30)]
    assert epsilon_spent([(1.0, 0.25, 30)], 1e-3, releases=(2.0,)) == pytest.approx(
        accountant.get_epsilon(delta=1e-3)
    )
    without = epsilon_spent([(1.0, 0.25, 30)], 1e-3)
    assert epsilon_spent([(1.0, 0.25, 30)], 1e-3, releases=(2.0,)) > without
    assert epsilon_spent([(1.0, 0.25, 0)], 1e-3, releases=(2.0,)) > 0
    with pytest.raises(ValueError, match=re.escape("model.dp_sgd.popularity_noise must be > 0")):
        DPSGDSettings(popularity_noise=0.0).validate()
    with pytest.raises(ValueError, match="needs per-item components"):
        FederatedModule(recommender="encoder", dp_sgd=DPSGDSettings(popularity_noise=1.0))


def test_a_dp_fit_can_start_its_biases_from_user_level_popularity(tmp_path, still_encoder):
    settings = DPSGDSettings(expected_users=4, popularity_noise=0.5, popularity_items=8, seed=2)
    _, model, data, _ = tiny_run(
        tmp_path,
        still_encoder,
        FedAvg(),
        rounds=1,
        model_options={"recommender": "sequential", "dp_sgd": settings},
    )
    data.prepare_data()
    data.setup("fit")
    model.build(data)  # the start, before any training
    start = model.adapters.module(0).bias.detach()
    true = data.training_item_counts(0).double()
    # The noised start still ranks the client's items above the rest (noise 0.5 * sqrt(8)).
    assert float(start.std()) > 0
    assert torch.corrcoef(torch.stack([start.double(), torch.log1p(true)]))[0, 1] > 0.5
    trainer, model, data, loop = tiny_run(
        tmp_path / "trained",
        still_encoder,
        FedAvg(),
        rounds=1,
        model_options={"recommender": "sequential", "dp_sgd": settings},
    )
    trainer.fit(model, datamodule=data)
    users = data.training_users(1)
    steps = settings.steps_per_round(users, 1)
    assert loop.history[0]["dp"]["epsilon"][1] == pytest.approx(
        epsilon_spent(
            [(settings.step_noise_multiplier, settings.sample_rate(users), steps)],
            1 / users,
            releases=(0.5,),
        )
    )


def test_the_step_multiplier_accounts_the_loss_release_with_the_gradient():
    settings = DPSGDSettings(noise_multiplier=1.0, loss_noise=5.0)
    assert settings.step_noise_multiplier == pytest.approx(1 / math.sqrt(1 + 1 / 25))
    assert DPSGDSettings(noise_multiplier=2.0, loss_noise=2.0).step_noise_multiplier == (
        pytest.approx(2 / math.sqrt(2))
    )
    with pytest.raises(ValueError, match=re.escape("model.dp_sgd.max_loss must be > 0")):
        DPSGDSettings(max_loss=0.0).validate()


def test_a_dp_client_reports_a_noised_clipped_loss_over_the_expected_users(tmp_path, still_encoder):
    """What FELLRec's heating reads is released like the gradient: never a raw loss or count."""
    settings = DPSGDSettings(expected_users=4, max_loss=0.5, loss_noise=1e-9, seed=1)
    trainer, model, data, loop = tiny_run(
        tmp_path,
        still_encoder,
        FedAvg(),
        rounds=1,
        model_options={"recommender": "sequential", "dp_sgd": settings},
    )
    trainer.fit(model, datamodule=data)
    losses, examples, _ = model.collect_round_stats()
    for client in range(3):
        users = model.dp.users[client]
        steps = settings.steps_per_round(users, 1)
        expected = settings.sample_rate(users) * users * steps
        assert float(examples[client]) == pytest.approx(expected)  # data-independent
        # Every user's mean loss (~log of the catalog size) is clipped to 0.5 per sampled user.
        assert 0 < float(losses[client]) <= 0.5 * data.training_users(client) * steps + 1e-6


def test_resuming_a_run_without_dp_under_dp_and_16_bit_precision_are_refused(
    tmp_path, still_encoder
):
    options = {"recommender": "sequential"}
    trainer, model, data, _ = tiny_run(
        tmp_path, still_encoder, FedAvg(), rounds=1, model_options=options
    )
    trainer.fit(model, datamodule=data)
    private = {**options, "dp_sgd": DPSGDSettings(expected_users=4)}
    trainer, model, data, _ = tiny_run(
        tmp_path, still_encoder, FedAvg(), rounds=2, model_options=private
    )
    with pytest.raises(ValueError, match="written without it"):
        trainer.fit(model, datamodule=data, ckpt_path="last")
    from fellrec.training.dp.dp_sgd import check_dp_sgd_trainer

    # (On a CPU Lightning turns 16-mixed into bf16-mixed, so the check is called directly.)
    with pytest.raises(ValueError, match="use 32 or bf16-mixed"):
        check_dp_sgd_trainer("16-mixed", 1)
    with pytest.raises(ValueError, match=re.escape("--trainer.devices 1")):
        check_dp_sgd_trainer("32-true", 2)
    check_dp_sgd_trainer("bf16-mixed", 1)


def test_a_deployed_client_runs_the_federations_dp_sgd_and_seeds_stay_out_of_the_shared_config():
    pytest.importorskip("flwr", reason="fellrec.deploy needs Flower (Python >= 3.11)")
    from fellrec.deploy.client_session import check_secret_seeds, client_module_like

    settings = DPSGDSettings(expected_users=4, seed=3)
    client = client_module_like(FederatedModule(dp_sgd=settings), 2)
    assert client.dp_sgd == settings
    with pytest.raises(ValueError, match=re.escape("model.dp_sgd.seed=3 is in the federation")):
        check_secret_seeds(FederatedModule(dp_sgd=settings))
    check_secret_seeds(FederatedModule(dp_sgd=DPSGDSettings()))  # unset: fresh entropy


def test_the_run_total_keeps_a_client_absent_from_the_last_round():
    from fellrec.federation.engine import RoundEngine

    engine = RoundEngine(FedAvg(), num_clients=2)
    engine.history = [
        {"round": 0, "dp": {"epsilon": [1.0, 2.0], "delta": [0.1, 0.2]}},
        {"round": 1, "dp": {"epsilon": [1.5, None], "delta": [0.1, None]}},
    ]
    assert engine.privacy_spent() == {
        "after_round": 1,
        "epsilon": [1.5, 2.0],
        "delta": [0.1, 0.2],
    }


def test_a_restarted_deployed_node_answers_as_before_and_another_node_does_not(
    tmp_path, tiny_encoder_dir, monkeypatch
):
    """M4: no seed anywhere; the node's own key makes a restart release nothing new."""
    pytest.importorskip("flwr", reason="fellrec.deploy needs Flower (Python >= 3.11)")
    from fellrec.deploy.client_session import ClientSession
    from fellrec.deploy.run_config import RunSettings
    from fellrec.federation.protocol import ClientRoundConfig
    from test_cli import write_tiny_config

    config = str(write_tiny_config(tmp_path, tiny_encoder_dir))

    def node(root, popularity_noise="0.5", rounds="2"):
        overrides = ("--trainer.default_root_dir", str(root), "--model.recommender", "sequential")
        dp = ("--model.dp_sgd.expected_users", "4", "--model.dp_sgd.popularity_noise")
        budget = ("--trainer.max_epochs", rounds)
        settings = RunSettings((config,), (*overrides, *dp, popularity_noise, *budget))
        return ClientSession(settings, 1)

    monkeypatch.setenv("FELLREC_NODE_KEY_DIR", str(tmp_path / "keys"))
    first = node(tmp_path / "node")
    start = first.initial_parameters()
    round_0 = ClientRoundConfig(round=0, lr_scale=1.0, proximal_mu=0.0)
    trained = first.train(start, round_0).parameters
    assert (tmp_path / "keys" / "client_1.key").is_file()
    # Restarted, even into another run directory the server chose: the same answers.
    restarted = node(tmp_path / "elsewhere")
    assert torch.equal(restarted.initial_parameters(), start)
    assert torch.equal(restarted.train(start, round_0).parameters, trained)

    # Asked for more rounds (a resume): the same noise; other settings: other noise (the same
    # draws at two scales would give the counts away).
    def secret(session):
        session.initial_parameters()  # builds the module
        return session.module.dp.secret

    assert secret(node(tmp_path / "node", rounds="4")) == secret(first)
    assert secret(node(tmp_path / "node", popularity_noise="1.0")) != secret(first)
    # Asked round 0 again with another round config (or other parameters) after a restart: other
    # noise, and the node's ledger on its disk counts both releases.
    again = node(tmp_path / "node")
    halved = ClientRoundConfig(round=0, lr_scale=0.5, proximal_mu=0.0)
    second = again.train(start, halved)
    assert not torch.equal(second.parameters, trained)
    assert second.privacy_spent[0] > first.train(start, round_0).privacy_spent[0]
    assert len(list((tmp_path / "keys").glob("client_1.*.ledger.json"))) == 1
    monkeypatch.setenv("FELLREC_NODE_KEY_DIR", str(tmp_path / "other-keys"))
    elsewhere = node(tmp_path / "node")  # another machine's key: independent noise
    assert not torch.equal(elsewhere.initial_parameters(), start)
    # The server cannot seed a node's noise through the run config it writes.
    with pytest.raises(ValueError, match=re.escape("model.dp_sgd.seed=3 is in the federation")):
        ClientSession(RunSettings((config,), ("--model.dp_sgd.seed", "3")), 1)

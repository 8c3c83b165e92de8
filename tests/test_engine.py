"""The round engine driven by a fake host: no Lightning, no Flower, hand-computed values."""

from __future__ import annotations

import io

import pytest
import torch

from fellrec.federation.engine import (
    RESULTS_KEYS,
    Evaluation,
    RoundEngine,
    TrainingReport,
    UserValues,
)
from fellrec.federation.strategies import FedAvg, Local

NAMES = ["ndcg@10", "recall@10", "hit@10"]


class FakeHost:
    """N clients whose training adds ``client + 1`` to every parameter.

    A client's validation score is the mean of its parameters times ``score_sign[round]`` (so
    scores can rise and fall); ``absent`` and ``diverged`` map a round to clients.
    """

    def __init__(self, num_clients=3, size=2, absent=None, diverged=None, score_sign=None):
        self.theta = torch.zeros(num_clients, size)
        self.n = num_clients
        self.absent = absent or {}
        self.diverged = diverged or {}
        self.score_sign = score_sign or {}
        self.configs = []
        self.parameter_reads = 0
        self.loaded = []
        self.round = -1
        self._report = None

    @property
    def num_clients(self):
        return self.n

    @property
    def held_clients(self):
        return list(range(self.n))

    def start_round(self, round_index, configs):
        self.round = round_index
        self.configs.append(dict(configs))
        absent = self.absent.get(round_index, set())
        diverged = self.diverged.get(round_index, set())
        trained = self.theta.clone()
        losses = torch.zeros(self.n, dtype=torch.float64)
        examples = torch.zeros(self.n, dtype=torch.float64)
        flags = torch.zeros(self.n, dtype=torch.bool)
        for client, config in configs.items():
            if client in absent:
                continue
            trained[client] += (client + 1) * config.lr_scale
            losses[client] = 4.0 * (client + 1)
            examples[client] = 2.0
            flags[client] = client in diverged
        self._report = TrainingReport(
            trained, self.theta.clone(), losses, examples, flags, tuple(sorted(absent))
        )

    def training_report(self):
        return self._report

    def load_parameters(self, parameters, identical=False):
        self.loaded.append(parameters.clone())
        self.theta = parameters.clone()

    def parameters(self):
        self.parameter_reads += 1
        return self.theta

    def evaluation(self, stage, selected_rounds=None):
        sign = self.score_sign.get(self.round, 1.0)
        scores = sign * self.theta.mean(dim=1).double()  # (N,)
        users = torch.full((self.n,), 2.0, dtype=torch.float64)
        sums = torch.stack([scores * 2, scores, scores * 2], dim=1)  # (N, M) over 2 users each
        if stage != "test":
            return Evaluation(sums, users, NAMES)
        clients = torch.arange(self.n).repeat_interleave(2)
        values = torch.stack([scores, scores / 2, scores], dim=1).repeat_interleave(2, dim=0)
        return Evaluation(
            sums,
            users,
            NAMES,
            values=UserValues(clients, values),
            popularity_sums=sums / 4,
            popularity_values=UserValues(clients, values / 4),
        )


def make_engine(strategy=None, n=3, **kwargs):
    kwargs.setdefault("bootstrap_resamples", 0)
    lines: list[str] = []
    warned: list[str] = []
    engine = RoundEngine(
        strategy or FedAvg(),
        n,
        base_lr=0.1,
        announce=lines.append,
        warn=warned.append,
        **kwargs,
    )
    return engine, lines, warned


def run(engine, host, rounds, first=0):
    for round_index in range(first, rounds):
        engine.run_round(host, round_index)


def test_rounds_run_in_order_and_fedavg_aggregates_what_the_clients_trained():
    engine, lines, _ = make_engine()
    host = FakeHost()
    run(engine, host, 2)
    assert [c[0].round for c in host.configs] == [0, 1]
    # Round 0: the clients add 1, 2, 3 -> FedAvg (equal examples) gives 2 to everyone; round 1
    # adds 1, 2, 3 to 2 -> 4.
    assert torch.equal(host.loaded[0], torch.full((3, 2), 2.0))
    assert torch.equal(host.theta, torch.full((3, 2), 4.0))
    assert engine.rounds_run == 2
    record = engine.history[0]
    assert record["round"] == 0 and record["train_loss"] == [2.0, 4.0, 6.0]  # sums / examples
    assert record["lr"] == pytest.approx([0.1, 0.1, 0.1])
    assert record["absent"] == [] and record["diverged"] == []
    assert record["val"]["overall"]["ndcg@10"] == pytest.approx(2.0)
    assert record["seconds"] == pytest.approx(record["train_seconds"] + record["val_seconds"])
    assert lines[0].startswith("round 0: val ndcg@10 mean 2.0000 worst 2.0000 (")


def test_each_client_keeps_its_best_validation_round_and_is_tested_with_it():
    # Local: client c holds (c + 1) x rounds; round 1 scores a tenth (worse), round 2 positive.
    engine, _, _ = make_engine(Local())
    host = FakeHost(score_sign={1: 0.1})
    run(engine, host, 3)
    assert engine.selected_rounds == [2, 2, 2]
    torch.testing.assert_close(engine.selection.best_parameters, host.theta)
    # Round 1 was worse than round 0 for everyone: with only two rounds round 0 is kept.
    engine, _, _ = make_engine(Local())
    host = FakeHost(score_sign={1: 0.1})
    run(engine, host, 2)
    assert engine.selected_rounds == [0, 0, 0] and engine.selection.best_round == 0
    engine.start_test(host)
    torch.testing.assert_close(host.theta, torch.tensor([[1.0, 1], [2, 2], [3, 3]]))


def test_the_selection_keeps_the_aggregated_parameters_without_asking_the_host_again():
    engine, _, _ = make_engine()
    host = FakeHost()
    run(engine, host, 3)
    assert host.parameter_reads == 0
    # A validation without a round before it (a saved run's adapters) asks the host.
    engine.start_validation()
    engine.finish_validation(host, fitting=False)
    assert host.parameter_reads == 1


def test_an_absent_client_sits_the_round_out_and_the_others_aggregate_without_it():
    engine, _, warned = make_engine()
    host = FakeHost(absent={1: {2}})
    run(engine, host, 3)
    record = engine.history[1]
    assert record["absent"] == [2] and record["train_loss"] == [2.0, 4.0, None]
    assert "round 1: clients [2] did not report" in warned[0]
    # Round 0 -> 2 everywhere; round 1 without client 2: mean of 2+1 and 2+2 = 3.5 for all;
    # round 2: 3.5 + mean(1, 2, 3) = 5.5.
    assert torch.equal(host.loaded[1], torch.full((3, 2), 3.5))
    assert torch.equal(host.loaded[2], torch.full((3, 2), 5.5))


def test_a_diverged_client_keeps_its_round_start_parameters_and_is_left_out():
    engine, _, warned = make_engine(Local())
    host = FakeHost(diverged={1: {0}})
    run(engine, host, 2)
    assert engine.history[1]["diverged"] == [0] and engine.history[1]["train_loss"][0] is None
    assert any("client 0's loss became NaN/inf" in w for w in warned)
    # Client 0 went back to its round-1 start (1); the others trained on (2 -> 4, 3 -> 6).
    torch.testing.assert_close(host.theta[:, 0], torch.tensor([1.0, 4.0, 6.0]))


def test_a_client_without_examples_is_warned_about():
    engine, _, warned = make_engine(Local())
    host = FakeHost()
    engine.start_round(host, 0)
    report = host._report
    host._report = TrainingReport(
        report.parameters,
        report.round_start,
        report.loss_sums,
        torch.tensor([2.0, 0.0, 2.0], dtype=torch.float64),
        report.diverged,
    )
    engine.finish_training(host)
    assert warned == ["round 0: client 1 had no training example"]


def _without_timings(history):
    timing = {"train_seconds", "val_seconds", "seconds"}
    return [{k: v for k, v in record.items() if k not in timing} for record in history]


def test_a_resumed_engine_ends_as_the_uninterrupted_one():
    whole, _, _ = make_engine(n=3)
    whole_host = FakeHost(absent={1: {1}}, score_sign={2: 0.1})
    run(whole, whole_host, 4)

    first, _, _ = make_engine(n=3)
    host = FakeHost(absent={1: {1}}, score_sign={2: 0.1})
    run(first, host, 2)
    buffer = io.BytesIO()
    torch.save({"engine": first.state_dict(), "parameters": host.theta}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)  # plain values and tensors only

    resumed, _, _ = make_engine(n=3)
    resumed.load_state_dict(saved["engine"])
    host = FakeHost(absent={1: {1}}, score_sign={2: 0.1})
    host.theta = saved["parameters"]
    run(resumed, host, 4, first=resumed.rounds_run)
    assert _without_timings(resumed.history) == _without_timings(whole.history)
    assert resumed.selected_rounds == whole.selected_rounds
    assert resumed.selection.best_round == whole.selection.best_round
    torch.testing.assert_close(resumed.selection.best_parameters, whole.selection.best_parameters)
    torch.testing.assert_close(resumed.lr_scale, whole.lr_scale)
    assert resumed.test(host) == whole.test(whole_host)


def test_a_state_of_another_federation_is_refused():
    engine, _, _ = make_engine(n=3)
    run(engine, FakeHost(), 1)
    other, _, _ = make_engine(n=2)
    with pytest.raises(ValueError, match="holds 3 clients"):
        other.load_state_dict(engine.state_dict())


def test_the_test_summary_has_intervals_and_the_popularity_baseline():
    engine, _, _ = make_engine(bootstrap_resamples=50)
    host = FakeHost()
    run(engine, host, 1)
    summary = engine.test(host)
    assert summary["overall"]["ndcg@10"] == pytest.approx(2.0)
    assert summary["popularity"]["overall"]["ndcg@10"] == pytest.approx(0.5)
    # Every user of a client has the same value: the intervals are that value.
    assert summary["ci"]["clients"]["0"]["ndcg@10"] == pytest.approx([2.0, 2.0])
    assert summary["popularity"]["ci"]["overall"]["ndcg@10"] == pytest.approx([0.5, 0.5])
    without, _, _ = make_engine(bootstrap_resamples=0)
    run(without, FakeHost(), 1)
    assert without.test(FakeHost())["ci"] is None


def test_results_have_the_one_schema_whatever_the_host_adds():
    engine, _, _ = make_engine()
    host = FakeHost()
    run(engine, host, 1)
    summary = engine.test(host)
    simulated = engine.results(summary, config={"model": {}}, resources={}, extra_section=1)
    deployed = engine.results(summary, config={"model": {}}, deployment={"engine": "flower"})
    assert list(simulated)[: len(RESULTS_KEYS) - 1] == list(RESULTS_KEYS[:-1])
    assert list(simulated)[-2:] == ["extra_section", "history"]
    assert list(deployed) == list(RESULTS_KEYS)
    assert simulated["deployment"] is None and deployed["resources"] is None
    assert deployed["client_best_rounds"] == [0, 0, 0] and deployed["rounds_run"] == 1


def test_a_host_of_other_clients_is_refused():
    engine, _, _ = make_engine(n=3)
    with pytest.raises(ValueError, match="the engine was built for"):
        engine.start_round(FakeHost(num_clients=2), 0)


def test_an_unknown_selection_metric_is_refused_at_once():
    with pytest.raises(ValueError, match=r"loop.selection_metric='ndcg@11' is unknown"):
        RoundEngine(FedAvg(), 3, selection_metric="ndcg@11")


def test_any_known_metric_can_select_even_without_default_balance_statistics():
    # hit@10 has no balance statistics by default (summary.BALANCE_METRICS): the engine adds them.
    engine, lines, _ = make_engine(Local(), selection_metric="hit@10")
    host = FakeHost(score_sign={1: 0.1})
    run(engine, host, 2)
    assert engine.selected_rounds == [0, 0, 0]
    assert lines[0].startswith("round 0: val hit@10 mean 2.0000 worst 1.0000")


def test_a_round_without_any_validation_user_keeps_every_selection():
    class Silent(FakeHost):
        def evaluation(self, stage, selected_rounds=None):
            if self.round == 1 and stage == "validation":
                zeros = torch.zeros(self.n, dtype=torch.float64)
                return Evaluation(torch.zeros(self.n, 3), zeros, NAMES, absent=(0, 1, 2))
            return super().evaluation(stage, selected_rounds)

    engine, _, warned = make_engine(Local())
    host = Silent()
    run(engine, host, 3)
    assert "validation: clients [0, 1, 2] did not report" in warned
    assert any("no client reported a validation user" in w for w in warned)
    assert "val" not in engine.history[1] and engine.selected_rounds == [2, 2, 2]


def test_a_test_without_any_user_says_who_did_not_answer():
    class Gone(FakeHost):
        def evaluation(self, stage, selected_rounds=None):
            if stage == "test":
                zeros = torch.zeros(self.n, dtype=torch.float64)
                return Evaluation(torch.zeros(self.n, 3), zeros, NAMES, absent=(0, 1, 2))
            return super().evaluation(stage, selected_rounds)

    engine, _, _ = make_engine()
    host = Gone()
    run(engine, host, 1)
    with pytest.raises(RuntimeError, match=r"evaluated no user \(clients \[0, 1, 2\] did not"):
        engine.test(host)


def test_rounds_without_improvement_count_as_early_stopping_does():
    engine, _, _ = make_engine(Local())
    assert engine.rounds_without_improvement() == 0
    host = FakeHost(score_sign={1: 0.1, 2: 0.2})  # the best overall score is round 0's
    run(engine, host, 3)
    assert engine.selection.best_round == 0 and engine.rounds_without_improvement() == 2


def test_a_saved_state_of_other_held_clients_is_refused():
    engine, _, _ = make_engine(n=3)
    run(engine, FakeHost(), 1)
    state = engine.state_dict()
    other = RoundEngine(FedAvg(), 3, held_clients=[1], bootstrap_resamples=0)
    with pytest.raises(ValueError, match=r"holds clients \[0, 1, 2\], this host \[1\]"):
        other.load_state_dict(state)


class IdentityRecordingHost(FakeHost):
    """A FakeHost that records whether it was told every client gets the same parameters."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.identical = []

    def load_parameters(self, parameters, identical=False):
        self.identical.append(identical)
        super().load_parameters(parameters, identical)


@pytest.mark.parametrize(("strategy", "shares"), [(FedAvg(), True), (Local(), False)])
def test_finishing_training_tells_observers_the_host_and_the_record(strategy, shares):
    engine, _, warned = make_engine(strategy)
    seen = []
    engine.observers.append(lambda round_index, report: seen.append((round_index, report)))
    host = IdentityRecordingHost()
    engine.start_round(host, 0)
    report = host._report
    host._report = TrainingReport(
        report.parameters,
        report.round_start,
        report.loss_sums,
        torch.tensor([1.0, 2.0, 2.0], dtype=torch.float64),  # one example is enough
        report.diverged,
    )
    record = engine.finish_training(host, step=7)
    assert warned == []
    assert seen == [(0, host._report)]
    assert host.identical == [shares]
    assert record["step"] == 7 and record["seconds"] == record["train_seconds"] >= 0.0
    assert engine.lr_scale.dtype == torch.float64 and engine.lr_scale.tolist() == [1.0] * 3
    other, other_host = make_engine(strategy)[0], FakeHost()
    other.start_round(other_host, 0)
    assert "step" not in other.finish_training(other_host)

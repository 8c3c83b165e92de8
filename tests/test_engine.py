"""The round engine driven by a fake host: no Lightning, no Flower, hand-computed values."""

from __future__ import annotations

import io
import logging
import math
import re
import time
from dataclasses import replace

import pytest
import torch

from fellrec.federation.engine import (
    RESULTS_KEYS,
    Evaluation,
    RoundEngine,
    TrainingReport,
    UserValues,
    log_info,
    privacy_spent_record,
)
from fellrec.federation.strategies import FedAvg, Local, RoundResult
from fellrec.metrics.summary import metric_names

NAMES = ["ndcg@10", "recall@10", "hit@10"]


class FakeHost:
    """N clients whose training adds ``client + 1`` (times its learning-rate scale) to every
    parameter.

    A client's validation score is the mean of its parameters times ``score_sign[round]`` (so
    scores can rise and fall); ``absent`` and ``diverged`` map a round to clients; ``users`` maps
    a round to every held client's evaluated users (default 2); ``held`` are the clients whose
    rows it holds (default all: the others report no user); ``privacy`` maps a round to the
    ``(N, 2)`` DP-SGD spend it reports; ``slices`` (slice name -> bool per user, two users per
    client, client-major) puts the users in evaluation slices and makes validation report
    per-user values too. Every evaluation reports the popularity baseline (a quarter of the
    model's values).
    """

    def __init__(
        self,
        num_clients=3,
        size=2,
        absent=None,
        diverged=None,
        score_sign=None,
        users=None,
        held=None,
        privacy=None,
        slices=None,
    ):
        self.held = list(range(num_clients)) if held is None else list(held)
        self.theta = torch.zeros(len(self.held), size)
        self.n = num_clients
        self.absent = absent or {}
        self.diverged = diverged or {}
        self.score_sign = score_sign or {}
        self.users = users or {}
        self.privacy = privacy or {}
        self.slices = slices
        self.configs = []
        self.parameter_reads = 0
        self.loaded = []
        self.evaluated = []
        self.round = -1
        self._report = None

    @property
    def num_clients(self):
        return self.n

    @property
    def held_clients(self):
        return list(self.held)

    def start_round(self, round_index, configs):
        self.round = round_index
        self.configs.append(dict(configs))
        absent = self.absent.get(round_index, set())
        diverged = self.diverged.get(round_index, set())
        trained = self.theta.clone()
        losses = torch.zeros(self.n, dtype=torch.float64)
        examples = torch.zeros(self.n, dtype=torch.float64)
        flags = torch.zeros(self.n, dtype=torch.bool)
        for slot, client in enumerate(self.held):
            if client in absent:
                continue
            trained[slot] += (client + 1) * configs[client].lr_scale
            losses[client] = 4.0 * (client + 1)
            examples[client] = 2.0
            flags[client] = client in diverged
        self._report = TrainingReport(
            trained,
            self.theta.clone(),
            losses,
            examples,
            flags,
            tuple(sorted(absent)),
            self.privacy.get(round_index),
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
        self.evaluated.append((stage, selected_rounds))
        sign = self.score_sign.get(self.round, 1.0)
        scores = torch.zeros(self.n, dtype=torch.float64)
        scores[self.held] = sign * self.theta.mean(dim=1).double()
        users = torch.zeros(self.n, dtype=torch.float64)
        users[self.held] = self.users.get(self.round, 2.0)
        means = torch.stack([scores, scores / 2, scores], dim=1)  # (N, M)
        sums = means * users.unsqueeze(1)
        popularity = {"popularity_sums": sums / 4}
        if stage != "test" and self.slices is None:
            return Evaluation(sums, users, NAMES, **popularity)
        clients = torch.arange(self.n).repeat_interleave(2)
        values = means.repeat_interleave(2, dim=0)
        return Evaluation(
            sums,
            users,
            NAMES,
            values=UserValues(clients, values, self.slices),
            popularity_values=UserValues(clients, values / 4, self.slices),
            slice_cuts=None if self.slices is None else {"popularity": [5, 50]},
            **popularity,
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
    engine, lines, _ = make_engine()
    host = FakeHost()
    run(engine, host, 3)
    assert host.parameter_reads == 0
    last = dict(engine.history[-1])
    # A validation without a round before it (a saved run's adapters) asks the host; it is not
    # a round's validation: the round's record stays as it was, the line says "adapters".
    engine.start_validation()
    engine.finish_validation(host, fitting=False)
    assert host.parameter_reads == 1
    assert engine.history[-1] == last
    assert lines[-1].startswith("round 2 adapters: val ndcg@10 mean 6.0000 worst 6.0000 (")


def test_an_absent_client_sits_the_round_out_and_the_others_aggregate_without_it():
    engine, _, warned = make_engine()
    host = FakeHost(absent={1: {2}})
    run(engine, host, 3)
    record = engine.history[1]
    assert record["absent"] == [2] and record["train_loss"] == [2.0, 4.0, None]
    assert warned[0] == "round 1: clients [2] did not report; they sit this round out"
    # Round 0 -> 2 everywhere; round 1 without client 2: mean of 2+1 and 2+2 = 3.5 for all;
    # round 2: 3.5 + mean(1, 2, 3) = 5.5.
    assert torch.equal(host.loaded[1], torch.full((3, 2), 3.5))
    assert torch.equal(host.loaded[2], torch.full((3, 2), 5.5))


def test_a_diverged_client_keeps_its_round_start_parameters_and_is_left_out():
    engine, _, warned = make_engine(Local())
    host = FakeHost(diverged={1: {0}})
    run(engine, host, 2)
    assert engine.history[1]["diverged"] == [0] and engine.history[1]["train_loss"][0] is None
    assert (
        "round 1: client 0's loss became NaN/inf; it keeps its parameters from the round start "
        "and is left out of the aggregation"
    ) in warned
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


class ShrinkingRates(Local):
    """Local, but client ``c``'s next learning-rate scale is ``[1, 1/2, 1/4][c] / (round + 1)``.

    It records the rounds it is asked to aggregate.
    """

    def __init__(self):
        super().__init__()
        self.aggregated_rounds = []

    def aggregate(self, inputs):
        self.aggregated_rounds.append(inputs.round)
        kept = super().aggregate(inputs)
        scale = torch.tensor([1.0, 0.5, 0.25], dtype=torch.float64) / (inputs.round + 1)
        return RoundResult(kept.theta, scale)


def test_the_strategys_learning_rate_scales_reach_the_next_round_and_the_history():
    strategy = ShrinkingRates()
    engine, _, _ = make_engine(strategy)
    host = FakeHost()
    run(engine, host, 2)
    assert strategy.aggregated_rounds == [0, 1]
    assert [config.lr_scale for config in host.configs[0].values()] == [1.0, 1.0, 1.0]
    assert [config.lr_scale for config in host.configs[1].values()] == [1.0, 0.5, 0.25]
    # Round 0 (scale 1) gives 1, 2, 3; round 1 adds (c + 1) x (1, 1/2, 1/4): 2, 3, 3.75.
    assert host.theta[:, 0].tolist() == [2.0, 3.0, 3.75]
    assert engine.history[0]["lr"] == pytest.approx([0.1, 0.05, 0.025])  # base_lr 0.1
    assert engine.history[1]["lr"] == pytest.approx([0.05, 0.025, 0.0125])
    torch.testing.assert_close(engine.lr_scale, torch.tensor([0.5, 0.25, 0.125]).double())


RESUMED = {
    "fedavg": (FedAvg, None),
    "learning-rate scales carried": (ShrinkingRates, None),
    "a host of one client": (Local, [1]),
}


@pytest.mark.parametrize("case", list(RESUMED))
def test_a_resumed_engine_ends_as_the_uninterrupted_one(case):
    strategy, held = RESUMED[case]
    # Rounds 2 and 3 score a tenth: every best round is one of the two before the save.
    settings = {"absent": {1: {1}}, "score_sign": {2: 0.1, 3: 0.1}, "held": held}
    whole, _, _ = make_engine(strategy(), n=3, held_clients=held)
    whole_host = FakeHost(**settings)
    run(whole, whole_host, 4)
    assert whole.selection.best_round in (0, 1)

    first, _, _ = make_engine(strategy(), n=3, held_clients=held)
    host = FakeHost(**settings)
    run(first, host, 2)
    buffer = io.BytesIO()
    torch.save({"engine": first.state_dict(), "parameters": host.theta}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)  # plain values and tensors only

    resumed, _, _ = make_engine(strategy(), n=3, held_clients=held)
    resumed.load_state_dict(saved["engine"])
    host = FakeHost(**settings)
    host.theta = saved["parameters"]
    run(resumed, host, 4, first=resumed.rounds_run)
    assert _without_timings(resumed.history) == _without_timings(whole.history)
    assert resumed.selected_rounds == whole.selected_rounds
    assert resumed.selection.best_round == whole.selection.best_round
    torch.testing.assert_close(resumed.selection.best_parameters, whole.selection.best_parameters)
    torch.testing.assert_close(resumed.lr_scale, whole.lr_scale)
    assert resumed.validation_popularity == whole.validation_popularity is not None
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
    assert summary["ci"]["resamples"] == 50
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
    known = ", ".join(metric_names())
    message = f"loop.selection_metric='ndcg@11' is unknown; choose from {known}"
    with pytest.raises(ValueError, match=re.escape(message)):
        RoundEngine(FedAvg(), 3, selection_metric="ndcg@11")


def test_a_negative_number_of_bootstrap_resamples_is_refused_at_once():
    with pytest.raises(ValueError, match=r"loop.bootstrap_resamples must be >= 0, got -1"):
        RoundEngine(FedAvg(), 3, bootstrap_resamples=-1)


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
    assert (
        "round 1: no client reported a validation user; every client keeps its selection"
    ) in warned
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

    class Empty(FakeHost):
        def evaluation(self, stage, selected_rounds=None):
            if stage == "test":
                zeros = torch.zeros(self.n, dtype=torch.float64)
                return Evaluation(torch.zeros(self.n, 3), zeros, NAMES)
            return super().evaluation(stage, selected_rounds)

    engine, _, _ = make_engine()
    host = Empty()
    run(engine, host, 1)
    message = (
        "the test evaluated no user: nothing to report; the rounds' state is kept, so the test "
        "can run again once the clients answer"
    )
    with pytest.raises(RuntimeError, match=re.escape(message)):
        engine.test(host)


def test_rounds_without_improvement_count_as_early_stopping_does():
    engine, _, _ = make_engine(Local())
    assert engine.rounds_without_improvement() == 0
    host = FakeHost(score_sign={1: 0.1, 2: 0.2})  # the best overall score is round 0's
    run(engine, host, 3)
    assert engine.selection.best_round == 0 and engine.rounds_without_improvement() == 2
    engine, _, _ = make_engine(Local())
    run(engine, FakeHost(score_sign={2: 0.1}), 3)  # round 1 is the best: one round since
    assert engine.selection.best_round == 1 and engine.rounds_without_improvement() == 1


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


def test_a_fresh_engine_has_run_no_round_and_says_when_a_round_is_training():
    engine, _, _ = make_engine()
    assert engine.rounds_run == 0 and engine.training is False
    assert engine.test_summary is None and engine.validation_popularity is None
    assert engine.lr_scale.dtype == torch.float64 and engine.lr_scale.tolist() == [1.0] * 3
    host = FakeHost()
    engine.start_round(host, 0)
    assert engine.training is True
    engine.finish_training(host)
    assert engine.training is False
    engine.start_validation()
    engine.finish_validation(host)
    summary = engine.test(host)
    assert engine.test_summary is summary  # what the run reporter reads
    state = engine.state_dict()
    engine.start_round(host, 1)
    engine.load_state_dict(state)  # a resume starts between rounds, before any test
    assert engine.training is False and engine.test_summary is None and engine.rounds_run == 1


def test_the_round_timings_are_the_seconds_each_part_took():
    engine, _, _ = make_engine()
    host = FakeHost()
    before = time.perf_counter()
    engine.start_round(host, 0)
    record = engine.finish_training(host)
    trained = time.perf_counter()
    engine.start_validation()
    engine.finish_validation(host)
    validated = time.perf_counter()
    assert 0.0 <= record["train_seconds"] <= trained - before
    assert 0.0 <= record["val_seconds"] <= validated - trained
    assert record["seconds"] == record["train_seconds"] + record["val_seconds"]


def test_a_client_is_selected_on_its_mean_validation_score_whatever_its_users():
    # Local: clients at 1, 2, 3 after round 0 (4 users each), 2, 4, 6 after round 1 (1 user
    # each) scored 0.6 x: means 1.2, 2.4, 3.6 beat 1, 2, 3 although the sums do not.
    engine, _, _ = make_engine(Local())
    run(engine, FakeHost(score_sign={1: 0.6}, users={0: 4.0, 1: 1.0}), 2)
    assert engine.selected_rounds == [1, 1, 1]
    torch.testing.assert_close(
        engine.selection.best_scores, torch.tensor([1.2, 2.4, 3.6], dtype=torch.float64)
    )


def test_the_first_validations_popularity_baseline_is_reported_with_the_test():
    engine, _, _ = make_engine(Local())
    host = FakeHost()
    run(engine, host, 2)
    # Round 0: clients at 1, 2, 3, the baseline a quarter: (1 + 2 + 3) / 3 / 4 = 0.5 (round 1's
    # would be 1.0).
    assert engine.validation_popularity["overall"]["ndcg@10"] == pytest.approx(0.5)
    summary = engine.test(host)
    assert summary["popularity"]["validation"] == engine.validation_popularity


def test_a_host_without_the_popularity_baseline_reports_none():
    class NoBaseline(FakeHost):
        def evaluation(self, stage, selected_rounds=None):
            evaluation = super().evaluation(stage, selected_rounds)
            return replace(evaluation, popularity_sums=None, popularity_values=None)

    engine, _, _ = make_engine()
    host = NoBaseline()
    run(engine, host, 1)
    assert engine.validation_popularity is None
    assert engine.test(host)["popularity"] is None


def test_the_test_tells_each_client_its_selected_round_and_warns_about_the_absent():
    class TestAbsent(FakeHost):
        def evaluation(self, stage, selected_rounds=None):
            evaluation = super().evaluation(stage, selected_rounds)
            return replace(evaluation, absent=(2,)) if stage == "test" else evaluation

    engine, _, warned = make_engine(Local())
    host = TestAbsent(score_sign={1: 0.1})
    run(engine, host, 2)
    engine.test(host)
    assert host.evaluated[-1] == ("test", [0, 0, 0])
    assert warned == ["test: clients [2] did not report"]


def test_after_a_validation_without_users_the_next_one_reads_the_hosts_parameters():
    class SilentOnce(FakeHost):
        silent = True

        def evaluation(self, stage, selected_rounds=None):
            if self.silent:
                self.silent = False
                zeros = torch.zeros(self.n, dtype=torch.float64)
                return Evaluation(torch.zeros(self.n, 3), zeros, NAMES)
            return super().evaluation(stage, selected_rounds)

    engine, _, _ = make_engine(Local())
    host = SilentOnce()
    run(engine, host, 1)
    assert engine.selected_rounds == [-1, -1, -1]
    engine.start_validation()
    engine.finish_validation(host, fitting=False)
    assert host.parameter_reads == 1 and engine.selected_rounds == [0, 0, 0]
    torch.testing.assert_close(engine.selection.best_parameters, host.theta)


def test_validating_saved_adapters_on_a_fresh_engine_reads_them_and_records_no_round():
    engine, lines, _ = make_engine(Local())
    host = FakeHost()
    host.theta = torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])
    engine.start_validation()
    summary = engine.finish_validation(host, fitting=False)
    assert host.parameter_reads == 1 and engine.history == []
    assert summary["overall"]["ndcg@10"] == pytest.approx(2.0)
    torch.testing.assert_close(engine.selection.best_parameters, host.theta)
    assert " adapters: val ndcg@10 mean 2.0000 worst 1.0000 (validation " in lines[0]


#: Every client's first user is a head user; both of client 1's users have unseen items.
SLICES = {
    "popularity/head": torch.tensor([True, False, True, False, True, False]),
    "client_items/unseen": torch.tensor([False, False, True, True, False, False]),
}


def test_the_slices_of_validation_and_test_for_the_model_and_the_baseline():
    engine, _, _ = make_engine(Local(), bootstrap_resamples=20)
    host = FakeHost(slices=SLICES)
    run(engine, host, 1)
    # Clients at 1, 2, 3 after round 0; a user's values are its client's (ndcg s, recall s / 2,
    # hit s): the head users' means are 2, 1, 2; client 1's users' 2, 1, 2.
    validation = engine.history[0]["val"]["slices"]
    assert validation["definition"] == {"popularity": [5, 50]}
    assert validation["resamples"] == 20
    head = validation["groups"]["popularity/head"]
    assert head["users"] == 3
    assert [head[m] for m in NAMES] == pytest.approx([2.0, 1.0, 2.0])
    # Each round's validation: intervals of the logged metrics (and the selection metric) only.
    assert set(head["ci"]) == {"ndcg@10", "recall@10"}
    unseen = validation["groups"]["client_items/unseen"]
    assert unseen["ci"]["ndcg@10"] == pytest.approx([2.0, 2.0])
    clients = validation["clients"]
    assert clients["1"]["client_items/unseen"] == {
        "users": 2,
        "ndcg@10": 2.0,
        "recall@10": 1.0,
        "hit@10": 2.0,
    }
    assert clients["0"]["client_items/unseen"] == {"users": 0}

    summary = engine.test(host)
    tested = summary["slices"]
    assert tested["definition"] == {"popularity": [5, 50]} and tested["resamples"] == 20
    assert set(tested["groups"]["popularity/head"]["ci"]) == set(NAMES)  # the test: every metric
    assert tested["groups"]["client_items/unseen"]["ndcg@10"] == pytest.approx(2.0)
    baseline = summary["popularity"]["slices"]  # a quarter of the model's values
    assert baseline["definition"] == {"popularity": [5, 50]}
    assert baseline["groups"]["client_items/unseen"]["ndcg@10"] == pytest.approx(0.5)
    assert baseline["groups"]["popularity/head"]["recall@10"] == pytest.approx(0.25)
    assert set(baseline["groups"]["popularity/head"]["ci"]) == set(NAMES)
    # A host that knows no slice membership gets none.
    plain, _, _ = make_engine(Local())
    run(plain, FakeHost(), 1)
    assert "slices" not in plain.history[0]["val"] and plain.test(FakeHost())["slices"] is None


def privacy_spend(epsilons, deltas):
    """A round's DP-SGD report ``(N, 2)``: each client's epsilon and delta."""
    return torch.tensor([epsilons, deltas], dtype=torch.float64).T


def test_a_rounds_privacy_spend_is_each_clients_epsilon_and_delta_none_where_unreported():
    spent = privacy_spend([1.5, math.nan, 0.25], [1e-5, math.nan, 2e-5])
    assert privacy_spent_record(spent) == {
        "epsilon": [1.5, None, 0.25],
        "delta": [1e-5, None, 2e-5],
    }


def test_the_dp_spend_is_recorded_each_round_announced_and_totalled_per_client():
    nan = math.nan
    privacy = {
        0: privacy_spend([0.5, 1.0, 1.5], [1e-6, 2e-6, 3e-6]),
        1: privacy_spend([1.0, 2.0, 3.0], [2e-6, 4e-6, 6e-6]),
        2: privacy_spend([1.5, 3.0, nan], [3e-6, 6e-6, nan]),  # client 2 did not report
    }
    engine, lines, _ = make_engine(Local())
    host = FakeHost(privacy=privacy)
    run(engine, host, 3)
    assert engine.history[0]["dp"] == {"epsilon": [0.5, 1.0, 1.5], "delta": [1e-6, 2e-6, 3e-6]}
    assert engine.history[2]["dp"] == {"epsilon": [1.5, 3.0, None], "delta": [3e-6, 6e-6, None]}
    # Round 0: clients at 1, 2, 3 (mean 2, worst 1); the line adds the largest epsilon.
    assert lines[0].startswith(
        "round 0: val ndcg@10 mean 2.0000 worst 1.0000, DP epsilon <= 1.50 ("
    )
    assert ", DP epsilon <= 3.00 (" in lines[2]
    # Each client's last report; client 2 keeps round 1's.
    total = {"after_round": 2, "epsilon": [1.5, 3.0, 3.0], "delta": [3e-6, 6e-6, 6e-6]}
    assert engine.privacy_spent() == total
    assert engine.results(engine.test(host))["dp_sgd"] == total
    # Without DP-SGD: no `dp` entry and no `dp_sgd` section.
    plain, _, _ = make_engine(Local())
    run(plain, FakeHost(), 1)
    assert "dp" not in plain.history[0] and plain.privacy_spent() is None
    assert plain.results(plain.test(FakeHost()))["dp_sgd"] is None


def test_the_default_announcer_logs_the_line(caplog):
    with caplog.at_level(logging.INFO, logger="fellrec.federation.engine"):
        log_info("round 0: val ndcg@10 mean 0.1000")
    assert caplog.messages == ["round 0: val ndcg@10 mean 0.1000"]


def test_a_saved_state_of_another_held_client_or_of_other_scales_is_refused():
    saved, _, _ = make_engine(Local(), n=2, held_clients=[0])
    run(saved, FakeHost(num_clients=2, held=[0]), 1)
    other, _, _ = make_engine(Local(), n=2, held_clients=[1])
    message = (
        "the saved state holds clients [0], this host [1]: resume it with the data settings it "
        "was saved with"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        other.load_state_dict(saved.state_dict())
    engine, _, _ = make_engine(n=3)
    run(engine, FakeHost(), 1)
    state = {**engine.state_dict(), "lr_scale": torch.ones(2, dtype=torch.float64)}
    with pytest.raises(ValueError, match=r"holds clients \[0, 1, 2\], this host \[0, 1, 2\]"):
        make_engine(n=3)[0].load_state_dict(state)


def test_a_state_saved_without_its_held_clients_is_read_as_the_whole_federations():
    engine, _, _ = make_engine(n=3)
    run(engine, FakeHost(), 1)
    state = {k: v for k, v in engine.state_dict().items() if k != "selection_held"}
    whole, _, _ = make_engine(n=3)
    whole.load_state_dict(state)
    assert whole.rounds_run == 1 and whole.selected_rounds == [0, 0, 0]
    # A host of one client refuses it, even with one learning-rate scale.
    one, _, _ = make_engine(Local(), n=3, held_clients=[1])
    with pytest.raises(ValueError, match=r"holds clients \[0, 1, 2\], this host \[1\]"):
        one.load_state_dict({**state, "lr_scale": torch.ones(1, dtype=torch.float64)})

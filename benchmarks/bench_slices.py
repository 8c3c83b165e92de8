"""What the evaluation slices add to an evaluation pass, side by side (issue 31: "not measurably").

    python benchmarks/bench_slices.py --ml100k DIR [--new-items 0.1] [--repeats 5]

DIR is the RecBole-format directory ``fellrec data fetch ml-100k`` prints; without it the data is
the built-in synthetic catalog. On the leave-one-out split it times, per test pass:

* **evaluation**: what a test pass already does after the model's scores, with the cheapest
  scorer there is (popularity, so the ratio is an upper bound: a learned model's forward pass
  only adds to this side): ranking every user's full catalog, per-client sums, the summary and
  its bootstrap intervals (1000 resamples);
* **slices**: what they add: the definition from the training data, every test user's
  membership, and every slice's means and intervals (1000 resamples, every metric); and what a
  validation round adds (intervals of the logged metrics only).

It prints the medians and the ratio ``(evaluation + slices) / evaluation``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch

from fellrec.data.pipeline import DatasetSettings, PipelineSettings, build_federated_data
from fellrec.metrics.bootstrap import confidence_intervals
from fellrec.metrics.popularity import evaluate_popularity
from fellrec.metrics.slices import (
    SLICE_LOGGED_METRICS,
    define_slices,
    slice_summary,
)
from fellrec.metrics.summary import client_sums, metric_names, summarize


def median_seconds(work: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``work`` over ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ml100k", default=None, help="RecBole ml-100k directory")
    parser.add_argument("--new-items", type=float, default=0.0, help="data.new_items")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    dataset = (
        DatasetSettings(format="recbole", path=args.ml100k) if args.ml100k else DatasetSettings()
    )
    settings = PipelineSettings(
        dataset=dataset,
        split="leave_one_out",
        valid_fraction=0.1,
        test_fraction=0.1,
        history_length=10,
        max_train_examples=None,
        num_clients=5,
        partition="iid",
        partition_attribute=None,
        dirichlet_concentration=0.5,
        seed=0,
        new_items=args.new_items,
    )
    data = build_federated_data(settings)
    split, num_items, num_clients = data.split, data.dataset.num_items, data.num_clients
    test = split.test
    names = metric_names()
    clients = torch.from_numpy(data.assignment[test.users])
    print(
        f"{data.dataset.name}: {len(test)} test users, {num_items} items, {num_clients} clients, "
        f"{len(split.new_items)} new items"
    )
    per_user = evaluate_popularity(split.train_sequences, test, num_items)

    def evaluation() -> None:
        scored = evaluate_popularity(split.train_sequences, test, num_items)
        sums, counts = client_sums(scored, clients, num_clients, names)
        summarize(sums, counts, names)
        confidence_intervals(scored, clients, num_clients, names)

    def test_slices() -> None:
        definition = define_slices(split.train_sequences, data.assignment, num_items, num_clients)
        membership = definition.membership(test.users, test.targets)
        slice_summary(per_user, membership, clients, num_clients, names, definition.cuts())

    definition = define_slices(split.train_sequences, data.assignment, num_items, num_clients)
    membership = definition.membership(test.users, test.targets)

    def validation_slices() -> None:
        slice_summary(
            per_user,
            definition.membership(test.users, test.targets),
            clients,
            num_clients,
            names,
            interval_metrics=SLICE_LOGGED_METRICS,
        )

    base = median_seconds(evaluation, args.repeats)
    added = median_seconds(test_slices, args.repeats)
    per_round = median_seconds(validation_slices, args.repeats)
    users = {name: int(mask.sum()) for name, mask in membership.items()}
    print(f"slice users: {users}")
    print(f"evaluation (popularity scores, ranking, summary, intervals): {base:.3f} s")
    print(f"test slices (definition, membership, means, intervals): {added:.3f} s")
    logged = ", ".join(SLICE_LOGGED_METRICS)
    print(f"validation-round slices (intervals of {logged}): {per_round:.3f} s")
    test_ratio, round_ratio = (base + added) / base, (base + per_round) / base
    print(f"ratio, test: {test_ratio:.3f}x; validation round: {round_ratio:.3f}x")


if __name__ == "__main__":
    main()

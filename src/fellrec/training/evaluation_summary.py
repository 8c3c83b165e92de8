"""The test's summary: per-client and overall metrics, with bootstrap intervals over users.

``FederatedLoop`` logs :func:`logged_test_metrics` of it and writes it into ``results.json``; the
intervals (under ``"ci"``) show how much a client's metrics are worth when it has few users.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from fellrec.metrics.bootstrap import confidence_intervals
from fellrec.metrics.summary import summarize

if TYPE_CHECKING:
    from fellrec.training.federated_module import FederatedModule


def summarize_test(module: FederatedModule, bootstrap_resamples: int) -> dict[str, Any]:
    """``summarize()`` the test pass the module collected, with confidence intervals.

    Args:
        module: The module that ran the test (its collected sums, counts and per-user values).
        bootstrap_resamples: Resamples of the test users for the intervals (0: no ``"ci"``).
    """
    sums, counts, names = module.collect_eval()
    summary = summarize(sums, counts, names)
    if bootstrap_resamples > 0:
        clients, values = module.collect_eval_values()
        per_user = {name: values[:, j] for j, name in enumerate(names)}
        summary["ci"] = confidence_intervals(
            per_user, clients, module.num_clients, names, bootstrap_resamples
        )
    return summary


def logged_test_metrics(summary: Mapping[str, Any]) -> dict[str, float]:
    """``test/<metric>`` of the overall row (the user count left out).

    Args:
        summary: :func:`summarize_test` output.
    """
    overall = summary["overall"]
    assert isinstance(overall, dict)
    return {f"test/{k}": float(v) for k, v in overall.items() if k != "users"}

"""The ranges and choices of settings whose own checks live in modules that import torch.

Most of fellrec's settings are checked where they are used (the data pipeline, the model, the
strategies), with messages that name the setting. Those checks that live in light modules run as
they are before the heavy imports (:mod:`fellrec.preflight.checks`). For the others this module
states the same rule once more, so that a bad value fails in a second instead of after the
imports; ``tests/test_preflight.py`` holds every rule here to its original: the original refuses
the rule's bad value, naming the same setting, and accepts its good one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Rule:
    """One setting's allowed values.

    Attributes:
        key: The setting (``loop.strategy.alpha`` stands for that argument of any strategy).
        requirement: What it must be (``"> 0"``, ``"one of ('a', 'b')"``).
        allows: Whether a (non-null) value is allowed.
        bad: A value the rule (and the original check) refuses.
        good: A value both allow.
        template: The error, in the words of the original check (``{key}``, ``{requirement}``,
            ``{value}`` are filled in).
    """

    key: str
    requirement: str
    allows: Callable[[Any], bool]
    bad: Any
    good: Any
    template: str = "{key} must be {requirement}, got {value}"

    def message(self, value: Any) -> str:
        """The error for ``value``."""
        return self.template.format(key=self.key, requirement=self.requirement, value=repr(value))


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    try:
        return float(str(value))
    except ValueError:
        return None


def above(key: str, low: float) -> Rule:
    """``key`` must be > ``low``."""
    return Rule(
        key,
        f"> {low:g}",
        lambda v: (n := _number(v)) is not None and n > low,
        low,
        low + 0.5,
    )


def at_least(key: str, low: int, words: str | None = None) -> Rule:
    """``key`` must be >= ``low`` (``words``: the original's wording of it)."""
    return Rule(
        key,
        words or f">= {low}",
        lambda v: (n := _number(v)) is not None and n >= low,
        low - 1,
        low,
    )


def in_unit_interval(key: str) -> Rule:
    """``key`` must be in [0, 1)."""
    return Rule(
        key,
        "in [0, 1)",
        lambda v: (n := _number(v)) is not None and math.isfinite(n) and 0.0 <= n < 1.0,
        1.0,
        0.0,
    )


def one_of(key: str, choices: Sequence[str], words: str | None = None) -> Rule:
    """``key`` must be one of ``choices`` (by default worded as the original prints a tuple)."""
    return Rule(
        key,
        words or f"one of {tuple(choices)}",
        lambda v: v in choices,
        "no-such-choice",
        choices[0],
    )


#: The metrics every run reports (``fellrec.metrics.summary.metric_names()``).
METRIC_NAMES = tuple(f"{f}@{k}" for f in ("recall", "ndcg", "hit", "mrr") for k in (5, 10, 20))

#: Rules of settings checked in heavy modules (the original check in the comment).
RULES: tuple[Rule, ...] = (
    above("model.lr", 0),  # training/host/client_optimization.py
    one_of("model.lr_decay", ("none", "linear", "cosine")),  # client_optimization.LR_DECAYS
    one_of("model.recommender", ("sequential", "encoder", "generative")),  # recommender_families
    one_of("model.pooling", ("mean", "cls")),  # models/encoder.POOLINGS
    one_of("model.item_encoding", ("round", "step")),  # models/encoder.ITEM_ENCODINGS
    at_least("model.num_negatives", 1),  # training/host/recommender_assembly.py
    above("model.temperature", 0),  # models/item_components.py, models/encoder.py
    at_least("model.max_history_tokens", 3, "at least 3"),  # models/text.py
    at_least("model.lora.r", 1),  # models/adapters.LoRASettings
    in_unit_interval("model.lora.dropout"),  # models/adapters.LoRASettings
    in_unit_interval("model.base_dropout"),  # training/host/module_settings.py
    at_least("model.items.id_dim", 1),  # models/item_components.ItemSettings
    above("model.items.lr", 0),
    at_least("model.items.weight_decay", 0),
    above("model.items.init_std", 0),
    one_of(
        "model.items.bias_init",
        ("zeros", "log_popularity", "dp_log_popularity"),
        "one of zeros, log_popularity, dp_log_popularity",
    ),
    at_least("model.items.share_noise_ids", 0),  # models/item_components.ItemSettings
    at_least("model.items.share_noise_bias", 0),
    one_of("model.items.cold_start", ("none", "text_ridge"), "one of none, text_ridge"),
    above("model.items.cold_start_ridge", 0),
    above("model.dp_sgd.noise_multiplier", 0),  # training/dp/dp_sgd.DPSGDSettings
    above("model.dp_sgd.max_grad_norm", 0),
    at_least("model.dp_sgd.expected_users", 1),
    at_least("model.dp_sgd.windows_per_user", 1),
    above("model.dp_sgd.popularity_noise", 0),
    above("model.dp_sgd.max_loss", 0),
    above("model.dp_sgd.loss_noise", 0),
    at_least("model.dp_sgd.popularity_items", 1),
    above("model.block_server.timeout", 0),  # models/process_transport.BlockServerSettings
    above("model.hidden_defence.clip", 0),  # models/hidden_defence.HiddenDefence
    at_least("model.hidden_defence.noise", 0),
    at_least("loop.min_eval_users", 0),  # training/rounds/loop.FederatedLoop
    at_least("loop.bootstrap_resamples", 0),
    Rule(  # training/rounds/loop.FederatedLoop.setup
        "loop.selection_metric",
        f"one of {', '.join(METRIC_NAMES)}",
        lambda v: v in METRIC_NAMES,
        "auc",
        "ndcg@10",
        "selection_metric={value} is unknown; choose from " + ", ".join(METRIC_NAMES),
    ),
    above("loop.strategy.alpha", 0),  # federation/strategies.FELLRec
    above("loop.strategy.beta", 0),
    above("loop.strategy.temperature", 0),
    one_of("loop.strategy.exponent", ("code", "scaled"), "'code' or 'scaled'"),
    one_of("loop.strategy.order", ("jacobi", "sequential"), "'jacobi' or 'sequential'"),
    above("loop.strategy.mu", 0),  # federation/strategies.FedProx
)


def broken_rules(values: Mapping[str, Any]) -> list[str]:
    """The messages of the rules the given (dotted key -> value) settings break; null is skipped."""
    return [
        rule.message(values[rule.key])
        for rule in RULES
        if rule.key in values and values[rule.key] is not None and not rule.allows(values[rule.key])
    ]

"""The honest-but-curious server reads every round's reports: item sets, counts, data sizes.

A :class:`MessageProbe` observes the round engine (``RoundEngine.observers``): each round it gets
what the server received (every client's parameters after local training, its example count)
and what it had sent (the round-start parameters), and scores the server's best simple guesses
of each client's private item set and counts (:mod:`fellrec.attacks.item_leak`) and of its data
size (:mod:`fellrec.attacks.reports`) against the truth the simulation knows. The scores go under
``"privacy"`` in ``results.json`` as ``"parameters"`` and ``"reports"``.
"""

from __future__ import annotations

import math
from typing import Any, cast

import torch

from fellrec.attacks.item_leak import (
    SIGNALS,
    ItemLayout,
    item_layout,
    score_round,
    summarize_signals,
)
from fellrec.attacks.reports import example_count_leak
from fellrec.federation.engine import TrainingReport
from fellrec.training.batches.datamodule import FederatedDataModule
from fellrec.training.host.federated_module import FederatedModule

PARAMETER_ATTACK = "item-components"


def json_ready(value: Any) -> Any:
    """``value`` with every NaN or infinite float replaced by None (strict JSON has neither)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: json_ready(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(item) for item in value]
    return value


def parameter_layout(module: FederatedModule) -> ItemLayout:
    """Where the item components sit in the module's client parameter vectors."""
    assert module.adapters is not None, "the module is not built yet"
    shapes = [tuple(p.shape) for p in module.adapters.parameters(0)]
    return item_layout(module.adapters.keys, shapes)


class MessageProbe:
    """Scores what the server learns from each round's reports (an engine observer).

    Args:
        module: The built module (its parameter layout and held clients).
        datamodule: The set-up data (each client's true item counts and data size).
    """

    def __init__(self, module: FederatedModule, datamodule: FederatedDataModule) -> None:
        self.layout = parameter_layout(module)
        self.clients = list(module.held_clients)
        self.counts = {c: datamodule.training_item_counts(c) for c in self.clients}
        sizes = datamodule.client_sizes()
        self.windows = [int(sizes[c]) for c in self.clients]
        self.interactions = [int(self.counts[c].sum()) for c in self.clients]
        self.local_epochs = datamodule.local_epochs
        settings = datamodule.settings
        tiles = settings.window_stride == settings.history_length
        # Windows that tile every user's sequence size it; subsampled or overlapping ones do not.
        self.window_stride = (
            settings.window_stride if tiles and settings.max_train_examples is None else None
        )
        self.initial: list[dict[str, Any]] | None = None
        self.rounds: list[dict[str, Any]] = []
        self.reports: list[dict[str, Any]] = []

    def observe(self, round_index: int, report: TrainingReport) -> None:
        """Score one round's report (``RoundEngine.observers`` calls it before aggregation)."""
        if self.layout.has_items:
            if round_index == 0 and self.initial is None:
                # What a client starts from is what a deployed client sends when it connects.
                start = report.round_start
                self.initial = score_round(
                    self.layout, start, start, self.counts, self.clients, signals=("bias",)
                )
            scored = score_round(
                self.layout, report.round_start, report.parameters, self.counts, self.clients
            )
            self.rounds.append(
                {"round": round_index, "clients": scored, "summary": summarize_signals(scored)}
            )
        slots = torch.tensor(self.clients)
        reported = cast(list[float], report.examples[slots].tolist())
        leaks = example_count_leak(
            reported, self.local_epochs, self.window_stride, self.windows, self.interactions
        )
        self.reports.append(
            {
                "round": round_index,
                "clients": [
                    {"client": c, **leak} for c, leak in zip(self.clients, leaks, strict=True)
                ],
            }
        )

    def state_dict(self) -> dict[str, Any]:
        """What was observed so far (checkpointed, so a resumed run reports every round)."""
        return {"initial": self.initial, "rounds": self.rounds, "reports": self.reports}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`'s observations."""
        self.initial = state.get("initial")
        self.rounds = list(state.get("rounds", []))
        self.reports = list(state.get("reports", []))

    def section(self) -> dict[str, Any]:
        """The ``"parameters"`` and ``"reports"`` entries of the ``"privacy"`` section."""
        parameters: dict[str, Any] | None = None
        if self.layout.has_items:
            parameters = {
                "attack": PARAMETER_ATTACK,
                "signals": [
                    s
                    for s in SIGNALS
                    if any(s in c["signals"] for r in self.rounds for c in r["clients"])
                ],
                "initial": self.initial,
                "rounds": self.rounds,
            }
        return json_ready({"parameters": parameters, "reports": {"rounds": self.reports}})

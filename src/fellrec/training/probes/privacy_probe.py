"""PrivacyProbe: during and at the end of a run, play the honest-but-curious server.

A callback of its own, with ``model.privacy_probe`` (on by default):

- every round it scores what the server reads from the clients' reports (their exchanged item
  components: item sets and counts; their example counts: data sizes), with a
  :class:`~fellrec.training.probes.message_probe.MessageProbe` observing the round engine;
- after testing a split run, it runs the hidden-state attacks of
  :mod:`fellrec.training.probes.hidden_states` (the linear inversion against the public base
  model, and the server's copy of the client's front with the parameters the client sent) at
  ``k_front`` in {0, 1, 2, model.k_front}.

It hands the ``"privacy"`` section to the run's results
(:class:`~fellrec.training.records.results.RunSection`).
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn

from fellrec.models.split_support import num_blocks
from fellrec.training.batches.datamodule import federated_datamodule
from fellrec.training.host.federated_module import FederatedModule
from fellrec.training.probes.hidden_states import ATTACK, privacy_section
from fellrec.training.probes.message_probe import MessageProbe
from fellrec.training.rounds.loop import FederatedLoop


class PrivacyProbe(Callback):
    """Adds the ``"privacy"`` section to ``results.json``.

    Args:
        public_texts: Public histories (catalog orders) the attacker fits its inversion on.
        victims: Real training inputs whose tokens it tries to recover.
    """

    section_name = "privacy"

    def __init__(self, public_texts: int = 100, victims: int = 32) -> None:
        self.public_texts = public_texts
        self.victims = victims
        #: The observer of this fit's rounds (None before a fit or with the probe off).
        self.messages: MessageProbe | None = None
        #: A checkpoint's observations, until the observer that continues them is built.
        self._restored: dict[str, Any] | None = None

    def _observer(self, trainer: L.Trainer, module: FederatedModule) -> MessageProbe:
        """The observer of the run's rounds, holding a resumed run's earlier observations."""
        if self.messages is None:
            self.messages = MessageProbe(module, federated_datamodule(trainer))
            if self._restored is not None:
                self.messages.load_state_dict(self._restored)
                self._restored = None
        return self.messages

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Observe the round engine's reports (the loop built its engine at the fit's start)."""
        if not isinstance(pl_module, FederatedModule) or not pl_module.privacy_probe:
            return
        loops = [c for c in trainer.callbacks if isinstance(c, FederatedLoop)]  # type: ignore[attr-defined]
        if not loops or loops[0].engine is None or pl_module.adapters is None:
            return
        observer = self._observer(trainer, pl_module)
        if observer.observe not in loops[0].engine.observers:
            loops[0].engine.observers.append(observer.observe)

    def state_dict(self) -> dict[str, Any]:
        """The rounds observed so far (a resumed run's section then holds every round)."""
        if self.messages is not None:
            return {"messages": self.messages.state_dict()}
        return {"messages": self._restored} if self._restored is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Keep a checkpoint's observations for the observer of the resumed run."""
        if state_dict.get("messages") is not None:
            self.messages = None
            self._restored = dict(state_dict["messages"])

    def section(self, trainer: L.Trainer, module: L.LightningModule) -> dict[str, Any] | None:
        """The attacks' results (None when the probe is off or nothing was observed).

        A failing probe must not cost a finished run its results: the error is reported instead.
        """
        if not isinstance(module, FederatedModule) or not module.privacy_probe:
            return None
        if self.messages is None and self._restored is not None and module.adapters is not None:
            self._observer(trainer, module)  # a resumed run whose rounds were all done
        observed = self.messages.section() if self.messages is not None else {}
        hidden = self._hidden_states(trainer, module)
        if hidden is None and not observed:
            return None
        return {**(hidden or {}), **observed}

    def _hidden_states(self, trainer: L.Trainer, module: FederatedModule) -> dict[str, Any] | None:
        """The hidden-state attacks of a split run (None when not split)."""
        if not module.split or module.adapters is None:
            return None
        if module.sharded:
            # The probe runs in one process; sharded blocks run only in all of them at once.
            rank_zero_warn(
                "the privacy probe does not run on sharded blocks; `fellrec attack` runs it alone"
            )
            return {"attack": ATTACK, "error": "not run: the server blocks were sharded"}
        peft_model = module.adapters.model
        try:
            layers = num_blocks(peft_model)
            k_fronts = sorted({k for k in (0, 1, 2, module.k_front) if k <= layers - 1})
            return privacy_section(
                module,
                federated_datamodule(trainer),
                peft_model,
                module.tokenizer,
                k_fronts,
                public_texts=self.public_texts,
                victims=self.victims,
                seed=module.seed,
            )
        except (ValueError, RuntimeError) as error:
            rank_zero_warn(f"the privacy probe failed ({error}); `fellrec attack` runs it alone")
            return {"attack": ATTACK, "error": str(error)}

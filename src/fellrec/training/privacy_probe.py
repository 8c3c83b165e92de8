"""PrivacyProbe: at the end of a split run, play the honest-but-curious server.

A callback of its own: after testing, it runs the linear-inversion probe of
:mod:`fellrec.training.privacy` (public catalog texts and real training inputs, rendered the way
the configured recommender renders them) at ``k_front`` in {0, 1, 2, model.k_front} against the
public base model, and hands the ``"privacy"`` section to the run's results
(:class:`~fellrec.training.results.RunSection`). It does nothing for unsplit runs or with
``model.privacy_probe: false``.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn

from fellrec.models.split import num_blocks
from fellrec.training.datamodule import federated_datamodule
from fellrec.training.federated_module import FederatedModule
from fellrec.training.privacy import ATTACK, privacy_section


class PrivacyProbe(Callback):
    """Adds the ``"privacy"`` section to ``results.json`` of a split run.

    Args:
        public_texts: Public histories (catalog orders) the attacker fits its inversion on.
        victims: Real training inputs whose tokens it tries to recover.
    """

    section_name = "privacy"

    def __init__(self, public_texts: int = 100, victims: int = 32) -> None:
        self.public_texts = public_texts
        self.victims = victims

    def section(self, trainer: L.Trainer, module: L.LightningModule) -> dict[str, Any] | None:
        """The token recovery per ``k_front`` (None when not split or off).

        A failing probe must not cost a finished run its results: the error is reported instead.
        """
        if not isinstance(module, FederatedModule):
            return None
        if not (module.split and module.privacy_probe) or module.adapters is None:
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
            # The server knows the public base model, not the clients' adapters.
            with peft_model.disable_adapter():
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

"""What a run costs and leaks: the ``"resources"`` and ``"privacy"`` sections of results.json.

Resources are estimated from the backbone's config (:mod:`fellrec.models.resources`) and completed
with the traffic the transport really carried; privacy is the token-recovery probe of
:mod:`fellrec.training.privacy` against the public base model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lightning.pytorch.utilities import rank_zero_warn

from fellrec.federation.split_plan import plan_split
from fellrec.models.resources import resource_report
from fellrec.models.split import num_blocks
from fellrec.training.datamodule import federated_datamodule
from fellrec.training.privacy import ATTACK, privacy_section

if TYPE_CHECKING:
    from fellrec.training.federated_module import FederatedModule


def resource_summary(module: FederatedModule) -> dict[str, Any]:
    """What this configuration costs on the client and the server, estimated and measured.

    The estimate comes from the model's config (:func:`fellrec.models.resources.
    resource_report`, at the longest sequence a batch may have); ``measured`` is the traffic
    the transport really carried per training micro-batch (forward and backward) so far.
    """
    assert module.adapters is not None
    base = module.adapters.model.get_base_model()
    plan = plan_split(num_blocks(base), module.k_front, module.k_back) if module.split else None
    datamodule = federated_datamodule(module.trainer)
    seq_len = module.tokens_per_example(datamodule.settings.history_length)
    batch_size = max(1, datamodule.batch_size // module.trainer.world_size)
    weight = next(base.parameters())
    try:
        report = resource_report(
            base.config,
            plan,
            module.lora,
            batch_size=batch_size,
            seq_len=seq_len,
            num_clients=module.num_clients,
            base_dtype_bytes=1 if module.load_in_8bit else min(4, weight.element_size()),
            client_module_parameters=module.adapters.num_module_parameters,
            trainable_inputs=module.recommender_kind == "sequential" and module.items.ids,
        )
    except ValueError as error:
        # An architecture the accounting does not know still trains (unsplit); say why the
        # estimate is missing instead of failing the run.
        report = {"split": module.split, "unavailable": str(error)}
    report["assumed"] = {"batch_size": batch_size, "seq_len": seq_len}
    steps = module.train_traffic["steps"]
    # Per process and per micro-batch: under DDP every process sends its own share of a batch.
    report["measured"] = {
        "training_microbatches": steps,
        "training_bytes": module.train_traffic["bytes"],
        "bytes_per_step": module.train_traffic["bytes"] / steps if steps else 0.0,
    }
    return report


def privacy_summary(module: FederatedModule) -> dict[str, Any] | None:
    """The token-recovery probe at a few split points (``None`` when not split or off).

    A failing probe must not cost a finished run its results: the error is reported instead.
    """
    if not (module.split and module.privacy_probe) or module.adapters is None:
        return None
    peft_model = module.adapters.model
    try:
        layers = num_blocks(peft_model)
        k_fronts = sorted({k for k in (0, 1, 2, module.k_front) if k <= layers - 1})
        # The server knows the public base model, not the clients' adapters.
        with peft_model.disable_adapter():
            return privacy_section(
                module,
                federated_datamodule(module.trainer),
                peft_model,
                module.tokenizer,
                k_fronts,
                public_texts=100,
                victims=32,
                seed=module.seed,
            )
    except (ValueError, RuntimeError) as error:
        rank_zero_warn(f"the privacy probe failed ({error}); `fellrec attack` runs it alone")
        return {"attack": ATTACK, "error": str(error)}

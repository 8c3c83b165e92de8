"""What a run costs: the ``"resources"`` section of results.json, from a small facts object.

A host reports what the estimate needs as :class:`ResourceFacts` (the backbone's config, the split
plan, LoRA, batch shape, clients, traffic: ``FederatedModule.resource_facts()``);
:func:`resource_summary_of` is a pure function of those facts (:mod:`fellrec.models.resources`
estimates, the transport's counters measure).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fellrec.models.adapters import LoRASettings
from fellrec.models.resources import resource_report
from fellrec.models.split_plan import SplitPlan


@dataclass(frozen=True)
class ResourceFacts:
    """Everything the resource estimate of a run depends on.

    Attributes:
        config: The backbone's Hugging Face config.
        plan: The split plan (None: unsplit).
        lora: LoRA settings.
        batch_size: Examples per micro-batch on one process.
        seq_len: Tokens per example at most.
        num_clients: N.
        base_dtype_bytes: Bytes per frozen base weight.
        client_module_parameters: Trainable parameters of a client outside its adapter.
        trainable_inputs: Whether the inputs are trainable embeddings (sequential recommender
            with item ids), so gradients flow into the front.
        traffic_bytes: Bytes the transport carried for training micro-batches so far.
        traffic_steps: Training micro-batches those bytes were carried for.
        sharding: Under ``--trainer.strategy model_parallel``: the sharded blocks, processes and
            their parameter bytes in this process and whole (measured); None otherwise.
    """

    config: Any
    plan: SplitPlan | None
    lora: LoRASettings
    batch_size: int
    seq_len: int
    num_clients: int
    base_dtype_bytes: int
    client_module_parameters: int
    trainable_inputs: bool
    traffic_bytes: int
    traffic_steps: int
    sharding: dict[str, Any] | None = None


def resource_summary_of(facts: ResourceFacts) -> dict[str, Any]:
    """What a configuration costs on the client and the server, estimated and measured.

    The estimate comes from the model's config (:func:`fellrec.models.resources.
    resource_report`, at the longest sequence a batch may have); ``measured`` is the traffic the
    transport really carried per training micro-batch (forward and backward).
    """
    try:
        report = resource_report(
            facts.config,
            facts.plan,
            facts.lora,
            batch_size=facts.batch_size,
            seq_len=facts.seq_len,
            num_clients=facts.num_clients,
            base_dtype_bytes=facts.base_dtype_bytes,
            client_module_parameters=facts.client_module_parameters,
            trainable_inputs=facts.trainable_inputs,
        )
    except ValueError as error:
        # An architecture the accounting does not know still trains (unsplit); say why the
        # estimate is missing instead of failing the run.
        report = {"split": facts.plan is not None, "unavailable": str(error)}
    report["assumed"] = {"batch_size": facts.batch_size, "seq_len": facts.seq_len}
    steps = facts.traffic_steps
    # Per process and per micro-batch: under DDP every process sends its own share of a batch.
    report["measured"] = {
        "training_microbatches": steps,
        "training_bytes": facts.traffic_bytes,
        "bytes_per_step": facts.traffic_bytes / steps if steps else 0.0,
    }
    if facts.sharding is not None:
        report["measured"]["sharding"] = dict(facts.sharding)
    return report

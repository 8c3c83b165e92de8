"""Sharding the server's middle blocks under Lightning's ``ModelParallelStrategy``.

``--trainer.strategy ModelParallelStrategy`` runs one process per device, each with the whole
federation (as under DDP); :func:`shard_server_blocks` then splits the parameters of the server's
middle blocks (frozen base and every client's LoRA on them) across all the processes with FSDP2
(:mod:`fellrec.models.sharding`). fellrec shards over one mesh of every process: the strategy's
``data_parallel_size`` / ``tensor_parallel_size`` layout does not matter (no tensor parallelism).

``--trainer.strategy model_parallel`` names it on the command line (registered here with
Lightning's strategy registry): one checkpoint file, as under DDP, since fellrec's checkpoints hold
only the clients' parameters.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.strategies import ModelParallelStrategy, StrategyRegistry
from torch import nn
from torch.distributed.device_mesh import init_device_mesh

from fellrec.models.adapters import ClientAdapters
from fellrec.models.resource_tables import human_bytes
from fellrec.models.sharding import local_parameter_bytes, shard_blocks, sharded_blocks
from fellrec.models.split_plan import plan_split
from fellrec.models.split_support import num_blocks

log = logging.getLogger(__name__)


class ShardedServerStrategy(ModelParallelStrategy):
    """``ModelParallelStrategy`` as fellrec runs it: ``--trainer.strategy model_parallel``.

    Checkpoints are one file (``save_distributed_checkpoint=False``): they hold only the clients'
    parameters, gathered whole, as under DDP. Resuming loads every client's optimizer: torch's
    loader first initialises each optimizer's state by a zero step over the parameters that
    require grad, and only the active client's do; so all of them do while it loads.
    """

    def __init__(
        self,
        data_parallel_size: int | str = "auto",
        tensor_parallel_size: int | str = "auto",
        save_distributed_checkpoint: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            data_parallel_size=data_parallel_size,  # type: ignore[arg-type]
            tensor_parallel_size=tensor_parallel_size,  # type: ignore[arg-type]
            save_distributed_checkpoint=save_distributed_checkpoint,
            **kwargs,
        )

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> Any:
        """Check the checkpoint's client tensors, then load it (every client trainable meanwhile).

        Lightning's loader takes the state dict out of the checkpoint and loads it leniently
        (fellrec checkpoints hold client tensors only), so the module's check runs here first.
        """
        module = self.lightning_module
        checker = getattr(module, "check_checkpoint_keys", None)
        if checker is not None and Path(checkpoint_path).is_file():
            state = torch.load(checkpoint_path, mmap=True, map_location="cpu", weights_only=False)
            checker(state["state_dict"].keys())
        adapters = getattr(module, "adapters", None)
        context = adapters.all_trainable() if adapters is not None else nullcontext()
        with context:
            return super().load_checkpoint(checkpoint_path, weights_only=weights_only)


#: ``--trainer.strategy`` name of :class:`ShardedServerStrategy`.
SHARDED_STRATEGY = "model_parallel"
if SHARDED_STRATEGY not in StrategyRegistry:
    StrategyRegistry.register(
        SHARDED_STRATEGY,
        ShardedServerStrategy,
        description="FSDP2: the server's middle blocks sharded across the processes (fellrec)",
    )

#: Trainer precisions whose sharded blocks gather and compute in bfloat16.
BF16_PRECISIONS = ("bf16-mixed", "bf16-true", "bf16")


@dataclass(frozen=True)
class ShardingRequest:
    """What the module asks to shard, and on what.

    Attributes:
        split: ``model.split_execution`` (the middle blocks are the server's only when split).
        k_front: ``model.k_front``.
        k_back: ``model.k_back``.
        client_blocks: ``model.shard_client_blocks``: shard the client's front and back blocks
            too (embeddings, norm and head stay replicated).
        load_in_8bit: ``model.load_in_8bit``.
        precision: The trainer's precision (``bf16-mixed``: gather in bfloat16).
        world_size: Processes of the run.
        device_type: ``cpu`` or ``cuda``.
    """

    split: bool
    k_front: int
    k_back: int
    client_blocks: bool
    load_in_8bit: bool
    precision: str
    world_size: int
    device_type: str


def shard_server_blocks(
    adapters: ClientAdapters, request: ShardingRequest
) -> tuple[list[nn.Module], dict[str, Any]]:
    """Shard the blocks ``request`` names across every process.

    Returns:
        The sharded blocks, and what was measured: ``blocks``, ``processes``,
        ``parameter_bytes_whole`` (before), ``parameter_bytes_per_process`` (this one's part)
        and ``gather_dtype`` (what the blocks gather and compute in).

    The adapters then find their (replaced) parameter objects again; optimizers must be built
    afterwards (Lightning builds them after ``configure_model``).

    Raises:
        ValueError: For a run that cannot shard, naming the setting to change.
    """
    if not request.split:
        raise ValueError(
            "--trainer.strategy model_parallel (ModelParallelStrategy) shards the server's "
            "middle blocks, which exist only under split execution: set "
            "model.split_execution: true (or use --trainer.strategy ddp to replicate the model)"
        )
    if request.load_in_8bit:
        raise ValueError(
            "model.load_in_8bit: bitsandbytes' 8-bit weights cannot be sharded by FSDP; set "
            "model.load_in_8bit: false, or use --trainer.strategy ddp"
        )
    model = adapters.model
    plan = plan_split(num_blocks(model), request.k_front, request.k_back)
    blocks = sharded_blocks(model, plan, request.client_blocks)
    before = local_parameter_bytes(blocks)
    mesh = init_device_mesh(request.device_type, (request.world_size,), mesh_dim_names=("shard",))
    param_dtype = torch.bfloat16 if request.precision in BF16_PRECISIONS else None
    shard_blocks(blocks, mesh, param_dtype)
    adapters.collect_parameters()
    here = local_parameter_bytes(blocks)
    measured: dict[str, Any] = {
        "blocks": len(blocks),
        "processes": request.world_size,
        "parameter_bytes_whole": before,
        "parameter_bytes_per_process": here,
        "gather_dtype": str(param_dtype or next(blocks[0].parameters()).dtype).split(".")[-1],
    }
    log.info(
        "sharded %d blocks over %d processes: %s of their parameters in process %d (of %s)",
        len(blocks),
        request.world_size,
        human_bytes(here),
        torch.distributed.get_rank(),
        human_bytes(before),
    )
    return blocks, measured

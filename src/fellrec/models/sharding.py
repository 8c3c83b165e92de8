"""The server's middle blocks sharded across processes (FSDP2 ``fully_shard``), and sharded tensors.

Under Lightning's ``ModelParallelStrategy`` every process holds the whole federation (all clients'
adapters, one frozen base) and trains on its own rows of each global batch, as under DDP. Sharding
splits the parameters of the server's middle blocks (the frozen base weights and every client's
LoRA on them) row-wise across the processes: each holds ``1/world`` of them at rest and gathers a
block's weights only while it runs (``reshard_after_forward``), so the biggest part of the model
costs each device a fraction of its size. The client's embeddings, front and back blocks and head
stay replicated unless ``model.shard_client_blocks`` shards the front and back blocks too.

Each sharded block is its own FSDP root: the split model calls its blocks one by one (through the
transport), never a common parent's forward, and an explicit ``reshard_after_forward=True`` keeps
roots from holding their gathered weights until backward.

What sharding asks of callers (:class:`~fellrec.training.host.federated_module.FederatedModule` does
it): every process must run the sharded blocks equally often, or the collectives hang; the
gradients of sharded parameters arrive already averaged over the processes (FSDP's reduce-scatter,
``AVG``), the others still need averaging; reading or writing a sharded parameter whole
(:func:`full_tensor`, :func:`copy_into`) is done on every process at once.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor

from fellrec.models.split_plan import SplitPlan
from fellrec.models.split_support import model_parts


def is_sharded(tensor: Tensor) -> bool:
    """Whether ``tensor`` is a sharded (``DTensor``) parameter or gradient."""
    return isinstance(tensor, DTensor)


def full_tensor(tensor: Tensor) -> Tensor:
    """The whole value of a possibly sharded tensor (a collective for a sharded one)."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def local_part(value: Tensor, like: Tensor) -> Tensor:
    """The rows of the whole value ``value`` that this process holds of the sharded ``like``.

    No communication: every process is expected to hold the same ``value``.
    """
    assert isinstance(like, DTensor)
    value = value.to(dtype=like.dtype, device=like.to_local().device)
    part = distribute_tensor(value, like.device_mesh, like.placements, src_data_rank=None)
    return part.to_local()


@torch.no_grad()
def copy_into(param: Tensor, value: Tensor) -> None:
    """Overwrite ``param`` (sharded or not) with the whole value ``value`` (its shape, any dtype).

    A sharded parameter takes its own rows of ``value`` (:func:`local_part`).
    """
    if isinstance(param, DTensor):
        param.to_local().copy_(local_part(value, param))
    else:
        param.copy_(value)


def sharded_blocks(model: nn.Module, plan: SplitPlan, client_blocks: bool) -> list[nn.Module]:
    """The blocks to shard: the server's middle (and the client's front and back if asked)."""
    blocks = model_parts(model)["blocks"]
    assert isinstance(blocks, nn.ModuleList)
    indices: Iterable[int] = plan.middle
    if client_blocks:
        indices = [*plan.front, *plan.middle, *plan.back]
    return [blocks[i] for i in indices]


def shard_blocks(
    blocks: list[nn.Module], mesh: DeviceMesh, param_dtype: torch.dtype | None = None
) -> None:
    """Shard each block's parameters across ``mesh`` (in place; each block its own FSDP root).

    Args:
        blocks: Transformer blocks of one model (frozen base weights and LoRA layers).
        mesh: A 1-D mesh over the processes that hold the federation.
        param_dtype: Gather and compute the blocks' weights in this dtype (bf16 mixed precision);
            gradients are reduced in float32. ``None`` keeps the stored dtype.
    """
    policy = MixedPrecisionPolicy(
        param_dtype=param_dtype, reduce_dtype=torch.float32 if param_dtype else None
    )
    for block in blocks:
        fully_shard(block, mesh=mesh, reshard_after_forward=True, mp_policy=policy)
    with torch.inference_mode(False):
        for block in blocks:
            # FSDP allocates a block's gathered weights at its first gather and reuses them: made
            # under inference mode (evaluation, catalog encoding) they could never be written
            # again in training. Gather once now, outside it.
            block.unshard()  # type: ignore[operator]
            block.reshard()  # type: ignore[operator]


def local_parameter_bytes(modules: Iterable[nn.Module]) -> int:
    """Bytes of the parameters these modules hold in this process (a shard's part when sharded)."""
    total = 0
    for module in modules:
        for param in module.parameters():
            local = param.to_local() if isinstance(param, DTensor) else param
            total += local.numel() * local.element_size()
    return total

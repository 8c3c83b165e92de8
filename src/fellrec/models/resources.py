"""What split execution buys and costs, from a Hugging Face config alone (no weights loaded).

:func:`resource_report` accounts one configuration (model config, LoRA settings, split plan or
unsplit, micro-batch ``B``, sequence length ``T``, ``N`` clients, dtype of the frozen base); its
dictionary is stored under ``"resources"`` in ``results.json``. Keys (all plain JSON values):

- ``model_type``, ``family`` (``decoder``/``encoder``), ``num_layers``, ``hidden_size``,
  ``vocab_size``, ``total_parameters`` (the base model), ``split``, ``k_front``, ``k_back``,
  ``batch_size``, ``seq_len``, ``num_clients``, ``base_dtype_bytes``, ``activation_dtype_bytes``,
  ``lora_r``, ``lora_target_modules``, ``lora_per_block`` (adapter parameters of one block).
- ``client`` and ``server``, each: ``blocks`` (transformer blocks held), ``frozen_parameters``,
  ``trainable_parameters`` (client: LoRA of its front and back blocks and of any adapted
  embedding/head; server: ``N`` x the LoRA of the middle blocks, since it holds every client's
  middle adapters), ``weight_bytes``, ``optimizer_bytes``, ``activation_bytes``, ``memory_bytes``
  (their sum), ``forward_flops``, ``backward_flops``, ``flops_per_step`` (their sum).
  Unsplit, the client holds everything and the server's entries are 0.
- ``transport``: bytes of one client's micro-batch (one training step) crossing the wire:
  ``to_server_forward``, ``to_client_forward``, ``to_server_backward``, ``to_client_backward``,
  ``bytes_per_step`` (their sum, 0 unsplit); and ``adapter_bytes_per_round``, the client's
  adapter upload per round (fp32; the middle adapters never leave the server).
- ``table``: rows ``{"quantity", "client", "server"}`` with human-readable values.

Estimates (upper bounds of a plain PyTorch step; no activation checkpointing):

- Memory = frozen weights x dtype bytes (8-bit: the blocks' linear weights take 1 byte, the
  embeddings, norms, biases and head stay 16-bit as LLM.int8 keeps them) + trainable x 16 bytes
  (fp32 weight, gradient and two AdamW moments) + activations. Activations per block follow
  Korthikanti et al. 2022 (arXiv 2205.05198, no recomputation): ``s*b*h*(34 + 5*a*s/h)`` bytes in
  16-bit, scaled by ``activation_dtype_bytes / 2``; the client of a decoder adds its fp32 logits
  ``B*T*V*4``. The server's activations are those of one micro-batch at a time.
- FLOPs per step, ``n = B*T`` tokens, per block with linear weights ``W``, LoRA parameters ``P``
  and attention width ``A = heads * head_dim``: forward ``2*W*n + 4*B*T^2*A + 2*P*n``; backward with
  a frozen base ``2*W*n`` (activation gradients only) ``+ 8*B*T^2*A`` (both operands of QK^T and
  AV) ``+ 4*P*n`` (LoRA input and weight gradients). A decoder's LM head adds ``2*H*V*n`` forward
  and as much backward (tied or not); embedding look-ups, norms and an encoder's pooling/scoring
  are left out. Causal masking is not discounted.
- Transport, as :mod:`fellrec.models.transport` sends it: forward ``h_front`` ``B*T*H`` x
  activation bytes + the mask and position ids (int64, ``B*T*8`` each) to the server and
  ``h_middle`` back; backward ``dL/dh_middle`` to the server and ``dL/dh_front`` back, the latter
  only when the client front has trainable parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from fellrec.models.parameter_counts import (
    LoRAShape,
    ParameterCounts,
    count_parameters,
    lora_parameters,
    lora_targets,
    targeted,
)
from fellrec.models.resource_tables import report_rows

#: Bytes of the hidden states kept for the backward pass / sent on the wire, per base dtype bytes:
#: 8-bit and 16-bit bases compute in 16 bits.
ACTIVATION_BYTES = {4: 4, 2: 2, 1: 2}


class _Plan(Protocol):
    @property
    def num_layers(self) -> int: ...
    @property
    def k_front(self) -> int: ...
    @property
    def k_back(self) -> int: ...


def block_activation_bytes(
    batch_size: int, seq_len: int, hidden: int, heads: int, activation_bytes: int
) -> int:
    """Activations one block keeps for backward (Korthikanti et al. 2022, no recomputation).

    ``s*b*h*(34 + 5*a*s/h)`` bytes in 16-bit, i.e. ``34*s*b*h + 5*a*s^2*b``, scaled by
    ``activation_bytes / 2``.
    """
    tokens = batch_size * seq_len
    sixteen_bit = 34 * tokens * hidden + 5 * heads * seq_len * seq_len * batch_size
    return sixteen_bit * activation_bytes // 2


@dataclass(frozen=True)
class _Step:
    """One training micro-batch of a model: what every side's numbers are computed from."""

    counts: ParameterCounts
    lora_block: int
    tokens: int
    attention_flops: int
    base_dtype_bytes: int

    def side(
        self,
        held: Sequence[int],
        frozen_extra: int,
        trainable: int,
        activations: int,
        head: bool,
    ) -> dict[str, int]:
        """Parameters, memory and FLOPs of a side holding the blocks ``held`` plus extras."""
        counts, tokens = self.counts, self.tokens
        blocks = len(held)
        frozen = counts.blocks_parameters(held) + frozen_extra
        weight_bytes = frozen * self.base_dtype_bytes
        if self.base_dtype_bytes == 1:  # LLM.int8: block linears in 8 bits, the rest 16-bit
            linear = blocks * counts.block_linear_weights
            weight_bytes = linear + 2 * (frozen - linear)
        linear_flops = 2 * blocks * counts.block_linear_weights * tokens
        lora_flops = 2 * blocks * self.lora_block * tokens
        head_flops = 2 * counts.hidden_size * counts.vocab_size * tokens if head else 0
        attention = blocks * self.attention_flops
        forward = linear_flops + attention + lora_flops + head_flops
        backward = linear_flops + 2 * attention + 2 * lora_flops + head_flops
        values = {
            "blocks": blocks,
            "frozen_parameters": frozen,
            "trainable_parameters": trainable,
            "weight_bytes": weight_bytes,
            "optimizer_bytes": 16 * trainable,
            "activation_bytes": activations,
        }
        memory = weight_bytes + 16 * trainable + activations
        flops = {"forward_flops": forward, "backward_flops": backward}
        return {**values, "memory_bytes": memory, **flops, "flops_per_step": forward + backward}


def _transport(
    plan: _Plan | None, hidden_bytes: int, tokens: int, front_trainable: bool, server: bool
) -> dict[str, int]:
    """Bytes per step in each direction and phase, as the transport sends them."""
    wire = dict.fromkeys(
        ("to_server_forward", "to_client_forward", "to_server_backward", "to_client_backward"), 0
    )
    if plan is not None:
        wire["to_server_forward"] = hidden_bytes + 2 * 8 * tokens  # + int64 mask, position ids
        wire["to_client_forward"] = hidden_bytes
        wire["to_server_backward"] = hidden_bytes if front_trainable or server else 0
        wire["to_client_backward"] = hidden_bytes if front_trainable else 0
    return wire


def resource_report(
    config: Any,
    plan: _Plan | None,
    lora: LoRAShape | None,
    batch_size: int,
    seq_len: int,
    num_clients: int,
    base_dtype_bytes: int = 4,
    activation_dtype_bytes: int | None = None,
    client_module_parameters: int = 0,
    trainable_inputs: bool = False,
) -> dict[str, Any]:
    """Parameters, memory, FLOPs and traffic of one client and of the server (module docstring).

    Args:
        config: The backbone's transformers config.
        plan: The split plan (``k_front``, ``k_back``), or ``None`` for the unsplit model (the
            client holds and runs everything).
        lora: LoRA settings (``r``, ``target_modules``), or ``None`` for no adapters.
        batch_size: Micro-batch ``B`` (examples per forward/backward).
        seq_len: Sequence length ``T`` (the longest a batch can be padded to).
        num_clients: ``N``; the server holds every client's middle adapters.
        base_dtype_bytes: Bytes per frozen base weight: 4 (fp32), 2 (bf16/fp16), 1 (8-bit).
        activation_dtype_bytes: Bytes per activation / transported hidden value; default 4 for an
            fp32 base and 2 otherwise.
        client_module_parameters: Trainable client parameters outside the backbone (per-item
            components: ID embeddings, biases), held, trained and uploaded like the adapter.
        trainable_inputs: The input vectors are trainable (item ID embeddings enter with the
            embeddings), so the gradient returns to the client front even without front LoRA.

    Returns:
        A dict of plain JSON values; keys in the module docstring.

    Raises:
        ValueError: For an unsupported model type, unknown LoRA targets, a plan for another number
            of blocks, or a non-positive size.
    """
    sizes = {"batch_size": batch_size, "seq_len": seq_len, "num_clients": num_clients}
    for name, value in sizes.items():
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if base_dtype_bytes not in ACTIVATION_BYTES:
        raise ValueError(f"base_dtype_bytes must be one of {sorted(ACTIVATION_BYTES)}")
    act = activation_dtype_bytes or ACTIVATION_BYTES[base_dtype_bytes]
    counts = count_parameters(config)
    layers, hidden = counts.num_layers, counts.hidden_size
    if plan is not None and plan.num_layers != layers:
        raise ValueError(f"split plan for {plan.num_layers} blocks, the model has {layers}")
    lora_block, lora_outer = lora_parameters(counts, lora)
    k_front, k_back = (plan.k_front, plan.k_back) if plan is not None else (layers, 0)
    on_client, on_server = k_front + k_back, layers - k_front - k_back
    tokens = batch_size * seq_len
    attention = 4 * batch_size * seq_len * seq_len * counts.attention_width
    step = _Step(counts, lora_block, tokens, attention, base_dtype_bytes)
    per_block = block_activation_bytes(batch_size, seq_len, hidden, counts.num_heads, act)
    decoder = counts.family == "decoder"
    logits = 4 * tokens * counts.vocab_size if decoder else 0
    outside = counts.embeddings + counts.final_norm + counts.head + counts.pooler
    trainable = on_client * lora_block + lora_outer + client_module_parameters
    client_blocks = [*range(k_front), *range(layers - k_back, layers)]
    server_blocks = list(range(k_front, layers - k_back))
    client = step.side(client_blocks, outside, trainable, on_client * per_block + logits, decoder)
    server_lora = num_clients * on_server * lora_block
    server = step.side(server_blocks, 0, server_lora, on_server * per_block, False)
    targets = lora_targets(counts, lora)
    embedding_lora = any(m.embedding and targeted(m, targets) for m in counts.outer_modules)
    front_trainable = k_front * lora_block > 0 or embedding_lora or trainable_inputs
    wire = _transport(plan, tokens * hidden * act, tokens, front_trainable, server_lora > 0)
    report: dict[str, Any] = {
        "model_type": counts.model_type,
        "family": counts.family,
        "num_layers": layers,
        "hidden_size": hidden,
        "vocab_size": counts.vocab_size,
        "total_parameters": counts.total,
        "split": plan is not None,
        "k_front": plan.k_front if plan is not None else None,
        "k_back": plan.k_back if plan is not None else None,
        **sizes,
        "base_dtype_bytes": base_dtype_bytes,
        "activation_dtype_bytes": act,
        "lora_r": lora.r if lora is not None else 0,
        "lora_target_modules": targets,
        "lora_per_block": lora_block,
        "client_module_parameters": client_module_parameters,
        "client": client,
        "server": server,
        "transport": {
            **wire,
            "bytes_per_step": sum(wire.values()),
            "adapter_bytes_per_round": 4 * trainable,
        },
    }
    report["table"] = report_rows(report)
    return report


#: Columns of a cost-table row taken from one side of a report: row key -> (side, report key).
_COST_COLUMNS = {
    f"{side}_{name}": (side, key)
    for side in ("client", "server")
    for name, key in (
        ("blocks", "blocks"),
        ("parameters", "frozen_parameters"),
        ("trainable", "trainable_parameters"),
        ("memory_bytes", "memory_bytes"),
        ("flops", "flops_per_step"),
    )
}


def cost_table(
    config: Any,
    k_fronts: Sequence[int],
    k_back: int,
    lora: LoRAShape | None,
    batch_size: int,
    seq_len: int,
    num_clients: int,
    base_dtype_bytes: int = 4,
    activation_dtype_bytes: int | None = None,
    include_unsplit: bool = True,
    client_module_parameters: int = 0,
    trainable_inputs: bool = False,
) -> list[dict[str, Any]]:
    """One row per ``k_front`` (the unsplit model first): what each side holds and runs.

    Args:
        config: The backbone's transformers config.
        k_fronts: Client front blocks to cost; each needs ``k_front + k_back <= L - 1``.
        k_back: Client back blocks.
        lora: LoRA settings, or ``None``.
        batch_size: Micro-batch ``B``.
        seq_len: Sequence length ``T``.
        num_clients: ``N``.
        base_dtype_bytes: Bytes per frozen base weight (4, 2 or 1).
        activation_dtype_bytes: Bytes per activation (default from the base dtype).
        include_unsplit: Start with the unsplit model (``split`` false, ``k_front`` ``None``).
        client_module_parameters: Trainable client parameters outside the backbone.
        trainable_inputs: The input vectors are trainable (see :func:`resource_report`).

    Returns:
        Rows with ``k_front``, ``k_back``, ``split``, ``{client,server}_blocks``,
        ``{client,server}_parameters`` (frozen), ``{client,server}_trainable``,
        ``{client,server}_memory_bytes``, ``{client,server}_flops`` (per step),
        ``transport_bytes`` (per step) and ``client_flop_share``.

    Raises:
        ValueError: For a ``k_front`` the model cannot be split at (naming ``model.k_front``).
    """
    from fellrec.models.split_plan import plan_split  # pure, no torch

    layers = count_parameters(config).num_layers
    plans: list[Any] = [None] if include_unsplit else []
    plans += [plan_split(layers, k, k_back) for k in k_fronts]
    settings = (lora, batch_size, seq_len, num_clients, base_dtype_bytes, activation_dtype_bytes)
    rows = []
    for plan in plans:
        report = resource_report(
            config,
            plan,
            *settings,
            client_module_parameters=client_module_parameters,
            trainable_inputs=trainable_inputs,
        )
        row = {key: report[key] for key in ("k_front", "k_back", "split")}
        row.update({col: report[side][key] for col, (side, key) in _COST_COLUMNS.items()})
        row["transport_bytes"] = report["transport"]["bytes_per_step"]
        total = row["client_flops"] + row["server_flops"]
        row["client_flop_share"] = row["client_flops"] / total if total else 0.0
        rows.append(row)
    return rows

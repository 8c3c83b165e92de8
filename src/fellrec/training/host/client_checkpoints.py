"""What a fellrec checkpoint holds: the clients' tensors only (the frozen base is rebuilt)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def is_client_key(key: str) -> bool:
    """Whether a state-dict key holds a client parameter (adapter or item component)."""
    return "lora_" in key or key.startswith("recommender.items.")


def client_state(state: Mapping[str, Any]) -> dict[str, Any]:
    """The client tensors of a module's state dict (what a checkpoint keeps)."""
    return {key: value for key, value in state.items() if is_client_key(key)}


def check_client_keys(expected: Iterable[str], keys: Iterable[str]) -> None:
    """Refuse a checkpoint whose state-dict ``keys`` lack one of the host's client tensors.

    Raises:
        ValueError: Naming the settings that decide which tensors exist.
    """
    missing = {key for key in expected if is_client_key(key)} - set(keys)
    if missing:
        raise ValueError(
            f"the checkpoint lacks {len(missing)} client tensors (e.g. {sorted(missing)[0]}); "
            "was it written with another data.num_clients, model.backbone, model.lora, "
            "model.recommender or model.items?"
        )

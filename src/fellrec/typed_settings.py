"""The model settings typed on a command line, kept over a checkpoint's saved hyperparameters.

Lightning's CLI merges a checkpoint file's saved hyperparameters (``--ckpt_path <file>``) over the
whole parsed ``model`` section, so a ``--model.*`` flag typed beside it was silently dropped.
:class:`fellrec.lightning_cli.FellrecCLI` finds the typed settings (:func:`typed_model_leaves`)
and puts them back after the merge (:func:`restore_typed_settings`).
"""

from __future__ import annotations

from copy import deepcopy
from typing import Any

import yaml
from jsonargparse import Namespace


def typed_model_leaves(args: list[str]) -> list[str]:
    """The ``model.*`` settings a command line sets, down to the leaves of a JSON/YAML value.

    Example:
        >>> typed_model_leaves(["test", "--model.lr=0.1", "--model.items", '{"ids": false}'])
        ['model.lr', 'model.items.ids']
    """
    leaves: list[str] = []
    for position, arg in enumerate(args):
        if not arg.startswith("--model."):
            continue
        key, has_value, value = arg[2:].partition("=")
        key = key.removesuffix("+")  # jsonargparse's append syntax: the whole list
        if not has_value:
            value = args[position + 1] if position + 1 < len(args) else ""
        try:
            parsed = yaml.safe_load(value)  # JSON and YAML flow or block mappings alike
        except yaml.YAMLError:
            parsed = None
        below = _dict_leaves(parsed)
        leaves += [f"{key}.{leaf}" for leaf in below] if below else [key]
    return leaves


def _dict_leaves(value: Any) -> list[str]:
    if not isinstance(value, dict):
        return []
    leaves: list[str] = []
    for name, inner in value.items():
        below = _dict_leaves(inner)
        leaves += [f"{name}.{leaf}" for leaf in below] if below else [str(name)]
    return leaves


def restore_typed_settings(
    typed: Namespace, merged: Namespace, leaves: list[str]
) -> list[tuple[str, Any, Any]]:
    """Put the typed ``leaves`` of ``typed`` (the parsed command line) back into ``merged``.

    Only the leaves themselves: a ``--model.items '{"cold_start": "text_ridge"}'`` restores
    ``model.items.cold_start`` and keeps the checkpoint's other ``items`` settings. Where the
    merge left no section above a leaf (the checkpoint's ``dp_sgd: null`` under a typed
    ``--model.dp_sgd.noise_multiplier``), the typed config's whole section comes back, as it does
    for a typed ``class_path`` (another class's arguments differ). A leaf that is no key is looked
    up as ``init_args`` (``--model.strategy.mu``), else its longest prefix that is one (a string
    setting typed as ``'{title}'`` reads as a mapping).

    Args:
        typed: The config as parsed, before the checkpoint's hyperparameters.
        merged: The config after them, changed in place.
        leaves: Dotted keys (:func:`typed_model_leaves`).

    Returns:
        ``(key, checkpoint's value, restored value)`` for every leaf that changed back.
    """
    restored: list[tuple[str, Any, Any]] = []
    for leaf in leaves:
        key = _namespace_key(typed, leaf)
        if key is None:
            continue
        if key.endswith(".class_path"):
            key = key.removesuffix(".class_path")
        value = typed.get(key)
        parts = key.split(".")
        for depth in range(1, len(parts)):
            section = ".".join(parts[:depth])
            if not isinstance(merged.get(section), Namespace):
                was = merged.get(section)
                merged[section] = deepcopy(typed.get(section))
                restored.append((section, was, merged[section]))
                break
        else:
            was = merged.get(key)
            if was != value:
                merged[key] = deepcopy(value)
                restored.append((key, was, value))
    return restored


def _namespace_key(config: Namespace, leaf: str) -> str | None:
    if leaf in config:
        return leaf
    head, _, name = leaf.rpartition(".")
    alias = f"{head}.init_args.{name}"
    if head and alias in config:
        return alias
    while head and head not in config:
        head = head.rpartition(".")[0]
    return head or None

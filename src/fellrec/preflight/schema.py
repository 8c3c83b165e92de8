"""The keys and value kinds of fellrec's config sections, readable without importing Lightning.

LightningCLI learns the config schema by importing Lightning, transformers and fellrec's classes
(~6-9 s on 2 cores) before it can say that ``model.lrr`` is not a key. The fast checks
(:mod:`fellrec.preflight`) read this snapshot of that schema instead: ``schema.json`` next
to this module, written by ``python -m fellrec.preflight.schema_builder`` from the real parser and
kept equal to it by ``tests/test_preflight.py``.

It covers fellrec's own sections (:data:`SECTIONS`: ``model``, ``data``, ``loop``), which are the
same for every installed Lightning; ``trainer``, ``checkpoint`` and the subcommand's own arguments
change with the Lightning version and are left to the real parser. For every key: the kinds of
value it takes (``int``, ``float``, ``bool``, ``str``, ``literal``, ``any``), whether ``null`` is
allowed, for ``Literal`` types the choices, and its default where it is a plain value. Keys that
take a class (``loop.strategy``) or a free mapping (``data.dataset.options``) are *open*: what
lies below them is checked by the real parser only.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import pathlib
import types
import typing
from functools import cache
from pathlib import Path
from typing import Any

SCHEMA_FILE = Path(__file__).with_name("schema.json")
#: The config sections recorded (fellrec's classes; the others are Lightning's).
SECTIONS = ("model", "data", "loop")


@cache
def load_schema() -> dict[str, Any]:
    """The recorded schema.

    ``{"keys": {key: spec}, "open": [key, ...], "classes": [key, ...], "class_arguments":
    {key: {class name: {argument: spec}}}}``: ``classes`` are the open keys that take a class
    (``loop.strategy``), ``class_arguments`` the arguments of fellrec's own classes for them.
    """
    loaded: dict[str, Any] = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    return loaded


def _kinds(hint: Any) -> tuple[list[str], bool, list[Any] | None]:
    """(kinds, nullable, choices) of a type hint; ``any`` where the type is not a plain one."""
    kinds: list[str] = []
    nullable = False
    choices: list[Any] | None = None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for member in typing.get_args(hint):
            more, null, options = _kinds(member)
            kinds += [k for k in more if k not in kinds]
            nullable = nullable or null
            if options is not None:
                choices = [*(choices or []), *options]
        return kinds, nullable, choices
    if origin is typing.Literal:
        values = list(typing.get_args(hint))
        return ["literal"], False, values
    if hint is type(None):
        return [], True, None
    plain = {bool: "bool", int: "int", float: "float", str: "str", pathlib.Path: "str"}
    if hint in plain:
        return [plain[hint]], False, None
    return ["any"], False, None


def _takes_class(hint: Any) -> bool:
    """Whether a hint takes a class, given as ``class_path`` and ``init_args``."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType, list, tuple):
        return any(_takes_class(member) for member in typing.get_args(hint))
    if str(origin) == "collections.abc.Iterable":
        return any(_takes_class(member) for member in typing.get_args(hint))
    if origin is not None:
        # Another generic alias (``dict[str, Any]``): not a class. Python 3.10 counts such
        # aliases as types, so this must come before the isinstance check.
        return False
    if isinstance(hint, type):
        plain = (bool, int, float, str, pathlib.Path, type(None), datetime.timedelta, dict)
        return not issubclass(hint, plain) and not dataclasses.is_dataclass(hint)
    return False


def _open(hint: Any) -> bool:
    """Whether a hint takes a class or a free mapping (nothing below it is recorded)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_open(member) for member in typing.get_args(hint))
    if origin in (dict, typing.Mapping) or hint in (dict, Any):
        return True
    return _takes_class(hint)


def _dataclass_of(hint: Any) -> type | None:
    members = typing.get_args(hint) if typing.get_origin(hint) else (hint,)
    for member in members:
        if isinstance(member, type) and dataclasses.is_dataclass(member):
            return member
    return None


def spec_of(hint: Any, default: Any = dataclasses.MISSING) -> dict[str, Any]:
    """A key's recorded spec: kinds, nullable, choices and (when plain) the default."""
    kinds, nullable, choices = _kinds(hint)
    spec: dict[str, Any] = {"kinds": kinds, "nullable": nullable, "choices": choices}
    if _plain(default):
        spec["default"] = default
    return spec


def _plain(value: Any) -> bool:
    """Whether a default is a plain JSON value (None, numbers, strings, lists and dicts of them)."""
    if value is None or isinstance(value, bool | int | float | str):
        return True
    if isinstance(value, list | tuple):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def _add_dataclass(keys: dict[str, Any], open_keys: list[str], prefix: str, cls: type) -> None:
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        hint = hints[field.name]
        key = f"{prefix}.{field.name}"
        default = field.default
        if field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        keys[key] = spec_of(hint, default)
        nested = _dataclass_of(hint)
        if nested is not None:
            keys[key] = {"kinds": ["any"], "nullable": True, "choices": None}
            _add_dataclass(keys, open_keys, key, nested)
        elif _open(hint):
            open_keys.append(key)


def parser_schema(parser: Any) -> dict[str, Any]:
    """The schema of one (jsonargparse) subcommand parser."""
    keys: dict[str, Any] = {}
    open_keys: list[str] = []
    classes: list[str] = []
    for action in parser._actions:
        dest = action.dest
        if dest.split(".")[0] not in SECTIONS or dest.endswith(".help"):
            continue
        hint = getattr(action, "_typehint", None)
        if hint is None:  # a group (``trainer``, ``data.dataset``) or a linked target
            keys[dest] = {"kinds": ["any"], "nullable": True, "choices": None}
            continue
        keys[dest] = spec_of(hint, action.default)
        nested = _dataclass_of(hint)
        if nested is not None:
            keys[dest] = {"kinds": ["any"], "nullable": True, "choices": None}
            _add_dataclass(keys, open_keys, dest, nested)
        elif _open(hint):
            open_keys.append(dest)
            if _takes_class(hint):
                classes.append(dest)
    return {
        "keys": dict(sorted(keys.items())),
        "open": sorted(open_keys),
        "classes": sorted(classes),
    }


def schema_text(schema: dict[str, Any]) -> str:
    """The schema as the JSON text of :data:`SCHEMA_FILE`."""
    return json.dumps(schema, indent=1, sort_keys=True, default=str) + "\n"

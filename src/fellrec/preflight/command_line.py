"""A ``fellrec`` command line's config as one mapping: its ``--config`` files, then its flags.

What LightningCLI will parse, merged the way it merges (later files and flags win; a flag's value
is read as YAML), for the checks before the heavy imports. Only plain forms are read: a command
line with anything else (``--print_config``, ``--help``, a flag without a value, ``+=`` lists) is
left to the real parser whole, so these checks never refuse what it would accept.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fellrec.config_errors import CONFIG_OPTIONS, read_config_file

#: Options after which nothing is checked here (they print and exit, or are not plain keys).
_HANDS_OFF = ("-h", "--help", "--print_config")


@dataclass
class ReadCommandLine:
    """A command line's merged config.

    Attributes:
        config: The nested mapping of every section the files and flags set.
        plain: False when the command line has forms left to the real parser alone.
        classes: Keys whose value names a class (``loop.strategy``): flags below them are that
            class's arguments (``--loop.strategy.mu`` means ``init_args.mu``).
    """

    config: dict[str, Any] = field(default_factory=dict)
    plain: bool = True
    classes: frozenset[str] = frozenset()


def section(config: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    """``config[key]`` when it is a mapping, else an empty one."""
    value = config.get(key)
    return value if isinstance(value, Mapping) else {}


def _class_name(value: Any) -> str | None:
    """The class a class key's value names (``FedAvg`` or a ``class_path``), if any."""
    named = value.get("class_path") if isinstance(value, Mapping) else value
    return str(named).rsplit(".", 1)[-1] if isinstance(named, str) else None


def merge(
    into: dict[str, Any],
    update: Mapping[str, Any],
    classes: frozenset[str] = frozenset(),
    prefix: str = "",
) -> None:
    """Merge ``update`` into ``into`` recursively (``update`` wins).

    A class key whose class changes starts afresh, as LightningCLI's parser drops the arguments
    of the class it replaces (``loop.strategy``: FELLRec's ``alpha`` does not go to FedAvg).
    """
    for key, value in update.items():
        dotted = f"{prefix}{key}"
        current = into.get(key)
        replaced = dotted in classes and _class_name(value) not in (None, _class_name(current))
        if isinstance(value, Mapping) and isinstance(current, dict) and not replaced:
            merge(current, value, classes, f"{dotted}.")
        else:
            into[key] = _copy(value)


def _copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: _copy(item) for key, item in value.items()}
    return value


def yaml_value(text: str) -> Any:
    """A flag's value as LightningCLI reads it: YAML, or the text itself when it is not YAML."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def set_key(config: dict[str, Any], key: str, value: Any, classes: frozenset[str]) -> None:
    """Set a dotted ``key``; below a class key the parts become that class's ``init_args``."""
    parts = key.split(".")
    node = config
    for index, part in enumerate(parts[:-1]):
        dotted = ".".join(parts[: index + 1])
        child = node.get(part)
        if dotted in classes:
            if not isinstance(child, dict):
                child = {"class_path": child} if child is not None else {}
                node[part] = child
            rest = parts[index + 1 :]
            if rest[0] not in ("class_path", "init_args"):
                child.setdefault("init_args", {})
                set_key(child["init_args"], ".".join(rest), value, frozenset())
            else:
                set_key(child, ".".join(rest), value, frozenset())
            return
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def read_command_line(args: Sequence[str], classes: frozenset[str]) -> ReadCommandLine:
    """Merge the ``--config`` files and ``--key value`` flags of ``args`` (after the command).

    Args:
        args: The arguments after the subcommand.
        classes: The keys whose value names a class (see :class:`ReadCommandLine`).

    Raises:
        ConfigError: A config file that is missing, not YAML or not a mapping (naming it).
    """
    read = ReadCommandLine(classes=classes)
    index = 0
    while index < len(args):
        arg = args[index]
        name, has_value, value = arg.partition("=")
        if name in _HANDS_OFF or not arg.startswith("-"):
            read.plain = False
            return read
        if not has_value:
            if index + 1 >= len(args) or args[index + 1].startswith("--"):
                read.plain = False  # a flag without a value: the real parser says what it wants
                return read
            value = args[index + 1]
            index += 1
        index += 1
        if name in CONFIG_OPTIONS or name == "--config":
            merge(read.config, read_config_file(Path(value)), classes)
        elif name.startswith("--") and not name.endswith("+"):
            set_key(read.config, name[2:], yaml_value(value), classes)
        else:
            read.plain = False
            return read
    return read

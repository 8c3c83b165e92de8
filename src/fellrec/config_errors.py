"""Config mistakes explained in one line that names the file, the key and the nearest valid key.

jsonargparse reports a misspelled key as ``unrecognized arguments: --model.lrr 0.1`` (after ~100
lines of usage) or ``Subcommand 'fit' does not accept option 'model.lrr'`` (without the file it
came from), and a YAML syntax error as ``in "<unicode string>", line 2``. Every ``fellrec``
command that reads configs checks its ``--config`` files first (:func:`check_config_files`) and
turns a parser error into a :class:`ConfigError` (:func:`explain_argument_error`).
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import inspect
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

#: The option that names a config file (LightningCLI also accepts ``-c``).
CONFIG_OPTIONS = ("--config", "-c")

_UNRECOGNIZED = re.compile(r"unrecognized arguments: (.*)")
_NOT_ACCEPTED = re.compile(r"does not accept (?:option|key) '([^']+)'")
_PARSER_KEY = re.compile(r'Parser key "([^"]+)":')
_CLASS_OPTION = re.compile(
    r"given class_path '([^']+)'.*?Option '([^']+)' is not accepted", flags=re.DOTALL
)


class ConfigError(ValueError):
    """A config file or option that cannot be read; the message names the file or the flag."""


def config_files(args: Sequence[str]) -> list[Path]:
    """The ``--config FILE`` (or ``--config=FILE``, ``-c FILE``) paths, in order."""
    files: list[Path] = []
    for index, arg in enumerate(args):
        if arg in CONFIG_OPTIONS and index + 1 < len(args):
            files.append(Path(args[index + 1]))
        elif arg.startswith("--config="):
            files.append(Path(arg.split("=", 1)[1]))
    return files


def read_config_file(path: Path) -> Mapping[str, Any]:
    """A config file's contents, or a :class:`ConfigError` naming the file (and line, if YAML).

    Raises:
        ConfigError: The file is missing, is not valid YAML or is not a mapping of sections.
    """
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        problem = getattr(error, "problem", None) or str(error)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        raise ConfigError(f"{path}: {where}{problem} (YAML syntax)") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not a text file ({error.reason})") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, Mapping):
        raise ConfigError(
            f"{path}: a config is a mapping of sections (model:, data:, trainer:, ...), "
            f"not a {type(loaded).__name__}"
        )
    return loaded


def check_config_files(args: Sequence[str]) -> None:
    """Read every ``--config`` file of a command line, so that a bad one fails by name."""
    for path in config_files(args):
        read_config_file(path)


def dotted_keys(tree: Mapping[str, Any], prefix: str = "") -> Iterable[str]:
    """Every key path of a nested mapping (``model``, ``model.lr``, ...).

    ``init_args`` levels are also listed without that level (``loop.strategy.alpha``), the
    form jsonargparse reports.
    """
    for key, value in tree.items():
        path = f"{prefix}{key}"
        yield path
        if isinstance(value, Mapping):
            yield from dotted_keys(value, f"{path}.")
            if isinstance(value.get("init_args"), Mapping):
                yield from dotted_keys(value["init_args"], f"{path}.")


def parser_keys(parser: argparse.ArgumentParser) -> list[str]:
    """The dotted keys a (jsonargparse) parser accepts, without the ``help`` entries."""
    keys = []
    for action in parser._actions:
        dest = action.dest
        if dest and dest != "help" and not dest.endswith(".help") and dest != argparse.SUPPRESS:
            keys.append(dest)
    return keys


def unknown_keys(message: str) -> list[str]:
    """The keys an argument error complains about (``model.lrr``), if it is about unknown keys.

    An option a ``class_path``'s class does not take is reported under the key of the class
    (``loop.strategy``): the unknown key is that key and the option (``loop.strategy.alpah``).
    """
    parent, option = _PARSER_KEY.search(message), _CLASS_OPTION.search(message)
    if parent and option:
        return [f"{parent.group(1)}.{option.group(2)}"]
    accepted = _NOT_ACCEPTED.search(message)
    if accepted:
        return [accepted.group(1)]
    unrecognized = _UNRECOGNIZED.search(message)
    if unrecognized:
        words = unrecognized.group(1).split()
        return [w.removeprefix("--").split("=", 1)[0] for w in words if w.startswith("--")]
    return []


def class_option_keys(message: str) -> list[str]:
    """The keys of the options of the class an error names (``loop.strategy.alpha``, ...)."""
    parent, option = _PARSER_KEY.search(message), _CLASS_OPTION.search(message)
    if not (parent and option):
        return []
    module_name, _, class_name = option.group(1).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
        names = inspect.signature(cls).parameters
    except (ImportError, AttributeError, TypeError, ValueError):
        return []
    return [f"{parent.group(1)}.{name}" for name in names]


def nearest_key(key: str, known: Sequence[str]) -> str | None:
    """The accepted key closest to a misspelled one, or ``None`` if none is close.

    Keys of the same section are preferred (``model.lrr`` -> ``model.lr``, not ``data.lr``).
    """
    section = key.rsplit(".", 1)[0] if "." in key else ""
    same_section = [k for k in known if k.startswith(f"{section}.")] if section else []
    for candidates in (same_section, list(known)):
        match = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
        if match:
            return match[0]
    return None


def explain_argument_error(
    message: str, known: Sequence[str], args: Sequence[str], command: str
) -> ConfigError:
    """A one-line error for a parser's message: where the key came from and what was meant.

    Args:
        message: The parser's error message.
        known: The keys the parser accepts.
        args: The command line (its ``--config`` files are searched for the unknown key).
        command: The command, for the pointer to its ``--help`` (``fellrec fit``).
    """
    keys = unknown_keys(message)
    known = [*known, *class_option_keys(message)]
    if not keys:
        parent = _PARSER_KEY.search(message)
        origin = value_origin(parent.group(1), args) if parent else None
        prefix = f"{origin}: " if origin else ""
        return ConfigError(f"{prefix}{message.strip()} (see {command} --help)")
    return unknown_keys_error(keys, known, args, command)


def unknown_keys_error(
    keys: Sequence[str], known: Sequence[str], args: Sequence[str], command: str
) -> ConfigError:
    """One line for unknown keys: the file (or flag) each came from and the key it was meant to be.

    Args:
        keys: The unknown dotted keys.
        known: The keys the command accepts.
        args: The command line (its ``--config`` files are searched for the keys).
        command: The command, for the pointer to its ``--help`` (``fellrec fit``).
    """
    problems = []
    for key in keys:
        files = [str(path) for path in config_files(args) if _holds(path, key)]
        origin = f"{', '.join(files)}: " if files else ""
        flag = "" if files else "--"
        problem = f"{origin}unknown key '{flag}{key}'"
        suggestion = nearest_key(key, known)
        if suggestion is not None:
            problem += f"; did you mean '{flag}{suggestion}'?"
        problems.append(problem)
    return ConfigError(f"{'; '.join(problems)} ({command} --help lists every key)")


def value_origin(key: str, args: Sequence[str]) -> str | None:
    """Where a key's value came from: the command line, or the last config file that sets it."""
    if any(arg == f"--{key}" or arg.startswith(f"--{key}=") for arg in args):
        return f"--{key}"
    files = [path for path in config_files(args) if _holds(path, key)]
    return str(files[-1]) if files else None


def _holds(path: Path, key: str) -> bool:
    try:
        return key in set(dotted_keys(read_config_file(path)))
    except ConfigError:
        return False


def parse_checked(parser: Any, args: Sequence[str], command: str) -> Any:
    """``parser.parse_args(args)`` with config mistakes as a :class:`ConfigError`.

    Args:
        parser: A jsonargparse ``ArgumentParser`` built with ``exit_on_error=False``.
        args: The command line after the command's name.
        command: The command (``fellrec cost``), for the message.
    """
    check_config_files(args)
    try:
        return parser.parse_args(list(args))
    except argparse.ArgumentError as error:
        raise explain_argument_error(str(error), parser_keys(parser), args, command) from None

"""Checks of a config's ``model``, ``data`` and ``loop`` settings on their own: keys, kinds, ranges.

Against the recorded schema (:mod:`fellrec.preflight.schema`): unknown keys (with the nearest
known one), values of the wrong kind, and the ranges of :mod:`fellrec.preflight.rules`; the data
settings go through the data pipeline's own checks, the prompt through ``PromptSettings`` and the
block counts through ``plan_split``, all light modules.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from fellrec.config_errors import ConfigError, unknown_keys_error, value_origin
from fellrec.data.loader_settings import check_loader_settings
from fellrec.data.pipeline import DatasetSettings, PipelineSettings
from fellrec.data.sources import check_format
from fellrec.models.prompts import PromptSettings
from fellrec.models.split_plan import plan_split
from fellrec.preflight.command_line import section
from fellrec.preflight.rules import broken_rules
from fellrec.preflight.schema import SECTIONS, load_schema

#: What a value of each kind must be, for the messages.
_KIND_WORDS = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "str": "a string",
}
_BOOLEAN_WORDS = ("true", "false", "yes", "no", "on", "off")
_NULL_WORDS = ("null", "none", "~", "")


def leaves(config: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every (dotted key, value) of a nested mapping, mappings included."""
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        yield dotted, value
        if isinstance(value, Mapping):
            yield from leaves(value, f"{dotted}.")


def _below_open(key: str, open_keys: Sequence[str]) -> bool:
    return any(key.startswith(f"{prefix}.") for prefix in open_keys)


#: The package of fellrec's strategies (``loop.strategy`` class names resolve there).
STRATEGIES_MODULE = "fellrec.federation.strategies"


def strategy_arguments(config: Mapping[str, Any]) -> dict[str, Any] | None:
    """The arguments (name -> spec) of the config's ``loop.strategy`` when it is fellrec's own.

    None for a class of another package: the real parser checks it.
    """
    chosen = section(config, "loop").get("strategy")
    if isinstance(chosen, Mapping):
        chosen = chosen.get("class_path")
    if chosen is None:
        chosen = load_schema()["keys"]["loop.strategy"]["default"]["class_path"]
    name = str(chosen)
    if "." in name and not name.startswith(f"{STRATEGIES_MODULE}."):
        return None
    known: dict[str, Any] | None = load_schema()["class_arguments"]["loop.strategy"].get(
        name.rsplit(".", 1)[-1]
    )
    return known


def _strategy_argument(key: str) -> bool:
    """Whether a dotted key is an argument of ``loop.strategy`` (``loop.strategy.<argument>``)."""
    parts = key.split(".")
    return (
        len(parts) == 3
        and parts[:2] == ["loop", "strategy"]
        and parts[2]
        not in (
            "class_path",
            "init_args",
        )
    )


def unknown_section_keys(config: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """The keys under ``model``, ``data`` and ``loop`` the schema does not know, and the known.

    A fellrec strategy's arguments count as ``loop.strategy.<argument>``.
    """
    schema = load_schema()
    known, open_keys = list(schema["keys"]), schema["open"]
    sections = {s: config[s] for s in SECTIONS if isinstance(config.get(s), Mapping)}
    unknown = [
        key
        for key, _ in leaves(sections)
        if key not in schema["keys"] and not _below_open(key, open_keys)
    ]
    arguments = strategy_arguments(config)
    if arguments is not None:
        given = [k.rsplit(".", 1)[1] for k in _values(config) if _strategy_argument(k)]
        unknown += [f"loop.strategy.{name}" for name in given if name not in arguments]
        known += [f"loop.strategy.{name}" for name in arguments]
    return unknown, known


def kind_error(value: Any, spec: Mapping[str, Any]) -> str | None:
    """What is wrong with ``value`` for a key of this spec, or None (when in doubt: None)."""
    kinds = spec["kinds"]
    if "any" in kinds or not kinds:
        return None
    # A null word is a string to a string key ("none" is model.lr_decay's own default); to
    # other keys the parser reads it as null.
    null_word = isinstance(value, str) and value.strip().lower() in _NULL_WORDS
    if value is None or (null_word and "str" not in kinds):
        return None if spec["nullable"] else "null is not allowed"
    choices = spec.get("choices") or []
    if "literal" in kinds and (value in choices or str(value) in map(str, choices)):
        return None
    for kind in kinds:
        if kind == "str" and isinstance(value, str | int | float) and not isinstance(value, bool):
            return None
        if kind == "bool" and (
            isinstance(value, bool) or str(value).strip().lower() in _BOOLEAN_WORDS
        ):
            return None
        if kind in ("int", "float") and not isinstance(value, bool):
            try:
                (int if kind == "int" else float)(value)
            except (TypeError, ValueError):
                continue
            if kind == "float" or not isinstance(value, float) or value.is_integer():
                return None
    wanted = [_KIND_WORDS[k] for k in kinds if k in _KIND_WORDS]
    if "literal" in kinds:
        wanted.append(f"one of {', '.join(map(str, choices))}")
    return f"expected {' or '.join(wanted)}, got {value!r}"


def _values(config: Mapping[str, Any]) -> dict[str, Any]:
    """The dotted values of the fellrec sections, a strategy's arguments as ``loop.strategy.*``."""
    values = {key: value for key, value in leaves(config) if key.split(".")[0] in SECTIONS}
    strategy = (
        (config.get("loop") or {}).get("strategy")
        if isinstance(config.get("loop"), Mapping)
        else None
    )
    if isinstance(strategy, Mapping):
        arguments = strategy.get("init_args")
        named = {k: v for k, v in strategy.items() if k not in ("class_path", "init_args")}
        for name, value in {
            **named,
            **(arguments if isinstance(arguments, Mapping) else {}),
        }.items():
            values[f"loop.strategy.{name}"] = value
    return values


def setting(values: Mapping[str, Any], key: str) -> Any:
    """A setting's value, or the schema's default when the config does not set it."""
    if key in values:
        return values[key]
    return load_schema()["keys"].get(key, {}).get("default")


def pipeline_settings(values: Mapping[str, Any]) -> PipelineSettings:
    """The data pipeline's settings of a config (defaults where it sets none)."""

    def data(name: str) -> Any:
        return setting(values, f"data.{name}")

    def optional(name: str, kind: type) -> Any:
        value = data(name)
        return None if value is None else kind(value)

    # Typed as the parser types them: the settings are the prepared data's cache key, which the
    # run must find under the same name.
    options = data("dataset.options")
    dataset = DatasetSettings(
        format=str(data("dataset.format")),
        path=optional("dataset.path", str),
        options=dict(options) if isinstance(options, Mapping) else {},
        min_rating=optional("dataset.min_rating", float),
        kcore=int(data("dataset.kcore")),
    )
    cutoffs, silos = data("temporal_cutoffs"), data("silos")
    return PipelineSettings.of_silos(
        optional("catalog", str),
        [str(path) for path in silos] if silos else None,
        optional("silo", str),
        optional("client", int),
        str(data("unknown_items")),
        [int(c) for c in cutoffs] if cutoffs is not None else None,
        dataset=dataset,
        split=str(data("split")),
        valid_fraction=float(data("valid_fraction")),
        test_fraction=float(data("test_fraction")),
        history_length=int(data("history_length")),
        max_train_examples=optional("max_train_examples", int),
        num_clients=int(data("num_clients")),
        partition=str(data("partition")),
        partition_attribute=optional("partition_attribute", str),
        dirichlet_concentration=float(data("dirichlet_concentration")),
        seed=int(data("seed")),
        window_stride=int(data("window_stride")),
        new_items=float(data("new_items")),
        eval_user_fraction=float(data("eval_user_fraction")),
    )


def check_settings(config: Mapping[str, Any], args: Sequence[str], command: str) -> dict[str, Any]:
    """Check the fellrec sections of a merged config; return their dotted values.

    Args:
        config: The merged config (:func:`fellrec.preflight.command_line.read_command_line`).
        args: The command line (to name where a value came from).
        command: The command for the messages (``fellrec fit``).

    Raises:
        ConfigError: For an unknown key or a value of the wrong kind (naming the file or flag).
        ValueError: For a value out of range (naming the setting, as the run would).
    """
    schema = load_schema()
    unknown, known = unknown_section_keys(config)
    if unknown:
        raise unknown_keys_error(unknown, known, args, command)
    values = _values(config)
    arguments = strategy_arguments(config) or {}
    for key, value in values.items():
        spec = schema["keys"].get(key)
        if _strategy_argument(key):
            spec = arguments.get(key.rsplit(".", 1)[1])
        problem = kind_error(value, spec) if spec is not None else None
        if problem is not None:
            origin = value_origin(key, args)
            where = origin if origin == f"--{key}" else f"{origin or 'the config'}: {key}"
            raise ConfigError(f"{where}: {problem} (see {command} --help)")
    broken = broken_rules(values)
    if broken:
        raise ValueError(broken[0])
    check_format(setting(values, "data.dataset.format"))
    pipeline_settings(values).validate()
    check_loader_settings(
        int(setting(values, "data.batch_size")),
        int(setting(values, "data.eval_batch_size")),
        int(setting(values, "data.local_epochs")),
        int(setting(values, "data.accumulate_grad_batches")),
        setting(values, "data.client"),
        int(setting(values, "data.num_clients")),
    )
    prompt = (
        (config.get("model") or {}).get("prompt")
        if isinstance(config.get("model"), Mapping)
        else None
    )
    if isinstance(prompt, Mapping):
        PromptSettings(**prompt).validate()
    # Negative block counts; the model's depth is checked with the backbone.
    plan_split(1 << 20, int(setting(values, "model.k_front")), int(setting(values, "model.k_back")))
    return values

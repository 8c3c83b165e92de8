"""Writes the recorded config schema (:mod:`fellrec.preflight.schema`) from the real parser.

A development tool: it imports the whole CLI (Lightning, transformers, every fellrec class) to
read LightningCLI's parser, which the recorded schema exists to avoid. Run it after changing a
setting of ``FederatedModule``, ``FederatedDataModule``, ``FederatedLoop`` or a strategy::

    python -m fellrec.preflight.schema_builder
"""

from __future__ import annotations

import inspect
import sys
import typing
from typing import Any

from fellrec.preflight.schema import SCHEMA_FILE, parser_schema, schema_text, spec_of


def strategy_arguments() -> dict[str, dict[str, Any]]:
    """Every fellrec strategy class's arguments (``loop.strategy.init_args``), by class name."""
    from fellrec.federation import strategies

    found: dict[str, dict[str, Any]] = {}
    for name, cls in vars(strategies).items():
        if not (inspect.isclass(cls) and issubclass(cls, strategies.Strategy)):
            continue
        if cls.__module__ != strategies.__name__:
            continue
        hints = typing.get_type_hints(cls.__init__)
        found[name] = {
            argument: spec_of(hints.get(argument, Any), parameter.default)
            for argument, parameter in inspect.signature(cls).parameters.items()
        }
    return dict(sorted(found.items()))


def build_schema() -> dict[str, Any]:
    """The schema of the real ``fellrec fit`` parser (imports Lightning and every fellrec class).

    ``validate`` and ``test`` read the same sections.
    """
    import warnings

    from jsonargparse import capture_parser

    from fellrec.lightning_cli import make_cli

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parser = capture_parser(lambda: make_cli(["fit"]))
    subcommands = parser._subcommands_action
    assert subcommands is not None
    schema = parser_schema(subcommands.choices["fit"])
    schema["class_arguments"] = {"loop.strategy": strategy_arguments()}
    return schema


def main() -> None:
    """``python -m fellrec.preflight.schema_builder``: rewrite the schema from the real parser."""
    text = schema_text(build_schema())
    SCHEMA_FILE.write_text(text, encoding="utf-8")
    print(f"wrote {SCHEMA_FILE} ({len(text)} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()

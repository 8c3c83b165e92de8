"""The config parser of the commands that read a run without training it."""

from __future__ import annotations

import warnings

import pytest
from jsonargparse import capture_parser

from fellrec.config_parser import DATA_SECTIONS, FIT_SECTIONS, RUN_SECTIONS, config_parser
from fellrec.lightning_cli import make_cli


def sections(parser) -> list[str]:
    """The top-level keys a parser takes, in its order (without its own flags)."""
    own = {"help", "config", "print_config"}
    names = (action.dest.split(".")[0] for action in parser._actions)
    return [name for name in dict.fromkeys(names) if name not in own]


def test_the_sections_are_those_of_a_fit_config():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parser = capture_parser(lambda: make_cli(["fit"]))
    assert parser._subcommands_action is not None
    fit = set(sections(parser._subcommands_action.choices["fit"]))
    # Every key of a printed fit config is taken; `weights_only` (how `ckpt_path` is loaded)
    # came with Lightning 2.6, so an older fit parser may lack it.
    assert fit <= set(FIT_SECTIONS)
    assert set(FIT_SECTIONS) - fit <= {"weights_only"}


@pytest.mark.parametrize(
    ("read", "expected"),
    [
        (RUN_SECTIONS, ["model", "data", "trainer", "loop", "checkpoint", "seed_everything"]),
        (DATA_SECTIONS, ["data", "model", "trainer", "loop", "checkpoint", "seed_everything"]),
    ],
)
def test_the_read_sections_come_first_then_the_ignored_ones(read, expected):
    ignored_last = ["ckpt_path", "weights_only"]
    assert sections(config_parser("fellrec x", "", read)) == [*expected, *ignored_last]


def test_ignored_sections_take_anything_and_trainer_merges_its_keys():
    parser = config_parser("fellrec x", "")
    config = parser.parse_args(
        [
            *("--trainer", '{"precision": "bf16-mixed", "default_root_dir": "runs/a"}'),
            *("--trainer.precision", "32"),
            *("--loop", '{"strategy": "anything"}'),
            *("--data.num_clients", "3"),
        ]
    )
    assert config.trainer == {"precision": "32", "default_root_dir": "runs/a"}
    assert config.loop == {"strategy": "anything"}
    assert config.data.num_clients == 3


def test_a_section_that_cannot_be_read_is_refused():
    with pytest.raises(ValueError, match=r"config sections \['loop'\] cannot be read here"):
        config_parser("fellrec x", "", ("data", "loop"))

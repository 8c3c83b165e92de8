"""Config mistakes: one line naming the file, the key and the nearest valid key."""

from __future__ import annotations

import pytest

from fellrec.cli import main
from fellrec.config_errors import (
    ConfigError,
    config_files,
    dotted_keys,
    explain_argument_error,
    nearest_key,
    read_config_file,
    unknown_keys,
)

KNOWN = ["model.lr", "model.lora", "model.backbone", "data.lr_typo_free", "data.num_clients"]


def test_config_files_reads_every_spelling():
    args = ["fit", "--config", "a.yaml", "-c", "b.yaml", "--config=c.yaml", "--model.lr", "1"]
    assert [str(p) for p in config_files(args)] == ["a.yaml", "b.yaml", "c.yaml"]


def test_unknown_keys_from_the_parsers_messages():
    assert unknown_keys("unrecognized arguments: --model.lrr 0.1 --data.x=2") == [
        "model.lrr",
        "data.x",
    ]
    assert unknown_keys("Subcommand 'fit' does not accept option 'model.lrr'") == ["model.lrr"]
    nested = (
        'Parser key "model.strategy":\n  Problem with given class_path '
        "'fellrec.federation.strategies.FELLRec':\n    Option 'alpah' is not accepted"
    )
    assert unknown_keys(nested) == ["model.strategy.alpah"]
    assert unknown_keys('Parser key "trainer.max_epochs": Expected a <class int>') == []


def test_nearest_key_prefers_the_same_section():
    assert nearest_key("model.lrr", KNOWN) == "model.lr"
    assert nearest_key("data.num_clientz", KNOWN) == "data.num_clients"
    assert nearest_key("model.zzzzzzzz", KNOWN) is None


def test_dotted_keys_list_init_args_both_ways():
    tree = {"model": {"lr": 1, "strategy": {"class_path": "X", "init_args": {"alpha": 1}}}}
    keys = set(dotted_keys(tree))
    assert {"model.lr", "model.strategy.init_args.alpha", "model.strategy.alpha"} <= keys


def test_a_yaml_typo_is_reported_with_its_file(tmp_path):
    good, typo = tmp_path / "good.yaml", tmp_path / "typo.yaml"
    good.write_text("model:\n  lr: 0.1\n")
    typo.write_text("model:\n  lrr: 0.1\n")
    args = ["fit", "--config", str(good), "--config", str(typo)]
    error = explain_argument_error(
        "Subcommand 'fit' does not accept option 'model.lrr'", KNOWN, args, "fellrec fit"
    )
    assert str(error) == (
        f"{typo}: unknown key 'model.lrr'; did you mean 'model.lr'? "
        "(fellrec fit --help lists every key)"
    )


def test_a_command_line_typo_is_reported_as_a_flag():
    error = explain_argument_error(
        "unrecognized arguments: --model.lrr 0.1",
        KNOWN,
        ["fit", "--model.lrr", "0.1"],
        "fellrec fit",
    )
    assert "unknown key '--model.lrr'; did you mean '--model.lr'?" in str(error)


def test_yaml_syntax_errors_name_the_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  lr: [0.1\n")
    with pytest.raises(ConfigError, match=rf"{path}: line 3, column 1: .*\(YAML syntax\)"):
        read_config_file(path)
    with pytest.raises(ConfigError, match="no such config file"):
        read_config_file(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping of sections"):
        read_config_file(tmp_path / "list.yaml")


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--model.lrr", "0.1"], "unknown key '--model.lrr'; did you mean '--model.lr'?"),
        (
            ["--loop.strategy.init_args.alpah", "0.1"],
            "did you mean '--loop.strategy.alpha'?",
        ),
    ],
)
def test_fellrec_fit_prints_one_line_without_the_usage(fitted_config, capsys, extra, expected):
    with pytest.raises(SystemExit) as stop:
        main(["fit", "--config", str(fitted_config), *extra])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert expected in err
    assert "usage:" not in err and len(err.strip().splitlines()) == 1


def test_fellrec_fit_names_the_yaml_file_of_a_typo(fitted_config, tmp_path, capsys):
    typo = tmp_path / "typo.yaml"
    typo.write_text("data:\n  num_clientz: 3\n")
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(fitted_config), "--config", str(typo)])
    err = capsys.readouterr().err
    assert f"{typo}: unknown key 'data.num_clientz'; did you mean 'data.num_clients'?" in err


@pytest.fixture
def fitted_config(tmp_path, tiny_encoder_dir):
    from test_cli import write_tiny_config

    return write_tiny_config(tmp_path, tiny_encoder_dir)

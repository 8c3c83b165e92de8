"""The checks before the heavy imports: fast, right, and never stricter than the run itself."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from fellrec.cli import main
from fellrec.preflight import class_keys, preflight
from fellrec.preflight.command_line import read_command_line
from fellrec.preflight.rules import METRIC_NAMES, RULES
from fellrec.preflight.schema import SCHEMA_FILE, schema_text
from fellrec.preflight.schema_builder import build_schema
from fellrec.preflight.settings import kind_error
from test_cli import cli_environment, write_tiny_config

CLASSES = class_keys()


def test_the_recorded_schema_is_the_parsers():
    assert schema_text(build_schema()) == SCHEMA_FILE.read_text(), (
        "fellrec's config schema changed: run `python -m fellrec.preflight.schema_builder` and "
        "commit "
        "src/fellrec/preflight/schema.json"
    )


def original_refusal(key: str, value, tiny_encoder_dir: Path) -> str | None:
    """The message of the original check of ``key`` for ``value`` (None: it accepts it)."""
    from fellrec.federation import strategies
    from fellrec.training.rounds.loop import FederatedLoop

    try:
        if key.startswith("loop.strategy."):
            name = key.rsplit(".", 1)[1]
            cls = strategies.FedProx if name == "mu" else strategies.FELLRec
            cls(**{name: value})
        elif key == "loop.selection_metric":
            from fellrec.training.host.federated_module import FederatedModule

            names = FederatedModule().eval_names
            assert tuple(names) == METRIC_NAMES  # the rule's list is the run's
            # FederatedLoop.setup's refusal (it needs a trainer to run).
            known = ", ".join(names)
            return (
                None
                if value in names
                else f"selection_metric={value!r} is unknown; choose from {known}"
            )
        elif key.startswith("loop."):
            FederatedLoop(**{key.split(".", 1)[1]: value})
        elif key.startswith("model.lora."):
            from fellrec.models.adapters import LoRASettings

            LoRASettings(**{key.rsplit(".", 1)[1]: value}).to_peft("bert")
        elif key == "model.temperature":
            from fellrec.models.item_components import ItemComponents, ItemSettings

            ItemComponents(5, 4, ItemSettings(), value)
        elif key == "model.max_history_tokens":
            from transformers import AutoTokenizer

            from fellrec.models.text import HistoryRenderer

            HistoryRenderer(AutoTokenizer.from_pretrained(tiny_encoder_dir), ["a"], 4, value)
        else:
            from fellrec.config_parser import config_parser, instantiate_run_config

            parser = config_parser("fellrec fit", "")
            text = yaml.safe_dump(value).strip().removesuffix("...").strip()
            instantiate_run_config(parser, parser.parse_args([f"--{key}", text]))
    except ValueError as error:
        return str(error)
    return None


@pytest.mark.parametrize("rule", RULES, ids=[rule.key for rule in RULES])
def test_every_rule_is_its_originals(rule, tiny_encoder_dir):
    refusal = original_refusal(rule.key, rule.bad, tiny_encoder_dir)
    assert refusal is not None, f"the original accepts {rule.key}={rule.bad!r}"
    assert rule.message(rule.bad).split(", got")[0] in refusal
    assert not rule.allows(rule.bad)
    assert original_refusal(rule.key, rule.good, tiny_encoder_dir) is None
    assert rule.allows(rule.good)


def test_the_command_line_merges_as_lightning_cli_does(tmp_path):
    first = tmp_path / "a.yaml"
    first.write_text(yaml.safe_dump({"model": {"lr": 0.1, "lora": {"r": 4}}, "data": {"seed": 1}}))
    second = tmp_path / "b.yaml"
    second.write_text(yaml.safe_dump({"model": {"lora": {"dropout": 0.2}}}))
    args = ["--config", str(first), "--model.lr", "1e-3", "--config", str(second)]
    args += ["--loop.strategy", "FedProx", "--loop.strategy.mu", "0.01", "--data.seed=3"]
    read = read_command_line(args, CLASSES)
    assert read.plain
    assert read.config == {
        "model": {"lr": "1e-3", "lora": {"r": 4, "dropout": 0.2}},
        "data": {"seed": 3},
        "loop": {"strategy": {"class_path": "FedProx", "init_args": {"mu": 0.01}}},
    }
    # A later file that changes the strategy's class drops the arguments of the one it replaces.
    fellrec = tmp_path / "fellrec.yaml"
    fellrec.write_text(
        "loop:\n  strategy:\n    class_path: fellrec.federation.strategies.FELLRec\n"
        "    init_args: {alpha: 0.7}\n"
    )
    fedavg = tmp_path / "fedavg.yaml"
    fedavg.write_text("loop:\n  strategy:\n    class_path: fellrec.federation.strategies.FedAvg\n")
    read = read_command_line(["--config", str(fellrec), "--config", str(fedavg)], CLASSES)
    assert read.config == {
        "loop": {"strategy": {"class_path": "fellrec.federation.strategies.FedAvg"}}
    }
    for hands_off in (["--print_config"], ["--model.lr"], ["--trainer.callbacks+=X"], ["fit"]):
        assert not read_command_line(["--data.seed", "1", *hands_off], CLASSES).plain


@pytest.mark.parametrize(
    ("value", "spec", "problem"),
    [
        ("abc", {"kinds": ["int"], "nullable": False}, "expected an integer, got 'abc'"),
        (1.5, {"kinds": ["int"], "nullable": False}, "expected an integer, got 1.5"),
        (None, {"kinds": ["int"], "nullable": False}, "null is not allowed"),
        ("none", {"kinds": ["int"], "nullable": False}, "null is not allowed"),
        (None, {"kinds": ["str"], "nullable": False}, "null is not allowed"),
        ("maybe", {"kinds": ["bool"], "nullable": False}, "expected true or false, got 'maybe'"),
        ("x", {"kinds": ["literal"], "nullable": True, "choices": [16, "bf16"]}, "one of 16, bf16"),
    ],
)
def test_values_of_the_wrong_kind_are_named(value, spec, problem):
    assert problem in kind_error(value, spec)


@pytest.mark.parametrize(
    ("value", "spec"),
    [
        ("1e-3", {"kinds": ["float"], "nullable": False}),  # LightningCLI reads it as a float
        (3, {"kinds": ["float"], "nullable": False}),
        ("5", {"kinds": ["int"], "nullable": False}),
        ("false", {"kinds": ["bool"], "nullable": False}),
        ("null", {"kinds": ["int"], "nullable": True}),
        # model.lr_decay's own default, as every saved config.yaml of the recipe holds it.
        ("none", {"kinds": ["str"], "nullable": False}),
        ("16", {"kinds": ["literal"], "nullable": True, "choices": [16, "bf16"]}),
        ({"a": 1}, {"kinds": ["any"], "nullable": False}),
    ],
)
def test_what_the_parser_accepts_is_accepted(value, spec):
    assert kind_error(value, spec) is None


def bad_csv(directory: Path) -> Path:
    path = directory / "interactions.csv"
    lines = ["user_id,item_id,timestamp"] + [
        f"u{u},i{i},{u * 100 + i}" for u in range(3) for i in range(5)
    ]
    path.write_text("\n".join([*lines[:7], "u9,i1,not-a-time", *lines[7:]]) + "\n")
    return path


#: (extra arguments, what the message says) of every kind of mistake the checks catch early.
MISTAKES = [
    (["--data.num_clients", "0"], "data.num_clients must be >= 1, got 0"),
    (["--model.lr", "-1"], "model.lr must be > 0, got -1"),
    (["--model.lrr", "0.1"], "unknown key '--model.lrr'; did you mean '--model.lr'?"),
    (["--data.num_clients", "abc"], "--data.num_clients: expected an integer, got 'abc'"),
    (["--data.partition", "random"], "data.partition='random' is unknown"),
    (["--loop.strategy.alpha", "-1"], "loop.strategy.alpha must be > 0, got -1"),
    (["--loop.strategy.init_args.alpah", "1"], "did you mean '--loop.strategy.alpha'?"),
    (["--loop.strategy", "FedProx", "--loop.strategy.mu", "x"], "expected a number, got 'x'"),
    (["--loop.selection_metric", "auc"], "selection_metric='auc' is unknown"),
    (["--model.lora.dropout", "1.5"], "model.lora.dropout must be in [0, 1), got 1.5"),
    (["--data.batch_size", "0"], "data.batch_size must be >= 1, got 0"),
    (["--data.num_clients", "500"], "more clients than users: data.num_clients=500"),
    (["--model.k_front", "10"], "model.k_front + model.k_back must be <= 2 for a model with 3"),
    (["--model.backbone", "no-such-org/no-such-model"], "nor a hub name that can be loaded here"),
    (["--model.backbone", "./no/such/dir"], "model.backbone='./no/such/dir': no such directory"),
    (["--data.dataset.format", "movielens"], "data.dataset.path is required"),
    (
        [
            *("--data.dataset.format", "movielens", "--data.dataset.path", "no-such-dir"),
            *("--data.dataset.options", "{}"),
        ],
        "no-such-dir: directory not found",
    ),
    (["--data.dataset.format", "parquet"], "data.dataset.format='parquet' is unknown"),
    (["--ckpt_path", "no-such.ckpt"], "ckpt_path: no such checkpoint file: no-such.ckpt"),
    (["--trainer.default_root_dir", "/proc/fellrec-run"], "trainer.default_root_dir='/proc/"),
    (
        ["--trainer.strategy", "ddp_spawn"],
        "trainer.strategy='ddp_spawn' (DDPStrategy, start method 'spawn') starts its processes",
    ),
    (
        [
            *("--trainer.strategy", "lightning.pytorch.strategies.DDPStrategy"),
            *("--trainer.strategy.init_args.start_method", "fork"),
        ],
        "trainer.strategy DDPStrategy (start method 'fork') starts its processes by spawning",
    ),
]


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory, tiny_encoder_dir):
    directory = tmp_path_factory.mktemp("preflight")
    return write_tiny_config(directory, tiny_encoder_dir), directory


@pytest.mark.parametrize(("extra", "message"), MISTAKES, ids=[" ".join(m[0]) for m in MISTAKES])
def test_mistakes_fail_before_anything_heavy_with_one_line(tiny_config, tmp_path, extra, message):
    config, _ = tiny_config
    args = ["fit", "--config", str(config), "--trainer.default_root_dir", str(tmp_path / "run")]
    with pytest.raises((ValueError, OSError)) as error:
        preflight([*args, *extra])
    assert message in str(error.value)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "run").exists()  # nothing left behind by the checks


@pytest.mark.parametrize(
    "extra",
    [
        ["--trainer.strategy", "ddp"],
        ["--trainer.strategy", "DDP"],
        ["--trainer.strategy", "model_parallel"],
        [
            *("--trainer.strategy", "lightning.pytorch.strategies.DDPStrategy"),
            *("--trainer.strategy.init_args.start_method", "popen"),
            *("--trainer.strategy.init_args.find_unused_parameters", "true"),
        ],
        [
            *("--trainer.strategy", "lightning.pytorch.strategies.DDPStrategy"),
            *("--trainer.strategy.init_args.find_unused_parameters", "true"),
        ],
    ],
    ids=["ddp", "upper-case", "model-parallel", "popen", "class-default-start"],
)
def test_strategies_that_start_fresh_processes_pass(tiny_config, tmp_path, extra):
    config, _ = tiny_config
    args = ["fit", "--config", str(config), "--trainer.default_root_dir", str(tmp_path / "run")]
    preflight([*args, *extra])


def test_a_data_file_that_does_not_read_fails_naming_its_line(tiny_config, tmp_path, capsys):
    config, _ = tiny_config
    csv = bad_csv(tmp_path)
    args = ["fit", "--config", str(config), "--trainer.default_root_dir", str(tmp_path / "run")]
    args += ["--data.dataset.format", "tabular", "--data.dataset.path", str(csv)]
    args += ["--data.dataset.options", "{}"]
    with pytest.raises(SystemExit) as stop:
        main(args)
    assert stop.value.code == 2
    (error,) = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert error.startswith("fellrec: error: ") and str(csv) in error and "not-a-time" in error


def test_prepared_data_is_not_read_again(tiny_config, tmp_path, monkeypatch):
    from fellrec.data import pipeline

    config, directory = tiny_config
    args = ["fit", "--config", str(config), "--trainer.default_root_dir", str(tmp_path / "run")]
    preflight(args)  # reads the data (the tiny synthetic catalog)
    settings = next(iter(pipeline._last_read))
    # Prepared once: afterwards the cache holds it and the check trusts it.
    path = directory / "cache" / "data" / f"{settings}.pkl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    monkeypatch.setattr(pipeline, "load_checked_dataset", lambda *_: pytest.fail("read again"))
    preflight(args)


def test_the_checks_need_no_torch_and_take_a_second(tiny_config, tmp_path):
    """In a fresh process: every mistake above, without torch, transformers or Lightning."""
    config, _ = tiny_config
    cases = [
        ["fit", "--config", str(config), "--trainer.default_root_dir", str(tmp_path / "r"), *e]
        for e, _ in MISTAKES
    ]
    script = f"""
import json, sys, time
from fellrec.preflight import class_keys, preflight
seconds = []
for args in json.loads({json.dumps(json.dumps(cases))}):
    started = time.perf_counter()
    try:
        preflight(args)
    except (ValueError, OSError):
        seconds.append(time.perf_counter() - started)
heavy = sorted(m for m in ("torch", "transformers", "lightning", "peft") if m in sys.modules)
print(json.dumps({{"caught": len(seconds), "slowest": max(seconds), "heavy": heavy}}))
"""
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=cli_environment(),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    wall = time.perf_counter() - started
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"caught": len(MISTAKES), "slowest": report["slowest"], "heavy": []}
    assert report["slowest"] < 5.0 and wall < 30.0, (report, wall)


def test_an_unreachable_hub_is_said_at_once(tiny_config, tmp_path, monkeypatch):
    config, _ = tiny_config
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")  # .invalid never resolves
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    args = ["fit", "--config", str(config), "--trainer.default_root_dir", str(tmp_path / "run")]
    started = time.perf_counter()
    with pytest.raises(ValueError, match=r"the hub at hub\.invalid:443 cannot be reached") as error:
        preflight([*args, "--model.backbone", "no-such-org/no-such-model"])
    assert time.perf_counter() - started < 5.0
    assert "neither a packaged alias (minilm, smollm2), nor a local directory" in str(error.value)


def test_a_writable_directory_is_left_as_it_was(tmp_path):
    from fellrec.run_directory import check_writable

    target = tmp_path / "a" / "b" / "run"
    check_writable(target, "trainer.default_root_dir")
    assert not (tmp_path / "a").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(OSError, match=r"trainer.default_root_dir='.*file/run' cannot be written"):
        check_writable(tmp_path / "file" / "run", "trainer.default_root_dir")


@pytest.mark.parametrize(
    "extra",
    [
        [],
        ["--data.dataset.min_rating", "4", "--data.max_train_examples", "100"],
        ["--data.valid_fraction", "0.2", "--data.dataset.options", "{num_users: 80}"],
    ],
)
def test_the_checks_read_the_data_under_the_runs_cache_key(tiny_config, tmp_path, extra):
    """Checks and run must name the prepared data alike, or the run reads it twice."""
    from fellrec.lightning_cli import make_cli
    from fellrec.preflight.settings import check_settings, pipeline_settings

    config, _ = tiny_config
    args = ["--config", str(config), "--trainer.default_root_dir", str(tmp_path / "run"), *extra]
    read = read_command_line(args, CLASSES)
    checked = pipeline_settings(check_settings(read.config, args, "fellrec fit"))
    run = make_cli(args, run=False).datamodule.settings
    assert checked == run and checked.cache_key() == run.cache_key()

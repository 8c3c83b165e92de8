"""Every shipped config parses with the CLI; the MovieLens-100K ones also prepare the real data.

Per-strategy fragments (``<prefix>-<strategy>.yaml`` next to a ``<prefix>-base.yaml``) are checked
the way their headers say to run them: composed after their base file.
"""

from __future__ import annotations

import copy
import gzip
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from fellrec.cli import main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
ALL_CONFIGS = sorted(CONFIGS.glob("*.yaml"))
ML100K_BASE = CONFIGS / "ml100k-minilm-base.yaml"
ML100K_STRATEGIES = {
    "fellrec": "FELLRec",
    "fedavg": "FedAvg",
    "fedprox": "FedProx",
    "local": "Local",
    "centralized": "Centralized",
}
AMAZON = CONFIGS / "amazon-games-recformer.yaml"
#: Stand-ins for the paths a user must supply; --print_config never opens them.
DUMMY_PATH = "/data/dataset"
DUMMY_META = "/data/meta.json.gz"
PATH_REQUIRED = "fellrec: error: data.dataset.path is required"


def base_of(config: Path) -> Path | None:
    """The ``<prefix>-base.yaml`` a per-strategy fragment composes with, if any."""
    stem, _, _ = config.stem.rpartition("-")
    base = config.with_name(f"{stem}-base.yaml")
    return base if stem and base != config and base.is_file() else None


def config_files(config: Path) -> list[Path]:
    """The files to pass, in order, to run ``config``."""
    base = base_of(config)
    return [config] if base is None else [base, config]


def config_args(config: Path) -> list[str]:
    """``--config`` arguments that run ``config``."""
    return [arg for path in config_files(config) for arg in ("--config", str(path))]


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Merge like a later ``--config``: dicts key by key, a new ``class_path`` replaces its dict."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        old = merged.get(key)
        if isinstance(value, dict) and isinstance(old, dict):
            switches_class = "class_path" in value and value["class_path"] != old.get("class_path")
            merged[key] = copy.deepcopy(value) if switches_class else merge(old, value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def file_settings(config: Path) -> dict[str, Any]:
    """What the config's YAML file(s) set, merged."""
    settings: dict[str, Any] = {}
    for path in config_files(config):
        settings = merge(settings, yaml.safe_load(path.read_text()) or {})
    return settings


def required_overrides(settings: dict[str, Any]) -> dict[str, Any]:
    """Stand-in values for the settings a user must supply (data path, Amazon metadata)."""
    dataset = settings.get("data", {}).get("dataset", {})
    overrides: dict[str, Any] = {}
    if dataset.get("format", "synthetic") != "synthetic" and not dataset.get("path"):
        overrides["path"] = DUMMY_PATH
    meta = (dataset.get("options") or {}).get("meta")
    if isinstance(meta, str) and meta.startswith("(required)"):
        overrides["options"] = {"meta": DUMMY_META}
    return {"data": {"dataset": overrides}} if overrides else {}


def override_args(overrides: dict[str, Any], prefix: str = "") -> list[str]:
    """``--a.b value`` arguments for a nested dict of overrides."""
    args: list[str] = []
    for key, value in overrides.items():
        if isinstance(value, dict):
            args += override_args(value, f"{prefix}{key}.")
        else:
            args += [f"--{prefix}{key}", str(value)]
    return args


def assert_contains(expected: Any, actual: Any, where: str = "") -> None:
    """Every value set in ``expected`` appears unchanged in ``actual`` (dicts may add keys)."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{where}: expected a mapping, got {actual!r}"
        for key, value in expected.items():
            assert key in actual, f"{where}.{key} missing from the printed config"
            assert_contains(value, actual[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), f"{where}: {actual!r}"
        for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
            assert_contains(e, a, f"{where}[{i}]")
    else:
        assert actual == expected, f"{where}: the file sets {expected!r}, the CLI read {actual!r}"


def print_config(args: list[str], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    """Run ``fellrec fit ... --print_config`` and return the printed config."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *args, "--print_config"])
    out, err = capsys.readouterr()
    assert exit_info.value.code in (0, None), err
    printed = yaml.safe_load(out)
    assert isinstance(printed, dict), out
    return printed


def test_configs_found() -> None:
    names = {path.name for path in ALL_CONFIGS}
    assert "quickstart.yaml" in names
    assert {AMAZON.name, ML100K_BASE.name} <= names
    assert {f"ml100k-minilm-{name}.yaml" for name in ML100K_STRATEGIES} <= names
    for name in ML100K_STRATEGIES:
        assert base_of(CONFIGS / f"ml100k-minilm-{name}.yaml") == ML100K_BASE


@pytest.mark.parametrize("config", ALL_CONFIGS, ids=lambda path: path.name)
def test_config_parses(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = file_settings(config)
    overrides = required_overrides(settings)
    printed = print_config([*config_args(config), *override_args(overrides)], capsys)
    # Every value the file(s) set reaches the CLI unchanged (catches e.g. a string that
    # jsonargparse would re-read as a YAML mapping).
    assert_contains(merge(settings, overrides), printed, config.stem)
    for section in ("trainer", "model", "data", "loop", "checkpoint"):
        assert section in printed


def test_ml100k_strategies_differ_only_in_strategy(capsys: pytest.CaptureFixture[str]) -> None:
    """The five MovieLens-100K configs compare fairly: same data, seed, budget and training."""
    printed = {}
    for name, cls in ML100K_STRATEGIES.items():
        config = CONFIGS / f"ml100k-minilm-{name}.yaml"
        fragment = yaml.safe_load(config.read_text())
        assert set(fragment) == {"trainer", "loop"}, f"{config.name} sets more than its strategy"
        assert set(fragment["trainer"]) == {"default_root_dir"}
        assert set(fragment["loop"]) == {"strategy"}
        result = print_config([*config_args(config), "--data.dataset.path", DUMMY_PATH], capsys)
        assert result["loop"]["strategy"]["class_path"] == f"fellrec.federation.strategies.{cls}"
        assert result["model"]["strategy"] is None  # the deprecated key stays unset
        assert result["trainer"]["default_root_dir"] == f"runs/ml100k-minilm-{name}"
        result["loop"].pop("strategy")
        result["trainer"].pop("default_root_dir")
        printed[name] = result
    reference = printed.pop("fellrec")
    for name, result in printed.items():
        assert result == reference, f"ml100k-minilm-{name} differs from fellrec beyond the strategy"
    assert reference["data"]["dataset"]["format"] == "movielens"
    assert reference["model"]["backbone"] == "minilm"
    assert reference["data"]["num_clients"] == 5
    assert reference["data"]["partition"] == "kmeans"
    assert reference["data"]["split"] == "temporal"


def test_amazon_mirrors_recformer_reference(capsys: pytest.CaptureFixture[str]) -> None:
    overrides = ["--data.dataset.path", DUMMY_PATH, "--data.dataset.options.meta", DUMMY_META]
    printed = print_config([*config_args(AMAZON), *overrides], capsys)
    model, data, trainer = printed["model"], printed["data"], printed["trainer"]
    assert model["backbone"] == "allenai/longformer-base-4096"
    assert model["lora"]["target_modules"] == ["query", "value"]
    assert model["lr"] == pytest.approx(5e-5)
    strategy = printed["loop"]["strategy"]
    assert strategy["class_path"].endswith(".FELLRec")
    assert strategy["init_args"]["alpha"] == pytest.approx(0.7)
    assert strategy["init_args"]["beta"] == pytest.approx(5.0)
    assert data["dataset"] == {
        "format": "amazon",
        "path": DUMMY_PATH,
        "options": {"meta": DUMMY_META},
        "min_rating": None,
        "kcore": 5,
    }
    assert (data["num_clients"], data["partition"]) == (5, "kmeans")
    assert (data["batch_size"], data["accumulate_grad_batches"], data["local_epochs"]) == (8, 16, 1)
    assert trainer["max_epochs"] == 128
    assert printed["loop"]["selection_metric"] == "recall@5"
    [stopping] = trainer["callbacks"]
    assert stopping["class_path"] == "lightning.pytorch.callbacks.EarlyStopping"
    assert {k: stopping["init_args"][k] for k in ("monitor", "mode", "patience")} == {
        "monitor": "val/recall@5",
        "mode": "max",
        "patience": 5,
    }


# ---------------------------------------------------------------------------- real data
@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data cache for the ML-100K runs: identical data settings must share one preparation."""
    return tmp_path_factory.mktemp("fellrec-cache")


def data_stats(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``fellrec data stats`` and return what it printed."""
    capsys.readouterr()
    main(["data", "stats", *args])
    return capsys.readouterr().out


def check_ml100k_stats(out: str) -> None:
    assert "dataset ml-100k: 943 users, 1682 items, 100000 interactions" in out, out
    found = re.search(r"(\d+) train interactions, (\d+) training examples", out)
    assert found is not None, out
    interactions, windows = (int(v) for v in found.groups())
    # data.window_stride = history_length = 10: windows of 10 tile every user's training
    # sequence, so there is about one window per 10 interactions (plus one partial per user).
    assert (interactions - 943) / 10 <= windows <= (interactions - 943) / 10 + 943, out
    assert re.search(rf"^\s+total\s+943\s+{windows}\s", out, re.MULTILINE), out
    assert "popularity baseline (test):" in out
    recall = re.search(r"recall@5=(\d\.\d+)\s+recall@10=(\d\.\d+)\s+recall@20=(\d\.\d+)", out)
    assert recall is not None, out
    assert re.search(r"ndcg@5=\d\.\d+\s+ndcg@10=\d\.\d+\s+ndcg@20=\d\.\d+", out), out
    r5, r10, r20 = (float(v) for v in recall.groups())
    assert 0.0 < r5 <= r10 <= r20 < 1.0


@pytest.mark.parametrize("name", ["base", *ML100K_STRATEGIES])
def test_ml100k_data_stats(
    name: str,
    ml100k_dir: Path,
    shared_cache: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = CONFIGS / f"ml100k-minilm-{name}.yaml"
    args = [*config_args(config), "--data.dataset.format", "recbole"]
    args += ["--data.dataset.path", str(ml100k_dir), "--data.cache_dir", str(shared_cache)]
    check_ml100k_stats(data_stats(args, capsys))
    # Same data settings in every config: all runs share one prepared (cached) copy of the data.
    assert len(list((shared_cache / "data").glob("*.pkl"))) == 1


def write_grouplens_ml100k(recbole_dir: Path, target: Path) -> Path:
    """Rewrite RecBole's ml-100k atomic files in the GroupLens layout (u.data, u.item, u.user)."""
    from fellrec.data.readers.movielens import ML100K_GENRES

    def rows(name: str) -> list[list[str]]:
        lines = (recbole_dir / f"ml-100k.{name}").read_text(encoding="utf-8").splitlines()
        return [line.split("\t") for line in lines[1:] if line]

    target.mkdir(parents=True, exist_ok=True)
    data = ["\t".join(row) for row in rows("inter")]
    (target / "u.data").write_text("\n".join(data) + "\n", encoding="latin-1")
    items = []
    for item_id, title, year, genres in rows("item"):
        flags = ["1" if genre in genres.split() else "0" for genre in ML100K_GENRES]
        full_title = f"{title} ({year})" if year.isdigit() else title  # as "Toy Story (1995)"
        items.append("|".join([item_id, full_title, "", "", "", *flags]))
    (target / "u.item").write_text("\n".join(items) + "\n", encoding="latin-1")
    users = ["|".join(row) for row in rows("user")]
    (target / "u.user").write_text("\n".join(users) + "\n", encoding="latin-1")
    return target


def test_ml100k_config_reads_grouplens_files(
    ml100k_dir: Path, tmp_path: Path, shared_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The config as shipped (format movielens) on the GroupLens file layout."""
    grouplens = write_grouplens_ml100k(ml100k_dir, tmp_path / "ml-100k")
    args = [*config_args(ML100K_BASE), "--data.dataset.path", str(grouplens)]
    out = data_stats([*args, "--data.cache_dir", str(tmp_path / "cache")], capsys)
    check_ml100k_stats(out)
    recbole = [*config_args(ML100K_BASE), "--data.dataset.format", "recbole"]
    recbole += ["--data.dataset.path", str(ml100k_dir), "--data.cache_dir", str(shared_cache)]
    # Same interactions, so the same split, clients and baseline as the RecBole copy.
    assert data_stats(recbole, capsys) == out


# ---------------------------------------------------------------------------- missing inputs
@pytest.mark.parametrize(
    "config",
    [ML100K_BASE, *(CONFIGS / f"ml100k-minilm-{name}.yaml" for name in ML100K_STRATEGIES), AMAZON],
    ids=lambda path: path.stem,
)
def test_missing_path_is_a_clear_error(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "stats", *config_args(config), "--data.cache_dir", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert PATH_REQUIRED in err, err
    assert "Traceback" not in err


def test_fit_without_path_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``fellrec fit`` as the headers show it, minus the required path."""
    config = CONFIGS / "ml100k-minilm-fellrec.yaml"
    args = [*config_args(config), "--trainer.default_root_dir", str(tmp_path / "run")]
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *args, "--data.cache_dir", str(tmp_path / "cache")])
    assert exit_info.value.code == 2
    assert f"{PATH_REQUIRED} for data.dataset.format='movielens'" in capsys.readouterr().err


def test_amazon_without_meta_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reviews = tmp_path / "Video_Games_5.json"
    reviews.write_text("")
    args = [*config_args(AMAZON), "--data.dataset.path", str(reviews)]
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "stats", *args, "--data.cache_dir", str(tmp_path / "cache")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--data.dataset.options.meta" in err and "file not found" in err, err


def test_amazon_data_settings_on_a_tiny_dump(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The Amazon config's data section (2018 JSON lines + meta, 5-core, k-means) end to end."""
    # Every user reviews 7 games and every game gets >= 7 reviews: the 5-core keeps everything.
    num_users, num_items = 40, 30
    with gzip.open(tmp_path / "Video_Games_5.json.gz", "wt") as handle:
        for user in range(num_users):
            items = [(3 * user + j) % num_items for j in range(7)]
            for step, item in enumerate(items):
                review = {
                    "reviewerID": f"U{user}",
                    "asin": f"B{item:03d}",
                    "unixReviewTime": 1_400_000_000 + 86_400 * (num_users * step + user),
                    "overall": 5.0,
                }
                handle.write(json.dumps(review) + "\n")
    with gzip.open(tmp_path / "meta_Video_Games.json.gz", "wt") as handle:
        for item in range(num_items):
            meta = {
                "asin": f"B{item:03d}",
                "title": f"Game {item}",
                "brand": "Studio",
                "category": ["Video Games", "PC" if item % 2 else "Console"],
            }
            handle.write(json.dumps(meta) + "\n")
    args = [*config_args(AMAZON), "--data.dataset.path", str(tmp_path / "Video_Games_5.json.gz")]
    args += ["--data.dataset.options.meta", str(tmp_path / "meta_Video_Games.json.gz")]
    out = data_stats([*args, "--data.cache_dir", str(tmp_path / "cache")], capsys)
    assert f"{num_users} users, {num_items} items, {num_users * 7} interactions" in out, out
    assert re.search(rf"^\s+total\s+{num_users}\s", out, re.MULTILINE), out
    assert "popularity baseline (test):" in out

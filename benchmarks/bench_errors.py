"""Seconds from ``fellrec fit`` with a mistake to its one-line error, for every kind of mistake.

Each case is a fresh ``fellrec`` process (the console script, as a user runs it) on the
quickstart config with one mistake; the time is its wall time to exit. Every case must end with
exit status 2 and one ``fellrec: error:`` line that says the expected thing.

    HF_HUB_OFFLINE=1 python benchmarks/bench_errors.py [--repeats 3] [--without-preflight]

``--without-preflight`` runs the same cases past the fast checks (``fellrec.cli.main(...,
checked=True)``), as fellrec did before them: the errors then come from the run itself, after
Lightning, transformers and the data have loaded.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
QUICKSTART = REPO / "configs" / "quickstart.yaml"


def cases(work: Path) -> list[tuple[str, list[str], str, dict[str, str]]]:
    """(kind, extra arguments, expected part of the message, environment changes)."""
    (work / "broken.yaml").write_text("model:\n  lr: [0.1\n")
    (work / "list.yaml").write_text("- model\n- data\n")
    (work / "typo.yaml").write_text("data:\n  num_clientz: 3\n")
    interactions = ["user_id,item_id,timestamp"]
    interactions += [f"u{u},i{i},{100 * u + i}" for u in range(30) for i in range(8)]
    interactions.insert(50, "u7,i3,yesterday")
    (work / "interactions.csv").write_text("\n".join(interactions) + "\n")
    occupied = work / "finished-run"
    occupied.mkdir(exist_ok=True)
    (occupied / "results.json").write_text("{}")
    tabular = ["--data.dataset.format", "tabular", "--data.dataset.options", "{}"]
    offline = {"HF_HUB_OFFLINE": "1"}
    unreachable = {
        "HF_HUB_OFFLINE": "",
        "TRANSFORMERS_OFFLINE": "",
        "HF_ENDPOINT": "https://hub.invalid",
    }
    return [
        ("missing config file", ["--config", str(work / "none.yaml")], "no such config file", {}),
        ("YAML syntax error", ["--config", str(work / "broken.yaml")], "(YAML syntax)", {}),
        (
            "config not a mapping",
            ["--config", str(work / "list.yaml")],
            "a mapping of sections",
            {},
        ),
        ("unknown key in a file", ["--config", str(work / "typo.yaml")], "did you mean", {}),
        ("unknown flag", ["--model.lrr", "0.1"], "did you mean '--model.lr'", {}),
        ("unknown strategy argument", ["--loop.strategy.alpah", "1"], "did you mean", {}),
        ("wrong kind of value", ["--data.num_clients", "abc"], "expected an integer", {}),
        ("zero clients", ["--data.num_clients", "0"], "data.num_clients must be >= 1", {}),
        ("negative learning rate", ["--model.lr", "-1"], "model.lr must be > 0", {}),
        ("strategy setting out of range", ["--loop.strategy.alpha", "-1"], "alpha must be > 0", {}),
        ("unknown choice", ["--data.partition", "random"], "data.partition='random'", {}),
        ("unknown metric", ["--loop.selection_metric", "auc"], "selection_metric='auc'", {}),
        ("probability out of range", ["--model.lora.dropout", "1.5"], "in [0, 1)", {}),
        ("more clients than users", ["--data.num_clients", "5000"], "more clients than users", {}),
        ("too many client blocks", ["--model.k_front", "10"], "model.k_front + model.k_back", {}),
        (
            "nonexistent backbone, hub off",
            ["--model.backbone", "no-such-org/no-such-model"],
            "neither a packaged alias",
            offline,
        ),
        (
            "nonexistent backbone, hub unreachable",
            ["--model.backbone", "no-such-org/no-such-model"],
            "cannot be reached",
            unreachable,
        ),
        ("backbone directory missing", ["--model.backbone", "./no/model"], "no such directory", {}),
        ("data path not set", ["--data.dataset.format", "movielens"], "path is required", {}),
        (
            "data directory missing",
            ["--data.dataset.format", "movielens", "--data.dataset.path", str(work / "none")],
            "directory not found",
            {},
        ),
        (
            "bad CSV line",
            [*tabular, "--data.dataset.path", str(work / "interactions.csv")],
            "line 51",
            {},
        ),
        (
            "unwritable output directory",
            ["--trainer.default_root_dir", "/proc/fellrec-run"],
            "trainer.default_root_dir='/proc/fellrec-run' cannot be written",
            {},
        ),
        (
            "another run's directory",
            ["--trainer.default_root_dir", str(occupied)],
            "already holds a run",
            {},
        ),
        ("missing checkpoint", ["--ckpt_path", str(work / "none.ckpt")], "no such checkpoint", {}),
    ]


def run_case(
    extra: list[str], changes: dict[str, str], work: Path, preflight: bool
) -> tuple[float, int, str]:
    """Wall seconds, exit status and the error line of one ``fellrec fit`` with a mistake."""
    args = ["fit", "--config", str(QUICKSTART), "--trainer.default_root_dir", str(work / "run")]
    args += ["--data.cache_dir", str(work / "cache"), *extra]
    script = shutil.which("fellrec") or ""
    if preflight and script:
        command = [script, *args]
    elif preflight:
        command = [sys.executable, "-m", "fellrec", *args]
    else:
        code = "import sys; from fellrec.cli import main; main(sys.argv[1:], checked=True)"
        command = [sys.executable, "-c", code, *args]
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_WAIT_POLICY": "PASSIVE"}
    env.update(changes)
    env = {k: v for k, v in env.items() if v != ""}
    started = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    errors = [line for line in result.stderr.splitlines() if line.startswith("fellrec: error:")]
    return seconds, result.returncode, errors[-1] if errors else result.stderr[-300:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--without-preflight", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the measurements here")
    options = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="fellrec-bench-errors-") as tmp:
        work = Path(tmp)
        for kind, extra, expected, changes in cases(work):
            seconds = []
            for _ in range(options.repeats):
                elapsed, status, line = run_case(
                    extra, changes, work, not options.without_preflight
                )
                seconds.append(elapsed)
            ok = status == 2 and expected in line
            rows.append({"kind": kind, "seconds": seconds, "ok": ok, "error": line})
            print(
                f"{kind:38} {statistics.median(seconds):6.2f} s {'' if ok else 'UNEXPECTED: '}"
                f"{line[:110]}",
                flush=True,
            )
    slowest = max(statistics.median(r["seconds"]) for r in rows)
    print(
        f"{len(rows)} kinds, slowest median {slowest:.2f} s, all as expected: "
        f"{all(r['ok'] for r in rows)}"
    )
    if options.json:
        options.json.write_text(json.dumps(rows, indent=1))
    if not all(r["ok"] for r in rows):
        raise SystemExit(1)


if __name__ == "__main__":
    main()

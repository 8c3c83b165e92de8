"""What the sequential recipe costs against the paper's encoder, measured side by side.

Two measurements, each alternating the two recommenders so that machine noise hits both:

1. **The quickstart as a whole process** (``fellrec fit --config configs/quickstart.yaml``, 3
   rounds of 5 clients with validation and test): the sequential recommender (the config as
   shipped) against ``--model.recommender encoder`` (the RecFormer-style encoder): wall and CPU
   seconds, peak RSS and test NDCG@10.
2. **One training step on MovieLens-100K** (leave-one-out, one client's adapter, MiniLM, split
   1/1): a step of the sequential recommender (64 windows of 10 item tokens = 640 next-item
   targets) against a step of the encoder (16 histories rendered as text, ~100 tokens each, one
   target each, the catalog table encoded once beforehand as in a round): milliseconds per step
   and per target, tokens per step::

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_recipe_cost.py --repeats 3 --steps 20
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench_quickstart import run_once
from federation_run import quiet
from fellrec.data.fetch import fetch_ml100k
from fellrec.data.pipeline import DatasetSettings
from fellrec.training.batches.datamodule import FederatedDataModule
from fellrec.training.host.federated_module import FederatedModule

REPO = Path(__file__).resolve().parent.parent
QUICKSTART = REPO / "configs" / "quickstart.yaml"
RECOMMENDERS = {"sequential": [], "encoder": ["--model.recommender", "encoder"]}


def quickstart(repeats: int) -> None:
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in RECOMMENDERS}
    with tempfile.TemporaryDirectory(prefix="fellrec-recipe-cost-") as tmp:
        work = Path(tmp)
        for repeat in range(repeats):
            for name, extra in RECOMMENDERS.items():
                root = work / f"{name}-{repeat}"
                args = [*extra, "--trainer.enable_progress_bar", "false"]
                figures = run_once(QUICKSTART, root, work / f"{name}-{repeat}.log", None, args)
                runs[name].append(figures)
                print(f"  {name} run {repeat}: {figures['wall_s']:.1f} s", flush=True)
    print("\nquickstart (median of", repeats, "runs each)")
    print("| recommender | wall s | CPU s | peak RSS MiB | test NDCG@10 |")
    print("|---|---|---|---|---|")
    for name, values in runs.items():

        def median(key: str, rows: list[dict[str, float]] = values) -> float:
            return statistics.median(row[key] for row in rows)

        cpu = statistics.median(row["user_s"] + row["sys_s"] for row in values)
        print(
            f"| {name} | {median('wall_s'):.1f} | {cpu:.1f} | {median('peak_mib'):.0f} | "
            f"{median('test_ndcg10'):.4f} |"
        )
    ratio = statistics.median(r["wall_s"] for r in runs["sequential"]) / statistics.median(
        r["wall_s"] for r in runs["encoder"]
    )
    print(f"sequential / encoder wall: {ratio:.2f}")


def _module(recommender: str, cache: Path, data_dir: Path) -> tuple[FederatedModule, dict]:
    stride, batch = (10, 64) if recommender == "sequential" else (1, 16)
    data = FederatedDataModule(
        dataset=DatasetSettings(format="recbole", path=str(data_dir)),
        split="leave_one_out",
        history_length=10,
        window_stride=stride,
        max_train_examples=None,
        num_clients=1,
        partition="iid",
        batch_size=batch,
        cache_dir=str(cache),
    )
    data.setup("fit")
    model = FederatedModule(
        recommender=recommender, lr=1e-3, max_history_tokens=128, max_item_tokens=32
    )
    model.build(data)
    rng = np.random.default_rng(0)
    rows = rng.choice(len(data.data.examples), size=batch, replace=False)
    batch_data = {
        "histories": torch.from_numpy(data.data.examples.histories[rows]),
        "targets": torch.from_numpy(data.data.examples.targets[rows]),
    }
    return model, batch_data


def training_steps(steps: int, cache: Path) -> None:
    data_dir = fetch_ml100k(cache / "data")
    built = {name: _module(name, cache / "cache", data_dir) for name in RECOMMENDERS}
    optimizers = {}
    for name, (model, _) in built.items():
        assert model.adapters is not None and model.backend is not None
        model.adapters.model.train()
        model.backend.prepare(0)  # the encoder's round table, encoded once as in a round
        optimizers[name] = torch.optim.AdamW(model._param_groups(0))
    times: dict[str, list[float]] = {name: [] for name in RECOMMENDERS}
    for step in range(steps + 2):
        for name, (model, batch) in built.items():
            assert model.backend is not None
            started = time.perf_counter()
            losses = model.backend.losses(0, batch["histories"], batch["targets"], None)
            losses.mean().backward()
            optimizers[name].step()
            optimizers[name].zero_grad()
            if step >= 2:  # two warm-up steps
                times[name].append(time.perf_counter() - started)
    print(f"\none training step on MovieLens-100K (median of {steps}, interleaved)")
    print("| recommender | batch | targets | tokens | ms / step | ms / target |")
    print("|---|---|---|---|---|---|")
    for name, (model, batch) in built.items():
        histories = batch["histories"]
        real = int((histories >= 0).sum())
        targets = real if name == "sequential" else len(histories)
        if name == "sequential":
            tokens = real
        else:
            renderer = model.recommender.renderer  # the encoder's history renderer
            ids, _ = renderer.render_histories(histories)
            tokens = int((ids != renderer.pad_id).sum())
        milliseconds = 1000 * statistics.median(times[name])
        print(
            f"| {name} | {len(histories)} | {targets} | {tokens} | {milliseconds:.0f} | "
            f"{milliseconds / targets:.2f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="quickstart runs per recommender")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps each")
    parser.add_argument("--cache", type=Path, default=Path("runs/recipe-cost"))
    parser.add_argument("--skip-quickstart", action="store_true")
    options = parser.parse_args()
    quiet()
    if not options.skip_quickstart:
        quickstart(options.repeats)
    training_steps(options.steps, options.cache)


if __name__ == "__main__":
    main()

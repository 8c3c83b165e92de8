"""Where a training step of the MovieLens-100K recipe spends its time, and how far from the CPU.

Three measurements, each on MovieLens-100K leave-one-out with the recipe's model (MiniLM read as
item tokens, split 1/1, LoRA r=8 on query/value, ID rows + title vectors + biases + learned
temperature, 64 windows of 10 item tokens per step = 640 next-item targets over the 1682-item
catalog), one client holding a random batch of the training windows:

1. **The hardware's limit**: torch matmul at the recipe's FFN shape (640x384 @ 384x1536) in fp32
   and bf16, and the step's FLOPs counted by ``torch.utils.flop_counter`` (forward + backward).
2. **Step time, side by side**: every (source tree, precision) pair runs in its own process,
   alternating, ``--repeats`` times; the median step of each run, its FLOP/s, and how far that is
   from the bf16 limit. ``--baseline-src`` adds an older checkout's ``src`` for ratios.
3. **Where the time goes** (``--profile``): one process under ``torch.profiler``; every op's own
   CPU time is charged to the part of the model it ran for (backward ops to the part whose
   forward created them, through autograd's sequence numbers): item-vector assembly, the
   backbone's matmuls / attention / dropout / the rest (layer norms, GELU, adds), LoRA's extra
   matmuls, full-catalog scoring, softmax + loss, the optimizer.

    OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1 python benchmarks/bench_train_step.py \\
        --precision 32-true bf16-mixed --repeats 3 --profile [--baseline-src /tmp/old/src]

The per-round parts (Lightning's per-step overhead, collation, validation, aggregation) come
from a real ``fellrec fit`` round: ``benchmarks/README.md`` gives that command beside the table.
``--fit-round-ddp`` times that round in one process against two DDP processes (gloo, one OpenMP
thread each), alternating ``--repeats`` times.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
PRECISIONS = {"32-true": None, "bf16-mixed": torch.bfloat16}
#: The recipe's FFN shape: 64 windows x 10 tokens by MiniLM's hidden and intermediate sizes.
FFN_SHAPE = (640, 384, 1536)


def sync(device: str) -> None:
    """Wait for the device's queued work (timings on a GPU)."""
    if device == "cuda":
        torch.cuda.synchronize()


def matmul_limit(dtype: torch.dtype, device: str, repeats: int = 50) -> float:
    """GFLOP/s of torch matmul in ``dtype`` (median of ``repeats``).

    On the CPU at :data:`FFN_SHAPE`; on a GPU at 8192^3, where its matrix units run at their peak
    (the recipe's shapes are too small to fill a GPU: that is part of what the table shows).
    """
    m, k, n = FFN_SHAPE if device == "cpu" else (8192, 8192, 8192)
    a = torch.randn(m, k, dtype=dtype, device=device)
    b = torch.randn(k, n, dtype=dtype, device=device)
    for _ in range(5):
        a @ b
    times = []
    for _ in range(repeats):
        sync(device)
        started = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - started)
    return 2 * m * k * n / statistics.median(times) / 1e9


# ---------------------------------------------------------------------------------- one process
def build_step(
    cache: Path, device: str = "cpu", backbone: str = "minilm", base_dropout: float | None = None
) -> tuple[Any, Callable[[torch.dtype | None], torch.Tensor], Any]:
    """The recipe's module on one ML-100K client, a function running one step, the data."""
    import numpy as np

    from fellrec.data.fetch import fetch_ml100k
    from fellrec.data.pipeline import DatasetSettings
    from fellrec.models.item_components import ItemSettings
    from fellrec.training.batches.datamodule import FederatedDataModule
    from fellrec.training.host.federated_module import FederatedModule

    data = FederatedDataModule(
        dataset=DatasetSettings(format="recbole", path=str(fetch_ml100k(cache / "data"))),
        split="leave_one_out",
        history_length=10,
        window_stride=10,
        num_clients=1,
        partition="iid",
        batch_size=64,
        cache_dir=str(cache / "cache"),
    )
    data.setup("fit")
    items = ItemSettings(ids=True, text=True, bias=True, bias_init="log_popularity", lr=0.005)
    module = FederatedModule(
        backbone=backbone,
        recommender="sequential",
        lr=1e-3,
        max_item_tokens=32,
        items=items,
        temperature=0.2,
        # Only when asked: a baseline checkout may predate model.base_dropout.
        **({} if base_dropout is None else {"base_dropout": base_dropout}),
    )
    module.build(data)
    module.to(device)
    assert module.adapters is not None and module.backend is not None
    module.adapters.model.train()
    rows = np.random.default_rng(0).choice(len(data.data.examples), size=64, replace=False)
    histories = torch.from_numpy(data.data.examples.histories[rows])
    targets = torch.from_numpy(data.data.examples.targets[rows])
    optimizer = torch.optim.AdamW(module._param_groups(0))
    backend = module.backend

    def step(dtype: torch.dtype | None) -> torch.Tensor:
        with torch.autocast(device, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            loss = backend.losses(0, histories, targets, None).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        return loss.detach()

    return module, step, data


def plain_peft_step(
    module: Any, data: Any, device: str = "cpu", backbone: str = "minilm"
) -> Callable[[torch.dtype | None], torch.Tensor]:
    """The same model and batch as a plain transformers + peft loop: no split, no federation.

    A fresh MiniLM with peft's LoRA (the recipe's r, alpha, dropout and targets), fed the same
    item vectors (frozen title vectors + trainable ID rows) as ``inputs_embeds`` under the same
    causal mask, scored against the catalog the same way: the floor fellrec's step is compared
    with (its split seam, client slots, planned batches and bookkeeping cost the difference).
    """
    import numpy as np
    import torch.nn.functional as F
    from peft import get_peft_model

    from fellrec.models.adapters import LoRASettings
    from fellrec.models.attention_masks import decoder_allowed, sdpa_mask
    from fellrec.models.backbone import load_encoder
    from fellrec.models.sequential import next_item_targets
    from fellrec.models.split_support import split_family

    model, _ = load_encoder(backbone)
    base_dropout = getattr(module, "base_dropout", None)
    if base_dropout is not None:
        from fellrec.models.backbone import set_dropout

        set_dropout(model, base_dropout)  # the same model as fellrec's step
    model = get_peft_model(model, LoRASettings().to_peft(model.config.model_type))
    model.to(device).train()
    decoder = split_family(model) == "decoder"
    text = module.recommender.text_table
    items = module.recommender.active_items
    ids = torch.nn.Parameter(items.id_embedding.detach().clone())
    bias = torch.nn.Parameter(items.bias.detach().clone())
    log_scale = torch.nn.Parameter(items.log_scale.detach().clone())
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [{"params": trainable}, {"params": [ids, bias, log_scale], "lr": 0.005}], lr=1e-3
    )
    examples = data.data.examples
    rows = np.random.default_rng(0).choice(len(examples), size=64, replace=False)  # build_step's
    histories = torch.from_numpy(examples.histories[rows]).to(device)
    targets = torch.from_numpy(examples.targets[rows]).to(device)

    def step(dtype: torch.dtype | None) -> torch.Tensor:
        with torch.autocast(device, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            real = histories >= 0
            tokens = histories.clamp(min=0)
            vectors = text[tokens] + ids[tokens]
            # A decoder masks causally itself; an encoder gets the causal mask as fellrec's.
            mask = real.long() if decoder else sdpa_mask(decoder_allowed(real.long()))
            states = model(inputs_embeds=vectors, attention_mask=mask).last_hidden_state
            labels = next_item_targets(histories, targets)
            at = labels >= 0
            users = F.normalize(states[at].float(), dim=-1) * log_scale.exp()
            catalog = F.normalize((text + ids).float(), dim=-1)
            logits = torch.addmm(bias, users, catalog.T)
            loss = F.cross_entropy(logits, labels[at])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        return loss.detach()

    return step


def step_flops(step: Callable[[torch.dtype | None], torch.Tensor]) -> int:
    """FLOPs of one fp32 step (forward, backward, optimizer), counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step(None)
    return int(counter.get_total_flops())


def timed(
    step: Callable[[torch.dtype | None], torch.Tensor], dtype: Any, steps: int, device: str
) -> float:
    """Median seconds of ``steps`` steps after two warm-up steps."""
    for _ in range(2):
        step(dtype)
    times = []
    for _ in range(steps):
        sync(device)
        started = time.perf_counter()
        step(dtype)
        sync(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def worker(
    precision: str,
    steps: int,
    cache: Path,
    device: str,
    backbone: str,
    base_dropout: float | None = None,
) -> dict[str, float]:
    """Median step times (fellrec's, the plain loop's), counted FLOPs, collation per batch."""
    module, step, data = build_step(cache, device, backbone, base_dropout)
    dtype = PRECISIONS[precision]
    step_s = timed(step, dtype, steps, device)
    started = time.perf_counter()
    batches = sum(1 for _ in data.train_dataloader())  # a round's batches, made and collated
    collate_s = (time.perf_counter() - started) / batches
    plain_s = timed(plain_peft_step(module, data, device, backbone), dtype, steps, device)
    return {
        "step_s": step_s,
        "plain_step_s": plain_s,
        "flops": float(step_flops(step)),
        "windows": float(len(data.data.examples)),
        "collate_s": collate_s,
    }


# ---------------------------------------------------------------------------------- profile
#: (scope, op-name test) -> the part it is charged to, first match wins, within a scope.
_MATMULS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear")


def _category(scope: str, name: str) -> str:
    if scope == "backbone":
        if name in _MATMULS[:2]:
            return "backbone matmuls (frozen)"
        if "softmax" in name or name in ("aten::bmm", "aten::baddbmm") or "attention" in name:
            return "attention (scores, softmax, mix)"
        return "backbone other (layer norm, GELU, adds, copies)"
    return scope


@contextmanager
def _scoped(owner: Any, attribute: str, scope: str) -> Iterator[None]:
    """Run ``owner.attribute`` (a callable) inside ``record_function(scope)`` for a while."""
    original = getattr(owner, attribute)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with torch.profiler.record_function(f"part:{scope}"):
            return original(*args, **kwargs)

    setattr(owner, attribute, wrapped)
    try:
        yield
    finally:
        setattr(owner, attribute, original)


def profile(
    precision: str, steps: int, cache: Path, device: str = "cpu", backbone: str = "minilm"
) -> tuple[dict[str, float], dict[tuple[str, str], float]]:
    """Seconds per step charged to each part of the model (see the module docstring).

    On a GPU the seconds are the kernels' device time, charged to the op that launched them.

    Returns:
        Seconds per step of each part, and of each (part, op) pair.
    """
    from contextlib import ExitStack

    import torch.nn.functional as F

    from fellrec.models.item_components import ItemComponents
    from fellrec.models.sequential import SequentialRecommender
    from fellrec.models.split import SplitModel

    module, step, _ = build_step(cache, device, backbone)
    dtype = PRECISIONS[precision]
    with ExitStack() as stack:
        stack.enter_context(_scoped(SequentialRecommender, "item_vectors", "item vectors"))
        stack.enter_context(_scoped(ItemComponents, "logits", "full-catalog scoring"))
        stack.enter_context(_scoped(F, "cross_entropy", "softmax + loss"))
        for name in ("front", "middle", "back"):
            stack.enter_context(_scoped(SplitModel, name, "backbone"))
        for name, layer in module.adapters.model.named_modules():
            if name.rsplit(".", 1)[-1] in ("lora_A", "lora_B", "lora_dropout"):
                for part in layer.modules():
                    if not list(part.children()):
                        stack.enter_context(_scoped(part, "forward", "LoRA (extra matmuls)"))
            elif isinstance(layer, torch.nn.Dropout):
                stack.enter_context(_scoped(layer, "forward", "dropout"))
        optimizer_cls = torch.optim.AdamW
        stack.enter_context(_scoped(optimizer_cls, "zero_grad", "optimizer"))
        for _ in range(2):
            step(dtype)
        activities = [torch.profiler.ProfilerActivity.CPU]
        if device == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.profiler.profile(activities=activities) as prof:
            for _ in range(steps):
                step(dtype)
    events = list(prof.events())
    forward_scope: dict[int, str] = {}

    def scope_of(event: Any) -> str | None:
        node = event
        while node is not None:
            if node.name.startswith("part:"):
                return str(node.name[5:])
            if node.name.startswith("Optimizer.step"):
                return "optimizer"
            if node.name.startswith("autograd::engine::evaluate_function"):
                return forward_scope.get(node.sequence_nr, "backward, unattributed")
            node = node.cpu_parent
        return None

    for event in events:  # forward ops first: the scopes their autograd nodes inherit
        if event.sequence_nr >= 0 and not event.name.startswith("autograd::"):
            scope = scope_of(event)
            if scope is not None:
                forward_scope.setdefault(event.sequence_nr, scope)
    seconds: dict[str, float] = defaultdict(float)
    ops: dict[tuple[str, str], float] = defaultdict(float)
    for event in events:
        if event.name.startswith(("part:", "Optimizer.", "autograd::engine")):
            continue
        scope = scope_of(event) or "outside the parts (autograd glue, casts)"
        part = _category(scope, event.name)
        spent = event.self_device_time_total if device == "cuda" else event.self_cpu_time_total
        seconds[part] += spent / 1e6 / steps
        ops[part, event.name] += spent / 1e6 / steps
    return dict(seconds), dict(ops)


# ---------------------------------------------------------------------------------- driver
def run_worker(
    src: Path, precision: str, options: argparse.Namespace, extra: list[str]
) -> dict[str, float]:
    """One timing process with ``src`` first on its path and ``extra`` worker arguments."""
    env = dict(os.environ, PYTHONPATH=f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    command = [sys.executable, __file__, "--worker", precision, "--steps", str(options.steps)]
    command += ["--cache", str(options.cache), "--device", options.device]
    command += ["--backbone", options.backbone, *extra]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"worker failed ({src}, {precision}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


#: ``fellrec fit`` flags of two data-parallel processes on the CPU (one OpenMP thread each).
DDP_ON_CPU = ["--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.accelerator", "cpu"]


def fit_round(
    precision: str, work: Path, data_dir: Path, extra: Sequence[str] = ()
) -> dict[str, float]:
    """One round of the recipe by ``fellrec fit`` (every training window, 5 k-means clients).

    ``extra`` flags are added to the command (e.g. :data:`DDP_ON_CPU`).
    """
    work.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix=f"round-{precision}-", dir=work))  # a run of its own
    command = [
        sys.executable, "-m", "fellrec", "fit", "--config",
        str(REPO / "configs" / "ml100k-minilm-base.yaml"),
        "--data.dataset.format", "recbole", "--data.dataset.path", str(data_dir),
        "--data.split", "leave_one_out", "--trainer.max_epochs", "1",
        "--model.privacy_probe", "false", "--trainer.enable_progress_bar", "false",
        "--trainer.precision", precision, "--trainer.default_root_dir", str(root), *extra,
    ]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"fellrec fit failed ({precision}):\n{done.stderr[-3000:]}")
    results = json.loads((root / "results.json").read_text())
    history = results["history"][0]
    return {
        "train_s": history["train_seconds"],
        "round_s": history["seconds"],
        "microbatches": results["resources"]["measured"]["training_microbatches"],
        "wall_s": wall,
        "test_ndcg10": results["overall"]["ndcg@10"],
    }


def ddp_rounds(precisions: Sequence[str], repeats: int, work: Path, data_dir: Path) -> None:
    """Print one round in 1 process against 2 DDP processes, alternating (medians, ratio)."""
    layouts = {"1 process": [], "2 DDP processes": DDP_ON_CPU}
    print(
        "\n| precision | layout | the round s | training s | the whole process s | test NDCG@10 |"
    )
    print("|---|---|---|---|---|---|")
    for precision in precisions:
        fits: dict[str, list[dict[str, float]]] = defaultdict(list)
        for _ in range(repeats):
            for name, extra in layouts.items():
                fits[name].append(fit_round(precision, work, data_dir, extra))
        medians = {}
        for name, runs in fits.items():
            figures = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
            medians[name] = figures
            print(
                f"| {precision} | {name} | {figures['round_s']:.1f} | {figures['train_s']:.1f} | "
                f"{figures['wall_s']:.1f} | {figures['test_ndcg10']:.4f} |"
            )
        one, two = medians["1 process"], medians["2 DDP processes"]
        print(
            f"| {precision} | 2 DDP / 1 | {two['round_s'] / one['round_s']:.2f} | "
            f"{two['train_s'] / one['train_s']:.2f} | {two['wall_s'] / one['wall_s']:.2f} | |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--precision", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per process")
    parser.add_argument("--repeats", type=int, default=3, help="processes per variant")
    parser.add_argument("--baseline-src", type=Path, help="an older checkout's src directory")
    parser.add_argument("--profile", action="store_true", help="the per-part table too")
    parser.add_argument(
        "--fit-round", action="store_true", help="one real `fellrec fit` round per precision too"
    )
    parser.add_argument(
        "--fit-round-ddp",
        action="store_true",
        help="one round in 1 process and in 2 DDP processes, alternating, --repeats times each",
    )
    parser.add_argument("--ops", type=int, default=0, help="with --profile: top ops per part")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--backbone", default="minilm", help="the sequential recommender's (minilm, smollm2)"
    )
    parser.add_argument("--cache", type=Path, default=Path("runs/train-step"))
    parser.add_argument(
        "--base-dropout-variant",
        type=float,
        help="also time the current code with model.base_dropout set to this",
    )
    parser.add_argument("--base-dropout", type=float, help=argparse.SUPPRESS)  # a worker's
    parser.add_argument("--worker", choices=PRECISIONS, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.worker:
        figures = worker(
            options.worker,
            options.steps,
            options.cache,
            options.device,
            options.backbone,
            options.base_dropout,
        )
        print(json.dumps(figures))
        return
    limits = {
        "fp32": matmul_limit(torch.float32, options.device),
        "bf16": matmul_limit(torch.bfloat16, options.device),
    }
    print(f"torch matmul {FFN_SHAPE}, {torch.get_num_threads()} threads: ", end="")
    print(", ".join(f"{name} {value:.0f} GFLOP/s" for name, value in limits.items()))
    sources: dict[str, tuple[Path, list[str]]] = {"current": (REPO / "src", [])}
    if options.baseline_src:
        sources["baseline"] = (options.baseline_src.resolve(), [])
    if options.base_dropout_variant is not None:
        variant = str(options.base_dropout_variant)
        sources[f"current, base_dropout {variant}"] = (REPO / "src", ["--base-dropout", variant])
    runs: dict[tuple[str, str], list[dict[str, float]]] = defaultdict(list)
    for repeat in range(options.repeats):
        for precision in options.precision:
            for name, (src, extra) in sources.items():
                figures = run_worker(src, precision, options, extra)
                runs[name, precision].append(figures)
                print(f"  {name} {precision} run {repeat}: {figures['step_s']:.3f} s/step")
    print(
        "\n| source | precision | s / step (median of runs) | GFLOP / step | GFLOP/s | "
        "x bf16 limit | plain transformers + peft s / step | fellrec / plain steps per s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    medians = {}
    for (name, precision), figures in runs.items():
        seconds = statistics.median(f["step_s"] for f in figures)
        flops = figures[0]["flops"] / 1e9
        medians[name, precision] = seconds
        rate = flops / seconds
        plain = statistics.median(f["plain_step_s"] for f in figures)
        print(
            f"| {name} | {precision} | {seconds:.3f} | {flops:.1f} | {rate:.0f} | "
            f"{limits['bf16'] / rate:.1f} | {plain:.3f} | {plain / seconds:.2f} |"
        )
    for precision in options.precision:
        for name in sources:
            if name != "current":
                ratio = medians["current", precision] / medians[name, precision]
                print(f"step time, current / {name}, {precision}: {ratio:.2f}")
    if {"32-true", "bf16-mixed"} <= set(options.precision):
        ratio = medians["current", "bf16-mixed"] / medians["current", "32-true"]
        print(f"step time, current, bf16-mixed / 32-true: {ratio:.2f}")
    rounds_asked = options.fit_round or options.fit_round_ddp
    if rounds_asked and (options.device, options.backbone) != ("cpu", "minilm"):
        raise SystemExit(
            "--fit-round and --fit-round-ddp run the CPU recipe (--device cpu --backbone minilm)"
        )
    if rounds_asked:
        from fellrec.data.fetch import fetch_ml100k

        data_dir = fetch_ml100k(options.cache / "data")
    if options.fit_round:
        print("\n| precision | part of one round | s | share |")
        print("|---|---|---|---|")
        for precision in options.precision:
            figures = runs["current", precision][0]
            fit = fit_round(precision, options.cache, data_dir)
            steps = figures["windows"] / 64 * medians["current", precision]
            collation = figures["collate_s"] * fit["microbatches"]
            parts = {
                "training steps (the bench's step time x full batches)": steps,
                "Lightning and the loop per step (collation included)": fit["train_s"] - steps,
                "  of which collation": collation,
                "validation (943 users) + aggregation": fit["round_s"] - fit["train_s"],
            }
            for part, value in parts.items():
                share = value / fit["round_s"]
                print(f"| {precision} | {part} | {value:.1f} | {share:.0%} |")
            print(f"| {precision} | the round | {fit['round_s']:.1f} | |")
            print(
                f"| {precision} | the whole process (load, round, test, plots) | "
                f"{fit['wall_s']:.1f} | test NDCG@10 {fit['test_ndcg10']:.4f} |"
            )
    if options.fit_round_ddp:
        ddp_rounds(options.precision, options.repeats, options.cache, data_dir)
    if options.profile:
        for precision in options.precision:
            parts, ops = profile(
                precision, options.steps, options.cache, options.device, options.backbone
            )
            total = sum(parts.values())
            print(f"\nwhere a {precision} step's CPU time goes ({total:.3f} s of op time / step)")
            print("| part | s / step | share |")
            print("|---|---|---|")
            for part, value in sorted(parts.items(), key=lambda kv: -kv[1]):
                print(f"| {part} | {value:.3f} | {value / total:.0%} |")
            for part in parts if options.ops else ():
                top = sorted(((v, op) for (p, op), v in ops.items() if p == part), reverse=True)
                listed = ", ".join(f"{op} {1000 * v:.1f}" for v, op in top[: options.ops])
                print(f"  {part} (ms / step): {listed}")


if __name__ == "__main__":
    main()

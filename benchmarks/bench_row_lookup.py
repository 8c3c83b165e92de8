"""Cost of the reproducible item-row lookup: ``rows_of`` (F.embedding) vs plain indexing.

Forward and backward of the ID-embedding lookup at the ML-100K recipe's shapes (a batch of 64
windows of 10 items, 1682 x 384 table), interleaved repeats, on the current thread count; prints
min/median/max per variant and the per-repeat ratio. Also reports whether each variant's gradient
is the same bit for bit across repeats (plain indexing sums repeated rows with atomic adds when
several threads run)::

    python benchmarks/bench_row_lookup.py --repeats 7 --steps 200
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from fellrec.models.item_components import rows_of

Lookup = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
VARIANTS: dict[str, Lookup] = {
    "indexing": lambda table, items: table[items],
    "rows_of": rows_of,
}


def run(lookup: Lookup, table: torch.Tensor, batches: list[torch.Tensor], upstream: torch.Tensor):
    """Seconds for forward + backward over ``batches``, and the last gradient."""
    started = time.perf_counter()
    for items in batches:
        table.grad = None
        (lookup(table, items) * upstream).sum().backward()
    assert table.grad is not None
    return time.perf_counter() - started, table.grad.clone()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--items", type=int, default=1682)
    parser.add_argument("--width", type=int, default=384)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--history", type=int, default=10)
    options = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    table = torch.randn(options.items, options.width, generator=generator, requires_grad=True)
    # Popular items repeat within a batch, as on ML-100K: draw from a Zipf-like distribution.
    weights = 1.0 / torch.arange(1, options.items + 1, dtype=torch.float64)
    batches = [
        torch.multinomial(weights, options.batch * options.history, True, generator=generator).view(
            options.batch, options.history
        )
        for _ in range(options.steps)
    ]
    upstream = torch.randn(options.batch, options.history, options.width, generator=generator)
    seconds: dict[str, list[float]] = {name: [] for name in VARIANTS}
    gradients: dict[str, set[bytes]] = {name: set() for name in VARIANTS}
    for _ in range(options.repeats):
        for name, lookup in VARIANTS.items():
            elapsed, grad = run(lookup, table, batches, upstream)
            seconds[name].append(elapsed)
            gradients[name].add(grad.numpy().tobytes())
    print(f"threads {torch.get_num_threads()}, {options.steps} steps per repeat")
    for name, values in seconds.items():
        per_step = [1000 * v / options.steps for v in values]
        print(
            f"{name:9s} ms/step min {min(per_step):.3f} median {statistics.median(per_step):.3f} "
            f"max {max(per_step):.3f}; distinct last gradients over repeats: {len(gradients[name])}"
        )
    ratios = [a / b for a, b in zip(seconds["rows_of"], seconds["indexing"], strict=True)]
    print("rows_of / indexing per repeat: " + ", ".join(f"{r:.2f}" for r in ratios))


if __name__ == "__main__":
    main()

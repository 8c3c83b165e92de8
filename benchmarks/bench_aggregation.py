"""Time FELLRec's personalized aggregation at LLaMA-7B LoRA scale.

Default size: 100 clients x 4.2M parameters, i.e. LoRA r=8 on q_proj/v_proj of LLaMA-7B
(32 layers x 2 modules x (8x4096 + 4096x8) = 4,194,304). Each repeat runs the round-boundary path
flatten -> similarity -> loss distribution -> heating -> personalized aggregate (Jacobi, in place
unless --copy) and the script prints the median of each stage and the peak RSS.

    python benchmarks/bench_aggregation.py --clients 100 --params 4_200_000 --repeats 3 --threads 2
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time

import torch

from fellrec.federation.aggregation import (
    adapter_similarity,
    heating_weights,
    loss_distribution,
    personalized_aggregate,
)

#: One LoRA matrix of LLaMA-7B with r=8 (8 x 4096 or 4096 x 8).
_CHUNK = 8 * 4096


def make_states(clients: int, params: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """Random LoRA-like state dicts with ``params`` parameters per client."""
    generator = torch.Generator().manual_seed(seed)
    sizes = [_CHUNK] * (params // _CHUNK) + ([params % _CHUNK] if params % _CHUNK else [])
    states = []
    for _ in range(clients):
        state = {
            f"layers.{i:03d}.lora": torch.randn(size, generator=generator).mul_(0.01)
            for i, size in enumerate(sizes)
        }
        states.append(state)
    return states


def flatten_states(states: list[dict[str, torch.Tensor]]) -> torch.Tensor:
    """The clients' state dicts as one ``(N, P)`` matrix, keys in sorted order.

    What a host does at a round boundary (``ClientAdapters.get_matrix`` stacks each client's
    parameters): one copy of every client's values into the matrix, no per-client temporary.
    """
    keys = sorted(states[0])
    sizes = [states[0][key].numel() for key in keys]
    theta = torch.empty(len(states), sum(sizes), dtype=states[0][keys[0]].dtype)  # (N, P)
    for index, state in enumerate(states):
        offset = 0
        for key, size in zip(keys, sizes, strict=True):
            theta[index, offset : offset + size].copy_(state[key].detach().reshape(-1))
            offset += size
    return theta


def peak_rss_gib() -> float:
    """Peak resident set size of this process in GiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**30 if sys.platform == "darwin" else peak / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--params", type=int, default=4_200_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--round", type=int, default=0, dest="round_index")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--copy",
        action="store_true",
        help="allocate a new result matrix instead of aggregating in place (one more 1.7 GB copy)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    states = make_states(args.clients, args.params, args.seed)
    losses = 1.0 + 0.1 * torch.rand(args.clients, generator=torch.Generator().manual_seed(1))
    rss_inputs = peak_rss_gib()
    timings: dict[str, list[float]] = {"flatten": [], "aggregate": [], "total": []}
    for _ in range(args.repeats):
        start = time.perf_counter()
        theta = flatten_states(states)  # (N, P)
        flat = time.perf_counter()
        similarity = adapter_similarity(theta)  # (N, N)
        weights = heating_weights(loss_distribution(losses), args.round_index)  # (N,)
        result = personalized_aggregate(theta, similarity, weights, inplace=not args.copy)
        end = time.perf_counter()
        timings["flatten"].append(flat - start)
        timings["aggregate"].append(end - flat)
        timings["total"].append(end - start)
        del theta, result

    gib = args.clients * args.params * 4 / 2**30
    print(
        f"clients={args.clients} params={args.params:,} theta={gib:.2f} GiB float32 "
        f"threads={torch.get_num_threads()} repeats={args.repeats} "
        f"mode={'copy' if args.copy else 'inplace'}"
    )
    for stage, values in timings.items():
        runs = " ".join(f"{v:.3f}" for v in values)
        print(f"{stage:>9}: median {statistics.median(values):.3f} s  (runs: {runs})")
    print(f"peak RSS: {peak_rss_gib():.2f} GiB (inputs alone: {rss_inputs:.2f} GiB)")


if __name__ == "__main__":
    main()

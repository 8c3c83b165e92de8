"""One MiniLM LoRA train step with 1 vs 2 torch threads, alternated: is the CPU oversubscribed?

On a CPU box shared with other jobs, OpenMP's default (spinning) wait policy can make 2 threads
several times slower than 1. Run it twice to see whether ``OMP_WAIT_POLICY=PASSIVE`` helps here:

    HF_HUB_OFFLINE=1 python benchmarks/bench_threads.py --pairs 10
    HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_threads.py --pairs 10
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from federation_run import quiet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=10, help="A/B pairs (1 thread, 2 threads)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    quiet()
    from fellrec.models.adapters import ClientAdapters, LoRASettings
    from fellrec.models.backbone import load_encoder

    encoder, _tokenizer = load_encoder("minilm")
    model = ClientAdapters(encoder, LoRASettings(), 2).model
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(1000, 20000, (args.batch, args.tokens), generator=generator)
    attention_mask = torch.ones_like(input_ids)

    def step() -> None:
        hidden = model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        hidden.mean(1).sum().backward()

    times: dict[int, list[tuple[float, float]]] = {t: [] for t in args.threads}
    for threads in args.threads:  # warm-up
        torch.set_num_threads(threads)
        step()
    for _ in range(args.pairs):
        for threads in args.threads:
            torch.set_num_threads(threads)
            wall, cpu = time.perf_counter(), time.process_time()
            step()
            times[threads].append((time.perf_counter() - wall, time.process_time() - cpu))

    policy = os.environ.get("OMP_WAIT_POLICY", "default")
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"train step {args.batch} x {args.tokens} tokens, OMP_WAIT_POLICY={policy}, "
        f"{args.pairs} pairs, load average {load}"
    )
    print(f"{'threads':>7} | {'wall s: median [min .. max]':^28} | cpu s (median)")
    for threads, values in times.items():
        walls = [w for w, _ in values]
        cpus = [c for _, c in values]
        print(
            f"{threads:>7} | {statistics.median(walls):8.3f} [{min(walls):.3f} .. "
            f"{max(walls):.3f}] | {statistics.median(cpus):.3f}"
        )


if __name__ == "__main__":
    main()

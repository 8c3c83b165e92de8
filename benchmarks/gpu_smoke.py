"""Smoke-test and time a federated run on whatever accelerator is present (GPU, else CPU).

    python benchmarks/gpu_smoke.py --tokenizer DIR [--hidden 384 --layers 6]

Builds a randomly initialised BERT of the given size (MiniLM-L6's shape by default) with the
tokenizer found in DIR (e.g. the directory of the packaged MiniLM), so it needs no model download,
then runs `fellrec fit` on the synthetic catalog with 5 clients and reports wall time per round,
peak GPU memory and the overall test NDCG@10. Metrics of a random encoder are only a sanity check.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
import yaml
from transformers import AutoTokenizer, BertConfig, BertModel

from fellrec.cli import main as fellrec_main


def build_encoder(directory: Path, tokenizer_dir: str, hidden: int, layers: int) -> Path:
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64),
        intermediate_size=4 * hidden,
        max_position_embeddings=512,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--precision", default="bf16-mixed")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=5)
    args = parser.parse_args()
    accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    work = Path(tempfile.mkdtemp(prefix="fellrec-smoke-"))
    encoder = build_encoder(work / "encoder", args.tokenizer, args.hidden, args.layers)
    config = yaml.safe_load(Path("configs/quickstart.yaml").read_text())
    config["trainer"].update(
        accelerator=accelerator,
        precision=args.precision if accelerator == "gpu" else "32-true",
        max_epochs=args.rounds,
        default_root_dir=str(work / "run"),
        enable_progress_bar=False,
    )
    config["model"]["backbone"] = str(encoder)
    config["data"]["num_clients"] = args.clients
    config["data"]["cache_dir"] = str(work / "cache")
    config_path = work / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    start = time.perf_counter()
    fellrec_main(["fit", "--config", str(config_path)])
    seconds = time.perf_counter() - start
    results = json.loads((work / "run" / "results.json").read_text())
    report = {
        "accelerator": accelerator,
        "device": torch.cuda.get_device_name() if accelerator == "gpu" else "cpu",
        "precision": config["trainer"]["precision"],
        "encoder": f"BERT hidden {args.hidden} x {args.layers} layers (random weights)",
        "wall_seconds": round(seconds, 1),
        "round_seconds": [round(r["seconds"], 2) for r in results["history"]],
        "peak_gpu_memory_mib": (
            round(torch.cuda.max_memory_allocated() / 2**20) if accelerator == "gpu" else None
        ),
        "test_ndcg@10": results["overall"]["ndcg@10"],
        "popularity_ndcg@10": results["popularity"]["overall"]["ndcg@10"],
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

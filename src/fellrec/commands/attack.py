"""``fellrec attack``: an honest-but-curious server tries to read the clients' inputs.

The server knows the public base model and receives ``h_front``. This command plays it with the
linear-inversion attack of :mod:`fellrec.models.inversion`: public text is the catalog (item texts
in seeded random orders, rendered exactly like a recommender input), victims are real training
examples rendered the way the configured recommender renders them. It prints the token recovery
rate per ``k_front`` and stores it under ``"privacy"`` in the run's ``results.json`` (merged; the
other keys stay), or in ``privacy.json`` when the run has no results yet::

    fellrec attack --config configs/ml100k-minilm-base.yaml --k-fronts 0,1,2,3,4,5
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from jsonargparse import ArgumentParser

from fellrec.cli import instantiate_run_config, run_config_parser
from fellrec.commands.cost import parse_k_fronts
from fellrec.config_errors import parse_checked
from fellrec.training.federated_module import FederatedModule
from fellrec.training.privacy import ATTACK, privacy_section

RESULTS_FILE = "results.json"
PRIVACY_FILE = "privacy.json"


def default_k_fronts(layers: int, configured: int | None) -> list[int]:
    """``0..4``, powers of two, ``L - 1`` and the configured ``k_front``, all ``<= L - 1``."""
    values = {0, 1, 2, 3, 4, layers - 1, *(2**i for i in range(3, 8))}
    if configured is not None:
        values.add(configured)
    return sorted(v for v in values if 0 <= v <= layers - 1)


def write_privacy(directory: Path, section: dict[str, Any]) -> Path:
    """Store ``section`` under ``"privacy"`` in ``results.json`` (merged) or ``privacy.json``."""
    results = directory / RESULTS_FILE
    if results.is_file():
        path, content = results, json.loads(results.read_text())
        content["privacy"] = section
    else:
        path, content = directory / PRIVACY_FILE, {"privacy": section}
    directory.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text(json.dumps(content, indent=2) + "\n")
    os.replace(staging, path)  # readers never see half a file
    return path


def build_parser() -> ArgumentParser:
    """The ``fellrec attack`` parser: the run config plus this command's flags."""
    parser = run_config_parser(
        "fellrec attack",
        "An honest-but-curious server's token recovery from the hidden states it receives "
        "(linear map fitted on public catalog text, nearest embedding row), per k_front.",
    )
    parser.add_argument("--k-fronts", type=str, default=None, help="comma-separated k_front")
    parser.add_argument("--public-texts", type=int, default=200, help="public sequences")
    parser.add_argument("--victims", type=int, default=50, help="victim training examples")
    parser.add_argument("--ridge", type=float, default=1e-3, help="relative ridge penalty")
    parser.add_argument("--seed", type=int, default=0, help="seed of public and victim draws")
    parser.add_argument("--batch-size", type=int, default=16, help="sequences per forward")
    parser.add_argument(
        "--output", type=str, default=None, help="run directory (default trainer.default_root_dir)"
    )
    return parser


def _load(module: FederatedModule) -> tuple[Any, Any]:
    from fellrec.models import backbone

    model: Any
    if module.recommender_kind == "generative":
        model, tokenizer = backbone.load_causal_lm(module.backbone_name, module.load_in_8bit)
    else:
        model, tokenizer = backbone.load_encoder(module.backbone_name)
    if not module.load_in_8bit and torch.cuda.is_available():
        model.to(torch.device("cuda"))  # an 8-bit model is already placed on its GPU
    return model, tokenizer


def main(args: list[str]) -> None:
    """``fellrec attack --config X.yaml [--k-fronts 0,1,2] [--public-texts N] [--victims N]``."""
    from fellrec.models.split import num_blocks

    parser = build_parser()
    parsed = parse_checked(parser, args, "fellrec attack")
    for flag in ("public_texts", "victims", "batch_size"):
        if parsed[flag] < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {parsed[flag]}")
    module, datamodule = instantiate_run_config(parser, parsed)
    trainer = parsed.get("trainer")
    root = trainer.get("default_root_dir") if isinstance(trainer, dict) else None
    directory = Path(parsed.output or root or ".")
    started = time.perf_counter()
    datamodule.setup("fit")
    if module.recommender_kind == "sequential":
        # Item tokens need the recommender's item vectors: build it (initial components).
        module.build(datamodule)
        assert module.adapters is not None
        model, tokenizer = module.adapters.model, module.tokenizer
        if torch.cuda.is_available():
            module.to(torch.device("cuda"))
    else:
        model, tokenizer = _load(module)
    layers = num_blocks(model)
    configured = module.k_front if module.split else None
    if parsed.k_fronts is not None:
        k_fronts = parse_k_fronts(parsed.k_fronts)
    else:
        k_fronts = default_k_fronts(layers, configured)
    # The server knows the public base model, not the clients' adapters.
    without_adapters = getattr(model, "disable_adapter", contextlib.nullcontext)
    with without_adapters():
        section = privacy_section(
            module,
            datamodule,
            model,
            tokenizer,
            k_fronts,
            parsed.public_texts,
            parsed.victims,
            parsed.ridge,
            parsed.seed,
            parsed.batch_size,
        )
    curve = section["curve"]
    print(
        f"{ATTACK} attack on {module.backbone_name} ({layers} blocks): map fitted on "
        f"{section['public_texts']} public sequences, {section['victims']} victim training examples"
    )
    print(format_curve(curve))
    path = write_privacy(directory, section)
    print(f"wrote 'privacy' to {path} ({time.perf_counter() - started:.1f} s)")


def format_curve(curve: Sequence[dict[str, Any]]) -> str:
    """The recovery curve as an aligned text table (all real tokens, and content tokens only)."""
    lines = [
        "k_front  tokens  token recovery  content tokens  content recovery",
        "-------  ------  --------------  --------------  ----------------",
    ]
    for point in curve:
        lines.append(
            f"{point['k_front']:>7}  {point['tokens']:>6}  {100 * point['token_recovery']:>13.1f}%"
            f"  {point['content_tokens']:>14}  {100 * point['content_recovery']:>15.1f}%"
        )
    return "\n".join(lines)

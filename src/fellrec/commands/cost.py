"""``fellrec cost``: what split execution buys and costs for a range of k_front, without training.

Reads the run's YAML (the same schema as ``fellrec fit``) and only the backbone's *config*, not
its weights (except once for the ``smollm2`` alias, whose first use converts the GGUF file into the
local model cache), and prints client/server parameters, memory, FLOPs and bytes per training step
(:mod:`fellrec.models.resources`)::

    fellrec cost --config configs/ml100k-smollm2-fellrec.yaml --k-fronts 0,1,2,4,8
    fellrec cost --config configs/llama7b-bigrec.yaml --architecture llama-7b/config.json
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from jsonargparse import ArgumentParser

from fellrec.config_errors import parse_checked
from fellrec.config_parser import config_parser, instantiate_run_config
from fellrec.models.parameter_counts import count_parameters, lora_targets
from fellrec.models.resource_tables import (
    format_cost_table,
    format_report,
    human_count,
    padding_note,
)
from fellrec.models.resources import cost_table, resource_report
from fellrec.models.split_plan import plan_split
from fellrec.training.batches.datamodule import FederatedDataModule
from fellrec.training.host.federated_module import FederatedModule

#: ``--base-dtype`` choices and their bytes per frozen weight.
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "int8": 1}
#: Sequence length assumed for a generative model whose settings carry no prompt cutoff.
DEFAULT_PROMPT_TOKENS = 256
#: Largest k_front in the default range.
DEFAULT_MAX_K_FRONT = 8


def load_architecture(backbone: str, architecture: str | None = None) -> Any:
    """The transformers config of a backbone, or of an architecture file; no weights are read.

    Args:
        backbone: ``model.backbone`` (packaged alias, local directory or hub name).
        architecture: A ``config.json`` (or a directory holding one) to use instead.

    Returns:
        A ``PretrainedConfig``.

    Raises:
        ValueError: If the file is missing or unreadable (naming ``--architecture``), or the
            backbone's config is not available offline (naming ``model.backbone`` and suggesting
            ``--architecture``).
    """
    from transformers import AutoConfig

    if architecture is not None:
        path = Path(architecture).expanduser()
        path = path / "config.json" if path.is_dir() else path
        try:
            values = json.loads(path.read_text())
            model_type = values.pop("model_type")
            return AutoConfig.for_model(model_type, **values)
        except (OSError, json.JSONDecodeError, KeyError, ValueError) as error:
            raise ValueError(
                f"--architecture {architecture}: not a readable config.json with a model_type "
                f"({error})"
            ) from error
    from fellrec.models.backbone import resolve_backbone

    resolved = resolve_backbone(backbone)
    try:
        return AutoConfig.from_pretrained(resolved)
    except OSError as error:
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")
        why = "the hub is disabled (HF_HUB_OFFLINE=1)" if offline else "it could not be fetched"
        raise ValueError(
            f"model.backbone={backbone!r}: no config found locally and {why}. Cost it from its "
            "architecture instead: --architecture path/to/config.json"
        ) from error


def sequence_length(
    model: FederatedModule, datamodule: FederatedDataModule
) -> tuple[int, str | None]:
    """``T`` of a training step, and a note when it had to be assumed.

    Sequential: ``data.history_length`` (one token per item); encoder:
    ``model.max_history_tokens``; generative: ``model.prompt.max_prompt_tokens``.
    """
    if model.recommender_family.causal_lm and getattr(model, "prompt", None) is None:
        note = f"model.prompt is not set; assuming {DEFAULT_PROMPT_TOKENS} tokens per sequence"
        return DEFAULT_PROMPT_TOKENS, note
    return model.recommender_settings().tokens_per_example(datamodule.settings.history_length), None


def client_module_settings(
    model: FederatedModule, datamodule: FederatedDataModule, config: Any
) -> dict[str, Any]:
    """``resource_report``'s per-item component arguments; reads the catalog size when needed.

    Counting per-item components needs the number of items, so the data is prepared (from the
    cache after the first time) only for recommenders that have them.
    """
    if not model.uses_item_components:
        return {}
    datamodule.setup("fit")
    parameters = model.recommender_settings().client_module_parameters(
        datamodule.data.dataset.num_items, int(config.hidden_size)
    )
    return {
        "client_module_parameters": parameters,
        "trainable_inputs": model.recommender_settings().trainable_inputs,
    }


def activation_bytes(precision: Any, base_dtype_bytes: int) -> int:
    """Bytes per activation: 2 under 16-bit (mixed) precision or a 16/8-bit base, else 4.

    Args:
        precision: ``trainer.precision`` (e.g. ``"bf16-mixed"``, ``"32-true"``, 16) or ``None``.
        base_dtype_bytes: Bytes per frozen base weight.
    """
    return 2 if "16" in str(precision or "") or base_dtype_bytes < 4 else 4


def run_report(
    model: FederatedModule,
    datamodule: FederatedDataModule,
    config: Any,
    base_dtype_bytes: int | None = None,
    activation_dtype_bytes: int | None = None,
) -> dict[str, Any]:
    """The ``"resources"`` dict of a configured run (its split or unsplit model).

    Args:
        model: The run's (not set up) module: split, k_front, k_back, lora, load_in_8bit.
        datamodule: Its data module: batch size (the micro-batch) and number of clients.
        config: The backbone's transformers config.
        base_dtype_bytes: Bytes per frozen weight (default: 1 with ``load_in_8bit``, else 4).
        activation_dtype_bytes: Bytes per activation (default from the base dtype).

    Returns:
        :func:`fellrec.models.resources.resource_report` for the run's settings.
    """
    dtype = base_dtype_bytes or (1 if model.load_in_8bit else 4)
    layers = count_parameters(config).num_layers
    plan = plan_split(layers, model.k_front, model.k_back) if model.split else None
    seq_len, _ = sequence_length(model, datamodule)
    return resource_report(
        config,
        plan,
        model.lora,
        datamodule.batch_size,
        seq_len,
        datamodule.num_clients,
        dtype,
        activation_dtype_bytes,
        **client_module_settings(model, datamodule, config),
    )


def parse_k_fronts(text: str, flag: str = "--k-fronts") -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``.

    Raises:
        ValueError: Naming the flag, on anything but comma-separated non-negative integers.
    """
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise ValueError(f"{flag} must be comma-separated integers, got {text!r}") from error
    if not values or min(values) < 0:
        raise ValueError(f"{flag} must list integers >= 0, got {text!r}")
    return sorted(set(values))


def default_k_fronts(layers: int, k_back: int, configured: int | None) -> list[int]:
    """``0 .. min(L - 1 - k_back, 8)`` plus the configured ``k_front`` when it is valid."""
    values = set(range(0, max(0, min(layers - 1 - k_back, DEFAULT_MAX_K_FRONT)) + 1))
    if configured is not None and configured + k_back <= layers - 1:
        values.add(configured)
    return sorted(values)


def build_parser() -> ArgumentParser:
    """The ``fellrec cost`` parser: the run config plus this command's flags."""
    parser = config_parser(
        "fellrec cost",
        "Client/server parameters, memory, FLOPs and bytes per training step for a range of "
        "k_front, from the backbone's config alone (no weights, no training).",
    )
    parser.add_argument(
        "--k-fronts", type=str, default=None, help="comma-separated k_front values to cost"
    )
    parser.add_argument(
        "--architecture",
        type=str,
        default=None,
        help="a config.json (or its directory) describing the architecture, instead of loading "
        "model.backbone's config (e.g. to cost LLaMA-7B without its files)",
    )
    parser.add_argument(
        "--base-dtype",
        type=str,
        default=None,
        help=f"frozen weights' dtype, one of {sorted(DTYPE_BYTES)} "
        "(default: int8 with model.load_in_8bit, else fp32)",
    )
    return parser


def main(args: list[str]) -> None:
    """``fellrec cost --config X.yaml [--k-fronts 0,1,2] [--architecture config.json]``."""
    parser = build_parser()
    parsed = parse_checked(parser, args, "fellrec cost")
    model, datamodule = instantiate_run_config(parser, parsed)
    if parsed.base_dtype is not None and parsed.base_dtype not in DTYPE_BYTES:
        raise ValueError(f"--base-dtype must be one of {sorted(DTYPE_BYTES)}")
    dtype = DTYPE_BYTES[parsed.base_dtype] if parsed.base_dtype else (4, 1)[model.load_in_8bit]
    trainer = parsed.get("trainer")
    act = activation_bytes(trainer.get("precision") if isinstance(trainer, dict) else None, dtype)
    config = load_architecture(model.backbone_name, parsed.architecture)
    counts = count_parameters(config)
    layers = counts.num_layers
    configured = model.k_front if model.split else None
    if parsed.k_fronts is not None:
        k_fronts = parse_k_fronts(parsed.k_fronts)
    else:
        k_fronts = default_k_fronts(layers, model.k_back, configured)
    too_deep = [k for k in k_fronts if k + model.k_back > layers - 1]
    if too_deep:
        raise ValueError(
            f"--k-fronts {too_deep}: with model.k_back={model.k_back}, k_front must be <= "
            f"{layers - 1 - model.k_back} for this {layers}-block model"
        )
    seq_len, note = sequence_length(model, datamodule)
    settings = (model.lora, datamodule.batch_size, seq_len, datamodule.num_clients, dtype, act)
    extra = client_module_settings(model, datamodule, config)
    rows = cost_table(config, k_fronts, model.k_back, *settings, **extra)
    dtype_name = parsed.base_dtype or ("int8" if model.load_in_8bit else "fp32")
    print(
        f"{counts.model_type} ({counts.family}), {layers} blocks, hidden {counts.hidden_size}, "
        f"vocab {counts.vocab_size}, {human_count(counts.total)} parameters; "
        f"LoRA r={model.lora.r} on {', '.join(lora_targets(counts, model.lora))}; "
        f"micro-batch {datamodule.batch_size} x {seq_len} tokens, {datamodule.num_clients} "
        f"clients, base {dtype_name}, activations {8 * act}-bit; k_back={model.k_back}"
    )
    if extra:
        print(
            f"per-item components (model.items): "
            f"{human_count(extra['client_module_parameters'])} trainable parameters per client"
        )
    if note:
        print(f"note: {note}")
    print(format_cost_table(rows))
    print(padding_note(datamodule.batch_size, seq_len))
    if model.split and configured in k_fronts:
        print(f"\nconfigured split (k_front={model.k_front}, k_back={model.k_back}):")
        print(format_report(run_report(model, datamodule, config, dtype, act)))

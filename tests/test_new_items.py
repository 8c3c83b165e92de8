"""Tests of the new-item protocol (``data.new_items``): held-out items never reach training."""

from __future__ import annotations

import numpy as np
import pytest

from data_helpers import chronological_dataset, leave_one_out_settings
from fellrec.data.examples import sliding_window_examples
from fellrec.data.pipeline import DatasetSettings, PipelineSettings, build_federated_data
from fellrec.data.split import choose_new_items, leave_one_out_split, temporal_split
from fellrec.data.stats import format_new_items, new_item_statistics

# Per user, in time order: u0 0 1 2 3 4; u1 2 0 1 5; u2 2 2 0 1 (no target left but item 1)
PAIRS = [
    (0, 0), (1, 2), (0, 1), (2, 2), (1, 0), (0, 2), (2, 2), (1, 1), (0, 3), (2, 0), (1, 5),
    (0, 4), (2, 1),
]  # fmt: skip


def test_leave_one_out_drops_new_items_from_training_and_histories_only() -> None:
    data = chronological_dataset(PAIRS, 3, 6)
    split = leave_one_out_split(data, history_length=2, new_items=np.array([2]))
    assert split.new_items.tolist() == [2]
    # Training: item 2 is gone wherever it was (u0 0 1 [2]; u1 [2] 0; u2 [2 2] 0).
    assert [s.tolist() for s in split.train_sequences] == [[0, 1], [0], []]
    # Validation: u0's target 3 is read from 0 1; u1's target 1 from 0. u2 has nothing left.
    assert split.valid.users.tolist() == [0, 1]
    assert [h.tolist() for h in split.valid.histories] == [[0, 1], [0]]
    # The consumed masks keep the held-out item (it is still not recommended back).
    assert [c.tolist() for c in split.valid.consumed] == [[0, 1, 2], [0, 2]]
    # Test: u2's target 1 is kept; its history has no item 2.
    assert split.test.users.tolist() == [0, 1, 2]
    assert [h.tolist() for h in split.test.histories] == [[1, 3], [0, 1], [0]]
    assert [t.tolist() for t in split.test.targets] == [[4], [5], [1]]


def test_a_new_item_stays_a_target() -> None:
    data = chronological_dataset(PAIRS, 3, 6)
    split = leave_one_out_split(data, history_length=3, new_items=np.array([4, 5]))
    assert [t.tolist() for t in split.test.targets] == [[4], [5], [1]]
    assert all(not np.isin(s, [4, 5]).any() for s in split.train_sequences)
    counts = new_item_statistics(split, 6)
    assert counts == {
        "held_out": 2,
        "items": 6,
        "valid_targets": 0,
        "valid_users": 0,
        "test_targets": 2,
        "test_users": 2,
    }
    assert "2 of 6 items held out" in format_new_items(split, 6)
    assert new_item_statistics(leave_one_out_split(data, 3), 6) is None


def test_temporal_split_holds_new_items_out_of_training() -> None:
    data = chronological_dataset(PAIRS, 3, 6)
    plain = temporal_split(data, 3, valid_fraction=0.2, test_fraction=0.2)
    held = temporal_split(data, 3, valid_fraction=0.2, test_fraction=0.2, new_items=np.array([0]))
    assert [s.tolist() for s in held.train_sequences] == [
        [x for x in s.tolist() if x != 0] for s in plain.train_sequences
    ]
    # Targets are the plain split's; histories lose item 0.
    for a, b in zip(plain.test.targets, held.test.targets, strict=True):
        assert a.tolist() == b.tolist()
    assert all(0 not in h.tolist() for h in held.test.histories + held.valid.histories)


def test_choice_is_seeded_and_sized() -> None:
    first = choose_new_items(1000, 0.1, seed=7)
    assert len(first) == 100 and len(np.unique(first)) == 100
    assert np.array_equal(first, choose_new_items(1000, 0.1, seed=7))
    assert not np.array_equal(first, choose_new_items(1000, 0.1, seed=8))
    assert choose_new_items(1000, 0.0, seed=7).tolist() == []
    assert np.all(np.diff(first) > 0) and first.min() >= 0 and first.max() < 1000


@pytest.mark.parametrize("value", [1.5, -0.1, 1.0])
def test_bad_fractions_name_the_flag(value: float) -> None:
    with pytest.raises(ValueError, match=r"data\.new_items"):
        choose_new_items(100, value, seed=0)
    settings = leave_one_out_settings(DatasetSettings(), new_items=value)
    with pytest.raises(ValueError, match=r"data\.new_items must be a fraction"):
        settings.validate()


def test_a_fraction_that_holds_out_nothing_is_refused() -> None:
    with pytest.raises(ValueError, match=r"data\.new_items=0\.001 holds out no item of the 60"):
        choose_new_items(60, 0.001, seed=0)


def test_pipeline_never_trains_on_a_new_item() -> None:
    def settings(seed: int) -> PipelineSettings:
        synthetic = DatasetSettings(format="synthetic", options={"num_users": 60, "num_items": 40})
        return leave_one_out_settings(synthetic, seed=seed, new_items=0.2)

    data = build_federated_data(settings(0))
    held = data.split.new_items
    assert len(held) == 8  # 20% of 40
    examples = data.examples
    windows = np.concatenate([examples.histories.ravel(), examples.targets])
    assert not np.isin(windows, held).any()  # no window holds one, as input or target
    for period in (data.split.valid, data.split.test):
        assert not any(np.isin(h, held).any() for h in period.histories)
    test_targets = np.concatenate(data.split.test.targets)
    assert np.isin(test_targets, held).any()  # and they are evaluated
    # Windows equal those cut from the filtered sequences; the draw is seeded.
    again = sliding_window_examples(data.split.train_sequences, 4)
    assert np.array_equal(np.sort(again.targets), np.sort(examples.targets))
    assert np.array_equal(build_federated_data(settings(0)).split.new_items, held)
    assert not np.array_equal(build_federated_data(settings(1)).split.new_items, held)


def test_items_held_out_are_never_training_negatives_by_hand() -> None:
    import torch

    from fellrec.models.item_components import mask_unavailable

    scores = torch.arange(8.0).view(2, 4)
    unavailable = torch.tensor([False, True, False, True])
    full = mask_unavailable(scores, unavailable)
    assert torch.equal(full[:, [0, 2]], scores[:, [0, 2]]) and torch.isinf(full[:, [1, 3]]).all()
    negatives = torch.tensor([[1, 2], [0, 3]])  # sampled per example (N, K)
    sampled = mask_unavailable(scores[:, :2], unavailable, negatives)
    assert sampled.tolist() == [[float("-inf"), 1.0], [4.0, float("-inf")]]
    shared = mask_unavailable(scores[:, :2], unavailable, torch.tensor([3, 0]))  # (C,)
    assert shared.tolist() == [[float("-inf"), 1.0], [float("-inf"), 5.0]]
    assert mask_unavailable(scores, None) is scores


def test_a_new_item_starts_as_an_average_item() -> None:
    import torch

    from fellrec.models.item_components import ItemComponents, ItemSettings, log_popularity_bias

    counts = torch.tensor([9.0, 0.0, 3.0, 0.0])
    components = ItemComponents(4, 8, ItemSettings(bias_init="log_popularity"), 0.05)
    unknown = torch.tensor([False, True, False, False])
    components.start_from_popularity(counts, unknown=unknown)
    start = log_popularity_bias(counts)
    known = start[[0, 2, 3]]
    assert components.bias.detach()[1] == pytest.approx(float(known.mean()))
    assert torch.equal(components.bias.detach()[[0, 2, 3]], known)  # an unsold known item stays


def test_a_fit_leaves_the_new_items_as_they_started(tmp_path, tiny_encoder_dir):
    import torch

    from federation_helpers import tiny_run
    from fellrec.federation.strategies import FedAvg

    trainer, model, data, _ = tiny_run(
        tmp_path,
        tiny_encoder_dir,
        FedAvg(),
        rounds=1,
        data_options={"new_items": 0.2},
        model_options={"recommender": "sequential"},
    )
    data.prepare_data()
    data.setup("fit")
    model.build(data)
    held = torch.as_tensor(data.data.split.new_items)
    assert len(held) > 0 and bool(model.recommender.unavailable[held].all())
    before = [model.adapters.module(s).id_embedding.detach()[held].clone() for s in range(3)]
    biases = [model.adapters.module(s).bias.detach()[held].clone() for s in range(3)]
    trainer.fit(model, datamodule=data)
    trained = torch.ones(data.data.dataset.num_items, dtype=torch.bool)
    trained[held] = False
    for slot in range(3):
        components = model.adapters.module(slot)
        # No gradient ever reached them: not targets (dropped), not negatives (masked). They
        # move by the aggregation's rounding only (a weighted mean of equal rows).
        moved = (components.id_embedding.detach()[held] - before[slot]).abs().max()
        assert float(moved) < 1e-7
        torch.testing.assert_close(components.bias.detach()[held], biases[slot])
        # The items that exist at training time did train.
        assert float(components.bias.detach()[trained].abs().max()) > 1e-4


def test_the_encoder_recommender_trains_without_new_items_as_negatives(tmp_path, tiny_encoder_dir):
    import torch

    from federation_helpers import tiny_run
    from fellrec.federation.strategies import FedAvg

    _, model, data, _ = tiny_run(
        tmp_path, tiny_encoder_dir, FedAvg(), rounds=1, data_options={"new_items": 0.2}
    )
    data.prepare_data()
    data.setup("fit")
    model.build(data)
    held = torch.as_tensor(data.data.split.new_items)
    assert int(model.recommender.unavailable.sum()) == len(held) > 0
    users = torch.randn(2, 32, generator=torch.Generator().manual_seed(0)) * 0.01
    table = torch.randn(data.data.dataset.num_items, 32) * 0.01
    targets = torch.tensor([0, 1])
    masked = model.recommender.loss(users, table, targets)
    model.recommender.unavailable = None
    # Without the mask the held-out items compete in the softmax: a larger loss.
    assert bool((model.recommender.loss(users, table, targets) > masked).all())


@pytest.mark.parametrize("recommender", ["sequential", "encoder"])
def test_cold_start_scores_new_items_from_their_text(tmp_path, tiny_encoder_dir, recommender):
    import torch

    from federation_helpers import tiny_run
    from fellrec.federation.strategies import FedAvg
    from fellrec.models.item_components import ItemSettings

    trainer, model, data, _ = tiny_run(
        tmp_path,
        tiny_encoder_dir,
        FedAvg(),
        rounds=1,
        data_options={"new_items": 0.2},
        model_options={
            "recommender": recommender,
            "item_components": True,
            "items": ItemSettings(cold_start="text_ridge"),
        },
    )
    trainer.fit(model, datamodule=data)
    held = torch.as_tensor(data.data.split.new_items)
    known = torch.ones(data.data.dataset.num_items, dtype=torch.bool)
    known[held] = False
    histories = torch.tensor([[-1, 0, 1, 2], [3, 4, 5, 6]])
    model.eval()
    with torch.no_grad():
        cold = model.backend.scores(0, histories)
        model.adapters.module(0).settings.cold_start = "none"
        plain = model.backend.scores(0, histories)
    torch.testing.assert_close(cold[:, known], plain[:, known])  # trained items: as before
    assert not torch.allclose(cold[:, held], plain[:, held])  # new items: from their text
    assert bool(torch.isfinite(cold).all())


def test_cold_start_without_item_components_is_refused_by_name() -> None:
    from fellrec.models.item_components import ItemSettings
    from fellrec.training.host.module_settings import ModuleSettings

    with pytest.raises(ValueError, match=r"model\.item_components: true"):
        ModuleSettings(recommender="encoder", items=ItemSettings(cold_start="text_ridge"))
    ModuleSettings(
        recommender="encoder", item_components=True, items=ItemSettings(cold_start="text_ridge")
    )

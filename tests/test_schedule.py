import numpy as np
import pytest

from fellrec.training.batches.schedule import plan_round, shard


def test_plan_is_client_major_and_covers_every_example_once_per_epoch():
    clients = np.array([0, 1, 0, 1, 1, 2, 0])
    plan = plan_round(clients, 3, batch_size=2, local_epochs=2, accumulate=1, seed=0, round_index=0)
    order = [b.client for b in plan]
    assert order == sorted(order)  # client-major
    for client in range(3):
        seen = np.concatenate([b.indices for b in plan if b.client == client])
        expected = np.flatnonzero(clients == client)
        assert sorted(seen.tolist()) == sorted(np.tile(expected, 2).tolist())
    assert [b.client_start for b in plan].count(True) == 3
    assert all(b.step_end for b in plan)


def test_plan_depends_only_on_seed_and_round():
    clients = np.arange(20) % 3
    a = plan_round(clients, 3, 4, 1, 1, seed=5, round_index=2)
    b = plan_round(clients, 3, 4, 1, 1, seed=5, round_index=2)
    c = plan_round(clients, 3, 4, 1, 1, seed=5, round_index=3)
    assert [x.indices.tolist() for x in a] == [x.indices.tolist() for x in b]
    assert [x.indices.tolist() for x in a] != [x.indices.tolist() for x in c]


def test_accumulation_groups_steps_within_a_client():
    clients = np.zeros(5, dtype=int)  # one client, 5 examples, batches of 2 -> chunks 2,2,1
    plan = plan_round(clients, 1, 2, 1, accumulate=2, seed=0, round_index=0)
    assert [len(b.indices) for b in plan] == [2, 2, 1]
    assert [b.step_end for b in plan] == [False, True, True]
    assert [b.step_examples for b in plan] == [4, 4, 1]


def test_pooled_plan_trains_one_client_on_everything():
    clients = np.array([0, 1, 2, 1])
    plan = plan_round(clients, 3, 10, 1, 1, seed=0, round_index=0, pooled=True)
    assert len(plan) == 1 and plan[0].client == 0
    assert sorted(plan[0].indices.tolist()) == [0, 1, 2, 3]


def test_clients_without_examples_get_no_batch():
    plan = plan_round(np.array([0, 0, 2]), 3, 8, 1, 1, seed=0, round_index=0)
    assert {b.client for b in plan} == {0, 2}


def test_shards_partition_a_global_batch():
    indices = np.arange(7)
    parts = [shard(indices, r, 2) for r in range(2)]
    assert sorted(np.concatenate(parts).tolist()) == list(range(7))


def test_invalid_sizes_fail():
    with pytest.raises(ValueError, match="batch_size"):
        plan_round(np.zeros(3, dtype=int), 1, 0, 1, 1, 0, 0)


def test_a_process_without_rows_of_a_global_batch_gets_a_stand_in():
    import numpy as np

    from fellrec.training.batches.datamodule import _rows_of

    indices = np.array([7, 8, 9])
    assert _rows_of(indices, 0, 2)[0].tolist() == [7, 9] and not _rows_of(indices, 0, 2)[1]
    assert _rows_of(indices, 1, 2)[0].tolist() == [8] and not _rows_of(indices, 1, 2)[1]
    rows, stand_in = _rows_of(np.array([5]), 1, 2)  # one row, two processes
    assert rows.tolist() == [5] and stand_in
    rows, stand_in = _rows_of(np.array([5]), 0, 2)
    assert rows.tolist() == [5] and not stand_in
    assert _rows_of(np.array([], dtype=np.int64), 0, 2)[0].size == 0  # nothing to stand in for


def test_a_clients_plan_does_not_depend_on_the_other_clients():
    """Client 1's batches are the same whatever the other clients hold, and planned alone."""

    def client_batches(example_clients, client, **kwargs):
        plan = plan_round(example_clients, 3, 3, 2, 2, seed=4, round_index=1, **kwargs)
        members = np.flatnonzero(example_clients == client)
        # Positions among the client's own examples: what a silo holding only them sees.
        position = {int(e): p for p, e in enumerate(members)}
        return [
            ([position[int(e)] for e in b.indices], b.step_examples, b.step_end, b.client_start)
            for b in plan
            if b.client == client
        ]

    small = np.array([0, 1, 1, 2, 1, 1, 1, 2, 1])
    large = np.array([0] * 7 + [1, 1, 2, 1, 1, 1, 2, 2, 2, 1, 0])  # more examples elsewhere
    alone = np.ones(6, dtype=int)  # a silo with only client 1's examples
    reference = client_batches(small, 1)
    assert len(reference) == 4  # 6 examples, batches of 3, 2 local epochs
    assert client_batches(large, 1) == reference
    assert client_batches(alone, 1) == reference
    assert client_batches(alone, 1, clients=[1]) == reference
    assert {b.client for b in plan_round(small, 3, 3, 1, 1, 0, 0, clients=[2])} == {2}


def test_the_plan_draws_each_client_from_its_own_generator():
    """Hand-computed: client c permutes its examples with default_rng([seed, round, c])."""
    clients = np.array([1, 0, 1, 1])
    plan = plan_round(clients, 2, batch_size=8, local_epochs=1, accumulate=1, seed=3, round_index=2)
    members = np.array([0, 2, 3])
    expected = members[np.random.default_rng([3, 2, 1]).permutation(3)]
    assert [b.indices.tolist() for b in plan] == [[1], expected.tolist()]

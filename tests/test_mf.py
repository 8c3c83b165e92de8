from __future__ import annotations

import numpy as np
import pytest
import torch

from fellrec.data.mf import train_bpr_embeddings


def _two_groups(n: int = 40) -> list[np.ndarray]:
    """Users 0..n-1 consume items 0..29, users n..2n-1 items 30..59."""
    rng = np.random.default_rng(0)
    return [rng.choice(30, size=12, replace=False) + (30 if u >= n else 0) for u in range(2 * n)]


def test_shape_dtype_and_determinism() -> None:
    seqs = _two_groups()
    a = train_bpr_embeddings(seqs, 80, 60, dim=8, epochs=5, seed=3)
    b = train_bpr_embeddings(seqs, 80, 60, dim=8, epochs=5, seed=3)
    c = train_bpr_embeddings(seqs, 80, 60, dim=8, epochs=5, seed=4)
    assert a.shape == (80, 8) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_leaves_global_torch_state_alone() -> None:
    threads = torch.get_num_threads()
    state = torch.get_rng_state()
    train_bpr_embeddings(_two_groups(), 80, 60, dim=8, epochs=2, seed=0)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.get_num_threads() == threads


def test_embeddings_separate_user_groups() -> None:
    emb = train_bpr_embeddings(_two_groups(), 80, 60, dim=16, epochs=30, seed=0)
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    sim = unit @ unit.T
    same = (sim[:40, :40].mean() + sim[40:, 40:].mean()) / 2
    across = sim[:40, 40:].mean()
    assert same - across > 0.5


def test_no_interactions_raises() -> None:
    with pytest.raises(ValueError, match="interaction"):
        train_bpr_embeddings([np.array([], dtype=np.int64)] * 3, 3, 5)

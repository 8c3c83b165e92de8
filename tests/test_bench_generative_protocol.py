"""The generative protocol benchmark's scoring: one decoding, every grounding, batches aligned.

The benchmark (``benchmarks/bench_generative_protocol.py``) is a script; its ``recommend_users``
is what every validation and test figure of the README's generative section goes through.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fellrec.data.schema import EvalUsers
from fellrec.metrics.ranking import index_mask
from test_generative import TITLES, make

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_generative_protocol import recommend_users


def users() -> EvalUsers:
    """Five users with histories of different lengths, each having consumed its history."""
    histories = [np.array(h) for h in ([0], [1, 2], [3], [4, 5, 0], [2])]
    return EvalUsers(
        users=np.arange(5),
        histories=histories,
        targets=[np.array([(int(h[-1]) + 1) % len(TITLES)]) for h in histories],
        consumed=[np.unique(h) for h in histories],
    )


@pytest.mark.parametrize("decoding", ["free", "constrained"])
def test_one_decoding_is_grounded_every_way_in_aligned_batches(tiny_llama_dir, decoding):
    recommender = make(tiny_llama_dir)
    evaluated = users()
    found = recommend_users(
        recommender, evaluated, decoding, ["last_token", "mean"], 3, 2, bf16=False
    )
    assert set(found) == {"last_token", "mean"}
    consumed = index_mask(evaluated.consumed, len(TITLES))
    for grounding, recommendations in found.items():
        assert recommendations.scores.shape == (5, len(TITLES))
        # Batches of 2 over 5 users: each user's own consumed items, and only those, are masked.
        assert torch.equal(torch.isinf(recommendations.scores), consumed), grounding
        if decoding == "free":
            assert recommendations.exact_titles is not None
        else:
            assert recommendations.exact_titles is None
    # The same user, scored alone, gets the same row (the decoding is not re-run per grounding).
    alone = recommend_users(
        recommender, evaluated.select(np.array([3])), decoding, ["mean"], 3, 2, bf16=False
    )
    assert torch.allclose(alone["mean"].scores[0], found["mean"].scores[3], atol=1e-5)

"""The server's copy of the client's front: decodes what the linear inversion cannot."""

from __future__ import annotations

import pytest
import torch

from fellrec.models.front_copy import (
    _decode_cached,
    _decode_recomputed,
    front_copy_recovery,
    front_states,
    shortlist_candidates,
)
from fellrec.models.hidden_defence import HiddenDefence
from fellrec.models.inversion import token_recovery
from fellrec.models.split import SplitModel
from fellrec.models.split_plan import plan_split
from fellrec.models.split_support import num_blocks
from fellrec.models.transport import LocalTransport
from split_families import DECODER_FAMILIES, build_family, needs_transformers_5
from test_inversion import mixing_llama, random_batches
from test_split_model import DECODERS_ON_EVERY_TRANSFORMERS, _batch, _other_family


def test_shortlist_takes_the_nearest_rows_by_cosine():
    table = torch.tensor([[1.0, 0.0], [0.0, 1.0], [10.0, 10.0], [-1.0, 0.0]])
    predicted = torch.tensor([[1.0, 0.3], [-2.0, 0.1]])
    assert shortlist_candidates(predicted, table, 2).tolist() == [[0, 2], [3, 1]]
    assert shortlist_candidates(predicted, table, 9).shape == (2, 4)  # at most the table


def attack(server, client, k_fronts, shortlist):
    """The client's states (from ``client``) attacked with the ``server``'s copy of the front."""
    public, victims = random_batches(20, 500, 1), random_batches(1, 500, 2, width=8)
    victims = [(ids[:6], mask[:6]) for ids, mask in victims]
    states = front_states(client, victims, k_fronts)
    table = server.get_input_embeddings().weight
    return front_copy_recovery(server, public, victims, states, table, shortlist=shortlist)


def test_the_front_copy_decodes_where_the_linear_map_fails():
    """Blocks that mix tokens hide them from the linear map, not from the front's own copy."""
    model = mixing_llama(0.2)
    linear = token_recovery(model, random_batches(20, 500, 1), random_batches(1, 500, 2), [3])
    assert linear[0]["token_recovery"] < 0.5
    # Every token a candidate (shortlist = the vocabulary): the copy finds each one exactly.
    (point,) = attack(model, model, [3], shortlist=500)
    assert point["token_recovery"] == 1.0 and point["shortlist_recall"] == 1.0
    assert point["tokens"] == point["content_tokens"] > 0


def test_a_short_list_bounds_the_attack_and_other_weights_defeat_it():
    model = mixing_llama(0.2)
    for point in attack(model, model, [0, 3], shortlist=8):
        assert point["token_recovery"] <= point["shortlist_recall"] + 1e-9
    # A server whose copy has other weights (here: another random model) is at chance (1/500).
    torch.manual_seed(1)
    other = mixing_llama(0.2)
    torch.nn.init.normal_(other.model.layers[0].self_attn.q_proj.weight, std=0.2)
    for layer in other.model.layers:
        torch.nn.init.normal_(layer.mlp.up_proj.weight, std=0.2)
    (point,) = attack(other, model, [3], shortlist=500)
    assert point["token_recovery"] < 0.1


def test_the_front_copy_refuses_an_empty_shortlist():
    model = mixing_llama(0.2)
    with pytest.raises(ValueError, match="at least one candidate"):
        attack(model, model, [1], shortlist=0)


def assert_cached_decoding_equals_rerunning(model: torch.nn.Module, padding: str) -> None:
    """One new token per candidate on a cache decodes exactly what rerunning the prefix does.

    Candidates are the true token among random others (the truth at a random place), so the
    nearest state is the truth's by a wide margin and both decoders find every real token up to
    where the shortlist misses the truth; from there on they must still agree.
    """
    ids, mask = _batch(padding, length=12)
    generator = torch.Generator().manual_seed(3)
    candidates = torch.randint(1000, 3000, (*ids.shape, 6), generator=generator)
    place = torch.randint(0, 6, ids.shape, generator=generator)
    candidates.scatter_(2, place[..., None], ids[..., None])
    candidates[0, 4] = torch.randint(1000, 3000, (6,), generator=generator)  # truth missing here
    defence = HiddenDefence()
    for k_front in (0, 2):
        front = SplitModel(model, plan_split(num_blocks(model), k_front, 0), LocalTransport())
        with torch.inference_mode():
            victims = front.front(ids, mask)[0]
            cached = _decode_cached(front, victims, ids, mask, candidates, defence)
            rerun = _decode_recomputed(front, victims, ids, mask, candidates, defence)
        assert torch.equal(cached, rerun), (padding, k_front)
        right = (cached == ids) | ~mask.bool()
        # Row 0 goes wrong where the truth is missing (and after it: its prefix is then wrong).
        assert right[1:].all() and right[0, :4].all(), (padding, k_front)
        assert not right[0, 4], (padding, k_front)
        assert torch.equal(cached[~mask.bool()], ids[~mask.bool()])  # padding left alone


@needs_transformers_5
@pytest.mark.parametrize("padding", ["left", "right"])
@pytest.mark.parametrize("family", DECODER_FAMILIES)
def test_a_decoder_front_decodes_on_a_kv_cache_as_when_rerunning_each_prefix(family, padding):
    assert_cached_decoding_equals_rerunning(build_family(family).eval(), padding)


@pytest.mark.parametrize("padding", ["left", "right"])
@pytest.mark.parametrize("name", DECODERS_ON_EVERY_TRANSFORMERS)
def test_windowed_fronts_decode_on_a_kv_cache_on_every_transformers(name, padding):
    """Also on transformers 4.x (tox -e min), whose sliding-window caches report their keys
    by cache position (4.56-4.57) or keep every key (4.53)."""
    model, _, _ = _other_family(name)
    assert_cached_decoding_equals_rerunning(model.eval(), padding)


def test_only_a_decoder_front_runs_on_a_kv_cache():
    encoder, _, _ = _other_family("roberta")
    front = SplitModel(encoder, plan_split(num_blocks(encoder), 1, 0), LocalTransport())
    ids, mask = _batch("right")
    with pytest.raises(ValueError, match="only decoder"):
        front.front_step(ids, mask, None)

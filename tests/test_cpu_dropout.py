"""Dropout masks from 15-bit draws: the rate, the scale, the gradient, and where they are used."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from fellrec.models.adapters import ClientAdapters, LoRASettings
from fellrec.models.backbone import load_causal_lm, load_encoder
from fellrec.models.cpu_dropout import (
    CheapMaskDropout,
    cheap_dropout,
    cheap_dropout_masks,
    draw_threshold,
)


@pytest.mark.parametrize(
    ("probability", "threshold"),
    [(0.1, 3277), (0.05, 1638), (0.5, 16384), (0.0, 0), (1.0, 32768), (1e-6, 0)],
)
def test_the_threshold_is_the_rate_in_steps_of_two_to_the_minus_15(probability, threshold):
    # 0.1 * 32768 = 3276.8 -> 3277; 0.05 * 32768 = 1638.4 -> 1638.
    assert draw_threshold(probability) == threshold


def test_the_dropped_share_and_the_scale_match_the_rounded_rate():
    torch.manual_seed(0)
    inputs = torch.ones(400_000)
    out = cheap_dropout(inputs, 0.1)
    rate = 3277 / 32768
    kept = out != 0
    # 400k Bernoulli(0.1) draws: the share's standard error is 4.7e-4; 5 of them is 0.0024.
    assert abs((~kept).float().mean().item() - rate) < 0.0024
    assert torch.allclose(out[kept], torch.full_like(out[kept], 1 / (1 - rate)))
    # An odd count takes half a word more, and every element still gets a draw.
    assert cheap_dropout(torch.ones(7), 0.5).shape == (7,)


@pytest.mark.parametrize("probability", [0.1, 0.3, 0.5, 0.77])
def test_both_halves_of_a_word_are_uniform_draws(probability):
    # Rates whose thresholds (3277, 9830, 16384, 25231) cut at different bits of the draws.
    torch.manual_seed(1)
    out = cheap_dropout(torch.ones(200_000), probability)
    low, high = out[0::2] != 0, out[1::2] != 0  # the two 15-bit draws of each word
    kept = 1 - draw_threshold(probability) / 32768
    for half in (low, high):  # 100k draws each: a standard error of at most 0.0016
        assert abs(half.float().mean().item() - kept) < 0.008
    # Independent halves: both kept kept**2 of the time.
    assert abs((low & high).float().mean().item() - kept**2) < 0.008


def test_the_gradient_is_the_same_mask_and_scale():
    torch.manual_seed(2)
    inputs = torch.randn(64, 48, requires_grad=True)
    out = cheap_dropout(inputs, 0.2)
    out.backward(torch.ones_like(out))
    assert inputs.grad is not None
    expected = torch.where(out != 0, out / inputs.detach(), torch.zeros_like(out))
    assert torch.allclose(inputs.grad, expected)


def test_the_same_seed_draws_the_same_mask_and_bf16_keeps_its_dtype():
    inputs = torch.randn(33, 17, dtype=torch.bfloat16)
    torch.manual_seed(3)
    first = cheap_dropout(inputs, 0.1)
    torch.manual_seed(3)
    assert torch.equal(first, cheap_dropout(inputs, 0.1)) and first.dtype == torch.bfloat16


def test_rates_zero_and_one():
    inputs = torch.randn(5, 3)
    assert cheap_dropout(inputs, 0.0) is inputs
    assert torch.equal(cheap_dropout(inputs, 1.0), torch.zeros_like(inputs))


def test_the_layer_is_nn_dropout_outside_cpu_training():
    layer = nn.Dropout(0.3)
    assert cheap_dropout_masks(nn.Sequential(layer)) == 1 and type(layer) is CheapMaskDropout
    inputs = torch.randn(10, 10)
    layer.eval()
    assert layer(inputs) is inputs or torch.equal(layer(inputs), inputs)
    layer.train()
    torch.manual_seed(4)
    dropped = layer(inputs)
    torch.manual_seed(4)
    assert torch.equal(dropped, cheap_dropout(inputs, 0.3))
    state = copy.deepcopy(layer)
    assert type(state) is CheapMaskDropout and state.p == 0.3


def test_in_place_layers_and_strided_inputs():
    layer = nn.Dropout(0.4, inplace=True)
    cheap_dropout_masks(nn.Sequential(layer))
    inputs = torch.randn(6, 8)
    torch.manual_seed(5)
    expected = nn.functional.dropout(inputs.clone(), 0.4, True)
    torch.manual_seed(5)
    assert torch.equal(layer(inputs.clone()), expected)  # in place: torch's own dropout
    strided = torch.randn(8, 6).t()  # not contiguous
    torch.manual_seed(6)
    out = cheap_dropout(strided, 0.4)
    torch.manual_seed(6)
    assert torch.equal(out, cheap_dropout(strided.contiguous(), 0.4))


def test_swapping_twice_changes_nothing_and_subclasses_stay():
    class Special(nn.Dropout):
        pass

    model = nn.Sequential(nn.Dropout(0.1), Special(0.1), nn.Identity())
    assert cheap_dropout_masks(model) == 1
    assert cheap_dropout_masks(model) == 1
    assert type(model[0]) is CheapMaskDropout and type(model[1]) is Special


def test_loaded_backbones_and_lora_dropouts_are_covered(tiny_encoder_dir, tiny_llama_dir):
    encoder, _ = load_encoder(str(tiny_encoder_dir))
    llm, _ = load_causal_lm(str(tiny_llama_dir))
    for model in (encoder, llm):
        assert not [m for m in model.modules() if type(m) is nn.Dropout]
    adapters = ClientAdapters(encoder, LoRASettings(dropout=0.05), num_clients=2)
    lora_dropouts = [
        module
        for name, module in adapters.model.named_modules()
        if ".lora_dropout." in name and isinstance(module, nn.Dropout)
    ]
    assert len(lora_dropouts) >= 2
    assert all(type(m) is CheapMaskDropout and m.p == 0.05 for m in lora_dropouts)

"""The frozen base's kept autocast casts (bit for bit autocast's) and the bf16 CPU check."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from fellrec.models.backbone import load_causal_lm, load_encoder
from fellrec.models.low_precision import (
    CachedCastLinear,
    cache_frozen_casts,
    cpu_bf16_matrix_units,
)


def _frozen_mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4, bias=False))
    model.requires_grad_(False)
    return model


def _run(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return model(inputs)


def test_kept_casts_are_autocast_bit_for_bit_and_made_once():
    inputs = torch.randn(5, 8)
    plain, cached = _frozen_mlp(), _frozen_mlp()
    assert cache_frozen_casts(cached) == 2
    first = _run(cached, inputs)
    kept = cached[0]._cast_weight
    assert kept is not None and kept.dtype == torch.bfloat16
    assert torch.equal(first, _run(plain, inputs))
    assert torch.equal(_run(cached, inputs), first)
    assert cached[0]._cast_weight is kept  # the same copy, not a new cast per call


def test_no_copy_without_autocast_or_while_trainable():
    inputs = torch.randn(5, 8)
    plain, cached = _frozen_mlp(), _frozen_mlp()
    cache_frozen_casts(cached)
    assert torch.equal(cached(inputs), plain(inputs))  # fp32, the plain forward
    assert cached[0]._cast_weight is None
    cached.requires_grad_(True)
    plain.requires_grad_(True)
    out = _run(cached, inputs)
    assert cached[0]._cast_weight is None  # trainable: autocast's own (cached) path
    assert torch.equal(out, _run(plain, inputs))
    out.float().sum().backward()
    assert cached[0].weight.grad is not None


def test_a_changed_weight_is_cast_again():
    inputs = torch.randn(5, 8)
    cached = _frozen_mlp(0)
    cache_frozen_casts(cached)
    _run(cached, inputs)
    other = _frozen_mlp(1)
    cached.load_state_dict(other.state_dict())  # copies in place: same storage, new version
    assert torch.equal(_run(cached, inputs), _run(other, inputs))
    with torch.no_grad():
        cached[2].weight.mul_(2)
        other[2].weight.mul_(2)
    assert torch.equal(_run(cached, inputs), _run(other, inputs))


def test_state_copies_and_subclasses_stay_as_they_were():
    cached = _frozen_mlp()
    cache_frozen_casts(cached)
    assert cache_frozen_casts(cached) == 2  # again: nothing new
    assert set(cached.state_dict()) == set(_frozen_mlp().state_dict())
    twin = copy.deepcopy(cached)
    with torch.no_grad():
        twin[0].weight.zero_()
    inputs = torch.randn(3, 8)
    assert not torch.equal(_run(twin, inputs), _run(cached, inputs))  # each its own weights

    class Special(nn.Linear):
        pass

    holder = nn.Sequential(Special(4, 4))
    assert cache_frozen_casts(holder) == 0
    assert type(holder[0]) is Special


def test_loaded_backbones_are_covered_and_run_as_before(tiny_encoder_dir, tiny_llama_dir):
    encoder, _ = load_encoder(str(tiny_encoder_dir))
    llm, _ = load_causal_lm(str(tiny_llama_dir))
    for model in (encoder, llm):
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        assert linears and all(type(m) is CachedCastLinear for m in linears)
    encoder.eval().requires_grad_(False)
    ids = torch.tensor([[1, 5, 7, 2]])
    cached = _run(encoder, ids).last_hidden_state
    for layer in encoder.modules():
        if type(layer) is CachedCastLinear:
            layer.__class__ = nn.Linear
    assert torch.equal(cached, _run(encoder, ids).last_hidden_state)


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ("flags\t\t: fpu sse2 avx512f avx512_bf16 amx_tile", True),
        ("flags\t\t: fpu sse2 avx512f amx_bf16", True),
        ("Features\t: fp asimd bf16 i8mm", True),
        ("flags\t\t: fpu sse2 avx2 avx512f", False),
    ],
)
def test_bf16_units_read_from_cpuinfo(tmp_path, flags, expected):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\n{flags}\n")
    assert cpu_bf16_matrix_units(cpuinfo) is expected
    assert cpu_bf16_matrix_units(tmp_path / "missing") is False


def test_the_bf16_hint_only_for_fp32_on_a_cpu_with_bf16_units():
    from fellrec.training.records.run_start import precision_hint

    hint = precision_hint("cpuaccelerator", "32-true", bf16_units=True)
    assert hint is not None and "--trainer.precision bf16-mixed" in hint
    assert precision_hint("cpuaccelerator", "32-true", bf16_units=False) is None
    assert precision_hint("cpuaccelerator", "bf16-mixed", bf16_units=True) is None
    assert precision_hint("cudaaccelerator", "32-true", bf16_units=True) is None


def _flash_allowed() -> bool:
    return bool(torch.backends.cuda.flash_sdp_enabled())


@pytest.mark.parametrize(
    ("length", "dtype", "math_only"),
    [(10, torch.bfloat16, True), (128, torch.bfloat16, True), (129, torch.bfloat16, False),
     (10, torch.float16, False), (10, None, False)],
)  # fmt: skip
def test_short_bf16_cpu_passes_take_the_math_attention_kernel(length, dtype, math_only):
    from fellrec.models.low_precision import cpu_attention_kernels

    hidden = torch.zeros(2, length, 8)
    autocast = torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None)
    with autocast, cpu_attention_kernels(hidden):
        assert _flash_allowed() is not math_only
        assert torch.backends.cuda.math_sdp_enabled()
    assert _flash_allowed()  # restored


def test_split_equals_unsplit_under_bf16_with_the_math_kernel(tiny_llama_dir):
    from fellrec.models.split import UnsplitTrunk, make_trunk

    model, _ = load_causal_lm(str(tiny_llama_dir))
    model.eval().requires_grad_(False)
    ids = torch.tensor([[0, 0, 5, 7, 9], [3, 4, 5, 6, 7]])
    mask = (ids > 0).long()
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        split = make_trunk(model, True, 1, 1, None)(ids, mask)
        whole = UnsplitTrunk(model)(ids, mask)
    assert torch.equal(split[mask.bool()], whole[mask.bool()])

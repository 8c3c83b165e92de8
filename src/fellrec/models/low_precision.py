"""Mixed precision on a CPU: casts made once, the attention kernel, whether bf16 pays.

Under ``torch.autocast`` every ``nn.Linear`` casts its weight to the lower precision at every call,
and autocast caches that cast only for *trainable* leaf weights (``requires_grad``): the frozen
base of a LoRA model, which is nearly all of its weights, is cast afresh at every forward pass
of every step. :func:`cache_frozen_casts` keeps one cast copy per frozen ``nn.Linear`` instead,
made the first time the layer runs under autocast and remade when the weight changes. The math
is autocast's own, bit for bit (the same cast of the same values; autocast casts the input and
runs the same kernel); outside autocast the layer runs as before, and without autocast no copy
is ever made. Measured on MiniLM (benchmarks/README.md, "bench_train_step.py"): 1-2% of a
bf16-mixed step on a 2-core CPU (~6 ms of memory traffic; more for larger bases).

:func:`cpu_attention_kernels` picks torch's math attention kernel over its flash kernel for short
sequences under bf16 autocast on a CPU: there the flash kernel's backward is several times slower
(SmolLM2-135M reading 10 item tokens: 2.8 s of a 5.3 s step; with the math kernel the step takes
1.3 s; benchmarks/README.md, "bench_train_step.py").

:func:`cpu_bf16_matrix_units` tells whether this CPU multiplies bf16 in hardware (AVX-512 BF16
or AMX), which is when ``--trainer.precision bf16-mixed`` pays on a CPU.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

#: ``/proc/cpuinfo`` flags of bf16 matrix arithmetic (x86: AVX-512 BF16, AMX; Arm: bf16).
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


#: Query lengths up to which the math attention kernel beats the flash one on a CPU in bf16
#: (forward + backward, measured at 10-512 positions: flash/math 1.4-3.0 up to 128, 0.3-0.5 from
#: 256 on).
MATH_ATTENTION_MAX_LENGTH = 128


def cpu_attention_kernels(hidden: Tensor) -> AbstractContextManager[None]:
    """The attention kernels for a forward pass over ``hidden`` ``(B, T, H)``.

    Torch's math kernel on a CPU under bf16 autocast for ``T`` up to
    :data:`MATH_ATTENTION_MAX_LENGTH` (the backward follows the forward's choice); elsewhere
    torch's own choice. The choice holds for the split and the unsplit model alike, so the two
    stay equal.
    """
    if (
        hidden.device.type != "cpu"
        or hidden.dim() < 2
        or hidden.shape[1] > MATH_ATTENTION_MAX_LENGTH
        or not torch.is_autocast_enabled("cpu")
        or torch.get_autocast_dtype("cpu") != torch.bfloat16
    ):
        return nullcontext()
    return sdpa_kernel([SDPBackend.MATH])


def cpu_bf16_matrix_units(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU has bf16 matrix instructions (so bf16 autocast runs faster than fp32).

    Args:
        cpuinfo: The kernel's CPU description (Linux); elsewhere the answer is ``False``.
    """
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            flags = set(line.partition(":")[2].split())
            return any(flag in flags for flag in BF16_CPU_FLAGS)
    return False


class CachedCastLinear(nn.Linear):
    """An ``nn.Linear`` that keeps its autocast cast while frozen (see the module docstring).

    Layers become one by :func:`cache_frozen_casts` (their class is swapped, their state is
    untouched, so checkpoints, ``deepcopy`` and ``.to()`` behave as for ``nn.Linear``).
    """

    _cast_key: tuple[object, ...] | None = None
    _cast_weight: Tensor | None = None
    _cast_bias: Tensor | None = None

    def forward(self, inputs: Tensor) -> Tensor:
        """``nn.Linear``'s forward; under autocast while frozen, with the kept cast."""
        device_type = self.weight.device.type
        frozen = not self.weight.requires_grad and (
            self.bias is None or not self.bias.requires_grad
        )
        if not frozen or not torch.is_autocast_enabled(device_type):
            return super().forward(inputs)
        dtype = torch.get_autocast_dtype(device_type)
        if self.weight.dtype == dtype:
            return super().forward(inputs)
        weight, bias = self._cast(dtype)
        return F.linear(inputs, weight, bias)  # autocast casts the input, as it would

    def _cast(self, dtype: torch.dtype) -> tuple[Tensor, Tensor | None]:
        """The weight and bias in ``dtype``, made again if either changed since."""
        weight, bias = self.weight, self.bias
        # _version counts in-place writes (load_state_dict copies in place); data_ptr a swap.
        key = (
            dtype,
            weight.device,
            weight.data_ptr(),
            weight._version,
            None if bias is None else (bias.data_ptr(), bias._version),
        )
        if key != self._cast_key:
            self._cast_weight = weight.detach().to(dtype)
            self._cast_bias = None if bias is None else bias.detach().to(dtype)
            self._cast_key = key
        assert self._cast_weight is not None
        return self._cast_weight, self._cast_bias


def cache_frozen_casts(model: nn.Module) -> int:
    """Make every plain ``nn.Linear`` of ``model`` a :class:`CachedCastLinear`.

    Subclasses of ``nn.Linear`` (peft's LoRA layers, bitsandbytes' 8-bit layers) are left alone;
    the plain layer a LoRA layer wraps is covered. Layers whose weight is not a plain tensor
    (sharded ``DTensor`` parameters) are left alone too. Calling it again changes nothing.

    Args:
        model: The model whose frozen linear layers run under autocast.

    Returns:
        How many layers are covered.
    """
    covered = 0
    for layer in model.modules():
        if type(layer) is CachedCastLinear:
            covered += 1
        elif type(layer) is nn.Linear and type(layer.weight.data) is Tensor:
            layer.__class__ = CachedCastLinear
            covered += 1
    return covered

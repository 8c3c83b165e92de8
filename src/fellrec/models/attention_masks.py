"""Attention masks and positions for running blocks outside their model's forward (split models).

Pure tensor functions. Decoders get causal + key-padding patterns (optionally a sliding window, and
only the new queries during cached generation); encoders a key-padding pattern. Eager attention
takes them additive (0 / dtype min); torch's sdpa takes them boolean, which stays valid whatever
dtype autocast gives the query.
"""

from __future__ import annotations

import torch
from torch import Tensor


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """Position ids counting real tokens only, so left and right padding both work.

    Args:
        attention_mask: ``(B, T)``, 1 for real tokens.

    Returns:
        ``(B, T)`` int64: 0, 1, ... over the real tokens; left padding gets 0, right padding repeats
        the last position.
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def decoder_allowed(
    attention_mask: Tensor, sliding_window: int | None = None, query_length: int | None = None
) -> Tensor:
    """Causal + key-padding pattern ``(B, 1, T_q, T)``: True where a query may attend to a key.

    Args:
        attention_mask: ``(B, T)``, 1 for real tokens (all keys, cached ones included).
        sliding_window: If set, a query sees only the last ``sliding_window`` keys (Mistral).
        query_length: The queries are the last ``query_length`` positions (default all ``T``):
            during cached generation only the new tokens are queries.
    """
    length = attention_mask.shape[-1]
    keys = torch.arange(length, device=attention_mask.device)
    queries = keys[length - (query_length or length) :]
    allowed = keys[None, :] <= queries[:, None]  # (T_q, T_k)
    if sliding_window is not None:
        allowed = allowed & (keys[None, :] > queries[:, None] - sliding_window)
    return allowed[None, None] & attention_mask.bool()[:, None, None, :]


def decoder_attention_mask(
    attention_mask: Tensor, dtype: torch.dtype, sliding_window: int | None = None
) -> Tensor:
    """Additive causal + key-padding mask ``(B, 1, T, T)``: 0 where allowed, dtype min elsewhere.

    Args:
        attention_mask: ``(B, T)``, 1 for real tokens.
        dtype: Float dtype of the hidden states.
        sliding_window: If set, a query sees only the last ``sliding_window`` keys (Mistral).
    """
    return additive_mask(decoder_allowed(attention_mask, sliding_window), dtype)


def encoder_attention_mask(attention_mask: Tensor, dtype: torch.dtype) -> Tensor:
    """Additive key-padding mask ``(B, 1, 1, T)``: 0 for real keys, dtype min for padding."""
    return additive_mask(attention_mask.bool()[:, None, None, :], dtype)


def sdpa_mask(allowed: Tensor) -> Tensor:
    """A boolean mask for torch's scaled-dot-product attention (True = attend).

    Boolean, not additive: under autocast the attention runs in bf16/fp16 while the hidden states
    (and so an additive mask) may be fp32 or fp16, and CUDA's sdpa kernels reject a float mask
    whose dtype differs from the query's. Rows with no allowed key (queries at left padding) may
    attend everywhere instead of producing NaN; their outputs are never used.
    """
    return allowed | ~allowed.any(-1, keepdim=True)


def additive_mask(allowed: Tensor, dtype: torch.dtype) -> Tensor:
    """The additive form of a boolean pattern: 0 where allowed, ``dtype``'s min elsewhere."""
    # The dtype's min, not -inf: fully masked (padding) rows then stay finite instead of NaN.
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)

"""Tiny random models of every family split execution supports (no downloads), for the tests.

Each family is built from its config class with 4 blocks, hidden size 32 and LoRA on two
projections per block, so that every test can count 16 adapter tensors.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import transformers as tf
from packaging.version import Version
from peft import LoraConfig, get_peft_model
from torch import nn

#: transformers 5 is what the newer families are verified (and supported) on.
TRANSFORMERS_5 = Version(tf.__version__) >= Version("5")
needs_transformers_5 = pytest.mark.skipif(
    not TRANSFORMERS_5, reason="split execution of this family needs transformers>=5"
)


def decoder_config(cls: type, **extra: Any) -> Any:
    """A 4-block decoder config with grouped-query attention and in-vocabulary special tokens."""
    return cls(
        vocab_size=3000,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        **extra,
    )


def _gpt2() -> nn.Module:
    config = tf.GPT2Config(
        vocab_size=3000,
        n_embd=32,
        n_layer=4,
        n_head=4,
        n_positions=64,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    return tf.GPT2LMHeadModel(config)


def _distilbert() -> nn.Module:
    config = tf.DistilBertConfig(
        vocab_size=3000,
        dim=32,
        hidden_dim=64,
        n_layers=4,
        n_heads=2,
        dropout=0.0,
        attention_dropout=0.0,
        max_position_embeddings=40,
        pad_token_id=0,
    )
    return tf.DistilBertModel(config)


def _modernbert() -> nn.Module:
    config = tf.ModernBertConfig(
        vocab_size=3000,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=2,
        local_attention=4,  # half-window 2: tokens see 2 neighbours each side
        global_attn_every_n_layers=2,
        max_position_embeddings=40,
        embedding_dropout=0.0,
        attention_dropout=0.0,
        mlp_dropout=0.0,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        cls_token_id=1,
        sep_token_id=2,
    )
    return tf.ModernBertModel(config)


#: name -> (builder, LoRA target modules, padding side the family is used with).
FAMILIES: dict[str, tuple[Callable[[], nn.Module], list[str], str]] = {
    "qwen3": (lambda: tf.Qwen3ForCausalLM(decoder_config(tf.Qwen3Config, head_dim=8)), [], "left"),
    "qwen3-sliding": (
        lambda: tf.Qwen3ForCausalLM(
            decoder_config(
                tf.Qwen3Config,
                head_dim=8,
                use_sliding_window=True,
                sliding_window=3,
                max_window_layers=2,
            )
        ),
        [],
        "left",
    ),
    "phi3": (
        lambda: tf.Phi3ForCausalLM(decoder_config(tf.Phi3Config)),
        ["qkv_proj", "o_proj"],
        "left",
    ),
    "gemma": (lambda: tf.GemmaForCausalLM(decoder_config(tf.GemmaConfig, head_dim=8)), [], "left"),
    "gemma2": (
        lambda: tf.Gemma2ForCausalLM(decoder_config(tf.Gemma2Config, head_dim=8, sliding_window=3)),
        [],
        "left",
    ),
    "gemma3": (
        lambda: tf.Gemma3ForCausalLM(
            decoder_config(
                tf.Gemma3TextConfig, head_dim=8, sliding_window=3, sliding_window_pattern=2
            )
        ),
        [],
        "left",
    ),
    "gpt2": (_gpt2, ["c_attn", "attn.c_proj"], "left"),
    "distilbert": (_distilbert, ["q_lin", "v_lin"], "right"),
    "modernbert": (_modernbert, ["Wqkv", "attn.Wo"], "right"),
}
#: The encoder families (the others are decoders, which generate).
ENCODER_FAMILIES = ["distilbert", "modernbert"]
DECODER_FAMILIES = [name for name in FAMILIES if name not in ENCODER_FAMILIES]


def with_lora(model: nn.Module, targets: list[str]) -> nn.Module:
    """``model`` with LoRA (r 4) on ``targets``; B drawn at random so every adapter contributes."""
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=targets)
    torch.manual_seed(0)  # peft draws the A matrices from the global generator
    peft_model = get_peft_model(model, lora)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:  # peft starts B at zero; make every adapter contribute.
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    return peft_model


def build_family(name: str, lora: bool = True) -> nn.Module:
    """The family's tiny model (seeded), with LoRA on its two target projections per block."""
    build, targets, _ = FAMILIES[name]
    torch.manual_seed(0)
    model = build()
    return with_lora(model, targets or ["q_proj", "v_proj"]) if lora else model

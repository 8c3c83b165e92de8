"""Resource accounting: exact counts against real tiny models, hand-computed bytes and FLOPs."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import (
    BertConfig,
    BertModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from fellrec.models.adapters import LoRASettings
from fellrec.models.parameter_counts import count_parameters, lora_parameters
from fellrec.models.resource_tables import (
    format_cost_table,
    format_report,
    human_bytes,
    human_count,
    human_flops,
)
from fellrec.models.resources import cost_table, resource_report
from fellrec.models.split import SplitModel
from fellrec.models.split_plan import plan_split
from fellrec.models.transport import LocalTransport
from split_families import FAMILIES, build_family, needs_transformers_5


def llama_config(tied: bool = True, **overrides) -> LlamaConfig:
    values = dict(
        vocab_size=120,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=tied,
    )
    return LlamaConfig(**(values | overrides))


def bert_config() -> BertConfig:
    return BertConfig(
        vocab_size=120,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=40,
    )


def numel(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def lora_numel(model: torch.nn.Module, targets: list[str], r: int) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = get_peft_model(model, LoraConfig(r=r, target_modules=targets))
    return sum(p.numel() for p in peft_model.parameters() if p.requires_grad)


@pytest.mark.parametrize("tied", [True, False])
def test_llama_counts_match_the_real_model(tied):
    config = llama_config(tied)
    model = LlamaForCausalLM(config)
    counts = count_parameters(config)
    assert counts.total == numel(model)
    assert counts.per_block == numel(model.model.layers[0])
    assert counts.embeddings == numel(model.model.embed_tokens)
    assert counts.final_norm == numel(model.model.norm)
    assert counts.head == (0 if tied else numel(model.lm_head))


def test_biased_llama_and_qwen2_counts_match_the_real_models():
    config = llama_config(False, attention_bias=True, mlp_bias=True)
    assert count_parameters(config).total == numel(LlamaForCausalLM(config))
    qwen = Qwen2Config(
        vocab_size=120,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
    )
    model = Qwen2ForCausalLM(qwen)  # q/k/v always have biases
    assert count_parameters(qwen).total == numel(model)
    assert count_parameters(qwen).per_block == numel(model.model.layers[0])


def test_bert_counts_match_the_real_model_with_its_pooler():
    config = bert_config()
    model = BertModel(config)
    counts = count_parameters(config)
    assert counts.total == numel(model)
    assert counts.per_block == numel(model.encoder.layer[0])
    assert counts.embeddings == numel(model.embeddings)
    assert counts.pooler == numel(model.pooler)


@pytest.mark.parametrize(
    ("make", "targets"),
    [
        (lambda: (llama_config(), LlamaForCausalLM), ["q_proj", "v_proj"]),
        (lambda: (llama_config(False), LlamaForCausalLM), ["q_proj", "down_proj", "lm_head"]),
        (lambda: (llama_config(), LlamaForCausalLM), ["k_proj", "embed_tokens"]),
        (lambda: (bert_config(), BertModel), ["query", "value"]),
        (lambda: (bert_config(), BertModel), ["dense"]),  # includes the pooler's dense
    ],
)
def test_lora_counts_match_peft(make, targets):
    config, cls = make()
    counts = count_parameters(config)
    per_block, outside = lora_parameters(counts, LoRASettings(r=4, target_modules=targets))
    assert counts.num_layers * per_block + outside == lora_numel(cls(config), targets, 4)


def test_lora_default_targets_are_peft_defaults():
    config = llama_config()
    per_block, outside = lora_parameters(count_parameters(config), LoRASettings(r=4))
    assert 4 * per_block + outside == lora_numel(LlamaForCausalLM(config), ["q_proj", "v_proj"], 4)


def test_unknown_model_type_and_lora_target_are_clear_errors():
    with pytest.raises(ValueError, match=r"supports the model types.*llama"):
        count_parameters(type("Config", (), {"model_type": "longformer"})())
    with pytest.raises(ValueError, match=r"model\.lora\.target_modules.*query"):
        lora_parameters(count_parameters(llama_config()), LoRASettings(target_modules=["query"]))


# A hand-sized LLaMA: H=8, I=16, L=4, 2 heads of 4 (GQA: 1 kv head), V=100, tied embeddings.
TINY = dict(
    vocab_size=100,
    hidden_size=8,
    intermediate_size=16,
    num_hidden_layers=4,
    num_attention_heads=2,
    num_key_value_heads=1,
    tie_word_embeddings=True,
)
LORA = LoRASettings(r=2, target_modules=["q_proj", "v_proj"])


def test_hand_computed_report_of_a_tiny_split():
    config = LlamaConfig(**TINY)
    # Per block: q 8x8=64, k 8x4=32, v 32, o 64, gate/up/down 3 x 128 -> 576 linear weights,
    # + 2 RMSNorms of 8 -> 592. Embeddings 100x8=800, final norm 8, head 0 (tied): 3176.
    # LoRA r=2 per block: q 2*(8+8)=32 + v 2*(8+4)=24 = 56.
    report = resource_report(config, plan_split(4, 1, 1), LORA, 2, 5, 3, base_dtype_bytes=4)
    assert report["total_parameters"] == 3176 == numel(LlamaForCausalLM(config))
    assert report["lora_per_block"] == 56
    client, server, wire = report["client"], report["server"], report["transport"]
    assert (client["blocks"], server["blocks"]) == (2, 2)
    assert client["frozen_parameters"] == 800 + 8 + 2 * 592 == 1992
    assert client["trainable_parameters"] == 2 * 56
    assert server["frozen_parameters"] == 2 * 592
    assert server["trainable_parameters"] == 3 * 2 * 56  # every client's middle adapters
    assert client["weight_bytes"] == 1992 * 4 and server["weight_bytes"] == 1184 * 4
    assert client["optimizer_bytes"] == 112 * 16 and server["optimizer_bytes"] == 336 * 16
    # Block activations, s=5 b=2 h=8 a=2: 34*5*2*8 + 5*2*25*2 = 2720 + 500 = 3220 (16-bit),
    # x 4/2 for fp32 = 6440. The client adds fp32 logits 2*5*100*4 = 4000.
    assert client["activation_bytes"] == 2 * 6440 + 4000
    assert server["activation_bytes"] == 2 * 6440
    assert client["memory_bytes"] == 7968 + 1792 + 16880
    # n = 10 tokens. Per block: linear 2*576*10 = 11520, attention 4*2*25*8 = 1600,
    # LoRA 2*56*10 = 1120. LM head 2*8*100*10 = 16000 forward and backward.
    assert client["forward_flops"] == 2 * 11520 + 2 * 1600 + 2 * 1120 + 16000
    assert client["backward_flops"] == 2 * 11520 + 2 * 2 * 1600 + 2 * 2 * 1120 + 16000
    assert server["forward_flops"] == 2 * (11520 + 1600 + 1120) == 28480
    assert server["flops_per_step"] == 28480 + 2 * (11520 + 2 * 1600 + 2 * 1120) == 62400
    # Hidden states 2*5*8*4 = 320 bytes; mask and position ids 10 * 8 each.
    assert wire["to_server_forward"] == 320 + 160
    assert wire["to_client_forward"] == wire["to_server_backward"] == 320
    assert wire["to_client_backward"] == 320  # the front block has adapters
    assert wire["bytes_per_step"] == 1440
    assert wire["adapter_bytes_per_round"] == 112 * 4
    json.dumps(report)  # plain JSON values only
    assert "memory" in format_report(report)


def test_no_front_blocks_means_no_gradient_back_and_unsplit_means_no_wire():
    config = LlamaConfig(**TINY)
    wire = resource_report(config, plan_split(4, 0, 1), LORA, 2, 5, 3)["transport"]
    assert wire["to_client_backward"] == 0 and wire["bytes_per_step"] == 480 + 320 + 320
    unsplit = resource_report(config, None, LORA, 2, 5, 3)
    assert unsplit["client"]["frozen_parameters"] == 3176  # the client holds everything
    assert unsplit["client"]["trainable_parameters"] == 4 * 56
    assert unsplit["server"]["frozen_parameters"] == unsplit["server"]["flops_per_step"] == 0
    assert unsplit["transport"]["bytes_per_step"] == 0


def test_int8_base_keeps_embeddings_and_norms_in_16_bit():
    report = resource_report(LlamaConfig(**TINY), plan_split(4, 1, 1), LORA, 2, 5, 3, 1)
    # 2 blocks x 576 linear weights at 1 byte; the other 1992 - 1152 = 840 parameters at 2.
    assert report["client"]["weight_bytes"] == 1152 + 2 * 840
    assert report["activation_dtype_bytes"] == 2
    assert report["transport"]["to_client_forward"] == 2 * 5 * 8 * 2


@pytest.mark.parametrize(("k_front", "k_back"), [(0, 1), (1, 1), (2, 0)])
def test_transport_bytes_match_what_the_local_transport_sends(k_front, k_back):
    config = LlamaConfig(**TINY)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_peft_model(LlamaForCausalLM(config), LORA.to_peft())
    transport = LocalTransport()
    split = SplitModel(model, plan_split(4, k_front, k_back), transport)
    input_ids = torch.randint(0, 100, (2, 5))
    attention_mask = torch.ones(2, 5, dtype=torch.long)
    attention_mask[1, 3:] = 0
    split(input_ids, attention_mask).sum().backward()
    stats = transport.stats()
    wire = resource_report(config, split.plan, LORA, 2, 5, 3)["transport"]
    assert stats["bytes_to_server"] == wire["to_server_forward"] + wire["to_server_backward"]
    assert stats["bytes_to_client"] == wire["to_client_forward"] + wire["to_client_backward"]


def test_cost_table_rows_and_format():
    config = LlamaConfig(**TINY)
    rows = cost_table(config, [0, 1, 2], 1, LORA, 2, 5, 3)
    assert [r["k_front"] for r in rows] == [None, 0, 1, 2]
    assert [r["server_blocks"] for r in rows] == [0, 3, 2, 1]
    assert rows[0]["client_flop_share"] == 1.0 and not rows[0]["split"]
    assert all(r["client_parameters"] + r["server_parameters"] == 3176 for r in rows)
    text = format_cost_table(rows)
    assert text.splitlines()[2].lstrip().startswith("unsplit") and len(text.splitlines()) == 6
    with pytest.raises(ValueError, match=r"model\.k_front"):
        cost_table(config, [3], 1, LORA, 2, 5, 3)


def test_human_units():
    assert human_bytes(1536) == "1.50 KiB" and human_bytes(3 * 2**30) == "3.00 GiB"
    assert human_bytes(12) == "12 B" and human_bytes(0) == "0"
    assert human_count(134_515_008) == "134.52 M" and human_count(6_738_415_616) == "6.74 B"
    assert human_flops(2.5e12) == "2.50 TFLOP" and human_flops(3e9) == "3.00 GFLOP"


@needs_transformers_5
@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_supported_family_is_counted_exactly(family):
    model = build_family(family, lora=False)
    counts = count_parameters(model.config)
    assert counts.total == numel(model)
    inner = getattr(model, model.base_model_prefix, model)
    blocks = (
        inner.h
        if family == "gpt2"
        else (inner.transformer.layer if family == "distilbert" else inner.layers)
    )
    assert counts.num_layers == len(blocks) == 4
    assert counts.per_block == numel(blocks[0])
    targets = FAMILIES[family][1] or ["q_proj", "v_proj"]
    per_block, outside = lora_parameters(counts, LoRASettings(r=4, target_modules=targets))
    assert counts.num_layers * per_block + outside == lora_numel(model, targets, 4)
    report = resource_report(
        model.config,
        plan_split(4, 1, 1),
        LoRASettings(r=4, target_modules=targets),
        batch_size=2,
        seq_len=8,
        num_clients=3,
    )
    assert report["client"]["blocks"] == 2 and report["server"]["blocks"] == 2
    assert report["client"]["frozen_parameters"] + report["server"]["frozen_parameters"] == (
        counts.total
    )
    fresh = build_family(family, lora=False)  # lora_numel put adapters into `model`
    split = SplitModel(fresh, plan_split(4, 1, 1), LocalTransport())
    assert report["server"]["frozen_parameters"] == sum(numel(m) for m in split.server_modules())


@needs_transformers_5
@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_has_default_lora_targets_that_peft_accepts(family):
    from fellrec.models.adapters import default_lora_targets

    model = build_family(family, lora=False)
    targets = default_lora_targets(model.config.model_type)
    assert targets, family
    counts = count_parameters(model.config)
    per_block, outside = lora_parameters(counts, LoRASettings(r=4))  # the default targets
    assert counts.num_layers * per_block + outside == lora_numel(model, targets, 4)


def test_the_resource_summary_is_a_function_of_its_facts():
    from fellrec.models.adapters import LoRASettings
    from fellrec.models.split_plan import plan_split
    from fellrec.training.records.accounting import ResourceFacts, resource_summary_of

    facts = ResourceFacts(
        config=bert_config(),
        plan=plan_split(3, 1, 1),
        lora=LoRASettings(),
        batch_size=4,
        seq_len=8,
        num_clients=2,
        base_dtype_bytes=4,
        client_module_parameters=0,
        trainable_inputs=False,
        traffic_bytes=1000,
        traffic_steps=4,
    )
    report = resource_summary_of(facts)
    assert report == resource_summary_of(facts)  # no hidden state
    assert report["assumed"] == {"batch_size": 4, "seq_len": 8}
    assert report["measured"] == {
        "training_microbatches": 4,
        "training_bytes": 1000,
        "bytes_per_step": 250.0,
    }
    unknown = resource_summary_of(
        ResourceFacts(**{**facts.__dict__, "config": type("Config", (), {})(), "plan": None})
    )
    assert unknown["split"] is False and "unavailable" in unknown

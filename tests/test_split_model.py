from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import build_tiny_encoder
from fellrec.models.attention_masks import (
    additive_mask,
    decoder_allowed,
    decoder_attention_mask,
    encoder_attention_mask,
    position_ids_from_mask,
    sdpa_mask,
)
from fellrec.models.split import SplitModel, UnsplitTrunk, _causal_encoder_mask, make_trunk
from fellrec.models.split_plan import plan_split
from fellrec.models.split_support import SUPPORTED_MODEL_TYPES, num_blocks, split_family
from fellrec.models.transport import LocalTransport
from split_families import (
    FAMILIES,
    TRANSFORMERS_5,
    build_family,
    decoder_config,
    needs_transformers_5,
    with_lora,
)

ATOL = 1e-6
SPLITS = [(0, 1), (1, 1), (2, 1), (1, 2), (0, 0), (0, 3)]
Loss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@pytest.fixture(scope="module")
def tiny_bert4_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_encoder(tmp_path_factory.mktemp("tiny-bert4"), dropout=0.0, num_layers=4)


def _llama(directory: Path) -> nn.Module:
    from transformers import AutoModelForCausalLM

    return with_lora(AutoModelForCausalLM.from_pretrained(directory), ["q_proj", "v_proj"])


def _bert(directory: Path) -> nn.Module:
    from transformers import AutoModel

    return with_lora(AutoModel.from_pretrained(directory), ["query", "value"])


def _batch(padding: str, seed: int = 0, length: int = 9) -> tuple[torch.Tensor, torch.Tensor]:
    """Three rows: full, 3 padding tokens, 5 padding tokens (on the given side, if any)."""
    input_ids = torch.randint(
        1000, 3000, (3, length), generator=torch.Generator().manual_seed(seed)
    )
    attention_mask = torch.ones(3, length, dtype=torch.long)
    for row, pads in ((1, 3), (2, 5)) if padding != "none" else ():
        if padding == "right":
            attention_mask[row, length - pads :] = 0
        else:
            attention_mask[row, :pads] = 0
    return input_ids.masked_fill(attention_mask == 0, 0), attention_mask


def _lm_loss(model: nn.Module) -> Loss:
    """Causal-LM cross-entropy through ``lm_head`` over real next tokens."""
    head = model.get_base_model().lm_head

    def loss(hidden: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        valid = (mask[:, 1:] * mask[:, :-1]).bool()
        return F.cross_entropy(head(hidden)[:, :-1][valid], input_ids[:, 1:][valid])

    return loss


def _pooled_loss(hidden: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean-pooled vectors through a fixed projection, cross-entropy against fixed classes."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * weights).sum(1) / weights.sum(1)
    projection = torch.randn(hidden.shape[-1], 5, generator=torch.Generator().manual_seed(7))
    return F.cross_entropy(pooled @ projection, torch.arange(hidden.shape[0]) % 5)


def _run(model: nn.Module, trunk: Callable, loss_fn: Loss, batches: list) -> tuple:
    """Loss of every micro-batch, hidden states and accumulated adapter gradients."""
    model.zero_grad(set_to_none=True)
    losses, hiddens = [], []
    for input_ids, mask in batches:
        hidden = trunk(input_ids, mask)
        loss = loss_fn(hidden, input_ids, mask)
        loss.backward()
        losses.append(loss.detach())
        hiddens.append(hidden.detach())
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return losses, hiddens, grads


def _assert_same(split: tuple, unsplit: tuple, batches: list, num_adapters: int) -> None:
    for got, want in zip(split[0], unsplit[0], strict=True):
        assert abs(got.item() - want.item()) <= ATOL
    for got, want, (_, mask) in zip(split[1], unsplit[1], batches, strict=True):
        real = mask.bool()  # Padded query rows are never used and may differ.
        assert (got[real] - want[real]).abs().max().item() <= ATOL
    assert split[2].keys() == unsplit[2].keys()
    assert len(unsplit[2]) == num_adapters
    for name, want in unsplit[2].items():
        assert want.abs().max() > 0, name  # every adapter (server's too) really trains
        assert (split[2][name] - want).abs().max().item() <= ATOL, name


def _compare(model: nn.Module, loss_fn: Loss, batches: list, k_front: int, k_back: int) -> None:
    unsplit = _run(model, UnsplitTrunk(model), loss_fn, batches)
    transport = LocalTransport()
    trunk = make_trunk(model, True, k_front, k_back, transport)
    assert isinstance(trunk, SplitModel)
    split = _run(model, trunk, loss_fn, batches)
    # 4 blocks x 2 adapted projections x (A, B)
    _assert_same(split, unsplit, batches, num_adapters=16)
    assert transport.calls == len(batches)
    assert transport.stats()["bytes_backward"] > 0


@pytest.mark.parametrize(("k_front", "k_back"), SPLITS)
@pytest.mark.parametrize("padding", ["right", "left", "none"])
def test_decoder_split_equals_unsplit(
    tiny_llama_dir: Path, k_front: int, k_back: int, padding: str
) -> None:
    model = _llama(tiny_llama_dir)
    _compare(model, _lm_loss(model), [_batch(padding)], k_front, k_back)


@pytest.mark.parametrize(("k_front", "k_back"), SPLITS)
def test_encoder_split_equals_unsplit(tiny_bert4_dir: Path, k_front: int, k_back: int) -> None:
    model = _bert(tiny_bert4_dir)
    _compare(model, _pooled_loss, [_batch("right"), _batch("none", 1)], k_front, k_back)


def test_gradient_accumulation_matches(tiny_llama_dir: Path, tiny_bert4_dir: Path) -> None:
    llama, bert = _llama(tiny_llama_dir), _bert(tiny_bert4_dir)
    _compare(llama, _lm_loss(llama), [_batch("left", 1), _batch("none", 2, length=6)], 1, 1)
    _compare(bert, _pooled_loss, [_batch("right", 1), _batch("none", 2, length=6)], 1, 1)


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_evaluation_modes(tiny_llama_dir: Path, tiny_bert4_dir: Path, context: type) -> None:
    for model, padding in ((_llama(tiny_llama_dir), "left"), (_bert(tiny_bert4_dir), "right")):
        input_ids, mask = _batch(padding)
        transport = LocalTransport()
        split = make_trunk(model, True, 1, 1, transport)
        with context():
            got, want = split(input_ids, mask), UnsplitTrunk(model)(input_ids, mask)
        assert not got.requires_grad
        assert (got - want)[mask.bool()].abs().max().item() <= ATOL
        assert transport.stats()["bytes_backward"] == 0
        assert transport.stats()["bytes_forward"] > 0


def test_left_padding_matches_the_unpadded_sequence(tiny_llama_dir: Path) -> None:
    model = _llama(tiny_llama_dir)
    input_ids, mask = _batch("left")
    alone = input_ids[2:, 5:]
    with torch.no_grad():
        want = UnsplitTrunk(model)(alone, torch.ones_like(alone))[0]
        for trunk in (UnsplitTrunk(model), make_trunk(model, True, 1, 1, None)):
            assert torch.allclose(trunk(input_ids, mask)[2, 5:], want, atol=1e-5, rtol=0)


def test_split_shares_the_modules(tiny_llama_dir: Path) -> None:
    model = _llama(tiny_llama_dir)
    split = SplitModel(model, plan_split(4, 1, 2), LocalTransport())
    layers = model.get_base_model().model.layers
    assert split.server_modules() == [layers[1]]
    client = split.client_modules()
    assert client[0] is model.get_base_model().model.embed_tokens
    assert client[1:] == [layers[0], layers[2], layers[3], model.get_base_model().model.norm]


def test_position_ids_from_mask() -> None:
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert position_ids_from_mask(mask).tolist() == [
        [0, 1, 2, 2, 2],
        [0, 0, 0, 1, 2],
        [0, 1, 2, 3, 4],
    ]


def test_families_and_blocks(tiny_llama_dir: Path, tiny_bert4_dir: Path) -> None:
    from transformers import AutoModel

    llama = _llama(tiny_llama_dir)
    assert split_family(llama) == "decoder"
    assert num_blocks(llama) == 4
    bare = AutoModel.from_pretrained(tiny_llama_dir)  # LlamaModel without the LM head
    assert (split_family(bare), num_blocks(bare)) == ("decoder", 4)
    assert (split_family(_bert(tiny_bert4_dir)), num_blocks(_bert(tiny_bert4_dir))) == (
        "encoder",
        4,
    )


def _opt() -> nn.Module:
    from transformers import OPTConfig, OPTModel

    config = OPTConfig(
        vocab_size=100,
        hidden_size=16,
        ffn_dim=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=40,
        word_embed_proj_dim=16,
    )
    return OPTModel(config)


def _longformer() -> nn.Module:
    from transformers import LongformerConfig, LongformerModel

    config = LongformerConfig(
        vocab_size=100,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        attention_window=4,
        max_position_embeddings=40,
    )
    return LongformerModel(config)


@pytest.mark.parametrize("build", [_opt, _longformer])
def test_unsupported_architectures(build: Callable[[], nn.Module]) -> None:
    model = build()
    supported = ", ".join(repr(t) for t in sorted(SUPPORTED_MODEL_TYPES))
    with pytest.raises(
        ValueError, match=rf"supports the model types \[{supported}\].*split_execution: false"
    ):
        make_trunk(model, True, 0, 0, None)
    # Unsplit, any backbone runs.
    input_ids = torch.randint(1, 100, (2, 8))
    with torch.no_grad():
        hidden = make_trunk(model, False, 0, 0, None)(input_ids, torch.ones_like(input_ids))
    assert hidden.shape == (2, 8, 16)


def test_invalid_split_and_attention(tiny_llama_dir: Path) -> None:
    model = _llama(tiny_llama_dir)
    with pytest.raises(ValueError, match=r"model\.k_front \+ model\.k_back must be <= 3"):
        make_trunk(model, True, 2, 2, None)
    with pytest.raises(ValueError, match="split plan for 6 blocks, but the model has 4"):
        SplitModel(model, plan_split(6, 1, 1), LocalTransport())
    model.get_base_model().config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match=r"attn_implementation='sdpa'"):
        make_trunk(model, True, 1, 1, None)


def test_lightning_manual_backward(tiny_llama_dir: Path) -> None:
    """One SGD step through Lightning's manual_backward gives the same adapters split or not."""
    import lightning as L

    batches = [_batch("left", 4), _batch("right", 5)]

    class Module(L.LightningModule):
        def __init__(self, split: bool) -> None:
            super().__init__()
            self.automatic_optimization = False
            self.net = _llama(tiny_llama_dir)
            self.trunk = make_trunk(self.net, split, 1, 1, None)
            self.loss_fn = _lm_loss(self.net)

        def training_step(self, batch: list[torch.Tensor], index: int) -> None:
            optimizer = self.optimizers()
            for input_ids, mask in batches:  # two accumulated micro-batches
                loss = self.loss_fn(self.trunk(input_ids, mask), input_ids, mask)
                self.manual_backward(loss)
            optimizer.step()
            optimizer.zero_grad()

        def configure_optimizers(self) -> torch.optim.Optimizer:
            params = [p for p in self.net.parameters() if p.requires_grad]
            return torch.optim.SGD(params, lr=0.5)

        def train_dataloader(self) -> list[list[torch.Tensor]]:
            return [[torch.zeros(1)]]

    trained = []
    for split in (False, True):
        module = Module(split)
        trainer = L.Trainer(
            max_steps=1,
            accelerator="cpu",
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        trainer.fit(module)
        trained.append({n: p.detach() for n, p in module.net.named_parameters() if "lora" in n})
    start = _llama(tiny_llama_dir)
    moved = 0
    for name, before in start.named_parameters():
        if "lora" in name:
            assert (trained[0][name] - trained[1][name]).abs().max().item() <= ATOL, name
            moved += int(not torch.equal(trained[0][name], before))
    assert moved == 16


def _encoder_config(cls: type) -> object:
    return cls(
        vocab_size=3000,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        max_position_embeddings=40,
        pad_token_id=0,
    )


#: Decoders split execution supports on every transformers (4.x too), sliding windows included.
DECODERS_ON_EVERY_TRANSFORMERS = ["qwen2-sliding", "mistral-sliding-eager", "llama-eager"]


def _other_family(name: str) -> tuple[nn.Module, list[str], str]:
    import transformers as tf

    torch.manual_seed(0)
    if name == "qwen2-sliding":  # blocks 2 and 3 use a window of 3 tokens
        config = decoder_config(
            tf.Qwen2Config, use_sliding_window=True, sliding_window=3, max_window_layers=2
        )
        return tf.Qwen2ForCausalLM(config), ["q_proj", "v_proj"], "left"
    if name == "mistral-sliding-eager":
        config = decoder_config(tf.MistralConfig, sliding_window=3, attn_implementation="eager")
        return tf.MistralForCausalLM(config), ["q_proj", "v_proj"], "left"
    if name == "llama-eager":
        config = decoder_config(tf.LlamaConfig, attn_implementation="eager")
        return tf.LlamaModel(config), ["q_proj", "v_proj"], "left"
    if name == "roberta":
        return tf.RobertaModel(_encoder_config(tf.RobertaConfig)), ["query", "value"], "right"
    return tf.XLMRobertaModel(_encoder_config(tf.XLMRobertaConfig)), ["query", "value"], "right"


@pytest.mark.parametrize(
    "name", ["qwen2-sliding", "mistral-sliding-eager", "llama-eager", "roberta", "xlm-roberta"]
)
def test_other_families_split_equals_unsplit(name: str) -> None:
    model, targets, padding = _other_family(name)
    model = with_lora(model, targets)
    _compare(model, _pooled_loss, [_batch(padding), _batch("none", 1)], 1, 1)


def test_decoder_mask_is_causal_padded_and_windowed() -> None:
    mask = decoder_attention_mask(torch.tensor([[0, 1, 1, 1]]), torch.float32, sliding_window=2)
    low = torch.finfo(torch.float32).min
    allowed = [
        [0, 0, 0, 0],  # a padding query sees nothing (it is never used)
        [0, 1, 0, 0],
        [0, 1, 1, 0],
        [0, 0, 1, 1],  # the window of 2 drops key 1 for query 3
    ]
    want = torch.tensor([[0.0 if a else low for a in row] for row in allowed])
    assert mask.shape == (1, 1, 4, 4)
    assert torch.equal(mask[0, 0], want)
    plain = decoder_attention_mask(torch.tensor([[1, 1, 1, 0]]), torch.float32)
    assert (plain[0, 0] == 0).tolist() == [
        [True, False, False, False],
        [True, True, False, False],
        [True, True, True, False],
        [True, True, True, False],
    ]
    padding = encoder_attention_mask(torch.tensor([[1, 1, 0]]), torch.float16)
    assert padding.shape == (1, 1, 1, 3)
    assert padding.flatten().tolist() == [0.0, 0.0, torch.finfo(torch.float16).min]
    assert padding.dtype == torch.float16 and plain.dtype == torch.float32


def test_sdpa_and_additive_forms_of_a_pattern() -> None:
    # Row 0: a query at left padding sees no key; sdpa lets it see every key (never NaN).
    allowed = torch.tensor([[[[False, False, False], [False, True, False], [True, True, True]]]])
    assert sdpa_mask(allowed).tolist() == [
        [[[True, True, True], [False, True, False], [True, True, True]]]
    ]
    low = torch.finfo(torch.bfloat16).min
    additive = additive_mask(allowed, torch.bfloat16)
    assert additive.dtype == torch.bfloat16 and additive.shape == (1, 1, 3, 3)
    assert additive[0, 0].tolist() == [[low, low, low], [low, 0.0, low], [0.0, 0.0, 0.0]]


def test_a_causal_encoder_mask_is_the_decoder_pattern_in_the_attention_s_form() -> None:
    mask = torch.tensor([[1, 1, 0]])
    pattern = decoder_allowed(mask)
    assert pattern[0, 0].tolist() == [
        [True, False, False],
        [True, True, False],
        [True, True, False],
    ]
    sdpa = _causal_encoder_mask(mask, SimpleNamespace(_attn_implementation="sdpa"), torch.float32)
    assert torch.equal(sdpa, sdpa_mask(pattern))
    eager = _causal_encoder_mask(mask, SimpleNamespace(_attn_implementation="eager"), torch.float16)
    assert eager.dtype == torch.float16
    assert torch.equal(eager, additive_mask(pattern, torch.float16))


@pytest.mark.parametrize("family", ["decoder", "encoder"])
def test_sdpa_masks_are_boolean_so_autocast_cannot_mismatch_them(
    family, tiny_llama_dir, tiny_bert4_dir
):
    # Under autocast the attention runs in bf16 while the hidden states may be fp32; CUDA's sdpa
    # rejects a float mask of another dtype than the query, so sdpa gets boolean masks.
    model = _llama(tiny_llama_dir) if family == "decoder" else _bert(tiny_bert4_dir)
    input_ids, attention_mask = _batch("left" if family == "decoder" else "right")
    split = make_trunk(model, True, 1, 1, LocalTransport())
    assert isinstance(split, SplitModel)
    masks = split._masks(split.plan.middle, attention_mask, torch.float32)
    assert all(m is None or m.dtype == torch.bool for m in masks.values())
    assert any(m is not None for m in masks.values())
    unsplit = make_trunk(model, False, 0, 0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected, got = unsplit(input_ids, attention_mask), split(input_ids, attention_mask)
    real = attention_mask.bool()
    assert torch.isfinite(got).all()
    assert torch.allclose(got[real].float(), expected[real].float(), atol=2e-2)


@needs_transformers_5
@pytest.mark.parametrize(("k_front", "k_back"), [(1, 1), (0, 0), (2, 1), (0, 3)])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_split_equals_unsplit(family: str, k_front: int, k_back: int) -> None:
    model = build_family(family)
    batches = [_batch(padding, seed) for seed, padding in enumerate(["left", "right", "none"])]
    _compare(model, _pooled_loss, batches, k_front, k_back)


@needs_transformers_5
@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_padded_rows_equal_each_row_alone(family: str) -> None:
    """Every real token of a padded batch equals that row run alone through the model's forward."""
    model = build_family(family)
    model.eval()
    padding = FAMILIES[family][2]
    input_ids, mask = _batch(padding)
    trunk = make_trunk(model, True, 1, 1, None)
    with torch.no_grad():
        batched = trunk(input_ids, mask)
        for row in range(input_ids.shape[0]):
            real = mask[row].bool()
            alone = input_ids[row : row + 1, real]
            want = UnsplitTrunk(model)(alone, torch.ones_like(alone))[0]
            assert (batched[row, real] - want).abs().max().item() <= 1e-5, row


@pytest.mark.skipif(TRANSFORMERS_5, reason="transformers 4.x only")
def test_newer_families_are_refused_on_transformers_4() -> None:
    model = build_family("qwen3", lora=False)
    with pytest.raises(ValueError, match=r"needs transformers>=5.*split_execution: false"):
        make_trunk(model, True, 1, 1, None)


@pytest.mark.parametrize(
    ("family", "setting", "message"),
    [
        ("gemma3", {"use_bidirectional_attention": True}, "bidirectional attention"),
        ("qwen3", {"layer_types": ["chunked_attention"] * 4}, r"chunked_attention"),
        ("gpt2", {"add_cross_attention": True}, "cross-attention"),
    ],
)
@needs_transformers_5
def test_settings_the_split_cannot_reproduce_are_refused(family, setting, message) -> None:
    model = build_family(family, lora=False)
    inner = model.model if hasattr(model, "model") else model.transformer
    for key, value in setting.items():
        setattr(inner.config, key, value)
    with pytest.raises(ValueError, match=rf"{message}.*model\.split_execution: false"):
        make_trunk(model, True, 1, 1, None)


def _encoder_as_decoder(name: str, attention: str) -> nn.Module:
    """A tiny BERT-style encoder configured as a decoder (causal self-attention in its forward)."""
    import transformers as tf

    classes = {
        "bert": (tf.BertConfig, tf.BertModel),
        "roberta": (tf.RobertaConfig, tf.RobertaModel),
        "xlm-roberta": (tf.XLMRobertaConfig, tf.XLMRobertaModel),
    }
    config_class, model_class = classes[name]
    config = _encoder_config(config_class)
    config.is_decoder = True
    config._attn_implementation = attention
    torch.manual_seed(0)
    return with_lora(model_class(config), ["query", "value"])


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("name", ["bert", "roberta", "xlm-roberta"])
def test_an_encoder_configured_as_a_decoder_splits_causally(name: str, attention: str) -> None:
    # Hugging Face runs these encoders with a causal mask when config.is_decoder is set; the
    # split must build the same mask (right padding, and none, as encoders are used with).
    model = _encoder_as_decoder(name, attention)
    _compare(model, _pooled_loss, [_batch("right"), _batch("none", 1)], 1, 1)
    split = make_trunk(model, True, 1, 1, LocalTransport())
    assert isinstance(split, SplitModel) and split.causal


@needs_transformers_5
@pytest.mark.parametrize("family", ["distilbert", "modernbert"])
def test_encoders_that_ignore_is_decoder_stay_bidirectional(family: str) -> None:
    # DistilBERT and ModernBERT have no decoder mode: their forward ignores config.is_decoder,
    # and so must the split.
    model = build_family(family)
    inner = model.get_base_model()
    inner.config.is_decoder = True
    padding = FAMILIES[family][2]
    _compare(model, _pooled_loss, [_batch(padding), _batch("none", 1)], 1, 1)
    split = make_trunk(model, True, 1, 1, LocalTransport())
    assert isinstance(split, SplitModel) and not split.causal


def test_a_window_shorter_than_an_unpadded_sequence_keeps_its_mask_under_sdpa() -> None:
    # Without padding sdpa needs no causal mask, but a sliding window shorter than the sequence
    # (3 < 9 tokens) still does; the full-attention blocks (window None) need none.
    model, _, _ = _other_family("qwen2-sliding")
    split = make_trunk(model, True, 1, 1, LocalTransport())
    assert isinstance(split, SplitModel)
    attention_mask = torch.ones(1, 9, dtype=torch.long)  # one row: batch size below the window
    masks = split._masks(range(4), attention_mask, torch.float32)
    assert masks[None] is None
    window = masks[3]
    assert window is not None
    assert torch.equal(window, sdpa_mask(decoder_allowed(attention_mask, 3)))

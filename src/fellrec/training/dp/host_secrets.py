"""Where a host's privacy noise gets its secret seeds: fresh entropy, or a node's own key.

Every privacy noise of a client (DP-SGD's sampling and noise, the DP popularity start, the
hidden-state noise) is seeded from a secret the server must not know. A simulation draws fresh
entropy once per process and keeps it in its checkpoints. A deployed node can be restarted
between rounds; fresh entropy would then release the same data again under new noise (two noisy
answers to one question average the noise away), which no accountant counts. So a deployed node
derives its secrets from a key of its own (kept on its machine) and a digest of its training
data: a restart with the same data answers exactly as before (nothing new is released), and a
silo whose data changed draws independent noise (the same noise on other data would let the
server subtract it).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

import numpy as np
import torch


class SecretSource(Protocol):
    """Gives a host the secret seed of one purpose, for the data the noise protects."""

    def __call__(self, purpose: str, data_digest: bytes) -> int:
        """A secret seed in ``[0, 2**62)`` for ``purpose`` (e.g. ``"dp_sgd"``)."""
        ...


def fresh_secret(purpose: str, data_digest: bytes) -> int:
    """Fresh OS entropy, whatever the purpose and data (a simulation's secrets)."""
    del purpose, data_digest  # independent of both by design
    return secrets.randbits(62)


class KeyedSecrets:
    """Secrets derived from a node's key: ``HMAC-SHA256(key, purpose | context | data digest)``.

    Args:
        key: The node's secret key (at least 16 bytes), never sent anywhere.
        context: What else must change the secrets: the federation's config fingerprint (all
            but its round budget), so a run with other settings (another noise scale) never
            reuses the noise of this one: two scales of the same draws would let the server
            solve for the data.
    """

    def __init__(self, key: bytes, context: str) -> None:
        if len(key) < 16:
            raise ValueError(f"a node's secret key needs at least 16 bytes, got {len(key)}")
        self._key = key
        self._context = context.encode()

    def __call__(self, purpose: str, data_digest: bytes) -> int:
        """The secret of ``purpose`` for the data whose digest is ``data_digest``."""
        message = b"\x00".join((purpose.encode(), self._context, data_digest))
        digest = hmac.new(self._key, message, hashlib.sha256).digest()
        return int.from_bytes(digest[:8], "little") >> 2


def data_digest(arrays: Iterable[np.ndarray]) -> bytes:
    """A content digest of a client's training data (each user's items, in order)."""
    hasher = hashlib.sha256()
    for array in arrays:
        values = np.ascontiguousarray(array, dtype=np.int64)
        hasher.update(len(values).to_bytes(8, "little"))
        hasher.update(values.tobytes())
    return hasher.digest()


def parameter_digests(rows: torch.Tensor) -> list[int]:
    """A 64-bit digest of each row of a host's parameters ``(S, P)`` (what a client was sent).

    Seeds mixed with it make a replay from the same parameters draw the same noise (nothing new
    released) and a request from other parameters draw other noise.
    """
    values = rows.detach().cpu().numpy()
    return [int.from_bytes(hashlib.sha256(row.tobytes()).digest()[:8], "little") for row in values]


def request_digests(rows: torch.Tensor, configs: Sequence[Sequence[float]]) -> list[int]:
    """A 64-bit digest of what each client was asked: its parameters and its round config.

    Args:
        rows: The parameters each client was sent ``(S, P)``.
        configs: Each client's round config as numbers (round, learning-rate scale, proximal
            weight, whether it trains): the same parameters asked with another config are
            another question, whose noise must be another.
    """
    values = rows.detach().cpu().numpy()
    digests = []
    for row, config in zip(values, configs, strict=True):
        hasher = hashlib.sha256(row.tobytes())
        hasher.update(np.asarray([float(v) for v in config], dtype=np.float64).tobytes())
        digests.append(int.from_bytes(hasher.digest()[:8], "little"))
    return digests


def bound_secrets(
    source: SecretSource,
    digest: Callable[[], bytes],
    broadcast: Callable[[int], int] | None = None,
) -> Callable[[str], int]:
    """A host's secret of each purpose, bound to the data its noise protects.

    Args:
        source: Where secrets come from (fresh entropy, or a node's :class:`KeyedSecrets`).
        digest: The digest of the host's data, computed at the first call only (a
            simulation's fresh entropy ignores it; hashing the data is not free).
        broadcast: Under data parallelism, rank zero's value sent to every process (every
            process holds every client: they must draw the same noise); None in one process.

    Returns:
        ``secret(purpose)``.
    """
    digests: list[bytes] = []

    def secret(purpose: str) -> int:
        if not digests:
            digests.append(digest())
        value = source(purpose, digests[0])
        return broadcast(value) if broadcast is not None else value

    return secret


def share_noise_seed(base: int, round_index: int, client: int, request: int) -> int:
    """The seed of a client's share noise in a round (``model.items.share_noise_*``).

    Args:
        base: The secret base (``model.items.bias_init_seed`` or the host's own secret).
        round_index: The round whose parameters leave the silo.
        client: The client id.
        request: The digest of what the client was asked (:func:`request_digests`): the same
            question draws the same noise, another question other noise.
    """
    entropy = [base, 0x5EED, round_index, client, request]
    state = np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)
    return int(state[0] >> np.uint64(1))

"""A deployed node's own secret key: made once on its machine, read back after every restart.

The node derives its privacy noises' secrets from this key and a digest of its data
(:class:`fellrec.training.host_secrets.KeyedSecrets`), so a restarted node answers as before
instead of releasing its data again under fresh noise. The key never leaves the node: it is not
in the federation's config, not in any message and not in a checkpoint the server reads.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

#: Bytes of a node key.
KEY_BYTES = 32


def node_key_path(root: str | Path, client: int) -> Path:
    """Where client ``client``'s node keeps its key under its run directory ``root``."""
    return Path(root) / "node-keys" / f"client_{client}.key"


def node_key(path: Path) -> bytes:
    """The node's key at ``path``, made there first (owner-only) if there is none.

    Two processes of one node that start together end up with the same key: the file is
    written aside and linked into place, which fails for the second, which then reads the first's.

    Raises:
        ValueError: For a key file of the wrong size, or one that others may read, naming it.
    """
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        descriptor = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(secrets.token_bytes(KEY_BYTES))
            # Another process of this node may have made it first: then that one is used.
            with contextlib.suppress(FileExistsError):
                os.link(staging, path)
        finally:
            staging.unlink(missing_ok=True)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ValueError(
            f"{path}: this node's secret key may be read by others (mode {mode:o}); "
            f"run chmod 600 {path}"
        )
    key = path.read_bytes()
    if len(key) != KEY_BYTES:
        raise ValueError(
            f"{path}: a fellrec node key has {KEY_BYTES} bytes, this file has {len(key)}; "
            "delete it to make a new one (the node's next rounds then draw fresh noise)"
        )
    return key

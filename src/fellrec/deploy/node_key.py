"""A deployed node's own secret key: made once on its machine, read back after every restart.

The node derives its privacy noises' secrets from this key, the federation's config fingerprint
and a digest of its data (:class:`fellrec.training.dp.host_secrets.KeyedSecrets`), so a restarted
node answers as before instead of releasing its data again under fresh noise. The key never
leaves the node: it is not in the federation's config, not in any message and not in a
checkpoint the server reads. It lives in a directory of the node's own choosing, never one the
server's config names (a server that could point nodes at a fresh directory would get fresh
noise for every rerun): ``$FELLREC_NODE_KEY_DIR``, else ``$XDG_DATA_HOME/fellrec/node-keys``,
else ``~/.local/share/fellrec/node-keys``.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import stat
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Bytes of a node key.
KEY_BYTES = 32
#: The environment variable that chooses the directory of a node's keys.
KEY_DIR_ENV = "FELLREC_NODE_KEY_DIR"


def node_key_dir() -> Path:
    """Where this machine's node keys live (see the module docstring)."""
    chosen = os.environ.get(KEY_DIR_ENV)
    if chosen:
        return Path(chosen).expanduser()
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "fellrec" / "node-keys"


def node_key_path(client: int) -> Path:
    """The key file of the node serving client ``client`` on this machine."""
    return node_key_dir() / f"client_{client}.key"


def _create(path: Path) -> None:
    """Write a fresh key to ``path`` unless one is there (owner-only, synced before it shows).

    The key is written aside, synced, and linked into place, which fails if another process of
    the node linked first (its key is then used). Where the file system has no hard links, it
    is created in place exclusively instead.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    descriptor = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(secrets.token_bytes(KEY_BYTES))
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(staging, path)
        except FileExistsError:
            return  # another process of this node made it first: that one is used
        except OSError:
            exclusive = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
            try:
                target = os.open(path, exclusive, 0o600)
            except FileExistsError:
                return
            with os.fdopen(target, "wb") as handle:
                handle.write(staging.read_bytes())
                handle.flush()
                os.fsync(handle.fileno())
    finally:
        staging.unlink(missing_ok=True)
    _sync_directory(path.parent)
    log.warning(
        "made this node's secret key %s: its privacy noise derives from it; keep it (losing it "
        "means fresh noise for questions already answered)",
        path,
    )


def _sync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)  # a new name in it survives a crash
    finally:
        os.close(descriptor)


def node_key(path: Path) -> bytes:
    """The node's key at ``path``, made there first (owner-only) if there is none.

    Raises:
        ValueError: Naming the file: not a regular file (a symbolic link or a directory), not
            owned by this user, readable by others, or of the wrong size.
    """
    if not path.exists() and not path.is_symlink():
        _create(path)
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as error:
        raise ValueError(
            f"{path}: this node's secret key must be a regular file, not a symbolic link or "
            f"anything else ({error.strerror}); move it away to make a new key"
        ) from error
    info = os.fstat(descriptor)
    if not stat.S_ISREG(info.st_mode):
        os.close(descriptor)
        raise ValueError(f"{path}: this node's secret key must be a regular file")
    with os.fdopen(descriptor, "rb") as handle:
        if info.st_uid != os.geteuid():
            raise ValueError(f"{path}: this node's secret key belongs to another user")
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            raise ValueError(
                f"{path}: this node's secret key may be read by others (mode {mode:o}); "
                f"run chmod 600 {path}"
            )
        key = handle.read()
    if len(key) != KEY_BYTES:
        raise ValueError(
            f"{path}: a fellrec node key has {KEY_BYTES} bytes, this file has {len(key)}; move "
            "it away to make a new one (the node's next answers then carry fresh noise, a new "
            "release its privacy accounting does not cover)"
        )
    return key


def ledger_path(client: int, ledger_id: int) -> Path:
    """Where the node keeps the privacy ledger of one noise context (settings and data)."""
    return node_key_dir() / f"client_{client}.{ledger_id:016x}.ledger.json"


def read_ledger(path: Path) -> dict[str, Any] | None:
    """The ledger state saved at ``path``, or None if there is none yet.

    Raises:
        ValueError: For a file that is not a ledger, naming it.
    """
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: this node's privacy ledger is unreadable ({error})") from error
    if not isinstance(state, dict) or "rounds" not in state or "releases" not in state:
        raise ValueError(f"{path}: not a fellrec privacy ledger (no rounds / releases)")
    return state


def write_ledger(path: Path, state: dict[str, Any]) -> None:
    """Save a ledger state at ``path``: owner-only, synced, replacing the old one atomically."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    descriptor = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        json.dump(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(staging, path)
    _sync_directory(path.parent)

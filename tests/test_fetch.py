"""Fetching MovieLens-100K into a shared cache (a fake wheel: no network)."""

from __future__ import annotations

import threading
import time
import zipfile
from pathlib import Path

import pytest

from fellrec.data import fetch


def fake_wheel(directory: Path, member_prefix: str = fetch._MEMBER_PREFIX) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    wheel = directory / "recbole-1.2.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name in fetch.ML100K_FILES:
            archive.writestr(member_prefix + name, f"{name}\n")
    return wheel


def test_concurrent_fetches_download_once_and_both_find_the_files(tmp_path, monkeypatch):
    downloads: list[Path] = []

    def slow_download(wheel_dir: Path) -> Path:
        downloads.append(wheel_dir)
        time.sleep(0.3)  # long enough for the other fetch to arrive meanwhile
        return fake_wheel(wheel_dir)

    monkeypatch.setattr(fetch, "_download_wheel", slow_download)
    found: list[Path] = []
    workers = [
        threading.Thread(target=lambda: found.append(fetch.fetch_ml100k(tmp_path)))
        for _ in range(3)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert len(downloads) == 1
    assert len(found) == 3 and len(set(found)) == 1
    assert sorted(p.name for p in found[0].iterdir()) == sorted(fetch.ML100K_FILES)
    assert (found[0] / "ml-100k.inter").read_text() == "ml-100k.inter\n"


def test_a_fetched_cache_is_not_downloaded_again(tmp_path, monkeypatch):
    monkeypatch.setattr(fetch, "_download_wheel", fake_wheel)
    target = fetch.fetch_ml100k(tmp_path)
    monkeypatch.setattr(fetch, "_download_wheel", lambda _: pytest.fail("downloaded again"))
    assert fetch.fetch_ml100k(tmp_path) == target


def test_a_broken_wheel_is_an_os_error_naming_it(tmp_path, monkeypatch):
    broken = tmp_path / "wheels" / "recbole-1.2.1-py3-none-any.whl"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"half a download")
    monkeypatch.setattr(fetch, "_download_wheel", lambda _: broken)
    with pytest.raises(OSError, match="is not a readable wheel"):
        fetch.fetch_ml100k(tmp_path)
    other = fake_wheel(tmp_path / "other", member_prefix="elsewhere/")
    monkeypatch.setattr(fetch, "_download_wheel", lambda _: other)
    with pytest.raises(OSError, match="not the expected RecBole wheel"):
        fetch.fetch_ml100k(tmp_path)
    assert not (tmp_path / "recbole-1.2.1" / "ml-100k").exists()

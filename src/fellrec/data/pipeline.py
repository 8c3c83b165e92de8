"""Read -> filter -> split -> windows -> partition, cached on disk keyed by the data settings.

This is the one place that runs the pure data stages in order. The result (:class:`FederatedData`)
is
what the Lightning data module serves and what ``fellrec data stats`` prints.

Up to the partition (which trains BPR with torch, imported when it runs) the module is light, so
the checks before a run's heavy imports (:mod:`fellrec.preflight`) validate the settings and read
the data with the same code; the read dataset is kept for the run of the same process
(:func:`load_checked_dataset`), so it is not read twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fellrec.data.examples import sliding_window_examples
from fellrec.data.kcore import kcore_filter
from fellrec.data.readers import read_dataset
from fellrec.data.schema import IndexedDataset, RawDataset, Split, TrainExamples, index_dataset
from fellrec.data.split import split_dataset
from fellrec.data.synthetic import generate_synthetic

log = logging.getLogger(__name__)

#: Bump when the preprocessing output changes, so stale caches are not reused.
PIPELINE_VERSION = 2  # 2: equal timestamps keep the file order
FORMATS = ("synthetic", "movielens", "recbole", "amazon", "tabular")
SPLITS = ("temporal", "leave_one_out")
PARTITIONS = ("kmeans", "iid", "dirichlet", "attribute")
#: Reader options that name files (expanded like ``path``).
PATH_OPTIONS = frozenset({"meta", "items", "users"})


@dataclass(frozen=True)
class DatasetSettings:
    """Where the interactions come from.

    Attributes:
        format: One of synthetic, movielens, recbole, amazon, tabular.
        path: movielens/recbole: the extracted directory; amazon: the reviews file; tabular: the
            interactions file (CSV/TSV/Parquet). Not used by synthetic.
        options: Extra reader options: amazon ``meta``; tabular ``items``, ``users`` and column
            names; synthetic ``num_users``, ``num_items``, ``num_categories``; recbole ``name``.
        min_rating: Keep only interactions rated at least this (when the source has ratings).
        kcore: Iterative k-core filter on users and items (0 or 1: off; the reference uses 5).
    """

    format: str = "synthetic"
    path: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    min_rating: float | None = None
    kcore: int = 0


def default_cache_dir() -> Path:
    """``$FELLREC_CACHE`` or ``~/.cache/fellrec``, outside any repository."""
    return Path(os.environ.get("FELLREC_CACHE", Path.home() / ".cache" / "fellrec"))


@dataclass(frozen=True)
class FederatedData:
    """Everything the federation needs about the data, computed once and cached.

    Attributes:
        dataset: Indexed (and filtered) interactions with item texts.
        split: Train sequences and validation/test users.
        examples: Sliding-window training examples (possibly subsampled).
        assignment: Client of every user ``(num_users,)``.
        num_clients: N.
    """

    dataset: IndexedDataset
    split: Split
    examples: TrainExamples
    assignment: np.ndarray
    num_clients: int

    def example_clients(self) -> np.ndarray:
        """Client of every training example ``(E,)``."""
        return np.asarray(self.assignment[self.examples.users], dtype=np.int64)


def read_raw(settings: DatasetSettings, seed: int) -> RawDataset:
    """Read the configured source into a :class:`RawDataset`.

    Raises:
        ValueError: For an unknown format or a missing ``path``, naming the setting.
    """
    fmt = settings.format
    if fmt not in FORMATS:
        raise ValueError(
            f"data.dataset.format={fmt!r} is unknown; choose from {', '.join(FORMATS)}"
        )
    if fmt == "synthetic":
        return generate_synthetic(seed=seed, **settings.options)
    if not settings.path:
        raise ValueError(f"data.dataset.path is required for data.dataset.format={fmt!r}")
    path = str(Path(settings.path).expanduser())
    options = dict(settings.options)
    for key in PATH_OPTIONS.intersection(options):
        value = options[key]
        if value is not None and not isinstance(value, str):
            raise ValueError(
                f"data.dataset.options.{key} must be a file path, got {type(value).__name__} "
                f"{value!r} (quote it in YAML if it contains ': ')"
            )
        if value is not None:
            options[key] = str(Path(value).expanduser())
    if fmt == "amazon":
        if not options.get("meta"):
            log.warning(
                "data: no data.dataset.options.meta for the Amazon reviews; item ids stand in for "
                "titles, which gives a text recommender almost nothing to read"
            )
        return read_dataset(fmt, reviews=path, **options)
    if fmt == "tabular":
        return read_dataset(fmt, interactions=path, **options)
    return read_dataset(fmt, path=path, **options)


def _source_fingerprint(settings: DatasetSettings) -> list[Any]:
    """Sizes and modification times of the input files, so edited data invalidates the cache."""
    paths = [settings.path] if settings.path else []
    paths += [v for k, v in settings.options.items() if k in PATH_OPTIONS and isinstance(v, str)]
    found: list[Any] = []
    for raw in paths:
        root = Path(str(raw)).expanduser()
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        found += [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in files if p.exists()]
    return found


@dataclass(frozen=True)
class PipelineSettings:
    """All settings that determine the prepared data (the cache key)."""

    dataset: DatasetSettings
    split: str
    valid_fraction: float
    test_fraction: float
    history_length: int
    max_train_examples: int | None
    num_clients: int
    partition: str
    partition_attribute: str | None
    dirichlet_concentration: float
    seed: int
    window_stride: int = 1

    def validate(self) -> None:
        """Check ranges before any work, naming the offending setting."""
        if self.split not in SPLITS:
            raise ValueError(
                f"data.split={self.split!r} is unknown; choose from {', '.join(SPLITS)}"
            )
        if self.partition not in PARTITIONS:
            raise ValueError(
                f"data.partition={self.partition!r} is unknown; choose from {', '.join(PARTITIONS)}"
            )
        if self.history_length < 1:
            raise ValueError(f"data.history_length must be >= 1, got {self.history_length}")
        if self.num_clients < 1:
            raise ValueError(f"data.num_clients must be >= 1, got {self.num_clients}")
        if self.window_stride < 1:
            raise ValueError(f"data.window_stride must be >= 1, got {self.window_stride}")
        if self.max_train_examples is not None and self.max_train_examples < 1:
            raise ValueError(f"data.max_train_examples must be >= 1, got {self.max_train_examples}")
        for name in ("valid_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0.0 < value < 0.5:
                raise ValueError(f"data.{name} must be in (0, 0.5), got {value}")
        if self.partition == "attribute" and not self.partition_attribute:
            raise ValueError("data.partition_attribute is required with data.partition=attribute")

    def cache_key(self) -> str:
        """A hash of the settings, the input files and the pipeline version."""
        payload = json.dumps(
            [PIPELINE_VERSION, asdict(self), _source_fingerprint(self.dataset)],
            sort_keys=True,
            default=str,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


#: The last dataset :func:`load_checked_dataset` read, by the cache key of its settings.
_last_read: dict[str, IndexedDataset] = {}


def load_checked_dataset(settings: PipelineSettings) -> IndexedDataset:
    """Read, filter and index the configured data, and check it has users for every client.

    The result is kept (one dataset) for the next call with the same settings and files, so a
    process that checks its data first and then prepares it reads the files once.

    Raises:
        ValueError: For unreadable data (the reader names the file, line or column), ratings
            filtered on data without any, or more clients than users.
    """
    settings.validate()
    key = settings.cache_key()
    if key in _last_read:
        return _last_read[key]
    raw = read_raw(settings.dataset, settings.seed)
    if settings.dataset.min_rating is not None:
        if "rating" not in raw.interactions.columns:
            raise ValueError(
                f"data.dataset.min_rating is set but {raw.name} has no ratings; remove the setting"
            )
        keep = raw.interactions["rating"] >= settings.dataset.min_rating
        raw = RawDataset(raw.name, raw.interactions[keep], raw.items, raw.users)
    dataset = kcore_filter(index_dataset(raw), settings.dataset.kcore)
    if settings.num_clients > dataset.num_users:
        raise ValueError(
            f"more clients than users: data.num_clients={settings.num_clients} but only "
            f"{dataset.num_users} users remain in {dataset.name}"
        )
    _last_read.clear()
    _last_read[key] = dataset
    return dataset


def build_federated_data(settings: PipelineSettings) -> FederatedData:
    """Run the whole data pipeline (no cache)."""
    # BPR (torch) and k-means (scikit-learn) load only when a partition is computed.
    from fellrec.data.partition import partition_users

    dataset = load_checked_dataset(settings)
    split = split_dataset(
        dataset,
        settings.split,
        settings.history_length,
        valid_fraction=settings.valid_fraction,
        test_fraction=settings.test_fraction,
    )
    examples = sliding_window_examples(
        split.train_sequences,
        settings.history_length,
        max_examples=settings.max_train_examples,
        seed=settings.seed,
        stride=settings.window_stride,
    )
    if len(examples) == 0:
        raise ValueError(f"{dataset.name}: the training split yields no training example")
    assignment = partition_users(
        settings.partition,
        settings.num_clients,
        settings.seed,
        train_sequences=split.train_sequences,
        num_items=dataset.num_items,
        item_categories=dataset.categories,
        user_attributes=dataset.user_attributes,
        attribute=settings.partition_attribute,
        concentration=settings.dirichlet_concentration,
    )
    return FederatedData(dataset, split, examples, assignment, settings.num_clients)


def cached_data_path(settings: PipelineSettings, cache_dir: str | Path | None) -> Path:
    """Where the prepared data of these settings (and input files) is cached."""
    directory = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    return directory / "data" / f"{settings.cache_key()}.pkl"


def load_federated_data(settings: PipelineSettings, cache_dir: str | Path | None) -> FederatedData:
    """Return the prepared data, from the cache when the same settings ran before.

    Args:
        settings: Data settings (the cache key).
        cache_dir: Cache directory; ``None`` uses :func:`default_cache_dir`.

    Returns:
        The prepared data.
    """
    settings.validate()
    path = cached_data_path(settings, cache_dir)
    if path.exists():
        try:
            with path.open("rb") as handle:
                cached = pickle.load(handle)
            if isinstance(cached, FederatedData):
                log.info("data: loaded prepared data from cache %s", path)
                return cached
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError) as error:
            log.warning("data: ignoring unreadable cache %s (%s)", path, error)
    data = build_federated_data(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".tmp{os.getpid()}")
    with partial.open("wb") as handle:
        pickle.dump(data, handle, protocol=pickle.HIGHEST_PROTOCOL)
    partial.replace(path)  # atomic: concurrent processes never read half a file
    log.info("data: prepared %s and cached it at %s", data.dataset.name, path)
    return data

"""Read -> filter -> split -> windows -> clients, cached on disk keyed by the data settings.

This is the one place that runs the pure data stages in order, in one of two ways to the same
:class:`FederatedData` (what the Lightning data module serves and ``fellrec data stats`` prints):

* **central** -- all data in one place: read, filter, k-core, split, windows, then partition the
  users into clients (k-means, iid, Dirichlet, attribute);
* **silos** (``data.silos`` or ``data.silo``) -- each client's own files read against the public
  catalog; every stage runs per silo on that silo's data alone, and the silos are put side by side
  (client ``i`` = silo ``i``). Serving one client (``data.client``) reads only its silo, which is
  what a deployed client does.

Up to the partition (which trains BPR with torch, imported when it runs) the module is light, so
the checks before a run's heavy imports (:mod:`fellrec.preflight`) validate the settings and read
the data with the same code; the read dataset is kept for the run of the same process
(:func:`load_checked_dataset`), so it is not read twice.

Longer than most modules: it is the one path from settings to a run's data, central or from
silos, and both ends share its checks and its cache; readers, splits, partitions and silos are
modules of their own.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pickle
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fellrec.data.catalog import CATALOG_OPTIONS, Catalog, read_catalog
from fellrec.data.eval_sample import NONE_KEPT, sample_eval_users
from fellrec.data.examples import sliding_window_examples
from fellrec.data.kcore import kcore_filter
from fellrec.data.schema import IndexedDataset, Split, TrainExamples, index_dataset
from fellrec.data.silos import (
    UNKNOWN_ITEM_POLICIES,
    SiloReport,
    announce_silos,
    merge_silos,
    read_silo,
)
from fellrec.data.sources import (
    FORMATS,
    PATH_OPTIONS,
    DatasetSettings,
    files_fingerprint,
    filter_min_rating,
    option_paths,
    read_raw,
)
from fellrec.data.split import choose_new_items, split_dataset

log = logging.getLogger(__name__)

#: Bump when the preprocessing output changes, so stale caches are not reused.
# 2: equal timestamps keep the file order; 3: temporal split cuts by time; 4: splits record their
# new items (data.new_items)
PIPELINE_VERSION = 4
SPLITS = ("temporal", "leave_one_out")
PARTITIONS = ("kmeans", "iid", "dirichlet", "attribute")

__all__ = [
    "FORMATS",
    "PARTITIONS",
    "PATH_OPTIONS",
    "PIPELINE_VERSION",
    "SPLITS",
    "DatasetSettings",
    "FederatedData",
    "PipelineSettings",
    "build_federated_data",
    "default_cache_dir",
    "load_federated_data",
    "read_raw",
]


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
        silos: With silos, what reading each one found (one per silo read); empty otherwise.
    """

    dataset: IndexedDataset
    split: Split
    examples: TrainExamples
    assignment: np.ndarray
    num_clients: int
    silos: tuple[SiloReport, ...] = ()

    def example_clients(self) -> np.ndarray:
        """Client of every training example ``(E,)``."""
        return np.asarray(self.assignment[self.examples.users], dtype=np.int64)


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
    catalog: str | None = None
    silos: tuple[str, ...] = ()
    silo: str | None = None
    client: int | None = None
    unknown_items: str = "report"
    temporal_cutoffs: tuple[int, int] | None = None
    new_items: float = 0.0
    eval_user_fraction: float = 1.0

    @classmethod
    def of_silos(
        cls,
        catalog: str | None,
        silos: Sequence[str] | None,
        silo: str | None,
        client: int | None,
        unknown_items: str,
        temporal_cutoffs: Sequence[int] | None,
        **central: Any,
    ) -> PipelineSettings:
        """The settings as ``data.*`` gives them (lists, a served client), normalized.

        The served client is part of the settings (the cache key) only with silos: it decides
        which silo is read, while central data is the same whichever client is served.

        Raises:
            ValueError: For ``data.temporal_cutoffs`` that are not a pair.
        """
        if temporal_cutoffs is not None and len(temporal_cutoffs) != 2:
            raise ValueError(
                "data.temporal_cutoffs must be [valid_start, test_start], got "
                f"{list(temporal_cutoffs)}"
            )
        uses_silos = bool(silos) or silo is not None
        return cls(
            **central,
            catalog=catalog,
            silos=tuple(silos or ()),
            silo=silo,
            client=client if uses_silos else None,
            unknown_items=unknown_items,
            temporal_cutoffs=(
                None
                if temporal_cutoffs is None
                else (int(temporal_cutoffs[0]), int(temporal_cutoffs[1]))
            ),
        )

    @property
    def uses_silos(self) -> bool:
        """Whether the clients are silos (``data.silos`` or ``data.silo``)."""
        return bool(self.silos) or self.silo is not None

    def served_silos(self) -> list[tuple[int, str]]:
        """``(client, path)`` of the silos to read: one when a single client is served."""
        if self.silo is not None:
            return [(int(self.client or 0), self.silo)]
        if self.client is not None:
            return [(self.client, self.silos[self.client])]
        return list(enumerate(self.silos))

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
        if not (
            isinstance(self.new_items, int | float)
            and not isinstance(self.new_items, bool)
            and 0.0 <= self.new_items < 1.0
        ):
            raise ValueError(
                "data.new_items must be a fraction of the items in [0, 1) (the share held out "
                f"of training), got {self.new_items}"
            )
        fraction = self.eval_user_fraction
        if not (
            isinstance(fraction, int | float)
            and not isinstance(fraction, bool)
            and 0.0 < fraction <= 1.0
        ):
            raise ValueError(
                "data.eval_user_fraction must be a share of the users in (0, 1] (1: evaluate "
                f"everyone), got {fraction}"
            )
        if self.max_train_examples is not None and self.max_train_examples < 1:
            raise ValueError(f"data.max_train_examples must be >= 1, got {self.max_train_examples}")
        for name in ("valid_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0.0 < value < 0.5:
                raise ValueError(f"data.{name} must be in (0, 0.5), got {value}")
        if self.partition == "attribute" and not self.partition_attribute:
            raise ValueError("data.partition_attribute is required with data.partition=attribute")
        if self.unknown_items not in UNKNOWN_ITEM_POLICIES:
            raise ValueError(
                f"data.unknown_items={self.unknown_items!r} is unknown; choose from "
                f"{', '.join(UNKNOWN_ITEM_POLICIES)}"
            )
        cutoffs = self.temporal_cutoffs
        if cutoffs is not None and (len(cutoffs) != 2 or not cutoffs[0] < cutoffs[1]):
            raise ValueError(
                "data.temporal_cutoffs must be [valid_start, test_start] (timestamps) with "
                f"valid_start < test_start, got {list(cutoffs)}"
            )
        if self.uses_silos:
            self._validate_silos()
        elif self.catalog is not None:
            raise ValueError(
                "data.catalog is used with data.silos or data.silo (clients that are silos); "
                "remove it, or list the silos"
            )

    def _validate_silos(self) -> None:
        if not self.catalog:
            raise ValueError(
                "data.catalog is required with data.silos / data.silo: the public item file "
                "(item id, title, categories) that fixes the item indices of every silo"
            )
        if self.split == "temporal" and self.temporal_cutoffs is None:
            raise ValueError(
                "data.split=temporal with silos needs data.temporal_cutoffs: [valid_start, "
                "test_start] (timestamps agreed before training; a silo cannot derive them "
                "from everyone's data), or use data.split=leave_one_out"
            )
        if self.silo is not None and self.client is None:
            raise ValueError("data.silo needs data.client: the client id this silo serves")
        if self.silos and len(self.silos) != self.num_clients:
            raise ValueError(
                f"data.num_clients={self.num_clients} but data.silos lists {len(self.silos)} "
                f"silos; set data.num_clients: {len(self.silos)} (client i is data.silos[i])"
            )
        repeated = sorted({p for p in self.silos if self.silos.count(p) > 1})
        if repeated:
            raise ValueError(f"data.silos lists {', '.join(repeated)} more than once")

    def cache_key(self) -> str:
        """A hash of the settings, the input files and the pipeline version."""
        if self.uses_silos:
            paths = [path for _, path in self.served_silos()] + [str(self.catalog)]
            fingerprint = files_fingerprint(paths + option_paths(self.dataset), resolve=True)
        else:
            paths = [self.dataset.path] if self.dataset.path else []
            fingerprint = files_fingerprint(paths + option_paths(self.dataset))
        payload = json.dumps(
            [PIPELINE_VERSION, asdict(self), fingerprint],
            sort_keys=True,
            default=str,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


#: The last dataset :func:`load_checked_dataset` read, by the cache key of its settings.
_last_read: dict[str, IndexedDataset] = {}


def load_checked_dataset(settings: PipelineSettings) -> IndexedDataset:
    """Read, filter and index the configured (central) data; check it has users for every client.

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
    raw = filter_min_rating(read_raw(settings.dataset, settings.seed), settings.dataset.min_rating)
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
    settings.validate()
    if settings.uses_silos:
        return _build_from_silos(settings)
    # BPR (torch) and k-means (scikit-learn) load only when a partition is computed.
    from fellrec.data.partition import partition_users

    dataset = load_checked_dataset(settings)
    split, examples = split_and_window(dataset, settings)
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


def split_and_window(
    dataset: IndexedDataset, settings: PipelineSettings, allow_empty: bool = False
) -> tuple[Split, TrainExamples]:
    """Split ``dataset`` and cut its training sequences into examples, as ``settings`` say.

    Args:
        dataset: All data (central) or one silo's.
        settings: Split, fractions or cut-offs, history length, stride and subsampling.
        allow_empty: Let an evaluation period be empty (one silo may have no such user).

    Under ``data.new_items`` the held-out items are drawn from the catalog (``data.seed``), so
    every silo of a federation holds out the same ones; under ``data.eval_user_fraction`` < 1
    validation and test keep the users a seeded hash of their id keeps
    (:mod:`fellrec.data.eval_sample`), the same ones in every silo and in a central run.

    Raises:
        ValueError: When the fraction keeps no user of a period that had some (unless
            ``allow_empty``).
    """
    split = split_dataset(
        dataset,
        settings.split,
        settings.history_length,
        valid_fraction=settings.valid_fraction,
        test_fraction=settings.test_fraction,
        cutoffs=settings.temporal_cutoffs,
        allow_empty=allow_empty,
        new_items=choose_new_items(dataset.num_items, settings.new_items, settings.seed),
    )
    if settings.eval_user_fraction < 1.0:
        sampled = sample_eval_users(
            split, dataset.user_ids, settings.eval_user_fraction, settings.seed
        )
        for period, full, kept in (
            ("validation", split.valid, sampled.valid),
            ("test", split.test, sampled.test),
        ):
            if len(full) and not len(kept) and not allow_empty:
                raise ValueError(
                    NONE_KEPT.format(
                        fraction=settings.eval_user_fraction, users=len(full), period=period
                    )
                )
        split = sampled
    examples = sliding_window_examples(
        split.train_sequences,
        settings.history_length,
        max_examples=settings.max_train_examples,
        seed=settings.seed,
        stride=settings.window_stride,
    )
    return split, examples


def read_settings_catalog(settings: PipelineSettings) -> Catalog:
    """The public catalog of silo settings, read with the tabular format's column options."""
    assert settings.catalog is not None  # validated
    options = settings.dataset.options if settings.dataset.format == "tabular" else {}
    return read_catalog(settings.catalog, {k: options[k] for k in CATALOG_OPTIONS if k in options})


def check_silo_sources(settings: PipelineSettings) -> None:
    """The catalog reads (ids unique, titles present) and every served silo exists.

    What the checks before a run's heavy imports ask of silo settings; the silos' contents are
    read (and their errors named) when the data is prepared.

    Raises:
        FileNotFoundError: Naming the setting of a missing silo.
        ValueError: For a catalog that does not read (naming the file and line).
    """
    settings.validate()
    read_settings_catalog(settings)
    for client, path in settings.served_silos():
        if not Path(path).expanduser().exists():
            where = "data.silo" if settings.silo is not None else f"data.silos[{client}]"
            raise FileNotFoundError(f"{where}: {path} does not exist (client {client}'s silo)")


def _build_from_silos(settings: PipelineSettings) -> FederatedData:
    """Every served silo read, filtered, split and windowed on its own, then side by side."""
    catalog = read_settings_catalog(settings)
    served = settings.served_silos()
    parts, reports = [], []
    for client, path in served:
        dataset, report = read_silo(settings.dataset, path, catalog, client, settings.unknown_items)
        split, examples = split_and_window(dataset, settings, allow_empty=True)
        _check_trainable(report, split, examples)
        parts.append((dataset, split, examples))
        reports.append(
            dataclasses.replace(report, valid_users=len(split.valid), test_users=len(split.test))
        )
    name = served[0][1] if len(served) == 1 else f"{len(served)} silos"
    dataset, split, examples, assignment = merge_silos(parts, [c for c, _ in served], name)
    if settings.client is None:  # the whole federation is here: it must be evaluable
        for period, users in (("validation", split.valid), ("test", split.test)):
            if len(users) == 0:
                raise ValueError(
                    f"empty split: no silo has a user with a history and a new item in the "
                    f"{period} period (data.split={settings.split}"
                    + (
                        f", data.temporal_cutoffs={list(settings.temporal_cutoffs)}"
                        if settings.temporal_cutoffs is not None and settings.split == "temporal"
                        else ""
                    )
                    + (
                        f", data.eval_user_fraction={settings.eval_user_fraction:g}"
                        if settings.eval_user_fraction < 1.0
                        else ""
                    )
                    + ")"
                )
    return FederatedData(
        dataset, split, examples, assignment, settings.num_clients, silos=tuple(reports)
    )


def _check_trainable(report: SiloReport, split: Split, examples: TrainExamples) -> None:
    """Refuse a silo that would give its client nothing to train on, naming it."""
    label = f"silo {report.path} (client {report.client})"
    if sum(len(sequence) for sequence in split.train_sequences) == 0:
        where = (
            f"before data.temporal_cutoffs[0]={split.cutoffs[0]}"
            if split.cutoffs is not None
            else "in its training split"
        )
        raise ValueError(f"{label}: no training interactions {where}")
    if len(examples) == 0:
        raise ValueError(
            f"{label}: its training split yields no training example (no user has two "
            "training interactions)"
        )


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
                _announce(settings, cached)
                return cached
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError) as error:
            log.warning("data: ignoring unreadable cache %s (%s)", path, error)
    data = build_federated_data(settings)
    _announce(settings, data)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".tmp{os.getpid()}")
    with partial.open("wb") as handle:
        pickle.dump(data, handle, protocol=pickle.HIGHEST_PROTOCOL)
    partial.replace(path)  # atomic: concurrent processes never read half a file
    log.info("data: prepared %s and cached it at %s", data.dataset.name, path)
    return data


def _announce(settings: PipelineSettings, data: FederatedData) -> None:
    """Warn about what reading the silos found (every time the data is loaded)."""
    if data.silos:
        announce_silos(data.silos, str(settings.catalog))
    if settings.eval_user_fraction < 1.0:
        log.info(
            "data: data.eval_user_fraction=%g evaluates %d validation and %d test users",
            settings.eval_user_fraction,
            len(data.split.valid),
            len(data.split.test),
        )

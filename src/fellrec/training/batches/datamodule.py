"""FederatedDataModule: prepared data served as client-tagged batches, round by round.

Training batches follow :func:`fellrec.training.batches.schedule.plan_round` (client-major,
reshuffled each round from ``(seed, round)``). Under data parallelism every process walks the
same plan and takes its own rows of each global batch, so N processes see exactly the global
batches one process would. Batches (:mod:`fellrec.training.batches.batch`) carry item
*indices*, which the model turns into tokens with texts it tokenized once, and how much they
weigh. What the rest of a run decides about batching (pooling, DP-SGD's user sampling, a fixed
round) comes as one :class:`~fellrec.training.batches.round_batching.RoundBatching`.

Longer than most modules: Lightning asks one LightningDataModule for the loaders, and the host,
the loop and the round engine ask it about the data it holds (per-client counts and items, the
popularity baseline, the evaluation slices); the data themselves are built in
:mod:`fellrec.data.pipeline` and each round's plan in :mod:`fellrec.training.batches.schedule`.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from fellrec.data.loader_settings import check_loader_settings
from fellrec.data.pipeline import (
    DatasetSettings,
    FederatedData,
    PipelineSettings,
    load_federated_data,
)
from fellrec.data.schema import EvalUsers
from fellrec.data.stats import format_partition_table, partition_statistics
from fellrec.metrics.bootstrap import confidence_intervals
from fellrec.metrics.popularity import (
    evaluate_local_popularity,
    evaluate_popularity,
    popularity_scores,
)
from fellrec.metrics.slices import SliceDefinition, define_slices, slice_summary, values_by_name
from fellrec.metrics.summary import DEFAULT_KS, client_sums, metric_names, summarize
from fellrec.training.batches.batch import EvalBatch, TrainBatch
from fellrec.training.batches.round_batching import RoundBatching
from fellrec.training.batches.schedule import (
    PlannedBatch,
    plan_round,
    plan_user_sampled_round,
    shard,
)

#: The default ``data.dataset``: the built-in synthetic catalog (frozen, so shareable).
DEFAULT_DATASET = DatasetSettings()


def _pad(rows: Sequence[np.ndarray], fill: int = -1) -> torch.Tensor:
    """Stack ragged int arrays into ``(len(rows), max_len)`` padded on the right with ``fill``."""
    width = max((len(r) for r in rows), default=0)
    out = np.full((len(rows), max(width, 1)), fill, dtype=np.int64)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return torch.from_numpy(out)


def _rows_of(indices: np.ndarray, rank: int, world: int) -> tuple[np.ndarray, bool]:
    """This process's rows of a global batch, and whether they are a stand-in.

    A process with none of the batch's rows gets its first row as a stand-in, which weighs
    nothing: every process still runs the model on every batch, as sharded blocks need (their
    collectives hang when one process skips a call).
    """
    rows = shard(indices, rank, world)
    if len(rows) == 0 and len(indices) > 0:
        return indices[:1], True
    return rows, False


class _PlannedBatches(IterableDataset):
    """Yields this process's share of each planned batch, drawing the plan lazily."""

    def __init__(self, plan: Callable[[], Sequence[TrainBatch | EvalBatch]], length: int) -> None:
        self._plan = plan
        self._length = length

    def __iter__(self) -> Iterator[TrainBatch | EvalBatch]:
        # Draw the plan at the first `next()`, not at `iter()`: Lightning may create the iterator
        # before a resumed run has restored its epoch counter, but fetches only once the round
        # began.
        yield from self._plan()

    def __len__(self) -> int:
        return self._length


class FederatedDataModule(L.LightningDataModule):
    """Reads, filters, splits and partitions the data; serves per-client batches.

    Args:
        dataset: Where the interactions come from (default: the built-in synthetic catalog).
        split: ``temporal`` (global time, multi-item targets) or ``leave_one_out``.
        valid_fraction: Temporal split: share of the interactions in the validation period.
        test_fraction: Temporal split: share of the interactions in the test period.
        history_length: Items of history per example (H).
        max_train_examples: Subsample this many training examples once (seeded); None keeps all.
        window_stride: Distance between the targets of consecutive training windows of a user
            (counted back from their last item). 1: every position is a target (one example
            per interaction). Set it to ``history_length`` for a recommender that predicts at
            every history position (``model.recommender: sequential``): the windows then tile
            each sequence and every interaction is trained once per epoch.
        num_clients: Number of clients (user groups).
        partition: ``kmeans`` (default), ``iid``, ``dirichlet`` or ``attribute``.
        partition_attribute: User column for ``partition: attribute``.
        dirichlet_concentration: Concentration for ``partition: dirichlet`` (smaller = more skewed).
        batch_size: Training examples per mini-batch (global, across processes).
        eval_batch_size: Users per evaluation batch.
        local_epochs: Passes over each client's examples per round.
        accumulate_grad_batches: Mini-batches per optimizer step (within one client).
        client: Serve only this client's data (a real client silo fitting ``ClientModule``).
            With silos, only its silo is read.
        cache_dir: Where prepared data is cached (default ``$FELLREC_CACHE`` or
            ``~/.cache/fellrec``).
        seed: Seed of the data stages and the batch order.
        catalog: The public item catalog (a table with item id, title and categories columns,
            or a RecBole ``.item``, MovieLens ``u.item``/``movies.dat`` or Amazon metadata
            file); its order fixes the item indices of every silo. Required with silos.
        silos: Clients from silo files: client ``i`` is ``silos[i]``, each a directory or file
            of interactions in ``data.dataset.format`` (``data.num_clients`` must equal their
            number). No partition, BPR or global k-core: every stage runs per silo.
        silo: This process serves one silo, read from this path (with ``data.client``): a
            deployed client, which reads only its silo and the catalog.
        unknown_items: Interactions whose item is not in the catalog: ``report`` (counted,
            warned about and left out) or ``error`` (refused, naming the file and line).
        temporal_cutoffs: ``[valid_start, test_start]`` timestamps of the temporal split
            (train ``< valid_start <=`` validation ``< test_start <=`` test); required with silos
            and ``split: temporal``. Without silos they default to the timestamps at the
            fractions' cut points.
        new_items: The new-item protocol: this share of the catalog's items (a draw seeded by
            ``seed``, in ``[0, 1)``; 0: none) is held out of training entirely. Their
            training-period interactions are dropped (from every training window, history and
            count); they appear only as validation and test targets, which the ``popularity/new``
            slice of ``results.json`` reports (:mod:`fellrec.data.split`).
        eval_user_fraction: Share of the evaluable users that validation and test rank, in
            ``(0, 1]`` (1: everyone). The users are chosen by a hash of their original id and
            ``seed``: the same in validation and test, in every strategy and baseline, and in
            every silo (:mod:`fellrec.data.eval_sample`). For recommenders whose scoring is
            costly (the generative one's beam search); training is unchanged.
    """

    def __init__(
        self,
        dataset: DatasetSettings = DEFAULT_DATASET,
        split: str = "temporal",
        valid_fraction: float = 0.1,
        test_fraction: float = 0.1,
        history_length: int = 10,
        max_train_examples: int | None = None,
        window_stride: int = 1,
        num_clients: int = 5,
        partition: str = "kmeans",
        partition_attribute: str | None = None,
        dirichlet_concentration: float = 0.5,
        batch_size: int = 16,
        eval_batch_size: int = 64,
        local_epochs: int = 1,
        accumulate_grad_batches: int = 1,
        client: int | None = None,
        cache_dir: str | None = None,
        seed: int = 0,
        catalog: str | None = None,
        silos: list[str] | None = None,
        silo: str | None = None,
        unknown_items: str = "report",
        temporal_cutoffs: list[int] | None = None,
        new_items: float = 0.0,
        eval_user_fraction: float = 1.0,
    ) -> None:
        super().__init__()
        self.settings = PipelineSettings.of_silos(
            catalog,
            silos,
            silo,
            client,
            unknown_items,
            temporal_cutoffs,
            dataset=dataset,
            split=split,
            valid_fraction=valid_fraction,
            test_fraction=test_fraction,
            history_length=history_length,
            max_train_examples=max_train_examples,
            window_stride=window_stride,
            num_clients=num_clients,
            partition=partition,
            partition_attribute=partition_attribute,
            dirichlet_concentration=dirichlet_concentration,
            seed=seed,
            new_items=new_items,
            eval_user_fraction=eval_user_fraction,
        )
        # Before validate(): which silo is served depends on a valid client.
        if client is not None and not 0 <= client < num_clients:
            raise ValueError(f"data.client must be in [0, {num_clients}), got {client}")
        self.settings.validate()
        check_loader_settings(
            batch_size, eval_batch_size, local_epochs, accumulate_grad_batches, client, num_clients
        )
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.local_epochs = local_epochs
        self.accumulate_grad_batches = accumulate_grad_batches
        self.client = client
        self.cache_dir = cache_dir
        self.seed = seed
        self._round_batching = RoundBatching()
        self._data: FederatedData | None = None
        self.popularity: dict[str, object] | None = None
        self.popularity_sums: tuple[torch.Tensor, torch.Tensor] | None = None
        self._popularity_users: tuple[torch.Tensor, torch.Tensor] | None = None
        self._validation_baseline: Any = None
        #: What decides each evaluated user's slices (:mod:`fellrec.metrics.slices`).
        self.slices: SliceDefinition | None = None
        #: Per stage: the slice membership of each evaluated user, rows of ``EvalUsers.users``.
        self._stage_slices: dict[str, dict[str, torch.Tensor]] = {}
        #: Per stage: the popularity baseline's users, in the order of its per-user values.
        self._popularity_user_ids: dict[str, torch.Tensor] = {}
        # Plain values only: checkpoints must load with torch.load(weights_only=True).
        self.save_hyperparameters(ignore=["dataset"])
        self.hparams["dataset"] = asdict(self.settings.dataset)

    # ------------------------------------------------------------------ preparation
    @property
    def data(self) -> FederatedData:
        """The prepared data (after :meth:`setup`)."""
        if self._data is None:
            raise RuntimeError("FederatedDataModule.setup() has not run yet")
        return self._data

    @property
    def num_clients(self) -> int:
        """Number of clients."""
        return self.settings.num_clients

    @property
    def round_batching(self) -> RoundBatching:
        """What the rest of the run decides about batching a round (pooling, DP, the round)."""
        return self._round_batching

    def set_round_batching(self, batching: RoundBatching) -> None:
        """Batch the rounds as ``batching`` says (the one way the rest of a run tells it).

        The strategy sets ``pooled``, the model ``user_sampling``, a deployed client ``round``;
        each replaces only its own field (``dataclasses.replace(data.round_batching, ...)``).

        Raises:
            TypeError: If ``batching`` is not a :class:`RoundBatching`.
        """
        if not isinstance(batching, RoundBatching):
            raise TypeError(f"expected a RoundBatching, got {type(batching).__name__}")
        self._round_batching = batching

    def prepare_data(self) -> None:
        """Build (or find) the cached data once, on one process per machine."""
        self._data = load_federated_data(self.settings, self.cache_dir)

    def setup(self, stage: str | None = None) -> None:
        """Load the prepared data and evaluate the popularity baseline."""
        if self.popularity is not None:
            return
        if self._data is None:
            self._data = load_federated_data(self.settings, self.cache_dir)
        data = self._data
        if max(DEFAULT_KS) > data.dataset.num_items:
            raise ValueError(
                f"metric cut-off K={max(DEFAULT_KS)} exceeds the catalog "
                f"({data.dataset.num_items} items in {data.dataset.name}); use more items"
            )
        names = metric_names()
        self.slices = define_slices(
            data.split.train_sequences, data.assignment, data.dataset.num_items, self.num_clients
        )
        for stage, users in (("validation", data.split.valid), ("test", data.split.test)):
            self._stage_slices[stage] = self.slices.membership(users.users, users.targets)
        # Per-client sums, which a deployed client reports for its own users, and per-user
        # values, client-major (the order evaluation passes visit the users).
        (sums, counts), self._popularity_users = self._baseline(data.split.test, names, "test")
        self.popularity_sums = (sums, counts)
        self._validation_baseline = self._baseline(data.split.valid, names, "validation")
        if float(counts.sum()) > 0:  # a silo may have no test user of its own
            self.popularity = summarize(sums, counts, names)
            ordered_clients, ordered_values = self._popularity_users
            per_user = values_by_name(ordered_values, names)
            self.popularity["ci"] = confidence_intervals(
                per_user, ordered_clients, self.num_clients, names
            )
            self.popularity["slices"] = slice_summary(
                per_user,
                self.slice_membership("test", self._popularity_user_ids["test"]),
                ordered_clients,
                self.num_clients,
                names,
                self.slices.cuts(),
            )
        else:
            self.popularity = {}
        # The level a learned model's validation curves are read against (the plots draw it).
        (valid_sums, valid_counts), _ = self._validation_baseline
        if float(valid_counts.sum()) > 0:
            self.popularity["validation"] = summarize(valid_sums, valid_counts, names)

    def _baseline(
        self, users: EvalUsers, names: list[str], stage: str
    ) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """The popularity baseline on ``users``: per-client sums and counts, per-user values.

        Silos rank by their own training data (nothing is counted over all of them); one
        dataset in one place ranks by all of its training data.
        """
        data = self.data
        if self.settings.uses_silos:
            per_user = evaluate_local_popularity(
                data.split.train_sequences, users, data.dataset.num_items, data.assignment
            )
        else:
            per_user = evaluate_popularity(
                data.split.train_sequences, users, data.dataset.num_items
            )
        clients = torch.from_numpy(data.assignment[users.users])
        order = torch.argsort(clients, stable=True)
        values = torch.stack([per_user[name][order].double() for name in names], dim=1)
        self._popularity_user_ids[stage] = torch.from_numpy(users.users)[order]
        return client_sums(per_user, clients, self.num_clients, names), (clients[order], values)

    def popularity_of(
        self, held_clients: Sequence[int], stage: str = "test"
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The popularity baseline on the held clients' test (or validation) users.

        Args:
            held_clients: The clients whose users count (the others' rows are zero).
            stage: ``"test"`` or ``"validation"``.

        Returns:
            Metric sums ``(N, M)`` and users ``(N,)`` by client, and each held user's client
            ``(U,)`` and metric values ``(U, M)``, client-major (the order of the batches).
        """
        if self.popularity_sums is None or self._popularity_users is None:
            raise RuntimeError("FederatedDataModule.setup() has not run yet")
        if stage == "validation":
            (all_sums, all_users), (clients, values) = self._validation_baseline
        else:
            all_sums, all_users = self.popularity_sums
            clients, values = self._popularity_users
        held = torch.tensor(list(held_clients), dtype=torch.long)
        sums, users = torch.zeros_like(all_sums), torch.zeros_like(all_users)
        sums[held], users[held] = all_sums[held], all_users[held]
        kept = torch.isin(clients, held)
        return sums, users, clients[kept], values[kept]

    def popularity_users_of(self, held_clients: Sequence[int], stage: str = "test") -> torch.Tensor:
        """The users of :meth:`popularity_of`'s per-user values ``(U,)``, in the same order."""
        if self._popularity_users is None:
            raise RuntimeError("FederatedDataModule.setup() has not run yet")
        clients, _ = self._popularity_users if stage == "test" else self._validation_baseline[1]
        users = self._popularity_user_ids[stage]
        return users[torch.isin(clients, torch.tensor(list(held_clients), dtype=torch.long))]

    def slice_membership(self, stage: str, users: torch.Tensor) -> dict[str, torch.Tensor]:
        """Which slices each of ``users`` (evaluated in ``stage``) is in: name -> bool ``(U,)``.

        Args:
            stage: ``"validation"`` or ``"test"``.
            users: User indices ``(U,)``, each one of the stage's evaluated users.
        """
        if self.slices is None:
            raise RuntimeError("FederatedDataModule.setup() has not run yet")
        period = self.data.split.valid if stage == "validation" else self.data.split.test
        wanted = users.cpu().numpy()
        rows = np.searchsorted(period.users, wanted).clip(max=max(len(period.users) - 1, 0))
        if len(wanted) and not np.array_equal(period.users[rows], wanted):
            raise ValueError(
                f"the {stage} pass reported users that are not its evaluated users (or no user "
                "index): its rows cannot be sliced"
            )
        masks = self._stage_slices[stage]
        return {name: mask[torch.from_numpy(rows)] for name, mask in masks.items()}

    def eval_user_counts(self) -> dict[str, np.ndarray]:
        """Validation and test users per client ``{"validation": (N,), "test": (N,)}``."""
        data = self.data
        return {
            period: np.bincount(data.assignment[users.users], minlength=self.num_clients)
            for period, users in (("validation", data.split.valid), ("test", data.split.test))
        }

    def save_assignment(self, directory: str | Path) -> Path:
        """Write the user -> client map (original user ids) as ``directory/clients.csv``."""
        path = Path(directory) / "clients.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["user_id", "client"])
            for user_id, client in zip(
                self.data.dataset.user_ids, self.data.assignment, strict=True
            ):
                writer.writerow([user_id, int(client)])
        return path

    def partition_table(self) -> str:
        """Per-client users, examples and category divergence, as a text table.

        The divergence compares each client's categories with all clients' here together; a
        deployed silo, alone, compares its own with the catalog's (every item once).
        """
        data = self.data
        stats = partition_statistics(
            data.assignment,
            data.split,
            data.examples,
            data.dataset.categories,
            data.num_clients,
            against_catalog=self.settings.uses_silos and self.client is not None,
        )
        if self.settings.uses_silos and self.client is not None:  # a silo shows itself only
            stats["clients"] = [row for row in stats["clients"] if row["client"] == self.client]
        return format_partition_table(stats)

    def item_texts(self) -> tuple[list[str], list[tuple[str, ...]]]:
        """Titles and categories of every item index."""
        return self.data.dataset.titles, self.data.dataset.categories

    def training_user_items(self, client: int) -> list[np.ndarray]:
        """Each of ``client``'s users' training items (every user's when clients are pooled)."""
        data = self.data
        sequences = data.split.train_sequences
        if self.round_batching.pooled:
            return [np.asarray(sequence) for sequence in sequences]
        return [np.asarray(sequences[user]) for user in np.flatnonzero(data.assignment == client)]

    def training_item_counts(self, client: int) -> torch.Tensor:
        """Training interactions per item ``(I,)`` of the data client ``client``'s slot trains on.

        Its own users' training sequences; every user's when the strategy pools the clients
        (centralized training, where one model trains on all of them).
        """
        data = self.data
        sequences = data.split.train_sequences
        if not self.round_batching.pooled:
            members = np.flatnonzero(data.assignment == client)
            sequences = [sequences[user] for user in members]
        return popularity_scores(sequences, data.dataset.num_items)

    # ------------------------------------------------------------------ process layout
    def training_users(self, client: int) -> int:
        """Users with a training example in ``client`` (all users when clients are pooled)."""
        users = self.data.examples.users
        if not self.round_batching.pooled:
            users = users[self.data.example_clients() == client]
        return len(np.unique(users))

    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    def client_sizes(self) -> np.ndarray:
        """Training examples per client ``(N,)`` (per round and local epoch)."""
        return np.bincount(self.data.example_clients(), minlength=self.num_clients)

    # ------------------------------------------------------------------ training
    def round_plan(self, round_index: int) -> list[PlannedBatch]:
        """The global batches of one round (only this silo's when ``client`` is set).

        Every client draws its batches from its own generator (``seed``, round, client) over its
        own examples only, so a client trained on its own (``ClientModule``, a Flower ClientApp
        reading only its silo) takes the same steps as in the one-process simulation.
        """
        batching = self.round_batching
        if batching.user_sampling is not None:
            sampling = batching.user_sampling
            return plan_user_sampled_round(
                self.data.examples.users,
                self.data.example_clients(),
                self.num_clients,
                sampling.expected_users,
                sampling.windows_per_user,
                self.local_epochs,
                sampling.secret,
                round_index,
                pooled=batching.pooled,
                clients=None if self.client is None else [self.client],
            )
        return plan_round(
            self.data.example_clients(),
            self.num_clients,
            self.batch_size,
            self.local_epochs,
            self.accumulate_grad_batches,
            self.seed,
            round_index,
            pooled=batching.pooled,
            clients=None if self.client is None else [self.client],
        )

    def _train_batches(self) -> list[TrainBatch]:
        trainer = self.trainer
        round_index = self.round_batching.round
        if round_index is None:
            round_index = trainer.current_epoch if trainer is not None else 0
        rank, world = self._rank_world()
        examples = self.data.examples
        batches = []
        for planned in self.round_plan(round_index):
            rows, stand_in = _rows_of(planned.indices, rank, world)
            weighs = len(rows) > 0 and not stand_in  # an empty step (DP-SGD's draw) has no scale
            batches.append(
                TrainBatch(
                    client=planned.client,
                    round=round_index,
                    histories=torch.from_numpy(examples.histories[rows]),
                    targets=torch.from_numpy(examples.targets[rows]),
                    users=torch.from_numpy(examples.users[rows]),
                    # Each process's gradient of its rows, times the world size, averages to
                    # the step's mean once the processes' gradients are averaged.
                    loss_scale=world / float(planned.step_examples) if weighs else 0.0,
                    examples=len(rows) if weighs else 0,
                    client_start=planned.client_start,
                    step_end=planned.step_end,
                )
            )
        return batches

    def train_dataloader(self) -> DataLoader:
        """Client-major batches of the current round (redrawn every round)."""
        length = len(self.round_plan(0))
        return DataLoader(_PlannedBatches(self._train_batches, length), batch_size=None)

    # ------------------------------------------------------------------ evaluation
    def _eval_batches(self, users: EvalUsers) -> list[EvalBatch]:
        rank, world = self._rank_world()
        clients = self.data.assignment[users.users]
        batches = []
        for client in range(self.num_clients):
            if self.client is not None and client != self.client:
                continue
            members = np.flatnonzero(clients == client)
            for start in range(0, len(members), self.eval_batch_size):
                batch_members = members[start : start + self.eval_batch_size]
                rows, stand_in = _rows_of(batch_members, rank, world)
                history_matrix = np.full(
                    (len(rows), self.settings.history_length), -1, dtype=np.int64
                )
                for i, row in enumerate(rows):
                    history = users.histories[row][-self.settings.history_length :]
                    if len(history):
                        history_matrix[i, -len(history) :] = history
                batches.append(
                    EvalBatch(
                        client=client,
                        users=torch.from_numpy(users.users[rows]),
                        histories=torch.from_numpy(history_matrix),
                        targets=_pad([users.targets[r] for r in rows]),
                        consumed=_pad([users.consumed[r] for r in rows]),
                        counted=not stand_in,
                    )
                )
        return batches

    def _eval_loader(self, users: EvalUsers) -> DataLoader:
        batches = self._eval_batches(users)
        return DataLoader(_PlannedBatches(lambda: batches, len(batches)), batch_size=None)

    def val_dataloader(self) -> DataLoader:
        """Validation users of every client, client-major."""
        return self._eval_loader(self.data.split.valid)

    def test_dataloader(self) -> DataLoader:
        """Test users of every client, client-major."""
        return self._eval_loader(self.data.split.test)


def federated_datamodule(trainer: L.Trainer | None) -> FederatedDataModule:
    """The trainer's data module, which must be a :class:`FederatedDataModule`.

    Raises:
        ValueError: If the trainer runs without one (the ``data:`` section of the config).
    """
    datamodule = getattr(trainer, "datamodule", None)
    if not isinstance(datamodule, FederatedDataModule):
        raise ValueError(
            "fellrec needs a FederatedDataModule: pass datamodule=FederatedDataModule(...) to the "
            "Trainer call, or a `data:` section in the config"
        )
    return datamodule

"""FederatedModule: the simulation host for all clients of a federation, in one LightningModule.

The base model is loaded **once** and frozen; each client owns only a LoRA adapter and an optimizer.
Each batch carries its client id and is routed to that client's adapter and optimizer (manual
optimization), so per-client learning rates and optimizer states are natural. Round
boundaries, aggregation and evaluation bookkeeping belong to
:class:`~fellrec.training.rounds.loop.FederatedLoop`.

Data parallelism: every process holds all adapters and walks the same batch plan on its own rows of
each global batch. Losses are summed per shard and scaled so that the average of the processes'
gradients is exactly the gradient of the global batch; gradients are averaged with the strategy's
``reduce`` before each optimizer step (DDP's own bucketed hooks assume one fixed set of trainable
parameters, which per-client routing breaks).

Longer than most modules: Lightning calls one LightningModule's hooks, so they are methods of
this class; what they do lives elsewhere (model assembly, optimizers, tallies, checkpoints,
DP-SGD, secrets, server blocks, sharding), and what is left here is routing and a host's state.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.types import OptimizerLRScheduler

from fellrec.data.pipeline import default_cache_dir
from fellrec.federation.protocol import ClientRoundConfig
from fellrec.metrics.summary import metric_names
from fellrec.models.adapters import ClientAdapters
from fellrec.models.backends import RecommenderBackend
from fellrec.models.encoder import SequenceEncoderRecommender
from fellrec.models.generative import GenerativeRecommender
from fellrec.models.hidden_defence import ClientNoise
from fellrec.models.item_components import ItemComponents
from fellrec.models.proximal import add_proximal_gradient
from fellrec.models.sequential import SequentialRecommender
from fellrec.models.split_plan import plan_split
from fellrec.models.split_support import num_blocks
from fellrec.models.text import format_item_text
from fellrec.models.transport import Transport
from fellrec.models.transports import make_transport, transport_kind
from fellrec.training.batches.batch import EvalBatch, TrainBatch
from fellrec.training.batches.datamodule import FederatedDataModule, federated_datamodule
from fellrec.training.batches.round_batching import UserSampling
from fellrec.training.dp.dp_sgd import check_dp_sgd_trainer
from fellrec.training.dp.dp_training import UserLevelDPSGD
from fellrec.training.dp.host_secrets import (
    SecretSource,
    bound_secrets,
    fresh_secret,
    parameter_digests,
    request_digests,
    share_noise_seed,
)
from fellrec.training.host.client_checkpoints import check_client_keys, client_state
from fellrec.training.host.client_optimization import average_gradients, client_param_groups
from fellrec.training.host.client_tallies import EvaluationSums, RoundStatistics, padded_mask
from fellrec.training.host.held_data import held_data_digest, new_items_mask
from fellrec.training.host.module_settings import ModuleSettings
from fellrec.training.host.process_group import gather_objects, max_over_processes, reduce_sum
from fellrec.training.host.recommender_assembly import (
    assemble_recommender,
    build_adapters,
)
from fellrec.training.host.server_blocks import (
    InProcessServerBlocks,
    ServerBlocks,
    server_blocks_for,
)
from fellrec.training.host.server_sharding import ShardingRequest, shard_server_blocks
from fellrec.training.records.accounting import ResourceFacts

log = logging.getLogger(__name__)


class FederatedModule(ModuleSettings):
    """All clients' sides of a federated sequence-encoder recommender.

    Its settings (``model.*``) are those of
    :class:`~fellrec.training.host.module_settings.ModuleSettings`, which checks and records them;
    this class holds the runtime state (adapters, transport, slots, round and evaluation tallies)
    and loads, trains and evaluates the clients.

    Args:
        **kwargs: The model settings of
        :class:`~fellrec.training.host.module_settings.ModuleSettings`
            (backbone, recommender, lora, split_execution, lr, ...).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.automatic_optimization = False
        # Checkpoints hold adapters only; the frozen base is rebuilt from `backbone`.
        self.strict_loading = False
        #: The blocks sharded across the processes (empty unless under ModelParallelStrategy).
        self.sharded_blocks: list[torch.nn.Module] = []
        #: What sharding measured (blocks, processes, parameter bytes here and whole), or None.
        self.sharding_measured: dict[str, Any] | None = None
        self.adapters: ClientAdapters | None = None
        self.recommender: (
            SequentialRecommender | SequenceEncoderRecommender | GenerativeRecommender | None
        ) = None
        self.backend: RecommenderBackend | None = None
        self.tokenizer: Any = None
        self.transport: Transport | None = None
        #: The part of the clients' parameters a block server process holds
        #: (``model.transport: process``); otherwise the host holds everything and it does nothing.
        self.server_blocks: ServerBlocks = InProcessServerBlocks()
        #: Bytes the transport carried for training micro-batches, and how many there were.
        self.train_traffic = {"bytes": 0, "steps": 0}
        self.num_clients = 0
        #: The clients whose parameters this host holds (known once built).
        self.held_clients: list[int] = []
        self._slots: dict[int, int] = {}
        self.num_items = 0
        self._generator = torch.Generator().manual_seed(self.seed)
        self.round_anchor: torch.Tensor | None = None
        self._anchors: dict[int, torch.Tensor] = {}
        #: This round's config of each slot (set by :meth:`start_round`).
        self._round_configs: dict[int, ClientRoundConfig] = {}
        self.round_stats = RoundStatistics(0)
        self.eval_names = metric_names()
        self.evaluation = EvaluationSums(0, self.eval_names)
        #: User-level DP-SGD's state on this host (``model.dp_sgd``; known once built), or None.
        self.dp: UserLevelDPSGD | None = None
        #: Where unseeded privacy noise gets its secrets: fresh entropy in a simulation; a
        #: deployed node derives them from its own key (:mod:`fellrec.training.dp.host_secrets`).
        self.secret_source: SecretSource = fresh_secret
        #: The clients' hidden-state noise (``model.hidden_defence``), or None.
        self.hidden_noise: ClientNoise | None = None
        #: The secret base of the share noise (``model.items.share_noise_*``), or None.
        self.item_noise_base: int | None = None
        #: This round's digest of what each slot was asked (parameters and round config).
        self._requests: list[int] = []
        #: An identifier of this host's noise context (key, settings, data) for a node's ledger.
        self.ledger_id: int | None = None

    # ------------------------------------------------------------------ construction
    @property
    def num_slots(self) -> int:
        """Adapters this module holds: one per held client."""
        return len(self.held_clients)

    def slot(self, client: int) -> int:
        """Adapter slot that trains and evaluates ``client``.

        Raises:
            ValueError: For a client this module does not hold.
        """
        if client not in self._slots:
            raise ValueError(
                f"this module holds clients {self.held_clients} and received a batch of client "
                f"{client}; use FederatedDataModule(client={self.held_clients[0]})"
                if len(self.held_clients) == 1
                else f"this module holds clients {self.held_clients}, not client {client}"
            )
        return self._slots[client]

    def slot_client(self, slot: int) -> int:
        """The client whose adapter lives in ``slot``."""
        return self.held_clients[slot]

    # ------------------------------------------------------------------ host interface
    def client_parameters(self) -> torch.Tensor:
        """The held clients' parameters (adapter and item components), one row each ``(S, P)``."""
        assert self.adapters is not None, "the module is not built yet"
        # A block server trained the middle blocks' LoRA: its values are the ones aggregated.
        self.server_blocks.fetch()
        return self.adapters.get_matrix()

    def release_parameters(self) -> torch.Tensor:
        """The held clients' parameters as they leave their silos after local training ``(S, P)``.

        With ``model.items.share_noise_ids`` / ``share_noise_bias`` every client first adds its
        noise to its item rows and biases, in place, seeded by a secret base
        (``model.items.bias_init_seed``, else the host's own secret: ``model.seed`` is the
        server's too), the round, the client and the parameters it was sent.
        """
        assert self.adapters is not None, "the module is not built yet"
        if self.uses_item_components:
            for slot in range(self.num_slots):
                components = cast(ItemComponents, self.adapters.module(slot))
                config = self._round_configs.get(slot)
                if components.shares_noise and config is not None:
                    assert self.item_noise_base is not None
                    seed = share_noise_seed(
                        self.item_noise_base,
                        config.round,
                        self.slot_client(slot),
                        self._requests[slot],
                    )
                    components.add_share_noise(torch.Generator().manual_seed(seed))
        return self.client_parameters()

    def load_client_parameters(self, parameters: torch.Tensor, identical: bool = False) -> None:
        """Load every held client's parameters ``(S, P)`` (after aggregation or selection).

        Args:
            parameters: One row per held client, in :attr:`held_clients` order.
            identical: All rows are the same (a shared-model strategy broadcast one), so one item
                encoding can serve every client.
        """
        assert self.adapters is not None, "the module is not built yet"
        self.adapters.set_matrix(parameters)
        self.server_blocks.push()
        self.invalidate_item_tables(identical_adapters=identical)

    def resource_facts(self) -> ResourceFacts:
        """What the resource estimate of this built host in a trainer depends on."""
        assert self.adapters is not None
        base = self.adapters.model.get_base_model()
        datamodule = federated_datamodule(self.trainer)
        settings = self.recommender_settings()
        return ResourceFacts(
            config=base.config,
            plan=plan_split(num_blocks(base), self.k_front, self.k_back) if self.split else None,
            lora=self.lora,
            batch_size=max(1, datamodule.batch_size // self.trainer.world_size),
            seq_len=settings.tokens_per_example(datamodule.settings.history_length),
            num_clients=self.num_clients,
            base_dtype_bytes=1
            if self.load_in_8bit
            else min(4, next(base.parameters()).element_size()),
            client_module_parameters=self.adapters.num_module_parameters,
            trainable_inputs=settings.trainable_inputs,
            traffic_bytes=int(self.train_traffic["bytes"]),
            traffic_steps=int(self.train_traffic["steps"]),
            sharding=self.sharding_measured,
        )

    def gathered_adapters(self) -> dict[str, torch.Tensor] | None:
        """Sharded adapters gathered whole for export (``None`` unless sharded; a collective)."""
        return self.adapters.gathered_state() if self.adapters is not None else None

    @property
    def sharded(self) -> bool:
        """Whether blocks of the model are sharded across the processes."""
        return bool(self.sharded_blocks)

    def round_start_parameters(self) -> torch.Tensor:
        """The held clients' parameters when the current round started ``(S, P)``."""
        assert self.round_anchor is not None, "no round has started"
        return self.round_anchor

    def setup(self, stage: str) -> None:
        """Load the base model once, attach one adapter per client, build the recommender."""
        if self.dp_sgd is not None:
            check_dp_sgd_trainer(str(self.trainer.precision), self.trainer.world_size)
        if (
            not transport_kind(self.transport_name).server_in_process
            and self.trainer.world_size > 1
        ):
            raise ValueError(
                f"model.transport: {self.transport_name} serves one training process; run it with "
                "--trainer.devices 1 (or model.transport: local for data parallelism)"
            )
        self.build(federated_datamodule(self.trainer))

    def build(self, datamodule: FederatedDataModule) -> None:
        """Load the base model, attach the clients' adapters, build the recommender.

        What :meth:`setup` does, for a set-up data module without a trainer (``fellrec attack``).
        """
        if self.adapters is not None:
            return
        self.num_clients = datamodule.num_clients
        # A data module that serves one client's data makes this a one-client host (what a
        # client silo runs); otherwise it holds every client. Rows of every per-host matrix
        # (parameters, optimizers) follow `held_clients`.
        self.held_clients = (
            list(range(self.num_clients)) if datamodule.client is None else [datamodule.client]
        )
        self._slots = {client: slot for slot, client in enumerate(self.held_clients)}
        trainer = self._trainer
        secret = bound_secrets(
            self.secret_source,
            lambda: held_data_digest(datamodule, self.held_clients),
            # Every process holds every client: they must draw the same noise.
            (lambda value: int(trainer.strategy.broadcast(value, src=0)))
            if trainer is not None and trainer.world_size > 1
            else None,
        )
        new_items = new_items_mask(datamodule)
        self.ledger_id = secret("ledger") if self.dp_sgd is not None else None
        if self.dp_sgd is not None:
            # Every step Poisson-samples each client's users (fellrec.training.dp.dp_sgd), from a
            # secret seed: the server knows model.seed.
            seed = self.dp_sgd.seed
            self.dp = UserLevelDPSGD(
                self.dp_sgd,
                {c: datamodule.training_users(c) for c in self.held_clients},
                seed if seed is not None else secret("dp_sgd"),
            )
            self._share_dp_secret(datamodule)
        titles, categories = datamodule.item_texts()
        texts = [
            format_item_text(self.item_text, t, c) for t, c in zip(titles, categories, strict=True)
        ]
        self.num_items = len(texts)
        self.adapters, self.tokenizer = build_adapters(
            self.recommender_settings(),
            self.backbone_name,
            self.lora,
            self.held_clients,
            self.num_items,
            self.seed,
            self.load_in_8bit,
            self.base_dropout,
        )
        if self.items.bias_init != "zeros" and self.uses_item_components:
            # dp_log_popularity's noise from a secret (model.seed is the server's too).
            base = self.items.bias_init_seed
            base = base if base is not None else secret("bias_init")
            for slot, client in enumerate(self.held_clients):
                counts = datamodule.training_item_counts(client)
                components = cast(ItemComponents, self.adapters.module(slot))
                seed = (base * 1_000_003 + client) % 2**63
                components.start_from_popularity(counts, seed=seed, unknown=new_items)
        if self.dp is not None and self.dp.settings.popularity_noise is not None:
            for slot, client in enumerate(self.held_clients):
                counts = self.dp.popularity_start(
                    slot, client, datamodule.training_user_items(client), self.num_items
                )
                components = cast(ItemComponents, self.adapters.module(slot))
                components.start_from_popularity(counts, unknown=new_items)
        shares = self.items.share_noise_ids > 0 or self.items.share_noise_bias > 0
        if self.uses_item_components and shares:
            base = self.items.bias_init_seed
            self.item_noise_base = base if base is not None else secret("share_noise")
        self.transport = (
            make_transport(self.transport_name, self.block_server) if self.split else None
        )
        self.server_blocks = server_blocks_for(
            self.adapters, self.transport, self.transport_name, self.k_front, self.k_back
        )
        self.server_blocks.bind(
            self.backbone_name,
            causal_lm=self.recommender_family.causal_lm,
            lora=self.lora,
            causal=self.recommender_family.causal_encoder,
            weight_decay=self.weight_decay,
            base_dropout=self.base_dropout,
        )
        cache = Path(datamodule.cache_dir) if datamodule.cache_dir else default_cache_dir()
        settings = self.recommender_settings()
        if settings.hidden_defence.enabled:
            noise_seed = settings.hidden_defence.seed
            self.hidden_noise = ClientNoise(
                settings.hidden_defence,
                self.adapters.active_client,
                noise_seed if noise_seed is not None else secret("hidden"),
            )
        self.recommender, self.backend = assemble_recommender(
            settings,
            self.adapters,
            self.tokenizer,
            texts,
            self.transport,
            cache / "item-embeddings",
            defence=self.hidden_noise,
        )
        if hasattr(self.recommender, "unavailable"):
            # New items (data.new_items) are not in the catalog the clients train on.
            self.recommender.unavailable = new_items
        for slot, client in enumerate(self.held_clients):
            # Scoring with counts (BIGRec's popularity term) stays on the client that has them.
            self.backend.use_item_counts(slot, datamodule.training_item_counts(client))
        self.round_stats = RoundStatistics(self.num_clients)
        self.evaluation = EvaluationSums(self.num_clients, self.eval_names)
        sizes = datamodule.client_sizes()
        log.info(
            "model: %s (%s%s), %d clients x %d trainable parameters, %d items",
            self.backbone_name,
            self.recommender_kind,
            f", split {self.k_front}/{self.k_back}" if self.split else "",
            self.num_slots,
            self.adapters.num_parameters,
            self.num_items,
        )
        self._client_sizes = torch.as_tensor(sizes, dtype=torch.float64)

    def configure_model(self) -> None:
        """Under ``ModelParallelStrategy``: shard the server's middle blocks across the processes.

        Runs after :meth:`setup` (the model is built; catalog tables are computed unsharded) and
        before the optimizers are built. Other strategies replicate the model as before.
        """
        if self._trainer is None or self.sharded or self.adapters is None:
            return
        strategy = self.trainer.strategy
        if isinstance(strategy, ModelParallelStrategy) and self.dp_sgd is not None:
            raise ValueError(
                "model.dp_sgd clips each user's gradient in one process; it does not run under "
                "--trainer.strategy model_parallel"
            )
        if not isinstance(strategy, ModelParallelStrategy):
            if self.shard_client_blocks:
                rank_zero_warn(
                    "model.shard_client_blocks has no effect without --trainer.strategy "
                    "model_parallel (nothing is sharded)"
                )
            return
        request = ShardingRequest(
            split=self.split,
            k_front=self.k_front,
            k_back=self.k_back,
            client_blocks=self.shard_client_blocks,
            load_in_8bit=self.load_in_8bit,
            precision=str(self.trainer.precision),
            world_size=self.trainer.world_size,
            device_type=strategy.root_device.type,
        )
        if self.backend is not None:
            self.backend.lockstep(lambda n: max_over_processes(self._trainer, n, self.device))
        self.sharded_blocks, self.sharding_measured = shard_server_blocks(self.adapters, request)

    def configure_optimizers(self) -> OptimizerLRScheduler:
        """One AdamW per client.

        Its adapter at ``model.lr``, its item components at ``model.items.lr``; each group keeps
        its ``base_lr``, which the heating scales.
        """
        assert self.adapters is not None
        return [
            torch.optim.AdamW(self._param_groups(s), weight_decay=self.weight_decay)
            for s in range(self.num_slots)
        ]

    def _param_groups(self, slot: int) -> list[dict[str, Any]]:
        keys, params = self._own_keys_and_parameters(slot)
        return client_param_groups(keys, params, self.lr, self.items.lr, self.items.weight_decay)

    def _own_keys_and_parameters(self, slot: int) -> tuple[list[str], list[torch.nn.Parameter]]:
        """What the slot's optimizer steps here: all but what a block server process holds."""
        return self.server_blocks.client_keys_and_parameters(slot)

    def client_optimizers(self) -> list[Any]:
        """The per-slot optimizers as a list (Lightning returns a bare one when there is one)."""
        optimizers = self.optimizers()
        return list(optimizers) if isinstance(optimizers, list) else [optimizers]

    # ------------------------------------------------------------------ shared helpers
    def invalidate_item_tables(self, identical_adapters: bool = False) -> None:
        """Forget what the backend computed with the previous adapters (aggregation, selection).

        Args:
            identical_adapters: All slots now hold the same adapter (a shared-model strategy just
                broadcast it), so one item encoding can serve every slot.
        """
        if self.backend is not None:
            self.backend.invalidate(identical_adapters)

    def _bytes_sent(self) -> int:
        return self.transport.stats()["bytes_total"] if self.transport is not None else 0

    def _gather_objects(self, obj: Any) -> list[Any]:
        return gather_objects(self._trainer, obj)

    def _reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return reduce_sum(self._trainer, tensor, self.device)

    # ------------------------------------------------------------------ training
    def start_round(self, round_index: int, configs: Mapping[int, ClientRoundConfig]) -> None:
        """Start a round: reset its statistics and set up each client as its config says.

        Args:
            round_index: The round about to start.
            configs: Each client's round config (learning-rate scale, proximal weight, whether it
                trains), by client id: the protocol's
                :meth:`~fellrec.federation.protocol.RoundConfig.for_client`. Every client this
                module holds needs one.
        """
        assert self.adapters is not None
        missing = [self.slot_client(s) for s in range(self.num_slots)]
        missing = [c for c in missing if c not in configs]
        if missing:
            raise ValueError(f"round {round_index}: no round config for clients {missing}")
        self.round_stats = RoundStatistics(self.num_clients)
        self.server_blocks.begin_round(self.schedule.reset_optimizer_each_round)
        self.round_anchor = self.client_parameters()
        self._anchors = {}
        self._round_configs = {s: configs[self.slot_client(s)] for s in range(self.num_slots)}
        # What each client was asked (its parameters and its round config): its noise is bound to
        # it, so the same question gets the same answer and another question other noise.
        # Only noise reads them: a run without any privacy noise does not hash its parameters.
        noised = self.dp is not None or self.hidden_noise is not None
        if noised or self.item_noise_base is not None:
            asked = [self._round_configs[slot] for slot in range(self.num_slots)]
            self._requests = request_digests(
                self.round_anchor,
                [(round_index, c.lr_scale, c.proximal_mu, float(c.trains)) for c in asked],
            )
        if self.dp is not None:
            local_epochs = federated_datamodule(self.trainer).local_epochs
            self.dp.start_round(round_index, self._requests, self.held_clients, local_epochs)
        if self.hidden_noise is not None:
            requests = dict(zip(self.held_clients, self._requests, strict=True))
            self.hidden_noise.start("train", round_index, requests)
        steps: dict[int, int] = {}
        for batch in federated_datamodule(self.trainer).round_plan(round_index):
            if batch.step_end:
                slot = self.slot(batch.client)
                steps[slot] = steps.get(slot, 0) + 1
        scales = [self._round_configs[slot].lr_scale for slot in range(self.num_slots)]
        self.schedule.start(self.client_optimizers(), scales, steps)

    def _anchor_on_device(self, slot: int, device: torch.device) -> torch.Tensor:
        """The slot's round-start values of what it steps here (FedProx anchor), on ``device``."""
        if slot not in self._anchors:
            assert self.round_anchor is not None
            anchor = self.server_blocks.stepped_here(self.round_anchor[slot])
            self._anchors[slot] = anchor.to(device)
        return self._anchors[slot]

    def collect_round_stats(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Loss sums, example counts and divergence flags of the round, summed over processes."""
        return self.round_stats.collect(self._reduce_sum)

    def _begin_client(self, client: int, round_index: int) -> None:
        # Seed dropout and negatives per (round, client): a resumed run replays the same noise.
        seed = (self.seed * 1_000_003 + round_index * 10_007 + client) % (2**63)
        torch.manual_seed(seed)
        self._generator.manual_seed(seed)

    def training_step(self, batch: TrainBatch, batch_idx: int) -> None:
        """Forward, backward and (at step ends) an optimizer step for the batch's client."""
        assert self.adapters is not None and self.recommender is not None
        client = batch.client
        slot = self.slot(client)
        config = self._round_configs.get(slot)
        if config is not None and not config.trains:
            return  # this round's config leaves the client out
        if batch.client_start:
            self._begin_client(client, batch.round)
        if self.dp_sgd is not None:
            self._dp_training_step(batch, client, slot, config)
            return
        targets = batch.targets
        if targets.numel() > 0:
            assert self.backend is not None
            self.backend.prepare(slot)
            sent_before = self._bytes_sent()
            losses = self.backend.losses(slot, batch.histories, targets, self._generator)  # (b,)
            finite = bool(torch.isfinite(losses.detach()).all())
            if not finite:
                self.round_stats.diverged[client] = True
            # Sharded blocks reduce their gradients in backward: every process runs it, even
            # for a diverged loss (the step is then skipped everywhere). Rows that weigh
            # nothing (scale 0, no examples) still run, keeping every process's collectives in
            # step.
            if finite or self.sharded:
                loss = losses.sum() * batch.loss_scale
                self.manual_backward(loss)
            if finite and batch.examples > 0:
                self.train_traffic["bytes"] += self._bytes_sent() - sent_before
                self.train_traffic["steps"] += 1
                self.round_stats.add(client, float(losses.detach().sum()), batch.examples)
        if batch.step_end:
            self._optimizer_step(client, slot, config.proximal_mu if config is not None else 0.0)

    def _dp_training_step(
        self, batch: TrainBatch, client: int, slot: int, config: ClientRoundConfig | None
    ) -> None:
        """One user-level DP-SGD step of the batch (one whole step of the user-sampled plan).

        :meth:`UserLevelDPSGD.step` clips and noises; this only routes the client's rows.
        """
        assert self.backend is not None and self.dp is not None
        histories, targets = batch.histories, batch.targets
        sent_before = self._bytes_sent()
        if targets.numel() > 0:
            self.backend.prepare(slot)
        backend = self.backend
        outcome = self.dp.step(
            slot,
            client,
            batch.users if targets.numel() > 0 else targets.new_zeros(0),
            lambda rows, generator: backend.losses(slot, histories[rows], targets[rows], generator),
            self.manual_backward,
            self._own_keys_and_parameters(slot)[1],
        )
        if outcome.trained:
            self.train_traffic["bytes"] += self._bytes_sent() - sent_before
            self.train_traffic["steps"] += 1
        if outcome.diverged:
            self.round_stats.diverged[client] = True
        self.round_stats.add(client, outcome.loss_sum, outcome.examples)
        self._optimizer_step(client, slot, config.proximal_mu if config is not None else 0.0)

    def _share_dp_secret(self, datamodule: FederatedDataModule) -> None:
        """Tell the data module to Poisson-sample users per step, from the DP secret."""
        assert self.dp is not None
        settings = self.dp.settings
        sampling = UserSampling(settings.expected_users, settings.windows_per_user, self.dp.secret)
        datamodule.set_round_batching(replace(datamodule.round_batching, user_sampling=sampling))

    def privacy_spent(self) -> torch.Tensor | None:
        """Under DP-SGD, each client's ``(epsilon, delta)`` after this round ``(N, 2)``.

        NaN for clients this module does not hold; None without ``model.dp_sgd``
        (:meth:`UserLevelDPSGD.privacy_spent`).
        """
        if self.dp is None:
            return None
        local_epochs = federated_datamodule(self.trainer).local_epochs
        return self.dp.privacy_spent(self.num_clients, local_epochs)

    def _optimizer_step(self, client: int, slot: int, proximal_mu: float) -> None:
        assert self.adapters is not None
        optimizer = self.client_optimizers()[slot]
        _, params = self._own_keys_and_parameters(slot)
        diverged = average_gradients(
            params,
            bool(self.round_stats.diverged[client]),
            self.trainer.world_size,
            lambda flat: self.trainer.strategy.reduce(flat, reduce_op="sum"),
        )
        if diverged:
            self.round_stats.diverged[client] = True
            self.server_blocks.step(slot, None, proximal_mu)  # a server skips its part too
        else:
            if proximal_mu > 0:
                anchor = self._anchor_on_device(slot, params[0].device)
                add_proximal_gradient(params, anchor, proximal_mu)
            # A server steps its part at the same rate.
            self.server_blocks.step(slot, self.schedule.next_rate(slot, self.lr), proximal_mu)
            self.schedule.step(slot, optimizer)
        optimizer.zero_grad(set_to_none=True)

    # ------------------------------------------------------------------ evaluation
    def on_validation_epoch_start(self) -> None:
        """Start accumulating validation metrics."""
        self.evaluation = EvaluationSums(self.num_clients, self.eval_names)
        self._start_eval_noise("validation")
        self.server_blocks.sync_if_stale()

    def on_test_epoch_start(self) -> None:
        """Start accumulating test metrics."""
        self.evaluation = EvaluationSums(self.num_clients, self.eval_names)
        self._start_eval_noise("test")
        self.server_blocks.sync_if_stale()

    def _start_eval_noise(self, stage: str) -> None:
        """An evaluation pass draws its own hidden-state noise, bound to the evaluated parameters.

        Asked again for the same parameters (a restarted node), it adds the same noise; never
        the noise of a training round.
        """
        if self.hidden_noise is not None:
            parameters = parameter_digests(self.client_parameters())
            digests = dict(zip(self.held_clients, parameters, strict=True))
            self.hidden_noise.start(stage, 0, digests)

    def _evaluate(self, batch: EvalBatch) -> None:
        assert self.adapters is not None and self.recommender is not None
        client = batch.client
        if batch.users.numel() == 0:
            return
        assert self.backend is not None
        consumed = padded_mask(batch.consumed, self.num_items)  # masked from the ranking anyway
        scores = self.backend.scores(self.slot(client), batch.histories, consumed)  # (b, I)
        if batch.counted:  # rows that do not count only keep the processes in step
            self.evaluation.add_scores(client, scores, batch.targets, batch.consumed, batch.users)

    def validation_step(self, batch: EvalBatch, batch_idx: int) -> None:
        """Accumulate ranking metrics of a batch of one client's validation users."""
        self._evaluate(batch)

    def test_step(self, batch: EvalBatch, batch_idx: int) -> None:
        """Accumulate ranking metrics of a batch of one client's test users."""
        self._evaluate(batch)

    def collect_eval_values(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every evaluated user's client ``(U,)`` and metric values ``(U, M)``, all processes."""
        return self.evaluation.user_values(self._gather_objects)

    def collect_eval_users(self) -> torch.Tensor:
        """Every evaluated user's index ``(U,)``, aligned with :meth:`collect_eval_values`."""
        return self.evaluation.user_indices(self._gather_objects)

    def collect_eval(self) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """Per-client metric sums ``(N, M)`` and user counts ``(N,)``, summed over processes."""
        sums, counts = self.evaluation.collect(self._reduce_sum)
        return sums, counts, self.eval_names

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep only adapter weights: the frozen base is rebuilt from ``backbone``."""
        checkpoint["state_dict"] = client_state(checkpoint["state_dict"])
        checkpoint["fellrec_train_traffic"] = dict(self.train_traffic)
        if self.dp is not None:
            checkpoint["fellrec_dp_secret"] = self.dp.secret
            checkpoint["fellrec_dp_ledger"] = self.dp.ledger.state()
        if self.hidden_noise is not None:
            checkpoint["fellrec_hidden_noise_base"] = self.hidden_noise.base
        if self.item_noise_base is not None:
            checkpoint["fellrec_item_noise_base"] = self.item_noise_base
        # A block server's values of the middle blocks' LoRA, and its optimizers' moments.
        self.server_blocks.write_checkpoint(
            checkpoint, self, optimizers=not self.schedule.reset_optimizer_each_round
        )

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint whose adapters do not match this federation."""
        self.train_traffic = dict(checkpoint.get("fellrec_train_traffic", self.train_traffic))
        if (
            self.dp_sgd is not None
            and "state_dict" in checkpoint
            and ("fellrec_dp_secret" not in checkpoint)
        ):
            raise ValueError(
                "model.dp_sgd is set but this checkpoint was written without it: its rounds "
                "trained without DP-SGD, so no epsilon covers them; start a new run"
            )
        if self.dp is not None and "fellrec_dp_secret" in checkpoint:
            # A resumed run samples and noises as the interrupted one would have, and accounts
            # its rounds with the settings they ran under.
            state = {"secret": checkpoint["fellrec_dp_secret"]}
            if "fellrec_dp_ledger" in checkpoint:
                state["ledger"] = checkpoint["fellrec_dp_ledger"]
            self.dp.load_state(state)
            self._share_dp_secret(federated_datamodule(self.trainer))
        if self.hidden_noise is not None and "fellrec_hidden_noise_base" in checkpoint:
            self.hidden_noise.base = int(checkpoint["fellrec_hidden_noise_base"])
        if self.item_noise_base is not None and "fellrec_item_noise_base" in checkpoint:
            self.item_noise_base = int(checkpoint["fellrec_item_noise_base"])
        if "state_dict" in checkpoint:  # ModelParallelStrategy loaded (and checked) it already
            self.check_checkpoint_keys(checkpoint["state_dict"])
        self.server_blocks.read_checkpoint(checkpoint)
        self.invalidate_item_tables()

    def check_checkpoint_keys(self, keys: Iterable[str]) -> None:
        """Refuse a checkpoint (its state-dict ``keys``) that lacks one of this host's tensors."""
        if self.adapters is not None:
            check_client_keys(self.state_dict(), keys)

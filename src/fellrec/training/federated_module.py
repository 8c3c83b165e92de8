"""FederatedModule: the simulation host for all clients of a federation, in one LightningModule.

The base model is loaded **once** and frozen; each client owns only a LoRA adapter and an optimizer.
Each batch carries its client id and is routed to that client's adapter and optimizer (manual
optimization), so per-client learning rates and optimizer states are natural. Round boundaries,
aggregation and evaluation bookkeeping belong to :class:`fellrec.training.loop.FederatedLoop`.

Data parallelism: every process holds all adapters and walks the same batch plan on its own rows of
each global batch. Losses are summed per shard and scaled so that the average of the processes'
gradients is exactly the gradient of the global batch; gradients are averaged with the strategy's
``reduce`` before each optimizer step (DDP's own bucketed hooks assume one fixed set of trainable
parameters, which per-client routing breaks).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from lightning.pytorch.utilities import rank_zero_deprecation, rank_zero_warn
from lightning.pytorch.utilities.types import OptimizerLRScheduler

from fellrec.data.pipeline import default_cache_dir
from fellrec.federation.protocol import ClientRoundConfig
from fellrec.federation.strategies import Strategy
from fellrec.metrics.summary import metric_names
from fellrec.models.adapters import ClientAdapters, LoRASettings
from fellrec.models.backends import RecommenderBackend
from fellrec.models.encoder import SequenceEncoderRecommender
from fellrec.models.generative import GenerativeRecommender
from fellrec.models.item_components import ItemSettings
from fellrec.models.process_transport import BlockServerSettings, ProcessTransport
from fellrec.models.prompts import PromptSettings
from fellrec.models.sequential import SequentialRecommender
from fellrec.models.text import format_item_text
from fellrec.models.transport import Transport, check_transport_name
from fellrec.training.client_checkpoints import check_client_keys, client_state
from fellrec.training.client_optimization import (
    RoundSchedule,
    add_proximal_gradient,
    average_gradients,
    client_param_groups,
)
from fellrec.training.client_tallies import EvaluationSums, RoundStatistics
from fellrec.training.datamodule import FederatedDataModule, federated_datamodule
from fellrec.training.process_group import gather_objects, max_over_processes, reduce_sum
from fellrec.training.recommender_assembly import (
    RecommenderSettings,
    assemble_recommender,
    build_adapters,
    make_transport,
)
from fellrec.training.server_blocks import RemoteServerBlocks
from fellrec.training.server_sharding import ShardingRequest, shard_server_blocks

log = logging.getLogger(__name__)


class FederatedModule(L.LightningModule):
    """All clients' sides of a federated sequence-encoder recommender.

    Args:
        backbone: Model by packaged alias (``minilm``, ``smollm2``), local directory or hub name.
        recommender: ``sequential`` (the default: the LLM reads the history as item tokens,
            text embedding plus ID embedding each, and predicts the next item at every
            position; :mod:`fellrec.models.sequential`), ``encoder`` (RecFormer-style, the
            paper's: the history rendered as text, scored against every item's text) or
            ``generative`` (causal LM, BIGRec-style: beam search, then grounding to items).
        items: Trainable per-item components (ID embeddings, biases, learned temperature), client
            parameters exchanged and aggregated with the adapter. Used by ``sequential``; for
            ``encoder`` only when ``model.item_components`` is on.
        item_components: Give the ``encoder`` recommender the per-item components of
            ``model.items`` too (off: the paper's RecFormer-style scoring, cosine / temperature).
        item_encoding: ``encoder`` only: ``round`` (the paper's: the catalog is encoded once per
            round and fixed within it, so no gradient reaches the adapter from the item side) or
            ``step`` (the batch's targets and ``model.num_negatives`` sampled items are encoded
            inside the step, with gradients).
        strategy: Deprecated: set ``loop.strategy`` (the round loop runs the strategy). Still read,
            with a warning, when ``loop.strategy`` is not set.
        lora: LoRA settings shared by all clients.
        split_execution: Split execution (flexible storage): the client runs the embeddings, the
            first ``k_front`` and the last ``k_back`` blocks and the head; the server runs the
            middle blocks. Numerically the same as ``false``; only where the work runs changes.
            (Not named ``split``: ``data.split`` is the train/valid/test split, and Lightning
            merges both modules' hyper-parameters into one namespace.)
        k_front: Blocks after the embeddings that stay on the client.
        k_back: Last blocks (before the final norm and head) that stay on the client.
        transport: How hidden states cross between client and server: ``local`` (in process)
            or ``process`` (the middle blocks, with every client's LoRA on them, in a block
            server process: :mod:`fellrec.models.process_transport`).
        block_server: Where the ``process`` transport's block server runs (default: a child
            process of the run).
        shard_client_blocks: Under ``--trainer.strategy model_parallel`` (which shards
            the server's middle blocks across the processes), shard the client's front and back
            blocks too; off: they stay replicated, like the embeddings and the head.
        load_in_8bit: Load the frozen base in 8 bits (generative; needs bitsandbytes and a GPU).
        prompt: Prompt wording, cutoff and decoding of the generative recommender.
        privacy_probe: At the end of a split run, play the honest-but-curious server (linear
            inversion of ``h_front``, :mod:`fellrec.training.privacy`) at ``k_front`` in
            {0, 1, 2, model.k_front} and store the token recovery under ``"privacy"`` in
            ``results.json`` (the :class:`~fellrec.training.privacy_probe.PrivacyProbe`
            callback, which ``fellrec fit`` adds). ``fellrec attack`` measures the whole curve.
        pooling: ``mean`` or ``cls`` pooling of token states.
        temperature: Cosine-score temperature.
        item_text: Template of an item's text (fields ``{title}``, ``{categories}``).
        max_history_tokens: Token budget of a rendered history.
        max_item_tokens: Tokens kept per item text.
        lr: Base learning rate (scaled per client by the strategy's heating weights).
        weight_decay: AdamW weight decay.
        warmup_steps: Linear warm-up steps at the start of each client's round.
        lr_decay: ``none``, ``linear`` or ``cosine`` decay over each client's round.
        reset_optimizer_each_round: Clear AdamW moments at each round start (the aggregated adapter
            is a new point, so stale moments would push it back toward the client's own).
        num_negatives: Sampled negatives per example instead of the full-catalog softmax.
        item_batch_size: Items per forward pass when encoding the catalog.
        seed: Seed of dropout and negative sampling (set per client and round, so resumes replay).
    """

    def __init__(
        self,
        backbone: str = "minilm",
        recommender: str = "sequential",
        strategy: Strategy | None = None,
        lora: LoRASettings | None = None,
        items: ItemSettings | None = None,
        item_components: bool = False,
        item_encoding: str = "round",
        split_execution: bool = True,
        k_front: int = 1,
        k_back: int = 1,
        transport: str = "local",
        block_server: BlockServerSettings | None = None,
        shard_client_blocks: bool = False,
        load_in_8bit: bool = False,
        prompt: PromptSettings | None = None,
        privacy_probe: bool = True,
        pooling: str = "mean",
        temperature: float = 0.05,
        item_text: str = "{title}",
        max_history_tokens: int = 128,
        max_item_tokens: int = 32,
        lr: float = 5e-4,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        lr_decay: str = "none",
        reset_optimizer_each_round: bool = True,
        num_negatives: int | None = None,
        item_batch_size: int = 64,
        seed: int = 0,
    ) -> None:
        super().__init__()
        # Every setting is checked here, before the data and the model are loaded.
        self.schedule = RoundSchedule(warmup_steps, lr_decay, reset_optimizer_each_round, lr)
        format_item_text(item_text, "title", ["category"])  # an unknown field fails now
        self.automatic_optimization = False
        # Checkpoints hold adapters only; the frozen base is rebuilt from `backbone`.
        self.strict_loading = False
        check_transport_name(transport)
        self.block_server = block_server if block_server is not None else BlockServerSettings()
        self.block_server.validate()
        if transport == "process" and not split_execution:
            raise ValueError(
                "model.transport: process runs the server's middle blocks of a split model; "
                "set model.split_execution: true (or model.transport: local)"
            )
        if transport == "process" and load_in_8bit:
            raise ValueError(
                "model.transport: process loads the base in full precision on the server; "
                "model.load_in_8bit is not supported with it"
            )
        self.backbone_name = backbone
        self.recommender_kind = recommender
        self.split = split_execution
        self.k_front = k_front
        self.k_back = k_back
        self.transport_name = transport
        self.shard_client_blocks = shard_client_blocks
        #: The blocks sharded across the processes (empty unless under ModelParallelStrategy).
        self.sharded_blocks: list[torch.nn.Module] = []
        #: What sharding measured (blocks, processes, parameter bytes here and whole), or None.
        self.sharding_measured: dict[str, Any] | None = None
        self.load_in_8bit = load_in_8bit
        self.prompt = prompt if prompt is not None else PromptSettings()
        self.privacy_probe = privacy_probe
        if strategy is not None:
            rank_zero_deprecation(
                "model.strategy is deprecated and will be removed: set the strategy as "
                "loop.strategy (the round loop runs it; the same class_path and init_args)"
            )
        #: ``model.strategy`` where an old config or checkpoint still sets it (the loop uses it
        #: when ``loop.strategy`` is not set).
        self.legacy_strategy = strategy
        self.lora = lora if lora is not None else LoRASettings()
        self.items = items if items is not None else ItemSettings()
        self.item_components = item_components
        self.item_encoding = item_encoding
        self.pooling = pooling
        self.temperature = temperature
        self.item_text = item_text
        self.max_history_tokens = max_history_tokens
        self.max_item_tokens = max_item_tokens
        self.lr = lr
        self.weight_decay = weight_decay
        self.warmup_steps = warmup_steps
        self.lr_decay = lr_decay
        self.reset_optimizer_each_round = reset_optimizer_each_round
        self.num_negatives = num_negatives
        self.item_batch_size = item_batch_size
        self.seed = seed
        self.recommender_settings().validate()
        # Plain values only: checkpoints must load with torch.load(weights_only=True).
        self.save_hyperparameters(ignore=["strategy", "lora", "prompt", "items", "block_server"])
        if strategy is not None:
            # The same spec the config used, so LightningCLI can re-read it from a checkpoint.
            self.hparams["strategy"] = strategy.class_spec()
        self.hparams["lora"] = asdict(self.lora)
        self.hparams["prompt"] = asdict(self.prompt)
        self.hparams["items"] = asdict(self.items)
        self.hparams["block_server"] = asdict(self.block_server)
        self.adapters: ClientAdapters | None = None
        self.recommender: (
            SequentialRecommender | SequenceEncoderRecommender | GenerativeRecommender | None
        ) = None
        self.backend: RecommenderBackend | None = None
        self.tokenizer: Any = None
        self.transport: Transport | None = None
        #: The server-held LoRA in a block server process (``model.transport: process``).
        self.remote: RemoteServerBlocks | None = None
        #: Bytes the transport carried for training micro-batches, and how many there were.
        self.train_traffic = {"bytes": 0, "steps": 0}
        self.num_clients = 0
        #: The clients whose parameters this host holds (known once built).
        self.held_clients: list[int] = []
        self._slots: dict[int, int] = {}
        self.num_items = 0
        self._generator = torch.Generator().manual_seed(seed)
        self.round_anchor: torch.Tensor | None = None
        self._anchors: dict[int, torch.Tensor] = {}
        #: This round's config of each slot (set by :meth:`start_round`).
        self._round_configs: dict[int, ClientRoundConfig] = {}
        self.round_stats = RoundStatistics(0)
        self.eval_names = metric_names()
        self.evaluation = EvaluationSums(0, self.eval_names)

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
        matrix = self.adapters.get_matrix()
        if self.remote is not None:
            # The server trained the middle blocks' LoRA: its values are the ones aggregated.
            matrix[:, self.remote.mask] = self.remote.pull()
        return matrix

    def load_client_parameters(self, parameters: torch.Tensor, identical: bool = False) -> None:
        """Load every held client's parameters ``(S, P)`` (after aggregation or selection).

        Args:
            parameters: One row per held client, in :attr:`held_clients` order.
            identical: All rows are the same (a shared-model strategy broadcast one), so one item
                encoding can serve every client.
        """
        assert self.adapters is not None, "the module is not built yet"
        self.adapters.set_matrix(parameters)
        if self.remote is not None:
            self.remote.push()
        self.invalidate_item_tables(identical_adapters=identical)

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
        if self.transport_name == "process" and self.trainer.world_size > 1:
            raise ValueError(
                "model.transport: process serves one training process; run it with "
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
        )
        self.transport = (
            make_transport(self.transport_name, self.block_server) if self.split else None
        )
        if isinstance(self.transport, ProcessTransport):
            self.remote = RemoteServerBlocks(
                self.adapters, self.transport, self.k_front, self.k_back
            )
            self.remote.bind(
                self.backbone_name,
                causal_lm=self.recommender_kind == "generative",
                lora=self.lora,
                causal=self.recommender_kind == "sequential",
                weight_decay=self.weight_decay,
            )
        cache = Path(datamodule.cache_dir) if datamodule.cache_dir else default_cache_dir()
        self.recommender, self.backend = assemble_recommender(
            self.recommender_settings(),
            self.adapters,
            self.tokenizer,
            texts,
            self.transport,
            cache / "item-embeddings",
        )
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

    @property
    def uses_item_components(self) -> bool:
        """Whether each client has per-item components (``model.items``) besides its adapter."""
        return self.recommender_settings().uses_item_components

    def recommender_settings(self) -> RecommenderSettings:
        """The settings that decide which recommender is built."""
        return RecommenderSettings(
            kind=self.recommender_kind,
            items=self.items,
            item_components=self.item_components,
            item_encoding=self.item_encoding,
            pooling=self.pooling,
            temperature=self.temperature,
            max_item_tokens=self.max_item_tokens,
            max_history_tokens=self.max_history_tokens,
            num_negatives=self.num_negatives,
            item_batch_size=self.item_batch_size,
            prompt=self.prompt,
            split=self.split,
            k_front=self.k_front,
            k_back=self.k_back,
        )

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
        return client_param_groups(keys, params, self.lr, self.items.lr)

    def _own_keys_and_parameters(self, slot: int) -> tuple[list[str], list[torch.nn.Parameter]]:
        """What the slot's optimizer steps here: all but what a block server process holds."""
        assert self.adapters is not None
        if self.remote is not None:
            return self.remote.client_keys_and_parameters(slot)
        return self.adapters.keys, self.adapters.parameters(slot)

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
        if self.remote is not None:
            self.remote.begin_round(self.schedule.reset_optimizer_each_round)
        self.round_anchor = self.client_parameters()
        self._anchors = {}
        self._round_configs = {s: configs[self.slot_client(s)] for s in range(self.num_slots)}
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
            anchor = self.round_anchor[slot]
            if self.remote is not None:
                anchor = anchor[~self.remote.mask]
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

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Forward, backward and (at step ends) an optimizer step for the batch's client."""
        assert self.adapters is not None and self.recommender is not None
        client = int(batch["client"])
        slot = self.slot(client)
        config = self._round_configs.get(slot)
        if config is not None and not config.trains:
            return  # this round's config leaves the client out
        if batch["client_start"]:
            self._begin_client(client, int(batch["round"]))
        targets = batch["targets"]
        if targets.numel() > 0:
            assert self.backend is not None
            self.backend.prepare(slot)
            sent_before = self._bytes_sent()
            losses = self.backend.losses(slot, batch["histories"], targets, self._generator)  # (b,)
            # A stand-in row (this process had none of the global batch) only keeps every
            # process's collectives in step: it weighs nothing.
            stand_in = bool(batch.get("stand_in", False))
            finite = bool(torch.isfinite(losses.detach()).all())
            if not finite:
                self.round_stats.diverged[client] = True
            # Sharded blocks reduce their gradients in backward: every process runs it, even
            # for a diverged loss (the step is then skipped everywhere).
            if finite or self.sharded:
                scale = 0.0 if stand_in else self.trainer.world_size / float(batch["step_examples"])
                loss = losses.sum() * scale
                self.manual_backward(loss)
            if finite and not stand_in:
                self.train_traffic["bytes"] += self._bytes_sent() - sent_before
                self.train_traffic["steps"] += 1
                self.round_stats.add(client, float(losses.detach().sum()), targets.numel())
        if batch["step_end"]:
            self._optimizer_step(client, slot, config.proximal_mu if config is not None else 0.0)

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
            if self.remote is not None:  # the server skips its part too
                self.remote.step(slot, None, proximal_mu)
        else:
            if proximal_mu > 0:
                anchor = self._anchor_on_device(slot, params[0].device)
                add_proximal_gradient(params, anchor, proximal_mu)
            if self.remote is not None:  # the server steps its part at the same rate
                self.remote.step(slot, self.schedule.next_rate(slot, self.lr), proximal_mu)
            self.schedule.step(slot, optimizer)
        optimizer.zero_grad(set_to_none=True)

    # ------------------------------------------------------------------ evaluation
    def on_validation_epoch_start(self) -> None:
        """Start accumulating validation metrics."""
        self.evaluation = EvaluationSums(self.num_clients, self.eval_names)
        if self.remote is not None:
            self.remote.sync_if_stale()

    def on_test_epoch_start(self) -> None:
        """Start accumulating test metrics."""
        self.evaluation = EvaluationSums(self.num_clients, self.eval_names)
        if self.remote is not None:
            self.remote.sync_if_stale()

    def _evaluate(self, batch: dict[str, Any]) -> None:
        assert self.adapters is not None and self.recommender is not None
        client = int(batch["client"])
        if batch["users"].numel() == 0:
            return
        assert self.backend is not None
        scores = self.backend.scores(self.slot(client), batch["histories"])  # (b, I)
        if not batch.get("stand_in", False):  # a stand-in only keeps the processes in step
            self.evaluation.add_scores(client, scores, batch["targets"], batch["consumed"])

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Accumulate ranking metrics of a batch of one client's validation users."""
        self._evaluate(batch)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Accumulate ranking metrics of a batch of one client's test users."""
        self._evaluate(batch)

    def collect_eval_values(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every evaluated user's client ``(U,)`` and metric values ``(U, M)``, all processes."""
        return self.evaluation.user_values(self._gather_objects)

    def collect_eval(self) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """Per-client metric sums ``(N, M)`` and user counts ``(N,)``, summed over processes."""
        sums, counts = self.evaluation.collect(self._reduce_sum)
        return sums, counts, self.eval_names

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep only adapter weights: the frozen base is rebuilt from ``backbone``."""
        checkpoint["state_dict"] = client_state(checkpoint["state_dict"])
        checkpoint["fellrec_train_traffic"] = dict(self.train_traffic)
        if self.remote is not None:
            # The server's values of the middle blocks' LoRA, and its optimizers' moments.
            checkpoint["fellrec_block_server"] = self.remote.checkpoint_state()
            names = {id(p): name for name, p in self.named_parameters()}
            for param in self.remote.held_parameters():
                checkpoint["state_dict"][names[id(param)]] = param.detach().clone()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint whose adapters do not match this federation."""
        self.train_traffic = dict(checkpoint.get("fellrec_train_traffic", self.train_traffic))
        if "state_dict" in checkpoint:  # ModelParallelStrategy loaded (and checked) it already
            self.check_checkpoint_keys(checkpoint["state_dict"])
        if self.remote is not None:
            # Lightning loads the state dict after this hook: push it before the server's next use.
            self.remote.restore(checkpoint.get("fellrec_block_server"))
        self.invalidate_item_tables()

    def check_checkpoint_keys(self, keys: Iterable[str]) -> None:
        """Refuse a checkpoint (its state-dict ``keys``) that lacks one of this host's tensors."""
        if self.adapters is not None:
            check_client_keys(self.state_dict(), keys)

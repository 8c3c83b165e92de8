"""ModuleSettings: the ``model.*`` settings of a federated recommender, checked and recorded.

Its ``__init__`` is the ``model:`` section of every config: LightningCLI reads the parameters, their
defaults and (from the class docstring) their help texts. Every setting is checked here, before the
data and the model are loaded, kept as an attribute and recorded as a plain-valued hyper-parameter
(checkpoints load with ``torch.load(weights_only=True)``). The host that trains and evaluates the
clients, :class:`~fellrec.training.host.federated_module.FederatedModule`, subclasses it.
"""

from __future__ import annotations

from dataclasses import asdict

import lightning as L
from lightning.pytorch.utilities import rank_zero_deprecation

from fellrec.federation.strategies import Strategy
from fellrec.models.adapters import LoRASettings
from fellrec.models.hidden_defence import HiddenDefence
from fellrec.models.item_components import ItemSettings
from fellrec.models.process_transport import BlockServerSettings
from fellrec.models.prompts import PromptSettings
from fellrec.models.text import format_item_text
from fellrec.models.transports import transport_kind
from fellrec.training.dp.dp_sgd import DPSGDSettings, check_dp_sgd_compatible
from fellrec.training.host.client_optimization import RoundSchedule
from fellrec.training.host.recommender_families import RecommenderFamily, RecommenderSettings


class ModuleSettings(L.LightningModule):
    """The ``model.*`` settings of a federated recommender, checked and kept as hyper-parameters.

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
        hidden_defence: Defend the hidden states that cross the split (``clip``: each token's
            vector is L2-clipped to it; ``noise``: Gaussian noise of deviation ``noise * clip``
            is added; ``seed``: of each client's own noise stream, None for fresh entropy), on
            the client's side of every transport, in training and evaluation. Off unless
            ``clip`` is set (:mod:`fellrec.models.hidden_defence`).
        shard_client_blocks: Under ``--trainer.strategy model_parallel`` (which shards
            the server's middle blocks across the processes), shard the client's front and back
            blocks too; off: they stay replicated, like the embeddings and the head.
        load_in_8bit: Load the frozen base in 8 bits (generative; needs bitsandbytes and a GPU).
        base_dropout: Every dropout rate of the frozen base model (hidden, embedding, attention;
            not LoRA's, which is ``model.lora.dropout``); None keeps the model's own (MiniLM:
            0.1). 0 makes a step of the recipe 1.2x faster on a CPU (its random masks are slow
            to draw) with quality within seed noise (benchmarks/README.md,
            "bench_train_step.py").
        prompt: Prompt wording, cutoff and decoding of the generative recommender.
        privacy_probe: Play the honest-but-curious server and store what it reads under
            ``"privacy"`` in ``results.json`` (the :class:`~fellrec.training.probes.privacy_probe.
            PrivacyProbe` callback, which ``fellrec fit`` adds): every round, each client's item
            set and counts from its exchanged item components and its data size from its
            example count; at the end of a split run, the inputs from ``h_front`` (linear
            inversion and the front copy, :mod:`fellrec.training.probes.hidden_states`) at
            ``k_front`` in {0, 1, 2, model.k_front}. ``fellrec attack`` measures the whole curve.
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
        dp_sgd: User-level DP-SGD inside every client (:mod:`fellrec.training.dp.dp_sgd`): per-user
            clipping and Gaussian noise over everything a client sends, Poisson-sampled users,
            (epsilon, delta) per client and round in the log, ``results.json`` and wandb. Unset:
            off.
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
        hidden_defence: HiddenDefence | None = None,
        shard_client_blocks: bool = False,
        load_in_8bit: bool = False,
        base_dropout: float | None = None,
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
        dp_sgd: DPSGDSettings | None = None,
    ) -> None:
        super().__init__()
        # Every setting is checked here, before the data and the model are loaded.
        #: Each client's round schedule (warm-up, decay, moment resets); built first, it
        #: checks ``lr`` and ``lr_decay``.
        self.schedule = RoundSchedule(warmup_steps, lr_decay, reset_optimizer_each_round, lr)
        format_item_text(item_text, "title", ["category"])  # an unknown field fails now
        kind = transport_kind(transport)
        self.block_server = block_server if block_server is not None else BlockServerSettings()
        self.block_server.validate()
        self.hidden_defence = hidden_defence if hidden_defence is not None else HiddenDefence()
        if not kind.server_in_process and not split_execution:
            raise ValueError(
                f"model.transport: {transport} runs the server's middle blocks of a split model; "
                "set model.split_execution: true (or model.transport: local)"
            )
        if not kind.server_in_process and load_in_8bit:
            raise ValueError(
                f"model.transport: {transport} loads the base in full precision on the server; "
                "model.load_in_8bit is not supported with it"
            )
        if dp_sgd is not None:
            dp_sgd.validate()
            check_dp_sgd_compatible(
                dp_sgd, transport, items if items is not None else ItemSettings()
            )
        #: User-level DP-SGD inside every client (``model.dp_sgd``), or None.
        self.dp_sgd = dp_sgd
        self.backbone_name = backbone
        self.recommender_kind = recommender
        self.split = split_execution
        self.k_front = k_front
        self.k_back = k_back
        self.transport_name = transport
        self.shard_client_blocks = shard_client_blocks
        self.load_in_8bit = load_in_8bit
        if base_dropout is not None and not 0.0 <= base_dropout < 1.0:
            raise ValueError(f"model.base_dropout must be in [0, 1), got {base_dropout}")
        #: Every dropout rate of the frozen base, or None for its config's.
        self.base_dropout = base_dropout
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
        popularity_start = dp_sgd is not None and dp_sgd.popularity_noise is not None
        if popularity_start and not self.uses_item_components:
            raise ValueError(
                "model.dp_sgd.popularity_noise starts the item biases: it needs per-item "
                "components (model.recommender: sequential, or model.item_components: true)"
            )
        # Plain values only: checkpoints must load with torch.load(weights_only=True).
        self.save_hyperparameters(
            ignore=[
                "strategy",
                "lora",
                "prompt",
                "items",
                "block_server",
                "hidden_defence",
                "dp_sgd",
            ]
        )
        if strategy is not None:
            # The same spec the config used, so LightningCLI can re-read it from a checkpoint.
            self.hparams["strategy"] = strategy.class_spec()
        self.hparams["lora"] = asdict(self.lora)
        self.hparams["prompt"] = asdict(self.prompt)
        self.hparams["items"] = asdict(self.items)
        self.hparams["block_server"] = asdict(self.block_server)
        self.hparams["hidden_defence"] = asdict(self.hidden_defence)
        self.hparams["dp_sgd"] = asdict(dp_sgd) if dp_sgd is not None else None

    @property
    def recommender_family(self) -> RecommenderFamily:
        """The family of ``model.recommender`` (what the code asks instead of comparing names)."""
        return self.recommender_settings().family

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
            hidden_defence=self.hidden_defence,
        )

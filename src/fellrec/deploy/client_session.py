"""One deployed client: its ClientModule and data, built once per process, driven per message.

Every message is one short Lightning run (a fit of one round, or a validation or test pass) on the
same module, so the base model is loaded once per process, and the client keeps nothing between
rounds that the server does not send it again: a round's result depends only on the parameters and
round config it is sent (and on the data, the config and the seed), exactly as in the one-process
simulation. Privacy noise is the exception by design: it comes from the node's own key
(:mod:`fellrec.deploy.node_key`), so a restarted node answers as it did before.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from fellrec.deploy.client_requests import REQUEST_KINDS, ClientRequest
from fellrec.deploy.messages import STAGES, EvaluationReport, NodeDescription, TrainReport
from fellrec.deploy.node_key import (
    ledger_path,
    node_key,
    node_key_path,
    read_ledger,
    write_ledger,
)
from fellrec.deploy.run_config import (
    RunSettings,
    catalog_fingerprint,
    load_run,
    resume_fingerprint,
)
from fellrec.federation.protocol import ClientRoundConfig
from fellrec.federation.strategies import Strategy
from fellrec.training.dp.dp_training import PrivacyLedger
from fellrec.training.dp.host_secrets import KeyedSecrets
from fellrec.training.host.client_module import ClientModule
from fellrec.training.host.federated_module import FederatedModule
from fellrec.training.records.adapter_cards import export_adapters

log = logging.getLogger(__name__)


def client_module_like(model: FederatedModule, client: int) -> ClientModule:
    """A :class:`ClientModule` for ``client`` with the settings of a federation's module."""
    nested = {
        "lora": model.lora,
        "prompt": model.prompt,
        "items": model.items,
        "block_server": model.block_server,
        "hidden_defence": model.hidden_defence,
        "dp_sgd": model.dp_sgd,
    }
    plain = {
        key: value
        for key, value in model.hparams.items()
        if not key.startswith("_") and key not in {"strategy", "client", *nested}
    }
    return ClientModule(client=client, **plain, **nested)


class _StartRound(Callback):
    """Starts the fitted epoch as the server's round: its learning rate and proximal weight."""

    def __init__(self, client: int, config: ClientRoundConfig) -> None:
        self.client = client
        self.config = config

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        assert isinstance(pl_module, ClientModule)
        pl_module.start_round(self.config.round, {self.client: self.config})


class ClientSession:
    """A client silo of a deployed federation.

    Args:
        settings: The fellrec config files and overrides (the same as the server's).
        client: This client's partition id (Flower node config ``partition-id``).
        silo: This client's own interaction files (node config ``fellrec-silo``); None derives
            its users from the config's whole dataset (a simulated partition).

    Raises:
        ValueError: For settings a deployment cannot run (naming the setting).
    """

    def __init__(self, settings: RunSettings, client: int, silo: str | None = None) -> None:
        own_data = ("--data.silo", silo) if silo else ()
        run = load_run(settings, "--data.client", str(client), *own_data)
        check_deployable(run.model, run.strategy, run.unsupported)
        # The settings come from the run config, which the server writes: no noise seed may.
        check_secret_seeds(run.model)
        self.client = client
        self.module = client_module_like(run.model, client)
        # The node's noises come from its own key (read here: a bad key file fails at once).
        self._key = node_key(node_key_path(client))
        self._context = resume_fingerprint(run.config)
        self.datamodule = run.datamodule
        self.trainer_settings = run.trainer_settings
        self.root = Path(run.root)
        self.strategy_name = run.strategy.name
        self.config_hash = run.config_hash
        self._catalog = ""  # its fingerprint, once the data is set up
        self._built = False

    def _build(self) -> None:
        if not self._built:
            self.datamodule.setup("fit")
            # Noise bound to this federation's settings and catalog: a restarted node answers
            # as before, a rerun with other settings or another catalog draws other noise.
            dataset = self.datamodule.data.dataset
            self._catalog = catalog_fingerprint(
                list(dataset.item_ids), dataset.titles, dataset.categories
            )
            context = f"{self._context}|{self._catalog}"
            self.module.secret_source = KeyedSecrets(self._key, context)
            self.module.build(self.datamodule)
            self._restore_ledger()
            self._built = True

    def _ledger_file(self) -> Path | None:
        module = self.module
        if module.dp is None or module.ledger_id is None:
            return None
        return ledger_path(self.client, module.ledger_id)

    def _restore_ledger(self) -> None:
        """Under DP-SGD, what this node released before a restart (same settings and data)."""
        path = self._ledger_file()
        state = read_ledger(path) if path is not None else None
        if state is not None and self.module.dp is not None:
            self.module.dp.ledger = PrivacyLedger.from_state(state)

    def _save_ledger(self) -> None:
        """Keep the ledger on the node's disk before anything it covers is sent."""
        path = self._ledger_file()
        if path is not None and self.module.dp is not None:
            write_ledger(path, self.module.dp.ledger.state())

    def _trainer(self, callbacks: list[Callback], **options: Any) -> L.Trainer:
        return L.Trainer(
            devices=1,
            max_epochs=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            callbacks=callbacks,
            **self.trainer_settings,  # type: ignore[arg-type]
            **options,
        )

    def _load(self, parameters: torch.Tensor) -> None:
        self.module.load_client_parameters(parameters.unsqueeze(0))

    def initial_parameters(self) -> torch.Tensor:
        """The client's parameters before any round (the same in every process: seeded)."""
        self._build()
        return self.module.client_parameters()[0]

    @property
    def metric_names(self) -> list[str]:
        """The evaluation metrics, in the order of the reports' columns."""
        return list(self.module.eval_names)

    def describe(self) -> NodeDescription:
        """Who this client is, what it starts from, and the fingerprints the server compares."""
        parameters = self.initial_parameters()  # builds: the catalog's fingerprint is known
        return NodeDescription(
            self.client, parameters, self.metric_names, self.config_hash, self._catalog
        )

    def train(self, parameters: torch.Tensor, config: ClientRoundConfig) -> TrainReport:
        """Train one round from ``parameters`` as ``config`` says."""
        self._build()
        self._load(parameters)
        batching = replace(self.datamodule.round_batching, round=config.round)
        self.datamodule.set_round_batching(batching)
        trainer = self._trainer([_StartRound(self.client, config)], limit_val_batches=0)
        trainer.fit(self.module, datamodule=self.datamodule)
        loss_sums, examples, diverged = self.module.collect_round_stats()
        self._save_ledger()
        spent = self.module.privacy_spent()
        return TrainReport(
            client=self.client,
            parameters=self.module.release_parameters()[0],
            loss_sum=float(loss_sums[self.client]),
            examples=float(examples[self.client]),
            diverged=bool(diverged[self.client]),
            privacy_spent=(
                None
                if spent is None
                else (float(spent[self.client, 0]), float(spent[self.client, 1]))
            ),
        )

    def evaluate(
        self, parameters: torch.Tensor, stage: str, selection: tuple[int, int] | None = None
    ) -> EvaluationReport:
        """Evaluate ``parameters`` on this client's validation or test users.

        Args:
            parameters: The client's flat parameter vector.
            stage: ``"validation"`` or ``"test"``.
            selection: For the test of the selected parameters: (selected round, rounds run);
                the client then exports its adapter (peft format) with a card into
                ``<trainer.default_root_dir>/adapters/client_<i>/``, on its own machine.
        """
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        self._build()
        self._load(parameters)
        trainer = self._trainer([])
        if stage == "validation":
            trainer.validate(self.module, datamodule=self.datamodule, verbose=False)
        else:
            trainer.test(self.module, datamodule=self.datamodule, verbose=False)
        sums, counts, _ = self.module.collect_eval()
        _, values = self.module.collect_eval_values()
        # The baseline over the same users, for the results' popularity section.
        popularity_sums, _, _, popularity_values = self.datamodule.popularity_of(
            [self.client], stage
        )
        popularity = popularity_sums[self.client]
        report = EvaluationReport(
            client=self.client,
            sums=sums[self.client],
            users=float(counts[self.client]),
            values=values,
            popularity=popularity,
            popularity_values=popularity_values,
        )
        if stage == "test" and selection is not None:
            self._export(report, *selection)
        return report

    def _export(self, report: EvaluationReport, selected_round: int, rounds_run: int) -> None:
        """Save the loaded (selected) adapter and its card, as ``fellrec fit`` does."""
        users = max(report.users, 1.0)
        metrics = {name: float(report.sums[j]) / users for j, name in enumerate(self.metric_names)}
        selected_rounds = [-1] * self.datamodule.num_clients
        selected_rounds[self.client] = selected_round
        directory = self.root / "adapters"
        exported = export_adapters(
            self.module,
            directory,
            strategy=self.strategy_name,
            selected_rounds=selected_rounds,
            rounds_run=rounds_run,
            client_metrics={str(self.client): {**metrics, "users": report.users}},
            clients=[self.client],
        )
        if not exported:
            return
        written = directory / f"client_{self.client}"
        log.info("client %d: adapter written to %s", self.client, written)


#: Sessions of this process, by (settings, client, silo): the base model loads once per process.
_SESSIONS: dict[tuple[RunSettings, int, str | None], ClientSession] = {}


def session_for(settings: RunSettings, client: int, silo: str | None = None) -> ClientSession:
    """This process's session of ``client`` on its silo (built on first use)."""
    key = (settings, client, silo)
    if key not in _SESSIONS:
        log.info("client %d: loading its model and data%s", client, f" ({silo})" if silo else "")
        _SESSIONS[key] = ClientSession(settings, client, silo)
    return _SESSIONS[key]


def answer(request: ClientRequest) -> Any:
    """Answer a request with this process's session of its client.

    Returns:
        A :class:`NodeDescription` for ``describe``; a :class:`TrainReport` for ``train``; an
        :class:`EvaluationReport` for ``evaluate``.

    Raises:
        ValueError: For an unknown kind or a request missing what its kind needs.
    """
    if request.kind not in REQUEST_KINDS:
        raise ValueError(f"request kind must be one of {REQUEST_KINDS}, got {request.kind!r}")
    if request.kind != "describe" and request.parameters is None:
        raise ValueError(f"a {request.kind} request needs parameters")
    if request.kind == "train" and request.config is None:
        raise ValueError("a train request needs its round config")
    session = session_for(request.settings, request.client, request.silo)
    if request.kind == "describe":
        return session.describe()
    assert request.parameters is not None
    if request.kind == "train":
        assert request.config is not None
        return session.train(request.parameters, request.config)
    return session.evaluate(request.parameters, request.stage, request.selection)


def check_secret_seeds(model: FederatedModule) -> None:
    """Refuse privacy noise seeded from the federation's shared config, which the server reads.

    Whoever knows such a seed can replay the noise and subtract it. A deployed node takes every
    setting from the run config, which the server writes, so it refuses them too (a server that
    skipped its own check cannot seed the nodes' noise); each node derives its secrets from its
    own key (:mod:`fellrec.deploy.node_key`).

    Raises:
        ValueError: Naming the seed.
    """
    seeds = {
        "model.dp_sgd.seed": model.dp_sgd.seed if model.dp_sgd is not None else None,
        "model.hidden_defence.seed": model.hidden_defence.seed,
        "model.items.bias_init_seed": model.items.bias_init_seed,
    }
    for key, value in seeds.items():
        if value is not None:
            raise ValueError(
                f"{key}={value} is in the federation's config, which the server reads: whoever "
                "knows it can subtract the noise it seeds; leave it unset (each node derives its "
                "own from its node key)"
            )


def check_deployable(
    model: FederatedModule, strategy: Strategy, unsupported: tuple[str, ...] = ()
) -> None:
    """Refuse settings that a deployment cannot run as the simulation does.

    Args:
        model: The federation's module (its settings).
        strategy: The configured strategy.
        unsupported: Trainer settings found undeployable
            (:func:`~fellrec.deploy.run_config.round_settings`).

    Raises:
        ValueError: Naming the setting and what to do instead.
    """
    if unsupported:
        raise ValueError(f"{unsupported[0]}; remove the setting to deploy this config")
    if strategy.pools_clients:
        raise ValueError(
            f"loop.strategy {strategy.name!r} trains all users' data as one model; it is "
            "not a federation and cannot be deployed (run it with fellrec fit)"
        )
    if not model.reset_optimizer_each_round:
        raise ValueError(
            "model.reset_optimizer_each_round=false keeps optimizer moments between rounds, which "
            "a deployed client does not keep (a round depends only on what the server sends); "
            "set it to true"
        )

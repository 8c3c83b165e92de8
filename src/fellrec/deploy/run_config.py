"""Reading a fellrec config the way ``fellrec fit`` does, for the deployed server and clients."""

from __future__ import annotations

import hashlib
import json
import shlex
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:  # the training layer (Lightning) loads only where a run is loaded
    from fellrec.federation.strategies import Strategy
    from fellrec.training.batches.datamodule import FederatedDataModule
    from fellrec.training.host.federated_module import FederatedModule
    from fellrec.training.rounds.loop import FederatedLoop

#: Keys of a Flower run config (``[tool.flwr.app.config]`` or ``flwr run --run-config``).
CONFIG_KEY = "fellrec-config"
OVERRIDES_KEY = "fellrec-overrides"
#: Settings that may differ between the parties of one federation: where each keeps its files
#: and which client it is. Everything else must be the same everywhere (the config fingerprint).
PER_PARTY_SETTINGS = {
    "data": ("client", "silo", "silos", "catalog", "cache_dir", "dataset.path"),
    # The block server a client's split runs through, and its certificates, are its own.
    # ... and so are the secret seeds of its DP-SGD and hidden-state noise.
    "model": ("block_server", "dp_sgd.seed", "hidden_defence.seed", "items.bias_init_seed"),
}
#: Config sections that decide a federation's results (the trainer's are the node's own
#: business, but the number of rounds).
FINGERPRINTED_SECTIONS = ("model", "data", "loop", "seed_everything")


def config_fingerprint(config: Mapping[str, Any], extra: Mapping[str, Any] | None = None) -> str:
    """A short hash of what must be equal on the server and every client of a federation.

    Args:
        config: The resolved config (``fellrec fit --print_config`` as a dict).
        extra: More values that must agree (e.g. the public catalog's content fingerprint).

    Returns:
        16 hex digits.
    """
    shared: dict[str, Any] = json.loads(
        json.dumps({key: config.get(key) for key in FINGERPRINTED_SECTIONS}, default=str)
    )
    for section, keys in PER_PARTY_SETTINGS.items():
        for dotted in keys:
            *parents, leaf = dotted.split(".")
            node = shared.get(section)
            for parent in parents:
                node = node.get(parent) if isinstance(node, dict) else None
            if isinstance(node, dict):
                node.pop(leaf, None)
    shared["rounds"] = (config.get("trainer") or {}).get("max_epochs")
    shared["extra"] = dict(extra or {})
    payload = json.dumps(shared, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def resume_fingerprint(config: Mapping[str, Any]) -> str:
    """:func:`config_fingerprint` of everything but the round budget.

    What a resumed deployment must share with the saved one (more rounds may be asked of it),
    and what a node's noise secrets are bound to: a rerun with other settings draws other noise,
    one asked for more rounds replays the same.
    """
    trimmed = dict(config)
    trimmed["trainer"] = {}
    return config_fingerprint(trimmed)


def catalog_fingerprint(
    item_ids: Sequence[object], titles: Sequence[str], categories: Sequence[Sequence[str]]
) -> str:
    """A short hash of the item catalog in index order (ids, titles, categories).

    Every party must index the same items the same way, or their item rows (ID embeddings,
    biases, title vectors) would not line up when the server aggregates them.
    """
    payload = json.dumps([[str(i) for i in item_ids], list(titles), [list(c) for c in categories]])
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class RunSettings:
    """Where a deployed run's settings come from: fellrec config files and overrides.

    Attributes:
        config_files: fellrec YAML files, in order (as ``fellrec fit --config A --config B``).
        overrides: ``--section.key value`` arguments applied after them.
    """

    config_files: tuple[str, ...]
    overrides: tuple[str, ...] = ()

    @classmethod
    def from_flower(cls, run_config: Mapping[str, object]) -> RunSettings:
        """Read ``fellrec-config`` (comma-separated files) and ``fellrec-overrides`` (a shell line).

        Raises:
            ValueError: Naming the missing key.
        """
        files = str(run_config.get(CONFIG_KEY, "")).strip()
        if not files:
            raise ValueError(
                f"the Flower run config has no {CONFIG_KEY!r}: set it to a fellrec config file, "
                f"e.g. flwr run . --run-config \"{CONFIG_KEY}='configs/quickstart.yaml'\""
            )
        overrides = shlex.split(str(run_config.get(OVERRIDES_KEY, "")))
        return cls(tuple(f.strip() for f in files.split(",") if f.strip()), tuple(overrides))

    def arguments(self, *extra: str) -> list[str]:
        """Command-line arguments of ``fellrec fit`` for these settings (plus ``extra``)."""
        arguments = [arg for path in self.config_files for arg in ("--config", path)]
        return [*arguments, *self.overrides, *extra]


@dataclass
class LoadedRun:
    """The objects ``fellrec fit`` would build from a config, not set up (nothing loaded yet).

    Attributes:
        model: The federation's module (its settings; its base model loads in ``setup``).
        datamodule: The data module.
        loop: The round loop's settings (selection metric, bootstrap, warnings).
        rounds: ``trainer.max_epochs``.
        root: ``trainer.default_root_dir`` (where results are written).
        trainer_settings: The accelerator and precision a client's trainer uses.
        config: The resolved config, as ``fellrec fit`` saves it (``config.yaml``).
        stop_patience: The patience of the config's early stopping on the selection metric
            (the deployed server applies the same rule), or None without one.
        unsupported: Why the trainer settings cannot be deployed as they would be simulated
            (empty when they can): the server runs and validates every round on all data.
    """

    model: FederatedModule
    datamodule: FederatedDataModule
    loop: FederatedLoop
    rounds: int
    root: str
    trainer_settings: dict[str, object]
    config: dict[str, Any] = field(default_factory=dict)
    stop_patience: int | None = None
    unsupported: tuple[str, ...] = ()

    @property
    def config_hash(self) -> str:
        """The fingerprint the server and its clients compare (:func:`config_fingerprint`)."""
        return config_fingerprint(self.config)

    @property
    def strategy(self) -> Strategy:
        """The configured strategy (``loop.strategy``, or the deprecated ``model.strategy``)."""
        from fellrec.training.rounds.run_strategy import resolve_strategy

        return resolve_strategy(self.loop.configured_strategy, self.model.legacy_strategy)


def load_run(settings: RunSettings, *extra: str) -> LoadedRun:
    """Parse and instantiate a fellrec config (as ``fellrec fit`` does, without running it).

    Args:
        settings: Config files and overrides.
        *extra: More ``--section.key value`` arguments (e.g. ``--data.client 2``).
    """
    from fellrec.lightning_cli import make_cli, quiet_third_party_output
    from fellrec.training.batches.datamodule import FederatedDataModule
    from fellrec.training.host.federated_module import FederatedModule
    from fellrec.training.rounds.loop import FederatedLoop

    quiet_third_party_output()
    with warnings.catch_warnings():
        # A deployed app's process has Flower's own command line in sys.argv, which LightningCLI
        # warns about next to explicit arguments; the explicit ones are the config's.
        warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter.*")
        cli = make_cli(settings.arguments(*extra), run=False)
    trainer = cli.trainer
    loop = next(c for c in trainer.callbacks if isinstance(c, FederatedLoop))  # type: ignore[attr-defined]
    if trainer.max_epochs is None or trainer.max_epochs < 1:
        raise ValueError("trainer.max_epochs (the number of rounds) must be >= 1 for a deployment")
    model = cli.model
    if not isinstance(model, FederatedModule) or not isinstance(
        cli.datamodule, FederatedDataModule
    ):
        raise TypeError("a fellrec config builds a FederatedModule and a FederatedDataModule")
    accelerator = type(trainer.accelerator).__name__.replace("Accelerator", "").lower()
    stop_patience, unsupported = round_settings(trainer, loop.selection_metric)
    return LoadedRun(
        model=model,
        datamodule=cli.datamodule,
        loop=loop,
        rounds=int(trainer.max_epochs),
        root=str(trainer.default_root_dir),
        trainer_settings={
            "accelerator": "gpu" if accelerator == "cuda" else accelerator,
            "precision": trainer.precision,
        },
        config=resolved_config(cli),
        stop_patience=stop_patience,
        unsupported=unsupported,
    )


def round_settings(trainer: Any, selection_metric: str) -> tuple[int | None, tuple[str, ...]]:
    """What of the trainer's settings a deployed server can run as the simulation does.

    A simulation's rounds are Lightning epochs: ``EarlyStopping`` may end them early, and the
    ``limit_*_batches`` and ``check_val_every_n_epoch`` settings change what each round trains and
    evaluates. A deployed server runs the round engine itself: it applies early stopping on the
    overall validation selection metric (the rule the simulation's usual callback applies), and
    trains and validates every client on all its data every round.

    Returns:
        The early-stopping patience (None: no early stopping), and the reasons the settings cannot
        be deployed (empty: they can).
    """
    from lightning.pytorch.callbacks import EarlyStopping

    reasons: list[str] = []
    for name in ("limit_train_batches", "limit_val_batches", "limit_test_batches"):
        value = getattr(trainer, name, 1.0)
        if not (isinstance(value, float) and value == 1.0):
            reasons.append(
                f"trainer.{name}={value}: a deployed client trains and evaluates on all its data"
            )
    if getattr(trainer, "check_val_every_n_epoch", 1) != 1:
        reasons.append(
            f"trainer.check_val_every_n_epoch={trainer.check_val_every_n_epoch}: a deployed "
            "round always ends with a validation (per-client selection)"
        )
    stops = [c for c in trainer.callbacks if isinstance(c, EarlyStopping)]
    patience = None
    for stop in stops:
        plain = (
            stop.monitor == f"val/{selection_metric}"
            and stop.mode == "max"
            and stop.min_delta == 0
            and stop.stopping_threshold is None
            and stop.divergence_threshold is None
        )
        if not plain or len(stops) > 1:
            reasons.append(
                "trainer.callbacks: a deployment stops early only with one EarlyStopping("
                f"monitor='val/{selection_metric}', mode='max', min_delta=0) and no thresholds "
                f"(got monitor={stop.monitor!r}, mode={stop.mode!r}, min_delta={stop.min_delta})"
            )
        patience = int(stop.patience)
    return patience, tuple(reasons)


def resolved_config(cli: Any) -> dict[str, Any]:
    """The parsed config as plain values (what ``config.yaml`` holds)."""
    dumped = cli.parser.dump(cli.config, skip_none=False, skip_check=True)
    loaded = yaml.safe_load(dumped)
    return loaded if isinstance(loaded, dict) else {}

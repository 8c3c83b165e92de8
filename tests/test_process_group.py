"""Which ways of starting a run's processes a federation accepts (trainers built, never fitted)."""

from __future__ import annotations

import lightning as L
import pytest
from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy, Strategy

from fellrec.training.host.process_group import check_process_launch


def trainer(strategy: str | Strategy, devices: int = 2) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy=strategy,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )


@pytest.mark.parametrize(
    "strategy",
    [
        "auto",
        "ddp",
        "ddp_find_unused_parameters_true",
        DDPStrategy(start_method="popen"),
        ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1),
    ],
    ids=["auto", "ddp", "ddp-unused", "popen", "model-parallel"],
)
def test_processes_started_as_fresh_commands_are_accepted(strategy):
    check_process_launch(trainer(strategy, devices=1 if strategy == "auto" else 2), strategy)


@pytest.mark.parametrize(
    ("strategy", "method"),
    [
        ("ddp_spawn", "spawn"),
        ("ddp_fork", "fork"),
        ("ddp_notebook", "fork"),
        ("ddp_spawn_find_unused_parameters_true", "spawn"),
    ],
)
def test_spawned_or_forked_processes_are_refused_naming_the_setting(strategy, method):
    with pytest.raises(ValueError) as refused:
        check_process_launch(trainer(strategy), strategy)
    message = str(refused.value)
    assert message.startswith(
        f"trainer.strategy={strategy!r} (DDPStrategy, start method {method!r}) starts its "
    )
    assert "--trainer.strategy ddp" in message


def test_a_strategy_object_is_named_by_its_class_and_start_method():
    with pytest.raises(
        ValueError, match=r"^trainer.strategy DDPStrategy \(start method 'forkserver'\)"
    ):
        check_process_launch(trainer(DDPStrategy(start_method="forkserver")))


def test_a_federation_built_in_python_refuses_them_too():
    """No command line: the loop checks its trainer before it touches the module or the data."""
    from fellrec.training.rounds.loop import FederatedLoop

    with pytest.raises(ValueError, match=r"^trainer.strategy DDPStrategy \(start method 'fork'\)"):
        FederatedLoop().setup(trainer("ddp_fork"), L.LightningModule(), "fit")


def test_the_light_table_is_lightnings_registry():
    """The checks before the heavy imports know every registered DDP name that spawns or forks."""
    from lightning.pytorch.strategies import StrategyRegistry

    from fellrec.training.host.process_launch import (
        SPAWNING_START_METHODS,
        SPAWNING_STRATEGY_NAMES,
    )

    registered = {
        name: entry["init_params"]["start_method"]
        for name, entry in StrategyRegistry.items()
        if entry["init_params"].get("start_method") in SPAWNING_START_METHODS
    }
    assert registered == SPAWNING_STRATEGY_NAMES


@pytest.mark.parametrize(
    "setting",
    [
        "ddp_fork_find_unused_parameters_false",
        "DDP_Spawn",
        {
            "class_path": "lightning.pytorch.strategies.DDPStrategy",
            "init_args": {"start_method": "spawn"},
        },
        {"class_path": "DDPStrategy", "init_args": {"start_method": "forkserver"}},
    ],
    ids=["name", "upper-case-name", "class-path", "short-class"],
)
def test_a_config_value_is_refused_in_the_trainers_own_words(setting):
    from fellrec.training.host.process_launch import check_strategy_setting

    with pytest.raises(ValueError) as light:
        check_strategy_setting(setting)
    if isinstance(setting, str):
        built = trainer(setting)
    else:
        built = trainer(DDPStrategy(**setting["init_args"]))
    with pytest.raises(ValueError) as original:
        check_process_launch(built, setting)
    assert str(light.value) == str(original.value)


@pytest.mark.parametrize(
    "setting",
    [None, "auto", "ddp", "ddp_find_unused_parameters_true", "fsdp", {"class_path": "DDPStrategy"}],
)
def test_a_config_value_that_starts_fresh_processes_passes_the_light_check(setting):
    from fellrec.training.host.process_launch import check_strategy_setting

    check_strategy_setting(setting)

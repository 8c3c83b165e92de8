"""Which ``trainer.strategy`` settings start a run's processes by spawning or forking this one.

Light (no Lightning, no torch), so that the checks before the heavy imports
(:mod:`fellrec.preflight`) refuse such a setting in a second, in the words the trainer's own
check (:func:`fellrec.training.host.process_group.check_process_launch`) uses once Lightning has
resolved it. Why they are refused is explained there.
"""

from __future__ import annotations

from collections.abc import Mapping

#: Start methods of Lightning's multiprocessing launcher (``popen``, the default of ``ddp``,
#: starts each process as a fresh copy of the command instead).
SPAWNING_START_METHODS = ("spawn", "fork", "forkserver")

#: Lightning's registered DDP names that spawn or fork (name -> start method);
#: ``tests/test_process_group.py`` holds this table to Lightning's ``StrategyRegistry``. (``xla``
#: also forks, but needs TPUs; the trainer's own check refuses it.)
SPAWNING_STRATEGY_NAMES: dict[str, str] = {
    f"ddp_{kind}{variant}": method
    for kind, method in (("spawn", "spawn"), ("fork", "fork"), ("notebook", "fork"))
    for variant in ("", "_find_unused_parameters_false", "_find_unused_parameters_true")
}

#: How a config names Lightning's DDP strategy by class.
_DDP_CLASS_PATHS = (
    "DDPStrategy",
    "lightning.pytorch.strategies.DDPStrategy",
    "lightning.pytorch.strategies.ddp.DDPStrategy",
)


def spawned_launch_message(setting: object, resolved: str, start_method: str) -> str:
    """The refusal of a strategy that spawns or forks the run's processes.

    Args:
        setting: What ``trainer.strategy`` was set to (a registered name is quoted in the
            message; anything else is named by the strategy's class alone).
        resolved: The strategy's class name (``DDPStrategy``).
        start_method: The launcher's start method (``spawn``, ``fork``, ``forkserver``).
    """
    if isinstance(setting, str):
        named = f"={setting!r} ({resolved}, start method {start_method!r})"
    else:
        named = f" {resolved} (start method {start_method!r})"
    return (
        f"trainer.strategy{named} starts its processes by "
        "spawning or forking this one, and only the model's weights come back from them: the "
        "federation's rounds, each client's selected round and the run's record would be lost. "
        "Use --trainer.strategy ddp (or model_parallel), which starts each process as a fresh "
        "copy of the command; a notebook cannot run those, so run `fellrec fit` from a terminal"
    )


def check_strategy_setting(setting: object) -> None:
    """Refuse a ``trainer.strategy`` config value that names a spawning or forking strategy.

    Judges what a config can say without Lightning: a registered DDP name (``ddp_spawn``, in any
    case, as Lightning reads it) or ``DDPStrategy`` by class path with a spawning
    ``init_args.start_method``. Anything else (another class, ``xla``) is left to the trainer's
    own check.

    Args:
        setting: The config's ``trainer.strategy`` (a string, a class-path mapping, or None).

    Raises:
        ValueError: For a spawning or forking strategy (the trainer's own message).
    """
    # Lightning looks a name up in lower case and the trainer's check quotes it as given.
    if isinstance(setting, str) and setting.lower() in SPAWNING_STRATEGY_NAMES:
        method = SPAWNING_STRATEGY_NAMES[setting.lower()]
        raise ValueError(spawned_launch_message(setting, "DDPStrategy", method))
    if isinstance(setting, Mapping) and setting.get("class_path") in _DDP_CLASS_PATHS:
        arguments = setting.get("init_args")
        start = arguments.get("start_method") if isinstance(arguments, Mapping) else None
        if start in SPAWNING_START_METHODS:
            raise ValueError(spawned_launch_message(None, "DDPStrategy", str(start)))

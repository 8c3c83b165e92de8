"""The strategy a run's rounds use: ``loop.strategy``, or the deprecated ``model.strategy``."""

from __future__ import annotations

from jsonargparse import lazy_instance

from fellrec.federation.strategies import FELLRec, Strategy

#: ``loop.strategy``'s default. Strategies hold settings only, so one instance can be shared.
DEFAULT_STRATEGY: Strategy = lazy_instance(FELLRec)


def resolve_strategy(
    configured: Strategy, legacy: Strategy | None, host: Strategy | None = None
) -> Strategy:
    """The strategy of a run: ``loop.strategy``, or the deprecated ``model.strategy``.

    Args:
        configured: ``loop.strategy`` (FELLRec with its default settings when not set).
        legacy: The deprecated ``model.strategy`` (None: not set). It is used when
            ``loop.strategy`` is left at its default.
        host: The only strategy the module can run (a one-client host trains locally).

    Raises:
        ValueError: When the settings disagree.
    """
    default = FELLRec().describe()
    if host is not None:
        if configured.describe() not in (default, host.describe()):
            raise ValueError(
                f"this module runs only the {host.name!r} strategy (aggregation is the server's "
                f"job), but loop.strategy is {configured.name!r}"
            )
        return host
    if legacy is None or configured.describe() == legacy.describe():
        return configured
    if configured.describe() == default:
        return legacy
    raise ValueError(
        f"loop.strategy ({configured.describe()}) and the deprecated model.strategy "
        f"({legacy.describe()}) disagree; set loop.strategy only"
    )

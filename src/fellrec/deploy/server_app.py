"""The Flower ServerApp: runs a fellrec federation's rounds over the connected client nodes.

``app`` reads the fellrec config from the Flower run config (``fellrec-config``, optionally
``fellrec-overrides``, ``round-timeout`` (0: none) and ``wait-timeout`` in seconds, ``resume`` to
continue a run from its ``server_state.pt``); :func:`server_app` builds one with settings given in
Python.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fellrec.deploy.client_session import check_deployable, check_secret_seeds
from fellrec.deploy.flower_logs import fellrec_logs_through_flower
from fellrec.deploy.run_config import RunSettings, load_run
from fellrec.deploy.server import FederationServer
from fellrec.metrics.headline import result_headline
from fellrec.run_directory import RESULTS_FILE

log = logging.getLogger(__name__)


def log_headline(root: str) -> None:
    """Log the run's last line (:func:`result_headline`) from its ``results.json``, if written."""
    path = Path(root) / RESULTS_FILE
    if path.is_file():
        log.info(result_headline(json.loads(path.read_text()), str(path)))


def server_app(
    settings: RunSettings | None = None,
    round_timeout: float | None = None,
    wait_timeout: float = 600.0,
    resume: bool = False,
) -> ServerApp:
    """A ServerApp; with ``settings`` None it reads them from the Flower run config."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        # fellrec's lines (a round each, the results) in the ServerApp's log, which a
        # deployment's `flwr run --stream` and a simulation show.
        fellrec_logs_through_flower()
        run_config = context.run_config
        chosen = settings if settings is not None else RunSettings.from_flower(run_config)
        run = load_run(chosen)
        check_deployable(run.model, run.strategy, run.unsupported)
        check_secret_seeds(run.model)
        timeout = run_config.get("round-timeout", round_timeout)
        timeout = None if timeout is None or float(timeout) <= 0 else timeout
        FederationServer(
            run,
            grid,
            round_timeout=float(timeout) if timeout is not None else None,
            wait_timeout=float(run_config.get("wait-timeout", wait_timeout)),
            resume=str(run_config.get("resume", resume)).lower() in ("true", "1"),
        ).fit()
        log_headline(run.root)

    return app


#: The ServerApp ``flwr run`` starts (``[tool.flwr.app.components] serverapp``).
app = server_app()

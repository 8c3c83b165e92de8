"""A Flower simulation of a fellrec config on this machine (Flower's Ray backend)."""

from __future__ import annotations

from fellrec.deploy.client_app import client_app
from fellrec.deploy.flower_logs import (
    fellrec_logs_through_flower,
    plain_flower_logs,
    without_run_simulation_notice,
)
from fellrec.deploy.run_config import RunSettings, load_run
from fellrec.deploy.server_app import server_app


def simulate(settings: RunSettings, cpus_per_client: float = 1.0) -> None:
    """Run the federation as Flower's simulation: one virtual SuperNode per client.

    Results land where ``fellrec fit`` would put them (``trainer.default_root_dir``).

    Args:
        settings: The fellrec config files and overrides.
        cpus_per_client: CPUs Ray reserves for each client process.
    """
    from flwr.simulation import run_simulation

    plain_flower_logs()
    num_clients = load_run(settings).datamodule.num_clients
    # Flower prefers `flwr run` for simulations; the in-Python entry is what tests and notebooks
    # need, and it runs the same apps.
    with without_run_simulation_notice():
        run_simulation(
            server_app=server_app(settings),
            client_app=client_app(settings),
            num_supernodes=num_clients,
            backend_config={"client_resources": {"num_cpus": cpus_per_client}},
        )


def main(argv: list[str] | None = None) -> None:
    """``python -m fellrec.deploy.simulation --config FILE [--section.key value ...]``."""
    import argparse

    # fellrec's own lines (the data, the rounds, the results), as Flower shows its own.
    fellrec_logs_through_flower()
    parser = argparse.ArgumentParser(
        prog="python -m fellrec.deploy.simulation",
        description="Run a fellrec config as a Flower simulation (one SuperNode per client); "
        "other --section.key value arguments override the config as in fellrec fit.",
    )
    parser.add_argument("--config", action="append", required=True, help="fellrec YAML file")
    parser.add_argument("--cpus-per-client", type=float, default=1.0)
    known, overrides = parser.parse_known_args(argv)
    simulate(RunSettings(tuple(known.config), tuple(overrides)), known.cpus_per_client)


if __name__ == "__main__":
    main()

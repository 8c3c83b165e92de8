"""``fellrec data export-silos``: a simulated partition written as one silo per client.

::

    fellrec data export-silos --config configs/ml100k-minilm-base.yaml --output silos/
    fellrec fit --config configs/ml100k-minilm-base.yaml --config silos/silos.yaml

The second command simulates the exported silos; each ``silos/client_<i>/`` (with
``silos/catalog.csv`` and the config) is what client ``i`` needs in a deployment.
"""

from __future__ import annotations

from pathlib import Path

from jsonargparse import ArgumentParser

from fellrec.config_errors import parse_checked
from fellrec.config_parser import DATA_SECTIONS, config_parser, instantiate
from fellrec.data.export import check_output, export_silos

PROG = "fellrec data export-silos"


def build_parser() -> ArgumentParser:
    """The data schema of a fit config plus ``--output`` and ``--force``."""
    parser = config_parser(
        PROG,
        "Write the clients of a simulated partition as silo files: DIR/client_<i>/ with only "
        "client i's users' interactions, DIR/catalog.csv (the items in index order) and "
        "DIR/silos.yaml, a config overlay that simulates those silos.",
        DATA_SECTIONS,
    )
    parser.add_argument("--output", type=str, required=True, help="the directory to write (DIR)")
    parser.add_argument(
        "--force", action="store_true", help="overwrite the files of an earlier export in DIR"
    )
    return parser


def main(args: list[str]) -> None:
    """``fellrec data export-silos --config X.yaml --output DIR [--force]``."""
    parser = build_parser()
    parsed = parse_checked(parser, args, PROG)
    datamodule = instantiate(parser, parsed).data
    settings = datamodule.settings
    if settings.max_train_examples is not None:
        print(
            f"{PROG}: note: data.max_train_examples={settings.max_train_examples} subsamples all "
            "examples at once here, but caps each silo's examples in a silo simulation: the "
            "training examples will differ (the silos hold every interaction)"
        )
    output = Path(parsed.output).expanduser()
    check_output(output, parsed.force)  # before the (possibly long) data preparation
    datamodule.prepare_data()
    exported = export_silos(datamodule.data, output, force=parsed.force)
    for client, path in enumerate(exported.silos):
        print(
            f"client {client}: {exported.users[client]} users, "
            f"{exported.interactions[client]} interactions -> {path}"
        )
    print(f"catalog: {datamodule.data.dataset.num_items} items -> {output / 'catalog.csv'}")
    configs = " ".join(f"--config {c}" for c in parsed.config or [])
    print(
        f"simulate these silos: fellrec fit {configs} --config {exported.overlay}".replace(
            "  ", " "
        )
    )

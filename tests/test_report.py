"""`fellrec report`: Markdown + self-contained HTML comparing real runs, and clear failures."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from federation_helpers import tiny_run
from fellrec.cli import main
from fellrec.federation.strategies import FedAvg, FELLRec
from fellrec.reporting.report import IMAGE_DIR, REPORT_HTML, REPORT_MD, write_report
from fellrec.reporting.runs import default_output
from fellrec.reporting.tables import REPORT_METRICS, SLICE_ORDER, SUMMARY_VIEWS
from fellrec.training.records.results import RESULTS_FILE

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_encoder_dir):
    """Two real tiny runs (FELLRec and FedAvg) on the same data, side by side under one root."""
    root = tmp_path_factory.mktemp("report")
    for name, strategy in (("fellrec", FELLRec()), ("fedavg", FedAvg())):
        trainer, model, data, _ = tiny_run(
            root / name, tiny_encoder_dir, strategy, rounds=1, cache_dir=root / "cache"
        )
        trainer.fit(model, datamodule=data)
        trainer.test(model, datamodule=data, verbose=False)
    return root, {
        n: json.loads((root / n / RESULTS_FILE).read_text()) for n in ("fellrec", "fedavg")
    }


@pytest.fixture(scope="module")
def report(runs):
    root, _ = runs
    main(["report", str(root / "fellrec"), str(root / "fedavg")])  # default output: the root
    return root / REPORT_MD, root / REPORT_HTML


def markdown_tables(text: str) -> dict[str, list[dict[str, str]]]:
    """Tables of a Markdown document keyed by the heading above them (cells without ``**``)."""
    tables: dict[str, list[dict[str, str]]] = {}
    heading, columns = None, None
    for line in text.splitlines():
        if line.startswith("#"):
            heading, columns = line.lstrip("#").strip(), None
        elif line.startswith("|") and heading is not None:
            cells = [c.strip().replace("**", "") for c in line.strip("|").split("|")]
            if columns is None:
                columns = cells
                tables[heading] = []
            elif not set(line) <= set("|-"):
                tables[heading].append(dict(zip(columns, cells, strict=True)))
        else:
            columns = None
    return tables


def row_of(table: list[dict[str, str]], label: str) -> dict[str, str]:
    (row,) = [r for r in table if r["run"] == label]
    return row


def test_summary_tables_have_a_row_per_run_with_its_numbers(runs, report):
    _, results = runs
    tables = markdown_tables(report[0].read_text())
    for title, stat, _ in SUMMARY_VIEWS:
        table = tables[title]
        assert [r["run"] for r in table] == ["fellrec", "fedavg", "popularity"]
        for label, run in [*results.items(), ("popularity", results["fellrec"]["popularity"])]:
            row = row_of(table, label)
            for metric in REPORT_METRICS:
                expected = run["overall"][metric] if stat is None else run["balance"][metric][stat]
                assert float(row[metric]) == pytest.approx(expected, abs=5e-5), (title, label)


def test_per_client_tables_show_every_client_of_every_run(runs, report):
    _, results = runs
    tables = markdown_tables(report[0].read_text())
    matrix = tables["ndcg@10 per client"]
    for label, run in results.items():
        row = row_of(matrix, label)
        for client, values in run["clients"].items():
            assert float(row[f"client {client}"]) == pytest.approx(values["ndcg@10"], abs=5e-5)
        detail = tables[f"{label}: every client"]
        assert [r["client"] for r in detail] == sorted(run["clients"], key=int)
        for r in detail:
            assert int(r["users"]) == run["clients"][r["client"]]["users"]
            assert float(r["recall@20"]) == pytest.approx(
                run["clients"][r["client"]]["recall@20"], abs=5e-5
            )
            assert int(r["selected round"]) == run["client_best_rounds"][int(r["client"])]
    runs_table = tables["Runs"]
    assert [(r["run"], r["strategy"]) for r in runs_table] == [
        ("fellrec", "fellrec"),
        ("fedavg", "fedavg"),
    ]
    for row in runs_table:  # what data and model each run is
        assert row["dataset"] == "synthetic (90 users, 60 items)"
        assert row["split"] == "temporal, 3 clients (iid, seed 0)"
        assert row["backbone"] == str(results[row["run"]]["config"]["model"]["backbone"])


def test_slice_tables_show_every_run_and_popularity_per_slice(runs, report):
    _, results = runs
    tables = markdown_tables(report[0].read_text())
    table = tables["ndcg@10 per slice"]
    assert [r["slice"] for r in table] == list(SLICE_ORDER)
    for row in table:
        groups = results["fellrec"]["slices"]["groups"][row["slice"]]
        assert int(row["users"]) == groups["users"]
        for label in ("fellrec", "fedavg", "popularity"):
            run = results["fellrec"]["popularity"] if label == "popularity" else results[label]
            value = run["slices"]["groups"][row["slice"]].get("ndcg@10")
            cell = row[label]
            if value is None:
                assert cell == "-"
            else:
                assert float(cell.split(" [")[0]) == pytest.approx(value, abs=5e-5)
                assert "[" in cell  # with its interval
    assert "head >= " in report[0].read_text()  # the cut points are stated


def test_markdown_links_the_plots_it_wrote(report):
    markdown, _ = report
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown.read_text())
    assert f"{IMAGE_DIR}/comparison.png" in links
    assert f"{IMAGE_DIR}/fellrec_similarity.png" in links
    assert f"{IMAGE_DIR}/fedavg_learning_rates.png" in links
    for link in links:
        data = (markdown.parent / link).read_bytes()
        assert data[:8] == PNG_SIGNATURE and len(data) > 5_000


def test_html_is_self_contained(report):
    markdown, page = report
    text = page.read_text()
    assert "<script" not in text and "<link" not in text and "@import" not in text
    sources = re.findall(r'src="([^"]+)"', text)
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown.read_text())
    assert len(sources) == len(links) > 0
    for source in sources:
        assert source.startswith("data:image/png;base64,")
        assert base64.b64decode(source.split(",", 1)[1])[:8] == PNG_SIGNATURE
    assert "http://" not in text and "https://" not in text


def test_resources_and_privacy_appear_when_recorded(runs, tmp_path):
    root, results = runs
    extended = dict(results["fellrec"])
    extended["resources"] = {
        "table": [
            {"k_front": 1, "client_params": 123456, "server_params": 654321},
            {"k_front": 2, "client_params": 234567, "server_params": 543210},
        ]
    }
    extended["privacy"] = {
        "curve": [{"k_front": 1, "token_recovery": 0.875}, {"k_front": 2, "token_recovery": 0.25}]
    }
    run = tmp_path / "with-extras"
    run.mkdir()
    (run / RESULTS_FILE).write_text(json.dumps(extended))
    markdown, page = write_report([run, root / "fedavg"], tmp_path / "out")
    tables = markdown_tables(markdown.read_text())
    resources = tables["with-extras"]
    assert resources[1] == {"k_front": "2", "client_params": "234,567", "server_params": "543,210"}
    privacy = {row["run"]: row for row in tables["Privacy"]}
    assert privacy["with-extras"]["k_front=1"] == "0.8750"
    assert privacy["with-extras"]["k_front=2"] == "0.2500"
    for point in results["fedavg"]["privacy"]["curve"]:  # the real run's own probe
        cell = privacy["fedavg"][f"k_front={point['k_front']}"]
        assert float(cell) == pytest.approx(point["token_recovery"], abs=5e-5)
    assert (tmp_path / "out" / IMAGE_DIR / "privacy.png").is_file()
    assert "token recovery against k_front" in page.read_text()


def test_default_output_is_the_common_parent_or_the_run(tmp_path):
    assert (
        default_output([tmp_path / "runs" / "a", tmp_path / "runs" / "b"])
        == (tmp_path / "runs").resolve()
    )
    assert default_output([tmp_path / "one"]) == tmp_path / "one"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "is not a fellrec run: it has no results.json"),
        ("{not json", "is not valid JSON"),
        ('{"strategy": "fellrec"}', "missing overall, clients, balance, history"),
        ("[1, 2]", "not a JSON object"),
    ],
)
def test_report_on_a_non_run_directory_exits_2_naming_it(tmp_path, capsys, content, message):
    directory = tmp_path / "not-a-run"
    directory.mkdir()
    if content is not None:
        (directory / RESULTS_FILE).write_text(content)
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(directory)])
    assert exit_info.value.code == 2
    (error,) = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert error.startswith("fellrec: error: ") and message in error
    assert str(directory) in error


def chromium() -> str:
    """The Chromium binary; a skip (or, under CI, a failure) when it is not installed."""
    found = shutil.which("chromium") or (
        "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
    )
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("CI is set but chromium is not installed (.ci/run installs it with apt)")
        pytest.skip("chromium is not installed (apt-get install chromium); under CI this fails")
    return found


def screenshot(page: Path, path: Path, profile: Path, size: str = "1280,2000") -> None:
    """Render ``page`` in headless Chromium into ``path`` (PNG)."""
    command = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--force-color-profile=srgb",
        f"--user-data-dir={profile}",
        f"--window-size={size}",
        f"--screenshot={path}",
        page.resolve().as_uri(),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0 and path.is_file(), result.stderr[-2000:]
    assert path.read_bytes()[:8] == PNG_SIGNATURE


def figure_page(report_html: Path, alt: str, target: Path) -> Path:
    """A page showing only the report's figure captioned ``alt``, as the report embeds it."""
    (source,) = re.findall(rf'<img alt="{re.escape(alt)}" src="([^"]+)"', report_html.read_text())
    target.write_text(
        f'<!DOCTYPE html><html><body style="margin:0"><img src="{source}"></body></html>'
    )
    return target


#: RGB of the series drawn in the report's figures (matplotlib's tab10 and named colours).
TAB10 = [(31, 119, 180), (255, 127, 14), (44, 160, 44)]
CRIMSON, DIMGRAY, GRAY, BLACK = (220, 20, 60), (105, 105, 105), (128, 128, 128), (0, 0, 0)


def has_patch(picture, colour, width: int, height: int, tolerance: int = 40) -> bool:
    """Whether a ``width`` x ``height`` block of ``colour`` (each channel within ``tolerance``) is
    in the picture: a bar, a marker or a thick line of that series, not anti-aliased text."""
    import numpy as np

    pixels = np.asarray(picture.convert("RGB"), dtype=np.int16)
    near = (np.abs(pixels - np.array(colour)).max(axis=2) <= tolerance).astype(np.int32)
    sums = near.cumsum(0).cumsum(1)
    sums = np.pad(sums, ((1, 0), (1, 0)))
    blocks = (
        sums[height:, width:]
        - sums[:-height, width:]
        - sums[height:, :-width]
        + sums[:-height, :-width]
    )
    return bool((blocks == width * height).any())


def test_html_report_renders_in_headless_chromium(report, tmp_path):
    _, page = report
    shot = tmp_path / "report.png"
    screenshot(page, shot, tmp_path / "profile")
    data = shot.read_bytes()
    try:
        from PIL import Image
    except ImportError:
        assert len(data) > 50_000  # a blank 1280x2000 page compresses to a few kB
        return
    with Image.open(shot) as picture:
        assert picture.size == (1280, 2000)
        colours = picture.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours is not None and len(colours) > 50, "the page rendered (nearly) blank"
        # Mostly white page with dark text and coloured table cells.
        assert picture.convert("L").getextrema() == (pytest.approx(0, abs=60), 255)

    # Every series of the figures shows on the rendered page: a missing one fails here.
    Image = pytest.importorskip("PIL.Image")
    comparison = tmp_path / "comparison.png"
    screenshot(
        figure_page(page, "test ndcg@10 per client and run", tmp_path / "comparison.html"),
        comparison,
        tmp_path / "profile",
        "900,500",
    )
    with Image.open(comparison) as picture:
        for run, colour in zip(("fellrec", "fedavg"), TAB10, strict=False):
            assert has_patch(picture, colour, 12, 12), f"the bars of {run}"
        assert has_patch(picture, BLACK, 12, 3, tolerance=10), "the popularity marks"
        assert has_patch(picture, DIMGRAY, 1, 12, tolerance=10), "the interval bars"
    clients = tmp_path / "clients.png"
    screenshot(
        figure_page(
            page,
            "fellrec: validation ndcg@10 of every client over rounds (filled: the selected round), "
            "with mean, worst client and popularity",
            tmp_path / "clients.html",
        ),
        clients,
        tmp_path / "profile",
        "900,500",
    )
    with Image.open(clients) as picture:
        for client, colour in enumerate(TAB10):
            assert has_patch(picture, colour, 4, 4), f"client {client}'s selected round"
        assert has_patch(picture, BLACK, 4, 4, tolerance=10), "the mean of clients"
        assert has_patch(picture, CRIMSON, 4, 4), "the worst client"
        assert has_patch(picture, GRAY, 10, 1, tolerance=10), "the popularity level"


def test_runs_on_different_data_get_a_warning_instead_of_a_best(runs, tmp_path):
    root, results = runs
    other = json.loads(json.dumps(results["fedavg"]))
    other["config"]["data"]["seed"] = 1  # another partition: other clients, other baseline
    other["popularity"]["overall"]["ndcg@10"] += 0.01
    run = tmp_path / "other-data"
    run.mkdir()
    (run / RESULTS_FILE).write_text(json.dumps(other))
    markdown, _ = write_report([root / "fellrec", run], tmp_path / "out")
    text = markdown.read_text()
    assert "Warning: these runs are not on the same data" in text
    assert "popularity baselines differ" in text and "seed 1" in text
    assert "in bold" not in text and "**" not in text.split("## Plots")[0]
    rows = markdown_tables(text)["Overall (user-weighted)"]
    labels = ["fellrec", "other-data", "popularity (fellrec)", "popularity (other-data)"]
    assert [r["run"] for r in rows] == labels


def test_bold_is_promised_only_when_runs_compete(runs, report, tmp_path):
    root, _ = runs
    assert "Best run per column in bold" in report[0].read_text()
    single = tmp_path / "single"
    shutil.copytree(root / "fellrec", single)
    markdown, _ = write_report([single], tmp_path / "out")
    text = markdown.read_text()
    assert "in bold" not in text and "**" not in text.split("## Plots")[0]

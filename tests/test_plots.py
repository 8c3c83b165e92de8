"""PNG plots of a run, written by the loop after testing and redrawn from results.json alone."""

from __future__ import annotations

import copy
import json
import math

import pytest

from federation_helpers import tiny_run
from fellrec.federation.strategies import FELLRec
from fellrec.reporting import history as hist
from fellrec.reporting.plots import PLOTS_DIR, png_bytes, rgb_array, save_plots, similarity_figure
from fellrec.training.results import RESULTS_FILE

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RUN_PLOTS = {"clients_ndcg10", "balance_ndcg10", "learning_rates", "similarity"}


def assert_real_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    assert len(data) > 5_000, f"{path} is only {len(data)} bytes"
    image = pytest.importorskip("PIL.Image")
    with image.open(path) as picture:
        picture.verify()
    with image.open(path) as picture:
        width, height = picture.size
        assert width >= 400 and height >= 300
        extrema = picture.convert("L").getextrema()
        assert extrema[1] - extrema[0] > 100, f"{path} is (nearly) one colour"


@pytest.fixture(scope="module")
def fitted_run(tmp_path_factory, tiny_encoder_dir):
    root = tmp_path_factory.mktemp("plots")
    trainer, model, data, _ = tiny_run(root, tiny_encoder_dir, FELLRec(), rounds=2)
    trainer.fit(model, datamodule=data)
    trainer.test(model, datamodule=data, verbose=False)
    return root, json.loads((root / RESULTS_FILE).read_text())


def test_a_finished_run_writes_its_plots(fitted_run):
    root, _ = fitted_run
    written = {path.stem for path in (root / PLOTS_DIR).glob("*.png")}
    assert written == RUN_PLOTS
    for name in RUN_PLOTS:
        assert_real_png(root / PLOTS_DIR / f"{name}.png")


def test_plots_are_redrawn_from_results_json_alone(fitted_run, tmp_path):
    _, results = fitted_run
    paths = save_plots(results, tmp_path)
    assert {path.stem for path in paths} == RUN_PLOTS
    for path in paths:
        assert_real_png(path)


def test_strategies_without_heating_or_similarity_still_plot(fitted_run, tmp_path):
    _, results = fitted_run
    fedavg_like = copy.deepcopy(results)
    for record in fedavg_like["history"]:
        record.pop("heating_weight")
        record.pop("similarity")
    paths = save_plots(fedavg_like, tmp_path)
    assert {path.stem for path in paths} == RUN_PLOTS - {"similarity"}


def test_runs_without_validation_plot_only_learning_rates(fitted_run, tmp_path):
    _, results = fitted_run
    unvalidated = copy.deepcopy(results)
    for record in unvalidated["history"]:
        record.pop("val")
    paths = save_plots(unvalidated, tmp_path)
    assert {path.stem for path in paths} == {"learning_rates", "similarity"}


def test_similarity_heatmap_renders_to_an_image_array():
    figure = similarity_figure([[1.0, 0.5], [0.5, 1.0]], "round 3")
    array = rgb_array(figure)
    assert array.ndim == 3 and array.shape[2] == 3 and array.dtype.name == "uint8"
    assert array.min() < 100 < array.max()  # not blank
    assert png_bytes(figure)[:8] == PNG_SIGNATURE


HISTORY = [
    {
        "round": 0,
        "lr": [0.1, 0.2],
        "heating_weight": [0.5, None],
        "val": {
            "clients": {"0": {"users": 3, "ndcg@10": 0.25}, "1": {"users": 0}},
            "balance": {"ndcg@10": {"mean": 0.25, "jain": 1.0}},
        },
    },
    {"round": 1, "lr": [0.3, 0.4], "similarity": [[1.0, 0.2], [0.2, 1.0]]},
]


def test_history_series_fill_gaps_with_nan():
    client_series = hist.client_val_series(HISTORY, "ndcg@10", 2)
    assert client_series[0][0] == 0.25 and math.isnan(client_series[0][1])
    assert all(math.isnan(v) for v in client_series[1])  # a client without users
    jain = hist.balance_series(HISTORY, "ndcg@10", "jain")
    assert jain[0] == 1.0 and math.isnan(jain[1])
    assert hist.slot_series(HISTORY, "lr", 2) == [[0.1, 0.3], [0.2, 0.4]]
    weights = hist.slot_series(HISTORY, "heating_weight", 2)
    assert weights[0][0] == 0.5 and math.isnan(weights[1][0]) and math.isnan(weights[0][1])
    assert hist.slot_series(HISTORY, "train_loss", 2) is None
    assert hist.last_similarity(HISTORY) == (1, [[1.0, 0.2], [0.2, 1.0]])
    assert hist.num_clients({"history": HISTORY}) == 2


def test_clients_with_identical_values_stay_distinguishable(fitted_run):
    _, results = fitted_run
    from fellrec.reporting.plots import client_metric_figure, learning_rate_figure

    for figure in (client_metric_figure(results), learning_rate_figure(results)):
        lines = [line for line in figure.axes[0].lines if line.get_label().startswith("client")]
        assert len(lines) == 3
        assert len({line.get_marker() for line in lines}) == 3  # a shape per client
        assert all(line.get_markerfacecolor() == "none" for line in lines)  # open: overlaps show


@pytest.mark.parametrize(
    ("stat", "values", "expected"),
    [
        ("jain", [0.98875, 0.99], (0.9 - 0.005, 1.002)),  # noise near 1 stays flat near the top
        ("std", [0.017, 0.023], (0.0, 0.05 * 1.05)),  # a small spread on a scale from 0
        ("gap", [0.2, 0.3], (0.0, 0.3 * 1.05)),  # larger values widen the range
        ("jain", [0.7, 0.8], (0.7 - 0.015, 1.006)),
    ],
)
def test_balance_axes_never_zoom_into_noise(stat, values, expected):
    from fellrec.reporting.plots import balance_limits

    assert balance_limits(stat, values) == pytest.approx(expected)


def test_balance_figure_uses_those_limits(fitted_run):
    _, results = fitted_run
    from fellrec.reporting.plots import BALANCE_STATS, balance_figure, balance_limits

    figure = balance_figure(results)
    for axes, stat in zip(figure.axes, BALANCE_STATS, strict=True):
        values = hist.balance_series(results["history"], "ndcg@10", stat)
        assert axes.get_ylim() == pytest.approx(balance_limits(stat, values))


def test_similarity_colours_span_the_off_diagonal_values():
    figure = similarity_figure([[1.0, 0.91, 0.95], [0.91, 1.0, 0.93], [0.95, 0.93, 1.0]])
    image = figure.axes[0].images[0]
    assert image.get_clim() == pytest.approx((0.91, 0.95))
    assert image.get_array().mask.diagonal().all()  # the diagonal is drawn apart (grey)


def test_comparison_chart_includes_popularity():
    from fellrec.reporting.plots import comparison_figure

    clients = {"0": {"ndcg@10": 0.2}, "1": {"ndcg@10": 0.3}}
    run = {"clients": clients, "popularity": {"clients": {"0": {"ndcg@10": 0.1}}}}
    figure = comparison_figure({"fellrec": run})
    labels = [text.get_text() for text in figure.legends[0].get_texts()]
    assert labels == ["fellrec", "popularity"]

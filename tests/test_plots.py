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
from fellrec.training.records.results import RESULTS_FILE

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RUN_PLOTS = {"clients_ndcg10", "balance_ndcg10", "learning_rates", "train_loss", "similarity"}


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
    assert {path.stem for path in paths} == {"learning_rates", "train_loss", "similarity"}


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


def test_comparison_chart_reads_each_run_against_its_own_popularity_with_intervals():
    from fellrec.reporting.plots import comparison_figure

    def run(values, popularity, low):
        return {
            "clients": {str(c): {"ndcg@10": v} for c, v in enumerate(values)},
            "popularity": {"clients": {str(c): {"ndcg@10": v} for c, v in enumerate(popularity)}},
            "ci": {"clients": {"0": {"ndcg@10": [low, values[0] + 0.05]}}},
        }

    figure = comparison_figure(
        {"a": run([0.2, 0.3], [0.1, 0.12], 0.15), "b": run([0.5, 0.4], [0.35, 0.3], 0.4)}
    )
    labels = [text.get_text() for text in figure.legends[0].get_texts()]
    assert labels == ["a", "b", "popularity (each run's own data)"]
    axes = figure.axes[0]
    black = (0.0, 0.0, 0.0, 1.0)
    marks = [c for c in axes.collections if tuple(c.get_colors()[0]) == black]
    levels = sorted(round(float(seg[0][1]), 6) for c in marks for seg in c.get_segments())
    assert levels == [0.1, 0.12, 0.3, 0.35]  # each run's own baseline, per client
    bars = [(p.get_x() + p.get_width() / 2, p.get_height()) for p in axes.patches]
    assert [round(h, 6) for _, h in bars] == [0.2, 0.3, 0.5, 0.4]
    # Error bars: client 0 of each run (to its interval), none where no interval was recorded.
    spans = sorted(
        (round(float(seg[0][1]), 6), round(float(seg[1][1]), 6))
        for c in axes.collections
        if c not in marks
        for seg in c.get_segments()
    )
    assert spans == [(0.15, 0.25), (0.3, 0.3), (0.4, 0.4), (0.4, 0.55)]


def one_round(results):
    """The run's results as if it had stopped after round 0."""
    single = copy.deepcopy(results)
    single["history"] = single["history"][:1]
    single["client_best_rounds"] = [0] * len(single["client_best_rounds"])
    return single


def test_a_one_round_run_plots_readably(fitted_run):
    _, results = fitted_run
    from fellrec.reporting.plots import run_figures

    figures = run_figures(one_round(results))
    for name, figure in figures.items():
        if name == "similarity":
            continue
        for axes in figure.axes:
            assert axes.get_xlim() == pytest.approx((-0.5, 0.5)), name  # not -0.045..0.045
            assert list(axes.get_xticks()) == [0], name  # one tick: nothing to overlap
    clients = figures["clients_ndcg10"].axes[0]
    by_label = {line.get_label(): line for line in clients.lines}
    for label in ("mean of clients", "worst client"):  # a single point still shows
        assert by_label[label].get_marker() not in (None, "None", ""), label


def test_the_per_client_plot_marks_the_selected_rounds_and_popularity(fitted_run):
    _, results = fitted_run
    from fellrec.reporting.plots import client_metric_figure

    axes = client_metric_figure(results).axes[0]
    filled = [
        line
        for line in axes.lines
        if line.get_linestyle() == "None"
        and line.get_markerfacecolor() != "none"
        and line.get_label().startswith("_")
    ]
    series = hist.client_val_series(results["history"], "ndcg@10", 3)
    chosen = sorted((float(line.get_xdata()[0]), float(line.get_ydata()[0])) for line in filled)
    expected = sorted((float(r), series[c][r]) for c, r in enumerate(results["client_best_rounds"]))
    assert [x for x, _ in chosen] == [x for x, _ in expected]
    assert [y for _, y in chosen] == pytest.approx([y for _, y in expected])
    (level,) = [line for line in axes.lines if line.get_label().startswith("popularity")]
    popularity = results["popularity"]["validation"]["overall"]["ndcg@10"]
    assert level.get_label() == "popularity (validation)"
    assert list(level.get_ydata()) == pytest.approx([popularity, popularity])


def test_the_training_loss_plot_has_every_clients_losses(fitted_run):
    _, results = fitted_run
    from fellrec.reporting.plots import train_loss_figure

    lines = [
        line
        for line in train_loss_figure(results).axes[0].lines
        if line.get_label().startswith("client")
    ]
    assert len(lines) == 3
    for client, line in enumerate(lines):
        want = [record["train_loss"][client] for record in results["history"]]
        assert list(line.get_ydata()) == pytest.approx(want)

"""Panel titles are pinned at the top of their axes (``charts.TITLE_Y``) instead of being
placed by matplotlib on every draw: each chart, drawn both ways, gives the same PNG bytes."""

from __future__ import annotations

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pipelines.reports import charts
from test_charts import FILES, LABELS, clinics, km, rejected, summary, trajectories, trend  # noqa: F401 - fixtures


def _charts(summary, km, trajectories, clinics, trend, rejected) -> dict[str, Figure]:
    return {"forest": charts.forest_plot(summary, LABELS),
            "km": charts.km_curves_plot(km, summary, LABELS),
            "trajectory": charts.trajectory_plot(trajectories, LABELS),
            "responders": charts.responder_plot(summary, LABELS),
            "funnel": charts.funnel_plot(clinics, 0.5),
            "trend": charts.trend_plot(trend),
            "data_quality": charts.data_quality_plot(rejected, FILES, rows_read=78_000)}


def test_pinned_titles_draw_as_placed_titles(monkeypatch, summary, km, trajectories, clinics, trend, rejected):
    tables = (summary, km, trajectories, clinics, trend, rejected)
    pinned = {name: charts.figure_to_png_bytes(fig) for name, fig in _charts(*tables).items()}
    monkeypatch.setattr(charts, "TITLE_Y", None)  # matplotlib places each title when drawing
    placed = _charts(*tables)
    assert all(ax.get_title() for fig in placed.values() for ax in fig.axes)
    for name, fig in placed.items():
        assert charts.figure_to_png_bytes(fig) == pinned[name], name


def test_a_title_placed_by_matplotlib_moves_above_ticks_on_top():
    """What pinning gives up, and why the report's charts do not need it: matplotlib lifts
    a title over tick labels at the top of the panel (no chart of the report has any); a
    pinned one overlaps them."""
    def clearance(y: float | None) -> float:
        fig = Figure(figsize=(4, 3), layout="constrained")
        ax = fig.add_subplot()
        ax.xaxis.tick_top()
        ax.set_title("title", y=y)
        renderer = FigureCanvasAgg(fig).get_renderer()
        fig.draw(renderer)
        ticks_top = max(t.get_window_extent(renderer).y1 for t in ax.get_xticklabels() if t.get_text())
        return ax.title.get_window_extent(renderer).y0 - ticks_top

    assert clearance(None) >= 0 > clearance(charts.TITLE_Y)

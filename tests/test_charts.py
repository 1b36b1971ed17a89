"""Report charts and captions (pipelines/reports): every chart on small hand-made frames and on
empty / all-suppressed input; funnel limits and captions against hand-worked numbers."""

from __future__ import annotations

import math

import polars as pl
import pytest
from matplotlib.figure import Figure
from matplotlib.text import Text

from pipelines.outcomes.summary import SUMMARY_SCHEMA
from pipelines.outcomes.tables import KM_SCHEMA, TRAJECTORY_SCHEMA
from pipelines.reports import captions, charts
from pipelines.reports.charts import (
    classify_clinics, data_quality_plot, figure_to_png_bytes, forest_plot, funnel_limits, funnel_plot,
    km_curves_plot, published_rows, responder_plot, save_figure, trajectory_plot, trend_plot,
)

LABELS = {"low_back_pain": "Low back pain", "neck_pain": "Neck pain", "parkinsons": "Parkinson's spasms",
          "multiple_sclerosis": "Multiple sclerosis spasms", "ALL": "All conditions"}


# --------------------------------------------------------------------------------------
# Hand-made inputs
# --------------------------------------------------------------------------------------

def summary_row(condition: str, n: int, **stats) -> dict:
    row = {c: None for c in SUMMARY_SCHEMA}
    row.update(condition=condition, n_episodes=n, n_analysed=n, suppressed=n < 11)
    row.update(stats)
    return row


def make_summary(*rows: dict) -> pl.DataFrame:
    return pl.DataFrame(list(rows), schema=SUMMARY_SCHEMA)


FULL = dict(mean_change=2.0, mean_change_ci_low=1.6, mean_change_ci_high=2.4, responder_30_rate=0.55,
            responder_30_ci_low=0.5, responder_30_ci_high=0.6, responder_50_rate=0.3, responder_50_ci_low=0.26,
            responder_50_ci_high=0.34, median_sessions_to_response=4.0, median_sessions_ci_low=3.0,
            median_sessions_ci_high=5.0, improved_by_session_3=0.4, improved_by_session_6=0.62,
            improved_by_session_10=0.7)


@pytest.fixture
def summary() -> pl.DataFrame:
    return make_summary(
        summary_row("low_back_pain", 412, **FULL),
        summary_row("neck_pain", 120, **{**FULL, "mean_change": 1.1, "mean_change_ci_low": 0.7,
                                         "mean_change_ci_high": 1.5, "median_sessions_ci_high": None}),
        # suppressed: statistics blank, as the caller leaves them; together 13, so neither can be worked
        # out from the total and no other count needs hiding (complementary suppression)
        summary_row("parkinsons", 7),
        summary_row("multiple_sclerosis", 6),
        summary_row("ALL", 545, **{**FULL, "mean_change": 1.8, "mean_change_ci_low": 1.5, "mean_change_ci_high": 2.1}),
    )


@pytest.fixture
def suppressed_summary() -> pl.DataFrame:
    return make_summary(summary_row("parkinsons", 4), summary_row("neck_pain", 5), summary_row("ALL", 9))


def km_rows(condition: str, n: int) -> list[dict]:
    out = []
    survival = 1.0
    for t, s in ((0.0, 1.0), (1.0, 0.8), (2.0, 0.62), (4.0, 0.45), (6.0, 0.38)):
        survival = s
        out.append({"condition": condition, "t": t, "survival": survival, "ci_low": max(0.0, s - 0.08),
                    "ci_high": min(1.0, s + 0.08) if t else 1.0, "improved": 1 - survival, "at_risk": n,
                    "events": 0 if t == 0 else 5, "censored": 0})
    return out


@pytest.fixture
def km() -> pl.DataFrame:
    rows = km_rows("low_back_pain", 412) + km_rows("neck_pain", 120) + km_rows("parkinsons", 7) + km_rows("ALL", 545)
    return pl.DataFrame(rows, schema=KM_SCHEMA)


@pytest.fixture
def trajectories() -> pl.DataFrame:
    rows = []
    for condition, n0 in (("low_back_pain", 412), ("neck_pain", 120), ("parkinsons", 7), ("multiple_sclerosis", 6),
                          ("ALL", 545)):
        for k in range(1, 15):
            n = max(0, n0 - 30 * (k - 1))
            if n == 0:
                continue
            mean = 6.5 - 0.3 * k
            rows.append({"condition": condition, "session_number": k, "n": n, "mean_pre": mean, "sd_pre": 2.0,
                         "ci_low": mean - 0.4, "ci_high": mean + 0.4})
    return pl.DataFrame(rows, schema=TRAJECTORY_SCHEMA)


@pytest.fixture
def clinics() -> pl.DataFrame:
    return pl.DataFrame({"clinic_id": ["C1", "C2", "C3"], "n_analysed": [100, 100, 100],
                         "responder_30_rate": [0.55, 0.62, 0.30]})


TREND_SCHEMA = {"week": pl.String, "sessions": pl.Int64, "new_episodes": pl.Int64, "responders": pl.Int64,
                "responder_n": pl.Int64, "responder_rate": pl.Float64, "responder_ci_low": pl.Float64,
                "responder_ci_high": pl.Float64}


@pytest.fixture
def trend() -> pl.DataFrame:
    weeks = [f"2026-W{w:02d}" for w in range(36, 48)]
    sessions = [100] * 11 + [120]
    new = [20] * 11 + [None]              # the last week's new episodes suppressed (<11)
    resp_n = [50] * 11 + [40]
    responders = [25] * 11 + [30]
    rate = [r / n for r, n in zip(responders, resp_n)]
    return pl.DataFrame({"week": weeks, "sessions": sessions, "new_episodes": new, "responders": responders,
                         "responder_n": resp_n, "responder_rate": rate,
                         "responder_ci_low": [x - 0.1 for x in rate], "responder_ci_high": [x + 0.1 for x in rate]},
                        schema=TREND_SCHEMA)


@pytest.fixture
def rejected() -> pl.DataFrame:
    return pl.DataFrame({"reason": ["score: not a number", LONG_REASON, "condition: not in the vocabulary"],
                         "n": [120, 150, 42]})


LONG_REASON = ("episode_id: refers to an episode that is not in any accepted episodes file of this export batch, "
               "or was rejected itself")


FILES = {"ingested": 12, "refused": 1, "ignored": 2}


# --------------------------------------------------------------------------------------
# Chart checks
# --------------------------------------------------------------------------------------

def texts(fig: Figure) -> list[str]:
    return [t.get_text() for t in fig.findobj(Text) if t.get_text()]


def assert_readable(fig: Figure, xlabel_axes: list | None = None) -> None:
    assert isinstance(fig, Figure)
    assert fig.get_suptitle()
    assert fig.axes
    for ax in fig.axes:
        assert ax.get_title(), "every panel says what it shows"
    for ax in xlabel_axes or [fig.axes[-1]]:
        assert ax.get_xlabel()
    assert any(ax.get_ylabel() for ax in fig.axes)
    assert figure_to_png_bytes(fig)[:8] == b"\x89PNG\r\n\x1a\n"


def test_forest_plot(summary):
    fig = forest_plot(summary, LABELS)
    assert_readable(fig)
    ax = fig.axes[0]
    ticks = [t.get_text() for t in ax.get_yticklabels()]
    # sorted by mean change, withheld rows after, ALL last
    assert ticks == ["Low back pain (n=412)", "Neck pain (n=120)", "Multiple sclerosis spasms (n<11)",
                     "Parkinson's spasms (n<11)", "All conditions (n=545)"]
    assert "fewer than 11 patients" in texts(fig)
    assert ax.get_ylabel() and "0-10" in ax.get_xlabel()


def test_forest_plot_does_not_draw_a_small_row_even_if_statistics_were_left_in():
    leaky = make_summary(summary_row("low_back_pain", 40, **FULL), summary_row("parkinsons", 7, **FULL),
                         summary_row("neck_pain", 30, **FULL), summary_row("ALL", 77, **FULL))
    fig = forest_plot(leaky, LABELS)
    shown = texts(fig)
    assert "fewer than 11 patients" in shown
    # 7 can be worked out from 77 - 40 - 30: neck pain's count (the next smallest) is hidden too
    assert "Neck pain (n not shown)" in shown and "Parkinson's spasms (n<11)" in shown
    assert not any("(n=7)" in t or "(n=30)" in t for t in shown)


def test_charts_accept_the_published_summary(summary):
    from pipelines.reports.publish import publish_summary

    published = publish_summary(summary, 11)
    fig = forest_plot(published, LABELS)
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == [
        t.get_text() for t in forest_plot(summary, LABELS).axes[0].get_yticklabels()]


def test_km_curves_plot(km, summary):
    fig = km_curves_plot(km, summary, LABELS)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["All conditions (n=545)", "Low back pain (n=412)", "Neck pain (n=120)"]
    assert_readable(fig, xlabel_axes=fig.axes)  # one row: every panel is a bottom panel
    assert fig.axes[0].get_ylabel() == "Improved (%)"
    assert fig.axes[0].get_ylim() == (0, 100)
    assert any("half improved by session 4" in t for t in texts(fig))
    assert len(km_curves_plot(km, summary, LABELS, max_panels=2).axes) == 2


def test_trajectory_plot(trajectories):
    fig = trajectory_plot(trajectories, LABELS)
    assert_readable(fig)
    ax = fig.axes[0]
    assert ax.get_ylabel() == "Pain before session (0-10)" and ax.get_ylim() == (0, 10)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["Low back pain (n=412)", "Neck pain (n=120)", "All conditions (n=545)"]
    # points with n < 11 are not drawn: neck pain has 120 - 30 * (k - 1) >= 11 up to session 4
    neck = next(line for line in ax.get_lines() if line.get_label().startswith("Neck pain"))
    y = neck.get_ydata()
    assert not any(math.isnan(v) for v in y[:4]) and all(math.isnan(v) for v in y[4:])
    only = trajectory_plot(trajectories, LABELS, conditions=["neck_pain"])
    assert [t.get_text() for t in only.axes[0].get_legend().get_texts()] == ["Neck pain (n=120)"]


def test_responder_plot(summary):
    fig = responder_plot(summary, LABELS)
    assert_readable(fig)
    ax = fig.axes[0]
    assert ax.get_xlim() == (0, 100)
    assert "55% / 30%" in texts(fig)
    assert "fewer than 11 patients" in texts(fig)


def test_funnel_plot(clinics):
    fig = funnel_plot(clinics, 0.5, "(low back pain)")
    assert_readable(fig)
    assert "(low back pain)" in fig.get_suptitle()
    assert {"C1", "C2", "C3"} <= set(texts(fig))


def test_trend_plot(trend):
    fig = trend_plot(trend)
    assert_readable(fig)
    assert len(fig.axes) == 3
    assert [t.get_text() for t in fig.axes[2].get_xticklabels()][-1] == "2026-W47"
    assert "<11" in texts(fig)


def test_data_quality_plot(rejected):
    fig = data_quality_plot(rejected, FILES, rows_read=78_000)
    assert_readable(fig, xlabel_axes=fig.axes)
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels[0].startswith("episode_id") and labels[0].endswith("…") and all(len(line) <= 38 for lab in labels for line in lab.split("\n"))
    assert "312 of 78,000 read (0.4%)" in fig.axes[0].get_title()
    # the pipeline's own reason table (reason, len) is accepted as well
    data_quality_plot(rejected.rename({"n": "len"}), FILES)


EMPTY_SUMMARY = pl.DataFrame(schema=SUMMARY_SCHEMA)


@pytest.mark.parametrize("make", [
    lambda s: forest_plot(s, LABELS),
    lambda s: responder_plot(s, LABELS),
    lambda s: km_curves_plot(pl.DataFrame(schema=KM_SCHEMA), s, LABELS),
])
@pytest.mark.parametrize("which", ["empty", "suppressed"])
def test_summary_charts_on_empty_and_all_suppressed(make, which, suppressed_summary):
    frame = EMPTY_SUMMARY if which == "empty" else suppressed_summary
    fig = make(frame)
    assert_readable(fig)
    assert not any(t in ("n=4", "n=5", "n=9") or "(n=4)" in t or "(n=5)" in t for t in texts(fig))


def test_other_charts_on_empty_and_all_suppressed(trajectories, rejected):
    small = trajectories.with_columns(pl.lit(5, dtype=pl.Int64).alias("n"))
    for fig in (trajectory_plot(pl.DataFrame(schema=TRAJECTORY_SCHEMA), LABELS), trajectory_plot(small, LABELS),
                funnel_plot(pl.DataFrame(schema={"clinic_id": pl.String, "n_analysed": pl.Int64,
                                                 "responder_30_rate": pl.Float64}), 0.5),
                funnel_plot(pl.DataFrame({"clinic_id": ["C1"], "n_analysed": [40], "responder_30_rate": [0.4]}),
                            float("nan")),
                trend_plot(pl.DataFrame(schema=TREND_SCHEMA)),
                trend_plot(pl.DataFrame({"week": ["2026-W46", "2026-W47"], "sessions": [None, 4],
                                         "new_episodes": [None, None], "responders": [None, None],
                                         "responder_n": [3, None], "responder_rate": [None, None],
                                         "responder_ci_low": [None, None], "responder_ci_high": [None, None]},
                                        schema=TREND_SCHEMA)),
                data_quality_plot(pl.DataFrame(schema={"reason": pl.String, "n": pl.Int64}), {}),
                data_quality_plot(rejected, {"ingested": 0})):
        assert_readable(fig, xlabel_axes=[fig.axes[-1]])
    # a suppressed week shows "<11", never its count
    fig = trend_plot(pl.DataFrame({"week": ["2026-W47"], "sessions": [4], "new_episodes": [None],
                                   "responders": [None], "responder_n": [3], "responder_rate": [None],
                                   "responder_ci_low": [None], "responder_ci_high": [None]}, schema=TREND_SCHEMA))
    assert "4" not in texts(fig) and "3" not in texts(fig) and "n<11" in texts(fig)


def test_save_figure(tmp_path, summary):
    path = save_figure(forest_plot(summary, LABELS), tmp_path / "sub" / "forest.png")
    assert path.exists() and path.read_bytes()[:4] == b"\x89PNG"
    from PIL import Image

    with Image.open(path) as image:
        width, _ = image.size
        dpi = image.info.get("dpi", (150, 150))[0]
    assert round(dpi) == 150
    assert 900 < width < 1400  # about 8 in at 150 dpi after the tight crop


def test_charts_use_no_pyplot():
    source = open(charts.__file__, encoding="utf-8").read()
    assert "pyplot" not in source.replace("no pyplot", "")


# --------------------------------------------------------------------------------------
# Funnel limits, worked by hand
# --------------------------------------------------------------------------------------

def test_funnel_limits_hand_worked():
    # p = 0.5, n = 100: se = sqrt(0.25 / 100) = 0.05
    low, high = funnel_limits(0.5, 100, 1.96)
    assert (low, high) == pytest.approx((0.5 - 0.098, 0.5 + 0.098))
    low, high = funnel_limits(0.5, 100, 3.09)
    assert (low, high) == pytest.approx((0.3455, 0.6545))
    # p = 0.2, n = 16: se = sqrt(0.16 / 16) = 0.1; 0.2 - 0.309 < 0 is clipped to 0
    assert funnel_limits(0.2, 16, 1.96) == pytest.approx((0.004, 0.396))
    assert funnel_limits(0.2, 16, 3.09) == pytest.approx((0.0, 0.509))
    # p = 0.9, n = 4: se = 0.15; 0.9 + 0.294 > 1 is clipped to 1; arrays in, arrays out
    low, high = funnel_limits(0.9, [4, 100], 1.96)
    assert list(low) == pytest.approx([0.606, 0.9 - 1.96 * 0.03])
    assert list(high) == pytest.approx([1.0, 0.9 + 1.96 * 0.03])


def test_classify_clinics(clinics):
    bands = classify_clinics(clinics, 0.5)
    # limits at n = 100: 95% 0.402..0.598, 99.8% 0.3455..0.6545
    assert bands["band"].to_list() == ["within 95%", "between 95% and 99.8%", "outside 99.8%"]
    assert bands["side"].to_list() == ["above", "above", "below"]


def test_published_rows_blank_small_rows(summary):
    rows, pooled = published_rows(summary, LABELS)
    by_code = {r.code: r for r in rows}
    assert by_code["parkinsons"].n_label == "n<11" and not by_code["parkinsons"].shows("mean_change")
    assert pooled.n_label == "n=545"


# --------------------------------------------------------------------------------------
# Captions, exact text for hand-made numbers
# --------------------------------------------------------------------------------------

def test_km_caption_reached(summary):
    assert captions.km_caption(summary, LABELS, "low_back_pain") == (
        "Half of patients with low back pain reached a meaningful improvement (30% less pain) by session 4 "
        "(95% CI 3-5).")
    assert captions.km_caption(summary, LABELS, "neck_pain") == (
        "Half of patients with neck pain reached a meaningful improvement (30% less pain) by session 4 "
        "(95% CI 3 to not reached within the sessions observed).")


def test_km_caption_not_reached():
    s = make_summary(summary_row("ALL", 200, **{**FULL, "median_sessions_to_response": None,
                                              "median_sessions_ci_low": None, "median_sessions_ci_high": None,
                                              "improved_by_session_10": 0.38}))
    assert captions.km_caption(s, LABELS) == (
        "Fewer than half of all patients reached a meaningful improvement (30% less pain) within the sessions "
        "observed (median not reached); 38% had improved by session 10.")


def test_km_caption_suppressed(summary, suppressed_summary):
    assert captions.km_caption(summary, LABELS, "parkinsons") == (
        "Too few patients with Parkinson's spasms to report how many sessions it takes to improve "
        "(fewer than 11 analysed).")
    assert captions.km_caption(suppressed_summary, LABELS) == (
        "Too few patients to report how many sessions it takes to improve (fewer than 11 analysed).")
    assert captions.km_caption(EMPTY_SUMMARY, LABELS) == (
        "No patients have been analysed yet, so there is nothing to report on sessions to improvement.")


def test_forest_caption(summary, suppressed_summary):
    assert captions.forest_caption(summary, LABELS) == (
        "Pain fell most for patients with low back pain: by 2.0 points on average (95% CI 1.6 to 2.4) on the "
        "0-10 scale, against 1.8 points (1.5 to 2.1) across all conditions.")
    assert captions.forest_caption(suppressed_summary, LABELS) == (
        "Too few patients to report changes in pain by condition.")


def test_responder_caption(summary, suppressed_summary):
    assert captions.responder_caption(summary, LABELS) == (
        "Across all conditions (n=545), 55% of patients (95% CI 50-60%) had at least 30% less pain at their "
        "latest rating, and 30% (26-34%) at least 50% less.")
    assert captions.responder_caption(suppressed_summary, LABELS) == (
        "Too few patients to report responder rates (fewer than 11 analysed).")


def test_funnel_caption(clinics):
    assert captions.funnel_caption(clinics.head(1), 0.5) == (
        "The one clinic is within the expected range of the pooled rate of 50%; it is not an outlier.")
    inside = pl.DataFrame({"clinic_id": ["A", "B", "C"], "n_analysed": [50, 200, 400],
                           "responder_30_rate": [0.5, 0.56, 0.51]})
    assert captions.funnel_caption(inside, 0.54) == (
        "All 3 clinics are within the expected range of the pooled rate of 54%; none is an outlier.")
    assert captions.funnel_caption(clinics, 0.5) == (
        "1 of 3 clinics is within the 95% limits around the pooled rate of 50%; 1 lies between the 95% and "
        "99.8% limits, which chance alone produces now and then; 1 clinic lies outside the 99.8% limits and is "
        "worth a closer look: C3 (below).")
    assert captions.funnel_caption(clinics.head(0), 0.5) == (
        "No clinic had 11 or more analysed patients, so clinics cannot be compared.")


def test_trajectory_caption(trajectories):
    assert captions.trajectory_caption(trajectories, LABELS) == (
        "For all patients, average pain before the session fell from 6.2 at session 1 to 2.9 at session 12 "
        "(0-10 scale; 215 patients still attending at session 12).")
    assert captions.trajectory_caption(trajectories, LABELS, "parkinsons") == (
        "Too few patients with Parkinson's spasms to show pain across sessions.")


def test_trend_caption(trend):
    assert captions.trend_caption(trend) == (
        "In 2026-W47, 120 sessions were delivered (18% more than the 12-week average of 102) and fewer than 11 "
        "new episodes of care started; the responder rate (at least 30% less pain) was 75% (95% CI 65-85%), "
        "against a 12-week average of 52%.")
    assert captions.trend_caption(pl.DataFrame(schema=TREND_SCHEMA)) == "No weeks to report yet."


def test_data_quality_caption(rejected):
    assert captions.data_quality_caption(rejected, FILES, rows_read=78_000) == (
        f"312 rows (0.4%) were rejected; the most common reason: \"{LONG_REASON}\" (150 rows); 1 export file "
        "was refused and needs to be sent again.")
    assert captions.data_quality_caption(rejected.head(0), {"ingested": 3}, rows_read=1614) == (
        "No rows were rejected: all 1,614 rows read were accepted.")


def test_number_formats():
    assert [captions.fmt_pct(x) for x in (0.0, 0.004, 0.545, 0.996, 1.0)] == ["0%", "<1%", "55%", ">99%", "100%"]
    assert captions.fmt_points(-0.04) == "0.0" and captions.fmt_points(2.25) in ("2.2", "2.3")
    assert captions.fmt_share_small(312, 78_000) == "0.4%" and captions.fmt_share_small(3, 78_000) == "<0.1%"


def test_trajectory_legend_hides_a_count_that_the_total_would_give_away(trajectories):
    # without multiple sclerosis, parkinsons' 7 = 539 - 412 - 120: neck pain's count is hidden too
    frame = trajectories.filter(pl.col("condition") != "multiple_sclerosis").with_columns(
        pl.when(pl.col("condition") == "ALL").then(pl.col("n") - 6).otherwise(pl.col("n")).alias("n"))
    legend = [t.get_text() for t in trajectory_plot(frame, LABELS).axes[0].get_legend().get_texts()]
    assert legend == ["Low back pain (n=412)", "Neck pain (n not shown)", "All conditions (n=539)"]


# --------------------------------------------------------------------------------------
# PNG output: one draw, cropped like savefig(bbox_inches="tight")
# --------------------------------------------------------------------------------------

def _savefig_png(fig: Figure) -> bytes:
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=charts.SAVE_DPI, bbox_inches="tight", facecolor="white")
    return buffer.getvalue()


def _pixels(data: bytes):
    import io

    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB")).astype(int)


@pytest.mark.parametrize("make", ["forest", "km", "trend", "funnel", "data_quality"])
def test_png_is_the_picture_savefig_tight_gives(make, summary, km, trend, clinics, rejected):
    """Same size, and the same pixels but for anti-aliasing at a sub-pixel shift (and dash phases)."""
    build = {"forest": lambda: forest_plot(summary, LABELS), "km": lambda: km_curves_plot(km, summary, LABELS),
             "trend": lambda: trend_plot(trend), "funnel": lambda: funnel_plot(clinics, 0.5),
             "data_quality": lambda: data_quality_plot(rejected, {"ingested": 3, "refused": 1, "ignored": 0})}[make]
    ours, reference = _pixels(figure_to_png_bytes(build())), _pixels(_savefig_png(build()))
    assert ours.shape == reference.shape
    differs = (abs(ours - reference).max(axis=2) > 16).mean()
    assert differs < 0.05, f"{differs:.1%} of the pixels differ visibly"


def test_png_is_opaque_rgb_at_150_dpi_with_matplotlib_metadata(summary):
    import io

    from PIL import Image

    with Image.open(io.BytesIO(figure_to_png_bytes(responder_plot(summary, LABELS)))) as image:
        assert image.mode == "RGB"
        assert round(image.info["dpi"][0]) == charts.SAVE_DPI
        assert image.info["Software"].startswith("Matplotlib version")


def test_png_leaves_the_figure_as_it_was(summary):
    fig = forest_plot(summary, LABELS)
    canvas, dpi, facecolor = fig.canvas, fig.dpi, fig.get_facecolor()
    first = figure_to_png_bytes(fig)
    assert fig.canvas is canvas and fig.dpi == dpi and fig.get_facecolor() == facecolor
    # drawn again (constrained layout starts from its first result, as with savefig): same size
    assert _pixels(figure_to_png_bytes(fig)).shape == _pixels(first).shape


def test_png_of_a_figure_drawing_outside_its_canvas_is_not_cut(summary):
    """A crop of the canvas would lose what lies beyond it: savefig's wider picture is kept."""
    fig = forest_plot(summary, LABELS)
    fig.text(1.15, 0.5, "beyond the right edge", fontsize=12)
    reference = _pixels(_savefig_png(forest_plot(summary, LABELS)))
    ours = _pixels(figure_to_png_bytes(fig))
    assert ours.shape[1] > reference.shape[1] + 100


@pytest.mark.parametrize("props", [dict(size=8.5), dict(size=12.5, weight="bold"), dict(size=7.5, style="italic"),
                                   dict(size=10, family="monospace"), dict(size=9.5, family="serif")])
def test_cached_font_metrics_are_the_ones_matplotlib_computes(props):
    """The renderer's line-metrics hook must not move any text (matplotlib's own computation otherwise)."""
    from matplotlib.backends.backend_agg import RendererAgg

    fig = Figure(figsize=(4, 3), dpi=charts.SAVE_DPI)
    text = fig.text(0.1, 0.5, "Two lines: gyp\nÅ second — line", **props)
    plain = text.get_window_extent(RendererAgg(600, 450, charts.SAVE_DPI))
    cached_renderer = charts._canvas_class()(fig).get_renderer()
    assert hasattr(cached_renderer, "_get_font_height_metrics")
    assert text.get_window_extent(cached_renderer).bounds == plain.bounds

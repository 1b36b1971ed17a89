"""Charts for the weekly directors' report: pure functions, each returning a new Figure.

Every chart is built with the object-oriented API on a fresh ``matplotlib.figure.Figure``
(no pyplot, no rcParams changes), so it is safe under the Agg backend, in threads and in
Dagster workers. Conventions shared by every chart:

* one colour-blind-safe palette (Okabe & Ito 2008), :data:`OKABE_ITO`, with the roles
  each colour plays in :data:`PALETTE`;
* a plain-language headline (``fig.suptitle``), a panel title on every axes saying what
  is drawn, axis labels with units, and the number of patients (n) shown;
* 8 in wide (A4 portrait text width), 4.5 in tall unless rows or panels need more; saved
  at 150 dpi by :func:`save_figure`;
* METRICS.md "Publishing": counts from 1 to k - 1 are shown as ``<k``, nothing is drawn
  for a statistic over fewer than k patients, counts beside a total use the same
  complementary suppression as the report tables (:mod:`pipelines.reports.publish`),
  clinics are never ranked and nothing is shown per therapist.

``summary`` may be the condition_summary table (counts as integers) or its published
form from :func:`pipelines.reports.publish.publish_summary` (counts as text such as
``"<11"`` or ``"—"``); both give the same chart.
"""

from __future__ import annotations

import io
import math
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Polygon
from matplotlib.ticker import MaxNLocator, PercentFormatter
from matplotlib.transforms import blended_transform_factory

from pipelines.reports.publish import DASH, count_text, suppress_parts

ALL = "ALL"
ALL_LABEL = "All conditions"
#: smallest published count (METRICS.md, k = 11; the ``min_cell_size`` setting)
MIN_CELL_SIZE = 11

FIG_WIDTH = 8.0
FIG_HEIGHT = 4.5
SAVE_DPI = 150

#: Okabe & Ito (2008) "Color Universal Design" palette: distinguishable with every common
#: colour-vision deficiency. Yellow is kept out of lines and dots (too pale on white).
OKABE_ITO = {
    "black": "#000000", "orange": "#E69F00", "sky_blue": "#56B4E9", "bluish_green": "#009E73",
    "yellow": "#F0E442", "blue": "#0072B2", "vermillion": "#D55E00", "reddish_purple": "#CC79A7",
}
#: the role each colour plays, the same in every chart
PALETTE = {
    "condition": OKABE_ITO["blue"],
    "overall": OKABE_ITO["black"],
    "responder_30": OKABE_ITO["blue"],
    "responder_50": OKABE_ITO["orange"],
    "sessions": OKABE_ITO["sky_blue"],
    "new_episodes": OKABE_ITO["bluish_green"],
    "rate": OKABE_ITO["blue"],
    "clinic": OKABE_ITO["blue"],
    "outlier": OKABE_ITO["vermillion"],
    "rejected": OKABE_ITO["vermillion"],
    "ingested": OKABE_ITO["bluish_green"],
    "refused": OKABE_ITO["vermillion"],
    "ignored": "#8C8C8C",
    "limit": "#4D4D4D",
    "reference": "#8C8C8C",
    "muted": "#6E6E6E",
    "grid": "#E6E6E6",
}
#: line colours for several conditions on one axes, in order
LINE_COLOURS = [OKABE_ITO[c] for c in ("blue", "orange", "bluish_green", "vermillion", "reddish_purple", "sky_blue")]

#: two-sided z for the funnel plot's control limits (Spiegelhalter 2005): 95% and 99.8%
Z_95 = 1.96
Z_998 = 3.09

TITLE_SIZE = 12.5
PANEL_TITLE_SIZE = 10
LABEL_SIZE = 9.5
TICK_SIZE = 8.5
NOTE_SIZE = 7.5
#: where a panel title sits (axes coordinates): at the top, where matplotlib's automatic
#: placement leaves it on these charts (ticks and labels below or beside the panel, none
#: above). Given, it spares each draw and layout pass that placement, which measures
#: every tick label again.
TITLE_Y = 1.0


# --------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------

def _figure(height: float = FIG_HEIGHT, width: float = FIG_WIDTH) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    fig.get_layout_engine().set(h_pad=0.06, w_pad=0.06, hspace=0.04, wspace=0.04)
    return fig


def _style(ax, grid: str | None = "x") -> None:
    """Quiet axes: no top/right frame, small ticks, a light grid behind the data."""
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    for side in ("left", "bottom"):
        ax.spines[side].set_color("#777777")
    ax.tick_params(labelsize=TICK_SIZE, colors="#333333", length=3)
    if grid:
        ax.grid(axis=grid, color=PALETTE["grid"], linewidth=0.8)
        ax.set_axisbelow(True)


def _headline(fig: Figure, text: str) -> None:
    fig.suptitle(text, fontsize=TITLE_SIZE, fontweight="bold")


def _panel_title(ax, text: str) -> None:
    ax.set_title(text, fontsize=PANEL_TITLE_SIZE, color="#333333", y=TITLE_Y)


def _labels(ax, xlabel: str | None = None, ylabel: str | None = None) -> None:
    if xlabel is not None:
        ax.set_xlabel(xlabel, fontsize=LABEL_SIZE)
    if ylabel is not None:
        ax.set_ylabel(ylabel, fontsize=LABEL_SIZE)


def _footnote(fig: Figure, ax, text: str, width: int = 125) -> None:
    """A grey note across the bottom of the figure, left-aligned (the layout keeps room for it).

    ``ax`` is the panel the note belongs under (kept for callers; the note spans the figure).
    """
    wrapped = "\n".join(textwrap.fill(part, width) for part in text.split("\n"))
    fig.supxlabel(wrapped, x=0.01, ha="left", fontsize=NOTE_SIZE, color=PALETTE["muted"], linespacing=1.3)


def _empty(ax, message: str) -> None:
    ax.text(0.5, 0.5, message, transform=ax.transAxes, ha="center", va="center", fontsize=LABEL_SIZE + 1,
            color=PALETTE["muted"], wrap=True)


def label_for(code: str, labels: dict[str, str]) -> str:
    """Display name of a condition code (``ALL`` -> "All conditions" unless labels says otherwise)."""
    if code in labels:
        return labels[code]
    if code == ALL:
        return ALL_LABEL
    return code.replace("_", " ").capitalize()


def _finite(value) -> bool:
    return value is not None and isinstance(value, (int, float)) and math.isfinite(value)


def _num(value) -> float:
    return float(value) if _finite(value) else float("nan")


def format_count(n: int) -> str:
    return f"{int(n):,}"


# --------------------------------------------------------------------------------------
# Publishing rules applied to the summary table
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PublishedRow:
    """One summary row as a chart may show it."""

    code: str
    label: str
    n_text: str          # "1,234", "<11", "—" (hidden beside a total), "0" or "" (unknown)
    n_value: int | None  # the count, when it may be used for ordering (never drawn as such)
    row: dict            # the statistics; blank where they may not be shown

    @property
    def n_label(self) -> str:
        """"n=1,234", "n<11", "n not shown" (complementary suppression) or ""."""
        if not self.n_text:
            return ""
        if self.n_text.startswith("<"):
            return f"n{self.n_text}"
        if self.n_text == DASH:
            return "n not shown"
        return f"n={self.n_text}"

    @property
    def display(self) -> str:
        return f"{self.label} ({self.n_label})" if self.n_label else self.label

    def shows(self, column: str) -> bool:
        return _finite(self.row.get(column))

    @property
    def withheld_text(self) -> str:
        """Why a row has nothing drawn."""
        if self.n_text.startswith("<"):
            return f"fewer than {self.n_text[1:]} patients"
        if self.n_text == "0":
            return "no patients analysed yet"
        return "hidden to protect a smaller group's count"


def suppressed_count_texts(parts: list[int], k: int, total: int | None) -> tuple[list[str], str]:
    """Count texts for parts published beside their total (``None``: no total shown).

    Delegates to :func:`pipelines.reports.publish.suppress_parts`, so a chart hides exactly
    the cells the report tables hide (two different choices would, together, give cells away).
    """
    result = suppress_parts(parts, k, total_shown=total is not None)
    cells = getattr(result, "parts", result)
    total_cell = getattr(result, "total", None)
    part_texts = [cell.text(k) for cell in cells]
    if total is None:
        return part_texts, ""
    if total_cell is not None and total_cell.value == total:
        return part_texts, total_cell.text(k)
    return part_texts, count_text(total, k)


def _parse_count(text: str) -> int | None:
    try:
        return int(text.replace(",", ""))
    except (ValueError, AttributeError):
        return None


def published_rows(summary: pl.DataFrame, labels: dict[str, str],
                   min_cell_size: int = MIN_CELL_SIZE) -> tuple[list[PublishedRow], PublishedRow | None]:
    """The condition rows and the ALL row of ``summary`` as they may be published.

    Counts get primary and complementary suppression (the same rule as the report tables:
    :func:`pipelines.reports.publish.suppress_parts`, ALL being the total); the statistics
    of a row with fewer than k analysed patients (or flagged ``suppressed``) are blanked
    even if the caller forgot to. Counts already published as text are taken as they are.
    """
    if summary.height == 0 or "condition" not in summary.columns:
        return [], None
    k = min_cell_size
    records = summary.to_dicts()
    parts = [r for r in records if r["condition"] != ALL]
    pooled = [r for r in records if r["condition"] == ALL]
    n_column = summary.schema.get("n_analysed")
    texts: dict[str, str] = {}
    values: dict[str, int | None] = {}
    if n_column == pl.String:
        for r in records:
            texts[r["condition"]] = r["n_analysed"] or ""
            values[r["condition"]] = _parse_count(r["n_analysed"] or "")
    else:
        counts = [int(r.get("n_analysed") or 0) for r in parts]
        pooled_n = int(pooled[0].get("n_analysed") or 0) if pooled else None
        part_texts, total_text = suppressed_count_texts(counts, k, pooled_n)
        for r, c, text in zip(parts, counts, part_texts):
            texts[r["condition"]] = text
            values[r["condition"]] = c
        if pooled:
            texts[ALL] = total_text
            values[ALL] = pooled_n

    def make(r: dict) -> PublishedRow:
        code = r["condition"]
        n_text = texts.get(code, "")
        n = values.get(code)
        small = bool(r.get("suppressed")) or n_text.startswith("<") or (n is not None and n < k)
        row = {c: (None if small and c not in ("condition", "n_episodes", "n_analysed", "suppressed") else v)
               for c, v in r.items()}
        # an ordering key only where the count is published or at least k
        return PublishedRow(code, label_for(code, labels), n_text, None if small else n, row)

    return [make(r) for r in parts], (make(pooled[0]) if pooled else None)


# --------------------------------------------------------------------------------------
# 1. Forest plot: change in pain by condition
# --------------------------------------------------------------------------------------

def _row_axes_height(n_rows: int) -> float:
    return max(3.4, 2.1 + 0.3 * n_rows)


def _value_column(ax, y: float, text: str, **kwargs) -> None:
    trans = blended_transform_factory(ax.transAxes, ax.transData)
    ax.text(1.02, y, text, transform=trans, ha="left", va="center", fontsize=TICK_SIZE, **kwargs)


def _column_header(ax, top_y: float, text: str) -> None:
    """Room above the first row, and a header over the value column at the right."""
    ax.set_ylim(-0.7, top_y + 1.1)
    trans = blended_transform_factory(ax.transAxes, ax.transData)
    ax.text(1.02, top_y + 0.75, text, transform=trans, ha="left", va="center", fontsize=TICK_SIZE,
            fontweight="bold", color="#333333")


def _withheld_note(ax, y: float, text: str) -> None:
    trans = blended_transform_factory(ax.transAxes, ax.transData)
    ax.text(0.015, y, text, transform=trans, ha="left", va="center", fontsize=TICK_SIZE, style="italic",
            color=PALETTE["muted"])


def _row_labels(ax, rows, ordered, pooled, ys: dict, header: str) -> None:
    """One y tick per condition row (ALL in bold at the bottom) and the value column's header."""
    if not rows and pooled is None:
        _empty(ax, "No patients analysed yet")
        ax.set_yticks([])
        return
    all_rows = ordered + ([pooled] if pooled is not None else [])
    ax.set_yticks([ys[r.code] for r in all_rows], [r.display for r in all_rows])
    if pooled is not None:
        ax.get_yticklabels()[-1].set_fontweight("bold")
    _column_header(ax, max(ys.values()), header)


def _row_layout(rows: list[PublishedRow], pooled: PublishedRow | None, drawn: list[PublishedRow]):
    """y positions: drawn rows top-down, then withheld rows, a gap, then ALL at the bottom."""
    withheld = [r for r in rows if r not in drawn]
    withheld.sort(key=lambda r: r.label)
    ordered = drawn + withheld
    ys = {}
    top = len(ordered) + (1.4 if pooled is not None else 0)
    for i, r in enumerate(ordered):
        ys[r.code] = top - i
    if pooled is not None:
        ys[ALL] = 0.0
    return ordered, withheld, ys


def _format_points(value: float) -> str:
    text = f"{value:.1f}"
    return "0.0" if text == "-0.0" else text


def forest_plot(summary: pl.DataFrame, labels: dict[str, str], *, min_cell_size: int = MIN_CELL_SIZE) -> Figure:
    """Mean change in pain (0-10 NRS points, positive = less pain) with its 95% CI per condition.

    Rows sorted by mean change (largest fall on top), each labelled with its n; rows with
    fewer than k patients are listed with "fewer than 11 patients" instead of a point;
    the ALL row is a diamond at the bottom; a vertical line marks no change.
    """
    rows, pooled = published_rows(summary, labels, min_cell_size)
    drawn = sorted((r for r in rows if r.shows("mean_change")), key=lambda r: (-r.row["mean_change"], r.label))
    ordered, withheld, ys = _row_layout(rows, pooled, drawn)
    n_rows = len(ordered) + (1 if pooled is not None else 0)
    fig = _figure(_row_axes_height(n_rows))
    ax = fig.add_subplot()
    _style(ax, grid="x")
    _headline(fig, "How much did pain fall? Average change by condition")
    _panel_title(ax, "Average change from first to latest pain rating, with 95% confidence interval")
    _labels(ax, "Change in pain (points on the 0-10 scale; positive = less pain)", "Condition (n = patients analysed)")

    xs: list[float] = [0.0]
    for r in drawn:
        m, lo, hi = r.row["mean_change"], r.row.get("mean_change_ci_low"), r.row.get("mean_change_ci_high")
        y = ys[r.code]
        if _finite(lo) and _finite(hi):
            ax.hlines(y, lo, hi, color=PALETTE["condition"], linewidth=1.8)
            xs += [lo, hi]
        ax.plot([m], [y], marker="s", markersize=6.5, color=PALETTE["condition"], linestyle="none")
        xs.append(m)
        _value_column(ax, y, _ci_text(m, lo, hi))
    for r in withheld:
        _withheld_note(ax, ys[r.code], r.withheld_text)
    if pooled is not None:
        y = ys[ALL]
        if pooled.shows("mean_change"):
            m = pooled.row["mean_change"]
            lo, hi = pooled.row.get("mean_change_ci_low"), pooled.row.get("mean_change_ci_high")
            lo = lo if _finite(lo) else m
            hi = hi if _finite(hi) else m
            ax.add_patch(Polygon([(lo, y), (m, y + 0.3), (hi, y), (m, y - 0.3)], closed=True,
                                 facecolor=PALETTE["overall"], edgecolor=PALETTE["overall"]))
            xs += [lo, hi]
            _value_column(ax, y, _ci_text(m, lo, hi), fontweight="bold")
        else:
            _withheld_note(ax, y, pooled.withheld_text)
        ax.axhline(0.7, color="#BBBBBB", linewidth=0.8)
    _row_labels(ax, rows, ordered, pooled, ys, "Mean (95% CI)")
    ax.axvline(0, color="#333333", linewidth=1.0, zorder=1)
    lo_x, hi_x = min(xs), max(xs)
    pad = max(0.25, 0.08 * (hi_x - lo_x))
    ax.set_xlim(lo_x - pad, hi_x + pad)
    ax.tick_params(axis="y", length=0)
    ax.spines["left"].set_visible(False)
    _footnote(fig, ax, "Each patient's change is their first pain rating minus their latest one. There is no untreated "
                       "comparison group, so part of the change may be natural recovery. Conditions with fewer than "
                       f"{min_cell_size} analysed patients are not shown (privacy).")
    return fig


def _ci_text(mean: float, lo, hi) -> str:
    if _finite(lo) and _finite(hi):
        return f"{_format_points(mean)} ({_format_points(lo)} to {_format_points(hi)})"
    return _format_points(mean)


# --------------------------------------------------------------------------------------
# 2. Kaplan-Meier: share of patients improved by session
# --------------------------------------------------------------------------------------

def _grid_shape(n: int) -> tuple[int, int]:
    if n <= 1:
        return 1, 1
    if n in (2, 4):
        return math.ceil(n / 2), 2
    return math.ceil(n / 3), 3


def km_curves_plot(km: pl.DataFrame, summary: pl.DataFrame, labels: dict[str, str], max_panels: int = 9, *,
                   min_cell_size: int = MIN_CELL_SIZE, max_session: int | None = 20,
                   threshold_pct: float = 30.0) -> Figure:
    """Share of patients improved (1 - S(t), Kaplan-Meier) by sessions attended, one panel each.

    Panels: ALL first (left out when there is only one condition: it would repeat it),
    then the conditions with at least k analysed patients, largest first, up to
    ``max_panels``. Each shows the step curve, its 95% band (1 - ci_high .. 1 - ci_low),
    a dashed 50% line and the median sessions with its 95% CI at 50%.
    """
    rows, pooled = published_rows(summary, labels, min_cell_size)
    with_curve = set(km["condition"].unique().to_list()) if km.height else set()
    # rows whose count is hidden only to protect a smaller one (DASH) have at least k patients
    eligible = sorted((r for r in rows if ((r.n_value or 0) >= min_cell_size or r.n_text == DASH)
                       and r.code in with_curve), key=lambda r: (-(r.n_value or 0), r.label))
    panels: list[PublishedRow] = []
    if (pooled is not None and pooled.n_value is not None and pooled.n_value >= min_cell_size
            and ALL in with_curve and len(rows) > 1):
        panels.append(pooled)
    panels += eligible
    panels = panels[:max(1, max_panels)]

    n_rows, n_cols = _grid_shape(len(panels))
    fig = _figure(max(FIG_HEIGHT, 1.5 + 2.1 * n_rows))
    _headline(fig, f"How many sessions until patients improve by {threshold_pct:.0f}%?")
    if not panels:
        ax = fig.add_subplot()
        _style(ax, grid="y")
        _panel_title(ax, f"No condition has {min_cell_size} or more analysed patients")
        _labels(ax, "Sessions attended", "Patients improved (%)")
        ax.set_ylim(0, 100)
        ax.yaxis.set_major_formatter(PercentFormatter(xmax=100, decimals=0))
        _empty(ax, "Too few patients to show")
        return fig

    curves = {c: g.sort("t") for (c,), g in km.filter(pl.col("condition").is_in([p.code for p in panels]))
              .group_by("condition")}
    t_max = max(float(curves[p.code]["t"].max()) for p in panels)
    if max_session is not None:
        t_max = min(t_max, float(max_session))
    t_max = max(t_max, 1.0)

    first = None
    axes = []
    for i, panel in enumerate(panels):
        ax = fig.add_subplot(n_rows, n_cols, i + 1, sharex=first, sharey=first)
        first = first or ax
        axes.append(ax)
        _style(ax, grid="y")
        colour = PALETTE["overall"] if panel.code == ALL else PALETTE["condition"]
        curve = curves[panel.code]
        t = curve["t"].to_numpy()
        improved = 100 * (1 - curve["survival"].to_numpy())
        band_low = 100 * (1 - curve["ci_high"].fill_null(np.nan).to_numpy())
        band_high = 100 * (1 - curve["ci_low"].fill_null(np.nan).to_numpy())
        # a short stub after the last time makes the final level visible (lifelines ends there)
        stub = max(0.3, 0.02 * t_max)
        t = np.append(t, t[-1] + stub)
        improved, band_low, band_high = (np.append(a, a[-1]) for a in (improved, band_low, band_high))
        ax.fill_between(t, band_low, band_high, step="post", color=colour, alpha=0.18, linewidth=0)
        ax.step(t, improved, where="post", color=colour, linewidth=1.8)
        ax.axhline(50, color=PALETTE["reference"], linestyle="--", linewidth=0.9)
        # the note goes bottom right, unless the curve is still low there (then top left)
        right = improved[max(int(np.searchsorted(t, 0.6 * t_max, side="right")) - 1, 0):]
        corner = "top left" if len(right) and np.nanmin(right) < 30 else "bottom right"
        _mark_median(ax, panel, colour, t_max, corner)
        title = f"{panel.label} ({panel.n_label})" if panel.n_label else panel.label
        ax.set_title(title, fontsize=PANEL_TITLE_SIZE - 0.5, color="#333333", y=TITLE_Y,
                     fontweight="bold" if panel.code == ALL else "normal")
        row, col = divmod(i, n_cols)
        last_in_column = i + n_cols >= len(panels)
        if last_in_column:
            _labels(ax, "Sessions attended")
        else:
            ax.tick_params(labelbottom=False)
        if col == 0:
            _labels(ax, ylabel="Improved (%)")
        else:
            ax.tick_params(labelleft=False)
    first.set_xlim(0, t_max + max(0.5, 0.03 * t_max))
    first.set_ylim(0, 100)
    first.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=6))
    first.yaxis.set_major_formatter(PercentFormatter(xmax=100, decimals=0))
    first.set_yticks([0, 25, 50, 75, 100])
    bottom = axes[-1]
    left_out = [p.label for p in eligible if p not in panels]
    more = f" Not drawn for space: {', '.join(left_out)}." if left_out else ""
    _footnote(fig, bottom, f"Line: share of patients whose pain had fallen by at least {threshold_pct:.0f}% after that "
                           "many sessions (Kaplan-Meier estimate, which counts patients who stopped early fairly); "
                           "shaded: 95% confidence band; dot on the dashed 50% line: the session by which half had "
                           f"improved, with its 95% CI. Conditions with fewer than {min_cell_size} patients are not "
                           f"shown.{more}")
    return fig


def _mark_median(ax, panel: PublishedRow, colour: str, t_max: float, corner: str = "bottom right") -> None:
    where = (dict(x=0.97, y=0.06, ha="right", va="bottom") if corner == "bottom right"
             else dict(x=0.03, y=0.97, ha="left", va="top"))
    median = panel.row.get("median_sessions_to_response")
    if not _finite(median):
        ax.text(s="half not yet improved\n(median not reached)", transform=ax.transAxes, fontsize=NOTE_SIZE,
                color=PALETTE["muted"], **where)
        return
    lo, hi = panel.row.get("median_sessions_ci_low"), panel.row.get("median_sessions_ci_high")
    lo = lo if _finite(lo) else median
    if _finite(hi):
        ax.hlines(50, lo, min(hi, t_max), color=colour, linewidth=2.2)
    else:
        ax.annotate("", xy=(t_max, 50), xytext=(lo, 50), arrowprops=dict(arrowstyle="->", color=colour, lw=1.6))
    ax.plot([median], [50], marker="o", markersize=6.5, color=colour, markeredgecolor="white", zorder=5)
    ci = _session_ci_text(lo, hi)
    ax.text(s=f"half improved by session {median:g}\n(95% CI {ci})", transform=ax.transAxes,
            fontsize=NOTE_SIZE + 0.5, color="#333333", **where)


def _session_ci_text(lo, hi) -> str:
    low = f"{lo:g}" if _finite(lo) else "?"
    if not _finite(hi):
        return f"{low} to not reached"
    return f"{low}-{hi:g}"


# --------------------------------------------------------------------------------------
# 3. Pain trajectories by session number
# --------------------------------------------------------------------------------------

def trajectory_plot(trajectories: pl.DataFrame, labels: dict[str, str], conditions: list[str] | None = None,
                    max_session: int = 12, *, min_cell_size: int = MIN_CELL_SIZE, max_lines: int = 6) -> Figure:
    """Mean pre-session pain (0-10) by session number, 95% CI band, per condition and ALL.

    Default conditions: the ``max_lines`` with most patients at their first session. A
    point is drawn only where at least k patients have a score; the line breaks elsewhere.
    The legend shows n at session 1 (complementary suppression against the ALL total).
    """
    k = min_cell_size
    data = trajectories.filter((pl.col("session_number") >= 1) & (pl.col("session_number") <= max_session))
    first = (data.filter(pl.col("session_number") == 1).select("condition", "n")
             if data.height else pl.DataFrame(schema={"condition": pl.String, "n": pl.Int64}))
    first_n = dict(zip(first["condition"].to_list(), first["n"].to_list()))
    codes = sorted(c for c in first_n if c != ALL)
    part_texts, total_text = suppressed_count_texts([int(first_n[c]) for c in codes], k,
                                                    int(first_n[ALL]) if ALL in first_n else None)
    n_text = dict(zip(codes, part_texts))
    if ALL in first_n:
        n_text[ALL] = total_text

    drawable = data.filter((pl.col("n") >= k) & pl.col("mean_pre").is_not_null())
    has_points = set(drawable["condition"].unique().to_list())
    if conditions is None:
        ranked = sorted((c for c in codes if c in has_points and (first_n.get(c) or 0) >= k),
                        key=lambda c: (-first_n[c], label_for(c, labels)))
        chosen = ranked[:max_lines]
    else:
        chosen = [c for c in conditions if c != ALL and c in has_points]
    all_wanted = conditions is None or ALL in conditions
    one_condition = len(codes) <= 1 and conditions is None
    if ALL in has_points and all_wanted and not (one_condition and chosen):
        chosen = chosen + [ALL]

    fig = _figure()
    ax = fig.add_subplot()
    _style(ax, grid="y")
    _headline(fig, "Pain before each session, by session number")
    _panel_title(ax, f"Average pain before the session, with 95% confidence band (points with {k} or more patients)")
    _labels(ax, "Session number", "Pain before session (0-10)")
    handles = []
    colours = iter(LINE_COLOURS)
    sessions = np.arange(1, max_session + 1)
    for code in chosen:
        points = {r["session_number"]: r for r in drawable.filter(pl.col("condition") == code).iter_rows(named=True)}
        mean = np.array([_num(points[s]["mean_pre"]) if s in points else np.nan for s in sessions])
        lo = np.array([_num(points[s]["ci_low"]) if s in points else np.nan for s in sessions])
        hi = np.array([_num(points[s]["ci_high"]) if s in points else np.nan for s in sessions])
        is_all = code == ALL
        colour = PALETTE["overall"] if is_all else next(colours)
        ax.fill_between(sessions, lo, hi, color=colour, alpha=0.10 if is_all else 0.13, linewidth=0)
        (line,) = ax.plot(sessions, mean, color=colour, linewidth=2.4 if is_all else 1.7, marker="o",
                          markersize=3.5 if is_all else 3, zorder=4 if is_all else 3,
                          linestyle=(0, (4, 2)) if is_all else "-")
        label = label_for(code, labels)
        text = n_text.get(code, "")
        if text.startswith("<"):
            label += f" (n{text})"
        elif text == DASH:
            label += " (n not shown)"
        elif text:
            label += f" (n={text})"
        line.set_label(label)
        handles.append(line)
    ax.set_ylim(0, 10)
    ax.set_yticks(range(0, 11, 2))
    ax.set_xlim(0.6, max_session + 0.4)
    ax.set_xticks(sessions if max_session <= 16 else sessions[::2])
    if handles:
        ax.legend(handles=handles, loc="upper right", fontsize=TICK_SIZE - 0.5, frameon=True, framealpha=0.9,
                  edgecolor="none", ncols=2 if len(handles) > 3 else 1, title="Condition (patients at session 1)",
                  title_fontsize=TICK_SIZE - 0.5, alignment="left", columnspacing=1.2, handlelength=2.2)
        drawn_sessions = drawable.filter(pl.col("condition").is_in(chosen))["session_number"].unique()
        if drawn_sessions.len() < 2:
            ax.text(0.5, 0.2, "Pain was recorded before one session only, so no change across sessions can be shown",
                    transform=ax.transAxes, ha="center", va="center", fontsize=LABEL_SIZE - 0.5,
                    color=PALETTE["muted"])
    else:
        _empty(ax, f"Too few patients to show (fewer than {k} at every session)")
    _footnote(fig, ax, "Later sessions include only patients still attending, so the line also reflects who keeps "
                       "coming, not only how pain changes. 0 = no pain, 10 = worst pain imaginable.", width=115)
    return fig


# --------------------------------------------------------------------------------------
# 4. Responder rates
# --------------------------------------------------------------------------------------

def responder_plot(summary: pl.DataFrame, labels: dict[str, str], *, min_cell_size: int = MIN_CELL_SIZE) -> Figure:
    """Share of patients with at least 30% and at least 50% less pain, Wilson 95% CI, per condition.

    Sorted by the 30% rate (no clinic is ranked: these are conditions); ALL at the bottom.
    """
    rows, pooled = published_rows(summary, labels, min_cell_size)
    drawn = sorted((r for r in rows if r.shows("responder_30_rate")),
                   key=lambda r: (-r.row["responder_30_rate"], r.label))
    ordered, withheld, ys = _row_layout(rows, pooled, drawn)
    n_rows = len(ordered) + (1 if pooled is not None else 0)
    fig = _figure(_row_axes_height(n_rows))
    ax = fig.add_subplot()
    _style(ax, grid="x")
    _headline(fig, "How many patients improved meaningfully?")
    _panel_title(ax, "Share of patients whose pain fell by at least 30% or 50%, with 95% confidence interval")
    _labels(ax, "Patients (% of those analysed)", "Condition (n = patients analysed)")
    offsets = {"responder_30": 0.17, "responder_50": -0.17}
    markers = {"responder_30": "o", "responder_50": "D"}
    for r in drawn + ([pooled] if pooled is not None and pooled.shows("responder_30_rate") else []):
        big = r.code == ALL
        texts = []
        for key in ("responder_30", "responder_50"):
            rate = r.row.get(f"{key}_rate")
            if not _finite(rate):
                texts.append("–")
                continue
            y = ys[r.code] + offsets[key]
            lo, hi = r.row.get(f"{key}_ci_low"), r.row.get(f"{key}_ci_high")
            if _finite(lo) and _finite(hi):
                ax.hlines(y, 100 * lo, 100 * hi, color=PALETTE[key], linewidth=2.2 if big else 1.6)
            ax.plot([100 * rate], [y], marker=markers[key], markersize=7.5 if big else 6, color=PALETTE[key],
                    markeredgecolor=PALETTE["overall"] if big else PALETTE[key], linestyle="none")
            texts.append(f"{_round_pct(rate)}%")
        _value_column(ax, ys[r.code], " / ".join(texts), fontweight="bold" if big else "normal")
    for r in withheld:
        _withheld_note(ax, ys[r.code], r.withheld_text)
    if pooled is not None:
        ax.axhline(0.7, color="#BBBBBB", linewidth=0.8)
        if not pooled.shows("responder_30_rate"):
            _withheld_note(ax, ys[ALL], pooled.withheld_text)
    ax.set_xlim(0, 100)
    ax.xaxis.set_major_formatter(PercentFormatter(xmax=100, decimals=0))
    _row_labels(ax, rows, ordered, pooled, ys, "≥30% / ≥50%")
    ax.tick_params(axis="y", length=0)
    ax.spines["left"].set_visible(False)
    legend = [Line2D([], [], marker="o", color=PALETTE["responder_30"], linewidth=1.6,
                     label="At least 30% less pain (a moderately important change)"),
              Line2D([], [], marker="D", color=PALETTE["responder_50"], linewidth=1.6,
                     label="At least 50% less pain (a substantial change)")]
    fig.legend(handles=legend, loc="outside lower center", ncols=2, fontsize=TICK_SIZE, frameon=False)
    return fig


def _round_pct(share: float) -> int:
    return int(math.floor(100 * share + 0.5))


# --------------------------------------------------------------------------------------
# 5. Funnel plot of clinics
# --------------------------------------------------------------------------------------

def funnel_limits(p: float, n, z: float):
    """Control limits p ± z·sqrt(p(1 - p)/n) around a pooled proportion, clipped to 0..1.

    Normal approximation to the binomial (Spiegelhalter 2005, "Funnel plots for comparing
    institutional performance"); z = 1.96 for 95%, 3.09 for 99.8%. Returns (low, high),
    floats for a scalar ``n`` and arrays for an array.
    """
    n_arr = np.asarray(n, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        half = z * np.sqrt(p * (1.0 - p) / n_arr)
    low = np.clip(p - half, 0.0, 1.0)
    high = np.clip(p + half, 0.0, 1.0)
    if np.ndim(n) == 0:
        return float(low), float(high)
    return low, high


def classify_clinics(clinics: pl.DataFrame, pooled_rate: float) -> pl.DataFrame:
    """Each clinic's position against the limits: "within 95%", "between 95% and 99.8%", "outside 99.8%"."""
    rows = []
    for r in clinics.iter_rows(named=True):
        n, rate = r["n_analysed"], r["responder_30_rate"]
        if not _finite(rate) or not _finite(pooled_rate) or not n:
            band = "unknown"
        else:
            lo95, hi95 = funnel_limits(pooled_rate, n, Z_95)
            lo998, hi998 = funnel_limits(pooled_rate, n, Z_998)
            if rate < lo998 or rate > hi998:
                band = "outside 99.8%"
            elif rate < lo95 or rate > hi95:
                band = "between 95% and 99.8%"
            else:
                band = "within 95%"
        side = "above" if _finite(rate) and _finite(pooled_rate) and rate > pooled_rate else "below"
        rows.append({"clinic_id": str(r["clinic_id"]), "band": band, "side": side})
    return pl.DataFrame(rows, schema={"clinic_id": pl.String, "band": pl.String, "side": pl.String})


def funnel_plot(clinics: pl.DataFrame, pooled_rate: float, title_suffix: str = "", *,
                threshold_pct: float = 30.0, min_cell_size: int = MIN_CELL_SIZE) -> Figure:
    """Each clinic's responder rate against its number of analysed patients, with funnel limits.

    The pooled rate line and the 95% and 99.8% control limits are smooth curves over n;
    clinics outside the 99.8% limits are highlighted. Clinics are labelled, never ranked.
    """
    fig = _figure()
    ax = fig.add_subplot()
    _style(ax, grid="y")
    headline = "Do clinics differ more than chance would explain?"
    _headline(fig, f"{headline} {title_suffix}".strip())
    _labels(ax, "Patients analysed at the clinic (n)", f"Patients with at least {threshold_pct:.0f}% less pain (%)")
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=100, decimals=0))
    data = clinics.filter(pl.col("n_analysed").is_not_null() & pl.col("responder_30_rate").is_not_null()) \
        if clinics.height else clinics
    pooled_ok = _finite(pooled_rate)
    if data.height == 0:
        _panel_title(ax, "No clinic has enough analysed patients to compare")
        _empty(ax, f"No clinic has {min_cell_size} or more analysed patients")
        ax.set_xlim(0, 100)
        ax.set_ylim(0, 100)
        return fig
    n = data["n_analysed"].to_numpy().astype(float)
    rate = data["responder_30_rate"].to_numpy().astype(float)
    ids = [str(c) for c in data["clinic_id"].to_list()]
    bands = classify_clinics(data, pooled_rate)["band"].to_list()
    n_hi = max(n.max() * 1.15, 20.0)
    n_lo = max(2.0, min(n.min() * 0.6, 10.0))
    y_values = list(100 * rate)
    if pooled_ok:
        pooled_pct = _round_pct(pooled_rate)
        _panel_title(ax, f"Each dot is a clinic ({len(ids)} clinic{'s' if len(ids) != 1 else ''}); the funnel is the range expected by chance "
                         f"around the pooled rate of {pooled_pct}%")
        grid = np.linspace(n_lo, n_hi, 400)
        for z, style, name in ((Z_95, "--", "95%"), (Z_998, ":", "99.8%")):
            low, high = funnel_limits(pooled_rate, grid, z)
            ax.plot(grid, 100 * low, color=PALETTE["limit"], linestyle=style, linewidth=1.3)
            ax.plot(grid, 100 * high, color=PALETTE["limit"], linestyle=style, linewidth=1.3)
            ax.text(n_hi, 100 * high[-1], f" {name}", ha="left", va="center", fontsize=NOTE_SIZE + 0.5,
                    color=PALETTE["limit"])
            ax.text(n_hi, 100 * low[-1], f" {name}", ha="left", va="center", fontsize=NOTE_SIZE + 0.5,
                    color=PALETTE["limit"])
            # the visible part of the funnel sets the y range
            visible = grid >= max(n.min() * 0.8, n_lo)
            y_values += list(100 * low[visible]) + list(100 * high[visible])
        ax.axhline(100 * pooled_rate, color=PALETTE["overall"], linewidth=1.1)
        ax.text(n_hi, 100 * pooled_rate, " pooled", ha="left", va="center", fontsize=NOTE_SIZE + 0.5)
    else:
        _panel_title(ax, f"Each dot is a clinic ({len(ids)} clinic{'s' if len(ids) != 1 else ''}); pooled rate not available, so no limits drawn")
    outside = np.array([b == "outside 99.8%" for b in bands])
    ax.scatter(n[~outside], 100 * rate[~outside], s=42, color=PALETTE["clinic"], edgecolor="white", linewidth=0.8,
               zorder=4)
    if outside.any():
        ax.scatter(n[outside], 100 * rate[outside], s=70, color=PALETTE["outlier"], edgecolor=PALETTE["overall"],
                   linewidth=0.9, zorder=5, marker="D")
    y_lo = max(0.0, min(y_values) - 4)
    y_hi = min(100.0, max(y_values) + 4)
    ax.set_ylim(y_lo, y_hi)
    ax.set_xlim(0, n_hi)
    _label_points(ax, n, 100 * rate, ids, outside, (0, n_hi), (y_lo, y_hi))
    _footnote(fig, ax, "Dashed lines: 95% limits; dotted: 99.8% limits; solid: pooled rate. Small clinics scatter "
                       "more by chance, so the limits widen to the left. A clinic inside the funnel is consistent "
                       "with the pooled rate; a red diamond (outside the 99.8% limits) is worth a closer look (case "
                       "mix, data quality), not a verdict. Clinics are not ranked; clinics with fewer than "
                       f"{min_cell_size} analysed patients are left out.")
    return fig


def _label_points(ax, x, y, texts, highlight, xlim, ylim) -> None:
    """Label each point, trying four positions and keeping the first that overlaps no other label."""
    width_in, height_in = FIG_WIDTH * 0.8, FIG_HEIGHT * 0.6  # approximate plotting area
    sx = (xlim[1] - xlim[0]) / (width_in * 72)   # data units per point
    sy = (ylim[1] - ylim[0]) / (height_in * 72)
    placed: list[tuple[float, float, float, float]] = []
    points = [(xi, yi) for xi, yi in zip(x, y)]
    for i in np.argsort(-np.asarray(x)):
        w = (len(texts[i]) * NOTE_SIZE * 0.62 + 2) * sx
        h = (NOTE_SIZE + 2) * sy
        choice = None
        for dx, dy, ha, va in ((5, 4, "left", "bottom"), (5, -4, "left", "top"), (-5, 4, "right", "bottom"),
                               (-5, -4, "right", "top")):
            x0 = x[i] + dx * sx if ha == "left" else x[i] + dx * sx - w
            y0 = y[i] + dy * sy if va == "bottom" else y[i] + dy * sy - h
            box = (x0, y0, x0 + w, y0 + h)
            clash = any(not (box[2] < b[0] or box[0] > b[2] or box[3] < b[1] or box[1] > b[3]) for b in placed)
            hits = any(box[0] <= px <= box[2] and box[1] <= py <= box[3] for j, (px, py) in enumerate(points) if j != i)
            inside = box[0] >= xlim[0] and box[2] <= xlim[1] and box[1] >= ylim[0] and box[3] <= ylim[1]
            if not clash and not hits and inside:
                choice = (dx, dy, ha, va, box)
                break
        if choice is None:
            dx, dy, ha, va = (5, 4, "left", "bottom") if x[i] + w < xlim[1] else (-5, 4, "right", "bottom")
            box = (x[i], y[i], x[i] + w, y[i] + h) if ha == "left" else (x[i] - w, y[i], x[i], y[i] + h)
        else:
            dx, dy, ha, va, box = choice
        placed.append(box)
        ax.annotate(texts[i], (x[i], y[i]), xytext=(dx, dy), textcoords="offset points", ha=ha, va=va,
                    fontsize=NOTE_SIZE + 0.5, fontweight="bold" if highlight[i] else "normal",
                    color=PALETTE["outlier"] if highlight[i] else "#333333", zorder=6,
                    bbox=dict(boxstyle="square,pad=0.1", facecolor="white", edgecolor="none", alpha=0.8))


# --------------------------------------------------------------------------------------
# 6. Twelve-week trend
# --------------------------------------------------------------------------------------

def _published_weekly(values: list, k: int) -> list[int | None]:
    """Weekly counts as they may be drawn: None for suppressed (null, or 1..k-1)."""
    out = []
    for v in values:
        out.append(None if v is None or 1 <= int(v) < k else int(v))
    return out


def trend_plot(trend: pl.DataFrame, *, min_cell_size: int = MIN_CELL_SIZE, threshold_pct: float = 30.0) -> Figure:
    """Twelve weeks in three aligned panels: sessions per week, new episodes per week, responder rate.

    Suppressed cells (null, or a count from 1 to k - 1) are not drawn and carry a "<11"
    marker; the responder rate has its Wilson 95% band.
    """
    k = min_cell_size
    fig = _figure(6.2)
    _headline(fig, f"The last {trend.height or 12} weeks: activity and results")
    ax1 = fig.add_subplot(3, 1, 1)
    ax2 = fig.add_subplot(3, 1, 2, sharex=ax1)
    ax3 = fig.add_subplot(3, 1, 3, sharex=ax1)
    weeks = [str(w) for w in trend["week"].to_list()] if trend.height else []
    x = np.arange(len(weeks))
    for ax, column, colour, title, ylabel in (
            (ax1, "sessions", PALETTE["sessions"], "Sessions delivered", "Sessions per week"),
            (ax2, "new_episodes", PALETTE["new_episodes"], "New episodes of care (referrals started)",
             "Episodes per week")):
        _style(ax, grid="y")
        _panel_title(ax, title)
        _labels(ax, ylabel=ylabel)
        values = _published_weekly(trend[column].to_list(), k) if trend.height else []
        heights = np.array([v if v is not None else 0 for v in values], dtype=float)
        ax.bar(x, heights, width=0.7, color=colour)
        top = max(heights.max() if len(heights) else 0, 1.0)
        ax.set_ylim(0, top * 1.22)
        for xi, v in zip(x, values):
            text = f"<{k}" if v is None else format_count(v)
            ax.text(xi, (v or 0) + top * 0.03, text, ha="center", va="bottom", fontsize=NOTE_SIZE,
                    color=PALETTE["muted"] if v is None else "#333333")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True, nbins=4))
        if not any(v for v in values if v is not None):
            ax.set_yticks([0])
        ax.tick_params(labelbottom=False)
    _style(ax3, grid="y")
    _panel_title(ax3, f"Responders among patients rated that week (pain at least {threshold_pct:.0f}% below baseline), 95% band")
    _labels(ax3, "ISO week", "Patients improved (%)")
    if trend.height:
        rate, lo, hi, n_text, none = [], [], [], [], []
        for r in trend.iter_rows(named=True):
            n = r.get("responder_n")
            ok = _finite(r.get("responder_rate")) and n is not None and n >= k
            rate.append(100 * r["responder_rate"] if ok else np.nan)
            lo.append(100 * _num(r.get("responder_ci_low")) if ok else np.nan)
            hi.append(100 * _num(r.get("responder_ci_high")) if ok else np.nan)
            n_text.append(count_text(n, k) if n is not None else "")
            none.append(n == 0)
        rate, lo, hi = np.array(rate), np.array(lo), np.array(hi)
        ax3.fill_between(x, lo, hi, color=PALETTE["rate"], alpha=0.15, linewidth=0)
        ax3.plot(x, rate, color=PALETTE["rate"], linewidth=1.8, marker="o", markersize=4)
        for xi, v, t, empty in zip(x, rate, n_text, none):
            if np.isnan(v) and not empty:
                ax3.text(xi, 50, f"<{k}", ha="center", va="center", fontsize=NOTE_SIZE, color=PALETTE["muted"])
            if t:
                ax3.text(xi, 3, f"n={t}" if not t.startswith("<") else f"n{t}", ha="center", va="bottom",
                         fontsize=NOTE_SIZE - 0.5, color=PALETTE["muted"])
        ax3.set_xticks(x, weeks, fontsize=TICK_SIZE - 1 if len(weeks) > 10 else TICK_SIZE - 0.5,
                       rotation=30 if len(weeks) > 13 else 0, ha="right" if len(weeks) > 13 else "center")
        ax3.set_xlim(-0.6, len(weeks) - 0.4)
    else:
        _empty(ax3, "No weeks to show")
        ax3.set_xticks([])
    ax3.set_ylim(0, 100)
    ax3.set_yticks([0, 25, 50, 75, 100])
    ax3.yaxis.set_major_formatter(PercentFormatter(xmax=100, decimals=0))
    _footnote(fig, ax3, f"<{k}: fewer than {k}, not shown (privacy). n under the rate: patients it is based on. "
                        "Band: 95% Wilson confidence interval; a wide band means few patients that week.")
    return fig


# --------------------------------------------------------------------------------------
# 7. Data quality
# --------------------------------------------------------------------------------------

def _wrap_reason(reason: str, width: int = 38, lines: int = 2) -> str:
    wrapped = textwrap.wrap(str(reason), width, break_on_hyphens=False) or [""]
    if len(wrapped) > lines:
        wrapped = wrapped[:lines]
        wrapped[-1] = textwrap.shorten(wrapped[-1] + " …", width, placeholder=" …")
        if not wrapped[-1].endswith("…"):
            wrapped[-1] = wrapped[-1][: width - 1] + "…"
    return "\n".join(wrapped)


def reason_counts(rejected_by_reason: pl.DataFrame) -> pl.DataFrame:
    """(reason, n) with n > 0, most common first; also takes ``pipeline.rejection_reasons``' (reason, len)."""
    frame = rejected_by_reason
    if "n" not in frame.columns:
        other = next((c for c in ("len", "count", "rows") if c in frame.columns), None)
        frame = frame.rename({other: "n"}) if other else frame.with_columns(pl.lit(0).alias("n"))
    if "reason" not in frame.columns:
        frame = frame.with_columns(pl.lit("").alias("reason"))
    return (frame.select(pl.col("reason").cast(pl.String), pl.col("n").cast(pl.Int64)).filter(pl.col("n") > 0)
            .sort(["n", "reason"], descending=[True, False]))


def data_quality_plot(rejected_by_reason: pl.DataFrame, files: dict[str, int], *, rows_read: int | None = None,
                      max_reasons: int = 10) -> Figure:
    """Rejected rows by reason (horizontal bars) beside the export files ingested, refused and ignored.

    ``rejected_by_reason``: columns reason, n (or ``len``, as ``pipelines.pipeline.rejection_reasons``
    gives them); ``files``: counts keyed ingested / refused / ignored; ``rows_read``, when given,
    puts the rejected rows in proportion.
    """
    data = reason_counts(rejected_by_reason)
    reasons = [str(r) for r in data["reason"].to_list()] if data.height else []
    counts = [int(v) for v in data["n"].to_list()] if data.height else []
    if len(reasons) > max_reasons:
        rest = sum(counts[max_reasons - 1:])
        others = len(reasons) - (max_reasons - 1)
        reasons = reasons[:max_reasons - 1] + [f"{others} other reasons"]
        counts = counts[:max_reasons - 1] + [rest]
    total = sum(counts)
    fig = _figure(max(FIG_HEIGHT, 1.9 + 0.42 * len(reasons)))
    _headline(fig, "Data quality: what was imported and what was rejected")
    grid = fig.add_gridspec(1, 2, width_ratios=[3.4, 1])
    ax = fig.add_subplot(grid[0, 0])
    side = fig.add_subplot(grid[0, 1])
    _style(ax, grid="x")
    share = f" of {format_count(rows_read)} read ({_share_text(total, rows_read)})" if rows_read else ""
    _panel_title(ax, f"Rows rejected by reason: {format_count(total) if total else 'none'}{share}")
    _labels(ax, "Rows rejected (count)", "Reason")
    if reasons:
        y = np.arange(len(reasons))[::-1]
        colours = [PALETTE["ignored"] if r.endswith("other reasons") and i == max_reasons - 1 else PALETTE["rejected"]
                   for i, r in enumerate(reasons)]
        ax.barh(y, counts, color=colours, height=0.62)
        ax.set_yticks(y, [_wrap_reason(r) for r in reasons], fontsize=TICK_SIZE)
        for yi, c in zip(y, counts):
            ax.text(c, yi, f" {format_count(c)}", va="center", ha="left", fontsize=NOTE_SIZE + 0.5)
        ax.set_xlim(0, max(counts) * 1.15)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=5))
        ax.set_ylim(-0.6, len(reasons) - 0.4)
    else:
        ax.set_yticks([])
        ax.set_xlim(0, 1)
        ax.set_xticks([])
        _empty(ax, "No rows were rejected")
    ax.tick_params(axis="y", length=0)

    _style(side, grid="x")
    _panel_title(side, "Export files")
    _labels(side, "Files (count)")
    statuses = [("ingested", "Ingested"), ("refused", "Refused"), ("ignored", "Ignored")]
    statuses += [(key, key.capitalize()) for key in files if key not in dict(statuses)]
    values = [int(files.get(key, 0) or 0) for key, _ in statuses]
    colours = [PALETTE.get(key, PALETTE["ignored"]) for key, _ in statuses]
    y_files = np.arange(len(statuses))[::-1]
    side.barh(y_files, values, color=colours, height=0.62)
    side.set_yticks(y_files, [name for _, name in statuses], fontsize=TICK_SIZE)
    side.tick_params(axis="y", length=0)
    # the same bar thickness as the reasons beside it, files at the top
    side.set_ylim(len(statuses) - 0.4 - max(len(reasons), len(statuses)), len(statuses) - 0.4)
    top = max(values + [1])
    side.set_xlim(0, top * 1.3)
    side.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=3))
    for yi, v in zip(y_files, values):
        side.text(v, yi, f" {format_count(v)}", ha="left", va="center", fontsize=NOTE_SIZE + 0.5)
    _footnote(fig, ax, "Every rejected row is listed in rejected_rows.csv with its file, line, column and rule, so "
                       "clinic staff can correct the export. Refused files were not read at all (for example an "
                       "unknown layout); ignored files are not exports.")
    return fig


def _share_text(part: int, whole: int) -> str:
    if not whole:
        return ""
    share = 100 * part / whole
    if part == 0:
        return "0%"
    if share < 0.1:
        return "<0.1%"
    if share < 10:
        return f"{share:.1f}%"
    return f"{math.floor(share + 0.5):.0f}%"


# --------------------------------------------------------------------------------------
# 8. Output
# --------------------------------------------------------------------------------------

#: zlib level of the PNGs: with Pillow's zlib-ng, 3 gives slightly smaller files than the
#: default (6) in about 60% of the time; 9 or ``optimize`` are 4-5x slower for 3% less
PNG_COMPRESS_LEVEL = 3


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as a PNG at 150 dpi with a tight bounding box; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(figure_to_png_bytes(fig))
    return path


def figure_to_png_bytes(fig: Figure) -> bytes:
    """``fig`` as a PNG at 150 dpi on white, cropped to its tight bounding box (0.1 in margin).

    The picture ``fig.savefig(..., dpi=150, bbox_inches="tight", facecolor="white")`` gives,
    drawn once instead of twice: savefig lays the figure out and measures all its text in a
    first, invisible draw, then draws it again on a canvas of the cropped size (measuring
    the text again, as the renderer is new). Here the figure is laid out and drawn on its own
    canvas once, the tight box is measured with the same renderer (cached text sizes), and
    the pixels are cropped. The content is shifted by a whole number of pixels where savefig
    may shift it by a fraction, so a few anti-aliased edges can differ by one step; the
    layout, sizes and colours are the same. A figure drawing outside its own canvas (which
    the crop would cut off) falls back to savefig. The PNG is RGB when the picture is opaque
    (always, on the white background): the alpha channel would only be a second, all-white
    image for the PDF to strip.
    """
    try:
        pixels = _draw_cropped(fig, SAVE_DPI)
    except _NotCroppable:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=SAVE_DPI, bbox_inches="tight", facecolor="white",
                    pil_kwargs={"compress_level": PNG_COMPRESS_LEVEL})
        return buffer.getvalue()
    return _encode_png(pixels, SAVE_DPI)


def prepare_png_rendering() -> None:
    """Import what :func:`figure_to_png_bytes` needs now (e.g. before forking helper processes)."""
    from PIL import PngImagePlugin  # noqa: F401

    _canvas_class()


class _NotCroppable(Exception):
    """The figure draws outside its canvas: the crop would lose part of it."""


def _draw_cropped(fig: Figure, dpi: float) -> np.ndarray:
    """Draw ``fig`` once at ``dpi`` (running its layout engine) and crop it like bbox_inches="tight"."""
    import matplotlib as mpl
    from matplotlib.colors import to_rgba

    original_canvas, original_dpi = fig.canvas, fig.dpi
    original_facecolor = fig.get_facecolor()
    canvas = _canvas_class()(fig)  # attaches itself to fig; the original is put back below
    try:
        fig.dpi = dpi
        fig.set_facecolor("white")
        canvas._is_saving = True  # as in savefig: drawn for output, not for a window
        renderer = canvas.get_renderer()
        fig.draw(renderer)
        tight = fig.get_tightbbox(renderer)  # inches; the text sizes are cached on this renderer
        width, height = renderer.width, renderer.height
        if not (tight.x0 >= 0 and tight.y0 >= 0 and tight.x1 * dpi <= width and tight.y1 * dpi <= height):
            raise _NotCroppable
        box = tight.padded(mpl.rcParams["savefig.pad_inches"])
        # the size savefig gives the cropped canvas, and the box's corners rounded to whole pixels
        out_w, out_h = int(box.width * dpi), int(box.height * dpi)
        left, top = round(box.x0 * dpi), round(height - box.y1 * dpi)
        rgba = np.asarray(canvas.buffer_rgba())
        # everything drawn lies inside the canvas, so the margin beyond it is the background
        out = np.empty((out_h, out_w, 4), dtype=np.uint8)
        out[...] = np.round(np.array(to_rgba(fig.get_facecolor())) * 255).astype(np.uint8)
        x0, y0 = max(left, 0), max(top, 0)
        x1, y1 = min(left + out_w, width), min(top + out_h, height)
        out[y0 - top:y1 - top, x0 - left:x1 - left] = rgba[y0:y1, x0:x1]
        return out
    finally:
        fig.dpi = original_dpi
        fig.set_facecolor(original_facecolor)
        fig.set_canvas(original_canvas)


_CANVAS_CLASS = None


def _canvas_class():
    """An Agg canvas whose renderer caches each font's line metrics (built on first use)."""
    global _CANVAS_CLASS
    if _CANVAS_CLASS is not None:
        return _CANVAS_CLASS
    from matplotlib.backends.backend_agg import FigureCanvasAgg, RendererAgg
    from matplotlib.font_manager import fontManager, get_font

    class MetricsCachingRenderer(RendererAgg):
        """Agg, plus the hook ``Text._get_layout`` asks renderers for a font's ascent, descent
        and line gap (the PDF and PS renderers implement it). Without it, every text layout
        looks the font up and reads its OS/2 or hhea table again: thousands of times a
        report. The values are those matplotlib computes itself (tests/test_charts.py checks)."""

        def __init__(self, width, height, dpi):
            super().__init__(width, height, dpi)
            self._height_metrics: dict = {}

        def _get_font_height_metrics(self, prop):
            key = hash(prop)  # FontProperties compare by this hash
            if key not in self._height_metrics:
                self._height_metrics[key] = _font_height_metrics(
                    get_font(fontManager._find_fonts_by_props(prop)), prop.get_size_in_points(), self.dpi)
            return self._height_metrics[key]

    class Canvas(FigureCanvasAgg):
        def get_renderer(self):
            w, h = self.get_width_height(physical=True)
            key = (w, h, self.figure.dpi)
            if getattr(self, "_metrics_key", None) != key:
                self.renderer = MetricsCachingRenderer(w, h, self.figure.dpi)
                self._metrics_key = key
            return self.renderer

    _CANVAS_CLASS = Canvas
    return Canvas


def _font_height_metrics(font, size_points: float, dpi: float) -> tuple:
    """(ascent, descent, line gap) in pixels from the font's OS/2 or hhea table, as
    ``matplotlib.text.Text._get_layout`` computes them; all None if the font has neither."""
    for table_name, linegap_key, ascent_key, descent_key in (
            ("OS/2", "sTypoLineGap", "sTypoAscender", "sTypoDescender"),
            ("hhea", "lineGap", "ascent", "descent")):
        table = font.get_sfnt_table(table_name)
        if table is None:
            continue
        scale = 1 / font.get_sfnt_table("head")["unitsPerEm"] * size_points * dpi / 72
        return table[ascent_key] * scale, -table[descent_key] * scale, table[linegap_key] * scale
    return None, None, None


def _encode_png(rgba: np.ndarray, dpi: float) -> bytes:
    """PNG bytes with the metadata matplotlib writes (Software, resolution); RGB if opaque."""
    import matplotlib as mpl
    from PIL import Image, PngImagePlugin

    pixels = rgba[..., :3] if (rgba[..., 3] == 255).all() else rgba
    image = Image.fromarray(np.ascontiguousarray(pixels))
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", f"Matplotlib version{mpl.__version__}, https://matplotlib.org/")
    buffer = io.BytesIO()
    image.save(buffer, format="png", pnginfo=info, dpi=(dpi, dpi), compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()

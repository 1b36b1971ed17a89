"""Small-cell suppression for published outputs (METRICS.md "Publishing").

* A count from 1 to k-1 is shown as ``<k`` (primary suppression).
* A statistic over fewer than k episodes is left blank.
* No masked count can be worked back out of the totals shown beside it: wherever a
  total is published with its parts, further parts are hidden (complementary
  suppression, shown as ``—``) until every hidden cell could take at least two values
  given everything shown. A reader knows a ``<k`` cell lies in 1..k-1 and a ``—`` cell
  in k.. (zeros are never hidden), and the bounds below use exactly that knowledge.

Processed tables are for researchers and are not suppressed; only reports are.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

PRIMARY = "primary"
COMPLEMENTARY = "complementary"
SHOWN = "shown"
DASH = "—"


@dataclass(frozen=True)
class Cell:
    value: int
    state: str  # shown / primary / complementary

    def text(self, k: int) -> str:
        if self.state == PRIMARY:
            return f"<{k}"
        if self.state == COMPLEMENTARY:
            return DASH
        return f"{self.value:,}"


def _bounds(state: str, k: int, total: int) -> tuple[int, int]:
    return (1, k - 1) if state == PRIMARY else (k, total)


def hidden_ranges(values: list[int], states: list[str], total: int, k: int) -> list[tuple[int, int] | None]:
    """For each hidden part, the smallest and largest value consistent with what is shown."""
    hidden = [i for i, s in enumerate(states) if s != SHOWN]
    remaining = total - sum(v for v, s in zip(values, states) if s == SHOWN)
    ranges: list[tuple[int, int] | None] = [None] * len(values)
    bounds = {i: _bounds(states[i], k, total) for i in hidden}
    for i in hidden:
        others_low = sum(bounds[j][0] for j in hidden if j != i)
        others_high = sum(bounds[j][1] for j in hidden if j != i)
        low = max(bounds[i][0], remaining - others_high)
        high = min(bounds[i][1], remaining - others_low)
        ranges[i] = (low, high)
    return ranges


def _safe(values: list[int], states: list[str], total: int, k: int) -> bool:
    return all(r is None or r[1] > r[0] for r in hidden_ranges(values, states, total, k))


@dataclass(frozen=True)
class Suppressed:
    parts: list[Cell]
    total: Cell


def suppress_parts(values: list[int], k: int, total_shown: bool = True) -> Suppressed:
    """Primary and complementary suppression of parts that add up to a published total.

    Complementary cells are the smallest non-zero shown parts, added one at a time until
    every hidden part has at least two possible values. If hiding every non-zero part is
    still not enough (say two parts of 1 with k = 11: the total 2 gives them away), the
    total is hidden as well.
    """
    total = sum(values)
    states = [PRIMARY if 1 <= v < k else SHOWN for v in values]
    total_cell = Cell(total, PRIMARY if 1 <= total < k else SHOWN)
    # a total of 1..k-1 is itself shown as <k, so no exact equation ties the parts
    if not total_shown or total_cell.state != SHOWN or not any(s == PRIMARY for s in states):
        return Suppressed([Cell(v, s) for v, s in zip(values, states)], total_cell)
    candidates = sorted((v, i) for i, (v, s) in enumerate(zip(values, states)) if s == SHOWN and v > 0)
    while not _safe(values, states, total, k):
        if not candidates:
            total_cell = Cell(total, COMPLEMENTARY)
            break
        _, index = candidates.pop(0)
        states[index] = COMPLEMENTARY
    return Suppressed([Cell(v, s) for v, s in zip(values, states)], total_cell)


def count_text(value: int | None, k: int) -> str:
    """One count on its own (no total beside it)."""
    if value is None:
        return ""
    return f"<{k}" if 1 <= value < k else f"{value:,}"


STAT_COLUMNS = [
    "baseline_mean", "final_mean", "mean_change", "mean_change_ci_low", "mean_change_ci_high", "median_change",
    "effect_size_dz", "p_value", "q_value", "responder_30_rate", "responder_30_ci_low", "responder_30_ci_high",
    "responder_50_rate", "responder_50_ci_low", "responder_50_ci_high", "median_sessions_to_response",
    "median_sessions_ci_low", "median_sessions_ci_high", "improved_by_session_3", "improved_by_session_6",
    "improved_by_session_10", "mean_sessions_attended", "adherence", "immediate_relief_mean",
]


def publish_summary(summary: pl.DataFrame, k: int, base_counts: pl.DataFrame | None = None,
                    label_column: str = "condition") -> pl.DataFrame:
    """The published form of a summary table (rows plus an ``ALL`` total row).

    Counts become text with primary and complementary suppression per count column
    (the ALL row is their total); every statistic of a row with n_analysed < k is blank,
    and so are ``adherence`` / ``immediate_relief_mean`` when their own base
    (``base_counts``: label, n_adherence, n_relief) is below k.
    """
    parts = summary.filter(pl.col(label_column) != "ALL")
    pooled = summary.filter(pl.col(label_column) == "ALL")
    out = summary.with_columns([pl.col(c).cast(pl.Float64) for c in STAT_COLUMNS])
    small = pl.col("n_analysed") < k
    out = out.with_columns([pl.when(small).then(None).otherwise(pl.col(c)).alias(c) for c in STAT_COLUMNS])
    if base_counts is not None:
        out = out.join(base_counts, on=label_column, how="left").with_columns(
            pl.when(pl.col("n_adherence").fill_null(0) < k).then(None).otherwise(pl.col("adherence")).alias("adherence"),
            pl.when(pl.col("n_relief").fill_null(0) < k).then(None).otherwise(pl.col("immediate_relief_mean"))
            .alias("immediate_relief_mean"),
        ).drop("n_adherence", "n_relief")
    texts: dict[str, list[str]] = {}
    hidden_analysed: set[str] = set()
    for column in ("n_episodes", "n_analysed"):
        result = suppress_parts(parts[column].to_list(), k, total_shown=pooled.height == 1)
        by_label = dict(zip(parts[label_column].to_list(), (c.text(k) for c in result.parts)))
        if pooled.height == 1:
            by_label["ALL"] = result.total.text(k)
        if column == "n_analysed":
            hidden_analysed = {label for label, cell in zip(parts[label_column].to_list(), result.parts)
                               if cell.state != SHOWN}
            if pooled.height == 1 and result.total.state != SHOWN:
                hidden_analysed.add("ALL")
        texts[column] = [by_label[label] for label in out[label_column].to_list()]
    # A rate and its interval give n away (a Wilson interval's width is a function of n), so a
    # row whose n_analysed is hidden shows no statistics either.
    hidden = pl.col(label_column).is_in(sorted(hidden_analysed))
    out = out.with_columns([pl.when(hidden).then(None).otherwise(pl.col(c)).alias(c) for c in STAT_COLUMNS])
    return out.with_columns([pl.Series(c, v, dtype=pl.String) for c, v in texts.items()])

"""One plain-language sentence under each chart, written from the same numbers as the chart.

Numbers are formatted for people: percentages without decimals ("54%"; "<1%" / ">99%"
rather than a misleading 0% or 100%), pain in points with one decimal ("2.1 points"),
counts with thousands separators. The publishing rules are the charts' own
(:func:`pipelines.reports.charts.published_rows`): a condition with fewer than k analysed
patients is "too few patients to report", never a number. Empty and not-reached cases
get honest wording instead of an error.
"""

from __future__ import annotations

import math

import polars as pl

from pipelines.reports.charts import (
    ALL, MIN_CELL_SIZE, PublishedRow, classify_clinics, label_for, published_rows, reason_counts,
)


# --------------------------------------------------------------------------------------
# Formatting
# --------------------------------------------------------------------------------------

def _half_up(value: float) -> int:
    return int(math.floor(value + 0.5))


def fmt_pct(share: float) -> str:
    """A share 0..1 as a whole percentage; "<1%" and ">99%" where rounding would say 0 or 100."""
    if 0 < share < 0.005:
        return "<1%"
    if 0.995 <= share < 1:
        return ">99%"
    return f"{_half_up(100 * share)}%"


def fmt_pct_range(low: float, high: float) -> str:
    return f"{_half_up(100 * low)}-{_half_up(100 * high)}%"


def fmt_points(value: float) -> str:
    text = f"{value:.1f}"
    return "0.0" if text == "-0.0" else text


def fmt_count(n: int) -> str:
    return f"{int(n):,}"


def fmt_share_small(part: int, whole: int) -> str:
    """A small share with one decimal (0.4%), whole percentages from 10% up."""
    share = 100 * part / whole
    if part and share < 0.1:
        return "<0.1%"
    if share < 10:
        return f"{share:.1f}%"
    return f"{_half_up(share)}%"


def _sessions(value: float) -> str:
    return f"{value:g}"


def _finite(value) -> bool:
    return value is not None and isinstance(value, (int, float)) and math.isfinite(value)


def _lower_first(label: str) -> str:
    """"Low back pain" -> "low back pain"; names and acronyms stay ("Parkinson's", "PTSD")."""
    first = label.split(" ")[0]
    if len(first) > 1 and first[1:].islower() and not first.endswith("'s"):
        return label[0].lower() + label[1:]
    return label


def patients_phrase(row: PublishedRow | None, code: str = ALL, labels: dict[str, str] | None = None) -> str:
    """"all patients" or "patients with low back pain"."""
    code = row.code if row is not None else code
    if code == ALL:
        return "all patients"
    label = row.label if row is not None else label_for(code, labels or {})
    return f"patients with {_lower_first(label)}"


def _find(summary: pl.DataFrame, labels: dict[str, str], code: str, k: int) -> PublishedRow | None:
    rows, pooled = published_rows(summary, labels, k)
    if code == ALL:
        return pooled
    return next((r for r in rows if r.code == code), None)


def _too_few(row: PublishedRow, what: str) -> str:
    who = "patients" if row.code == ALL else patients_phrase(row)
    if row.n_text.startswith("<"):
        return f"Too few {who} to report {what} (fewer than {row.n_text[1:]} analysed)."
    if row.n_text == "0":
        return f"No {who} have been analysed yet, so there is nothing to report on {what}."
    return f"Results on {what} for {who} are not shown, to protect small groups."


# --------------------------------------------------------------------------------------
# Captions
# --------------------------------------------------------------------------------------

def forest_caption(summary: pl.DataFrame, labels: dict[str, str], *, min_cell_size: int = MIN_CELL_SIZE) -> str:
    """Which condition's pain fell most, by how much (points, 95% CI), against all conditions."""
    rows, pooled = published_rows(summary, labels, min_cell_size)
    shown = sorted((r for r in rows if r.shows("mean_change")), key=lambda r: (-r.row["mean_change"], r.label))
    pooled_ok = pooled is not None and pooled.shows("mean_change")
    if not shown and not pooled_ok:
        if not rows and pooled is None:
            return "No patients have been analysed yet, so there is no change in pain to report."
        return "Too few patients to report changes in pain by condition."
    if len(rows) == 1 and shown:
        only = shown[0]
        return (f"Pain {_change_phrase(only)} on the 0-10 scale among {patients_phrase(only)} "
                f"({only.n_label}).")
    if not shown:
        return f"Across all conditions pain {_change_phrase(pooled)} on the 0-10 scale; no single condition has " \
               f"enough patients to report."
    top = shown[0]
    if top.row["mean_change"] <= 0:
        lead = f"No condition showed an average fall in pain; the best was {_lower_first(top.label)}, where pain " \
               f"{_change_phrase(top)}"
    else:
        lead = f"Pain fell most for {patients_phrase(top)}: by {_points_ci(top)}"
    tail = f", against {_points_ci(pooled, short=True)} across all conditions" if pooled_ok else ""
    return f"{lead} on the 0-10 scale{tail}."


def _points_ci(row: PublishedRow, short: bool = False) -> str:
    m = row.row["mean_change"]
    lo, hi = row.row.get("mean_change_ci_low"), row.row.get("mean_change_ci_high")
    unit = "point" if fmt_points(abs(m)) == "1.0" else "points"
    ci = ""
    if _finite(lo) and _finite(hi):
        ci = f" ({fmt_points(lo)} to {fmt_points(hi)})" if short else f" (95% CI {fmt_points(lo)} to {fmt_points(hi)})"
    average = "" if short else " on average"
    return f"{fmt_points(m)} {unit}{average}{ci}"


def _change_phrase(row: PublishedRow) -> str:
    m = row.row["mean_change"]
    if fmt_points(m) == "0.0":
        lo, hi = row.row.get("mean_change_ci_low"), row.row.get("mean_change_ci_high")
        ci = f" (95% CI {fmt_points(lo)} to {fmt_points(hi)})" if _finite(lo) and _finite(hi) else ""
        return f"did not change on average{ci}"
    verb = "fell" if m > 0 else "rose"
    flipped = dict(row.row, mean_change=abs(m))
    if m < 0:
        flipped["mean_change_ci_low"], flipped["mean_change_ci_high"] = (
            _neg(row.row.get("mean_change_ci_high")), _neg(row.row.get("mean_change_ci_low")))
    return f"{verb} by {_points_ci(PublishedRow(row.code, row.label, row.n_text, row.n_value, flipped))}"


def _neg(value):
    return -value if _finite(value) else value


def km_caption(summary: pl.DataFrame, labels: dict[str, str], condition: str = ALL, *,
               min_cell_size: int = MIN_CELL_SIZE, threshold_pct: float = 30.0) -> str:
    """By which session half the patients had improved by 30% (Kaplan-Meier median, 95% CI).

    ``condition`` picks the row (default: all conditions).
    """
    row = _find(summary, labels, condition, min_cell_size)
    what = "how many sessions it takes to improve"
    if row is None:
        if summary.height == 0:
            return "No patients have been analysed yet, so there is nothing to report on sessions to improvement."
        return f"No {patients_phrase(None, condition, labels)} were analysed, so there is nothing to report on " \
               f"sessions to improvement."
    meaningful = f"a meaningful improvement ({threshold_pct:.0f}% less pain)"
    median = row.row.get("median_sessions_to_response")
    if not row.shows("improved_by_session_3") and not _finite(median):
        return _too_few(row, what)
    who = patients_phrase(row)
    if not _finite(median):
        later = ""
        for t in (10, 6, 3):
            share = row.row.get(f"improved_by_session_{t}")
            if _finite(share):
                later = f"; {fmt_pct(share)} had improved by session {t}"
                break
        return (f"Fewer than half of {who} reached {meaningful} within the sessions observed "
                f"(median not reached){later}.")
    lo, hi = row.row.get("median_sessions_ci_low"), row.row.get("median_sessions_ci_high")
    if _finite(lo) and _finite(hi):
        ci = f"95% CI {_sessions(lo)}-{_sessions(hi)}"
    elif _finite(lo):
        ci = f"95% CI {_sessions(lo)} to not reached within the sessions observed"
    else:
        ci = "95% CI not available"
    return f"Half of {who} reached {meaningful} by session {_sessions(median)} ({ci})."


def responder_caption(summary: pl.DataFrame, labels: dict[str, str], *, min_cell_size: int = MIN_CELL_SIZE) -> str:
    """The overall share with at least 30% (and 50%) less pain, with Wilson 95% CIs."""
    rows, pooled = published_rows(summary, labels, min_cell_size)
    if pooled is None:
        if not rows:
            return "No patients have been analysed yet, so there are no responder rates to report."
        return "No overall row was given, so there is no overall responder rate to report."
    if not pooled.shows("responder_30_rate"):
        return _too_few(pooled, "responder rates")
    r30, r50 = pooled.row["responder_30_rate"], pooled.row.get("responder_50_rate")
    if len(rows) == 1:
        text = f"Among {patients_phrase(rows[0])} ({pooled.n_label}), {fmt_pct(r30)}"
    else:
        text = f"Across all conditions ({pooled.n_label}), {fmt_pct(r30)} of patients"
    lo, hi = pooled.row.get("responder_30_ci_low"), pooled.row.get("responder_30_ci_high")
    if _finite(lo) and _finite(hi):
        text += f" (95% CI {fmt_pct_range(lo, hi)})"
    text += " had at least 30% less pain at their latest rating"
    if _finite(r50):
        lo50, hi50 = pooled.row.get("responder_50_ci_low"), pooled.row.get("responder_50_ci_high")
        ci50 = f" ({fmt_pct_range(lo50, hi50)})" if _finite(lo50) and _finite(hi50) else ""
        text += f", and {fmt_pct(r50)}{ci50} at least 50% less"
    return text + "."


def funnel_caption(clinics: pl.DataFrame, pooled_rate: float, *, min_cell_size: int = MIN_CELL_SIZE) -> str:
    """How many clinics lie within the 95% and 99.8% limits around the pooled rate."""
    data = clinics.filter(pl.col("n_analysed").is_not_null() & pl.col("responder_30_rate").is_not_null()) \
        if clinics.height else clinics
    m = data.height
    if m == 0:
        return f"No clinic had {min_cell_size} or more analysed patients, so clinics cannot be compared."
    if not _finite(pooled_rate):
        return "The pooled rate is not available, so clinics cannot be compared with it."
    pooled = fmt_pct(pooled_rate)
    bands = classify_clinics(data, pooled_rate)
    within = bands.filter(pl.col("band") == "within 95%").height
    between = bands.filter(pl.col("band") == "between 95% and 99.8%").height
    outside = bands.filter(pl.col("band") == "outside 99.8%")
    if within == m:
        if m == 1:
            return f"The one clinic is within the expected range of the pooled rate of {pooled}; it is not an outlier."
        return f"All {m} clinics are within the expected range of the pooled rate of {pooled}; none is an outlier."
    if within == 0:
        parts = [f"None of the {m} clinics is within the 95% limits around the pooled rate of {pooled}"]
    else:
        parts = [f"{within} of {m} clinics {'is' if within == 1 else 'are'} within the 95% limits around the "
                 f"pooled rate of {pooled}"]
    if between:
        parts.append(f"{between} {'lies' if between == 1 else 'lie'} between the 95% and 99.8% limits, which chance "
                     f"alone produces now and then")
    if outside.height:
        which = [f"{r['clinic_id']} ({r['side']})" for r in outside.iter_rows(named=True)]
        names = which[0] if len(which) == 1 else ", ".join(which[:-1]) + " and " + which[-1]
        one = outside.height == 1
        parts.append(f"{outside.height} {'clinic lies' if one else 'clinics lie'} outside the 99.8% limits and "
                     f"{'is' if one else 'are'} worth a closer look: {names}")
    else:
        parts.append("none is outside the 99.8% limits")
    return "; ".join(parts) + "."


def trajectory_caption(trajectories: pl.DataFrame, labels: dict[str, str], condition: str = ALL,
                       max_session: int = 12, *, min_cell_size: int = MIN_CELL_SIZE) -> str:
    """How average pre-session pain moved from the first to the last session with enough patients."""
    data = trajectories.filter((pl.col("condition") == condition) & (pl.col("session_number") <= max_session)
                               & (pl.col("n") >= min_cell_size) & pl.col("mean_pre").is_not_null()
                               ).sort("session_number") if trajectories.height else trajectories
    who = "all patients" if condition == ALL else f"patients with {_lower_first(label_for(condition, labels))}"
    if data.height == 0:
        return f"Too few {who} to show pain across sessions."
    if data.height == 1:
        return (f"Only one session has pain scores from {min_cell_size} or more {who.removeprefix('all ')} "
                f"(average {fmt_points(data['mean_pre'][0])} before session {data['session_number'][0]}), "
                f"so no change across sessions can be shown.")
    first, last = data.row(0, named=True), data.row(-1, named=True)
    a, b = first["mean_pre"], last["mean_pre"]
    s1, s2 = first["session_number"], last["session_number"]
    if fmt_points(a) == fmt_points(b):
        change = f"stayed at about {fmt_points(a)} from session {s1} to session {s2}"
    else:
        change = f"{'fell' if b < a else 'rose'} from {fmt_points(a)} at session {s1} to {fmt_points(b)} at session {s2}"
    return (f"For {who}, average pain before the session {change} (0-10 scale; "
            f"{fmt_count(last['n'])} patients still attending at session {last['session_number']}).")


def trend_caption(trend: pl.DataFrame, *, min_cell_size: int = MIN_CELL_SIZE) -> str:
    """Last week's sessions, new episodes and responder rate against the average of the weeks shown."""
    k = min_cell_size
    if trend.height == 0:
        return "No weeks to report yet."
    weeks = trend.height
    last = trend.row(-1, named=True)
    span = f"{weeks}-week average"

    def published(values):
        return [None if v is None or 1 <= int(v) < k else int(v) for v in values]

    def count_clause(column: str, noun: str, verb: str) -> str:
        values = published(trend[column].to_list())
        now = values[-1]
        known = [v for v in values if v is not None]
        if now is None:
            raw = last[column]
            return f"fewer than {k} {noun} {verb}" if raw is None or raw >= 1 else f"no {noun} {verb}"
        average = sum(known) / len(known)
        avg_text = fmt_count(_half_up(average))
        if average == 0:
            return f"{fmt_count(now)} {noun} {verb}"
        diff = 100 * (now - average) / average
        if abs(diff) < 0.5:
            return f"{fmt_count(now)} {noun} {verb} (about the same as the {span} of {avg_text})"
        return (f"{fmt_count(now)} {noun} {verb} ({_half_up(abs(diff))}% {'more' if diff > 0 else 'fewer'} than the "
                f"{span} of {avg_text})")

    sessions = count_clause("sessions", "sessions", "were delivered")
    episodes = count_clause("new_episodes", "new episodes of care", "started")
    rate_ok = _finite(last.get("responder_rate")) and (last.get("responder_n") or 0) >= k
    # the average of the weekly rates that may be shown (whatever population each week's rate covers)
    weekly_rates = [r["responder_rate"] for r in trend.iter_rows(named=True)
                    if _finite(r.get("responder_rate")) and (r.get("responder_n") or 0) >= k]
    if rate_ok:
        lo, hi = last.get("responder_ci_low"), last.get("responder_ci_high")
        ci = f" (95% CI {fmt_pct_range(lo, hi)})" if _finite(lo) and _finite(hi) else ""
        rate = f"the responder rate (at least 30% less pain) was {fmt_pct(last['responder_rate'])}{ci}"
        if weekly_rates:
            rate += f", against a {span} of {fmt_pct(sum(weekly_rates) / len(weekly_rates))}"
    elif last.get("responder_n") == 0:
        rate = "no patients were analysed yet for a responder rate"
    else:
        rate = "too few patients to report a responder rate"
    return f"In {last['week']}, {sessions} and {episodes}; {rate}."


def data_quality_caption(rejected_by_reason: pl.DataFrame, files: dict[str, int],
                         rows_read: int | None = None) -> str:
    """How many rows were rejected (share of rows read), the commonest reason, and refused files."""
    data = reason_counts(rejected_by_reason)
    total = int(data["n"].sum()) if data.height else 0
    refused = int(files.get("refused", 0) or 0)
    refused_text = ""
    if refused:
        refused_text = f"; {refused} export file{' was' if refused == 1 else 's were'} refused and need" \
                       f"{'s' if refused == 1 else ''} to be sent again"
    if total == 0:
        read = f"all {fmt_count(rows_read)} rows read were accepted" if rows_read else "all rows read were accepted"
        return f"No rows were rejected: {read}{refused_text}."
    share = f" ({fmt_share_small(total, rows_read)})" if rows_read else ""
    top = data.row(0, named=True)
    row_word = "row" if total == 1 else "rows"
    return (f"{fmt_count(total)} {row_word}{share} {'was' if total == 1 else 'were'} rejected; the most common "
            f"reason: \"{str(top['reason']).strip()}\" ({fmt_count(top['n'])} {'row' if top['n'] == 1 else 'rows'})"
            f"{refused_text}.")


__all__ = [
    "fmt_pct", "fmt_pct_range", "fmt_points", "fmt_count", "fmt_share_small", "patients_phrase",
    "forest_caption", "km_caption", "responder_caption", "funnel_caption", "trajectory_caption", "trend_caption",
    "data_quality_caption",
]

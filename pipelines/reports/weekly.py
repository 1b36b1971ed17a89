"""The weekly directors' report as data: every number, table, chart and caption.

``build_report`` is pure: given the accepted tables, the ingest audit and the settings it
computes everything as of the Sunday that ends the ISO week (METRICS.md "As of a date"),
applies the publishing rules (:mod:`pipelines.reports.publish`) and returns a
:class:`ReportContent` that :mod:`pipelines.reports.render` turns into HTML, PDF and CSV.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import date, timedelta

import polars as pl
from matplotlib.figure import Figure

from pipelines.ingest.reasons import rejection_reasons
from pipelines.outcomes import stats
from pipelines.outcomes.metrics import episode_outcomes_from, episodes_as_of, scored_sessions, session_relief_from
from pipelines.outcomes.summary import ALL, STATISTICS_COLUMNS, condition_summary_from, group_statistics, summarise
from pipelines.outcomes.tables import km_curves, pain_trajectories
from pipelines.reports import captions, charts
from pipelines.reports.history import outcomes_before, weekly_cohorts
from pipelines.reports.publish import DASH, count_text, publish_summary, suppress_parts
from pipelines.settings import Settings

TREND_WEEKS = 12
#: the columns of episode_outcomes the report reads (a stored table is read with these only)
REPORT_OUTCOME_COLUMNS = ["episode_id", "clinic_id", "condition", "referral_date", "sessions_attended",
                          "prescribed_sessions", "baseline_pain", "final_pain", "change", "responder_30",
                          "responder_50", "sessions_to_response", "response_observed", "analysed"]


def week_label(day: date) -> str:
    year, week, _ = day.isocalendar()
    return f"{year}-W{week:02d}"


def week_bounds(label: str) -> tuple[date, date]:
    """Monday and Sunday of an ISO week written ``YYYY-Www``."""
    year, week = label.split("-W")
    monday = date.fromisocalendar(int(year), int(week), 1)
    return monday, monday + timedelta(days=6)


@dataclass
class ReportInputs:
    episodes: pl.DataFrame
    sessions: pl.DataFrame
    pain_scores: pl.DataFrame
    audit: pl.DataFrame
    rejected: pl.DataFrame
    settings: Settings
    labels: dict[str, str]
    run_date: date | None = None
    code_version: str = ""
    vocabulary_fingerprint: str = ""
    #: outcome tables as of the week's Sunday that the outcomes job already computed from these
    #: same tables (pipelines.outcomes.lineage), by asset name: scored_sessions, episode_outcomes,
    #: session_relief_table, pain_trajectories, condition_summary_table, clinic_condition_summary.
    #: The report computes the ones not given.
    stored: dict[str, pl.DataFrame] = field(default_factory=dict)


@dataclass
class FigureItem:
    name: str
    title: str
    figure: Figure
    caption: str


@dataclass
class ReportContent:
    week: str
    monday: date
    sunday: date
    settings: Settings
    headline_week: list[dict]      # label, this_week, last_week
    headline_to_date: list[dict]   # label, value, interval, last_week
    conditions: pl.DataFrame       # published per-condition table (display)
    summary_csv: pl.DataFrame      # published summary.csv
    clinics: pl.DataFrame          # published clinic table (clinic_id, n, rate, interval, position)
    figures: list[FigureItem]
    quality: dict
    provenance: dict
    key_messages: list[str] = field(default_factory=list)


def _pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.0f}%"


def _interval(low: float | None, high: float | None, pct: bool = False, digits: int = 1) -> str:
    if low is None or high is None:
        return ""
    if pct:
        return f"{100 * low:.0f}–{100 * high:.0f}%"
    return f"{low:.{digits}f} to {high:.{digits}f}"


def _weekly_counts(episodes: pl.DataFrame, sessions: pl.DataFrame, monday: date, sunday: date) -> dict:
    in_week_sessions = sessions.filter(pl.col("session_date").is_between(monday, sunday))
    return {
        "sessions": in_week_sessions.height,
        "new_episodes": episodes.filter(pl.col("referral_date").is_between(monday, sunday)).height,
        "patients_treated": in_week_sessions.join(episodes.select("episode_id", "patient_id"), on="episode_id")
        ["patient_id"].n_unique(),
    }


def _pooled(outcomes: pl.DataFrame, relief: pl.DataFrame | None, settings: Settings) -> dict:
    """The ALL row of ``condition_summary_from(outcomes, relief, settings)`` (summarise pools
    every episode with ``group_statistics``), without the per-condition rows it would also fit.
    Its p value is left out, and so is its relief mean when ``relief`` is None: the headline
    reads neither."""
    row = group_statistics(outcomes, relief, settings, with_p_value=False)
    return {"condition": ALL, **row, "q_value": row["p_value"]}


def _base_counts(outcomes: pl.DataFrame, relief: pl.DataFrame, by: str) -> pl.DataFrame:
    """Episodes behind adherence and immediate relief, per group and ALL (for blanking)."""
    adherence = outcomes.filter((pl.col("sessions_attended") >= 1) & pl.col("prescribed_sessions").is_not_null())
    relief_per_group, relief_episodes = _relief_episodes(relief, by)
    per_group = (adherence.group_by(by).agg(pl.len().alias("n_adherence"))
                 .join(relief_per_group, on=by, how="full", coalesce=True))
    pooled = pl.DataFrame({by: [ALL], "n_adherence": [adherence.height], "n_relief": [relief_episodes]})
    return pl.concat([per_group.cast({"n_adherence": pl.Int64, "n_relief": pl.Int64}),
                      pooled.cast({"n_adherence": pl.Int64, "n_relief": pl.Int64})], how="vertical")


def _relief_episodes(relief: pl.DataFrame, by: str) -> tuple[pl.DataFrame, int]:
    """Distinct episodes with a relief row, per group of ``by`` (``n_relief``) and in all.

    Relief sorted by episode (as :func:`session_relief_from` leaves it) is one run of rows
    per episode: when each run also lies in one group, counting the runs' first rows equals
    ``n_unique`` of episode_id and hashes none of the millions of ids. Otherwise, n_unique.
    """
    ids = relief["episode_id"]
    if ids.null_count() == 0 and ids.is_sorted():
        # compared once, used twice below
        new_episode = relief.select(pl.col("episode_id").ne(pl.col("episode_id").shift()).fill_null(True)).to_series()
        if not relief.select((~new_episode & pl.col(by).ne_missing(pl.col(by).shift())).any()).item():
            firsts = relief.filter(new_episode)
            return firsts.group_by(by).agg(pl.len().alias("n_relief")), firsts.height
    return (relief.group_by(by).agg(pl.col("episode_id").n_unique().alias("n_relief")),
            ids.n_unique() if relief.height else 0)


def _trend(inputs: ReportInputs, sunday: date, scored: pl.DataFrame, outcomes: pl.DataFrame) -> pl.DataFrame:
    """The last TREND_WEEKS weeks: sessions, new episodes and the week's responder cohort.

    A week's cohort: the episodes analysed as of its Sunday whose latest outcome rating was
    taken that week. All weeks come from one pass over the records as of ``sunday``
    (:func:`pipelines.reports.history.weekly_cohorts`).
    """
    rows = []
    k = inputs.settings.min_cell_size
    weekly = weekly_cohorts(inputs.episodes, inputs.sessions, inputs.pain_scores, scored, outcomes, sunday,
                            TREND_WEEKS, inputs.settings)
    for week in weekly.iter_rows(named=True):
        n, responders = week["responder_n"], week["responders"]
        rate, low, high = stats.wilson_interval(responders, n) if n >= k else (None, None, None)
        rows.append({"week": week_label(week["week_end"]), "sessions": week["sessions"],
                     "new_episodes": week["new_episodes"],
                     "responders": responders if n >= k else None, "responder_n": n,
                     "responder_rate": rate, "responder_ci_low": low, "responder_ci_high": high})
    first_referral = inputs.episodes.select(pl.col("referral_date").min()).item() if inputs.episodes.height else None
    window_start = sunday - timedelta(weeks=TREND_WEEKS) + timedelta(days=1)
    if first_referral is not None and first_referral >= window_start:
        # the weekly counts add up to the episodes-to-date total shown in the report
        cells = suppress_parts([r["new_episodes"] for r in rows], k).parts
        for row, cell in zip(rows, cells):
            if cell.state != "shown":
                row["new_episodes"] = None
    return pl.DataFrame(rows, schema={"week": pl.String, "sessions": pl.Int64, "new_episodes": pl.Int64,
                                      "responders": pl.Int64, "responder_n": pl.Int64, "responder_rate": pl.Float64,
                                      "responder_ci_low": pl.Float64, "responder_ci_high": pl.Float64})


def _funnel_position(rate: float, n: int, pooled: float) -> str:
    low95, high95 = charts.funnel_limits(pooled, n, charts.Z_95)
    low998, high998 = charts.funnel_limits(pooled, n, charts.Z_998)
    if rate > high998:
        return "above the 99.8% limit"
    if rate < low998:
        return "below the 99.8% limit"
    if rate > high95:
        return "above the 95% limit"
    if rate < low95:
        return "below the 95% limit"
    return "within the expected range"


def _per_clinic(outcomes: pl.DataFrame, relief: pl.DataFrame, settings: Settings,
                stored: pl.DataFrame | None) -> pl.DataFrame:
    """Every clinic's statistics, ``summarise`` by clinic_id: the per-clinic ALL rows of the
    outcomes job's clinic_condition_summary (``stored``; the same call, sorted by clinic and
    condition there) when given and one per clinic, else computed."""
    if stored is not None:
        rows = stored.filter(pl.col("condition") == ALL).drop("condition")
        if rows["clinic_id"].n_unique() == rows.height:
            return rows.sort("clinic_id", nulls_last=True)  # summarise's order: a missing id last
    return summarise(outcomes, relief, settings, by=["clinic_id"], pooled_label=None, with_p_values=False)


def _clinics(per_clinic: pl.DataFrame, settings: Settings, pooled_rate: float | None
             ) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Published clinic table (sorted by clinic id, never ranked) and the funnel plot's points."""
    k = settings.min_cell_size
    counts = per_clinic["n_analysed"].to_list()
    cells = suppress_parts(counts, k).parts
    rows, funnel = [], []
    for row, cell in zip(per_clinic.iter_rows(named=True), cells):
        n = row["n_analysed"]
        # a hidden n hides the rate too: rate and interval together give n away
        show = cell.state == "shown" and n >= k and row["responder_30_rate"] is not None
        position = _funnel_position(row["responder_30_rate"], n, pooled_rate) if show and pooled_rate is not None else ""
        rows.append({"clinic_id": row["clinic_id"], "analysed": cell.text(k),
                     "responder_30": _pct(row["responder_30_rate"]) if show else "",
                     "interval": _interval(row["responder_30_ci_low"], row["responder_30_ci_high"], pct=True) if show else "",
                     "position": position if show else (
                         "too few patients to compare" if cell.state == "primary" or n < k
                         else "hidden to protect a smaller clinic's count")})
        if show:
            funnel.append({"clinic_id": row["clinic_id"], "n_analysed": n, "responder_30_rate": row["responder_30_rate"]})
    schema = {"clinic_id": pl.String, "n_analysed": pl.Int64, "responder_30_rate": pl.Float64}
    return (pl.DataFrame(rows, schema={c: pl.String for c in ("clinic_id", "analysed", "responder_30", "interval", "position")}),
            pl.DataFrame(funnel, schema=schema))


def _condition_table(published: pl.DataFrame, labels: dict[str, str], k: int) -> pl.DataFrame:
    def fmt(v, digits=1):
        return "" if v is None else f"{v:.{digits}f}"

    rows = []
    for r in published.iter_rows(named=True):
        code = r["condition"]
        rows.append({
            "condition": "All conditions" if code == ALL else labels.get(code, code),
            "episodes": r["n_episodes"],
            "analysed": r["n_analysed"],
            "pain_before_after": "" if r["baseline_mean"] is None else f"{r['baseline_mean']:.1f} → {r['final_mean']:.1f}",
            "mean_change": "" if r["mean_change"] is None else f"{r['mean_change']:.1f}"
            + (f" ({_interval(r['mean_change_ci_low'], r['mean_change_ci_high'])})" if r["mean_change_ci_low"] is not None else ""),
            "responders_30": "" if r["responder_30_rate"] is None else f"{_pct(r['responder_30_rate'])} ({_interval(r['responder_30_ci_low'], r['responder_30_ci_high'], pct=True)})",
            "responders_50": "" if r["responder_50_rate"] is None else f"{_pct(r['responder_50_rate'])} ({_interval(r['responder_50_ci_low'], r['responder_50_ci_high'], pct=True)})",
            "median_sessions": _median_text(r),
            "improved_by_6": _pct(r["improved_by_session_6"]),
            "q_value": "" if r["q_value"] is None else (f"{r['q_value']:.3f}" if r["q_value"] >= 0.001 else "<0.001"),
            "note": f"fewer than {k} patients analysed" if r["suppressed"] else (
                "hidden to protect a smaller group's count" if r["n_analysed"] == DASH else ""),
        })
    return pl.DataFrame(rows)


def _median_interval(r: dict) -> str:
    low, high = r["median_sessions_ci_low"], r["median_sessions_ci_high"]
    if low is None:
        return ""
    return f"{low:.0f}–{high:.0f}" if high is not None else f"{low:.0f}–not reached"


def _median_text(r: dict) -> str:
    if r["responder_30_rate"] is None:  # blank row
        return ""
    median = r["median_sessions_to_response"]
    if median is None:
        return "not reached"
    bound = _median_interval(r)
    return f"{median:.0f}" + (f" ({bound})" if bound else "")


def _quality(inputs: ReportInputs) -> dict:
    audit = inputs.audit
    files = {s: int((audit["status"] == s).sum()) for s in ("ingested", "refused", "ignored")}
    totals = {c: int(audit[c].sum()) for c in ("rows_read", "accepted", "duplicate", "superseded", "rejected")}
    reasons = rejection_reasons(inputs.rejected) if inputs.rejected.height else pl.DataFrame(
        schema={"reason": pl.String, "n": pl.UInt32})
    refused = audit.filter(pl.col("status") == "refused").select("source_file", "reason").to_dicts()
    # Files and export rows are counts of records, not of patients, and staff need them exact to
    # fix an export: they are shown in full (methods appendix, "Privacy").
    return {"files": files, "rows": {c: f"{v:,}" for c, v in totals.items()}, "rows_raw": totals,
            "reasons": [{"reason": r, "n": f"{int(n):,}"} for r, n in reasons.iter_rows()],
            "reasons_frame": reasons, "refused": refused}


def input_fingerprint(audit: pl.DataFrame, vocabulary_fingerprint: str) -> str:
    """sha256 over every ingested file's path and content hash, and the vocabulary."""
    parts = [f"{r['source_file']}:{r['sha256']}" for r in audit.sort("source_file").iter_rows(named=True)
             if r.get("sha256")]
    parts.append(f"vocabulary:{vocabulary_fingerprint}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def build_report(inputs: ReportInputs, week: str) -> ReportContent:
    settings = inputs.settings
    k = settings.min_cell_size
    monday, sunday = week_bounds(week)
    previous_sunday = sunday - timedelta(days=7)
    labels = {**inputs.labels, ALL: "All conditions"}
    ep, se, ps = inputs.episodes, inputs.sessions, inputs.pain_scores

    # Computed once as of Sunday; the previous Sunday and the trend weeks are derived from these
    # (pipelines.reports.history), not recomputed from the accepted tables.
    def stored_or(name: str, compute) -> pl.DataFrame:  # the outcomes job's table, else computed here
        frame = inputs.stored.get(name)
        return frame if frame is not None else compute()

    scored = stored_or("scored_sessions", lambda: scored_sessions(ep, se, ps, sunday))
    outcomes = stored_or("episode_outcomes", lambda: episode_outcomes_from(ep, scored, ps, sunday, settings)
                         ).select(REPORT_OUTCOME_COLUMNS)
    relief = stored_or("session_relief_table", lambda: session_relief_from(ep, scored, sunday))
    summary = stored_or("condition_summary_table", lambda: condition_summary_from(outcomes, relief, settings))
    # the previous Sunday's pooled statistics read only these columns of its outcomes, and
    # not its session relief (_to_date_rows shows no relief)
    previous = _pooled(outcomes_before(ep, scored, ps, outcomes.select("episode_id", "referral_date",
                                                                        *STATISTICS_COLUMNS),
                                       sunday, previous_sunday, settings),
                       None, settings) if ep.height else None
    pooled = summary.filter(pl.col("condition") == ALL).row(0, named=True) if summary.height else None

    published = publish_summary(summary, k, _base_counts(outcomes, relief, "condition"))
    summary_csv = published.with_columns(
        pl.col("condition").replace_strict(labels, default=pl.col("condition")).alias("label")
    ).select("condition", "label", *[c for c in published.columns if c not in ("condition", "label")])

    this_week = _weekly_counts(ep, se, monday, sunday)
    last_week = _weekly_counts(ep, se, monday - timedelta(days=7), previous_sunday)
    headline_week = [
        {"label": "Sessions delivered", "this_week": count_text(this_week["sessions"], k),
         "last_week": count_text(last_week["sessions"], k)},
        {"label": "New episodes of care", "this_week": count_text(this_week["new_episodes"], k),
         "last_week": count_text(last_week["new_episodes"], k)},
        {"label": "Patients treated", "this_week": count_text(this_week["patients_treated"], k),
         "last_week": count_text(last_week["patients_treated"], k)},
    ]
    headline_to_date = _to_date_rows(pooled, previous, k)

    trajectories = stored_or("pain_trajectories", lambda: pain_trajectories(scored, episodes_as_of(ep, sunday)))
    km = km_curves(outcomes).filter(pl.col("at_risk") >= k)  # no curve over fewer than k patients
    trend = _trend(inputs, sunday, scored, outcomes)
    pooled_rate = pooled["responder_30_rate"] if pooled and pooled["n_analysed"] >= k else None
    clinics_table, funnel_points = _clinics(
        _per_clinic(outcomes, relief, settings, inputs.stored.get("clinic_condition_summary")), settings, pooled_rate)
    quality = _quality(inputs)

    chart_summary = published
    figures = [
        FigureItem("forest", "Change in pain by condition",
                   charts.forest_plot(chart_summary, labels, min_cell_size=k),
                   captions.forest_caption(chart_summary, labels, min_cell_size=k)),
        FigureItem("improved_by_session", "Share of patients improved, by session",
                   charts.km_curves_plot(km, chart_summary, labels, min_cell_size=k),
                   captions.km_caption(chart_summary, labels, min_cell_size=k)),
        FigureItem("trajectory", "Pain before each session",
                   charts.trajectory_plot(trajectories, labels, min_cell_size=k),
                   captions.trajectory_caption(trajectories, labels, min_cell_size=k)),
        FigureItem("responders", "Responders by condition",
                   charts.responder_plot(chart_summary, labels, min_cell_size=k),
                   captions.responder_caption(chart_summary, labels, min_cell_size=k)),
        FigureItem("funnel", "Clinics compared with the pooled responder rate",
                   charts.funnel_plot(funnel_points, pooled_rate if pooled_rate is not None else float("nan"),
                                      threshold_pct=settings.responder_30_threshold),
                   captions.funnel_caption(funnel_points, pooled_rate)),
        FigureItem("trend", "The last 12 weeks",
                   charts.trend_plot(trend, min_cell_size=k, threshold_pct=settings.responder_30_threshold),
                   captions.trend_caption(trend, min_cell_size=k)),
        FigureItem("data_quality", "Data quality",
                   charts.data_quality_plot(quality["reasons_frame"], quality["files"],
                                            rows_read=quality["rows_raw"]["rows_read"]),
                   captions.data_quality_caption(quality["reasons_frame"], quality["files"],
                                                 quality["rows_raw"]["rows_read"])),
    ]
    provenance = {
        "ISO week": f"{week} (Monday {monday.isoformat()} to Sunday {sunday.isoformat()})",
        "As of": f"{sunday.isoformat()} (records dated on or before this day)",
        "Run date": inputs.run_date.isoformat() if inputs.run_date else "",
        "Input fingerprint": input_fingerprint(inputs.audit, inputs.vocabulary_fingerprint),
        "Code version": inputs.code_version,
        "Settings": ", ".join(f"{k_}={v}" for k_, v in settings.as_dict().items()),
    }
    key_messages = [f.caption for f in figures[:2] if f.caption]
    return ReportContent(week=week, monday=monday, sunday=sunday, settings=settings, headline_week=headline_week,
                         headline_to_date=headline_to_date, conditions=_condition_table(published, labels, k),
                         summary_csv=summary_csv, clinics=clinics_table, figures=figures, quality=quality,
                         provenance=provenance, key_messages=key_messages)


def _to_date_rows(pooled: dict | None, previous: dict | None, k: int) -> list[dict]:
    def row(label, key, fmt, interval=None, show_change=True):
        now = pooled[key] if pooled else None
        before = previous[key] if previous else None
        return {"label": label, "value": fmt(now), "interval": interval or "",
                "last_week": fmt(before) if show_change else ""}

    if pooled is None:
        return []
    enough = pooled["n_analysed"] >= k
    enough_before = previous is not None and previous["n_analysed"] >= k
    def before_count(key: str) -> str:
        # "now" minus "a week earlier" is itself a count: hide the earlier one when it would
        # give away a number from 1 to k-1 (complementary suppression)
        if previous is None:
            return ""
        difference = abs(pooled[key] - previous[key])
        return DASH if 1 <= difference < k else count_text(previous[key], k)

    rows = [
        {"label": "Episodes of care", "value": count_text(pooled["n_episodes"], k), "interval": "",
         "last_week": before_count("n_episodes")},
        {"label": "Episodes analysed (baseline and follow-up pain)", "value": count_text(pooled["n_analysed"], k),
         "interval": "", "last_week": before_count("n_analysed")},
    ]
    if enough:
        stat = lambda key, fmt: (fmt(pooled[key]), fmt(previous[key]) if enough_before and previous[key] is not None else "")  # noqa: E731
        for label, key, fmt, interval in [
            ("Mean fall in pain (0–10 points)", "mean_change", lambda v: "" if v is None else f"{v:.1f}",
             _interval(pooled["mean_change_ci_low"], pooled["mean_change_ci_high"])),
            ("Responders: pain down ≥30%", "responder_30_rate", _pct,
             _interval(pooled["responder_30_ci_low"], pooled["responder_30_ci_high"], pct=True)),
            ("Responders: pain down ≥50%", "responder_50_rate", _pct,
             _interval(pooled["responder_50_ci_low"], pooled["responder_50_ci_high"], pct=True)),
            ("Median sessions to a 30% improvement", "median_sessions_to_response",
             lambda v: "not reached" if v is None else f"{v:.0f}", _median_interval(pooled)),
        ]:
            value, before = stat(key, fmt)
            rows.append({"label": label, "value": value, "interval": interval, "last_week": before})
    return rows

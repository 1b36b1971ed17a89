"""Independent re-implementation of METRICS.md, for checking the production code.

Written from METRICS.md alone (it does not read or import ``pipelines.outcomes``), in
plain Python loops over pandas records, with the library calls METRICS.md names:

- ``scipy.stats.t.interval`` (Student-t CI of the mean change),
- ``scipy.stats.wilcoxon`` with its defaults (p_value),
- ``scipy.stats.false_discovery_control`` (q_value, Benjamini-Hochberg),
- the Wilson score interval with z = ``scipy.stats.norm.ppf(0.975)``, coded by hand and
  checked against ``scipy.stats.binomtest(...).proportion_ci(method="wilson")``,
- ``lifelines.KaplanMeierFitter``: ``median_survival_time_``,
  ``median_survival_times(confidence_interval_)``, ``survival_function_at_times``.

Clarity over speed: one Python loop per episode.

Ambiguities resolved here (see the test report):
- "sd is 0" is read as "every change is the same value" (mathematically sd = 0), not as a
  floating-point sample sd that happens to round to 0.
- "empty when every change is 0" for p_value; an empty analysed set also gives empty p.
- A follow-up with an empty recorded_on (not contract-valid) is ignored.
- Statistics of a condition with n_analysed = 0 are all empty; suppressed rows keep their
  statistics (suppression only sets the flag in the processed table).
"""

from __future__ import annotations

import math
import warnings
from datetime import date, datetime

import numpy as np
import pandas as pd
import scipy.stats as st
from lifelines import KaplanMeierFitter
from lifelines.utils import median_survival_times

EPS = 1e-9  # METRICS.md: a percentage reaches a threshold when >= threshold - 1e-9

EPISODE_COLUMNS = [
    "episode_id", "patient_id", "clinic_id", "condition", "referral_date",
    "sessions_attended", "prescribed_sessions", "baseline_pain", "final_pain", "change",
    "pct_change", "responder_30", "responder_50", "sessions_to_response",
    "response_observed", "exclusion_reason",
]

SUMMARY_COLUMNS = [
    "condition", "n_episodes", "n_analysed", "baseline_mean", "final_mean", "mean_change",
    "mean_change_ci_low", "mean_change_ci_high", "median_change", "effect_size_dz",
    "p_value", "q_value", "responder_30_rate", "responder_30_ci_low",
    "responder_30_ci_high", "responder_50_rate", "responder_50_ci_low",
    "responder_50_ci_high", "median_sessions_to_response", "median_sessions_ci_low",
    "median_sessions_ci_high", "improved_by_session_3", "improved_by_session_6",
    "improved_by_session_10", "mean_sessions_attended", "adherence",
    "immediate_relief_mean", "suppressed",
]


# --------------------------------------------------------------------------- helpers


def is_missing(value) -> bool:
    if value is None:
        return True
    if value is pd.NaT:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def to_date(value) -> date | None:
    """A pandas/polars/str date cell as a ``datetime.date`` (None when missing)."""
    if is_missing(value):
        return None
    if isinstance(value, pd.Timestamp):
        return value.date()
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, np.datetime64):
        return pd.Timestamp(value).date()
    return date.fromisoformat(str(value))


def to_pandas(frame) -> pd.DataFrame:
    """A polars or pandas frame as pandas."""
    if isinstance(frame, pd.DataFrame):
        return frame
    return frame.to_pandas()


def _records(frame: pd.DataFrame) -> list[dict]:
    return [
        {k: (None if is_missing(v) else v) for k, v in row.items()}
        for row in frame.to_dict("records")
    ]


def wilson_interval(k: int, n: int) -> tuple[float, float]:
    """Wilson score interval, by hand, z = norm.ppf(0.975); cross-checked with scipy."""
    z = st.norm.ppf(0.975)
    p = k / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = (z / denom) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    low, high = centre - half, centre + half
    ci = st.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert math.isclose(low, ci.low, rel_tol=1e-12, abs_tol=1e-14), (k, n, low, ci.low)
    assert math.isclose(high, ci.high, rel_tol=1e-12, abs_tol=1e-14), (k, n, high, ci.high)
    # report the textbook formula clipped to [0, 1] (it already is mathematically)
    return max(0.0, low), min(1.0, high)


def _finite_or_none(x) -> float | None:
    if x is None:
        return None
    x = float(x)
    if math.isinf(x) or math.isnan(x):
        return None
    return x


# --------------------------------------------------------------------- one episode


def reference_episode_outcomes(
    episodes,
    sessions,
    scores,
    as_of,
    responder_30_threshold: float = 30.0,
    responder_50_threshold: float = 50.0,
    response_threshold: float = 30.0,
) -> pd.DataFrame:
    as_of = to_date(as_of)
    episodes = to_pandas(episodes)
    sessions = to_pandas(sessions)
    scores = to_pandas(scores)

    # sessions dated on or before D, by episode
    sessions_by_episode: dict[str, list[tuple[date, str]]] = {}
    for s in _records(sessions):
        d = to_date(s["session_date"])
        if d is None or d > as_of:
            continue
        sessions_by_episode.setdefault(s["episode_id"], []).append((d, s["session_id"]))

    # pre/post by session id; follow-ups by episode (dated by recorded_on)
    pre: dict[str, float] = {}
    post: dict[str, float] = {}
    followups: dict[str, list[tuple[date, float]]] = {}
    for r in _records(scores):
        tp = r["timepoint"]
        if tp == "pre":
            pre[r["session_id"]] = float(r["score"])
        elif tp == "post":
            post[r["session_id"]] = float(r["score"])
        elif tp == "followup":
            d = to_date(r["recorded_on"])
            if d is None or d > as_of:
                continue
            followups.setdefault(r["episode_id"], []).append((d, float(r["score"])))
        else:
            raise ValueError(f"unknown timepoint {tp!r}")

    rows = []
    for e in _records(episodes):
        referral = to_date(e["referral_date"])
        if referral > as_of:
            continue
        eid = e["episode_id"]
        # 1. sessions, ordered by (session_date, session_id), numbered 1..n
        sess = sorted(sessions_by_episode.get(eid, []))
        n = len(sess)
        # 2. baseline = pre of session 1 (pre scores only count for sessions <= D)
        baseline = pre.get(sess[0][1]) if n >= 1 else None
        # 3. outcome observations (date, t, score)
        obs: list[tuple[date, int, float]] = []
        for k in range(2, n + 1):
            d_k, sid_k = sess[k - 1]
            if sid_k in pre:
                obs.append((d_k, k - 1, pre[sid_k]))
        for rec, score in followups.get(eid, []):
            t = sum(1 for d, _ in sess if d <= rec)
            if t >= 1:
                obs.append((rec, t, score))
        obs.sort(key=lambda o: (o[0], o[1]))
        # 4. final = last outcome observation
        final = obs[-1][2] if obs else None
        # 5. exclusion, first that applies
        if n == 0:
            reason = "no sessions"
        elif baseline is None:
            reason = "no baseline"
        elif baseline == 0:
            reason = "no pain at baseline"
        elif not obs:
            reason = "no outcome"
        else:
            reason = None

        change = pct = r30 = r50 = str_t = observed = None
        if reason is None:
            b = float(baseline)
            f = float(final)
            change = b - f
            pct = 100.0 * (b - f) / b
            r30 = bool(pct >= responder_30_threshold - EPS)
            r50 = bool(pct >= responder_50_threshold - EPS)
            str_t, observed = obs[-1][1], False
            for _d, t, score in obs:
                if 100.0 * (b - score) / b >= response_threshold - EPS:
                    str_t, observed = t, True
                    break

        prescribed = e.get("prescribed_sessions")
        rows.append({
            "episode_id": eid,
            "patient_id": e["patient_id"],
            "clinic_id": e["clinic_id"],
            "condition": e["condition"],
            "referral_date": referral,
            "sessions_attended": n,
            "prescribed_sessions": None if prescribed is None else int(prescribed),
            "baseline_pain": baseline,
            "final_pain": final,
            "change": change,
            "pct_change": pct,
            "responder_30": r30,
            "responder_50": r50,
            "sessions_to_response": str_t,
            "response_observed": observed,
            "exclusion_reason": reason,
        })
    return pd.DataFrame(rows, columns=EPISODE_COLUMNS).astype(object)


# ------------------------------------------------------------------- one condition


def _relief_by_episode(sessions: pd.DataFrame, scores: pd.DataFrame, as_of: date) -> dict[str, list[float]]:
    """pre - post of every session dated on or before D that has both scores, by episode."""
    pre: dict[str, float] = {}
    post: dict[str, float] = {}
    for r in _records(scores):
        if r["timepoint"] == "pre":
            pre[r["session_id"]] = float(r["score"])
        elif r["timepoint"] == "post":
            post[r["session_id"]] = float(r["score"])
    out: dict[str, list[float]] = {}
    for s in _records(sessions):
        if to_date(s["session_date"]) > as_of:
            continue
        sid = s["session_id"]
        if sid in pre and sid in post:
            out.setdefault(s["episode_id"], []).append(pre[sid] - post[sid])
    return out


def _immediate_relief(episode_ids, relief_by_episode: dict[str, list[float]]) -> list[float]:
    return [x for eid in sorted(episode_ids) for x in relief_by_episode.get(eid, [])]


def _group_row(name: str, outcomes: pd.DataFrame, relief: list[float], min_cell_size: int) -> dict:
    row: dict = {c: None for c in SUMMARY_COLUMNS}
    row["condition"] = name
    recs = _records(outcomes)
    analysed = [r for r in recs if r["exclusion_reason"] is None]
    n = len(analysed)
    row["n_episodes"] = len(recs)
    row["n_analysed"] = n
    row["suppressed"] = n < min_cell_size

    attended = [r for r in recs if r["sessions_attended"] >= 1]
    if attended:
        row["mean_sessions_attended"] = float(np.mean([r["sessions_attended"] for r in attended]))
    with_rx = [r for r in attended if r["prescribed_sessions"] is not None]
    if with_rx:
        row["adherence"] = float(np.mean([r["sessions_attended"] / r["prescribed_sessions"] for r in with_rx]))
    if relief:
        row["immediate_relief_mean"] = float(np.mean(relief))

    if n == 0:
        return row

    b = np.array([float(r["baseline_pain"]) for r in analysed])
    f = np.array([float(r["final_pain"]) for r in analysed])
    ch = np.array([float(r["change"]) for r in analysed])
    row["baseline_mean"] = float(np.mean(b))
    row["final_mean"] = float(np.mean(f))
    mean = float(np.mean(ch))
    row["mean_change"] = mean
    row["median_change"] = float(np.median(ch))
    sd_is_zero = len(set(ch.tolist())) == 1
    if n >= 2:
        if sd_is_zero:
            row["mean_change_ci_low"] = row["mean_change_ci_high"] = mean
        else:
            sd = float(np.std(ch, ddof=1))
            lo, hi = st.t.interval(0.95, n - 1, loc=mean, scale=sd / math.sqrt(n))
            row["mean_change_ci_low"], row["mean_change_ci_high"] = float(lo), float(hi)
            row["effect_size_dz"] = mean / sd
    if not np.all(ch == 0):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            row["p_value"] = float(st.wilcoxon(ch).pvalue)

    for label in ("30", "50"):
        k = sum(1 for r in analysed if r[f"responder_{label}"])
        row[f"responder_{label}_rate"] = k / n
        lo, hi = wilson_interval(k, n)
        row[f"responder_{label}_ci_low"], row[f"responder_{label}_ci_high"] = lo, hi

    durations = [int(r["sessions_to_response"]) for r in analysed]
    events = [bool(r["response_observed"]) for r in analysed]
    kmf = KaplanMeierFitter().fit(durations, event_observed=events)
    row["median_sessions_to_response"] = _finite_or_none(kmf.median_survival_time_)
    ci = median_survival_times(kmf.confidence_interval_)
    lower_col = [c for c in ci.columns if "lower" in c][0]
    upper_col = [c for c in ci.columns if "upper" in c][0]
    row["median_sessions_ci_low"] = _finite_or_none(ci[lower_col].iloc[0])
    row["median_sessions_ci_high"] = _finite_or_none(ci[upper_col].iloc[0])
    s_at = kmf.survival_function_at_times([3, 6, 10])
    for t, s in zip((3, 6, 10), s_at.to_numpy()):
        row[f"improved_by_session_{t}"] = 1.0 - float(s)
    return row


def reference_condition_summary(
    episodes,
    sessions,
    scores,
    as_of,
    responder_30_threshold: float = 30.0,
    responder_50_threshold: float = 50.0,
    response_threshold: float = 30.0,
    min_cell_size: int = 11,
) -> pd.DataFrame:
    as_of = to_date(as_of)
    sessions = to_pandas(sessions)
    scores = to_pandas(scores)
    outcomes = reference_episode_outcomes(
        episodes, sessions, scores, as_of,
        responder_30_threshold=responder_30_threshold,
        responder_50_threshold=responder_50_threshold,
        response_threshold=response_threshold,
    )
    relief_by_episode = _relief_by_episode(sessions, scores, as_of)
    rows = []
    for cond in sorted(set(outcomes["condition"])):
        part = outcomes[outcomes["condition"] == cond]
        relief = _immediate_relief(set(part["episode_id"]), relief_by_episode)
        rows.append(_group_row(cond, part, relief, min_cell_size))
    # BH over condition rows that have a p (suppressed ones included; not ALL)
    with_p = [r for r in rows if r["p_value"] is not None]
    if with_p:
        q = st.false_discovery_control([r["p_value"] for r in with_p])
        for r, qv in zip(with_p, q):
            r["q_value"] = float(qv)
    relief_all = _immediate_relief(set(outcomes["episode_id"]), relief_by_episode)
    all_row = _group_row("ALL", outcomes, relief_all, min_cell_size)
    all_row["q_value"] = all_row["p_value"]
    rows.append(all_row)
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS).astype(object)


# ------------------------------------------------------------------- comparison


def _norm_cell(v):
    if is_missing(v):
        return None
    if isinstance(v, (pd.Timestamp, datetime, np.datetime64)):
        return to_date(v)
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v)
    return v


def _cells_equal(a, b, rel_tol: float, abs_tol: float) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=rel_tol, abs_tol=abs_tol)
    return a == b


def compare_frames(actual, expected, key: str, columns: list[str], rel_tol: float = 1e-9,
                   abs_tol: float = 1e-12, max_report: int = 30) -> list[str]:
    """Cell-by-cell differences between production (actual) and reference (expected).

    Returns a list of human-readable mismatch lines (empty when they agree).
    """
    actual = to_pandas(actual)
    expected = to_pandas(expected)
    problems: list[str] = []
    missing_cols = [c for c in columns if c not in actual.columns]
    if missing_cols:
        problems.append(f"production lacks columns {missing_cols}")
    a_keys = list(actual[key]) if key in actual.columns else []
    e_keys = list(expected[key])
    if len(set(a_keys)) != len(a_keys):
        problems.append(f"production has duplicate {key} values")
    only_a = sorted(set(a_keys) - set(e_keys))
    only_e = sorted(set(e_keys) - set(a_keys))
    if only_a:
        problems.append(f"rows only in production ({len(only_a)}): {only_a[:10]}")
    if only_e:
        problems.append(f"rows only in reference ({len(only_e)}): {only_e[:10]}")
    if key not in actual.columns:
        return problems
    a_idx = {k: i for i, k in enumerate(a_keys)}
    a_recs = actual.to_dict("records")
    counts: dict[str, int] = {}
    for e_rec in expected.to_dict("records"):
        k = e_rec[key]
        if k not in a_idx:
            continue
        a_rec = a_recs[a_idx[k]]
        for c in columns:
            if c not in actual.columns:
                continue
            av, ev = _norm_cell(a_rec[c]), _norm_cell(e_rec[c])
            if not _cells_equal(av, ev, rel_tol, abs_tol):
                counts[c] = counts.get(c, 0) + 1
                if len(problems) < max_report:
                    problems.append(f"{key}={k!r} column {c}: production={av!r} reference={ev!r}")
    if counts:
        problems.append(f"mismatch counts by column: {counts}")
    return problems


def summary_extra_columns(actual) -> list[str]:
    actual = to_pandas(actual)
    return [c for c in actual.columns if c not in SUMMARY_COLUMNS]

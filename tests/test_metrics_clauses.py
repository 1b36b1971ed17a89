"""One hand-worked test per clause of METRICS.md.

Every expected number is written out by hand (arithmetic in the comments); none is
computed by the reference implementation. Each test runs twice: against production
(``pipelines.outcomes``) and against ``tests/reference_metrics.py``, so that both are
held to the same hand-worked numbers.
"""

from __future__ import annotations

import math
from datetime import date

import polars as pl
import pytest

import reference_metrics as ref
from pipelines.settings import Settings

AS_OF = date(2025, 3, 30)  # a Sunday (end of ISO week 2025-W13)


def d(mmdd: str) -> date:
    """'01-10' -> 2025-01-10."""
    return date.fromisoformat(f"2025-{mmdd}")


# ----------------------------------------------------------------- data building


class Data:
    def __init__(self) -> None:
        self.episodes: list[dict] = []
        self.sessions: list[dict] = []
        self.scores: list[dict] = []

    def episode(self, eid, condition="neck_pain", referral="01-01", rx=None, clinic="C1"):
        self.episodes.append({
            "episode_id": eid, "patient_id": f"P-{eid}", "clinic_id": clinic,
            "condition": condition, "referral_date": d(referral), "prescribed_sessions": rx,
            "age_band": "45-59", "sex": "F", "chronicity": None,
        })
        return self

    def session(self, sid, eid, when, pre=None, post=None, pre_rec=None, post_rec=None):
        self.sessions.append({
            "session_id": sid, "episode_id": eid, "therapist_id": "T1",
            "session_date": d(when), "duration_min": 45,
        })
        if pre is not None:
            self.scores.append({"episode_id": eid, "session_id": sid, "timepoint": "pre",
                                "score": float(pre), "recorded_on": d(pre_rec) if pre_rec else None})
        if post is not None:
            self.scores.append({"episode_id": eid, "session_id": sid, "timepoint": "post",
                                "score": float(post), "recorded_on": d(post_rec) if post_rec else None})
        return self

    def followup(self, eid, when, score):
        self.scores.append({"episode_id": eid, "session_id": None, "timepoint": "followup",
                            "score": float(score), "recorded_on": d(when)})
        return self

    def simple(self, eid, condition, scores, rx=None, start_day=10):
        """An episode whose sessions 1..n (one a day from Jan start_day) carry `pre` = scores."""
        self.episode(eid, condition, rx=rx)
        for k, s in enumerate(scores, start=1):
            self.session(f"{eid}-S{k:02d}", eid, f"01-{start_day + k - 1:02d}", pre=s)
        return self

    def frames(self):
        episodes = pl.DataFrame(self.episodes, schema={
            "episode_id": pl.String, "patient_id": pl.String, "clinic_id": pl.String,
            "condition": pl.String, "referral_date": pl.Date, "prescribed_sessions": pl.Int64,
            "age_band": pl.String, "sex": pl.String, "chronicity": pl.String})
        sessions = pl.DataFrame(self.sessions, schema={
            "session_id": pl.String, "episode_id": pl.String, "therapist_id": pl.String,
            "session_date": pl.Date, "duration_min": pl.Int64})
        scores = pl.DataFrame(self.scores, schema={
            "episode_id": pl.String, "session_id": pl.String, "timepoint": pl.String,
            "score": pl.Float64, "recorded_on": pl.Date})
        return episodes, sessions, scores


# ----------------------------------------------------------------- running


def _ref_kwargs(settings: Settings | None, summary: bool) -> dict:
    s = settings or Settings()
    kw = dict(responder_30_threshold=s.responder_30_threshold,
              responder_50_threshold=s.responder_50_threshold,
              response_threshold=s.response_threshold)
    if summary:
        kw["min_cell_size"] = s.min_cell_size
    return kw


def _rows(frame, key) -> dict:
    pdf = ref.to_pandas(frame)
    out = {}
    for rec in pdf.to_dict("records"):
        out[rec[key]] = {k: ref._norm_cell(v) for k, v in rec.items()}
    assert len(out) == len(pdf), f"duplicate {key} values in output"
    return out


@pytest.fixture(params=["production", "reference"])
def impl(request):
    return request.param


def outcomes(impl, data: Data, as_of=AS_OF, settings=None) -> dict:
    e, s, p = data.frames()
    if impl == "production":
        from pipelines.outcomes.metrics import episode_outcomes
        frame = episode_outcomes(e, s, p, as_of, settings)
    else:
        frame = ref.reference_episode_outcomes(e, s, p, as_of, **_ref_kwargs(settings, False))
    return _rows(frame, "episode_id")


def summary(impl, data: Data, as_of=AS_OF, settings=None) -> dict:
    e, s, p = data.frames()
    if impl == "production":
        from pipelines.outcomes.summary import condition_summary
        frame = condition_summary(e, s, p, as_of, settings)
    else:
        frame = ref.reference_condition_summary(e, s, p, as_of, **_ref_kwargs(settings, True))
    rows = _rows(frame, "condition")
    rows["__columns__"] = list(ref.to_pandas(frame).columns)
    return rows


def check(row: dict, **expected) -> None:
    """Compare the named cells of one output row with hand-worked values."""
    bad = []
    for col, want in expected.items():
        if col not in row:
            bad.append(f"{col}: missing column")
            continue
        got = row[col]
        if want is None:
            ok = got is None
        elif isinstance(want, bool):
            ok = isinstance(got, bool) and got == want
        elif isinstance(want, (int, float)):
            ok = (got is not None and not isinstance(got, bool)
                  and math.isclose(float(got), float(want), rel_tol=1e-9, abs_tol=1e-12))
        else:
            ok = got == want
        if not ok:
            bad.append(f"{col}: got {got!r}, expected {want!r}")
    assert not bad, "; ".join(bad)


ANALYSED_NULLS = dict(change=None, pct_change=None, responder_30=None, responder_50=None,
                      sessions_to_response=None, response_observed=None)


# ================================================================ one episode


def test_sessions_ordered_by_date_then_session_id(impl):
    data = Data().episode("E1", referral="01-01")
    # Inserted out of order; two sessions share 01-10. Order is (date, id):
    #   S-c 01-05 (k=1, pre 8) ; S-a 01-10 (k=2, pre 6) ; S-b 01-10 (k=3, pre 4)
    data.session("S-b", "E1", "01-10", pre=4)
    data.session("S-c", "E1", "01-05", pre=8)
    data.session("S-a", "E1", "01-10", pre=6)
    # Plain string order of ids on one date: "x10" < "x9".
    data.episode("E2", referral="01-01")
    data.session("x1", "E2", "01-05", pre=10)
    data.session("x9", "E2", "01-07", pre=3)    # k=3 ("x10" < "x9")
    data.session("x10", "E2", "01-07", pre=6)   # k=2
    r = outcomes(impl, data)
    # E1: B = 8 (S-c); obs t=1: 6 (25%, no response), t=2: 4 (50%) -> F = 4
    check(r["E1"], sessions_attended=3, baseline_pain=8.0, final_pain=4.0, change=4.0,
          pct_change=50.0, responder_30=True, responder_50=True,
          sessions_to_response=2, response_observed=True, exclusion_reason=None)
    # E2: B = 10; obs t=1: x10 = 6 (40% -> response at t=1), t=2: x9 = 3 -> F = 3, change 7
    check(r["E2"], sessions_attended=3, baseline_pain=10.0, final_pain=3.0, change=7.0,
          pct_change=70.0, sessions_to_response=1, response_observed=True)


def test_baseline_is_pre_of_session_1(impl):
    data = Data().episode("E1")
    data.session("S1", "E1", "01-10", pre=7, post=3)   # post 3 is not the baseline
    data.session("S2", "E1", "01-12", pre=5, post=2)
    data.followup("E1", "01-05", 1.0)                   # before session 1: t = 0, ignored
    r = outcomes(impl, data)
    # B = 7, F = 5 (pre of S2, t=1); change 2; pct 100*2/7 = 28.571428571428573
    check(r["E1"], baseline_pain=7.0, final_pain=5.0, change=2.0,
          pct_change=100 * 2 / 7, responder_30=False, responder_50=False,
          sessions_to_response=1, response_observed=False, exclusion_reason=None)


@pytest.mark.parametrize("case", ["no sessions", "no baseline", "no pain at baseline", "no outcome"])
def test_each_exclusion_reason(impl, case):
    data = Data().episode("E1")
    if case == "no sessions":
        data.followup("E1", "01-20", 3.0)          # a follow-up with t = 0: not an outcome
        expect = dict(sessions_attended=0, baseline_pain=None, final_pain=None)
    elif case == "no baseline":
        data.session("S1", "E1", "01-10", post=6)   # session 1 has only a post score
        data.session("S2", "E1", "01-12", pre=5)
        expect = dict(sessions_attended=2, baseline_pain=None, final_pain=5.0)
    elif case == "no pain at baseline":
        data.session("S1", "E1", "01-10", pre=0)
        data.session("S2", "E1", "01-12", pre=3)
        expect = dict(sessions_attended=2, baseline_pain=0.0, final_pain=3.0)
    else:
        data.session("S1", "E1", "01-10", pre=6, post=2)  # only session, no follow-up
        expect = dict(sessions_attended=1, baseline_pain=6.0, final_pain=None)
    r = outcomes(impl, data)
    check(r["E1"], exclusion_reason=case, **expect, **ANALYSED_NULLS)


def test_exclusion_precedence(impl):
    data = Data()
    # no sessions (as of D: its only session is after D) + its pre exists -> "no sessions"
    data.episode("A").session("A1", "A", "04-02", pre=5, pre_rec="03-01")
    # no baseline + no outcome -> "no baseline"
    data.episode("B").session("B1", "B", "01-10", post=4)
    # baseline 0 + no outcome -> "no pain at baseline"
    data.episode("C").session("C1", "C", "01-10", pre=0, post=0)
    # no baseline although B would be 0 elsewhere: session 1 lacks pre, session 2 pre 0
    data.episode("E").session("E1", "E", "01-10").session("E2", "E", "01-11", pre=0)
    r = outcomes(impl, data)
    check(r["A"], exclusion_reason="no sessions", sessions_attended=0, baseline_pain=None)
    check(r["B"], exclusion_reason="no baseline", sessions_attended=1, final_pain=None)
    check(r["C"], exclusion_reason="no pain at baseline", baseline_pain=0.0, final_pain=None)
    check(r["E"], exclusion_reason="no baseline", baseline_pain=None, final_pain=0.0)


def test_followup_t_is_number_of_sessions_on_or_before_its_date(impl):
    data = Data().episode("E1")
    data.session("S1", "E1", "01-10", pre=8)
    data.session("S2", "E1", "01-12")
    data.session("S3", "E1", "01-14")
    data.followup("E1", "01-13", 4.0)   # sessions on/before 01-13: S1, S2 -> t = 2 (50%)
    data.followup("E1", "02-20", 6.0)   # t = 3; last observation -> F = 6
    r = outcomes(impl, data)
    # change 8-6 = 2, pct 25; first response at t = 2
    check(r["E1"], baseline_pain=8.0, final_pain=6.0, change=2.0, pct_change=25.0,
          responder_30=False, responder_50=False, sessions_to_response=2,
          response_observed=True, exclusion_reason=None)


def test_followup_before_any_session_is_ignored(impl):
    data = Data()
    # (a) only outcome candidate is a follow-up before session 1 -> "no outcome"
    data.episode("A", referral="01-01").followup("A", "01-03", 2.0)
    data.session("A1", "A", "01-10", pre=8)
    # (b) a t = 0 follow-up (score 1, would be a 87.5% response at t = 0) is not used
    data.episode("B", referral="01-01").followup("B", "01-03", 1.0)
    data.session("B1", "B", "01-10", pre=8)
    data.session("B2", "B", "01-11", pre=6)        # t=1, 25%
    r = outcomes(impl, data)
    check(r["A"], exclusion_reason="no outcome", baseline_pain=8.0, final_pain=None)
    check(r["B"], exclusion_reason=None, final_pain=6.0, change=2.0, pct_change=25.0,
          sessions_to_response=1, response_observed=False)


def test_pre_post_dated_by_session_not_recorded_on(impl):
    data = Data().episode("E1")
    data.session("S1", "E1", "01-10", pre=8, pre_rec="01-10")
    # recorded_on after S3 and even after D: still dated 01-12 (session S2), still counts
    data.session("S2", "E1", "01-12", pre=4, pre_rec="06-01")
    data.session("S3", "E1", "01-14", pre=6, pre_rec="01-01")
    r = outcomes(impl, data)
    # obs (01-12, t=1, 4), (01-14, t=2, 6) -> F = 6; response (50%) at t = 1
    check(r["E1"], final_pain=6.0, change=2.0, pct_change=25.0, responder_30=False,
          sessions_to_response=1, response_observed=True)


def test_followup_on_same_date_as_session_pre_ordered_by_date_then_t(impl):
    data = Data().episode("E1")
    data.session("S1", "E1", "01-10", pre=8)
    data.session("S2", "E1", "01-12", pre=5)  # (01-12, t=1, 5)
    data.followup("E1", "01-12", 7.0)         # (01-12, t=2, 7): after the pre on the same date
    data.episode("E2")
    data.session("T1", "E2", "01-10", pre=8)
    data.followup("E2", "01-10", 6.0)         # same date as session 1: t = 1, an outcome
    r = outcomes(impl, data)
    # E1: F = 7, change 1, pct 12.5; response: 5 is 37.5% at t = 1
    check(r["E1"], final_pain=7.0, change=1.0, pct_change=12.5, responder_30=False,
          sessions_to_response=1, response_observed=True, exclusion_reason=None)
    # E2: F = 6, change 2, pct 25, censored at t = 1
    check(r["E2"], final_pain=6.0, change=2.0, pct_change=25.0, sessions_to_response=1,
          response_observed=False, exclusion_reason=None)


def test_final_is_last_observation_and_responder_uses_final(impl):
    data = Data().simple("E1", "neck_pain", [8, 3, 7])
    r = outcomes(impl, data)
    # obs t=1: 3 (62.5% -> response at 1), t=2: 7 -> F = 7, change 1, pct 12.5
    check(r["E1"], final_pain=7.0, change=1.0, pct_change=12.5, responder_30=False,
          responder_50=False, sessions_to_response=1, response_observed=True)


def test_response_at_first_observation(impl):
    data = Data().simple("E1", "neck_pain", [10, 7, 9])
    r = outcomes(impl, data)
    # t=1: 100*(10-7)/10 = 30 -> reaches 30 at t = 1. F = 9 -> pct 10
    check(r["E1"], sessions_to_response=1, response_observed=True, final_pain=9.0,
          pct_change=10.0, responder_30=False)


def test_never_responding_is_censored_at_last_t(impl):
    data = Data().simple("E1", "neck_pain", [8, 7, 6.5, 8])
    data.followup("E1", "02-01", 6.0)   # after all 4 sessions: t = 4, last observation
    r = outcomes(impl, data)
    # improvements 12.5%, 18.75%, 0%, 25%: none reaches 30 -> t of last obs = 4, censored
    check(r["E1"], sessions_to_response=4, response_observed=False, final_pain=6.0,
          change=2.0, pct_change=25.0, responder_30=False)


def test_post_score_never_an_outcome(impl):
    data = Data().episode("E1").episode("E2")
    data.session("S1", "E1", "01-10", pre=8, post=2)
    data.session("S2", "E1", "01-12", pre=7, post=1)
    data.session("T1", "E2", "01-10", pre=8, post=2)
    data.session("T2", "E2", "01-12", post=1)       # only a post: no observation
    r = outcomes(impl, data)
    # E1: the only outcome observation is pre of S2 = 7 -> change 1, 12.5%, censored t=1
    check(r["E1"], final_pain=7.0, change=1.0, pct_change=12.5, sessions_to_response=1,
          response_observed=False, responder_30=False)
    check(r["E2"], exclusion_reason="no outcome", sessions_attended=2, final_pain=None)


def test_percentage_threshold_with_decimals(impl):
    data = Data()
    data.simple("A", "neck_pain", [7, 4.9])    # 100*(7-4.9)/7 = 29.999999999999996 -> 30%
    data.simple("B", "neck_pain", [3.3, 2.31])  # 29.999999999999993 in floats -> 30%
    data.simple("C", "neck_pain", [7, 4.91])   # 29.857142857... -> not 30%
    data.simple("D", "neck_pain", [4.2, 2.1])  # exactly 50%
    r = outcomes(impl, data)
    check(r["A"], pct_change=30.0, change=2.1, responder_30=True, responder_50=False,
          sessions_to_response=1, response_observed=True)
    check(r["B"], pct_change=30.0, responder_30=True, sessions_to_response=1,
          response_observed=True)
    check(r["C"], pct_change=100 * 2.09 / 7, responder_30=False, sessions_to_response=1,
          response_observed=False)
    check(r["D"], pct_change=50.0, responder_30=True, responder_50=True)


def test_as_of_cutoff(impl):
    data = Data()
    data.episode("LATE", referral="04-01")            # referred after D
    data.episode("E1", referral="03-01", rx=4)
    data.session("S1", "E1", "03-10", pre=8)
    data.session("S2", "E1", "03-20", pre=6)
    data.session("S3", "E1", "04-02", pre=2, pre_rec="03-25")  # session after D
    data.followup("E1", "03-30", 5.0)                 # on D: counts, t = 2
    data.followup("E1", "03-31", 1.0)                 # after D: ignored
    r = outcomes(impl, data)
    assert set(r) == {"E1"}
    # obs (03-20,1,6), (03-30,2,5): F = 5, change 3, pct 37.5, response at t = 2
    check(r["E1"], sessions_attended=2, prescribed_sessions=4, final_pain=5.0, change=3.0,
          pct_change=37.5, responder_30=True, responder_50=False,
          sessions_to_response=2, response_observed=True, exclusion_reason=None)
    # re-run later: everything counts
    r2 = outcomes(impl, data, as_of=d("04-30"))
    assert set(r2) == {"E1", "LATE"}
    # obs (03-20,1,6) (03-30,2,5) (03-31,2,1) (04-02,2,2): F = 2 -> change 6, 75%
    check(r2["E1"], sessions_attended=3, final_pain=2.0, change=6.0, pct_change=75.0,
          responder_50=True, sessions_to_response=2, response_observed=True)
    check(r2["LATE"], exclusion_reason="no sessions", sessions_attended=0)


def test_episode_identity_columns_and_sessions_attended(impl):
    data = Data().episode("E1", condition="arthritis", referral="01-02", rx=12, clinic="K9")
    for i in range(5):
        data.session(f"S{i}", "E1", f"01-{10 + i:02d}")
    r = outcomes(impl, data)
    check(r["E1"], patient_id="P-E1", clinic_id="K9", condition="arthritis",
          referral_date=date(2025, 1, 2), sessions_attended=5, prescribed_sessions=12,
          exclusion_reason="no baseline")


def test_thresholds_come_from_settings(impl):
    data = Data().simple("E1", "neck_pain", [8, 5, 4, 3.5])
    s = Settings(responder_30_threshold=25.0, responder_50_threshold=60.0, response_threshold=50.0)
    r = outcomes(impl, data, settings=s)
    # pct final = 100*4.5/8 = 56.25 -> >=25 True, >=60 False; 37.5% at t=1, 50% at t=2
    check(r["E1"], pct_change=56.25, responder_30=True, responder_50=False,
          sessions_to_response=2, response_observed=True)
    r0 = outcomes(impl, data)
    check(r0["E1"], responder_30=True, responder_50=True, sessions_to_response=1)


# ================================================================ one condition


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


def test_summary_rows_and_columns(impl):
    data = Data()
    data.simple("A", "neck_pain", [8, 4])
    data.simple("B", "lymphedema", [6, 6])          # a code a clinic added
    data.episode("C", "arthritis", referral="04-05")  # only episode after D: no row
    data.episode("E", "neck_pain")                   # no sessions, still counted
    r = summary(impl, data)
    assert r.pop("__columns__") == SUMMARY_COLUMNS
    assert set(r) == {"neck_pain", "lymphedema", "ALL"}
    check(r["neck_pain"], n_episodes=2, n_analysed=1)
    check(r["lymphedema"], n_episodes=1, n_analysed=1)
    check(r["ALL"], n_episodes=3, n_analysed=2, baseline_mean=7.0, final_mean=5.0,
          mean_change=2.0)


def test_adherence_and_mean_sessions_attended(impl):
    data = Data()
    data.simple("A1", "arthritis", [8, None, None, None, 4], rx=10)  # analysed, 5/10
    data.episode("A2", "arthritis", rx=4)                            # no baseline, 6/4
    for i in range(6):
        data.session(f"A2-{i}", "A2", f"01-{10 + i:02d}")
    data.simple("A3", "arthritis", [6, None, None])                  # no rx: 3 sessions
    data.episode("A4", "arthritis", rx=8)                            # 0 sessions
    data.episode("A5", "arthritis", rx=2).session("A5-1", "A5", "04-05", pre=5)  # after D
    r = summary(impl, data)
    # adherence = (5/10 + 6/4) / 2 = (0.5 + 1.5)/2 = 1.0  (not capped: capped would be 0.75)
    # mean_sessions_attended = (5 + 6 + 3) / 3 = 14/3
    for row in (r["arthritis"], r["ALL"]):
        check(row, n_episodes=5, n_analysed=1, adherence=1.0,
              mean_sessions_attended=14 / 3, baseline_mean=8.0, final_mean=4.0,
              mean_change=4.0, median_change=4.0, immediate_relief_mean=None,
              mean_change_ci_low=None, mean_change_ci_high=None, effect_size_dz=None)


def test_immediate_relief_mean(impl):
    data = Data()
    data.episode("H1", "headache_migraine")
    data.session("H1-1", "H1", "01-10", pre=8, post=5)    # 3.0
    data.session("H1-2", "H1", "01-11", pre=6, post=6)    # 0.0
    data.session("H1-3", "H1", "01-12", pre=5)            # no post
    data.session("H1-4", "H1", "01-13", post=2)           # no pre
    data.episode("H2", "headache_migraine")               # excluded (no outcome), counts
    data.session("H2-1", "H2", "01-10", pre=4, post=1.5)  # 2.5
    data.episode("H3", "headache_migraine")
    data.session("H3-1", "H3", "04-02", pre=7, post=3)    # after D: ignored
    data.episode("H4", "headache_migraine", referral="04-01")
    data.session("H4-1", "H4", "04-02", pre=9, post=0)    # episode after D: ignored
    r = summary(impl, data)
    # (3.0 + 0.0 + 2.5) / 3 = 1.8333333333333333
    for row in (r["headache_migraine"], r["ALL"]):
        check(row, immediate_relief_mean=5.5 / 3, n_episodes=3, n_analysed=1,
              mean_sessions_attended=(4 + 1) / 2, adherence=None)


def test_suppressed_when_n_analysed_below_k(impl):
    data = Data()
    for i in range(11):
        data.simple(f"L{i}", "low_back_pain", [8, 4])
    for i in range(10):
        data.simple(f"N{i}", "neck_pain", [8, 4])
    for i in range(5):
        data.simple(f"X{i}", "neck_pain", [8])  # no outcome
    r = summary(impl, data)
    check(r["low_back_pain"], n_analysed=11, suppressed=False)
    check(r["neck_pain"], n_episodes=15, n_analysed=10, suppressed=True, mean_change=4.0)
    check(r["ALL"], n_analysed=21, suppressed=False)
    r2 = summary(impl, data, settings=Settings(min_cell_size=21))
    check(r2["low_back_pain"], suppressed=True)
    check(r2["ALL"], suppressed=False)  # 21 is not < 21


def test_mean_ci_empty_below_two_and_equal_to_mean_when_sd_zero(impl):
    data = Data()
    data.simple("A1", "prenatal", [6, 4])                   # one analysed: change 2
    for i in range(3):
        data.simple(f"B{i}", "parkinsons", [8, 5])          # changes 3, 3, 3
    r = summary(impl, data)
    # n = 1: mean 2, no CI, no dz; Wilcoxon of [2]: T+ in {0,1} each 1/2 -> p = 2*0.5 = 1
    check(r["prenatal"], n_analysed=1, mean_change=2.0, median_change=2.0,
          mean_change_ci_low=None, mean_change_ci_high=None, effect_size_dz=None,
          p_value=1.0, suppressed=True)
    # sd = 0: CI = [3, 3]; dz empty; p is not empty (changes are not all 0)
    check(r["parkinsons"], n_analysed=3, mean_change=3.0, median_change=3.0,
          mean_change_ci_low=3.0, mean_change_ci_high=3.0, effect_size_dz=None)
    assert r["parkinsons"]["p_value"] is not None


def test_sd_zero_with_decimal_changes(impl):
    """Seven identical changes 8.1 - 5.0 = 3.0999999999999996: the sd is 0 (every change is
    the same number), so dz is empty and the CI is the mean. A floating-point sample sd
    of these seven doubles comes out as ~4.8e-16, not 0, and dividing by it would report
    dz ~ 6.5e15, which is not a real effect size."""
    data = Data()
    for i in range(7):
        data.simple(f"S{i}", "upper_back_tension", [8.1, 5.0])
    r = summary(impl, data)
    for row in (r["upper_back_tension"], r["ALL"]):
        check(row, n_analysed=7, mean_change=3.1, median_change=3.1, mean_change_ci_low=3.1,
              mean_change_ci_high=3.1, effect_size_dz=None)


def test_p_value_empty_when_every_change_zero(impl):
    data = Data()
    for i in range(3):
        data.simple(f"Z{i}", "ptsd_stress", [5, 5])
    r = summary(impl, data)
    # Wilson for 0/3: low 0, high = (z^2/n)/(1 + z^2/n), z^2 = 3.841458820694124
    #   = 1.2804862735647080 / 2.2804862735647080 = 0.5614970317550455
    for row in (r["ptsd_stress"], r["ALL"]):
        check(row, n_analysed=3, mean_change=0.0, median_change=0.0,
              mean_change_ci_low=0.0, mean_change_ci_high=0.0, effect_size_dz=None,
              p_value=None, q_value=None, responder_30_rate=0.0, responder_30_ci_low=0.0,
              responder_30_ci_high=0.5614970317550455, responder_50_rate=0.0,
              median_sessions_to_response=None, improved_by_session_3=0.0)


def test_q_value_bh_over_condition_rows_all_keeps_own_p(impl):
    data = Data()
    for c, changes in [("neck_pain", [1, 2, 3]), ("arthritis", [1, 2, 3, 4]),
                       ("prenatal", [1, 2, 3, 4, 5]), ("ptsd_stress", [0, 0, 0])]:
        for i, ch in enumerate(changes):
            data.simple(f"{c}-{i}", c, [10, 10 - ch])
    r = summary(impl, data)
    # exact Wilcoxon, all changes positive and distinct: p = 2 / 2^n
    #   n=3: 0.25 ; n=4: 0.125 ; n=5: 0.0625 ; all-zero row: no p (m = 3 rows)
    # BH: sorted p 0.0625 (i=1), 0.125 (i=2), 0.25 (i=3), m = 3:
    #   0.0625*3/1 = 0.1875, 0.125*3/2 = 0.1875, 0.25*3/3 = 0.25; running min from the top
    #   -> q = 0.1875, 0.1875, 0.25. (Counting ALL as a 4th p would change every q.)
    check(r["neck_pain"], p_value=0.25, q_value=0.25, suppressed=True)
    check(r["arthritis"], p_value=0.125, q_value=0.1875)
    check(r["prenatal"], p_value=0.0625, q_value=0.1875)
    check(r["ptsd_stress"], p_value=None, q_value=None)
    assert r["ALL"]["p_value"] is not None
    assert r["ALL"]["q_value"] == r["ALL"]["p_value"]


def _km_sample() -> Data:
    """Five analysed episodes, durations [1,2,2,3,4], events [1,1,0,1,0]."""
    data = Data()
    data.simple("K1", "sports_injury", [10, 5])            # 50% at t=1 -> (1, event)
    data.simple("K2", "sports_injury", [10, 8, 6])         # 20%, 40% -> (2, event)
    data.simple("K3", "sports_injury", [10, 9, 8])         # 10%, 20% -> (2, censored)
    data.simple("K4", "sports_injury", [10, 9, 9, 7])      # 30% at t=3 -> (3, event)
    data.simple("K5", "sports_injury", [10, 9, 9, 9, 9])   # never -> (4, censored)
    return data


def test_km_median_hand_worked(impl):
    r = summary(impl, _km_sample())
    # Kaplan-Meier, d = events, n = at risk:
    #   t=1: n=5 d=1 S = 4/5 = 0.8
    #   t=2: n=4 d=1 (one censored too) S = 0.8 * 3/4 = 0.6
    #   t=3: n=2 d=1 S = 0.6 * 1/2 = 0.3
    #   t=4: n=1 d=0 S = 0.3
    # median = smallest t with S <= 0.5 = 3; 1 - S(3) = 1 - S(6) = 1 - S(10) = 0.7
    # CI band (exponential Greenwood, log(-log)): c(t) = sum d/(n(n-d)):
    #   c(1) = 1/20 = 0.05; c(2) = 0.05 + 1/12; c(3) = c(2) + 1/2 = 0.6333...
    #   bound = exp(-exp(log(-log S) -/+ z*sqrt(c)/log S)), z = 1.959963984540054
    #   lower: t=1: log(-log .8) = -1.49994, z*sqrt(.05)/log .8 = 0.43826/-0.22314 = -1.96403
    #          -> exp(-exp(0.46409)) = 0.2038 <= 0.5 -> ci_low = 1
    #   upper: t=1 0.9692, t=2 0.8818, t=3 0.7192, t=4 0.7192: never <= 0.5 -> not reached
    for row in (r["sports_injury"], r["ALL"]):
        check(row, median_sessions_to_response=3.0, median_sessions_ci_low=1.0,
              median_sessions_ci_high=None, improved_by_session_3=0.7,
              improved_by_session_6=0.7, improved_by_session_10=0.7)


def test_change_statistics_hand_worked(impl):
    r = summary(impl, _km_sample())
    # changes: 10-5=5, 10-6=4, 10-8=2, 10-7=3, 10-9=1; mean 3; median 3
    # sample sd = sqrt((4+1+1+0+4)/4) = sqrt(2.5) = 1.5811388300841898
    # se = sqrt(2.5)/sqrt(5) = sqrt(0.5) = 0.7071067811865476; t(0.975, 4) = 2.7764451051977934
    # CI = 3 -/+ 1.9632431614775572 = [1.0367568385224428, 4.963243161477557]
    # dz = 3 / sqrt(2.5) = 1.8973665961010275
    # Wilcoxon exact, 5 positive distinct changes: p = 2/2^5 = 0.0625
    # responder_30: finals 50%, 40%, 20%, 30%, 10% -> 3/5; responder_50: 1/5
    # Wilson, z^2 = 3.841458820694124:
    #   3/5: denom = 1 + z^2/5 = 1.7682917641388248, centre = (0.6 + z^2/10)/denom = 0.5565517535,
    #        half = z/denom*sqrt(.24/5 + z^2/100) = 0.3258274722 -> [0.2307242812760128, 0.882379225767352]
    #   1/5: centre = (0.2 + z^2/10)/denom = 0.3303447394,
    #        half = z/denom*sqrt(.16/5 + z^2/100) -> [0.036224108632430085, 0.6244653702374747]
    check(r["sports_injury"], n_episodes=5, n_analysed=5, baseline_mean=10.0, final_mean=7.0,
          mean_change=3.0, median_change=3.0, mean_change_ci_low=1.0367568385224428,
          mean_change_ci_high=4.963243161477557, effect_size_dz=1.8973665961010275,
          p_value=0.0625, q_value=0.0625,
          responder_30_rate=0.6, responder_30_ci_low=0.2307242812760128,
          responder_30_ci_high=0.882379225767352, responder_50_rate=0.2,
          responder_50_ci_low=0.036224108632430085, responder_50_ci_high=0.6244653702374747,
          mean_sessions_attended=(2 + 3 + 3 + 4 + 5) / 5, adherence=None,
          immediate_relief_mean=None, suppressed=True)


def test_km_median_not_reached_is_empty(impl):
    data = Data()
    data.simple("N1", "carpal_tunnel", [10, 5])        # (1, event)
    data.simple("N2", "carpal_tunnel", [10, 9, 9])     # (2, censored)
    data.simple("N3", "carpal_tunnel", [10, 9, 9, 9])  # (3, censored)
    r = summary(impl, data)
    # S(1) = 2/3, then no events: S stays 2/3 > 0.5 -> median not reached -> empty
    # lower band at t=1: c = 1/(3*2) = 1/6; log(-log(2/3)) = -0.90272,
    #   z*sqrt(1/6)/log(2/3) = 0.80015/-0.40547 = -1.97343 -> exp(-exp(1.07071)) = 0.0541
    #   <= 0.5 -> ci_low = 1; upper 0.9452 never <= 0.5 -> empty
    # 1 - S(t) = 1/3 at t = 3, 6, 10 (carried past the last t = 3)
    check(r["carpal_tunnel"], median_sessions_to_response=None, median_sessions_ci_low=1.0,
          median_sessions_ci_high=None, improved_by_session_3=1 / 3,
          improved_by_session_6=1 / 3, improved_by_session_10=1 / 3)


def test_improved_by_session_before_first_event(impl):
    data = Data()
    data.simple("M1", "multiple_sclerosis", [10, 9, 9, 9, 5])   # 50% at t=4 (event)
    data.simple("M2", "multiple_sclerosis", [10, 9, 9, 9, 9, 9, 9, 9, 4])  # (8, event)
    r = summary(impl, data)
    # S(t) = 1 for t < 4; S(4) = 1/2; S(8) = 0
    # median: smallest t with S <= 0.5 = 4; 1-S(3) = 0, 1-S(6) = 0.5, 1-S(10) = 1
    check(r["multiple_sclerosis"], median_sessions_to_response=4.0, improved_by_session_3=0.0,
          improved_by_session_6=0.5, improved_by_session_10=1.0)

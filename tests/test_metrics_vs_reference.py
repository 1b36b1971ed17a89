"""Production metrics vs the independent reference (tests/reference_metrics.py), cell by cell,
on a few thousand episodes of random but contract-valid typed data."""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as hst

import reference_metrics as ref
from pipelines.settings import Settings

EPISODE_SCHEMA = {
    "episode_id": pl.String, "patient_id": pl.String, "clinic_id": pl.String,
    "condition": pl.String, "referral_date": pl.Date, "prescribed_sessions": pl.Int64,
    "age_band": pl.String, "sex": pl.String, "chronicity": pl.String,
}
SESSION_SCHEMA = {
    "session_id": pl.String, "episode_id": pl.String, "therapist_id": pl.String,
    "session_date": pl.Date, "duration_min": pl.Int64,
}
SCORE_SCHEMA = {
    "episode_id": pl.String, "session_id": pl.String, "timepoint": pl.String,
    "score": pl.Float64, "recorded_on": pl.Date,
}

START = date(2024, 1, 1)
AS_OF_MID = date(2024, 11, 3)    # a Sunday in the middle of the data
AS_OF_LATE = date(2026, 2, 1)    # the run date: everything counts
TODAY = date(2026, 2, 1)

RANDOM_CONDITIONS = ["low_back_pain", "neck_pain", "upper_back_tension", "headache_migraine",
                     "carpal_tunnel", "arthritis", "sports_injury", "other_chronic_pain",
                     "lymphedema"]  # the last one: a code a clinic added
WEIGHTS = np.array([30, 25, 12, 10, 6, 6, 5, 4, 2], dtype=float)


class Builder:
    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.episodes: list[dict] = []
        self.sessions: list[dict] = []
        self.scores: list[dict] = []
        self.counter = 0

    def _sid(self) -> str:
        # random leading letter: sessions on one date are ordered by an id unrelated to time
        self.counter += 1
        return f"{'abcdefghij'[self.rng.integers(10)]}{self.counter}"

    def score(self, value: float, decimals: bool) -> float:
        value = min(10.0, max(0.0, value))
        return round(value, 1) if decimals else float(round(value))

    def episode(self, eid, condition, referral, rx=None, clinic="C1"):
        rng = self.rng
        self.episodes.append({
            "episode_id": eid, "patient_id": f"P{rng.integers(1, 2000)}",
            "clinic_id": clinic, "condition": condition, "referral_date": referral,
            "prescribed_sessions": rx,
            "age_band": ["18-29", "30-44", "45-59", "60-74", None][rng.integers(5)],
            "sex": ["F", "M", "X", "U", None][rng.integers(5)],
            "chronicity": ["acute", "subacute", "chronic", None][rng.integers(4)],
        })

    def session(self, eid, when, pre=None, post=None, pre_rec=None):
        sid = self._sid()
        self.sessions.append({"session_id": sid, "episode_id": eid, "therapist_id": f"T{self.rng.integers(1, 30)}",
                              "session_date": when, "duration_min": int(self.rng.integers(10, 181))})
        if pre is not None:
            self.scores.append({"episode_id": eid, "session_id": sid, "timepoint": "pre",
                                "score": pre, "recorded_on": pre_rec})
        if post is not None:
            self.scores.append({"episode_id": eid, "session_id": sid, "timepoint": "post",
                                "score": post, "recorded_on": None if self.rng.random() < 0.5 else when})
        return sid

    def followup(self, eid, when, score):
        self.scores.append({"episode_id": eid, "session_id": None, "timepoint": "followup",
                            "score": score, "recorded_on": when})

    def random_episode(self, eid: str) -> None:
        rng = self.rng
        condition = RANDOM_CONDITIONS[rng.choice(len(RANDOM_CONDITIONS), p=WEIGHTS / WEIGHTS.sum())]
        referral = START + timedelta(days=int(rng.integers(0, 560)))
        rx = None if rng.random() < 0.2 else int(rng.integers(1, 21))
        self.episode(eid, condition, referral, rx, clinic=f"C{rng.integers(1, 6)}")
        decimals = rng.random() < 0.5
        n = 0 if rng.random() < 0.08 else int(min(rng.geometric(0.15), 25))
        # pain trajectory
        if rng.random() < 0.04:
            base = 0.0
        else:
            base = float(rng.uniform(1, 10))
        slope = float(rng.normal(-0.35, 0.4))
        when = referral + timedelta(days=int(rng.integers(0, 15)))
        dates = []
        for k in range(1, n + 1):
            if k > 1:
                gap = 0 if rng.random() < 0.12 else int(rng.integers(1, 8))
                when = when + timedelta(days=gap)
            dates.append(when)
            level = base + slope * (k - 1) + rng.normal(0, 0.8)
            if k == 1:
                pre = None if rng.random() < 0.05 else self.score(base, decimals)
            else:
                pre = None if rng.random() < 0.25 else self.score(level, decimals)
            post = None
            if rng.random() < 0.5:
                ref_level = pre if pre is not None else level
                post = self.score(ref_level - abs(rng.normal(0.8, 0.8)), decimals)
            r = rng.random()
            pre_rec = None if r < 0.5 else (when if r < 0.8 else when + timedelta(days=int(rng.integers(-5, 90))))
            if pre_rec is not None:
                pre_rec = min(max(pre_rec, referral), TODAY)
            self.session(eid, when, pre, post, pre_rec)
        # follow-ups: some before the first session, some on a session date, some later
        last = dates[-1] if dates else referral + timedelta(days=10)
        used = set()
        for _ in range(int(rng.choice([0, 0, 1, 1, 2, 3]))):
            r = rng.random()
            if r < 0.15 or not dates:
                fdate = referral + timedelta(days=int(rng.integers(0, 20)))
            elif r < 0.35:
                fdate = dates[int(rng.integers(len(dates)))]
            else:
                fdate = last + timedelta(days=int(rng.integers(0, 90)))
            if fdate in used or fdate > TODAY:
                continue
            used.add(fdate)
            level = base + slope * (n + 1) + rng.normal(0, 1.0)
            self.followup(eid, fdate, self.score(level, decimals))

    def special_blocks(self) -> None:
        ref_date = date(2024, 3, 4)
        # every change 0 -> p empty; sd 0
        for i in range(4):
            e = f"ZERO{i}"
            self.episode(e, "prenatal", ref_date, rx=6)
            self.session(e, ref_date, pre=5.5)
            self.session(e, ref_date + timedelta(days=3), pre=5.5, post=4.0)
        # identical non-zero changes -> CI equals the mean, dz empty
        for i in range(3):
            e = f"SAME{i}"
            self.episode(e, "parkinsons", ref_date, rx=2)
            self.session(e, ref_date, pre=8.0)
            self.followup(e, ref_date + timedelta(days=30), 5.0)
        # a single analysed episode
        self.episode("ONE0", "diabetes_related_pain", ref_date)
        self.session("ONE0", ref_date, pre=7.3)
        self.session("ONE0", ref_date + timedelta(days=1), pre=4.1)
        self.episode("ONE1", "diabetes_related_pain", ref_date)  # no sessions
        # no analysed episode at all
        for i in range(3):
            e = f"NONE{i}"
            self.episode(e, "post_surgical", ref_date, rx=4)
            self.session(e, ref_date, pre=6.0, post=3.0)
        # referred after the mid as-of date only
        e = "LATE0"
        self.episode(e, "multiple_sclerosis", AS_OF_MID + timedelta(days=3))
        self.session(e, AS_OF_MID + timedelta(days=5), pre=6.0)
        self.session(e, AS_OF_MID + timedelta(days=8), pre=2.0)

    def frames(self):
        return (pl.DataFrame(self.episodes, schema=EPISODE_SCHEMA),
                pl.DataFrame(self.sessions, schema=SESSION_SCHEMA),
                pl.DataFrame(self.scores, schema=SCORE_SCHEMA))


def make_data(seed: int = 20250330, n: int = 3000):
    b = Builder(np.random.default_rng(seed))
    for i in range(n):
        b.random_episode(f"E{i:05d}")
    b.special_blocks()
    return b.frames()


@pytest.fixture(scope="module")
def data():
    return make_data()


def _ref_kwargs(s: Settings, summary: bool) -> dict:
    kw = dict(responder_30_threshold=s.responder_30_threshold,
              responder_50_threshold=s.responder_50_threshold,
              response_threshold=s.response_threshold)
    if summary:
        kw["min_cell_size"] = s.min_cell_size
    return kw


CASES = {
    "mid-default": (AS_OF_MID, Settings()),
    "late-default": (AS_OF_LATE, Settings()),
    "mid-custom": (AS_OF_MID, Settings(responder_30_threshold=20.0, responder_50_threshold=45.0,
                                       response_threshold=25.0, min_cell_size=40)),
}


def test_generated_data_is_rich(data):
    """The random data covers the cases the comparison is meant to exercise."""
    episodes, sessions, scores = data
    out = ref.reference_episode_outcomes(episodes, sessions, scores, AS_OF_MID)
    reasons = out["exclusion_reason"].value_counts(dropna=False).to_dict()
    for reason in ("no sessions", "no baseline", "no pain at baseline", "no outcome"):
        assert reasons.get(reason, 0) >= 5, reasons
    assert out["exclusion_reason"].isna().sum() > 1000
    assert len(out) < episodes.height  # the cutoff drops episodes
    assert (out["response_observed"] == False).sum() > 50  # noqa: E712
    fu = scores.filter(pl.col("timepoint") == "followup").height
    assert fu > 1000
    same_day = sessions.group_by("episode_id", "session_date").len().filter(pl.col("len") > 1).height
    assert same_day > 100
    dec = scores.filter((pl.col("score") * 10 % 10) != 0).height
    assert dec > 1000


@pytest.mark.parametrize("case", list(CASES))
def test_episode_outcomes_match_reference(data, case):
    from pipelines.outcomes.metrics import episode_outcomes

    as_of, s = CASES[case]
    episodes, sessions, scores = data
    actual = episode_outcomes(episodes, sessions, scores, as_of, s)
    expected = ref.reference_episode_outcomes(episodes, sessions, scores, as_of, **_ref_kwargs(s, False))
    assert actual.height == len(expected)
    problems = ref.compare_frames(actual, expected, "episode_id", ref.EPISODE_COLUMNS)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("case", list(CASES))
def test_condition_summary_matches_reference(data, case):
    from pipelines.outcomes.summary import condition_summary

    as_of, s = CASES[case]
    episodes, sessions, scores = data
    actual = condition_summary(episodes, sessions, scores, as_of, s)
    expected = ref.reference_condition_summary(episodes, sessions, scores, as_of, **_ref_kwargs(s, True))
    assert list(actual.columns) == ref.SUMMARY_COLUMNS
    problems = ref.compare_frames(actual, expected, "condition", ref.SUMMARY_COLUMNS,
                                  rel_tol=1e-9, abs_tol=1e-12)
    assert not problems, "\n".join(problems)
    if case.startswith("mid"):
        conds = set(actual["condition"].to_list())
        assert "multiple_sclerosis" not in conds and "lymphedema" in conds and "ALL" in conds


# ------------------------------------------------------------------ tiny random worlds


@hst.composite
def tiny_world(draw):
    seed = draw(hst.integers(0, 2**32 - 1))
    n = draw(hst.integers(1, 25))
    b = Builder(np.random.default_rng(seed))
    for i in range(n):
        b.random_episode(f"E{i:03d}")
    as_of = START + timedelta(days=draw(hst.integers(0, 800)))
    return b.frames(), as_of


@hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tiny_world())
def test_tiny_random_worlds_match_reference(world):
    from pipelines.outcomes.metrics import episode_outcomes
    from pipelines.outcomes.summary import condition_summary

    (episodes, sessions, scores), as_of = world
    s = Settings(min_cell_size=3)
    problems = ref.compare_frames(
        episode_outcomes(episodes, sessions, scores, as_of, s),
        ref.reference_episode_outcomes(episodes, sessions, scores, as_of, **_ref_kwargs(s, False)),
        "episode_id", ref.EPISODE_COLUMNS)
    problems += ref.compare_frames(
        condition_summary(episodes, sessions, scores, as_of, s),
        ref.reference_condition_summary(episodes, sessions, scores, as_of, **_ref_kwargs(s, True)),
        "condition", ref.SUMMARY_COLUMNS)
    assert not problems, f"as_of={as_of}\n" + "\n".join(problems)


# ------------------------------------------------------------------ self-checks


def test_generated_data_passes_ingest(data, tmp_path):
    """The generated tables are contract-valid: ingest (with `lymphedema` added to the
    vocabulary, as a clinic would) accepts every row."""
    from pipelines.ingest import ingest_folder
    from pipelines.vocabulary import DEFAULT_VOCABULARY, Vocabulary

    episodes, sessions, scores = data
    raw = tmp_path / "raw"
    raw.mkdir()
    episodes.write_csv(raw / "episodes.csv")
    sessions.write_csv(raw / "sessions.csv")
    scores.write_csv(raw / "pain_scores.csv")
    vocab_file = tmp_path / "conditions.csv"
    vocab_file.write_text(DEFAULT_VOCABULARY.read_text(encoding="utf-8").rstrip("\n")
                          + "\nlymphedema,,Lymphedema\n", encoding="utf-8")
    result = ingest_folder(raw, TODAY, Vocabulary.load(vocab_file))
    assert result.rejected.height == 0, result.rejected.head(10)
    assert result.episodes.height == episodes.height
    assert result.sessions.height == sessions.height
    assert result.pain_scores.height == scores.height


def test_comparison_detects_a_changed_cell(data):
    """compare_frames is not vacuous: one perturbed cell, one dropped row, a flipped null."""
    episodes, sessions, scores = data
    expected = ref.reference_condition_summary(episodes, sessions, scores, AS_OF_MID)
    tampered = expected.copy()
    tampered.loc[0, "mean_change"] = tampered.loc[0, "mean_change"] * (1 + 1e-7)
    tampered.loc[1, "p_value"] = None
    problems = ref.compare_frames(tampered, expected, "condition", ref.SUMMARY_COLUMNS)
    assert any("mean_change" in p for p in problems)
    assert any("p_value" in p for p in problems)
    problems = ref.compare_frames(tampered.iloc[1:], expected, "condition", ref.SUMMARY_COLUMNS)
    assert any("only in reference" in p for p in problems)
    eo = ref.reference_episode_outcomes(episodes, sessions, scores, AS_OF_MID)
    flipped = eo.copy()
    i = flipped.index[flipped["responder_30"] == True][0]  # noqa: E712
    flipped.loc[i, "responder_30"] = False
    assert ref.compare_frames(flipped, eo, "episode_id", ref.EPISODE_COLUMNS)

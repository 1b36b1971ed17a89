"""Deterministic synthetic clinic exports, in the CSV form of CONTRACT.md.

``generate(n_episodes, seed, out_dir, today=None)`` writes weekly export files under
``out_dir``::

    <ISO week>/<table>_<export date>.csv      e.g. 2026-W30/sessions_2026-07-26.csv

One folder per ISO week (Monday-Sunday) from the week of the first referral to the week
of ``today``, each holding one export per table (a table with no rows that week gets no
file). The export date is the Sunday that ends the week, or ``today`` for the week that
today cuts short, so relative paths compared as plain strings are in time order (the
order CONTRACT.md takes files in). A file holds the records dated in its week (episodes
by referral_date, sessions by session_date, pre/post scores by their session's date,
follow-ups by recorded_on) plus:

- the records of the previous week's last ``OVERLAP_DAYS`` days again (identical
  duplicates; a few written in an equivalent spelling such as ``7.0`` for ``7``);
- corrected records: a record whose first export was wrong appears again, right, in the
  next week's export (the earlier row is superseded);
- a few deliberately invalid rows (well under 1%), counted by kind in the summary.

In each file the valid rows come first (last week's repeated rows, then the week's own,
in date order), then its extra rows: first versions that the next export corrects,
repeats written in another spelling, and the bad rows.

Same seed, same ``n_episodes``, same ``today`` (and the same parameters and vocabulary
file, whose aliases are sampled) give byte-identical files; ``today``
defaults to ``params.DEFAULT_TODAY``, never the wall clock. Everything is vectorised
(numpy for the model, polars for strings and CSV): there is no loop over episodes.
"""

from __future__ import annotations

import csv
import datetime as dt
import re
from pathlib import Path

import numpy as np
import polars as pl

from pipelines.synth import params as P

EPOCH = dt.date(1970, 1, 1)
VOCABULARY_FILE = Path(__file__).resolve().parent.parent / "reference" / "conditions.csv"

COLUMNS: dict[str, tuple[str, ...]] = {
    "episodes": ("episode_id", "patient_id", "clinic_id", "condition", "referral_date",
                 "prescribed_sessions", "age_band", "sex", "chronicity"),
    "sessions": ("session_id", "episode_id", "therapist_id", "session_date", "duration_min"),
    "pain_scores": ("episode_id", "session_id", "timepoint", "score", "recorded_on"),
}
TABLE_ORDER = ("episodes", "sessions", "pain_scores")
#: relative path of every file this module writes
FILE_PATTERN = re.compile(
    r"^(\d{4})-W(\d{2})/(episodes|sessions|pain_scores)_(\d{4}-\d{2}-\d{2})\.csv$")

_NUMBERS = pl.Series("n", [str(i) for i in range(181)])
_SCORES = pl.Series("s", [str(h // 2) if h % 2 == 0 else f"{h // 2}.5" for h in range(21)])
_TIMEPOINTS = pl.Series("t", ["pre", "post", "followup"])


# ---------------------------------------------------------------------------------------
# small vectorised helpers
# ---------------------------------------------------------------------------------------

def _day(d: dt.date) -> int:
    return (d - EPOCH).days


def _weekday(days: np.ndarray) -> np.ndarray:
    """Monday = 0 .. Sunday = 6 (1970-01-01 was a Thursday)."""
    return (days + 3) % 7


def _gather(lookup: pl.Series, idx: np.ndarray, missing: np.ndarray | None = None) -> pl.Series:
    """lookup[idx] as a Series, null where ``missing``."""
    i = pl.Series(np.asarray(idx, dtype=np.uint32))
    if missing is not None and missing.any():
        i = pl.select(pl.when(pl.Series(missing)).then(None).otherwise(i)).to_series()
    return lookup.gather(i)


def _ids(prefix: str, numbers: np.ndarray, width: int) -> pl.Series:
    return pl.select(
        pl.lit(prefix) + pl.Series(numbers).cast(pl.String).str.zfill(width)).to_series()


def _rows(frame: pl.DataFrame, idx: np.ndarray) -> pl.DataFrame:
    """frame's rows ``idx`` (a UInt32 gather: much faster than ``frame[numpy_array]``)."""
    return frame.select(pl.all().gather(pl.Series(np.asarray(idx, dtype=np.uint32))))


def _draw(rng: np.random.Generator, probs: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """One category per element of ``rows``, from the distribution ``probs[row]``."""
    cum = np.cumsum(probs / probs.sum(axis=1, keepdims=True), axis=1)
    u = rng.random(len(rows))
    out = np.zeros(len(rows), dtype=np.int64)
    for j in range(cum.shape[1] - 1):  # a loop over categories (<= 6), not rows
        out += u >= cum[rows, j]
    return out


def _half_units(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A rating in half points (0..20): mostly whole points, some half points."""
    half = rng.random(len(x), dtype=np.float32) < P.HALF_POINT_RATE
    h = np.where(half, np.rint(x * 2), 2 * np.rint(x))
    return np.clip(h, 0, 20).astype(np.int8)


class _Dates:
    """ISO strings for day numbers, by lookup (far faster than formatting each)."""

    def __init__(self, lo: int, hi: int) -> None:
        self.lo = lo
        self.table = pl.Series(
            "d", [(EPOCH + dt.timedelta(days=d)).isoformat() for d in range(lo, hi + 1)])

    def __call__(self, days: np.ndarray, missing: np.ndarray | None = None) -> pl.Series:
        return _gather(self.table, np.asarray(days) - self.lo, missing)


def _condition_spellings() -> tuple[pl.Series, np.ndarray, np.ndarray]:
    """Every way a condition is written: per code, the code first, then variants of its
    label-like form and of each alias in the vocabulary file (odd case and spacing).
    Returns the flat lookup, each code's offset into it and its number of spellings."""
    aliases: dict[str, list[str]] = {code: [] for code in P.CONDITION_CODES}
    with open(VOCABULARY_FILE, newline="", encoding="utf-8-sig") as fh:
        for row in csv.DictReader(fh):
            code = (row.get("code") or "").strip()
            alias = (row.get("alias") or "").strip()
            if code in aliases and alias:
                aliases[code].append(alias)
    flat: list[str] = []
    offsets, counts = [], []
    for code in P.CONDITION_CODES:
        words = code.replace("_", " ")
        variants = [code, words.capitalize(), f" {code.replace('_', '-').title()} ",
                    words.upper()]
        for alias in aliases[code]:
            variants += [alias.upper() if len(alias) <= 3 else alias.capitalize(),
                         f" {alias} ", alias.title()]
        variants = list(dict.fromkeys(variants))
        offsets.append(len(flat))
        counts.append(len(variants))
        flat += variants
    return pl.Series("c", flat), np.array(offsets), np.array(counts)


# ---------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------

def _episodes(n: int, rng: np.random.Generator, today: int) -> dict:
    conds = P.CONDITIONS
    prev = np.array([c.prevalence for c in conds])
    prev = prev / prev.sum()
    redraw_p = np.where(np.isin(P.CONDITION_CODES, P.NOT_REDRAWN), 0.0, prev)
    redraw_p = redraw_p / redraw_p.sum()

    # patients: how many episodes each, then patient-level traits
    per_patient = rng.choice(len(P.EPISODES_PER_PATIENT), size=n, p=P.EPISODES_PER_PATIENT) + 1
    n_pat = int(np.searchsorted(np.cumsum(per_patient), n) + 1)
    patient = np.repeat(np.arange(n_pat), per_patient[:n_pat])[:n]
    first = np.r_[True, patient[1:] != patient[:-1]]
    shares = np.array([c.share for c in P.CLINICS])
    pat_clinic = rng.choice(len(P.CLINICS), size=n_pat, p=shares / shares.sum())
    pat_cond = rng.choice(len(conds), size=n_pat, p=prev)
    pat_age = _draw(rng, np.array([c.age for c in conds]), pat_cond)
    pat_sex = _draw(rng, np.array([c.sex for c in conds]), pat_cond)
    pseudonym = rng.permutation(n_pat) + 1

    cond = pat_cond[patient]
    redraw = ~first & (rng.random(n) >= P.REPEAT_CONDITION)
    cond[redraw] = rng.choice(len(conds), size=int(redraw.sum()), p=redraw_p)
    clinic = pat_clinic[patient]

    # referral dates: growing volume over each clinic's window, weekdays mostly
    window = np.array([c.started_days_ago or P.DATA_SPAN_DAYS for c in P.CLINICS])[clinic]
    g = P.REFERRAL_GROWTH
    x = (np.sqrt(1 + 2 * g * rng.random(n) * (1 + g / 2)) - 1) / g  # density ~ 1 + g*x
    ref = today - (window - 1) + np.floor(x * window).astype(np.int64)
    wd = _weekday(ref)
    move = (wd >= 5) & (rng.random(n) < P.WEEKEND_REFERRAL_MOVE)
    ref = np.where(move, ref - wd + rng.integers(0, 5, n), ref)  # a weekday that week

    # episode ids follow referral order
    order = np.lexsort((rng.random(n), ref))
    patient, cond, clinic, ref = patient[order], cond[order], clinic[order], ref[order]

    c_prescribed = np.zeros((len(conds), 4), dtype=np.int64)
    w_prescribed = np.zeros((len(conds), 4))
    for i, c in enumerate(conds):
        c_prescribed[i, :len(c.prescribed)] = c.prescribed
        w_prescribed[i, :len(c.prescribed_w)] = c.prescribed_w
    prescribed = c_prescribed[cond, _draw(rng, w_prescribed, cond)]
    typical = np.array([int(np.median(c.prescribed)) for c in conds])

    improvement = np.array([c.improvement for c in conds])
    effect = np.array([c.effect for c in P.CLINICS])
    m = np.clip(rng.normal(improvement[cond] * effect[clinic], P.IMPROVEMENT_SD),
                P.IMPROVEMENT_MIN, P.IMPROVEMENT_MAX)
    rate = np.array([c.rate for c in conds])[cond] * rng.lognormal(0.0, P.RATE_LOG_SD, n)
    relief = np.clip(rng.normal(np.array([c.relief for c in conds])[cond], P.RELIEF_PATIENT_SD),
                     0.0, P.RELIEF_MAX)
    baseline = np.clip(rng.normal(np.array([c.baseline_mean for c in conds])[cond],
                                  np.array([c.baseline_sd for c in conds])[cond]), 0.0, 10.0)
    baseline[rng.random(n) < P.BASELINE_ZERO_RATE] = 0.0

    n_ther = np.array([c.therapists for c in P.CLINICS])
    ther_offset = np.r_[0, np.cumsum(n_ther)[:-1]]
    therapist = ther_offset[clinic] + np.floor(rng.random(n) * n_ther[clinic]).astype(np.int64)
    duration = _draw(rng, np.array([c.duration_w for c in conds]), cond)
    per_week = _draw(rng, np.array([c.per_week for c in conds]), cond)

    # attendance: prescription (or the usual course), renewals, dropout, no-shows
    planned = np.where(prescribed > 0, prescribed, typical[cond])
    hazard = (np.array([c.dropout for c in conds])[cond]
              * np.array([c.dropout for c in P.CLINICS])[clinic]
              * np.where(m < P.NONRESPONDER_BELOW, P.NONRESPONDER_DROPOUT_FACTOR, 1.0))
    stays = rng.geometric(np.clip(hazard, 1e-6, 1.0))
    lo, hi = P.EXTENSION_SESSIONS
    extended = (stays > planned) & (rng.random(n) < P.EXTENSION_RATE)
    planned = planned + np.where(extended, rng.integers(lo, hi + 1, n), 0)
    attended = np.minimum(planned, stays)
    attended[rng.random(n) < P.NO_SHOW_RATE] = 0

    return dict(
        n=n, n_pat=n_pat, patient=pseudonym[patient], cond=cond, clinic=clinic, ref=ref,
        prescribed=prescribed, prescribed_missing=rng.random(n) < P.MISSING_PRESCRIBED,
        age=pat_age[patient], age_missing=rng.random(n) < P.MISSING_AGE_BAND,
        sex=pat_sex[patient], sex_missing=rng.random(n) < P.MISSING_SEX,
        chronicity=_draw(rng, np.array([c.chronicity for c in conds]), cond),
        chronicity_missing=rng.random(n) < P.MISSING_CHRONICITY,
        alias=rng.random(n) < P.CONDITION_ALIAS_RATE, alias_u=rng.random(n),
        m=m, rate=rate, relief=relief, baseline=baseline, therapist=therapist,
        duration=duration, per_week=per_week, attended=attended,
        lag=np.ceil(rng.gamma(*P.FIRST_SESSION_LAG, n)).astype(np.int64),
        n_ther=n_ther, ther_offset=ther_offset,
    )


def _u(rng: np.random.Generator, n: int) -> np.ndarray:
    """Uniform [0, 1) draws in float32 (half the memory traffic of float64)."""
    return rng.random(n, dtype=np.float32)


def _normal(rng: np.random.Generator, mean, sd, n: int) -> np.ndarray:
    return rng.standard_normal(n, dtype=np.float32) * np.float32(sd) + mean


def _sessions(ep: dict, rng: np.random.Generator, today: int) -> dict:
    att = ep["attended"].astype(np.int32)
    total = int(att.sum())
    starts = np.cumsum(att, dtype=np.int64) - att
    e = np.repeat(np.arange(ep["n"], dtype=np.int32), att)
    k = np.arange(total, dtype=np.int32) - np.repeat(starts.astype(np.int32), att)

    # gaps: base by sessions per week, plus jitter, plus a missed appointment now and then
    fw = ep["per_week"].astype(np.int8)[e]
    base = np.array(P.GAP_BASE, dtype=np.int32)[fw]
    jit = np.array(P.GAP_JITTER, dtype=np.int32)
    width = (jit[:, 1] - jit[:, 0] + 1).astype(np.float32)
    gap = base + jit[fw, 0] + (_u(rng, total) * width[fw]).astype(np.int32)
    gap += base * (_u(rng, total) < P.MISSED_APPOINTMENT_RATE)
    first = np.flatnonzero(k == 0)
    gap[first] = ep["lag"][e[first]]
    csum = np.cumsum(gap, dtype=np.int64)
    csum -= np.repeat(csum[first] - gap[first], att[att > 0])
    day = (ep["ref"].astype(np.int32)[e] + csum).astype(np.int32)
    del csum, gap, base, fw

    # weekends: Sunday -> Monday, most Saturdays -> Monday; then keep dates strictly
    # increasing within an episode (day - k non-decreasing, by a segmented running max)
    wd = _weekday(day)
    day += (wd == 6) + 2 * ((wd == 5) & (_u(rng, total) >= P.SATURDAY_KEPT))
    segmented = (day - k).astype(np.int64) + (e.astype(np.int64) << 24)
    np.maximum.accumulate(segmented, out=segmented)
    day = (segmented - (e.astype(np.int64) << 24)).astype(np.int32) + k
    del segmented, wd

    keep = day <= today  # a prefix of each episode: dates increase
    e, k, day = e[keep], k[keep], day[keep]
    kept = np.bincount(e, minlength=ep["n"])
    n_s = len(e)

    clinic = ep["clinic"][e]
    cover = _u(rng, n_s) < P.COVER_THERAPIST_RATE
    other = ep["ther_offset"][clinic] + (_u(rng, n_s) * ep["n_ther"][clinic]).astype(np.int64)
    therapist = np.where(cover, other, ep["therapist"][e])
    duration = ep["duration"][e]
    vary = np.flatnonzero(_u(rng, n_s) < P.DURATION_VARIES_RATE)
    duration[vary] = _draw(rng, np.array([c.duration_w for c in P.CONDITIONS]),
                           ep["cond"][e[vary]])
    return dict(
        n=n_s, e=e, k=k, day=day, kept=kept, truncated=kept < ep["attended"],
        therapist=therapist, duration=np.array(P.DURATIONS, dtype=np.int32)[duration],
        duration_missing=_u(rng, n_s) < P.MISSING_DURATION,
    )


def _scores(ep: dict, ses: dict, rng: np.random.Generator, today: int) -> dict:
    e, t, n_s = ses["e"], ses["k"], ses["n"]
    b = ep["baseline"].astype(np.float32)[e]
    decay = np.exp(-ep["rate"].astype(np.float32)[e] * t)
    mu = b * (1 - ep["m"].astype(np.float32)[e] * (1 - decay))
    del decay
    pre = np.where(t == 0, b, mu + _normal(rng, 0.0, P.PRE_NOISE_SD, n_s))
    del mu, b
    pre_h = _half_units(pre, rng)
    f = np.clip(ep["relief"].astype(np.float32)[e] + _normal(rng, 0.0, P.RELIEF_SESSION_SD, n_s),
                P.RELIEF_MIN, P.RELIEF_MAX)
    post_h = _half_units(pre_h * np.float32(0.5) * (1 - f), rng)
    del f, pre
    pre_missing = _u(rng, n_s) < np.where(t == 0, np.float32(P.MISSING_PRE_FIRST),
                                          np.float32(P.MISSING_PRE))
    post_missing = _u(rng, n_s) < P.MISSING_POST

    # recorded_on of pre/post: the session day, often empty, sometimes the next day
    u = _u(rng, n_s)
    rec = ses["day"] + ((u >= P.RECORDED_ON_EMPTY)
                        & (u < P.RECORDED_ON_EMPTY + P.RECORDED_ON_NEXT_DAY)
                        & (ses["day"] < today))
    rec_missing = u < P.RECORDED_ON_EMPTY
    del u

    # follow-ups
    n = ep["n"]
    kept = ses["kept"]
    last = np.full(n, -1, dtype=np.int64)
    last[kept > 0] = ses["day"][np.cumsum(kept)[kept > 0] - 1]  # e is grouped by episode
    done = (kept > 0) & ~ses["truncated"]
    gain = ep["m"] * (1 - np.exp(-ep["rate"] * kept))

    def followup(mask, day, retention):
        keep = mask & (day <= today)
        idx = np.flatnonzero(keep)
        r = rng.normal(retention[0], retention[1], len(idx))
        level = ep["baseline"][idx] * (1 - gain[idx] * r)
        h = _half_units(level + rng.normal(0.0, P.FOLLOWUP_NOISE_SD, len(idx)), rng)
        return idx, day[idx], h, keep

    lo, hi = P.FOLLOWUP_DAYS
    d1 = last + rng.integers(lo, hi + 1, n)
    i1, day1, h1, had1 = followup(done & (rng.random(n) < P.FOLLOWUP_RATE), d1,
                                  P.RETENTION_FIRST)
    lo, hi = P.SECOND_FOLLOWUP_DAYS
    d2 = d1 + rng.integers(lo, hi + 1, n)
    i2, day2, h2, _ = followup(had1 & (rng.random(n) < P.SECOND_FOLLOWUP_RATE), d2,
                               P.RETENTION_SECOND)
    lo, hi = P.NO_SHOW_FOLLOWUP_DAYS
    d3 = ep["ref"] + rng.integers(lo, hi + 1, n)
    i3, day3, h3, _ = followup((ep["attended"] == 0) & (rng.random(n) < P.NO_SHOW_FOLLOWUP_RATE),
                               d3, (0.0, 0.0))

    # rows: pre and post of each session side by side, then the follow-ups
    present = np.empty(2 * n_s, dtype=bool)
    present[0::2], present[1::2] = ~pre_missing, ~post_missing
    h = np.empty(2 * n_s, dtype=np.int8)
    h[0::2], h[1::2] = pre_h, post_h
    rows = np.flatnonzero(present)
    sess = rows // 2
    fu_e = np.concatenate([i1, i2, i3])
    fu_day = np.concatenate([day1, day2, day3])
    return dict(
        e=np.concatenate([e[sess], fu_e]),
        session=np.concatenate([sess, np.full(len(fu_e), -1)]),
        timepoint=np.concatenate([rows % 2, np.full(len(fu_e), 2)]),
        h=np.concatenate([h[rows], h1, h2, h3]),
        day=np.concatenate([ses["day"][sess], fu_day]),  # the day that places the row
        recorded=np.concatenate([rec[sess], fu_day]),
        recorded_missing=np.concatenate([rec_missing[sess], np.zeros(len(fu_e), bool)]),
        n_followups=len(fu_e),
    )


# ---------------------------------------------------------------------------------------
# export files
# ---------------------------------------------------------------------------------------

class _Weeks:
    def __init__(self, first_day: int, today: int) -> None:
        self.monday0 = first_day - int(_weekday(np.int64(first_day)))
        self.today = today
        self.n = (today - self.monday0) // 7 + 1
        if self.n * 16 > np.iinfo(np.uint16).max:
            raise ValueError("data span too long for the export key")

    def week(self, days: np.ndarray) -> np.ndarray:
        return (days - self.monday0) // 7

    def path(self, w: int, table: str) -> str:
        monday = EPOCH + dt.timedelta(days=self.monday0 + 7 * w)
        iso = monday.isocalendar()
        export = min(monday + dt.timedelta(days=6), EPOCH + dt.timedelta(days=self.today))
        return f"{iso.year}-W{iso.week:02d}/{table}_{export.isoformat()}.csv"


def _write_table(table: str, valid: pl.DataFrame, day: np.ndarray, wrong, respell, bad,
                 rng: np.random.Generator, weeks: _Weeks, out: Path) -> dict:
    """Place each record in its week's export (and the next one's when it falls in the
    overlap, or when it is corrected there), add the extra rows, write the files.

    ``wrong(idx)`` and ``respell(idx)`` give the wrong first version / an equivalent
    spelling of the records ``idx``; ``bad`` is (frame, placement day, kinds). In a file,
    the valid rows come first (last week's repeated rows, then this week's, each in date
    order), then the file's extra rows: first versions that the next export corrects,
    respelled repeats, and the bad rows."""
    n = valid.height
    w = weeks.week(day)
    wd = _weekday(day)
    last = weeks.n - 1
    overlap = (wd >= 7 - P.OVERLAP_DAYS) & (w < last)
    corrected = (_u(rng, n) < P.CORRECTION_RATE[table]) & (w < last)
    respelled = overlap & ~corrected & (_u(rng, n) < P.RESPELL_RATE)
    ci, ri = np.flatnonzero(corrected), np.flatnonzero(respelled)
    bad_frame, bad_day, bad_kinds = bad

    # valid rows: key = file * 16 + slot (last week's repeats: weekday; this week's:
    # 7 + weekday); numpy's stable sort of uint16 is a radix sort, ties keep record order
    primary = np.flatnonzero(~(corrected | respelled))
    second = np.flatnonzero(overlap | corrected)
    src = np.concatenate([primary, second])
    key = np.concatenate([w[primary] * 16 + 7 + wd[primary], (w[second] + 1) * 16 + wd[second]])
    order = np.argsort(key.astype(np.uint16), kind="stable")
    src, key = src[order], key[order]
    bounds = np.searchsorted(key >> 4, np.arange(weeks.n + 1))
    del order, key, primary, second

    # extra rows, by file
    extras = pl.concat([wrong(ci), respell(ri), bad_frame], rechunk=True)
    extra_file = np.concatenate([w[ci], w[ri], np.minimum(weeks.week(bad_day), last)])
    extra_order = np.argsort(extra_file, kind="stable")
    extra_bounds = np.searchsorted(extra_file[extra_order], np.arange(weeks.n + 1))

    files = []
    for f in range(weeks.n):
        a, b = bounds[f], bounds[f + 1]
        ea, eb = extra_bounds[f], extra_bounds[f + 1]
        if a == b and ea == eb:
            continue
        rel = weeks.path(f, table)
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        with open(out / rel, "wb") as fh:
            _rows(valid, src[a:b]).write_csv(fh)
            if eb > ea:
                _rows(extras, extra_order[ea:eb]).write_csv(fh, include_header=False)
        files.append(rel)
    return dict(
        files=files, rows=len(src) + extras.height, records=n,
        planted=dict(duplicate=int((overlap & ~corrected).sum()), superseded=len(ci),
                     rejected=bad_frame.height, respelled_duplicate=len(ri)),
        bad=bad_kinds,
    )


def _bad_rows(kinds: list[tuple[str, pl.DataFrame, np.ndarray]]) -> tuple:
    frame = pl.concat([k[1] for k in kinds], rechunk=True)
    day = np.concatenate([k[2] for k in kinds])
    return frame, day, {name: f.height for name, f, _ in kinds}


def _n_bad(records: int) -> int:
    return max(1, round(records * P.BAD_ROWS_PER_100K / 100_000))


# ---------------------------------------------------------------------------------------
# public
# ---------------------------------------------------------------------------------------

def generate(n_episodes: int, seed: int, out_dir: str | Path,
             today: dt.date | None = None, *, overwrite: bool = False) -> dict:
    """Write synthetic weekly exports of ``n_episodes`` episodes into ``out_dir``.

    Deterministic: the same (n_episodes, seed, today) give byte-identical files.
    ``today`` (default ``params.DEFAULT_TODAY``) is the run date: nothing valid is dated
    after it. Refuses to write over earlier exports in ``out_dir`` unless ``overwrite``
    (which deletes only files of this module's layout).

    Returns a summary: files written per table (relative paths), rows written, distinct
    valid records, and what was planted for the validator (per table the expected
    duplicate / superseded / rejected row counts, and the bad rows by kind).
    """
    if n_episodes < 1:
        raise ValueError("n_episodes must be >= 1")
    today = today or P.DEFAULT_TODAY
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    existing = [p for p in out.glob("*/*.csv")
                if FILE_PATTERN.match(p.relative_to(out).as_posix())]
    if existing:
        if not overwrite:
            raise FileExistsError(f"{out} already holds {len(existing)} export files "
                                  f"(pass overwrite=True to replace them)")
        for p in existing:
            p.unlink()
        for d in {p.parent for p in existing}:
            if not any(d.iterdir()):
                d.rmdir()

    t_day = _day(today)
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(8)]
    ep = _episodes(n_episodes, streams[0], t_day)
    ses = _sessions(ep, streams[1], t_day)
    sc = _scores(ep, ses, streams[2], t_day)
    weeks = _Weeks(int(ep["ref"].min()), t_day)
    dates = _Dates(int(ep["ref"].min()) - 40, t_day + 3700)  # bad rows are dated up to ~10 years ahead
    spell, spell_offset, spell_count = _condition_spellings()
    n, n_s, n_p = ep["n"], ses["n"], len(sc["e"])

    # ---- episodes --------------------------------------------------------------------
    w_e = max(7, len(str(n + 10 * _n_bad(n) + 10)))
    episode_ids = _ids("E", np.arange(1, n + 1), w_e)
    cond = ep["cond"]
    spelling = spell_offset[cond] + np.where(
        ep["alias"], 1 + np.floor(ep["alias_u"] * (spell_count[cond] - 1)), 0).astype(np.int64)
    clinic_ids = pl.Series("c", [c.clinic_id for c in P.CLINICS])
    episodes = pl.DataFrame([
        episode_ids.alias("episode_id"),
        _ids("P", ep["patient"], max(6, len(str(ep["n_pat"])))).alias("patient_id"),
        _gather(clinic_ids, ep["clinic"]).alias("clinic_id"),
        _gather(spell, spelling).alias("condition"),
        dates(ep["ref"]).alias("referral_date"),
        _gather(_NUMBERS, ep["prescribed"], ep["prescribed_missing"]).alias("prescribed_sessions"),
        _gather(pl.Series(P.AGE_BANDS), ep["age"], ep["age_missing"]).alias("age_band"),
        _gather(pl.Series(P.SEXES), ep["sex"], ep["sex_missing"]).alias("sex"),
        _gather(pl.Series(P.CHRONICITIES), ep["chronicity"],
                ep["chronicity_missing"]).alias("chronicity"),
    ])
    rng = streams[3]

    def episodes_wrong(idx):
        part = _rows(episodes, idx)
        kind = rng.integers(0, 3, len(idx))
        codes = np.array(P.CONDITION_CODES)[cond[idx]]
        wrong_cond = np.where(codes == "other_chronic_pain", "low_back_pain", "other_chronic_pain")
        presc = ep["prescribed"][idx]
        wrong_presc = np.where(ep["prescribed_missing"][idx], 10, presc + 2).astype(str)
        return part.with_columns(
            condition=pl.when(pl.Series(kind == 0)).then(pl.Series(wrong_cond))
            .otherwise(pl.col("condition")),
            prescribed_sessions=pl.when(pl.Series(kind == 1)).then(pl.Series(wrong_presc))
            .otherwise(pl.col("prescribed_sessions")),
            chronicity=pl.when(pl.Series(kind == 2)).then(
                pl.when(pl.col("chronicity").is_null()).then(pl.lit("chronic")).otherwise(None))
            .otherwise(pl.col("chronicity")),
        )

    def episodes_respell(idx):
        return _rows(episodes, idx).with_columns(
            condition=pl.lit(" ") + pl.col("condition").str.strip_chars().str.to_uppercase() + " ",
            prescribed_sessions=pl.col("prescribed_sessions") + ".0",
        )

    k = _n_bad(n)

    def fresh(start: int, count: int) -> pl.Series:
        """Episode ids that no valid record uses."""
        return _ids("E", np.arange(start, start + count), w_e)

    def bad_episode(name, start, **cols):
        idx = np.sort(rng.choice(n, size=min(k, n), replace=False))
        part = _rows(episodes, idx).with_columns(episode_id=fresh(start, len(idx)), **{
            c: (v(idx) if callable(v) else pl.lit(v)) for c, v in cols.items()})
        day = ep["ref"][idx] if name != "future_date" else np.full(len(idx), t_day)
        return name, part, day

    base = n + 1
    bad_e = _bad_rows([
        bad_episode("impossible_date", base, referral_date=lambda i: pl.Series(
            [f"{y}-02-30" for y in dates(ep["ref"][i]).str.slice(0, 4).to_list()])),
        bad_episode("unknown_condition", base + k, condition=P.UNKNOWN_CONDITION),
        bad_episode("prescribed_out_of_range", base + 2 * k, prescribed_sessions="0"),
        bad_episode("invalid_sex", base + 3 * k, sex="female"),
        # years ahead, so the row is rejected whatever day the demo is run on
        bad_episode("future_date", base + 4 * k, referral_date=lambda i: dates(
            np.full(len(i), t_day) + 3650 + rng.integers(1, 31, len(i)))),
    ])
    summary_tables = {}
    summary_tables["episodes"] = _write_table(
        "episodes", episodes, ep["ref"], episodes_wrong, episodes_respell, bad_e, rng, weeks, out)
    del episodes

    # ---- sessions --------------------------------------------------------------------
    rng = streams[4]
    w_s = max(8, len(str(n_s + 10 * _n_bad(n_s) + 10)))
    therapist_ids = pl.Series("t", [
        f"T{ci + 1:02d}{t + 1:02d}" for ci, c in enumerate(P.CLINICS) for t in range(c.therapists)])
    session_ids = _ids("S", np.arange(1, n_s + 1), w_s)
    sessions = pl.DataFrame([
        session_ids.alias("session_id"),
        episode_ids.gather(pl.Series(ses["e"].astype(np.uint32))).alias("episode_id"),
        _gather(therapist_ids, ses["therapist"]).alias("therapist_id"),
        dates(ses["day"]).alias("session_date"),
        _gather(_NUMBERS, ses["duration"], ses["duration_missing"]).alias("duration_min"),
    ])

    def sessions_wrong(idx):
        part = _rows(sessions, idx)
        kind = rng.integers(0, 2, len(idx))
        clinic = ep["clinic"][ses["e"][idx]]
        local = ses["therapist"][idx] - ep["ther_offset"][clinic]
        alt = ep["ther_offset"][clinic] + (local + 1) % ep["n_ther"][clinic]
        return part.with_columns(
            duration_min=pl.when(pl.Series(kind == 0)).then(
                pl.when(pl.col("duration_min") == "45").then(pl.lit("60")).otherwise(pl.lit("45")))
            .otherwise(pl.col("duration_min")),
            therapist_id=pl.when(pl.Series(kind == 1)).then(_gather(therapist_ids, alt))
            .otherwise(pl.col("therapist_id")),
        )

    def sessions_respell(idx):
        return _rows(sessions, idx).with_columns(duration_min=pl.col("duration_min") + ".0")

    k = _n_bad(n_s)

    def bad_session(name, start, **cols):
        idx = np.sort(rng.choice(n_s, size=min(k, n_s), replace=False))
        fresh_ids = _ids("S", np.arange(start, start + len(idx)), w_s)
        part = _rows(sessions, idx).with_columns(session_id=fresh_ids, **{
            c: (v(idx) if callable(v) else pl.lit(v)) for c, v in cols.items()})
        day = ses["day"][idx] if name != "future_date" else np.full(len(idx), t_day)
        return name, part, day

    base = n_s + 1
    kinds = [
        # an episode id that no export holds (past the bad episodes' ids too)
        bad_session("orphan_episode", base, episode_id=lambda i: fresh(
            n + 5 * _n_bad(n) + 1, len(i))),
        bad_session("before_referral", base + k, session_date=lambda i: dates(
            ep["ref"][ses["e"][i]] - rng.integers(1, 11, len(i)))),
        bad_session("impossible_date", base + 2 * k, session_date=lambda i: pl.Series(
            [f"{y}-02-30" for y in dates(ses["day"][i]).str.slice(0, 4).to_list()])),
        bad_session("duration_out_of_range", base + 3 * k, duration_min="5"),
        bad_session("future_date", base + 4 * k, session_date=lambda i: dates(
            np.full(len(i), t_day) + 3650 + rng.integers(1, 15, len(i)))),
    ]
    # a conflict inside one export: the same (new) session twice with different content
    name, part, day = bad_session("conflict_in_file", base + 5 * k, duration_min="30")
    kinds.append((name, pl.concat([part, part.with_columns(duration_min=pl.lit("60"))]),
                  np.concatenate([day, day])))
    bad_s = _bad_rows(kinds)
    summary_tables["sessions"] = _write_table(
        "sessions", sessions, ses["day"], sessions_wrong, sessions_respell, bad_s, rng, weeks, out)
    del sessions

    # ---- pain scores -----------------------------------------------------------------
    rng = streams[5]
    session_idx = sc["session"]
    scores = pl.DataFrame([
        episode_ids.gather(pl.Series(sc["e"].astype(np.uint32))).alias("episode_id"),
        _gather(session_ids, np.maximum(session_idx, 0), session_idx < 0).alias("session_id"),
        _gather(_TIMEPOINTS, sc["timepoint"]).alias("timepoint"),
        _gather(_SCORES, sc["h"]).alias("score"),
        dates(sc["recorded"], sc["recorded_missing"]).alias("recorded_on"),
    ])

    def scores_wrong(idx):
        h = sc["h"][idx]
        wrong = np.where(h + 2 <= 20, h + 2, h - 2)
        return _rows(scores, idx).with_columns(score=_gather(_SCORES, wrong))

    def scores_respell(idx):
        return _rows(scores, idx).with_columns(
            score=pl.when(pl.col("score").str.contains(".", literal=True))
            .then(pl.col("score")).otherwise(pl.col("score") + ".0"))

    k = _n_bad(n_p)
    with_session = np.flatnonzero(session_idx >= 0)

    def bad_score(name, **cols):
        pool = with_session if len(with_session) else np.arange(n_p)
        idx = np.sort(rng.choice(pool, size=min(k, len(pool)), replace=False))
        part = _rows(scores, idx).with_columns(**{
            c: (v(idx) if callable(v) else (pl.lit(v, dtype=pl.String))) for c, v in cols.items()})
        return name, part, sc["day"][idx]

    other_episode = [] if n < 2 else [  # a pre score filed under another episode
        bad_score("session_of_other_episode", timepoint="pre", episode_id=lambda i: episode_ids
                  .gather(pl.Series(((sc["e"][i] + 1) % n).astype(np.uint32))))]
    bad_p = _bad_rows([
        bad_score("score_out_of_range", score="11"),
        bad_score("score_not_numeric", score="seven"),
        bad_score("score_negative", score="-1"),
        bad_score("invalid_timepoint", timepoint="during"),
        bad_score("pre_without_session", session_id=None, timepoint="pre"),
        bad_score("followup_without_date", session_id=None, timepoint="followup",
                  recorded_on=None),
        *other_episode,
    ])
    summary_tables["pain_scores"] = _write_table(
        "pain_scores", scores, sc["day"], scores_wrong, scores_respell, bad_p, rng, weeks, out)

    return {
        "out_dir": str(out),
        "seed": seed,
        "n_episodes": n,
        "today": today.isoformat(),
        "layout": "<ISO week>/<table>_<export date>.csv",
        "files": {t: s["files"] for t, s in summary_tables.items()},
        "rows": {t: s["rows"] for t, s in summary_tables.items()},
        "records": {t: s["records"] for t, s in summary_tables.items()},
        "planted": {t: s["planted"] for t, s in summary_tables.items()},
        "bad_rows": {t: s["bad"] for t, s in summary_tables.items()},
        "patients": ep["n_pat"],
        "followups": sc["n_followups"],
    }

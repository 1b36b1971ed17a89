"""The synthetic demo exports (pipelines.synth): determinism, layout, realism, planted faults.

``_settle`` below is a small, independent reading of CONTRACT.md's row rules (types,
ranges, references, keys) used only to check that what the generator says it planted
(duplicates, superseded rows, bad rows) is what a contract-following validator will see.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from pathlib import Path

import polars as pl
import pytest

from pipelines.synth import generate
from pipelines.synth import params as P
from pipelines.vocabulary import Vocabulary, normalise_expr

TODAY = P.DEFAULT_TODAY
TABLES = ("episodes", "sessions", "pain_scores")
HEADERS = {
    "episodes": ["episode_id", "patient_id", "clinic_id", "condition", "referral_date",
                 "prescribed_sessions", "age_band", "sex", "chronicity"],
    "sessions": ["session_id", "episode_id", "therapist_id", "session_date", "duration_min"],
    "pain_scores": ["episode_id", "session_id", "timepoint", "score", "recorded_on"],
}
ID_COLUMNS = ("episode_id", "patient_id", "clinic_id", "session_id", "therapist_id")
PATH = re.compile(r"^(\d{4})-W(\d{2})/(episodes|sessions|pain_scores)_(\d{4}-\d{2}-\d{2})\.csv$")


# ---------------------------------------------------------------------------------------
# fixtures and helpers
# ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth5000")
    return out, generate(5000, 11, out)


@pytest.fixture(scope="module")
def settled(demo):
    out, summary = demo
    return _settle(out, TODAY), summary


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*.csv")):
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def _read(out: Path, table: str) -> pl.DataFrame:
    """All rows of a table, every cell a trimmed string (empty -> null), in file order."""
    frames = []
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob(f"{table}*.csv"))
    for rel in files:
        df = pl.read_csv(out / rel, infer_schema=False)
        frames.append(df.with_columns(
            pl.all().str.strip_chars().replace("", None),
            _file=pl.lit(rel), _line=pl.int_range(2, df.height + 2)))
    return pl.concat(frames)


def _date(col: str) -> pl.Expr:
    return pl.col(col).str.to_date("%Y-%m-%d", strict=False)


def _number(col: str) -> pl.Expr:
    return pl.col(col).cast(pl.Float64, strict=False)


def _integer_in(col: str, lo: int, hi: int) -> pl.Expr:
    x = _number(col)
    return pl.col(col).is_null() | ((x == x.round()) & x.is_between(lo, hi))


def _keys(df: pl.DataFrame, key: list[str], content: list[str]) -> dict:
    """CONTRACT.md rule 4 over the rows that passed rules 1-3."""
    df = df.with_columns(_c=pl.concat_str([pl.col(c).cast(pl.String).fill_null("\x00")
                                           for c in content], separator="\x01"))
    per_file = df.group_by(["_file", *key]).agg(pl.col("_c").n_unique().alias("_v"))
    df = df.join(per_file, on=["_file", *key], how="left", nulls_equal=True)
    conflict = df.filter(pl.col("_v") > 1)
    ok = df.filter(pl.col("_v") == 1).sort("_file", "_line")
    last = ok.group_by(key).agg(pl.col("_c").last().alias("_accepted"), pl.len().alias("_n"))
    ok = ok.join(last, on=key, how="left", nulls_equal=True)
    earlier = ok.filter(pl.col("_n") > 1)
    n_earlier = earlier.height - earlier.select(key).unique().height
    superseded = int(earlier.group_by(key).agg(
        (pl.col("_c") != pl.col("_accepted")).sum().alias("s"))["s"].sum() or 0)
    accepted = ok.unique(key, keep="last", maintain_order=True)
    return dict(accepted=accepted, conflict=conflict.height,
                duplicate=n_earlier - superseded, superseded=superseded)


def _settle(out: Path, today: dt.date) -> dict:
    vocab = Vocabulary.load()
    result = {}

    ep = _read(out, "episodes").with_columns(
        code=normalise_expr(pl.col("condition")).replace_strict(vocab.lookup, default=None),
        ref=_date("referral_date"))
    ok = (pl.all_horizontal(pl.col(c).is_not_null() for c in HEADERS["episodes"][:5])
          & pl.col("code").is_not_null() & pl.col("ref").is_not_null() & (pl.col("ref") <= today)
          & _integer_in("prescribed_sessions", 1, 100)
          & (pl.col("age_band").is_null() | pl.col("age_band").is_in(P.AGE_BANDS))
          & (pl.col("sex").is_null() | pl.col("sex").str.to_uppercase().is_in(P.SEXES))
          & (pl.col("chronicity").is_null()
             | pl.col("chronicity").str.to_lowercase().is_in(P.CHRONICITIES)))
    good = ep.filter(ok).with_columns(presc=_number("prescribed_sessions"),
                                      sex_n=pl.col("sex").str.to_uppercase(),
                                      chron=pl.col("chronicity").str.to_lowercase())
    k = _keys(good, ["episode_id"], ["patient_id", "clinic_id", "code", "ref", "presc",
                                     "age_band", "sex_n", "chron"])
    result["episodes"] = dict(k, rejected=ep.height - good.height + k["conflict"], raw=ep)
    episodes = k["accepted"]

    ses = _read(out, "sessions").with_columns(d=_date("session_date")).join(
        episodes.select("episode_id", "ref"), on="episode_id", how="left")
    ok = (pl.all_horizontal(pl.col(c).is_not_null() for c in HEADERS["sessions"][:4])
          & pl.col("d").is_not_null() & (pl.col("d") <= today) & pl.col("ref").is_not_null()
          & (pl.col("d") >= pl.col("ref")) & _integer_in("duration_min", 10, 180))
    good = ses.filter(ok).with_columns(dur=_number("duration_min"))
    k = _keys(good, ["session_id"], ["episode_id", "therapist_id", "d", "dur"])
    result["sessions"] = dict(k, rejected=ses.height - good.height + k["conflict"], raw=ses)
    sessions = k["accepted"]

    sc = _read(out, "pain_scores").with_columns(
        tp=pl.col("timepoint").str.to_lowercase(), s=_number("score"), rec=_date("recorded_on"))
    sc = sc.join(sessions.select("session_id", s_episode="episode_id", s_day="d"),
                 on="session_id", how="left").join(
        episodes.select("episode_id", "ref"), on="episode_id", how="left")
    pre_post = pl.col("tp").is_in(["pre", "post"])
    ok = (pl.col("episode_id").is_not_null() & pl.col("tp").is_in(["pre", "post", "followup"])
          & pl.col("s").is_between(0, 10) & pl.col("ref").is_not_null()
          & (pl.col("recorded_on").is_null() | (pl.col("rec").is_not_null()
                                                & (pl.col("rec") <= today)))
          & pl.when(pre_post).then(pl.col("s_episode") == pl.col("episode_id"))
          .otherwise(pl.col("session_id").is_null() & pl.col("rec").is_not_null()
                     & (pl.col("rec") >= pl.col("ref"))))
    good = sc.filter(ok.fill_null(False))
    pp = _keys(good.filter(pre_post), ["session_id", "tp"], ["episode_id", "s"])
    fu = _keys(good.filter(~pre_post), ["episode_id", "rec"], ["s"])
    result["pain_scores"] = dict(
        accepted=pl.concat([pp["accepted"], fu["accepted"]]),
        conflict=pp["conflict"] + fu["conflict"],
        duplicate=pp["duplicate"] + fu["duplicate"],
        superseded=pp["superseded"] + fu["superseded"],
        rejected=sc.height - good.height + pp["conflict"] + fu["conflict"], raw=sc)
    return result


# ---------------------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------------------

def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a = generate(800, 3, tmp_path / "a")
    b = generate(800, 3, tmp_path / "b")
    c = generate(800, 4, tmp_path / "c")
    assert a["files"] == b["files"] and a["rows"] == b["rows"]
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_refuses_to_mix_with_earlier_exports(tmp_path):
    raw = tmp_path / "raw"
    generate(200, 1, raw)
    (raw / "README.txt").write_text("not an export")
    with pytest.raises(FileExistsError):
        generate(200, 2, raw)
    generate(200, 2, raw, overwrite=True)  # replaces the exports, leaves other files
    generate(200, 2, tmp_path / "fresh")
    assert (raw / "README.txt").exists()
    assert _digest(raw) == _digest(tmp_path / "fresh")


def test_layout_names_headers(demo):
    out, summary = demo
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == sorted(f for t in TABLES for f in summary["files"][t])
    for table in TABLES:
        files = summary["files"][table]
        assert len(files) >= 52, "about 15 months of weekly exports"
        assert files == sorted(files), "string order is time order"
        for rel in files:
            m = PATH.match(rel)
            assert m and m.group(3) == table
            assert Path(rel).name.lower().startswith(table) and rel.endswith(".csv")
            export = dt.date.fromisoformat(m.group(4))
            year, week, _ = export.isocalendar()
            assert (int(m.group(1)), int(m.group(2))) == (year, week)
            assert export.weekday() == 6 or export == TODAY
            assert export <= TODAY
            with open(out / rel, encoding="utf-8") as fh:
                assert fh.readline().rstrip("\n").split(",") == HEADERS[table]
        dates = [dt.date.fromisoformat(PATH.match(f).group(4)) for f in files]
        span = (dates[-1] - dates[0]).days
        assert 365 <= span <= 550


def test_planted_counts_match_a_contract_reading(settled):
    result, summary = settled
    for table in TABLES:
        r, planted = result[table], summary["planted"][table]
        assert r["accepted"].height == summary["records"][table], table
        assert r["duplicate"] == planted["duplicate"] > 0, table
        assert r["superseded"] == planted["superseded"] > 0, table
        assert r["rejected"] == planted["rejected"] > 0, table
        assert r["raw"].height == summary["rows"][table], table
        assert sum(summary["bad_rows"][table].values()) == planted["rejected"]
        # bad rows stay well under 1% of what is written
        assert planted["rejected"] < 0.005 * summary["rows"][table]
    assert result["sessions"]["conflict"] == summary["bad_rows"]["sessions"]["conflict_in_file"]


def test_all_conditions_with_different_prevalence(settled):
    result, _ = settled
    episodes = result["episodes"]["accepted"]
    counts = dict(episodes.group_by("code").len().iter_rows())
    assert set(counts) == set(P.CONDITION_CODES)
    ranked = sorted(counts, key=counts.get, reverse=True)
    assert ranked[0] == "low_back_pain"
    assert {"parkinsons", "multiple_sclerosis"} <= set(ranked[-3:])
    assert counts["low_back_pain"] > 10 * counts["parkinsons"]
    # aliases and odd spellings are used, and all of them resolve
    raw = result["episodes"]["raw"]
    written = raw.filter(pl.col("condition") != P.UNKNOWN_CONDITION)
    assert written["code"].null_count() == 0
    assert (written["condition"] != written["code"]).mean() > 0.05
    assert {"lbp", "ms", "migraine"} <= set(written["condition"].str.to_lowercase())


def test_sessions_between_referral_and_today(settled):
    result, summary = settled
    bad = summary["bad_rows"]["sessions"]
    ses = result["sessions"]["raw"]
    assert ses.filter(pl.col("d").is_null()).height == bad["impossible_date"]
    assert ses.filter(pl.col("d") > TODAY).height == bad["future_date"]
    assert ses.filter(pl.col("d") < pl.col("ref")).height == bad["before_referral"]
    # only the orphans name an episode that no export holds
    assert ses.filter(pl.col("ref").is_null()).height == bad["orphan_episode"]
    accepted = result["sessions"]["accepted"]
    assert accepted["d"].max() <= TODAY
    assert (accepted["d"] >= accepted["ref"]).all()
    # some sessions sit in the last days before today: episodes still in treatment
    assert accepted.filter(pl.col("d") > TODAY - dt.timedelta(days=7)).height > 0


def test_scores_in_range_except_planted(settled):
    result, summary = settled
    bad = summary["bad_rows"]["pain_scores"]
    sc = result["pain_scores"]["raw"]
    out_of_range = sc.filter(~pl.col("s").is_between(0, 10) | pl.col("s").is_null())
    assert out_of_range.height == (bad["score_out_of_range"] + bad["score_not_numeric"]
                                   + bad["score_negative"])
    ok = result["pain_scores"]["accepted"]
    assert ok["s"].min() >= 0 and ok["s"].max() <= 10
    assert ((ok["s"] * 2) == (ok["s"] * 2).round()).all()  # whole or half points
    halves = (ok["s"] != ok["s"].round()).mean()
    assert 0.01 < halves < 0.15
    # post is below pre on average by a couple of points (within-session relief)
    pairs = ok.filter(pl.col("tp") != "followup").pivot(
        on="tp", index="session_id", values="s").drop_nulls()
    relief = (pairs["pre"] - pairs["post"]).mean()
    assert 1.5 < relief < 3.5


def test_ids_are_pseudonyms(settled):
    result, _ = settled
    phone = re.compile(r"^[\d\s+\-.()]+$")
    shapes = {"episode_id": r"E\d{7,}", "patient_id": r"P\d{6,}", "clinic_id": r"C\d{2}",
              "session_id": r"S\d{8,}", "therapist_id": r"T\d{4}"}
    for table in TABLES:
        raw = result[table]["raw"]
        for col in ID_COLUMNS:
            if col not in raw.columns:
                continue
            values = raw[col].drop_nulls().unique()
            assert not values.str.contains("@", literal=True).any()
            digits = values.str.count_matches(r"\d")
            assert not (values.str.contains(phone.pattern) & (digits >= 9)).any()
            assert values.str.contains(f"^{shapes[col]}$").all(), (table, col)


def test_realistic_features_present(settled):
    result, _ = settled
    episodes = result["episodes"]["accepted"]
    sessions = result["sessions"]["accepted"]
    scores = result["pain_scores"]["accepted"]
    # patients with several episodes; missing optional values
    assert episodes.group_by("patient_id").len()["len"].max() >= 2
    for col in ("prescribed_sessions", "age_band", "sex", "chronicity"):
        assert 0 < episodes[col].null_count() < 0.2 * episodes.height
    presc = episodes["presc"].drop_nulls()
    assert presc.is_between(6, 12).mean() > 0.6
    # episodes without sessions; several clinics; weekly or twice-weekly sessions
    n_sessions = sessions.group_by("episode_id").len()
    assert episodes.height - n_sessions.height > 0.02 * episodes.height
    assert 6 <= episodes["clinic_id"].n_unique() <= 8
    gaps = sessions.sort("episode_id", "d").with_columns(
        g=(pl.col("d") - pl.col("d").shift()).over("episode_id").dt.total_days()).drop_nulls("g")
    assert 3 <= gaps["g"].median() <= 8
    # baseline 0, missing session-1 pre, follow-ups after the last session
    first = sessions.sort("d", "session_id").group_by("episode_id", maintain_order=True).first()
    pre1 = first.join(scores.filter(pl.col("tp") == "pre"), on="session_id", how="left")
    assert pre1["s"].null_count() > 0
    assert (pre1["s"] == 0).sum() > 0
    fu = scores.filter(pl.col("tp") == "followup")
    assert fu.height > 0 and fu["session_id"].null_count() == fu.height
    last = sessions.group_by("episode_id").agg(last=pl.col("d").max())
    fu = fu.join(last, on="episode_id", how="inner")
    assert (fu["rec"] > fu["last"]).all() and fu["rec"].max() <= TODAY

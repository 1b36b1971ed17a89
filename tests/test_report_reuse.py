"""The weekly report reuses the outcomes job's scored sessions, episode outcomes, session
relief, pain trajectories and clinic summary only when they equal what it would compute
itself (pipelines.outcomes.lineage).

Equal means: the same accepted tables (ingest audit, vocabulary, row counts), the same code,
the same settings, and the same records as of the outcomes' as-of date and the week's
Sunday. Each clause has a test that breaks it and sees the report recompute; the reused
report is compared with a recomputed one, table for table.
"""

from __future__ import annotations

import shutil
from datetime import date, timedelta

import dagster as dg
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from pipelines.defs.outcomes.assets import accepted_digest
from pipelines.defs.reports import assets as report_assets
from pipelines.defs.reports.assets import (
    ONLY_TO_COMPUTE, REPORT_COLUMNS, REUSABLE, REUSED_COLUMNS, stored_outcomes, with_session_ids,
)
from pipelines.defs.resources import CSV_SCHEMAS, PipelineConfig, ProcessedTableIOManager
from pipelines.outcomes.lineage import STAMP_KEY, Lineage, read_lineage
from pipelines.outcomes.metrics import episode_outcomes_from, same_records_as_of, scored_sessions
from pipelines.outcomes.summary import ALL, clinic_condition_summary, condition_summary_from, summarise
from pipelines.reports.weekly import REPORT_OUTCOME_COLUMNS, ReportInputs, _per_clinic, build_report
from pipelines.settings import Settings
from pipelines.vocabulary import Vocabulary
from report_helpers import SUNDAY, WEEK, main_report  # noqa: F401  (fixture)


# --------------------------------------------------------------------------------------
# same_records_as_of, by hand
# --------------------------------------------------------------------------------------

D = date(2026, 3, 1)


def _tables(referral=D, session=D, followup=None, pre_recorded=D):
    episodes = pl.DataFrame({"episode_id": ["E1"], "referral_date": [referral]})
    sessions = pl.DataFrame({"session_id": ["S1"], "episode_id": ["E1"], "session_date": [session]})
    scores = [("pre", pre_recorded)] + ([("followup", followup)] if followup else [])
    pain_scores = pl.DataFrame({"timepoint": [t for t, _ in scores], "recorded_on": [r for _, r in scores]})
    return episodes, sessions, pain_scores


@pytest.mark.parametrize("tables, first, second, same", [
    # nothing dated after the earlier date
    (_tables(), D, D + timedelta(days=6), True),
    (_tables(), D + timedelta(days=6), D, True),          # order of the dates does not matter
    (_tables(), D, D, True),
    # an episode referred, a session held or a follow-up recorded in (earlier, later]
    (_tables(referral=D + timedelta(days=3)), D, D + timedelta(days=6), False),
    (_tables(session=D + timedelta(days=6)), D, D + timedelta(days=6), False),
    (_tables(followup=D + timedelta(days=1)), D, D + timedelta(days=6), False),
    # on the earlier date itself counts as of both; after the later date as of neither
    (_tables(session=D, followup=D), D, D + timedelta(days=6), True),
    (_tables(session=D + timedelta(days=7), referral=D + timedelta(days=9)), D, D + timedelta(days=6), True),
    # a pre score is dated by its session, not by recorded_on
    (_tables(pre_recorded=D + timedelta(days=2)), D, D + timedelta(days=6), True),
])
def test_same_records_as_of(tables, first, second, same):
    assert same_records_as_of(*tables, first, second) is same


def test_metrics_equal_when_same_records_as_of(main_report):  # noqa: F811
    """The premise of reuse, checked on data: as of the latest record and as of a later
    date with no record between, the scored sessions and outcomes are identical."""
    ep, se, ps = (pl.read_parquet(main_report.processed_dir / f"{t}.parquet")
                  for t in ("episodes", "sessions", "pain_scores"))
    latest = max(se["session_date"].max(), ps.filter(pl.col("timepoint") == "followup")["recorded_on"].max(),
                 ep["referral_date"].max())
    later = latest + timedelta(days=5)
    assert same_records_as_of(ep, se, ps, latest, later)
    scored_a, scored_b = scored_sessions(ep, se, ps, latest), scored_sessions(ep, se, ps, later)
    assert scored_a.equals(scored_b)
    assert episode_outcomes_from(ep, scored_a, ps, latest).equals(episode_outcomes_from(ep, scored_b, ps, later))
    earlier = se["session_date"].max() - timedelta(days=1)  # the last session counts as of latest only
    assert not same_records_as_of(ep, se, ps, earlier, latest)
    assert not scored_sessions(ep, se, ps, earlier).equals(scored_a)


# --------------------------------------------------------------------------------------
# the stored tables of a real run
# --------------------------------------------------------------------------------------

def _accepted(processed):
    ep, se, ps = (pl.read_parquet(processed / f"{t}.parquet") for t in ("episodes", "sessions", "pain_scores"))
    audit = pl.read_csv(processed / "ingest_audit.csv", schema=CSV_SCHEMAS["ingest_audit.csv"])
    rejected = pl.read_csv(processed / "rejected_rows.csv", schema=CSV_SCHEMAS["rejected_rows.csv"])
    return ep, se, ps, audit, rejected


def _digest(audit, ep, se, ps):
    return accepted_digest(PipelineConfig(), audit, ep, se, ps)


def test_run_stamps_the_reusable_tables(main_report):  # noqa: F811
    ep, se, ps, audit, _ = _accepted(main_report.processed_dir)
    for name, (filename, with_settings) in REUSABLE.items():
        stamp = read_lineage(main_report.processed_dir / filename)
        assert stamp is not None, name
        assert stamp.inputs == _digest(audit, ep, se, ps)
        assert stamp.as_of == main_report.as_of
        assert stamp.settings == (Settings().as_dict() if with_settings else None)
    # tables that are not stamped have no lineage
    assert read_lineage(main_report.processed_dir / "condition_summary.csv") is None


def test_the_stamped_condition_summary_is_the_published_csv(main_report):  # noqa: F811
    """condition_summary.parquet (what the report reuses) holds the rows, columns and values of
    condition_summary.csv, and both equal the summary the report would compute itself."""
    processed = main_report.processed_dir
    stamped = pl.read_parquet(processed / "condition_summary.parquet")
    assert_frame_equal(stamped, pl.read_csv(processed / "condition_summary.csv",
                                            schema=CSV_SCHEMAS["condition_summary.csv"]))
    relief = pl.read_parquet(processed / "session_relief.parquet")
    outcomes = pl.read_parquet(processed / "episode_outcomes.parquet", columns=REPORT_OUTCOME_COLUMNS)
    assert stamped.height > 2 and stamped.equals(condition_summary_from(outcomes, relief, Settings()))


def test_reused_report_equals_recomputed_report(stored):
    found, said = _attempt(*stored)
    assert set(found) == set(REUSABLE), said
    assert "recomputed" not in said
    _assert_same_report(_report(*stored, found), _report(*stored, {}))


def _assert_same_report(reused, recomputed):
    for name in ("conditions", "summary_csv", "clinics"):
        assert getattr(reused, name).equals(getattr(recomputed, name)), name
    assert reused.headline_week == recomputed.headline_week
    assert reused.headline_to_date == recomputed.headline_to_date
    assert [f.caption for f in reused.figures] == [f.caption for f in recomputed.figures]
    assert reused.key_messages == recomputed.key_messages

    def plotted(figure):  # every line, bar and text drawn, in order (repr: nan equals nan)
        return repr([(type(a).__name__, a.get_xydata().tolist() if hasattr(a, "get_xydata") else
                 a.get_text() if hasattr(a, "get_text") else a.get_path().vertices.tolist())
                for ax in figure.axes for a in (*ax.lines, *ax.patches, *ax.texts)])

    for mine, theirs in zip(reused.figures, recomputed.figures):
        assert plotted(mine.figure) == plotted(theirs.figure), mine.name


@pytest.fixture
def stored(main_report, tmp_path):  # noqa: F811
    """A writable copy of the run's processed folder, and its accepted tables."""
    processed = tmp_path / "processed"
    shutil.copytree(main_report.processed_dir, processed, ignore=shutil.ignore_patterns(".cache"))
    ep, se, ps, audit, _ = _accepted(processed)
    return processed, ep, se, ps, audit


def _restamp(path, **changes):
    stamp = read_lineage(path)
    frame = pl.read_parquet(path)
    fields = {"inputs": stamp.inputs, "as_of": stamp.as_of, "code": stamp.code, "settings": stamp.settings, **changes}
    frame.write_parquet(path, metadata={STAMP_KEY: Lineage(**fields).to_json()})


def test_the_report_takes_its_condition_rows_from_the_stored_summary(stored):
    """A reused condition summary is what the report publishes: a value changed in the stored
    table (which a real run never does) shows in summary.csv."""
    found, said = _attempt(*stored)
    assert "condition_summary_table" in found, said
    doctored = found["condition_summary_table"].with_columns(
        pl.when(pl.col("condition") == ALL).then(pl.lit(9.75)).otherwise(pl.col("mean_change")).alias("mean_change"))
    report = _report(*stored, {**found, "condition_summary_table": doctored})
    assert report.summary_csv.filter(pl.col("condition") == ALL)["mean_change"].item() == 9.75
    assert _report(*stored, found).summary_csv.filter(pl.col("condition") == ALL)["mean_change"].item() != 9.75


def _attempt(processed, ep, se, ps, audit, settings=None, sunday=SUNDAY):
    return stored_outcomes(ProcessedTableIOManager(processed_dir=str(processed)), _digest(audit, ep, se, ps),
                           settings or Settings(), sunday, ep, se, ps)


def _read_columns(found):
    """Each reused table has its REUSED_COLUMNS but those only needed to compute a reused table."""
    for name, frame in found.items():
        unused = {column for column, table in ONLY_TO_COMPUTE.get(name, {}).items() if table in found}
        assert frame.columns == [c for c in REUSED_COLUMNS.get(name, frame.columns) if c not in unused], name


def test_reuses_an_untouched_copy(stored):
    found, said = _attempt(*stored)
    assert set(found) == set(REUSABLE) and "recomputed" not in said
    assert said.startswith(f"reused {', '.join(REUSABLE)} ")
    _read_columns(found)
    assert "post" not in found["scored_sessions"].columns and "clinic_id" not in found["session_relief_table"].columns
    for name, frame in found.items():
        assert frame.equals(pl.read_parquet(stored[0] / REUSABLE[name][0], columns=frame.columns))


def test_other_settings_recompute_what_depends_on_them(stored):
    found, said = _attempt(*stored, settings=Settings(responder_30_threshold=25.0))
    assert set(found) == {name for name, (_, with_settings) in REUSABLE.items() if not with_settings}
    assert "episode_outcomes.parquet was computed with other settings" in said


def test_other_accepted_tables_recompute(stored):
    processed, ep, se, ps, audit = stored
    # one session fewer (the heights), or one file's content hash different (the audit)
    found, said = _attempt(processed, ep, se.slice(1), ps, audit)
    assert found == {} and "other accepted tables" in said
    changed = audit.with_columns(pl.when(pl.int_range(pl.len()) == 0).then(pl.lit("0" * 64))
                                 .otherwise(pl.col("sha256")).alias("sha256"))
    assert _attempt(processed, ep, se, ps, changed)[0] == {}


def test_other_code_recomputes(stored, monkeypatch):
    monkeypatch.setattr(report_assets, "code_fingerprint", lambda: "pipelines 9.9.9")
    found, said = _attempt(*stored)
    assert found == {} and "other accepted tables or code" in said


def test_records_between_the_dates_recompute(stored):
    processed, ep, se, ps, audit = stored
    # stored as of the day before the last session: that session counts as of Sunday only
    last_session = se["session_date"].max()
    for filename, _ in REUSABLE.values():
        _restamp(processed / filename, as_of=(last_session - timedelta(days=1)).isoformat())
    found, said = _attempt(processed, ep, se, ps, audit)
    assert found == {} and "records differ" in said
    # a week whose Sunday is before the stored as-of, with records in between, too
    found, said = _attempt(processed, ep, se, ps, audit, sunday=SUNDAY - timedelta(days=7))
    assert found == {} and "records differ" in said


@pytest.mark.parametrize("name", ["episode_outcomes", "session_relief_table", "condition_summary_table",
                                  "clinic_condition_summary"])
@pytest.mark.parametrize("damage", ["missing", "unstamped", "corrupt"])
def test_missing_or_unstamped_tables_recompute(stored, damage, name):
    processed = stored[0]
    filename = REUSABLE[name][0]
    path = processed / filename
    if damage == "missing":
        path.unlink()
    elif damage == "unstamped":
        pl.read_parquet(path).write_parquet(path)
    else:
        path.write_bytes(path.read_bytes()[:100])
    found, said = _attempt(*stored)
    assert set(found) == set(REUSABLE) - {name}
    assert f"{filename} is missing or has no lineage" in said
    _read_columns(found)  # e.g. the post scores when session relief is computed again


def test_partly_reused_report_equals_recomputed_report(stored):
    """Session relief and the clinic summary computed in the report, from the reused scored
    sessions (read with their post scores) and session relief (with its clinics)."""
    processed = stored[0]
    for name in ("session_relief_table", "clinic_condition_summary"):
        pl.read_parquet(processed / REUSABLE[name][0]).write_parquet(processed / REUSABLE[name][0])
    found, said = _attempt(*stored)
    assert set(found) == {"scored_sessions", "episode_outcomes", "pain_trajectories", "condition_summary_table"}, said
    assert "post" in found["scored_sessions"].columns
    _assert_same_report(_report(*stored, found), _report(*stored, {}))


def _report(processed, ep, se, ps, audit, stored_tables):
    rejected = pl.read_csv(processed / "rejected_rows.csv", schema=CSV_SCHEMAS["rejected_rows.csv"])
    inputs = ReportInputs(episodes=ep, sessions=se, pain_scores=ps, audit=audit, rejected=rejected,
                          settings=Settings(), labels=Vocabulary.load(None).labels, stored=stored_tables)
    return build_report(inputs, WEEK)


def test_the_report_reads_session_ids_only_to_compute_scored_sessions(stored):
    """The asset's inputs leave out the session ids (REPORT_COLUMNS): a report that reuses the
    stored tables, all or some, does without them, and one that computes scored sessions again
    gets them from with_session_ids, row for row; each equals the report from the full tables."""
    processed, ep, se, ps, audit = stored
    narrow_se, narrow_ps = se.select(REPORT_COLUMNS["sessions"]), ps.select(REPORT_COLUMNS["pain_scores"])
    assert "session_id" not in narrow_se.columns + narrow_ps.columns
    full = _report(processed, ep, se, ps, audit, {})
    found, said = _attempt(processed, ep, narrow_se, narrow_ps, audit)
    assert set(found) == set(REUSABLE), said
    _assert_same_report(_report(processed, ep, narrow_se, narrow_ps, audit, found), full)
    partly = {name: found[name] for name in ("scored_sessions", "episode_outcomes")}
    partly["scored_sessions"] = pl.read_parquet(processed / REUSABLE["scored_sessions"][0],
                                                columns=REUSED_COLUMNS["scored_sessions"])  # with post
    _assert_same_report(_report(processed, ep, narrow_se, narrow_ps, audit, partly), full)
    with_ids = with_session_ids(ProcessedTableIOManager(processed_dir=str(processed)), narrow_se, narrow_ps)
    for frame, original in zip(with_ids, (se, ps)):
        assert_frame_equal(frame, original.select(frame.columns))
    _assert_same_report(_report(processed, ep, *with_ids, audit, {}), full)


def test_the_report_takes_its_clinic_rows_from_the_stored_clinic_summary(stored):
    """A reused clinic_condition_summary is what the clinic table and funnel plot show: its
    per-clinic ALL rows, which equal summarise by clinic_id (pipelines.outcomes.summary)."""
    processed, ep, se, ps, audit = stored
    found, said = _attempt(*stored)
    assert "clinic_condition_summary" in found, said
    clinic_summary = found["clinic_condition_summary"]
    per_clinic = _per_clinic(found["episode_outcomes"], found["session_relief_table"], Settings(), clinic_summary)
    computed = summarise(found["episode_outcomes"], found["session_relief_table"], Settings(), by=["clinic_id"],
                         pooled_label=None, with_p_values=False)
    assert_frame_equal(per_clinic, computed)
    assert per_clinic.height >= 3 and per_clinic["n_analysed"].sum() > 0
    # a changed stored table changes the report: the rows shown are the stored ones
    first = per_clinic["clinic_id"][0]
    altered = clinic_summary.with_columns(
        pl.when((pl.col("clinic_id") == first) & (pl.col("condition") == ALL)).then(0.999)
        .otherwise(pl.col("responder_30_rate")).alias("responder_30_rate"))
    shown = _report(processed, ep, se, ps, audit, {**found, "clinic_condition_summary": altered}).clinics
    assert shown.filter(pl.col("clinic_id") == first)["responder_30"].item() == "100%"
    assert _report(processed, ep, se, ps, audit, found).clinics.filter(
        pl.col("clinic_id") == first)["responder_30"].item() != "100%"


def test_clinic_rows_in_summarise_order_with_a_missing_clinic_id(stored):
    """clinic_condition_summary sorts a missing clinic id first, summarise last."""
    outcomes, relief = (pl.read_parquet(stored[0] / f) for f in ("episode_outcomes.parquet", "session_relief.parquet"))
    first = outcomes["clinic_id"].min()
    outcomes, relief = (frame.with_columns(pl.when(pl.col("clinic_id") == first).then(None)
                                           .otherwise(pl.col("clinic_id")).alias("clinic_id"))
                        for frame in (outcomes, relief))
    per_clinic = _per_clinic(outcomes, relief, Settings(), clinic_condition_summary(outcomes, relief, Settings()))
    assert per_clinic["clinic_id"][-1] is None
    assert_frame_equal(per_clinic, summarise(outcomes, relief, Settings(), by=["clinic_id"], pooled_label=None,
                                             with_p_values=False))


def test_a_clinic_summary_without_one_all_row_per_clinic_is_recomputed(stored):
    """e.g. a condition coded ALL: two ALL rows for a clinic, so the table is not used."""
    found, _ = _attempt(*stored)
    outcomes, relief = found["episode_outcomes"], found["session_relief_table"]
    clinic_summary = found["clinic_condition_summary"]
    doubled = pl.concat([clinic_summary, clinic_summary.filter(pl.col("condition") == ALL).with_columns(
        pl.lit(0.999).alias("responder_30_rate"))])
    assert_frame_equal(_per_clinic(outcomes, relief, Settings(), doubled),
                       summarise(outcomes, relief, Settings(), by=["clinic_id"], pooled_label=None,
                                 with_p_values=False))


def test_pipeline_as_of_midweek_recomputes_the_report(tmp_path):
    """`outcomes run --as-of` on a Wednesday with sessions later that week: the outcome
    tables are as of Wednesday, the report as of Sunday, so it must not reuse them."""
    from pipelines.pipeline import run_pipeline
    from pipelines.synth import generate

    raw = tmp_path / "raw"
    generate(300, 11, raw)  # last day: Sunday 2026-11-22
    instance = dg.DagsterInstance.ephemeral()
    outcome = run_pipeline(raw, tmp_path / "processed", tmp_path / "reports", as_of="2026-11-18",
                           today="2026-11-27", instance=instance)
    assert outcome.success, outcome.failure
    events = instance.fetch_materializations(dg.AssetKey("weekly_report"), limit=1).records
    said = events[0].asset_materialization.metadata["outcomes"].value
    assert said.startswith("reused nothing") and "records differ" in said
    # and the default as-of (the latest record, within the same week): reused
    outcome = run_pipeline(raw, tmp_path / "processed", tmp_path / "reports", today="2026-11-27", instance=instance)
    assert outcome.success, outcome.failure
    events = instance.fetch_materializations(dg.AssetKey("weekly_report"), limit=1).records
    said = events[0].asset_materialization.metadata["outcomes"].value
    assert said.startswith("reused scored_sessions, episode_outcomes, session_relief_table, pain_trajectories, "
                           "condition_summary_table, clinic_condition_summary")
    assert "recomputed" not in said


def test_code_fingerprint_follows_every_edit(tmp_path, monkeypatch):
    import pipelines
    from pipelines.outcomes import lineage

    package = tmp_path / "pipelines"
    (package / "outcomes").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "outcomes" / "metrics.py").write_text("THRESHOLD = 30\n")
    monkeypatch.setattr(pipelines, "__file__", str(package / "__init__.py"))

    def fingerprint():
        monkeypatch.setattr(lineage, "_CODE_FINGERPRINT", None)
        return lineage.code_fingerprint()

    first = fingerprint()
    assert first == fingerprint()
    (package / "outcomes" / "metrics.py").write_text("THRESHOLD = 25\n")
    assert fingerprint() != first
    (package / "outcomes" / "metrics.py").write_text("THRESHOLD = 30\n")
    assert fingerprint() == first
    (package / "notes.txt").write_text("not code")
    assert fingerprint() == first

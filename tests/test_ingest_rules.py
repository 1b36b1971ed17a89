"""Contract tests for validated ingest: one test per rule of CONTRACT.md ("Input" and
"Rows that break a rule"), each on a small hand-made raw folder with exact counts.

Every run goes through the ``run_ingest`` fixture (tests/conftest.py), which also checks
that the audit reconciles (rows_read = accepted + duplicate + superseded + rejected per
file, rejected rows per file = the audit's rejected), that keys are unique and that
references hold among the accepted rows.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from datetime import date
from pathlib import Path

import polars as pl
import pytest

TODAY = date(2026, 3, 1)
REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata" / "neck_pain_laser"

COLUMN_ORDER = {
    "episodes": ["episode_id", "patient_id", "clinic_id", "condition", "referral_date",
                 "prescribed_sessions", "age_band", "sex", "chronicity"],
    "sessions": ["session_id", "episode_id", "therapist_id", "session_date", "duration_min"],
    "pain_scores": ["episode_id", "session_id", "timepoint", "score", "recorded_on"],
}
CONTRACT_COLUMNS = {table: set(columns) for table, columns in COLUMN_ORDER.items()}
EPISODE_DEFAULTS = {"episode_id": "E1", "patient_id": "P1", "clinic_id": "C1",
                    "condition": "low_back_pain", "referral_date": "2026-01-05",
                    "prescribed_sessions": "6", "age_band": "45-59", "sex": "F",
                    "chronicity": "chronic"}


# --------------------------------------------------------------------------- helpers

def audit_of(res, source_file: str) -> dict:
    rows = res.audit.filter(pl.col("source_file") == source_file).to_dicts()
    assert len(rows) == 1, f"expected one audit row for {source_file}, got {rows}"
    return rows[0]


def counts(res, source_file: str) -> tuple:
    """(status, rows_read, accepted, duplicate, superseded, rejected) of one file."""
    a = audit_of(res, source_file)
    return (a["status"], a["rows_read"], a["accepted"], a["duplicate"], a["superseded"],
            a["rejected"])


def rejected_of(res, source_file: str) -> list[dict]:
    rows = res.rejected.filter(pl.col("source_file") == source_file).to_dicts()
    return sorted(rows, key=lambda r: r["line"])


def rejected_lines(res, source_file: str) -> list[int]:
    return [r["line"] for r in rejected_of(res, source_file)]


def rejected_at(res, source_file: str, line: int) -> dict:
    rows = [r for r in rejected_of(res, source_file) if r["line"] == line]
    assert len(rows) == 1, f"expected {source_file}:{line} rejected, rejected are {rejected_of(res, source_file)}"
    return rows[0]


def ids(df: pl.DataFrame, column: str = "episode_id") -> list:
    return sorted(df[column].to_list())


def accepted_row(df: pl.DataFrame, **where) -> dict:
    rows = df.filter(pl.all_horizontal([pl.col(k) == v for k, v in where.items()])).to_dicts()
    assert len(rows) == 1, f"expected one accepted row {where}, got {rows}"
    return rows[0]


def everything_as_text(res) -> str:
    return "\n".join(df.write_csv() for df in (res.episodes, res.sessions, res.pain_scores,
                                                res.rejected, res.audit))


def base_episode_and_session(write_raw, ingest_csv, episodes=("E1",), sessions=(("S1", "E1"),)):
    write_raw("episodes.csv", ingest_csv("episodes", *({"episode_id": e} for e in episodes)))
    write_raw("sessions.csv", ingest_csv("sessions", *({"session_id": s, "episode_id": e}
                                                       for s, e in sessions)))


# ------------------------------------------------------------------ 1. the file

@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_utf8_byte_order_mark_is_accepted(write_raw, ingest_csv, run_ingest, newline):
    text = ingest_csv("episodes", {"episode_id": "E1"}, {"episode_id": "E2", "clinic_id": "Zürich-1"})
    write_raw("episodes.csv", b"\xef\xbb\xbf" + text.replace("\n", newline).encode("utf-8"))
    res = run_ingest(TODAY)
    assert counts(res, "episodes.csv") == ("ingested", 2, 2, 0, 0, 0)
    assert ids(res.episodes) == ["E1", "E2"]
    assert ids(res.episodes, "clinic_id") == ["C1", "Zürich-1"]


def test_latin1_file_refused_mentioning_utf8_and_others_still_run(write_raw, ingest_csv, run_ingest):
    latin1 = ingest_csv("episodes", {"episode_id": "E1", "clinic_id": "Zürich"}).encode("latin-1")
    write_raw("episodes_2026-01.csv", latin1)
    write_raw("episodes_2026-02.csv", ingest_csv("episodes", {"episode_id": "E2"}))
    write_raw("sessions.csv", ingest_csv("sessions", {"session_id": "S1", "episode_id": "E1"},
                                          {"session_id": "S2", "episode_id": "E2"}))
    res = run_ingest(TODAY)

    a = audit_of(res, "episodes_2026-01.csv")
    assert (a["status"], a["table"], a["rows_read"]) == ("refused", "episodes", 0)
    assert "utf8" in a["reason"].lower().replace("-", "").replace(" ", "")
    assert rejected_of(res, "episodes_2026-01.csv") == []
    assert counts(res, "episodes_2026-02.csv") == ("ingested", 1, 1, 0, 0, 0)
    assert ids(res.episodes) == ["E2"]
    # the refused file's episode is not accepted, so its session is an orphan
    assert counts(res, "sessions.csv") == ("ingested", 2, 1, 0, 0, 1)
    assert ids(res.sessions, "session_id") == ["S2"]
    assert "episode_id" in rejected_at(res, "sessions.csv", 2)["reasons"]


REQUIRED_COLUMNS = (
    [("episodes", c) for c in ("episode_id", "patient_id", "clinic_id", "condition", "referral_date")]
    + [("sessions", c) for c in ("session_id", "episode_id", "therapist_id", "session_date")]
    + [("pain_scores", c) for c in ("episode_id", "timepoint", "score")]
)


@pytest.mark.parametrize(("table", "column"), REQUIRED_COLUMNS)
def test_missing_required_column_refuses_file(write_raw, ingest_csv, run_ingest, table, column):
    write_raw("episodes_0.csv", ingest_csv("episodes", {"episode_id": "E1"}))
    write_raw("sessions_0.csv", ingest_csv("sessions", {"session_id": "S1"}))
    write_raw("pain_scores_0.csv", ingest_csv("pain_scores", {"timepoint": "pre"}))
    new_row = {"episodes": {"episode_id": "E2"}, "sessions": {"session_id": "S2"},
               "pain_scores": {"timepoint": "post"}}[table]
    columns = [c for c in COLUMN_ORDER[table] if c != column]
    write_raw(f"{table}_1.csv", ingest_csv(table, new_row, columns=columns))
    res = run_ingest(TODAY)

    a = audit_of(res, f"{table}_1.csv")
    assert (a["status"], a["table"], a["rows_read"]) == ("refused", table, 0)
    assert column in a["reason"]
    assert rejected_of(res, f"{table}_1.csv") == []
    assert (res.episodes.height, res.sessions.height, res.pain_scores.height) == (1, 1, 1)


def test_optional_columns_may_be_absent(write_raw, ingest_csv, run_ingest):
    write_raw("episodes.csv", ingest_csv("episodes", {"episode_id": "E1"},
                                         columns=["episode_id", "patient_id", "clinic_id",
                                                  "condition", "referral_date"]))
    write_raw("sessions.csv", ingest_csv("sessions", {}, columns=["session_id", "episode_id",
                                                                  "therapist_id", "session_date"]))
    res = run_ingest(TODAY)
    assert counts(res, "episodes.csv") == ("ingested", 1, 1, 0, 0, 0)
    assert counts(res, "sessions.csv") == ("ingested", 1, 1, 0, 0, 0)
    ep = res.episodes.to_dicts()[0]
    assert ep["prescribed_sessions"] is None and ep["sex"] is None and ep["age_band"] is None
    assert ep["chronicity"] is None
    assert res.sessions.to_dicts()[0]["duration_min"] is None


@pytest.mark.parametrize(("table", "header"), [
    ("episodes", "Patient Name"), ("episodes", "E-mail"), ("episodes", "DOB"),
    ("episodes", " date of birth "), ("episodes", "NHS-Number"), ("episodes", "Postcode"),
    ("episodes", "zip code"), ("episodes", "MRN"), ("episodes", "first_name"),
    ("sessions", "Name"), ("sessions", "Phone"), ("pain_scores", "Address"),
    ("pain_scores", "Insurance ID"),
])
def test_direct_identifier_column_refuses_file(write_raw, ingest_csv, run_ingest, table, header):
    secret = "Jane Secretvalue-4711"
    base_episode_and_session(write_raw, ingest_csv)
    rows = {"episodes": [{"episode_id": "E7"}, {"episode_id": "E8", "sex": "nonsense"}],
            "sessions": [{"session_id": "S7"}, {"session_id": "S8", "duration_min": "1"}],
            "pain_scores": [{"timepoint": "pre"}, {"timepoint": "post", "score": "99"}]}[table]
    write_raw(f"{table}_with_pii.csv", ingest_csv(table, *rows, extra={header: secret}))
    res = run_ingest(TODAY)

    a = audit_of(res, f"{table}_with_pii.csv")
    assert (a["status"], a["table"], a["rows_read"]) == ("refused", table, 0)
    assert a["reason"]
    assert rejected_of(res, f"{table}_with_pii.csv") == []
    assert "Secretvalue" not in everything_as_text(res)
    assert ids(res.episodes) == ["E1"] and ids(res.sessions, "session_id") == ["S1"]
    assert res.pain_scores.height == 0


def test_pain_scores_file_may_lack_session_id_or_recorded_on(write_raw, ingest_csv, run_ingest):
    base_episode_and_session(write_raw, ingest_csv)
    no_session = ["episode_id", "timepoint", "score", "recorded_on"]
    write_raw("pain_scores_a.csv", ingest_csv(
        "pain_scores",
        {"timepoint": "followup", "score": "3", "recorded_on": "2026-02-01"},
        {"timepoint": "followup", "score": "2", "recorded_on": "2026-02-15"},
        {"timepoint": "pre", "score": "7"},                       # pre needs a session_id
        columns=no_session))
    no_recorded = ["episode_id", "session_id", "timepoint", "score"]
    write_raw("pain_scores_b.csv", ingest_csv(
        "pain_scores",
        {"session_id": "S1", "timepoint": "pre", "score": "7"},
        {"session_id": "S1", "timepoint": "post", "score": "5"},
        {"session_id": "", "timepoint": "followup", "score": "4"},  # followup needs recorded_on
        columns=no_recorded))
    write_raw("pain_scores_c.csv", ingest_csv(
        "pain_scores", {"timepoint": "followup", "score": "4"},
        columns=["episode_id", "timepoint", "score"]))
    res = run_ingest(TODAY)

    assert counts(res, "pain_scores_a.csv") == ("ingested", 3, 2, 0, 0, 1)
    assert "session_id" in rejected_at(res, "pain_scores_a.csv", 4)["reasons"]
    assert counts(res, "pain_scores_b.csv") == ("ingested", 3, 2, 0, 0, 1)
    assert "recorded_on" in rejected_at(res, "pain_scores_b.csv", 4)["reasons"]
    assert counts(res, "pain_scores_c.csv") == ("ingested", 1, 0, 0, 0, 1)
    assert "recorded_on" in rejected_at(res, "pain_scores_c.csv", 2)["reasons"]
    followups = res.pain_scores.filter(pl.col("timepoint") == "followup")
    assert followups["session_id"].to_list() == [None, None]
    prepost = res.pain_scores.filter(pl.col("timepoint") != "followup")
    assert prepost["recorded_on"].to_list() == [None, None]


def test_header_only_file_is_ingested_with_zero_rows(write_raw, ingest_csv, run_ingest):
    write_raw("episodes_0.csv", ingest_csv("episodes"))
    write_raw("sessions_0.csv", ingest_csv("sessions").rstrip("\n"))  # no final newline
    write_raw("episodes_1.csv", ingest_csv("episodes", {"episode_id": "E1"}))
    res = run_ingest(TODAY)
    assert counts(res, "episodes_0.csv") == ("ingested", 0, 0, 0, 0, 0)
    assert counts(res, "sessions_0.csv") == ("ingested", 0, 0, 0, 0, 0)
    assert counts(res, "episodes_1.csv") == ("ingested", 1, 1, 0, 0, 0)


@pytest.mark.parametrize("content", [b"", b"\n\n", b"\r\n"], ids=["zero-bytes", "blank-lines", "crlf"])
def test_empty_file_is_refused(write_raw, ingest_csv, run_ingest, content):
    write_raw("episodes_0.csv", content)
    write_raw("episodes_1.csv", ingest_csv("episodes", {"episode_id": "E1"}))
    res = run_ingest(TODAY)
    a = audit_of(res, "episodes_0.csv")
    assert (a["status"], a["table"], a["rows_read"]) == ("refused", "episodes", 0)
    assert a["reason"]
    assert counts(res, "episodes_1.csv") == ("ingested", 1, 1, 0, 0, 0)


def test_broken_quoting_refuses_file(write_raw, ingest_csv, run_ingest):
    text = ingest_csv("episodes", {"episode_id": "E1"})
    text += 'E2,P2,"C1,low_back_pain,2026-01-05,6,45-59,F,chronic\n'  # quote never closed
    write_raw("episodes_0.csv", text)
    write_raw("episodes_1.csv", ingest_csv("episodes", {"episode_id": "E3"}))
    res = run_ingest(TODAY)
    a = audit_of(res, "episodes_0.csv")
    assert (a["status"], a["rows_read"]) == ("refused", 0)
    assert ids(res.episodes) == ["E3"]


def test_extra_columns_are_ignored_reported_and_never_stored(write_raw, ingest_csv, run_ingest):
    extra = {"Referrer Notes": "SECRETNOTE knee also hurts", "insurer": "ACME-INSURE"}
    write_raw("episodes.csv", ingest_csv("episodes", {"episode_id": "E1"},
                                         {"episode_id": "E2", "sex": "Q"}, extra=extra))
    res = run_ingest(TODAY)
    a = audit_of(res, "episodes.csv")
    assert counts(res, "episodes.csv") == ("ingested", 2, 1, 0, 0, 1)
    reason = (a["reason"] or "").lower()
    assert "referrer" in reason and "insurer" in reason, f"extra columns not reported: {a}"
    assert ids(res.episodes) == ["E1"]
    assert not [c for c in res.episodes.columns if "insurer" in c.lower() or "notes" in c.lower()]
    raw = json.loads(rejected_at(res, "episodes.csv", 3)["raw"])
    assert set(raw) <= CONTRACT_COLUMNS["episodes"]
    dumped = everything_as_text(res)
    assert "SECRETNOTE" not in dumped and "ACME-INSURE" not in dumped


def test_column_names_trimmed_lowercased_and_in_any_order(write_raw, run_ingest):
    write_raw("episodes.csv",
              " Chronicity ,SEX,Episode_ID,referral_date ,PATIENT_ID,Clinic_Id,Condition\n"
              "acute,m,E1,2026-01-05,P1,C1,neck_pain\n")
    write_raw("sessions.csv", "Duration_Min,Session_Date,THERAPIST_ID,episode_id,session_id\n"
                              "30,2026-01-06,T1,E1,S1\n")
    res = run_ingest(TODAY)
    assert counts(res, "episodes.csv") == ("ingested", 1, 1, 0, 0, 0)
    ep = res.episodes.to_dicts()[0]
    assert (ep["episode_id"], ep["patient_id"], ep["clinic_id"], ep["condition"], ep["sex"],
            ep["chronicity"], ep["referral_date"]) == \
        ("E1", "P1", "C1", "neck_pain", "M", "acute", date(2026, 1, 5))
    s = res.sessions.to_dicts()[0]
    assert (s["session_id"], s["episode_id"], s["therapist_id"], s["session_date"], s["duration_min"]) == \
        ("S1", "E1", "T1", date(2026, 1, 6), 30)


def test_quoted_comma_and_quote_inside_a_field(write_raw, ingest_csv, run_ingest):
    write_raw("episodes.csv", ingest_csv(
        "episodes", {"episode_id": "E1", "clinic_id": "North, Leeds"},
        {"episode_id": "E2", "clinic_id": 'Clinic "A", South', "condition": "Low back pain"}))
    res = run_ingest(TODAY)
    assert counts(res, "episodes.csv") == ("ingested", 2, 2, 0, 0, 0)
    assert accepted_row(res.episodes, episode_id="E1")["clinic_id"] == "North, Leeds"
    e2 = accepted_row(res.episodes, episode_id="E2")
    assert (e2["clinic_id"], e2["condition"]) == ('Clinic "A", South', "low_back_pain")


def test_row_with_wrong_number_of_fields_is_rejected(write_raw, ingest_csv, run_ingest):
    text = ingest_csv("episodes", {"episode_id": "E1"},
                      ["E2", "P2", "C1", "low_back_pain"],                                  # too few
                      ["E3", "P3", "C1", "low_back_pain", "2026-01-05", "6", "45-59", "F",
                       "chronic", "surplus"],                                               # too many
                      {"episode_id": "E4"})
    write_raw("episodes.csv", text)
    res = run_ingest(TODAY)
    assert counts(res, "episodes.csv") == ("ingested", 4, 2, 0, 0, 2)
    assert rejected_lines(res, "episodes.csv") == [3, 4]
    assert ids(res.episodes) == ["E1", "E4"]
    assert "surplus" not in "".join(res.rejected["raw"].to_list())


def test_blank_lines_are_not_rows(write_raw, ingest_csv, run_ingest):
    lines = ingest_csv("episodes", {"episode_id": "E1"}, {"episode_id": "E2"}).splitlines()
    write_raw("episodes.csv", lines[0] + "\n\n" + lines[1] + "\r\n\r\n\n" + lines[2] + "\n\n\n")
    res = run_ingest(TODAY)
    assert counts(res, "episodes.csv") == ("ingested", 2, 2, 0, 0, 0)


# ------------------------------------------------------------- 2. the row on its own

@pytest.mark.parametrize(("table", "column", "value"), [
    ("episodes", "patient_id", "jane.doe@example.org"),
    ("episodes", "patient_id", "+44 (20) 7946-0958"),
    ("episodes", "patient_id", "123456789"),
    ("episodes", "clinic_id", "0151.496.0000"),
    ("episodes", "episode_id", "ep@1"),
    ("sessions", "therapist_id", "t.smith@clinic.org"),
    ("sessions", "session_id", "(020) 7946 0958"),
    ("sessions", "episode_id", "+1-202-555-0143"),
    ("pain_scores", "session_id", "07700 900123"),
    ("pain_scores", "episode_id", "x@y"),
])
def test_id_that_looks_like_email_or_phone_is_rejected_and_masked(
        write_raw, ingest_csv, run_ingest, table, column, value):
    base_episode_and_session(write_raw, ingest_csv)
    valid = {"episodes": {"episode_id": "E2"}, "sessions": {"session_id": "S2"},
             "pain_scores": {"timepoint": "post"}}[table]
    bad = {"episodes": {"episode_id": "E3"}, "sessions": {"session_id": "S3"},
           "pain_scores": {"timepoint": "pre"}}[table]
    write_raw(f"{table}_new.csv", ingest_csv(table, valid, {**bad, column: value}))
    res = run_ingest(TODAY)

    assert counts(res, f"{table}_new.csv") == ("ingested", 2, 1, 0, 0, 1)
    r = rejected_at(res, f"{table}_new.csv", 3)
    assert column in r["reasons"]
    raw = json.loads(r["raw"])
    assert raw[column] == "***"
    assert value not in everything_as_text(res)


@pytest.mark.parametrize("value", ["12345678", "P-0001-2026", "1234-5678", "E 12.34.56.78.9"])
def test_id_short_of_the_phone_pattern_is_accepted(write_raw, ingest_csv, run_ingest, value):
    write_raw("episodes.csv", ingest_csv("episodes", {"patient_id": value}))
    res = run_ingest(TODAY)
    assert counts(res, "episodes.csv") == ("ingested", 1, 1, 0, 0, 0)
    assert res.episodes["patient_id"].to_list() == [value]


NON_ID_IDENTIFIER_VALUES = [
    ("episodes", "condition", "jane.doe@example.org"),
    ("episodes", "sex", "jane@x.org"),
    ("episodes", "referral_date", "0207 946 0958"),
    ("sessions", "duration_min", "+44 (20) 7946-0958"),
    ("pain_scores", "score", "07700 900123"),
]


@pytest.mark.parametrize(("table", "column", "value"), NON_ID_IDENTIFIER_VALUES)
def test_identifier_looking_value_in_another_column_is_masked_in_raw(
        write_raw, ingest_csv, run_ingest, table, column, value):
    # "with any value that looks like an identifier masked as ***" (CONTRACT.md)
    base_episode_and_session(write_raw, ingest_csv)
    key = {"episodes": {"episode_id": "E2"}, "sessions": {"session_id": "S2"},
           "pain_scores": {"timepoint": "pre"}}[table]
    write_raw(f"{table}_new.csv", ingest_csv(table, {**key, column: value}))
    res = run_ingest(TODAY)
    r = rejected_at(res, f"{table}_new.csv", 2)
    assert column in r["reasons"]
    assert json.loads(r["raw"])[column] == "***"


@pytest.mark.parametrize(("table", "column", "value"), NON_ID_IDENTIFIER_VALUES)
def test_reasons_do_not_echo_identifier_looking_values(
        write_raw, ingest_csv, run_ingest, table, column, value):
    # The masking in raw is pointless if the reason beside it repeats the value; the id
    # columns are already reported without their value.
    base_episode_and_session(write_raw, ingest_csv)
    key = {"episodes": {"episode_id": "E2"}, "sessions": {"session_id": "S2"},
           "pain_scores": {"timepoint": "pre"}}[table]
    write_raw(f"{table}_new.csv", ingest_csv(table, {**key, column: value}))
    res = run_ingest(TODAY)
    assert value not in everything_as_text(res)


def test_scores_out_of_range_or_not_numeric_are_rejected(write_raw, ingest_csv, run_ingest):
    base_episode_and_session(write_raw, ingest_csv)
    values = ["0", "10", "6.5", "6", " 7 ", "3.25",                          # lines 2-7: good
              "11", "-1", "seven", "NaN", "nan", "10.5", "-0.1", "inf", "", "7/10"]  # 8-17: bad
    rows = [{"session_id": "", "timepoint": "followup", "score": v,
             "recorded_on": f"2026-02-{i + 1:02d}"} for i, v in enumerate(values)]
    write_raw("pain_scores.csv", ingest_csv("pain_scores", *rows))
    res = run_ingest(TODAY)

    assert counts(res, "pain_scores.csv") == ("ingested", 16, 6, 0, 0, 10)
    assert rejected_lines(res, "pain_scores.csv") == list(range(8, 18))
    for r in rejected_of(res, "pain_scores.csv"):
        assert "score" in r["reasons"], r
    accepted = dict(zip(res.pain_scores["line"].to_list(), res.pain_scores["score"].to_list()))
    assert accepted == {2: 0.0, 3: 10.0, 4: 6.5, 5: 6.0, 6: 7.0, 7: 3.25}
    assert res.pain_scores["score"].dtype == pl.Float64


@pytest.mark.parametrize("bad_date", ["2026-02-30", "2026-13-01", "26-01-01", "2026/01/05",
                                      "2026-00-10", "05/01/2026", "2026-01-5", "yesterday"])
def test_impossible_or_non_iso_dates_are_rejected(write_raw, ingest_csv, run_ingest, bad_date):
    write_raw("episodes.csv", ingest_csv("episodes", {"episode_id": "E1"},
                                         {"episode_id": "E2", "referral_date": bad_date}))
    write_raw("sessions.csv", ingest_csv("sessions", {"session_id": "S1"},
                                         {"session_id": "S2", "session_date": bad_date}))
    write_raw("pain_scores.csv", ingest_csv(
        "pain_scores",
        {"session_id": "", "timepoint": "followup", "recorded_on": bad_date},
        {"session_id": "S1", "timepoint": "pre", "recorded_on": bad_date},  # optional, but invalid
        {"session_id": "S1", "timepoint": "post"}))
    res = run_ingest(TODAY)

    assert counts(res, "episodes.csv") == ("ingested", 2, 1, 0, 0, 1)
    assert "referral_date" in rejected_at(res, "episodes.csv", 3)["reasons"]
    assert counts(res, "sessions.csv") == ("ingested", 2, 1, 0, 0, 1)
    assert "session_date" in rejected_at(res, "sessions.csv", 3)["reasons"]
    assert counts(res, "pain_scores.csv") == ("ingested", 3, 1, 0, 0, 2)
    assert "recorded_on" in rejected_at(res, "pain_scores.csv", 2)["reasons"]
    assert "recorded_on" in rejected_at(res, "pain_scores.csv", 3)["reasons"]


def test_real_calendar_dates_are_accepted(write_raw, ingest_csv, run_ingest):
    write_raw("episodes.csv", ingest_csv("episodes", {"episode_id": "E1", "referral_date": "2024-02-29"},
                                         {"episode_id": "E2", "referral_date": " 2025-12-31 "}))
    res = run_ingest(TODAY)
    assert counts(res, "episodes.csv") == ("ingested", 2, 2, 0, 0, 0)
    assert res.episodes.sort("episode_id")["referral_date"].to_list() == [date(2024, 2, 29), date(2025, 12, 31)]


def test_dates_after_the_run_date_are_rejected(write_raw, ingest_csv, run_ingest):
    write_raw("episodes.csv", ingest_csv(
        "episodes", {"episode_id": "E1"}, {"episode_id": "E2", "referral_date": "2026-03-02"},
        {"episode_id": "E3", "referral_date": "2026-03-01"}))
    write_raw("sessions.csv", ingest_csv(
        "sessions", {"session_id": "S1", "session_date": "2026-03-01"},
        {"session_id": "S2", "session_date": "2026-03-02"}))
    write_raw("pain_scores.csv", ingest_csv(
        "pain_scores",
        {"session_id": "", "timepoint": "followup", "recorded_on": "2026-03-01"},
        {"session_id": "", "timepoint": "followup", "recorded_on": "2026-03-02"},
        {"session_id": "S1", "timepoint": "pre", "recorded_on": "2026-03-02"}))
    res = run_ingest(TODAY)

    assert counts(res, "episodes.csv") == ("ingested", 3, 2, 0, 0, 1)
    assert "referral_date" in rejected_at(res, "episodes.csv", 3)["reasons"]
    assert counts(res, "sessions.csv") == ("ingested", 2, 1, 0, 0, 1)
    assert "session_date" in rejected_at(res, "sessions.csv", 3)["reasons"]
    assert counts(res, "pain_scores.csv") == ("ingested", 3, 1, 0, 0, 2)
    assert rejected_lines(res, "pain_scores.csv") == [3, 4]
    for r in rejected_of(res, "pain_scores.csv"):
        assert "recorded_on" in r["reasons"]

    later = run_ingest(date(2026, 3, 2))           # the same folder, a day later
    assert later.rejected.height == 0
    assert (later.episodes.height, later.sessions.height, later.pain_scores.height) == (3, 2, 3)


def test_unknown_condition_is_rejected(write_raw, ingest_csv, run_ingest):
    bad = ["frozen shoulder", "back", "low back pain!", "", "   "]
    write_raw("episodes.csv", ingest_csv("episodes", {"episode_id": "E1"},
                                         *({"episode_id": f"X{i}", "condition": c} for i, c in enumerate(bad))))
    res = run_ingest(TODAY)
    assert counts(res, "episodes.csv") == ("ingested", 6, 1, 0, 0, 5)
    for r in rejected_of(res, "episodes.csv"):
        assert "condition" in r["reasons"], r


@pytest.mark.parametrize(("value", "code"), [
    (" Low-Back pain ", "low_back_pain"), ("LBP", "low_back_pain"), ("low_back__pain", "low_back_pain"),
    ("Lower back pain", "low_back_pain"), ("LOW - BACK - PAIN", "low_back_pain"), ("lumbago", "low_back_pain"),
    ("Neck", "neck_pain"), ("oa", "arthritis"), ("Carpal-Tunnel", "carpal_tunnel"),
])
def test_condition_aliases_with_odd_case_and_spacing_are_normalised(
        write_raw, ingest_csv, run_ingest, value, code):
    write_raw("episodes.csv", ingest_csv("episodes", {"condition": value}))
    res = run_ingest(TODAY)
    assert counts(res, "episodes.csv") == ("ingested", 1, 1, 0, 0, 0)
    assert res.episodes["condition"].to_list() == [code]


def test_vocabulary_file_can_be_extended(tmp_path, write_raw, ingest_csv, run_ingest):
    from pipelines.vocabulary import Vocabulary

    vocab = tmp_path / "conditions.csv"
    vocab.write_text("code,alias,label\nlow_back_pain,,Low back pain\n"
                     "low_back_pain,rückenschmerzen,Low back pain\nneck_pain,,Neck pain\n", encoding="utf-8")
    write_raw("episodes.csv", ingest_csv("episodes", {"episode_id": "E1", "condition": "Rückenschmerzen"},
                                         {"episode_id": "E2", "condition": "LBP"}))
    res = run_ingest(TODAY, vocabulary=Vocabulary.load(vocab))
    assert counts(res, "episodes.csv") == ("ingested", 2, 1, 0, 0, 1)
    assert accepted_row(res.episodes, episode_id="E1")["condition"] == "low_back_pain"
    assert "condition" in rejected_at(res, "episodes.csv", 3)["reasons"]


def test_coded_values_are_case_insensitive(write_raw, ingest_csv, run_ingest):
    write_raw("episodes.csv", ingest_csv(
        "episodes",
        {"episode_id": "E1", "sex": "f", "chronicity": "CHRONIC", "age_band": " 75+ "},
        {"episode_id": "E2", "sex": " m ", "chronicity": "Acute", "age_band": "18-29"},
        {"episode_id": "E3", "sex": "x", "chronicity": " subacute ", "age_band": "0-17"},
        {"episode_id": "E4", "sex": "female"},
        {"episode_id": "E5", "chronicity": "long"},
        {"episode_id": "E6", "age_band": "90+"}))
    write_raw("sessions.csv", ingest_csv("sessions", {"session_id": "S1"}))
    write_raw("pain_scores.csv", ingest_csv(
        "pain_scores", {"timepoint": "PRE"}, {"timepoint": " Post "},
        {"session_id": "", "timepoint": "FollowUp", "recorded_on": "2026-02-01"},
        {"timepoint": "during"}))
    res = run_ingest(TODAY)

    assert counts(res, "episodes.csv") == ("ingested", 6, 3, 0, 0, 3)
    got = {r["episode_id"]: (r["sex"], r["chronicity"], r["age_band"]) for r in res.episodes.to_dicts()}
    assert got == {"E1": ("F", "chronic", "75+"), "E2": ("M", "acute", "18-29"), "E3": ("X", "subacute", "0-17")}
    assert "sex" in rejected_at(res, "episodes.csv", 5)["reasons"]
    assert "chronicity" in rejected_at(res, "episodes.csv", 6)["reasons"]
    assert "age_band" in rejected_at(res, "episodes.csv", 7)["reasons"]
    assert counts(res, "pain_scores.csv") == ("ingested", 4, 3, 0, 0, 1)
    assert sorted(res.pain_scores["timepoint"].to_list()) == ["followup", "post", "pre"]
    assert "timepoint" in rejected_at(res, "pain_scores.csv", 5)["reasons"]


def test_ids_are_trimmed_then_case_sensitive(write_raw, ingest_csv, run_ingest):
    write_raw("episodes.csv", ingest_csv("episodes", {"episode_id": " E1 ", "patient_id": " P1"}))
    write_raw("sessions.csv", ingest_csv("sessions", {"session_id": "S1", "episode_id": "E1  "},
                                         {"session_id": "S2", "episode_id": "e1"}))
    res = run_ingest(TODAY)
    assert res.episodes.select("episode_id", "patient_id").rows() == [("E1", "P1")]
    assert counts(res, "sessions.csv") == ("ingested", 2, 1, 0, 0, 1)
    assert res.sessions.select("session_id", "episode_id").rows() == [("S1", "E1")]
    assert "episode_id" in rejected_at(res, "sessions.csv", 3)["reasons"]


def test_integer_columns_take_whole_numbers_in_range(write_raw, ingest_csv, run_ingest):
    good = [("6.0", 6), ("1", 1), ("100", 100), (" 12 ", 12), ("", None)]
    bad = ["6.5", "0", "101", "six", "-3"]
    write_raw("episodes.csv", ingest_csv(
        "episodes", *({"episode_id": f"G{i}", "prescribed_sessions": v} for i, (v, _) in enumerate(good)),
        *({"episode_id": f"B{i}", "prescribed_sessions": v} for i, v in enumerate(bad))))
    good_s = [("10", 10), ("180", 180), ("45.0", 45), ("", None)]
    bad_s = ["5", "181", "9.5", "forty"]
    write_raw("sessions.csv", ingest_csv(
        "sessions", *({"session_id": f"G{i}", "episode_id": "G0", "duration_min": v} for i, (v, _) in enumerate(good_s)),
        *({"session_id": f"B{i}", "episode_id": "G0", "duration_min": v} for i, v in enumerate(bad_s))))
    res = run_ingest(TODAY)

    assert counts(res, "episodes.csv") == ("ingested", 10, 5, 0, 0, 5)
    assert rejected_lines(res, "episodes.csv") == [7, 8, 9, 10, 11]
    for r in rejected_of(res, "episodes.csv"):
        assert "prescribed_sessions" in r["reasons"], r
    got = dict(res.episodes.select("episode_id", "prescribed_sessions").rows())
    assert got == {f"G{i}": want for i, (_, want) in enumerate(good)}
    assert res.episodes["prescribed_sessions"].dtype == pl.Int64

    assert counts(res, "sessions.csv") == ("ingested", 8, 4, 0, 0, 4)
    for r in rejected_of(res, "sessions.csv"):
        assert "duration_min" in r["reasons"], r
    got_s = dict(res.sessions.select("session_id", "duration_min").rows())
    assert got_s == {f"G{i}": want for i, (_, want) in enumerate(good_s)}
    assert res.sessions["duration_min"].dtype == pl.Int64


@pytest.mark.parametrize(("table", "override", "column"), [
    ("episodes", {"patient_id": ""}, "patient_id"),
    ("episodes", {"clinic_id": "   "}, "clinic_id"),
    ("episodes", {"referral_date": ""}, "referral_date"),
    ("sessions", {"therapist_id": ""}, "therapist_id"),
    ("sessions", {"session_date": " "}, "session_date"),
    ("pain_scores", {"timepoint": ""}, "timepoint"),
    ("pain_scores", {"score": ""}, "score"),
])
def test_empty_required_cell_is_rejected(write_raw, ingest_csv, run_ingest, table, override, column):
    base_episode_and_session(write_raw, ingest_csv)
    key = {"episodes": {"episode_id": "E2"}, "sessions": {"session_id": "S2"},
           "pain_scores": {"timepoint": "pre"}}[table]
    write_raw(f"{table}_new.csv", ingest_csv(table, {**key, **override}))
    res = run_ingest(TODAY)
    assert counts(res, f"{table}_new.csv") == ("ingested", 1, 0, 0, 0, 1)
    assert column in rejected_at(res, f"{table}_new.csv", 2)["reasons"]


def test_every_reason_at_the_failing_step_is_reported(write_raw, ingest_csv, run_ingest):
    write_raw("episodes.csv", ingest_csv(
        "episodes", {"episode_id": "E1"},
        {"episode_id": "E2", "prescribed_sessions": "0", "sex": "Q", "referral_date": "2026-02-30"}))
    write_raw("pain_scores.csv", ingest_csv(
        "pain_scores", {"session_id": "", "timepoint": "followup", "score": "12", "recorded_on": ""}))
    res = run_ingest(TODAY)

    reasons = rejected_at(res, "episodes.csv", 3)["reasons"]
    for column in ("prescribed_sessions", "sex", "referral_date"):
        assert column in reasons, reasons
    parts = reasons.split("; ")
    assert len(parts) >= 3, reasons
    for part in parts:
        assert any(part.startswith(c) for c in CONTRACT_COLUMNS["episodes"]), \
            f"each reason starts with its column name: {reasons!r}"
    reasons = rejected_at(res, "pain_scores.csv", 2)["reasons"]
    assert "score" in reasons and "recorded_on" in reasons, reasons


def test_row_failing_its_own_checks_is_not_also_reported_for_references(write_raw, ingest_csv, run_ingest):
    write_raw("episodes.csv", ingest_csv("episodes", {"episode_id": "E1"}))
    write_raw("sessions.csv", ingest_csv(
        "sessions", {"session_id": "S1", "episode_id": "E9", "duration_min": "5"},
        {"session_id": "S2", "episode_id": "E9", "session_date": "2026-02-30"},
        {"session_id": "S3", "episode_id": "E1", "session_date": "2025-12-31", "duration_min": "500"}))
    write_raw("pain_scores.csv", ingest_csv(
        "pain_scores", {"episode_id": "E9", "session_id": "S9", "timepoint": "pre", "score": "11"}))
    res = run_ingest(TODAY)

    assert counts(res, "sessions.csv") == ("ingested", 3, 0, 0, 0, 3)
    r = rejected_at(res, "sessions.csv", 2)["reasons"]
    assert "duration_min" in r and "episode_id" not in r, r
    r = rejected_at(res, "sessions.csv", 3)["reasons"]
    assert "session_date" in r and "episode_id" not in r, r
    r = rejected_at(res, "sessions.csv", 4)["reasons"]   # too long; before referral is step 3
    assert "duration_min" in r and "session_date" not in r, r
    r = rejected_at(res, "pain_scores.csv", 2)["reasons"]
    assert "score" in r and "episode_id" not in r and "session_id" not in r, r


def test_row_failing_its_own_checks_takes_no_part_in_keys(write_raw, ingest_csv, run_ingest):
    write_raw("episodes.csv", ingest_csv("episodes", {"episode_id": "E1"},
                                         {"episode_id": "E1", "sex": "Q"}))
    res = run_ingest(TODAY)
    assert counts(res, "episodes.csv") == ("ingested", 2, 1, 0, 0, 1)
    assert res.episodes.select("episode_id", "line").rows() == [("E1", 2)]
    assert "sex" in rejected_at(res, "episodes.csv", 3)["reasons"]


# ---------------------------------------------------------------- 3. references

def test_session_needs_an_accepted_episode(write_raw, ingest_csv, run_ingest):
    write_raw("episodes.csv", ingest_csv("episodes", {"episode_id": "E1"}, {"episode_id": "E2", "sex": "Q"}))
    write_raw("sessions.csv", ingest_csv("sessions", {"session_id": "S1", "episode_id": "E1"},
                                         {"session_id": "S2", "episode_id": "E2"},
                                         {"session_id": "S3", "episode_id": "E9"}))
    res = run_ingest(TODAY)
    assert counts(res, "sessions.csv") == ("ingested", 3, 1, 0, 0, 2)
    assert ids(res.sessions, "session_id") == ["S1"]
    for line in (3, 4):
        assert "episode_id" in rejected_at(res, "sessions.csv", line)["reasons"]


def test_score_needs_an_accepted_episode_and_session(write_raw, ingest_csv, run_ingest):
    write_raw("episodes.csv", ingest_csv("episodes", {"episode_id": "E1"}, {"episode_id": "E2", "sex": "Q"}))
    write_raw("sessions.csv", ingest_csv("sessions", {"session_id": "S1"},
                                         {"session_id": "S2", "duration_min": "1"}))
    write_raw("pain_scores.csv", ingest_csv(
        "pain_scores",
        {"session_id": "S1", "timepoint": "pre"},                                          # 2 ok
        {"episode_id": "E9", "session_id": "", "timepoint": "followup", "recorded_on": "2026-02-01"},
        {"episode_id": "E2", "session_id": "", "timepoint": "followup", "recorded_on": "2026-02-01"},
        {"session_id": "S9", "timepoint": "pre"},                                          # 5 no such session
        {"session_id": "S2", "timepoint": "pre"}))                                         # 6 session rejected
    res = run_ingest(TODAY)
    assert counts(res, "pain_scores.csv") == ("ingested", 5, 1, 0, 0, 4)
    assert "episode_id" in rejected_at(res, "pain_scores.csv", 3)["reasons"]
    assert "episode_id" in rejected_at(res, "pain_scores.csv", 4)["reasons"]
    assert "session_id" in rejected_at(res, "pain_scores.csv", 5)["reasons"]
    assert "session_id" in rejected_at(res, "pain_scores.csv", 6)["reasons"]


def test_pre_score_pointing_at_another_episodes_session_is_rejected(write_raw, ingest_csv, run_ingest):
    base_episode_and_session(write_raw, ingest_csv, episodes=("E1", "E2"),
                             sessions=(("S1", "E1"), ("S2", "E2")))
    write_raw("pain_scores.csv", ingest_csv(
        "pain_scores", {"episode_id": "E1", "session_id": "S2", "timepoint": "pre"},
        {"episode_id": "E2", "session_id": "S2", "timepoint": "post"}))
    res = run_ingest(TODAY)
    assert counts(res, "pain_scores.csv") == ("ingested", 2, 1, 0, 0, 1)
    reasons = rejected_at(res, "pain_scores.csv", 2)["reasons"]
    assert "session_id" in reasons or "episode_id" in reasons, reasons
    assert res.pain_scores.select("episode_id", "session_id", "timepoint").rows() == [("E2", "S2", "post")]


@pytest.mark.parametrize(("override", "column"), [
    ({"session_id": "S1", "timepoint": "followup", "recorded_on": "2026-02-01"}, "session_id"),
    ({"session_id": "", "timepoint": "pre"}, "session_id"),
    ({"session_id": "", "timepoint": "post", "recorded_on": "2026-01-10"}, "session_id"),
    ({"session_id": "", "timepoint": "followup", "recorded_on": ""}, "recorded_on"),
], ids=["followup-with-session", "pre-without-session", "post-without-session", "followup-without-date"])
def test_timepoint_decides_session_id_and_recorded_on(write_raw, ingest_csv, run_ingest, override, column):
    base_episode_and_session(write_raw, ingest_csv)
    write_raw("pain_scores.csv", ingest_csv(
        "pain_scores", {"session_id": "S1", "timepoint": "pre"}, override,
        {"session_id": "", "timepoint": "followup", "recorded_on": "2026-02-20"}))
    res = run_ingest(TODAY)
    assert counts(res, "pain_scores.csv") == ("ingested", 3, 2, 0, 0, 1)
    assert column in rejected_at(res, "pain_scores.csv", 3)["reasons"]


def test_session_before_its_referral_is_rejected(write_raw, ingest_csv, run_ingest):
    write_raw("episodes.csv", ingest_csv("episodes", {"referral_date": "2026-01-05"}))
    write_raw("sessions.csv", ingest_csv("sessions", {"session_id": "S1", "session_date": "2026-01-04"},
                                         {"session_id": "S2", "session_date": "2026-01-05"}))
    write_raw("pain_scores.csv", ingest_csv("pain_scores", {"session_id": "S1", "timepoint": "pre"},
                                            {"session_id": "S2", "timepoint": "pre"}))
    res = run_ingest(TODAY)
    assert counts(res, "sessions.csv") == ("ingested", 2, 1, 0, 0, 1)
    assert "session_date" in rejected_at(res, "sessions.csv", 2)["reasons"]
    assert ids(res.sessions, "session_id") == ["S2"]
    assert counts(res, "pain_scores.csv") == ("ingested", 2, 1, 0, 0, 1)
    assert "session_id" in rejected_at(res, "pain_scores.csv", 2)["reasons"]


def test_followup_before_referral_is_rejected_pre_recorded_on_is_informative(
        write_raw, ingest_csv, run_ingest):
    base_episode_and_session(write_raw, ingest_csv)          # referral 2026-01-05
    write_raw("pain_scores.csv", ingest_csv(
        "pain_scores",
        {"session_id": "", "timepoint": "followup", "recorded_on": "2026-01-04"},
        {"session_id": "", "timepoint": "followup", "recorded_on": "2026-01-05"},
        {"session_id": "S1", "timepoint": "pre", "recorded_on": "2026-01-01"}))
    res = run_ingest(TODAY)
    assert counts(res, "pain_scores.csv") == ("ingested", 3, 2, 0, 0, 1)
    assert "recorded_on" in rejected_at(res, "pain_scores.csv", 2)["reasons"]
    pre = accepted_row(res.pain_scores, timepoint="pre")
    assert (pre["session_id"], pre["recorded_on"]) == ("S1", date(2026, 1, 1))


def test_tables_are_settled_against_the_accepted_version_of_the_one_before(
        write_raw, ingest_csv, run_ingest):
    write_raw("episodes_2026-01.csv", ingest_csv("episodes", {"referral_date": "2026-01-05"}))
    write_raw("episodes_2026-02.csv", ingest_csv("episodes", {"referral_date": "2026-01-20"}))
    write_raw("sessions.csv", ingest_csv("sessions", {"session_id": "S1", "session_date": "2026-01-10"},
                                         {"session_id": "S2", "session_date": "2026-01-25"}))
    write_raw("pain_scores.csv", ingest_csv(
        "pain_scores", {"session_id": "", "timepoint": "followup", "recorded_on": "2026-01-15"},
        {"session_id": "", "timepoint": "followup", "recorded_on": "2026-02-15"}))
    res = run_ingest(TODAY)
    assert counts(res, "episodes_2026-01.csv") == ("ingested", 1, 0, 0, 1, 0)
    assert res.episodes["referral_date"].to_list() == [date(2026, 1, 20)]
    assert counts(res, "sessions.csv") == ("ingested", 2, 1, 0, 0, 1)
    assert "session_date" in rejected_at(res, "sessions.csv", 2)["reasons"]
    assert counts(res, "pain_scores.csv") == ("ingested", 2, 1, 0, 0, 1)
    assert "recorded_on" in rejected_at(res, "pain_scores.csv", 2)["reasons"]


# ------------------------------------------------------------------- 4. keys

def test_duplicates_and_superseded_rows_across_exports(write_raw, ingest_csv, run_ingest):
    write_raw("episodes_2026-01.csv", ingest_csv(
        "episodes", {"episode_id": "E1"}, {"episode_id": "E2", "clinic_id": "C1"}, {"episode_id": "E3"}))
    write_raw("episodes_2026-02.csv", ingest_csv(
        "episodes", {"episode_id": "E1"}, {"episode_id": "E2", "clinic_id": "C2"}, {"episode_id": "E4"}))
    write_raw("sessions_2026-01.csv", ingest_csv(
        "sessions", {"session_id": "S1"}, {"session_id": "S2", "duration_min": "30"}))
    write_raw("sessions_2026-02.csv", ingest_csv(
        "sessions", {"session_id": "S1"}, {"session_id": "S2", "duration_min": "60"}))
    write_raw("pain_scores_2026-01.csv", ingest_csv(
        "pain_scores", {"timepoint": "pre", "score": "7"}, {"timepoint": "post", "score": "4"}))
    write_raw("pain_scores_2026-02.csv", ingest_csv(
        "pain_scores", {"timepoint": "pre", "score": "6"}, {"timepoint": "post", "score": "4"}))
    res = run_ingest(TODAY)

    assert counts(res, "episodes_2026-01.csv") == ("ingested", 3, 1, 1, 1, 0)
    assert counts(res, "episodes_2026-02.csv") == ("ingested", 3, 3, 0, 0, 0)
    assert ids(res.episodes) == ["E1", "E2", "E3", "E4"]
    assert accepted_row(res.episodes, episode_id="E2")["clinic_id"] == "C2"
    e1 = accepted_row(res.episodes, episode_id="E1")
    assert (e1["source_file"], e1["line"]) == ("episodes_2026-02.csv", 2)
    assert accepted_row(res.episodes, episode_id="E3")["source_file"] == "episodes_2026-01.csv"

    assert counts(res, "sessions_2026-01.csv") == ("ingested", 2, 0, 1, 1, 0)
    assert counts(res, "sessions_2026-02.csv") == ("ingested", 2, 2, 0, 0, 0)
    assert accepted_row(res.sessions, session_id="S2")["duration_min"] == 60

    assert counts(res, "pain_scores_2026-01.csv") == ("ingested", 2, 0, 1, 1, 0)
    assert counts(res, "pain_scores_2026-02.csv") == ("ingested", 2, 2, 0, 0, 0)
    assert accepted_row(res.pain_scores, timepoint="pre")["score"] == 6.0


def test_earlier_versions_are_compared_with_the_accepted_one(write_raw, ingest_csv, run_ingest):
    write_raw("episodes_2026-01.csv", ingest_csv("episodes", {"clinic_id": "C1"}))
    write_raw("episodes_2026-02.csv", ingest_csv("episodes", {"clinic_id": "C2"}))
    write_raw("episodes_2026-03.csv", ingest_csv("episodes", {"clinic_id": "C1"}))
    res = run_ingest(TODAY)
    assert counts(res, "episodes_2026-01.csv") == ("ingested", 1, 0, 1, 0, 0)
    assert counts(res, "episodes_2026-02.csv") == ("ingested", 1, 0, 0, 1, 0)
    assert counts(res, "episodes_2026-03.csv") == ("ingested", 1, 1, 0, 0, 0)
    assert res.episodes["clinic_id"].to_list() == ["C1"]


@pytest.mark.parametrize(("older", "newer"), [
    ("2026-01/episodes_zz.csv", "2026-02/episodes.csv"),   # by path, not by file name
    ("a-b/episodes.csv", "a/episodes.csv"),               # '-' < '/' as plain characters
    ("Episodes_b.csv", "episodes_a.csv"),                 # 'E' < 'e': plain, case-sensitive
    ("a/z/episodes.csv", "b/episodes.csv"),
])
def test_files_are_taken_in_relative_path_string_order(write_raw, ingest_csv, run_ingest, older, newer):
    write_raw(newer, ingest_csv("episodes", {"clinic_id": "NEWER"}))
    write_raw(older, ingest_csv("episodes", {"clinic_id": "OLDER"}))
    res = run_ingest(TODAY)
    assert res.episodes.select("clinic_id", "source_file").rows() == [("NEWER", newer)]
    assert counts(res, older) == ("ingested", 1, 0, 0, 1, 0)
    assert counts(res, newer) == ("ingested", 1, 1, 0, 0, 0)


def test_versions_are_compared_on_normalised_values(write_raw, ingest_csv, run_ingest):
    old_cols = ["episode_id", "patient_id", "clinic_id", "condition", "referral_date",
                "prescribed_sessions", "sex", "chronicity"]                  # no age_band column
    write_raw("episodes_2026-01.csv", ingest_csv(
        "episodes", {"episode_id": " E1", "prescribed_sessions": "7", "condition": "LBP", "sex": "f",
                     "chronicity": "CHRONIC", "clinic_id": " C1 "}, columns=old_cols))
    write_raw("episodes_2026-02.csv", ingest_csv(
        "episodes", {"episode_id": "E1", "prescribed_sessions": "7.0", "condition": "low_back_pain",
                     "sex": "F", "chronicity": "chronic", "clinic_id": "C1", "age_band": ""}))
    write_raw("sessions_2026-01.csv", ingest_csv("sessions", {"duration_min": "45"}))
    write_raw("sessions_2026-02.csv", ingest_csv("sessions", {"duration_min": "45.0"}))
    write_raw("pain_scores_2026-01.csv", ingest_csv(
        "pain_scores", {"timepoint": "PRE", "score": "6"},
        {"session_id": "", "timepoint": "followup", "score": "6.50", "recorded_on": "2026-02-01"}))
    write_raw("pain_scores_2026-02.csv", ingest_csv(
        "pain_scores", {"timepoint": "pre", "score": "6.0"},
        {"session_id": "", "timepoint": "followup", "score": "6.5", "recorded_on": "2026-02-01"}))
    res = run_ingest(TODAY)
    assert counts(res, "episodes_2026-01.csv") == ("ingested", 1, 0, 1, 0, 0)
    assert counts(res, "sessions_2026-01.csv") == ("ingested", 1, 0, 1, 0, 0)
    assert counts(res, "pain_scores_2026-01.csv") == ("ingested", 2, 0, 2, 0, 0)
    assert res.episodes.select("condition", "prescribed_sessions").rows() == [("low_back_pain", 7)]


def test_identical_rows_in_one_file_are_duplicates(write_raw, ingest_csv, run_ingest):
    write_raw("episodes.csv", ingest_csv("episodes", {"episode_id": "E1", "prescribed_sessions": "6"},
                                         {"episode_id": "E2"},
                                         {"episode_id": "E1", "prescribed_sessions": "6.0"},
                                         {"episode_id": "E1", "condition": "LBP"}))
    res = run_ingest(TODAY)
    assert counts(res, "episodes.csv") == ("ingested", 4, 2, 2, 0, 0)
    assert ids(res.episodes) == ["E1", "E2"]


def test_conflict_inside_one_export_rejects_every_such_row_and_older_version_stands(
        write_raw, ingest_csv, run_ingest):
    write_raw("episodes_2026-01.csv", ingest_csv("episodes", {"episode_id": "E1", "clinic_id": "OLD"}))
    write_raw("episodes_2026-02.csv", ingest_csv(
        "episodes",
        {"episode_id": "E1", "clinic_id": "A"},   # 2
        {"episode_id": "E3"},                     # 3
        {"episode_id": "E1", "clinic_id": "B"},   # 4
        {"episode_id": "E2", "clinic_id": "X"},   # 5
        {"episode_id": "E2", "clinic_id": "Y"},   # 6
        {"episode_id": "E2", "clinic_id": "X"}))  # 7
    write_raw("sessions.csv", ingest_csv("sessions", {"session_id": "S1", "episode_id": "E1"},
                                         {"session_id": "S2", "episode_id": "E2"}))
    res = run_ingest(TODAY)

    assert counts(res, "episodes_2026-02.csv") == ("ingested", 6, 1, 0, 0, 5)
    assert rejected_lines(res, "episodes_2026-02.csv") == [2, 4, 5, 6, 7]
    assert counts(res, "episodes_2026-01.csv") == ("ingested", 1, 1, 0, 0, 0)
    assert res.episodes.sort("episode_id").select("episode_id", "clinic_id").rows() == \
        [("E1", "OLD"), ("E3", "C1")]
    assert counts(res, "sessions.csv") == ("ingested", 2, 1, 0, 0, 1)
    assert "episode_id" in rejected_at(res, "sessions.csv", 3)["reasons"]


def test_conflicting_pain_scores_in_one_export(write_raw, ingest_csv, run_ingest):
    base_episode_and_session(write_raw, ingest_csv)
    write_raw("pain_scores.csv", ingest_csv(
        "pain_scores", {"timepoint": "pre", "score": "7"}, {"timepoint": "pre", "score": "8"},
        {"session_id": "", "timepoint": "followup", "score": "3", "recorded_on": "2026-02-01"},
        {"session_id": "", "timepoint": "followup", "score": "4", "recorded_on": "2026-02-01"},
        {"session_id": "", "timepoint": "followup", "score": "4", "recorded_on": "2026-02-02"},
        {"timepoint": "post", "score": "2"}))
    res = run_ingest(TODAY)
    assert counts(res, "pain_scores.csv") == ("ingested", 6, 2, 0, 0, 4)
    assert rejected_lines(res, "pain_scores.csv") == [2, 3, 4, 5]


def test_rows_rejected_by_later_rules_show_their_cells_as_written(write_raw, ingest_csv, run_ingest):
    """Rows that pass rule 2 travel as typed values; a row rejected by the run date, a
    reference or a key conflict still shows its raw cells as the file wrote them."""
    write_raw("episodes.csv", ingest_csv(
        "episodes",
        {"episode_id": "E1"},
        {"episode_id": "E2", "condition": " LBP ", "prescribed_sessions": "+06.0", "sex": "f",
         "chronicity": "Chronic", "age_band": " 75+", "referral_date": "2026-03-02"},    # 3 run date
        {"episode_id": "E3", "condition": "Low-Back pain", "prescribed_sessions": "7"},  # 4 conflict
        {"episode_id": "E3", "condition": "neck", "prescribed_sessions": "7.0"}))        # 5 conflict
    write_raw("sessions.csv", ingest_csv(
        "sessions", {"session_id": "S1"},
        {"session_id": "S2", "episode_id": "E9", "duration_min": "045", "session_date": "2026-01-05"}))
    write_raw("pain_scores.csv", ingest_csv(
        "pain_scores",
        {"session_id": "S9", "timepoint": "PRE", "score": "4.50"},                       # 2
        {"session_id": "S9", "timepoint": "post", "score": "-0"},                        # 3
        {"session_id": "S9", "timepoint": "pre ", "score": "0.125"},                     # 4 (same key as 2)
        {"episode_id": "E9", "session_id": "", "timepoint": "followup", "score": "1e0",
         "recorded_on": "2026-02-01"},                                                   # 5
        {"episode_id": "E9", "session_id": "", "timepoint": "Followup", "score": "10",
         "recorded_on": "2026-02-02"}))                                                  # 6
    res = run_ingest(TODAY)

    def raw(source_file, line):
        return json.loads(rejected_at(res, source_file, line)["raw"])

    assert raw("episodes.csv", 3) == {
        "episode_id": "E2", "patient_id": "P1", "clinic_id": "C1", "condition": "LBP",
        "referral_date": "2026-03-02", "prescribed_sessions": "+06.0", "age_band": "75+", "sex": "f",
        "chronicity": "Chronic"}
    assert raw("episodes.csv", 4)["condition"] == "Low-Back pain"
    assert raw("episodes.csv", 4)["prescribed_sessions"] == "7"
    assert raw("episodes.csv", 5)["condition"] == "neck"
    assert raw("episodes.csv", 5)["prescribed_sessions"] == "7.0"
    assert raw("sessions.csv", 3)["duration_min"] == "045"
    assert raw("sessions.csv", 3)["session_date"] == "2026-01-05"
    assert [(raw("pain_scores.csv", line)["timepoint"], raw("pain_scores.csv", line)["score"])
            for line in range(2, 7)] == [("PRE", "4.50"), ("post", "-0"), ("pre", "0.125"),
                                         ("followup", "1e0"), ("Followup", "10")]
    assert raw("pain_scores.csv", 5)["recorded_on"] == "2026-02-01"
    assert raw("pain_scores.csv", 5)["session_id"] is None


@pytest.mark.parametrize("value", ["0001-01-01", "0999-12-31", "1000-01-01", "1900-02-28", "2000-02-29",
                                   "2024-02-29", "2026-01-05", "9999-12-31"])
def test_a_real_iso_date_prints_back_as_written(value):
    """Rows keep typed dates only; the raw text of a rejected row's date is the date printed
    back, which is exact for every real date in the YYYY-MM-DD form."""
    from pipelines.ingest.spec import EPISODES
    from pipelines.ingest.validate import _typed, raw_text
    from pipelines.vocabulary import Vocabulary

    column = EPISODES.column("referral_date")
    typed = pl.DataFrame({"referral_date": [value]}).select(
        _typed(column, Vocabulary(lookup={}, labels={}, source="")))
    assert typed.select(raw_text(column)).item() == value


def test_keys_are_settled_the_same_when_hashes_collide(write_raw, ingest_csv, run_ingest, monkeypatch):
    """Shared keys are found by hash; a collision must cost time, never change a status."""
    write_raw("episodes_1.csv", ingest_csv("episodes", *({"episode_id": f"E{i}", "clinic_id": f"C{i % 3}"}
                                                         for i in range(8))))
    write_raw("episodes_2.csv", ingest_csv("episodes", *({"episode_id": f"E{i}", "clinic_id": f"C{i % 2}"}
                                                         for i in range(0, 12, 2)),
                                           {"episode_id": "E1", "clinic_id": "C9"}))
    write_raw("pain_scores_1.csv", ingest_csv(
        "pain_scores", {"episode_id": "E0", "session_id": "", "timepoint": "followup", "score": "3",
                        "recorded_on": "2026-02-01"},
        {"episode_id": "E0", "session_id": "", "timepoint": "followup", "score": "4", "recorded_on": "2026-02-02"},
        {"episode_id": "E2", "session_id": "", "timepoint": "followup", "score": "4", "recorded_on": "2026-02-01"}))
    write_raw("pain_scores_2.csv", ingest_csv(
        "pain_scores", {"episode_id": "E0", "session_id": "", "timepoint": "followup", "score": "3.5",
                        "recorded_on": "2026-02-01"}))
    expected = run_ingest(TODAY)
    monkeypatch.setattr(pl.Expr, "hash", lambda self, *args, **kwargs: pl.lit(7, pl.UInt64).repeat_by(
        pl.len()).explode())
    collided = run_ingest(TODAY)
    for name in ("episodes", "pain_scores", "rejected", "audit"):
        assert collided.table(name).equals(expected.table(name)), name


def test_invalid_newest_version_does_not_displace_valid_older_one(write_raw, ingest_csv, run_ingest):
    write_raw("episodes_2026-01.csv", ingest_csv("episodes", {"clinic_id": "OLD"}))
    write_raw("episodes_2026-02.csv", ingest_csv("episodes", {"clinic_id": "NEW", "referral_date": "2026-02-30"}))
    write_raw("sessions_2026-01.csv", ingest_csv("sessions", {"therapist_id": "T-OLD"}))
    write_raw("sessions_2026-02.csv", ingest_csv("sessions", {"therapist_id": "T-NEW", "episode_id": "E9"}))
    write_raw("pain_scores_2026-01.csv", ingest_csv("pain_scores", {"timepoint": "pre", "score": "7"}))
    write_raw("pain_scores_2026-02.csv", ingest_csv("pain_scores", {"timepoint": "pre", "score": "11"}))
    res = run_ingest(TODAY)

    assert counts(res, "episodes_2026-01.csv") == ("ingested", 1, 1, 0, 0, 0)
    assert counts(res, "episodes_2026-02.csv") == ("ingested", 1, 0, 0, 0, 1)
    assert res.episodes["clinic_id"].to_list() == ["OLD"]
    assert counts(res, "sessions_2026-01.csv") == ("ingested", 1, 1, 0, 0, 0)
    assert counts(res, "sessions_2026-02.csv") == ("ingested", 1, 0, 0, 0, 1)  # fails at references
    assert res.sessions["therapist_id"].to_list() == ["T-OLD"]
    assert counts(res, "pain_scores_2026-01.csv") == ("ingested", 1, 1, 0, 0, 0)
    assert res.pain_scores["score"].to_list() == [7.0]


def test_pain_score_keys(write_raw, ingest_csv, run_ingest):
    base_episode_and_session(write_raw, ingest_csv, episodes=("E1", "E2"),
                             sessions=(("S1", "E1"), ("S2", "E2")))
    write_raw("pain_scores_2026-01.csv", ingest_csv(
        "pain_scores",
        {"session_id": "S1", "timepoint": "pre", "score": "7"},
        {"session_id": "S1", "timepoint": "post", "score": "4"},                 # other key: timepoint
        {"session_id": "", "timepoint": "followup", "score": "3", "recorded_on": "2026-02-01"},
        {"session_id": "", "timepoint": "followup", "score": "2", "recorded_on": "2026-02-10"},
        {"episode_id": "E2", "session_id": "", "timepoint": "followup", "score": "3",
         "recorded_on": "2026-02-01"}))
    write_raw("pain_scores_2026-02.csv", ingest_csv(
        "pain_scores",
        {"session_id": "S1", "timepoint": "pre", "score": "7"},                  # duplicate
        {"session_id": "", "timepoint": "followup", "score": "2.5", "recorded_on": "2026-02-01"}))
    res = run_ingest(TODAY)
    assert counts(res, "pain_scores_2026-01.csv") == ("ingested", 5, 3, 1, 1, 0)
    assert counts(res, "pain_scores_2026-02.csv") == ("ingested", 2, 2, 0, 0, 0)
    e1_feb1 = accepted_row(res.pain_scores, episode_id="E1", recorded_on=date(2026, 2, 1))
    assert e1_feb1["score"] == 2.5


# -------------------------------------------------------------- files and formats

def test_files_matched_case_insensitively_in_sub_folders_and_others_ignored(
        write_raw, ingest_csv, run_ingest):
    write_raw("Episodes_2026-01.CSV", ingest_csv("episodes", {"episode_id": "E1"}))
    write_raw("clinic_a/2026/SESSIONS_week1.csv", ingest_csv("sessions", {"session_id": "S1"}))
    write_raw("deep/x/Pain_Scores.Csv", ingest_csv("pain_scores", {"timepoint": "pre"}))
    ignored = ["notes.txt", "patients.csv", "old_episodes.csv", "episodes.csv.bak", "README.md",
               "clinic_a/episodes.xlsx", "clinic_a/sessions_2026.json"]
    write_raw("notes.txt", "call Jane on Tuesday\n")
    write_raw("patients.csv", "patient_id,Patient Name,DOB\nP1,Jane Doe,1970-01-01\n")
    write_raw("old_episodes.csv", ingest_csv("episodes", {"episode_id": "E8"}))
    write_raw("episodes.csv.bak", ingest_csv("episodes", {"episode_id": "E9"}))
    write_raw("README.md", "# exports\n")
    write_raw("clinic_a/episodes.xlsx", b"PK\x03\x04 not really a workbook")
    write_raw("clinic_a/sessions_2026.json", "[]")
    res = run_ingest(TODAY)

    assert audit_of(res, "Episodes_2026-01.CSV")["table"] == "episodes"
    assert audit_of(res, "clinic_a/2026/SESSIONS_week1.csv")["table"] == "sessions"
    assert audit_of(res, "deep/x/Pain_Scores.Csv")["table"] == "pain_scores"
    assert counts(res, "Episodes_2026-01.CSV") == ("ingested", 1, 1, 0, 0, 0)
    assert counts(res, "clinic_a/2026/SESSIONS_week1.csv") == ("ingested", 1, 1, 0, 0, 0)
    assert counts(res, "deep/x/Pain_Scores.Csv") == ("ingested", 1, 1, 0, 0, 0)
    for name in ignored:
        a = audit_of(res, name)
        assert (a["status"], a["table"], a["rows_read"]) == ("ignored", None, 0), a
    assert ids(res.episodes) == ["E1"]
    assert res.sessions["source_file"].to_list() == ["clinic_a/2026/SESSIONS_week1.csv"]
    assert "Jane" not in everything_as_text(res)


def test_parquet_input_and_its_line_is_the_row_number(write_raw, ingest_csv, run_ingest, raw_dir):
    rows = [{**EPISODE_DEFAULTS, **o} for o in (
        {"episode_id": "E1"}, {"episode_id": "E2"}, {"episode_id": "E3", "sex": "Q"},
        {"episode_id": "E4", "prescribed_sessions": "0"}, {"episode_id": "E5", "condition": "LBP"})]
    (raw_dir / "2026").mkdir()
    pl.DataFrame(rows).write_parquet(raw_dir / "2026" / "Episodes_2026-01.PARQUET")
    write_raw("sessions.csv", ingest_csv("sessions", {"episode_id": "E5"}))
    res = run_ingest(TODAY)

    f = "2026/Episodes_2026-01.PARQUET"
    assert counts(res, f) == ("ingested", 5, 3, 0, 0, 2)
    assert audit_of(res, f)["table"] == "episodes"
    assert rejected_lines(res, f) == [3, 4]
    assert "sex" in rejected_at(res, f, 3)["reasons"]
    assert "prescribed_sessions" in rejected_at(res, f, 4)["reasons"]
    assert res.episodes.sort("episode_id").select("episode_id", "line", "condition").rows() == \
        [("E1", 1, "low_back_pain"), ("E2", 2, "low_back_pain"), ("E5", 5, "low_back_pain")]
    assert res.sessions.height == 1


def test_parquet_with_native_types(write_raw, ingest_csv, run_ingest, raw_dir):
    write_raw("episodes_2026-01.csv", ingest_csv("episodes", {"prescribed_sessions": "6"}))
    pl.DataFrame({
        "episode_id": ["E1"], "patient_id": ["P1"], "clinic_id": ["C1"], "condition": ["low_back_pain"],
        "referral_date": [date(2026, 1, 5)], "prescribed_sessions": [6], "age_band": ["45-59"],
        "sex": ["F"], "chronicity": ["chronic"],
    }).write_parquet(raw_dir / "episodes_2026-02.parquet")
    pl.DataFrame({
        "session_id": ["S1", "S2"], "episode_id": ["E1", "E1"], "therapist_id": ["T1", "T1"],
        "session_date": [date(2026, 1, 10), date(2026, 1, 12)],
        "duration_min": pl.Series([45, None], dtype=pl.Int64),
    }).write_parquet(raw_dir / "sessions.parquet")
    pl.DataFrame({
        "episode_id": ["E1", "E1", "E1"], "session_id": ["S1", "S1", None],
        "timepoint": ["pre", "post", "followup"], "score": [7.0, 4.5, 3.0],
        "recorded_on": pl.Series([None, None, date(2026, 2, 1)], dtype=pl.Date),
    }).write_parquet(raw_dir / "pain_scores.parquet")
    res = run_ingest(TODAY)

    assert counts(res, "episodes_2026-01.csv") == ("ingested", 1, 0, 1, 0, 0)
    assert counts(res, "episodes_2026-02.parquet") == ("ingested", 1, 1, 0, 0, 0)
    assert counts(res, "sessions.parquet") == ("ingested", 2, 2, 0, 0, 0)
    assert counts(res, "pain_scores.parquet") == ("ingested", 3, 3, 0, 0, 0)
    assert sorted(res.pain_scores["score"].to_list()) == [3.0, 4.5, 7.0]


def test_unreadable_parquet_is_refused(write_raw, ingest_csv, run_ingest, raw_dir):
    write_raw("episodes_a.parquet", b"PAR1 this is not a parquet file")
    pl.DataFrame({"episode_id": ["E2"], "patient_id": ["P2"]}).write_parquet(raw_dir / "episodes_b.parquet")
    write_raw("episodes_c.csv", ingest_csv("episodes", {}))
    res = run_ingest(TODAY)
    assert counts(res, "episodes_a.parquet") == ("refused", 0, 0, 0, 0, 0)
    a = audit_of(res, "episodes_b.parquet")
    assert a["status"] == "refused" and "clinic_id" in a["reason"]
    assert ids(res.episodes) == ["E1"]


def test_raw_folder_is_left_untouched(write_raw, ingest_csv, run_ingest, raw_dir):
    write_raw("2026-01/episodes.csv", ingest_csv("episodes", {"episode_id": "E1"}, {"episode_id": "E2", "sex": "Q"}))
    write_raw("2026-02/episodes.csv", "\ufeff" + ingest_csv("episodes", {"episode_id": "E1", "clinic_id": "C2"}))
    write_raw("2026-02/sessions.csv", ingest_csv("sessions", {"session_id": "S1"}, {"session_id": "S1"}))
    write_raw("pain_scores.csv", ingest_csv("pain_scores", {"timepoint": "pre"}, extra={"E-mail": "a@b.c"}))
    write_raw("bad/episodes_latin1.csv", ingest_csv("episodes", {"clinic_id": "Zürich"}).encode("latin-1"))
    write_raw("empty/sessions.csv", b"")
    write_raw("notes.txt", "hello\n")
    pl.DataFrame({"episode_id": ["E5"]}).write_parquet(raw_dir / "episodes_x.parquet")
    os.chmod(raw_dir / "notes.txt", 0o444)

    def snapshot():
        out = {}
        for p in sorted(raw_dir.rglob("*")):
            st = p.stat()
            digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            out[p.relative_to(raw_dir).as_posix()] = (digest, st.st_mtime_ns, st.st_mode)
        return out

    before = snapshot()
    run_ingest(TODAY)
    run_ingest(TODAY)
    assert snapshot() == before


def test_empty_raw_folder_gives_empty_tables_with_contract_columns(run_ingest):
    res = run_ingest(TODAY)
    assert res.audit.height == 0 and res.rejected.height == 0
    for df, table in ((res.episodes, "episodes"), (res.sessions, "sessions"), (res.pain_scores, "pain_scores")):
        assert df.height == 0
        assert CONTRACT_COLUMNS[table] | {"source_file", "line"} <= set(df.columns), table
    assert {"source_file", "line", "table", "reasons", "raw"} <= set(res.rejected.columns)
    assert {"source_file", "table", "status", "reason", "rows_read", "accepted", "duplicate",
            "superseded", "rejected"} <= set(res.audit.columns)


def test_accepted_tables_have_contract_types(write_raw, ingest_csv, run_ingest):
    write_raw("sub/episodes.csv", ingest_csv("episodes", {"condition": "Lower back pain", "sex": "m",
                                                          "chronicity": "Subacute"}))
    write_raw("sessions.csv", ingest_csv("sessions", {}))
    write_raw("pain_scores.csv", ingest_csv("pain_scores", {"timepoint": "Pre", "score": "6"},
                                            {"session_id": "", "timepoint": "followup", "score": "3.5",
                                             "recorded_on": "2026-02-20"}))
    res = run_ingest(TODAY)
    ep = res.episodes
    assert ep.schema["referral_date"] == pl.Date and ep.schema["prescribed_sessions"] == pl.Int64
    assert ep.schema["line"] == pl.Int64
    assert ep.select("episode_id", "condition", "sex", "chronicity", "source_file", "line").rows() == \
        [("E1", "low_back_pain", "M", "subacute", "sub/episodes.csv", 2)]
    s = res.sessions
    assert s.schema["session_date"] == pl.Date and s.schema["duration_min"] == pl.Int64
    ps = res.pain_scores.sort("timepoint", descending=True)
    assert ps.schema["score"] == pl.Float64 and ps.schema["recorded_on"] == pl.Date
    assert ps.select("episode_id", "session_id", "timepoint", "score", "recorded_on", "line").rows() == [
        ("E1", "S1", "pre", 6.0, None, 2), ("E1", None, "followup", 3.5, date(2026, 2, 20), 3)]
    assert res.rejected.schema["line"] == pl.Int64


@pytest.mark.skipif(not REALDATA.is_dir(), reason="shared real trial data not present")
def test_real_trial_data_ingests_cleanly(raw_dir, run_ingest):
    for name in ("episodes.csv", "sessions.csv", "pain_scores.csv", "source_long.csv"):
        shutil.copy(REALDATA / name, raw_dir / name)
    res = run_ingest(TODAY)
    assert res.rejected.height == 0
    assert audit_of(res, "source_long.csv")["status"] == "ignored"
    assert (res.episodes.height, res.sessions.height, res.pain_scores.height) == (90, 1260, 264)
    assert set(res.episodes["condition"].to_list()) == {"neck_pain"}

"""Fixtures for the validated-ingest tests (CONTRACT.md, "Input" and "Rows that break a rule").

Everything here is named for ingest so other suites can add their own fixtures beside it:

- ``raw_dir``: an empty raw folder in a temp dir.
- ``write_raw(relpath, content)``: write text (UTF-8) or bytes under ``raw_dir``.
- ``ingest_csv(table, *rows, columns=None, extra=None)``: CSV text for one table; each
  row is a dict laid over a valid default row (``INGEST_DEFAULTS``), or a list of raw
  fields written as is (for wrong field counts).
- ``run_ingest(today=INGEST_TODAY, vocabulary=None)``: ``ingest_folder(raw_dir, ...)``
  followed by ``check_ingest_reconciles``; returns the ``IngestResult``.
- ``check_ingest_reconciles(res, raw_dir, today)``: the invariants every run must keep
  (audit reconciles, rejected rows match the audit, keys unique, references hold).
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from datetime import date
from pathlib import Path

import pytest

INGEST_TODAY = date(2026, 3, 1)

INGEST_COLUMNS: dict[str, list[str]] = {
    "episodes": ["episode_id", "patient_id", "clinic_id", "condition", "referral_date",
                 "prescribed_sessions", "age_band", "sex", "chronicity"],
    "sessions": ["session_id", "episode_id", "therapist_id", "session_date", "duration_min"],
    "pain_scores": ["episode_id", "session_id", "timepoint", "score", "recorded_on"],
}

INGEST_DEFAULTS: dict[str, dict[str, str]] = {
    "episodes": {"episode_id": "E1", "patient_id": "P1", "clinic_id": "C1",
                 "condition": "low_back_pain", "referral_date": "2026-01-05",
                 "prescribed_sessions": "6", "age_band": "45-59", "sex": "F",
                 "chronicity": "chronic"},
    "sessions": {"session_id": "S1", "episode_id": "E1", "therapist_id": "T1",
                 "session_date": "2026-01-10", "duration_min": "45"},
    "pain_scores": {"episode_id": "E1", "session_id": "S1", "timepoint": "pre",
                    "score": "7", "recorded_on": ""},
}

ID_COLUMNS = ("episode_id", "patient_id", "clinic_id", "session_id", "therapist_id")
OUTCOMES = ("accepted", "duplicate", "superseded", "rejected")


def _looks_like_identifier(value: str) -> bool:
    """CONTRACT.md rule 2: contains '@', or only phone characters with >= 9 digits."""
    value = value.strip()
    if "@" in value:
        return True
    return (bool(value) and all(c.isdigit() or c in " +-.()" for c in value)
            and sum(c.isdigit() for c in value) >= 9)


def make_ingest_csv(table: str, *rows, columns: list[str] | None = None,
                    extra: dict[str, str] | None = None) -> str:
    """CSV text (header + rows) for ``table``; see the module docstring."""
    extra = extra or {}
    header = list(columns if columns is not None else INGEST_COLUMNS[table]) + list(extra)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        if isinstance(row, (list, tuple)):
            writer.writerow(row)
            continue
        values = {**INGEST_DEFAULTS[table], **extra, **row}
        writer.writerow([values.get(c, "") for c in header])
    return buf.getvalue()


def check_ingest_reconciles(res, raw_dir: Path, today: date = INGEST_TODAY) -> None:
    """Invariants of CONTRACT.md that hold for every input folder."""
    audit = res.audit.to_dicts()
    found = sorted(p.relative_to(raw_dir).as_posix() for p in raw_dir.rglob("*") if p.is_file())
    assert sorted(a["source_file"] for a in audit) == found, "audit: one row per file found"

    rejected = res.rejected.to_dicts()
    rejected_per_file = Counter(r["source_file"] for r in rejected)
    by_file = {a["source_file"]: a for a in audit}
    tables = {"episodes": res.episodes, "sessions": res.sessions, "pain_scores": res.pain_scores}

    for a in audit:
        counts = [a[k] for k in OUTCOMES]
        assert all(isinstance(c, int) and c >= 0 for c in counts + [a["rows_read"]]), a
        assert a["rows_read"] == sum(counts), f"rows_read != accepted+duplicate+superseded+rejected: {a}"
        assert rejected_per_file.get(a["source_file"], 0) == a["rejected"], \
            f"rejected rows listed for {a['source_file']} differ from the audit: {a}"
        assert a["status"] in ("ingested", "refused", "ignored"), a
        if a["status"] == "ignored":
            assert a["table"] is None, a
        else:
            assert a["table"] in tables, a
        if a["status"] in ("refused", "ignored"):
            assert a["rows_read"] == 0 and sum(counts) == 0, a
        if a["status"] == "refused":
            assert a["reason"], f"a refused file needs its reason: {a}"

    seen_lines: set[tuple[str, int]] = set()
    for r in rejected:
        a = by_file.get(r["source_file"])
        assert a is not None and a["status"] == "ingested", r
        assert r["table"] == a["table"], r
        assert isinstance(r["line"], int) and r["line"] >= 1, r
        assert (r["source_file"], r["line"]) not in seen_lines, f"row rejected twice: {r}"
        seen_lines.add((r["source_file"], r["line"]))
        assert isinstance(r["reasons"], str) and r["reasons"].strip(), r
        raw = json.loads(r["raw"])
        assert isinstance(raw, dict), r
        assert set(raw) <= set(INGEST_COLUMNS[r["table"]]), f"raw holds non-contract columns: {r}"
        for col in ID_COLUMNS:
            value = raw.get(col)
            if isinstance(value, str) and _looks_like_identifier(value):
                raise AssertionError(f"identifier-looking {col} not masked: {r}")

    for name, df in tables.items():
        assert {"source_file", "line"} <= set(df.columns), name
        per_file = Counter(df["source_file"].to_list())
        table_files = {a["source_file"]: a for a in audit if a["table"] == name}
        assert set(per_file) <= set(table_files), f"{name}: accepted rows from unknown files"
        for sf, a in table_files.items():
            assert per_file.get(sf, 0) == a["accepted"], f"{name}: accepted rows of {sf} != audit {a}"
        assert df.height == sum(a["accepted"] for a in table_files.values()), name
        for sf, line in zip(df["source_file"].to_list(), df["line"].to_list()):
            assert (sf, line) not in seen_lines, f"{name}: {sf}:{line} both accepted and rejected"
            seen_lines.add((sf, line))

    episodes, sessions, scores = res.episodes, res.sessions, res.pain_scores
    ep_ids = episodes["episode_id"].to_list()
    assert len(ep_ids) == len(set(ep_ids)), "episode_id not unique among accepted episodes"
    referral = dict(zip(ep_ids, episodes["referral_date"].to_list()))
    for r in episodes.to_dicts():
        assert r["referral_date"] <= today, r
    s_ids = sessions["session_id"].to_list()
    assert len(s_ids) == len(set(s_ids)), "session_id not unique among accepted sessions"
    session_episode = dict(zip(s_ids, sessions["episode_id"].to_list()))
    for s in sessions.to_dicts():
        assert s["episode_id"] in referral, f"accepted session of a non-accepted episode: {s}"
        assert referral[s["episode_id"]] <= s["session_date"] <= today, s
    prepost_keys, followup_keys = [], []
    for p in scores.to_dicts():
        assert p["episode_id"] in referral, f"accepted score of a non-accepted episode: {p}"
        assert 0 <= p["score"] <= 10, p
        if p["timepoint"] in ("pre", "post"):
            assert p["session_id"] in session_episode, f"accepted score of a non-accepted session: {p}"
            assert session_episode[p["session_id"]] == p["episode_id"], f"score/session episode mismatch: {p}"
            prepost_keys.append((p["session_id"], p["timepoint"]))
            assert p["recorded_on"] is None or p["recorded_on"] <= today, p
        else:
            assert p["timepoint"] == "followup", p
            assert p["session_id"] is None and p["recorded_on"] is not None, p
            assert referral[p["episode_id"]] <= p["recorded_on"] <= today, p
            followup_keys.append((p["episode_id"], p["recorded_on"]))
    assert len(prepost_keys) == len(set(prepost_keys)), "(session_id, timepoint) not unique"
    assert len(followup_keys) == len(set(followup_keys)), "(episode_id, recorded_on) not unique"


@pytest.fixture
def raw_dir(tmp_path: Path) -> Path:
    path = tmp_path / "raw"
    path.mkdir()
    return path


@pytest.fixture
def write_raw(raw_dir: Path):
    def write(relpath: str, content: str | bytes) -> Path:
        path = raw_dir / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            content = content.encode("utf-8")
        path.write_bytes(content)
        return path
    return write


@pytest.fixture
def ingest_csv():
    return make_ingest_csv


@pytest.fixture(name="check_ingest_reconciles")
def _check_ingest_reconciles():
    return check_ingest_reconciles


@pytest.fixture
def run_ingest(raw_dir: Path):
    def run(today: date = INGEST_TODAY, vocabulary=None):
        from pipelines.ingest import ingest_folder

        res = ingest_folder(raw_dir, today=today, vocabulary=vocabulary)
        check_ingest_reconciles(res, raw_dir, today)
        return res
    return run

"""Property tests for validated ingest (CONTRACT.md, "Rows that break a rule").

1. Junk of every kind across several files never makes ``ingest_folder`` raise, and every
   row is accounted for (the invariants in ``check_ingest_reconciles``: per file
   rows_read = accepted + duplicate + superseded + rejected, accepted tables match the
   audit, keys unique, every accepted session/score points at accepted rows of the same
   episode). Files written cleanly with a valid header are ingested and every written
   row is read. The same folder gives the same result twice.
2. A consistent, valid data set, however it is spelled (aliases, case, spaces, ``7.0``)
   and however it is split and repeated across exports, loses no row: nothing is
   rejected or superseded, repeats are duplicates.
"""

from __future__ import annotations

import csv
import io
import random
import tempfile
from datetime import date, timedelta
from pathlib import Path

import polars as pl
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

TODAY = date(2026, 3, 1)

COLUMNS = {
    "episodes": ["episode_id", "patient_id", "clinic_id", "condition", "referral_date",
                 "prescribed_sessions", "age_band", "sex", "chronicity"],
    "sessions": ["session_id", "episode_id", "therapist_id", "session_date", "duration_min"],
    "pain_scores": ["episode_id", "session_id", "timepoint", "score", "recorded_on"],
}
REQUIRED = {
    "episodes": ["episode_id", "patient_id", "clinic_id", "condition", "referral_date"],
    "sessions": ["session_id", "episode_id", "therapist_id", "session_date"],
    "pain_scores": ["episode_id", "timepoint", "score"],
}

REFERRAL_DATES = ["2026-01-05", " 2026-01-02 ", "2025-12-20"]
GOOD_DATES = ["2026-01-05", "2026-01-10", "2026-02-01", "2026-02-28", "2026-03-01", " 2026-01-20 "]
BAD_DATES = ["2026-03-02", "2025-12-01", "2026-02-30", "26-01-01", "2026/01/05", ""]
#: column -> (values that pass the row step, values that do not); a cell is drawn from the
#: second list one time in twenty, so that valid-looking rows often reach references and keys.
POOLS = {
    "episode_id": (["E1", "E2", "E3", " E2 "], ["e1", "", "x@y.org", "020 7946 0958"]),
    "session_id": (["S1", "S2", "S3", " S1"], ["", "s2", "+44 (20) 7946-0958"]),
    "patient_id": (["P1", "P2", "P 3"], ["", "jane@example.org", "123456789"]),
    "clinic_id": (["C1", "C2", "North, Leeds", 'Cl"inic', "Zürich"], ["", "  "]),
    "therapist_id": (["T1", "T2"], ["", "t@x"]),
    "condition": (["low_back_pain", "LBP", " Low-Back pain ", "neck_pain", "Neck", "migraine", "OA",
                   "low_back__pain"], ["frozen shoulder", ""]),
    "referral_date": (REFERRAL_DATES, BAD_DATES),
    "session_date": (GOOD_DATES, BAD_DATES),
    "recorded_on": (GOOD_DATES + [""], BAD_DATES[:-1]),
    "prescribed_sessions": (["6", "6.0", "1", "100", "", " 12 "], ["6.5", "0", "101", "x"]),
    "age_band": (["45-59", "75+", "0-17", "", " 18-29 "], ["90+", "18 - 29"]),
    "sex": (["F", "m", "x", "U", ""], ["female", "?"]),
    "chronicity": (["chronic", "ACUTE", "subacute", ""], ["long"]),
    "duration_min": (["45", "45.0", "10", "180", ""], ["5", "181", "9.5"]),
    "timepoint": (["pre", "post", "followup", "PRE", "Followup"], ["during", ""]),
    "score": (["0", "5", "6.5", "10", " 7 ", "7.0"], ["11", "-1", "NaN", "seven", "", "inf"]),
}
#: in pain_scores an empty session_id is right for a followup
PAIN_SESSION_IDS = (["S1", "S2", "S3", "", ""], ["s2", "+44 (20) 7946-0958"])


def rarely(n: int):
    """True about once in ``n`` draws (st.integers(...) == 0 would favour 0 heavily)."""
    return st.sampled_from([False] * (n - 1) + [True])


@st.composite
def cell(draw, table, column):
    """One cell of a valid-looking row; ``rarely`` keeps Hypothesis from favouring the bad list."""
    good, bad = PAIN_SESSION_IDS if (table, column) == ("pain_scores", "session_id") else POOLS[column]
    return draw(st.sampled_from(bad if draw(rarely(20)) else good))


junk_cell = st.one_of(
    st.text(max_size=10),
    st.sampled_from([",", '"', '""', "\n", "\r\n", "é", "𝄞", "\x00", " ", ";", "\ufeff", "NaN"]),
)


@st.composite
def header_for(draw, table):
    cols = [c for c in COLUMNS[table] if c in REQUIRED[table] or draw(st.booleans())]
    if draw(rarely(15)) and cols:                       # sometimes lose a required column
        cols.remove(draw(st.sampled_from(cols)))
    if draw(st.booleans()):
        cols.append("notes")
    if draw(rarely(15)):                                # sometimes a direct identifier
        cols.append(draw(st.sampled_from(["E-mail", "Patient Name", "DOB", "phone"])))
    cols = draw(st.permutations(cols))
    styled = [draw(st.sampled_from([c, c.upper(), f" {c} ", c.title()])) if c in COLUMNS[table] else c
              for c in cols]
    return list(cols), styled


@st.composite
def csv_file(draw, table):
    cols, header = draw(header_for(table))
    kinds = draw(st.lists(st.sampled_from(["valid"] * 6 + ["fields", "line"]), max_size=10))
    rows: list = []
    for kind in kinds:
        if kind == "valid":
            values = {c: draw(cell(table, c)) if c in POOLS else draw(junk_cell) for c in cols}
            if table == "pain_scores" and not draw(rarely(4)):   # mostly a coherent timepoint
                followup = values.get("timepoint", "").strip().lower() == "followup"
                if "session_id" in values:
                    values["session_id"] = "" if followup else draw(st.sampled_from(["S1", "S2", "S3"]))
                if "recorded_on" in values and followup:
                    values["recorded_on"] = draw(st.sampled_from(GOOD_DATES))
            rows.append([values[c] for c in cols])
            if draw(rarely(5)) and rows[-1]:                # a wrong field count
                rows[-1] = rows[-1][:-1] if draw(st.booleans()) else rows[-1] + ["surplus"]
        elif kind == "fields":
            rows.append(draw(st.lists(junk_cell, max_size=12)))
        else:
            rows.append(draw(st.text(max_size=40)))       # a raw line, quoting may break
    return cols, header, rows


def _serialise(header, rows, newline):
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator=newline)
    writer.writerow(header)
    for row in rows:
        if isinstance(row, str):
            buf.write(row + newline)
        else:
            writer.writerow(row)
    return buf.getvalue()


def _clean(header, rows) -> bool:
    """Every row written by a CSV writer, one physical non-blank line each, no control chars."""
    for row in [header, *rows]:
        if isinstance(row, str) or not row:
            return False
        for cell in row:
            if any(ord(ch) < 0x20 or ch in "\x7f\u2028\u2029\x85\ufeff" for ch in cell):
                return False
        if all(not cell.strip() for cell in row) and len(row) == 1:
            return False
    return True


@st.composite
def raw_folder(draw):
    """A list of (relpath, bytes, expectation); expectation None or (table, rows) when the
    file is cleanly written with a valid header and must be read row for row."""
    files = []
    for i in range(draw(st.integers(1, 7))):
        table = draw(st.sampled_from(list(COLUMNS)))
        name = draw(st.sampled_from([f"{table}_{i}", f"{table.upper()}_{i}", f"sub{i % 2}/{table}_{i}",
                                     f"2026-0{i}/{table.title()}"]))
        fmt = draw(st.sampled_from(["csv"] * 8 + ["parquet", "parquet", "ignored", "bytes"]))
        cols, header, rows = draw(csv_file(table))
        header_ok = set(REQUIRED[table]) <= set(cols) and set(cols) <= set(COLUMNS[table]) | {"notes"}
        if fmt == "ignored":
            path = draw(st.sampled_from([f"notes_{i}.txt", f"patients_{i}.csv", f"old_{table}_{i}.csv"]))
            files.append((path, _serialise(header, rows, "\n").encode(), None))
        elif fmt == "bytes":
            files.append((f"{name}.csv", draw(st.binary(max_size=200)), None))
        elif fmt == "parquet":
            width = len(cols)
            data_rows = [r if isinstance(r, list) else [r] for r in rows]
            data_rows = [(r + [""] * width)[:width] for r in data_rows]
            df = pl.DataFrame({c: [r[j] for r in data_rows] for j, c in enumerate(cols)},
                              schema={c: pl.String for c in cols})
            buf = io.BytesIO()
            df.write_parquet(buf)
            files.append((f"{name}.parquet", buf.getvalue(), (table, len(data_rows)) if header_ok else None))
        else:
            newline = draw(st.sampled_from(["\n", "\r\n"]))
            text = _serialise(header, rows, newline)
            encoding = draw(st.sampled_from(["utf-8"] * 6 + ["utf-8-sig"] * 2 + ["latin-1", "cut"]))
            if encoding == "latin-1":
                content = text.encode("latin-1", errors="replace")
            elif encoding == "cut":
                content = text.encode("utf-8")
                content = content[: draw(st.integers(0, len(content)))]
            else:
                content = text.encode(encoding)
            exact = header_ok and encoding in ("utf-8", "utf-8-sig") and _clean(header, rows)
            files.append((f"{name}.{draw(st.sampled_from(['csv', 'CSV']))}", content,
                          (table, len(rows)) if exact else None))
    # relative paths may clash (case-insensitive file systems aside, same name drawn twice)
    unique = {}
    for path, content, expect in files:
        unique[path] = (content, expect)
    return unique


def _frames(res):
    return [res.episodes, res.sessions, res.pain_scores, res.rejected, res.audit]


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(folder=raw_folder())
def test_junk_never_raises_and_every_row_is_accounted_for(folder, check_ingest_reconciles):
    from pipelines.ingest import ingest_folder

    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw"
        for relpath, (content, _) in folder.items():
            path = raw / relpath
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        raw.mkdir(exist_ok=True)

        res = ingest_folder(raw, today=TODAY)
        check_ingest_reconciles(res, raw, TODAY)

        audit = {a["source_file"]: a for a in res.audit.to_dicts()}
        event(f"files read row for row: {sum(e is not None for _, e in folder.values()) > 0}")
        event(f"rows accepted: {res.episodes.height + res.sessions.height + res.pain_scores.height > 0}")
        event(f"sessions or scores accepted: {res.sessions.height + res.pain_scores.height > 0}")
        event(f"rows rejected: {res.rejected.height > 0}")
        event(f"file refused: {any(a['status'] == 'refused' for a in audit.values())}")
        for relpath, (_, expect) in folder.items():
            if expect is None:
                continue
            table, n_rows = expect
            a = audit[relpath]
            assert (a["table"], a["status"]) == (table, "ingested"), a
            assert a["rows_read"] == n_rows, a

        again = ingest_folder(raw, today=TODAY)
        for first, second in zip(_frames(res), _frames(again)):
            key = [c for c in ("source_file", "line") if c in first.columns]
            assert first.sort(key).equals(second.sort(key))


# ----------------------------------------------------------------- valid data sets

CONDITION_SPELLINGS = {
    "low_back_pain": ["low_back_pain", "LBP", " Low-Back pain ", "low_back__pain", "Lumbago"],
    "neck_pain": ["neck_pain", "Neck", "NECK PAIN", "cervicalgia"],
    "arthritis": ["arthritis", "OA", "Osteoarthritis"],
}


def _int_text(data, value):
    if value is None:
        return ""
    return data.draw(st.sampled_from([str(value), f"{value}.0", f" {value} "]))


def _case(data, value):
    if value is None:
        return ""
    return data.draw(st.sampled_from([value, value.upper(), value.lower(), f" {value} "]))


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_valid_data_however_spelled_and_split_is_never_lost(data, check_ingest_reconciles):
    from pipelines.ingest import ingest_folder

    episodes, sessions, scores = [], [], []
    for e in range(data.draw(st.integers(1, 4))):
        referral = date(2025, 12, 1) + timedelta(days=data.draw(st.integers(0, 75)))
        episodes.append(dict(
            episode_id=f"E{e}", patient_id=f"P{e}", clinic_id=data.draw(st.sampled_from(["C1", "C2"])),
            condition=data.draw(st.sampled_from(sorted(CONDITION_SPELLINGS))), referral_date=referral,
            prescribed_sessions=data.draw(st.one_of(st.none(), st.integers(1, 100))),
            age_band=data.draw(st.sampled_from([None, "0-17", "18-29", "30-44", "45-59", "60-74", "75+"])),
            sex=data.draw(st.sampled_from([None, "F", "M", "X", "U"])),
            chronicity=data.draw(st.sampled_from([None, "acute", "subacute", "chronic"]))))
        room = (TODAY - referral).days
        for s in range(data.draw(st.integers(0, 3))):
            sid = f"E{e}-S{s}"
            sessions.append(dict(session_id=sid, episode_id=f"E{e}", therapist_id="T1",
                                 session_date=referral + timedelta(days=data.draw(st.integers(0, room))),
                                 duration_min=data.draw(st.one_of(st.none(), st.integers(10, 180)))))
            for tp in ("pre", "post"):
                if data.draw(st.booleans()):
                    scores.append(dict(episode_id=f"E{e}", session_id=sid, timepoint=tp,
                                       score=data.draw(st.integers(0, 20)) / 2, recorded_on=None))
        for offset in data.draw(st.sets(st.integers(0, room), max_size=2)):
            scores.append(dict(episode_id=f"E{e}", session_id=None, timepoint="followup",
                               score=data.draw(st.integers(0, 10)) * 1.0,
                               recorded_on=referral + timedelta(days=offset)))

    def spell(table, row):
        out = {}
        for col in COLUMNS[table]:
            v = row[col]
            if col == "condition":
                out[col] = data.draw(st.sampled_from(CONDITION_SPELLINGS[v]))
            elif col in ("prescribed_sessions", "duration_min"):
                out[col] = _int_text(data, v)
            elif col in ("sex", "chronicity", "timepoint", "age_band"):
                out[col] = _case(data, v)
            elif col == "score":
                out[col] = data.draw(st.sampled_from([repr(v), f"{v:g}", f" {v:.2f} "]))
            elif v is None:
                out[col] = ""
            else:
                out[col] = data.draw(st.sampled_from([str(v), f" {v} "]))
        return out

    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw"
        raw.mkdir()
        expected = {}
        for table, rows in (("episodes", episodes), ("sessions", sessions), ("pain_scores", scores)):
            copies = list(rows) + [r for r in rows if data.draw(st.integers(0, 3)) == 0]
            n_files = data.draw(st.integers(1, 3))
            seed = data.draw(st.integers(0, 2**16))
            random.Random(seed).shuffle(copies)
            buckets = [[] for _ in range(n_files)]
            for row in copies:
                buckets[data.draw(st.integers(0, n_files - 1))].append(spell(table, row))
            for i, bucket in enumerate(buckets):
                header = data.draw(st.permutations(COLUMNS[table]))
                buf = io.StringIO()
                writer = csv.DictWriter(buf, fieldnames=header, lineterminator="\r\n")
                writer.writeheader()
                writer.writerows(bucket)
                (raw / f"{table}_2026-0{i + 1}.csv").write_text(buf.getvalue(), encoding="utf-8")
            expected[table] = (len(rows), len(copies) - len(rows))

        res = ingest_folder(raw, today=TODAY)
        check_ingest_reconciles(res, raw, TODAY)

        assert res.rejected.height == 0, res.rejected.to_dicts()
        audit = res.audit
        assert set(audit["status"].to_list()) <= {"ingested"}
        for table, (n_distinct, n_repeats) in expected.items():
            t = audit.filter(pl.col("table") == table)
            assert t["accepted"].sum() == n_distinct, (table, t.to_dicts())
            assert t["duplicate"].sum() == n_repeats, (table, t.to_dicts())
            assert t["superseded"].sum() == 0, (table, t.to_dicts())

        got = {r["episode_id"]: r for r in res.episodes.to_dicts()}
        for e in episodes:
            g = got[e["episode_id"]]
            for col in COLUMNS["episodes"]:
                assert g[col] == e[col], (col, g, e)
        got_s = {r["session_id"]: r for r in res.sessions.to_dicts()}
        for s in sessions:
            assert {c: got_s[s["session_id"]][c] for c in COLUMNS["sessions"]} == s
        got_p = sorted((r["episode_id"], r["session_id"] or "", r["timepoint"], r["score"], r["recorded_on"] or date.min)
                       for r in res.pain_scores.to_dicts())
        want_p = sorted((p["episode_id"], p["session_id"] or "", p["timepoint"], p["score"], p["recorded_on"] or date.min)
                        for p in scores)
        assert got_p == want_p

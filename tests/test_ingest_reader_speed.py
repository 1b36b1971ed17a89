"""The reader's two ways of reading a CSV export give the same result.

``read_csv`` reads plain files (no double quote, lines ending in LF or CRLF, every line
with the header's number of fields) with polars (``reader._read_plain``) and everything
else with pyarrow (``reader._read_general``). Each file here is read twice: as it comes,
and with the polars reader switched off; the two results (frame with dtypes and order,
``line``, ragged rows, extra columns, sha256, or the refusal message) must be identical.
The cases also pin which reader took the file, so that a fallback cannot quietly become
the only path, and a file with both a long and a short row (the commas add up) must fall
back through polars' own refusal of a long row.
"""

from __future__ import annotations

import random

import polars as pl
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from pipelines.ingest import reader
from pipelines.ingest.spec import TABLES

HEADER = "session_id,episode_id,therapist_id,session_date,duration_min"
ROW = "S1,E1,T1,2026-01-10,45"


def _read(path, monkeypatch, plain: bool):
    """``read_csv`` of ``path`` (the refusal message if refused), and whether polars read it."""
    used = []
    real = reader._read_plain

    def spy(data, positional):
        frame = real(data, positional) if plain else None
        used.append(frame is not None)
        return frame

    with monkeypatch.context() as m:
        m.setattr(reader, "_read_plain", spy)
        try:
            result = reader.read_csv(path, TABLES["sessions"])
        except reader.RefusedFile as exc:
            return str(exc), None
    return result, any(used)


def _same(tmp_path, monkeypatch, content: bytes) -> bool | None:
    """Read ``content`` both ways, assert the results are identical; True when polars read it,
    False when it fell back (or quotes kept polars from being asked), None when refused."""
    path = tmp_path / "sessions.csv"
    path.write_bytes(content)
    fast, used = _read(path, monkeypatch, plain=True)
    slow, _ = _read(path, monkeypatch, plain=False)
    if isinstance(slow, str):
        assert fast == slow
        return None
    assert not isinstance(fast, str), fast
    assert_frame_equal(fast.frame, slow.frame, check_exact=True)
    assert fast.frame.schema == slow.frame.schema
    assert_frame_equal(fast.ragged, slow.ragged, check_exact=True)
    assert (fast.extra_columns, fast.sha256, fast.blank_lines_are_rows) == \
        (slow.extra_columns, slow.sha256, slow.blank_lines_are_rows)
    return used


POLARS = [
    ("plain", f"{HEADER}\n{ROW}\nS2,E2,T2,2026-01-11,30\n"),
    ("crlf", f"{HEADER}\r\n{ROW}\r\nS2,E2,T2,2026-01-11,30\r\n"),
    ("no final newline", f"{HEADER}\n{ROW}\nS2,E2,T2,2026-01-11,30"),
    ("crlf, no final newline", f"{HEADER}\r\n{ROW}\r\nS2,E2,T2,2026-01-11,30"),
    ("final lone cr becomes crlf", f"{HEADER}\n{ROW}\r"),
    ("header only", f"{HEADER}\n"),
    ("header only, no newline", HEADER),
    ("header only, crlf", f"{HEADER}\r\n"),
    ("empty cells", f"{HEADER}\nS1,,,,\n,,,,\n"),
    ("empty cells, crlf", f"{HEADER}\r\nS1,,,,\r\n,,,,\r\n"),
    ("spaces kept", f" session_id , episode_id,therapist_id,session_date,duration_min\n S1 ,E1 ,  ,\t2026-01-10,45 \n"),
    ("byte order mark", f"\ufeff{HEADER}\n{ROW}\n"),
    ("not ascii", f"{HEADER}\nS1,Zürich-É,T1,2026-01-10,４５\n"),
    ("extra columns", f"notes,{HEADER},more\nx,{ROW},y\n,{ROW},\n"),
    ("columns reordered, optional missing", "therapist_id,session_date,episode_id,session_id\nT1,2026-01-10,E1,S1\n"),
    ("control characters", f"{HEADER}\nS1\x0b,E1\x0c,T1\t,2026-01-10,\x1f45\n"),
    ("unicode line separators", f"{HEADER}\nS1\u2028,E1\u0085,T1,2026-01-10,45\n"),
]

PYARROW = [
    ("blank line", f"{HEADER}\n{ROW}\n\nS2,E2,T2,2026-01-11,30\n"),
    ("blank line after header", f"{HEADER}\n\n{ROW}\n"),
    ("blank last lines", f"{HEADER}\n{ROW}\n\n\n"),
    ("blank crlf lines", f"{HEADER}\r\n{ROW}\r\n\r\n\r\n"),
    ("blank lines mixed", f"{HEADER}\n\n{ROW}\r\n\r\n\n{ROW}\n\n\n"),
    ("lone cr inside a field", f"{HEADER}\nS1\rx,E1,T1,2026-01-10,45\n"),
    ("lone cr line ends", f"{HEADER}\n{ROW}\rS2,E2,T2,2026-01-11,30\r"),
    ("cr cr lf", f"{HEADER}\r\r\n{ROW}\r\r\n"),
    ("too many fields", f"{HEADER}\n{ROW}\nS2,E2,T2,2026-01-11,30,extra\n{ROW}\n"),
    ("too few fields", f"{HEADER}\n{ROW}\nS2,E2,T2\n{ROW}\n"),
    ("trailing delimiter", f"{HEADER}\n{ROW},\n{ROW}\n"),
    ("long and short rows add up", f"{HEADER}\n{ROW},x\nS2,E2,T2,2026-01-11\n"),
    ("first row short, later long", f"{HEADER}\nS2,E2,T2,2026-01-11\n{ROW},x\n"),
    ("one field", f"{HEADER}\nS1\n"),
    ("quoted field", f'{HEADER}\n"S1",E1,T1,2026-01-10,45\n'),
    ("quoted comma and newline", f'{HEADER}\n"S1,a\nb",E1,T1,2026-01-10,45\n{ROW}\n'),
    ("quoted crlf", f'{HEADER}\r\n"S1\r\nb",E1,T1,2026-01-10,45\r\n'),
    ("escaped quotes", f'{HEADER}\n"S""1""",E1,T1,2026-01-10,""\n'),
    ("quote mid field", f'{HEADER}\nS"1",E1,T1,2026-01-10,45\n'),
    ("spaces around quotes", f'{HEADER}\n "S1" ,E1,T1,2026-01-10,45\n'),
    ("text after closing quote", f'{HEADER}\n"S1"x,E1,T1,2026-01-10,45\n'),
    ("quoted header", f'"session_id",episode_id,therapist_id,session_date,duration_min\n{ROW}\n'),
    ("quoted empty cells", f'{HEADER}\nS1,"",T1,2026-01-10,""\n'),
    ("ragged quoted row", f'{HEADER}\n"S1,x",E1\n{ROW}\n'),
]

REFUSED = [
    ("empty", b""),
    ("whitespace only", b" \r\n\n\t"),
    ("byte order mark only", b"\xef\xbb\xbf"),
    ("odd quotes", f'{HEADER}\nS"1,E1,T1,2026-01-10,45\n'.encode()),
    ("latin-1", f"{HEADER}\nS1,Zürich,T1,2026-01-10,45\n".encode("latin-1")),
    ("broken utf-8 after ascii", f"{HEADER}\n{ROW}\n".encode() + b"S2,\xe2\x82,T2,2026-01-11,30\n"),
    ("nul byte", f"{HEADER}\nS1\x00,E1,T1,2026-01-10,45\n".encode()),
    ("required column missing", b"session_id,episode_id\nS1,E1\n"),
    ("identifier column", f"{HEADER},email\n{ROW},a@b.org\n".encode()),
]


@pytest.mark.parametrize("content", [c for _, c in POLARS], ids=[n for n, _ in POLARS])
def test_plain_files_are_read_by_polars_as_pyarrow_reads_them(tmp_path, monkeypatch, content):
    assert _same(tmp_path, monkeypatch, content.encode("utf-8")) is True


@pytest.mark.parametrize("content", [c for _, c in PYARROW], ids=[n for n, _ in PYARROW])
def test_other_files_fall_back_to_pyarrow(tmp_path, monkeypatch, content):
    assert _same(tmp_path, monkeypatch, content.encode("utf-8")) is False


@pytest.mark.parametrize("content", [c for _, c in REFUSED], ids=[n for n, _ in REFUSED])
def test_refusals_are_the_same(tmp_path, monkeypatch, content):
    assert _same(tmp_path, monkeypatch, content) is None


def test_known_reads(tmp_path, monkeypatch):
    """The polars path's result itself, cell for cell (not only equal to pyarrow's)."""
    path = tmp_path / "sessions.csv"
    path.write_bytes(f"notes,{HEADER}\r\nx, S1 ,E1,,2026-01-10,45\r\ny,S2,E2,T2,2026-01-11,".encode())
    read, used = _read(path, monkeypatch, plain=True)
    assert used is True
    assert read.frame.to_dict(as_series=False) == {
        "session_id": [" S1 ", "S2"], "episode_id": ["E1", "E2"], "therapist_id": ["", "T2"],
        "session_date": ["2026-01-10", "2026-01-11"], "duration_min": ["45", ""], "line": [2, 3]}
    assert read.frame.schema == pl.Schema({c: pl.String for c in HEADER.split(",")} | {"line": pl.Int64})
    assert read.extra_columns == ["notes"] and read.ragged.height == 0


def test_big_file_with_one_long_and_one_short_row(tmp_path, monkeypatch):
    """Large enough for polars to parse in several pieces; the commas add up, so only polars'
    refusal of the long row sends the file to pyarrow, which reports both rows."""
    rnd = random.Random(7)
    rows = [f"S{i},E{rnd.randrange(10**6)},T{rnd.randrange(99)},2026-01-{rnd.randrange(10, 29)},"
            f"{rnd.choice(['', '30', ' 45 '])}" for i in range(200_000)]
    rows[150_000] += ",x"
    rows[20] = rows[20].rsplit(",", 1)[0]
    content = (HEADER + "\n" + "\n".join(rows) + "\n").encode()
    assert _same(tmp_path, monkeypatch, content) is False
    read, _ = _read(tmp_path / "sessions.csv", monkeypatch, plain=True)
    assert read.ragged["line"].to_list() == [22, 150_002]
    assert read.frame.height == 199_998 and read.frame["line"][20] == 23
    # the same file without the two bad rows is polars'
    del rows[150_000], rows[20]
    assert _same(tmp_path, monkeypatch, (HEADER + "\r\n" + "\r\n".join(rows)).encode()) is True


# ------------------------------------------------------------------ random text

HEADERS = [HEADER, "episode_id,session_id,therapist_id,session_date", f"x,{HEADER},y",
           "session_id, episode_id ,therapist_id,session_date,duration_min,"]
PLAIN_CELL = st.text(alphabet="aS1 é\t-", max_size=4)
ODD_CELL = st.lists(st.sampled_from(['"', ",", "\n", "\r", "\r\n", "a", " ", '""']), min_size=1,
                    max_size=5).map("".join)
QUOTED_CELL = st.lists(st.sampled_from(["a", ",", "\n", "\r\n", '""', " "]), max_size=5).map(
    lambda parts: '"' + "".join(parts) + '"')


@st.composite
def csv_text(draw) -> bytes:
    """A header and rows, mostly plain; some rows long or short, some cells quoted or odd,
    some blank lines, either line end, a final line end or not."""
    header = draw(st.sampled_from(HEADERS))
    ncols = header.count(",") + 1
    eol = draw(st.sampled_from(["\n", "\r\n"]))
    odd = draw(st.sampled_from([0, 0, 0.05, 0.3]))  # chance of an odd cell or row
    lines = [header]
    for _ in range(draw(st.integers(0, 12))):
        if draw(st.floats(0, 1)) < odd:
            n = draw(st.integers(0, ncols + 2))
        else:
            n = ncols
        cells = []
        for _ in range(n):
            kind = draw(st.floats(0, 1))
            cells.append(draw(ODD_CELL if kind < odd / 2 else QUOTED_CELL if kind < odd else PLAIN_CELL))
        lines.append(",".join(cells))
    text = eol.join(lines) + (eol if draw(st.booleans()) else "")
    if draw(st.floats(0, 1)) < odd:
        text = text.replace(eol, eol + eol, 1) if draw(st.booleans()) else text.replace(eol, "\r", 1)
    return text.encode("utf-8")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=csv_text())
def test_random_text_reads_the_same_either_way(tmp_path, monkeypatch, content):
    used = _same(tmp_path, monkeypatch, content)
    event({True: "polars", False: "pyarrow", None: "refused"}[used])


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(st.lists(PLAIN_CELL, min_size=5, max_size=5), max_size=8),
       eol=st.sampled_from(["\n", "\r\n"]), final=st.booleans())
def test_random_plain_text_is_read_by_polars(tmp_path, monkeypatch, lines, eol, final):
    text = eol.join([HEADER, *(",".join(cells) for cells in lines)]) + (eol if final else "")
    assert _same(tmp_path, monkeypatch, text.encode("utf-8")) is True

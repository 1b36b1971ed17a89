"""Find export files under the raw folder and read each into a frame of strings.

Rule 1 of CONTRACT.md lives here: a file that cannot be read is refused whole, with a
reason a clinic's staff can act on. A readable file becomes a polars frame with one
String column per contract column present (cells as written: trimming, empty cells and
blank lines are rule 2's business, :func:`pipelines.ingest.validate.check_rows`) plus
``line``; rows with the wrong number of fields come back separately, already rejected.

Most exports are plain: no double quote, every line ending in LF or CRLF, and every line
with the header's number of fields. Polars reads those (:func:`_read_plain`) into its own
strings, with about a fifth less CPU than pyarrow's CSV reader followed by the copy into
polars; anything else goes to pyarrow (:func:`_read_general`), which handles quoted fields
with line breaks and hands back the rows with the wrong number of fields.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.csv as pacsv

from pipelines.ingest.spec import TableSpec, is_identifier_column, table_for_filename
from pipelines.vocabulary import normalise

BOM = b"\xef\xbb\xbf"


class RefusedFile(Exception):
    """A whole file refused under rule 1; the message is the reason."""


#: files are read whole; a bigger one is refused before reading (OUTCOMES_MAX_FILE_MB)
MAX_FILE_BYTES = int(float(os.environ.get("OUTCOMES_MAX_FILE_MB", "4096")) * 1024 * 1024)
#: the audit names at most this many extra columns
MAX_LISTED_COLUMNS = 10


def read_stable(path: Path) -> bytes:
    """The file's bytes, refusing anything but a regular file, an oversized file, or a file
    that changed while it was read (an export still being written)."""
    try:
        before = os.stat(path)
    except OSError as exc:
        raise RefusedFile(f"cannot be opened: {exc.strerror or exc}") from None
    if not stat.S_ISREG(before.st_mode):
        raise RefusedFile("not a regular file (a pipe, device or folder named like an export)")
    if before.st_size > MAX_FILE_BYTES:
        raise RefusedFile(f"file is {before.st_size / 2**20:,.0f} MB, above the limit of "
                          f"{MAX_FILE_BYTES / 2**20:,.0f} MB (OUTCOMES_MAX_FILE_MB); split the export")
    data = path.read_bytes()
    after = os.stat(path)
    if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns) or len(data) != after.st_size:
        raise RefusedFile("changed while it was being read (still being written?); it will be read on the next run")
    return data


@dataclass(frozen=True)
class RawFile:
    path: Path
    relpath: str  # posix path relative to the raw folder
    table: str | None  # None: ignored
    refusal: str | None = None  # refused before reading (e.g. a link leaving the folder)


@dataclass
class ReadFile:
    """A readable file: its rows as strings, and the rows that could not be split."""

    frame: pl.DataFrame  # contract columns present (String, as written) + line
    ragged: pl.DataFrame  # line, reasons, raw
    extra_columns: list[str] = field(default_factory=list)
    sha256: str = ""  # of the file's bytes: the input fingerprint and the ingest cache key
    blank_lines_are_rows: bool = False  # Parquet: a row of empty cells is still a row


def discover(raw_dir: Path) -> list[RawFile]:
    """Every file under ``raw_dir``, ordered by relative path compared as plain strings."""
    raw_dir = Path(raw_dir)
    root = raw_dir.resolve()
    found: list[RawFile] = []
    for dirpath, dirnames, filenames in os.walk(raw_dir, followlinks=False):
        dirnames.sort()
        for name in filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(raw_dir).as_posix()
            table = table_for_filename(name)
            refusal = None
            if path.is_symlink():
                target = path.resolve()
                if not target.is_relative_to(root):
                    refusal = "symbolic link pointing outside the raw folder; copy the file in instead"
                elif not target.is_file():
                    refusal = "symbolic link to something that is not a file"
            found.append(RawFile(path, rel, table, refusal if table else None))
    found.sort(key=lambda f: f.relpath)
    return found


def _normalise_header(raw_names: list[str], spec: TableSpec) -> tuple[list[str], list[str]]:
    """Match column names; refuse identifiers, duplicates and missing required columns.

    Returns the matched name per position (None-like "" for extras) and the extras.
    """
    matched: list[str] = []
    extras: list[str] = []
    seen: dict[str, int] = {}
    identifiers = [n for n in raw_names if is_identifier_column(normalise(n))]
    if identifiers:
        shown = ", ".join(repr(n.strip()[:60]) for n in identifiers[:MAX_LISTED_COLUMNS])
        if len(identifiers) > MAX_LISTED_COLUMNS:
            shown += f" and {len(identifiers) - MAX_LISTED_COLUMNS} more"
        raise RefusedFile(
            f"column {shown} names a direct identifier; remove it from the export "
            "(the pipeline must not receive names, contact details, dates of birth or record numbers)")
    for position, raw in enumerate(raw_names):
        name = raw.strip().lower()
        if name in seen and name:
            raise RefusedFile(f"column '{name}' appears twice (columns {seen[name] + 1} and {position + 1})")
        seen[name] = position
        if name in spec.names:
            matched.append(name)
        else:
            matched.append("")
            if len(extras) < MAX_LISTED_COLUMNS:
                extras.append(raw.strip()[:60] or f"(unnamed column {position + 1})")
            elif len(extras) == MAX_LISTED_COLUMNS:
                extras.append(f"and {len(raw_names) - position} more")
    missing = [c for c in spec.required_in_file if c not in matched]
    if missing:
        header = ", ".join(n.strip()[:60] for n in raw_names[:MAX_LISTED_COLUMNS])
        if len(raw_names) > MAX_LISTED_COLUMNS:
            header += f", ... ({len(raw_names)} columns)"
        raise RefusedFile(f"required column(s) missing: {', '.join(missing)} (header has: {header})")
    return matched, extras


def _check_utf8(data: bytes) -> None:
    if data.isascii():  # (a tenth of the cost of decoding)
        return
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise RefusedFile(
            f"not UTF-8: byte 0x{data[exc.start]:02X} on line {line} cannot be decoded; "
            "re-export the file as UTF-8") from None


def _header(data: bytes) -> list[str]:
    first = data.split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8")
    try:
        return next(csv.reader([first]))
    except (StopIteration, csv.Error) as exc:
        raise RefusedFile(f"header row cannot be read: {exc}") from None


def read_csv(path: Path, spec: TableSpec) -> ReadFile:
    data = read_stable(path)
    digest = hashlib.sha256(data).hexdigest()
    if data.startswith(BOM):
        data = data[len(BOM):]
    if not data or data.isspace():  # (without copying the file, as strip() would)
        raise RefusedFile("file is empty (no header row)")
    _check_utf8(data)
    if b"\x00" in data:
        raise RefusedFile("contains NUL bytes: a binary or damaged file, not a CSV export")
    quoted = b'"' in data  # (a search stops at the first; counting reads the whole file)
    if quoted and data.count(b'"') % 2:
        raise RefusedFile("broken quoting: a double quote is never closed; check quoted fields")
    raw_names = _header(data)
    matched, extras = _normalise_header(raw_names, spec)
    if not data.endswith(b"\n"):
        data += b"\n"
    ncols = len(raw_names)
    positional = [f"c{i}" for i in range(ncols)]
    plain = None if quoted else _read_plain(data, positional)
    if plain is not None:
        frame, bad = plain, []
    else:
        frame, bad = _read_general(data, positional, matched)
    frame = frame.select([p for p, m in zip(positional, matched) if m])
    frame = frame.rename({p: m for p, m in zip(positional, matched) if m})
    # line numbers: records are numbered from 2 (header = 1); rows pyarrow skipped keep theirs
    # (its numbers count the header as record 1 when skip_rows is used: row.number is the
    # 1-based record number in the file).
    total = frame.height + len(bad)
    lines = np.arange(2, total + 2, dtype=np.int64)
    if bad:
        lines = np.setdiff1d(lines, np.array([b[0] for b in bad], dtype=np.int64))
    frame = frame.with_columns(pl.Series("line", lines, dtype=pl.Int64))
    ragged = _ragged_rows(bad, spec.names, matched, ncols)
    return ReadFile(frame=frame, ragged=ragged, extra_columns=extras, sha256=digest)


def _read_plain(data: bytes, positional: list[str]) -> pl.DataFrame | None:
    """The records of ``data`` (header line first, ending in LF, no double quote) read by
    polars, or None unless that is sure to be what :func:`_read_general` reads with no
    ragged row.

    Without quotes a record is a line and its fields are cut at every comma, in both
    readers, once every CR is the start of a CRLF (pyarrow also ends a line at a lone CR,
    polars does not). Polars refuses a line with more fields than ``positional``
    (``truncate_ragged_lines=False``); when none has more and the commas add up to the
    header's count on every line, none has fewer either: no short row (which polars would
    pad), and no blank line (a short row when there are two columns or more).
    """
    if len(positional) < 2:
        return None
    text = np.frombuffer(data, dtype=np.uint8)
    ends = np.count_nonzero(text == ord("\n"))
    if np.count_nonzero(text == ord(",")) != ends * (len(positional) - 1):
        return None
    if b"\r" in data:
        returns = np.flatnonzero(text == ord("\r"))
        if (text[returns + 1] != ord("\n")).any():  # (data ends in LF: returns + 1 is inside)
            return None
    try:
        frame = pl.read_csv(data, has_header=False, skip_lines=1, schema=dict.fromkeys(positional, pl.String),
                            quote_char=None, empty_string_is_null=False, truncate_ragged_lines=False,
                            raise_if_empty=False)
    except pl.exceptions.PolarsError:
        return None
    return frame if frame.height == ends - 1 else None  # (a guard: one row per line after the header)


def _read_general(data: bytes, positional: list[str],
                  matched: list[str]) -> tuple[pl.DataFrame, list[tuple[int, int, str]]]:
    """Any CSV (pyarrow): the rows with the header's number of fields (columns ``positional``
    of ``matched`` columns) and the others as (record number, fields, text)."""
    bad: list[tuple[int, int, str]] = []

    def on_invalid(row: pacsv.InvalidRow) -> str:
        bad.append((row.number, row.actual_columns, row.text))
        return "skip"

    try:
        table = pacsv.read_csv(
            pa.py_buffer(data),
            read_options=pacsv.ReadOptions(use_threads=False, skip_rows=1, column_names=positional,
                                           block_size=1 << 26),
            parse_options=pacsv.ParseOptions(newlines_in_values=True, ignore_empty_lines=False,
                                             invalid_row_handler=on_invalid),
            convert_options=pacsv.ConvertOptions(
                column_types={c: pa.string() for c in positional},
                include_columns=[p for p, m in zip(positional, matched) if m],
                strings_can_be_null=False, quoted_strings_can_be_null=False,
                # the whole file is valid UTF-8 (checked above), and fields are cut at ASCII
                # bytes only, so every field is too
                check_utf8=False),
        )
    except (pa.ArrowInvalid, pa.ArrowException) as exc:
        raise RefusedFile(f"cannot be parsed as CSV: {exc}") from None
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    return frame, bad


def _ragged_rows(bad: list[tuple[int, int, str]], names: list[str], matched: list[str],
                 ncols: int) -> pl.DataFrame:
    """Rows with the wrong number of fields: rejected here, with their fields mapped by position."""
    from pipelines.ingest.privacy import mask_value

    lines, reasons, raws = [], [], []
    for number, actual, text in bad:
        try:
            fields = next(csv.reader(io.StringIO(text)))
        except (StopIteration, csv.Error):
            fields = []
        by_name = {m: (fields[i].strip() or None) for i, m in enumerate(matched) if m and i < len(fields)}
        raw = {name: mask_value(by_name.get(name)) for name in names}
        lines.append(number)
        reasons.append(f"row: has {actual} fields, the header has {ncols}")
        raws.append(json.dumps(raw, ensure_ascii=False, separators=(",", ":")))
    return pl.DataFrame({"line": lines, "reasons": reasons, "raw": raws},
                        schema={"line": pl.Int64, "reasons": pl.String, "raw": pl.String})


def read_parquet(path: Path, spec: TableSpec) -> ReadFile:
    data = read_stable(path)
    try:
        frame = pl.read_parquet(io.BytesIO(data))
    except Exception as exc:  # noqa: BLE001 - any unreadable file is refused with its reason
        raise RefusedFile(f"cannot be read as Parquet: {exc}") from None
    raw_names = frame.columns
    matched, extras = _normalise_header(raw_names, spec)
    keep = {raw: m for raw, m in zip(raw_names, matched) if m}
    frame = frame.select([pl.col(raw).cast(pl.String).alias(m) for raw, m in keep.items()])
    frame = frame.with_columns(pl.int_range(1, frame.height + 1, dtype=pl.Int64).alias("line"))
    # an all-empty Parquet row is still a row (unlike a blank CSV line): it is rejected
    # for its missing cells.
    empty = pl.DataFrame(schema={"line": pl.Int64, "reasons": pl.String, "raw": pl.String})
    return ReadFile(frame=frame, ragged=empty, extra_columns=extras, sha256=hashlib.sha256(data).hexdigest(),
                    blank_lines_are_rows=True)


def read_file(raw: RawFile, spec: TableSpec) -> ReadFile:
    if raw.refusal:
        raise RefusedFile(raw.refusal)
    if raw.relpath.lower().endswith(".parquet"):
        return read_parquet(raw.path, spec)
    return read_csv(raw.path, spec)

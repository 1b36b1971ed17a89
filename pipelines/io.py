"""Atomic file output: write beside the target, then rename, so readers never see half a file.

A temporary file (or folder) is named ``.<target name>.<pid>.<random>.tmp`` in the target's
folder. The process id lets a later run tell the leftovers of a killed writer (its process
is gone) from a file another live process is writing right now: see
:func:`remove_stale_temp_files`, which ``run_pipeline`` calls under the run lock.

Large tables that a weekly run mostly keeps as they were (the accepted input rows) are
stored as a folder of Parquet parts (:func:`write_parts`): a new version links the leading
parts of the last one whose rows are unchanged and writes only the rest. Polars, pyarrow,
pandas and DuckDB read such a folder as one table, in the parts' name order.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import polars as pl

#: ``.<name>.<pid>.<8 random characters>.tmp`` (tempfile.mkstemp's random part)
TEMP_FILE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.(?P<rand>[A-Za-z0-9_]{8})\.tmp$")


def fsync_dir(folder: str | Path) -> None:
    """Make a rename in ``folder`` durable (best effort: some file systems refuse)."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_unsynced(target: Path, chunks: list[bytes]) -> None:
    """Write ``chunks`` beside the target, then rename it over the target; not fsync'ed.

    For derived files whose readers check them (a length and checksum) and can do without
    them: one a crash left torn reads as a miss. An fsync costs more than the write when
    gigabytes written before it are still in the page cache.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.writelines(chunks)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


@contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success rename it over the target.

    The data are fsync'ed before the rename and the folder after it, so after a crash the
    target holds either its previous content or the new content, never part of either.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; outputs are ordinary files
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, target)
        fsync_dir(target.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def exchange_paths(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported,
    an OSError for any other failure (then a two-rename fallback must not run)."""
    try:
        renameat2 = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), 2) == 0:  # 2: RENAME_EXCHANGE
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(a))


def replace_with_folder(folder: Path, target: Path) -> None:
    """Put a complete ``folder`` at ``target`` (a folder, a file or nothing), atomically where
    the system can swap two paths; ``folder`` is gone afterwards.

    Elsewhere the old target is first renamed to ``.<name>.old.<pid>``: a run killed between
    the two renames leaves it there, and :func:`restore_replaced` puts it back."""
    if not target.exists() and not target.is_symlink():
        os.rename(folder, target)
    elif exchange_paths(folder, target):
        _remove(folder)  # it now holds the old target
    else:
        old = target.with_name(f".{target.name}.old.{os.getpid()}")
        os.rename(target, old)
        os.rename(folder, target)
        _remove(old)
    fsync_dir(target.parent)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


#: ``.<name>.old.<pid>``: the old target of an interrupted :func:`replace_with_folder` fallback
REPLACED = re.compile(r"^\.(?P<name>.+)\.old\.(?P<pid>\d+)$")


def restore_replaced(folder: str | Path) -> list[str]:
    """After a writer killed in :func:`replace_with_folder`'s fallback: put the old target back
    when the new one never arrived, else remove it. Only for writers that no longer run."""
    folder = Path(folder)
    done: list[str] = []
    if not folder.is_dir():
        return done
    for entry in folder.iterdir():
        match = REPLACED.match(entry.name)
        if not match or not owner_gone(int(match["pid"])):
            continue
        target = folder / match["name"]
        if target.exists():
            _remove(entry)
            done.append(f"removed {entry}")
        else:
            os.rename(entry, target)
            done.append(f"restored {target} from {entry.name}")
    return done


def owner_gone(pid: int) -> bool:
    """True if the process that made a pid-tagged leftover no longer runs (or is this one)."""
    from pipelines.locking import pid_alive

    return pid == os.getpid() or not pid_alive(pid)


def remove_stale_temp_files(folder: str | Path, recursive: bool = True) -> list[Path]:
    """Delete the temporary files (and part folders) of writers that no longer run (killed
    mid-write).

    Only names of the :data:`TEMP_FILE` form are touched, and only when their process is
    gone (or is this process, whose own writes are not under way when this is called);
    a file another live process is writing stays. Returns what was removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed: list[Path] = []
    walker = os.walk(folder) if recursive else [(str(folder), [], os.listdir(folder))]
    for dirpath, dirnames, filenames in walker:
        for name in [*filenames, *dirnames]:
            match = TEMP_FILE.match(name)
            if not match or not owner_gone(int(match["pid"])):
                continue
            path = Path(dirpath) / name
            if name in dirnames:
                dirnames.remove(name)
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
                continue
            try:
                path.unlink()
                removed.append(path)
            except FileNotFoundError:
                pass
    return removed


#: a location with a scheme (``s3://bucket/prefix``, ``gs://``, ``az://``): object storage,
#: which polars reads and writes itself, credentials and endpoint from the environment
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(location: str | Path) -> bool:
    """True for an object-storage URL, False for a local path (a ``Path`` is always local)."""
    return isinstance(location, str) and _URL.match(location) is not None


def locate(base: str | Path, name: str) -> str | Path:
    """``name`` inside the folder ``base``: a ``Path``, or a URL when ``base`` is one (``Path``
    would fold ``s3://`` into ``s3:/``)."""
    if is_url(base):
        return f"{str(base).rstrip('/')}/{name}"
    return Path(base) / name


#: zstd level of the Parquet tables: level 1 writes the accepted and outcome tables of a
#: million episodes with 15-35% less CPU than polars' default level (about 4 CPU-s in a full
#: run) and files at most 8% larger
PARQUET_ZSTD_LEVEL = 1


def write_table(frame: pl.DataFrame, target: str | Path, metadata: dict[str, str] | None = None) -> str | Path:
    """Write a frame as Parquet or CSV (by suffix), atomically. ``metadata``: key-value pairs
    stored in a Parquet file's footer (ignored for CSV).

    On object storage (:func:`is_url`) the table is one object written by one request (or
    one multipart upload), which readers see whole or not at all, as after a rename."""
    csv = str(target).endswith(".csv")

    def write(where: str | Path) -> None:
        if csv:
            frame.write_csv(where)
        else:
            frame.write_parquet(where, compression="zstd", compression_level=PARQUET_ZSTD_LEVEL,
                                metadata=metadata or None)

    if is_url(target):
        write(target)
        return target
    target = Path(target)
    with atomic_path(target) as tmp:
        write(tmp)
    return target


#: footer key of a part of a table stored as a folder of parts (:func:`write_parts`)
PART_KEY = "outcomes-part"
PART_FORMAT = 1
#: rows per part: at a million episodes a weekly run rewrites one or two parts of each table
PART_ROWS = 1 << 19
_PART_SEEDS = (0x5EED_0001, 0x7A11_0002)


def part_name(index: int) -> str:
    return f"part-{index:06d}.parquet"


def rows_digest(frame: pl.DataFrame) -> str:
    """128 bits that change with any value, null, type or order of ``frame``'s rows: two
    wrapping sums of polars row hashes, each row hashed with its position."""
    flags = [(1.0 / pl.col(c) < 0).alias(f"_negative_{c}")  # polars hashes -0.0 as 0.0
             for c, dtype in frame.schema.items() if dtype.is_float()]
    rows = frame.with_row_index("_position").with_columns(flags)
    sums = [int(rows.hash_rows(seed=seed).sum()) for seed in _PART_SEEDS]
    return "".join(f"{value:016x}" for value in sums)


def _schema_text(frame: pl.DataFrame) -> str:
    return json.dumps([[name, str(dtype)] for name, dtype in frame.schema.items()])


def stored_parts(folder: Path) -> list[tuple[Path, dict]]:
    """The parts of a table folder in order with their footer records; [] when ``folder`` is
    not such a folder (absent, a single file, or a part without its record)."""
    if not folder.is_dir():
        return []
    parts = []
    for path in sorted(folder.iterdir()):
        if not path.name.endswith(".parquet"):
            return []
        try:
            record = json.loads(pl.read_parquet_metadata(path)[PART_KEY])
        except (OSError, KeyError, ValueError, pl.exceptions.PolarsError):
            return []
        parts.append((path, record))
    return parts


def part_digests(frame: pl.DataFrame, part_rows: int | None = None, base: dict | None = None,
                 unchanged: int = 0) -> dict:
    """The :func:`rows_digest` of each part :func:`write_parts` cuts ``frame`` into, as
    ``{"part_rows": part_rows, "format": ..., "polars": ..., "parts": [[rows, digest], ...]}``,
    for ``write_parts(..., known=...)``. ``base``: the same for an earlier frame whose first
    ``unchanged`` rows are ``frame``'s first rows: its records of the full parts within them
    are taken, not computed again (a weekly ingest keeps most of its accepted rows as they
    were), when it was made the same way (part size, part format, polars version)."""
    part_rows = part_rows or PART_ROWS
    made = {"part_rows": part_rows, "format": PART_FORMAT, "polars": pl.__version__}
    records: list[list] = []
    offset = 0
    if _known_digests(base, None, part_rows) is not None:
        for rows, digest in base["parts"]:
            if rows != part_rows or offset + rows > min(unchanged, frame.height):
                break
            records.append([rows, digest])
            offset += rows
    for start in range(offset, frame.height, part_rows) if frame.height or records else [0]:
        chunk = frame.slice(start, part_rows)
        records.append([chunk.height, rows_digest(chunk)])
    return {**made, "parts": records}


def _known_digests(known: dict | None, height: int | None, part_rows: int) -> list | None:
    """``known``'s records (:func:`part_digests`) when they describe parts of ``part_rows``
    rows of this part format and polars version, adding up to ``height`` (any height when
    None), else None."""
    if not isinstance(known, dict) or known.get("part_rows") != part_rows or known.get("format") != PART_FORMAT \
            or known.get("polars") != pl.__version__:
        return None
    parts = known.get("parts")
    if not isinstance(parts, list) or not parts or not all(
            isinstance(r, (list, tuple)) and len(r) == 2 and isinstance(r[0], int) and isinstance(r[1], str)
            for r in parts):
        return None
    rows = [r[0] for r in parts]
    if (height is not None and sum(rows) != height) or any(n != part_rows for n in rows[:-1]) \
            or not 0 <= rows[-1] <= part_rows:
        return None
    return [list(r) for r in parts]


def write_parts(frame: pl.DataFrame, target: str | Path, previous: str | Path | None = None,
                part_rows: int | None = None, known: dict | None = None) -> dict[str, int]:
    """Store ``frame`` as a folder of Parquet parts at ``target``, atomically.

    The leading parts of the table folder ``previous`` (default: ``target`` itself) whose
    rows equal the frame's rows at the same place (same :func:`rows_digest`, schema and
    polars version) are hard-linked into the new folder (copied where links fail), as long
    as they are full parts or end where the frame ends; the rest of the frame is written
    in parts of ``part_rows`` rows. A table that only gained
    rows at its end, or changed near it, costs the writing of those rows only.
    Returns the numbers of parts reused and written and of rows written.

    ``known``: the frame's part digests as :func:`part_digests` gives them, which the
    caller has already (ingest carries them over for the rows a weekly run keeps): then no
    row is hashed here; else every part is hashed once. Ignored unless they describe parts
    of ``part_rows`` rows adding up to the frame's height.
    """
    target = Path(target)
    previous = Path(previous) if previous is not None else target
    part_rows = part_rows or PART_ROWS
    schema = _schema_text(frame)
    # every part is either compared or written, so each one's digest is needed once
    digests = _known_digests(known, frame.height, part_rows) or part_digests(frame, part_rows)["parts"]
    reuse: list[Path] = []
    offset = 0
    for path, record in stored_parts(previous):
        rows = record.get("rows", -1)
        # a short part is reused only as the last one: else it takes the rows after it, so
        # that weekly additions do not leave a trail of small parts
        if (record.get("format") != PART_FORMAT or record.get("schema") != schema
                or record.get("polars") != pl.__version__ or not 0 < rows <= frame.height - offset
                or (rows != part_rows and offset + rows != frame.height)
                or [rows, record.get("digest")] != digests[len(reuse)]):
            break
        reuse.append(path)
        offset += rows
    target.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp", dir=target.parent))
    try:
        for index, path in enumerate(reuse):
            try:
                os.link(path, folder / part_name(index))
            except OSError:
                shutil.copy2(path, folder / part_name(index))
        written = 0
        starts = list(range(offset, frame.height, part_rows))
        if not starts and not reuse:
            starts = [0]  # an empty table: one empty part keeps its schema
        for index, start in enumerate(starts, start=len(reuse)):
            chunk = frame.slice(start, part_rows)
            record = {"format": PART_FORMAT, "rows": chunk.height, "digest": digests[index][1],
                      "schema": schema, "polars": pl.__version__}
            path = folder / part_name(index)
            chunk.write_parquet(path, compression="zstd", compression_level=PARQUET_ZSTD_LEVEL,
                                metadata={PART_KEY: json.dumps(record)})
            with open(path, "rb+") as fh:
                os.fsync(fh.fileno())
            written += 1
        fsync_dir(folder)
        os.chmod(folder, 0o777 & ~_umask())
        replace_with_folder(folder, target)
    finally:
        if folder.exists():
            shutil.rmtree(folder, ignore_errors=True)
    return {"parts_reused": len(reuse), "parts_written": written, "rows_written": frame.height - offset}


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def read_table(path: str | Path, schema: dict | None = None) -> pl.DataFrame:
    """Read a table written by :func:`write_table`; CSV needs its ``schema`` to keep dtypes."""
    path = path if is_url(path) else Path(path)
    if str(path).endswith(".csv"):
        if schema is not None:
            return pl.read_csv(path, schema=schema)
        return pl.read_csv(path, infer_schema_length=None)
    return pl.read_parquet(path)

"""Atomic file output: write beside the target, then rename, so readers never see half a file.

A temporary file is named ``.<target name>.<pid>.<random>.tmp`` in the target's folder.
The process id lets a later run tell the leftovers of a killed writer (its process is
gone) from a file another live process is writing right now: see
:func:`remove_stale_temp_files`, which ``run_pipeline`` calls under the run lock.
"""

from __future__ import annotations

import os
import re
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
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600; outputs are ordinary files
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, target)
        fsync_dir(target.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def owner_gone(pid: int) -> bool:
    """True if the process that made a pid-tagged leftover no longer runs (or is this one)."""
    from pipelines.locking import pid_alive

    return pid == os.getpid() or not pid_alive(pid)


def remove_stale_temp_files(folder: str | Path, recursive: bool = True) -> list[Path]:
    """Delete the temporary files of writers that no longer run (killed mid-write).

    Only names of the :data:`TEMP_FILE` form are touched, and only when their process is
    gone (or is this process, whose own writes are not under way when this is called);
    a file another live process is writing stays. Returns what was removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed: list[Path] = []
    walker = os.walk(folder) if recursive else [(str(folder), [], os.listdir(folder))]
    for dirpath, _dirnames, filenames in walker:
        for name in filenames:
            match = TEMP_FILE.match(name)
            if not match or not owner_gone(int(match["pid"])):
                continue
            path = Path(dirpath) / name
            try:
                path.unlink()
                removed.append(path)
            except FileNotFoundError:
                pass
    return removed


def write_table(frame: pl.DataFrame, target: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Write a frame as Parquet or CSV (by suffix), atomically. ``metadata``: key-value pairs
    stored in a Parquet file's footer (ignored for CSV)."""
    target = Path(target)
    with atomic_path(target) as tmp:
        if target.suffix == ".csv":
            frame.write_csv(tmp)
        else:
            frame.write_parquet(tmp, metadata=metadata or None)
    return target


def read_table(path: str | Path, schema: dict | None = None) -> pl.DataFrame:
    """Read a table written by :func:`write_table`; CSV needs its ``schema`` to keep dtypes."""
    path = Path(path)
    if path.suffix == ".csv":
        if schema is not None:
            return pl.read_csv(path, schema=schema)
        return pl.read_csv(path, infer_schema_length=None)
    return pl.read_parquet(path)

"""Atomic file output: write beside the target, then rename, so readers never see half a file."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import polars as pl


@contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success rename it over the target."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
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
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_table(frame: pl.DataFrame, target: str | Path) -> Path:
    """Write a frame as Parquet or CSV (by suffix), atomically."""
    target = Path(target)
    with atomic_path(target) as tmp:
        if target.suffix == ".csv":
            frame.write_csv(tmp)
        else:
            frame.write_parquet(tmp)
    return target


def read_table(path: str | Path, schema: dict | None = None) -> pl.DataFrame:
    """Read a table written by :func:`write_table`; CSV needs its ``schema`` to keep dtypes."""
    path = Path(path)
    if path.suffix == ".csv":
        if schema is not None:
            return pl.read_csv(path, schema=schema)
        return pl.read_csv(path, infer_schema_length=None)
    return pl.read_parquet(path)

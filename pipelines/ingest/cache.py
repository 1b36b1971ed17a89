"""Per-file cache of the run-date-independent part of ingest (rules 1 and 2).

A weekly run after one new week of exports re-reads only the new or changed files: every
other file's parsed and row-checked rows come back from the cache. Keys:

* a file is recognised by its relative path, size and modification time (the manifest,
  as git's index does); its content hash (sha256) names the cache entry;
* an entry is valid for one table, one condition vocabulary (its fingerprint) and one
  version of the ingest rules (:data:`RULES_VERSION`).

So changing a file's content re-reads it, deleting a file drops it (its entry is
garbage-collected), and changing the vocabulary re-checks every file. Rules 3 and 4 and
the run-date rule always run over all rows: they depend on every file and on the date.
The cache is derived state under the processed folder; deleting it is always safe.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from pathlib import Path

import polars as pl

from pipelines.io import atomic_path

#: bump when what is cached, or how it is checked, changes
RULES_VERSION = "3"
#: the frames of one parsed file, each one Parquet file (empty ones are not written)
PARTS = ("rows", "side", "ragged")


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _write(target: Path, data: bytes) -> None:
    """Write beside the target, then rename. Not fsync'ed: an entry is derived state, and
    its metadata, written last, holds a digest of every data file, so an entry a crash left
    incomplete reads as a miss."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


class IngestCache:
    def __init__(self, folder: str | Path, vocabulary_fingerprint: str) -> None:
        self.folder = Path(folder)
        self.entries = self.folder / "entries"
        self.vocabulary = vocabulary_fingerprint
        self.manifest_path = self.folder / "manifest.json"
        try:
            self.manifest: dict[str, dict] = json.loads(self.manifest_path.read_text())
        except (OSError, ValueError):
            self.manifest = {}
        self.seen: dict[str, dict] = {}
        self.hits = 0
        self.misses = 0

    @staticmethod
    def _signature(path: Path) -> dict:
        stat = path.stat()
        return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}

    def _stem(self, sha256: str, table: str) -> str:
        return f"{sha256}-{table}-{self.vocabulary}-r{RULES_VERSION}"

    def load(self, relpath: str, path: Path, table: str) -> dict | None:
        """The cached parse of a file whose size and mtime are unchanged, else None."""
        try:
            signature = self._signature(path)
        except OSError:
            return None
        known = self.manifest.get(relpath)
        if not known or any(known.get(k) != v for k, v in signature.items()):
            self.misses += 1
            return None
        stem = self._stem(known["sha256"], table)
        try:
            meta = json.loads((self.entries / f"{stem}.json").read_text())
            if meta.get("status") == "ingested":
                schemas = _schemas(table)
                for part in PARTS:
                    digest = meta.pop(f"{part}_digest")
                    if digest is None:
                        meta[part] = pl.DataFrame(schema=schemas[part])
                        continue
                    data = (self.entries / f"{stem}.{part}.parquet").read_bytes()
                    if _digest(data) != digest:
                        raise ValueError(f"{stem}.{part}: digest mismatch")
                    meta[part] = pl.read_parquet(io.BytesIO(data))
                    if meta[part].schema != pl.Schema(schemas[part]):
                        raise ValueError(f"{stem}.{part}: unexpected schema")
        except (OSError, ValueError, KeyError, TypeError, pl.exceptions.PolarsError):
            self.misses += 1
            return None
        self.seen[relpath] = known
        self.hits += 1
        return meta

    def store(self, relpath: str, path: Path, table: str, parsed: dict, signature: dict | None) -> None:
        """Remember a fresh parse (``signature``: size and mtime seen before the file was read)."""
        sha256 = parsed.get("sha256")
        if not sha256 or signature is None:
            return
        self.entries.mkdir(parents=True, exist_ok=True)
        stem = self._stem(sha256, table)
        meta = {k: v for k, v in parsed.items() if k not in PARTS}
        if parsed["status"] == "ingested":
            for part in PARTS:
                frame = parsed[part]
                if frame.height == 0:
                    meta[f"{part}_digest"] = None
                    continue
                buffer = io.BytesIO()
                # light compression: the cache is read back whole, and written on every new file
                frame.write_parquet(buffer, compression="lz4", statistics=False)
                data = buffer.getvalue()
                _write(self.entries / f"{stem}.{part}.parquet", data)
                meta[f"{part}_digest"] = _digest(data)
        _write(self.entries / f"{stem}.json", json.dumps(meta).encode())
        self.seen[relpath] = {**signature, "sha256": sha256}

    def finish(self) -> None:
        """Write the manifest of the files seen in this run and drop unreferenced entries."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.manifest_path) as tmp:
            tmp.write_text(json.dumps(self.seen, sort_keys=True))
        if not self.entries.is_dir():
            return
        live = {self._stem(v["sha256"], t) for v in self.seen.values() for t in ("episodes", "sessions", "pain_scores")}
        for entry in self.entries.iterdir():
            stem = entry.name.split(".", 1)[0]
            if stem not in live and not entry.name.startswith("."):
                try:
                    os.unlink(entry)
                except OSError:
                    pass


def _schemas(table: str) -> dict[str, dict]:
    from pipelines.ingest.core import RAGGED_SCHEMA
    from pipelines.ingest.spec import TABLES
    from pipelines.ingest.validate import rows_schema, side_schema

    spec = TABLES[table]
    return {"rows": rows_schema(spec), "side": side_schema(spec), "ragged": RAGGED_SCHEMA}

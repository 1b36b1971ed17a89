"""Per-file cache of the run-date-independent part of ingest (rules 1 and 2).

A weekly run after one new week of exports re-reads only the new or changed files: every
other file's parsed and row-checked rows come back from the cache. Keys:

* a file is recognised by its relative path, size and modification time (the manifest,
  as git's index does); its content hash (sha256) names the cache entry;
* an entry is valid for one table, one condition vocabulary (its fingerprint) and one
  version of the ingest rules (:data:`RULES_VERSION`).

So changing a file's content re-reads it, deleting a file drops it (its entry is
garbage-collected), and changing the vocabulary re-checks every file. Rules 3 and 4 and
the run-date rule depend on every file and on the date: they build on the last run's
settled state (:mod:`pipelines.ingest.state`), kept beside these entries. The cache is
derived state under the processed folder; deleting it is always safe.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zlib
from pathlib import Path

import polars as pl

from pipelines.io import atomic_path, write_unsynced

#: bump when what is cached, or how it is checked, changes
RULES_VERSION = "3"
#: the frames of one parsed file, each stored as Parquet in the entry (empty ones are not)
PARTS = ("rows", "side", "ragged")
#: an entry is one file: a line of JSON (the parse's status, reason and sha256, and the
#: length and CRC-32 of each part), then the parts one after the other
ENTRY_FORMAT = "outcomes-ingest-entry-1"


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
            raw = (self.entries / f"{stem}.entry").read_bytes()
            end = raw.index(b"\n")
            meta = json.loads(raw[:end])
            data = memoryview(raw)
            start = end + 1
            if meta.pop("format", None) != ENTRY_FORMAT or meta.get("status") not in ("ingested", "refused"):
                raise ValueError(f"{stem}: not an ingest cache entry")
            if meta["status"] == "ingested":
                schemas = _schemas(table)
                for part in PARTS:
                    length, checksum = meta.pop(f"{part}_part")
                    if length == 0:
                        meta[part] = pl.DataFrame(schema=schemas[part])
                        continue
                    blob = data[start:start + length]
                    start += length
                    if len(blob) != length or zlib.crc32(blob) != checksum:
                        raise ValueError(f"{stem}.{part}: torn or damaged")
                    meta[part] = pl.read_parquet(io.BytesIO(blob))
                    if meta[part].schema != pl.Schema(schemas[part]):
                        raise ValueError(f"{stem}.{part}: unexpected schema")
            if start != len(data):
                raise ValueError(f"{stem}: unexpected length")
        except (OSError, ValueError, KeyError, TypeError, pl.exceptions.PolarsError):
            self.misses += 1
            return None
        self.seen[relpath] = known
        self.hits += 1
        return meta

    def known_sha256(self, relpath: str, path: Path) -> str | None:
        """The sha256 of a file's content: from the manifest when its size and mtime are
        unchanged, else by reading it. The file is remembered as seen (its entry kept)."""
        try:
            signature = self._signature(path)
            known = self.manifest.get(relpath)
            if known and all(known.get(k) == v for k, v in signature.items()):
                sha256 = known["sha256"]
            else:
                digest = hashlib.sha256()
                with open(path, "rb") as fh:
                    for block in iter(lambda: fh.read(1 << 20), b""):
                        digest.update(block)
                sha256 = digest.hexdigest()
        except OSError:
            return None
        self.seen[relpath] = {**signature, "sha256": sha256}
        return sha256

    def store(self, relpath: str, path: Path, table: str, parsed: dict, signature: dict | None) -> None:
        """Remember a fresh parse (``signature``: size and mtime seen before the file was read)."""
        sha256 = parsed.get("sha256")
        if not sha256 or signature is None:
            return
        self.entries.mkdir(parents=True, exist_ok=True)
        stem = self._stem(sha256, table)
        meta = {k: v for k, v in parsed.items() if k not in PARTS}
        meta["format"] = ENTRY_FORMAT
        blobs = []
        if parsed["status"] == "ingested":
            for part in PARTS:
                frame = parsed[part]
                blob = b""
                if frame.height:
                    buffer = io.BytesIO()
                    # light compression: an entry is read back whole, and written for every new file
                    frame.write_parquet(buffer, compression="lz4", statistics=False)
                    blob = buffer.getvalue()
                meta[f"{part}_part"] = [len(blob), zlib.crc32(blob)]
                blobs.append(blob)
        write_unsynced(self.entries / f"{stem}.entry", [json.dumps(meta).encode() + b"\n", *blobs])
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

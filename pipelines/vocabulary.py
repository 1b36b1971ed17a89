"""The condition vocabulary: codes and aliases, read from one reference CSV.

``pipelines/reference/conditions.csv`` ships the 14 contract codes with common aliases; a
clinic extends it (or points ``vocabulary_file`` at its own copy) without touching code.
Every code and alias is normalised the same way as incoming values (CONTRACT.md):
lower-cased, trimmed, every run of spaces, hyphens and underscores made one underscore.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

import polars as pl

DEFAULT_VOCABULARY = Path(__file__).parent / "reference" / "conditions.csv"

CONTRACT_CODES = (
    "low_back_pain", "neck_pain", "upper_back_tension", "headache_migraine",
    "carpal_tunnel", "arthritis", "diabetes_related_pain", "post_surgical",
    "sports_injury", "prenatal", "multiple_sclerosis", "parkinsons", "ptsd_stress",
    "other_chronic_pain",
)

_SEPARATORS = re.compile(r"[\s\-_]+")


def normalise(value: str) -> str:
    """Normalise one code, alias or column name (CONTRACT.md, condition vocabulary)."""
    return _SEPARATORS.sub("_", value.strip().lower())


def normalise_expr(expr: pl.Expr) -> pl.Expr:
    """The same normalisation as :func:`normalise`, vectorised."""
    return expr.str.strip_chars().str.to_lowercase().str.replace_all(r"[\s\-_]+", "_")


@dataclass(frozen=True)
class Vocabulary:
    """Maps every normalised code and alias to its code; ``labels`` gives display names."""

    lookup: dict[str, str]
    labels: dict[str, str]
    source: str

    @property
    def codes(self) -> list[str]:
        return list(self.labels)

    @classmethod
    def load(cls, path: str | Path | None = None) -> "Vocabulary":
        path = Path(path) if path else DEFAULT_VOCABULARY
        lookup: dict[str, str] = {}
        labels: dict[str, str] = {}
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            missing = {"code", "alias"} - set(reader.fieldnames or [])
            if missing:
                raise ValueError(f"{path}: vocabulary needs columns code, alias (missing {sorted(missing)})")
            for lineno, row in enumerate(reader, start=2):
                code = normalise(row["code"] or "")
                if not code:
                    raise ValueError(f"{path}:{lineno}: empty code")
                labels.setdefault(code, (row.get("label") or "").strip() or code.replace("_", " ").capitalize())
                for key in (code, normalise(row["alias"] or "")):
                    if not key:
                        continue
                    if lookup.get(key, code) != code:
                        raise ValueError(
                            f"{path}:{lineno}: '{key}' maps to both {lookup[key]} and {code}")
                    lookup[key] = code
        return cls(lookup=lookup, labels=labels, source=str(path))

    def label(self, code: str) -> str:
        return self.labels.get(code, code)

    def fingerprint(self) -> str:
        import hashlib
        text = "\n".join(f"{k}={v}" for k, v in sorted(self.lookup.items()))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

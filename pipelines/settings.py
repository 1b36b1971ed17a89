"""Analysis settings: response thresholds, small-cell suppression and time zone.

Defaults are the published norms METRICS.md cites. A clinic changes them without code,
in a TOML file (``outcomes.toml`` at the project root, or ``--settings FILE``) or in the
Dagster run config of the ``analysis_settings`` resource.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from zoneinfo import ZoneInfo


@dataclass(frozen=True)
class Settings:
    #: pct_change thresholds (percent) for responder_30 / responder_50
    #: (Farrar et al. 2001; IMMPACT, Dworkin et al. 2008).
    responder_30_threshold: float = 30.0
    responder_50_threshold: float = 50.0
    #: threshold (percent) an observation must reach to count as a response in
    #: sessions-to-response (METRICS.md "Sessions to response").
    response_threshold: float = 30.0
    #: smallest published cell (CMS cell-size rule): counts 1..k-1 are masked.
    min_cell_size: int = 11
    #: clinic time zone: defines "today" and the ISO weeks of the weekly report.
    timezone: str = "UTC"

    def __post_init__(self) -> None:
        for name in ("responder_30_threshold", "responder_50_threshold", "response_threshold"):
            value = getattr(self, name)
            if not 0 < value <= 100:
                raise ValueError(f"{name} must be in (0, 100], got {value}")
        if self.min_cell_size < 1:
            raise ValueError(f"min_cell_size must be >= 1, got {self.min_cell_size}")
        ZoneInfo(self.timezone)  # raises for an unknown zone

    @classmethod
    def from_toml(cls, path: str | Path) -> "Settings":
        """Read the ``[analysis]`` table of a TOML file; unknown keys are an error."""
        with open(path, "rb") as fh:
            data = tomllib.load(fh).get("analysis", {})
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"{path}: unknown settings {sorted(unknown)}; known: {sorted(known)}")
        return replace(cls(), **data)

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

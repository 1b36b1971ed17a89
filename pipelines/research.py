"""Research API: load the processed tables, select a cohort, recompute METRICS.md for it.

A thin layer over the pipeline's own functions, so that a notebook and the weekly run
give the same number from the same records: every metric comes from
:mod:`pipelines.outcomes` (``episode_outcomes``, ``session_relief``, ``summarise``,
``condition_summary_from``, ``km_curves``, ``pain_trajectories``) and every chart from
:mod:`pipelines.reports.charts`. Nothing here defines a metric.

Typical use (from the project root, after ``make demo``)::

    >>> from pipelines import research
    >>> from pipelines.settings import Settings
    >>> tables = research.load_tables("data/processed")                  # doctest: +SKIP
    >>> lbp = research.select_cohort(tables, conditions="low_back_pain",
    ...                              chronicity="chronic", age_bands=["45-59", "60-74"])  # doctest: +SKIP
    >>> research.cohort_summary(lbp, settings=Settings(response_threshold=50))          # doctest: +SKIP
    >>> research.cohort_summary(tables, by="clinic_id")                                 # doctest: +SKIP
    >>> research.km_chart(lbp)                                          # doctest: +SKIP

As-of date: every ``as_of`` defaults to the latest accepted session or follow-up date of
the tables *as loaded* (before any cohort selection), which is what the pipeline uses
when it runs without ``--as-of``; so ``cohort_summary(load_tables(p))`` reproduces
``p/condition_summary.csv`` of a default run.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field, replace
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Iterable

import polars as pl

from pipelines.ingest.core import AUDIT_SCHEMA, REJECTED_SCHEMA
from pipelines.io import is_url, locate, read_table
from pipelines.outcomes.metrics import (episode_outcomes, episodes_as_of, latest_record_date, scored_sessions,
                                        session_relief)
from pipelines.outcomes.summary import ALL, SUMMARY_SCHEMA, condition_summary_from, summarise
from pipelines.outcomes.tables import km_curves, pain_trajectories
from pipelines.settings import Settings
from pipelines.vocabulary import Vocabulary

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "BY_COLUMNS", "NOT_RECORDED", "PROCESSED_DIR_ENV", "Cohort", "Tables", "cohort_km_curves", "cohort_outcomes",
    "cohort_relief", "cohort_summary", "cohort_trajectories", "condition_labels", "find_processed_dir",
    "forest_chart", "funnel_chart", "km_chart", "load_tables", "resolve_as_of", "responder_chart",
    "select_cohort", "summarise_outcomes", "trajectory_chart",
]

#: environment variable the notebooks read the processed folder from
PROCESSED_DIR_ENV = "OUTCOMES_PROCESSED_DIR"
#: the groupings :func:`cohort_summary` accepts (columns episode_outcomes carries)
BY_COLUMNS = ("condition", "clinic_id", "age_band", "chronicity", "sex")
#: the group label given to episodes whose age_band, sex or chronicity was not recorded
NOT_RECORDED = "not recorded"

#: processed file of each table, and the CSV schema it is read with
_FILES = {
    "episodes": "episodes.parquet",
    "sessions": "sessions.parquet",
    "pain_scores": "pain_scores.parquet",
    "episode_outcomes": "episode_outcomes.parquet",
    "session_relief": "session_relief.parquet",
    "condition_summary": "condition_summary.csv",
    "clinic_condition_summary": "clinic_condition_summary.parquet",
    "pain_trajectories": "pain_trajectories.parquet",
    "km_curves": "km_curves.parquet",
    "ingest_audit": "ingest_audit.csv",
    "rejected_rows": "rejected_rows.csv",
}
_CSV_SCHEMAS = {"condition_summary": SUMMARY_SCHEMA, "ingest_audit": AUDIT_SCHEMA, "rejected_rows": REJECTED_SCHEMA}
_REQUIRED = ("episodes", "sessions", "pain_scores")
#: per-episode / per-session tables a cohort selection filters by episode_id
_PER_EPISODE = ("sessions", "pain_scores", "episode_outcomes", "session_relief")
#: whole-population aggregates: dropped by a cohort selection (recompute them for the cohort)
_AGGREGATES = ("condition_summary", "clinic_condition_summary", "pain_trajectories", "km_curves")

Frame = Any  # a polars DataFrame, or a pandas DataFrame when loaded with as_pandas=True


# --------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Tables:
    """The processed tables (CONTRACT.md "Output"), polars frames unless ``as_pandas``.

    ``episodes``, ``sessions`` and ``pain_scores`` are the accepted input rows; the others
    are the pipeline's outputs as written (``None`` when the file is absent, and the
    whole-population aggregates are ``None`` after :func:`select_cohort`: recompute them
    with :func:`cohort_summary`, :func:`cohort_km_curves`, :func:`cohort_trajectories`).
    ``latest_record`` is the default as-of date; ``cohort`` the selections applied.
    """

    episodes: Frame
    sessions: Frame
    pain_scores: Frame
    episode_outcomes: Frame | None = None
    session_relief: Frame | None = None
    condition_summary: Frame | None = None
    clinic_condition_summary: Frame | None = None
    pain_trajectories: Frame | None = None
    km_curves: Frame | None = None
    ingest_audit: Frame | None = None
    rejected_rows: Frame | None = None
    #: latest accepted session or follow-up date of the tables as loaded (default as-of)
    latest_record: date | None = None
    #: the selections applied by select_cohort, in order (empty: every episode)
    cohort: tuple["Cohort", ...] = ()
    processed_dir: Path | str | None = None  # a URL for tables in a bucket
    #: polars schema of each table, to convert pandas frames back exactly
    schemas: dict[str, pl.Schema] = field(default_factory=dict, repr=False)

    @property
    def as_pandas(self) -> bool:
        return not isinstance(self.episodes, pl.DataFrame)

    def frames(self) -> dict[str, Frame]:
        """The tables present, by name."""
        return {name: getattr(self, name) for name in _FILES if getattr(self, name) is not None}

    def to_polars(self) -> "Tables":
        """The same tables as polars frames (exact dtypes restored from ``schemas``)."""
        if not self.as_pandas:
            return self
        return replace(self, **{n: _to_polars(f, self.schemas.get(n)) for n, f in self.frames().items()})

    def to_pandas(self) -> "Tables":
        """The same tables as pandas frames."""
        if self.as_pandas:
            return self
        return replace(self, **{n: f.to_pandas() for n, f in self.frames().items()})

    def describe(self) -> str:
        """One line: the cohort and its numbers of episodes, sessions and pain scores."""
        who = " and ".join(c.describe() for c in self.cohort) or "all episodes"
        return (f"{who}: {len(self.episodes):,} episodes, {len(self.sessions):,} sessions, "
                f"{len(self.pain_scores):,} pain scores (latest record {self.latest_record})")


def _to_polars(frame: Frame, schema: pl.Schema | None = None) -> pl.DataFrame:
    if isinstance(frame, pl.DataFrame):
        return frame
    out = pl.from_pandas(frame)
    if schema:
        out = out.cast({c: t for c, t in schema.items() if c in out.columns and out.schema[c] != t})
    return out


def _polars(tables: Tables) -> Tables:
    return tables.to_polars()


def _like(tables: Tables, frame: pl.DataFrame) -> Frame:
    """Return ``frame`` as pandas when the caller's tables are pandas."""
    return frame.to_pandas() if tables.as_pandas else frame


def find_processed_dir(default: str | Path = "data/processed", env: str = PROCESSED_DIR_ENV) -> Path | str:
    """The processed folder: ``$OUTCOMES_PROCESSED_DIR`` if set, else ``default`` found from here.

    ``default`` is looked up relative to the working folder and each of its parents (first
    one holding the processed tables, else the first that exists), so a notebook in
    ``notebooks/`` finds the project's ``data/processed``.

    >>> import os; os.environ["OUTCOMES_PROCESSED_DIR"] = "/tmp/p"
    >>> find_processed_dir()
    PosixPath('/tmp/p')
    >>> del os.environ["OUTCOMES_PROCESSED_DIR"]
    """
    if os.environ.get(env):
        value = os.environ[env]
        return value if is_url(value) else Path(value)  # a bucket (docs/deployment.md) stays a URL
    default = Path(default)
    if default.is_absolute():
        return default
    here = Path.cwd().resolve()
    candidates = [folder / default for folder in (here, *here.parents)]
    for wanted in (lambda p: (p / _FILES["episodes"]).exists(), Path.is_dir):
        for candidate in candidates:
            if wanted(candidate):
                return candidate
    return default


def load_tables(processed_dir: str | Path = "data/processed", as_pandas: bool = False) -> Tables:
    """Read the processed folder the pipeline wrote (``make demo``, ``outcomes run``).

    CSV tables are read with their schema (``condition_summary.csv`` with
    :data:`pipelines.outcomes.summary.SUMMARY_SCHEMA`), so empty cells stay typed nulls.
    ``as_pandas=True`` gives pandas frames; every function here accepts either, and
    returns frames of the same kind.

    >>> tables = load_tables("data/processed")                          # doctest: +SKIP
    >>> tables.condition_summary.select("condition", "n_analysed", "mean_change")  # doctest: +SKIP
    """
    folder = processed_dir if is_url(processed_dir) else Path(processed_dir)
    frames: dict[str, pl.DataFrame | None] = {}
    for name, filename in _FILES.items():
        path = locate(folder, filename)
        try:  # a bucket is asked, not listed: a missing table is a missing object
            frames[name] = read_table(path, _CSV_SCHEMAS.get(name))
        except FileNotFoundError:
            frames[name] = None
    missing = [_FILES[n] for n in _REQUIRED if frames[n] is None]
    if missing:
        raise FileNotFoundError(f"{folder} has no {', '.join(missing)}: run `make demo` or "
                                f"`outcomes run --processed-dir {folder}` first")
    tables = Tables(**frames, latest_record=latest_record_date(frames["sessions"], frames["pain_scores"]),
                    processed_dir=folder, schemas={n: f.schema for n, f in frames.items() if f is not None})
    return tables.to_pandas() if as_pandas else tables


# --------------------------------------------------------------------------------------
# Cohort selection
# --------------------------------------------------------------------------------------

def _values(value: str | Iterable[str | None] | None) -> tuple | None:
    if value is None:
        return None
    if isinstance(value, str):
        return (value,)
    return tuple(value)


def _date(value: date | str | None) -> date | None:
    if value is None or isinstance(value, date):
        return value
    return date.fromisoformat(value)


@dataclass(frozen=True)
class Cohort:
    """Which episodes to keep: each criterion given is required (``None``: any value).

    Value lists match exactly; ``None`` inside a list (``age_bands=["75+", None]``) also
    matches a value that was not recorded. Dates are inclusive bounds on referral_date;
    ``prescribed_min`` / ``prescribed_max`` are inclusive bounds on prescribed_sessions
    (an episode without a prescription is left out when either is given).

    >>> Cohort(conditions=("low_back_pain",), age_bands=("45-59", "60-74")).describe()
    'condition in {low_back_pain}, age_band in {45-59, 60-74}'
    """

    conditions: tuple | None = None
    clinics: tuple | None = None
    referred_from: date | None = None
    referred_to: date | None = None
    age_bands: tuple | None = None
    chronicity: tuple | None = None
    sex: tuple | None = None
    prescribed_min: int | None = None
    prescribed_max: int | None = None

    #: criterion -> episodes column, for the value-list criteria
    COLUMNS: ClassVar[dict[str, str]] = {"conditions": "condition", "clinics": "clinic_id", "age_bands": "age_band",
               "chronicity": "chronicity", "sex": "sex"}

    def expression(self) -> pl.Expr:
        """The polars filter over the episodes table."""
        parts: list[pl.Expr] = []
        for name, column in self.COLUMNS.items():
            values = getattr(self, name)
            if values is None:
                continue
            known = [v for v in values if v is not None]
            expr = pl.col(column).is_in(known)
            if None in values:
                expr = expr | pl.col(column).is_null()
            parts.append(expr.fill_null(False))
        if self.referred_from is not None:
            parts.append(pl.col("referral_date") >= self.referred_from)
        if self.referred_to is not None:
            parts.append(pl.col("referral_date") <= self.referred_to)
        if self.prescribed_min is not None:
            parts.append((pl.col("prescribed_sessions") >= self.prescribed_min).fill_null(False))
        if self.prescribed_max is not None:
            parts.append((pl.col("prescribed_sessions") <= self.prescribed_max).fill_null(False))
        return pl.all_horizontal(parts) if parts else pl.lit(True)

    def describe(self) -> str:
        """The criteria in words (for titles and logs)."""
        words = []
        for name, column in self.COLUMNS.items():
            values = getattr(self, name)
            if values is not None:
                words.append(f"{column} in {{{', '.join(NOT_RECORDED if v is None else str(v) for v in values)}}}")
        if self.referred_from is not None or self.referred_to is not None:
            words.append(f"referred {self.referred_from or '...'} to {self.referred_to or '...'}")
        if self.prescribed_min is not None or self.prescribed_max is not None:
            words.append(f"prescribed {self.prescribed_min or 0}-{self.prescribed_max or 'any'} sessions")
        return ", ".join(words) or "all episodes"


def select_cohort(tables: Tables, conditions=None, clinics=None, referred_from=None, referred_to=None,
                  age_bands=None, chronicity=None, sex=None, prescribed_min=None, prescribed_max=None) -> Tables:
    """Keep the episodes that meet every criterion given, and only their rows elsewhere.

    Sessions, pain scores, episode_outcomes and session_relief are restricted to the kept
    episodes; the whole-population aggregates (condition_summary, km_curves, ...) become
    ``None``; ``latest_record`` is kept, so the default as-of date stays the pipeline's.
    A string is one value (``conditions="neck_pain"``); dates may be ISO strings.
    Selections chain (each narrows the previous one). A value no episode has gives a
    warning (a typo would otherwise select nobody silently). See :class:`Cohort`.

    >>> chronic_lbp = select_cohort(tables, conditions="low_back_pain", chronicity="chronic")  # doctest: +SKIP
    >>> chronic_lbp.describe()          # on the 5,000-episode demo data   # doctest: +SKIP
    'condition in {low_back_pain}, chronicity in {chronic}: 642 episodes, 4,293 sessions, 8,356 pain scores (latest record 2026-11-22)'
    """
    cohort = Cohort(conditions=_values(conditions), clinics=_values(clinics), referred_from=_date(referred_from),
                    referred_to=_date(referred_to), age_bands=_values(age_bands), chronicity=_values(chronicity),
                    sex=_values(sex), prescribed_min=prescribed_min, prescribed_max=prescribed_max)
    source = _polars(tables)
    episodes = source.episodes
    for name, column in Cohort.COLUMNS.items():
        unknown = sorted({v for v in (getattr(cohort, name) or ()) if v is not None}
                         - set(episodes[column].drop_nulls().unique().to_list()))
        if unknown:
            warnings.warn(f"select_cohort: no episode has {column} {unknown}; "
                          f"known: {sorted(episodes[column].drop_nulls().unique().to_list())}", stacklevel=2)
    kept = episodes.filter(cohort.expression())
    ids = kept.select("episode_id")
    changes: dict[str, Any] = {"episodes": kept, "cohort": (*tables.cohort, cohort)}
    for name in _PER_EPISODE:
        frame = getattr(source, name)
        if frame is not None:
            changes[name] = frame.join(ids, on="episode_id", how="semi")
    for name in _AGGREGATES:
        changes[name] = None
    selected = replace(source, **changes)
    return selected.to_pandas() if tables.as_pandas else selected


# --------------------------------------------------------------------------------------
# Metrics for a cohort (all from pipelines.outcomes)
# --------------------------------------------------------------------------------------

def resolve_as_of(tables: Tables, as_of: date | str | None = None) -> date:
    """``as_of`` as a date; by default the pipeline's: the latest record of the data as loaded."""
    if as_of is not None:
        return _date(as_of)
    if tables.latest_record is not None:
        return tables.latest_record
    source = _polars(tables)
    return latest_record_date(source.sessions, source.pain_scores) or date.today()


def cohort_outcomes(tables: Tables, as_of: date | str | None = None, settings: Settings | None = None) -> Frame:
    """One row per episode of the cohort referred on or before ``as_of`` (METRICS.md "One episode").

    Calls :func:`pipelines.outcomes.metrics.episode_outcomes`; ``settings`` changes the
    responder and response thresholds. Carries age_band, sex, chronicity, clinic_id and
    ``analysed`` (no exclusion reason) for modelling.

    >>> out = cohort_outcomes(tables, as_of="2026-06-30", settings=Settings(responder_30_threshold=40))  # doctest: +SKIP
    >>> out.filter(pl.col("analysed"))["responder_30"].mean()           # doctest: +SKIP
    """
    source = _polars(tables)
    frame = episode_outcomes(source.episodes, source.sessions, source.pain_scores,
                             resolve_as_of(tables, as_of), settings or Settings())
    return _like(tables, frame)


def cohort_relief(tables: Tables, as_of: date | str | None = None) -> Frame:
    """Within-session relief (pre - post) of the cohort's sessions on or before ``as_of``."""
    source = _polars(tables)
    frame = session_relief(source.episodes, source.sessions, source.pain_scores, resolve_as_of(tables, as_of))
    return _like(tables, frame)


def summarise_outcomes(outcomes: Frame, relief: Frame, settings: Settings | None = None,
                       by: str = "condition") -> Frame:
    """Every METRICS.md "One condition" statistic per group of ``by``, plus the pooled ``ALL`` row.

    ``outcomes`` from :func:`cohort_outcomes`, ``relief`` from :func:`cohort_relief` (same
    as-of). ``by="condition"`` is the pipeline's
    :func:`~pipelines.outcomes.summary.condition_summary_from`; other groupings call
    :func:`~pipelines.outcomes.summary.summarise` with ``by=[by]``, after labelling missing
    values :data:`NOT_RECORDED` and giving relief the episode's group. q_value is
    Benjamini-Hochberg over the groups of this table. Returns pandas for pandas input.

    >>> outcomes = cohort_outcomes(tables, settings=settings)            # doctest: +SKIP
    >>> summarise_outcomes(outcomes, cohort_relief(tables), settings, by="sex")  # doctest: +SKIP
    """
    if by not in BY_COLUMNS:
        raise ValueError(f"by must be one of {BY_COLUMNS}, got {by!r}")
    settings = settings or Settings()
    as_pandas = not isinstance(outcomes, pl.DataFrame)
    outcomes, relief = _to_polars(outcomes), _to_polars(relief)
    if by == "condition":
        frame = condition_summary_from(outcomes, relief, settings)
    else:
        outcomes = outcomes.with_columns(pl.col(by).fill_null(NOT_RECORDED))
        relief = relief.drop(by, strict=False).join(outcomes.select("episode_id", by), on="episode_id", how="inner")
        frame = summarise(outcomes, relief, settings, by=[by])
    return frame.to_pandas() if as_pandas else frame


def cohort_summary(tables: Tables, as_of: date | str | None = None, settings: Settings | None = None,
                   by: str = "condition") -> Frame:
    """The condition_summary table (every METRICS.md column) for the cohort, grouped ``by``.

    ``by`` is one of :data:`BY_COLUMNS` ("condition", "clinic_id", "age_band",
    "chronicity", "sex"); the first column is named after it and the last row is ``ALL``.
    With the defaults on unselected tables it equals the pipeline's condition_summary.csv.

    >>> cohort_summary(tables)                                          # doctest: +SKIP
    >>> cohort_summary(tables, by="chronicity", settings=Settings(min_cell_size=20))  # doctest: +SKIP
    """
    source, as_of = _polars(tables), resolve_as_of(tables, as_of)
    frame = summarise_outcomes(cohort_outcomes(source, as_of, settings), cohort_relief(source, as_of), settings, by=by)
    return _like(tables, frame)


def cohort_km_curves(tables: Tables, as_of: date | str | None = None, settings: Settings | None = None) -> Frame:
    """Kaplan-Meier curves of sessions to response per condition and ALL (as km_curves.parquet)."""
    return _like(tables, km_curves(_to_polars(cohort_outcomes(_polars(tables), as_of, settings))))


def cohort_trajectories(tables: Tables, as_of: date | str | None = None) -> Frame:
    """Mean pre-session pain by session number per condition and ALL (as pain_trajectories.parquet)."""
    source, as_of = _polars(tables), resolve_as_of(tables, as_of)
    scored = scored_sessions(source.episodes, source.sessions, source.pain_scores, as_of)
    return _like(tables, pain_trajectories(scored, episodes_as_of(source.episodes, as_of)))


# --------------------------------------------------------------------------------------
# Charts (all from pipelines.reports.charts; small cells suppressed per settings.min_cell_size)
# --------------------------------------------------------------------------------------
# matplotlib is imported on first use, so that metrics-only users do not pay for it.

def _charts():
    from pipelines.reports import charts

    return charts


def condition_labels(vocabulary_file: str | Path | None = None) -> dict[str, str]:
    """Display names of the condition codes (the vocabulary's ``label`` column), and ALL."""
    return {**Vocabulary.load(vocabulary_file).labels, ALL: _charts().ALL_LABEL}


def _summary_for(tables: Tables, as_of, settings: Settings, summary: Frame | None) -> pl.DataFrame:
    return _to_polars(summary) if summary is not None else cohort_summary(_polars(tables), as_of, settings)


def forest_chart(tables: Tables, as_of=None, settings: Settings | None = None, *, summary: Frame | None = None,
                 labels: dict[str, str] | None = None) -> "Figure":
    """Mean change with its 95% CI per condition (:func:`pipelines.reports.charts.forest_plot`).

    Pass ``summary`` (from :func:`cohort_summary`, same as-of and settings) to skip
    recomputing it; ``labels`` defaults to :func:`condition_labels`.

    >>> fig = forest_chart(select_cohort(tables, chronicity="chronic"))   # doctest: +SKIP
    >>> fig.savefig("forest.png")                                       # doctest: +SKIP
    """
    settings = settings or Settings()
    return _charts().forest_plot(_summary_for(tables, as_of, settings, summary), labels or condition_labels(),
                                 min_cell_size=settings.min_cell_size)


def responder_chart(tables: Tables, as_of=None, settings: Settings | None = None, *, summary: Frame | None = None,
                    labels: dict[str, str] | None = None) -> "Figure":
    """Responder_30 and responder_50 rates with Wilson 95% CIs per condition (charts.responder_plot)."""
    settings = settings or Settings()
    return _charts().responder_plot(_summary_for(tables, as_of, settings, summary), labels or condition_labels(),
                                    min_cell_size=settings.min_cell_size)


def km_chart(tables: Tables, as_of=None, settings: Settings | None = None, *, summary: Frame | None = None,
             km: Frame | None = None, labels: dict[str, str] | None = None, max_panels: int = 9,
             max_session: int | None = 20) -> "Figure":
    """Share improved by sessions attended, Kaplan-Meier, one panel per condition (charts.km_curves_plot).

    The threshold drawn is ``settings.response_threshold``; ``km`` may be
    :func:`cohort_km_curves` of the same cohort, as-of and settings.

    >>> km_chart(lbp, as_of="2026-05-31", settings=Settings(response_threshold=50))  # doctest: +SKIP
    """
    settings = settings or Settings()
    km = _to_polars(km) if km is not None else cohort_km_curves(_polars(tables), as_of, settings)
    return _charts().km_curves_plot(km, _summary_for(tables, as_of, settings, summary), labels or condition_labels(),
                                    max_panels=max_panels, min_cell_size=settings.min_cell_size,
                                    max_session=max_session, threshold_pct=settings.response_threshold)


def trajectory_chart(tables: Tables, as_of=None, settings: Settings | None = None, *,
                     conditions: list[str] | None = None, labels: dict[str, str] | None = None,
                     max_session: int = 12) -> "Figure":
    """Mean pre-session pain by session number with 95% CI (charts.trajectory_plot)."""
    settings = settings or Settings()
    return _charts().trajectory_plot(cohort_trajectories(_polars(tables), as_of), labels or condition_labels(),
                                     conditions=conditions, max_session=max_session,
                                     min_cell_size=settings.min_cell_size)


def funnel_chart(tables: Tables, as_of=None, settings: Settings | None = None, *, summary: Frame | None = None,
                 title_suffix: str = "") -> "Figure":
    """Each clinic's responder_30 rate against its n, with 95% / 99.8% limits (charts.funnel_plot).

    ``summary`` may be ``cohort_summary(tables, by="clinic_id")``. Clinics with fewer than
    ``min_cell_size`` analysed patients are left out, as in the weekly report. Unadjusted
    for case mix: see notebooks/3.0-risk-adjusted-comparison.ipynb.
    """
    settings = settings or Settings()
    per_clinic = (_to_polars(summary) if summary is not None
                  else cohort_summary(_polars(tables), as_of, settings, by="clinic_id"))
    pooled = per_clinic.filter(pl.col("clinic_id") == ALL)
    pooled_rate = pooled["responder_30_rate"].item() if pooled.height else None
    points = (per_clinic.filter((pl.col("clinic_id") != ALL) & (pl.col("n_analysed") >= settings.min_cell_size)
                                & pl.col("responder_30_rate").is_not_null())
              .select("clinic_id", "n_analysed", "responder_30_rate"))
    return _charts().funnel_plot(points, pooled_rate if pooled_rate is not None else float("nan"), title_suffix,
                                 threshold_pct=settings.responder_30_threshold, min_cell_size=settings.min_cell_size)

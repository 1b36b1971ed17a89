"""Rule 2 of CONTRACT.md, the row on its own, vectorised in polars.

``check_rows`` types every contract column and splits the rows into those that pass (typed
values only) and a side table with the reasons and raw values of those that fail. Every
reason starts with the column it concerns and says which rule failed, so staff can fix it.
Raw text is kept only where it is needed: a rejected row shows its raw values, and a
passing row's raw values are its typed values printed back, except the few cells kept in
the side table because they were written differently (``LBP``, ``7.0``).
"""

from __future__ import annotations

from datetime import date

import numpy as np
import polars as pl

from pipelines.ingest.privacy import looks_like_email, looks_like_phone, mask_expr
from pipelines.ingest.spec import ID_COLUMNS, Column, TableSpec
from pipelines.vocabulary import Vocabulary, normalise_expr

_ISO_DATE = r"^\d{4}-\d{2}-\d{2}$"
#: no contract value is longer; a longer cell rejects its row and is stored shortened
MAX_CELL_CHARS = 1000
STORED_CELL_CHARS = 200
_INTEGER = r"^[+-]?\d+(\.0*)?$"


def _shown(col: str) -> pl.Expr:
    """The raw value for a reason text: identifier-looking values masked, long ones shortened."""
    value = mask_expr(pl.col(col))
    return pl.when(value.str.len_chars() > 40).then(value.str.slice(0, 37) + "...").otherwise(value)


def _quoted(col: str) -> pl.Expr:
    return pl.lit("'") + _shown(col) + pl.lit("'")


def _reason(condition: pl.Expr, *parts: pl.Expr | str) -> tuple[pl.Expr, pl.Expr]:
    """A rule: when it fails (over typed and raw values), and its text (over raw values only).

    Texts are built only for the rows that fail (:func:`failing_rows`): most rows pass,
    and formatting a message for every row would cost more than the checks themselves.
    """
    text = pl.concat_str([p if isinstance(p, pl.Expr) else pl.lit(p) for p in parts])
    return condition.fill_null(False), text


def _typed(column: Column, vocabulary: Vocabulary) -> pl.Expr:
    """The typed, normalised value of one column, from its trimmed raw value (null: invalid)."""
    raw = pl.col(column.name)
    if column.kind in ("id", "text"):
        # an identifier-looking id rejects its row: only passing rows keep typed values,
        # and the side table stores the mask
        typed = raw
    elif column.kind == "condition":
        typed = normalise_expr(raw).replace_strict(vocabulary.lookup, default=None, return_dtype=pl.String)
    elif column.kind == "choice":
        cased = raw.str.to_uppercase() if column.upper else raw.str.to_lowercase()
        typed = pl.when(cased.is_in(list(column.choices))).then(cased).otherwise(None)
    elif column.kind == "date":
        parsed = raw.str.to_date("%Y-%m-%d", strict=False)
        typed = pl.when(raw.str.contains(_ISO_DATE)).then(parsed).otherwise(None)
    elif column.kind == "int":
        as_float = raw.cast(pl.Float64, strict=False)
        is_int = raw.str.contains(_INTEGER)
        typed = pl.when(is_int).then(as_float).otherwise(None).cast(pl.Int64, strict=False)
    elif column.kind == "number":
        as_float = raw.cast(pl.Float64, strict=False)
        typed = pl.when(as_float.is_finite()).then(as_float).otherwise(None)
    else:  # pragma: no cover - spec is static
        raise ValueError(column.kind)
    return typed.cast(TYPED_DTYPES[column.kind])


def _column_rules(column: Column, typed: pl.Expr) -> list[tuple[pl.Expr, pl.Expr]]:
    """The reason expressions of one column, over its trimmed raw value and ``typed``."""
    name = column.name
    raw = pl.col(name)
    present = raw.is_not_null()
    reasons: list[tuple[pl.Expr, pl.Expr]] = []
    reasons.append(_reason(raw.str.len_chars() > MAX_CELL_CHARS,
                           f"{name}: value is longer than {MAX_CELL_CHARS} characters"))
    if column.required:
        reasons.append(_reason(~present, f"{name}: required value is missing"))
    if column.kind in ("id", "text"):
        if name in ID_COLUMNS:
            reasons.append(_reason(looks_like_email(raw),
                                   f"{name}: value looks like an e-mail address (masked), use a pseudonym"))
            reasons.append(_reason(looks_like_phone(raw),
                                   f"{name}: value looks like a phone number (masked), use a pseudonym"))
    elif column.kind == "condition":
        reasons.append(_reason(present & typed.is_null(), f"{name}: ", _quoted(name),
                               " is not a code or alias in the condition vocabulary"))
    elif column.kind == "choice":
        reasons.append(_reason(present & typed.is_null(), f"{name}: ", _quoted(name),
                               f" is not one of {', '.join(column.choices)}"))
    elif column.kind == "date":
        reasons.append(_reason(present & typed.is_null(), f"{name}: ", _quoted(name),
                               " is not a real date in the form YYYY-MM-DD"))
        # "not after the run date" depends on the day of the run: see run_date_rules
    elif column.kind == "int":
        reasons.append(_reason(present & typed.is_null(), f"{name}: ", _quoted(name), " is not a whole number"))
        reasons.append(_reason((typed < column.low) | (typed > column.high), f"{name}: ", _shown(name),
                               f" is outside {column.low:g}..{column.high:g}"))
    elif column.kind == "number":
        reasons.append(_reason(present & typed.is_null(), f"{name}: ", _quoted(name), " is not a number"))
        reasons.append(_reason((typed < column.low) | (typed > column.high), f"{name}: ", _shown(name),
                               f" is outside {column.low:g}..{column.high:g}"))
    return reasons


def _table_rules(spec: TableSpec, typed_timepoint: pl.Expr | None = None) -> list[tuple[pl.Expr, pl.Expr]]:
    """Rules that tie columns of one row together (pain_scores' timepoint rules)."""
    if spec.name != "pain_scores":
        return []
    # the typed timepoint is the lower-cased raw one where that is one of the choices
    tp = pl.col("timepoint").str.to_lowercase() if typed_timepoint is None else typed_timepoint
    has_session = pl.col("session_id").is_not_null()
    return [
        _reason(tp.is_in(["pre", "post"]) & ~has_session,
                "session_id: required for a pre/post score"),
        _reason((tp == "followup") & has_session,
                "session_id: must be empty for a followup score (a followup belongs to no session)"),
        _reason((tp == "followup") & pl.col("recorded_on").is_null(),
                "recorded_on: required for a followup score"),
    ]


#: raw cells that their typed value prints back exactly (:func:`raw_text`): a whole number
#: without sign, leading zeros or decimals; a number may add a fraction without trailing
#: zeros. At most 14 significant digits, so the number is exact in a double and prints back
#: digit for digit. Any other spelling (``+7``, ``07``, ``7.0``, ``LBP``) is kept as written.
_CANONICAL = {
    "int": r"^(?:0|[1-9][0-9]{0,14})$",
    "number": r"^(?:0|[1-9][0-9]{0,5})(?:\.[0-9]{0,7}[1-9])?$",
}


def _non_canonical(column: Column, typed: pl.Expr) -> pl.Expr | None:
    """True where a passing row's raw cell cannot be printed back from its typed value.

    None for columns where it always can: ids equal their raw value (an id that would be
    masked rejects its row), and an ISO date that parses to a real date prints back as itself.
    """
    raw = pl.col(column.name)
    if column.kind in ("condition", "choice"):
        return raw.ne_missing(typed)
    if column.kind in _CANONICAL:
        return raw.is_not_null() & ~raw.str.contains(_CANONICAL[column.kind])
    return None


def _format_number(value: float | None) -> str | None:
    return None if value is None else np.format_float_positional(value, unique=True, trim="-")


def raw_text(column: Column) -> pl.Expr:
    """The raw cell of a passing row printed back from its typed value (exact unless the row
    was kept in the side table, :func:`check_rows`)."""
    typed = pl.col(column.name)
    if column.kind in ("date", "int"):
        return typed.cast(pl.String)
    if column.kind == "number":
        return typed.map_elements(_format_number, return_dtype=pl.String, skip_nulls=True)
    return typed


TYPED_DTYPES = {"id": pl.String, "text": pl.String, "condition": pl.String, "choice": pl.String,
                "date": pl.Date, "int": pl.Int64, "number": pl.Float64}


def rows_schema(spec: TableSpec) -> dict[str, pl.DataType]:
    """Columns of the rows that passed rule 2 (per file, as cached)."""
    return {"line": pl.Int64, **{c.name: TYPED_DTYPES[c.kind] for c in spec.columns}}


def side_schema(spec: TableSpec) -> dict[str, pl.DataType]:
    """Columns of the side table: rows that failed rule 2, and raw cells kept for later rules."""
    return {"line": pl.Int64, "reasons": pl.List(pl.String),
            **{f"raw_{c}": pl.String for c in spec.names},
            **{c.name: pl.Date for c in spec.columns if c.kind == "date"}}


def _trimmed(frame: pl.DataFrame, names: list[str]) -> pl.DataFrame:
    """Cells as the rules see them: trimmed, and empty as missing. In two steps: one
    expression naming the stripped value twice strips every cell twice."""
    frame = frame.with_columns([pl.col(c).str.strip_chars() for c in names])
    return frame.with_columns([pl.when(pl.col(c).str.len_bytes() > 0).then(pl.col(c)) for c in names])


_FLAGS = ("fails", "keep", "empty")


def _checked(cells: pl.Series, column: Column, vocabulary: Vocabulary) -> pl.DataFrame:
    """Per cell of ``cells`` (raw, untrimmed): the ``typed`` value and those of ``fails`` (any
    rule of the column), ``keep`` (raw text not printed back by ``typed``) and ``empty``
    that hold for some cell (a flag left out is false everywhere)."""
    name = column.name
    typed = pl.col("typed")
    rules = _column_rules(column, typed)
    keep = _non_canonical(column, typed)
    checked = _trimmed(cells.to_frame(name), [name]).with_columns(_typed(column, vocabulary).alias("typed"))
    checked = checked.select(
        "typed", pl.any_horizontal([cond for cond, _ in rules]).alias("fails"),
        *([keep.fill_null(False).alias("keep")] if keep is not None else []),
        pl.col(name).is_null().alias("empty"))
    return checked.select("typed", *[f for f in _FLAGS if f in checked.columns and checked.get_column(f).any()])


def _column_flags(frame: pl.DataFrame, column: Column, vocabulary: Vocabulary) -> pl.DataFrame:
    """:func:`_checked` for every row of ``frame``.

    Coded, numeric and date columns hold few distinct values: they are checked once per
    distinct value, and each row takes its value's results by its code in an Enum of the
    values, which costs a fraction of checking every row (and less than a join).
    """
    cells = frame.get_column(column.name)
    if column.kind in ("id", "text"):
        return _checked(cells, column, vocabulary)
    values = cells.unique().drop_nulls()
    codes = cells.cast(pl.Enum(values)).to_physical().cast(pl.UInt32)
    if cells.has_nulls():
        # a missing cell takes the results of a missing value, checked after the others
        values = values.extend_constant(None, 1)
        codes = codes.fill_null(values.len() - 1)
    checked = _checked(values, column, vocabulary)
    return pl.DataFrame([checked.get_column(c).gather(codes) for c in checked.columns])


def check_rows(frame: pl.DataFrame, spec: TableSpec,
               vocabulary: Vocabulary) -> tuple[pl.DataFrame, pl.DataFrame, pl.Series]:
    """Type every contract column and apply rule 2, except the run-date rule
    (:func:`run_date_rules`), which is the only one that depends on the day.

    ``frame``: raw cells as read (untrimmed strings, null or empty when missing), ``line``,
    optionally ``_part`` (carried) and ``_blank_is_no_row`` (true where a row whose cells
    are all empty is a blank CSV line, not a row: it is dropped).

    Returns ``(rows, side, blank)``. ``rows``: the rows that pass, with their typed, normalised
    values only. ``side``: the rows that fail, with their ``reasons``, their raw values
    ``raw_<col>`` (trimmed; identifier-looking values masked, overlong ones shortened: this
    is what rejected_rows.csv and the ingest cache store) and their typed dates; and also,
    with empty ``reasons``, the raw values of passing rows whose cells their typed values
    do not print back exactly (``LBP``, ``7.0``), so that a row rejected by a later rule
    still shows what its file said (:func:`with_raw`). Both keep the order of ``frame``,
    and blank lines are in neither: ``_part`` of each is returned as ``blank`` (a Series).
    """
    absent = [c for c in spec.names if c not in frame.columns]
    frame = frame.with_columns([pl.lit(None, dtype=pl.String).alias(c) for c in absent])
    flags = {c.name: _column_flags(frame, c, vocabulary) for c in spec.columns}
    # only the flags some row has: the others are false everywhere
    state = frame.select("line").with_columns([f.get_column(kind).alias(f"_{kind}_{name}")
                                               for name, f in flags.items() for kind in f.columns[1:]])

    def flag(kind: str, name: str) -> pl.Expr:
        return pl.col(f"_{kind}_{name}") if kind in flags[name].columns else pl.lit(False)

    fails = pl.any_horizontal(pl.lit(False), *[flag("fails", name) for name in flags])
    if spec.name == "pain_scores":
        # the timepoint rules read the typed timepoint and whether two cells are present
        state = state.with_columns(flags["timepoint"].get_column("typed").alias("timepoint"), *[
            pl.when(~flag("empty", c)).then(pl.lit("x")).alias(c) for c in ("session_id", "recorded_on")])
        fails = fails | pl.any_horizontal([cond for cond, _ in _table_rules(spec, pl.col("timepoint"))])
    blank = pl.all_horizontal([flag("empty", name) for name in flags])
    if "_blank_is_no_row" in frame.columns:
        state = state.with_columns(frame.get_column("_blank_is_no_row"))
        blank = blank & pl.col("_blank_is_no_row")
    else:
        blank = pl.lit(False)
    keep = pl.any_horizontal(pl.lit(False), *[flag("keep", name) for name in flags])
    state = state.with_columns(blank.alias("_blank"), fails.alias("_fails"), keep.alias("_keep"))
    carried = [c for c in ("_part",) if c in frame.columns]
    blank_parts = (frame.get_column("_part").filter(state.get_column("_blank")) if carried
                   else pl.Series("_part", [], pl.Int32))
    row_ok = state.select(~pl.col("_blank") & ~pl.col("_fails")).to_series()
    typed = [f.get_column("typed").alias(name) for name, f in flags.items()]
    rows = pl.DataFrame([*(frame.get_column(c) for c in carried), frame.get_column("line"), *typed]).filter(row_ok)
    in_side = state.select(~pl.col("_blank") & (pl.col("_fails") | pl.col("_keep"))).to_series()
    side = frame.select(*carried, "line", *spec.names, *[t.alias(f"_t_{t.name}") for t in typed]).filter(in_side)
    return rows, _side(side, spec), blank_parts


def _side(frame: pl.DataFrame, spec: TableSpec) -> pl.DataFrame:
    """The side table of :func:`check_rows` for the (few) rows it keeps (raw cells and typed
    values ``_t_<col>``): every rule over their trimmed raw cells, with texts for the rows
    that fail, as rejected_rows.csv shows them."""
    frame = _trimmed(frame, spec.names)
    rules: list[tuple[pl.Expr, pl.Expr]] = []
    for column in spec.columns:
        rules.extend(_column_rules(column, pl.col(f"_t_{column.name}")))
    rules.extend(_table_rules(spec))
    carried = [c for c in ("_part",) if c in frame.columns]
    flagged = frame.with_columns([cond.alias(f"_f{i}") for i, (cond, _) in enumerate(rules)])
    # texts over the stored raw values, as rejected_rows.csv shows them
    # (masked first: an expression naming the masked value thrice would mask it thrice)
    flagged = flagged.with_columns([mask_expr(pl.col(c)).alias(c) for c in spec.names])
    flagged = flagged.with_columns([_shortened(pl.col(c)).alias(c) for c in spec.names])
    flagged = flagged.with_columns(pl.any_horizontal([f"_f{i}" for i in range(len(rules))]).alias("_failing"))
    # texts only for the rows that fail (most side rows are kept raw cells); the others
    # take the empty list after them
    texts = flagged.filter(pl.col("_failing")).select(
        pl.concat_list([pl.when(pl.col(f"_f{i}")).then(text).otherwise(None)
                        for i, (_, text) in enumerate(rules)]).list.drop_nulls()).to_series()
    texts = texts.extend(pl.Series([[]], dtype=pl.List(pl.String)))
    failing = pl.col("_failing")
    at = pl.when(failing).then(failing.cum_sum().cast(pl.Int64) - 1).otherwise(texts.len() - 1)
    return flagged.select(
        *carried, "line", pl.lit(texts).gather(at).alias("reasons"),
        *[pl.col(c).alias(f"raw_{c}") for c in spec.names],
        *[pl.col(f"_t_{c.name}").alias(c.name) for c in spec.columns if c.kind == "date"])


def run_date_rules(spec: TableSpec, today: date) -> list[tuple[pl.Expr, pl.Expr]]:
    """Rule 2's "every date present ... not after the run date", over typed dates and
    ``raw_<col>`` texts."""
    rules = []
    for column in spec.columns:
        if column.kind != "date":
            continue
        name = column.name
        rules.append(_reason(pl.col(name) > pl.lit(today), f"{name}: ", _shown(f"raw_{name}"),
                             f" is after the run date {today.isoformat()}"))
    return rules


def failing_rows(frame: pl.DataFrame, rules: list[tuple[pl.Expr, pl.Expr]],
                 existing: str | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Split ``frame`` into rows passing every rule and rows failing one, the latter with the
    failing rules' texts in ``reasons`` (after the ``existing`` list column's, if given).
    Both keep the order of ``frame``; texts are built for the failing rows only."""
    if not rules:
        return frame, frame.clear().with_columns(pl.lit([], pl.List(pl.String)).alias("reasons"))
    names = [f"_r{i}" for i in range(len(rules))]
    flagged = frame.with_columns([cond.alias(n) for n, (cond, _) in zip(names, rules)])
    failing = pl.any_horizontal(names)
    passing = flagged.filter(~failing).drop(names)
    bad = flagged.filter(failing)
    new = pl.concat_list([pl.when(pl.col(n)).then(text).otherwise(None)
                          for n, (_, text) in zip(names, rules)]).list.drop_nulls()
    reasons = pl.concat_list([pl.col(existing), new]) if existing else new
    bad = bad.with_columns(reasons.alias("reasons")).drop(names)
    return passing, bad


def with_raw(rows: pl.DataFrame, kept: pl.DataFrame, spec: TableSpec) -> pl.DataFrame:
    """Add ``raw_<col>`` to rows that passed rule 2: the raw values ``kept`` for them in the
    side table (by ``file_idx`` and ``line``), else their typed values printed back."""
    kept = kept.select("file_idx", "line", *[f"raw_{c}" for c in spec.names], pl.lit(True).alias("_kept"))
    joined = rows.join(kept, on=["file_idx", "line"], how="left", maintain_order="left")
    return joined.with_columns([
        pl.when(pl.col("_kept")).then(pl.col(f"raw_{c.name}"))
        .otherwise(_stored_expr(raw_text(c))).alias(f"raw_{c.name}") for c in spec.columns]).drop("_kept")


def _stored_expr(value: pl.Expr) -> pl.Expr:
    return _shortened(mask_expr(value))


def _shortened(value: pl.Expr) -> pl.Expr:
    return pl.when(value.str.len_chars() > STORED_CELL_CHARS).then(
        value.str.slice(0, STORED_CELL_CHARS) + "…").otherwise(value)

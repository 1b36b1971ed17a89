"""Rule 2 of CONTRACT.md, the row on its own, vectorised in polars.

``check_rows`` adds the typed, normalised value of every contract column (``<col>``
replaced in place) and a ``reasons`` list: empty when the row passes. Every reason
starts with the column it concerns and says which rule failed, so staff can fix it.
"""

from __future__ import annotations

from datetime import date

import polars as pl

from pipelines.ingest.privacy import looks_like_email, looks_like_phone, mask_expr
from pipelines.ingest.spec import ID_COLUMNS, Column, TableSpec
from pipelines.vocabulary import Vocabulary, normalise_expr

_ISO_DATE = r"^\d{4}-\d{2}-\d{2}$"
_INTEGER = r"^[+-]?\d+(\.0*)?$"


def _shown(col: str) -> pl.Expr:
    """The raw value for a reason text: identifier-looking values masked, long ones shortened."""
    value = mask_expr(pl.col(col))
    return pl.when(value.str.len_chars() > 40).then(value.str.slice(0, 37) + "...").otherwise(value)


def _quoted(col: str) -> pl.Expr:
    return pl.lit("'") + _shown(col) + pl.lit("'")


def _reason(condition: pl.Expr, *parts: pl.Expr | str) -> pl.Expr:
    text = pl.concat_str([p if isinstance(p, pl.Expr) else pl.lit(p) for p in parts])
    return pl.when(condition.fill_null(False)).then(text).otherwise(None)


def _column_rules(column: Column, vocabulary: Vocabulary) -> tuple[pl.Expr, list[pl.Expr]]:
    """The typed value of one column and its reason expressions."""
    name = column.name
    raw = pl.col(name)
    present = raw.is_not_null()
    reasons: list[pl.Expr] = []
    if column.required:
        reasons.append(_reason(~present, f"{name}: required value is missing"))
    if column.kind in ("id", "text"):
        typed = raw
        if name in ID_COLUMNS:
            reasons.append(_reason(looks_like_email(raw),
                                   f"{name}: value looks like an e-mail address (masked), use a pseudonym"))
            reasons.append(_reason(looks_like_phone(raw),
                                   f"{name}: value looks like a phone number (masked), use a pseudonym"))
    elif column.kind == "condition":
        typed = normalise_expr(raw).replace_strict(vocabulary.lookup, default=None, return_dtype=pl.String)
        reasons.append(_reason(present & typed.is_null(), f"{name}: ", _quoted(name),
                               " is not a code or alias in the condition vocabulary"))
    elif column.kind == "choice":
        cased = raw.str.to_uppercase() if column.upper else raw.str.to_lowercase()
        typed = pl.when(cased.is_in(list(column.choices))).then(cased).otherwise(None)
        reasons.append(_reason(present & typed.is_null(), f"{name}: ", _quoted(name),
                               f" is not one of {', '.join(column.choices)}"))
    elif column.kind == "date":
        parsed = raw.str.to_date("%Y-%m-%d", strict=False)
        typed = pl.when(raw.str.contains(_ISO_DATE)).then(parsed).otherwise(None)
        reasons.append(_reason(present & typed.is_null(), f"{name}: ", _quoted(name),
                               " is not a real date in the form YYYY-MM-DD"))
        # "not after the run date" depends on the day of the run: see with_run_date_rule
    elif column.kind == "int":
        as_float = raw.cast(pl.Float64, strict=False)
        is_int = raw.str.contains(_INTEGER)
        typed = pl.when(is_int).then(as_float).otherwise(None).cast(pl.Int64, strict=False)
        reasons.append(_reason(present & typed.is_null(), f"{name}: ", _quoted(name), " is not a whole number"))
        reasons.append(_reason((typed < column.low) | (typed > column.high), f"{name}: ", _shown(name),
                               f" is outside {column.low:g}..{column.high:g}"))
    elif column.kind == "number":
        as_float = raw.cast(pl.Float64, strict=False)
        typed = pl.when(as_float.is_finite()).then(as_float).otherwise(None)
        reasons.append(_reason(present & typed.is_null(), f"{name}: ", _quoted(name), " is not a number"))
        reasons.append(_reason((typed < column.low) | (typed > column.high), f"{name}: ", _shown(name),
                               f" is outside {column.low:g}..{column.high:g}"))
    else:  # pragma: no cover - spec is static
        raise ValueError(column.kind)
    return typed.alias(name), reasons


def _table_rules(spec: TableSpec) -> list[pl.Expr]:
    """Rules that tie columns of one row together (pain_scores' timepoint rules)."""
    if spec.name != "pain_scores":
        return []
    tp = pl.col("timepoint").str.to_lowercase()
    has_session = pl.col("session_id").is_not_null()
    return [
        _reason(tp.is_in(["pre", "post"]) & ~has_session,
                "session_id: required for a pre/post score"),
        _reason((tp == "followup") & has_session,
                "session_id: must be empty for a followup score (a followup belongs to no session)"),
        _reason((tp == "followup") & pl.col("recorded_on").is_null(),
                "recorded_on: required for a followup score"),
    ]


def check_rows(frame: pl.DataFrame, spec: TableSpec, vocabulary: Vocabulary) -> pl.DataFrame:
    """Type every contract column and collect the rule-2 reasons of every row, except the
    run-date rule (:func:`with_run_date_rule`), which is the only one that depends on the day."""
    absent = [c for c in spec.names if c not in frame.columns]
    frame = frame.with_columns([pl.lit(None, dtype=pl.String).alias(c) for c in absent])
    typed: list[pl.Expr] = []
    reasons: list[pl.Expr] = []
    for column in spec.columns:
        value, rules = _column_rules(column, vocabulary)
        typed.append(value)
        reasons.extend(rules)
    reasons.extend(_table_rules(spec))
    reason_list = pl.concat_list(reasons).list.drop_nulls() if reasons else pl.lit([], dtype=pl.List(pl.String))
    raw_cols = [pl.col(c).alias(f"raw_{c}") for c in spec.names]
    carried = [c for c in ("source_file", "file_idx", "_part") if c in frame.columns]
    return frame.select(pl.col("line"), *carried, *raw_cols, *typed, reason_list.alias("reasons"))


def with_run_date_rule(checked: pl.DataFrame, spec: TableSpec, today: date) -> pl.DataFrame:
    """Rule 2's "every date present ... not after the run date", added to ``reasons``."""
    rules = []
    for column in spec.columns:
        if column.kind != "date":
            continue
        name = column.name
        shown = mask_expr(pl.col(f"raw_{name}"))
        rules.append(_reason(pl.col(name) > pl.lit(today), f"{name}: ", shown,
                             f" is after the run date {today.isoformat()}"))
    if not rules:
        return checked
    late = pl.concat_list(rules).list.drop_nulls()
    return checked.with_columns(pl.concat_list([pl.col("reasons"), late]).alias("reasons"))

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
#: no contract value is longer; a longer cell rejects its row and is stored shortened
MAX_CELL_CHARS = 1000
STORED_CELL_CHARS = 200
_INTEGER = r"^[+-]?\d+(\.0*)?$"


def _shown(col: str) -> pl.Expr:
    """The raw value for a reason text: identifier-looking values masked, long ones shortened."""
    value = mask_expr(pl.col(col))
    return pl.when(value.str.len_chars() > 40).then(value.str.slice(0, 37) + "...").otherwise(value)


def _stored(col: str) -> pl.Expr:
    value = mask_expr(pl.col(col))
    return pl.when(value.str.len_chars() > STORED_CELL_CHARS).then(
        value.str.slice(0, STORED_CELL_CHARS) + "…").otherwise(value)


def _quoted(col: str) -> pl.Expr:
    return pl.lit("'") + _shown(col) + pl.lit("'")


def _reason(condition: pl.Expr, *parts: pl.Expr | str) -> tuple[pl.Expr, pl.Expr]:
    """A rule: when it fails (over typed and raw values), and its text (over raw values only).

    Texts are built only for the rows that fail (:func:`reasons_for_failures`): most rows pass,
    and formatting a message for every row would cost more than the checks themselves.
    """
    text = pl.concat_str([p if isinstance(p, pl.Expr) else pl.lit(p) for p in parts])
    return condition.fill_null(False), text


def reasons_for_failures(frame: pl.DataFrame, rules: list[tuple[pl.Expr, pl.Expr]],
                         text_columns: dict[str, str], existing: str | None = None) -> pl.DataFrame:
    """Evaluate ``rules`` over ``frame`` and put the failing rules' texts in ``reasons``.

    ``text_columns`` renames frame columns to the names the texts use (raw values);
    ``existing``: a list column of earlier reasons to extend instead of starting empty.
    """
    flags = [cond.alias(f"_f{i}") for i, (cond, _) in enumerate(rules)]
    flagged = frame.with_columns(flags)
    names = [f"_f{i}" for i in range(len(rules))]
    failing = pl.any_horizontal(names) if names else pl.lit(False)
    base = pl.col(existing) if existing else pl.lit([], dtype=pl.List(pl.String))
    ok = flagged.filter(~failing).with_columns(base.alias("reasons"))
    bad = flagged.filter(failing)
    if bad.height:
        texts = bad.select([pl.col(src).alias(dst) for src, dst in text_columns.items()] + names).select(
            pl.concat_list([pl.when(pl.col(f"_f{i}")).then(text).otherwise(None)
                            for i, (_, text) in enumerate(rules)]).list.drop_nulls().alias("_new"))
        bad = bad.with_columns(texts["_new"]).with_columns(
            (pl.concat_list([base, pl.col("_new")]) if existing else pl.col("_new")).alias("reasons")).drop("_new")
    else:
        bad = bad.with_columns(base.alias("reasons"))
    return pl.concat([ok, bad], how="vertical").drop(names)


def _column_rules(column: Column, vocabulary: Vocabulary) -> tuple[pl.Expr, list[pl.Expr]]:
    """The typed value of one column and its reason expressions."""
    name = column.name
    raw = pl.col(name)
    present = raw.is_not_null()
    reasons: list[pl.Expr] = []
    reasons.append(_reason(raw.str.len_chars() > MAX_CELL_CHARS,
                           f"{name}: value is longer than {MAX_CELL_CHARS} characters"))
    if column.required:
        reasons.append(_reason(~present, f"{name}: required value is missing"))
    if column.kind in ("id", "text"):
        # an identifier-looking id rejects its row anyway; keep only its mask, even in caches
        typed = mask_expr(raw) if name in ID_COLUMNS else raw
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
    rules: list[tuple[pl.Expr, pl.Expr]] = []
    for column in spec.columns:
        value, column_rules = _column_rules(column, vocabulary)
        typed.append(value)
        rules.extend(column_rules)
    rules.extend(_table_rules(spec))
    # flags are evaluated on the raw frame; texts later on the failing rows' raw values
    flags = [cond.alias(f"_flag{i}") for i, (cond, _) in enumerate(rules)]
    # the raw values kept for reasons and rejected rows: identifier-looking values masked,
    # overlong ones shortened (they are stored in the ingest cache and rejected_rows.csv)
    raw_cols = [_stored(c).alias(f"raw_{c}") for c in spec.names]
    carried = [c for c in ("source_file", "file_idx", "_part") if c in frame.columns]
    flagged = frame.select(pl.col("line"), *carried, *raw_cols, *typed, *flags)
    text_rules = [(pl.col(f"_flag{i}"), text) for i, (_, text) in enumerate(rules)]
    out = reasons_for_failures(flagged, text_rules, {f"raw_{c}": c for c in spec.names})
    return out.drop([f"_flag{i}" for i in range(len(rules))])


def with_run_date_rule(checked: pl.DataFrame, spec: TableSpec, today: date) -> pl.DataFrame:
    """Rule 2's "every date present ... not after the run date", added to ``reasons``."""
    rules = []
    for column in spec.columns:
        if column.kind != "date":
            continue
        name = column.name
        rules.append(_reason(pl.col(name) > pl.lit(today), f"{name}: ", _shown(f"raw_{name}"),
                             f" is after the run date {today.isoformat()}"))
    if not rules:
        return checked
    identity = {c: c for c in checked.columns if c.startswith("raw_")}
    return reasons_for_failures(checked, rules, identity, existing="reasons").drop("reasons_old", strict=False)

"""The cheaper rule 2 (``check_rows``) and key settlement (``settle_keys``) give exactly what
the code before them gave: their old versions are kept here as the oracle, and both are
compared on hand-made edge cases and random frames."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings, strategies as st
from polars.testing import assert_frame_equal, assert_series_equal

from pipelines.ingest.core import _key
from pipelines.ingest.keys import ACCEPTED, DUPLICATE, REJECTED, SUPERSEDED, _same, settle_keys
from pipelines.ingest.spec import TABLES, Column, TableSpec
from pipelines.ingest.validate import (
    MAX_CELL_CHARS, _column_rules, _non_canonical, _stored_expr, _table_rules, _typed, check_rows,
)
from pipelines.vocabulary import Vocabulary

VOCABULARY = Vocabulary.load()


# --- the code before (oracle) -------------------------------------------------------------

def _old_trimmed(expr: pl.Expr) -> pl.Expr:
    """A cell as the rules see it: trimmed, and empty as missing."""
    value = expr.str.strip_chars()
    return pl.when(value.str.len_bytes() > 0).then(value)


def _old_column_flags(frame: pl.DataFrame, column: Column, vocabulary: Vocabulary) -> pl.DataFrame:
    """Per row of ``frame`` (raw, untrimmed cells): ``typed`` value, ``fails`` (any rule of
    the column), ``keep`` (raw text not printed back by ``typed``) and ``empty``.

    Coded, numeric and date columns hold few distinct values: they are checked once per
    distinct value and the results looked up, which costs a fraction of checking every row.
    """
    name = column.name
    per_value = column.kind not in ("id", "text")
    source = frame.get_column(name).unique() if per_value else frame.get_column(name)
    checked = source.to_frame("_cell").with_columns(_old_trimmed(pl.col("_cell")).alias(name))
    checked = checked.with_columns(_typed(column, vocabulary).alias("typed"))
    typed = pl.col("typed")
    rules = _column_rules(column, typed)
    keep = _non_canonical(column, typed)
    checked = checked.select(
        "_cell", "typed", pl.any_horizontal([cond for cond, _ in rules]).alias("fails"),
        (keep.fill_null(False) if keep is not None else pl.lit(False)).alias("keep"),
        pl.col(name).is_null().alias("empty"))
    if per_value:
        checked = frame.select(pl.col(name).alias("_cell")).join(
            checked, on="_cell", how="left", nulls_equal=True, maintain_order="left")
    return checked.drop("_cell")


def old_check_rows(frame: pl.DataFrame, spec: TableSpec,
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
    flags = {c.name: _old_column_flags(frame, c, vocabulary) for c in spec.columns}
    state = pl.DataFrame([f.get_column(kind).alias(f"_{kind}_{name}")
                          for name, f in flags.items() for kind in ("fails", "keep", "empty")])
    fails = pl.any_horizontal([f"_fails_{name}" for name in flags])
    if spec.name == "pain_scores":
        # the timepoint rules read the typed timepoint and whether two cells are present
        state = state.with_columns(flags["timepoint"].get_column("typed").alias("timepoint"), *[
            pl.when(~pl.col(f"_empty_{c}")).then(pl.lit("x")).alias(c) for c in ("session_id", "recorded_on")])
        fails = fails | pl.any_horizontal([cond for cond, _ in _table_rules(spec, pl.col("timepoint"))])
    blank = pl.all_horizontal([f"_empty_{name}" for name in flags])
    if "_blank_is_no_row" in frame.columns:
        state = state.with_columns(frame.get_column("_blank_is_no_row"))
        blank = blank & pl.col("_blank_is_no_row")
    else:
        blank = pl.lit(False)
    state = state.select(blank.alias("blank"), fails.alias("fails"),
                         pl.any_horizontal([f"_keep_{name}" for name in flags]).alias("keep"))
    carried = [c for c in ("_part",) if c in frame.columns]
    blank_parts = (frame.get_column("_part").filter(state.get_column("blank")) if carried
                   else pl.Series("_part", [], pl.Int32))
    row_ok = state.select(~pl.col("blank") & ~pl.col("fails")).to_series()
    rows = pl.DataFrame([*(frame.get_column(c) for c in carried), frame.get_column("line"),
                         *(f.get_column("typed").alias(name) for name, f in flags.items())]).filter(row_ok)
    in_side = state.select(~pl.col("blank") & (pl.col("fails") | pl.col("keep"))).to_series()
    side = _old_side(frame.select(*carried, "line", *spec.names).filter(in_side), spec, vocabulary)
    return rows, side, blank_parts


def _old_side(frame: pl.DataFrame, spec: TableSpec, vocabulary: Vocabulary) -> pl.DataFrame:
    """The side table of :func:`check_rows` for the (few) rows it keeps: every rule over
    their trimmed raw cells, with texts, as rejected_rows.csv shows them."""
    frame = frame.with_columns([_old_trimmed(pl.col(c)).alias(c) for c in spec.names])
    frame = frame.with_columns([_typed(c, vocabulary).alias(f"_t_{c.name}") for c in spec.columns])
    rules: list[tuple[pl.Expr, pl.Expr]] = []
    for column in spec.columns:
        rules.extend(_column_rules(column, pl.col(f"_t_{column.name}")))
    rules.extend(_table_rules(spec))
    carried = [c for c in ("_part",) if c in frame.columns]
    flagged = frame.with_columns([cond.alias(f"_f{i}") for i, (cond, _) in enumerate(rules)])
    # texts over the stored raw values, as rejected_rows.csv shows them
    flagged = flagged.with_columns([_stored_expr(pl.col(c)).alias(c) for c in spec.names])
    return flagged.select(
        *carried, "line",
        pl.concat_list([pl.when(pl.col(f"_f{i}")).then(text).otherwise(None)
                        for i, (_, text) in enumerate(rules)]).list.drop_nulls().alias("reasons"),
        *[pl.col(c).alias(f"raw_{c}") for c in spec.names],
        *[pl.col(f"_t_{c.name}").alias(c.name) for c in spec.columns if c.kind == "date"])



def old_settle_keys(rows: pl.DataFrame, key: list[pl.Expr], content_columns: list[str],
                alive: np.ndarray | None = None, hashed: pl.Series | None = None) -> tuple[np.ndarray, pl.DataFrame]:
    """The status of every row (accepted / duplicate / superseded / rejected, as codes).

    ``rows`` passed rules 2 and 3, carries ``file_idx`` (file order) and ``line`` and is in
    that order; with ``alive`` (a mask), only those rows take part. ``key``: expressions
    whose values together are a row's key. Conflicting versions inside one file are all
    rejected; identical rows inside one file keep one representative (the last); across
    files the last file's representative is accepted and earlier ones are duplicates if
    equal, else superseded. Versions are compared on their normalised ``content_columns``,
    exactly.

    ``hashed``: the 64-bit hash of each row's key, as computed here when not given.

    Returns the status codes (aligned with ``rows``; meaningless where not ``alive``) and,
    for the rejected rows, a frame with their position ``_i`` and the ``_lines`` of their
    file that hold the key.
    """
    n = rows.height
    status = np.full(n, ACCEPTED, dtype=np.uint8)
    no_conflicts = pl.DataFrame(schema={"_i": pl.Int64, "_lines": pl.String})
    if n == 0:
        return status, no_conflicts
    key_names = [f"_k{i}" for i in range(len(key))]
    # a key seen once is accepted as it is; a hash finds the (few) shared keys cheaply, and
    # everything after compares the keys themselves (a hash collision only costs time)
    if hashed is None:
        hashed = rows.select(
            pl.struct([k.alias(name) for k, name in zip(key, key_names)]).hash().alias("_h")).to_series()
    if alive is None:
        shared = np.flatnonzero(hashed.is_duplicated().to_numpy())
    else:
        positions = np.flatnonzero(alive)
        shared = positions[hashed.gather(positions).is_duplicated().to_numpy()]
    if shared.size == 0:
        return status, no_conflicts
    dtypes = rows.schema
    sub = rows.select(pl.col("file_idx", "line", *content_columns).gather(shared),
                      *[k.gather(shared).alias(name) for k, name in zip(key, key_names)],
                      pl.lit(hashed).gather(shared).alias("_h"),
                      pl.lit(pl.Series("_i", shared, dtype=pl.Int64)))
    # rows are in file order, so a stable sort by key puts each key's rows in file, line order
    sub = sub.sort("_h", maintain_order=True)
    first = pl.int_range(pl.len()) == 0
    key_change = pl.any_horizontal([~pl.col(k).eq_missing(pl.col(k).shift()) for k in key_names])
    hash_change = (pl.col("_h") != pl.col("_h").shift()).fill_null(True)
    if sub.select((key_change & ~hash_change & ~first).any()).item():
        sub = sub.sort(key_names, maintain_order=True)
        boundary = key_change | first
    else:
        boundary = hash_change
    pos = pl.int_range(pl.len(), dtype=pl.Int64)
    same_as_previous = pl.all_horizontal([_same(c, dtypes[c], pl.col(c).shift()) for c in content_columns])
    sub = sub.with_columns(boundary.alias("_g_start")).with_columns(
        (pl.col("_g_start") | (pl.col("file_idx") != pl.col("file_idx").shift()).fill_null(True)).alias("_f_start"))
    sub = sub.with_columns(
        (~pl.col("_f_start") & ~same_as_previous).cast(pl.UInt32).cum_sum().alias("_changes"),
        pl.col("_f_start").shift(-1, fill_value=True).alias("_f_end"),
        pl.col("_g_start").shift(-1, fill_value=True).alias("_g_end"),
    )
    # a file's rows of one key conflict when any of them differs from the one before it
    sub = sub.with_columns(
        (pl.when(pl.col("_f_end")).then(pl.col("_changes")).backward_fill()
         > pl.when(pl.col("_f_start")).then(pl.col("_changes")).forward_fill()).alias("_conflict"))
    # the winner: the last representative (last row of its file) of a file without conflict
    candidate = pl.col("_f_end") & ~pl.col("_conflict")
    sub = sub.with_columns(
        pl.when(candidate).then(pos).forward_fill().alias("_last_candidate"),
        pl.when(pl.col("_g_start")).then(pos).forward_fill().alias("_g_first"))
    winner_at_end = pl.when(pl.col("_g_end")).then(pl.col("_last_candidate")).backward_fill()
    sub = sub.with_columns(
        pl.when(winner_at_end >= pl.col("_g_first")).then(winner_at_end).otherwise(pos).alias("_winner"))
    winner = pl.col("_winner")
    equal_to_winner = pl.all_horizontal([_same(c, dtypes[c], pl.col(c).gather(winner)) for c in content_columns])
    code = (
        pl.when(pl.col("_conflict")).then(pl.lit(REJECTED))
        .when(~pl.col("_f_end")).then(pl.lit(DUPLICATE))
        .when(pos == winner).then(pl.lit(ACCEPTED))
        .when(equal_to_winner).then(pl.lit(DUPLICATE))
        .otherwise(pl.lit(SUPERSEDED))
    ).cast(pl.UInt8)
    settled = sub.select("_i", code.alias("_status"), "_conflict", "line",
                         pl.col("_f_start").cum_sum().alias("_f_group"))
    status[settled["_i"].to_numpy()] = settled["_status"].to_numpy()
    conflicted = settled.filter(pl.col("_conflict"))
    if conflicted.height == 0:
        return status, no_conflicts
    lines = conflicted.group_by("_f_group").agg(
        pl.col("line").sort().cast(pl.String).str.join(", ").alias("_lines"))
    conflicts = conflicted.join(lines, on="_f_group", how="left").select("_i", "_lines")
    return status, conflicts


# --- rule 2 ---------------------------------------------------------------------------

#: cells that exercise every rule and every spelling: whitespace, empty, missing, values
#: written differently from their typed value, identifier-looking text, overlong text
EDGE_CELLS = {
    "id": ["E1", " E1 ", "E1\t", "", "   ", None, "a@b.c", " +44 20 7946 0958 ", "0123456789",
           "x" * 41, "y" * 201, "z" * (MAX_CELL_CHARS + 1), "é1", "S1"],
    "condition": ["low_back_pain", "LBP", " lbp ", "Low-Back  pain", "neck pain", "nope", "", None,
                  "a@b.c", "c" * (MAX_CELL_CHARS + 1)],
    "choice": ["pre", "PRE", " post ", "followup", "Followup", "F", "f", " m ", "x", "30-44", "chronic",
               "ACUTE", "", None, "0-17", "75+"],
    "date": ["2025-08-19", " 2025-08-19 ", "2025-02-30", "2025-2-3", "2026-12-01", "20250819", "", None,
             "0123456789012"],
    "int": ["7", "7.0", "+7", "07", "-7", "0", "1", "100", "101", "10", "180", "181", "7.5", "1e1", "", None,
            "99999999999999999999", " 12 "],
    "number": ["7", "7.0", "7.50", "-0", "0", "0.0", "10", "10.5", "11", "NaN", "inf", "1e1", "", None,
               " 3.25 ", "3.1234567891", "+3", "-1"],
}


def _cells(column) -> list[str | None]:
    return EDGE_CELLS["id" if column.kind == "text" else column.kind]


def _frame(spec, columns: dict[str, list], blank_is_no_row: list[bool] | None, parts: list[int] | None) -> pl.DataFrame:
    height = len(next(iter(columns.values())))
    frame = pl.DataFrame({name: pl.Series(values, dtype=pl.String) for name, values in columns.items()})
    frame = frame.with_columns(pl.Series("line", np.arange(2, height + 2), dtype=pl.Int64))
    if parts is not None:
        frame = frame.with_columns(pl.Series("_part", parts, dtype=pl.Int32))
    if blank_is_no_row is not None:
        frame = frame.with_columns(pl.Series("_blank_is_no_row", blank_is_no_row, dtype=pl.Boolean))
    return frame


def _assert_same_rule_2(frame: pl.DataFrame, spec) -> None:
    old = old_check_rows(frame, spec, VOCABULARY)
    new = check_rows(frame, spec, VOCABULARY)
    assert_frame_equal(new[0], old[0], check_exact=True)
    assert_frame_equal(new[1], old[1], check_exact=True)
    assert_series_equal(new[2], old[2], check_exact=True)


@pytest.mark.parametrize("table", list(TABLES))
def test_check_rows_is_unchanged_on_every_edge_cell(table):
    spec = TABLES[table]
    # each column cycles through its edge cells (different lengths, so the rows mix them)
    height = 60
    columns = {c.name: [_cells(c)[i % len(_cells(c))] for i in range(height)] for c in spec.columns}
    blank_rows = [i % 7 == 0 for i in range(height)]
    for name in columns:  # some rows all empty or missing: blank lines or rows missing everything
        for i in range(0, height, 7):
            columns[name][i] = "" if i % 2 else None
    parts = sorted(i // 9 for i in range(height))
    frame = _frame(spec, columns, blank_rows, parts)
    _assert_same_rule_2(frame, spec)
    _, new_side, blank = check_rows(frame, spec, VOCABULARY)
    assert blank.len() > 0 and new_side.filter(pl.col("reasons").list.len() > 0).height > 0
    # without the carried columns, and without a column (read as missing)
    _assert_same_rule_2(frame.drop("_part", "_blank_is_no_row"), spec)
    _assert_same_rule_2(frame.drop(spec.columns[-1].name), spec)


@pytest.mark.parametrize("table", list(TABLES))
def test_check_rows_is_unchanged_on_clean_and_empty_frames(table):
    spec = TABLES[table]
    clean = {"id": "A1", "text": "A1", "condition": "neck_pain", "choice": None, "date": "2025-08-19",
             "int": "12", "number": "3.5"}
    columns = {}
    for c in spec.columns:
        value = c.choices[0] if c.kind == "choice" else clean[c.kind]
        columns[c.name] = [value] * 5
    if table == "pain_scores":
        columns["timepoint"] = ["followup"] * 5
        columns["session_id"] = [None] * 5
    # no cell empty, failing or written differently: every flag is false everywhere
    frame = _frame(spec, columns, [True] * 5, [0, 0, 1, 1, 1])
    _assert_same_rule_2(frame, spec)
    rows, side, blank = check_rows(frame, spec, VOCABULARY)
    assert (rows.height, side.height, blank.len()) == (5, 0, 0)
    # the same with cells written differently from their typed value: kept in the side table
    differently = {"condition": " LBP ", "choice": None, "int": "12.0", "number": "3.50"}
    for c in spec.columns:
        if c.kind in differently:
            value = frame[c.name][0].upper() if c.kind == "choice" else differently[c.kind]
            frame = frame.with_columns(pl.Series(c.name, [value, *frame[c.name][1:]], dtype=pl.String))
    _assert_same_rule_2(frame, spec)
    rows, side, _ = check_rows(frame, spec, VOCABULARY)
    assert (rows.height, side.height, side["reasons"].list.len().max()) == (5, 1, 0)
    _assert_same_rule_2(frame.clear(), spec)
    _assert_same_rule_2(frame.head(0).drop("_part"), spec)


@st.composite
def _raw_frames(draw):
    table = draw(st.sampled_from(list(TABLES)))
    spec = TABLES[table]
    height = draw(st.integers(0, 25))
    text = st.text(alphabet=" \t@+-.()0123456789eEaAxLBP_", max_size=14)
    columns = {}
    for c in spec.columns:
        cell = st.one_of(st.sampled_from(_cells(c)), text, st.none())
        columns[c.name] = draw(st.lists(cell, min_size=height, max_size=height))
    blank = draw(st.one_of(st.none(), st.lists(st.booleans(), min_size=height, max_size=height)))
    parts = draw(st.one_of(st.none(), st.lists(st.integers(0, 3), min_size=height, max_size=height).map(sorted)))
    if height == 0:
        return spec, pl.DataFrame({n: pl.Series([], dtype=pl.String) for n in spec.names}).with_columns(
            pl.Series("line", [], dtype=pl.Int64))
    return spec, _frame(spec, columns, blank, parts)


@settings(max_examples=150, deadline=None)
@given(_raw_frames())
def test_check_rows_is_unchanged_on_random_frames(case):
    spec, frame = case
    _assert_same_rule_2(frame, spec)


# --- rule 4 ---------------------------------------------------------------------------

def _assert_same_settlement(rows, table, alive=None, hashed=None) -> tuple[np.ndarray, pl.DataFrame]:
    key, _ = _key(table)
    names = TABLES[table].names
    old_status, old_conflicts = old_settle_keys(rows, key, names, alive, hashed)
    new_status, new_conflicts = settle_keys(rows, key, names, alive, hashed)
    taking_part = np.ones(rows.height, dtype=bool) if alive is None else alive
    np.testing.assert_array_equal(new_status[taking_part], old_status[taking_part])
    assert_frame_equal(new_conflicts, old_conflicts, check_exact=True)
    return new_status, new_conflicts


def _scores(draw_rows: list[tuple]) -> pl.DataFrame:
    return pl.DataFrame(draw_rows, orient="row", schema={
        "file_idx": pl.Int32, "line": pl.Int64, "episode_id": pl.String, "session_id": pl.String,
        "timepoint": pl.String, "score": pl.Float64, "recorded_on": pl.Date})


def test_settle_keys_is_unchanged_on_repeated_keys_and_ties():
    from datetime import date
    d1, d2 = date(2025, 8, 19), date(2025, 8, 20)
    rows = _scores([
        (0, 2, "E1", "S1", "pre", 5.0, d1), (0, 3, "E1", "S1", "pre", 5.0, d1),      # same row twice
        (0, 4, "E1", "S2", "pre", 5.0, d1), (0, 5, "E1", "S2", "pre", 6.0, d1),      # conflict in a file
        (1, 2, "E1", "S1", "pre", 7.0, d1),                                          # supersedes
        (1, 3, "E2", None, "followup", 0.0, d2), (2, 2, "E2", None, "followup", -0.0, d2),  # -0 is not 0
        (2, 3, "E3", "S3", "post", 1.0, None), (3, 2, "E3", "S3", "post", 1.0, None),      # duplicate
        (3, 3, "E4", "S4", "pre", 2.0, d1),                                          # seen once
    ])
    status, conflicts = _assert_same_settlement(rows, "pain_scores")
    assert status.tolist() == [DUPLICATE, SUPERSEDED, REJECTED, REJECTED, ACCEPTED, SUPERSEDED, ACCEPTED,
                               DUPLICATE, ACCEPTED, ACCEPTED]
    assert conflicts.to_dict(as_series=False) == {"_i": [2, 3], "_lines": ["4, 5", "4, 5"]}
    alive = np.array([True, True, True, False, True, True, True, True, True, True])
    assert _assert_same_settlement(rows, "pain_scores", alive)[0][2] == ACCEPTED
    # every key once: nothing to settle
    assert (_assert_same_settlement(rows.tail(1), "pain_scores")[0] == ACCEPTED).all()
    _assert_same_settlement(rows.clear(), "pain_scores")
    # hashes that collide for different keys: settled on the keys themselves
    _assert_same_settlement(rows, "pain_scores", hashed=pl.Series("_h", [7] * rows.height, dtype=pl.UInt64))
    _assert_same_settlement(rows, "pain_scores", alive,
                            hashed=pl.Series("_h", np.arange(rows.height) % 2, dtype=pl.UInt64))


@st.composite
def _settle_cases(draw):
    height = draw(st.integers(0, 40))
    files = sorted(draw(st.lists(st.integers(0, 4), min_size=height, max_size=height)))
    rows = []
    for i, file_idx in enumerate(files):
        timepoint = draw(st.sampled_from(["pre", "post", "followup"]))
        rows.append((file_idx, i + 2, draw(st.sampled_from(["E1", "E2"])),
                     None if timepoint == "followup" else draw(st.sampled_from(["S1", "S2", "S3"])), timepoint,
                     draw(st.sampled_from([0.0, -0.0, 1.0, 2.5])), draw(st.sampled_from([None, 1, 2]))))
    frame = _scores([r[:6] + (None,) for r in rows]).with_columns(
        pl.Series("recorded_on", [r[6] for r in rows], dtype=pl.Int32).cast(pl.Date))
    alive = draw(st.one_of(st.none(), st.lists(st.booleans(), min_size=height, max_size=height).map(
        lambda values: np.array(values, dtype=bool))))
    collide = draw(st.one_of(st.none(), st.integers(1, 3)))
    return frame, alive, collide


@settings(max_examples=200, deadline=None)
@given(_settle_cases())
def test_settle_keys_is_unchanged_on_random_rows(case):
    rows, alive, collide = case
    hashed = None
    if collide is not None:  # few hash values: forced collisions between different keys
        hashed = pl.Series("_h", np.arange(rows.height) % collide, dtype=pl.UInt64)
    _assert_same_settlement(rows, "pain_scores", alive, hashed)
    # sessions' and episodes' one-column keys, over the same rows
    sessions = rows.select("file_idx", "line", "session_id", "episode_id", pl.lit("T1").alias("therapist_id"),
                           pl.col("recorded_on").alias("session_date"),
                           pl.col("score").cast(pl.Int64).alias("duration_min"))
    _assert_same_settlement(sessions, "sessions", alive, hashed)

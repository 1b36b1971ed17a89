"""The vectorised Kaplan-Meier (pipelines.outcomes.km) equals lifelines, value for value."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings as hsettings, strategies as st
from lifelines import KaplanMeierFitter
from lifelines.utils import median_survival_times

from pipelines.outcomes.km import km_statistics, km_table

AT = (3, 6, 10)


def lifelines_fit(durations, observed):
    return KaplanMeierFitter(alpha=0.05).fit(np.asarray(durations, float), event_observed=np.asarray(observed, bool))


def none_if_inf(value):
    value = float(value)
    return None if math.isinf(value) else value


def assert_group_matches(durations, observed, table: pl.DataFrame, row: dict):
    kmf = lifelines_fit(durations, observed)
    sf = kmf.survival_function_.iloc[:, 0]
    band = kmf.confidence_interval_
    events = kmf.event_table
    assert table["t"].to_list() == list(sf.index.astype(float))
    np.testing.assert_allclose(table["survival"].to_numpy(), sf.to_numpy(), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(table["ci_low"].to_numpy(), band.iloc[:, 0].to_numpy(), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(table["ci_high"].to_numpy(), band.iloc[:, 1].to_numpy(), rtol=1e-12, atol=1e-15)
    assert table["at_risk"].to_list() == events["at_risk"].astype(int).to_list()
    assert table["events"].to_list() == events["observed"].astype(int).to_list()
    assert table["censored"].to_list() == events["censored"].astype(int).to_list()
    bounds = median_survival_times(band)
    assert row["median"] == none_if_inf(kmf.median_survival_time_)
    assert row["median_low"] == none_if_inf(bounds.iloc[0, 0])
    assert row["median_high"] == none_if_inf(bounds.iloc[0, 1])
    expected_improved = 1.0 - kmf.survival_function_at_times(list(AT)).to_numpy()
    for s, value in zip(AT, expected_improved):
        assert row[f"improved_by_{s}"] == pytest.approx(value, rel=1e-12, abs=1e-15)


def frame_of(groups: dict[str, tuple[list[float], list[bool]]]) -> pl.DataFrame:
    return pl.DataFrame([
        {"g": g, "sessions_to_response": d, "response_observed": o}
        for g, (durations, observed) in groups.items() for d, o in zip(durations, observed)
    ], schema={"g": pl.String, "sessions_to_response": pl.Int64, "response_observed": pl.Boolean})


EDGE_CASES = {
    "one event": ([4], [True]),
    "one censored": ([4], [False]),
    "all censored": ([1, 2, 2, 7], [False] * 4),
    "all respond": ([1, 1, 2, 3, 3, 3], [True] * 6),
    "ends censored above half": ([1, 5, 5, 5, 9], [True, False, False, False, False]),
    "ties of events and censorings": ([2, 2, 2, 3, 3, 5, 5, 8, 12], [True, False, True, True, False, True, True, False, True]),
    "duration zero": ([0, 0, 1, 4], [True, False, True, False]),
    "reaches exactly one half": ([1, 2, 3, 4], [True, True, False, False]),
}


def test_edge_cases_equal_lifelines():
    frame = frame_of(EDGE_CASES)
    table = km_table(frame, ["g"])
    statistics = {r["g"]: r for r in km_statistics(frame, ["g"], AT).iter_rows(named=True)}
    assert set(statistics) == set(EDGE_CASES)
    for name, (durations, observed) in EDGE_CASES.items():
        assert_group_matches(durations, observed, table.filter(pl.col("g") == name), statistics[name])


def test_hand_worked_curve():
    # durations 2, 2(censored), 3, 5(censored), 6 : S(2) = 4/5, S(3) = 4/5 * 2/3, S(6) = 0
    frame = frame_of({"a": ([2, 2, 3, 5, 6], [True, False, True, False, True])})
    table = km_table(frame, ["g"])
    assert table["t"].to_list() == [0.0, 2.0, 3.0, 5.0, 6.0]
    assert table["at_risk"].to_list() == [5, 5, 3, 2, 1]
    np.testing.assert_allclose(table["survival"].to_numpy(), [1, 0.8, 0.8 * 2 / 3, 0.8 * 2 / 3, 0.0])
    row = km_statistics(frame, ["g"], AT).row(0, named=True)
    assert row["median"] == 6.0  # S(3) = S(5) = 0.533 is still above one half; S(6) = 0
    assert row["improved_by_3"] == pytest.approx(1 - 0.8 * 2 / 3)
    assert row["improved_by_6"] == pytest.approx(1.0)
    assert row["improved_by_10"] == pytest.approx(1.0)


def test_no_grouping_column():
    durations, observed = EDGE_CASES["ties of events and censorings"]
    frame = frame_of({"x": (durations, observed)}).drop("g")
    table = km_table(frame, [])
    assert table.columns == ["t", "at_risk", "events", "censored", "survival", "ci_low", "ci_high"]
    assert_group_matches(durations, observed, table, km_statistics(frame, [], AT).row(0, named=True))


def test_two_keys_with_a_missing_value():
    rng = np.random.default_rng(3)
    rows = []
    for clinic in ("C1", "C2", None):
        for condition in ("neck", "back"):
            for _ in range(int(rng.integers(1, 40))):
                rows.append({"clinic": clinic, "condition": condition, "sessions_to_response": int(rng.integers(1, 14)),
                             "response_observed": bool(rng.random() < 0.5)})
    frame = pl.DataFrame(rows)
    table = km_table(frame, ["clinic", "condition"])
    statistics = km_statistics(frame, ["clinic", "condition"], AT)
    assert statistics.height == 6
    for row in statistics.iter_rows(named=True):
        match = (pl.col("clinic").eq_missing(row["clinic"])) & (pl.col("condition") == row["condition"])
        group = frame.filter(match)
        assert_group_matches(group["sessions_to_response"].to_list(), group["response_observed"].to_list(),
                             table.filter(match), row)


groups_strategy = st.dictionaries(
    st.sampled_from(["a", "b", "c", "d"]),
    st.lists(st.tuples(st.integers(1, 15), st.booleans()), min_size=1, max_size=60),
    min_size=1,
)


@hsettings(max_examples=60, deadline=None)
@given(groups_strategy)
def test_random_groups_equal_lifelines(groups):
    data = {g: ([d for d, _ in pairs], [o for _, o in pairs]) for g, pairs in groups.items()}
    frame = frame_of(data)
    table = km_table(frame, ["g"])
    statistics = {r["g"]: r for r in km_statistics(frame, ["g"], AT).iter_rows(named=True)}
    for name, (durations, observed) in data.items():
        assert_group_matches(durations, observed, table.filter(pl.col("g") == name), statistics[name])

"""Small-cell suppression (METRICS.md "Publishing"): property-based and hand-worked tests."""

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.reports.publish import COMPLEMENTARY, PRIMARY, SHOWN, publish_summary, suppress_parts


def feasible_values(values, states, k):
    """Brute force, independent of the implementation: every value each hidden cell can take
    given the shown parts, the total, and what its mark reveals (<k: 1..k-1; —: >= k)."""
    total = sum(values)
    hidden = [i for i, s in enumerate(states) if s != SHOWN]
    remaining = total - sum(v for v, s in zip(values, states) if s == SHOWN)
    allowed = {i: range(1, k) if states[i] == PRIMARY else range(k, total + 1) for i in hidden}
    seen = {}
    for i in hidden:
        sums = {0}  # every sum the other hidden cells can make (subset-sum over their ranges)
        for j in hidden:
            if j != i:
                sums = {a + b for a in sums for b in allowed[j] if a + b <= remaining}
        seen[i] = {v for v in allowed[i] if remaining - v in sums}
    return seen


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=30), min_size=1, max_size=5), st.integers(min_value=3, max_value=6))
def test_no_masked_count_can_be_recomputed(values, k):
    result = suppress_parts(values, k)
    cells = result.parts
    states = [c.state for c in cells]
    # every count 1..k-1 is hidden; zeros are never hidden; shown cells show their value
    for v, c in zip(values, cells):
        if 1 <= v < k:
            assert c.state == PRIMARY and c.text(k) == f"<{k}"
        if v == 0:
            assert c.state == SHOWN
        if c.state == SHOWN:
            assert c.text(k) == f"{v:,}"
    if result.total.state == SHOWN and any(s == PRIMARY for s in states):
        assert result.total.text(k) == f"{sum(values):,}"
        for i, possible in feasible_values(values, states, k).items():
            assert values[i] in possible
            assert len(possible) >= 2, (values, states, i, possible)


def test_hand_worked_cases():
    texts = lambda vs: [c.text(11) for c in suppress_parts(vs, 11).parts]  # noqa: E731
    # one small cell beside a total: the next smallest part is hidden too
    assert texts([5, 30, 40]) == ["<11", "—", "40"]
    # two small cells 5 and 6 sum to 11: each could be 1..10, so both hidden is enough
    assert texts([5, 6, 100]) == ["<11", "<11", "100"]
    # 10 and 10: shown total forces both to be 10 -> another part must be hidden
    assert texts([10, 10, 100, 200]) == ["<11", "<11", "—", "200"]
    assert texts([0, 0, 50]) == ["0", "0", "50"]
    # 1 + 1 beside a total of 12... fine; but 1 + 1 + 0 with total 2 < 11: the total is <11 itself
    assert suppress_parts([1, 1, 0], 11).total.text(11) == "<11"
    # 5 + 5 beside 11 + 11 (total 32): the hidden pair sums to 10, each could be 1..9
    assert texts([5, 5, 11, 11]) == ["<11", "<11", "11", "11"]


def test_publish_summary_blanks_statistics_and_masks_counts():
    summary = pl.DataFrame({
        "condition": ["a", "b", "c", "ALL"],
        "n_episodes": [12, 40, 60, 112],
        "n_analysed": [7, 35, 50, 92],
        "mean_change": [2.0, 1.5, 1.0, 1.3],
        "suppressed": [True, False, False, False],
    })
    for column in ("baseline_mean", "final_mean", "mean_change_ci_low", "mean_change_ci_high", "median_change",
                   "effect_size_dz", "p_value", "q_value", "responder_30_rate", "responder_30_ci_low",
                   "responder_30_ci_high", "responder_50_rate", "responder_50_ci_low", "responder_50_ci_high",
                   "median_sessions_to_response", "median_sessions_ci_low", "median_sessions_ci_high",
                   "improved_by_session_3", "improved_by_session_6", "improved_by_session_10",
                   "mean_sessions_attended", "adherence", "immediate_relief_mean"):
        summary = summary.with_columns(pl.lit(0.5).alias(column))
    published = publish_summary(summary, 11)
    rows = {r["condition"]: r for r in published.iter_rows(named=True)}
    assert rows["a"]["mean_change"] is None and rows["a"]["responder_30_rate"] is None
    # b's n is hidden (complementary): its rate and interval would give n away, so they go too
    assert rows["b"]["mean_change"] is None and rows["b"]["responder_30_ci_low"] is None
    assert rows["c"]["mean_change"] == 1.0
    assert [rows[c]["n_analysed"] for c in ("a", "b", "c", "ALL")] == ["<11", "—", "50", "92"]
    # 12 is not small; nothing hidden in n_episodes
    assert [rows[c]["n_episodes"] for c in ("a", "b", "c", "ALL")] == ["12", "40", "60", "112"]

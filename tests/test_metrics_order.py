"""Shortcuts that rely on the order of scored_sessions' rows give the same numbers when a
caller passes the rows in another order (they check the order and fall back)."""

from __future__ import annotations

from datetime import date

import polars as pl

from pipelines.outcomes.metrics import _last_k_by_date, episode_outcomes_from, outcome_observations, scored_sessions


def _tables(tmp_path):
    from pipelines.ingest import ingest_folder
    from pipelines.synth import generate

    generate(200, 5, tmp_path / "raw")
    result = ingest_folder(tmp_path / "raw", today=date(2026, 11, 27))
    return result.table("episodes"), result.table("sessions"), result.table("pain_scores")


def test_observations_and_outcomes_do_not_depend_on_row_order(tmp_path):
    ep, se, ps = _tables(tmp_path)
    as_of = date(2026, 11, 22)
    scored = scored_sessions(ep, se, ps, as_of)
    shuffled = scored.sample(fraction=1.0, shuffle=True, seed=7)
    assert not shuffled.equals(scored)
    assert outcome_observations(shuffled, ps, ep, as_of).equals(outcome_observations(scored, ps, ep, as_of))
    assert episode_outcomes_from(ep, shuffled, ps, as_of).equals(episode_outcomes_from(ep, scored, ps, as_of))


def test_last_k_by_date_by_hand():
    d1, d2 = date(2026, 1, 1), date(2026, 1, 2)
    scored = pl.DataFrame({"episode_id": ["E1", "E1", "E1", "E2", "E2"], "session_date": [d1, d1, d2, d1, d2],
                           "k": [1, 2, 3, 1, 2]})
    expected = [("E1", d1, 2), ("E1", d2, 3), ("E2", d1, 1), ("E2", d2, 2)]

    def rows(frame):
        return sorted(_last_k_by_date(frame.lazy()).collect().iter_rows())

    assert rows(scored) == expected
    assert rows(scored.reverse()) == expected  # out of order: grouped instead
    # same date twice in one episode, but k out of order within it
    assert rows(scored.with_columns(pl.Series("k", [2, 1, 3, 1, 2]))) == expected

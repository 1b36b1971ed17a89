"""The closed-form Wilson interval equals scipy's binomtest(k, n).proportion_ci(method="wilson")."""

import pytest
from scipy import stats as sps

from pipelines.outcomes.stats import wilson_interval


@pytest.mark.parametrize("n", [1, 2, 3, 7, 10, 11, 49, 250, 10_001])
def test_wilson_interval_equals_scipy(n):
    for k in sorted({0, 1, n // 3, n // 2, n - 1, n}):
        share, low, high = wilson_interval(k, n)
        ci = sps.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert share == k / n
        assert low == pytest.approx(ci.low, rel=1e-14, abs=1e-15)
        assert high == pytest.approx(ci.high, rel=1e-14, abs=1e-15)


def test_wilson_hand_worked():
    # k = 7, n = 10, z = 1.959964: centre (14 + z^2) / (2 (10 + z^2)) = 0.6697, half-width 0.2515
    share, low, high = wilson_interval(7, 10)
    assert share == 0.7
    assert low == pytest.approx(0.3968, abs=1e-4)
    assert high == pytest.approx(0.8922, abs=1e-4)


def test_wilson_empty():
    assert wilson_interval(0, 0) == (None, None, None)

"""The one binary search: largest/smallest whole number meeting a monotone condition."""

from hypothesis import given
from hypothesis import strategies as st

from capcalc.core.search import largest_true, smallest_true


@given(low=st.integers(-50, 50), span=st.integers(0, 200), cut=st.integers(-100, 300))
def test_largest_true_matches_a_scan(low, span, cut):
    high = low + span
    expected = max((n for n in range(low, high + 1) if n <= cut), default=low - 1)
    assert largest_true(lambda n: n <= cut, low, high) == expected


@given(low=st.integers(-50, 50), span=st.integers(0, 200), cut=st.integers(-100, 300))
def test_smallest_true_matches_a_scan(low, span, cut):
    high = low + span
    expected = min((n for n in range(low, high + 1) if n >= cut), default=high)
    assert smallest_true(lambda n: n >= cut, low, high) == expected

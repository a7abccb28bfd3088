"""Binary search over whole numbers, the one copy every module uses."""

from __future__ import annotations

from collections.abc import Callable


def largest_true(ok: Callable[[int], bool], low: int, high: int) -> int:
    """The largest n in [low, high] with ok(n), for ok true up to some n and false
    after it; ``low - 1`` when ok(low) is already false."""
    best = low - 1
    while low <= high:
        mid = (low + high) // 2
        if ok(mid):
            best, low = mid, mid + 1
        else:
            high = mid - 1
    return best


def smallest_true(ok: Callable[[int], bool], low: int, high: int) -> int:
    """The smallest n in [low, high] with ok(n), for ok false up to some n and true
    after it; ``high`` when none is (the caller's upper limit stands)."""
    while low < high:
        mid = (low + high) // 2
        if ok(mid):
            high = mid
        else:
            low = mid + 1
    return low

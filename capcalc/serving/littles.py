"""Little's law: concurrency = throughput x latency (N = X * L).

For any stable system in steady state, the average number of requests (or
tokens) in flight equals the rate at which they arrive times the average time
each spends inside. It holds for requests (X in requests/s, L the end-to-end
latency) and for tokens (X in tokens/s, L the time a token's slot is held).
Given any two of the three, the third follows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from capcalc.core.errors import CapcalcError

#: relative disagreement allowed when all three are given
CONSISTENCY_TOLERANCE = 0.01


@dataclass(frozen=True)
class LittlesResult:
    concurrency: float
    throughput_per_s: float
    latency_s: float
    unit: str  # what is counted: "requests" or "tokens"
    solved_for: str  # "concurrency", "throughput", "latency", or "none" (all three given and consistent)


def littles_law(
    concurrency: float | None = None,
    throughput_per_s: float | None = None,
    latency_s: float | None = None,
    unit: str = "requests",
) -> LittlesResult:
    """Solve N = X * L for whichever of the three is missing."""
    given = {"concurrency": concurrency, "throughput_per_s": throughput_per_s, "latency_s": latency_s}
    for name, value in given.items():
        if value is not None and not value > 0:
            raise CapcalcError(f"{name} must be positive, got {value:g}", parameter=name)
        if value is not None and not math.isfinite(value):
            raise CapcalcError(f"{name} must be finite, got {value:g}", parameter=name)
    missing = [name for name, value in given.items() if value is None]
    if len(missing) > 1:
        raise CapcalcError(
            "give two of concurrency, throughput_per_s and latency_s (Little's law: N = X x L)",
            parameter=tuple(given),
        )
    if not missing:
        implied = throughput_per_s * latency_s
        if abs(implied - concurrency) > CONSISTENCY_TOLERANCE * max(implied, concurrency):
            raise CapcalcError(
                f"inconsistent: throughput x latency = {implied:g} but concurrency is {concurrency:g}; "
                "give only two of the three",
                parameter="concurrency",
            )
        return LittlesResult(concurrency, throughput_per_s, latency_s, unit, "none")
    if missing == ["concurrency"]:
        concurrency = throughput_per_s * latency_s
    elif missing == ["throughput_per_s"]:
        throughput_per_s = concurrency / latency_s
    else:
        latency_s = concurrency / throughput_per_s
    solved_value = {"concurrency": concurrency, "throughput_per_s": throughput_per_s, "latency_s": latency_s}[
        missing[0]
    ]
    solved = {"throughput_per_s": "throughput", "latency_s": "latency"}.get(missing[0], missing[0])
    if not (math.isfinite(solved_value) and solved_value > 0):
        raise CapcalcError(
            f"the {solved} implied, {solved_value:g}, is outside what a float holds: the inputs are too far apart",
            parameter=missing[0],
        )
    return LittlesResult(concurrency, throughput_per_s, latency_s, unit, solved)

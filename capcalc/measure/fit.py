"""Least-squares fit of the latency model's efficiency parameters to measured points.

The unknowns are the named parameters of :class:`capcalc.perf.efficiency.Efficiency`
(weight and KV bandwidth efficiency, prefill FLOP efficiency and its half-efficiency
token count, per-layer, per-MoE-layer and per-step overhead). For measured times t_i and the
latency model's predictions p_i(theta) the fit minimises the sum of squared
*relative* errors

    S(theta) = sum_i ((p_i(theta) - t_i) / t_i)^2

so a 5 ms step and a 500 ms prefill weigh the same. The prediction is treated as a
black box (the latency module's own functions), so the fit always calibrates the
model that later predictions use. Method: Levenberg-Marquardt in log-parameter space
(keeps every parameter positive), forward-difference Jacobian, the damped normal
equations (J^T J + lambda diag(J^T J)) delta = -J^T r solved by Gaussian elimination
(one row per fitted parameter, at most 8 x 8 for the eight of
:data:`capcalc.measure.calibrate.FITTED`: no numpy needed). Each parameter is clamped to
its bounds (fractions to (0, 1]). A parameter the points do not constrain (no prefill points: the prefill
efficiency) keeps its starting value.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass


def solve(matrix: list[list[float]], rhs: list[float]) -> list[float]:
    """x with matrix @ x = rhs, by Gaussian elimination with partial pivoting."""
    n = len(rhs)
    a = [list(row) + [b] for row, b in zip(matrix, rhs, strict=True)]
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(a[r][col]))
        if abs(a[pivot][col]) < 1e-300:  # zero to double precision (smallest normal: 2.2e-308)
            raise ZeroDivisionError("singular system")
        a[col], a[pivot] = a[pivot], a[col]
        for r in range(col + 1, n):
            f = a[r][col] / a[col][col]
            if f:
                for c in range(col, n + 1):
                    a[r][c] -= f * a[col][c]
    x = [0.0] * n
    for r in range(n - 1, -1, -1):
        x[r] = (a[r][n] - sum(a[r][c] * x[c] for c in range(r + 1, n))) / a[r][r]
    return x


@dataclass(frozen=True)
class FitResult:
    values: list[float]
    cost_before: float  # sum of squared relative errors at the start
    cost_after: float


def least_squares(
    residuals: Callable[[Sequence[float]], Sequence[float]],
    start: Sequence[float],
    lower: Sequence[float],
    upper: Sequence[float],
    iterations: int = 100,  # a safety cap on Jacobians; convergence (below) normally stops first
) -> FitResult:
    """Minimise sum(residuals(x)^2) over lower <= x <= upper (all > 0), from ``start``."""

    def clamp(u):
        return [min(max(math.exp(ui), lo), hi) for ui, lo, hi in zip(u, lower, upper, strict=True)]

    def cost_of(r):
        return sum(v * v for v in r)

    u = [math.log(min(max(x, lo), hi)) for x, lo, hi in zip(start, lower, upper, strict=True)]
    r = list(residuals(clamp(u)))
    cost = first = cost_of(r)
    # algorithm settings, not physics:
    # initial damping 1e-2: close to Gauss-Newton, since the start (shipped defaults) is near
    lam, n = 1e-2, len(u)
    for _ in range(iterations):
        # forward-difference step in u = log(value), i.e. a relative change of 1e-6: far above
        # the ~1e-16 rounding of a prediction, far below the scale on which its slope changes
        step = 1e-6
        columns = []
        for j in range(n):
            shifted = list(u)
            shifted[j] += step
            rj = residuals(clamp(shifted))
            columns.append([(a - b) / step for a, b in zip(rj, r, strict=True)])
        jtj = [
            [sum(ci * cj for ci, cj in zip(columns[i], columns[j], strict=True)) for j in range(n)]
            for i in range(n)
        ]
        jtr = [sum(ci * ri for ci, ri in zip(columns[i], r, strict=True)) for i in range(n)]
        improved = False
        # at damping 1e12 a step is the gradient x ~1e-12: nothing left to try, stop
        while lam < 1e12:
            damped = [
                # + 1e-12: a parameter with no effect (zero diagonal) still gets damping
                [jtj[i][j] + (lam * (jtj[i][i] + 1e-12) if i == j else 0.0) for j in range(n)]
                for i in range(n)
            ]
            try:
                delta = solve(damped, [-g for g in jtr])
            except ZeroDivisionError:
                lam *= 10  # singular even with damping: raise it faster than on a rejected step
                continue
            trial = [ui + di for ui, di in zip(u, delta, strict=True)]
            # keep u inside the box so that a clamped parameter can come back
            trial = [
                min(max(t, math.log(lo)), math.log(hi)) for t, lo, hi in zip(trial, lower, upper, strict=True)
            ]
            r_trial = list(residuals(clamp(trial)))
            cost_trial = cost_of(r_trial)
            if cost_trial < cost:
                gain = cost - cost_trial
                u, r, cost = trial, r_trial, cost_trial
                # accepted: towards Gauss-Newton, by a factor below the 4 of a rejection so
                # that damping settles instead of swinging (Marquardt used 10 both ways);
                # the floor 1e-9 keeps it from underflowing to an undamped, maybe singular, solve
                lam = max(lam / 3, 1e-9)
                improved = True
                break
            lam *= 4  # rejected: towards gradient descent with a shorter step
        # converged when a step gains less than 1e-9 of the sum: repeated timings differ by
        # far more than that, so a smaller gain is noise (1e-30: a sum of exactly 0 stops)
        if not improved or gain <= 1e-9 * max(cost, 1e-30):
            break
    return FitResult(values=clamp(u), cost_before=first, cost_after=cost)


def median_abs_pct(errors: Sequence[float]) -> float | None:
    """Median of |error| in percent (None for no points)."""
    return statistics.median(abs(e) for e in errors) if errors else None

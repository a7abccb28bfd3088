"""Fit each engine's shipped serving defaults on the served_dev rows (the values then go
into capcalc/serving/engines.py ENGINE_EFFICIENCY / FIXED_COSTS; docs/latency.md says so).

    PYTHONPATH=$PWD python benchmarks/fit_engine_defaults.py ENGINE [CSV] [--every N]
        [--rounds R] [--evaluations E] [--parameters NAME,NAME...]

Fits on every N-th expressible aggregated row of the engine (all GPUs and models together,
so the values are the engine's, not one deployment's).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import served_validation as sv  # noqa: E402

from capcalc.serving.calibrate import fit_serving  # noqa: E402
from capcalc.sources.registry import Registry  # noqa: E402

#: fitted per engine; output_spread is a property of the benchmark, fitted per engine to see
#: whether the engines agree on it (docs/validation.md)
PARAMETERS = (
    "bandwidth_scale",
    "flops_scale",
    "low_precision_flops_scale",
    "expert_flops_ratio",
    "layer_overhead_s",
    "seq_layer_overhead_s",
    "moe_layer_overhead_s",
    "allreduce_latency_per_rank_s",
    "frontend_s",
    "output_spread",
)
#: |log error| weights of TTFT and TPOT: TPOT's target is 2.5x tighter
WEIGHTS = (1.0, 2.0)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("engine")
    ap.add_argument("csv", nargs="?", default=str(sv.DEFAULT_CSV))
    ap.add_argument("--every", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--evaluations", type=int, default=7)
    ap.add_argument(
        "--parameters",
        default=",".join(PARAMETERS),
        help="comma-separated names to fit, the others kept at the shipped defaults",
    )
    args = ap.parse_args()
    reg = Registry.load()
    with open(args.csv, newline="") as f:
        raw = [r for r in csv.DictReader(f) if r["backend"] == args.engine]
    rows = [x for x in (sv.map_row(r, reg) for r in raw) if not isinstance(x, str)]
    points = []
    for row in rows[:: args.every]:
        try:
            sv.predict_point(row.point, sv.serving_defaults(row.point))
        except sv.CapcalcError:
            continue
        points.append(row.point)
    names = tuple(n.strip() for n in args.parameters.split(",") if n.strip())
    fit = fit_serving(
        points, parameters=names, rounds=args.rounds, evaluations=args.evaluations, weights=WEIGHTS
    )
    print(args.engine, len(points), "points; loss", round(fit.loss_before, 4), "->", round(fit.loss_after, 4))
    for k, v in fit.values.items():
        print(f"  {k} = {v:.6g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

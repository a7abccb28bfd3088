"""Validate the serving model (capcalc.serving.engine) against real served runs.

    PYTHONPATH=$PWD python benchmarks/served_validation.py [CSV] [--engine E] [--no-cv] [--worst N] [--dump F]

CSV defaults to ../shared/validation/served_dev.csv relative to the repository root
(its README.md says where the rows come from: NVIDIA aiconfigurator's silicon_sample.csv).
Each aggregated row is mapped to a model profile, a GPU profile, an engine, a precision,
tp, ISL/OSL and the benchmark's concurrency, predicted with the shipped defaults, and
compared on mean TTFT, mean TPOT and output tokens/s per GPU, the last derived from
TTFT and TPOT with the same definition for both sides:

    tokens/s/GPU = C x OSL / (TTFT + (OSL - 1) x TPOT) / GPUs

Then cross-validation: fit the serving parameters (capcalc.serving.calibrate.fit_serving)
on alternate rows of each (engine, GPU, model) group and predict the others.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import statistics
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, replace
from pathlib import Path

from capcalc.core.errors import CapcalcError
from capcalc.serving.calibrate import ServedPoint, fit_serving, predict_point, serving_defaults  # noqa: F401
from capcalc.serving.engine import Replica
from capcalc.sources.benchresults import served_csv_run
from capcalc.sources.registry import Registry
from capcalc.sources.served import run_workload

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CSV = ROOT / ".." / "shared" / "validation" / "served_dev.csv"

GPUS = {"h100_sxm": "h100-sxm", "b200_sxm": "b200"}
#: checkpoints whose architecture is that of a profile (same config.json shapes)
SAME_ARCHITECTURE = {
    "deepseek-ai/DeepSeek-R1": "deepseek-v3",
    "nvidia/DeepSeek-R1-NVFP4": "deepseek-v3",
    "nvidia/DeepSeek-V3.1-NVFP4": "deepseek-v3",
    "nvidia/Qwen3-32B-NVFP4": "qwen3-32b",
}
#: NVFP4 stores 4-bit values with one fp8 scale per 16: 4.5 bits per weight, which capcalc's
#: int4 width 4 + 20/g gives at g = 40
NVFP4_GROUP = 40


#: what the cross-validation fits per (engine, GPU, model) group: the decode stream, the
#: prefill rate, the per-layer fixed cost, the per-request cost, the per-sequence cost and the
#: fp8/fp4 products' share (the last two added 2026-12-03: held-out TTFT / TPOT mean |error|
#: 30.0 / 12.8 -> 28.6 / 12.0 %, the run about 1.5x as long)
CV_PARAMETERS = (
    "bandwidth_scale",
    "flops_scale",
    "layer_overhead_s",
    "frontend_s",
    "seq_layer_overhead_s",
    "low_precision_flops_scale",
)


@dataclass
class Row:
    id: str
    engine: str
    gpu: str
    model: str
    precision: str
    point: ServedPoint


def _int(x: str) -> int:
    return int(x) if x not in ("", None) else 0


def map_row(r: dict, registry: Registry) -> Row | str:
    """The row as a served point, or why it cannot be expressed."""
    if r["mode"] != "agg":
        return "disaggregated prefill/decode workers (not modelled)"
    gpu_name = GPUS.get(r["system"])
    if gpu_name is None:
        return f"no GPU profile for {r['system']}"
    path = r["model_path"]
    name = SAME_ARCHITECTURE.get(path)
    model = registry.model(name) if name else registry.find_model(path)
    if model is None:
        return f"no model profile ({path.split('/')[-1]})"
    if _int(r["attention_dp_size"]) > 1:
        return "attention data parallel (attention_dp_size > 1)"
    if _int(r["tp_size"]) > 8:
        return "tp > 8: spans nodes, whose links the GPU profile does not describe"
    if _int(r["pp_size"]) > 1:
        return "pipeline parallel"
    m = re.search(r"silicon_concurrency=(\d+)", r["silicon_data_source"])
    if not m:
        return "no concurrency in silicon_data_source"
    conc = int(m.group(1))
    per_engine = _int(r["batch_size"])
    if per_engine and conc > per_engine and conc % per_engine == 0:
        # the benchmark's clients were spread over conc / batch_size engines: replicas when the
        # row says attention_dp_size 1 (their TTFTs show no queue at conc), else attention-DP
        # ranks the row does not record (TensorRT-LLM 1.3 rows: conc = batch_size x tp)
        if r["attention_dp_size"] != "1":
            return "concurrency a multiple of batch_size, attention_dp_size not recorded: ranks or replicas unknown"
        conc = per_engine
    precision = r["precision"] or "bf16"
    gemm = r["gemm_quant_mode"]
    group = 128
    compute = "auto"
    kv = "auto"
    if precision == "bf16":
        weight = "auto" if model.native_dtype in ("bf16", "fp16") else "bf16"
    elif precision in ("fp8", "fp4") and model.native_dtype == "mxfp4":
        # gpt-oss ships MXFP4 experts; "fp8" there is the activation/GEMM mode (W4A8)
        weight, kv = "mxfp4", "fp8"
    elif precision == "fp8":
        weight, kv = "fp8", "fp8"
    elif precision == "fp4" and gemm == "nvfp4":
        weight, group, kv, compute = "int4", NVFP4_GROUP, "fp8", "fp4"
    else:
        return f"precision {precision}/{gemm} not expressible"
    gpu = registry.gpu(gpu_name)
    tp = _int(r["tp_size"]) or 1
    replica = Replica(
        model, gpu, tp=tp, weight_dtype=weight, kv_dtype=kv, compute_dtype=compute, group_size=group
    )
    try:
        # the benchmark's own workload: the row read as `capcalc calibrate` reads it (lengths
        # spread and requests per client as the harness sent them, InferenceX's above all)
        run = served_csv_run(r)
        if run.num_requests and run.concurrency != conc:  # one replica's clients send their share
            run = replace(run, num_requests=run.num_requests * conc // run.concurrency)
        wl = run_workload(replace(run, concurrency=conc))
        settings = dict(run.engine_settings)
    except CapcalcError as e:
        return str(e)
    point = ServedPoint(
        replica=replica,
        workload=wl,
        engine=r["backend"],
        # TensorRT-LLM without chunked context needs a prompt and the running decodes in one
        # step's max_num_tokens; the measured TTFTs show no serialisation at ISL 8192, so these
        # deployments were configured with room for both
        max_num_batched_tokens=settings.pop("max_num_batched_tokens", None)
        or (max(8192, int(r["isl"]) + conc) if r["backend"] == "trtllm" else None),
        max_num_seqs=settings.pop("max_num_seqs", None),
        # what InferenceX's launcher set (read with the row): SGLang's poll interval,
        # TensorRT-LLM's batch waiting
        engine_settings=settings,
        ttft_s=float(r["silicon_ttft_ms"]) / 1e3,
        tpot_s=float(r["silicon_tpot_ms"]) / 1e3,
    )
    return Row(r["id"], r["backend"], gpu_name, model.name, precision, point)


def tokens_per_gpu(p: ServedPoint, ttft: float, tpot: float) -> float:
    w = p.workload
    return w.concurrency * w.output_tokens / (ttft + (w.output_tokens - 1) * tpot) / p.replica.tp


def errors(p: ServedPoint, ttft: float, tpot: float) -> tuple[float, float, float]:
    """Signed relative errors (predicted / measured - 1) of TTFT, TPOT, tokens/s/GPU."""
    tps_m = tokens_per_gpu(p, p.ttft_s, p.tpot_s)
    tps_p = tokens_per_gpu(p, ttft, tpot)
    return ttft / p.ttft_s - 1, tpot / p.tpot_s - 1, tps_p / tps_m - 1


def summary(errs: list[tuple[float, float, float]]) -> str:
    def stat(i):
        a = [abs(e[i]) * 100 for e in errs]
        s = [e[i] * 100 for e in errs]
        return f"{statistics.median(a):5.1f} {statistics.mean(a):5.1f} {statistics.median(s):+6.1f}"

    return f"{len(errs):5d} | {stat(0)} | {stat(1)} | {stat(2)}"


HEADER = (
    "group                                    |  rows | TTFT med  mean  bias | TPOT med  mean  bias |"
    " tok/s/GPU med mean bias\n" + "-" * 120
)


def table(title: str, rows: list[Row], errs: dict[str, tuple]) -> list[str]:
    out = [f"\n{title}", HEADER]
    out.append(f"{'all':40s} | " + summary([errs[r.id] for r in rows]))
    for key in ("engine", "gpu", "model", "concurrency"):
        groups = defaultdict(list)
        for r in rows:
            k = r.point.workload.concurrency if key == "concurrency" else getattr(r, key)
            groups[k].append(errs[r.id])
        for k in sorted(groups):
            out.append(f"{key + ' ' + str(k):40s} | " + summary(groups[k]))
    eg = defaultdict(list)
    for r in rows:
        eg[(r.engine, r.gpu, r.model)].append(errs[r.id])
    for k in sorted(eg):
        out.append(f"{'/'.join(k):40s} | " + summary(eg[k]))
    return out


def worst(rows: list[Row], errs: dict[str, tuple], preds: dict[str, tuple], n: int) -> list[str]:
    """The ``n`` rows with the largest |TTFT error| + |TPOT error|, each with the points it adds
    to its engine's mean |error| (|error| / the engine's row count): where the means come from."""
    per_engine = Counter(r.engine for r in rows)
    ranked = sorted(rows, key=lambda r: abs(errs[r.id][0]) + abs(errs[r.id][1]), reverse=True)[:n]
    out = [
        "\nLargest errors (TTFT, TPOT measured -> predicted ms; +pts: added to the engine's mean |error|)",
    ]
    for r in ranked:
        w, (et, ep, _) = r.point.workload, errs[r.id]
        share = 100 / per_engine[r.engine]
        out.append(
            f"  {r.engine:6s} {r.gpu:8s} {r.model:18s} {r.precision:4s} tp{r.point.replica.tp} "
            f"{w.prompt_tokens}x{w.output_tokens} C{w.concurrency:<4d} "
            f"TTFT {r.point.ttft_s * 1e3:9.0f} -> {preds[r.id][0] * 1e3:8.0f} ({et * 100:+6.0f} %, +{abs(et) * share:.2f}) "
            f"TPOT {r.point.tpot_s * 1e3:7.2f} -> {preds[r.id][1] * 1e3:7.2f} ({ep * 100:+5.0f} %, +{abs(ep) * share:.2f})  {r.id}"
        )
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv", nargs="?", default=str(DEFAULT_CSV))
    ap.add_argument("--engine", default=None, help="only rows of this engine")
    ap.add_argument("--no-cv", action="store_true", help="skip the cross-validation")
    ap.add_argument("--limit", type=int, default=None, help="only the first N expressible rows (quick look)")
    ap.add_argument("--dump", default=None, help="write each row's predicted TTFT and TPOT to this CSV")
    ap.add_argument("--worst", type=int, default=0, help="list the N rows with the largest errors")
    args = ap.parse_args(argv)
    registry = Registry.load()
    with open(args.csv, newline="") as f:
        raw = list(csv.DictReader(f))
    rows: list[Row] = []
    why: Counter = Counter()
    for r in raw:
        if args.engine and r["backend"] != args.engine:
            continue
        got = map_row(r, registry)
        if isinstance(got, str):
            why[got] += 1
        else:
            rows.append(got)
    if args.limit:
        rows = rows[: args.limit]
    t0 = time.perf_counter()
    errs: dict[str, tuple] = {}
    preds: dict[str, tuple[float, float]] = {}
    kept = []
    for row in rows:
        try:
            res = predict_point(row.point, serving_defaults(row.point))
        except CapcalcError as e:
            why[f"cannot predict: {str(e).split(':')[0]}"] += 1
            continue
        errs[row.id] = errors(row.point, res.ttft_s, res.tpot_s)
        preds[row.id] = (res.ttft_s, res.tpot_s)
        kept.append(row)
    rows = kept
    if args.dump:
        with open(args.dump, "w", newline="") as f:
            out = csv.writer(f)
            out.writerow(["id", "ttft_s", "tpot_s"])
            for row in rows:
                out.writerow([row.id, repr(preds[row.id][0]), repr(preds[row.id][1])])
    elapsed = time.perf_counter() - t0
    lines = [
        f"served_validation: {os.path.relpath(args.csv, ROOT)}",
        f"{len(raw)} rows, {len(rows)} expressed, predicted in {elapsed:.1f} s",
    ]
    lines += table("Shipped defaults (|error| %: median, mean; bias = median signed error)", rows, errs)
    if args.worst:
        lines += worst(rows, errs, preds, args.worst)
    lines.append("\nRows not expressed:")
    for reason, n in why.most_common():
        lines.append(f"  {n:5d}  {reason}")
    if not args.no_cv:
        groups = defaultdict(list)
        for r in rows:
            groups[(r.engine, r.gpu, r.model)].append(r)
        cv_errs: dict[str, tuple] = {}
        held: list[Row] = []
        for key in sorted(groups):
            g = groups[key]
            train, test = g[0::2], g[1::2]
            if not test:
                continue
            fitted = fit_serving([r.point for r in train], parameters=CV_PARAMETERS, rounds=1, evaluations=6)
            for r in test:
                res = predict_point(r.point, fitted.params_for(r.point))
                cv_errs[r.id] = errors(r.point, res.ttft_s, res.tpot_s)
                held.append(r)
        lines += table(
            "Cross-validation: fitted on alternate rows of each (engine, GPU, model), held-out rows",
            held,
            cv_errs,
        )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

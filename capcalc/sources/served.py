"""Measured benchmark runs (:mod:`capcalc.sources.benchresults`) as points the serving
model can be fitted to (:class:`capcalc.serving.calibrate.ServedPoint`).

Each run's deployment comes from the file where it says so (the served-runs CSV names
the GPU, engine, tp and precision; ``vllm bench serve``, aiperf, genai-perf and guidellm
files name the model and the load) and from the caller's ``requested`` values otherwise.
A value given both ways must agree, or the run is refused with one line naming the
parameter. Names are mapped to capcalc's through the registry: GPUs by name or alias,
also with ``_`` read as ``-`` and an ``-sxm`` suffix dropped (``b200_sxm`` -> ``b200``);
precisions by :func:`precision_dtypes`.

Not modelled, so refused: disaggregated prefill/decode workers, pipeline parallelism,
attention data parallelism, runs with neither a concurrency nor a finite request rate
(``request_rate inf`` with no ``max_concurrency`` sends every prompt at once), and runs
with both a concurrency cap and a finite rate.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from capcalc.core.dtypes import WEIGHT_DTYPES, canonical_dtype
from capcalc.core.errors import CapcalcError
from capcalc.core.inputs import excerpt
from capcalc.core.records import flat_record
from capcalc.model.weights import resolve_weight_dtype
from capcalc.schema.profiles import HardwareProfile, ModelProfile
from capcalc.serving.calibrate import ServedPoint
from capcalc.serving.engine import Replica, Workload
from capcalc.serving.engines import ENGINES
from capcalc.sources.benchresults import FORMATS
from capcalc.sources.benchresults import ServedPoint as MeasuredRun

#: the serving parameters ``calibrate`` fits by default: the decode stream, the prefill rate,
#: the per-layer fixed cost and the per-request cost (those benchmarks/served_validation.py
#: cross-validates; the MoE and per-sequence costs need many runs to tell apart)
CALIBRATED = ("bandwidth_scale", "flops_scale", "layer_overhead_s", "frontend_s")


#: ``--format`` names -> :data:`capcalc.sources.benchresults.FORMATS` (auto: told by content)
FORMAT_NAMES = {
    "auto": None,
    "vllm": "vllm-bench-serve",
    "aiperf": "aiperf",
    "genai-perf": "genai-perf",
    "guidellm": "guidellm",
    "csv": "served-csv",
}
assert set(FORMAT_NAMES.values()) - {None} == set(FORMATS)

#: most closed-loop clients and measured requests simulated: the simulation's time grows
#: with the requests (about 0.4 ms each on one core; 2^16 clients x 5 requests take 30 s),
#: and 2^16 clients are 32x the largest default running batch (2048), past which more
#: clients only queue
MAX_CLIENTS = 65_536
MAX_REQUESTS = 5 * MAX_CLIENTS

#: closed-loop runs longer than this many requests per client are simulated this long (the
#: waves have settled by then; a longer run costs time and changes the means little)
MAX_REQUESTS_PER_CLIENT = 20
#: open-loop runs are simulated for as many requests as they measured, at most this many
#: (the serving model's own default for Poisson arrivals)
MAX_OPEN_LOOP_REQUESTS = 400
#: a length spread read from a file is simulated at most this wide (a failed request's
#: zero-length output would otherwise make it 1, lengths down to nothing)
MAX_SPREAD = 0.95


#: Requested fields that are EngineConfig settings a run's launcher may also set
LAUNCHER_SETTINGS = (
    "max_num_batched_tokens",
    "max_num_seqs",
    "recv_interval",
    "batch_wait_iters",
    "batch_wait_max_tokens_ratio",
)


@dataclass(frozen=True)
class Requested:
    """What the caller says about the runs (None: take it from the file, else the default)."""

    gpu: str | None = None
    engine: str | None = None
    model: str | None = None
    weight_dtype: str | None = None
    kv_dtype: str | None = None
    compute_dtype: str | None = None
    tp: int | None = None
    group_size: int | None = None
    max_num_batched_tokens: int | None = None
    max_num_seqs: int | None = None
    recv_interval: int | None = None
    batch_wait_iters: int | None = None
    batch_wait_max_tokens_ratio: float | None = None


def find_gpu(name: str, lookup: Callable[[str], HardwareProfile]) -> HardwareProfile:
    """The GPU profile ``name`` means: by name or alias, else with ``_`` as ``-``, else
    without an ``-sxm``/``-sxm5`` suffix (benchmark suites write ``b200_sxm``, ``h100_sxm``)."""
    text = str(name).strip()
    dashed = text.replace("_", "-")
    tries = [text, dashed]
    for suffix in ("-sxm5", "-sxm"):
        if dashed.lower().endswith(suffix):
            tries.append(dashed[: -len(suffix)])
    for candidate in tries[:-1]:
        try:
            return lookup(candidate)
        except CapcalcError:
            continue
    return lookup(tries[-1])  # its error names the closest profiles


def precision_dtypes(
    precision: str | None, gemm_quant_mode: str | None, model: ModelProfile
) -> tuple[str, str]:
    """(weight dtype, KV dtype) of a served run's ``precision`` (the served-runs CSV's
    column; empty is bf16). fp8 runs keep an fp8 KV cache, as the engines' fp8 recipes do;
    ``fp4`` is NVFP4 unless ``gemm_quant_mode`` says MXFP4; a model whose checkpoint ships
    MXFP4 experts (gpt-oss) keeps them under fp8 or fp4 (W4A8)."""
    p = (precision or "bf16").strip().lower()
    gemm = (gemm_quant_mode or "").strip().lower()
    if model.native_dtype == "mxfp4" and p in ("fp8", "fp8_block", "fp4", "mxfp4"):
        return "mxfp4", "fp8"
    if p in ("fp4", "nvfp4"):
        return ("mxfp4" if gemm == "mxfp4" or p == "mxfp4" else "nvfp4"), "fp8"
    if p == "mxfp4":
        return "mxfp4", "fp8"
    if p in ("fp8", "fp8_block", "w8a8"):
        return "fp8", "fp8"
    try:
        return canonical_dtype(p, WEIGHT_DTYPES, "precision", "precision"), "auto"
    except CapcalcError:
        raise CapcalcError(
            f"unknown precision {excerpt(precision)}: expected bf16, fp16, fp8, fp4/nvfp4, mxfp4, int8 or int4"
        ) from None


def to_points(
    runs: list[MeasuredRun],
    requested: Requested,
    model_of: Callable[[str], ModelProfile],
    gpu_of: Callable[[str], HardwareProfile],
    known_model: Callable[[str], ModelProfile | None],
) -> tuple[HardwareProfile, str, list[ServedPoint]]:
    """The runs as served points of one GPU and one engine: (GPU, engine, points).
    ``model_of`` resolves a model name (profile, folder or Hub id), ``gpu_of`` a GPU name,
    ``known_model`` a profile name or alias alone (None when it is not one)."""
    if not runs:
        raise CapcalcError("no measured runs to calibrate on", exit_code=1)
    flag_gpu = find_gpu(requested.gpu, gpu_of) if requested.gpu else None
    flag_model = model_of(requested.model) if requested.model else None
    flag_engine = requested.engine.strip().lower() if requested.engine else None
    if flag_engine is not None and flag_engine not in ENGINES:
        raise CapcalcError(
            parameter="engine",
            template=f"{{engine}}: unknown engine {_braces(excerpt(requested.engine))}: expected one of {', '.join(ENGINES)}",
        )
    models: dict[str, ModelProfile] = {}
    points: list[ServedPoint] = []
    gpus: set[str] = set()
    engines: set[str] = set()
    chosen_gpu = flag_gpu
    for run in runs:
        name = Path(run.source_path).name
        where = (
            run.source_path + run.id[len(name) :]
            if run.id.startswith(name)
            else f"{run.source_path}: {run.id}"
        )

        def fail(problem: str, parameter=None, where=where) -> CapcalcError:
            """One line about this run; with ``parameter``, ``problem`` is a template whose
            ``{parameter}`` field the front end names in its own terms."""
            if parameter is None:
                return CapcalcError(f"{where}: {problem}", exit_code=1)
            return CapcalcError(parameter=parameter, template=f"{_braces(where)}: {problem}", exit_code=1)

        if run.mode == "disagg" or run.disagg:
            raise fail("disaggregated prefill/decode workers are not modelled")
        if run.pp and run.pp > 1:
            raise fail(f"pipeline parallel (pp {run.pp}) is not modelled")
        if run.attention_dp and run.attention_dp > 1:
            raise fail(f"attention data parallel ({run.attention_dp}) is not modelled")

        # GPU and engine: the calibration's key
        gpu = flag_gpu
        if run.gpu:
            own = find_gpu(run.gpu, gpu_of)
            if flag_gpu is not None and own.name != flag_gpu.name:
                raise fail(
                    f"the file says GPU {_braces(run.gpu)} ({own.name}) but {{gpu}} is {flag_gpu.name}", "gpu"
                )
            gpu = own
        if gpu is None:
            raise fail("the file does not name the GPU: give {gpu}", "gpu")
        engine = flag_engine
        if run.engine:
            if flag_engine is not None and run.engine != flag_engine:
                raise fail(f"the file says engine {run.engine} but {{engine}} is {flag_engine}", "engine")
            engine = run.engine
        if engine is None:
            raise fail("the file does not name the engine: give {engine}", "engine")
        gpus.add(gpu.name)
        engines.add(engine)
        chosen_gpu = gpu

        # model
        model = flag_model
        if run.model:
            if flag_model is not None:
                own_model = known_model(run.model)
                if own_model is not None and own_model.name != flag_model.name:
                    raise fail(
                        f"the file says model {_braces(excerpt(run.model))} ({own_model.name}) but {{model}} is {flag_model.name}",
                        "model",
                    )
            else:
                if run.model not in models:
                    models[run.model] = model_of(run.model)
                model = models[run.model]
        if model is None:
            raise fail("the file does not name the model: give {model}", "model")

        # deployment
        tp = requested.tp
        if run.tp is not None and run.tp < 1:
            raise fail(f"tp {run.tp}: expected at least 1")
        if run.tp:
            if requested.tp is not None and run.tp != requested.tp:
                raise fail(f"the file says tp {run.tp} but {{tp}} is {requested.tp}", "tp")
            tp = run.tp
        weight = resolve_weight_dtype(requested.weight_dtype or "auto", model)
        kv = requested.kv_dtype or "auto"
        # the served-runs CSV leaves precision empty for bf16 (its README); other files do not say
        precision = run.precision or ("bf16" if run.source_format == "served-csv" else None)
        if precision:
            try:
                own_weight, own_kv = precision_dtypes(precision, run.gemm_quant_mode, model)
            except CapcalcError as exc:
                raise fail(exc.message) from None
            own_weight = resolve_weight_dtype(own_weight, model)
            if requested.weight_dtype is not None and own_weight != weight:
                raise fail(
                    f"the file says precision {_braces(precision)} ({own_weight} weights) but {{weight_dtype}} is {weight}",
                    "weight_dtype",
                )
            weight, kv = own_weight, requested.kv_dtype or own_kv

        # scheduler settings: the file's launcher's (where known), else the flags
        settings = {k: getattr(requested, k) for k in LAUNCHER_SETTINGS if getattr(requested, k) is not None}
        for key, value in run.engine_settings.items():
            flag = settings.get(key)
            if flag is not None and flag != value:
                raise fail(f"its launcher sets {{{key}}} {value:g}, the command line {flag:g}", key)
            settings[key] = value
        budget = settings.pop("max_num_batched_tokens", None)
        seqs = settings.pop("max_num_seqs", None)

        # load and lengths
        workload = run_workload(run, fail)
        if not (run.ttft_mean_s > 0 and run.tpot_mean_s > 0):
            raise fail("mean TTFT and TPOT must be positive to fit to")
        replica = Replica(
            model,
            gpu,
            tp=tp or 1,
            weight_dtype=weight,
            kv_dtype=kv,
            compute_dtype=requested.compute_dtype or "auto",
            group_size=requested.group_size or 128,
        )
        points.append(
            ServedPoint(
                replica=replica,
                workload=workload,
                engine=engine,
                ttft_s=run.ttft_mean_s,
                tpot_s=run.tpot_mean_s,
                max_num_batched_tokens=budget,
                max_num_seqs=seqs,
                engine_settings=settings,
            )
        )
    if len(gpus) > 1 or len(engines) > 1:
        several = (
            f"GPUs {', '.join(sorted(gpus))}" if len(gpus) > 1 else f"engines {', '.join(sorted(engines))}"
        )
        raise CapcalcError(
            f"the runs are of several {several}: calibrate one GPU and engine at a time", exit_code=1
        )
    return chosen_gpu, engines.pop(), points


def run_workload(run: MeasuredRun, fail: Callable[[str], CapcalcError] | None = None) -> Workload:
    """The workload a measured run's benchmark sent: its mean lengths (and their spreads where
    the file says them), its load and its request count. ``fail(problem)`` makes the error
    for a run the model cannot replay (default: one naming the run's id)."""
    if fail is None:

        def fail(problem: str) -> CapcalcError:
            return CapcalcError(f"{run.id}: {problem}")

    prompt, output = round(run.input_tokens), round(run.output_tokens)
    if prompt < 1:
        raise fail(f"mean prompt length {run.input_tokens:g} tokens: expected at least 1")
    if output < 2:
        raise fail(f"mean output length {run.output_tokens:g} tokens: TPOT needs at least 2")
    rate = run.request_rate if run.request_rate is not None and math.isfinite(run.request_rate) else None
    if run.concurrency is not None and rate is not None:
        raise fail(
            f"both a concurrency cap ({run.concurrency}) and a request rate ({rate:g}/s): not modelled; "
            "calibrate on closed-loop or on open-loop runs"
        )
    if run.concurrency is not None and run.concurrency > MAX_CLIENTS:
        raise fail(f"concurrency {run.concurrency} is over the {MAX_CLIENTS:,} clients simulated")
    # lengths the file says were spread are simulated so (prompts otherwise exact, outputs
    # otherwise the engine's spread)
    spreads = {
        "prompt_spread": min(run.input_spread or 0.0, MAX_SPREAD),
        "output_spread": None if run.output_spread is None else min(run.output_spread, MAX_SPREAD),
    }
    if run.concurrency is not None:
        count = run.num_requests
        if count is not None:
            count = min(max(count, 1), MAX_REQUESTS_PER_CLIENT * run.concurrency)
        return Workload(prompt, output, concurrency=run.concurrency, num_requests=count, **spreads)
    if rate is not None:
        count = None if run.num_requests is None else min(max(run.num_requests, 10), MAX_OPEN_LOOP_REQUESTS)
        return Workload(prompt, output, rate_per_s=rate, num_requests=count, **spreads)
    raise fail("neither a concurrency nor a finite request rate: the load is not known")


def _braces(text: str) -> str:
    """``text`` (a value read from a file) safe inside a message template."""
    return str(text).replace("{", "{{").replace("}", "}}")


# --------------------------------------------------------------------------- the fit


@dataclass(frozen=True)
class CalibrationReport:
    """A serving fit: each run measured and predicted before (defaults) and after."""

    gpu: str
    engine: str
    values: dict[str, float]
    points: tuple[dict, ...]  # one record per run
    loss_before: float
    loss_after: float
    calibration_file: str | None = None

    def summary(self) -> dict:
        """The fit as one record: the values, the mean |error| before and after, the file."""

        def mean(key: str) -> float | None:
            values = [abs(p[key]) for p in self.points if p.get(key) is not None]
            return sum(values) / len(values) if values else None

        errors = {
            f"{m}_mean_abs_error_{when}_pct": mean(f"{m}_error_{when}_pct")
            for when in ("before", "after")
            for m in ("ttft", "tpot", "tokens_per_s")
        }
        fitted = {f"fitted_{k}": v for k, v in self.values.items()}
        return flat_record(
            record="calibration",
            gpu=self.gpu,
            engine=self.engine,
            points=len(self.points),
            **fitted,
            **errors,
            loss_before=self.loss_before,
            loss_after=self.loss_after,
            calibration_file=self.calibration_file,
        )

    def records(self) -> list[dict]:
        """``calibrate --json``: one ``point`` record per run, then the ``calibration`` summary."""
        return [*self.points, self.summary()]


def fit_runs(
    runs, device, engine, points, names, save=False, directory=None, command=None
) -> CalibrationReport:
    """Fit ``names`` to the served ``points`` of the measured ``runs`` (one GPU ``device``
    and ``engine``; :func:`to_points`), predict every run with the shipped defaults and
    with the fit, and with ``save`` write the values into ``directory``'s calibration
    file (``Session.calibrate``)."""
    import datetime

    from capcalc.serving.calibrate import fit_serving, predict_point, serving_defaults
    from capcalc.sources.calibration import save_engine_calibration

    fit = fit_serving(points, parameters=names)
    records = []
    for run, point in zip(runs, points, strict=True):
        before = predict_point(point, serving_defaults(point))
        after = predict_point(point, fit.params_for(point))
        w = point.workload
        measured_tps = run.output_tokens_per_s
        if measured_tps is None and w.concurrency:  # closed loop: Little's law over one request
            measured_tps = (
                w.concurrency * w.output_tokens / (run.ttft_mean_s + (w.output_tokens - 1) * run.tpot_mean_s)
            )
        elif measured_tps is None and run.requests_per_s is not None:
            measured_tps = run.requests_per_s * w.output_tokens

        def err(predicted: float, measured: float | None) -> float | None:
            return None if not measured else (predicted / measured - 1) * 100

        records.append(
            flat_record(
                record="point",
                id=run.id,
                source=run.source_format,
                model=point.replica.model.name,
                tp=point.replica.tp,
                weight_dtype=point.replica.weight_dtype,
                concurrency=w.concurrency,
                requests_per_s=w.rate_per_s,
                prompt_tokens=w.prompt_tokens,
                output_tokens=w.output_tokens,
                ttft_measured_s=run.ttft_mean_s,
                ttft_before_s=before.ttft_s,
                ttft_after_s=after.ttft_s,
                tpot_measured_s=run.tpot_mean_s,
                tpot_before_s=before.tpot_s,
                tpot_after_s=after.tpot_s,
                tokens_per_s_measured=measured_tps,
                tokens_per_s_before=before.output_tokens_per_s,
                tokens_per_s_after=after.output_tokens_per_s,
                ttft_error_before_pct=err(before.ttft_s, run.ttft_mean_s),
                ttft_error_after_pct=err(after.ttft_s, run.ttft_mean_s),
                tpot_error_before_pct=err(before.tpot_s, run.tpot_mean_s),
                tpot_error_after_pct=err(after.tpot_s, run.tpot_mean_s),
                tokens_per_s_error_before_pct=err(before.output_tokens_per_s, measured_tps),
                tokens_per_s_error_after_pct=err(after.output_tokens_per_s, measured_tps),
            )
        )
    report = CalibrationReport(
        device.name, engine, dict(fit.values), tuple(records), fit.loss_before, fit.loss_after
    )
    if save:
        summary = report.summary()
        entry = {
            "calibrated_at": datetime.date.today().isoformat(),
            "command": command or f"Session.calibrate({len(runs)} runs)",
            "points": len(points),
            "models": sorted({p.replica.model.name for p in points}),
            "sources": sorted({str(Path(r.source_path).resolve()) for r in runs}),
            "parameters": dict(fit.values),
            "mean_abs_error_before": {
                f"{m}_pct": summary[f"{m}_mean_abs_error_before_pct"] for m in ("ttft", "tpot")
            },
            "mean_abs_error_after": {
                f"{m}_pct": summary[f"{m}_mean_abs_error_after_pct"] for m in ("ttft", "tpot")
            },
        }
        path = save_engine_calibration(device.name, engine, entry, directory)
        report = replace(report, calibration_file=str(path))
    return report

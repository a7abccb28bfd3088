"""`capcalc measure MODEL --tp N` and `capcalc measure --gpu --tp N`: the runs over N ranks
(:mod:`capcalc.measure.tp`), measured against the latency model at tp=N, and the fit of
its all-reduce terms.

MODEL --tp N. Each rank builds its shard with random weights; first the all-reduce is
timed at the run's own message sizes (each decode batch's B x H x w bytes, each prefill's
B x P x H x w), then every point is timed twice by :class:`capcalc.measure.run.Runner`'s
loop (medians, CUDA graphs where the backend allows): with its collectives, and the same
shards without them. Rank 0's times are reported. Per point:

    measured_comm_s  = measured_time_s - measured_time_no_comm_s
    predicted_time_s = capcalc.perf.latency at tp=N (predicted_comm_s its all-reduce term)

The fit (:func:`capcalc.measure.calibrate.calibrate`) runs over both kinds of points: the
steps without collectives pin the single-GPU terms of the sharded step, the difference
pins ``allreduce_latency_s`` (``allreduce_latency_per_rank_s`` is held at its calibrated
value: one run has one tp). ``--save`` stores the all-reduce terms alone; the single-GPU
terms fitted on shards are reported, not saved (a tp=1 run calibrates those).
The interconnect bandwidth of the prediction is the GPU profile's; a profile without one
(every CPU) uses the bus bandwidth measured at the run's largest message, and says so.

--gpu --tp N. The all-reduce alone on 2, 4, ..., N ranks at decode and prefill sizes
(:mod:`capcalc.measure.allreduce`): bus bandwidth per size, the fixed cost per call per
degree, and a(tp); ``--save`` stores ``allreduce_latency_s`` and
``allreduce_latency_per_rank_s`` (and the bus bandwidth at N ranks under ``measured:``).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, replace
from typing import Any

from capcalc.core.errors import CapcalcError
from capcalc.measure import allreduce as ar
from capcalc.measure import require_torch
from capcalc.measure.calibrate import (
    FITTED,
    TP_FITTED,
    Point,
    calibrate,
    draft_profile,
    draft_profile_dict,
    error_pct,
    find_profile,
    predict,
    profile_origin,
    save_entry,
    shipped_efficiency,
)
from capcalc.measure.memory import MemoryEstimate
from capcalc.measure.run import MeasuredPoint, PointSpec, cache_tokens, default_repeats, plan_points
from capcalc.measure.tp import Rank, TPRunner, launch, own_device, shard_profile
from capcalc.perf.efficiency import resolve_efficiency
from capcalc.report.output import TableSpec, record
from capcalc.schema.profiles import HardwareProfile, ModelProfile
from capcalc.sources.calibration import load_calibration
from capcalc.sources.registry import Registry

_WIDTH = {"bf16": 2, "fp16": 2, "fp32": 4}


def _note(message: str) -> None:
    """A note on stderr, from rank 0 alone under torchrun."""
    if os.environ.get("RANK", "0") == "0":
        print(f"capcalc: {message}", file=sys.stderr)


# --------------------------------------------------------------------------- the ranks' work


@dataclass(frozen=True)
class ModelJob:
    profile: ModelProfile
    dtype: str
    points: tuple[tuple[PointSpec, MemoryEstimate], ...]
    repeats: int | None
    max_positions: int
    sizes: tuple[ar.MessageSize, ...]
    seed: int = 0


@dataclass(frozen=True)
class ModelResult:
    backend: str
    timings: tuple[ar.AllreduceTiming, ...]
    measured: tuple[tuple[MeasuredPoint, MeasuredPoint], ...]  # (with collectives, without)


def model_work(where: Rank, job: ModelJob) -> ModelResult:
    """On every rank: time the all-reduce at the job's sizes, then each point with and
    without collectives (the ranks start each timing together)."""
    torch = require_torch()
    from capcalc.measure.device import device_info

    info = device_info(where.device)
    timings = ar.sweep(where, list(job.sizes), job.dtype, [where.world])
    runner = TPRunner(job.profile, job.dtype, info, job.max_positions, where.rank, where.world, seed=job.seed)
    measured = []
    for spec, estimate in job.points:
        pair = []
        for collectives in (True, False):
            runner.model.collectives = collectives
            torch.distributed.barrier()
            pair.append(runner.measure(spec, estimate, job.repeats))
        measured.append(tuple(pair))
    runner.release()
    return ModelResult(where.backend, tuple(timings), tuple(measured))


@dataclass(frozen=True)
class SweepJob:
    sizes: tuple[ar.MessageSize, ...]
    dtype: str
    repeats: int | None


def sweep_work(where: Rank, job: SweepJob) -> tuple[str, list[ar.AllreduceTiming]]:
    return where.backend, ar.sweep(
        where, list(job.sizes), job.dtype, ar.sub_degrees(where.world), job.repeats
    )


# --------------------------------------------------------------------------- the parent


def _device(device: str):
    from capcalc.measure.device import device_info, resolve_device

    require_torch()
    return device_info(own_device(resolve_device(device)))


def _gpu_profile(registry: Registry, info, hardware: str | None) -> tuple[HardwareProfile, str]:
    """--hardware, else the profile named by the driver, else one drafted from a copy and
    matmul timed here (as `measure MODEL` drafts one)."""
    from capcalc.measure import bench

    if hardware:
        profile = registry.gpu(hardware)
        return profile, profile_origin(profile)
    profile = find_profile(registry, info.device_name)
    if profile is not None:
        return profile, profile_origin(profile)
    copy = bench.copy_bandwidth(info)
    peaks = {d: bench.matmul_throughput(info, d).flops_per_s for d in bench.matmul_dtypes(info)[:2]}
    data = draft_profile_dict(
        info.device_name,
        info.is_cuda,
        info.memory_total_bytes,
        copy.bandwidth_bytes_per_s,
        peaks,
        info.l2_cache_bytes,
        info.torch_version,
    )
    if info.is_cuda:  # hand the benchmarks' buffers back before the ranks start
        require_torch().cuda.empty_cache()
    return draft_profile(data), "drafted"


def _check_tp(tp: int) -> None:
    if tp < 2:
        raise CapcalcError(f"--tp must be at least 2 for a tensor-parallel run, got {tp}")


def measure_model_tp(
    registry: Registry,
    model: ModelProfile,
    tp: int,
    device: str,
    batches: list[int],
    contexts: list[int],
    prompts: list[int],
    prefill_batches: list[int],
    dtype: str | None,
    hardware: str | None,
    repeats: int | None,
    save: bool,
    profile_dirs: Any = None,
) -> tuple[list[dict], TableSpec] | None:
    """Measure ``model`` on ``tp`` ranks; (records, table) on rank 0, None on the others."""
    _check_tp(tp)
    shard = shard_profile(model, tp)  # refuses a tp the model cannot split by
    info = _device(device)
    dtype = dtype or ("bf16" if info.is_cuda else "fp32")
    width = _WIDTH[dtype]
    specs = [PointSpec("decode", b, c) for b in batches for c in contexts]
    specs += [PointSpec("prefill", b, p) for b in prefill_batches for p in prompts]
    if not specs:
        raise CapcalcError("nothing to measure: give --ctx or --prompt values")
    # one rank's memory: its shard (the estimate counts the whole LM head: conservative);
    # on the CPU the ranks share the host's RAM
    rank_info = info if info.is_cuda else replace(info, memory_free_bytes=info.memory_free_bytes / tp)
    fitting, refused = plan_points(shard, dtype, rank_info, specs, repeats)
    for _spec, reason in refused:
        _note(f"warning: skipping (per rank, tp={tp}): {reason}")
    if not fitting:
        raise refused[0][1]
    gpu, origin = _gpu_profile(registry, info, hardware)
    sizes = {}
    for spec, _ in fitting:
        tokens = spec.batch * (1 if spec.phase == "decode" else spec.tokens)
        sizes[(spec.phase, tokens)] = ar.MessageSize(spec.phase, tokens, tokens * model.hidden_size * width)
    job = ModelJob(
        model,
        dtype,
        tuple(fitting),
        repeats,
        max(cache_tokens(s, info, repeats) for s, _ in fitting),
        tuple(sorted([*sizes.values(), ar.bandwidth_size(info.is_cuda)], key=lambda s: s.bytes)),
    )
    _note(f"measuring {model.name} on {tp} ranks ({len(fitting)} points, each with and without collectives)")
    launched = launch(model_work, job, tp, info.device)
    if launched is None:
        return None
    result, launcher = launched
    return _model_records(
        registry, model, tp, info, gpu, origin, dtype, repeats, save, profile_dirs, result, launcher, job
    )


def _model_records(
    registry, model, tp, info, gpu, origin, dtype, repeats, save, profile_dirs, result, launcher, job
):
    timing_at = {(t.size.phase, t.size.tokens): t for t in result.timings}
    largest = next(t for t in result.timings if t.size.phase == "bandwidth")
    interconnect_source = "profile"
    if not gpu.interconnect_bandwidth_bytes_per_s:
        gpu = replace(gpu, interconnect_bandwidth_bytes_per_s=largest.busbw_bytes_per_s)
        interconnect_source = "measured"
        _note(
            f"{gpu.name} has no interconnect bandwidth in its profile: predictions use the bus bandwidth "
            f"measured at {largest.size.bytes / 2**20:.1f} MiB ({largest.busbw_bytes_per_s / 1e9:.2f} GB/s)"
        )
    calibration = load_calibration(profile_dirs or ())
    start = shipped_efficiency(gpu)
    per_rank = resolve_efficiency(gpu, None, calibration).efficiency.allreduce_latency_per_rank_s
    start = replace(start, allreduce_latency_per_rank_s=per_rank)
    points = []
    for with_comm, without in result.measured:
        spec = with_comm.spec
        tokens = spec.tokens
        if spec.phase == "decode":  # the median timed step attends to this many tokens
            warm, timed = default_repeats(info, "decode")
            tokens += warm + ((repeats or timed) + 1) // 2
        points.append(Point(model, spec.phase, spec.batch, tokens, with_comm.time_s, tp=tp))
        points.append(Point(model, spec.phase, spec.batch, tokens, without.time_s, tp=tp, collectives=False))
    cal = calibrate(gpu, points, dtype, start)
    # the fixed cost per call from the decode-sized messages (all sizes when no decode point)
    decode_sized = [t for t in result.timings if t.size.phase == "decode"]
    bench_fit = ar.fit_latency(decode_sized or [t for t in result.timings if t.size.phase != "bandwidth"])
    records = []
    calls = 2 * model.num_layers
    for index, (with_comm, without) in enumerate(result.measured):
        spec = with_comm.spec
        point = points[2 * index]
        decode = spec.phase == "decode"
        pred = predict(gpu, point, dtype, cal.before)
        single = predict(gpu, replace(point, tp=1), dtype, cal.before)
        calibrated = predict(gpu, point, dtype, cal.after)
        comm = with_comm.time_s - without.time_s
        timing = timing_at[(spec.phase, spec.batch * (1 if decode else spec.tokens))]
        records.append(
            record(
                record=spec.phase,
                model=model.name,
                device=info.device,
                device_name=info.device_name,
                gpu=gpu.name,
                gpu_profile=origin,
                tp=tp,
                backend=result.backend,
                launcher=launcher,
                weight_dtype=dtype,
                kv_dtype=dtype,
                batch=spec.batch,
                ctx=spec.tokens if decode else None,
                ctx_attended=point.tokens if decode else None,
                prompt_tokens=None if decode else spec.tokens,
                measured_time_s=with_comm.time_s,
                measured_time_no_comm_s=without.time_s,
                measured_comm_s=comm,
                predicted_time_s=pred.time_s,
                predicted_comm_s=pred.comm_s,
                predicted_no_comm_time_s=pred.time_s - pred.comm_s,
                predicted_tp1_time_s=single.time_s,
                error_pct=error_pct(pred.time_s, with_comm.time_s),
                no_comm_error_pct=error_pct(pred.time_s - pred.comm_s, without.time_s),
                calibrated_time_s=calibrated.time_s,
                calibrated_error_pct=error_pct(calibrated.time_s, with_comm.time_s),
                predicted_bound=pred.bound,
                predicted_bytes_per_step=pred.bytes,
                tokens_per_s=(spec.batch if decode else spec.batch * spec.tokens) / with_comm.time_s,
                cuda_graph=with_comm.cuda_graph,
                repeats=len(with_comm.times_s),
                allreduce_calls_per_step=calls,
                allreduce_bytes_per_call=timing.size.bytes,
                allreduce_per_call_s=timing.time_s,
                allreduce_bus_bandwidth_bytes_per_s=timing.busbw_bytes_per_s,
                allreduce_benchmark_per_step_s=calls * timing.time_s,
                allreduce_latency_s=bench_fit.latency_s,
                interconnect_bandwidth_bytes_per_s=gpu.interconnect_bandwidth_bytes_per_s,
                interconnect_source=interconnect_source,
                memory_predicted_bytes=with_comm.memory.total_bytes,
                memory_measured_bytes=with_comm.memory_measured_bytes,
                kv_cache_bytes=with_comm.cache_bytes,
                torch_version=info.torch_version,
            )
        )
    fitted_tp = ("allreduce_latency_s",)  # one tp degree: its growth per rank is not fitted
    saved = None
    if save:
        command = (
            f"capcalc measure {model.name} --tp {tp} --weight-dtype {dtype} --device {info.device} --save"
        )
        saved = str(
            save_entry(
                gpu.name,
                info.device_name,
                command,
                info.torch_version,
                efficiency=cal.after,
                names=fitted_tp,
            )
        )
        _note(f"Calibration saved: {saved} (entry {gpu.name!r}: {', '.join(fitted_tp)})")
    summary = dict(
        record="calibration",
        model=model.name,
        device=info.device,
        device_name=info.device_name,
        gpu=gpu.name,
        gpu_profile=origin,
        tp=tp,
        backend=result.backend,
        launcher=launcher,
        weight_dtype=dtype,
        decode_points=sum(p.phase == "decode" and p.collectives for p in points),
        prefill_points=sum(p.phase == "prefill" and p.collectives for p in points),
        decode_median_abs_error_pct=_median(cal, points, "decode", False),
        decode_median_abs_error_calibrated_pct=_median(cal, points, "decode", True),
        prefill_median_abs_error_pct=_median(cal, points, "prefill", False),
        prefill_median_abs_error_calibrated_pct=_median(cal, points, "prefill", True),
        allreduce_latency_s=bench_fit.latency_s,
        allreduce_latency_method=bench_fit.method,
        allreduce_bus_bandwidth_bytes_per_s=largest.busbw_bytes_per_s,
        allreduce_bus_bandwidth_message_bytes=largest.size.bytes,
        # the single-GPU terms as fitted on the shards (reported, not saved) and the tp terms
        **{f"default_{n}": getattr(cal.before, n) for n in (*FITTED, *TP_FITTED)},
        **{f"fitted_{n}": getattr(cal.after, n) for n in (*FITTED, *TP_FITTED)},
        calibration_file=saved,
        torch_version=info.torch_version,
    )
    records.append(record(**summary))
    return records, TableSpec(
        title=f"measure {model.name} --tp {tp} on {info.device_name} ({result.backend}) vs {gpu.name}",
        columns=[
            ("record", "phase"),
            ("batch", "batch"),
            ("ctx", "ctx"),
            ("prompt_tokens", "prompt"),
            ("measured_time_s", "measured"),
            ("predicted_time_s", "predicted"),
            ("error_pct", "error"),
            ("measured_comm_s", "comm measured"),
            ("predicted_comm_s", "comm predicted"),
            ("allreduce_per_call_s", "all-reduce/call"),
            ("allreduce_bus_bandwidth_bytes_per_s", "busbw"),
            ("calibrated_error_pct", "error (cal.)"),
            ("fitted_allreduce_latency_s", "fitted all-reduce latency"),
        ],
    )


def _median(cal, points, phase, after):
    """Median |error| over the points with collectives (the steps a user runs)."""
    from capcalc.measure.fit import median_abs_pct

    errors = cal.errors_after_pct if after else cal.errors_before_pct
    return median_abs_pct(
        [e for e, p in zip(errors, points, strict=True) if p.phase == phase and p.collectives]
    )


def measure_allreduce_tp(
    registry: Registry, tp: int, device: str, hardware: str | None, repeats: int | None, save: bool
) -> tuple[list[dict], TableSpec] | None:
    """The all-reduce sweep on 2, 4, ..., ``tp`` ranks; (records, table) on rank 0."""
    _check_tp(tp)
    info = _device(device)
    dtype = "bf16" if info.is_cuda else "fp32"
    prefill = ar.PREFILL_TOKENS if info.is_cuda else ar.PREFILL_TOKENS[:1]
    sizes = ar.message_sizes(ar.SWEEP_HIDDEN, _WIDTH[dtype], prefill_tokens=prefill)
    if hardware:
        gpu_name = registry.gpu(hardware).name
    else:
        found = find_profile(registry, info.device_name)
        gpu_name = found.name if found else None
    if save and gpu_name is None:
        raise CapcalcError(
            f"no hardware profile matches {info.device_name!r}: give --hardware NAME to save the all-reduce terms"
        )
    _note(f"timing all-reduces on {', '.join(str(k) for k in ar.sub_degrees(tp))} of {tp} ranks")
    launched = launch(sweep_work, SweepJob(tuple(sizes), dtype, repeats), tp, info.device)
    if launched is None:
        return None
    (backend, timings), launcher = launched
    base = dict(
        device=info.device, device_name=info.device_name, gpu=gpu_name, backend=backend, launcher=launcher
    )
    records = [
        record(
            record="allreduce",
            **base,
            tp=t.tp,
            dtype=dtype,
            phase=t.size.phase,
            tokens=t.size.tokens,
            hidden_size=ar.SWEEP_HIDDEN,
            bytes_per_call=t.size.bytes,
            time_s=t.time_s,
            algbw_bytes_per_s=t.algbw_bytes_per_s,
            busbw_bytes_per_s=t.busbw_bytes_per_s,
            cuda_graph=t.cuda_graph,
            repeats=t.repeats,
            calls_per_repeat=ar.CALLS_PER_REPEAT,
        )
        for t in timings
    ]
    fits = []
    for k in ar.sub_degrees(tp):
        mine = [t for t in timings if t.tp == k]
        fit = ar.fit_latency([t for t in mine if t.size.phase == "decode"])
        fits.append(fit)
        largest = max(mine, key=lambda t: t.size.bytes)
        records.append(
            record(
                record="allreduce_fit",
                **base,
                tp=k,
                allreduce_latency_s=fit.latency_s,
                allreduce_latency_method=fit.method,
                fit_points=fit.points,
                fit_bus_bandwidth_bytes_per_s=fit.busbw_bytes_per_s,
                busbw_bytes_per_s=largest.busbw_bytes_per_s,
                busbw_message_bytes=largest.size.bytes,
            )
        )
    form = ar.fit_tp_form(fits)
    saved = None
    if save:
        from capcalc.perf.efficiency import Efficiency

        eff = Efficiency(
            allreduce_latency_s=form.allreduce_latency_s,
            allreduce_latency_per_rank_s=form.allreduce_latency_per_rank_s,
        )
        top = records[-1]
        saved = str(
            save_entry(
                gpu_name,
                info.device_name,
                f"capcalc measure --gpu --tp {tp} --device {info.device} --save",
                info.torch_version,
                measured={
                    "allreduce_bus_bandwidth_bytes_per_s": top["busbw_bytes_per_s"],
                    "allreduce_ranks": tp,
                },
                efficiency=eff,
                names=TP_FITTED,
            )
        )
        _note(f"Calibration saved: {saved} (entry {gpu_name!r}: {', '.join(TP_FITTED)})")
    records.append(
        record(
            record="allreduce_tp_form",
            **base,
            tp=tp,
            form=form.form,
            tp_degrees=list(form.tp_degrees),
            allreduce_latency_s=form.allreduce_latency_s,
            allreduce_latency_per_rank_s=form.allreduce_latency_per_rank_s,
            calibration_file=saved,
        )
    )
    return records, TableSpec(
        title=f"all-reduce on {info.device_name} ({backend}), up to {tp} ranks",
        columns=[
            ("record", "record"),
            ("tp", "tp"),
            ("phase", "phase"),
            ("bytes_per_call", "bytes"),
            ("time_s", "time/call"),
            ("busbw_bytes_per_s", "busbw"),
            ("allreduce_latency_s", "latency/call"),
            ("allreduce_latency_per_rank_s", "per extra rank"),
        ],
    )

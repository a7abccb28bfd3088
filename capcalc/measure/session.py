"""`measure`'s orchestration: resolve the device, plan the points that fit, run them,
fit the efficiency parameters and build the records (the CLI only parses and renders).

Two entry points: :func:`measure_device` (copy bandwidth, matmul throughput, weight
streaming) and :func:`measure_models` (a real torch decode loop against the latency
model's predictions). Progress and warnings that a person should see while a run
lasts go to the callbacks given (``progress``, ``warn``); notes on the result
(profile drafted, calibration saved) come back in :attr:`MeasureResult.notes`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import yaml

from capcalc.core.errors import CapcalcError
from capcalc.core.fileio import write_atomic
from capcalc.report.output import record
from capcalc.sources.dirs import user_profile_dir

#: the longest a CPU measurement may be estimated to take before it needs ``yes``
CPU_LIMIT_S = 600.0


@dataclass
class MeasureResult:
    """The records ``measure`` prints, the notes that go with them, and what the table needs."""

    kind: str  # 'device' | 'model'
    records: list[dict]
    notes: list[str] = field(default_factory=list)
    device: str = ""
    device_name: str = ""
    torch_version: str = ""
    gpu: str = ""  # the GPU profile compared with

    def record(self) -> list[dict]:  # noqa: D401 - several records, as the CLI prints them
        return self.records


class _NoProgress:
    def __call__(self, text: str | None = None, step: int = 1) -> None:
        pass

    def label(self, text: str) -> None:
        pass


def _ignore(message: str) -> None:
    pass


def _resolve(device: str):
    from capcalc.measure import require_torch
    from capcalc.measure.device import device_info, resolve_device

    require_torch()
    return device_info(resolve_device(device))


def _profile_for(reg, info, hardware: str | None):
    """(profile or None, origin) for the device: --hardware, else by the driver's name."""
    from capcalc.measure.calibrate import find_profile, profile_origin

    if hardware:
        profile = reg.gpu(hardware)
        return profile, profile_origin(profile)
    profile = find_profile(reg, info.device_name)
    return (profile, profile_origin(profile)) if profile else (None, "drafted")


def _draft(info, copy_bw: float, peaks: dict[str, float]):
    from capcalc.measure.calibrate import draft_profile, draft_profile_dict

    data = draft_profile_dict(
        info.device_name,
        info.is_cuda,
        info.memory_total_bytes,
        copy_bw,
        peaks,
        info.l2_cache_bytes,
        info.torch_version,
    )
    return data, draft_profile(data)


def _save_draft(data: dict, warn: Callable[[str], None]) -> str:
    path = user_profile_dir() / f"{data['name']}.yaml"
    if path.exists():
        warn(f"not overwriting {path}: a profile for this device is already there")
        return str(path)
    text = "# drafted by `capcalc measure` from measured figures; edit freely\n" + yaml.safe_dump(
        data, sort_keys=False, default_flow_style=False
    )
    write_atomic(path, text)
    return str(path)


def _save_mismatch(reg, profile, origin: str, info, save: bool, allow_device_mismatch: bool) -> bool:
    """Refuse (before measuring) to save a calibration for a profile that is not the
    device's; True when it is saved anyway (``allow_device_mismatch``) and marked so."""
    if not save or profile is None:
        return False
    from capcalc.measure.calibrate import check_save_target

    return check_save_target(reg, profile, origin, info.device_name, info.is_cuda, allow_device_mismatch)


def _device_fields(info, gpu_name: str, origin: str) -> dict:
    return {
        "device": info.device,
        "device_name": info.device_name,
        "gpu": gpu_name,
        "gpu_profile": origin,
    }


def measure_device(
    registry,
    device: str = "auto",
    hardware: str | None = None,
    save: bool = False,
    progress=None,
    warn: Callable[[str], None] = _ignore,
    allow_device_mismatch: bool = False,
) -> MeasureResult:
    """Time the device: copy bandwidth, matmul throughput per dtype, batch-1 weight
    streaming; compared with ``hardware``'s profile, else the one matching the device's
    name, else a profile drafted from these figures (saved with ``save``). Saving for a
    ``hardware`` that is not the device measured is refused before anything runs, unless
    ``allow_device_mismatch`` (the entry is then marked ``device_mismatch``)."""
    info = _resolve(device)
    from capcalc.measure import bench

    reg = registry
    advance_ctx = _progress_or_none(progress)
    profile, origin = _profile_for(reg, info, hardware)
    mismatch = _save_mismatch(reg, profile, origin, info, save, allow_device_mismatch)
    dtypes = bench.matmul_dtypes(info)
    results = []
    with advance_ctx(2 + len(dtypes) + len(bench.MATVEC_SHAPES), f"timing {info.device}") as advance:
        advance.label("copy bandwidth")
        copy = bench.copy_bandwidth(info)
        results.append(copy)
        advance()
        for dtype in dtypes:
            advance.label(f"{dtype} matmul")
            try:
                results.append(bench.matmul_throughput(info, dtype))
            except (RuntimeError, TypeError, AttributeError) as exc:
                warn(f"{dtype} matmul not timed on {info.device}: {str(exc).splitlines()[0]}")
            advance()
        advance.label("weight streaming (batch-1 matvec)")
        results.extend(bench.matvec_streaming(info, "bf16" if info.is_cuda else "fp32"))
        advance(step=len(bench.MATVEC_SHAPES) + 1)
    peaks = {r.dtype: r.flops_per_s for r in results if r.benchmark == "matmul"}
    draft_data = None
    if profile is None:
        draft_data, profile = _draft(info, copy.bandwidth_bytes_per_s, peaks)
    notes = []
    records = []
    for r in results:
        # a drafted profile holds these very measurements: no datasheet to compare with
        datasheet_bw = (
            profile.bandwidth_bytes_per_s if r.bandwidth_bytes_per_s and draft_data is None else None
        )
        datasheet_flops = (
            profile.peak_flops_per_s.get(r.dtype) if r.benchmark == "matmul" and draft_data is None else None
        )
        measured = r.flops_per_s if r.benchmark == "matmul" else r.bandwidth_bytes_per_s
        datasheet = datasheet_flops if r.benchmark == "matmul" else datasheet_bw
        records.append(
            record(
                record="device",
                **_device_fields(info, profile.name, origin),
                benchmark=r.benchmark,
                dtype=r.dtype,
                shape=r.shape,
                bytes_per_call=r.bytes,
                flops_per_call=r.flops,
                time_s=r.time_s,
                repeats=r.repeats,
                measured_bandwidth_bytes_per_s=r.bandwidth_bytes_per_s,
                measured_flops_per_s=r.flops_per_s,
                datasheet_bandwidth_bytes_per_s=datasheet_bw,
                datasheet_flops_per_s=datasheet_flops,
                measured_over_datasheet=measured / datasheet if datasheet else None,
                measured_over_copy=(
                    r.bandwidth_bytes_per_s / copy.bandwidth_bytes_per_s if r.benchmark == "matvec" else None
                ),
                memory_total_bytes=info.memory_total_bytes,
                l2_cache_bytes=info.l2_cache_bytes,
                torch_version=info.torch_version,
            )
        )
    if origin == "drafted":
        notes.append(
            f"No hardware profile matches {info.device_name!r}: drafted profile {profile.name!r} from these "
            "measurements"
            + (" (saved)" if save else " (--save writes it to the user profile directory)")
            + "."
        )
    else:
        notes.append(f"Compared with the {origin} profile {profile.name!r} ({profile.display_name}).")
    if save:
        from capcalc.measure.calibrate import save_entry

        if draft_data is not None:
            notes.append(f"Drafted profile: {_save_draft(draft_data, warn)}")
        path = save_entry(
            profile.name,
            info.device_name,
            f"capcalc measure --gpu --device {info.device} --save",
            info.torch_version,
            measured={"bandwidth_bytes_per_s": copy.bandwidth_bytes_per_s, "peak_flops_per_s": peaks},
            device_mismatch=mismatch,
        )
        notes.append(f"Calibration saved: {path} (entry {profile.name!r})")
    return MeasureResult(
        "device", records, notes, info.device, info.device_name, info.torch_version, profile.name
    )


def measure_models(
    registry,
    models: Sequence,
    device: str = "auto",
    batches: Sequence[int] = (1, 8, 64),
    contexts: Sequence[int] = (512, 4096),
    prompts: Sequence[int] = (512, 2048),
    prefill_batches: Sequence[int] = (1,),
    weight_dtype: str = "auto",
    hardware: str | None = None,
    repeats: int | None = None,
    save: bool = False,
    progress=None,
    warn: Callable[[str], None] = _ignore,
    describe: Callable[[list[str], str, str], str] | None = None,
    allow_device_mismatch: bool = False,
    yes: bool = False,
) -> MeasureResult:
    """Build each model (random weights) with torch, time decode steps of ``batches`` x
    ``contexts`` and prefills of ``prefill_batches`` x ``prompts``, compare each with the
    latency model and fit the efficiency parameters to all the points together (one
    fit per model too); ``save`` writes the fit to the calibration file, recording how to
    repeat the run: ``describe(model names, dtype, device)`` (default: this call).

    Refused before anything is timed: a point past a learned position table, saving for
    a ``hardware`` that is not the device (unless ``allow_device_mismatch``), and a CPU
    run estimated above :data:`CPU_LIMIT_S` (unless ``yes``)."""
    from capcalc.core.dtypes import canonical_dtype
    from capcalc.measure.model import LOOP_DTYPES

    if not contexts and not prompts:
        raise CapcalcError("nothing to measure: give ctx or prompt values", parameter=("ctx", "prompt"))
    if repeats is not None and repeats < 1:
        raise CapcalcError(f"repeats must be at least 1, got {repeats}", parameter="repeats")
    dtype = (
        None
        if weight_dtype == "auto"
        else canonical_dtype(weight_dtype, LOOP_DTYPES, "weight dtype", "weight_dtype")
    )
    reg = registry
    advance_ctx = _progress_or_none(progress)
    info = _resolve(device)
    dtype = dtype or ("bf16" if info.is_cuda else "fp32")

    from capcalc.measure import bench
    from capcalc.measure.calibrate import Point, calibrate, error_pct, predict, save_entry, shipped_efficiency
    from capcalc.measure.run import (
        PointSpec,
        Runner,
        attended_tokens,
        cache_tokens,
        default_repeats,
        plan_points,
    )

    specs = [PointSpec("decode", b, c) for b in batches for c in contexts]
    specs += [PointSpec("prefill", b, p) for b in prefill_batches for p in prompts]
    plans = []  # (model, [(spec, estimate)]) for each model with a point that fits
    refused_count = 0
    for profile_m in models:
        for spec in specs:
            if spec.tokens > profile_m.max_context:
                warn(
                    f"{profile_m.name}: {spec.phase} at {spec.tokens} tokens exceeds its max context "
                    f"{profile_m.max_context}"
                )
        fitting, refused = plan_points(profile_m, dtype, info, specs, repeats)
        if not fitting and len(models) == 1:
            raise refused[0][1]
        refused_count += len(refused)
        for _spec, reason in refused:
            warn(reason)
        if fitting:
            plans.append((profile_m, fitting))
    if not plans:
        raise CapcalcError("no point of any model fits in memory (see the warnings above)", exit_code=1)

    profile_g, origin = _profile_for(reg, info, hardware)
    mismatch = _save_mismatch(reg, profile_g, origin, info, save, allow_device_mismatch)
    total = sum(len(fitting) + 1 for _, fitting in plans) + 2
    with advance_ctx(total, f"measure on {info.device}") as advance:
        advance.label("copy bandwidth")
        copy = bench.copy_bandwidth(info)
        advance()
        peaks: dict[str, float] = {}
        draft_data = None
        if profile_g is None:
            for d in bench.matmul_dtypes(info) if not info.is_cuda else dict.fromkeys(("bf16", dtype)):
                advance.label(f"{d} matmul (for the drafted profile)")
                peaks[d] = bench.matmul_throughput(info, d).flops_per_s
            draft_data, profile_g = _draft(info, copy.bandwidth_bytes_per_s, peaks)
        advance()
        start = shipped_efficiency(profile_g)
        if not info.is_cuda:
            expected = 0.0
            for profile_m, fitting in plans:
                for spec, _ in fitting:
                    warm, timed = default_repeats(info, spec.phase)
                    point = Point(profile_m, spec.phase, spec.batch, spec.tokens, 1.0)
                    expected += predict(profile_g, point, dtype, start).time_s * (warm + (repeats or timed))
            if expected > CPU_LIMIT_S and not yes:
                raise CapcalcError(
                    template=f"measuring on the CPU would take about {expected / 60:.0f} min, over the "
                    f"{CPU_LIMIT_S / 60:.0f} min limit: pass {{yes}} to run it, or use a GPU, a smaller model "
                    "or fewer points",
                    parameter="yes",
                )
            if expected > 60:
                warn(
                    f"measuring on the CPU should take about {expected / 60:.0f} min; "
                    "use a GPU, a smaller model, or fewer points"
                )
        measured = []  # (model, MeasuredPoint)
        for profile_m, fitting in plans:
            advance.label(f"{profile_m.name}: building the model (random weights)")
            runner = Runner(
                profile_m, dtype, info, max_positions=max(cache_tokens(s, info, repeats) for s, _ in fitting)
            )
            advance()
            for spec, estimate in fitting:
                what = f"ctx {spec.tokens}" if spec.phase == "decode" else f"prompt {spec.tokens}"
                advance.label(f"{profile_m.name}: {spec.phase} batch {spec.batch} {what}")
                measured.append((profile_m, runner.measure(spec, estimate, repeats)))
                advance()
            runner.release()
            del runner

    if not measured:  # every point skipped: nothing was measured, so nothing to report
        raise CapcalcError("no point was measured (see the warnings above)", exit_code=1)
    points = []
    for profile_m, m in measured:
        tokens = attended_tokens(m.spec, info, repeats)
        points.append(Point(profile_m, m.spec.phase, m.spec.batch, tokens, m.time_s))
    cal = calibrate(profile_g, points, dtype, start)

    records = []
    for (profile_m, m), point, before, after in zip(
        measured, points, cal.errors_before_pct, cal.errors_after_pct, strict=True
    ):
        pred = predict(profile_g, point, dtype, cal.before)
        calibrated = predict(profile_g, point, dtype, cal.after)
        decode = m.spec.phase == "decode"
        achieved_bw = pred.bytes / m.time_s
        records.append(
            record(
                record=m.spec.phase,
                model=profile_m.name,
                **_device_fields(info, profile_g.name, origin),
                weight_dtype=dtype,
                kv_dtype=dtype,
                batch=m.spec.batch,
                ctx=m.spec.tokens if decode else None,
                ctx_attended=point.tokens if decode else None,
                prompt_tokens=None if decode else m.spec.tokens,
                measured_time_s=m.time_s,
                predicted_time_s=pred.time_s,
                error_pct=before,
                calibrated_time_s=calibrated.time_s,
                calibrated_error_pct=after,
                predicted_bound=pred.bound,
                predicted_bytes_per_step=pred.bytes,
                predicted_flops_per_step=pred.flops,
                achieved_bandwidth_bytes_per_s=achieved_bw,
                achieved_flops_per_s=pred.flops / m.time_s,
                achieved_bandwidth_over_copy=achieved_bw / copy.bandwidth_bytes_per_s,
                tokens_per_s=(m.spec.batch if decode else m.spec.batch * m.spec.tokens) / m.time_s,
                cuda_graph=m.cuda_graph,
                repeats=len(m.times_s),
                memory_predicted_bytes=m.memory.total_bytes,
                memory_measured_bytes=m.memory_measured_bytes,
                memory_error_pct=(
                    error_pct(m.memory.total_bytes, m.memory_measured_bytes)
                    if m.memory_measured_bytes
                    else None
                ),
                kv_cache_bytes=m.cache_bytes,
                copy_bandwidth_bytes_per_s=copy.bandwidth_bytes_per_s,
                torch_version=info.torch_version,
            )
        )

    saved = None
    notes = []
    if save:
        if draft_data is not None:
            notes.append(f"Drafted profile: {_save_draft(draft_data, warn)}")
        measured_figures = {"bandwidth_bytes_per_s": copy.bandwidth_bytes_per_s}
        if peaks:
            measured_figures["peak_flops_per_s"] = peaks
        names = [p.name for p, _ in plans]
        command = (
            describe(names, dtype, info.device)
            if describe is not None
            else f"Session.measure({','.join(names)!r}, batches={list(batches)}, contexts={list(contexts)}, "
            f"prompts={list(prompts)}, prefill_batches={list(prefill_batches)}, weight_dtype={dtype!r}, "
            f"device={info.device!r}, save=True)"
        )
        saved = str(
            save_entry(
                profile_g.name,
                info.device_name,
                command,
                info.torch_version,
                measured_figures,
                cal.after,
                device_mismatch=mismatch,
            )
        )
        notes.append(
            f"Calibration saved: {saved} (entry {profile_g.name!r}); later predictions on it use it."
        )

    fitted = {f"default_{k}": v for k, v in _fitted(cal.before).items()}
    fitted.update({f"fitted_{k}": v for k, v in _fitted(cal.after).items()})
    scopes = [p.name for p, _ in plans] + (["all"] if len(plans) > 1 else [])
    for scope in scopes:
        only = None if scope == "all" else scope
        mine = [p for p in points if only is None or p.model.name == only]
        # the same fit on this model's points alone (what calibrating on it alone would reach)
        alone = cal if only is None or len(plans) == 1 else calibrate(profile_g, mine, dtype, start)
        records.append(
            record(
                record="calibration",
                model=scope,
                **_device_fields(info, profile_g.name, origin),
                weight_dtype=dtype,
                kv_dtype=dtype,
                models_in_fit=len(plans),
                decode_points=sum(p.phase == "decode" for p in mine),
                prefill_points=sum(p.phase == "prefill" for p in mine),
                skipped_points=refused_count if only is None or len(plans) == 1 else None,
                decode_median_abs_error_pct=cal.median(points, "decode", False, only),
                decode_median_abs_error_calibrated_pct=cal.median(points, "decode", True, only),
                prefill_median_abs_error_pct=cal.median(points, "prefill", False, only),
                prefill_median_abs_error_calibrated_pct=cal.median(points, "prefill", True, only),
                decode_median_abs_error_calibrated_alone_pct=alone.median(mine, "decode", True),
                prefill_median_abs_error_calibrated_alone_pct=alone.median(mine, "prefill", True),
                **fitted,
                copy_bandwidth_bytes_per_s=copy.bandwidth_bytes_per_s,
                calibration_file=saved,
                torch_version=info.torch_version,
            )
        )
    if origin == "drafted":
        notes.insert(
            0,
            f"No hardware profile matches {info.device_name!r}: predictions use a profile drafted "
            f"from measured copy bandwidth and matmul rates ({profile_g.name}).",
        )
    return MeasureResult(
        "model", records, notes, info.device, info.device_name, info.torch_version, profile_g.name
    )


def _progress_or_none(progress):
    """``progress(total, description)``, a context manager giving an ``advance`` callable
    with a ``label`` method, or one that does nothing."""
    from contextlib import contextmanager

    if progress is not None:
        return progress

    @contextmanager
    def none(total: int, description: str):
        yield _NoProgress()

    return none


def measure(session, model=None, gpu: bool = False, **options) -> MeasureResult:
    """:func:`measure_device` (``gpu=True``) or :func:`measure_models` of ``model`` (a
    name or profile, or several comma-separated / in a list) with ``session``'s profiles.
    Warnings of the run become the session's notes."""
    if gpu == bool(model):
        raise CapcalcError(
            "give either gpu (time the device) or a model to measure", parameter=("gpu", "model")
        )
    options.setdefault("warn", session.note)
    if gpu:
        return measure_device(session.registry, **options)
    names = (
        [n.strip() for n in model.split(",") if n.strip()]
        if isinstance(model, str)
        else list(model if isinstance(model, (list, tuple)) else [model])
    )
    return measure_models(session.registry, [session.model(n) for n in names], **options)


def _fitted(eff) -> dict:
    from capcalc.measure.calibrate import FITTED

    return {name: getattr(eff, name) for name in FITTED}

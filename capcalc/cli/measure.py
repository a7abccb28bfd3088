"""`capcalc measure`: time the local device, or a real torch decode loop, against the predictions.

    capcalc measure --gpu [--device cuda:0|cpu] [--save]
    capcalc measure MODEL [--batch 1,8,64] [--ctx 512,4096] [--prompt 512,2048] [--weight-dtype bf16] [--save]

torch is imported only once the command runs (``capcalc.measure.require_torch``); without
it the command prints one line with the install hint and every other command still works.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Annotated, Optional

import typer
import yaml
from rich.table import Table

from capcalc.cli.common import (
    CsvFlag,
    JsonFlag,
    JsonlFlag,
    Output,
    ProfilesOpt,
    app,
    load_registry,
    parse_int_list,
    resolve_model,
)
from capcalc.cli.usage import error_message
from capcalc.core.errors import CapcalcError
from capcalc.core.fileio import write_atomic
from capcalc.report.output import TableSpec, humanize, record, rows_table, stderr_console
from capcalc.sources.dirs import user_profile_dir


def _warn(message: str) -> None:
    print(f"capcalc: warning: {message}", file=sys.stderr)


@contextmanager
def _progress(total: int, description: str):
    """A rich progress bar on stderr (nothing when stderr is not a terminal)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = stderr_console()
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    ) as progress:
        task = progress.add_task(description, total=total)

        def advance(text: str | None = None, step: int = 1):
            progress.update(task, advance=step, description=text or description)

        def label(text: str):
            progress.update(task, description=text)

        advance.label = label  # type: ignore[attr-defined]
        yield advance


def _parse_list(text: str, what: str, allow_none: bool = False) -> list[int]:
    if allow_none and str(text).strip().lower() in ("", "none", "0"):
        return []
    return parse_int_list(text, what)


@app.command()
def measure(
    model: Annotated[
        Optional[str],
        typer.Argument(
            help="Model(s) to build with random weights and time, comma-separated for one joint fit (omit with --gpu)."
        ),
    ] = None,
    gpu: Annotated[
        bool,
        typer.Option("--gpu", help="Time the device: copy bandwidth, matmul throughput, weight streaming."),
    ] = False,
    device: Annotated[str, typer.Option(help="cuda:N, cpu, or auto (the first GPU, else the CPU).")] = "auto",
    batch: Annotated[str, typer.Option(help="Decode batch sizes, comma-separated.")] = "1,8,64",
    ctx: Annotated[
        str, typer.Option(help="Decode contexts (tokens already cached), comma-separated.")
    ] = "512,4096",
    prompt: Annotated[
        str, typer.Option(help="Prefill prompt lengths, comma-separated ('none': no prefill).")
    ] = ("512,2048"),
    prefill_batch: Annotated[str, typer.Option(help="Batch sizes of the prefill points.")] = "1",
    weight_dtype: Annotated[
        str, typer.Option(help="bf16, fp16 or fp32; auto: bf16 on a GPU, fp32 on the CPU.")
    ] = "auto",
    hardware: Annotated[
        Optional[str],
        typer.Option(help="Compare with this GPU profile instead of the one matching the device's name."),
    ] = None,
    repeats: Annotated[
        Optional[int], typer.Option(help="Timed repeats per point (default: 20 decode / 5 prefill on a GPU).")
    ] = None,
    save: Annotated[
        bool,
        typer.Option(
            "--save", help="Write the measured figures / fitted efficiencies to the calibration file."
        ),
    ] = False,
    json_: JsonFlag = False,
    jsonl: JsonlFlag = False,
    csv_: CsvFlag = False,
    profiles: ProfilesOpt = None,
):
    """Were the predictions right on my GPU? Time the device (--gpu) or a real decode loop (MODEL)."""
    out = Output(json_, jsonl, csv_)
    if gpu and model:
        raise CapcalcError("give either --gpu (time the device) or a MODEL to measure, not both")
    if not gpu and not model:
        raise CapcalcError(
            "give a MODEL to measure (e.g. `capcalc measure llama-3.2-1b`) or --gpu to time the device"
        )
    if repeats is not None and repeats < 1:
        raise CapcalcError(f"--repeats must be at least 1, got {repeats}")
    if gpu:
        _measure_device(out, device, hardware, save, profiles)
    else:
        _measure_model(
            out,
            model,
            device,
            batch,
            ctx,
            prompt,
            prefill_batch,
            weight_dtype,
            hardware,
            repeats,
            save,
            profiles,
        )


# --------------------------------------------------------------------------- helpers


def _resolve(device: str):
    from capcalc.measure import require_torch
    from capcalc.measure.device import device_info, resolve_device

    require_torch()
    return device_info(resolve_device(device))


def _profile_for(reg, info, hardware: Optional[str]):
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


def _save_draft(data: dict) -> str:
    path = user_profile_dir() / f"{data['name']}.yaml"
    if path.exists():
        _warn(f"not overwriting {path}: a profile for this device is already there")
        return str(path)
    text = "# drafted by `capcalc measure` from measured figures; edit freely\n" + yaml.safe_dump(
        data, sort_keys=False, default_flow_style=False
    )
    write_atomic(path, text)
    return str(path)


def _device_fields(info, gpu_name: str, origin: str) -> dict:
    return {
        "device": info.device,
        "device_name": info.device_name,
        "gpu": gpu_name,
        "gpu_profile": origin,
    }


# --------------------------------------------------------------------------- measure --gpu


def _measure_device(out: Output, device: str, hardware, save: bool, profiles) -> None:
    info = _resolve(device)
    from capcalc.measure import bench

    reg = load_registry(profiles)
    profile, origin = _profile_for(reg, info, hardware)
    dtypes = bench.matmul_dtypes(info)
    results = []
    with _progress(2 + len(dtypes) + len(bench.MATVEC_SHAPES), f"timing {info.device}") as advance:
        advance.label("copy bandwidth")
        copy = bench.copy_bandwidth(info)
        results.append(copy)
        advance()
        for dtype in dtypes:
            advance.label(f"{dtype} matmul")
            try:
                results.append(bench.matmul_throughput(info, dtype))
            except (RuntimeError, TypeError, AttributeError) as exc:
                _warn(f"{dtype} matmul not timed on {info.device}: {str(exc).splitlines()[0]}")
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
            notes.append(f"Drafted profile: {_save_draft(draft_data)}")
        path = save_entry(
            profile.name,
            info.device_name,
            f"capcalc measure --gpu --device {info.device} --save",
            info.torch_version,
            measured={"bandwidth_bytes_per_s": copy.bandwidth_bytes_per_s, "peak_flops_per_s": peaks},
        )
        notes.append(f"Calibration saved: {path} (entry {profile.name!r})")
    for note in notes:
        print(f"capcalc: {note}", file=sys.stderr)
    spec = TableSpec(
        title=f"measure --gpu: {info.device_name} ({info.device}), torch {info.torch_version}",
        columns=[
            ("benchmark", "benchmark"),
            ("dtype", "dtype"),
            ("shape", "shape"),
            ("time_s", "median time"),
            ("measured_bandwidth_bytes_per_s", "bandwidth"),
            ("measured_flops_per_s", "FLOP/s"),
            ("datasheet_bandwidth_bytes_per_s", "datasheet bandwidth"),
            ("datasheet_flops_per_s", "datasheet FLOP/s"),
            ("measured_over_datasheet", "measured/datasheet"),
            ("measured_over_copy", "matvec/copy"),
        ],
    )
    out.emit(records, spec)


# --------------------------------------------------------------------------- measure MODEL


def _measure_model(
    out, model, device, batch, ctx, prompt, prefill_batch, weight_dtype, hardware, repeats, save, profiles
) -> None:
    from capcalc.core.dtypes import canonical_dtype
    from capcalc.measure.model import LOOP_DTYPES

    batches = _parse_list(batch, "--batch")
    contexts = _parse_list(ctx, "--ctx", allow_none=True)
    prompts = _parse_list(prompt, "--prompt", allow_none=True)
    prefill_batches = _parse_list(prefill_batch, "--prefill-batch")
    if not contexts and not prompts:
        raise CapcalcError("nothing to measure: give --ctx or --prompt values")
    dtype = None if weight_dtype == "auto" else canonical_dtype(weight_dtype, LOOP_DTYPES, "weight dtype")
    reg = load_registry(profiles)
    names = [name.strip() for name in model.split(",") if name.strip()]
    models = [resolve_model(reg, name) for name in names]
    info = _resolve(device)
    dtype = dtype or ("bf16" if info.is_cuda else "fp32")

    from capcalc.measure import bench
    from capcalc.measure.calibrate import Point, calibrate, error_pct, predict, save_entry, shipped_efficiency
    from capcalc.measure.run import PointSpec, Runner, cache_tokens, default_repeats, plan_points

    specs = [PointSpec("decode", b, c) for b in batches for c in contexts]
    specs += [PointSpec("prefill", b, p) for b in prefill_batches for p in prompts]
    plans = []  # (model, [(spec, estimate)]) for each model with a point that fits
    refused_count = 0
    for profile_m in models:
        for spec in specs:
            if spec.tokens > profile_m.max_context:
                _warn(
                    f"{profile_m.name}: {spec.phase} at {spec.tokens} tokens exceeds its max context "
                    f"{profile_m.max_context}"
                )
        fitting, refused = plan_points(profile_m, dtype, info, specs, repeats)
        if not fitting and len(models) == 1:
            raise refused[0][1]
        refused_count += len(refused)
        for _spec, reason in refused:
            _warn(f"skipping: {error_message(reason, 'measure')}")
        if fitting:
            plans.append((profile_m, fitting))
    if not plans:
        raise CapcalcError("no point of any model fits in memory (see the warnings above)", exit_code=1)

    profile_g, origin = _profile_for(reg, info, hardware)
    total = sum(len(fitting) + 1 for _, fitting in plans) + 2
    with _progress(total, f"measure on {info.device}") as advance:
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
            if expected > 60:
                _warn(
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

    points = []
    for profile_m, m in measured:
        tokens = m.spec.tokens
        if m.spec.phase == "decode":  # the median timed step attends to this many tokens
            warm, timed = default_repeats(info, "decode")
            tokens += warm + ((repeats or timed) + 1) // 2
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
            notes.append(f"Drafted profile: {_save_draft(draft_data)}")
        measured_figures = {"bandwidth_bytes_per_s": copy.bandwidth_bytes_per_s}
        if peaks:
            measured_figures["peak_flops_per_s"] = peaks
        command = (
            f"capcalc measure {','.join(p.name for p, _ in plans)} --batch {batch} --ctx {ctx} --prompt {prompt} "
            f"--prefill-batch {prefill_batch} --weight-dtype {dtype} --device {info.device} --save"
        )
        saved = str(
            save_entry(
                profile_g.name, info.device_name, command, info.torch_version, measured_figures, cal.after
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
    for note in notes:
        print(f"capcalc: {note}", file=sys.stderr)
    out.emit(records, TableSpec(render=_render_model(info, profile_g.name)))


def _fitted(eff) -> dict:
    from capcalc.measure.calibrate import FITTED

    return {name: getattr(eff, name) for name in FITTED}


_ERROR_COLUMNS = [
    ("model", "model"),
    ("decode_points", "decode points"),
    ("decode_median_abs_error_pct", "decode |error|"),
    ("decode_median_abs_error_calibrated_pct", "calibrated"),
    ("prefill_points", "prefill points"),
    ("prefill_median_abs_error_pct", "prefill |error|"),
    ("prefill_median_abs_error_calibrated_pct", "calibrated"),
    ("decode_median_abs_error_calibrated_alone_pct", "decode, fit alone"),
    ("prefill_median_abs_error_calibrated_alone_pct", "prefill, fit alone"),
]


def _render_model(info, gpu_name: str):
    columns = [
        ("model", "model"),
        ("record", "phase"),
        ("batch", "batch"),
        ("ctx", "ctx"),
        ("prompt_tokens", "prompt"),
        ("measured_time_s", "measured"),
        ("predicted_time_s", "predicted"),
        ("error_pct", "error"),
        ("calibrated_time_s", "calibrated"),
        ("calibrated_error_pct", "error (cal.)"),
        ("achieved_bandwidth_bytes_per_s", "achieved bandwidth"),
        ("achieved_flops_per_s", "achieved FLOP/s"),
        ("memory_predicted_bytes", "memory predicted"),
        ("memory_measured_bytes", "memory measured"),
    ]

    def render(records, console):
        points = [r for r in records if r["record"] != "calibration"]
        summaries = [r for r in records if r["record"] == "calibration"]
        title = f"measure on {info.device_name} ({info.device}) vs {gpu_name}: measured and predicted"
        console.print(rows_table(points, TableSpec(title=title, columns=columns)))
        console.print(
            rows_table(summaries, TableSpec(title="median |error|, before and after", columns=_ERROR_COLUMNS))
        )
        table = Table(title="efficiency parameters: default and fitted (least squares over the points)")
        for header in ("parameter", "default", "fitted"):
            table.add_column(header, justify="left" if header == "parameter" else "right")
        last = summaries[-1]
        for name in _fitted_names():
            values = [last[f"default_{name}"], last[f"fitted_{name}"]]
            # efficiencies are fractions (humanize would read '_flops_' as a FLOP count)
            fraction = name.endswith("_efficiency") and "tokens" not in name
            cells = [f"{v:.3f}" if fraction else humanize(name, v) for v in values]
            table.add_row(name, *cells)
        console.print(table)
        if last.get("calibration_file"):
            console.print(f"saved to {last['calibration_file']}")

    return render


def _fitted_names():
    from capcalc.measure.calibrate import FITTED

    return FITTED

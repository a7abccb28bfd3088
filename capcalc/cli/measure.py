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
from capcalc.measure.session import CPU_LIMIT_S
from capcalc.report.output import TableSpec, humanize, rows_table, stderr_console


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


def _parse_list(text: str, what: str, kind: str, allow_none: bool = False) -> list[int]:
    if allow_none and str(text).strip().lower() in ("", "none", "0"):
        return []
    return parse_int_list(text, what, kind)


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
    tp: Annotated[
        int,
        typer.Option(
            help="Tensor-parallel ranks: shard MODEL over N GPUs (gloo ranks on the CPU), or with --gpu "
            "time the all-reduce on 2..N of them; capcalc spawns the N processes (or run it under torchrun)."
        ),
    ] = 1,
    allow_device_mismatch: Annotated[
        bool,
        typer.Option(
            "--allow-device-mismatch",
            help="With --save and --hardware: save even though the device measured is not that profile's "
            "(the entry is marked device_mismatch).",
        ),
    ] = False,
    yes: Annotated[
        bool,
        typer.Option("--yes", help=f"Run even when the CPU estimate exceeds {CPU_LIMIT_S // 60:.0f} min."),
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
    from capcalc.measure.session import measure_device, measure_models

    registry = load_registry(profiles)
    if tp != 1:
        _measure_tp(out, registry, model, gpu, tp, device, batch, ctx, prompt, prefill_batch, weight_dtype,
                    hardware, repeats, save, profiles)  # fmt: skip
        return
    if gpu:
        result = measure_device(registry, device, hardware, save, _progress, _warn, allow_device_mismatch)
        for note in result.notes:
            print(f"capcalc: {note}", file=sys.stderr)
        out.emit(result.records, _device_spec(result))
        return
    batches, contexts, prompts, prefill_batches = _points(batch, ctx, prompt, prefill_batch)
    models = [resolve_model(registry, name.strip()) for name in model.split(",") if name.strip()]
    result = measure_models(
        registry,
        models,
        device,
        batches,
        contexts,
        prompts,
        prefill_batches,
        weight_dtype,
        hardware,
        repeats,
        save,
        _progress,
        _warn,
        lambda names, dtype, dev: (
            f"capcalc measure {','.join(names)} --batch {batch} --ctx {ctx} --prompt {prompt} "
            f"--prefill-batch {prefill_batch} --weight-dtype {dtype} --device {dev} --save"
        ),
        allow_device_mismatch,
        yes,
    )
    for note in result.notes:
        print(f"capcalc: {note}", file=sys.stderr)
    out.emit(result.records, TableSpec(render=_render_model(result)))


def _points(batch: str, ctx: str, prompt: str, prefill_batch: str):
    """The point lists: decode batches, contexts, prompts, prefill batches."""
    return (
        _parse_list(batch, "--batch", "batch"),
        _parse_list(ctx, "--ctx", "context", allow_none=True),
        _parse_list(prompt, "--prompt", "tokens", allow_none=True),
        _parse_list(prefill_batch, "--prefill-batch", "batch"),
    )


def _measure_tp(out, registry, model, gpu, tp, device, batch, ctx, prompt, prefill_batch, weight_dtype,
                hardware, repeats, save, profiles) -> None:  # fmt: skip
    """--tp N: capcalc.measure.tp_session runs the ranks; only rank 0 prints."""
    from capcalc.core.dtypes import canonical_dtype
    from capcalc.measure.model import LOOP_DTYPES
    from capcalc.measure.tp_session import measure_allreduce_tp, measure_model_tp

    if gpu:
        result = measure_allreduce_tp(registry, tp, device, hardware, repeats, save)
    else:
        if "," in model:
            raise CapcalcError("--tp measures one model at a time")
        result = measure_model_tp(
            registry,
            resolve_model(registry, model.strip()),
            tp,
            device,
            *_points(batch, ctx, prompt, prefill_batch),
            None if weight_dtype == "auto" else canonical_dtype(weight_dtype, LOOP_DTYPES, "weight dtype"),
            hardware,
            repeats,
            save,
            profiles,
        )
    if result is not None:
        out.emit(*result)


def _warn(message) -> None:
    """A warning while measuring; a refused point (a library error) names its flags."""
    if isinstance(message, CapcalcError):
        message = "skipping: " + error_message(message, "measure")
    print(f"capcalc: warning: {message}", file=sys.stderr)


def _device_spec(result) -> TableSpec:
    return TableSpec(
        title=f"measure --gpu: {result.device_name} ({result.device}), torch {result.torch_version}",
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
        # the ratios to the datasheet matter more than the datasheet's own figures (`capcalc show GPU`)
        low_value=("datasheet FLOP/s", "datasheet bandwidth", "shape"),
    )


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


def _render_model(result):
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
        title = f"measure on {result.device_name} ({result.device}) vs {result.gpu}: measured and predicted"
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

"""`capcalc latency`: TTFT, inter-token latency and throughput to expect."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer
from rich.table import Table

from ..calibration import load_calibration
from ..efficiency import DESCRIPTIONS, ResolvedEfficiency, flag_name, resolve_efficiency
from ..kv import kv_bytes_per_sequence
from ..latency import predict_latency
from ..output import TableSpec, humanize, record
from ..weights import weight_bytes
from .common import CsvFlag, JsonFlag, JsonlFlag, NoCalibrationFlag, Output, ProfilesOpt, app, load_registry
from .roofline import ComputeDtypeOpt, GpuOpt, KvDtypeOpt, TpOpt, WeightDtypeOpt


def _opt(name: str, kind: str):
    flag = flag_name(name)
    unit = " (e.g. 10us, 0.3ms, or seconds)" if kind == "duration" else ""
    return typer.Option(flag, help=f"Assume {DESCRIPTIONS[name]}{unit}.")


def cell(key: str, value) -> str:
    """A table cell: efficiency fractions are plain numbers, the rest as every command shows them."""
    if key.endswith("_efficiency") and isinstance(value, (int, float)):
        return f"{value:.3g}"
    return humanize(key, value)


def assumption_notes(resolved: ResolvedEfficiency) -> list[str]:
    lines = ["Assumptions (flag > calibration > GPU profile > built-in default; see docs/latency.md):"]
    for name, value in resolved.efficiency.as_record().items():
        param = name.removeprefix("assume_")
        lines.append(f"  {param} = {cell(param, value)}  ({resolved.sources[param]})")
    return lines


def render(title: str):
    def draw(records: list[dict], console) -> None:
        console.print(title, style="bold")
        table = Table(header_style="bold")
        table.add_column("field")
        table.add_column("value", justify="right")
        for key, value in records[0].items():
            if key != "schema_version":
                table.add_row(key, cell(key, value))
        console.print(table)

    return draw


@app.command(name="latency")
def latency_command(
    model: Annotated[str, typer.Argument(help="Model name, alias or Hugging Face id.")],
    gpu: GpuOpt,
    prompt: Annotated[int, typer.Option(help="Prompt tokens per request.")] = 1024,
    output: Annotated[int, typer.Option(help="Output tokens per request.")] = 256,
    batch: Annotated[
        int, typer.Option(help="Requests run together (prefilled together, decoded in lock step).")
    ] = 1,
    weight_dtype: WeightDtypeOpt = "auto",
    kv_dtype: KvDtypeOpt = "auto",
    compute_dtype: ComputeDtypeOpt = "auto",
    tp: TpOpt = 1,
    weight_bandwidth_efficiency: Annotated[Optional[float], _opt("weight_bandwidth_efficiency", "")] = None,
    kv_bandwidth_efficiency: Annotated[Optional[float], _opt("kv_bandwidth_efficiency", "")] = None,
    prefill_flops_efficiency: Annotated[Optional[float], _opt("prefill_flops_efficiency", "")] = None,
    prefill_tokens_half_efficiency: Annotated[
        Optional[float], _opt("prefill_tokens_half_efficiency", "")
    ] = None,
    layer_overhead: Annotated[Optional[str], _opt("layer_overhead_s", "duration")] = None,
    moe_layer_overhead: Annotated[Optional[str], _opt("moe_layer_overhead_s", "duration")] = None,
    moe_token_overhead: Annotated[Optional[str], _opt("moe_token_overhead_s", "duration")] = None,
    step_overhead: Annotated[Optional[str], _opt("step_overhead_s", "duration")] = None,
    allreduce_latency: Annotated[Optional[str], _opt("allreduce_latency_s", "duration")] = None,
    no_calibration: NoCalibrationFlag = False,
    json_: JsonFlag = False,
    jsonl: JsonlFlag = False,
    csv_: CsvFlag = False,
    profiles: ProfilesOpt = None,
):
    """What TTFT, inter-token latency and throughput to expect (achievable rates, not datasheet)."""
    out = Output(json_, jsonl, csv_)
    reg = load_registry(profiles)
    profile = reg.resolve_model(model)
    device = reg.gpu(gpu)
    flags = dict(
        weight_bandwidth_efficiency=weight_bandwidth_efficiency,
        kv_bandwidth_efficiency=kv_bandwidth_efficiency,
        prefill_flops_efficiency=prefill_flops_efficiency,
        prefill_tokens_half_efficiency=prefill_tokens_half_efficiency,
        layer_overhead_s=layer_overhead,
        moe_layer_overhead_s=moe_layer_overhead,
        moe_token_overhead_s=moe_token_overhead,
        step_overhead_s=step_overhead,
        allreduce_latency_s=allreduce_latency,
    )
    calibration = None if no_calibration else load_calibration(profiles or ())
    resolved = resolve_efficiency(device, flags, calibration)
    if resolved.calibrated:
        entry = calibration["gpus"][device.name]
        when = f" measured {resolved.calibration_date}" if resolved.calibration_date else ""
        print(
            f"capcalc: note: using the calibration of {device.name}{when} from {entry.get('path', 'calibration.yaml')}",
            file=sys.stderr,
        )
    result = predict_latency(
        profile,
        device,
        prompt_tokens=prompt,
        output_tokens=output,
        batch=batch,
        weight_dtype=weight_dtype,
        kv_dtype=kv_dtype,
        tp=tp,
        efficiency=resolved,
        compute_dtype=compute_dtype,
    )
    needed = weight_bytes(profile, result.weight_dtype).bytes / tp + batch * kv_bytes_per_sequence(
        profile, prompt + output, result.kv_dtype, tp
    )
    if needed > device.memory_bytes:
        print(
            f"capcalc: note: weights + KV need {humanize('bytes', needed)} per GPU, more than {device.name}'s "
            f"{humanize('bytes', device.memory_bytes)}: this configuration does not fit (see `capcalc fit`)",
            file=sys.stderr,
        )
    rec = record(result, **resolved.as_record())
    title = f"Latency: {result.model} on {result.gpu}, {batch} x ({prompt:,} in, {output:,} out), tp={tp}"
    out.emit([rec], TableSpec(render=render(title), notes=assumption_notes(resolved)), single=True)

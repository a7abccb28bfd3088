"""`capcalc latency`: TTFT, inter-token latency and throughput to expect."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer
from rich.table import Table

from capcalc.cli.common import (
    ComputeDtypeOpt,
    CsvFlag,
    GpuOpt,
    JsonFlag,
    JsonlFlag,
    KvDtypeOpt,
    ModelArg,
    NoCalibrationFlag,
    Output,
    ProfilesOpt,
    TpOpt,
    WeightDtypeOpt,
    app,
    load_calibration_cached,
    load_registry,
    note_calibration,
    resolve_model,
)
from capcalc.perf.efficiency import DESCRIPTIONS, ResolvedEfficiency, flag_name, resolve_efficiency
from capcalc.perf.latency import predict_latency
from capcalc.report.output import TableSpec, humanize, record
from capcalc.serving.fit import FitRequest, fit, memory_of


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


def serving_warning(profile, device, result, batch: int, context: int) -> str | None:
    """What `capcalc fit` would say against this prediction, when it is not served as
    asked: the weights or one request do not fit, or vLLM's KV cache holds fewer
    requests of ``context`` tokens than the batch."""
    if context > profile.max_context:
        return f"{context:,} tokens exceed {profile.name}'s max context ({profile.max_context:,})"
    memory, source = memory_of(device)
    request = FitRequest(
        memory,
        source,
        gpu=device.name,
        tp=result.tp,
        weight_dtype=result.weight_dtype,
        kv_dtype=result.kv_dtype,
        max_model_len=context,
    )
    capacity = fit(profile, request, suggest=False)
    if not capacity.fits:
        return (
            f"{profile.name} at tp={result.tp} on {device.name} with {context:,}-token requests: "
            "does not fit (see `capcalc fit`)"
        )
    if capacity.max_concurrency < batch:
        return (
            f"vLLM's KV cache on {device.name} holds {capacity.max_concurrency:.2f} requests of {context:,} "
            f"tokens, fewer than --batch {batch} (see `capcalc fit`)"
        )
    return None


@app.command(name="latency")
def latency_command(
    model: ModelArg,
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
    allreduce_latency_per_rank: Annotated[
        Optional[str], _opt("allreduce_latency_per_rank_s", "duration")
    ] = None,
    no_calibration: NoCalibrationFlag = False,
    json_: JsonFlag = False,
    jsonl: JsonlFlag = False,
    csv_: CsvFlag = False,
    profiles: ProfilesOpt = None,
):
    """What TTFT, inter-token latency and throughput to expect (achievable rates, not datasheet)."""
    out = Output(json_, jsonl, csv_)
    reg = load_registry(profiles)
    profile = resolve_model(reg, model)
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
        allreduce_latency_per_rank_s=allreduce_latency_per_rank,
    )
    calibration = None if no_calibration else load_calibration_cached(profiles)
    resolved = resolve_efficiency(device, flags, calibration)
    note_calibration(device.name, resolved)
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
    warning = serving_warning(profile, device, result, batch, prompt + output)
    if warning:
        print(f"capcalc: note: {warning}", file=sys.stderr)
    rec = record(result, **resolved.as_record())
    title = f"Latency: {result.model} on {result.gpu}, {batch} x ({prompt:,} in, {output:,} out), tp={tp}"
    out.emit([rec], TableSpec(render=render(title), notes=assumption_notes(resolved)), single=True)

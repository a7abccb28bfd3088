"""`capcalc latency`: TTFT, inter-token latency and throughput to expect."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from capcalc.cli.common import (
    CsvFlag,
    GpuOpt,
    JsonFlag,
    JsonlFlag,
    ModelArg,
    NoCalibrationFlag,
    Output,
    ProfilesOpt,
    app,
    deployment_options,
    efficiency_options,
    session,
    show_notes,
    sweepable,
)
from capcalc.perf.efficiency import ResolvedEfficiency
from capcalc.report.output import TableSpec, humanize


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


def compute(s, model, gpu, deployment, efficiency, prompt=1024, output=256, batch=1):
    return s.latency(model, gpu, prompt, output, batch, deployment, efficiency)


@app.command(name="latency")
@sweepable("latency", compute, lambda report: [report.record()])
@deployment_options("weight_dtype", "kv_dtype", "compute_dtype", "tp", "group_size", "quantize_embeddings")
@efficiency_options
def latency_command(
    model: ModelArg,
    gpu: GpuOpt,
    deployment,
    efficiency,
    prompt: Annotated[int, typer.Option(help="Prompt tokens per request.")] = 1024,
    output: Annotated[int, typer.Option(help="Output tokens per request.")] = 256,
    batch: Annotated[
        int, typer.Option(help="Requests run together (prefilled together, decoded in lock step).")
    ] = 1,
    no_calibration: NoCalibrationFlag = False,
    json_: JsonFlag = False,
    jsonl: JsonlFlag = False,
    csv_: CsvFlag = False,
    profiles: ProfilesOpt = None,
):
    """What TTFT, inter-token latency and throughput to expect (achievable rates, not datasheet)."""
    out = Output(json_, jsonl, csv_)
    s = session(profiles, no_calibration)
    try:
        report = compute(s, model, gpu, deployment, efficiency, prompt, output, batch)
    finally:
        show_notes(s)
    result = report.result
    title = (
        f"Latency: {result.model} on {result.gpu}, {batch} x ({prompt:,} in, {output:,} out), tp={result.tp}"
    )
    out.emit(
        [report.record()],
        TableSpec(render=render(title), notes=assumption_notes(report.efficiency)),
        single=True,
    )

"""`capcalc roofline`: where the bottleneck is, for one decode step and one prefill."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from capcalc.cli.common import (
    CsvFlag,
    GpuOpt,
    JsonFlag,
    JsonlFlag,
    ModelArg,
    Output,
    ProfilesOpt,
    app,
    deployment_options,
    session,
    show_notes,
    sweepable,
)
from capcalc.core.units import format_bytes
from capcalc.model.flops import COMPONENTS
from capcalc.perf.roofline import chart_points
from capcalc.report.output import TableSpec, humanize, low_value
from capcalc.report.plot import check_plot_path, save_roofline_chart


def landmark_notes(rec: dict) -> list[str]:
    """The seed's landmarks, in words."""
    ctx = rec["ctx"]
    notes = [
        f"Ridge point ({rec['compute_dtype']}): {humanize('x_flop_per_byte', rec['ridge_point_flop_per_byte'])} = "
        f"{humanize('peak_flops_per_s', rec['peak_flops_per_s'])} / {humanize('bandwidth_bytes_per_s', rec['bandwidth_bytes_per_s'])}.",
        f"Decode speed limit (batch 1, ctx {ctx:,}): {rec['decode_speed_limit_tokens_per_s']:,.0f} tokens/s per sequence; "
        f"single-stream compute utilisation {rec['single_stream_compute_utilization_pct']:.2g} %.",
    ]
    limit = rec["critical_batch_ctx_limit_tokens"]
    if rec["critical_batch"] is not None:
        text = (
            f"Critical batch at ctx {ctx:,}: decode turns compute-bound from batch {rec['critical_batch']:,}"
        )
        kv = rec["critical_batch_kv_bytes_per_gpu"]
        if kv is not None:
            text += f" (its KV cache: {format_bytes(kv)} per GPU"
            text += ", more than the GPU holds)." if kv > rec["gpu_memory_bytes"] else ")."
        notes.append(text)
    elif limit == 0:
        notes.append("Decode never turns compute-bound at any batch or context on this GPU.")
    else:
        notes.append(
            f"Decode never turns compute-bound at ctx {ctx:,}: each sequence's KV reads grow with the batch "
            f"as fast as its FLOPs. It would at a context below {limit + 1:,} tokens."
        )
    for phase in ("decode", "prefill"):
        touched = rec.get(f"{phase}_experts_touched_per_layer")
        if touched is not None:
            notes.append(f"MoE {phase}: {touched:,.1f} routed experts read per layer (uniform routing).")
    return notes


def render(records: list[dict], console) -> None:
    rec = records[0]
    summary = Table(
        title=f"Roofline: {rec['model']} on {rec['gpu']} (datasheet, per GPU)", header_style="bold"
    )
    # in a narrow terminal: bytes is FLOPs / intensity, and the itemised table has both
    low_value(summary, "bytes", "FLOPs", "compute", "memory")
    for header in (
        "phase",
        "FLOPs",
        "bytes",
        "intensity",
        "compute",
        "memory",
        "lower bound",
        "bound",
        "utilisation",
    ):
        summary.add_column(header, justify="left" if header == "phase" else "right")
    for phase, what in (
        ("decode", f"decode B={rec['batch']} ctx={rec['ctx']:,}"),
        ("prefill", f"prefill {rec['batch']}x{rec['prompt_tokens']:,}"),
    ):
        summary.add_row(
            what,
            humanize("x_flops", rec[f"{phase}_flops"]),
            humanize("bytes", rec[f"{phase}_bytes"]),
            humanize("flop_per_byte", rec[f"{phase}_intensity_flop_per_byte"]),
            humanize("x_s", rec[f"{phase}_compute_s"]),
            humanize("x_s", rec[f"{phase}_memory_s"]),
            humanize("x_s", rec[f"{phase}_time_lower_bound_s"]),
            rec[f"{phase}_bound"],
            humanize("x_pct", rec[f"{phase}_compute_utilization_pct"]),
        )
    console.print(summary)
    items = Table(title="Itemised (per GPU)", header_style="bold")
    for header in ("component", "decode FLOPs", "decode bytes", "prefill FLOPs", "prefill bytes"):
        items.add_column(header, justify="left" if header == "component" else "right")
    for name in COMPONENTS:
        cells = [rec[f"{p}_{name}_{k}"] for p in ("decode", "prefill") for k in ("flops", "bytes")]
        if any(cells):
            items.add_row(
                name, *(humanize("x_flops" if i % 2 == 0 else "bytes", v) for i, v in enumerate(cells))
            )
    console.print(items)
    console.print(
        f"dtypes: weights {rec['weight_dtype']}, KV {rec['kv_dtype']}, compute {rec['compute_dtype']}; tp={rec['tp']}"
    )
    if "fits_in_memory" in rec:
        tokens = max(rec["ctx"], rec["prompt_tokens"])
        console.print(
            f"vLLM (capcalc fit) with {rec['batch']:,} x {tokens:,} tokens: "
            f"fits in memory {humanize('', rec['fits_in_memory'])}, "
            f"within the max context {humanize('', rec['within_max_context'])}"
        )


def compute(s, model, gpu, deployment, batch=1, ctx=1024, prompt=1024, plot=None):
    """The roofline (a :class:`capcalc.api.RooflineReport`), and its chart drawn to ``plot`` when given."""
    plot_path = check_plot_path(plot) if plot is not None else None
    report = s.roofline(model, gpu, batch, ctx, prompt, deployment)
    if plot_path is not None:
        result = report.result
        save_roofline_chart(plot_path, result, chart_points(s.model(model), s.gpu(gpu), result))
    return report


@app.command(name="roofline")
@sweepable("roofline", compute, lambda result: [result.record()])
@deployment_options("weight_dtype", "kv_dtype", "compute_dtype", "tp", "group_size", "quantize_embeddings")
def roofline_command(
    model: ModelArg,
    gpu: GpuOpt,
    deployment,
    batch: Annotated[
        int, typer.Option(help="Sequences decoded together (and prompts prefilled together).")
    ] = 1,
    ctx: Annotated[int, typer.Option(help="Context each decoding sequence attends to, in tokens.")] = 1024,
    prompt: Annotated[int, typer.Option(help="Prompt tokens of the prefill.")] = 1024,
    plot: Annotated[
        Optional[str],
        typer.Option(help="Also draw the roofline chart to FILE.png or FILE.svg (needs matplotlib)."),
    ] = None,
    json_: JsonFlag = False,
    jsonl: JsonlFlag = False,
    csv_: CsvFlag = False,
    profiles: ProfilesOpt = None,
):
    """Where is the bottleneck: FLOPs, bytes, intensity and bound of a decode step and a prefill."""
    out = Output(json_, jsonl, csv_)
    s = session(profiles)
    try:
        result = compute(s, model, gpu, deployment, batch, ctx, prompt, plot)
    finally:
        show_notes(s)
    rec = result.record()
    out.emit([rec], TableSpec(render=render, notes=landmark_notes(rec)), single=True)

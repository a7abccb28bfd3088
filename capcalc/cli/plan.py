"""`capcalc plan`: how many GPUs for this traffic and these SLOs, and at what cost."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer
from rich.table import Table

from capcalc.cli.common import (
    BatchWaitItersOpt,
    BatchWaitRatioOpt,
    CsvFlag,
    JsonFlag,
    JsonlFlag,
    MemoryFractionOpt,
    ModelArg,
    NoCalibrationFlag,
    Output,
    ProfilesOpt,
    RecvIntervalOpt,
    app,
    deployment_options,
    efficiency_options,
    parse_int_list,
    session,
    show_notes,
    sweepable,
)
from capcalc.core.errors import CapcalcError
from capcalc.core.inputs import excerpt, parse_float
from capcalc.core.units import format_duration, parse_rate
from capcalc.report.output import TableSpec, humanize

#: feasible candidates the table shows (the machine formats carry all of them)
TABLE_ROWS = 15

MODEL_NOTE = (
    "Each replica is the serving model of its engine under load (a simulation of the scheduler, closed loop: "
    "C clients, as `vllm bench serve --max-concurrency C`); SLOs bind the mean unless given as pNN:TIME "
    "(docs/plan.md)."
)

#: the help of an SLO option that takes a statistic
SLO_HELP = "{what} target: TIME binds the mean, pNN:TIME a percentile (p50, p90, p99), e.g. {example}."


def _names(text: Optional[str]) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()] if text else []


def parse_prices(values: Optional[list[str]]) -> dict[str, float]:
    """'--price h100-sxm=2.49' (repeatable, or comma-separated) -> {GPU name as given: USD per GPU-hour}."""
    prices: dict[str, float] = {}
    for value in values or ():
        for item in _names(value):
            name, eq, amount = item.partition("=")
            if not eq:
                raise CapcalcError(
                    f"--price: expected GPU=USD_PER_HOUR (e.g. h100-sxm=2.49), got {excerpt(item)}"
                )
            try:
                usd = parse_float(amount.strip().lstrip("$").removesuffix("/h"), "--price")
            except CapcalcError:
                raise CapcalcError(
                    f"--price {excerpt(item)}: expected a finite number of USD per GPU-hour"
                ) from None
            if not usd > 0:
                raise CapcalcError(f"--price {excerpt(item)}: the price must be positive")
            prices[name.strip()] = usd
    return prices


def compute(
    s,
    model,
    rps,
    prompt,
    output,
    deployment,
    efficiency,
    gpu=None,
    tp=None,
    weight_dtype="auto",
    kv_dtype="auto",
    ttft_slo=None,
    itl_slo=None,
    e2e_slo=None,
    price=None,
    gpu_memory_utilization=None,
    max_num_seqs=None,
    tpot_slo=None,
    engine="vllm",
    memory_fraction=None,
    recv_interval=None,
    batch_wait_iters=None,
    batch_wait_max_tokens_ratio=None,
):
    """The plan for the parsed options."""
    rate, unit = parse_rate(rps, "--rps")
    if unit != "req":
        raise CapcalcError(f"--rps is requests per second (e.g. 200 or 200/s), got {rps!r}")
    return s.plan(
        model,
        rate,
        prompt,
        output,
        gpus=_names(gpu) or None,
        tps=parse_int_list(tp, "--tp") if tp is not None else None,
        weight_dtypes=_names(weight_dtype) or ["auto"],
        kv_dtypes=_names(kv_dtype) or ["auto"],
        ttft_s=ttft_slo,
        itl_s=itl_slo,
        tpot_s=tpot_slo,
        e2e_s=e2e_slo,
        prices=parse_prices(price),
        deployment=deployment,
        efficiency=efficiency,
        gpu_memory_utilization=gpu_memory_utilization,
        max_num_seqs=max_num_seqs,
        engine=engine,
        memory_fraction=memory_fraction,
        recv_interval=recv_interval,
        batch_wait_iters=batch_wait_iters,
        batch_wait_max_tokens_ratio=batch_wait_max_tokens_ratio,
    )


@app.command(name="plan")
@sweepable("plan", compute, lambda report: report.records())
@deployment_options("compute_dtype", "group_size", "quantize_embeddings")
@efficiency_options
def plan_command(
    model: ModelArg,
    rps: Annotated[str, typer.Option("--rps", help="Requests per second to carry, e.g. 200 or 12000/min.")],
    prompt: Annotated[int, typer.Option(help="Prompt tokens per request.")],
    output: Annotated[int, typer.Option(help="Output tokens per request.")],
    deployment,
    efficiency,
    gpu: Annotated[
        Optional[str],
        typer.Option(help="GPU profiles to consider, comma-separated (default: every known GPU)."),
    ] = None,
    tp: Annotated[
        Optional[str],
        typer.Option(help="Tensor-parallel degrees to try, comma-separated (default: valid of 1,2,4,8)."),
    ] = None,
    weight_dtype: Annotated[str, typer.Option(help="Weight dtypes to try, comma-separated.")] = "auto",
    kv_dtype: Annotated[str, typer.Option(help="KV cache dtypes to try, comma-separated.")] = "auto",
    ttft_slo: Annotated[
        Optional[str], typer.Option(help=SLO_HELP.format(what="Time to first token", example="p90:1s"))
    ] = None,
    itl_slo: Annotated[
        Optional[str],
        typer.Option(help=SLO_HELP.format(what="Inter-token latency (all gaps pooled)", example="p99:50ms")),
    ] = None,
    e2e_slo: Annotated[
        Optional[str], typer.Option(help=SLO_HELP.format(what="End-to-end latency", example="p99:30s"))
    ] = None,
    tpot_slo: Annotated[
        Optional[str], typer.Option(help=SLO_HELP.format(what="Time per output token", example="p99:50ms"))
    ] = None,
    engine: Annotated[
        str,
        typer.Option(help="Serving engine whose scheduler and costs to plan for: vllm, sglang or trtllm."),
    ] = "vllm",
    price: Annotated[
        Optional[list[str]],
        typer.Option(
            help="USD per GPU-hour, GPU=PRICE (repeatable); overrides the profile's price_per_hour."
        ),
    ] = None,
    gpu_memory_utilization: Annotated[
        Optional[float],
        typer.Option(help="Fraction of GPU memory vLLM may use (as `fit`; default 0.9); vLLM only."),
    ] = None,
    memory_fraction: MemoryFractionOpt = None,
    recv_interval: RecvIntervalOpt = None,
    batch_wait_iters: BatchWaitItersOpt = None,
    batch_wait_max_tokens_ratio: BatchWaitRatioOpt = None,
    max_num_seqs: Annotated[
        Optional[int],
        typer.Option(help="Most requests running at once (vLLM max_num_seqs; default: the engine's own)."),
    ] = None,
    no_calibration: NoCalibrationFlag = False,
    json_: JsonFlag = False,
    jsonl: JsonlFlag = False,
    csv_: CsvFlag = False,
    profiles: ProfilesOpt = None,
):
    """How many GPUs for this traffic and these SLOs, and what does a million tokens cost?"""
    out = Output(json_, jsonl, csv_)
    s = session(profiles, no_calibration)
    try:
        report = compute(s, model, rps, prompt, output, deployment, efficiency, gpu, tp, weight_dtype, kv_dtype,
                         ttft_slo, itl_slo, e2e_slo, price, gpu_memory_utilization, max_num_seqs,
                         tpot_slo, engine, memory_fraction, recv_interval,
                         batch_wait_iters, batch_wait_max_tokens_ratio)  # fmt: skip
    finally:
        show_notes(s)
    rate = report.traffic.requests_per_s
    slos = report.slos
    title = (
        f"Plan: {report.model} on {engine.lower()}, {rate:,.4g} requests/s of {prompt:,} tokens in / {output:,} out"
        + "".join(f", {text}" for text in slos.describe())
    )
    out.emit(report.records(), TableSpec(render=lambda recs, console: render(recs, console, title, slos)))
    if report.best is None:
        print(
            f"capcalc: error: no candidate carries {rate:g} requests/s within the SLOs "
            f"({len(report)} rejected; see rejected_because)",
            file=sys.stderr,
        )
        return 1
    return 0


def render(records: list[dict], console, title: str, slos=None) -> None:
    console.print(title, style="bold")
    feasible = [r for r in records if r["feasible"]]
    rejected = [r for r in records if not r["feasible"]]
    if feasible:
        table = Table(header_style="bold", title="Candidates, best first", title_justify="left")
        columns = [
            ("gpu", "GPU"),
            ("tp", "tp"),
            ("weight_dtype", "weights"),
            ("kv_dtype", "KV"),
            ("replicas", "replicas"),
            ("gpus", "GPUs"),
            ("batch_per_replica", "clients"),
            (_stat_key(slos, "ttft"), _stat_header(slos, "ttft", "TTFT")),
            (_stat_key(slos, "tpot"), _stat_header(slos, "tpot", "TPOT")),
            (_stat_key(slos, "e2e"), _stat_header(slos, "e2e", "E2E")),
            ("kv_bytes_used_per_gpu", "KV/GPU"),
            ("output_tokens_per_s_per_gpu", "tok/s/GPU"),
            ("binding_constraint", "binding"),
            ("cost_usd_per_hour", "$/hour"),
            ("cost_usd_per_million_output_tokens", "$/M out tok"),
        ]
        for i, (_, header) in enumerate(columns):
            table.add_column(header, justify="left" if i < 4 else "right", no_wrap=True)
        for r in feasible[:TABLE_ROWS]:
            table.add_row(*(_cell(key, r.get(key)) for key, _ in columns))
        console.print(table)
        if len(feasible) > TABLE_ROWS:
            console.print(
                f"... and {len(feasible) - TABLE_ROWS} more feasible candidates (all of them in --json/--csv)."
            )
        best = feasible[0]
        bound = best["binding_slo"] or best["binding_constraint"]
        console.print(
            f"Best: {best['replicas']} x {best['gpu']} tp={best['tp']} = {best['gpus']} GPUs; each replica carries "
            f"{best['requests_per_s_per_replica']:.4g} of at most {best['max_requests_per_s_per_replica']:.4g} "
            f"requests/s (at most {best['batch_at_max_load']} clients, bound by {bound}); at "
            f"{best['batch_per_replica']} clients it serves {best['served_requests_per_s_per_replica']:.4g}/s "
            f"(Little's law: {best['concurrency_per_replica']:.4g} in flight = "
            f"{best['served_requests_per_s_per_replica']:.4g}/s x {format_duration(best['e2e_s'])})."
        )
    if rejected:
        table = Table(header_style="bold", title="Rejected", title_justify="left")
        for header in ("GPU", "tp", "weights", "KV", "why"):
            table.add_column(header)
        for r in rejected:
            table.add_row(r["gpu"], str(r["tp"]), r["weight_dtype"], r["kv_dtype"], r["rejected_because"])
        console.print(table)
    console.print(MODEL_NOTE)


def _stat_key(slos, key: str) -> str:
    """The record key of the statistic the SLO on ``key`` binds (the mean without one)."""
    stat = getattr(slos, f"{key}_stat", "mean") if slos is not None and getattr(slos, f"{key}_s") else "mean"
    return f"{key}_s" if stat == "mean" else f"{key}_{stat}_s"


def _stat_header(slos, key: str, name: str) -> str:
    stat = _stat_key(slos, key).removeprefix(f"{key}_").removesuffix("_s")
    return name if stat == "s" else f"{name} {stat}"


def _cell(key: str, value) -> str:
    if value is None:
        return "—"
    if key.startswith("cost_usd"):
        return f"${value:,.2f}" if key.endswith("hour") else f"${value:,.3f}"
    if key == "output_tokens_per_s_per_gpu":
        return f"{value:,.0f}"
    if key == "kv_bytes_used_per_gpu":
        return f"{value / 2**30:,.2f} GiB"
    return humanize(key, value)

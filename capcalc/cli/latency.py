"""`capcalc latency`: TTFT, inter-token latency and throughput to expect.

    capcalc latency MODEL --gpu G [--prompt P] [--output O] [--batch B]
    capcalc latency MODEL --gpu G [--prompt P] [--output O] --concurrency C | --rps R
        [--engine vllm|sglang|trtllm] [--max-num-batched-tokens N] [--max-num-seqs N]
        [--frontend-overhead 9ms] [--num-requests N] [--seed S] [--output-spread S]
        [--prompt-spread S] [--memory-fraction F] [--scheduler-recv-interval N]
        [--batch-wait-iters N] [--batch-wait-max-tokens-ratio R]

Without ``--concurrency`` / ``--rps`` it is a static batch (``Session.latency``); with one
of them a continuously batching server under load (``Session.serving``, docs/serving.md).
The serving flags without either are an error: a static batch has no engine.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from capcalc.cli.common import (
    BatchWaitItersOpt,
    BatchWaitRatioOpt,
    CsvFlag,
    GpuOpt,
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
    session,
    show_notes,
    sweepable,
)
from capcalc.core.errors import CapcalcError
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


def compute(
    s,
    model,
    gpu,
    deployment,
    efficiency,
    prompt=1024,
    output=256,
    batch=1,
    concurrency=None,
    rps=None,
    engine=None,
    max_num_batched_tokens=None,
    max_num_seqs=None,
    frontend_overhead=None,
    num_requests=None,
    seed=0,
    output_spread=None,
    spec_tokens=None,
    acceptance=None,
    draft_model=None,
    memory_fraction=None,
    prompt_spread=None,
    recv_interval=None,
    batch_wait_iters=None,
    batch_wait_max_tokens_ratio=None,
):
    """The static batch (``Session.latency``), or with ``concurrency`` / ``rps`` one replica
    under load (``Session.serving``)."""
    if concurrency is None and rps is None:
        given = {
            "engine": engine,
            "max_num_batched_tokens": max_num_batched_tokens,
            "max_num_seqs": max_num_seqs,
            "frontend_s": frontend_overhead,
            "num_requests": num_requests,
            "output_spread": output_spread,
            "prompt_spread": prompt_spread,
            "memory_fraction": memory_fraction,
            "recv_interval": recv_interval,
            "batch_wait_iters": batch_wait_iters,
            "batch_wait_max_tokens_ratio": batch_wait_max_tokens_ratio,
        }
        named = [k for k, v in given.items() if v is not None]
        if named:
            raise CapcalcError(
                parameter=(named[0], "concurrency", "requests_per_s"),
                template=f"{{{named[0]}}} needs {{concurrency}} or {{requests_per_s}} "
                "(a static batch has no serving engine)",
            )
        return s.latency(
            model, gpu, prompt, output, batch, deployment, efficiency,
            spec_tokens=spec_tokens, acceptance=acceptance, draft_model=draft_model,
        )  # fmt: skip
    speculative = [k for k, v in (("spec_tokens", spec_tokens), ("acceptance", acceptance),
                   ("draft_model", draft_model)) if v is not None]  # fmt: skip
    if speculative:
        raise CapcalcError(
            parameter=(speculative[0], "concurrency", "requests_per_s"),
            template=f"{{{speculative[0]}}} is for a static batch: the serving model under "
            "{concurrency} or {requests_per_s} has no speculative decoding",
        )
    if concurrency is not None and rps is not None:
        raise CapcalcError(
            "give concurrency or requests_per_s, not both", parameter=("concurrency", "requests_per_s")
        )
    if batch != 1:
        raise CapcalcError(
            parameter=("batch", "concurrency", "requests_per_s"),
            template="{batch} sets a static batch; under {concurrency} or {requests_per_s} "
            "the running batch is predicted",
        )
    return s.serving(
        model,
        gpu,
        prompt,
        output,
        concurrency=concurrency,
        requests_per_s=rps,
        engine=engine or "vllm",
        max_num_batched_tokens=max_num_batched_tokens,
        max_num_seqs=max_num_seqs,
        frontend_s=frontend_overhead,
        seed=seed,
        num_requests=num_requests,
        output_spread=output_spread,
        prompt_spread=0.0 if prompt_spread is None else prompt_spread,
        memory_fraction=memory_fraction,
        recv_interval=recv_interval,
        batch_wait_iters=batch_wait_iters,
        batch_wait_max_tokens_ratio=batch_wait_max_tokens_ratio,
        deployment=deployment,
        efficiency=efficiency,
    )


def serving_notes(report) -> list[str]:
    """Where the serving prediction's assumptions came from (table view)."""
    cfg = report.serving.config
    limits = f"max_num_batched_tokens {cfg.max_num_batched_tokens:,}, max_num_seqs {cfg.max_num_seqs:,}"
    return [
        f"Assumptions: {report.serving.source} (flag > capcalc calibrate --save > engine defaults; "
        "see docs/serving.md)",
        f"  {cfg.engine}: {limits}, frontend {humanize('frontend_s', cfg.frontend_s)} per request",
    ]


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
    concurrency: Annotated[
        Optional[int],
        typer.Option(
            help="Serve under load: this many closed-loop clients (vllm bench serve --max-concurrency)."
        ),
    ] = None,
    rps: Annotated[
        Optional[float],
        typer.Option("--rps", help="Serve under load: Poisson arrivals at this many requests/s."),
    ] = None,
    engine: Annotated[
        Optional[str],
        typer.Option(help="Serving engine under load: vllm, sglang or trtllm (default vllm)."),
    ] = None,
    max_num_batched_tokens: Annotated[
        Optional[int], typer.Option(help="Token budget per engine step (default: the engine's for this GPU).")
    ] = None,
    max_num_seqs: Annotated[
        Optional[int],
        typer.Option(help="Most requests running at once (default: the engine's for this GPU)."),
    ] = None,
    frontend_overhead: Annotated[
        Optional[str],
        typer.Option(help="Fixed cost per request outside the engine steps: HTTP, tokenising (e.g. 9ms)."),
    ] = None,
    num_requests: Annotated[
        Optional[int], typer.Option(help="Requests measured under load (default: 5 per client; --rps 400).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the --rps arrival times.")] = 0,
    output_spread: Annotated[
        Optional[float],
        typer.Option(
            help="Spread of output lengths under load, 0..1: lengths evenly over O x (1 ± s); "
            "0 every request exactly O (default: the engine's)."
        ),
    ] = None,
    prompt_spread: Annotated[
        Optional[float],
        typer.Option(
            help="Spread of prompt lengths under load, 0..1: lengths evenly over P x (1 ± s) "
            "(default 0: every prompt exactly P)."
        ),
    ] = None,
    memory_fraction: MemoryFractionOpt = None,
    recv_interval: RecvIntervalOpt = None,
    batch_wait_iters: BatchWaitItersOpt = None,
    batch_wait_max_tokens_ratio: BatchWaitRatioOpt = None,
    spec_tokens: Annotated[
        Optional[int], typer.Option(help="Speculative decoding: tokens the draft proposes per step (K).")
    ] = None,
    acceptance: Annotated[
        Optional[float],
        typer.Option(help="Speculative decoding: chance each drafted token is accepted (A, 0..1)."),
    ] = None,
    draft_model: Annotated[
        Optional[str],
        typer.Option(
            help="Speculative decoding: the draft, a model profile or 'mtp' (the model's MTP layer)."
        ),
    ] = None,
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
        report = compute(
            s, model, gpu, deployment, efficiency, prompt, output, batch,
            concurrency, rps, engine, max_num_batched_tokens, max_num_seqs, frontend_overhead,
            num_requests, seed, output_spread, spec_tokens, acceptance, draft_model, memory_fraction,
            prompt_spread, recv_interval, batch_wait_iters, batch_wait_max_tokens_ratio,
        )  # fmt: skip
    finally:
        show_notes(s)
    if concurrency is not None or rps is not None:
        load = f"{concurrency} clients" if concurrency is not None else f"{rps:g} requests/s"
        title = (
            f"Serving: {report.model} on {report.gpu} x{report.deployment.tp}, {report.result.engine}, "
            f"{load} ({prompt:,} in, {output:,} out)"
        )
        out.emit([report.record()], TableSpec(render=render(title), notes=serving_notes(report)), single=True)
        return
    result = report.result
    title = (
        f"Latency: {result.model} on {result.gpu}, {batch} x ({prompt:,} in, {output:,} out), tp={result.tp}"
    )
    out.emit(
        [report.record()],
        TableSpec(render=render(title), notes=assumption_notes(report.efficiency)),
        single=True,
    )

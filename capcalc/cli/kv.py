"""`capcalc kv`: KV-cache size for a model, context, batch, dtype and tp."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from capcalc.cli.common import (
    CsvFlag,
    JsonFlag,
    JsonlFlag,
    ModelArg,
    Output,
    ProfilesOpt,
    app,
    deployment_options,
    parse_bytes_option,
    session,
    show_notes,
    sweepable,
)
from capcalc.core.units import format_bytes
from capcalc.report.output import TableSpec


def compute(s, model, deployment, ctx=None, batch=1, memory=None, image_tokens=0):
    return s.kv(
        model, ctx, batch, parse_bytes_option(memory, "--memory"), deployment, image_tokens=image_tokens
    )


@app.command()
@sweepable("kv", compute, lambda result: [result.record()])
@deployment_options("kv_dtype", "tp")
def kv(
    model: ModelArg,
    deployment,
    ctx: Annotated[
        Optional[int], typer.Option(help="Tokens per sequence (default: the model's max context).")
    ] = None,
    batch: Annotated[int, typer.Option(help="Sequences.")] = 1,
    memory: Annotated[
        Optional[str], typer.Option(help="KV memory per GPU (e.g. 8GB): how many sequences fit in it.")
    ] = None,
    image_tokens: Annotated[
        int,
        typer.Option(
            help="Image tokens per sequence held by cross-attention layers (mllama; default 0: text)."
        ),
    ] = 0,
    json_: JsonFlag = False,
    jsonl: JsonlFlag = False,
    csv_: CsvFlag = False,
    profiles: ProfilesOpt = None,
):
    """How big is the KV cache for this model, context, batch and dtype?"""
    out = Output(json_, jsonl, csv_)
    s = session(profiles)
    try:
        result = compute(s, model, deployment, ctx, batch, memory, image_tokens)
    finally:
        show_notes(s)
    tp = result.tp
    notes = []
    if result.kv_replicated:
        if result.mla_layers:
            notes.append(f"MLA: the latent cache is replicated on each of the {tp} GPUs.")
        else:
            notes.append(
                f"KV heads replicated: {result.kv_heads} KV heads < tp={tp}, so each GPU holds "
                f"{result.kv_heads_per_gpu} head and per-GPU KV stops shrinking "
                f"({result.kv_replication_factor:g} copies of each head)."
            )
    if result.sliding_layers:
        notes.append(
            f"{result.sliding_layers} sliding-window layers hold at most {result.sliding_window} tokens each."
        )
    if result.cross_attention_layers:
        notes.append(
            f"{result.cross_attention_layers} cross-attention layers hold the KV of {result.image_tokens:,} image "
            "tokens per sequence (--image-tokens), whatever its length."
        )
    if result.sequences_fit is not None:
        notes.append(
            f"{result.sequences_fit} sequences of {result.ctx} tokens fit in {format_bytes(result.memory_bytes)} per GPU."
        )
    out.emit([result.record()], TableSpec(title=f"KV cache: {result.model}", notes=notes), single=True)

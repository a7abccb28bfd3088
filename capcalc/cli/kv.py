"""`capcalc kv`: KV-cache size for a model, context, batch, dtype and tp."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from capcalc.cli.common import (
    CsvFlag,
    JsonFlag,
    JsonlFlag,
    KvDtypeOpt,
    ModelArg,
    Output,
    ProfilesOpt,
    TpOpt,
    app,
    load_registry,
    parse_bytes_option,
    resolve_model,
)
from capcalc.core.units import format_bytes
from capcalc.model.kv import kv_cache
from capcalc.report.output import TableSpec, record


@app.command()
def kv(
    model: ModelArg,
    ctx: Annotated[
        Optional[int], typer.Option(help="Tokens per sequence (default: the model's max context).")
    ] = None,
    batch: Annotated[int, typer.Option(help="Sequences.")] = 1,
    kv_dtype: KvDtypeOpt = "auto",
    tp: TpOpt = 1,
    memory: Annotated[
        Optional[str], typer.Option(help="KV memory per GPU (e.g. 8GB): how many sequences fit in it.")
    ] = None,
    json_: JsonFlag = False,
    jsonl: JsonlFlag = False,
    csv_: CsvFlag = False,
    profiles: ProfilesOpt = None,
):
    """How big is the KV cache for this model, context, batch and dtype?"""
    out = Output(json_, jsonl, csv_)
    reg = load_registry(profiles)
    profile = resolve_model(reg, model)
    result = kv_cache(
        profile,
        ctx=ctx if ctx is not None else profile.max_context,
        batch=batch,
        kv_dtype=kv_dtype,
        tp=tp,
        memory_bytes=parse_bytes_option(memory, "--memory"),
    )
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
    if result.sequences_fit is not None:
        notes.append(
            f"{result.sequences_fit} sequences of {result.ctx} tokens fit in {format_bytes(result.memory_bytes)} per GPU."
        )
    out.emit([record(result)], TableSpec(title=f"KV cache: {result.model}", notes=notes), single=True)

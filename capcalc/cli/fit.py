"""`capcalc fit`: does it fit, how many sequences at once, and what vLLM will say."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

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
from capcalc.cli.usage import suggestion_text
from capcalc.core.errors import CapcalcError
from capcalc.core.inputs import excerpt, parse_int
from capcalc.core.units import format_bytes, parse_quantity
from capcalc.report.output import TableSpec, field_table
from capcalc.serving.fit import DEFAULT_BLOCK_SIZE, DEFAULT_UTILIZATION, FitResult

BAR_WIDTH = 50


def _bytes(text: Optional[str], what: str) -> Optional[float]:
    """'8GB', '7.5 GiB' or a number of bytes; the ranges are fit's to check (check_request)."""
    return parse_quantity(text, "bytes", what) if text is not None else None


def _tp(text: Optional[str], n_gpus: Optional[int]) -> Optional[int]:
    """'auto' (or no --tp with --n-gpus) -> None: search; no --tp -> 1; else a whole number."""
    if text is None:
        return None if n_gpus is not None else 1
    if text.strip().lower() == "auto":
        return None
    digits = text.strip().lstrip("+-")
    if not (digits.isascii() and digits.isdigit()):
        raise CapcalcError(f"--tp: expected a whole number or 'auto', got {excerpt(text)}")
    return parse_int(text, "--tp", "tp")


@app.command("fit")
@sweepable("fit", lambda s, **params: compute(s, **params), lambda outcome: records(outcome))
@deployment_options(
    "weight_dtype", "kv_dtype", "pp", "group_size", "quantize_embeddings", "mamba_ssm_cache_dtype"
)
def fit_command(
    model: ModelArg,
    deployment,
    gpu: Annotated[
        Optional[str], typer.Option(help="GPU profile (memory: reported if known, else datasheet).")
    ] = None,
    gpu_memory: Annotated[
        Optional[str],
        typer.Option(help="GPU memory instead of a profile, e.g. 23.58GiB (what torch reports)."),
    ] = None,
    tp: Annotated[
        Optional[str],
        typer.Option(help="Tensor-parallel GPUs (default 1), or 'auto': the smallest valid tp that fits."),
    ] = None,
    n_gpus: Annotated[
        Optional[int], typer.Option(help="GPUs available: search tp up to this and count replicas.")
    ] = None,
    concurrency: Annotated[
        Optional[float],
        typer.Option(help="With tp auto/--n-gpus: the smallest tp serving this many sequences."),
    ] = None,
    max_model_len: Annotated[
        Optional[int],
        typer.Option(
            "--max-model-len", "--ctx", help="Tokens per request (default: the model's max context)."
        ),
    ] = None,
    gpu_memory_utilization: Annotated[
        float, typer.Option(help="Fraction of the GPU's total memory vLLM may use.")
    ] = DEFAULT_UTILIZATION,
    block_size: Annotated[int, typer.Option(help="Tokens per KV block.")] = DEFAULT_BLOCK_SIZE,
    max_num_seqs: Annotated[
        Optional[int],
        typer.Option(help="vLLM max_num_seqs (default as vllm serve: 1024 on >=70 GiB, else 256)."),
    ] = None,
    max_num_batched_tokens: Annotated[
        Optional[int], typer.Option(help="vLLM max_num_batched_tokens (default 8192 on >=70 GiB, else 2048).")
    ] = None,
    activation_bytes: Annotated[
        Optional[str], typer.Option(help="Override the activation peak per GPU.")
    ] = None,
    overhead_bytes: Annotated[
        Optional[str], typer.Option(help="Override the non-torch overhead per GPU.")
    ] = None,
    cudagraph_bytes: Annotated[
        Optional[str], typer.Option(help="CUDA-graph memory counted in the budget (default 0).")
    ] = None,
    kv_cache_memory: Annotated[
        Optional[str], typer.Option(help="KV cache memory per GPU, replacing the budget (vLLM's flag).")
    ] = None,
    disable_hybrid_kv_cache_manager: Annotated[
        bool, typer.Option(help="Treat sliding-window layers as full ones, as vLLM's flag does.")
    ] = False,
    draft_model: Annotated[
        Optional[str],
        typer.Option(
            help="Speculative draft held beside the model: a profile (EAGLE head, small model) or 'mtp' "
            "(its own MTP layer): its weights, and its KV layers in the same block pool."
        ),
    ] = None,
    spec_tokens: Annotated[
        int,
        typer.Option(
            help="Speculative tokens per step (vLLM num_speculative_tokens): a recurrent layer keeps "
            "1 + K state blocks per request."
        ),
    ] = 0,
    image_tokens: Annotated[
        Optional[int],
        typer.Option(
            help="Image tokens a request reserves in cross-attention layers (mllama; vLLM's "
            "max_num_encoder_input_tokens, default max_num_batched_tokens)."
        ),
    ] = None,
    json_: JsonFlag = False,
    jsonl: JsonlFlag = False,
    csv_: CsvFlag = False,
    profiles: ProfilesOpt = None,
):
    """Does it fit on these GPUs, how many sequences at once, and what will vLLM say?"""
    out = Output(json_, jsonl, csv_)
    s = session(profiles)
    try:
        result, notes = compute(
            s,
            model,
            deployment,
            gpu,
            gpu_memory,
            tp,
            n_gpus,
            concurrency,
            max_model_len,
            gpu_memory_utilization,
            block_size,
            max_num_seqs,
            max_num_batched_tokens,
            activation_bytes,
            overhead_bytes,
            cudagraph_bytes,
            kv_cache_memory,
            disable_hybrid_kv_cache_manager,
            draft_model,
            image_tokens,
            spec_tokens,
        )
    finally:
        show_notes(s)
    out.emit(
        records((result, notes)), TableSpec(render=lambda recs, con: render(result, con, notes)), single=True
    )
    if not result.fits:  # as `plan` does when no candidate carries the load
        print(f"capcalc: error: {result.model} does not fit (see the verdict above)", file=sys.stderr)
        return 1
    return 0


def compute(
    s,
    model,
    deployment,
    gpu=None,
    gpu_memory=None,
    tp=None,
    n_gpus=None,
    concurrency=None,
    max_model_len=None,
    gpu_memory_utilization=DEFAULT_UTILIZATION,
    block_size=DEFAULT_BLOCK_SIZE,
    max_num_seqs=None,
    max_num_batched_tokens=None,
    activation_bytes=None,
    overhead_bytes=None,
    cudagraph_bytes=None,
    kv_cache_memory=None,
    disable_hybrid_kv_cache_manager=False,
    draft_model=None,
    image_tokens=None,
    spec_tokens=0,
):
    """The fit for the parsed options, and the table's notes."""
    if (gpu is None) == (gpu_memory is None):
        raise CapcalcError("give exactly one of --gpu GPU or --gpu-memory BYTES")
    tp_value = _tp(tp, n_gpus)
    if concurrency is not None and concurrency <= 0:
        raise CapcalcError(f"--concurrency must be positive, got {concurrency:g}")
    if tp_value is not None and concurrency is not None:
        raise CapcalcError("--concurrency needs --tp auto or --n-gpus to search over")
    result = s.fit(
        model,
        gpu,
        parse_bytes_option(gpu_memory, "--gpu-memory") if gpu is None else None,
        deployment,
        concurrency,
        tp=tp_value if tp_value is not None else "auto",
        n_gpus=n_gpus,
        gpu_memory_utilization=gpu_memory_utilization,
        max_model_len=max_model_len,
        block_size=block_size,
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens,
        activation_bytes=_bytes(activation_bytes, "--activation-bytes"),
        overhead_bytes=_bytes(overhead_bytes, "--overhead-bytes"),
        cudagraph_bytes=_bytes(cudagraph_bytes, "--cudagraph-bytes") or 0.0,
        kv_cache_memory=parse_bytes_option(kv_cache_memory, "--kv-cache-memory"),
        hybrid=not disable_hybrid_kv_cache_manager,
        draft_model=draft_model,
        image_tokens=image_tokens,
        spec_tokens=spec_tokens,
    )
    notes = []
    if tp_value is None and result.fits and (concurrency is None or result.max_concurrency >= concurrency):
        goal = f"serves {concurrency:g} sequences" if concurrency is not None else "fits"
        notes.append(f"tp search: tp={result.tp} is the smallest valid tp that {goal}.")
    return result, notes


def records(outcome) -> list[dict]:
    """fit's record, its suggestions as the flags that apply them."""
    result, _ = outcome
    rec = result.record()
    rec["suggestions"] = suggestion_flags(result)
    return [rec]


def suggestion_flags(r: FitResult) -> list[str]:
    """fit's (parameter, value) suggestions as the flags that apply them: ``--tp 2``."""
    return [suggestion_text(parameter, value, "fit") for parameter, value in r.suggestions]


# --------------------------------------------------------------------------- table


def _segments(r: FitResult) -> list[tuple[str, float, str, str]]:
    """(label, bytes, bar character, style) from the bottom of memory up."""
    kv = max(r.kv_cache_bytes_per_gpu, 0.0)
    parts = [
        ("weights", r.weights_bytes_per_gpu, "█", "magenta"),
        ("activation peak", r.activation_bytes_per_gpu, "▓", "yellow"),
        ("non-torch overhead", r.overhead_bytes_per_gpu, "▒", "red"),
    ]
    if r.cudagraph_bytes_per_gpu:
        parts.append(("CUDA graphs", r.cudagraph_bytes_per_gpu, "▒", "blue"))
    parts.append((f"KV cache ({r.kv_cache_memory_source})", kv, "░", "green"))
    used = sum(p[1] for p in parts)
    parts.append(("not used by vLLM", max(r.memory_bytes - used, 0.0), "·", "dim"))
    return parts


def render(r: FitResult, console: Console, notes: list[str]) -> None:
    where = r.gpu or "GPU"
    console.print(
        Text.assemble(
            (f"{r.model}", "bold"),
            f" on {where} ({format_bytes(r.memory_bytes)}, {r.memory_source}) · tp={r.tp} pp={r.pp} · "
            f"weights {r.weight_dtype} · KV {r.kv_dtype} · max-model-len {r.max_model_len:,} · "
            f"utilisation {r.gpu_memory_utilization:g}",
        )
    )
    segments = _segments(r)
    scale = max(r.memory_bytes, sum(s[1] for s in segments))
    # the part, size and share columns take about 60 characters; the bar gets the rest
    bar_width = max(10, min(BAR_WIDTH, console.width - 60))
    table = Table(title="Memory per GPU", header_style="bold", title_justify="left")
    table.add_column("part")
    table.add_column("size", justify="right")
    table.add_column("share", justify="right")
    table.add_column("stacked bar")
    offset = 0.0
    whole = Text()
    for label, size, char, style in segments:
        start = round(offset / scale * bar_width)
        offset += size
        end = round(offset / scale * bar_width)
        bar = Text(" " * start) + Text(char * (end - start), style=style)
        whole.append(char * (end - start), style=style)
        table.add_row(label, format_bytes(size), f"{100 * size / r.memory_bytes:.1f} %", bar)
    table.add_section()
    table.add_row("stacked", format_bytes(offset), f"{100 * offset / r.memory_bytes:.1f} %", whole)
    for label, size in (
        ("GPU memory", r.memory_bytes),
        (f"vLLM's share (x {r.gpu_memory_utilization:g})", r.usable_bytes_per_gpu),
    ):
        end = round(size / scale * bar_width)
        table.add_row(
            label,
            format_bytes(size),
            f"{100 * size / r.memory_bytes:.1f} %",
            Text("─" * max(end - 1, 0) + "┤"),
        )
    console.print(table)

    if r.fits:
        verdict = "fits"
    elif not r.weights_fit:
        verdict = "does not fit: weights"
    elif r.max_num_seqs_over_state_blocks and r.kv_needed_bytes <= r.kv_cache_bytes_per_gpu:
        verdict = "does not fit: max_num_seqs over the state blocks"
    else:
        verdict = "does not fit: KV cache"
    console.print(
        field_table(
            {
                "verdict": verdict,
                "kv_bytes_per_token_per_gpu": r.kv_bytes_per_token_per_gpu,
                "kv_heads_per_gpu": f"{r.kv_heads_per_gpu}" + (" (replicated)" if r.kv_replicated else ""),
                **(
                    {
                        "draft_model": f"{r.draft_model} ({r.draft_method}): {r.draft_kv_layers} KV layer(s), "
                        f"{format_bytes(r.draft_weights_bytes_per_gpu)} weights"
                        + (" (in the model's profile)" if not r.draft_weights_bytes_per_gpu else "")
                    }
                    if r.draft_model
                    else {}
                ),
                "kv_cache_groups": f"{r.kv_cache_groups} x {r.layers_per_group} layers",
                "num_blocks": r.num_blocks,
                "kv_cache_tokens": r.kv_cache_tokens,
                "blocks_per_request": r.blocks_per_request,
                "kv_needed_bytes": r.kv_needed_bytes,
                "max_concurrency": f"{r.max_concurrency:.2f}x at {r.max_model_len:,} tokens",
                **(
                    {"total_max_concurrency": f"{r.total_max_concurrency:.2f}x over {r.replicas} replicas"}
                    if r.replicas
                    else {}
                ),
                "max_model_len_that_fits": r.max_model_len_that_fits,
                **(
                    {"weights_shortfall_bytes": r.weights_shortfall_bytes}
                    if r.weights_shortfall_bytes
                    else {}
                ),
            },
            title="Capacity (as vLLM logs it)",
        )
    )
    error = r.vllm_error()
    if error:
        console.print(f"vLLM would stop: {error}")
    if r.suggestions:
        console.print("would fit with: " + " · ".join(suggestion_flags(r)))
    for note in notes:
        console.print(note)

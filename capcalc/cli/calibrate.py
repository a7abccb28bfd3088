"""`capcalc calibrate`: fit the serving model to the user's own benchmark results.

    capcalc calibrate RESULT... [--gpu G] [--engine E] [--model M] [--tp N]
        [--weight-dtype D] [--kv-dtype D] [--compute-dtype D] [--group-size N]
        [--max-num-batched-tokens N] [--max-num-seqs N] [--scheduler-recv-interval N]
        [--batch-wait-iters N] [--batch-wait-max-tokens-ratio R] [--parameters a,b]
        [--format auto|vllm|aiperf|genai-perf|guidellm|csv] [--save]

RESULT: ``vllm bench serve --save-result`` JSON, aiperf / genai-perf ``profile_export``
JSON, a guidellm report, or a CSV with the served-runs columns (docs/serving.md names
the tool versions). Prints every run's TTFT, TPOT and tokens/s error before (shipped
defaults) and after the fit; ``--save`` writes the fitted values into the calibration
file under the GPU and engine, which ``latency --concurrency`` / ``--rps`` then use.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated, Optional

import typer

from capcalc.cli.common import (
    BatchWaitItersOpt,
    BatchWaitRatioOpt,
    CsvFlag,
    JsonFlag,
    JsonlFlag,
    Output,
    ProfilesOpt,
    RecvIntervalOpt,
    app,
    session,
    show_notes,
)
from capcalc.cli.usage import flag_for
from capcalc.core.dtypes import COMPUTE_DTYPES, KV_DTYPES, WEIGHT_DTYPES
from capcalc.report.output import TableSpec

#: the table view: one row per run (its id, lengths and measured values are in --json / --csv)
COLUMNS = [
    ("run", "#"),
    ("model", "model"),
    ("tp", "tp"),
    ("concurrency", "C"),
    ("requests_per_s", "rps"),
    ("ttft_error_before_pct", "TTFT dflt"),
    ("ttft_error_after_pct", "TTFT fit"),
    ("tpot_error_before_pct", "TPOT dflt"),
    ("tpot_error_after_pct", "TPOT fit"),
    ("tokens_per_s_error_before_pct", "tok/s dflt"),
    ("tokens_per_s_error_after_pct", "tok/s fit"),
]


def table_rows(points: list[dict]) -> tuple[list[dict], list[tuple[str, str]]]:
    """The runs numbered for the table, and its columns: a column that is the same for
    every run (the model, tp) or empty (rps in closed loop) is left out."""
    rows = [
        {**p, "run": i, **{k: _signed(v) for k, v in p.items() if k.endswith("_pct")}}
        for i, p in enumerate(points, 1)
    ]
    columns = [
        (key, header)
        for key, header in COLUMNS
        if key == "run"
        or key.endswith("_pct")
        or (len({r.get(key) for r in rows}) > 1 or key == "concurrency")
        and any(r.get(key) is not None for r in rows)
    ]
    return rows, columns


def summary_notes(summary: dict) -> list[str]:
    """The fitted values and the mean |error| before and after, under the table."""
    from capcalc.report.output import humanize

    fitted = [(k.removeprefix("fitted_"), v) for k, v in summary.items() if k.startswith("fitted_")]
    lines = [
        f"{summary['points']} runs, {summary['gpu']} / {summary['engine']}; errors are predicted / measured - 1, "
        "with the shipped defaults (dflt) and fitted (fit)",
        "mean |error| before -> after: "
        + ", ".join(
            f"{m} {humanize('x_pct', summary[f'{m}_mean_abs_error_before_pct'])}"
            f" -> {humanize('x_pct', summary[f'{m}_mean_abs_error_after_pct'])}"
            for m in ("ttft", "tpot", "tokens_per_s")
            if summary[f"{m}_mean_abs_error_before_pct"] is not None
        ),
        "fitted: " + (", ".join(f"{k} = {_value(k, v)}" for k, v in fitted) or "nothing (defaults kept)"),
    ]
    if summary.get("calibration_file"):
        lines.append(f"saved to {summary['calibration_file']}")
    else:
        lines.append("not saved (add --save to use these values in latency --concurrency / --rps)")
    return lines


def _command_line(results: list[Path], options: dict) -> str:
    """The calibrate command as given (for the calibration file's ``command``)."""
    words = ["capcalc", "calibrate", *(str(p) for p in results)]
    for name, value in options.items():
        if value is not None:
            words += [flag_for(name, "calibrate"), str(value)]
    return shlex.join([*words, "--save"])


def _signed(value: float | None) -> str | None:
    return None if value is None else f"{value:+.1f} %"


def _value(key: str, value: float) -> str:
    from capcalc.report.output import humanize

    return f"{value:.3g}" if key.endswith("_scale") else humanize(key, value)


@app.command(name="calibrate")
def calibrate_command(
    results: Annotated[
        list[Path],
        typer.Argument(help="Benchmark result files (vllm bench serve, aiperf, genai-perf, guidellm, CSV)."),
    ],
    gpu: Annotated[
        Optional[str], typer.Option("--gpu", help="GPU profile name or alias (default: the file's).")
    ] = None,
    engine: Annotated[
        Optional[str], typer.Option(help="Serving engine: vllm, sglang or trtllm (default: the file's).")
    ] = None,
    model: Annotated[
        Optional[str], typer.Option(help="Model name, alias or Hugging Face id (default: the file's).")
    ] = None,
    tp: Annotated[
        Optional[int], typer.Option(help="Tensor-parallel GPUs (default: the file's, else 1).")
    ] = None,
    weight_dtype: Annotated[
        Optional[str], typer.Option(help=f"Weight dtype: {', '.join(WEIGHT_DTYPES)} (default: the file's).")
    ] = None,
    kv_dtype: Annotated[
        Optional[str],
        typer.Option("--kv-dtype", "--kv-cache-dtype", help=f"KV cache dtype: {', '.join(KV_DTYPES)}."),
    ] = None,
    compute_dtype: Annotated[
        Optional[str],
        typer.Option(help=f"Dtype whose peak bounds the matrix products: {', '.join(COMPUTE_DTYPES)}."),
    ] = None,
    group_size: Annotated[
        Optional[int], typer.Option(help="Quantisation group size (int4/int8 scales).")
    ] = None,
    max_num_batched_tokens: Annotated[
        Optional[int],
        typer.Option(help="The deployment's token budget per step, if not the engine's default."),
    ] = None,
    max_num_seqs: Annotated[
        Optional[int],
        typer.Option(help="The deployment's most running requests, if not the engine's default."),
    ] = None,
    recv_interval: RecvIntervalOpt = None,
    batch_wait_iters: BatchWaitItersOpt = None,
    batch_wait_max_tokens_ratio: BatchWaitRatioOpt = None,
    parameters: Annotated[
        Optional[str],
        typer.Option(
            help="Parameters to fit, comma-separated (default: bandwidth_scale,flops_scale,layer_overhead_s,frontend_s)."
        ),
    ] = None,
    result_format: Annotated[
        str, typer.Option("--format", help="Result format: auto, vllm, aiperf, genai-perf, guidellm or csv.")
    ] = "auto",
    save: Annotated[
        bool, typer.Option("--save", help="Write the fitted values to the calibration file (GPU and engine).")
    ] = False,
    json_: JsonFlag = False,
    jsonl: JsonlFlag = False,
    csv_: CsvFlag = False,
    profiles: ProfilesOpt = None,
):
    """Fit the serving model to your benchmark results; print each run's error before and after."""
    out = Output(json_, jsonl, csv_)
    s = session(profiles, no_calibration=True)
    names = [p.strip() for p in parameters.split(",") if p.strip()] if parameters else None
    try:
        report = s.calibrate(
            results,
            gpu=gpu,
            engine=engine,
            model=model,
            result_format=result_format,
            parameters=names,
            save=save,
            command=_command_line(
                results,
                dict(
                    gpu=gpu,
                    engine=engine,
                    model=model,
                    tp=tp,
                    weight_dtype=weight_dtype,
                    kv_dtype=kv_dtype,
                    compute_dtype=compute_dtype,
                    group_size=group_size,
                    parameters=parameters,
                    max_num_batched_tokens=max_num_batched_tokens,
                    max_num_seqs=max_num_seqs,
                    recv_interval=recv_interval,
                    batch_wait_iters=batch_wait_iters,
                    batch_wait_max_tokens_ratio=batch_wait_max_tokens_ratio,
                    result_format=None if result_format == "auto" else result_format,
                ),
            ),  # fmt: skip
            weight_dtype=weight_dtype,
            kv_dtype=kv_dtype,
            compute_dtype=compute_dtype,
            tp=tp,
            group_size=group_size,
            max_num_batched_tokens=max_num_batched_tokens,
            max_num_seqs=max_num_seqs,
            recv_interval=recv_interval,
            batch_wait_iters=batch_wait_iters,
            batch_wait_max_tokens_ratio=batch_wait_max_tokens_ratio,
        )
    finally:
        show_notes(s)
    summary = report.summary()
    if out.format == "table":
        models = ", ".join(sorted({p["model"] for p in report.points}))
        title = f"Calibration: {models} on {report.gpu} / {report.engine}"
        rows, columns = table_rows(list(report.points))
        out.emit(rows, TableSpec(title=title, columns=columns, notes=summary_notes(summary)))
    else:
        out.emit(report.records())

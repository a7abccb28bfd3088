"""`capcalc littles`: Little's law on its own."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from capcalc.cli.common import CsvFlag, JsonFlag, JsonlFlag, Output, app
from capcalc.core.inputs import parse_float
from capcalc.core.units import parse_duration, parse_rate
from capcalc.report.output import TableSpec, record
from capcalc.serving.littles import littles_law


@app.command()
def littles(
    concurrency: Annotated[
        Optional[str], typer.Option(help="Requests (or tokens) in flight, e.g. 80.")
    ] = None,
    throughput: Annotated[
        Optional[str], typer.Option(help="Rate: '20/s', '20req/s', '1200tok/s', '600/min'.")
    ] = None,
    latency: Annotated[Optional[str], typer.Option(help="Time in the system: '4s', '250ms'.")] = None,
    json_: JsonFlag = False,
    jsonl: JsonlFlag = False,
    csv_: CsvFlag = False,
):
    """Little's law: concurrency = throughput x latency; give any two."""
    out = Output(json_, jsonl, csv_)
    unit = "requests"
    rate = None
    if throughput is not None:
        rate, kind = parse_rate(throughput, "--throughput")
        unit = "tokens" if kind == "tok" else "requests"
    n = None
    if concurrency is not None:
        n = parse_float(concurrency, "--concurrency")
    result = littles_law(
        concurrency=n,
        throughput_per_s=rate,
        latency_s=parse_duration(latency, "--latency") if latency is not None else None,
        unit=unit,
    )
    note = (
        f"N = X x L: {result.concurrency:,.4g} {unit} in flight = "
        f"{result.throughput_per_s:,.4g} {unit}/s x {result.latency_s:,.4g} s"
    )
    out.emit([record(result)], TableSpec(title="Little's law", notes=[note]), single=True)

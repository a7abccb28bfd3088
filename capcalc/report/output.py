"""The one place output formats live: rich table, JSON, JSONL, CSV.

Contract (DESIGN.md): machine output goes to stdout and nothing else does; a
record is flat, its keys say their unit, JSON carries base units, and every
record carries ``schema_version``. One record prints as a JSON object; many as a
JSON array, one JSONL line each, or one CSV row each. Tables label their units.
"""

from __future__ import annotations

import csv
import json
import math
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table

from capcalc.core import units
from capcalc.core.errors import CapcalcError
from capcalc.core.records import SCHEMA_VERSION
from capcalc.core.records import flat_record as record

__all__ = ["FORMATS", "SCHEMA_VERSION", "choose_format", "emit", "humanize", "record"]

FORMATS = ("table", "json", "jsonl", "csv")


def choose_format(json_: bool = False, jsonl: bool = False, csv_: bool = False) -> str:
    """The one format asked for (``table`` when none); asking for several is an error
    that names them as the ``json``, ``jsonl`` and ``csv`` parameters."""
    chosen = [name for name, on in (("json", json_), ("jsonl", jsonl), ("csv", csv_)) if on]
    if len(chosen) > 1:
        raise CapcalcError(f"choose one output format, not {' and '.join(chosen)}", parameter=tuple(chosen))
    return chosen[0] if chosen else "table"


def _plain(value: Any) -> Any:
    """JSON-ready value: whole floats become ints, non-finite floats become null."""
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        if value.is_integer() and abs(value) < 2**53:
            return int(value)
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _csv_cell(value: Any) -> Any:
    value = _plain(value)
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return value


def humanize(key: str, value: Any) -> str:
    """A table cell for ``value``, formatted by what its key says it is."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    if not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return "—" if math.isnan(value) else "∞"
    if key.endswith("_efficiency"):  # a fraction, whatever the key says it is a fraction of
        return units._sig(value, 4)
    if re.search(r"bytes_per_s(_|$)", key):
        return units.format_bandwidth(value)
    if re.search(r"flops?_per_s(_|$)", key):
        return units.format_flops_rate(value)
    if "flop_per_byte" in key:
        return f"{units._sig(value)} FLOP/B"
    if "bytes" in key:
        return units.format_bytes(value)
    if re.search(r"(^|_)flops(_|$)", key):
        return units.format_flops(value)
    if key.endswith("_pct"):
        return f"{units._sig(value)} %"
    if key.endswith("_per_s"):
        return f"{units._sig(value, 4)} /s"
    if key.endswith("_s"):
        return units.format_duration(value)
    if key.startswith("params") or key.endswith("_params"):
        return units.format_count(value)
    if isinstance(value, int):
        return f"{value:,}"
    if value.is_integer():
        return f"{value:,.0f}"
    return units._sig(value, 4)


@dataclass
class TableSpec:
    """How a command's records look as a table.

    ``columns``: (key, header) pairs for a many-row table; omitted, one record is
    shown as a two-column field/value table. ``render`` replaces the default
    entirely. ``notes`` print under the table (to stdout: it is the table view).
    """

    title: str = ""
    columns: list[tuple[str, str]] | None = None
    hide: set[str] = field(default_factory=lambda: {"schema_version"})
    notes: list[str] = field(default_factory=list)
    render: Callable[[list[dict], Console], None] | None = None


def stdout_console() -> Console:
    # Piped tables (a file, `less`) would otherwise wrap at 80 columns.
    width = None if sys.stdout.isatty() else 160
    return Console(file=sys.stdout, soft_wrap=False, highlight=False, width=width)


def stderr_console() -> Console:
    return Console(file=sys.stderr, highlight=False)


def emit(records: Iterable[dict], fmt: str, spec: TableSpec | None = None, single: bool = False) -> None:
    """Write ``records`` to stdout in ``fmt``. ``single``: JSON prints one object."""
    records = list(records)
    spec = spec or TableSpec()
    out = sys.stdout
    if fmt == "json" and single and len(records) == 1:
        out.write(json.dumps(_plain(records[0]), indent=2) + "\n")
    elif fmt in ("json", "jsonl", "csv"):
        stream = RecordStream(fmt, out, columns=all_keys(records) if fmt == "csv" else None)
        for rec in records:
            stream.write(rec)
        stream.close()
    else:
        console = stdout_console()
        if spec.render is not None:
            spec.render(records, console)
        elif spec.columns is None and len(records) == 1:
            console.print(field_table(records[0], spec.title, spec.hide))
        else:
            console.print(rows_table(records, spec))
        for note in spec.notes:
            console.print(note)
    out.flush()


def all_keys(records: list[dict]) -> list[str]:
    """Every key of ``records`` in order of first appearance (one CSV header for records
    of different kinds, e.g. measure's device, decode and calibration records)."""
    keys: dict[str, None] = {}
    for rec in records:
        keys.update(dict.fromkeys(rec))
    return list(keys)


def write_csv(records: list[dict], out) -> None:
    """All ``records`` as CSV under one header of every key."""
    stream = RecordStream("csv", out, columns=all_keys(records))
    for rec in records:
        stream.write(rec)
    stream.close()


def field_table(rec: dict, title: str = "", hide: set[str] | None = None) -> Table:
    table = Table(title=title or None, show_header=True, header_style="bold")
    table.add_column("field")
    table.add_column("value")
    for key, value in rec.items():
        if hide and key in hide:
            continue
        table.add_row(key, humanize(key, value))
    return table


def rows_table(records: list[dict], spec: TableSpec) -> Table:
    columns = spec.columns or [(k, k) for k in records[0] if k not in spec.hide]
    table = Table(title=spec.title or None, header_style="bold")
    for i, (_, header) in enumerate(columns):
        table.add_column(header, justify="left" if i == 0 else "right")
    for rec in records:
        table.add_row(*(humanize(key, rec.get(key)) for key, _ in columns))
    return table


class RecordStream:
    """Write records one at a time, as they are produced (``sweep``): a JSON array
    written incrementally, one JSONL line each, or CSV rows under a header written
    once. ``columns`` fixes the CSV header (default: the first record's keys); a
    key outside it is an error rather than a silently dropped value."""

    def __init__(self, fmt: str, out=None, columns: list[str] | None = None):
        if fmt not in ("json", "jsonl", "csv"):
            raise ValueError(f"RecordStream writes json, jsonl or csv, not {fmt!r}")
        self.format = fmt
        self.out = out if out is not None else sys.stdout
        self.columns = list(columns) if columns is not None else None
        self.count = 0
        self._csv: csv.DictWriter | None = None

    def write(self, rec: dict) -> None:
        out = self.out
        if self.format == "jsonl":
            out.write(json.dumps(_plain(rec)) + "\n")
        elif self.format == "json":
            text = json.dumps(_plain(rec), indent=2).replace("\n", "\n  ")
            out.write(("[\n  " if self.count == 0 else ",\n  ") + text)
        else:
            if self._csv is None:
                self._csv = csv.DictWriter(out, fieldnames=self.columns or list(rec), lineterminator="\n")
                self._csv.writeheader()
            self._csv.writerow({k: _csv_cell(v) for k, v in rec.items()})
        self.count += 1

    def close(self) -> None:
        """End the JSON array (``[]`` when nothing was written) and flush."""
        if self.format == "json":
            self.out.write("\n]\n" if self.count else "[]\n")
        elif self.format == "csv" and self._csv is None and self.columns:
            csv.DictWriter(self.out, fieldnames=self.columns, lineterminator="\n").writeheader()
        self.out.flush()

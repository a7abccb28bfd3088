"""The one place output formats live: rich table, JSON, JSONL, CSV.

Contract (DESIGN.md): machine output goes to stdout and nothing else does; a
record is flat, its keys say their unit, JSON carries base units, and every
record carries ``schema_version``. One record prints as a JSON object; many as a
JSON array, one JSONL line each, or one CSV row each. Tables label their units.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import math
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # rich is imported when a table is drawn: machine formats do without it
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
    ``low_value``: headers of the columns a narrow terminal loses first (:func:`low_value`).
    """

    title: str = ""
    columns: list[tuple[str, str]] | None = None
    hide: set[str] = field(default_factory=lambda: {"schema_version"})
    notes: list[str] = field(default_factory=list)
    render: Callable[[list[dict], Console], None] | None = None
    low_value: tuple[str, ...] = ()


#: width of a piped table when ``COLUMNS`` does not say (a file or `less`; rich would use 80)
PIPED_WIDTH = 160
#: a cell up to this long is never broken (numbers, names, units); longer text may wrap
WHOLE_CELL = 24


def console_width(stream) -> int | None:
    """``COLUMNS`` when set (a terminal or a pipe), else None for a terminal (rich asks
    it) and :data:`PIPED_WIDTH` for a pipe."""
    columns = os.environ.get("COLUMNS", "").strip()
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    return None if stream.isatty() else PIPED_WIDTH


def _plain_text(cell) -> str:
    return cell.plain if hasattr(cell, "plain") else str(cell)


def _needed_width(table: Table) -> int:
    """How wide rich draws ``table`` when nothing squeezes it (drawn, then measured: rich's
    own measurement leaves out part of the padding)."""
    from rich.console import Console

    console = Console(width=100_000, file=io.StringIO(), color_system=None)
    console.print(table)
    return max((len(line) for line in console.file.getvalue().splitlines()), default=0)


def _pieces(cell: str, first: bool) -> list[str]:
    """The parts of a cell that must stay on one line when the table is tight: a name
    (first column) whole; a number with its unit whole, apart from a bracketed second
    unit ("15.1 GB (14.1 GiB)"); other text by word."""
    if first or len(cell) <= 1:
        return [cell]
    if cell[0].isdigit() or cell[0] in "+-$~":
        return cell.replace(" (", "\0(").split("\0")
    return cell.split() or [cell]


def low_value(table: Table, *headers: str) -> Table:
    """Name the columns of ``table`` that :func:`fit_table` leaves out first, in this order,
    when it cannot fit them all (by default it leaves out the last columns)."""
    table.capcalc_low_value = headers
    return table


def _drawable(table: Table, width: int) -> bool:
    """Whether rich draws ``table`` in ``width`` columns giving every column at least its
    ``min_width`` (rich's last resort when a table is too wide narrows every column
    alike, below any minimum: the wrapped numbers that :func:`fit_table` must avoid)."""
    from rich.console import Console

    console = Console(width=width, file=io.StringIO(), color_system=None)
    extra = table._extra_width
    widths = table._calculate_column_widths(console, console.options.update_width(width - extra))
    if sum(widths) + extra > width:
        return False
    return all(
        w >= (c.min_width or 0) + table._get_padding_width(c._index)
        for w, c in zip(widths, table.columns, strict=True)
    )


def fit_table(table: Table, width: int) -> list[str]:
    """Make ``table`` readable in ``width`` columns without cutting a number or a name,
    and never show '…'. In order, until the table fits: every cell of at most
    :data:`WHOLE_CELL` characters and every header word stays whole; columns with one
    value in every row leave the table, longest first, and come back as a line under it
    (returned); the padding narrows to one space; cells wrap between the pieces of
    :func:`_pieces` (a number and its unit stay together); columns leave the table, those
    named by :func:`low_value` first, then the last ones, named in a line under it."""

    def widen(pieces) -> None:
        for i, column in enumerate(table.columns):
            cells = [_plain_text(c) for c in column._cells]
            words = str(column.header).split() or [""]
            whole = [len(p) for c in cells for p in pieces(c, i == 0)] + [len(w) for w in words]
            column.min_width = max(whole)
            # a column no narrower than its widest cell cannot wrap: rich then narrows the others
            column.no_wrap = max(len(x) for x in [str(column.header), *cells]) <= column.min_width

    for column in table.columns:
        column.overflow = "fold"
        column.no_wrap = False
    # the widest it could be drawn: each column as wide as its longest cell, two spaces of
    # padding and one rule each; within the width, nothing needs drawing to check
    longest = [max(len(w) for w in [str(c.header), *map(_plain_text, c._cells)]) for c in table.columns]
    if sum(longest) + 3 * len(longest) + 1 <= width:
        return []
    widen(lambda c, first: [c] if len(c) <= WHOLE_CELL else _pieces(c, first))
    moved: list[str] = []
    while _needed_width(table) > width:
        constant = [
            c for c in table.columns[1:] if len(c._cells) > 1 and len({_plain_text(x) for x in c._cells}) == 1
        ]
        if not constant:
            break
        column = max(constant, key=lambda c: c.min_width or 0)
        _remove_column(table, column)
        moved.append(f"{column.header}: {_plain_text(column._cells[0])}")
    if _needed_width(table) > width:  # one space between columns instead of two
        table.padding = (0, 1, 0, 0)
        table.pad_edge = False
    if _needed_width(table) > width:
        widen(_pieces)
    dropped: list[str] = []
    original = [str(c.header) for c in table.columns]
    low = [h for h in getattr(table, "capcalc_low_value", ()) if h != str(table.columns[0].header)]
    while not _drawable(table, width) and len(table.columns) > 2:
        by_header = {str(c.header): c for c in table.columns}
        header = next((h for h in low if h in by_header), None)
        column = by_header[header] if header is not None else table.columns[-1]
        _remove_column(table, column)
        dropped.append(str(column.header))
    if _needed_width(table) > width:
        _break_cells(table, width)
    lines = _wrap_items("every row: ", moved, "", width) if moved else []
    if dropped:
        dropped.sort(key=original.index)
        lines += _wrap_items(f"left out to fit {width} columns: ", dropped, " (all in --json/--csv)", width)
    return lines


def _wrap_items(prefix: str, items: list[str], suffix: str, width: int) -> list[str]:
    """``prefix`` + ``items`` joined by commas + ``suffix``, in lines of at most ``width``
    characters broken only between items (an item is a header, or a header and its value:
    rich would break inside one, between a number and its unit)."""
    texts = [item + "," for item in items[:-1]] + [items[-1] + suffix]
    head = prefix.rstrip()
    lines, current = [], head
    for text in texts:
        if current != head and len(current) + 1 + len(text) > width:
            lines.append(current)
            current = " "  # continuation lines are indented by two spaces
        current += " " + text
    lines.append(current)
    return lines


def _break_cells(table: Table, width: int) -> None:
    """Break each cell wider than the room rich gives its column at ``width`` into lines
    between its :func:`_pieces` (rich itself would break at any space, splitting a number
    from its unit)."""
    from rich.console import Console

    console = Console(width=width, file=io.StringIO(), color_system=None)
    extra = table._extra_width
    widths = table._calculate_column_widths(console, console.options.update_width(width - extra))
    for i, (column, w) in enumerate(zip(table.columns, widths, strict=True)):
        room = w - table._get_padding_width(column._index)
        for j, cell in enumerate(column._cells):
            if not isinstance(cell, str) or len(cell) <= room:
                continue
            lines: list[str] = []
            for piece in _pieces(cell, i == 0):
                if lines and len(lines[-1]) + 1 + len(piece) <= room:
                    lines[-1] += " " + piece
                else:
                    lines.append(piece)
            column._cells[j] = "\n".join(lines)


def _remove_column(table: Table, column) -> None:
    """Take ``column`` out of ``table``. rich finds a column's padding (first, last) by its
    ``_index``, so the columns after it are renumbered: a stale index would measure a
    middle column without its padding and wrap its widest cell."""
    table.columns.remove(column)
    for i, c in enumerate(table.columns):
        c._index = i


def stdout_console() -> Console:
    return _fitting_console()(
        file=sys.stdout, soft_wrap=False, highlight=False, width=console_width(sys.stdout)
    )


def stderr_console() -> Console:
    from rich.console import Console

    return Console(file=sys.stderr, highlight=False, width=console_width(sys.stderr))


@functools.cache
def _fitting_console() -> type:
    """The console class of tables (defined on first use: importing this module does
    not import rich)."""
    from rich.console import Console

    class FittingConsole(Console):
        """A console that fits every table it prints to its width (:func:`fit_table`)."""

        def print(self, *objects, **kwargs):
            from rich.table import Table

            after: list[str] = []
            for obj in objects:
                if isinstance(obj, Table):
                    after += fit_table(obj, self.width)
            super().print(*objects, **kwargs)
            for line in after:
                super().print(line)

    return FittingConsole


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
        plain = None
        if spec.render is None and spec.columns is None and len(records) == 1:
            plain = plain_field_table(records[0], spec.title, spec.hide, spec.notes, out)
        if plain is not None:
            out.write(plain)
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


#: environment variables under which rich styles output that is not a terminal, or not
#: as :func:`plain_field_table` does
_RICH_ENVIRONMENT = ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "JUPYTER_COLUMNS", "JUPYTER_LINES")


def _plain_width(text: str) -> int | None:
    """Terminal cells of ``text`` when each character takes one (None otherwise: a wide or
    combining character, a control character)."""
    import unicodedata

    for ch in text:
        if ch < " " or unicodedata.combining(ch) or unicodedata.east_asian_width(ch) in "WF":
            return None
    return len(text)


def plain_field_table(rec: dict, title: str, hide: set[str] | None, notes: list[str], out) -> str | None:
    """The field/value table of ``rec`` and its notes, character for character as rich
    draws :func:`field_table` on ``out`` (``HEAVY_HEAD`` box, italic title, bold header on a
    terminal), without importing rich (a third of a `capcalc kv` run). None when rich is
    needed: the table or a note is wider than the terminal (it would wrap), a note holds
    rich markup or an emoji code, a character is not one cell wide, or rich would style
    differently (a forced or Jupyter terminal, Windows, TERM=dumb)."""
    if any(os.environ.get(name) for name in _RICH_ENVIRONMENT) or sys.platform == "win32":
        return None
    tty = out.isatty()
    if tty and os.environ.get("TERM", "").lower() in ("dumb", "unknown"):
        return None
    width = console_width(out)
    if width is None:
        width = shutil.get_terminal_size((80, 25)).columns
    rows = [(key, humanize(key, value)) for key, value in rec.items() if not (hide and key in hide)]
    cells = [("field", "value"), *rows]
    if any(_plain_width(text) is None for row in cells for text in row) or not rows:
        return None
    if any("[" in note or re.search(r":[\w+-]+:", note) or _plain_width(note) is None for note in notes):
        return None
    a = max(len(k) for k, _ in cells)
    b = max(len(v) for _, v in cells)
    total = a + b + 7  # two columns of one space's padding each side, three rules
    if total > width or any(len(note) > width for note in notes) or (title and _plain_width(title) is None):
        return None

    def style(code: str, text: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if tty else text

    lines = []
    if title:
        if len(title) > total:
            return None
        left = (total - len(title)) // 2
        lines.append(style("3", " " * left + title + " " * (total - len(title) - left)))
    pad = style("1", " ")
    header = f"┃{pad}{style('1', 'field'.ljust(a))}{pad}┃{pad}{style('1', 'value'.ljust(b))}{pad}┃"
    lines += [f"┏{'━' * (a + 2)}┳{'━' * (b + 2)}┓", header, f"┡{'━' * (a + 2)}╇{'━' * (b + 2)}┩"]
    lines += [f"│ {k.ljust(a)} │ {v.ljust(b)} │" for k, v in rows]
    lines.append(f"└{'─' * (a + 2)}┴{'─' * (b + 2)}┘")
    return "\n".join([*lines, *notes]) + "\n"


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
    from rich.table import Table

    table = Table(title=title or None, show_header=True, header_style="bold")
    table.add_column("field")
    table.add_column("value")
    for key, value in rec.items():
        if hide and key in hide:
            continue
        table.add_row(key, humanize(key, value))
    return table


def rows_table(records: list[dict], spec: TableSpec) -> Table:
    from rich.table import Table

    columns = spec.columns or [(k, k) for k in records[0] if k not in spec.hide]
    table = Table(title=spec.title or None, header_style="bold")
    for i, (_, header) in enumerate(columns):
        table.add_column(header, justify="left" if i == 0 else "right")
    for rec in records:
        table.add_row(*(humanize(key, rec.get(key)) for key, _ in columns))
    return low_value(table, *spec.low_value)


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

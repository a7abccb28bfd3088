"""What every command shares: the Typer app, the output and profile options,
and the one function that hands records to the renderer."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import CapcalcError
from ..output import TableSpec, choose_format, emit
from ..profiles import Registry
from ..units import parse_quantity

app = typer.Typer(
    name="capcalc",
    help="Capacity and roofline calculator for LLM inference.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON (base units: bytes, seconds, FLOP).")]
JsonlFlag = Annotated[bool, typer.Option("--jsonl", help="Print one JSON record per line.")]
CsvFlag = Annotated[bool, typer.Option("--csv", help="Print CSV with a header row.")]
ProfilesOpt = Annotated[
    Optional[list[Path]],
    typer.Option(
        "--profiles",
        help="Extra directory of model/GPU profiles (repeatable; also $CAPCALC_PROFILES). "
        "A same-named user profile wins.",
    ),
]


class Output:
    """The output options of one invocation, parsed once."""

    def __init__(self, json_: bool = False, jsonl: bool = False, csv_: bool = False):
        self.format = choose_format(json_, jsonl, csv_)

    def emit(self, records, spec: TableSpec | None = None, single: bool = False) -> None:
        emit(records, self.format, spec, single)


def load_registry(profiles: Optional[list[Path]]) -> Registry:
    return Registry.load(profiles or ())


def parse_int_list(text: str, what: str) -> list[int]:
    """'1,8,64' -> [1, 8, 64], each a positive whole number."""
    values = []
    for part in str(text).split(","):
        part = part.strip().replace("_", "")
        if not part.isdigit() or int(part) < 1:
            raise CapcalcError(f"{what}: expected positive whole numbers separated by commas, got {text!r}")
        values.append(int(part))
    return values


def parse_bytes_option(text: Optional[str], what: str) -> Optional[float]:
    """'8GB', '7.5 GiB' or a plain number of bytes."""
    if text is None:
        return None
    value = parse_quantity(text, "bytes", what)
    if value <= 0:
        raise CapcalcError(f"{what} must be positive, got {text!r}")
    return value

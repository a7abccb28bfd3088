"""Quantities with units: parsing profile and flag values, formatting for tables.

GB is 10^9 bytes and GiB is 2^30 bytes; the two are never mixed. JSON output
carries base units (bytes, bytes/s, FLOP/s, seconds), so formatting here is only
for tables, and every formatted number carries its unit.
"""

from __future__ import annotations

import math
import re

from capcalc.core.errors import CapcalcError
from capcalc.core.inputs import check_number, excerpt

_SI = {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18}
_BINARY = {"Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40, "Pi": 2.0**50}

# kind -> accepted unit spellings (after the prefix); the empty unit means "base unit"
_UNITS = {
    "bytes": ("B", ""),
    "bandwidth": ("B/s", "Bps"),
    "flops": ("FLOP/s", "FLOPS", "OP/s", "OPS", "FLOPs/s"),
}
_DURATIONS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "sec": 1.0,
    "min": 60.0,
    "h": 3600.0,
}

# ASCII digits only: Python's \d also matches '٣' and other scripts' digits
_NUMBER = r"[-+]?(?:[0-9][0-9_]*\.?[0-9_]*|\.[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)?"
_QUANTITY = re.compile(rf"^\s*({_NUMBER})\s*([A-Za-zµ/_]*(?:/[A-Za-z]+)?)\s*$")


def _split(text: str, what: str) -> tuple[float, str]:
    match = _QUANTITY.match(text) if len(text) <= 128 else None
    if not match:
        raise CapcalcError(f"cannot read {what} {excerpt(text)}: expected a number with an optional unit")
    return check_number(float(match.group(1).replace("_", "")), what), match.group(2)


def parse_quantity(value, kind: str, what: str = "value") -> float:
    """Parse ``value`` (a number in base units, or a string such as '80 GiB',
    '3.35 TB/s', '989.4 TFLOP/s') into base units of ``kind``.

    kind is one of 'bytes', 'bandwidth', 'flops', 'duration'.
    """
    if isinstance(value, bool):
        raise CapcalcError(f"{what}: expected a number, got {value!r}")
    if isinstance(value, (int, float)):
        return check_number(value, what)
    if not isinstance(value, str):
        raise CapcalcError(f"{what}: expected a number or a string with a unit, got {excerpt(value)}")
    number, unit = _split(value, what)
    return _finite(_in_units(number, unit, value, kind, what), what, value)


def _finite(number: float, what: str, value) -> float:
    """A product with a unit's factor that overflowed ('1e300 PB') is as unreadable as 'inf'."""
    if not math.isfinite(number):
        raise CapcalcError(f"{what}: expected a finite quantity, got {excerpt(value)}")
    return number


def _in_units(number: float, unit: str, value, kind: str, what: str) -> float:
    if kind == "duration":
        if unit == "":
            return number
        if unit in _DURATIONS:
            return _scale(number, _DURATIONS[unit])
        raise CapcalcError(
            f"{what}: unknown time unit {excerpt(unit)} in {excerpt(value)} (use ns, us, ms, s, min, h)"
        )
    accepted = _UNITS[kind]
    for prefix_table in (_BINARY, _SI):
        for prefix, factor in prefix_table.items():
            for base in accepted:
                if unit == prefix + base and (prefix or base):
                    return number * factor
    if unit == "":
        return number
    examples = {
        "bytes": "B, GB, GiB",
        "bandwidth": "GB/s, TB/s",
        "flops": "TFLOP/s, TOP/s",
    }[kind]
    raise CapcalcError(f"{what}: unknown unit {excerpt(unit)} in {excerpt(value)} (use {examples})")


def _scale(number: float, factor: float) -> float:
    """number x factor, dividing by the inverse for sub-unit factors so that '10 us'
    is exactly 1e-05 rather than 9.999999999999999e-06."""
    return number / round(1 / factor) if factor < 1 else number * factor


def parse_duration(value, what: str = "duration") -> float:
    """Seconds from '250ms', '4s', '1.5 min' or a bare number of seconds."""
    return parse_quantity(value, "duration", what)


def parse_rate(value, what: str = "rate") -> tuple[float, str]:
    """A rate per second from '20/s', '20 req/s', '1200tok/s', '20' (per second).

    Returns (value per second, unit) where unit is 'req' or 'tok'.
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return check_number(value, what), "req"
    text = str(value).strip()
    match = (
        re.match(rf"^({_NUMBER})\s*(req|requests|tok|tokens)?\s*(/\s*(s|sec|min|h))?$", text)
        if len(text) <= 128
        else None
    )
    if not match:
        raise CapcalcError(
            f"cannot read {what} {excerpt(text)}: expected e.g. '20/s', '20req/s', '1200tok/s'"
        )
    number = check_number(float(match.group(1).replace("_", "")), what)
    unit = "tok" if (match.group(2) or "").startswith("tok") else "req"
    per = _DURATIONS[match.group(4)] if match.group(4) else 1.0
    return number / per, unit


def _scaled(value: float, steps: list[tuple[float, str]], unit: str, digits: int = 3) -> str:
    for factor, prefix in steps:
        if abs(value) >= factor:
            return f"{_sig(value / factor, digits)} {prefix}{unit}"
    factor, prefix = steps[-1]
    return f"{_sig(value / factor, digits)} {prefix}{unit}"


def _sig(x: float, digits: int = 3) -> str:
    """x to ``digits`` significant digits, without scientific notation for ordinary sizes."""
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    magnitude = int(math.floor(math.log10(abs(x))))
    decimals = max(0, digits - 1 - magnitude)
    return f"{x:,.{decimals}f}"


_SI_STEPS = [(1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"), (1.0, "")]
_BIN_STEPS = [(2.0**50, "Pi"), (2.0**40, "Ti"), (2.0**30, "Gi"), (2.0**20, "Mi"), (2.0**10, "Ki"), (1.0, "")]


def format_bytes(n: float) -> str:
    """'2.68 GB (2.50 GiB)': decimal first, binary in brackets, so neither is mistaken for the other."""
    if abs(n) < 1024:
        return f"{n:,.0f} B"
    return f"{_scaled(n, _SI_STEPS, 'B')} ({_scaled(n, _BIN_STEPS, 'B')})"


def format_bandwidth(n: float) -> str:
    return _scaled(n, _SI_STEPS, "B/s")


def format_flops(n: float) -> str:
    return _scaled(n, _SI_STEPS, "FLOP")


def format_flops_rate(n: float) -> str:
    return _scaled(n, _SI_STEPS, "FLOP/s")


def format_count(n: float) -> str:
    steps = [(1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k"), (1.0, "")]
    if abs(n) < 1e4:
        return f"{n:,.0f}" if float(n).is_integer() else _sig(n, 4)
    return _scaled(n, steps, "", digits=4).strip()


def format_duration(seconds: float) -> str:
    if seconds == 0:
        return "0 s"
    if abs(seconds) < 1e-3:
        return f"{_sig(seconds * 1e6)} µs"
    if abs(seconds) < 1:
        return f"{_sig(seconds * 1e3)} ms"
    return f"{_sig(seconds)} s"

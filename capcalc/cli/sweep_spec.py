"""`capcalc sweep`: one command over the cartesian product of option values.

``capcalc sweep latency llama-3-8b,qwen3-8b --gpu h100-sxm,a100-80gb-sxm --batch 1,8,64``
runs ``capcalc latency`` once per combination (2 x 2 x 3 = 12 runs). Each run's
arguments are parsed by the target command's own Click command and computed by the
library calls the command makes, so validation and the record keys are exactly those
of the single command; the records are never re-parsed from JSON.

How the sweep's own arguments are read (:func:`parse_sweep_args`):

* every positional token is a value of the command's positional argument (the
  model), each split on commas: ``a,b c`` is three models;
* an option's value is split on commas, each element one value to sweep over;
  giving the option twice adds values (``--batch 1 --batch 8`` is ``--batch 1,8``);
* a boolean flag takes no value and is passed to every run; ``--flag=true,false``
  sweeps it on and off;
* an option the command accepts several times (``multiple``, e.g. ``--profiles``,
  ``plan --price``) is passed unchanged to every run and not swept.

Axes vary in the order they first appear, the last fastest (``itertools.product``).
Each combination gives the rows of the command's records (one, except ``plan``: one
per candidate), each with ``sweep_index``; a failed one gives a row with ``error``.
This module is pure: it turns tokens and a description of the command's parameters
into argument lists, and runs' records into rows; ``capcalc/cli/sweep.py`` runs them.
"""

from __future__ import annotations

import difflib
import itertools
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from capcalc.core.errors import CapcalcError
from capcalc.core.inputs import excerpt

#: the commands sweep can run
SWEEPABLE = ("kv", "fit", "roofline", "latency", "plan")
#: options of the target command that the sweep owns (its output format)
OWN_OPTIONS = ("--json", "--jsonl", "--csv")
INDEX_KEY = "sweep_index"
ERROR_KEY = "error"

_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")
_INT = re.compile(r"^[-+]?\d+$")
_FLOAT = re.compile(r"^[-+]?(\d+\.\d*|\.\d+|\d+)([eE][-+]?\d+)?$")


@dataclass(frozen=True)
class Param:
    """One parameter of the target command, as Click declares it."""

    name: str  # the Python name: 'gpu', 'max_model_len', 'model'
    opts: tuple[str, ...] = ()  # '--max-model-len', '--ctx'; empty for a positional argument
    secondary_opts: tuple[str, ...] = ()  # '--no-quantize-embeddings'
    is_flag: bool = False
    multiple: bool = False

    @property
    def positional(self) -> bool:
        return not self.opts


@dataclass(frozen=True)
class Axis:
    """One swept input: a parameter and the values it takes."""

    param: Param
    values: tuple[str, ...]

    def argv(self, value: str) -> list[str]:
        """The command-line tokens that give the parameter ``value``."""
        p = self.param
        if p.positional:
            return [value]
        if p.is_flag:
            if value == "true":
                return [p.opts[0]]
            return [p.secondary_opts[0]] if p.secondary_opts else []
        return [p.opts[0], value]

    def echo(self, value: str) -> Any:
        """The value as echoed in a row: a flag as true/false, a number as a number."""
        if self.param.is_flag:
            return value == "true"
        if _INT.match(value):
            return int(value)
        if _FLOAT.match(value):
            return float(value)
        return value


@dataclass(frozen=True)
class Combination:
    index: int
    argv: list[str]
    inputs: dict[str, Any]  # parameter name -> value, as given


@dataclass(frozen=True)
class SweepPlan:
    """What to run: the axes, and the tokens every run gets unchanged."""

    command: str
    axes: tuple[Axis, ...]
    fixed: tuple[str, ...] = ()
    input_names: tuple[str, ...] = field(default=())

    @property
    def size(self) -> int:
        n = 1
        for axis in self.axes:
            n *= len(axis.values)
        return n

    @property
    def varying(self) -> tuple[str, ...]:
        """Names of the inputs that take more than one value."""
        return tuple(a.param.name for a in self.axes if len(a.values) > 1)

    def combinations(self) -> Iterator[Combination]:
        for index, values in enumerate(itertools.product(*(a.values for a in self.axes))):
            argv: list[str] = []
            inputs: dict[str, Any] = {}
            for axis, value in zip(self.axes, values, strict=True):
                argv.extend(axis.argv(value))
                inputs[axis.param.name] = axis.echo(value)
            argv.extend(self.fixed)
            yield Combination(index, argv, inputs)


def _split(text: str, what: str) -> tuple[str, ...]:
    values = tuple(v.strip() for v in text.split(","))
    if not text.strip() or any(v == "" for v in values):
        raise CapcalcError(f"{what}: empty value in {excerpt(text)} (separate values with single commas)")
    return values


def _flag_values(text: str, option: str) -> tuple[str, ...]:
    out = []
    for v in _split(text, option):
        low = v.lower()
        if low in _TRUE:
            out.append("true")
        elif low in _FALSE:
            out.append("false")
        else:
            raise CapcalcError(
                f"{option} is an on/off flag: sweep it with {option}=true,false, got {excerpt(v)}"
            )
    return tuple(out)


def parse_sweep_args(command: str, tokens: Sequence[str], params: Sequence[Param]) -> SweepPlan:
    """Read the tokens after ``capcalc sweep COMMAND`` against the command's parameters
    (module docstring). Raises :class:`CapcalcError` naming the offending option."""
    by_opt: dict[str, Param] = {}
    for p in params:
        for opt in (*p.opts, *p.secondary_opts):
            by_opt[opt] = p
    positional = [p for p in params if p.positional]
    values: dict[str, list[str]] = {}  # parameter name -> values, in order of first appearance
    owners: dict[str, Param] = {}
    fixed: list[str] = []
    i = 0
    tokens = list(tokens)
    while i < len(tokens):
        token = tokens[i]
        i += 1
        if token.startswith("--") and len(token) > 2:
            name, eq, inline = token.partition("=")
            p = by_opt.get(name)
            if p is None or name in OWN_OPTIONS:
                if name in OWN_OPTIONS:
                    raise CapcalcError(
                        f"{name} is the sweep's own output option: give it once, without a value"
                    )
                close = difflib.get_close_matches(name, list(by_opt), n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                raise CapcalcError(f"`capcalc {command}` has no option {name}{hint}")
            if p.is_flag:
                if not eq:
                    flag_value = ("false",) if name in p.secondary_opts else ("true",)
                else:
                    flag_value = _flag_values(inline, p.opts[0])
                values.setdefault(p.name, []).extend(flag_value)
                owners[p.name] = p
                continue
            if eq:
                value = inline
            elif i < len(tokens):
                value = tokens[i]
                i += 1
            else:
                raise CapcalcError(f"{name} needs a value")
            if p.multiple:
                fixed.extend([name, value])
                continue
            values.setdefault(p.name, []).extend(_split(value, name))
            owners[p.name] = p
        else:
            if not positional:
                raise CapcalcError(f"`capcalc {command}` takes no positional argument, got {excerpt(token)}")
            p = positional[0]
            values.setdefault(p.name, []).extend(_split(token, p.name.upper()))
            owners[p.name] = p
    for p in positional:
        if p.name not in values:
            raise CapcalcError(
                f"missing {p.name.upper()}: `capcalc sweep {command} {p.name.upper()}[,...] [--option v1,v2,...]`"
            )
    axes = tuple(Axis(owners[name], tuple(dict.fromkeys(vs))) for name, vs in values.items())
    return SweepPlan(command, axes, tuple(fixed), tuple(values))


# --------------------------------------------------------------------------- rows


def record_rows(index: int, records: Sequence[dict]) -> list[dict]:
    """A run's records as rows: ``sweep_index`` first, then the record's own keys."""
    return [{INDEX_KEY: index, **rec} for rec in records]


def error_row(combination: Combination, message: str) -> dict:
    """A failed run: its index, its inputs (as given) and the one-line error."""
    return {INDEX_KEY: combination.index, **combination.inputs, ERROR_KEY: message}


def csv_columns(first_record: dict | None, input_names: Sequence[str]) -> list[str]:
    """The CSV header: ``sweep_index``, the command's record keys, any input the
    records do not echo under its own name (so failed rows can show it), ``error``."""
    keys = [k for k in (first_record or {}) if k != INDEX_KEY]
    extra = [n for n in input_names if n not in keys]
    return [INDEX_KEY, *keys, *extra, ERROR_KEY]


def fill_inputs(row: dict, combination: Combination, columns: Sequence[str]) -> dict:
    """For CSV: add the inputs that have a column but no value in ``row``."""
    for name, value in combination.inputs.items():
        if name in columns and name not in row:
            row[name] = value
    return row


def sweep_exit_code(ok: int, failed_codes: Sequence[int]) -> int:
    """0 if any run succeeded (or there was nothing to run); otherwise the failures'
    exit code: 2 when every one was a usage error, else 1."""
    if ok or not failed_codes:
        return 0
    return 2 if all(code == 2 for code in failed_codes) else 1

"""Every command-line value through the input layer (:mod:`capcalc.core.inputs`).

Typer's conversion of ``int`` and ``float`` annotations takes 'inf' and '1e309' for
infinity, and an empty string for a path. Rather than repeat a check in every command,
:func:`harden` walks the built command once and runs each parameter's raw value through
the input layer before Typer converts it: whole numbers in ASCII digits within the
bound of their option (``--tp`` by ``BOUNDS['tp']``, ...), finite numbers, and
non-empty, bounded strings and paths. A refusal is a :class:`CapcalcError`: one line,
exit 2, naming the option.
"""

from __future__ import annotations

from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin

from capcalc.core.inputs import check_text, parse_float, parse_int

#: option (parameter name) -> its bound in :data:`capcalc.core.inputs.BOUNDS` and its
#: lowest value where that differs from the bound's (any other whole number: 'count')
INT_KINDS: dict[str, tuple[str, int | None]] = {
    "tp": ("tp", None),
    "pp": ("pp", None),
    "n_gpus": ("gpus", None),
    "batch": ("batch", None),
    "ctx": ("context", None),
    "max_model_len": ("context", None),
    "prompt": ("tokens", None),
    "output": ("tokens", 0),
    "group_size": ("group_size", None),
    "block_size": ("block_size", None),
    "max_num_seqs": ("batch", None),
    "max_num_batched_tokens": ("tokens", None),
    "recv_interval": ("count", 1),
    "batch_wait_iters": ("count", 0),
    "repeats": ("repeats", None),
    "jobs": ("count", 1),  # any number: sweep clamps it to the combinations and CPUs
}


def _where(param) -> str:
    opts = getattr(param, "opts", None)
    if getattr(param, "param_type_name", "") == "option" and opts:
        return max(opts, key=len)
    return str(getattr(param, "human_readable_name", None) or param.name or "value").lower()


def _base(annotation: Any) -> Any:
    """int for ``Optional[int]``, Path for ``Optional[list[Path]]`` (the element type)."""
    while get_origin(annotation) in (Union, UnionType, list, tuple):
        args = [a for a in get_args(annotation) if a is not type(None) and a is not Ellipsis]
        if len(args) != 1:
            return None
        annotation = args[0]
    return annotation


_CLICK_TYPES = {"integer": int, "float": float, "text": str, "path": Path}


def _kind(param) -> Any:
    """The Python type a parameter converts to: Typer >= 0.29 keeps its annotation; an
    older Typer builds a Click type, whose name says it."""
    descriptor = getattr(param, "type_descriptor", None)
    if descriptor is not None:
        return _base(descriptor.annotation)
    return _CLICK_TYPES.get(getattr(getattr(param, "type", None), "name", ""))


def check_raw(param, value: Any) -> Any:
    """``value`` as given on the command line (a string, or a tuple of them for a
    repeated option) checked by the input layer; other values (defaults) pass as they are."""
    if isinstance(value, (list, tuple)):
        return type(value)(check_raw(param, v) for v in value)
    if not isinstance(value, str):
        return value
    where = _where(param)
    kind = _kind(param)
    if kind is int:
        name, low = INT_KINDS.get(param.name or "", ("count", 0))
        return parse_int(value, where, name, low)
    if kind is float:
        return parse_float(value, where)
    if kind in (str, Path):
        check_text(value, where)
    return value


def harden(command, subcommands: bool = True):
    """Run every parameter of ``command`` (and, with ``subcommands``, of the subcommands it
    holds) through :func:`check_raw` before Typer converts it (in place); returns
    ``command``. The top-level group passes False: its commands load lazily and are
    hardened as they are built (:mod:`capcalc.cli.startup`)."""
    stack = [command]
    while stack:
        cmd = stack.pop()
        for param in cmd.params:
            if getattr(param, "is_flag", False) or getattr(param, "_capcalc_strict", False):
                continue
            param.process_value = _checked(param, param.process_value)
            param._capcalc_strict = True
        if subcommands:
            stack.extend(getattr(cmd, "commands", {}).values())
    return command


def _checked(param, process_value):
    def process(ctx, value):
        return process_value(ctx, check_raw(param, value))

    return process

"""What keeps `capcalc`'s start-up short: commands that load when used, and option
values converted without Pydantic.

A command's module is imported only when that command runs, or when help or
completion lists every command (:class:`LazyGroup`). typer 0.29 converts every
option value through a Pydantic ``TypeAdapter``; importing Pydantic and building the
adapters costs more than the rest of a `capcalc kv` run. For the plain types
capcalc's options use (str, int, float, bool, Path and lists of them, with no range
or path checks) :func:`light_coercion` converts with the same rules and the same
error text, and leaves any other parameter to typer.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args, get_origin

import typer
from typer.core import TyperCommand, TyperGroup

#: command name -> the module of capcalc.cli that registers it (``@app.command``), in the
#: order ``capcalc --help`` lists them (tests/test_terminal.py checks it against the
#: modules' registrations).
COMMAND_MODULES = {
    "models": "catalog",
    "gpus": "catalog",
    "show": "catalog",
    "fit": "fit",
    "import": "imports",
    "kv": "kv",
    "latency": "latency",
    "littles": "littles",
    "calibrate": "calibrate",
    "measure": "measure",
    "plan": "plan",
    "roofline": "roofline",
    "sweep": "sweep",
}


#: the Typer app whose registered commands the lazy table builds (set by capcalc.cli.common,
#: which defines the app and imports this module: passing it in keeps the import one-way)
_APP = None


def bind_app(app) -> None:
    """Name the app whose commands :class:`LazyGroup` builds."""
    global _APP
    _APP = app


class _LazyCommands(MutableMapping):
    """A group's command table: every name of :data:`COMMAND_MODULES` is a key from the
    start; looking one up imports its module and builds its Click command, once."""

    def __init__(self, built: MutableMapping):
        self._built = dict(built)

    def _build(self, name: str):
        from capcalc.cli.strict import harden

        app = _APP
        importlib.import_module(f"capcalc.cli.{COMMAND_MODULES[name]}")
        for info in app.registered_commands:
            if (info.name or typer.main.get_command_name(info.callback.__name__)) == name:
                if info.cls in (None, TyperCommand):
                    info.cls = LightCommand
                command = typer.main.get_command_from_info(
                    info,
                    pretty_exceptions_short=app.pretty_exceptions_short,
                    rich_markup_mode=app.rich_markup_mode,
                )
                light_coercion(command)
                harden(command)  # every value through the input layer before it converts
                self._built[name] = command
                return command
        raise KeyError(name)

    def __getitem__(self, name: str):
        if name in self._built:
            # typer builds the commands whose modules are already imported itself (a second
            # run in one process): those get the input layer here (harden is idempotent)
            from capcalc.cli.strict import harden

            return harden(self._built[name])
        if name in COMMAND_MODULES:
            return self._build(name)
        raise KeyError(name)

    def __setitem__(self, name: str, command) -> None:
        self._built[name] = command

    def __delitem__(self, name: str) -> None:
        del self._built[name]

    def __iter__(self):
        yield from COMMAND_MODULES
        yield from (name for name in self._built if name not in COMMAND_MODULES)

    def __len__(self) -> int:
        return len(set(COMMAND_MODULES) | set(self._built))

    def __contains__(self, name) -> bool:
        return name in COMMAND_MODULES or name in self._built


class _LightHelp:
    """The ``--help`` option (made when a command is parsed) converted by :func:`light_coercion` too."""

    def get_help_option(self, ctx):
        option = super().get_help_option(ctx)
        if option is not None:
            light_coercion(option)
        return option


class LightCommand(_LightHelp, TyperCommand):
    """A command whose parameters, help included, convert without Pydantic."""


class LazyGroup(_LightHelp, TyperGroup):
    """capcalc's top-level group, whose commands load on first use (:class:`_LazyCommands`).
    Parameters added after construction (typer's completion options) need a call of
    :func:`light_coercion` on the group."""

    def __init__(self, **attrs):
        super().__init__(**attrs)
        self.commands = _LazyCommands(self.commands)


# --- option values without Pydantic -------------------------------------------------

# Pydantic's lax rules for a string, as typer 0.29 applies them: surrounding whitespace
# is ignored, digits may be grouped by single underscores, an int may carry a zero
# fraction ("8.0"), and only ASCII digits count.
_INT = re.compile(r"[+-]?[0-9]+(?:_[0-9]+)*(?:\.0+)?")
_FLOAT = re.compile(
    r"[+-]?(?:(?:[0-9]+(?:_[0-9]+)*)?\.?[0-9]+(?:_[0-9]+)*\.?|[0-9]+(?:_[0-9]+)*\.)(?:[eE][+-]?[0-9]+(?:_[0-9]+)*)?|[+-]?(?:inf|infinity|nan)",
    re.I,
)

INT_ERROR = "Input should be a valid integer, unable to parse string as an integer"
FLOAT_ERROR = "Input should be a valid number, unable to parse string as a number"


def _to_int(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = value.strip() if isinstance(value, str) else None
    if text is None or not _INT.fullmatch(text):
        raise ValueError(INT_ERROR)
    return int(text.split(".")[0])


def _to_float(value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    text = value.strip() if isinstance(value, str) else None
    # pydantic strips whitespace only from a number without underscores (' 1_000' is refused)
    if text is None or not _FLOAT.fullmatch(text) or ("_" in text and text != value):
        raise ValueError(FLOAT_ERROR)
    try:
        return float(text)
    except ValueError:  # the pattern lets a few non-numbers through ('.0.')
        raise ValueError(FLOAT_ERROR) from None


_TRUE = {"1", "on", "t", "true", "y", "yes"}
_FALSE = {"0", "off", "f", "false", "n", "no", ""}
BOOL_ERROR = "Input should be a valid boolean, unable to interpret input"


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    text = value.strip().lower() if isinstance(value, str) else None
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(BOOL_ERROR)


def _to_str(value: Any) -> str:
    if isinstance(value, bytes):
        return os.fsdecode(value)
    return str(value)


_CONVERTERS: dict[Any, Callable[[Any], Any]] = {
    bool: _to_bool,
    int: _to_int,
    float: _to_float,
    str: _to_str,
    Path: Path,
}

#: parameter settings under which a plain conversion is not the whole job (ranges, custom
#: parsers, path types, formats): such a parameter stays with typer
_CHECKS = ("parser", "click_type", "min", "max", "clamp", "path_type", "formats")


def _plain_converter(parameter) -> Callable[[Any], Any] | None:
    descriptor = getattr(parameter, "type_descriptor", None)
    if descriptor is None or descriptor.file_annotation is not None:
        return None
    info = descriptor.parameter_info
    if any(getattr(info, name, None) not in (None, False) for name in _CHECKS):
        return None
    annotation = descriptor.annotation
    if get_origin(annotation) is list:
        (item,) = get_args(annotation)
        convert = _CONVERTERS.get(item)
        if convert is None:
            return None
        return lambda value: [convert(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
    return _CONVERTERS.get(annotation)


try:
    from typer._click.exceptions import BadParameter
    from typer._coercion import RuntimeParam
    from typer._param_types import coerce_cli_path
except ImportError:  # another typer: it converts as it always does
    RuntimeParam = None  # type: ignore[assignment, misc]


if RuntimeParam is not None:

    @dataclass(frozen=True)
    class _PlainRuntimeParam(RuntimeParam):
        """typer's conversion step (``RuntimeParam``) done by a plain function."""

        convert: Callable[[Any], Any]

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            try:
                value = self.convert(value)
            except ValueError as exc:
                raise BadParameter(str(exc), ctx=ctx, param=param) from None
            if self.annotation is Path or get_args(self.annotation) == (Path,):
                # typer's own existence, kind and permission checks, on the converted path
                if isinstance(value, list):
                    return [self._checked(v, param, ctx) for v in value]
                return self._checked(value, param, ctx)
            return value

        def _checked(self, path: Path, param: Any, ctx: Any) -> Any:
            return coerce_cli_path(path, self.parameter_info, path_type=Path, param=param, ctx=ctx)


def light_coercion(command) -> None:
    """Give each of ``command``'s plain parameters (see the module docstring) a
    conversion without Pydantic; other parameters keep typer's own. ``command`` may
    also be a single parameter."""
    if RuntimeParam is None:
        return
    for parameter in getattr(command, "params", [command]):
        if isinstance(getattr(parameter, "_runtime_param", None), _PlainRuntimeParam):
            continue
        convert = _plain_converter(parameter)
        if convert is not None and hasattr(parameter, "_runtime_param"):
            descriptor = parameter.type_descriptor
            parameter._runtime_param = _PlainRuntimeParam(
                parameter_info=descriptor.parameter_info, annotation=descriptor.annotation, convert=convert
            )

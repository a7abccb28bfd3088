"""What every command shares: the Typer app, the output and profile options,
and the one function that hands records to the renderer."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Optional

import typer

from capcalc.cli.startup import LazyGroup
from capcalc.core.dtypes import KV_DTYPES
from capcalc.core.errors import CapcalcError
from capcalc.core.units import parse_quantity
from capcalc.model.weights import WEIGHT_DTYPES
from capcalc.perf.efficiency import ResolvedEfficiency
from capcalc.perf.latency import COMPUTE_DTYPES
from capcalc.report.output import TableSpec, choose_format, emit
from capcalc.schema.profiles import ModelProfile
from capcalc.sources.calibration import load_calibration
from capcalc.sources.dirs import profile_dirs
from capcalc.sources.registry import Registry
from capcalc.sources.resolve import ModelResolver

app = typer.Typer(
    name="capcalc",
    help="Capacity and roofline calculator for LLM inference.",
    cls=LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _print_version(value: bool) -> None:
    if value:
        from capcalc import __version__

        print(f"capcalc {__version__}")
        raise typer.Exit()


@app.callback()
def _main_options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print capcalc's version and exit."
        ),
    ] = False,
) -> None:
    """Capacity and roofline calculator for LLM inference."""


# The arguments and options several commands share (one definition each).
ModelArg = Annotated[str, typer.Argument(help="Model name, alias, Hugging Face id or checkpoint folder.")]
GpuOpt = Annotated[str, typer.Option("--gpu", help="GPU profile name or alias (see `capcalc gpus`).")]
WeightDtypeOpt = Annotated[str, typer.Option(help=f"Weight dtype: {', '.join(WEIGHT_DTYPES)}.")]
KvDtypeOpt = Annotated[
    str, typer.Option("--kv-dtype", "--kv-cache-dtype", help=f"KV cache dtype: {', '.join(KV_DTYPES)}.")
]
ComputeDtypeOpt = Annotated[
    str,
    typer.Option(
        help=f"Dtype whose peak bounds the matrix products: {', '.join(COMPUTE_DTYPES)} (auto: from weights)."
    ),
]
TpOpt = Annotated[
    int, typer.Option(help="Tensor-parallel GPUs (heads, weights and FLOPs split across them).")
]

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON (base units: bytes, seconds, FLOP).")]
JsonlFlag = Annotated[bool, typer.Option("--jsonl", help="Print one JSON record per line.")]
CsvFlag = Annotated[bool, typer.Option("--csv", help="Print CSV with a header row.")]
NoCalibrationFlag = Annotated[
    bool,
    typer.Option("--no-calibration", help="Ignore calibration.yaml (use profile and built-in defaults)."),
]
ProfilesOpt = Annotated[
    Optional[list[Path]],
    typer.Option(
        "--profiles",
        help="Extra directory of model/GPU profiles (repeatable; also $CAPCALC_PROFILES). "
        "A same-named user profile wins.",
    ),
]


#: Where ``Output.emit`` hands records instead of printing them, while set (see
#: :func:`collect_records`).
_RECORD_SINK: ContextVar[Optional[Callable[[list[dict]], None]]] = ContextVar(
    "capcalc_record_sink", default=None
)


@contextmanager
def collect_records(sink: Callable[[list[dict]], None]) -> Iterator[None]:
    """While inside, every ``Output.emit`` calls ``sink(records)`` and prints nothing.

    ``sweep`` runs a command's own Click command once per combination inside this, so
    it gets exactly the records the command would print, without formatting them or
    reading them back from JSON."""
    token = _RECORD_SINK.set(sink)
    try:
        yield
    finally:
        _RECORD_SINK.reset(token)


class Output:
    """The output options of one invocation, parsed once."""

    def __init__(self, json_: bool = False, jsonl: bool = False, csv_: bool = False):
        self.format = choose_format(json_, jsonl, csv_)

    def emit(self, records, spec: TableSpec | None = None, single: bool = False) -> None:
        sink = _RECORD_SINK.get()
        if sink is not None:
            sink(list(records))
            return
        emit(records, self.format, spec, single)


_REGISTRY_CACHE: dict[tuple, Registry] = {}
_CALIBRATION_CACHE: dict[tuple, dict] = {}
_CALIBRATION_NOTED: set[tuple] = set()


def _profile_files_state(dirs: list[Path]) -> tuple:
    """(path, inode, mtime, size) of every YAML file capcalc would read from ``dirs`` (the
    inode: an atomic rewrite within the clock's granularity may keep mtime and size)."""
    state = []
    for path in dirs:
        if path.is_dir():
            for file in sorted(path.iterdir()):
                if file.suffix in (".yaml", ".yml"):
                    stat = file.stat()
                    state.append((str(file), stat.st_ino, stat.st_mtime_ns, stat.st_size))
        else:
            state.append((str(path), None, None, None))
    return tuple(state)


def _files_key(profiles: Optional[list[Path]]) -> tuple:
    """What a registry or calibration read for these ``--profiles`` depends on: the
    directories read (:func:`capcalc.sources.dirs.profile_dirs`) and their files' state."""
    dirs = profile_dirs(profiles or ())
    return (tuple(str(d) for d in dirs), _profile_files_state(dirs))


def load_registry(profiles: Optional[list[Path]]) -> Registry:
    """The registry for these ``--profiles`` directories, loaded once per process
    (``sweep`` runs a command thousands of times) and reloaded when any profile
    file in play changes."""
    key = _files_key(profiles)
    if key not in _REGISTRY_CACHE:
        _REGISTRY_CACHE.clear()
        registry = Registry.load([str(d) for d in (profiles or ())])
        for message in registry.notes:
            note(message)
        _REGISTRY_CACHE[key] = registry
        _RESOLVERS.clear()
    return _REGISTRY_CACHE[key]


_RESOLVERS: dict[int, ModelResolver] = {}
_NOTED: set[str] = set()


def note(message: str) -> None:
    """The one notes channel: ``capcalc: note: ...`` on stderr, each message once per
    process (a sweep would otherwise repeat it for every combination)."""
    if message in _NOTED:
        return
    _NOTED.add(message)
    print(f"capcalc: note: {message}", file=sys.stderr)


def resolve_model(reg: Registry, name: str) -> ModelProfile:
    """A model by profile name, folder or Hub id (:class:`ModelResolver`), its notes shown."""
    resolver = _RESOLVERS.setdefault(id(reg), ModelResolver(reg))
    resolved = resolver.resolve(name)
    for message in resolved.notes:
        note(message)
    return resolved.profile


def load_calibration_cached(profiles: Optional[list[Path]]) -> dict:
    """:func:`capcalc.sources.calibration.load_calibration` for these ``--profiles``, read once
    per process like :func:`load_registry` and reread when a file in play changes.
    The mapping is shared between calls: do not modify it."""
    key = _files_key(profiles)
    if key not in _CALIBRATION_CACHE:
        _CALIBRATION_CACHE.clear()
        _CALIBRATION_CACHE[key] = load_calibration(profiles or ())
    return _CALIBRATION_CACHE[key]


def note_calibration(gpu_name: str, resolved: ResolvedEfficiency) -> None:
    """Say on stderr that ``gpu_name``'s calibration is used: once per process for each
    entry (``sweep`` resolves the same one for every combination)."""
    if not resolved.calibrated:
        return
    key = (gpu_name, resolved.calibration_path, resolved.calibration_date)
    if key in _CALIBRATION_NOTED:
        return
    _CALIBRATION_NOTED.add(key)
    when = f" measured {resolved.calibration_date}" if resolved.calibration_date else ""
    where = resolved.calibration_path or "calibration.yaml"
    note(f"using the calibration of {gpu_name}{when} from {where}")


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

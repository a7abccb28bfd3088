"""What every command shares: the Typer app, the output and profile options,
and the one function that hands records to the renderer."""

from __future__ import annotations

import functools
import inspect
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from capcalc.cli.startup import LazyGroup, bind_app
from capcalc.cli.usage import error_message, flag_for
from capcalc.core.dtypes import COMPUTE_DTYPES, KV_DTYPES, WEIGHT_DTYPES
from capcalc.core.errors import CapcalcError
from capcalc.core.inputs import excerpt, parse_int
from capcalc.core.units import parse_quantity
from capcalc.perf.efficiency import DESCRIPTIONS, PARAMETERS
from capcalc.report.output import TableSpec, choose_format, emit
from capcalc.schema.profiles import ModelProfile
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
bind_app(app)  # the lazy command table builds commands from this app's registrations


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
#: the serving engine's own memory share (latency under load, plan): one flag, each engine's knob
MemoryFractionOpt = Annotated[
    Optional[float],
    typer.Option(
        help="The engine's memory knob that sizes its KV cache: vLLM --gpu-memory-utilization "
        "(default 0.9), SGLang --mem-fraction-static (default: its heuristic), TensorRT-LLM "
        "free_gpu_memory_fraction (default 0.9)."
    ),
]
RecvIntervalOpt = Annotated[
    Optional[int],
    typer.Option(
        "--scheduler-recv-interval",
        help="SGLang only: the scheduler takes new requests every N decode steps and after each "
        "prefill step (SGLang --scheduler-recv-interval; default 1, every step).",
    ),
]
BatchWaitItersOpt = Annotated[
    Optional[int],
    typer.Option(
        help="TensorRT-LLM only: hold new prompts while decodes run for up to N steps "
        "(batch_wait_timeout_iters; default 0, no waiting)."
    ),
]
BatchWaitRatioOpt = Annotated[
    Optional[float],
    typer.Option(
        help="TensorRT-LLM only: ... or until the step's tokens reach this share of the token "
        "budget (batch_wait_max_tokens_ratio, 0..1; default 0)."
    ),
]
WeightDtypeOpt = Annotated[str, typer.Option(help=f"Weight dtype: {', '.join(WEIGHT_DTYPES)}.")]
KvDtypeOpt = Annotated[
    str, typer.Option("--kv-dtype", "--kv-cache-dtype", help=f"KV cache dtype: {', '.join(KV_DTYPES)}.")
]
MambaSsmCacheDtypeOpt = Annotated[
    str,
    typer.Option(
        help=f"Dtype of the recurrent state of hybrid (Mamba / linear-attention) models: {', '.join(KV_DTYPES)} "
        "(auto: the checkpoint's mamba_ssm_dtype, else the serving dtype)."
    ),
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
PpOpt = Annotated[int, typer.Option(help="Pipeline-parallel stages.")]
GroupSizeOpt = Annotated[int, typer.Option(help="Quantisation group size (int4/int8 scales).")]
QuantizeEmbeddingsOpt = Annotated[
    bool, typer.Option(help="Quantise the embedding and LM head too (default: 16-bit).")
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


class Output:
    """The output options of one invocation, parsed once."""

    def __init__(self, json_: bool = False, jsonl: bool = False, csv_: bool = False):
        self.format = choose_format(json_, jsonl, csv_)

    def emit(self, records, spec: TableSpec | None = None, single: bool = False) -> None:
        emit(records, self.format, spec, single)


_NOTED: set[str] = set()


def note(message) -> None:
    """The one notes channel: ``capcalc: note: ...`` on stderr, each message once per
    process (a sweep would otherwise repeat it for every combination). A library
    :class:`~capcalc.core.errors.Note` names its parameters as flags."""
    text = error_message(message) if hasattr(message, "parameters") else str(message)
    if text in _NOTED:
        return
    _NOTED.add(text)
    print(f"capcalc: note: {text}", file=sys.stderr)


def session(profiles: Optional[list[Path]] = None, no_calibration: bool = False):
    """The library session for these ``--profiles`` (the registry, calibration and resolved
    models are cached for the process by :mod:`capcalc.api`)."""
    from capcalc.api import Session

    return Session(profiles or (), use_calibration=not no_calibration)


def show_notes(s) -> None:
    """Print the session's notes (each once per process)."""
    for message in s.notes:
        note(message)


def load_registry(profiles: Optional[list[Path]]):
    """The registry for these ``--profiles`` directories, its notes shown."""
    s = session(profiles)
    registry = s.registry
    show_notes(s)
    return registry


def resolve_model(reg, name: str) -> ModelProfile:
    """A model by profile name, folder or Hub id (:class:`ModelResolver`), its notes shown."""
    from capcalc.api import _RESOLVERS

    resolver = _RESOLVERS.setdefault(id(reg), ModelResolver(reg))
    resolved = resolver.resolve(name)
    for message in resolved.notes:
        note(message)
    return resolved.profile


# --------------------------------------------------------------------------- option groups
#
# Options that several commands share and that the command receives as one value: a
# decorator adds them to the command's signature (Typer reads ``__signature__``), and
# calls the command with the value built from them. ``sweep`` sees ordinary options.


def _option_group(target: str, params: list[inspect.Parameter], build: Callable[[dict], Any]):
    def decorate(func):
        hints = typing.get_type_hints(func, include_extras=True)
        own = [
            p.replace(annotation=hints.get(p.name, p.annotation), kind=inspect.Parameter.KEYWORD_ONLY)
            for p in inspect.signature(func).parameters.values()
            if p.name != target
        ]
        at = next((i for i, p in enumerate(own) if p.name in ("json_", "no_calibration")), len(own))
        merged = own[:at] + params + own[at:]

        @functools.wraps(func)
        def command(**kwargs):
            values = {p.name: kwargs.pop(p.name) for p in params}
            return func(**kwargs, **{target: build(values)})

        command.__signature__ = inspect.Signature(merged)
        command.__annotations__ = {p.name: p.annotation for p in merged}
        command.option_groups = (
            *getattr(func, "option_groups", ()),
            (target, [p.name for p in params], build),
        )
        return command

    return decorate


def _param(name: str, annotation, default) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default)


_DEPLOYMENT_OPTIONS = {
    "weight_dtype": (WeightDtypeOpt, "auto"),
    "kv_dtype": (KvDtypeOpt, "auto"),
    "compute_dtype": (ComputeDtypeOpt, "auto"),
    "tp": (TpOpt, 1),
    "pp": (PpOpt, 1),
    "group_size": (GroupSizeOpt, 128),
    "quantize_embeddings": (QuantizeEmbeddingsOpt, False),
    "mamba_ssm_cache_dtype": (MambaSsmCacheDtypeOpt, "auto"),
}


def deployment_options(*names: str):
    """Add the deployment flags ``names`` (fields of :class:`Deployment`; all when none are
    named) to a command, which receives them as ``deployment: Deployment``. The other
    fields keep their defaults."""
    from capcalc.schema.deployment import Deployment

    chosen = names or tuple(_DEPLOYMENT_OPTIONS)
    params = [_param(n, *_DEPLOYMENT_OPTIONS[n]) for n in chosen]
    return _option_group("deployment", params, lambda values: Deployment(**values))


def _efficiency_option(name: str):
    unit = " (e.g. 10us, 0.3ms, or seconds)" if name.endswith("_s") else ""
    kind = Optional[str] if name.endswith("_s") else Optional[float]
    option = typer.Option(flag_for(name), help=f"Assume {DESCRIPTIONS[name]}{unit}.")
    return _param(name.removesuffix("_s"), Annotated[kind, option], None)


def efficiency_options(func):
    """Add the efficiency flags (:data:`capcalc.perf.efficiency.PARAMETERS`) to a
    command, which receives the ones given as ``efficiency: dict`` (parameter -> value)."""
    params = [_efficiency_option(name) for name in PARAMETERS]
    names = dict(zip((p.name for p in params), PARAMETERS, strict=True))

    def build(values: dict) -> dict:
        return {names[k]: v for k, v in values.items() if v is not None}

    return _option_group("efficiency", params, build)(func)


def collapse_groups(command, params: dict) -> dict:
    """A command's parsed option values with its option groups built, as the command
    itself receives them (``deployment``, ``efficiency``)."""
    params = dict(params)
    for target, names, build in reversed(getattr(command, "option_groups", ())):
        params[target] = build({n: params.pop(n) for n in names})
    return params


#: name -> (command function, compute(session, **params), records(result)): what ``sweep``
#: runs for each combination, the same calls the command makes, without rendering
COMPUTE: dict[str, tuple[Callable, Callable, Callable]] = {}


def sweepable(name: str, compute: Callable, records: Callable):
    """Register a command for ``sweep``: ``compute(session, **params)`` is what the command
    calls with its parsed options, ``records(result)`` the records it prints."""

    def register(command):
        COMPUTE[name] = (command, compute, records)
        return command

    return register


def parse_int_list(text: str, what: str, kind: str = "count") -> list[int]:
    """'1,8,64' -> [1, 8, 64], each a positive whole number in ASCII digits within
    ``BOUNDS[kind]`` (:mod:`capcalc.core.inputs`)."""
    values = []
    for part in str(text).split(","):
        part = part.strip().replace("_", "")
        if not (part.isascii() and part.isdigit()) or int(part) < 1:
            raise CapcalcError(
                f"{what}: expected positive whole numbers separated by commas, got {excerpt(text)}"
            )
        values.append(parse_int(part, what, kind, 1))
    return values


def parse_bytes_option(text: Optional[str], what: str) -> Optional[float]:
    """'8GB', '7.5 GiB' or a plain number of bytes."""
    if text is None:
        return None
    value = parse_quantity(text, "bytes", what)
    if value <= 0:
        raise CapcalcError(f"{what} must be positive, got {excerpt(text)}")
    return value

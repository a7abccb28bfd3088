"""The calibration file: efficiency parameters measured on the user's own GPU.

``capcalc measure --save`` writes ``calibration.yaml`` into the user profile directory
(:func:`capcalc.sources.dirs.user_profile_dir`); ``latency`` and ``plan`` read one from each
directory profiles are read from (:func:`capcalc.sources.dirs.profile_dirs`; a later
directory's entry for a GPU wins). Format::

    schema_version: 1
    gpus:
      h100-sxm:                          # GPU profile name
        device_name: NVIDIA H100 80GB HBM3
        measured_at: 2026-11-26          # ISO date
        command: capcalc measure llama-3-8b --batch 1,16,64 --save
        torch_version: 2.5.1
        measured:
          bandwidth_bytes_per_s: 2.9e12
          peak_flops_per_s: {bf16: 7.6e14}
        efficiency:                      # any of the parameters in capcalc.perf.efficiency
          weight_bandwidth_efficiency: 0.86
          layer_overhead_s: 8.0e-6
        engines:                         # ``capcalc calibrate --save``: the serving model
          vllm:                          # engine (capcalc.serving.engines.ENGINES)
            calibrated_at: 2026-12-02
            command: capcalc calibrate run1.json run2.json --gpu h100-sxm --engine vllm --save
            points: 12                   # measured runs fitted
            models: [llama-3.1-8b]
            parameters:                  # fitted values (capcalc.serving.calibrate.FIT_PARAMETERS)
              bandwidth_scale: 0.93
              frontend_s: 0.012
            mean_abs_error_before: {ttft_pct: 41.0, tpot_pct: 12.0}
            mean_abs_error_after: {ttft_pct: 8.0, tpot_pct: 3.0}

``latency --concurrency`` / ``--rps`` (:func:`resolve_serving`) read the engine entry of
the GPU and engine asked for; the ``efficiency:`` block measured by ``capcalc measure``
(capcalc's own torch loop, not the engine) is not used there.

Saving merges the entry into the target file alone (other GPUs are kept; no other
directory's file is read) and writes it atomically. Reading is strict: a malformed file
is one error line naming it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from capcalc.core.errors import CapcalcError
from capcalc.core.fileio import write_atomic
from capcalc.core.inputs import check_number, excerpt, load_yaml
from capcalc.perf.efficiency import check_mapping
from capcalc.sources.dirs import profile_dirs, user_profile_dir

if TYPE_CHECKING:
    from capcalc.perf.efficiency import Efficiency
    from capcalc.schema.profiles import HardwareProfile
    from capcalc.serving.engines import EngineConfig

CALIBRATION_FILE = "calibration.yaml"
SCHEMA_VERSION = 1
_ENTRY_KEYS = (
    "device_name",
    "measured_at",
    "command",
    "torch_version",
    "measured",
    "efficiency",
    "notes",
    "device_mismatch",
    "engines",
)
_ENGINE_KEYS = (
    "calibrated_at",
    "command",
    "points",
    "models",
    "sources",
    "parameters",
    "mean_abs_error_before",
    "mean_abs_error_after",
)


def _check_entry(entry: Any, where: str) -> None:
    """Validate one GPU's entry; ``where`` names it (``FILE: gpus.NAME``)."""
    if not isinstance(entry, dict):
        raise CapcalcError(f"{where}: expected a mapping")
    unknown = [k for k in entry if k not in _ENTRY_KEYS]
    if unknown:
        raise CapcalcError(f"{where}: unknown key {excerpt(unknown[0])} (known: {', '.join(_ENTRY_KEYS)})")
    check_mapping(entry.get("efficiency"), f"{where}.efficiency")
    measured = entry.get("measured")
    if measured is not None:
        if not isinstance(measured, dict):
            raise CapcalcError(f"{where}.measured: expected a mapping, got {excerpt(measured)}")
        for key, value in measured.items():
            values = value.items() if isinstance(value, dict) else [(None, value)]
            for sub, number in values:
                field = f"{where}.measured.{key}" + (f".{sub}" if sub is not None else "")
                check_number(number, field, positive=True)
    if not isinstance(entry.get("device_mismatch", False), bool):
        raise CapcalcError(f"{where}.device_mismatch: expected true or false")
    engines = entry.get("engines")
    if engines is not None:
        if not isinstance(engines, dict):
            raise CapcalcError(f"{where}.engines: expected a mapping of engine name -> entry")
        for engine, sub in engines.items():
            _check_engine_entry(engine, sub, f"{where}.engines.{excerpt(engine, 24).strip(chr(39))}")


def _check_engine_entry(engine: Any, entry: Any, where: str) -> None:
    """Validate one engine's fitted serving parameters (``gpus.GPU.engines.ENGINE``)."""
    from capcalc.serving.calibrate import BOUNDS
    from capcalc.serving.engines import ENGINES

    if engine not in ENGINES:
        raise CapcalcError(f"{where}: unknown engine (known: {', '.join(ENGINES)})")
    if not isinstance(entry, dict):
        raise CapcalcError(f"{where}: expected a mapping")
    unknown = [k for k in entry if k not in _ENGINE_KEYS]
    if unknown:
        raise CapcalcError(f"{where}: unknown key {excerpt(unknown[0])} (known: {', '.join(_ENGINE_KEYS)})")
    parameters = entry.get("parameters")
    if not isinstance(parameters, dict):
        raise CapcalcError(f"{where}.parameters: expected a mapping of fitted parameter -> value")
    for name, value in parameters.items():
        if name not in BOUNDS:
            raise CapcalcError(
                f"{where}.parameters: unknown parameter {excerpt(name)} (known: {', '.join(BOUNDS)})"
            )
        check_number(value, f"{where}.parameters.{name}", positive=True)
    points = entry.get("points")
    if points is not None and (isinstance(points, bool) or not isinstance(points, int) or points < 1):
        raise CapcalcError(f"{where}.points: expected a whole number of at least 1, got {excerpt(points)}")


def _read(path: Path) -> dict[str, Any]:
    data = load_yaml(path, "calibration")  # regular file, bounded, no alias bomb, no duplicate key
    if data is None:
        return {"schema_version": SCHEMA_VERSION, "gpus": {}}
    if not isinstance(data, dict) or not isinstance(data.get("gpus", {}), dict):
        raise CapcalcError(f"{path}: expected a mapping with 'schema_version' and 'gpus' (GPU name -> entry)")
    version = data.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise CapcalcError(
            f"{path}: schema_version {excerpt(version)} is not supported (expected {SCHEMA_VERSION})"
        )
    for name, entry in (data.get("gpus") or {}).items():
        if not isinstance(name, str) or not name.strip():
            raise CapcalcError(f"{path}: gpus: expected GPU profile names, got {excerpt(name)}")
        _check_entry(entry, f"{path}: gpus.{excerpt(name, 48).strip(chr(39))}")
    return {"schema_version": SCHEMA_VERSION, "gpus": dict(data.get("gpus") or {})}


def load_calibration(user_dirs: Iterable[str | Path] = ()) -> dict[str, Any]:
    """Merge the ``calibration.yaml`` of every profile directory (see
    :func:`capcalc.sources.dirs.profile_dirs`; ``user_dirs`` are the ``--profiles``
    directories) into one ``{schema_version, gpus: {name: entry}}`` mapping; each entry
    records its file as ``path``."""
    merged: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "gpus": {}}
    for directory in profile_dirs(user_dirs):
        path = directory / CALIBRATION_FILE
        if path.exists() or path.is_symlink():  # a FIFO or dangling link there is refused, not skipped
            for name, entry in _read(path)["gpus"].items():
                merged["gpus"][name] = {**entry, "path": str(path)}
    return merged


def save_calibration(gpu_name: str, entry: dict[str, Any], directory: str | Path | None = None) -> Path:
    """Write ``entry`` for ``gpu_name`` into ``directory/calibration.yaml`` (default: the
    user profile directory), replacing that GPU's previous entry; written atomically."""
    _check_entry(entry, f"calibration entry gpus.{gpu_name}")  # before the file is read
    return update_calibration(gpu_name, lambda _previous: entry, directory)


def update_calibration(
    gpu_name: str,
    update: Callable[[dict[str, Any] | None], dict[str, Any]],
    directory: str | Path | None = None,
) -> Path:
    """Replace ``gpu_name``'s entry in ``directory/calibration.yaml`` (default: the user
    profile directory) by ``update(its entry there, None when it has none)``. That file
    alone is read, once; the other GPUs' entries are kept; written atomically."""
    path = Path(directory).expanduser() if directory is not None else user_profile_dir()
    path = path / CALIBRATION_FILE
    exists = path.exists() or path.is_symlink()
    data = _read(path) if exists else {"schema_version": SCHEMA_VERSION, "gpus": {}}
    entry = update(data["gpus"].get(gpu_name))
    _check_entry(entry, f"{path}: gpus.{gpu_name}")
    data["gpus"][gpu_name] = _plain(entry)
    import yaml

    text = yaml.safe_dump(data, sort_keys=False, default_flow_style=False)
    return write_atomic(path, text)


def _plain(value: Any) -> Any:
    """YAML-safe copy: tuples to lists, dates and paths to strings."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


# --------------------------------------------------------------------------- serving engines


def engine_calibration(calibration: dict[str, Any] | None, gpu_name: str, engine: str) -> dict | None:
    """The ``gpus.GPU.engines.ENGINE`` entry of the loaded calibration (None when absent);
    an entry read by :func:`load_calibration` carries its file as ``path``."""
    entry = ((calibration or {}).get("gpus") or {}).get(gpu_name)
    if not isinstance(entry, dict):
        return None
    found = (entry.get("engines") or {}).get(engine)
    if not isinstance(found, dict):
        return None
    return {**found, "path": entry.get("path")} if entry.get("path") else found


def save_engine_calibration(
    gpu_name: str, engine: str, entry: dict[str, Any], directory: str | Path | None = None
) -> Path:
    """Write ``entry`` (fitted serving parameters) as ``gpus.GPU.engines.ENGINE`` of
    ``directory/calibration.yaml`` (default: the user profile directory), keeping the GPU's
    other keys and engines and the other GPUs; checked first, written atomically."""
    _check_engine_entry(engine, _plain(entry), f"calibration entry gpus.{gpu_name}.engines.{engine}")

    def merge(previous: dict[str, Any] | None) -> dict[str, Any]:
        merged = dict(previous or {})
        merged["engines"] = {**(merged.get("engines") or {}), engine: _plain(entry)}
        return merged

    return update_calibration(gpu_name, merge, directory)


@dataclass(frozen=True)
class ResolvedServing:
    """The step efficiencies and engine configuration a serving prediction uses, and where
    they came from: ``source`` is the record's ``efficiency_source`` (``engine:vllm``,
    ``calibration:PATH (vllm, 12 points)``, prefixed ``flag + `` when a flag overrode any)."""

    efficiency: Efficiency
    config: EngineConfig
    source: str
    calibration_path: str | None = None
    calibration_points: int | None = None


def resolve_serving(
    gpu: HardwareProfile,
    engine: str,
    weight_dtype: str,
    overrides: dict[str, Any] | None = None,
    calibration: dict[str, Any] | None = None,
    **config: Any,
) -> ResolvedServing:
    """What ``engine`` serving on ``gpu`` assumes, first found wins per parameter:

        flag (``overrides``: efficiency parameters; ``config``: max_num_batched_tokens,
        max_num_seqs, frontend_s, seq_step_overhead_s)
          >  ``capcalc calibrate --save`` entry for this GPU and engine (fitted values
             applied as :func:`capcalc.serving.calibrate.apply` does)
          >  engine defaults (:func:`capcalc.serving.engines.engine_efficiency` on the GPU
             profile's efficiencies, :func:`~capcalc.serving.engines.engine_defaults`)

    which are the defaults :func:`capcalc.serving.calibrate.fit_serving` fits from, so a
    saved fit reproduces its own predictions. ``weight_dtype`` is the resolved one."""
    from capcalc.perf.efficiency import check_value, resolve_efficiency
    from capcalc.serving.calibrate import ServingParams, apply
    from capcalc.serving.engines import engine_defaults, engine_efficiency, with_overrides

    base = resolve_efficiency(gpu).efficiency  # profile > vendor default, as fit_serving's
    params = ServingParams(engine_efficiency(engine, base, weight_dtype), engine_defaults(engine, gpu))
    source, path, points = f"engine:{params.config.engine}", None, None
    entry = engine_calibration(calibration, gpu.name, params.config.engine)
    if entry is not None:
        params = apply(params, entry.get("parameters") or {})
        path, points = entry.get("path") or CALIBRATION_FILE, entry.get("points")
        counted = f", {points} point{'s' if points != 1 else ''}" if points else ""
        source = f"calibration:{path} ({params.config.engine}{counted})"
    flags = {k: check_value(k, v) for k, v in (overrides or {}).items() if v is not None}
    changes = {k: v for k, v in config.items() if v is not None}
    if flags or changes:
        source = f"flag + {source}"
    eff = replace(params.efficiency, **flags) if flags else params.efficiency
    return ResolvedServing(eff, with_overrides(params.config, **changes), source, path, points)

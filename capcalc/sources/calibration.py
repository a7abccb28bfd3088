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

Saving merges the entry into the target file alone (other GPUs are kept; no other
directory's file is read) and writes it atomically. Reading is strict: a malformed file
is one error line naming it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from capcalc.core.errors import CapcalcError
from capcalc.core.fileio import write_atomic
from capcalc.core.inputs import check_number, excerpt, load_yaml
from capcalc.perf.efficiency import check_mapping
from capcalc.sources.dirs import profile_dirs, user_profile_dir

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

"""The calibration file: efficiency parameters measured on the user's own GPU.

``capcalc measure --save`` writes ``calibration.yaml`` into the user profile directory
(:func:`capcalc.profiles.user_profile_dir`); ``latency`` reads it from there and from
any ``--profiles`` directory (a later directory's entry for a GPU wins). Format::

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
        efficiency:                      # any of the parameters in capcalc.efficiency
          weight_bandwidth_efficiency: 0.86
          layer_overhead_s: 8.0e-6

Saving merges the entry into the existing file (other GPUs are kept) and writes the
file atomically. Reading is strict: a malformed file is one error line naming it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from .efficiency import check_mapping
from .errors import CapcalcError
from .fileio import write_atomic
from .profiles import ENV_PROFILES, user_profile_dir

CALIBRATION_FILE = "calibration.yaml"
SCHEMA_VERSION = 1
_ENTRY_KEYS = ("device_name", "measured_at", "command", "torch_version", "measured", "efficiency", "notes")


def _read(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CapcalcError(f"{path}: cannot read calibration file: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise CapcalcError(f"{path}: invalid YAML in calibration file: {str(exc).splitlines()[0]}") from None
    if data is None:
        return {"schema_version": SCHEMA_VERSION, "gpus": {}}
    if not isinstance(data, dict) or not isinstance(data.get("gpus", {}), dict):
        raise CapcalcError(f"{path}: expected a mapping with 'schema_version' and 'gpus' (GPU name -> entry)")
    version = data.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise CapcalcError(f"{path}: schema_version {version!r} is not supported (expected {SCHEMA_VERSION})")
    for name, entry in (data.get("gpus") or {}).items():
        if not isinstance(entry, dict):
            raise CapcalcError(f"{path}: gpus.{name}: expected a mapping")
        unknown = [k for k in entry if k not in _ENTRY_KEYS]
        if unknown:
            raise CapcalcError(
                f"{path}: gpus.{name}.{unknown[0]}: unknown key (known: {', '.join(_ENTRY_KEYS)})"
            )
        check_mapping(entry.get("efficiency"), f"{path}: gpus.{name}.efficiency")
    return {"schema_version": SCHEMA_VERSION, "gpus": dict(data.get("gpus") or {})}


def calibration_dirs(profile_dirs: Iterable[str | Path] = ()) -> list[Path]:
    """Where calibration files are looked for: the user profile directory, every
    ``$CAPCALC_PROFILES`` directory, then each ``--profiles`` directory (later wins)."""
    dirs = [user_profile_dir()]
    env = [p for p in os.environ.get(ENV_PROFILES, "").split(os.pathsep) if p]
    for d in [*env, *profile_dirs]:
        path = Path(d).expanduser()
        if path not in dirs:
            dirs.append(path)
    return dirs


def load_calibration(profile_dirs: Iterable[str | Path] = ()) -> dict[str, Any]:
    """Merge every ``calibration.yaml`` found (see :func:`calibration_dirs`) into one
    ``{schema_version, gpus: {name: entry}}`` mapping; each entry records its ``path``."""
    merged: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "gpus": {}}
    for directory in calibration_dirs(profile_dirs):
        path = directory / CALIBRATION_FILE
        if path.is_file():
            for name, entry in _read(path)["gpus"].items():
                merged["gpus"][name] = {**entry, "path": str(path)}
    return merged


def save_calibration(gpu_name: str, entry: dict[str, Any], directory: str | Path | None = None) -> Path:
    """Merge ``entry`` for ``gpu_name`` into ``directory/calibration.yaml`` (default: the
    user profile directory), replacing that GPU's previous entry; written atomically."""
    if not isinstance(entry, dict):
        raise CapcalcError(f"calibration entry for {gpu_name} must be a mapping")
    unknown = [k for k in entry if k not in _ENTRY_KEYS]
    if unknown:
        raise CapcalcError(f"calibration entry for {gpu_name}: unknown key {unknown[0]!r}")
    check_mapping(entry.get("efficiency"), f"calibration entry for {gpu_name}")
    path = Path(directory).expanduser() if directory is not None else user_profile_dir()
    path = path / CALIBRATION_FILE
    data = _read(path) if path.is_file() else {"schema_version": SCHEMA_VERSION, "gpus": {}}
    data["gpus"][gpu_name] = _plain(entry)
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

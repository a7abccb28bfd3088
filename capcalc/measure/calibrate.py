"""Measured against predicted: the device's profile, the latency model's predictions for
each measured point, and the fit of its efficiency parameters (no torch here).

The profile of the device is the hardware profile whose name or alias is the name the
driver reports ("NVIDIA H100 80GB HBM3"); a device with none (and every CPU) gets a
profile drafted from what it measured: copy bandwidth as ``bandwidth``, the measured
matmul rates as ``peak_flops``, the device's memory as ``memory``. Predictions are those
of :mod:`capcalc.perf.latency` (the same functions ``capcalc latency`` uses), so the fitted
parameters calibrate exactly the model later predictions run.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from capcalc.core.errors import CapcalcError
from capcalc.core.inputs import excerpt
from capcalc.measure.device import slug
from capcalc.measure.fit import least_squares, median_abs_pct
from capcalc.perf.efficiency import Efficiency, resolve_efficiency
from capcalc.perf.latency import StepPrediction, predict_decode_step, predict_prefill
from capcalc.schema.profiles import HardwareProfile, ModelProfile
from capcalc.sources.calibration import update_calibration
from capcalc.sources.dirs import shipped_dir
from capcalc.sources.loader import hardware_from_dict
from capcalc.sources.registry import Registry

#: the parameters `measure` fits on one GPU (the all-reduce terms need several: TP_FITTED)
FITTED = (
    "weight_bandwidth_efficiency",
    "kv_bandwidth_efficiency",
    "prefill_flops_efficiency",
    "prefill_tokens_half_efficiency",
    "layer_overhead_s",
    "step_overhead_s",
    "moe_layer_overhead_s",
    "moe_token_overhead_s",
)
#: the tensor-parallel terms, fitted from points measured at tp > 1 (``measure MODEL --tp N``):
#: the fixed cost per all-reduce call, and its growth per extra GPU where points of two or
#: more tp degrees are in one fit
TP_FITTED = ("allreduce_latency_s", "allreduce_latency_per_rank_s")
#: Search bounds of the fit, not claims about hardware. The fit works on log(value), so
#: every lower bound is a positive floor that stands for "none"; every upper bound only
#: keeps the search finite and sits far outside anything a measured step can mean.
_BOUNDS = {
    # fractions of the datasheet (check_value's (0, 1]); 0.1% is below any device, CPUs included
    "weight_bandwidth_efficiency": (1e-3, 1.0),
    "kv_bandwidth_efficiency": (1e-3, 1.0),
    "prefill_flops_efficiency": (1e-3, 1.0),
    # tokens; 1e-3 is "at the asymptote from the first token"; 1e7 is 100x the largest
    # step `measure` times by default (batch 64 x 2048-token prompts is 1.3e5 tokens):
    # beyond it eff(n) is n / n_half at every measured n and the points cannot move it
    "prefill_tokens_half_efficiency": (1e-3, 1e7),
    # seconds per layer / per MoE layer; 1 ns is 1e-4 of the smallest fitted or default
    # cost (10 us), so "none"; 1 s is ~1e4x the largest seen (115 us, docs/measure.md)
    "layer_overhead_s": (1e-9, 1.0),
    "moe_layer_overhead_s": (1e-9, 1.0),
    # seconds per token per MoE layer; 1e-12 x 1e5 tokens x 100 layers is 10 us, i.e.
    # "none"; 1 ms is ~4000x the 238 ns fitted on an H100 (docs/validation.md)
    "moe_token_overhead_s": (1e-12, 1e-3),
    # seconds per step; 1 ns is "none"; 10 s is ~10x a whole decode step of an 8B model in
    # fp32 on a CPU (32 GB at tens of GB/s), the slowest step a measure run would time
    "step_overhead_s": (1e-9, 10.0),
    # seconds per all-reduce call; 1 ns is "none"; 1 s is ~1e5x the 3-17 us of NVLink
    # all-reduces gpt-fast implies and ~1e3x a small gloo all-reduce over TCP on one host
    "allreduce_latency_s": (1e-9, 1.0),
    "allreduce_latency_per_rank_s": (1e-12, 1.0),
}


def find_profile(registry: Registry, device_name: str) -> HardwareProfile | None:
    """The hardware profile whose name or alias matches the driver's device name."""
    for label in (device_name, slug(device_name)):
        try:
            return registry.gpu(label)
        except CapcalcError:
            continue
    return None


def check_save_target(
    registry: Registry, profile: HardwareProfile, origin: str, device_name: str, is_cuda: bool, allow: bool
) -> bool:
    """Whether saving ``profile``'s calibration from this device is a mismatch (then only
    with ``allow``, and the entry is marked): the measured device must be the profile's,
    by name or alias (the driver's name among them), and a CPU is never a GPU's.
    Refused otherwise, before anything is measured."""
    if origin == "drafted":  # drafted from this very device
        return False
    matched = find_profile(registry, device_name)
    cpu_as_gpu = not is_cuda and not profile.name.startswith("cpu-")
    mismatch = cpu_as_gpu or matched is None or matched.name != profile.name
    if mismatch and not allow:
        what = "a CPU" if cpu_as_gpu else "a device"
        names = ", ".join((profile.name, *profile.aliases))
        found = _literal(f"{excerpt(device_name)} is {what}, not {profile.name} (its names: {names})")
        raise CapcalcError(
            template=f"{{save}}: the measured device {found}; a calibration is saved only for the device "
            "measured: drop {hardware}, or pass {allow_device_mismatch} to save it marked as such",
            parameter=("save", "hardware", "allow_device_mismatch"),
        )
    return mismatch


def _literal(text: str) -> str:
    """``text`` as it reads inside a :class:`CapcalcError` template (braces doubled)."""
    return text.replace("{", "{{").replace("}", "}}")


def profile_origin(profile: HardwareProfile) -> str:
    """Where a found profile came from: ``shipped`` or ``user``."""
    try:
        shipped = shipped_dir("hardware_profiles").resolve()
        return "shipped" if Path(profile.path).resolve().parent == shipped else "user"
    except CapcalcError:
        return "user"


def draft_profile_dict(
    device_name: str,
    is_cuda: bool,
    memory_bytes: float,
    bandwidth_bytes_per_s: float,
    peak_flops_per_s: dict[str, float],
    l2_cache_bytes: float | None,
    torch_version: str,
) -> dict[str, Any]:
    """A hardware-profile mapping (the YAML format) built from measured figures."""
    name = slug(device_name) if is_cuda else "cpu-" + slug(device_name)
    when = _dt.date.today().isoformat()
    how = f"measured by `capcalc measure --gpu` on {when} (torch {torch_version})"
    data: dict[str, Any] = {
        "name": name[:60].strip("-"),
        "display_name": device_name,
        "aliases": [device_name],
        "vendor": ("nvidia" if "nvidia" in device_name.lower() else "") if is_cuda else "cpu",
        "memory": float(memory_bytes),
        "bandwidth": float(bandwidth_bytes_per_s),
        "peak_flops": {k: float(v) for k, v in peak_flops_per_s.items()},
        "sources": {
            "memory": f"total memory reported by torch; {how}",
            "bandwidth": f"device-to-device copy, bytes read + written; {how}",
            "peak_flops": f"best dense square matmul, not a datasheet peak; {how}",
        },
        "notes": "Drafted from measurements: the figures are achieved, not datasheet, rates.",
    }
    if "bf16" not in data["peak_flops"] and "fp16" not in data["peak_flops"]:
        # a profile needs a 16-bit rate; the fp32 rate is a conservative stand-in
        data["peak_flops"]["bf16"] = data["peak_flops"].get("fp32", 1.0)
    if l2_cache_bytes:
        data["l2_cache"] = float(l2_cache_bytes)
        data["sources"]["l2_cache"] = "L2 cache size reported by torch.cuda.get_device_properties"
    return data


def draft_profile(data: dict[str, Any]) -> HardwareProfile:
    return hardware_from_dict(data, f"<drafted from measurements: {data['display_name']}>")


def shipped_efficiency(gpu: HardwareProfile) -> Efficiency:
    """The efficiencies a prediction uses before calibration: the GPU profile's block,
    else the built-in vendor default (no calibration file, no flags)."""
    return resolve_efficiency(gpu).efficiency


@dataclass(frozen=True)
class Point:
    """One measured point as the fit sees it."""

    model: ModelProfile
    phase: str  # decode | prefill
    batch: int
    tokens: int  # decode: tokens attended (median over the timed steps); prefill: prompt length
    measured_s: float
    tp: int = 1  # tensor-parallel degree the point ran at
    #: False: the same sharded step timed with its all-reduces and logit gather switched off,
    #: predicted as the tp step without its communication term
    collectives: bool = True


def predict(gpu: HardwareProfile, point: Point, dtype: str, eff: Efficiency) -> StepPrediction:
    """The latency model's time for ``point`` (weights, activations and KV all in ``dtype``),
    at the point's tp; a point without collectives is predicted without ``comm_s``."""
    kw = dict(weight_dtype=dtype, kv_dtype=dtype, efficiency=eff, tp=point.tp)
    if point.phase == "decode":
        pred = predict_decode_step(point.model, gpu, point.batch, point.tokens, **kw)
    else:
        pred = predict_prefill(point.model, gpu, point.batch, point.tokens, **kw)
    if point.collectives:
        return pred
    return replace(pred, time_s=pred.time_s - pred.comm_s, comm_s=0.0)


def error_pct(predicted: float, measured: float) -> float:
    """(predicted - measured) / measured in percent: positive when the prediction is slow."""
    return 100.0 * (predicted - measured) / measured


@dataclass(frozen=True)
class Calibration:
    before: Efficiency
    after: Efficiency
    errors_before_pct: list[float]
    errors_after_pct: list[float]

    def median(self, points: list[Point], phase: str, after: bool, model: str | None = None) -> float | None:
        """Median |error| in percent over the points of ``phase`` (and ``model``, if given)."""
        errors = self.errors_after_pct if after else self.errors_before_pct
        return median_abs_pct(
            [
                e
                for e, p in zip(errors, points, strict=True)
                if p.phase == phase and (model is None or p.model.name == model)
            ]
        )


def calibrate(gpu: HardwareProfile, points: list[Point], dtype: str, start: Efficiency) -> Calibration:
    """Least-squares fit of :data:`FITTED` to ``points`` (relative errors), from ``start``.

    Points of several models fit one set of parameters for the GPU; with a single model
    the split between weight-streaming efficiency and the fixed per-layer and per-step
    costs is not determined (all three are a constant per step), only their sum is.
    A parameter no point constrains keeps its value in ``start``: the half-efficiency
    token count without prefill points, the two MoE costs without an MoE model.
    The MoE overhead is told apart from the per-layer and per-step costs by dense models'
    points (which have none of it): dense models of two depths pin those two, an MoE
    model then its routing cost; with one dense depth only their sums are pinned.
    The all-reduce latency (:data:`TP_FITTED`) is fitted where some point ran at tp > 1: it
    is told apart from the per-layer and per-step costs by the same steps timed without
    their collectives (``collectives=False``); its growth per GPU needs two tp degrees."""
    if not points:
        raise CapcalcError("no measured points to calibrate on", exit_code=1)
    constrained = {
        "prefill_tokens_half_efficiency": any(p.phase == "prefill" for p in points),
        "moe_layer_overhead_s": any(p.model.num_moe_layers for p in points),
        "moe_token_overhead_s": any(p.model.num_moe_layers for p in points),
        "allreduce_latency_s": any(p.tp > 1 and p.collectives for p in points),
        "allreduce_latency_per_rank_s": len({p.tp for p in points if p.tp > 1 and p.collectives}) > 1,
    }
    names = [n for n in (*FITTED, *TP_FITTED) if constrained.get(n, True)]

    def efficiency(values) -> Efficiency:
        return replace(start, **dict(zip(names, values, strict=True)))

    def residuals(values):
        eff = efficiency(values)
        return [(predict(gpu, p, dtype, eff).time_s - p.measured_s) / p.measured_s for p in points]

    fit = least_squares(
        residuals,
        [getattr(start, n) for n in names],
        [_BOUNDS[n][0] for n in names],
        [_BOUNDS[n][1] for n in names],
    )
    after = efficiency(fit.values)
    if fit.cost_after > fit.cost_before:  # never worse than where it started
        after = start
    before_err = [error_pct(predict(gpu, p, dtype, start).time_s, p.measured_s) for p in points]
    after_err = [error_pct(predict(gpu, p, dtype, after).time_s, p.measured_s) for p in points]
    return Calibration(start, after, before_err, after_err)


def save_entry(
    gpu_name: str,
    device_name: str,
    command: str,
    torch_version: str,
    measured: dict[str, Any] | None = None,
    efficiency: Efficiency | None = None,
    directory: str | Path | None = None,
    names: tuple[str, ...] = FITTED,
    device_mismatch: bool = False,
) -> Path:
    """Merge measured device figures and/or fitted efficiencies into ``gpu_name``'s
    entry in ``directory``'s calibration file (default: the user profile directory);
    what that entry held and is not replaced is kept. Only that file is read: an entry
    for the GPU in another profile directory is not copied into it."""

    def merge(existing: dict[str, Any] | None) -> dict[str, Any]:
        existing = existing or {}
        entry: dict[str, Any] = {
            **existing,
            "device_name": device_name,
            "measured_at": _dt.date.today().isoformat(),
            "command": command,
            "torch_version": torch_version,
        }
        entry.pop("device_mismatch", None)
        if device_mismatch:  # saved under --allow-device-mismatch: the record says so
            entry["device_mismatch"] = True
        if measured is not None:
            entry["measured"] = {**(existing.get("measured") or {}), **measured}
        if efficiency is not None:
            entry["efficiency"] = {
                **(existing.get("efficiency") or {}),
                **{n: getattr(efficiency, n) for n in names},
            }
        return entry

    return update_calibration(gpu_name, merge, directory)

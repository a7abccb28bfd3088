"""Datasheet roofline of one decode step and one prefill: where the bottleneck is.

For a step with F FLOPs and M bytes moved (per GPU, :mod:`capcalc.model.flops`):

    intensity = F / M                       (FLOP/byte)
    ridge     = peak(compute dtype) / bandwidth
    compute_s = F / peak,  memory_s = M / bandwidth,  lower bound = max of the two
    bound     = compute if intensity > ridge (compute_s > memory_s) else memory
    utilisation at that bound = F / (lower bound x peak)

(attention FLOPs are timed at the activation dtype's peak; with 16-bit weights that is
the same peak). These are :func:`capcalc.perf.latency.predict_step` with
:meth:`Efficiency.ideal`: every fraction 1, no fixed costs -- a bound no engine beats.

Landmarks (seed chapter §0.10):

* decode speed limit: batch-1 tokens/s at ``ctx`` = 1 / lower bound;
* single-stream compute utilisation: batch-1 FLOP/s over peak (about 0.6% on an A100);
* critical batch: the smallest batch whose decode step at ``ctx`` is compute-bound.
  Weights are read once per step whatever the batch, but every sequence adds its own
  KV reads, so intensity tends to (FLOPs per token) / (KV bytes per token) as the batch
  grows. Past the context where that limit falls below the ridge, no batch turns
  decode compute-bound; ``critical_batch_ctx_limit_tokens`` is that context.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from capcalc.core.records import SCHEMA_VERSION
from capcalc.model.flops import COMPONENTS
from capcalc.model.kv import kv_bytes_per_sequence
from capcalc.perf.efficiency import Efficiency
from capcalc.perf.latency import StepPrediction, predict_decode_step, predict_prefill
from capcalc.schema.deployment import Deployment
from capcalc.schema.profiles import HardwareProfile, ModelProfile

#: searched up to this batch (and context) for the critical batch
SEARCH_LIMIT = 2**30


@dataclass(frozen=True)
class RooflineResult:
    model: str
    gpu: str
    batch: int
    ctx: int
    prompt_tokens: int
    tp: int
    weight_dtype: str
    kv_dtype: str
    compute_dtype: str
    peak_flops_per_s: float
    bandwidth_bytes_per_s: float
    ridge_point_flop_per_byte: float
    decode: StepPrediction
    prefill: StepPrediction
    decode_speed_limit_tokens_per_s: float
    single_stream_compute_utilization_pct: float
    critical_batch: int | None
    critical_batch_ctx_limit_tokens: int | None  # None: decode can turn compute-bound at any context
    critical_batch_kv_bytes_per_gpu: float | None
    memory_bytes: float
    ridge_points: dict[str, float] = field(default_factory=dict)
    deployment: Deployment = field(default_factory=Deployment)  # as asked (dtypes unresolved)

    def record(self) -> dict[str, Any]:
        """The flat output record: ``schema_version``, the inputs, then the two phases,
        itemised, then landmarks."""
        rec: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "model": self.model,
            "gpu": self.gpu,
            "batch": self.batch,
            "ctx": self.ctx,
            "prompt_tokens": self.prompt_tokens,
            "tp": self.tp,
            "weight_dtype": self.weight_dtype,
            "kv_dtype": self.kv_dtype,
            "compute_dtype": self.compute_dtype,
            "peak_flops_per_s": self.peak_flops_per_s,
            "bandwidth_bytes_per_s": self.bandwidth_bytes_per_s,
            "ridge_point_flop_per_byte": self.ridge_point_flop_per_byte,
        }
        for phase, step in (("decode", self.decode), ("prefill", self.prefill)):
            rec.update(phase_record(phase, step))
        rec.update(
            decode_speed_limit_tokens_per_s=self.decode_speed_limit_tokens_per_s,
            single_stream_compute_utilization_pct=self.single_stream_compute_utilization_pct,
            critical_batch=self.critical_batch,
            critical_batch_ctx_limit_tokens=self.critical_batch_ctx_limit_tokens,
            critical_batch_kv_bytes_per_gpu=self.critical_batch_kv_bytes_per_gpu,
            gpu_memory_bytes=self.memory_bytes,
        )
        for phase, step in (("decode", self.decode), ("prefill", self.prefill)):
            for c in step.cost.components:
                rec[f"{phase}_{c.name}_flops"] = c.flops
                rec[f"{phase}_{c.name}_bytes"] = c.bytes
        return rec


def phase_record(phase: str, step: StepPrediction) -> dict[str, Any]:
    cost = step.cost
    rec = {
        f"{phase}_flops": step.flops,
        f"{phase}_bytes": step.bytes,
        f"{phase}_weight_bytes": cost.weight_bytes,
        f"{phase}_kv_bytes": cost.kv_bytes,
        f"{phase}_intensity_flop_per_byte": step.intensity,
        f"{phase}_compute_s": step.compute_s,
        f"{phase}_memory_s": step.memory_s,
        f"{phase}_comm_s": step.comm_s,
        f"{phase}_time_lower_bound_s": step.time_s,
        f"{phase}_bound": step.bound,
        f"{phase}_compute_utilization_pct": 100.0 * step.utilization,
        f"{phase}_tokens_per_s": cost.tokens / step.time_s,
    }
    if cost.experts_touched_per_layer is not None:
        rec[f"{phase}_experts_touched_per_layer"] = cost.experts_touched_per_layer
    return rec


def critical_batch(
    model: ModelProfile, gpu: HardwareProfile, ctx: int, limit: int = SEARCH_LIMIT, **kw
) -> int | None:
    """Smallest batch whose decode step at ``ctx`` is compute-bound on the datasheet
    roofline, or None when none up to ``limit`` is (compute/memory grows with batch)."""

    def compute_bound(b: int) -> bool:
        return predict_decode_step(model, gpu, b, ctx, **kw).bound == "compute"

    if not compute_bound(limit):
        return None
    lo, hi = 0, 1  # compute_bound(lo) is False (lo=0: no batch), compute_bound(hi) to be found
    while not compute_bound(hi):
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if compute_bound(mid) else (mid, hi)
    return hi


def critical_ctx_limit(model: ModelProfile, gpu: HardwareProfile, **kw) -> int | None:
    """Largest context at which some batch makes decode compute-bound (0: none does even
    at context 1; None: any context does, e.g. every layer slides over a small window)."""

    def reachable(c: int) -> bool:
        return predict_decode_step(model, gpu, SEARCH_LIMIT, c, **kw).bound == "compute"

    if not reachable(1):
        return 0
    if reachable(SEARCH_LIMIT):
        return None
    lo, hi = 1, 2
    while reachable(hi):
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if reachable(mid) else (lo, mid)
    return lo


def roofline(
    model: ModelProfile,
    gpu: HardwareProfile,
    batch: int = 1,
    ctx: int = 1024,
    prompt_tokens: int = 1024,
    deployment: Deployment | None = None,
    **fields,
) -> RooflineResult:
    """The datasheet roofline of a decode step (``batch`` sequences at ``ctx``) and of the
    prefill of ``batch`` prompts of ``prompt_tokens`` tokens, with the seed's landmarks,
    under ``deployment`` (``fields``: changes to it, :meth:`Deployment.of`)."""
    d = Deployment.of(deployment, **fields)
    tp = d.tp
    kw = dict(deployment=d)
    ideal = Efficiency.ideal()
    decode = predict_decode_step(model, gpu, batch, ctx, efficiency=ideal, **kw)
    prefill = predict_prefill(model, gpu, batch, prompt_tokens, efficiency=ideal, **kw)
    single = decode if batch == 1 else predict_decode_step(model, gpu, 1, ctx, efficiency=ideal, **kw)
    dtype = decode.compute_dtype
    crit = critical_batch(model, gpu, ctx, **kw)
    crit_kv = None if crit is None else crit * kv_bytes_per_sequence(model, ctx, decode.cost.kv_dtype, tp)
    return RooflineResult(
        model=model.name,
        gpu=gpu.name,
        batch=batch,
        ctx=ctx,
        prompt_tokens=prompt_tokens,
        tp=tp,
        weight_dtype=decode.cost.weight_dtype,
        kv_dtype=decode.cost.kv_dtype,
        compute_dtype=dtype,
        peak_flops_per_s=gpu.peak(dtype),
        bandwidth_bytes_per_s=gpu.bandwidth_bytes_per_s,
        ridge_point_flop_per_byte=gpu.ridge_point(dtype),
        decode=decode,
        prefill=prefill,
        decode_speed_limit_tokens_per_s=1.0 / single.time_s,
        single_stream_compute_utilization_pct=100.0 * single.utilization,
        critical_batch=crit,
        critical_batch_ctx_limit_tokens=critical_ctx_limit(model, gpu, **kw),
        critical_batch_kv_bytes_per_gpu=crit_kv,
        memory_bytes=gpu.memory_bytes,
        ridge_points={t: gpu.ridge_point(t) for t in gpu.peak_flops_per_s if t != "fp64"},
        deployment=d,
    )


@dataclass(frozen=True)
class RooflinePoint:
    label: str
    intensity: float  # FLOP/byte
    flops_per_s: float  # attained on the roofline: FLOPs / lower-bound time
    phase: str


def chart_points(
    model: ModelProfile,
    gpu: HardwareProfile,
    result: RooflineResult,
    batches: tuple[int, ...] | None = None,
) -> list[RooflinePoint]:
    """Decode points across batches (1, 2, 4 ... past the critical batch) and the prefill
    point, for the chart."""
    kw = dict(deployment=result.deployment)
    if batches is None:
        top = max(1024, 4 * (result.critical_batch or 0), result.batch)
        batches = tuple(2**i for i in range(0, min(top, 2**16).bit_length()))
    points = []
    for b in sorted(set(batches) | {result.batch}):
        step = predict_decode_step(model, gpu, b, result.ctx, **kw)
        points.append(RooflinePoint(f"decode B={b}", step.intensity, step.flops / step.time_s, "decode"))
    p = result.prefill
    points.append(
        RooflinePoint(
            f"prefill {result.batch}x{result.prompt_tokens}", p.intensity, p.flops / p.time_s, "prefill"
        )
    )
    return points


__all__ = ["COMPONENTS", "RooflineResult", "RooflinePoint", "chart_points", "critical_batch", "roofline"]

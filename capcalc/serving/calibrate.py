"""Fit the serving model's parameters to measured served runs (``capcalc calibrate``).

A :class:`ServedPoint` is one measured benchmark run: a replica (model, GPU, tp, dtypes),
a workload (P, O, concurrency or rate), the engine, and the measured mean TTFT and TPOT.
:func:`fit_serving` finds the parameters that make :func:`capcalc.serving.engine.predict_serving`
match them, by minimising

    loss = mean over points of |ln(ttft_pred / ttft)| + |ln(tpot_pred / tpot)|

(relative errors, so a 10 ms TPOT and a 2 s TTFT weigh alike; absolute values, so a few
odd rows do not dominate). The parameters, each a physical quantity with a default:

* ``bandwidth_scale``: multiplies weight_ and kv_bandwidth_efficiency (decode streaming);
* ``flops_scale``: multiplies prefill_flops_efficiency (compute-bound prefill);
* ``step_overhead_s``: fixed cost per engine step (host, launches not in a graph);
* ``layer_overhead_s``: fixed cost per layer per step (kernel launches and tails);
* ``seq_layer_overhead_s``: cost per running sequence per layer per step (per-sequence kernel work);
* ``moe_layer_overhead_s``: fixed cost per MoE layer per step (routing, permutation);
* ``frontend_s``: fixed cost per request (HTTP, tokenisation);
* ``seq_step_overhead_s``: host cost per running sequence per step;
* ``stream_token_host_s``: frontend time per streamed token (stretches ``frontend_s`` under load);
* ``low_precision_flops_scale``: multiplies the FLOP/s efficiency of fp8/fp4 products only;
* ``expert_flops_ratio``: the routed experts' share of the dense products' FLOP/s efficiency;
* ``allreduce_latency_s``, ``allreduce_latency_per_rank_s``: the all-reduce call's fixed cost
  and its growth per rank beyond the first; ``allreduce_bandwidth_efficiency``: the share of the
  link its transfer reaches;
* ``output_spread``: the spread of output lengths (EngineConfig.output_spread);
* ``memory_fraction``: the engine's memory knob, which sizes its KV pool (vLLM
  gpu_memory_utilization, SGLang mem_fraction_static, TensorRT-LLM free_gpu_memory_fraction):
  result files rarely record it, and runs that queue on the KV cache show it.

The loss may weight TTFT and TPOT unequally (``weights``).

The search is coordinate descent on a log scale (golden-section per parameter, a few
rounds): no gradient is available through the scheduler's discrete events, and the
loss is smooth enough in each parameter alone. Fractions are clipped to (0, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from capcalc.core.errors import CapcalcError
from capcalc.perf.efficiency import Efficiency, resolve_efficiency
from capcalc.perf.latency import LOW_PRECISION, resolve_compute_dtype
from capcalc.serving import engine as serving_engine
from capcalc.serving.engine import (
    Replica,
    ServingResult,
    TooManyEvents,
    Workload,
    kv_pool,
    least_events,
    longest_request,
    memory_fraction,
    predict_serving,
    shortest_prompt,
    step_model,
)
from capcalc.serving.engines import (
    EngineConfig,
    engine_defaults,
    engine_efficiency,
    with_memory_fraction,
    with_overrides,
)

#: most scheduling events one fit may simulate, all its simulations together: 20 x a single
#: simulation's capcalc.serving.engine.MAX_EVENTS, minutes at most. Fitting every one of
#: served_dev.csv's 265 vLLM MiniMax-M2.5 B200 rows needs about 4 M by the bound below; a
#: prompt chunked a token at a time needs 10-100x that
MAX_FIT_EVENTS = 20_000_000
FIT_PARAMETERS = (
    "bandwidth_scale",
    "flops_scale",
    "layer_overhead_s",
    "seq_layer_overhead_s",
    "moe_layer_overhead_s",
    "frontend_s",
    "seq_step_overhead_s",
    "stream_token_host_s",
    "memory_fraction",
    "allreduce_bandwidth_efficiency",
)
#: parameters whose loss is a staircase with a wall, not one smooth valley: the KV pool grows
#: in whole blocks with the memory share, and below some share the model leaves no cache at
#: all. Each is scanned at SCAN_POINTS values (log-spaced over its range) before the
#: golden-section search refines the best cell.
SCANNED = frozenset({"memory_fraction"})
SCAN_POINTS = 13
#: search range of each parameter: (low, high); scales multiply the default
BOUNDS = {
    "bandwidth_scale": (0.5, 1.6),
    "flops_scale": (0.2, 2.0),
    "low_precision_flops_scale": (0.2, 1.5),
    "expert_flops_ratio": (0.05, 1.0),
    "allreduce_latency_s": (1e-7, 50e-6),
    "allreduce_latency_per_rank_s": (1e-7, 20e-6),
    "allreduce_bandwidth_efficiency": (0.2, 1.0),
    "output_spread": (0.01, 0.9),
    "step_overhead_s": (1e-5, 20e-3),
    "layer_overhead_s": (1e-6, 200e-6),
    "seq_layer_overhead_s": (1e-9, 2e-6),
    "moe_layer_overhead_s": (1e-6, 300e-6),
    "frontend_s": (1e-4, 0.5),
    "seq_step_overhead_s": (1e-8, 2e-4),
    # 0.1 us (a C++ server) to 0.5 ms (a frontend saturated at 2,000 tokens/s)
    "stream_token_host_s": (1e-7, 5e-4),
    # engines' shares in use: vLLM 0.9 default, SGLang's heuristic 0.83-0.86 on 80-180 GiB cards,
    # TensorRT-LLM 0.9; 0.98 leaves the CUDA context room, below 0.5 no served deployment runs
    "memory_fraction": (0.5, 0.98),
}


@dataclass(frozen=True)
class ServedPoint:
    replica: Replica
    workload: Workload
    engine: str
    ttft_s: float  # measured means
    tpot_s: float
    #: the deployment's own scheduler settings, where they differ from the engine's defaults
    max_num_batched_tokens: int | None = None
    max_num_seqs: int | None = None
    #: other EngineConfig settings of the deployment (recv_interval, batch_wait_iters, ...)
    engine_settings: dict = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class ServingParams:
    """Everything the serving model needs besides the replica and the workload."""

    efficiency: Efficiency
    config: EngineConfig
    #: the dtype the replica's matrix products run in (fp8 and fp4 get low_precision_flops_scale)
    compute_dtype: str = "auto"


def serving_defaults(point: ServedPoint) -> ServingParams:
    """Shipped defaults: the GPU's efficiencies (profile > vendor default), the engine's
    adjustments (:func:`capcalc.serving.engines.engine_efficiency`) and scheduler defaults."""
    gpu = point.replica.gpu
    base = resolve_efficiency(gpu).efficiency
    r = point.replica
    compute = resolve_compute_dtype(r.compute_dtype, r.weight_dtype, r.model, gpu)
    eff = engine_efficiency(point.engine, base, r.weight_dtype, compute)
    config = with_overrides(
        engine_defaults(point.engine, gpu),
        max_num_batched_tokens=point.max_num_batched_tokens,
        max_num_seqs=point.max_num_seqs,
        **point.engine_settings,
    )
    return ServingParams(eff, config, compute)


_KV_CACHE: dict = {}


def predict_point(point: ServedPoint, params: ServingParams) -> ServingResult:
    """The serving model's answer for ``point`` under ``params`` (KV capacity cached per replica)."""
    w = point.workload
    max_model_len = longest_request(w, params.config)
    key = (
        id(point.replica),
        params.config.max_num_seqs,
        params.config.max_num_batched_tokens,
        max_model_len,
        memory_fraction(point.replica, params.config),
    )
    cached = _KV_CACHE.get(key)
    if cached is None or cached[0] is not point.replica:  # an id may be reused once freed
        kv = kv_pool(point.replica, params.config, max_model_len)
        cached = _KV_CACHE[key] = (point.replica, kv)
    steps = step_model(point.replica, params.efficiency, shortest_prompt(w))
    return predict_serving(
        point.replica, w, params.config, params.efficiency, kv_tokens=cached[1], steps=steps
    )


def apply(params: ServingParams, values: dict[str, float]) -> ServingParams:
    """``params`` with fitted ``values`` (FIT_PARAMETERS names) applied."""
    eff, cfg = params.efficiency, params.config
    if "bandwidth_scale" in values:
        s = values["bandwidth_scale"]
        eff = replace(
            eff,
            weight_bandwidth_efficiency=min(1.0, eff.weight_bandwidth_efficiency * s),
            kv_bandwidth_efficiency=min(1.0, eff.kv_bandwidth_efficiency * s),
        )
    if "flops_scale" in values:
        eff = replace(
            eff, prefill_flops_efficiency=min(1.0, eff.prefill_flops_efficiency * values["flops_scale"])
        )
    if "low_precision_flops_scale" in values and params.compute_dtype in LOW_PRECISION:
        eff = replace(
            eff, prefill_flops_efficiency=eff.prefill_flops_efficiency * values["low_precision_flops_scale"]
        )
    for name in (
        "step_overhead_s",
        "layer_overhead_s",
        "seq_layer_overhead_s",
        "moe_layer_overhead_s",
        "allreduce_latency_s",
        "allreduce_latency_per_rank_s",
        "allreduce_bandwidth_efficiency",
        "expert_flops_ratio",
    ):
        if name in values:
            eff = replace(eff, **{name: values[name]})
    if "frontend_s" in values:
        cfg = replace(cfg, frontend_s=values["frontend_s"])
    if "seq_step_overhead_s" in values:
        cfg = replace(cfg, seq_step_overhead_s=values["seq_step_overhead_s"])
    if "stream_token_host_s" in values:
        cfg = replace(cfg, stream_token_host_s=values["stream_token_host_s"])
    if "output_spread" in values:
        cfg = replace(cfg, output_spread=values["output_spread"])
    if "memory_fraction" in values:
        cfg = with_memory_fraction(cfg, values["memory_fraction"])
    return ServingParams(eff, cfg, params.compute_dtype)


def point_errors(point: ServedPoint, result: ServingResult) -> tuple[float, float]:
    """Signed relative errors of TTFT and TPOT (predicted / measured - 1)."""
    return result.ttft_s / point.ttft_s - 1, result.tpot_s / point.tpot_s - 1


@dataclass
class ServingFit:
    """Fitted values, and each point's (TTFT, TPOT) errors before and after."""

    values: dict[str, float]
    before: list[tuple[float, float]] = field(default_factory=list)
    after: list[tuple[float, float]] = field(default_factory=list)
    loss_before: float = 0.0
    loss_after: float = 0.0

    def params_for(self, point: ServedPoint) -> ServingParams:
        return apply(serving_defaults(point), self.values)


def _loss(points, values, weights) -> tuple[float, list[tuple[float, float]]]:
    errs = []
    total = 0.0
    for p in points:
        r = predict_point(p, apply(serving_defaults(p), values))
        errs.append(point_errors(p, r))
        total += weights[0] * abs(math.log(r.ttft_s / p.ttft_s)) + weights[1] * abs(
            math.log(r.tpot_s / p.tpot_s)
        )
    return total / len(points), errs


def _initial(points: list[ServedPoint], names) -> dict[str, float]:
    d = serving_defaults(points[0])
    start = {
        "bandwidth_scale": 1.0,
        "flops_scale": 1.0,
        "low_precision_flops_scale": 1.0,
        "output_spread": max(d.config.output_spread, BOUNDS["output_spread"][0]),
        "allreduce_latency_s": max(d.efficiency.allreduce_latency_s, BOUNDS["allreduce_latency_s"][0]),
        "allreduce_latency_per_rank_s": max(
            d.efficiency.allreduce_latency_per_rank_s, BOUNDS["allreduce_latency_per_rank_s"][0]
        ),
        "expert_flops_ratio": d.efficiency.expert_flops_ratio,
        "allreduce_bandwidth_efficiency": d.efficiency.allreduce_bandwidth_efficiency,
        "step_overhead_s": max(d.efficiency.step_overhead_s, BOUNDS["step_overhead_s"][0]),
        "layer_overhead_s": max(d.efficiency.layer_overhead_s, BOUNDS["layer_overhead_s"][0]),
        "seq_layer_overhead_s": max(d.efficiency.seq_layer_overhead_s, BOUNDS["seq_layer_overhead_s"][0]),
        "moe_layer_overhead_s": max(d.efficiency.moe_layer_overhead_s, BOUNDS["moe_layer_overhead_s"][0]),
        "frontend_s": max(d.config.frontend_s, BOUNDS["frontend_s"][0]),
        "seq_step_overhead_s": max(d.config.seq_step_overhead_s, BOUNDS["seq_step_overhead_s"][0]),
        "stream_token_host_s": max(d.config.stream_token_host_s, BOUNDS["stream_token_host_s"][0]),
        "memory_fraction": min(max(memory_fraction(points[0].replica, d.config), 0.5), 0.98),
    }
    return {n: start[n] for n in names}


def fit_serving(
    points: list[ServedPoint],
    parameters: tuple[str, ...] = FIT_PARAMETERS,
    rounds: int = 2,
    evaluations: int = 9,
    weights: tuple[float, float] = (1.0, 1.0),
) -> ServingFit:
    """Fit ``parameters`` to ``points`` (one engine and GPU; module docstring).
    Returns the values and the errors before (shipped defaults) and after."""
    if not points:
        raise ValueError("fit_serving needs at least one point")
    # the fit simulates every point once per evaluation (golden-section searches, plus the
    # defaults, the start and the result); refuse what would run for hours, before it starts
    simulations = 3 + rounds * sum(evaluations + 3 + (SCAN_POINTS if n in SCANNED else 0) for n in parameters)
    least = simulations * sum(
        least_events(p.workload, serving_defaults(p).config.max_num_batched_tokens) for p in points
    )
    runs = f"{len(points)} run" + ("s" if len(points) != 1 else "")
    if least > MAX_FIT_EVENTS:
        raise _too_long(
            f"a fit to {runs} would simulate at least {least:,.0f} prefill steps "
            f"({simulations} simulations of each), over the {MAX_FIT_EVENTS:,} it may take"
        )
    try:
        return _fit(points, parameters, rounds, evaluations, weights)
    except TooManyEvents:
        raise _too_long(
            f"one simulation of a fit to {runs} passed {serving_engine.MAX_EVENTS:,} scheduling "
            "events (a cache that keeps preempting, or prompts in many small chunks)"
        ) from None


def _too_long(why: str) -> CapcalcError:
    return CapcalcError(
        parameter="max_num_batched_tokens",
        template=why + ": fit fewer or shorter runs, or raise {max_num_batched_tokens}",
    )


def _fit(points, parameters, rounds, evaluations, weights) -> ServingFit:
    loss0, before = _loss(points, {}, weights)
    values = _initial(points, parameters)
    best, _ = _loss(points, values, weights)
    phi = (math.sqrt(5) - 1) / 2
    for _ in range(rounds):
        for name in parameters:
            lo, hi = (math.log(b) for b in BOUNDS[name])
            cache = {}

            def f(x, name=name, cache=cache):
                if x not in cache:
                    try:
                        cache[x] = _loss(points, {**values, name: math.exp(x)}, weights)[0]
                    except TooManyEvents:
                        raise
                    except CapcalcError:  # e.g. a memory share that leaves no KV cache
                        cache[x] = math.inf
                return cache[x]

            if name in SCANNED:  # steps and a wall in the loss: scan, then refine the best cell
                step = (hi - lo) / (SCAN_POINTS - 1)
                x0 = min((lo + step * i for i in range(SCAN_POINTS)), key=f)
                lo, hi = max(lo, x0 - step), min(hi, x0 + step)
            a, b = lo, hi
            c, d = b - phi * (b - a), a + phi * (b - a)
            for _ in range(evaluations):
                if f(c) < f(d):
                    b, d = d, c
                    c = b - phi * (b - a)
                else:
                    a, c = c, d
                    d = a + phi * (b - a)
            x = (a + b) / 2
            trial = f(x)
            if name in SCANNED:  # a staircase need not narrow onto its best step: keep the best seen
                x = min(cache, key=cache.get)
                trial = cache[x]
            if trial < best:
                best, values[name] = trial, math.exp(x)
    loss1, after = _loss(points, values, weights)
    if loss1 > loss0:  # never worse than the defaults
        values, loss1, after = {}, loss0, before
    return ServingFit(values=values, before=before, after=after, loss_before=loss0, loss_after=loss1)

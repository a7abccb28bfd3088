"""From traffic and SLOs to a GPU count and a cost, on the serving model of a replica under load.

Traffic: ``R`` requests/s, each ``P`` prompt tokens and ``O`` output tokens. A candidate is
a GPU type, a tensor-parallel degree ``tp`` and a weight/KV dtype; a replica is ``tp`` such
GPUs serving one copy of the model with one engine (vLLM, SGLang or TensorRT-LLM, its
scheduler defaults from :func:`capcalc.serving.engines.engine_defaults`). ``n`` replicas
share the load equally: ``lam = R / n`` requests/s each.

What one replica does at a load comes from :func:`capcalc.serving.engine.predict_serving`,
the discrete-event simulation of the engine's scheduler (mixed prefill/decode steps,
chunked prefill, KV admission and preemption, queueing, a frontend cost per request),
run closed loop: ``C`` clients, each sending its next request when its last completes,
as ``vllm bench serve --max-concurrency C`` measures. For each ``C`` it gives the mean
and p50/p90/p99 TTFT, TPOT and E2E and the mean ITL. Each client is always inside a
request, so the replica serves ``X(C) = C / mean e2e(C)`` requests/s (Little's law, seed
section 0.12). The simulation's own ``requests_per_s`` counts the run's sends instead, and
a benchmark-length run that opens with all C clients sending at once sends C requests at
no cost: near saturation that count is 8-11 % above ``C / e2e`` (and, for prefill-heavy
traffic, above what the GPU's arithmetic can compute), so the plan takes Little's.

The largest load a replica carries, ``C_max``, is the largest concurrency at which every
SLO holds, found by doubling ``C`` from 1 until an SLO breaks, then :func:`bracket`
between the last concurrency that held and the first that did not (probes where the SLO
metrics, interpolated, cross their targets; bisection when that is slow). The SLOs are
taken to break monotonically in ``C`` (a queue only gets longer), but whatever the search
meets, the SLOs hold at ``C_max`` and break at ``C_max + 1``. ``C`` is capped by memory,
``C <= floor(max_concurrency)`` of ``fit`` at ``max_model_len = P + O`` (every request
counted at its full length, as vLLM's "Maximum concurrency" line counts it: the
conservative end, since blocks are taken as a request grows) and the simulation's
cache in tokens over ``P + O`` (it counts every layer at the full context), by the
engine's ``max_num_seqs`` and token budget, and by :data:`SEARCH_LIMIT`. Then::

    lam_max  = X(C_max)                        requests/s one replica carries
    replicas = ceil(R / lam_max)               gpus = replicas x tp

(``lam_max`` is the highest X among the concurrencies simulated up to ``C_max`` that
meet the SLOs: X(C_max) unless the cache overflowed and recomputation made more clients
serve less), and the replica's operating point is the smallest concurrency
``C_op <= C_max`` whose ``X(C_op) >= lam = R / replicas`` (:func:`bracket` again): its
latencies are reported, a slight overestimate since a whole client is rounded up.

An SLO binds a statistic of a metric: the mean (the default) or a percentile the
simulation gives (p50, p90, p99), written ``p90:500ms``; TTFT, TPOT, E2E and ITL (its
gaps pooled over requests, as ``vllm bench serve`` pools them) have all four. ``binding_constraint`` names what stops
``C_max`` growing: ``memory`` (``C`` reached the KV capacity), ``max_num_seqs``,
``search_limit``, the SLO
broken at ``C_max + 1`` (``TTFT``, ``TPOT``, ``ITL``, ``E2E``; ``binding_slo`` says which
statistic), or ``compute`` when a batch limit binds with the GPU's arithmetic at least
:data:`COMPUTE_SATURATION` busy (``compute_busy_fraction``), so that more memory adds little.

Assumptions: every request has the traffic's P and O; a closed-loop benchmark's numbers,
opening burst included (see :data:`capcalc.serving.engine.REQUESTS_PER_CLIENT`), stand for
the load ``X(C)``, where real traffic arrives less evenly (Poisson bursts) or more so.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from capcalc.core.errors import CapcalcError
from capcalc.core.inputs import excerpt
from capcalc.core.records import flat_record
from capcalc.core.units import format_bytes, format_duration, parse_duration
from capcalc.model.parallel import check_tp, valid_tp_degrees
from capcalc.model.weights import resolve_weight_dtype
from capcalc.perf.efficiency import Efficiency, ResolvedEfficiency
from capcalc.schema.deployment import Deployment
from capcalc.schema.profiles import HardwareProfile, ModelProfile
from capcalc.serving.engine import (
    KVPool,
    Replica,
    ServingResult,
    Workload,
    engine_kv_bytes,
    kv_pool,
    memory_fraction,
    predict_serving,
    step_model,
    vllm_utilization,
)
from capcalc.serving.engines import ENGINES, EngineConfig, engine_defaults, engine_efficiency, with_overrides
from capcalc.serving.fit import DEFAULT_UTILIZATION, FitRequest, FitResult, check_request, fit, memory_of
from capcalc.serving.stepmodel import Chunk

#: GPU arithmetic busy at least this share of the time at the batch limit: "compute" binds.
#: A replica's arithmetic caps its throughput at (work per second) / (compute rate): when
#: the arithmetic is busy a share ``u`` of the time at the batch limit, no larger batch
#: (more memory, a higher max_num_seqs) can carry more than ``1 / u`` times as much. At
#: 0.9 that ceiling is 1 / 0.9 - 1 = 11 % more: a chosen tolerance (not a measurement)
#: below which "add memory" is not worth naming as the fix. It only names the binding
#: constraint: replicas, GPUs and cost do not depend on it.
COMPUTE_SATURATION = 0.9

#: tensor-parallel degrees tried when none are given (those valid for the model)
DEFAULT_TPS = (1, 2, 4, 8)

#: the most closed-loop clients per replica the search simulates: twice vLLM's default
#: max_num_seqs on large GPUs. A simulation costs about one engine step per output token
#: and a little per request in flight (up to 0.4 s at 1,024 clients of 1-token prompts, on
#: one core), and one this large only arises for short requests on a large KV cache, far
#: past where more clients add throughput; a plan stopped here says ``search_limit``.
SEARCH_LIMIT = 2048

#: the engine planned for when none is named
DEFAULT_ENGINE = "vllm"

# serving(gpu, weight_dtype) -> (step efficiencies, engine configuration, their source)
ServingOf = Callable[[HardwareProfile, str], tuple[Efficiency, EngineConfig, str]]

#: statistics an SLO may bind, as the serving model reports them (ServingResult fields)
SLO_STATS = ("mean", "p50", "p90", "p99")

#: the SLO metrics: name, SLOs field, statistics the serving model gives for it
SLO_METRICS = (
    ("TTFT", "ttft", SLO_STATS),
    ("TPOT", "tpot", SLO_STATS),
    ("ITL", "itl", SLO_STATS),
    ("E2E", "e2e", SLO_STATS),
)


@dataclass(frozen=True)
class Traffic:
    requests_per_s: float
    prompt_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class SLOs:
    """Latency targets in seconds (None: no target), each on a statistic of its metric:
    ``mean`` or a percentile of :data:`SLO_STATS`."""

    ttft_s: float | None = None
    itl_s: float | None = None
    e2e_s: float | None = None
    tpot_s: float | None = None
    ttft_stat: str = "mean"
    itl_stat: str = "mean"
    e2e_stat: str = "mean"
    tpot_stat: str = "mean"

    def targets(self) -> list[tuple[str, str, str, float]]:
        """(metric name, field prefix, statistic, seconds) of each target given."""
        out = []
        for name, key, _ in SLO_METRICS:
            value = getattr(self, f"{key}_s")
            if value is not None:
                out.append((name, key, getattr(self, f"{key}_stat"), value))
        return out

    def describe(self) -> list[str]:
        """'TTFT p90 ≤ 500 ms' for each target (the mean unnamed: 'ITL ≤ 50 ms')."""
        return [
            f"{name}{'' if stat == 'mean' else ' ' + stat} ≤ {format_duration(value)}"
            for name, _, stat, value in self.targets()
        ]


def parse_slo(value, parameter: str) -> tuple[float, str]:
    """An SLO as (seconds, statistic): ``'500ms'`` or a number of seconds binds the mean,
    ``'p90:500ms'`` the 90th percentile, ``'mean:500ms'`` the mean by name. ``parameter``
    (``ttft_s``, ``itl_s``, ``tpot_s``, ``e2e_s``) names the SLO in errors and decides the
    statistics allowed (:data:`SLO_METRICS`)."""
    allowed = next((stats for _, key, stats in SLO_METRICS if f"{key}_s" == parameter), SLO_STATS)
    stat, seconds = "mean", value
    if isinstance(value, str):
        text = value.strip()
        head, colon, tail = text.partition(":")
        if colon:
            stat = head.strip().lower()
            if stat not in allowed:
                raise CapcalcError(
                    f"{parameter} {excerpt(text)}: the serving model gives the {', '.join(allowed)}; "
                    f"expected e.g. p90:500ms or 500ms (the mean)",
                    parameter=parameter,
                )
            seconds = tail.strip()
            if not seconds:
                raise CapcalcError(
                    f"{parameter} {excerpt(text)}: no time after '{stat}:'", parameter=parameter
                )
        elif re.fullmatch(r"(?i)(mean|p\d+(\.\d*)?)", text):
            raise CapcalcError(
                f"{parameter} {excerpt(text)}: expected STAT:TIME, e.g. p90:500ms", parameter=parameter
            )
    try:
        out = parse_duration(seconds, parameter)
    except CapcalcError as exc:
        raise CapcalcError(exc.message, parameter=parameter) from None
    if not out > 0:
        raise CapcalcError(f"{parameter} must be positive, got {out:g} s", parameter=parameter)
    return out, stat


def slos_of(**values) -> SLOs:
    """:class:`SLOs` from ``ttft_s=``, ``itl_s=``, ``tpot_s=``, ``e2e_s=`` values, each None,
    a number of seconds (the mean) or a string :func:`parse_slo` reads."""
    fields: dict = {}
    for name, value in values.items():
        if value is None:
            continue
        seconds, stat = parse_slo(value, name)
        fields[name] = seconds
        fields[name.removesuffix("_s") + "_stat"] = stat
    return SLOs(**fields)


@dataclass(frozen=True)
class Candidate:
    """A GPU type and how the model is deployed on it (one replica = ``deployment.tp`` GPUs)."""

    gpu: HardwareProfile
    deployment: Deployment = Deployment()

    @property
    def tp(self) -> int:
        return self.deployment.tp

    @property
    def weight_dtype(self) -> str:
        return self.deployment.weight_dtype

    @property
    def kv_dtype(self) -> str:
        return self.deployment.kv_dtype


@dataclass(frozen=True)
class PlanResult:
    """One candidate's plan (or why it was rejected). Times in seconds, rates per second.
    Latencies are the serving model's at the operating point (``concurrency_per_replica``
    closed-loop clients per replica); ``*_pNN_s`` are percentiles over its requests."""

    model: str
    gpu: str
    tp: int
    weight_dtype: str
    kv_dtype: str
    requests_per_s: float
    prompt_tokens: int
    output_tokens: int
    ttft_slo_s: float | None
    itl_slo_s: float | None
    e2e_slo_s: float | None
    output_tokens_per_s: float  # the traffic's: R x O
    engine: str = DEFAULT_ENGINE
    tpot_slo_s: float | None = None
    ttft_slo_stat: str | None = None  # mean | p50 | p90 | p99, where an SLO is given
    itl_slo_stat: str | None = None
    tpot_slo_stat: str | None = None
    e2e_slo_stat: str | None = None
    feasible: bool = False
    rejected_because: str | None = None
    replicas: int | None = None
    gpus: int | None = None
    batch_per_replica: int | None = None  # C_op: the closed-loop clients latencies are evaluated at
    concurrency_per_replica: float | None = None  # C_op = served_requests_per_s_per_replica x e2e_s
    requests_per_s_per_replica: float | None = None  # lam = R / replicas
    served_requests_per_s_per_replica: float | None = None  # X(C_op) >= lam
    max_requests_per_s_per_replica: float | None = None  # lam_max = X(C_max)
    batch_at_max_load: int | None = None  # C_max
    load_fraction: float | None = None  # requests_per_s / (replicas x lam_max)
    running_batch_per_replica: float | None = None  # requests admitted to the engine, time mean, at C_op
    queue_s: float | None = None  # mean wait for the first scheduled chunk, at C_op
    ttft_s: float | None = None
    tpot_s: float | None = None
    itl_s: float | None = None
    e2e_s: float | None = None
    ttft_p50_s: float | None = None
    ttft_p90_s: float | None = None
    ttft_p99_s: float | None = None
    tpot_p50_s: float | None = None
    tpot_p90_s: float | None = None
    tpot_p99_s: float | None = None
    e2e_p50_s: float | None = None
    e2e_p90_s: float | None = None
    e2e_p99_s: float | None = None
    itl_p50_s: float | None = None
    itl_p90_s: float | None = None
    itl_p99_s: float | None = None
    decode_step_s: float | None = None  # a pure decode step of the running batch, contexts at P + O/2
    prefill_s: float | None = None  # one prompt alone: TTFT at concurrency 1 less the frontend cost
    prefill_share: float | None = None  # lam x prefill_s: prefill work per second, a load indicator
    binding_constraint: str | None = None
    binding_slo: str | None = None  # e.g. 'TTFT p90' when an SLO binds
    binding_limit: str | None = None  # the serving model's at C_max: kv_capacity | max_num_seqs | none
    compute_busy_fraction: float | None = None  # at C_max (see COMPUTE_SATURATION)
    kv_capacity_requests: int | None = None  # floor(max_concurrency) at P + O tokens
    kv_capacity_tokens: int | None = None
    #: the engine's memory knob that sized the pool (capcalc.serving.engine.memory_fraction)
    memory_fraction: float | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    frontend_s: float | None = None
    recv_interval: int | None = None  # SGLang's poll interval (EngineConfig.recv_interval)
    batch_wait_iters: int | None = None  # TensorRT-LLM batch waiting (EngineConfig)
    batch_wait_max_tokens_ratio: float | None = None
    kv_cache_bytes_per_gpu: float | None = None
    kv_bytes_used_per_gpu: float | None = None  # C_op requests at their full P + O tokens
    weights_bytes_per_gpu: float | None = None
    output_tokens_per_s_per_gpu: float | None = None
    batch1_ttft_s: float | None = None  # one request at a time: the best any load can do
    batch1_itl_s: float | None = None
    batch1_tpot_s: float | None = None
    batch1_e2e_s: float | None = None
    price_per_gpu_hour_usd: float | None = None
    price_source: str | None = None
    efficiency_source: str | None = None
    cost_usd_per_hour: float | None = None
    cost_usd_per_million_output_tokens: float | None = None

    def record(self) -> dict:
        """The flat output record (``schema_version`` first), as the CLI's JSON prints it."""
        return flat_record(self)


# --------------------------------------------------------------------------- one replica under load


def slo_value(result: ServingResult, key: str, stat: str) -> float:
    """The statistic ``stat`` of metric ``key`` (ttft, tpot, itl, e2e) in ``result``."""
    return getattr(result, f"{key}_s" if stat == "mean" else f"{key}_{stat}_s")


def violations(result: ServingResult, slos: SLOs) -> dict[str, float]:
    """SLOs broken in ``result``: metric name -> predicted / target."""
    out = {}
    for name, key, stat, target in slos.targets():
        value = slo_value(result, key, stat)
        if value > target:
            out[name] = value / target
    return out


class LoadedReplica:
    """One candidate's replica run closed loop at any concurrency; answers are cached
    (the searches revisit concurrencies, and the simulation is deterministic)."""

    def __init__(
        self,
        replica: Replica,
        traffic: Traffic,
        slos: SLOs,
        config: EngineConfig,
        efficiency: Efficiency,
        kv_tokens: int | KVPool,
    ):
        self.replica, self.traffic, self.slos = replica, traffic, slos
        self.config, self.efficiency, self.kv_tokens = config, efficiency, kv_tokens
        self.steps = step_model(replica, efficiency, traffic.prompt_tokens)
        self._cache: dict[int, ServingResult] = {}

    def at(self, concurrency: int) -> ServingResult:
        if concurrency not in self._cache:
            self._cache[concurrency] = predict_serving(
                self.replica,
                Workload(self.traffic.prompt_tokens, self.traffic.output_tokens, concurrency=concurrency),
                self.config,
                self.efficiency,
                kv_tokens=self.kv_tokens,
                steps=self.steps,
            )
        return self._cache[concurrency]

    def rate(self, concurrency: int) -> float:
        """X(C) = C / mean e2e(C): requests/s at ``concurrency`` clients, by Little's law on
        the simulated latencies (module docstring: why not the run's send count)."""
        return concurrency / self.at(concurrency).e2e_s

    def violations(self, concurrency: int) -> dict[str, float]:
        return violations(self.at(concurrency), self.slos)

    def ok(self, concurrency: int) -> bool:
        return not self.violations(concurrency)

    def operating_concurrency(self, lam: float, limit: int) -> int:
        """C_op: the smallest concurrency in [1, limit] whose X(C) reaches ``lam``, for
        ``X(limit) >= lam``. X(C) = C / e2e(C) with e2e(C) nearly affine in C -- the more
        clients, the longer each waits -- so each probe of :func:`bracket` solves
        ``C = lam e2e(C)`` with e2e interpolated linearly between the bracket's ends."""

        def short(c: int) -> bool:
            return self.rate(c) < lam * (1 - 1e-12)

        def estimate(lo: int, hi: int) -> float | None:
            e_lo, e_hi = self.at(lo).e2e_s, self.at(hi).e2e_s
            b = (e_hi - e_lo) / (hi - lo)
            room = 1 - lam * b
            return lam * (e_lo - b * lo) / room if room > 0 else None

        if limit <= 1 or not short(1):
            return 1
        return bracket(short, 1, limit, estimate)[1]

    def peak(self, best: int) -> int:
        """The concurrency, of those simulated up to ``best`` that meet every SLO, with the
        most requests/s: ``best`` itself where X rises with C, as it does until the KV cache
        overflows (then preemption and recomputation can make more clients serve less)."""
        self.at(best)
        met = [c for c in self._cache if c <= best and self.ok(c)]
        return max(met, key=lambda c: (self.rate(c), c))

    def slo_crossing(self, lo: int, hi: int) -> float | None:
        """Where the first SLO to break crosses its target, each metric interpolated
        linearly between concurrencies ``lo`` (all met) and ``hi`` (one broken)."""
        a, b = self.at(lo), self.at(hi)
        out = None
        for _, key, stat, target in self.slos.targets():
            v_lo, v_hi = slo_value(a, key, stat), slo_value(b, key, stat)
            if v_hi > target and v_hi > v_lo:
                c = lo + (target - v_lo) / (v_hi - v_lo) * (hi - lo)
                out = c if out is None else min(out, c)
        return out


def bracket(below: Callable[[int], bool], lo: int, hi: int, estimate: Callable[[int, int], float | None]):
    """Adjacent (lo, hi) with below(lo) and not below(hi), from such a pair: each probe is
    ``estimate(lo, hi)`` (an interpolation, rounded into the bracket), and after two
    probes in a row that did not halve the bracket, the midpoint (bisection), so it never
    takes more than about twice bisection's probes, and a good estimate takes two or three.
    Whatever below's shape, the pair returned is one it gave."""
    slow = 0
    while hi - lo > 1:
        width = hi - lo
        guess = estimate(lo, hi) if slow < 2 else None
        c = (lo + hi) // 2 if guess is None or not math.isfinite(guess) else math.ceil(guess)
        c = min(hi - 1, max(lo + 1, c))
        lo, hi = (c, hi) if below(c) else (lo, c)
        slow = slow + 1 if hi - lo > width / 2 else 0
    return lo, hi


@dataclass(frozen=True)
class Capacity:
    max_load: float  # lam_max = X(C_max), requests/s per replica
    concurrency: int  # C_max
    limit: int  # min(KV capacity, max_num_seqs)
    binding: str  # memory | max_num_seqs | an SLO metric
    binding_slo: str | None = None  # 'TTFT p90' when an SLO binds


def largest_meeting(replica: LoadedReplica, limit: int) -> int:
    """The largest C in [1, limit] meeting every SLO, C = 1 given to: double C until an
    SLO breaks or ``limit`` is reached, then :func:`bracket` between the last C that held
    and the first that did not, probing where the SLO metrics, interpolated, cross their
    targets. Small C are cheap to simulate, so doubling from 1 costs less than bisecting
    [1, limit]. Whatever the metrics' shape, the SLOs hold at the answer and break one
    client further (or the answer is ``limit``)."""
    good = 1
    while good < limit:
        probe = min(2 * good, limit)
        if not replica.ok(probe):
            return bracket(replica.ok, good, probe, replica.slo_crossing)[0]
        good = probe
    return good


def replica_capacity(replica: LoadedReplica, kv_requests: int, max_num_seqs: int) -> Capacity:
    """lam_max and what binds it (module docstring); ``replica`` meets every SLO at C = 1."""
    limit = max(1, min(kv_requests, max_num_seqs, SEARCH_LIMIT))
    best = limit if not replica.slos.targets() else largest_meeting(replica, limit)
    peak = replica.peak(best)
    if best == limit:
        binding = (
            "memory" if limit == kv_requests else "max_num_seqs" if limit == max_num_seqs else "search_limit"
        )
        return Capacity(replica.rate(peak), peak, limit, binding)
    broken = replica.violations(best + 1)
    name = max(broken, key=lambda k: broken[k])
    stat = next(s for n, _, s, _ in replica.slos.targets() if n == name)
    return Capacity(replica.rate(peak), peak, limit, name, name if stat == "mean" else f"{name} {stat}")


# --------------------------------------------------------------------------- one candidate


def serving_efficiency(
    engine: str, resolved: Efficiency | ResolvedEfficiency, weight_dtype: str
) -> Efficiency:
    """The step efficiencies ``engine`` runs at. A :class:`ResolvedEfficiency` gets the
    engine's adjustments (:func:`capcalc.serving.engines.engine_efficiency`) on the
    parameters that come from the GPU's profile or the vendor default, while a flag's or a
    calibration's value is kept as given (it is already what the engine reached); a plain
    :class:`Efficiency` is used as it is."""
    if not isinstance(resolved, ResolvedEfficiency):
        return resolved
    adjusted = engine_efficiency(engine, resolved.efficiency, weight_dtype)
    kept = {
        k: getattr(resolved.efficiency, k)
        for k, src in resolved.sources.items()
        if src in ("flag", "calibration")
    }
    return replace(adjusted, **kept)


def fit_request(
    cand: Candidate,
    traffic: Traffic,
    gpu_memory_utilization: float = DEFAULT_UTILIZATION,
    max_num_seqs: int | None = None,
    max_num_batched_tokens: int | None = None,
) -> FitRequest:
    """What ``fit`` is asked for one candidate: every request at its full P + O tokens, the
    engine's batch limits sizing the activation peak."""
    memory, source = memory_of(cand.gpu)
    return FitRequest(
        memory_bytes=memory,
        memory_source=source,
        gpu=cand.gpu.name,
        deployment=cand.deployment,
        gpu_memory_utilization=gpu_memory_utilization,
        max_model_len=traffic.prompt_tokens + traffic.output_tokens,
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens,
    )


def engine_config(engine: str, gpu: HardwareProfile, max_num_seqs: int | None = None) -> EngineConfig:
    """``engine``'s scheduler defaults on ``gpu``, ``max_num_seqs`` over its own when given."""
    return with_overrides(engine_defaults(engine, gpu), max_num_seqs=max_num_seqs)


def _rejected(capacity: FitResult, context: int, engine_kv: float | None, engine: str) -> str | None:
    """Why the memory rejects the candidate, or None. ``engine_kv``: the KV bytes per GPU the
    engine's own rule leaves (:func:`capcalc.serving.engine.engine_kv_bytes`; None: vLLM's fit)."""
    if engine_kv is None:
        if not capacity.weights_fit:
            return (
                f"weights do not fit: {format_bytes(capacity.weights_bytes_per_gpu)} per GPU; with activations and "
                f"overhead, {format_bytes(capacity.weights_shortfall_bytes)} more than vLLM may use"
            )
        kv_bytes = max(capacity.kv_cache_bytes_per_gpu, 0)
        holds_one = math.floor(capacity.max_concurrency) >= 1 and capacity.kv_cache_tokens >= context
    else:
        if engine_kv <= 0:
            return (
                f"weights do not fit: {format_bytes(capacity.weights_bytes_per_gpu)} per GPU leave "
                f"{engine}'s memory rule no KV cache"
            )
        kv_bytes = engine_kv
        holds_one = engine_kv >= capacity.kv_needed_bytes
    if holds_one:
        return None
    return (
        f"KV cache ({format_bytes(kv_bytes)} per GPU) holds no request of "
        f"{context:,} tokens (needs {format_bytes(capacity.kv_needed_bytes)})"
    )


def plan_candidate(
    model: ModelProfile,
    cand: Candidate,
    traffic: Traffic,
    slos: SLOs,
    efficiency: Efficiency | ResolvedEfficiency | None,
    price: tuple[float, str] | None = None,
    gpu_memory_utilization: float = DEFAULT_UTILIZATION,
    max_num_seqs: int | None = None,
    engine: str = DEFAULT_ENGINE,
    serving: ServingOf | None = None,
) -> PlanResult:
    """The fewest replicas of ``cand`` that carry ``traffic`` within ``slos``, or why none do.
    Usage errors (the settings, the dtypes: :func:`capcalc.serving.fit.check_request`) are raised,
    not turned into a rejection; :func:`plan` checks them once before any candidate."""
    context = traffic.prompt_tokens + traffic.output_tokens
    rate_price, price_source = price if price else (None, None)
    base = PlanResult(
        model=model.name,
        gpu=cand.gpu.name,
        tp=cand.tp,
        weight_dtype=cand.weight_dtype,
        kv_dtype=cand.kv_dtype,
        requests_per_s=traffic.requests_per_s,
        prompt_tokens=traffic.prompt_tokens,
        output_tokens=traffic.output_tokens,
        ttft_slo_s=slos.ttft_s,
        itl_slo_s=slos.itl_s,
        e2e_slo_s=slos.e2e_s,
        tpot_slo_s=slos.tpot_s,
        **{f"{key}_slo_stat": stat for _, key, stat, _ in slos.targets()},
        output_tokens_per_s=traffic.requests_per_s * traffic.output_tokens,
        engine=engine,
        price_per_gpu_hour_usd=rate_price,
        price_source=price_source,
    )
    try:  # the one per-candidate error: a tp the model's heads do not divide into
        check_tp(model, cand.tp)
    except CapcalcError as exc:
        return replace(base, rejected_because=exc.message)
    if serving is not None:  # flags > the GPU and engine's calibrate entry > engine defaults
        served_eff, served_config, source = serving(cand.gpu, resolve_weight_dtype(cand.weight_dtype, model))
        config = with_overrides(served_config, max_num_seqs=max_num_seqs)
        base = replace(base, efficiency_source=source)
    else:
        config = engine_config(engine, cand.gpu, max_num_seqs)
    bare = Replica(model, cand.gpu, tp=cand.tp, gpu_memory_utilization=gpu_memory_utilization)
    gpu_memory_utilization = vllm_utilization(bare, config)  # a calibration's, unless a flag set it
    base = replace(base, memory_fraction=memory_fraction(bare, config))
    capacity = fit(
        model,
        fit_request(
            cand, traffic, gpu_memory_utilization, config.max_num_seqs, config.max_num_batched_tokens
        ),
        suggest=False,
    )
    base = replace(
        base,
        weight_dtype=capacity.weight_dtype,
        kv_dtype=capacity.kv_dtype,
        kv_capacity_requests=math.floor(capacity.max_concurrency),
        kv_capacity_tokens=capacity.kv_cache_tokens if capacity.weights_fit else None,
        max_num_seqs=config.max_num_seqs,
        max_num_batched_tokens=config.max_num_batched_tokens,
        frontend_s=config.frontend_s,
        recv_interval=config.recv_interval,
        batch_wait_iters=config.batch_wait_iters,
        batch_wait_max_tokens_ratio=config.batch_wait_max_tokens_ratio,
        kv_cache_bytes_per_gpu=capacity.kv_cache_bytes_per_gpu,
        weights_bytes_per_gpu=capacity.weights_bytes_per_gpu,
    )
    engine_kv = engine_kv_bytes(capacity, config, cand.tp)
    if engine_kv is not None:  # the pool the engine sizes by its own rule, not vLLM's share
        base = replace(
            base,
            kv_cache_bytes_per_gpu=max(engine_kv, 0.0),
            kv_capacity_requests=math.floor(max(engine_kv, 0.0) / capacity.kv_needed_bytes),
            kv_capacity_tokens=None,
        )
    why = _rejected(capacity, context, engine_kv, config.engine)
    if why is not None:
        return replace(base, rejected_because=why, binding_constraint="memory")
    d = cand.deployment
    replica = Replica(
        model,
        cand.gpu,
        tp=d.tp,
        weight_dtype=capacity.weight_dtype,
        kv_dtype=capacity.kv_dtype,
        compute_dtype=d.compute_dtype,
        group_size=d.group_size,
        gpu_memory_utilization=gpu_memory_utilization,
    )
    eff = served_eff if serving is not None else serving_efficiency(engine, efficiency, capacity.weight_dtype)
    try:
        # the cache as the simulation counts it: fit's groups (sliding windows and recurrent
        # state hold a fixed share per request), TensorRT-LLM's free-memory pool for trtllm
        pool = kv_pool(replica, config, context, fitted=capacity)
        loaded = LoadedReplica(replica, traffic, slos, config, eff, pool)
        one = loaded.at(1)
    except CapcalcError as exc:
        return replace(base, rejected_because=exc.message)
    base = replace(
        base,
        batch1_ttft_s=one.ttft_s,
        batch1_itl_s=one.itl_s,
        batch1_tpot_s=one.tpot_s,
        batch1_e2e_s=one.e2e_s,
        prefill_s=one.ttft_s - config.frontend_s,
        kv_capacity_tokens=base.kv_capacity_tokens if engine_kv is None else pool.tokens,
    )
    broken = violations(one, slos)
    if broken:
        name = max(broken, key=lambda k: broken[k])
        _, key, stat, target = next(t for t in slos.targets() if t[0] == name)
        label = name if stat == "mean" else f"{name} {stat}"
        return replace(
            base,
            rejected_because=f"{label} SLO unreachable even at concurrency 1: {label} "
            f"{format_duration(slo_value(one, key, stat))} > {format_duration(target)}",
            binding_constraint=name,
            binding_slo=label,
        )
    # requests of P + O tokens the pool holds (for vLLM, fit's max_concurrency); a step holds
    # at most max_num_batched_tokens decodes: more running requests cannot run
    kv_requests = math.floor(pool.capacity / (pool.per_token * context + pool.per_request))
    cap = replica_capacity(loaded, kv_requests, min(config.max_num_seqs, config.max_num_batched_tokens))
    replicas = max(1, math.ceil(traffic.requests_per_s / cap.max_load * (1 - 1e-12)))
    lam = traffic.requests_per_s / replicas
    c_op = loaded.operating_concurrency(lam, cap.concurrency)
    if not loaded.ok(c_op):  # an SLO that is not monotone in C: the concurrency the search checked
        c_op = cap.concurrency
    at = loaded.at(c_op)
    busy = compute_busy(loaded, cap)
    binding = cap.binding
    if binding in ("memory", "max_num_seqs", "search_limit") and busy >= COMPUTE_SATURATION:
        binding = "compute"
    gpus = replicas * cand.tp
    cost = rate_price * gpus if rate_price is not None else None
    tokens_per_hour = traffic.requests_per_s * traffic.output_tokens * 3600.0
    percentiles = {
        f"{key}_{p}_s": getattr(at, f"{key}_{p}_s")
        for key in ("ttft", "tpot", "e2e", "itl")
        for p in ("p50", "p90", "p99")
    }
    return replace(
        base,
        feasible=True,
        replicas=replicas,
        gpus=gpus,
        batch_per_replica=c_op,
        concurrency_per_replica=float(c_op),
        requests_per_s_per_replica=lam,
        served_requests_per_s_per_replica=loaded.rate(c_op),
        max_requests_per_s_per_replica=cap.max_load,
        batch_at_max_load=cap.concurrency,
        load_fraction=traffic.requests_per_s / (replicas * cap.max_load),
        running_batch_per_replica=at.running_batch,
        queue_s=at.queue_s,
        ttft_s=at.ttft_s,
        tpot_s=at.tpot_s,
        itl_s=at.itl_s,
        e2e_s=at.e2e_s,
        **percentiles,
        decode_step_s=decode_step(loaded, at.running_batch),
        prefill_share=lam * base.prefill_s,
        binding_constraint=binding,
        binding_slo=cap.binding_slo,
        binding_limit=loaded.at(cap.concurrency).binding_limit,
        compute_busy_fraction=busy,
        # each request holds the blocks fit counts for one at P + O tokens (sliding windows, block rounding)
        kv_bytes_used_per_gpu=c_op * capacity.kv_needed_bytes,
        output_tokens_per_s_per_gpu=traffic.requests_per_s * traffic.output_tokens / gpus,
        cost_usd_per_hour=cost,
        cost_usd_per_million_output_tokens=cost / tokens_per_hour * 1e6 if cost is not None else None,
    )


def decode_step(replica: LoadedReplica, batch: float) -> float:
    """A pure decode step of ``batch`` sequences (rounded, at least 1) at the mean context
    ``P + O / 2``, with the engine's host cost per sequence."""
    d = max(1, round(batch))
    ctx = replica.traffic.prompt_tokens + replica.traffic.output_tokens / 2
    return replica.steps.time_s(d, d * ctx) + replica.config.seq_step_overhead_s * d


def compute_busy(replica: LoadedReplica, cap: Capacity) -> float:
    """Share of time the GPU's arithmetic is busy at lam_max, at most 1: lam_max x the
    P + O - 1 tokens each request computes x the compute time of one token in a step
    that fills the engine's token budget with whole prompts (``k = budget // P`` chunks of
    P tokens, or one of the budget when P is longer: the matrix products at the efficiency
    the engine packs them to), so a lower bound where decode attention over long contexts
    adds to the work."""
    t = replica.traffic
    budget = replica.config.max_num_batched_tokens
    n = min(t.prompt_tokens, budget)
    k = max(1, budget // n)
    per_token = replica.steps.predict(0, 0.0, (Chunk(0, n),) * k).compute_s / (k * n)
    return min(1.0, cap.max_load * (t.prompt_tokens + t.output_tokens - 1) * per_token)


# --------------------------------------------------------------------------- all candidates


def sort_key(r: PlanResult):
    """Feasible first: fewest GPUs, then cost per hour (unknown last), then the most headroom."""
    if not r.feasible:
        return (1, 0, 0.0, 0.0)
    cost = r.cost_usd_per_hour if r.cost_usd_per_hour is not None else math.inf
    return (0, r.gpus, cost, -(r.max_requests_per_s_per_replica or 0) / r.tp)


def plan(
    model: ModelProfile,
    candidates: list[Candidate],
    traffic: Traffic,
    slos: SLOs,
    efficiency: Callable[[HardwareProfile], Efficiency | ResolvedEfficiency] | None,
    prices: dict[str, tuple[float, str]] | None = None,
    gpu_memory_utilization: float = DEFAULT_UTILIZATION,
    max_num_seqs: int | None = None,
    engine: str = DEFAULT_ENGINE,
    serving: ServingOf | None = None,
) -> list[PlanResult]:
    """Every candidate planned, best first; rejected ones last, in the order given.
    ``efficiency(gpu)``: the GPU's resolved efficiencies (:func:`serving_efficiency` says
    how the engine's adjustments apply). A setting or dtype no candidate could use is a
    usage error, raised before any. ``serving(gpu, weight_dtype)``, when given, supplies
    the efficiencies, engine configuration and their source instead (the CLI's and the
    Session's resolution: flags > a ``capcalc calibrate`` entry > engine defaults), and
    ``efficiency`` is not used."""
    engine = check_engine(engine)
    if serving is None and efficiency is None:
        raise CapcalcError("plan needs efficiency(gpu) or serving(gpu, weight_dtype)", parameter="efficiency")
    check_traffic(model, traffic, slos)
    if candidates:  # the settings are the same in every candidate's request
        check_request(fit_request(candidates[0], traffic, gpu_memory_utilization, max_num_seqs), model)
    prices = prices or {}
    results = [
        plan_candidate(
            model,
            cand,
            traffic,
            slos,
            efficiency(cand.gpu) if serving is None else None,
            prices.get(cand.gpu.name),
            gpu_memory_utilization,
            max_num_seqs,
            engine,
            serving,
        )
        for cand in candidates
    ]
    return sorted(results, key=sort_key)  # stable: rejected ones keep their order


def check_engine(engine: str) -> str:
    name = str(engine).strip().lower()
    if name not in ENGINES:
        raise CapcalcError(
            f"engine {excerpt(str(engine))} is not known: expected one of {', '.join(ENGINES)}",
            parameter="engine",
        )
    return name


def candidates(
    model: ModelProfile,
    gpus: Sequence[HardwareProfile],
    tps: Sequence[int] | None = None,
    weight_dtypes: Sequence[str] = ("auto",),
    kv_dtypes: Sequence[str] = ("auto",),
    deployment: Deployment | None = None,
) -> list[Candidate]:
    """Every combination of GPU, tp, weight dtype and KV dtype, in that order (the last
    fastest), each with ``deployment``'s other fields (compute dtype, group size, embedding
    quantisation). ``tps`` None: those of :data:`DEFAULT_TPS` valid for the model; a tp
    given that the model's heads do not divide into is a usage error."""
    base = deployment or Deployment()
    if tps is None:
        tps = [t for t in DEFAULT_TPS if t in valid_tp_degrees(model, max(DEFAULT_TPS))]
    else:
        tps = [check_tp(model, t) for t in tps]
    return [
        Candidate(g, replace(base, tp=t, weight_dtype=w, kv_dtype=k))
        for g in gpus
        for t in tps
        for w in (weight_dtypes or ("auto",))
        for k in (kv_dtypes or ("auto",))
    ]


def check_traffic(model: ModelProfile, traffic: Traffic, slos: SLOs) -> None:
    if not traffic.requests_per_s > 0:
        raise CapcalcError(
            f"requests_per_s must be positive, got {traffic.requests_per_s:g}", parameter="requests_per_s"
        )
    if traffic.prompt_tokens < 1:
        raise CapcalcError(
            f"prompt_tokens must be at least 1, got {traffic.prompt_tokens}", parameter="prompt_tokens"
        )
    if traffic.output_tokens < 1:
        raise CapcalcError(
            f"output_tokens must be at least 1, got {traffic.output_tokens}", parameter="output_tokens"
        )
    context = traffic.prompt_tokens + traffic.output_tokens
    if context > model.max_context:
        raise CapcalcError(
            f"prompt_tokens + output_tokens = {context:,} tokens exceeds {model.name}'s maximum context of "
            f"{model.max_context:,} tokens",
            parameter=("prompt_tokens", "output_tokens"),
        )
    for name, key, stats in SLO_METRICS:
        value, stat = getattr(slos, f"{key}_s"), getattr(slos, f"{key}_stat")
        if value is not None and not value > 0:
            raise CapcalcError(f"{key}_s must be positive, got {value:g} s", parameter=f"{key}_s")
        if stat not in stats:
            raise CapcalcError(
                f"{key}_stat {excerpt(str(stat))}: {name} has {', '.join(stats)}", parameter=f"{key}_s"
            )

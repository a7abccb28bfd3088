"""From traffic and SLOs to a GPU count and a cost: Little's law as a fixed point.

Traffic: ``R`` requests/s, each ``P`` prompt tokens and ``O`` output tokens. A
candidate is a GPU type, a tensor-parallel degree ``tp`` and a weight/KV dtype; a
replica is ``tp`` such GPUs serving one copy of the model (vLLM-style continuous
batching). ``n`` replicas share the load equally: ``lam = R / n`` requests/s each.

One replica, holding ``b`` requests at once (its batch), from ``latency``
(:func:`capcalc.perf.latency.predict_latency`) and ``fit`` (:func:`capcalc.serving.fit.fit`)::

    t_p       = prefill time of one prompt                         latency --batch 1: ttft_s
    step(b)   = mean decode step with b sequences, context P..P+O  latency --batch b: itl_s
    f         = lam x t_p                                          share of each second spent prefilling
    itl(b)    = step(b) / (1 - f)                                  decode only gets the rest of the time
    ttft(b)   = t_p + step(b - 1)                                  (step(0) = 0)
    e2e(b)    = ttft(b) + (O - 1) x itl(b)

Little's law closes the loop: the requests in flight equal the arrival rate times
the time each stays, ``b = lam x e2e(b)``. Latency grows with ``b``, so ``b`` is a
fixed point. We solve it the other way round: for each whole batch ``b`` the load
``lam(b)`` at which a replica holds exactly ``b`` requests is the smaller root of
``b = lam (A + B / (1 - lam t_p))`` with ``A = ttft(b)`` and ``B = (O - 1) step(b)``::

    A t_p lam^2 - (A + B + b t_p) lam + b = 0
    lam(b) = 2 b / ((A + B + b t_p) + sqrt((A + B + b t_p)^2 - 4 A t_p b))

A load ``lam`` runs at the batch ``b* = min{b : lam(b) >= lam}`` (rounded up to a
whole request: latencies are evaluated at ``b*``, a slight overestimate). The
batch is limited by memory, ``b <= floor(max_concurrency)`` of ``fit`` at
``max_model_len = P + O`` (every request's blocks counted at its full length, as
vLLM's "Maximum concurrency" line counts them), and by vLLM's ``max_num_seqs``;
at ``b*`` every SLO must hold. Both ``lam(b)`` and the latencies grow with ``b``,
so the largest load a replica carries, ``lam_max``, is found by bisection on
``b``; between two whole batches the ITL and E2E SLOs give ``lam`` in closed form
(``itl <= S`` is ``lam <= (1 - step(b) / S) / t_p``). Then::

    replicas = ceil(R / lam_max)          gpus = replicas x tp

The binding constraint is what stops ``lam_max`` growing: ``memory`` (the KV
cache is full), ``max_num_seqs`` (vLLM's scheduler limit), ``TTFT``, ``ITL`` or
``E2E`` (that SLO would break at the next batch), or ``compute`` when the batch
limit is reached with the GPU's arithmetic already at least
:data:`COMPUTE_SATURATION` busy (prefill share plus the decode steps' compute
time), so that more memory would add little.

Simplifications, stated because they matter:

* Prefill and decode share the GPU. The prefill time each second of traffic
  brings (``f = lam x t_p``) is counted as decode time lost, stretching every
  decode step by ``1 / (1 - f)``. A real scheduler (vLLM's chunked prefill)
  mixes prefill chunks into decode steps, and the two overlap partly: this is
  a first-order account, not a simulation.
* ``ttft`` is the prefill of the request's prompt in one step that also decodes
  the ``b - 1`` others. No queueing: requests arriving together, bursts and
  percentiles are not modelled, so a p95 SLO is compared with a mean. Leave
  headroom.
* Requests are uniform (P in, O out); contexts in the batch are spread evenly
  over ``P .. P + O``, which is what the mean decode step of ``latency`` averages.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from capcalc.core.errors import CapcalcError
from capcalc.core.records import flat_record
from capcalc.core.search import largest_true, smallest_true
from capcalc.core.units import format_bytes, format_duration
from capcalc.model.parallel import check_tp, valid_tp_degrees
from capcalc.perf.efficiency import Efficiency
from capcalc.perf.latency import LatencyResult, predict_latency
from capcalc.schema.deployment import Deployment
from capcalc.schema.profiles import HardwareProfile, ModelProfile
from capcalc.serving.fit import DEFAULT_UTILIZATION, FitRequest, check_request, fit, memory_of

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


@dataclass(frozen=True)
class Traffic:
    requests_per_s: float
    prompt_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class SLOs:
    """Latency targets in seconds; None means no target."""

    ttft_s: float | None = None
    itl_s: float | None = None
    e2e_s: float | None = None


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
    """One candidate's plan (or why it was rejected). Times in seconds, rates per second."""

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
    feasible: bool = False
    rejected_because: str | None = None
    replicas: int | None = None
    gpus: int | None = None
    batch_per_replica: int | None = None  # b*: the whole batch latencies are evaluated at
    concurrency_per_replica: float | None = None  # lam x e2e: Little's law's (fractional) requests in flight
    requests_per_s_per_replica: float | None = None
    max_requests_per_s_per_replica: float | None = None  # lam_max
    batch_at_max_load: int | None = None  # the batch a replica runs at lam_max
    load_fraction: float | None = None  # requests_per_s / (replicas x lam_max)
    ttft_s: float | None = None
    itl_s: float | None = None  # stretched by the prefill share
    e2e_s: float | None = None
    decode_step_s: float | None = None  # step(b*), before the prefill stretch
    prefill_s: float | None = None  # t_p: one prompt
    prefill_share: float | None = None  # f
    binding_constraint: str | None = None
    compute_busy_fraction: float | None = None  # at the batch limit (see COMPUTE_SATURATION)
    kv_capacity_requests: int | None = None  # floor(max_concurrency) at P + O tokens
    max_num_seqs: int | None = None
    kv_cache_bytes_per_gpu: float | None = None
    kv_bytes_used_per_gpu: float | None = None  # b* requests at their full P + O tokens
    weights_bytes_per_gpu: float | None = None
    output_tokens_per_s_per_gpu: float | None = None
    batch1_ttft_s: float | None = None  # one request alone: the best any load can do
    batch1_itl_s: float | None = None
    batch1_e2e_s: float | None = None
    price_per_gpu_hour_usd: float | None = None
    price_source: str | None = None
    cost_usd_per_hour: float | None = None
    cost_usd_per_million_output_tokens: float | None = None

    def record(self) -> dict:
        """The flat output record (``schema_version`` first), as the CLI's JSON prints it."""
        return flat_record(self)


# --------------------------------------------------------------------------- the fixed point


def littles_rate(batch: float, ttft_s: float, step_s: float, output_tokens: int, prefill_s: float) -> float:
    """The load (requests/s) at which a replica holds ``batch`` requests: the smaller root
    of ``batch = lam (ttft + (O - 1) step / (1 - lam t_p))`` (module docstring)."""
    a, b_, t = ttft_s, (output_tokens - 1) * step_s, prefill_s
    s = a + b_ + batch * t
    return 2.0 * batch / (s + math.sqrt(max(s * s - 4.0 * a * t * batch, 0.0)))


class Replica:
    """One candidate's replica under the model of the module docstring; ``latency(b)``
    results are cached, since the searches revisit batches."""

    def __init__(self, latency: Callable[[int], LatencyResult], traffic: Traffic, slos: SLOs):
        self._latency = latency
        self._cache: dict[int, LatencyResult] = {}
        self.traffic = traffic
        self.slos = slos
        self.prefill_s = self.at(1).ttft_s

    def at(self, batch: int) -> LatencyResult:
        if batch not in self._cache:
            self._cache[batch] = self._latency(batch)
        return self._cache[batch]

    def step(self, batch: int) -> float:
        return self.at(batch).itl_s if batch >= 1 else 0.0

    def ttft(self, batch: int) -> float:
        return self.prefill_s + self.step(batch - 1)

    def rate(self, batch: int) -> float:
        """lam(b)."""
        return littles_rate(
            batch, self.ttft(batch), self.step(batch), self.traffic.output_tokens, self.prefill_s
        )

    def latencies(self, batch: int, lam: float) -> tuple[float, float, float]:
        """(ttft, itl, e2e) at batch ``batch`` and load ``lam``."""
        share = lam * self.prefill_s
        itl = self.step(batch) / (1.0 - share) if share < 1 else math.inf
        ttft = self.ttft(batch)
        decode = (self.traffic.output_tokens - 1) * itl if self.traffic.output_tokens > 1 else 0.0
        return ttft, itl, ttft + decode

    def violations(self, batch: int, lam: float) -> dict[str, float]:
        """SLOs broken at (batch, lam): name -> predicted / target."""
        out = {}
        for name, value, slo in zip(
            ("TTFT", "ITL", "E2E"), self.latencies(batch, lam), self._slo_values(), strict=True
        ):
            if slo is not None and value > slo:
                out[name] = value / slo
        return out

    def _slo_values(self) -> tuple[float | None, float | None, float | None]:
        return self.slos.ttft_s, self.slos.itl_s, self.slos.e2e_s

    def max_load_in(self, batch: int, low: float) -> tuple[float, str | None]:
        """The largest load in ``(low, rate(batch)]`` whose operating batch is ``batch``
        and that meets every SLO, with the SLO that stops it (None: none does)."""
        high = self.rate(batch)
        caps: dict[str, float] = {}
        ttft, step = self.ttft(batch), self.step(batch)
        if self.slos.ttft_s is not None and ttft > self.slos.ttft_s:
            caps["TTFT"] = low
        if self.slos.itl_s is not None:
            caps["ITL"] = (1.0 - step / self.slos.itl_s) / self.prefill_s
        if self.slos.e2e_s is not None:
            room = self.slos.e2e_s - ttft
            caps["E2E"] = (
                (1.0 - (self.traffic.output_tokens - 1) * step / room) / self.prefill_s if room > 0 else low
            )
        binding = min(caps, key=lambda k: caps[k]) if caps else None
        if binding is None or caps[binding] >= high:
            return high, None
        return max(low, caps[binding]), binding

    def operating_batch(self, lam: float, limit: int) -> int:
        """b* = the smallest batch whose lam(b) reaches ``lam`` (bisection; lam(b) grows with b)."""
        return smallest_true(lambda b: self.rate(b) >= lam * (1 - 1e-12), 1, limit)


@dataclass(frozen=True)
class Capacity:
    max_load: float  # lam_max, requests/s per replica
    batch: int  # the batch at lam_max
    batch_limit: int  # min(KV capacity, max_num_seqs)
    binding: str


def replica_capacity(replica: Replica, kv_requests: int, max_num_seqs: int) -> Capacity:
    """lam_max and what binds it (module docstring). Assumes ``replica`` meets every
    SLO at batch 1 with no load."""
    limit = min(kv_requests, max_num_seqs)

    def ok(b: int) -> bool:
        return not replica.violations(b, replica.rate(b))

    best = largest_true(ok, 1, limit)  # 0 when not even batch 1 meets the SLOs
    if best == limit:
        binding = "memory" if kv_requests <= max_num_seqs else "max_num_seqs"
        return Capacity(replica.rate(limit), limit, limit, binding)
    low = replica.rate(best) if best >= 1 else 0.0
    load, binding = replica.max_load_in(best + 1, low)
    if binding is None:  # rounding at the boundary: name the SLO broken at the next batch's own load
        broken = replica.violations(best + 1, replica.rate(best + 1))
        binding = max(broken, key=lambda k: broken[k]) if broken else "ITL"
    if load <= low and best >= 1:  # the next batch adds nothing: lam_max is reached at `best`
        return Capacity(low, best, limit, binding)
    return Capacity(load, best + 1, limit, binding)


# --------------------------------------------------------------------------- one candidate


def _latency_fn(model: ModelProfile, cand: Candidate, traffic: Traffic, efficiency: Efficiency):
    def run(batch: int) -> LatencyResult:
        return predict_latency(
            model,
            cand.gpu,
            prompt_tokens=traffic.prompt_tokens,
            output_tokens=traffic.output_tokens,
            batch=batch,
            deployment=cand.deployment,
            efficiency=efficiency,
        )

    return run


def fit_request(
    cand: Candidate,
    traffic: Traffic,
    gpu_memory_utilization: float = DEFAULT_UTILIZATION,
    max_num_seqs: int | None = None,
) -> FitRequest:
    """What ``fit`` is asked for one candidate: every request at its full P + O tokens."""
    memory, source = memory_of(cand.gpu)
    return FitRequest(
        memory_bytes=memory,
        memory_source=source,
        gpu=cand.gpu.name,
        deployment=cand.deployment,
        gpu_memory_utilization=gpu_memory_utilization,
        max_model_len=traffic.prompt_tokens + traffic.output_tokens,
        max_num_seqs=max_num_seqs,
    )


def plan_candidate(
    model: ModelProfile,
    cand: Candidate,
    traffic: Traffic,
    slos: SLOs,
    efficiency: Efficiency,
    price: tuple[float, str] | None = None,
    gpu_memory_utilization: float = DEFAULT_UTILIZATION,
    max_num_seqs: int | None = None,
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
        output_tokens_per_s=traffic.requests_per_s * traffic.output_tokens,
        price_per_gpu_hour_usd=rate_price,
        price_source=price_source,
    )
    try:  # the one per-candidate error: a tp the model's heads do not divide into
        check_tp(model, cand.tp)
    except CapcalcError as exc:
        return replace(base, rejected_because=exc.message)
    capacity = fit(model, fit_request(cand, traffic, gpu_memory_utilization, max_num_seqs), suggest=False)
    base = replace(
        base,
        weight_dtype=capacity.weight_dtype,
        kv_dtype=capacity.kv_dtype,
        kv_capacity_requests=math.floor(capacity.max_concurrency),
        max_num_seqs=capacity.max_num_seqs,
        kv_cache_bytes_per_gpu=capacity.kv_cache_bytes_per_gpu,
        weights_bytes_per_gpu=capacity.weights_bytes_per_gpu,
    )
    if not capacity.weights_fit:
        return replace(
            base,
            rejected_because=f"weights do not fit: {format_bytes(capacity.weights_bytes_per_gpu)} per GPU; with "
            f"activations and overhead, {format_bytes(capacity.weights_shortfall_bytes)} more than vLLM may use",
            binding_constraint="memory",
        )
    if base.kv_capacity_requests < 1:
        return replace(
            base,
            rejected_because=f"KV cache ({format_bytes(max(capacity.kv_cache_bytes_per_gpu, 0))} per GPU) holds "
            f"no request of {context:,} tokens (needs {format_bytes(capacity.kv_needed_bytes)})",
            binding_constraint="memory",
        )
    try:
        replica = Replica(_latency_fn(model, cand, traffic, efficiency), traffic, slos)
    except CapcalcError as exc:
        return replace(base, rejected_because=exc.message)
    ttft1, itl1, e2e1 = replica.latencies(1, 0.0)
    base = replace(
        base, batch1_ttft_s=ttft1, batch1_itl_s=itl1, batch1_e2e_s=e2e1, prefill_s=replica.prefill_s
    )
    broken = replica.violations(1, 0.0)
    if broken:
        values = {"TTFT": (ttft1, slos.ttft_s), "ITL": (itl1, slos.itl_s), "E2E": (e2e1, slos.e2e_s)}
        name = max(broken, key=lambda k: broken[k])
        value, target = values[name]
        return replace(
            base,
            rejected_because=f"{name} SLO unreachable even at batch 1: {name} {format_duration(value)} > "
            f"{format_duration(target)}",
            binding_constraint=name,
        )
    cap = replica_capacity(replica, base.kv_capacity_requests, capacity.max_num_seqs)
    if not cap.max_load > 0:
        return replace(
            base,
            rejected_because=f"{cap.binding} SLO is met only with no load",
            binding_constraint=cap.binding,
        )
    replicas = max(1, math.ceil(traffic.requests_per_s / cap.max_load * (1 - 1e-12)))
    lam = traffic.requests_per_s / replicas
    batch = replica.operating_batch(lam, cap.batch)  # lam <= lam_max <= lam(cap.batch)
    ttft, itl, e2e = replica.latencies(batch, lam)
    busy = _compute_busy(replica, cap) if cap.binding in ("memory", "max_num_seqs") else None
    binding = "compute" if busy is not None and busy >= COMPUTE_SATURATION else cap.binding
    gpus = replicas * cand.tp
    cost = rate_price * gpus if rate_price is not None else None
    tokens_per_hour = traffic.requests_per_s * traffic.output_tokens * 3600.0
    return replace(
        base,
        feasible=True,
        replicas=replicas,
        gpus=gpus,
        batch_per_replica=batch,
        concurrency_per_replica=lam * e2e,
        requests_per_s_per_replica=lam,
        max_requests_per_s_per_replica=cap.max_load,
        batch_at_max_load=cap.batch,
        load_fraction=traffic.requests_per_s / (replicas * cap.max_load),
        ttft_s=ttft,
        itl_s=itl,
        e2e_s=e2e,
        decode_step_s=replica.step(batch),
        prefill_share=lam * replica.prefill_s,
        binding_constraint=binding,
        compute_busy_fraction=busy,
        # each request holds the blocks fit counts for one at P + O tokens (sliding windows, block rounding)
        kv_bytes_used_per_gpu=batch * capacity.kv_needed_bytes,
        output_tokens_per_s_per_gpu=traffic.requests_per_s * traffic.output_tokens / gpus,
        cost_usd_per_hour=cost,
        cost_usd_per_million_output_tokens=cost / tokens_per_hour * 1e6 if cost is not None else None,
    )


def _compute_busy(replica: Replica, cap: Capacity) -> float:
    """Share of time the GPU's arithmetic is busy at the batch limit: the prefill share
    at its compute rate plus the decode steps' compute time."""
    share = cap.max_load * replica.prefill_s
    one = replica.at(1)
    at = replica.at(cap.batch_limit)
    prefill_busy = min(one.prefill_compute_s / one.ttft_s, 1.0)
    decode_busy = min(at.decode_compute_s / at.itl_s, 1.0)
    return share * prefill_busy + (1 - share) * decode_busy


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
    efficiency: Callable[[HardwareProfile], Efficiency],
    prices: dict[str, tuple[float, str]] | None = None,
    gpu_memory_utilization: float = DEFAULT_UTILIZATION,
    max_num_seqs: int | None = None,
) -> list[PlanResult]:
    """Every candidate planned, best first; rejected ones last, in the order given.
    A setting or dtype no candidate could use is a usage error, raised before any."""
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
            efficiency(cand.gpu),
            prices.get(cand.gpu.name),
            gpu_memory_utilization,
            max_num_seqs,
        )
        for cand in candidates
    ]
    return sorted(results, key=sort_key)  # stable: rejected ones keep their order


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
    for name in ("ttft_s", "itl_s", "e2e_s"):
        value = getattr(slos, name)
        if value is not None and not value > 0:
            raise CapcalcError(f"{name} must be positive, got {value:g} s", parameter=name)

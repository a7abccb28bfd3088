"""One serving replica under load: a discrete-event simulation of the engine's scheduler.

Why a simulation and not an analytic fixed point: a served benchmark's TTFT is set by
*where* a request lands among the engine's steps (how many prompts are ahead of it in
the chunk budget, whether a prefill step stalls the decodes, whether KV admission makes
it wait), and closed-loop clients with equal lengths fall into waves that an average
cannot see. Simulating the scheduler step by step reproduces those, with the step costs
of :class:`capcalc.serving.stepmodel.MixedStepModel` (the existing step model, priced for
the mixed batch). It stays fast because

* requests that finish their prefill in the same step decode in lock step, as one
  cohort; the decode contexts of all cohorts sum to ``K + d x g`` (d decoding sequences,
  g the decode step counter), updated only when a cohort joins or leaves;
* between events (a cohort finishing, an arrival that can be admitted, the KV cache
  filling) every step is a pure decode step whose time is max(compute, memory) + fixed
  costs, each affine in the step index: the run is summed in closed form (split where
  compute overtakes memory) instead of step by step.

Scheduler (per :class:`capcalc.serving.engines.EngineConfig`; sources there):

* ``mixed_batches`` (vLLM v1, TensorRT-LLM): each step runs every decode (1 token each),
  then the running partial prefills, then admits waiting requests FCFS, each taking
  ``min(remaining prompt, budget left)`` of the ``max_num_batched_tokens`` budget
  (a whole prompt or nothing when ``chunked_prefill`` is off);
* not mixed (SGLang default): a step with prefill work to do runs only prefill chunks
  (up to the budget) and the decodes wait; otherwise a decode step.
* admission: at most ``max_num_seqs`` running; KV ``on_demand`` takes a request's blocks
  as its tokens are computed and, when a decode step would overflow the cache, preempts
  the most recently admitted requests, which go back to the head of the queue and are
  recomputed (prompt + tokens generated so far) -- vLLM's recompute preemption; KV
  ``reserve`` admits only when prompt + ``reserve_output_fraction`` x output fit.
* each request pays ``frontend_s`` (HTTP, tokenisation) between being sent and reaching the
  scheduler, stretched to ``frontend_s / (1 - busy)`` where the frontend is busy a share
  ``busy`` streaming the running requests' tokens (``stream_token_host_s`` x the decodes
  running when the request would have reached the scheduler x the tokens/s each streamed in
  the last step that decoded); the first token and the last are seen by the client when the
  step that makes them ends.

Workloads: closed loop (``concurrency`` C clients, each sending its next request when
the last completes, as ``vllm bench serve --max-concurrency C`` with many prompts) or
open loop (``rate_per_s``: Poisson arrivals from a seeded generator, so deterministic).
Closed loop measures every request from the opening burst on (all C clients send at
once), as a benchmark run does; ``warmup_requests`` skips some for a steady state.

Metrics are those of ``vllm bench serve``: TTFT = first token - send; TPOT per request =
(e2e - ttft) / (output - 1), averaged over requests; ITL = mean gap between consecutive
tokens of a request, pooled over all gaps; E2E = last token - send. In closed loop each
client is always inside a request, so C = requests_per_s x mean e2e (Little's law).

Ignored: prefix caching (benchmarks send random prompts), speculative decoding, the
spread of request lengths (every request has the workload's P and O), block rounding of
the KV cache (tokens are counted, the capacity is num_blocks x block_size), CPU work
that overlaps the GPU, and pipeline parallelism (one stage).
"""

from __future__ import annotations

import bisect
import heapq
import math
import operator
import random
from collections import deque
from dataclasses import dataclass, field, replace

from capcalc.core.errors import CapcalcError
from capcalc.schema.deployment import Deployment
from capcalc.serving.engines import EngineConfig, sglang_mem_fraction_static
from capcalc.serving.stepmodel import Chunk, MixedStepModel

LIMITS = ("kv_capacity", "max_num_seqs", "none")
#: steps are timed per kernel class (capcalc.perf.latency.predict_step, kernel_roofline)
KERNEL_ROOFLINE = True
#: closed-loop requests per client where the workload does not say: ``vllm bench serve`` and
#: aiperf measure every request, the opening burst of C simultaneous prompts included, and
#: served-benchmark suites send a few requests per client (InferenceX: 10 x C, which its rows
#: are replayed with; served_dev's rows from a harness it does not name are met as well at 5
#: as at 10, see docs/serving.md)
REQUESTS_PER_CLIENT = 5
#: the frontend's busy share (EngineConfig.stream_token_host_s x tokens/s streamed) is held
#: below this: past it the frontend would be saturated, streaming slower than the GPU decodes,
#: which the model does not follow (a request's frontend time at most 10 x frontend_s)
MAX_FRONTEND_BUSY = 0.9
#: a limit "binds" when admission waited on it for at least this share of the measured time
BINDING_SHARE = 0.05
#: most scheduling events (engine steps or runs of pure decode steps) one simulation takes:
#: 10-50 us each on one core, so 10-50 s at most. The heaviest answers that mean something
#: stay well under it (2,048 clients of an 8B at 8k/8k: 0.67 M); runs past it are prompts
#: chunked a token at a time, or a cache that preempts for ever
MAX_EVENTS = 1_000_000


@dataclass(frozen=True)
class Workload:
    """Requests of ``prompt_tokens`` in / ``output_tokens`` out, closed or open loop."""

    prompt_tokens: int
    output_tokens: int
    concurrency: int | None = None
    rate_per_s: float | None = None
    #: measured requests (default: closed loop REQUESTS_PER_CLIENT x C, at least 10; open loop 400)
    num_requests: int | None = None
    #: requests simulated before measuring (default: closed loop 0, as a benchmark counts its
    #: opening burst; open loop num_requests / 10)
    warmup_requests: int | None = None
    seed: int = 0
    #: relative half-width of the spread of output lengths: request i asks for
    #: round(O x (1 + s x (2 u_i - 1))) tokens, u_i evenly spread over (0, 1) (mean O,
    #: deterministic); 0: every request exactly O; None: the engine's EngineConfig.output_spread
    output_spread: float | None = None
    #: relative half-width of the spread of prompt lengths, as ``output_spread`` (over an
    #: independent sequence, so long prompts are not paired with long outputs); 0: every
    #: prompt exactly P
    prompt_spread: float = 0.0

    def __post_init__(self):
        if (self.concurrency is None) == (self.rate_per_s is None):
            raise CapcalcError("give exactly one of --concurrency and --rps")
        if self.concurrency is not None and self.concurrency < 1:
            raise CapcalcError(f"--concurrency must be at least 1, got {self.concurrency}")
        if self.rate_per_s is not None and not self.rate_per_s > 0:
            raise CapcalcError(f"--rps must be positive, got {self.rate_per_s}")
        if self.prompt_tokens < 1 or self.output_tokens < 1:
            raise CapcalcError("prompt and output lengths must be at least 1 token")
        for name in ("output_spread", "prompt_spread"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < 1:
                raise CapcalcError(f"{name} must be in [0, 1), got {value}")

    @property
    def measured(self) -> int:
        if self.num_requests is not None:
            return self.num_requests
        return max(REQUESTS_PER_CLIENT * self.concurrency, 10) if self.concurrency else 400

    @property
    def warmup(self) -> int:
        if self.warmup_requests is not None:
            return self.warmup_requests
        return 0 if self.concurrency else self.measured // 10


@dataclass(frozen=True)
class ServingResult:
    """Means and percentiles over the measured requests (seconds unless named)."""

    engine: str
    concurrency: int | None
    rate_per_s: float | None
    prompt_tokens: int
    output_tokens: int
    gpus: int
    ttft_s: float
    tpot_s: float
    itl_s: float
    e2e_s: float
    ttft_p50_s: float
    ttft_p90_s: float
    ttft_p99_s: float
    tpot_p50_s: float
    tpot_p90_s: float
    tpot_p99_s: float
    itl_p50_s: float
    itl_p90_s: float
    itl_p99_s: float
    e2e_p50_s: float
    e2e_p90_s: float
    e2e_p99_s: float
    requests_per_s: float
    output_tokens_per_s: float
    output_tokens_per_s_per_gpu: float
    output_tokens_per_s_per_user: float
    running_batch: float  # time-weighted mean of requests admitted (decoding or prefilling)
    queue_s: float  # mean time from reaching the scheduler to its first scheduled chunk
    preemptions: int
    binding_limit: str  # kv_capacity | max_num_seqs | none
    kv_capacity_tokens: int
    max_num_seqs: int
    max_num_batched_tokens: int
    frontend_s: float
    steps: int  # engine steps simulated
    max_running: int = 0  # the most requests admitted at once (decoding or prefilling)

    def as_record(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


@dataclass(eq=False)
class _Req:
    idx: int
    sent: float
    arrival: float
    target: int  # prompt tokens to compute before the next token (P, or P + j on recompute)
    out_left: int  # tokens still to produce (the next one comes from the prefill)
    computed: int = 0
    first_token: float | None = None
    finish: float | None = None
    scheduled: float | None = None
    generated: int = 0
    order: int = 0  # admission order
    reserved: float = 0.0  # KV tokens reserved at admission ('reserve')
    preempted_at: float = 0.0  # when it was last preempted (its last token before the recompute)
    osl: int = 0  # output tokens asked for
    frontend_done: bool = False  # its frontend time under the streaming load has been charged


@dataclass(eq=False)
class _Cohort:
    members: list[_Req]
    g0: int  # decode step index of its first decode
    base: int  # context before the first decode (prompt tokens computed)
    end_g: int  # decode step index of its last decode
    order: int = 0  # admission order of its latest member
    seq: int = 0  # creation order

    @property
    def n(self) -> int:
        return len(self.members)


@dataclass
class _State:
    t: float = 0.0
    g: int = 0  # decode steps done
    d: int = 0  # decoding sequences
    k_sum: float = 0.0  # sum over cohorts of n x (base + 1 - g0): contexts sum to k_sum + d x g
    #: cohorts in creation order (a dict: O(1) removal), and two indexes over them: a heap
    #: of (end_g, creation seq) for the next to finish, and a list sorted by admission order
    #: for preemption (the most recently admitted first)
    cohorts: dict[int, _Cohort] = field(default_factory=dict)
    ends: list = field(default_factory=list)
    by_order: list[_Cohort] = field(default_factory=list)
    cohort_seq: int = 0
    prefilling: list[_Req] = field(default_factory=list)
    waiting: deque = field(default_factory=deque)
    reserved: float = 0.0  # KV tokens held by 'reserve' admission
    admit_order: int = 0
    prefilled: int = 0  # prompt tokens computed by the requests in prefilling
    #: EngineConfig.recv_interval: decode steps since the scheduler last took new requests,
    #: and when it last did (arrivals up to then are in ``waiting``)
    since_poll: int = 0
    last_poll_t: float = 0.0
    #: EngineConfig.batch_wait_iters: consecutive steps that held their prompts back
    batch_waited: int = 0

    def add_cohort(self, c: _Cohort) -> None:
        c.seq = self.cohort_seq
        self.cohort_seq += 1
        self.cohorts[c.seq] = c
        heapq.heappush(self.ends, (c.end_g, c.seq))
        bisect.insort(self.by_order, c, key=_order)

    def drop_cohort(self, c: _Cohort) -> None:
        del self.cohorts[c.seq]  # its heap entry is skipped when it surfaces
        if self.by_order[-1] is c:  # the latest admitted (preemption): no search
            self.by_order.pop()
            return
        i = bisect.bisect_left(self.by_order, c.order, key=_order)
        while self.by_order[i] is not c:  # orders are unique; this only guards the invariant
            i += 1
        del self.by_order[i]

    def next_end(self) -> int:
        """The smallest end_g of a live cohort."""
        while self.ends[0][1] not in self.cohorts:
            heapq.heappop(self.ends)
        return self.ends[0][0]

    def pop_ended(self, g: int) -> list[_Cohort]:
        """Remove and return the cohorts whose last decode is before step ``g``, in
        creation order."""
        out = []
        while self.ends and self.ends[0][0] < g:
            _, seq = heapq.heappop(self.ends)
            c = self.cohorts.get(seq)
            if c is not None:
                out.append(c)
        if len(out) > 1:
            out.sort(key=lambda c: c.seq)
        for c in out:
            self.drop_cohort(c)
        return out


_order = operator.attrgetter("order")


@dataclass(frozen=True)
class KVPool:
    """The KV cache as the simulation counts it: a request at context ``ctx`` holds
    ``per_token x ctx + per_request`` units of ``capacity``.

    A model with one kind of layer has a unit of one token (per_token 1, per_request 0,
    capacity the tokens of the cache). vLLM's hybrid allocator shares one pool of
    ``num_blocks`` pages among the groups (:func:`capcalc.serving.fit.fit`): a request holds
    ``cdiv(ctx, block)`` pages in each of the n full-attention groups, and in every other
    group (sliding window, chunked-local, recurrent state, cross-attention) the pages
    :meth:`capcalc.model.layers.LayerSpec.blocks_per_request` gives at ``max_model_len``,
    B in all, whatever its length. In units of block / n tokens that is ``ctx + B x block / n``
    of ``num_blocks x block / n``; at ctx = max_model_len a request holds fit's
    ``blocks_per_request``, so the pool admits fit's ``max_concurrency`` requests. Without a
    full-attention group the unit is a page (per_token 0)."""

    capacity: float
    per_token: float = 1.0
    per_request: float = 0.0


class Simulation:
    """Simulate ``workload`` on one replica; see the module docstring. ``kv`` is the KV
    cache: a :class:`KVPool`, or a number of tokens (each request holding its context)."""

    def __init__(
        self,
        steps: MixedStepModel,
        config: EngineConfig,
        kv_capacity_tokens: int | KVPool,
        gpus: int = 1,
    ):
        pool = kv_capacity_tokens if isinstance(kv_capacity_tokens, KVPool) else KVPool(kv_capacity_tokens)
        if pool.capacity < 1 or pool.capacity < pool.per_token + pool.per_request:
            raise CapcalcError("the KV cache holds no token: the model does not fit")
        self.sm, self.cfg, self.gpus = steps, config, gpus
        self.cap, self.kv_w, self.kv_fixed = pool.capacity, pool.per_token, pool.per_request
        self.pool = pool
        self._reserve = config.admission == "reserve"  # read at every admission check

    @property
    def kv_tokens(self) -> int:
        """The capacity as reported: tokens (of each full-attention group), or pages."""
        tokens = getattr(self.pool, "tokens", None)
        return tokens if tokens is not None else int(self.cap)

    # ------------------------------------------------------------------ KV accounting

    def _kv_used(self, s: _State) -> float:
        if self._reserve:
            return s.reserved
        decoding = s.k_sum + s.d * s.g  # each decode holds its context at the next step
        used = self.kv_w * (decoding + s.prefilled)
        if self.kv_fixed:
            used += self.kv_fixed * (s.d + len(s.prefilling))
        return used

    def _kv_need(self, r: _Req, tokens: int) -> float:
        if self._reserve:
            tokens = r.target + math.ceil(self.cfg.reserve_output_fraction * max(r.out_left - 1, 0))
        return self.kv_w * tokens + self.kv_fixed

    # ------------------------------------------------------------------ the run

    def run(self, w: Workload) -> ServingResult:
        cfg = self.cfg
        total = w.warmup + w.measured
        s = _State()
        arrivals: list[tuple[float, int, _Req]] = []  # heap of (arrival, idx, req)
        reqs: list[_Req] = []
        rng = random.Random(w.seed)
        token_rate = 0.0  # tokens/s each decode streamed in the last step that decoded
        host = cfg.stream_token_host_s
        interval = cfg.recv_interval

        def send(at: float) -> None:
            # closed loop keeps every client busy past the measured requests, so that the
            # last measured ones run under the same load as the first
            if w.rate_per_s is not None and len(reqs) >= total:
                return
            i = len(reqs)
            r = _Req(i, at, at + cfg.frontend_s, _prompt_len(w, i), _output_len(w, i, cfg.output_spread))
            r.osl = r.out_left
            reqs.append(r)
            heapq.heappush(arrivals, (r.arrival, r.idx, r))

        if w.concurrency:
            for _ in range(w.concurrency):
                send(0.0)
        else:
            at = 0.0
            for _ in range(total):
                at += rng.expovariate(w.rate_per_s)
                send(at)

        done = 0
        steps = 0
        preemptions = 0
        busy_area = 0.0  # integral of running requests over measured time
        blocked = {"kv_capacity": 0.0, "max_num_seqs": 0.0}
        window_start = None
        measured_done = 0
        peak = 0
        gaps: list[tuple[float, float, float]] = []  # inter-token gaps: (shortest, longest, count)
        stall = 0.0  # time the decodes waited on prefill-only steps since their last token

        def finish(r: _Req, at: float) -> None:
            nonlocal done, measured_done
            r.finish = at
            done += 1
            s.reserved -= r.reserved
            if w.warmup <= r.idx < total:
                measured_done += 1
            if w.concurrency:
                send(at)

        def running() -> int:
            return s.d + len(s.prefilling)

        if least_events(w, cfg.max_num_batched_tokens) > MAX_EVENTS:
            raise _too_many_events(w)
        events = 0
        while measured_done < w.measured:
            events += 1
            if events > MAX_EVENTS:
                raise _too_many_events(w)
            # the scheduler sees the requests that reached it by its last poll (every step
            # unless EngineConfig.recv_interval says otherwise)
            seen_until = s.t if interval == 1 else s.last_poll_t
            while arrivals and arrivals[0][0] <= s.t + 1e-15:
                r = arrivals[0][2]
                if not r.frontend_done and host:
                    # the frontend shares its process with the tokens it streams for the decodes
                    # running now: its work for this request takes frontend_s / (1 - busy)
                    r.frontend_done = True
                    busy = min(host * s.d * token_rate, MAX_FRONTEND_BUSY)
                    if busy > 0:
                        heapq.heappop(arrivals)
                        r.arrival += cfg.frontend_s * busy / (1 - busy)
                        heapq.heappush(arrivals, (r.arrival, r.idx, r))
                        continue
                if r.arrival > seen_until + 1e-15:
                    break
                heapq.heappop(arrivals)
                s.waiting.append(r)
            if not s.d and not s.prefilling and not s.waiting:
                if not arrivals:
                    raise CapcalcError("simulation ran out of requests")  # cannot happen
                # an idle scheduler polls at once (its idle loop counts toward the interval)
                s.t = s.last_poll_t = max(s.t, arrivals[0][0])
                s.since_poll = 0
                continue
            if window_start is None and len(reqs) > w.warmup and reqs[w.warmup].arrival <= s.t:
                window_start = reqs[w.warmup].sent

            # ---------------------------------------------------------- schedule one step
            budget = cfg.max_num_batched_tokens
            chunks: list[tuple[_Req, int]] = []
            prefill_only = not cfg.mixed_batches and (s.prefilling or self._admissible(s, budget, running()))
            decodes = 0 if prefill_only else s.d
            budget -= decodes
            for r in s.prefilling:
                if budget <= 0:
                    break
                take = min(r.target - r.computed, budget)
                chunks.append((r, take))
                budget -= take
            chunk_tokens = cfg.max_num_batched_tokens - decodes - budget
            why_blocked = None
            admitted: list[tuple[_Req, bool]] = []  # this step's admissions (first time scheduled?)
            while s.waiting and budget > 0:
                r = s.waiting[0]
                why_blocked = self._head_blocked(s, budget, chunk_tokens, decodes)
                if why_blocked:
                    break
                take = min(r.target, budget)
                need = self._kv_need(r, take)
                s.waiting.popleft()
                if cfg.admission == "reserve":
                    s.reserved += need
                    r.reserved = need
                s.admit_order += 1
                r.order = s.admit_order
                admitted.append((r, r.scheduled is None))
                if r.scheduled is None:
                    r.scheduled = s.t
                s.prefilling.append(r)
                chunks.append((r, take))
                budget -= take
                chunk_tokens += take
            if admitted and decodes and self._held_for_batch(s, decodes + chunk_tokens):
                self._release(s, admitted)
                del chunks[len(chunks) - len(admitted) :]
                why_blocked = None  # the head is admissible, only held: decode one step at a time

            if not chunks and decodes:
                # a run of pure decode steps until the next event
                k = self._decode_run_length(s, arrivals, why_blocked)
                if cfg.admission == "on_demand":
                    room = self.cap - self._kv_used(s)  # after this step's writes
                    if room < 0:  # the cache is full: preempt the latest admitted until it fits
                        while room < 0:
                            preemptions += self._preempt(s, -room)
                            room = self.cap - self._kv_used(s)
                        if not s.d:  # every decode preempted: schedule again
                            continue
                        # vLLM v1 admits no waiting request in a step that preempted: this step
                        # runs the decodes left, one step when the next might admit the queue's
                        # head, the whole run when the head stays blocked until a finish
                        why_blocked = self._rescheduled_blocked(s)
                        if why_blocked is None:
                            k, why_blocked = 1, "kv_capacity"  # the queue waits on the cache
                        else:
                            k = self._decode_run_length(s, arrivals, why_blocked)
                    if self.kv_w:  # each decode step adds d x per_token
                        k = max(1, min(k, int(room // (s.d * self.kv_w)) + 1))
                lines = self._run_lines(s)
                k = self._limit_by_arrival(s, k, arrivals, why_blocked, lines)
                dt = self._decode_run_time(s, k, lines)
                if interval > 1:
                    self._count_polls(s, k, lines, dt)
                n_run = running()
                if window_start is not None:
                    self._run_gaps(k, stall, gaps, lines, s.d)
                stall = 0.0
            elif chunks:
                k = 1
                ctx_sum = s.k_sum + s.d * s.g if decodes else 0.0
                step_s = self.sm.step_time_s(decodes, ctx_sum, tuple(Chunk(r.computed, c) for r, c in chunks))
                n_run = running()
                dt = step_s + cfg.seq_step_overhead_s * (decodes + len(chunks))
                # a step with prefill work weighs past any interval: the scheduler polls next
                s.since_poll, s.last_poll_t = 0, s.t + dt
                if decodes:
                    if window_start is not None:
                        gaps.append((stall + dt, stall + dt, float(decodes)))
                    stall = 0.0
                elif s.d:
                    stall += dt
            else:  # nothing runnable (admission blocked with nothing running cannot happen)
                raise CapcalcError("the KV cache cannot hold one request of this workload")

            peak = max(peak, n_run)
            if decodes and dt > 0:
                token_rate = k / dt
            t_end = s.t + dt
            if window_start is not None:
                lo = max(s.t, window_start)
                if t_end > lo:
                    busy_area += n_run * (t_end - lo)
                    if why_blocked in blocked and s.waiting:
                        blocked[why_blocked] += t_end - lo
            s.t = t_end
            steps += k
            if decodes:
                s.g += k
                # cohorts whose last decode was in this run finish
                for c in s.pop_ended(s.g):
                    s.d -= c.n
                    s.k_sum -= c.n * (c.base + 1 - c.g0)
                    for r in c.members:
                        r.generated += c.end_g - c.g0 + 1
                        finish(r, t_end)
            if chunks:
                new: dict[tuple[int, int], list[_Req]] = {}
                for r, c in chunks:
                    r.computed += c
                    s.prefilled += c
                    if r.computed >= r.target:
                        s.prefilling.remove(r)
                        s.prefilled -= r.computed
                        if r.first_token is None:
                            r.first_token = t_end
                        elif window_start is not None:  # a recompute: the gap since its last token
                            gaps.append((t_end - r.preempted_at, t_end - r.preempted_at, 1.0))
                        r.generated += 1
                        r.out_left -= 1
                        if r.out_left <= 0:
                            finish(r, t_end)
                        else:
                            new.setdefault((r.target, r.out_left), []).append(r)
                for (base, left), members in new.items():
                    c = _Cohort(members, s.g, base, s.g + left - 1, max(m.order for m in members))
                    s.add_cohort(c)
                    s.d += c.n
                    s.k_sum += c.n * (base + 1 - s.g)

        out = self._result(w, reqs, steps, preemptions, busy_area, blocked, window_start, total)
        p50, p90, p99 = _mixture_pcts(gaps, (50, 90, 99))
        return replace(out, max_running=peak, itl_p50_s=p50, itl_p90_s=p90, itl_p99_s=p99)

    # ------------------------------------------------------------------ helpers

    def _head_blocked(self, s: _State, budget: int, chunk_tokens: int, decodes: int) -> str | None:
        """Why the queue's head cannot be admitted into a step with ``budget`` tokens left
        beside ``chunk_tokens`` of prefill chunks and ``decodes`` (None: it can)."""
        cfg = self.cfg
        r = s.waiting[0]
        if s.d + len(s.prefilling) >= cfg.max_num_seqs:
            return "max_num_seqs"
        target = r.target
        take = target if target < budget else budget
        if take < target and not cfg.chunked_prefill and (chunk_tokens or decodes):
            return "token_budget"  # a whole prompt waits for a step with room
        need = self._kv_need(r, take)
        pending = 0 if self._reserve else self.kv_w * chunk_tokens
        if self._kv_used(s) + pending + need > self.cap:
            return "kv_capacity"
        return None

    def _held_for_batch(self, s: _State, tokens: int) -> bool:
        """TensorRT-LLM batch waiting (``PyExecutor._waiting_requests``): whether the prompts
        admitted beside running decodes wait for a fuller step, one holding ``tokens``: held
        until ``batch_wait_iters`` steps have held them or the tokens reach
        ``batch_wait_max_tokens_ratio`` x the step's budget; the count restarts when they go.
        Only this step's new prompts are held: with chunked prefill on, a prompt already
        started goes on (TensorRT-LLM would hold its next chunk too)."""
        cfg = self.cfg
        if not (cfg.batch_wait_iters or cfg.batch_wait_max_tokens_ratio):
            return False
        if (
            s.batch_waited >= cfg.batch_wait_iters
            or tokens >= cfg.batch_wait_max_tokens_ratio * cfg.max_num_batched_tokens
        ):
            s.batch_waited = 0
            return False
        s.batch_waited += 1
        return True

    def _release(self, s: _State, admitted: list[tuple[_Req, bool]]) -> None:
        """Undo this step's admissions (latest first): back to the head of the queue."""
        for r, first in reversed(admitted):
            if s.prefilling.pop() is not r:  # admissions are appended last, in order
                raise CapcalcError("internal: prefilling out of admission order")
            s.waiting.appendleft(r)
            s.reserved -= r.reserved
            r.reserved = 0.0
            s.admit_order -= 1
            r.order = 0
            if first:
                r.scheduled = None

    def _rescheduled_blocked(self, s: _State) -> str | None:
        """After a preemption, with no prefill running: why the next step would admit nothing
        either and run the same decodes (the reason admission gives now, the cache only
        filling until a finish), or None when it might admit the queue's head."""
        budget = self.cfg.max_num_batched_tokens - s.d
        if not s.d or s.prefilling or not s.waiting or budget <= 0:
            return None
        if not self.cfg.mixed_batches and self._admissible(s, self.cfg.max_num_batched_tokens, s.d):
            return None  # a prefill-only step comes first
        return self._head_blocked(s, budget, 0, s.d)

    def _admissible(self, s: _State, budget: int, n_running: int) -> bool:
        if not s.waiting or n_running >= self.cfg.max_num_seqs:
            return False
        r = s.waiting[0]
        return self._kv_used(s) + self._kv_need(r, min(r.target, budget)) <= self.cap

    def _decode_run_length(self, s: _State, arrivals, why_blocked) -> int:
        """Pure decode steps until a cohort finishes."""
        return max(1, s.next_end() - s.g + 1)

    def _count_polls(self, s: _State, k: int, lines: tuple, dt: float) -> None:
        """Advance the poll counter over a run of k decode steps (taking ``dt``): the
        scheduler polled after every step that brought the count to recv_interval, the last
        of them ``k - (since_poll + k) mod interval`` steps into the run."""
        interval = self.cfg.recv_interval
        count = s.since_poll + k
        if count >= interval:
            j = k - count % interval
            s.last_poll_t = s.t + (dt if j == k else self._decode_run_time(s, j, lines))
        s.since_poll = count % interval

    def _limit_by_arrival(self, s: _State, k: int, arrivals, why_blocked, lines) -> int:
        """Stop the run at the step during which the next admissible request arrives (at
        the first poll after it, with a recv_interval)."""
        if k <= 1:
            return k
        if s.waiting and why_blocked:  # admission is blocked until a finish frees room
            return k
        if not arrivals and not s.waiting:
            return k
        if s.waiting:
            return 1
        horizon = arrivals[0][0] - s.t
        lo, hi = 1, k
        while lo < hi:  # smallest k' whose run reaches the arrival
            mid = (lo + hi) // 2
            if self._decode_run_time(s, mid, lines) >= horizon:
                hi = mid
            else:
                lo = mid + 1
        interval = self.cfg.recv_interval
        if interval > 1:
            lo += -(s.since_poll + lo) % interval
        return min(lo, k)

    def _run_lines(self, s: _State) -> tuple[float, float, float, float, float, float]:
        """(c0, c1, m0, m1, fixed, extra): decode step i from s.g takes
        max(c0 + c1 i, m0 + m1 i) + fixed + extra (compute and memory lines, fixed costs,
        per-sequence step overhead)."""
        d = s.d
        x0 = s.k_sum + d * s.g
        lc0, lc1, lm0, lm1, fixed = self.sm.decode_line(d)
        c0, c1 = lc0 + lc1 * x0, lc1 * d  # compute_s of step i = c0 + c1 i
        m0, m1 = lm0 + lm1 * x0, lm1 * d
        return c0, c1, m0, m1, fixed, self.cfg.seq_step_overhead_s * d

    def _run_gaps(self, k: int, stall: float, gaps: list, lines: tuple, d: int) -> None:
        """Append the inter-token gaps of a run of k decode steps to ``gaps``: each step gives
        its d sequences one gap of the step's time, linear in the step index on each side of
        where compute overtakes memory, so each side is one (shortest, longest, count) piece;
        the first step's gap also holds ``stall`` (prefill-only steps the decodes waited on);
        ``lines`` are :meth:`_run_lines` of the run's d decodes."""
        c0, c1, m0, m1, fixed, extra = lines
        d = float(d)
        base = fixed + extra

        def at(i: int) -> float:
            return max(c0 + c1 * i, m0 + m1 * i) + base

        start = 0
        if stall:
            first = at(0) + stall
            gaps.append((first, first, d))
            start = 1
        if k <= start:
            return
        end = k - 1
        if (c0 >= m0) == (c0 + c1 * end >= m0 + m1 * end):
            cuts = (start, k)
        else:
            cross = min(k, max(1, math.ceil((m0 - c0) / (c1 - m1))))
            cuts = (start, max(start, cross), k)
        for i0, i1 in zip(cuts, cuts[1:], strict=False):
            if i1 > i0:
                a, b = at(i0), at(i1 - 1)
                gaps.append((a, b, d * (i1 - i0)) if a <= b else (b, a, d * (i1 - i0)))

    def _decode_run_time(self, s: _State, k: int, lines: tuple | None = None) -> float:
        """Sum of k pure decode step times from decode step s.g, in closed form: each
        step is max(compute, memory) + fixed, both affine in the step index (the step
        model's :meth:`~capcalc.serving.stepmodel.MixedStepModel.decode_line` in the
        context sum k_sum + d x g)."""
        c0, c1, m0, m1, fixed, extra = lines or self._run_lines(s)
        if k == 1:
            return max(c0, m0) + fixed + extra

        def arith(a: float, b: float, i0: int, i1: int) -> float:  # sum of a + b i, i in [i0, i1)
            n = i1 - i0
            return n * a + b * (i0 + i1 - 1) * n / 2 if n > 0 else 0.0

        total = k * (fixed + extra)
        if (c0 >= m0) == (c0 + c1 * (k - 1) >= m0 + m1 * (k - 1)):
            hi_a, hi_b = (c0, c1) if c0 >= m0 else (m0, m1)
            return total + arith(hi_a, hi_b, 0, k)
        cross = min(k, max(1, math.ceil((m0 - c0) / (c1 - m1))))  # first index where the bound flips
        first, second = ((c0, c1), (m0, m1)) if c0 >= m0 else ((m0, m1), (c0, c1))
        return total + arith(*first, 0, cross) + arith(*second, cross, k)

    def _preempt(self, s: _State, tokens: float) -> int:
        """Free ``tokens`` of KV by recomputing the most recently admitted decodes."""
        freed, count = 0.0, 0
        while s.by_order and freed < tokens:  # the most recently admitted cohort first
            c = s.by_order[-1]
            while c.members and freed < tokens:
                r = c.members.pop()
                ctx = c.base + 1 + (s.g - c.g0)
                gen = s.g - c.g0  # decodes done in this cohort
                r.generated += gen
                r.out_left -= gen
                r.target, r.computed = c.base + gen, 0
                s.d -= 1
                s.k_sum -= c.base + 1 - c.g0
                s.waiting.appendleft(r)
                r.preempted_at = s.t
                freed += self.kv_w * (ctx - 1) + self.kv_fixed
                count += 1
            if not c.members:
                s.drop_cohort(c)
        if count == 0:
            raise CapcalcError("the KV cache cannot hold the running requests")
        return count

    def _result(self, w, reqs, steps, preemptions, busy_area, blocked, window_start, total) -> ServingResult:
        m = [r for r in reqs if w.warmup <= r.idx < total]
        ttft = [r.first_token - r.sent for r in m]
        e2e = [r.finish - r.sent for r in m]
        gaps = [r.finish - r.first_token for r in m]
        o = w.output_tokens
        tpot = [g / (r.osl - 1) for g, r in zip(gaps, m, strict=True) if r.osl > 1] or [0.0]
        later_tokens = sum(r.osl - 1 for r in m)
        mean_out = sum(r.osl for r in m) / len(m)
        start = window_start if window_start is not None else min(r.sent for r in m)
        end = max(r.finish for r in m)
        span = max(end - start, 1e-12)
        # closed loop: each of the C clients is always inside a request (no think time), so
        # its throughput is C / mean e2e, the response-time law (Little's law for the whole
        # loop), and the served runs' tokens/s are derived so too. (Counting the n measured
        # sends over the span to the next send credits the opening burst, all C sent at
        # once, for free: up to 10 % over C / mean e2e once output lengths spread, beyond
        # what the GPU's FLOP/s allow at saturation.)
        # open loop: completions (below saturation they match the arrivals)
        if w.concurrency:
            rate = w.concurrency / _mean(e2e)
        else:
            times = sorted(r.finish for r in m)
            rate = (len(m) - 1) / (times[-1] - times[0]) if times[-1] > times[0] else 1 / _mean(e2e)
        itl = sum(gaps) / later_tokens if later_tokens else 0.0
        binding = max(blocked, key=blocked.get)
        if blocked[binding] < BINDING_SHARE * span:
            binding = "none"
        cfg = self.cfg
        return ServingResult(
            engine=cfg.engine,
            concurrency=w.concurrency,
            rate_per_s=w.rate_per_s,
            prompt_tokens=w.prompt_tokens,
            output_tokens=o,
            gpus=self.gpus,
            ttft_s=_mean(ttft),
            tpot_s=_mean(tpot),
            itl_s=itl,
            e2e_s=_mean(e2e),
            ttft_p50_s=_pct(ttft, 50),
            ttft_p90_s=_pct(ttft, 90),
            ttft_p99_s=_pct(ttft, 99),
            tpot_p50_s=_pct(tpot, 50),
            tpot_p90_s=_pct(tpot, 90),
            tpot_p99_s=_pct(tpot, 99),
            itl_p50_s=0.0,  # set by run() from the pooled gaps
            itl_p90_s=0.0,
            itl_p99_s=0.0,
            e2e_p50_s=_pct(e2e, 50),
            e2e_p90_s=_pct(e2e, 90),
            e2e_p99_s=_pct(e2e, 99),
            requests_per_s=rate,
            output_tokens_per_s=rate * mean_out,
            output_tokens_per_s_per_gpu=rate * mean_out / self.gpus,
            output_tokens_per_s_per_user=1.0 / itl if itl > 0 else 0.0,
            running_batch=busy_area / span,
            queue_s=_mean([r.scheduled - r.arrival for r in m]),
            preemptions=preemptions,
            binding_limit=binding,
            kv_capacity_tokens=self.kv_tokens,
            max_num_seqs=cfg.max_num_seqs,
            max_num_batched_tokens=cfg.max_num_batched_tokens,
            frontend_s=cfg.frontend_s,
            steps=steps,
        )


def least_events(w: Workload, max_num_batched_tokens: int) -> float:
    """Fewest scheduling events a simulation of ``w`` can take: every step that prefills is
    an event of its own, and the measured prompts need prompt x measured / budget of them."""
    return w.measured * w.prompt_tokens / max_num_batched_tokens


class TooManyEvents(CapcalcError):
    """A simulation past :data:`MAX_EVENTS` (a fit says it in its own terms: its runs' request
    counts come from the files, not from a num_requests)."""


def _too_many_events(w: Workload) -> TooManyEvents:
    return TooManyEvents(
        parameter=("num_requests", "max_num_batched_tokens"),
        template=f"the simulation would pass {MAX_EVENTS:,} scheduling events before its {w.measured:,} "
        "measured requests end (prompts in many small chunks, or a cache that keeps preempting): "
        "lower {num_requests} or raise {max_num_batched_tokens}",
    )


#: frac(i x this) spreads request i's output length evenly over the range (golden ratio)
_GOLDEN = (math.sqrt(5) - 1) / 2


#: output lengths take this many evenly spaced values (requests of equal length that finish
#: their prefill together decode as one cohort, which keeps the simulation fast)
SPREAD_LEVELS = 8


#: the prompts' sequence: frac(i x (sqrt 2 - 1)), independent of the outputs' golden ratio
_SILVER = math.sqrt(2) - 1


def _evenly(i: int, step: float = _GOLDEN) -> float:
    """The i-th of a sequence evenly spread over (0, 1): frac(i x step), put at the middle of
    one of SPREAD_LEVELS equal bins."""
    return (math.floor((i * step) % 1.0 * SPREAD_LEVELS) + 0.5) / SPREAD_LEVELS


def _spread_len(mean: int, spread: float, u: float) -> int:
    return max(1, round(mean * (1 + spread * (2 * u - 1))))


def _prompt_len(w: Workload, i: int) -> int:
    """Prompt tokens of request ``i`` (:attr:`Workload.prompt_spread`)."""
    if not w.prompt_spread:
        return w.prompt_tokens
    return _spread_len(w.prompt_tokens, w.prompt_spread, _evenly(i, _SILVER))


def shortest_prompt(w: Workload) -> int:
    """The shortest prompt any request of ``w`` sends (where decode contexts start)."""
    return _spread_len(w.prompt_tokens, w.prompt_spread, 0.5 / SPREAD_LEVELS)


def longest_request(w: Workload, config: EngineConfig) -> int:
    """The longest prompt plus the longest output any request of ``w`` asks for under
    ``config`` (whose output spread applies where ``w`` leaves it unset): the
    ``max_model_len`` the server must have been started with, which sizes its KV pool."""
    top = (SPREAD_LEVELS - 0.5) / SPREAD_LEVELS
    spread = config.output_spread if w.output_spread is None else w.output_spread
    return _spread_len(w.prompt_tokens, w.prompt_spread, top) + _spread_len(w.output_tokens, spread, top)


def _output_len(w: Workload, i: int, default: float) -> int:
    """Output tokens request ``i`` asks for (:attr:`Workload.output_spread`)."""
    spread = default if w.output_spread is None else w.output_spread
    if not spread:
        return w.output_tokens
    return _spread_len(w.output_tokens, spread, _evenly(i))


def _mixture_pcts(pieces: list[tuple[float, float, float]], qs: tuple[float, ...]) -> tuple[float, ...]:
    """Percentiles ``qs`` of pooled gaps given as pieces (lo, hi, count): ``count`` values
    spread evenly over [lo, hi] (a point where lo == hi). The distribution function is
    piecewise linear between the pieces' ends, found in one sweep over them (sorted)."""
    total = sum(c for _, _, c in pieces)
    if not total:
        return tuple(0.0 for _ in qs)
    events: list[tuple[float, float, float]] = []  # (x, jump, slope change)
    for lo, hi, c in pieces:
        if hi <= lo:
            events.append((lo, c, 0.0))
        else:
            rate = c / (hi - lo)
            events.append((lo, 0.0, rate))
            events.append((hi, 0.0, -rate))
    events.sort()
    targets = sorted((q / 100 * total, i) for i, q in enumerate(qs))
    out = [events[-1][0]] * len(qs)
    cum, slope, t, last = 0.0, 0.0, 0, events[0][0]
    for x, jump, dslope in events:
        if slope > 0 and x > last:  # the linear stretch from the previous end to x
            rise = slope * (x - last)
            while t < len(targets) and cum + rise >= targets[t][0]:
                out[targets[t][1]] = last + (targets[t][0] - cum) / slope
                t += 1
            cum += rise
        cum += jump
        slope += dslope
        last = x
        while t < len(targets) and cum >= targets[t][0]:
            out[targets[t][1]] = x
            t += 1
        if t == len(targets):
            break
    return tuple(out)


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def _pct(xs: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default, as vllm bench serve reports)."""
    ys = sorted(xs)
    pos = (len(ys) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(ys) - 1)
    return ys[lo] + (ys[hi] - ys[lo]) * (pos - lo)


# --------------------------------------------------------------------------- one call


@dataclass(frozen=True)
class Replica:
    """One serving replica: the model on ``tp`` GPUs of one kind, and how it is run."""

    model: object  # ModelProfile
    gpu: object  # HardwareProfile
    tp: int = 1
    weight_dtype: str = "auto"
    kv_dtype: str = "auto"
    compute_dtype: str = "auto"
    group_size: int = 128
    gpu_memory_utilization: float = 0.9

    @property
    def deployment(self) -> Deployment:
        """The replica's dtypes and tensor-parallel layout as the step and memory models take them."""
        return Deployment(
            weight_dtype=self.weight_dtype,
            kv_dtype=self.kv_dtype,
            compute_dtype=self.compute_dtype,
            tp=self.tp,
            group_size=self.group_size,
        )


def kv_capacity_tokens(replica: Replica, config: EngineConfig, max_model_len: int) -> int:
    """Tokens the replica's KV cache holds, by the engine's rule (:func:`engine_kv_bytes`):
    vLLM's memory fit (:func:`capcalc.serving.fit.fit`), num_blocks x block_size per group,
    with the engine's batch limits sizing the activation peak; TensorRT-LLM's and SGLang's
    pools over the KV bytes per token, in whole blocks. For a model with more than one kind
    of layer :func:`kv_pool` says how requests share it."""
    return kv_pool(replica, config, max_model_len).tokens


#: each engine's name for the memory share :func:`memory_fraction` reads
MEMORY_KNOB = {
    "vllm": "gpu_memory_utilization",
    "sglang": "mem_fraction_static",
    "trtllm": "free_gpu_memory_fraction",
}


def memory_fraction(replica: Replica, config: EngineConfig) -> float:
    """The engine's memory knob as it sizes the KV pool: vLLM's ``gpu_memory_utilization``
    (the replica's), SGLang's ``mem_fraction_static`` (given, else its default heuristic,
    :func:`capcalc.serving.engines.sglang_mem_fraction_static`), TensorRT-LLM's
    ``free_gpu_memory_fraction`` (``config.kv_free_memory_fraction``)."""
    from capcalc.serving.fit import memory_of

    if config.engine == "sglang":
        return _static_fraction(config, memory_of(replica.gpu)[0], replica.tp)
    if config.kv_free_memory_fraction is not None:
        return config.kv_free_memory_fraction
    return vllm_utilization(replica, config)


def vllm_utilization(replica: Replica, config: EngineConfig) -> float:
    """vLLM's gpu_memory_utilization: the config's where set (a calibration), else the replica's."""
    if config.gpu_memory_utilization is not None:
        return config.gpu_memory_utilization
    return replica.gpu_memory_utilization


def _static_fraction(config: EngineConfig, memory_bytes: float, tp: int) -> float:
    """SGLang's mem_fraction_static: the configured one, else its default at this memory and tp."""
    if config.mem_fraction_static is not None:
        return config.mem_fraction_static
    return sglang_mem_fraction_static(memory_bytes, tp, config.max_num_batched_tokens)


def engine_kv_bytes(result, config: EngineConfig, tp: int) -> float | None:
    """KV cache bytes per GPU that the engine's own memory rule leaves, from the memory fit
    ``result`` (:class:`capcalc.serving.fit.FitResult`, whose weights, activation peak and
    non-torch overhead it reuses); zero or less: the weights leave none. None for vLLM,
    whose pool is the fit's own (gpu_memory_utilization x memory - weights - activations -
    overheads).

    * TensorRT-LLM: ``KvCacheConfig.free_gpu_memory_fraction`` f of the memory free once the
      model is loaded, f x (memory - weights - activations - overheads)
      (``config.kv_free_memory_fraction``).
    * SGLang: ``mem_fraction_static`` s of the memory free before loading, less the weights:
      s x (memory - overheads) - weights (``ModelRunner.profile_max_num_token``: the memory
      free after loading minus (1 - s) x the memory free before); activations and CUDA
      graphs live in the 1 - s. s is ``config.mem_fraction_static``, else SGLang's default
      (:func:`capcalc.serving.engines.sglang_mem_fraction_static`)."""
    memory, weights, overhead = (
        result.memory_bytes,
        result.weights_bytes_per_gpu,
        result.overhead_bytes_per_gpu,
    )
    if config.engine == "sglang":
        return _static_fraction(config, memory, tp) * (memory - overhead) - weights
    f = config.kv_free_memory_fraction
    if f is None:
        return None
    free = memory - (weights + result.activation_bytes_per_gpu + overhead + result.cudagraph_bytes_per_gpu)
    return f * free if free > 0 else free


@dataclass(frozen=True)
class SizedPool(KVPool):
    tokens: int = 0  # fit's kv_cache_tokens (or TensorRT-LLM's), as reported


def kv_pool(replica: Replica, config: EngineConfig, max_model_len: int, fitted=None) -> SizedPool:
    """The replica's KV cache as the simulation counts it (:class:`KVPool`), sized by
    :func:`capcalc.serving.fit.fit` (or TensorRT-LLM's free-memory fraction, see
    :func:`kv_capacity_tokens`) at ``max_model_len`` (the workload's longest prompt + output,
    :func:`longest_request`).
    ``fitted``: that fit's result when the caller has it already (the same request), so it
    is not fitted twice."""
    from capcalc.model.layers import attention_spec
    from capcalc.serving.fit import FitRequest, fit, kv_cache_groups, memory_of, request_blocks

    model = replica.model
    memory, source = memory_of(replica.gpu)
    max_model_len = min(max_model_len, model.max_context)
    req = FitRequest(
        memory_bytes=memory,
        memory_source=source,
        gpu=replica.gpu.name,
        deployment=replica.deployment,
        gpu_memory_utilization=vllm_utilization(replica, config),
        max_model_len=max_model_len,
        max_num_seqs=config.max_num_seqs,
        max_num_batched_tokens=config.max_num_batched_tokens,
    )
    result = fitted if fitted is not None else fit(model, req, suggest=False)
    budget = engine_kv_bytes(result, config, replica.tp)
    if (budget is None and not result.weights_fit) or (budget is not None and budget <= 0):
        knob = MEMORY_KNOB.get(config.engine, "gpu_memory_utilization")
        raise CapcalcError(
            f"{model.name} does not fit on {replica.gpu.name} x{replica.tp} under {config.engine}'s memory "
            f"rule ({knob} {memory_fraction(replica, config):g}): no memory left for the KV cache"
        )
    groups = kv_cache_groups(model, req.hybrid)
    full = attention_spec(model)
    big = 1 << 40  # a context no bounded kind holds whole

    def grows(g) -> bool:
        return (g.spec or full).tokens_held(big) >= big

    growing = sum(1 for g in groups if grows(g))
    bounded = [g for g in groups if not grows(g)]
    bs = result.block_size
    if budget is None:
        tokens, blocks = result.kv_cache_tokens, result.num_blocks
    else:  # the engine's pool, in whole blocks
        tokens = int(budget / result.kv_bytes_per_token_per_gpu) // bs * bs
        blocks = int(budget // (result.page_bytes * result.layers_per_group))
    if not bounded:  # one kind of layer: tokens, each request holding its context
        return SizedPool(float(tokens), tokens=tokens)
    fixed = request_blocks(model, bounded, max_model_len, bs, result.max_num_batched_tokens)
    if not growing:  # every group bounded: count pages
        return SizedPool(float(blocks), per_token=0.0, per_request=float(fixed), tokens=tokens)
    unit = bs / growing  # tokens per page
    return SizedPool(blocks * unit, per_token=1.0, per_request=fixed * unit, tokens=tokens)


def predict_serving(
    replica: Replica,
    workload: Workload,
    config: EngineConfig,
    efficiency,
    kv_tokens: int | KVPool | None = None,
    steps: MixedStepModel | None = None,
) -> ServingResult:
    """TTFT, TPOT, ITL, E2E and throughput of ``workload`` on ``replica`` run by ``config``,
    with the step efficiencies ``efficiency`` (:class:`capcalc.perf.efficiency.Efficiency`).
    ``kv_tokens`` None sizes the KV cache with :func:`kv_pool` (a number: that many tokens,
    each request holding its context); ``steps`` reuses
    a step model already built for this replica and efficiency (sweeps)."""
    if kv_tokens is None:
        kv_tokens = kv_pool(replica, config, longest_request(workload, config))
    if steps is None:
        steps = step_model(replica, efficiency, shortest_prompt(workload))
    return Simulation(steps, config, kv_tokens, gpus=replica.tp).run(workload)


def step_model(replica: Replica, efficiency, prompt_tokens: int = 1) -> MixedStepModel:
    """The mixed-step cost model of ``replica`` (its per-sequence terms anchored at the
    prompt length, where decodes start)."""
    return MixedStepModel(
        replica.model,
        replica.gpu,
        efficiency,
        weight_dtype=replica.weight_dtype,
        kv_dtype=replica.kv_dtype,
        tp=replica.tp,
        compute_dtype=replica.compute_dtype,
        ctx_floor=prompt_tokens,
        group_size=replica.group_size,
        kernel_roofline=KERNEL_ROOFLINE,
    )

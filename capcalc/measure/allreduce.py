"""All-reduce timing at the message sizes of tensor-parallel decode and prefill, and the
fits that turn it into the latency model's all-reduce terms.

Message sizes: a decode step all-reduces [B, H] hidden states twice per layer, B x H x w
bytes (w the activation width: 2 in bf16); a prefill chunk of T tokens, T x H x w.

Figures, with nccl-tests' definitions (github.com/NVIDIA/nccl-tests, doc/PERFORMANCE.md,
"AllReduce"): for a message of S bytes taking t seconds on n ranks

    algbw = S / t                   busbw = algbw x 2 (n - 1) / n

busbw is the rate each link carries in a ring all-reduce, comparable across n and with
the link's own bandwidth; it is what :func:`capcalc.perf.latency.allreduce_s` divides by
(``interconnect_bandwidth``). The fixed cost per call is the intercept ``a`` of the line

    t(S) = a + S x 2 (n - 1) / n / busbw_fit

fitted by least squares over the decode-sized messages (where the fixed cost matters),
weighted by 1/t^2 so that each size counts by its relative error. Across tp degrees:

    a(tp) = allreduce_latency_s + (tp - 1) x allreduce_latency_per_rank_s

taken when the data ask for it (the per-call costs differ by more than
:data:`TP_FORM_SPREAD` between degrees), else flat (their mean).

Timing: each repeat is :data:`CALLS_PER_REPEAT` all-reduces back to back, on GPUs captured
as one CUDA graph where NCCL allows (as a graphed decode step issues them) and bracketed
by CUDA events, else a plain loop (on the CPU with gloo: ``time.perf_counter`` after a
barrier); the time per call is the median over repeats, divided by the calls, and the
slowest rank's figure (an all-reduce ends when the last rank is done).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

from capcalc.core.errors import CapcalcError
from capcalc.measure import require_torch
from capcalc.measure.fit import solve

#: decode batches of a message-size sweep (`measure --gpu --tp N`)
DECODE_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
#: prefill chunk sizes, tokens (vLLM's default max_num_batched_tokens is 2048 to 8192)
PREFILL_TOKENS = (2048, 4096, 8192)
#: hidden size of the sweep without a model: Llama-3-70B's (an 8B model's 4096 falls on
#: the same sizes at twice the batch)
SWEEP_HIDDEN = 8192
#: the message a run's bus bandwidth is read from, where its own messages are too small to
#: show it (a tiny model's decode messages are a few hundred bytes): 256 MiB on GPUs, where
#: NCCL's ring reaches its plateau well before (nccl-tests' published curves); 16 MiB over
#: gloo on the CPU, which stays well inside the host's RAM per rank
BANDWIDTH_BYTES = {True: 256 * 2**20, False: 16 * 2**20}
#: all-reduces per timed repeat: enough that event and loop overhead is a small share
CALLS_PER_REPEAT = 10
#: relative spread of per-call cost across tp degrees above which a(tp) is fitted as a line
#: (repeated timings of one all-reduce differ by a few percent; 20% is a real trend)
TP_FORM_SPREAD = 0.20


@dataclass(frozen=True)
class MessageSize:
    phase: str  # decode | prefill | bandwidth (:data:`BANDWIDTH_BYTES`)
    tokens: int  # decode: the batch; prefill: the chunk's tokens
    bytes: int


@dataclass(frozen=True)
class AllreduceTiming:
    tp: int  # ranks in the all-reduce
    size: MessageSize
    time_s: float  # per call, median over repeats, slowest rank
    cuda_graph: bool
    repeats: int

    @property
    def algbw_bytes_per_s(self) -> float:
        return self.size.bytes / self.time_s

    @property
    def busbw_bytes_per_s(self) -> float:
        return bus_bandwidth(self.size.bytes, self.time_s, self.tp)


@dataclass(frozen=True)
class LatencyFit:
    tp: int
    latency_s: float  # intercept: fixed cost per call
    busbw_bytes_per_s: float | None  # from the slope (None when the slope is not positive)
    points: int
    method: str  # intercept | smallest (the intercept was not positive: the smallest message's time)


@dataclass(frozen=True)
class TpForm:
    allreduce_latency_s: float
    allreduce_latency_per_rank_s: float
    form: str  # flat | linear
    tp_degrees: tuple[int, ...]


def message_sizes(
    hidden: int,
    width_bytes: int,
    batches: tuple[int, ...] = DECODE_BATCHES,
    prefill_tokens: tuple[int, ...] = PREFILL_TOKENS,
) -> list[MessageSize]:
    """Decode messages B x H x w for each batch, prefill messages T x H x w for each chunk."""
    sizes = [MessageSize("decode", b, b * hidden * width_bytes) for b in batches]
    return sizes + [MessageSize("prefill", t, t * hidden * width_bytes) for t in prefill_tokens]


def bandwidth_size(is_cuda: bool) -> MessageSize:
    return MessageSize("bandwidth", 0, BANDWIDTH_BYTES[is_cuda])


def bus_bandwidth(size_bytes: float, time_s: float, ranks: int) -> float:
    """nccl-tests' all-reduce bus bandwidth: S / t x 2 (n - 1) / n."""
    return size_bytes / time_s * 2.0 * (ranks - 1) / ranks


def fit_latency(timings: list[AllreduceTiming]) -> LatencyFit:
    """t = a + c S over ``timings`` (one tp degree), least squares weighted by 1/t^2."""
    if not timings:
        raise CapcalcError("no all-reduce timings to fit")
    tp = timings[0].tp
    sizes = [float(t.size.bytes) for t in timings]
    times = [t.time_s for t in timings]
    weights = [1.0 / (t * t) for t in times]
    if len(set(sizes)) < 2:
        a, c = min(times), 0.0
    else:
        s0 = sum(weights)
        s1 = sum(w * s for w, s in zip(weights, sizes, strict=True))
        s2 = sum(w * s * s for w, s in zip(weights, sizes, strict=True))
        y0 = sum(w * t for w, t in zip(weights, times, strict=True))
        y1 = sum(w * s * t for w, s, t in zip(weights, sizes, times, strict=True))
        a, c = solve([[s0, s1], [s1, s2]], [y0, y1])
    busbw = 2.0 * (tp - 1) / tp / c if c > 0 else None
    if a > 0:
        return LatencyFit(tp, a, busbw, len(timings), "intercept")
    return LatencyFit(tp, min(times), busbw, len(timings), "smallest")


def fit_tp_form(fits: list[LatencyFit]) -> TpForm:
    """a(tp) = a0 + (tp - 1) b from per-degree fixed costs: a line (least squares; through
    the origin when its intercept would be negative) when the costs spread by more than
    :data:`TP_FORM_SPREAD` over two or more degrees, else flat at their mean."""
    if not fits:
        raise CapcalcError("no all-reduce latencies to fit")
    degrees = tuple(f.tp for f in fits)
    xs = [f.tp - 1.0 for f in fits]
    ys = [f.latency_s for f in fits]
    mean = statistics.fmean(ys)
    if len(set(xs)) < 2 or (max(ys) - min(ys)) / mean <= TP_FORM_SPREAD:
        return TpForm(mean, 0.0, "flat", degrees)
    mx, my = statistics.fmean(xs), mean
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
    intercept = my - slope * mx
    if intercept < 0:
        intercept, slope = 0.0, sum(x * y for x, y in zip(xs, ys, strict=True)) / sum(x * x for x in xs)
    if slope <= 0:
        return TpForm(mean, 0.0, "flat", degrees)
    return TpForm(intercept, slope, "linear", degrees)


def sub_degrees(world: int) -> list[int]:
    """The all-reduce sizes timed within ``world`` ranks: 2, 4, 8, ... and ``world``."""
    degrees, n = [], 2
    while n < world:
        degrees.append(n)
        n *= 2
    return [*degrees, world] if world >= 2 else []


# --------------------------------------------------------------------------- timing (torch)


def default_repeats(is_cuda: bool) -> tuple[int, int]:
    """(warm-up, timed) repeats of :data:`CALLS_PER_REPEAT` calls: 20 timed on a GPU (each
    a fraction of a ms), 3 on the CPU, where gloo's large messages take tenths of a second."""
    return (3, 20) if is_cuda else (1, 3)


def time_allreduce(
    size: MessageSize,
    dtype: str,
    device: str,
    ranks: int,
    process_group=None,
    repeats: int | None = None,
    member: bool = True,
) -> AllreduceTiming:
    """Time all-reduces of ``size`` within ``process_group`` (``ranks`` ranks). Every rank of
    the world calls this (the slowest rank's time is taken over the world); a rank with
    ``member`` False only joins that last step."""
    torch = require_torch()
    dist = torch.distributed
    is_cuda = device.startswith("cuda")
    warmup, timed = default_repeats(is_cuda)
    timed = repeats or timed
    width = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
    per_call, graphed = 0.0, False
    if member:
        buffer = torch.randn(size.bytes // torch.empty((), dtype=width).element_size(), device=device).to(
            width
        )

        def calls():
            for _ in range(CALLS_PER_REPEAT):
                dist.all_reduce(buffer, group=process_group)

        run = calls
        if is_cuda:
            run, graphed = _graphed(calls, device)
        for _ in range(warmup):
            run()
        times = []
        if is_cuda:
            torch.cuda.synchronize(device)
            dist.barrier(group=process_group)
            pairs = []
            for _ in range(timed):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                run()
                end.record()
                pairs.append((start, end))
            torch.cuda.synchronize(device)
            times = [s.elapsed_time(e) / 1e3 for s, e in pairs]
        else:
            for _ in range(timed):
                dist.barrier(group=process_group)
                t0 = time.perf_counter()
                run()
                times.append(time.perf_counter() - t0)
        per_call = statistics.median(times) / CALLS_PER_REPEAT
    slowest = torch.tensor([per_call], dtype=torch.float64, device=device)
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
    return AllreduceTiming(ranks, size, float(slowest.item()), graphed, timed)


def _graphed(calls, device):
    """``calls`` captured as one CUDA graph (NCCL collectives are capturable), else eager."""
    torch = require_torch()
    try:
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            calls()  # the communicator and its buffers exist before capture
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            calls()
        return graph.replay, True
    except RuntimeError:
        torch.cuda.synchronize(device)
        return calls, False


def sweep(
    where, sizes: list[MessageSize], dtype: str, degrees: list[int], repeats: int | None = None
) -> list[AllreduceTiming]:
    """Every size at every degree k (the first k ranks of the world); every rank calls it."""
    torch = require_torch()
    dist = torch.distributed
    results = []
    for k in degrees:
        group = None if k == where.world else dist.new_group(ranks=list(range(k)))
        for size in sizes:
            results.append(
                time_allreduce(size, dtype, where.device, k, group, repeats, member=where.rank < k)
            )
    return results

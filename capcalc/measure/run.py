"""Timing real prefill and decode steps of a random-weight model at each batch and context.

Decode point (batch B, context c): a cache of c + (warm-up + repeats) slots per
sequence is allocated once and filled with random keys and values (the prompt stands
in as random data). The step embeds the B current tokens at position ``pos`` (a device
tensor), runs every layer writing K and V in place at ``pos``, attends over slots
<= pos, computes the logits, writes argmax back into the token buffer and advances
``pos`` -- all on the device, so the whole step is captured once as a CUDA graph and
replayed (launch overhead would otherwise dominate small batches). Each repeat is one
replay timed with CUDA events; the first replay attends to c + 1 tokens. On the CPU
the same step runs eagerly, timed with ``time.perf_counter``.

Prefill point (batch B, prompt P): one forward pass over [B, P] tokens from position
0, writing the cache, logits for the last position; also captured as a CUDA graph on
GPUs (its shapes are fixed), so short prompts of small models time the GPU's work
rather than the host's kernel launches, as a production engine's graphs would.

Every figure is the median over repeats after warm-up.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass

from capcalc.core.errors import CapcalcError
from capcalc.measure import require_torch
from capcalc.measure.device import DeviceInfo, median, synchronize, time_calls
from capcalc.measure.memory import MemoryEstimate, check_point
from capcalc.measure.model import DecoderModel, KVCache, check_supported
from capcalc.schema.profiles import ModelProfile


@dataclass(frozen=True)
class PointSpec:
    phase: str  # decode | prefill
    batch: int
    tokens: int  # decode: context already cached; prefill: prompt length


@dataclass(frozen=True)
class MeasuredPoint:
    spec: PointSpec
    time_s: float  # median seconds per step (decode) or per prefill pass
    times_s: tuple[float, ...]
    cuda_graph: bool
    memory: MemoryEstimate  # predicted before allocating
    memory_measured_bytes: float | None  # peak allocated on a GPU; None on the CPU
    cache_bytes: float


def _round_up(n: int, multiple: int = 16) -> int:
    return -(-n // multiple) * multiple


#: eager steps run on a side stream before a CUDA graph is captured (allocator and
#: cuBLAS handle warm-up, as torch.cuda.graphs requires)
CAPTURE_WARMUP_STEPS = 3


def default_repeats(info: DeviceInfo, phase: str) -> tuple[int, int]:
    """(warm-up, timed repeats) per point: a median of 20 graph replays of a decode step
    (each a few ms) and of 5 prefills (up to ~1 s each on a GPU) keeps a model's sweep
    of points within the validation script's minutes; the CPU path runs fewer because
    each eager step is slow and CI only checks the mechanics."""
    if info.is_cuda:
        return (3, 20) if phase == "decode" else (2, 5)
    return (2, 5) if phase == "decode" else (1, 3)


def attended_tokens(spec: PointSpec, info: DeviceInfo, repeats: int | None = None) -> int:
    """Tokens the median timed step of ``spec`` attends to, as the latency model is asked:
    a decode point's context plus the warm-up steps and half the timed ones (each step
    adds one token; the schedule is :func:`default_repeats`'); a prefill's prompt."""
    if spec.phase != "decode":
        return spec.tokens
    warm, timed = default_repeats(info, "decode")
    return spec.tokens + warm + ((repeats or timed) + 1) // 2


def positions_needed(spec: PointSpec, info: DeviceInfo, repeats: int | None = None) -> int:
    """The positions a point uses: the prompt, or the context plus one per decode step
    (3 steps before the graph capture, then the position is reset; then the warm-up and
    timed steps)."""
    warmup, timed = default_repeats(info, spec.phase)
    if spec.phase == "prefill":
        return spec.tokens
    return spec.tokens + max(CAPTURE_WARMUP_STEPS, warmup + (repeats or timed))


def cache_tokens(spec: PointSpec, info: DeviceInfo, repeats: int | None = None) -> int:
    """:func:`positions_needed` rounded up to a multiple of 16: the KV cache allocated."""
    return _round_up(positions_needed(spec, info, repeats))


def plan_points(
    model: ModelProfile, dtype: str, info: DeviceInfo, specs: list[PointSpec], repeats: int | None = None
) -> tuple[list[tuple[PointSpec, MemoryEstimate]], list[tuple[PointSpec, CapcalcError]]]:
    """Split ``specs`` into those that fit (with their estimate) and those refused (with
    the :class:`CapcalcError` that says why)."""
    check_supported(model, dtype)
    fitting, refused = [], []
    for spec in specs:
        if spec.phase == "decode" and spec.tokens < 1:
            raise CapcalcError(f"ctx must be at least 1, got {spec.tokens}", parameter="ctx")
        needed = positions_needed(spec, info, repeats)
        if model.position_embedding == "learned" and needed > model.max_context:
            what = "ctx" if spec.phase == "decode" else "prompt"
            raise CapcalcError(
                f"{what} {spec.tokens}: {model.name} has a learned position table of {model.max_context} "
                f"positions and this point needs {needed} (the {spec.phase} and its timed steps); "
                f"use {what} at most {model.max_context - (needed - spec.tokens)}",
                parameter=what,
            )
        try:
            estimate = check_point(
                model,
                dtype,
                spec.phase,
                spec.batch,
                spec.tokens,
                cache_tokens(spec, info, repeats),
                info.memory_free_bytes,
                info.is_cuda,
                info.device,
            )
            fitting.append((spec, estimate))
        except CapcalcError as exc:
            refused.append((spec, exc))
    return fitting, refused


class Runner:
    """Builds the model once and measures points on it."""

    def __init__(self, model: ModelProfile, dtype: str, info: DeviceInfo, max_positions: int, seed: int = 0):
        self.torch = require_torch()
        self.info = info
        with self.torch.inference_mode():
            self.model = DecoderModel(model, dtype, info.device, seed=seed, max_positions=max_positions)
        synchronize(info.device)

    def release(self) -> None:
        """Free the model's weights (before the next model is built)."""
        self.model = None
        if self.info.is_cuda:
            gc.collect()
            self.torch.cuda.empty_cache()

    def measure(self, spec: PointSpec, estimate: MemoryEstimate, repeats: int | None = None) -> MeasuredPoint:
        torch = self.torch
        info = self.info
        if info.is_cuda:  # free the last point's cache and graph pool before measuring the peak
            gc.collect()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(info.device)
        with torch.inference_mode():
            if spec.phase == "decode":
                times, graphed, cache_b = self._decode(spec, repeats)
            else:
                times, graphed, cache_b = self._prefill(spec, repeats)
        peak = float(torch.cuda.max_memory_allocated(info.device)) if info.is_cuda else None
        if info.is_cuda:
            gc.collect()
            torch.cuda.empty_cache()
        return MeasuredPoint(spec, median(times), tuple(times), graphed, estimate, peak, cache_b)

    def _decode(self, spec: PointSpec, repeats: int | None):
        torch, info, model = self.torch, self.info, self.model
        warmup, timed = default_repeats(info, "decode")
        timed = repeats or timed
        length = cache_tokens(spec, info, repeats)
        cache = KVCache(model, spec.batch, length)
        tokens = torch.randint(0, model.profile.vocab_size, (spec.batch, 1), device=info.device)
        pos = torch.tensor(spec.tokens, device=info.device, dtype=torch.long)

        def step():
            logits = model.decode(tokens, cache, pos)
            tokens.copy_(logits.argmax(dim=-1, keepdim=True))
            pos.add_(1)

        run, graphed = self._capture(step)
        pos.fill_(spec.tokens)
        times = time_calls(run, info.device, timed, warmup=warmup)
        return times, graphed, cache.bytes

    def _prefill(self, spec: PointSpec, repeats: int | None):
        torch, info, model = self.torch, self.info, self.model
        warmup, timed = default_repeats(info, "prefill")
        cache = KVCache(model, spec.batch, cache_tokens(spec, info, repeats), random_fill=False)
        tokens = torch.randint(0, model.profile.vocab_size, (spec.batch, spec.tokens), device=info.device)
        run, graphed = self._capture(lambda: model.prefill(tokens, cache))
        times = time_calls(run, info.device, repeats or timed, warmup=warmup)
        return times, graphed, cache.bytes

    def _capture(self, step: Callable[[], object]) -> tuple[Callable[[], object], bool]:
        """``step`` captured as a CUDA graph (its shapes are fixed), so that timing sees the
        GPU's work and not the host's kernel launches; returns (what to run, graphed).
        Warm-up runs on a side stream first, as CUDA graph capture requires. On the CPU, or
        where capture fails (an operation that syncs with the host), the step runs eagerly."""
        torch, info, model = self.torch, self.info, self.model
        if not info.is_cuda or (model.profile.moe is not None and not model.grouped_mm):
            return step, False
        try:
            side = torch.cuda.Stream(info.device)
            side.wait_stream(torch.cuda.current_stream(info.device))
            with torch.cuda.stream(side):
                for _ in range(CAPTURE_WARMUP_STEPS):
                    step()
            torch.cuda.current_stream(info.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                step()
            return graph.replay, True
        except RuntimeError:
            return step, False

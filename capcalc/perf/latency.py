"""Predicted step times, TTFT, inter-token latency and throughput.

One step (see :mod:`capcalc.model.flops` for its FLOPs and bytes, per GPU) takes

    memory_s  = weight_bytes / (B x weight_bandwidth_efficiency) + kv_bytes / (B x kv_bandwidth_efficiency)
    compute_s = dense_matmul_flops / (P_c x e) + routed_expert_flops / (P_c x e_x)
              + attention_flops / (P_a x e)
        e = eff(n) in prefill, its asymptote prefill_flops_efficiency in decode
        e_x = r x eff(n x k / E_t) in prefill (the tokens each of the E_t touched experts
              multiplies, k routed per token), r x the asymptote in decode; r the
              expert_flops_ratio of an fp8/fp4 grouped expert GEMM to a dense one (1 in 16 bits)
    comm_s    = 2 x layers x (2 (tp-1)/tp x n x hidden x a / (I x e_I) + l(tp))    (tp > 1)
        l(tp) = allreduce_latency_s + (tp - 1) x allreduce_latency_per_rank_s
    step_s    = max(compute_s, memory_s) + layers x (layer_overhead_s + s x seq_layer_overhead_s)
              + moe_layers x (moe_layer_overhead_s + n x moe_token_overhead_s)
              + step_overhead_s + comm_s

with B the datasheet bandwidth, P_c the dense peak of the compute dtype, P_a that of
the serving dtype (:func:`capcalc.core.dtypes.serving_dtype`: attention runs in bf16/fp16
whatever the weights), n the tokens in the step, s the sequences it advances (the batch in
decode, the prompts in a prefill, decodes plus chunks in a mixed step), eff(n) the FLOP/s efficiency curve of
:class:`capcalc.perf.efficiency.Efficiency`, moe_layers the layers with routed experts (0 for
a dense model), and I the interconnect bandwidth per direction (ring all-reduce of the
hidden states, two per layer: after attention and after the MLP; a = 2 bytes, 4 when
the matrix products run in fp32/tf32). I x e_I plays the part of nccl-tests' bus bandwidth
(busbw = algbw x 2 (tp-1)/tp), which `capcalc measure --gpu --tp N` measures; e_I is
``allreduce_bandwidth_efficiency`` (1 by default: the link's datasheet rate). The bound is
whichever of compute_s and memory_s is larger. With :meth:`Efficiency.ideal` this is
the datasheet roofline (:mod:`capcalc.perf.roofline`).

A request of P prompt tokens and O output tokens, B at once:

    ttft_s  = prefill of B prompts of P tokens (it produces the first output token)
    itl_s   = mean decode step over the O - 1 later tokens, context P+1 ... P+O-1
    e2e_s   = ttft_s + (O - 1) x itl_s
    output_tokens_per_s = B x O / e2e_s        output_tokens_per_s_per_user = 1 / itl_s
    total_tokens_per_s  = B x (P + O) / e2e_s

The whole batch is prefilled, then decoded in lock step (static batching); continuous
batching overlaps them, which `plan` accounts for.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import NamedTuple

from capcalc.core.dtypes import COMPUTE_DTYPES, canonical_dtype, serving_dtype
from capcalc.core.errors import CapcalcError
from capcalc.core.records import flat_record
from capcalc.model.draft import MTP, Draft
from capcalc.model.flops import Component, StepCost, decode_cost, decode_costs, prefill_cost
from capcalc.model.weights import resolve_weight_dtype
from capcalc.perf.efficiency import Efficiency, ResolvedEfficiency
from capcalc.schema.deployment import Deployment
from capcalc.schema.profiles import HardwareProfile, ModelProfile

__all__ = [
    "COMPUTE_DTYPES",
    "LatencyResult",
    "predict_decode_step",
    "predict_latency",
    "predict_prefill",
    "predict_speculative_latency",
]
#: decode steps evaluated exactly up to this many; beyond, this many evenly spaced contexts.
#: The step time is piecewise linear in the context (kinks at a sliding window and where
#: compute overtakes memory), so evenly spaced samples including both ends average it to
#: within a fraction of the step change over one sample interval (1/32 of the range).
ITL_SAMPLES = 33
#: the 8- and 4-bit compute dtypes: their routed-expert products (block-scaled grouped GEMMs)
#: run at expert_flops_ratio of the dense ones, 16-bit ones at the dense efficiency; the
#: serving engines scale their FLOP/s apart too (capcalc.serving.engines.engine_efficiency)
LOW_PRECISION = ("fp8", "fp4")


def resolve_compute_dtype(
    compute_dtype: str, weight_dtype: str, model: ModelProfile, gpu: HardwareProfile
) -> str:
    """The dtype whose peak FLOP/s bounds the matrix products.

    ``auto``: 16-bit weights compute in their dtype; fp8 weights in fp8 where the GPU has
    an fp8 rate (W8A8, as vLLM runs fp8 checkpoints on Hopper and later), else 16-bit;
    nvfp4 weights in fp4 where the GPU has an fp4 rate (W4A4, Blackwell), else as int4;
    integer and 4-bit weights are dequantised and multiplied in the serving dtype
    (:func:`capcalc.core.dtypes.serving_dtype`; weight-only W8A16 / W4A16 kernels, e.g.
    Marlin); fp32 weights use fp32.
    """
    dtype = canonical_dtype(compute_dtype, COMPUTE_DTYPES, "compute dtype", "compute_dtype")
    if dtype != "auto":
        gpu.peak(dtype)  # raises a clear error when the GPU has no such rate
        return dtype
    weights = resolve_weight_dtype(weight_dtype, model)
    if weights in ("bf16", "fp16", "fp32"):
        return weights
    if weights == "fp8" and "fp8" in gpu.peak_flops_per_s:
        return "fp8"
    if weights == "nvfp4" and "fp4" in gpu.peak_flops_per_s:
        return "fp4"  # W4A4 on Blackwell's fp4 tensor cores, as vLLM runs ModelOpt NVFP4
    return serving_dtype(model.native_dtype)


@dataclass(frozen=True)
class StepPrediction:
    """Time of one step on one GPU and how it splits."""

    time_s: float
    compute_s: float
    memory_s: float
    weight_memory_s: float
    kv_memory_s: float
    overhead_s: float  # layers x layer_overhead_s + moe_layers x moe_layer_overhead_s + step_overhead_s
    comm_s: float  # tensor-parallel all-reduces
    bound: str  # compute | memory
    flops: float  # per GPU
    bytes: float  # per GPU
    flops_efficiency: float  # eff(n) used for this step
    compute_dtype: str
    peak_flops_per_s: float
    cost: StepCost
    #: the attention share of compute_s (the rest is the matrix products)
    attention_compute_s: float = 0.0
    #: True: timed per kernel class, max(matmul FLOPs, weights) + max(attention FLOPs, KV)
    kernel_roofline: bool = False

    @property
    def intensity(self) -> float:
        return self.flops / self.bytes

    @property
    def utilization(self) -> float:
        """Achieved FLOP/s over the compute dtype's dense peak (0..1)."""
        return self.flops / (self.time_s * self.peak_flops_per_s)


def allreduce_s(
    model: ModelProfile,
    gpu: HardwareProfile,
    tokens: int,
    tp: int,
    eff: Efficiency,
    activation_bytes: float = 2.0,
) -> float:
    """Two ring all-reduces per layer of the tokens' hidden states (``activation_bytes``
    each: bf16/fp16 unless the step computes in fp32)."""
    if tp == 1:
        return 0.0
    link = gpu.interconnect_bandwidth_bytes_per_s
    if not link:
        raise CapcalcError(
            f"{gpu.name} has no interconnect_bandwidth in its profile: tp={tp} needs it for the all-reduces"
        )
    message = tokens * model.hidden_size * activation_bytes
    latency = eff.allreduce_latency_s + (tp - 1) * eff.allreduce_latency_per_rank_s
    per_call = 2.0 * (tp - 1) / tp * message / (link * eff.allreduce_bandwidth_efficiency) + latency
    return 2 * model.num_layers * per_call


def tokens_per_expert(model: ModelProfile, tokens: float, touched: float | None) -> float:
    """Tokens each touched routed expert multiplies in a step: tokens x k / experts touched
    (uniform routing; ``touched`` is StepCost.experts_touched_per_layer). The expert matmuls'
    FLOP/s efficiency follows eff() of this, not of the step's tokens: 2,048 prompt tokens
    over 128 experts, 8 each, is 128 tokens per expert, a much smaller matrix product than
    the dense layers'."""
    if model.moe is None or not touched:
        return float(tokens)
    return tokens * model.moe.experts_per_token / touched


class StepTimes(NamedTuple):
    """The parts of one step's time (seconds; see the module docstring)."""

    time_s: float
    compute_s: float
    memory_s: float
    weight_memory_s: float
    kv_memory_s: float
    overhead_s: float
    comm_s: float
    attention_compute_s: float
    flops_efficiency: float
    peak_flops_per_s: float


def step_times(
    model: ModelProfile,
    gpu: HardwareProfile,
    compute_dtype: str,
    efficiency: Efficiency,
    *,
    prefill: bool,
    tokens: float,
    sequences: float,
    tp: int,
    weight_bytes: float,
    kv_bytes: float,
    matmul_flops: float,
    routed_flops: float,
    attention_flops: float,
    expert_tokens: float,
    kernel_roofline: bool = False,
) -> StepTimes:
    """Time a step given its totals (per GPU): the arithmetic of :func:`predict_step`, which
    takes them from a :class:`StepCost`; a simulation that knows them already calls this
    directly (:meth:`capcalc.serving.stepmodel.MixedStepModel.step_time_s`).
    ``matmul_flops`` includes ``routed_flops``; ``expert_tokens`` is
    :func:`tokens_per_expert`."""
    eff = efficiency
    bandwidth = gpu.bandwidth_bytes_per_s
    weight_s = weight_bytes / (bandwidth * eff.weight_bandwidth_efficiency)
    kv_s = kv_bytes / (bandwidth * eff.kv_bandwidth_efficiency)
    if prefill:
        flops_eff = eff.flops_efficiency(tokens)
        # each routed expert multiplies only the tokens routed to it
        expert_eff = eff.flops_efficiency(expert_tokens) if routed_flops else flops_eff
    else:
        flops_eff = expert_eff = eff.prefill_flops_efficiency
    if compute_dtype in LOW_PRECISION:
        expert_eff *= eff.expert_flops_ratio
    peak = gpu.peak(compute_dtype)
    matmul_s = (matmul_flops - routed_flops) / (peak * flops_eff) + routed_flops / (peak * expert_eff)
    attention_s = attention_flops / (gpu.peak(serving_dtype(model.native_dtype)) * flops_eff)
    compute_s = matmul_s + attention_s
    memory_s = weight_s + kv_s
    # kernel classes one after another, or the whole step under one bound
    split = max(matmul_s, weight_s) + max(attention_s, kv_s)
    core = split if kernel_roofline else max(compute_s, memory_s)
    overhead = (
        model.num_layers * (eff.layer_overhead_s + sequences * eff.seq_layer_overhead_s)
        + model.num_moe_layers * (eff.moe_layer_overhead_s + tokens * eff.moe_token_overhead_s)
        + eff.step_overhead_s
    )
    activation_bytes = 4.0 if compute_dtype in ("fp32", "tf32") else 2.0
    comm = allreduce_s(model, gpu, tokens, tp, eff, activation_bytes)
    return StepTimes(
        core + overhead + comm,
        compute_s,
        memory_s,
        weight_s,
        kv_s,
        overhead,
        comm,
        attention_s,
        flops_eff,
        peak,
    )


def step_totals(model: ModelProfile, cost: StepCost) -> dict:
    """The totals of ``cost`` that :func:`step_times` takes, as its keyword arguments."""
    return {
        "prefill": cost.phase == "prefill",
        "tokens": cost.tokens,
        "sequences": cost.sequences,
        "tp": cost.tp,
        "weight_bytes": cost.weight_bytes,
        "kv_bytes": cost.kv_bytes,
        "matmul_flops": cost.matmul_flops,
        "routed_flops": cost.component("routed_experts").flops,
        "attention_flops": cost.attention_flops,
        "expert_tokens": tokens_per_expert(model, cost.tokens, cost.experts_touched_per_layer),
    }


def predict_step(
    model: ModelProfile,
    gpu: HardwareProfile,
    cost: StepCost,
    compute_dtype: str,
    efficiency: Efficiency,
    kernel_roofline: bool = False,
) -> StepPrediction:
    """Time ``cost`` on ``gpu`` at ``efficiency`` (see the module docstring).

    Prefill uses the FLOP/s curve eff(n); decode uses its asymptote, because the
    memory term already prices what makes small matrix products slow (reading weights).

    ``kernel_roofline``: the kernels of a step run one after another, each bound by its own
    resource, so the step's core time is max(matmul_s, weight_s) + max(attention_s, kv_s)
    instead of max(compute_s, memory_s). The two agree when one bound holds for both
    kernel classes (a prefill: compute; a decode: memory); they differ in a mixed step,
    where the chunk's matrix products are compute-bound while the decodes' attention is
    bound by reading their KV cache, which the single max would hide behind the products."""
    t = step_times(
        model, gpu, compute_dtype, efficiency, kernel_roofline=kernel_roofline, **step_totals(model, cost)
    )
    return StepPrediction(
        time_s=t.time_s,
        compute_s=t.compute_s,
        memory_s=t.memory_s,
        weight_memory_s=t.weight_memory_s,
        kv_memory_s=t.kv_memory_s,
        overhead_s=t.overhead_s,
        comm_s=t.comm_s,
        bound="compute" if t.compute_s >= t.memory_s else "memory",
        flops=cost.flops,
        bytes=cost.bytes,
        flops_efficiency=t.flops_efficiency,
        compute_dtype=compute_dtype,
        peak_flops_per_s=t.peak_flops_per_s,
        cost=cost,
        attention_compute_s=t.attention_compute_s,
        kernel_roofline=kernel_roofline,
    )


def predict_decode_step(
    model: ModelProfile,
    gpu: HardwareProfile,
    batch: int,
    ctx: int,
    deployment: Deployment | None = None,
    efficiency: Efficiency | None = None,
    **fields,
) -> StepPrediction:
    """One decode step of ``batch`` sequences each attending to ``ctx`` tokens under
    ``deployment`` (``fields``: changes to it, :meth:`Deployment.of`).
    ``efficiency`` None means the datasheet roofline (:meth:`Efficiency.ideal`)."""
    d = Deployment.of(deployment, **fields)
    return _predict(model, gpu, decode_cost(model, batch, ctx, d), d, efficiency)


def predict_prefill(
    model: ModelProfile,
    gpu: HardwareProfile,
    batch: int,
    prompt_tokens: int,
    deployment: Deployment | None = None,
    efficiency: Efficiency | None = None,
    **fields,
) -> StepPrediction:
    """The prefill of ``batch`` prompts of ``prompt_tokens`` tokens as one step."""
    d = Deployment.of(deployment, **fields)
    return _predict(model, gpu, prefill_cost(model, batch, prompt_tokens, d), d, efficiency)


def _predict(model, gpu, cost: StepCost, d: Deployment, efficiency) -> StepPrediction:
    dtype = resolve_compute_dtype(d.compute_dtype, d.weight_dtype, model, gpu)
    return predict_step(model, gpu, cost, dtype, efficiency or Efficiency.ideal())


def decode_contexts(prompt_tokens: int, output_tokens: int, samples: int = ITL_SAMPLES) -> list[int]:
    """Contexts of the decode steps (P+1 ... P+O-1), every one when there are at most
    ``samples``, else ``samples`` evenly spaced ones including both ends. O=1 has no
    decode step: the next one (P+1) stands in."""
    first, last = prompt_tokens + 1, prompt_tokens + max(output_tokens - 1, 1)
    steps = last - first + 1
    if steps <= samples:
        return list(range(first, last + 1))
    return [first + round(i * (steps - 1) / (samples - 1)) for i in range(samples)]


@dataclass(frozen=True)
class LatencyResult:
    model: str
    gpu: str
    batch: int
    prompt_tokens: int
    output_tokens: int
    tp: int
    weight_dtype: str
    kv_dtype: str
    compute_dtype: str
    ttft_s: float
    itl_s: float
    itl_first_s: float
    itl_last_s: float
    e2e_s: float
    output_tokens_per_s: float
    output_tokens_per_s_per_user: float
    total_tokens_per_s: float
    prefill_bound: str
    decode_bound: str  # at the mean decode context
    prefill_compute_s: float
    prefill_memory_s: float
    prefill_step_flops_efficiency: float  # eff(n) at the prefill's token count
    decode_weight_memory_s: float  # at the mean decode context
    decode_kv_memory_s: float
    decode_compute_s: float
    step_overhead_total_s: float  # layers x layer_overhead + moe_layers x moe_layer_overhead + step_overhead
    allreduce_s_per_decode_step: float
    ttft_roofline_s: float  # datasheet lower bounds, for comparison
    itl_roofline_s: float
    weight_bytes_per_step: float  # per GPU, first decode step
    kv_bytes_per_gpu_last_step: float
    #: speculative decoding (:func:`predict_speculative_latency`; 0 / None without it)
    spec_tokens: int = 0
    acceptance: float | None = None
    draft_model: str | None = None
    tokens_per_target_step: float = 1.0  # (1 - A^(K+1)) / (1 - A)
    verify_step_s: float = 0.0  # the target step of K+1 tokens per sequence, at the mean context
    draft_steps_s: float = 0.0  # the K draft steps of one round, at the mean context
    itl_without_spec_s: float | None = None  # the plain decode's itl_s, for comparison

    def record(self) -> dict:
        """The flat output record (``schema_version`` first), as the CLI's JSON prints it."""
        return flat_record(self)


def predict_latency(
    model: ModelProfile,
    gpu: HardwareProfile,
    prompt_tokens: int,
    output_tokens: int,
    batch: int = 1,
    deployment: Deployment | None = None,
    efficiency: Efficiency | ResolvedEfficiency | None = None,
    **fields,
) -> LatencyResult:
    """TTFT, inter-token latency and throughput of ``batch`` requests run together under
    ``deployment`` (``fields``: changes to it, :meth:`Deployment.of`; its ``pp`` plays no
    part: one GPU of ``tp`` runs every layer)."""
    if output_tokens < 1:
        raise CapcalcError(
            f"output_tokens must be at least 1, got {output_tokens}", parameter="output_tokens"
        )
    d = Deployment.of(deployment, **fields)
    tp = d.tp
    if isinstance(efficiency, ResolvedEfficiency):
        efficiency = efficiency.efficiency
    eff = efficiency or Efficiency.ideal()
    # Each step's FLOPs and bytes are computed once and timed twice: at the achievable
    # rates and at the datasheet roofline (sweeps run this thousands of times).
    ideal = Efficiency.ideal()
    dtype = resolve_compute_dtype(d.compute_dtype, d.weight_dtype, model, gpu)
    prefill_step = prefill_cost(model, batch, prompt_tokens, d)
    prefill = predict_step(model, gpu, prefill_step, dtype, eff)
    ideal_prefill = predict_step(model, gpu, prefill_step, dtype, ideal)
    contexts = decode_contexts(prompt_tokens, output_tokens)
    mid = (contexts[0] + contexts[-1]) // 2  # the mean decode context, for the itemised split
    costs = decode_costs(model, batch, [*contexts, mid], d)
    steps = [predict_step(model, gpu, costs[c], dtype, eff) for c in contexts]
    itl = sum(s.time_s for s in steps) / len(steps)
    middle = predict_step(model, gpu, costs[mid], dtype, eff)
    ideal_itl = sum(predict_step(model, gpu, costs[c], dtype, ideal).time_s for c in contexts) / len(contexts)
    e2e = prefill.time_s + (output_tokens - 1) * itl
    return LatencyResult(
        model=model.name,
        gpu=gpu.name,
        batch=batch,
        prompt_tokens=prompt_tokens,
        output_tokens=output_tokens,
        tp=tp,
        weight_dtype=prefill.cost.weight_dtype,
        kv_dtype=prefill.cost.kv_dtype,
        compute_dtype=prefill.compute_dtype,
        ttft_s=prefill.time_s,
        itl_s=itl,
        itl_first_s=steps[0].time_s,
        itl_last_s=steps[-1].time_s,
        e2e_s=e2e,
        **throughputs(batch, prompt_tokens, output_tokens, itl, e2e),
        prefill_bound=prefill.bound,
        decode_bound=middle.bound,
        prefill_compute_s=prefill.compute_s,
        prefill_memory_s=prefill.memory_s,
        prefill_step_flops_efficiency=prefill.flops_efficiency,
        decode_weight_memory_s=middle.weight_memory_s,
        decode_kv_memory_s=middle.kv_memory_s,
        decode_compute_s=middle.compute_s,
        step_overhead_total_s=middle.overhead_s,
        allreduce_s_per_decode_step=middle.comm_s,
        ttft_roofline_s=ideal_prefill.time_s,
        itl_roofline_s=ideal_itl,
        weight_bytes_per_step=steps[0].cost.weight_bytes,
        kv_bytes_per_gpu_last_step=steps[-1].cost.component("kv_read").bytes,
    )


# --------------------------------------------------------------------------- speculative decoding


def throughputs(batch: int, prompt_tokens: int, output_tokens: int, itl_s: float, e2e_s: float) -> dict:
    """A static batch's rates in tokens per second: ``batch x O / e2e`` out, ``1 / itl`` for
    each user, and ``batch x (P + O) / e2e`` in and out together."""
    return {
        "output_tokens_per_s": batch * output_tokens / e2e_s,
        "output_tokens_per_s_per_user": 1.0 / itl_s,
        "total_tokens_per_s": batch * (prompt_tokens + output_tokens) / e2e_s,
    }


def expected_tokens_per_step(spec_tokens: int, acceptance: float) -> float:
    """Tokens one target step yields with ``spec_tokens`` = K drafted tokens each accepted
    with probability ``acceptance`` = A independently of the others (Leviathan, Kalman and
    Matias 2023, "Fast Inference from Transformers via Speculative Decoding", eq. 1)::

        E = (1 - A^(K+1)) / (1 - A)          (A = 1: K + 1; A = 0: 1, the target's own token)

    The accepted run is geometric: token i of the draft survives with probability A^i, and
    the target adds one token of its own after the first rejection (or after all K)."""
    if acceptance >= 1.0:
        return float(spec_tokens + 1)
    return (1.0 - acceptance ** (spec_tokens + 1)) / (1.0 - acceptance)


def verify_cost(plain: StepCost, widened: StepCost, spec_tokens: int) -> StepCost:
    """The target step that verifies ``spec_tokens`` + 1 tokens of each of ``plain.batch``
    sequences: the decode step of ``batch x (K+1)`` tokens (``widened``: every matrix
    product, attention score, KV write and logit per token, the experts the tokens touch)
    with the cache read once per sequence, as ``plain`` (one token per sequence) reads it:
    the K+1 query tokens of a sequence attend to one cache. Each of them is taken to attend
    ``ctx`` tokens (the last K attend up to K more: under 1% at contexts past 100 K)."""
    read = plain.component("kv_read")
    state = plain.component("recurrent_update")
    components = tuple(
        read
        if c.name == "kv_read"
        else Component(c.name, c.flops, state.bytes, c.kind)
        if c.name == "recurrent_update"
        else c
        for c in widened.components
    )
    return replace(widened, batch=plain.batch, new_tokens=spec_tokens + 1, components=components)


def draft_deployment(draft: Draft, deployment: Deployment) -> Deployment:
    """How the draft runs: MTP layers as the target's weights are stored; a draft model in its
    own checkpoint dtype (``auto``), at the target's tp and KV dtype."""
    if draft.method == MTP:
        return deployment
    return replace(deployment, weight_dtype="auto", compute_dtype="auto", quantize_embeddings=False)


def predict_speculative_latency(
    model: ModelProfile,
    gpu: HardwareProfile,
    prompt_tokens: int,
    output_tokens: int,
    spec_tokens: int,
    acceptance: float,
    draft: Draft,
    batch: int = 1,
    deployment: Deployment | None = None,
    efficiency: Efficiency | ResolvedEfficiency | None = None,
    **fields,
) -> LatencyResult:
    """:func:`predict_latency` with speculative decoding: each round the draft proposes
    K = ``spec_tokens`` tokens in K decode steps of its own, and one target step verifies
    the K + 1 tokens of every sequence (:func:`verify_cost`), yielding
    E = :func:`expected_tokens_per_step` tokens per sequence at acceptance A::

        itl_s = (verify_step_s + K x draft_step_s) / E

    averaged over the decode contexts as :func:`predict_latency` averages the plain step;
    TTFT is the plain prefill (the draft's prefill over the prompt is left out: one pass
    of a model a layer or a few deep). ``e2e_s = ttft_s + (O - 1) x itl_s`` and the
    throughputs follow from it. A = 0 still pays the draft and the wider verify step for
    one token, so it is slower than no speculation; A = 1 gives K + 1 tokens per round."""
    if isinstance(spec_tokens, bool) or not isinstance(spec_tokens, int) or spec_tokens < 1:
        raise CapcalcError(
            f"spec_tokens must be a whole number of at least 1, got {spec_tokens!r}", parameter="spec_tokens"
        )
    if not 0.0 <= acceptance <= 1.0:
        raise CapcalcError(f"acceptance must be in [0, 1], got {acceptance:g}", parameter="acceptance")
    d = Deployment.of(deployment, **fields)
    base = predict_latency(model, gpu, prompt_tokens, output_tokens, batch, d, efficiency)
    if isinstance(efficiency, ResolvedEfficiency):
        efficiency = efficiency.efficiency
    eff = efficiency or Efficiency.ideal()
    ideal = Efficiency.ideal()
    k = spec_tokens
    dtype = resolve_compute_dtype(d.compute_dtype, d.weight_dtype, model, gpu)
    dd = draft_deployment(draft, d)
    draft_dtype = resolve_compute_dtype(dd.compute_dtype, dd.weight_dtype, draft.model, gpu)
    contexts = decode_contexts(prompt_tokens, output_tokens)
    mid = (contexts[0] + contexts[-1]) // 2
    wanted = [*contexts, mid]
    plain = decode_costs(model, batch, wanted, d)
    widened = decode_costs(model, batch * (k + 1), wanted, d)
    drafts = decode_costs(draft.model, batch, wanted, dd)
    tokens = expected_tokens_per_step(k, acceptance)

    def round_s(ctx: int, e: Efficiency) -> tuple[float, float]:
        verify = predict_step(model, gpu, verify_cost(plain[ctx], widened[ctx], k), dtype, e).time_s
        return verify, k * predict_step(draft.model, gpu, drafts[ctx], draft_dtype, e).time_s

    per_token = [sum(round_s(c, eff)) / tokens for c in contexts]
    itl = sum(per_token) / len(per_token)
    ideal_itl = sum(sum(round_s(c, ideal)) / tokens for c in contexts) / len(contexts)
    verify_mid, draft_mid = round_s(mid, eff)
    e2e = base.ttft_s + (output_tokens - 1) * itl
    return replace(
        base,
        itl_s=itl,
        itl_first_s=per_token[0],
        itl_last_s=per_token[-1],
        e2e_s=e2e,
        **throughputs(batch, prompt_tokens, output_tokens, itl, e2e),
        itl_roofline_s=ideal_itl,
        spec_tokens=k,
        acceptance=acceptance,
        draft_model=draft.name,
        tokens_per_target_step=tokens,
        verify_step_s=verify_mid,
        draft_steps_s=draft_mid,
        itl_without_spec_s=base.itl_s,
    )

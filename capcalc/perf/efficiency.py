"""Achievable fractions of the datasheet, and fixed costs: the named efficiency parameters.

A roofline at datasheet bandwidth and peak FLOP/s is a lower bound that real engines
do not reach. ``capcalc latency`` predicts a step as

    memory_s  = weight_bytes / (bandwidth x weight_bandwidth_efficiency)
              + kv_bytes     / (bandwidth x kv_bandwidth_efficiency)
    compute_s = flops / (peak x eff(n)),  eff(n) = prefill_flops_efficiency x n / (n + prefill_tokens_half_efficiency)
    step_s    = max(compute_s, memory_s) + layers x (layer_overhead_s + s x seq_layer_overhead_s)
              + moe_layers x (moe_layer_overhead_s + n x moe_token_overhead_s)
              + step_overhead_s (+ all-reduces)

where ``n`` is the number of tokens the step multiplies through the weights (the
batch in decode, batch x prompt in prefill) and ``s`` the sequences it advances. A datasheet roofline is the same
formula with :meth:`Efficiency.ideal` (every fraction 1, no fixed costs).

Each parameter is resolved on its own, first found wins:

    flag  >  calibration file (``capcalc measure --save``)  >  the GPU profile's ``efficiency:`` block
          >  built-in default for the GPU's vendor

The built-in defaults reproduce what production engines (vLLM, TensorRT-LLM, gpt-fast
with CUDA graphs) publish; each number below names the measurement it comes from.
``docs/latency.md`` shows the arithmetic, and ``tests/test_latency_published.py``
checks the predictions against those measurements.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from capcalc.core.errors import CapcalcError
from capcalc.core.inputs import check_number, excerpt
from capcalc.core.units import parse_duration
from capcalc.schema.profiles import HardwareProfile

SOURCES = ("flag", "calibration", "profile", "default")


@dataclass(frozen=True)
class Efficiency:
    """Achievable fractions of the datasheet and fixed costs of one GPU + engine."""

    #: fraction of datasheet bandwidth reached streaming weights (decode GEMV / small GEMM)
    weight_bandwidth_efficiency: float = 1.0
    #: fraction of datasheet bandwidth reached streaming the KV cache in attention
    kv_bandwidth_efficiency: float = 1.0
    #: asymptotic fraction of dense peak FLOP/s reached by the matrix products of a step
    prefill_flops_efficiency: float = 1.0
    #: tokens in the step at which that fraction is half reached (0: always the asymptote)
    prefill_tokens_half_efficiency: float = 0.0
    #: fixed cost per layer per step: kernel launches, tails, small un-fused ops
    layer_overhead_s: float = 0.0
    #: fixed cost per step: sampling, scheduling, host work not hidden by CUDA graphs
    step_overhead_s: float = 0.0
    #: fixed cost of each tensor-parallel all-reduce call (on top of ring transfer time)
    allreduce_latency_s: float = 0.0
    #: fixed cost per MoE layer per step, on top of layer_overhead_s: routing (router
    #: softmax/top-k, token permutation, expert dispatch); 0 for models without MoE layers
    moe_layer_overhead_s: float = 0.0
    #: cost per routed token per MoE layer: gathering each (token, expert) pair's hidden
    #: state to its expert and scattering the result back, where the engine's kernels do
    #: not fuse it into the expert GEMMs; 0 for models without MoE layers
    moe_token_overhead_s: float = 0.0
    #: extra fixed cost of each all-reduce call per GPU beyond the first: the call's fixed
    #: cost at tp GPUs is allreduce_latency_s + (tp - 1) x this (0: flat in tp)
    allreduce_latency_per_rank_s: float = 0.0
    #: share of the dense products' FLOP/s efficiency that the routed experts' fp8/fp4 products
    #: reach at the same tokens per matrix: a block-scaled grouped GEMM over many experts pays
    #: per-expert tile padding, token permutation and scale handling that one dense GEMM does
    #: not (1: as dense; 16-bit expert products always run as dense)
    expert_flops_ratio: float = 1.0
    #: cost per sequence per layer per step: work each layer's kernels do for every sequence
    #: in the step whatever its length (paged-attention block tables and per-sequence
    #: attention tails, the decode attention kernel's split-KV reduction, per-row norm and
    #: sampling bookkeeping); 0: fixed costs do not grow with the batch
    seq_layer_overhead_s: float = 0.0
    #: share of the interconnect bandwidth an all-reduce's transfer reaches (nccl-tests' busbw
    #: over the link's): the collective's own kernels, chunk pipelining and synchronisation
    #: between the ranks (1: the datasheet link)
    allreduce_bandwidth_efficiency: float = 1.0
    # (the last six come last, so that positional construction of the earlier fields keeps its meaning)

    @classmethod
    def ideal(cls) -> Efficiency:
        """Datasheet roofline: every fraction 1, no fixed costs."""
        return cls()

    def flops_efficiency(self, tokens: float) -> float:
        """eff(n) = prefill_flops_efficiency x n / (n + prefill_tokens_half_efficiency)."""
        n_half = self.prefill_tokens_half_efficiency
        return self.prefill_flops_efficiency * tokens / (tokens + n_half)

    def as_record(self) -> dict[str, float]:
        """Flat ``assume_<name>`` keys for output records."""
        return {f"assume_{k}": v for k, v in asdict(self).items()}


PARAMETERS: tuple[str, ...] = tuple(f.name for f in fields(Efficiency))
_FRACTIONS = (
    "weight_bandwidth_efficiency",
    "kv_bandwidth_efficiency",
    "prefill_flops_efficiency",
    "expert_flops_ratio",
    "allreduce_bandwidth_efficiency",
)
_DURATIONS = (
    "layer_overhead_s",
    "step_overhead_s",
    "allreduce_latency_s",
    "moe_layer_overhead_s",
    "moe_token_overhead_s",
    "allreduce_latency_per_rank_s",
    "seq_layer_overhead_s",
)

#: what each parameter means, for help text and docs
DESCRIPTIONS = {
    "weight_bandwidth_efficiency": "fraction of datasheet bandwidth reached streaming weights",
    "kv_bandwidth_efficiency": "fraction of datasheet bandwidth reached streaming the KV cache",
    "prefill_flops_efficiency": "asymptotic fraction of dense peak FLOP/s reached by matrix products",
    "prefill_tokens_half_efficiency": "tokens per step at which half that fraction is reached",
    "layer_overhead_s": "fixed cost per layer per step (launches, tails)",
    "step_overhead_s": "fixed cost per step (sampling, scheduling)",
    "allreduce_latency_s": "fixed cost per tensor-parallel all-reduce call",
    "moe_layer_overhead_s": "fixed cost per MoE layer per step (routing, token permutation)",
    "moe_token_overhead_s": "cost per token per MoE layer (dispatch to and from the experts)",
    "allreduce_latency_per_rank_s": "extra fixed cost per all-reduce call per GPU beyond the first",
    "expert_flops_ratio": "share of the dense FLOP/s efficiency the fp8/fp4 routed experts reach",
    "seq_layer_overhead_s": "cost per sequence per layer per step (per-sequence kernel work)",
    "allreduce_bandwidth_efficiency": "share of the interconnect bandwidth an all-reduce's transfer reaches",
}


# --------------------------------------------------------------------------- built-in defaults
#
# NVIDIA (HBM, datacenter; also used for parts without a vendor table):
#
# * weight_bandwidth_efficiency 0.80 and kv_bandwidth_efficiency 0.80 -- batch-1 decode
#   of dense 7-8B models, where weights are >95% of the bytes:
#     - gpt-fast README (github.com/pytorch-labs/gpt-fast, "Benchmarks"): Llama-2-7B bf16,
#       batch 1, A100-80GB power-limited to 330 W: 104.9 tok/s = 1397 GB/s achieved
#       *including* every fixed cost (68.5% of 2039 GB/s; the README notes ~1700 GB/s is
#       the empirical peak of that power-limited card);
#     - vLLM 0.23, Llama-3.1-8B bf16, A100-SXM4-40GB, one request, 1024 in / 128 out:
#       ~75 tok/s, "roughly 77% of the GPU's memory-bandwidth ceiling"
#       (johnmusgrave.com/p/vllm-throughput-latency-sweep-on);
#     - vLLM 0.21, Llama-3.1-8B fp16, H100-80GB-HBM3, concurrency 1: TPOT p50 6.48 ms
#       (yobitelcomm.github.io/bench/recipes/concurrency-sweep/) = 2.48 TB/s, 74% of 3.35.
#   With the fixed costs below these give 0.80 for the streaming itself. The KV figure
#   is checked against KV-dominated large-batch runs: TensorRT-LLM v0.6.1 A100 FP16
#   LLaMA-7B, batch 60, 128 in / 2048 out, 1,928 output tok/s (docs/source/performance.md
#   in github.com/NVIDIA/TensorRT-LLM), which 0.80 reproduces within a few percent.
# * prefill_flops_efficiency 0.70, prefill_tokens_half_efficiency 140 -- fitted to
#   TensorRT-LLM v0.5 first-token latency, A100 FP16, batch 1 (same file, "Low Latency"):
#   LLaMA-7B 128 tokens 16 ms, 2048 tokens 133 ms; LLaMA-70B TP4 128 tokens 47 ms,
#   2048 tokens 377 ms (all four met within 4%).
#   For scale: the best *single* bf16 matmul reaches 86.9% of peak on A100 SXM and 80.3%
#   on H100 SXM (stas00/ml-engineering, compute/accelerator/README.md, "Maximum Achievable
#   Matmul FLOPS comparison table"); a whole prefill (attention, norms, activations,
#   unequal GEMM shapes) reaches about 0.83 of that.
# * layer_overhead_s 10 us, step_overhead_s 0.3 ms -- not separable from bandwidth in
#   the batch-1 figures above; chosen with them so that all three are met within 10%.
#   They dominate small models (a 1B model's 16 layers cost 0.46 ms of fixed time).
# * moe_layer_overhead_s 0 -- production fused-MoE paths fold routing into a few small
#   kernels (vLLM/SGLang: topk_softmax, moe_align_block_size, then the fused expert GEMMs),
#   and no published figure gives their cost per layer in a CUDA-graphed decode step. The
#   one routing kernel that is benchmarked, moe_align_block_size, was timed in isolation at
#   24 us on H100 at batch 1 (sglang PR #2767, Jan 2025) and 8-9 us at 16 tokens after
#   later rewrites (sglang PR #14133): a factor of 3 between releases, timed in isolation
#   with its launch, and only one of the routing kernels -- so not a default.
#   The default assumes no extra cost; `capcalc measure` on an MoE model fits it
#   (docs/latency.md). Plain PyTorch routing costs far more (~115 us per layer at batch 1
#   on an H100, docs/measure.md).
# * moe_token_overhead_s 0 -- likewise: fused-MoE kernels gather each token's hidden state
#   inside the expert GEMM (vLLM's fused_moe reads rows through sorted_token_ids), so the
#   dispatch costs no separate pass. A loop that permutes tokens with separate gather and
#   scatter kernels pays per token; `capcalc measure` fits it (docs/validation.md).
# * allreduce_latency_s 10 us -- the per-call floor of an NVLink all-reduce of a few
#   hundred KB; the TP4 first-token figure above is met with it.
# * allreduce_latency_per_rank_s 0 -- flat in tp, as before it existed. gpt-fast on A100
#   (README, tensor-parallel Llama-2-70B rows) implies a per-call cost rising from ~3 us at tp 2
#   to ~17 us at tp 8, which
#   is not one published measurement to pin a default on; `capcalc measure --gpu --tp N`
#   fits it from all-reduces timed on 2, 4, ..., N GPUs of one host.
# * seq_layer_overhead_s 0 -- not separable from bandwidth at batch 1, where every figure
#   above was measured. The engines' served runs show it (`--engine`, capcalc/serving/engines.py):
#   at 32-256 clients the TPOT left unexplained grows by 13-23 us per running sequence, and a
#   cost per sequence per layer meets that across models better than one per sequence.
#
# AMD (Instinct, ROCm):
# * weight/kv_bandwidth_efficiency 0.65 -- gpt-fast README, "AMD": Llama-2-7B bf16 batch 1
#   on one GCD of an MI250X, 76.33 tok/s = 1028.7 GB/s, 63% of the GCD's 1.64 TB/s.
# * prefill_flops_efficiency 0.50 -- best bf16 matmul on MI300X is 60.1% of peak
#   (ml-engineering MAMF table above), scaled by the same 0.83 as NVIDIA.
_NVIDIA = Efficiency(
    weight_bandwidth_efficiency=0.80,
    kv_bandwidth_efficiency=0.80,
    prefill_flops_efficiency=0.70,
    prefill_tokens_half_efficiency=140.0,
    layer_overhead_s=10e-6,
    step_overhead_s=0.3e-3,
    allreduce_latency_s=10e-6,
    moe_layer_overhead_s=0.0,
    moe_token_overhead_s=0.0,
    allreduce_latency_per_rank_s=0.0,
)
_AMD = replace(
    _NVIDIA,
    weight_bandwidth_efficiency=0.65,
    kv_bandwidth_efficiency=0.65,
    prefill_flops_efficiency=0.50,
)
VENDOR_DEFAULTS: dict[str, Efficiency] = {"nvidia": _NVIDIA, "amd": _AMD}


def default_efficiency(gpu: HardwareProfile) -> Efficiency:
    """Built-in defaults for the GPU's vendor; other vendors get the NVIDIA figures."""
    return VENDOR_DEFAULTS.get(gpu.vendor.lower(), _NVIDIA)


# --------------------------------------------------------------------------- validation


def check_value(name: str, value: Any, where: str | None = None) -> float:
    """Validate one efficiency parameter: a fraction in (0, 1], a non-negative token count,
    or a non-negative duration ('10 us', '0.3 ms' or seconds). Returns base units.
    ``where``: the file or block it comes from; None for a value given directly (an
    override), whose errors then name the parameter alone."""
    prefix = f"{where}: " if where else ""
    parameter = None if where else name
    if name not in PARAMETERS:
        import difflib

        close = difflib.get_close_matches(str(name), PARAMETERS, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(PARAMETERS)}"
        raise CapcalcError(f"{prefix}unknown efficiency parameter {excerpt(name)} ({hint})")
    if name in _DURATIONS and not isinstance(value, bool):
        try:
            number = parse_duration(value, f"{prefix}{name}")
        except CapcalcError as exc:
            exc.parameter = parameter
            raise
    elif name in _DURATIONS or isinstance(value, bool) or not isinstance(value, (int, float)):
        number = None
    else:
        try:
            number = check_number(value, f"{prefix}{name}")
        except CapcalcError as exc:
            exc.parameter = parameter
            raise
    if number is None:
        raise CapcalcError(f"{prefix}{name} expected a number, got {excerpt(value)}", parameter=parameter)
    if not math.isfinite(number):
        raise CapcalcError(f"{prefix}{name} must be finite, got {excerpt(value)}", parameter=parameter)
    if name in _FRACTIONS and not 0 < number <= 1:
        raise CapcalcError(
            f"{prefix}{name} must be a fraction in (0, 1], got {excerpt(value)}", parameter=parameter
        )
    if number < 0 or number != number:
        raise CapcalcError(f"{prefix}{name} must be >= 0, got {excerpt(value)}", parameter=parameter)
    return number


def check_mapping(mapping: Any, where: str) -> dict[str, float]:
    """Validate an ``efficiency:`` mapping (profile block, calibration entry)."""
    if mapping is None:
        return {}
    if not isinstance(mapping, dict):
        raise CapcalcError(f"{where}: expected a mapping of efficiency parameters, got {excerpt(mapping)}")
    return {str(k): check_value(str(k), v, where) for k, v in mapping.items()}


# --------------------------------------------------------------------------- resolution


@dataclass(frozen=True)
class ResolvedEfficiency:
    """The parameters used, where each came from, and a one-word summary."""

    efficiency: Efficiency
    sources: dict[str, str]  # parameter -> flag | calibration | profile | default
    calibration_date: str | None = None  # the entry's measured_at, when calibrated
    calibration_path: str | None = None  # the calibration file of that entry, when calibrated

    @property
    def calibrated(self) -> bool:
        """Some parameter came from a calibration entry (one holding only ``measured:``
        device figures calibrates nothing)."""
        return "calibration" in self.sources.values()

    @property
    def source(self) -> str:
        """The highest-priority source any parameter came from (flag > calibration > ...)."""
        used = set(self.sources.values())
        return next(s for s in SOURCES if s in used)

    def as_record(self) -> dict[str, Any]:
        return {**self.efficiency.as_record(), "efficiency_source": self.source}


def resolve_efficiency(
    gpu: HardwareProfile,
    flags: dict[str, Any] | None = None,
    calibration: dict[str, Any] | None = None,
) -> ResolvedEfficiency:
    """Resolve each parameter: ``flags`` > ``calibration`` (the whole file's mapping, the
    entry for ``gpu.name`` is used) > ``gpu.efficiency`` > vendor default."""
    layers: list[tuple[str, dict[str, float]]] = []
    flag_values = {k: v for k, v in (flags or {}).items() if v is not None}
    layers.append(("flag", {k: check_value(k, v) for k, v in flag_values.items()}))
    entry = calibration_entry(calibration, gpu.name)
    if entry is not None:
        layers.append(("calibration", check_mapping(entry.get("efficiency"), f"calibration for {gpu.name}")))
    layers.append(("profile", check_mapping(gpu.efficiency, f"{gpu.path or gpu.name}: efficiency")))
    base = default_efficiency(gpu)
    values: dict[str, float] = {}
    sources: dict[str, str] = {}
    for name in PARAMETERS:
        for source, layer in layers:
            if name in layer:
                values[name], sources[name] = layer[name], source
                break
        else:
            values[name], sources[name] = getattr(base, name), "default"
    resolved = ResolvedEfficiency(efficiency=Efficiency(**values), sources=sources)
    if entry is None or not resolved.calibrated:
        return resolved
    when = entry.get("measured_at")
    return replace(
        resolved,
        calibration_date=str(when) if when else None,
        calibration_path=str(entry["path"]) if entry.get("path") else None,
    )


def calibration_entry(calibration: dict[str, Any] | None, gpu_name: str) -> dict[str, Any] | None:
    """The calibration file's entry for ``gpu_name`` (None when absent); an entry read by
    :func:`capcalc.sources.calibration.load_calibration` carries its file as ``path``."""
    if not calibration:
        return None
    entry = (calibration.get("gpus") or {}).get(gpu_name)
    return entry if isinstance(entry, dict) else None

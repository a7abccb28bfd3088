"""Per-engine scheduler defaults and serving parameters (vLLM, SGLang, TensorRT-LLM).

An :class:`EngineConfig` says how one serving engine schedules a replica
(:mod:`capcalc.serving.engine` simulates it): the token budget of a step, the largest
running batch, whether decodes and prefill chunks share a step, whether a prompt may
be split, how KV admission works, and the fixed costs outside the forward pass.

Scheduler defaults, by engine, as read from each engine's source:

* vLLM (v1 engine, ``vllm serve`` = the OpenAI API server): ``EngineArgs.get_batch_defaults``
  (vllm/engine/arg_utils.py) gives ``max_num_batched_tokens`` 8192 and ``max_num_seqs``
  1024 on a GPU of at least 70 GiB that is not an A100, else 2048 and 256 (the same rule
  :func:`capcalc.serving.fit.default_batch_limits` uses for the memory fit). Chunked prefill
  is always on in v1; ``Scheduler.schedule`` (vllm/v1/core/sched/scheduler.py) schedules
  the running requests first (decodes take one token, partial prefills the rest of the
  budget), then admits waiting requests FCFS while the token budget, ``max_num_seqs`` and
  the free KV blocks allow; a running request that cannot get a block preempts the last
  admitted one, which is recomputed from scratch later (``PreemptionMode.RECOMPUTE``).
* SGLang (``python -m sglang.launch_server``): ``ServerArgs._handle_gpu_memory_settings``
  (python/sglang/srt/server_args.py, heuristics of sglang PR #10975) sets ``chunked_prefill_size``
  and ``cuda_graph_max_bs`` by GPU memory (MiB, torch's total / 2^20): < 35 GiB 2048, < 60 GiB
  (A100-40GB, L40S) 4096, < 160 GiB (H100, H200) 8192, else (B200, MI300) 16384; and
  ``mem_fraction_static`` (weights + KV pool over the card) from them
  (:func:`sglang_mem_fraction_static`). ``max_running_requests`` is unset by default; the
  scheduler then bounds it by the request pool, ``max_num_reqs = min(max(max_total_num_tokens
  / context_len x 512, 2048), 4096)`` (python/sglang/srt/model_executor/model_runner.py,
  ``init_memory_pool``), at least 2048 -- the default here -- and by the KV pool itself,
  which the simulation's admission enforces. Mixed chunks are off by default
  (``enable_mixed_chunk=False``): the scheduler's ``get_next_batch_to_run`` runs a prefill
  (extend) batch whenever it can form one and decodes otherwise, so a prefill step stalls
  every running decode. Admission reserves each request's future decode tokens
  (``new_token_ratio``, initially ``SGLANG_INIT_NEW_TOKEN_RATIO`` 0.7 of max_new_tokens),
  so it rarely retracts: modelled as reserving that share up front.
* TensorRT-LLM (``trtllm-serve``, PyTorch backend): ``BuildConfig`` / ``TorchLlmArgs``
  defaults ``max_num_tokens`` 8192 and ``max_batch_size`` 2048 (tensorrt_llm/builder.py,
  tensorrt_llm/llmapi/llm_args.py). In-flight batching puts context and generation
  requests in one step; context chunking is off by default (``enable_chunked_prefill``
  False), so a prompt enters a step whole or waits. The capacity scheduler's default
  policy ``GUARANTEED_NO_EVICT`` admits a request only if the KV cache can hold its
  prompt plus all ``max_tokens`` of output, so it never evicts. The KV pool is
  ``KvCacheConfig.free_gpu_memory_fraction`` (default 0.9) of the memory free after the model
  is loaded (tensorrt_llm/llmapi/llm_args.py), not a share of the whole card as in vLLM: for
  a model filling much of the card it is the larger pool.

Fixed costs (``frontend_s``: HTTP, tokenisation, detokenisation and scheduling of one
request, paid once, stretched by the share of the frontend process busy streaming the
running requests' tokens, ``stream_token_host_s`` per token; ``seq_step_overhead_s``: host
work per running sequence per step not hidden behind the GPU, e.g. input preparation,
sampling bookkeeping) are fitted per engine on the served runs; docs/latency.md ("Serving
parameters") names the rows each was fitted on.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from capcalc.core.errors import CapcalcError
from capcalc.perf.efficiency import Efficiency
from capcalc.perf.latency import LOW_PRECISION
from capcalc.schema.profiles import HardwareProfile

GB = 1e9
GIB = 2**30

ENGINES = ("vllm", "sglang", "trtllm")
ADMISSION = ("on_demand", "reserve")


@dataclass(frozen=True)
class EngineConfig:
    """How one engine schedules a replica, and its fixed costs outside the forward pass."""

    engine: str
    #: token budget of one step (vLLM max_num_batched_tokens, SGLang chunked_prefill_size,
    #: TensorRT-LLM max_num_tokens)
    max_num_batched_tokens: int
    #: most requests running at once (vLLM max_num_seqs, SGLang max_running_requests,
    #: TensorRT-LLM max_batch_size)
    max_num_seqs: int
    #: decodes and prefill chunks share a step (vLLM, TensorRT-LLM); else a step with prefill
    #: work runs only prefill and stalls the decodes (SGLang without --enable-mixed-chunk)
    mixed_batches: bool = True
    #: a prompt may be split over steps (chunked prefill); else it enters a step whole
    chunked_prefill: bool = True
    #: 'on_demand': KV blocks taken as tokens are computed, the last admitted request
    #: preempted and recomputed when they run out (vLLM); 'reserve': a request is admitted
    #: only with its prompt plus ``reserve_output_fraction`` of its output reserved
    admission: str = "on_demand"
    reserve_output_fraction: float = 1.0
    #: fixed cost of one request outside the engine steps (HTTP, tokenise, detokenise)
    frontend_s: float = 0.0
    #: host cost per running sequence per step not overlapped with the GPU
    seq_step_overhead_s: float = 0.0
    #: frontend process time per output token it streams (detokenising, the SSE chunk): a
    #: share ``stream_token_host_s x tokens/s`` of that process is busy streaming, so a new
    #: request's ``frontend_s`` takes ``frontend_s / (1 - share)`` (processor sharing)
    stream_token_host_s: float = 0.0
    #: how the KV pool is sized: None as vLLM (gpu_memory_utilization x memory - weights -
    #: activations - overheads); a fraction f as TensorRT-LLM's KvCacheConfig
    #: free_gpu_memory_fraction: f x the memory left free once the model is loaded
    kv_free_memory_fraction: float | None = None
    #: SGLang's ``mem_fraction_static``: weights + KV pool as a share of the card (the rest
    #: holds activations and CUDA graphs); None on SGLang: its default heuristic at the
    #: replica's tp (:func:`sglang_mem_fraction_static`). Unused by the other engines
    mem_fraction_static: float | None = None
    #: vLLM's ``gpu_memory_utilization`` where set here (a calibration fitted it); None: the
    #: replica's (:class:`capcalc.serving.engine.Replica`, default 0.9). Unused by the others
    gpu_memory_utilization: float | None = None
    #: the scheduler takes new requests only every this many decode steps, and after every
    #: step with prefill work (SGLang ``--scheduler-recv-interval``, default 1: every step;
    #: ``SchedulerRecvSkipper`` counts a decode step 1 and any other step 1000 toward it)
    recv_interval: int = 1
    #: TensorRT-LLM batch waiting (``batch_wait_timeout_iters`` / ``batch_wait_max_tokens_ratio``,
    #: PyExecutor._waiting_requests; both 0 by default): while generation requests run, the
    #: context requests a step would start are held until this many steps have held them or
    #: the step's tokens (their prompts plus the decodes) reach the ratio x max_num_batched_tokens
    batch_wait_iters: int = 0
    batch_wait_max_tokens_ratio: float = 0.0
    #: spread of output lengths for workloads that leave it unset (Workload.output_spread):
    #: how far the engine's served runs are from lock-step waves (docs/serving.md, "Lengths")
    output_spread: float = 0.15

    def __post_init__(self):
        if self.engine not in ENGINES:
            raise CapcalcError(f"unknown engine {self.engine!r}: expected one of {', '.join(ENGINES)}")
        if self.admission not in ADMISSION:
            raise CapcalcError(
                f"unknown admission {self.admission!r}: expected one of {', '.join(ADMISSION)}"
            )
        if self.max_num_batched_tokens < 1 or self.max_num_seqs < 1:
            raise CapcalcError("max_num_batched_tokens and max_num_seqs must be at least 1")
        for name, low in (("recv_interval", 1), ("batch_wait_iters", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise CapcalcError(
                    f"{name} must be a whole number of at least {low}, got {value!r}", parameter=name
                )
        if self.recv_interval > 1 and self.engine != "sglang":
            raise CapcalcError(
                f"recv_interval is SGLang's alone: {self.engine} takes new requests every step",
                parameter="recv_interval",
            )
        ratio = self.batch_wait_max_tokens_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio <= 1:
            raise CapcalcError(
                f"batch_wait_max_tokens_ratio must be a number in [0, 1], got {ratio!r}",
                parameter="batch_wait_max_tokens_ratio",
            )
        if (self.batch_wait_iters or self.batch_wait_max_tokens_ratio) and self.engine != "trtllm":
            raise CapcalcError(
                f"batch_wait_iters and batch_wait_max_tokens_ratio are TensorRT-LLM's alone: {self.engine} "
                "starts a prompt as soon as it is admitted",
                parameter=("batch_wait_iters", "batch_wait_max_tokens_ratio"),
            )
        if not 0 <= self.output_spread < 1:
            raise CapcalcError(f"output_spread must be in [0, 1), got {self.output_spread}")
        if self.frontend_s < 0 or self.seq_step_overhead_s < 0 or self.stream_token_host_s < 0:
            raise CapcalcError("frontend_s, seq_step_overhead_s and stream_token_host_s must not be negative")
        for name in ("mem_fraction_static", "gpu_memory_utilization"):
            value = getattr(self, name)
            if value is not None and not 0 < value <= 1:
                raise CapcalcError(f"{name} must be in (0, 1], got {value}")


#: Fitted fixed costs per engine (docs/latency.md, "Serving parameters", names the rows).
#: stream_token_host_s: served TTFT grows with the tokens/s the server streams (served_dev with the
#: shipped defaults before this cost, median measured / predicted TTFT by C / TPOT: vLLM 0.91 below
#: 500 tokens/s, 1.28 at 4-8k, 1.54 at 8-16k; SGLang 0.79 -> 1.68), as a
#: Python frontend that detokenises and streams every token in the process that also takes new
#: requests would; 50 us per token, picked with frontend_s from a grid (2-10 x 10^-5 s) on every
#: 2nd row, is the same for both (mean |TTFT error| vLLM 26.6 -> 26.2 %, SGLang 40.6 -> 37.9 %,
#: its frontend_s 0.322 -> 0.25 s). TensorRT-LLM's rows show no such growth (1.13-1.25 at every
#: rate below 8k tokens/s) and the grid's best is 0.
FIXED_COSTS: dict[str, dict[str, float]] = {
    "vllm": {"frontend_s": 25e-3, "seq_step_overhead_s": 0.0, "stream_token_host_s": 50e-6},
    # SGLang's large value absorbs TTFT the step model misses on its rows (DeepSeek MLA
    # prefill at 8k prompts above all, and rows whose TTFT differs 17x between SGLang
    # versions at the same deployment): a catch-all, not a measured HTTP cost. 0.25 -> 0.2 s once
    # the output spread of the unnamed-harness rows was 0.02: a grid (0.1-0.3 s, every 2nd row)
    # gives TTFT/TPOT mean |error| 36.9/14.7, 32.0/14.4, 31.7/14.0, 34.4/13.9, 38.9/13.8 %
    "sglang": {"frontend_s": 0.2, "seq_step_overhead_s": 0.0, "stream_token_host_s": 50e-6},
    "trtllm": {"frontend_s": 50e-3, "seq_step_overhead_s": 0.0, "stream_token_host_s": 0.0},
}


#: SGLang's served rows are met closer to lock-step waves (its fit: 0.02): its scheduler gathers
#: every waiting prompt into one prefill batch that stalls all decodes, so clients that drift
#: apart are pulled back together at each prefill. Picked on every SGLang row when every row used
#: it (0.05: TTFT/TPOT/tok/s mean |error| 44/17/18 %, 0.02 46/16/19 %, exact lengths 84/16/19 %);
#: since benchmark workloads (docs/serving.md) it applies only to the 145 rows whose harness is
#: not named, and was re-chosen on every 2nd SGLang row (0, 0.01, 0.02, 0.05: 38.4/13.7/16.1,
#: 36.0/13.7/16.0, 34.4/13.9/16.0, 35.4/15.0/15.9 %; all rows agree: 0.05 34.0/15.5/15.8 %, 0.02
#: 32.9/14.4/15.8 %). Its Qwen3-32B H100 rows alone would take 0, its Qwen3.5 rows 0.05-0.1
SGLANG_OUTPUT_SPREAD = 0.02


def _memory(gpu: HardwareProfile) -> float:
    return gpu.memory_reported_bytes or gpu.memory_bytes


def _sglang_buckets(memory_bytes: float, tp: int) -> tuple[int, int]:
    """SGLang's (chunked_prefill_size, cuda_graph_max_bs) for a CUDA GPU of this much memory
    (``_handle_gpu_memory_settings``; it compares the total in MiB against x * 1024)."""
    mib = memory_bytes / 2**20
    small_tp = tp < 4
    if mib < 20 * 1024:  # T4, 4080
        return 2048, 8
    if mib < 35 * 1024:  # A10, 4090, 5090
        return 2048, 24 if small_tp else 80
    if mib < 60 * 1024:  # A100-40GB, L40
        return 4096, 32 if small_tp else 160
    if mib < 160 * 1024:  # H100, H200, H20
        return 8192, 256 if small_tp else 512
    return 16384, 512  # B200, MI300


def sglang_mem_fraction_static(memory_bytes: float, tp: int, chunked_prefill_size: int) -> float:
    """SGLang's default ``mem_fraction_static`` (``_handle_gpu_memory_settings``, no DP
    attention, no speculative decoding): (gpu_mem - reserved) / gpu_mem, rounded to 3
    places, with, in MiB,

        reserved = 512 + 1.5 x max(chunked_prefill_size, 2048) + 2 x cuda_graph_max_bs + 1024 x tp / 8

    at least 10 GiB on a GPU of more than 60 GiB. The 512 MiB is attention metadata, the
    chunk term the prefill activations, the graph term the captured CUDA graphs."""
    mib = memory_bytes / 2**20
    graph_bs = _sglang_buckets(memory_bytes, tp)[1]
    reserved = 512 + 1.5 * max(chunked_prefill_size, 2048) + 2 * graph_bs + tp / 8 * 1024
    if mib > 60 * 1024:
        reserved = max(reserved, 10 * 1024)
    return round((mib - reserved) / mib, 3)


#: vendors whose accelerators TensorRT-LLM does not run on (it is CUDA-only)
NON_CUDA_VENDORS = frozenset({"amd", "google", "intel"})


def engine_defaults(engine: str, gpu: HardwareProfile) -> EngineConfig:
    """The scheduler defaults ``engine`` picks on ``gpu`` when not told (module docstring)."""
    engine = engine.lower()
    if engine not in ENGINES:
        raise CapcalcError(f"unknown engine {engine!r}: expected one of {', '.join(ENGINES)}")
    if engine == "trtllm" and gpu.vendor.lower() in NON_CUDA_VENDORS:
        raise CapcalcError(
            f"TensorRT-LLM runs on NVIDIA GPUs only: {gpu.name} is {gpu.vendor}'s (use --engine vllm or sglang)"
        )
    mem = _memory(gpu)
    fixed = FIXED_COSTS[engine]
    if engine == "vllm":
        big = mem >= 70 * GIB and "a100" not in gpu.name.lower()
        return EngineConfig(
            "vllm",
            max_num_batched_tokens=8192 if big else 2048,
            max_num_seqs=1024 if big else 256,
            **fixed,
        )
    if engine == "sglang":
        chunk = _sglang_buckets(mem, tp=1)[0]
        return EngineConfig(
            "sglang",
            max_num_batched_tokens=chunk,
            max_num_seqs=2048,
            mixed_batches=False,
            admission="reserve",
            reserve_output_fraction=0.7,
            output_spread=SGLANG_OUTPUT_SPREAD,
            **fixed,
        )
    return EngineConfig(
        "trtllm",
        max_num_batched_tokens=8192,
        max_num_seqs=2048,
        chunked_prefill=False,
        admission="reserve",
        kv_free_memory_fraction=0.9,
        **fixed,
    )


def with_memory_fraction(config: EngineConfig, fraction: float | None) -> EngineConfig:
    """``config`` with the engine's own memory knob set to ``fraction``: vLLM's
    ``gpu_memory_utilization``, SGLang's ``mem_fraction_static``, TensorRT-LLM's
    ``free_gpu_memory_fraction``."""
    if fraction is None:
        return config
    if config.engine == "sglang":
        return replace(config, mem_fraction_static=fraction)
    if config.engine == "trtllm":
        return replace(config, kv_free_memory_fraction=fraction)
    return replace(config, gpu_memory_utilization=fraction)


def with_overrides(config: EngineConfig, **changes) -> EngineConfig:
    """``config`` with the non-None ``changes`` applied (flags over defaults)."""
    return replace(config, **{k: v for k, v in changes.items() if v is not None})


def engine_efficiency(
    engine: str, base: Efficiency, weight_dtype: str, compute_dtype: str | None = None
) -> Efficiency:
    """The step efficiencies ``engine`` reaches on a GPU whose own are ``base``.

    * ``ENGINE_EFFICIENCY[engine]`` sets the per-layer fixed costs fitted on the served runs;
    * ``ENGINE_SCALES[engine]`` scales the GPU's bandwidth and FLOP/s efficiencies, the FLOP/s
      one capped at ``MAX_MATMUL_FRACTION`` (no whole prefill beats the best single matmul);
    * 4-bit weights (int4, NVFP4) stream at ``FOUR_BIT_STREAM_FACTOR`` of the bandwidth
      efficiency of 8- and 16-bit ones: the decode GEMV unpacks and rescales every weight
      group in its inner loop, so it is bound by issue rate before bandwidth. MXFP4 experts
      (gpt-oss) are exempt: the factor was measured on dense NVFP4 GEMV, and gpt-oss's MXFP4
      MoE kernels show no such loss on the served rows (its TPOT mean |error| on every 2nd
      row 33.5 % with the factor, 24.5 % without);
    * matrix products in fp8 or fp4 (``compute_dtype``; None: fp8 for fp8 weights, fp4 for
      NVFP4 ones) reach ``LOW_PRECISION_FLOPS_FACTOR`` of the 16-bit fraction of their own
      (twice or four times higher) peak: the activations are quantised per token or block
      before every product and the scales applied after it, and the products of a served
      step are small enough that their fixed costs do not halve with the peak.
    """
    changes = dict(ENGINE_EFFICIENCY.get(engine, {}))
    scales = ENGINE_SCALES.get(engine, {})
    bw = scales.get("bandwidth", 1.0)
    weight_bw = base.weight_bandwidth_efficiency * bw
    if weight_dtype in ("int4", "nvfp4"):
        weight_bw *= FOUR_BIT_STREAM_FACTOR
    changes["weight_bandwidth_efficiency"] = min(1.0, weight_bw)
    changes["kv_bandwidth_efficiency"] = min(1.0, base.kv_bandwidth_efficiency * bw)
    flops = min(MAX_MATMUL_FRACTION, base.prefill_flops_efficiency * scales.get("flops", 1.0))
    if compute_dtype is None:
        compute_dtype = {"fp8": "fp8", "nvfp4": "fp4"}.get(weight_dtype)
    if compute_dtype in LOW_PRECISION:
        flops *= scales.get("low_precision_flops", LOW_PRECISION_FLOPS_FACTOR)
    changes["prefill_flops_efficiency"] = flops
    return replace(base, **changes)


#: fp8/fp4 matrix products reach this share of the 16-bit fraction of peak (docstring above)
LOW_PRECISION_FLOPS_FACTOR = 1.0
#: Weight-only int8/int4 decode is reported to stream at 0.57-0.80 of bf16's bandwidth; on the
#: served rows, Llama-3.1-70B tp1 on B200, NVFP4 vs FP8 (trtllm and vllm, C = 4-8), the
#: streaming time left after the fixed costs is 0.78 of FP8's rate.
FOUR_BIT_STREAM_FACTOR = 0.78
#: best single bf16 matmul: 86.9 % of peak on A100 SXM, 80.3 % on H100 SXM (stas00/ml-engineering,
#: compute/accelerator/README.md, "Maximum Achievable Matmul FLOPS comparison table")
MAX_MATMUL_FRACTION = 0.869

# Fitted by benchmarks/fit_engine_defaults.py ENGINE (every 8th expressible aggregated row of
# that engine in served_dev.csv, aiconfigurator's silicon_sample.csv, H100 SXM and B200; TPOT
# weighted 2x TTFT), then the bandwidth and FLOP/s scales of vLLM and the FLOP/s scale and
# frontend cost of TensorRT-LLM adjusted by hand on every 2nd row (docs/latency.md "Serving
# parameters" lists the steps). The fit's scales are relative to the previous defaults; the
# values here are the absolute ones they give.
# layer_overhead_s: kernel launches, tails and the small un-fused ops of one layer of a served
# step (paged attention metadata, activation quantisation, residual/norm kernels), larger than
# gpt-fast's 10 us batch-1 figure; moe_layer_overhead_s: routing on top of it;
# allreduce_latency_per_rank_s: each rank beyond the first adds a hop to an all-reduce call
# (gpt-fast on A100 implies ~2.3 us per rank, 3 -> 17 us from tp 2 to 8; NVLink-switch H100
# and B200 come out lower, 0.5-1.6 us), on top of the vendor default allreduce_latency_s 10 us.
# low_precision_flops: fp8/fp4 prefill reaches this share of the 16-bit fraction of its own
# peak (the comparison found TensorRT-LLM fp8 at 0.09-0.39 of fp8 peak).
# expert_flops_ratio: fp8/fp4 routed-expert (block-scaled grouped GEMM) products reach this share
# of the dense products' efficiency. Without it one fp8 share served dense and MoE rows alike and
# the fit put vLLM's at 0.43, fp8 prefill slower than bf16, because the MoE rows (MiniMax-M2.5)
# dominate: vLLM's ratio 0.3 was picked from a grid on all of the engine's rows (docs/latency.md,
# "Serving parameters").
# Since served runs are replayed with their benchmark's own workload (InferenceX's lengths over
# [0.8 L, L] and 10 requests per client, docs/serving.md "Benchmark workloads"), the prefill
# rates were re-chosen from grids on every 2nd row: vLLM's FLOP/s scale 1.144 -> 1.0 and fp8/fp4
# share 0.8 -> 0.6, SGLang's share 0.207 -> 0.17 and ratio 1 -> 0.7, TensorRT-LLM's ratio
# 0.5 -> 0.25 (the fewer-burst TTFTs had been short by 16-26 % median).
# seq_layer_overhead_s: per running sequence per layer per step. At 32-256 clients every engine's
# TPOT was short by 13-23 us per sequence and over-predicted at 4-8 (the per-layer cost carried
# it); one cost per sequence per layer meets that across models better than a flat one per
# sequence (fit loss vLLM 0.539 -> 0.511 against 0.524, TensorRT-LLM 0.740 -> 0.694 against
# 0.711). The fit (this parameter with layer_overhead_s and moe_layer_overhead_s, the rest
# fixed) gave 0.38 / 0.68 / 0.38 us (vLLM / TensorRT-LLM / SGLang) and the layer costs kept
# here; the per-sequence values were then picked by mean |TPOT error| on every 2nd row from a
# grid (0-0.5 us): 0.1, 0.3, 0.2 us (docs/latency.md, "Serving parameters").
# allreduce_bandwidth_efficiency: the share of the NVLink rate a served step's all-reduces reach.
# Prefill steps move 2-130 MB per call at tp 2-8 (tokens x hidden x 2 B), and the collective does
# not overlap the matrix products. A fitted value, not a measured bus bandwidth: no nccl-tests
# figure for H100/B200 NVLink was found to pin it, and `calibrate` fits it per deployment (twelve
# TensorRT-LLM Llama-3.1-70B B200 rows alone give 0.99, docs/latency.md). Picked from a grid (0.45-1) on
# every 2nd row of each engine by the sum of its TTFT, TPOT and tok/s/GPU mean |error|: the best
# lies at 0.55-0.65 for every engine (vLLM 0.65, TensorRT-LLM 0.55-0.65, SGLang 0.65), so one
# value serves the three, as one fabric would (docs/latency.md, "Serving parameters").
ALLREDUCE_BANDWIDTH_EFFICIENCY = 0.65
#: Per-engine fixed costs of a step.
ENGINE_EFFICIENCY: dict[str, dict[str, float]] = {
    "vllm": {
        "layer_overhead_s": 43.5e-6,
        "seq_layer_overhead_s": 0.1e-6,
        "moe_layer_overhead_s": 11.9e-6,
        "allreduce_latency_per_rank_s": 0.74e-6,
        "expert_flops_ratio": 0.3,
        "allreduce_bandwidth_efficiency": ALLREDUCE_BANDWIDTH_EFFICIENCY,
    },
    "sglang": {
        "layer_overhead_s": 52.3e-6,
        "seq_layer_overhead_s": 0.2e-6,
        "moe_layer_overhead_s": 34.8e-6,
        "allreduce_latency_per_rank_s": 0.46e-6,
        "expert_flops_ratio": 0.7,
        "allreduce_bandwidth_efficiency": ALLREDUCE_BANDWIDTH_EFFICIENCY,
    },
    "trtllm": {
        "layer_overhead_s": 12.5e-6,
        "seq_layer_overhead_s": 0.3e-6,
        "moe_layer_overhead_s": 1.0e-6,
        "allreduce_latency_per_rank_s": 1.60e-6,
        "expert_flops_ratio": 0.25,
        "allreduce_bandwidth_efficiency": ALLREDUCE_BANDWIDTH_EFFICIENCY,
    },
}
#: Per-engine scales of the GPU's bandwidth and FLOP/s efficiencies, and the share of the
#: 16-bit FLOP/s fraction fp8/fp4 products reach (same fit; vLLM's fp8/fp4 share chosen with
#: expert_flops_ratio, comment above).
ENGINE_SCALES: dict[str, dict[str, float]] = {
    "vllm": {"bandwidth": 0.941, "flops": 1.0, "low_precision_flops": 0.6},
    "sglang": {"bandwidth": 1.020, "flops": 1.08, "low_precision_flops": 0.17},
    "trtllm": {"bandwidth": 0.904, "flops": 0.893, "low_precision_flops": 0.771},
}

"""Engine settings InferenceX's launchers start a server with that its served rows do not record.

InferenceX (github.com/SemiAnalysisAI/InferenceX) starts each engine from a shell launcher per
model, precision and GPU (``benchmarks/*.sh``, later ``benchmarks/single_node/...``). Some of
their flags change what a served run measures and are scheduler settings the serving model
follows (:class:`capcalc.serving.engines.EngineConfig`):

* SGLang's ``--scheduler-recv-interval`` (``recv_interval``): new requests are read every N
  decode steps;
* TensorRT-LLM's ``batch_wait_timeout_iters`` / ``batch_wait_max_tokens_ratio``
  (``batch_wait_iters`` / ``batch_wait_max_tokens_ratio``): context requests wait for a fuller
  batch while generation runs; its ``--max_num_tokens`` (``max_num_batched_tokens``),
  ``--max_batch_size`` (``max_num_seqs``) and ``free_gpu_memory_fraction``
  (``kv_free_memory_fraction``).

Only settings that every version of a launcher read agrees on are listed, or, where an older
launcher differs, that the rows' own pattern attributes to the later one (said where so); each
names its files and commits. :func:`inferencex_engine_settings` is how a served-runs CSV row is read
(:mod:`capcalc.sources.benchresults`).
"""

from __future__ import annotations

from typing import Any

#: ``--scheduler-recv-interval`` of InferenceX's SGLang launchers on B200, by model family
#: and precision: (interval below the threshold, interval at or above it, threshold on CONC).
#: Each launcher version read sets it so: DeepSeek-R1/V3 fp8 benchmarks/dsr1_fp8_b200.sh
#: @1fc5d73 and benchmarks/single_node/fixed_seq_len/dsr1_fp8_b200.sh @432945d (tp 8; tp 4
#: always 10), fp4 benchmarks/dsr1_fp4_b200.sh @1fc5d73 and .../fixed_seq_len/dsr1_fp4_b200.sh
#: @25cbe71 (without DP attention); Qwen3.5 bf16 .../fixed_seq_len/qwen3.5_bf16_b200.sh
#: @8eec0d4, fp8 benchmarks/single_node/qwen3.5_fp8_b200.sh @01fa35c (one later version
#: switches at CONC > 4, @36e26b6), fp4 .../fixed_seq_len/qwen3.5_fp4_b200.sh @8eec0d4
#: (CONC > 4); GLM-5 fp4 .../fixed_seq_len/glm5_fp4_b200.sh @8eec0d4 (always 10); GLM-5 fp8
#: .../fixed_seq_len/glm5_fp8_b200.sh @8eec0d4 sets none (SGLang's default, 1)
SGLANG_RECV_INTERVAL: dict[tuple[str, str], tuple[int, int, int]] = {
    ("deepseek", "fp8"): (10, 30, 16),
    ("deepseek", "fp4"): (10, 30, 16),
    ("qwen3.5", "bf16"): (10, 30, 16),
    ("qwen3.5", "fp8"): (10, 30, 16),
    ("qwen3.5", "fp4"): (10, 30, 5),
    ("glm-5", "fp4"): (10, 10, 1),
    ("glm-5", "fp8"): (1, 1, 1),
}

#: TensorRT-LLM batch waiting in InferenceX's B200 launchers, 1024/1024 only:
#: Llama-3.1-70B fp8 and fp4 at tp < 8, ``batch_wait_timeout_iters`` 20 and
#: ``batch_wait_max_tokens_ratio`` 0.9 (benchmarks/70b_fp8_b200_trt_slurm.sh @a267b4b, which
#: also sets ``--max_num_tokens 16384``; benchmarks/70b_fp4_b200_trt_slurm.sh @73ef922, whose
#: ``--max_num_tokens $MAX_MODEL_LEN`` the row does not give); DeepSeek-R1/V3 fp8 from CONC 64,
#: 40 and 0.8 (benchmarks/dsr1_fp8_b200_trt.sh @0a919c5, where CONC >= 256 switches to another
#: MoE backend without it, and benchmarks/single_node/fixed_seq_len/dsr1_fp8_b200_trt.sh
#: @8eec0d4). gpt-oss (benchmarks/gptoss_fp4_b200_trt.sh @1825e7f) and DeepSeek fp4
#: (.../fixed_seq_len/dsr1_fp4_b200_trt.sh @8eec0d4) set none. An older Llama-3.1-70B launcher
#: under another name (benchmarks/70b_b200-trt_slurm.sh @426f48e) set none either; served_dev's
#: rows show the later one's: at 1024/1024 their tp 1-4 TTFTs are twice the unheld prediction
#: at every concurrency from 4, their tp 8 TTFTs are met (docs/validation.md).
TRTLLM_BATCH_WAIT: dict[tuple[str, str], dict[str, Any]] = {
    ("llama-3.1-70b", "fp8"): {"batch_wait_iters": 20, "batch_wait_max_tokens_ratio": 0.9, "max_num_batched_tokens": 16384},
    ("llama-3.1-70b", "fp4"): {"batch_wait_iters": 20, "batch_wait_max_tokens_ratio": 0.9},
    ("deepseek", "fp8"): {"batch_wait_iters": 40, "batch_wait_max_tokens_ratio": 0.8},
}  # fmt: skip


#: TensorRT-LLM's token budget, batch limit and KV share in InferenceX's gpt-oss-120b B200
#: launchers, the same in every version read (benchmarks/gptoss_fp4_b200_trt.sh @1825e7f,
#: gptoss_fp4_b200_trt_slurm.sh @0d8d7d1, gptoss_fp4_b200_trt_docker.sh @00fbb5a):
#: ``--max_num_tokens 20000``, ``--max_batch_size 512``, ``free_gpu_memory_fraction: 0.85``
TRTLLM_GPT_OSS = {"max_num_batched_tokens": 20000, "max_num_seqs": 512, "kv_free_memory_fraction": 0.85}
#: Not read: the DeepSeek-R1/V3 B200 TensorRT-LLM launchers' ``free_gpu_memory_fraction`` 0.8
#: (0.75 for fp8 8192/1024 on tp 4; benchmarks/dsr1_fp8_b200_trt.sh @0a919c5,
#: .../fixed_seq_len/dsr1_fp{8,4}_b200_trt.sh @8eec0d4). With it, reserve-all admission
#: (GUARANTEED_NO_EVICT) queues their fp4 tp 4 1024/8192 rows, whose measured TTFTs show no such
#: queue (TTFT mean |error| 35 -> 40 % over the DeepSeek rows): the admission rule or the pool
#: sizing is what is off there, and reading the share alone would only move the error.


def _family(model: str) -> str | None:
    name = model.lower()
    families = ("deepseek", "qwen3.5", "glm-5", "llama-3.1-70b", "gpt-oss")
    return next((f for f in families if f in name), None)


def _trtllm_settings(family, precision, tp, isl, osl, concurrency) -> dict[str, Any]:
    """TensorRT-LLM settings of InferenceX's B200 launcher for the family (tables above)."""
    settings: dict[str, Any] = {}
    if family == "gpt-oss":
        settings.update(TRTLLM_GPT_OSS)
    if (isl, osl) == (1024, 1024):
        wait = TRTLLM_BATCH_WAIT.get((family, precision))
        if wait is not None and (
            (family == "llama-3.1-70b" and (tp or 1) < 8)
            or (family == "deepseek" and 64 <= concurrency < 256)
        ):
            settings.update(wait)
    return settings


def inferencex_engine_settings(
    engine: str,
    model: str,
    gpu: str,
    precision: str,
    tp: int | None,
    isl: float,
    osl: float,
    concurrency: int | None,
) -> dict[str, Any]:
    """The :class:`~capcalc.serving.engines.EngineConfig` settings InferenceX's launcher for
    this row's engine, model family, precision and GPU sets beyond the engine's defaults
    (tables above); empty where no launcher read says (other GPUs, other models)."""
    if "b200" not in gpu.lower() or concurrency is None:
        return {}
    family, precision = _family(model), precision or "bf16"
    if engine == "sglang":
        rule = SGLANG_RECV_INTERVAL.get((family, precision))
        if rule is None:
            return {}
        low, high, threshold = rule
        if family == "deepseek" and precision == "fp8" and tp == 4:
            high = low
        return {"recv_interval": high if concurrency >= threshold else low}
    if engine == "trtllm":
        return _trtllm_settings(family, precision, tp, isl, osl, concurrency)
    return {}

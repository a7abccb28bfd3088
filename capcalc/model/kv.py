"""KV-cache size.

Per token and per layer a standard attention layer stores one key and one value
vector per KV head:

    bytes = 2 x kv_heads x head_dim x dtype_bytes          (GQA/MQA: KV heads, not query heads)

An MLA layer (DeepSeek) stores one compressed latent and the shared rope key,
with no factor 2:

    bytes = (kv_lora_rank + qk_rope_head_dim) x dtype_bytes

A sliding-window layer holds at most ``window`` tokens of a sequence; a full
layer holds all ``ctx``. Under tensor parallelism KV heads are split across the
GPUs; when there are fewer KV heads than GPUs each GPU still holds one head
(replication), and an MLA latent is replicated on every GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

from capcalc.core.dtypes import DTYPE_BYTES, resolve_kv_dtype
from capcalc.core.errors import CapcalcError
from capcalc.core.records import flat_record
from capcalc.model.parallel import check_tp, kv_heads_per_gpu, kv_replication_factor
from capcalc.schema.profiles import ModelProfile


def kv_bytes_per_token_per_layer(model: ModelProfile, kv_dtype: str, tp: int = 1) -> float:
    """Bytes one token adds to one layer's cache on one GPU (tp=1: the whole layer)."""
    width = DTYPE_BYTES[kv_dtype]
    if model.mla is not None:
        return (model.mla.kv_lora_rank + model.mla.qk_rope_head_dim) * width
    return 2 * kv_heads_per_gpu(model, tp) * model.head_dim * width


def kv_bytes_per_token(model: ModelProfile, kv_dtype: str, tp: int = 1) -> float:
    """Bytes one token adds to the whole model's cache on one GPU (every layer; the
    rate while the context is within any sliding window)."""
    return kv_bytes_per_token_per_layer(model, kv_dtype, tp) * model.num_layers


def cached_tokens(model: ModelProfile, ctx: int) -> tuple[int, int]:
    """Tokens of a ``ctx``-token sequence held by (each full layer, each sliding layer)."""
    window = model.sliding_window or ctx
    return ctx, min(ctx, window)


def kv_bytes_per_sequence(model: ModelProfile, ctx: int, kv_dtype: str, tp: int = 1) -> float:
    """KV bytes of one sequence at ``ctx`` tokens on one GPU, sliding layers capped at the window."""
    per_layer = kv_bytes_per_token_per_layer(model, kv_dtype, tp)
    full_tokens, sliding_tokens = cached_tokens(model, ctx)
    return per_layer * (model.num_full_layers * full_tokens + model.num_sliding_layers * sliding_tokens)


@dataclass(frozen=True)
class KVResult:
    model: str
    ctx: int
    batch: int
    kv_dtype: str
    tp: int
    kv_bytes_per_token: float  # whole model, tp=1, every layer (the rate while ctx <= window)
    kv_bytes_per_token_per_gpu: float
    kv_bytes_per_sequence: float  # whole model, windows applied
    kv_bytes_total: float  # batch sequences, whole model (one copy, no replication)
    kv_bytes_per_gpu: float  # batch sequences on one GPU, replication included
    kv_bytes_all_gpus: float  # kv_bytes_per_gpu x tp
    kv_heads: int
    kv_heads_per_gpu: int
    kv_replication_factor: float
    kv_replicated: bool
    full_layers: int
    sliding_layers: int
    mla_layers: int
    sliding_window: int | None
    sequences_fit: int | None  # sequences whose KV fits in the --memory budget per GPU
    memory_bytes: float | None

    def record(self) -> dict:
        """The flat output record (``schema_version`` first), as the CLI's JSON prints it."""
        return flat_record(self)


def kv_cache(
    model: ModelProfile,
    ctx: int,
    batch: int = 1,
    kv_dtype: str = "auto",
    tp: int = 1,
    memory_bytes: float | None = None,
) -> KVResult:
    """Size the KV cache of ``batch`` sequences of ``ctx`` tokens."""
    if ctx < 1:
        raise CapcalcError(f"ctx must be at least 1, got {ctx}", parameter="ctx")
    if batch < 1:
        raise CapcalcError(f"batch must be at least 1, got {batch}", parameter="batch")
    if memory_bytes is not None and memory_bytes <= 0:
        raise CapcalcError(f"memory_bytes must be positive, got {memory_bytes:g}", parameter="memory_bytes")
    check_tp(model, tp)
    dtype = resolve_kv_dtype(kv_dtype, model.native_dtype)
    per_sequence = kv_bytes_per_sequence(model, ctx, dtype)
    per_sequence_gpu = kv_bytes_per_sequence(model, ctx, dtype, tp)
    replication = kv_replication_factor(model, tp)
    return KVResult(
        model=model.name,
        ctx=ctx,
        batch=batch,
        kv_dtype=dtype,
        tp=tp,
        kv_bytes_per_token=kv_bytes_per_token(model, dtype),
        kv_bytes_per_token_per_gpu=kv_bytes_per_token(model, dtype, tp),
        kv_bytes_per_sequence=per_sequence,
        kv_bytes_total=per_sequence * batch,
        kv_bytes_per_gpu=per_sequence_gpu * batch,
        kv_bytes_all_gpus=per_sequence_gpu * batch * tp,
        kv_heads=model.num_kv_heads,
        kv_heads_per_gpu=kv_heads_per_gpu(model, tp),
        kv_replication_factor=replication,
        kv_replicated=replication > 1,
        full_layers=model.num_full_layers,
        sliding_layers=model.num_sliding_layers,
        mla_layers=model.num_layers if model.mla is not None else 0,
        sliding_window=model.sliding_window,
        sequences_fit=int(memory_bytes // per_sequence_gpu) if memory_bytes is not None else None,
        memory_bytes=memory_bytes,
    )

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

A recurrent layer (Mamba2, Gated DeltaNet) keeps no per-token cache but a fixed state
per sequence (conv state + recurrent state), counted in the sequence's bytes; a parallel
hybrid layer (Falcon-H1) keeps both, its attention part's per-token cache and its Mamba2
part's state:

    bytes per sequence = sum over attention layers of per_token x tokens_held(ctx)
                       + sum over recurrent (and parallel hybrid) layers of state_bytes

Each kind's arithmetic is its spec's (:mod:`capcalc.model.layers`). The conv state is
stored in the serving dtype (vLLM's ``mamba_cache_dtype auto``), the recurrent state
in ``state_dtype`` (``--mamba-ssm-cache-dtype``; ``auto``: the checkpoint's
``mamba_ssm_dtype`` when its config names one, else the conv state's dtype).
"""

from __future__ import annotations

from dataclasses import dataclass

from capcalc.core.dtypes import DTYPE_BYTES, KV_DTYPES, canonical_dtype, resolve_kv_dtype, serving_dtype
from capcalc.core.errors import CapcalcError
from capcalc.core.records import flat_record
from capcalc.model.layers import (
    attention_layers,
    attention_spec,
    cached_layers,
    cross_layers,
    sparse_spec,
    spec_counts,
    state_layers,
)
from capcalc.model.parallel import check_tp, kv_heads_per_gpu, kv_replication_factor
from capcalc.schema.profiles import ModelProfile


def state_dtypes(model: ModelProfile, state_dtype: str = "auto") -> tuple[str, str]:
    """(conv state dtype, recurrent state dtype) of the model's recurrent layers: the conv
    state in the serving dtype; the recurrent state in ``state_dtype``, whose ``auto`` is
    the checkpoint's ``ssm_state_dtype`` when the profile names one, else the conv's."""
    conv = serving_dtype(model.native_dtype)
    dtype = canonical_dtype(state_dtype, KV_DTYPES, "mamba SSM cache dtype", "mamba_ssm_cache_dtype")
    if dtype == "auto":
        return conv, model.ssm_state_dtype or conv
    return conv, dtype


def kv_bytes_per_token_per_layer(model: ModelProfile, kv_dtype: str, tp: int = 1) -> float:
    """Bytes one token adds to one attention layer's cache on one GPU (tp=1: the whole
    layer). Every attention kind of a model caches the same per token; recurrent
    layers cache none."""
    return attention_spec(model).cache_bytes_per_token(DTYPE_BYTES[kv_dtype], tp)


def kv_bytes_per_token(model: ModelProfile, kv_dtype: str, tp: int = 1) -> float:
    """Bytes one token adds to the whole model's cache on one GPU (every attention layer;
    the rate while the context is within any sliding window; KV-shared layers add none)."""
    return kv_bytes_per_token_per_layer(model, kv_dtype, tp) * cached_layers(model)


def cached_tokens(model: ModelProfile, ctx: int) -> tuple[int, int]:
    """Tokens of a ``ctx``-token sequence held by (each full layer, each sliding layer)."""
    window = model.sliding_window or ctx
    return ctx, min(ctx, window)


def state_bytes_per_sequence(model: ModelProfile, tp: int = 1, state_dtype: str = "auto") -> float:
    """The fixed state one sequence holds in the recurrent layers on one GPU (0 without them)."""
    if not state_layers(model):
        return 0.0
    conv, ssm = (DTYPE_BYTES[d] for d in state_dtypes(model, state_dtype))
    # attention kinds answer 0; a parallel hybrid layer, its Mamba2 part's state
    return sum(n * spec.state_bytes(tp, conv, ssm) for spec, n in spec_counts(model))


def kv_bytes_per_sequence(
    model: ModelProfile,
    ctx: int,
    kv_dtype: str,
    tp: int = 1,
    state_dtype: str = "auto",
    image_tokens: int = 0,
) -> float:
    """Cache bytes of one sequence at ``ctx`` tokens on one GPU: each attention layer's
    per-token bytes times the tokens it holds (sliding layers capped at the window),
    plus the recurrent layers' fixed state, plus each cross-attention layer's
    ``image_tokens`` (the image tokens of the request, whatever its length)."""
    per_layer = kv_bytes_per_token_per_layer(model, kv_dtype, tp)
    held = sum(n * spec.tokens_held(ctx) for spec, n in spec_counts(model) if spec.attends)
    if image_tokens:
        held += cross_layers(model) * image_tokens
    kv = per_layer * held
    if state_layers(model):
        kv += state_bytes_per_sequence(model, tp, state_dtype)
    return kv


def kv_bytes_read_per_sequence(
    model: ModelProfile, ctx: int, kv_dtype: str, tp: int = 1, state_dtype: str = "auto"
) -> float:
    """Cache bytes one decode step of a ``ctx``-token sequence reads on one GPU: all it
    holds (:func:`kv_bytes_per_sequence`), except under DeepSeek Sparse Attention, which
    reads every indexer key but only the ``index_topk`` latents it selects, and a KV-shared
    layer reads the cache of the layer it shares (``tokens_read``)."""
    sparse = sparse_spec(model)
    if sparse is None:
        per_layer = kv_bytes_per_token_per_layer(model, kv_dtype, tp)
        read = per_layer * sum(n * spec.tokens_read(ctx) for spec, n in spec_counts(model) if spec.attends)
        if state_layers(model):
            read += state_bytes_per_sequence(model, tp, state_dtype)
        return read
    return attention_layers(model) * sparse.bytes_read(ctx, DTYPE_BYTES[kv_dtype])


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
    state_layers: int = 0  # recurrent layers (Mamba2, Gated DeltaNet)
    state_bytes_per_sequence: float = 0.0  # their fixed state, whole model (in kv_bytes_per_sequence)
    state_bytes_per_sequence_per_gpu: float = 0.0
    mamba_ssm_cache_dtype: str | None = None  # the recurrent state's dtype (None: no such layers)
    cross_attention_layers: int = 0  # layers whose KV holds the request's image tokens (mllama)
    image_tokens: int = 0  # the image tokens each sequence's cross-attention layers hold

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
    state_dtype: str = "auto",
    image_tokens: int = 0,
) -> KVResult:
    """Size the KV cache of ``batch`` sequences of ``ctx`` tokens (recurrent layers' state
    in ``state_dtype``, :func:`state_dtypes`; cross-attention layers holding
    ``image_tokens`` each)."""
    if ctx < 1:
        raise CapcalcError(f"ctx must be at least 1, got {ctx}", parameter="ctx")
    if batch < 1:
        raise CapcalcError(f"batch must be at least 1, got {batch}", parameter="batch")
    if memory_bytes is not None and memory_bytes <= 0:
        raise CapcalcError(f"memory_bytes must be positive, got {memory_bytes:g}", parameter="memory_bytes")
    if isinstance(image_tokens, bool) or not isinstance(image_tokens, int) or image_tokens < 0:
        raise CapcalcError(
            f"image_tokens must be a whole number of at least 0, got {image_tokens!r}",
            parameter="image_tokens",
        )
    check_tp(model, tp)
    dtype = resolve_kv_dtype(kv_dtype, model.native_dtype)
    per_sequence = kv_bytes_per_sequence(
        model, ctx, dtype, state_dtype=state_dtype, image_tokens=image_tokens
    )
    per_sequence_gpu = kv_bytes_per_sequence(model, ctx, dtype, tp, state_dtype, image_tokens)
    recurrent = state_layers(model)
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
        mla_layers=attention_layers(model) if model.mla is not None else 0,
        sliding_window=model.sliding_window,
        sequences_fit=int(memory_bytes // per_sequence_gpu) if memory_bytes is not None else None,
        memory_bytes=memory_bytes,
        state_layers=recurrent,
        state_bytes_per_sequence=state_bytes_per_sequence(model, 1, state_dtype),
        state_bytes_per_sequence_per_gpu=state_bytes_per_sequence(model, tp, state_dtype),
        mamba_ssm_cache_dtype=state_dtypes(model, state_dtype)[1] if recurrent else None,
        cross_attention_layers=cross_layers(model),
        image_tokens=image_tokens,
    )

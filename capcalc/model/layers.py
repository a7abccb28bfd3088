"""Layer kinds as spec objects: one class per kind, as vLLM's ``KVCacheSpec`` family
(``vllm/v1/kv_cache_interface.py``: FullAttentionSpec, SlidingWindowSpec, MLAAttentionSpec,
MambaSpec) gives each kind one object that answers for its memory.

Every spec answers, for one layer of its kind:

* ``cache_bytes_per_token(width, tp)``: bytes one token adds to the layer's cache on one
  of ``tp`` GPUs, ``width`` bytes per cached value (0 for a recurrent layer);
* ``state_bytes(tp, conv_width, ssm_width)``: the fixed state one sequence holds,
  whatever its length (0 for an attention layer);
* ``tokens_held(ctx)``: tokens of a ``ctx``-token sequence the layer keeps;
* ``blocks_per_request(max_model_len, block_size, max_num_batched_tokens)``: the blocks
  vLLM's admission reserves for one request (``max_memory_usage_bytes`` / page size);
* ``attended_pairs(phase, ctx)`` and ``attention_dims(phase)``: the (query, key) pairs
  of one sequence and the per-head widths of the score and value products, and
  ``recurrent_flops(tokens)``: the state update of a recurrent layer;
* ``tp_valid(tp)``, ``kv_heads_per_gpu(tp)``, ``replication(tp)``: how it splits.

The equations, per kind (w bytes per value, g = KV heads per GPU = max(1, kv_heads / tp)):

* full attention: 2 g head_dim w per token; holds ``ctx``; ``cdiv(max_model_len, block)``
  blocks; decode attends ``ctx`` tokens, prefill i tokens for the i-th (causal);
* sliding window: the same per token; holds ``min(ctx, window)``; vLLM admits
  ``cdiv(min(window - 1 + max_num_batched_tokens, max_model_len), block) + 1`` blocks;
  prefill token i attends ``min(i, window)``;
* chunked local (Llama 4): the same per token; holds the tokens of the current chunk,
  ``((ctx - 1) mod chunk) + 1``; vLLM admits ``cdiv(min(chunk + max_num_batched_tokens,
  max_model_len), block)`` blocks; prefill token i attends the tokens of its chunk up to i;
* MLA (DeepSeek): one latent of ``kv_lora_rank + qk_rope_head_dim`` values per token, no
  factor 2, the same on every tp rank (replicated); decode attends in latent space
  (d_qk = kv_lora_rank + rope, d_v = kv_lora_rank, weights absorbed), prefill in head
  space (d_qk = nope + rope, d_v = v_head_dim);
* Mamba2: conv state ``(conv_kernel - 1) x (intermediate + 2 n_groups' state_size) / tp``
  plus SSM state ``heads / tp x head_dim x state_size`` per sequence, where n_groups' is
  raised to tp when tp does not divide it (vLLM ``MambaStateShapeCalculator.mamba2_state_shape``,
  ``extra_groups_for_head_shards``); one block per request;
* Gated DeltaNet: conv state ``(conv_kernel - 1) x (2 key_heads key_dim + value_heads
  value_dim) / tp`` plus recurrent state ``value_heads / tp x key_dim x value_dim``
  (``gated_delta_net_state_shape``); one block per request;
* parallel hybrid (Falcon-H1): full attention AND a Mamba2 mixer side by side in one layer
  (their outputs summed, then the MLP): the attention part's per-token KV as a full layer's
  plus the Mamba2 part's state per sequence; vLLM registers the two parts as two cache
  layers (``FalconH1ParallelHybrid`` numbers the Mamba2 part ``num_hidden_layers + i``), so
  the layer sits in an attention group and in a state group (``state_part``).

Recurrent FLOPs per token per layer (the state-passing form; a chunked prefill kernel
does the same state work plus intra-chunk products of O(chunk) per token, left out):
Mamba2 ``5 x heads x head_dim x state_size`` (decay and rank-1 update, 3 per state
element; the readout C.h, 2) plus the conv ``2 x conv_dim x conv_kernel``; Gated DeltaNet
``7 x value_heads x key_dim x value_dim`` (decay 1, S^T k 2, rank-1 update 2, S^T q 2)
plus its conv.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from capcalc.schema.profiles import ModelProfile


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def causal_pairs(prompt: int, window: int | None) -> float:
    """(query, key) pairs of a causal prefill of ``prompt`` tokens where each attends to at
    most ``window`` (None: all before it, itself included)."""
    if window is None or prompt <= window:
        return prompt * (prompt + 1) / 2
    return window * (window + 1) / 2 + (prompt - window) * window


@dataclass(frozen=True)
class LayerSpec:
    """What one layer of a kind keeps per sequence and does per step (module docstring).
    The base answers as a layer that keeps nothing."""

    kind: ClassVar[str] = ""
    #: whether the layer attends over a per-token cache (an attention kind)
    attends: ClassVar[bool] = False
    #: whether it keeps that cache itself (False: a KV-shared layer reads an earlier layer's)
    caches: ClassVar[bool] = False

    def cache_bytes_per_token(self, width: float, tp: int = 1) -> float:
        return 0.0

    def state_bytes(self, tp: int = 1, conv_width: float = 2.0, ssm_width: float = 2.0) -> float:
        return 0.0

    def tokens_held(self, ctx: int) -> int:
        return 0

    def tokens_read(self, ctx: int) -> int:
        """Cached tokens one decode step of a ``ctx``-token sequence reads in this layer
        (its own cache, or the cache of the layer it shares)."""
        return self.tokens_held(ctx)

    def blocks_per_request(self, max_model_len: int, block_size: int, max_num_batched_tokens: int) -> int:
        return 0

    def attended_pairs(self, phase: str, ctx: int) -> float:
        return 0.0

    def attention_dims(self, phase: str) -> tuple[int, int]:
        return 0, 0

    def recurrent_flops(self, tokens: float) -> float:
        return 0.0

    def state_part(self) -> StateSpec | None:
        """The recurrent mixer whose state the layer keeps (itself for a recurrent layer, the
        Mamba2 part of a parallel hybrid layer), or None."""
        return None

    def tp_valid(self, tp: int) -> bool:
        return True

    def kv_heads_per_gpu(self, tp: int) -> int:
        return 0

    def replication(self, tp: int) -> float:
        return 1.0


@dataclass(frozen=True)
class FullAttentionSpec(LayerSpec):
    num_heads: int
    num_kv_heads: int
    head_dim: int

    kind: ClassVar[str] = "full"
    attends: ClassVar[bool] = True
    caches: ClassVar[bool] = True

    def kv_heads_per_gpu(self, tp: int) -> int:
        """kv_heads / tp, or 1 (replicated) once tp exceeds them."""
        return max(1, self.num_kv_heads // tp)

    def replication(self, tp: int) -> float:
        return self.kv_heads_per_gpu(tp) * tp / self.num_kv_heads

    def tp_valid(self, tp: int) -> bool:
        kv = self.num_kv_heads
        return kv % tp == 0 or tp % kv == 0

    def cache_bytes_per_token(self, width: float, tp: int = 1) -> float:
        return 2 * self.kv_heads_per_gpu(tp) * self.head_dim * width

    def tokens_held(self, ctx: int) -> int:
        return ctx

    def blocks_per_request(self, max_model_len: int, block_size: int, max_num_batched_tokens: int) -> int:
        return cdiv(max_model_len, block_size)

    def attended_pairs(self, phase: str, ctx: int) -> float:
        return self.tokens_held(ctx) if phase == "decode" else causal_pairs(ctx, None)

    def attention_dims(self, phase: str) -> tuple[int, int]:
        return self.head_dim, self.head_dim

    def activation_width(self, tp: int = 1) -> float:
        """Columns one token writes in the layer's attention on one GPU (vLLM's profile
        peak, :func:`capcalc.serving.fit.activation_bytes`): q and the output (heads),
        k and v (the KV heads it holds)."""
        heads = self.num_heads / tp
        return (2 * heads + 2 * self.kv_heads_per_gpu(tp)) * self.head_dim


@dataclass(frozen=True)
class SlidingWindowSpec(FullAttentionSpec):
    window: int = 0

    kind: ClassVar[str] = "sliding"

    def tokens_held(self, ctx: int) -> int:
        return min(ctx, self.window)

    def blocks_per_request(self, max_model_len: int, block_size: int, max_num_batched_tokens: int) -> int:
        """``SlidingWindowSpec.max_memory_usage_bytes``: the window plus one step's tokens,
        and one block more for a window that starts mid-block."""
        tokens = min(self.window - 1 + max_num_batched_tokens, max_model_len)
        return cdiv(tokens, block_size) + 1

    def attended_pairs(self, phase: str, ctx: int) -> float:
        return self.tokens_held(ctx) if phase == "decode" else causal_pairs(ctx, self.window)


@dataclass(frozen=True)
class ChunkedLocalAttentionSpec(FullAttentionSpec):
    """Chunked-local attention (Llama 4's RoPE layers): the sequence is cut into chunks of
    ``chunk`` tokens and a token attends only to the tokens of its own chunk before it."""

    chunk: int = 0

    kind: ClassVar[str] = "chunked"

    def tokens_held(self, ctx: int) -> int:
        """The tokens of the chunk the ``ctx``-th token is in: ((ctx - 1) mod chunk) + 1."""
        return (ctx - 1) % self.chunk + 1 if ctx > 0 else 0

    def blocks_per_request(self, max_model_len: int, block_size: int, max_num_batched_tokens: int) -> int:
        """``ChunkedLocalAttentionSpec.max_memory_usage_bytes``: one chunk of computed tokens
        plus one step's new tokens, at most ``max_model_len``."""
        return cdiv(min(self.chunk + max_num_batched_tokens, max_model_len), block_size)

    def attended_pairs(self, phase: str, ctx: int) -> float:
        if phase == "decode":
            return self.tokens_held(ctx)
        whole, rest = divmod(ctx, self.chunk)
        return whole * causal_pairs(self.chunk, None) + causal_pairs(rest, None)


@dataclass(frozen=True)
class MLAAttentionSpec(FullAttentionSpec):
    kv_lora_rank: int = 0
    qk_rope_head_dim: int = 0
    qk_nope_head_dim: int = 0
    v_head_dim: int = 0

    kind: ClassVar[str] = "full"

    def kv_heads_per_gpu(self, tp: int) -> int:
        return 1  # one latent

    def replication(self, tp: int) -> float:
        return float(tp)  # the latent is on every rank

    def tp_valid(self, tp: int) -> bool:
        return True

    def cache_bytes_per_token(self, width: float, tp: int = 1) -> float:
        return (self.kv_lora_rank + self.qk_rope_head_dim) * width

    def activation_width(self, tp: int = 1) -> float:
        """q (nope + rope per head), the latent and rope key, and the up-projected k and v."""
        heads = self.num_heads / tp
        width = (
            heads * (self.qk_nope_head_dim + self.qk_rope_head_dim)
            + self.kv_lora_rank
            + self.qk_rope_head_dim
        )
        return width + heads * (self.qk_nope_head_dim + 2 * self.v_head_dim)

    def attention_dims(self, phase: str) -> tuple[int, int]:
        if phase == "decode":
            return self.kv_lora_rank + self.qk_rope_head_dim, self.kv_lora_rank
        return self.qk_nope_head_dim + self.qk_rope_head_dim, self.v_head_dim


#: bytes per token per layer of vLLM's fp8_ds_mla latent: 512 fp8 values, 4 fp32 scales
#: (one per 128) and the 64 rope dims kept in bf16 (vllm/v1/attention/backends/mla/flashmla_sparse.py)
FP8_DS_MLA_BYTES = 512 + 4 * 4 + 64 * 2
#: the indexer's keys are stored as fp8 with one fp32 scale per this many values
INDEXER_QUANT_BLOCK = 128


@dataclass(frozen=True)
class SparseMLAAttentionSpec(MLAAttentionSpec):
    """MLA with DeepSeek Sparse Attention (DeepSeek-V3.2): the latent cache of every token
    plus the lightning indexer's key (``index_head_dim`` fp8 values and an fp32 scale per
    128: 132 bytes for 128), as vLLM caches them (``DeepseekV32IndexerCache``; an fp8 KV
    cache stores the latent as ``fp8_ds_mla``, 656 bytes). Each query attends to the
    ``index_topk`` tokens the indexer picks, so attention and the latent read stop growing
    past ``index_topk``, while the indexer scores every cached token
    (2 x index_n_heads x index_head_dim FLOPs per pair) and reads every indexer key."""

    index_n_heads: int = 0
    index_head_dim: int = 0
    index_topk: int = 0

    @property
    def indexer_bytes(self) -> int:
        return self.index_head_dim + 4 * (self.index_head_dim // INDEXER_QUANT_BLOCK)

    def latent_bytes(self, width: float) -> float:
        return FP8_DS_MLA_BYTES if width == 1 else (self.kv_lora_rank + self.qk_rope_head_dim) * width

    def cache_bytes_per_token(self, width: float, tp: int = 1) -> float:
        return self.latent_bytes(width) + self.indexer_bytes

    def attended_pairs(self, phase: str, ctx: int) -> float:
        if phase == "decode":
            return min(ctx, self.index_topk)
        return causal_pairs(ctx, self.index_topk)

    def indexer_flops(self, phase: str, ctx: int) -> float:
        pairs = ctx if phase == "decode" else causal_pairs(ctx, None)
        return 2.0 * self.index_n_heads * self.index_head_dim * pairs

    def bytes_read(self, ctx: int, width: float) -> float:
        """Decode: every indexer key, the latents of the top-k tokens."""
        return self.indexer_bytes * ctx + self.latent_bytes(width) * min(ctx, self.index_topk)


class KVSharing:
    """A layer that attends over the KV of an earlier layer of its kind (gemma-3n's last
    ``num_kv_shared_layers`` layers, transformers ``Gemma3nTextAttention.kv_shared_layer_index``:
    the last non-shared layer of the same type). It computes its own queries and attends as
    its kind does, but caches nothing: 0 bytes per token, no tokens held, no blocks (vLLM
    gives such a layer no KV cache spec of its own: ``kv_sharing_target_layer_name``). A
    decode step still reads the shared cache: ``tokens_read`` is its kind's ``tokens_held``."""

    caches: ClassVar[bool] = False

    def cache_bytes_per_token(self, width: float, tp: int = 1) -> float:
        return 0.0

    def tokens_held(self, ctx: int) -> int:
        return 0

    def tokens_read(self, ctx: int) -> int:
        return super().tokens_held(ctx)

    def blocks_per_request(self, max_model_len: int, block_size: int, max_num_batched_tokens: int) -> int:
        return 0

    def attended_pairs(self, phase: str, ctx: int) -> float:
        if phase == "decode":
            return self.tokens_read(ctx)
        return super().attended_pairs(phase, ctx)


@dataclass(frozen=True)
class SharedFullAttentionSpec(KVSharing, FullAttentionSpec):
    kind: ClassVar[str] = "shared_full"


@dataclass(frozen=True)
class SharedSlidingWindowSpec(KVSharing, SlidingWindowSpec):
    kind: ClassVar[str] = "shared_sliding"


@dataclass(frozen=True)
class CrossAttentionSpec(FullAttentionSpec):
    """A cross-attention layer (Llama-3.2-Vision's, mllama): its queries come from the text,
    its keys and values from the image (encoder) tokens, so its KV holds a fixed
    ``image_tokens`` per request, the same bytes per token as a full layer, and none for
    the text: ``tokens_held`` and the decode reads of the text are 0, and the image tokens
    are a parameter of the sequence (:func:`capcalc.model.kv.kv_bytes_per_sequence`).
    vLLM's ``CrossAttentionSpec.max_memory_usage_bytes`` reserves
    ``cdiv(max_num_encoder_input_tokens, block)`` blocks per request, and
    ``max_num_encoder_input_tokens`` defaults to ``max_num_batched_tokens``
    (vllm/config/scheduler.py)."""

    kind: ClassVar[str] = "cross"
    caches: ClassVar[bool] = False  # nothing per text token

    def tokens_held(self, ctx: int) -> int:
        return 0

    def blocks_per_request(self, max_model_len: int, block_size: int, max_num_batched_tokens: int) -> int:
        return cdiv(max_num_batched_tokens, block_size)

    def attended_pairs(self, phase: str, ctx: int) -> float:
        return 0.0


@dataclass(frozen=True)
class StateSpec(LayerSpec):
    """A recurrent layer: a fixed (conv, recurrent) state per sequence, no per-token cache.
    vLLM's ``MambaSpec``: one block (page) per request, whatever its length."""

    def state_shapes(self, tp: int) -> tuple[int, int]:
        """(conv state elements, recurrent state elements) per sequence on one GPU."""
        raise NotImplementedError

    def state_bytes(self, tp: int = 1, conv_width: float = 2.0, ssm_width: float = 2.0) -> float:
        conv, ssm = self.state_shapes(tp)
        return conv * conv_width + ssm * ssm_width

    def params(self, hidden: int) -> tuple[int, int, int]:
        """(input projection weights, output projection weights, other parameters: conv,
        per-head vectors, norm, biases) of one layer."""
        raise NotImplementedError

    def activation_width(self, tp: int = 1) -> float:
        """Activation columns one token writes in the mixer on one GPU: the input
        projection's output, the conv's output and the mixer's output."""
        raise NotImplementedError

    def blocks_per_request(self, max_model_len: int, block_size: int, max_num_batched_tokens: int) -> int:
        return 1

    def state_part(self) -> StateSpec:
        return self


@dataclass(frozen=True)
class Mamba2Spec(StateSpec):
    num_heads: int
    head_dim: int
    state_size: int
    n_groups: int
    conv_kernel: int
    conv_bias: bool = True
    proj_bias: bool = False
    #: whether the mixer has its gated RMSNorm (Falcon-H1's ``mamba_rms_norm``; the others always)
    gated_norm: bool = True

    kind: ClassVar[str] = "mamba"

    def params(self, hidden: int) -> tuple[int, int, int]:
        """in_proj hidden -> (z: intermediate, xBC: conv_dim, dt: heads); conv1d conv_dim x
        conv_kernel (+ bias); dt_bias, A_log, D per head; gated RMSNorm of intermediate (when
        ``gated_norm``); out_proj intermediate -> hidden (transformers GraniteMoeHybrid /
        NemotronH / FalconH1 mixer)."""
        width = self.intermediate + self.conv_dim() + self.num_heads
        other = self.conv_dim() * (self.conv_kernel + (1 if self.conv_bias else 0))
        other += 3 * self.num_heads + (self.intermediate if self.gated_norm else 0)
        if self.proj_bias:
            other += width + hidden
        return hidden * width, self.intermediate * hidden, other

    def activation_width(self, tp: int = 1) -> float:
        return (2 * self.intermediate + self.conv_dim() + self.num_heads + self.conv_dim()) / tp

    @property
    def intermediate(self) -> int:
        return self.num_heads * self.head_dim

    def groups(self, tp: int) -> int:
        """n_groups, raised to tp when tp does not divide it (each rank keeps the group its heads read)."""
        return self.n_groups if self.n_groups % tp == 0 else self.n_groups + tp - self.n_groups

    def conv_dim(self, tp: int = 1) -> int:
        return self.intermediate + 2 * self.groups(tp) * self.state_size

    def tp_valid(self, tp: int) -> bool:
        return self.num_heads % tp == 0 and self.conv_dim(tp) % tp == 0

    def state_shapes(self, tp: int) -> tuple[int, int]:
        conv = (self.conv_kernel - 1) * (self.conv_dim(tp) // tp)
        return conv, self.num_heads // tp * self.head_dim * self.state_size

    def recurrent_flops(self, tokens: float) -> float:
        state = self.num_heads * self.head_dim * self.state_size
        return tokens * (5.0 * state + 2.0 * self.conv_dim() * self.conv_kernel)


@dataclass(frozen=True)
class GatedDeltaNetSpec(StateSpec):
    num_key_heads: int
    num_value_heads: int
    key_head_dim: int
    value_head_dim: int
    conv_kernel: int

    kind: ClassVar[str] = "linear"

    def params(self, hidden: int) -> tuple[int, int, int]:
        """in_proj_qkvz hidden -> (q, k: key_heads x key_dim; v, z: value_heads x value_dim)
        and in_proj_ba hidden -> 2 value_heads; conv1d over q, k, v (conv_dim x conv_kernel,
        no bias); dt_bias and A_log per value head; the gated RMSNorm of value_dim;
        out_proj value_heads x value_dim -> hidden (transformers Qwen3NextGatedDeltaNet)."""
        value = self.num_value_heads * self.value_head_dim
        width = self.conv_dim() + value + 2 * self.num_value_heads
        other = self.conv_dim() * self.conv_kernel + 2 * self.num_value_heads + self.value_head_dim
        return hidden * width, value * hidden, other

    def activation_width(self, tp: int = 1) -> float:
        value = self.num_value_heads * self.value_head_dim
        return (self.conv_dim() + 2 * value + 2 * self.num_value_heads + self.conv_dim()) / tp

    def conv_dim(self) -> int:
        return 2 * self.num_key_heads * self.key_head_dim + self.num_value_heads * self.value_head_dim

    def tp_valid(self, tp: int) -> bool:
        return self.num_key_heads % tp == 0 and self.num_value_heads % tp == 0

    def state_shapes(self, tp: int) -> tuple[int, int]:
        conv = (self.conv_kernel - 1) * (self.conv_dim() // tp)
        return conv, self.num_value_heads // tp * self.key_head_dim * self.value_head_dim

    def recurrent_flops(self, tokens: float) -> float:
        state = self.num_value_heads * self.key_head_dim * self.value_head_dim
        return tokens * (7.0 * state + 2.0 * self.conv_dim() * self.conv_kernel)


@dataclass(frozen=True)
class NoMixerSpec(LayerSpec):
    """A layer with no mixer, only its MLP (Nemotron-H's '-' blocks): no cache, no state."""

    kind: ClassVar[str] = "mlp"


@dataclass(frozen=True)
class ParallelHybridSpec(FullAttentionSpec):
    """Full attention and a Mamba2 mixer in parallel in one layer (Falcon-H1,
    ``FalconH1ParallelHybrid``: both read the normed input, their outputs are summed; then
    the MLP). It answers as its attention part for the per-token cache (2 g head_dim w per
    token, every token held, ``cdiv(max_model_len, block)`` blocks, causal pairs) and as its
    Mamba2 part (``mamba``) for the state per sequence, the recurrent FLOPs and the split."""

    mamba: Mamba2Spec | None = None

    kind: ClassVar[str] = "parallel_hybrid"

    def state_part(self) -> Mamba2Spec:
        return self.mamba

    def state_bytes(self, tp: int = 1, conv_width: float = 2.0, ssm_width: float = 2.0) -> float:
        return self.mamba.state_bytes(tp, conv_width, ssm_width)

    def recurrent_flops(self, tokens: float) -> float:
        return self.mamba.recurrent_flops(tokens)

    def tp_valid(self, tp: int) -> bool:
        return super().tp_valid(tp) and self.mamba.tp_valid(tp)

    def attention_part(self) -> FullAttentionSpec:
        """The layer's attention alone, as a full-attention layer of its shape."""
        return FullAttentionSpec(self.num_heads, self.num_kv_heads, self.head_dim)


# --------------------------------------------------------------------------- a model's layers

_MEMO: dict[int, tuple[ModelProfile, tuple]] = {}


def attention_spec(m: ModelProfile) -> FullAttentionSpec:
    """The full-attention spec of the model's attention layers (MLA where it has one)."""
    return _memo(m)[2]


def _attention_spec(m: ModelProfile) -> FullAttentionSpec:
    if m.mla is not None and m.mla.indexer is not None:
        a, ix = m.mla, m.mla.indexer
        return SparseMLAAttentionSpec(
            m.num_attention_heads,
            m.num_kv_heads,
            m.head_dim,
            kv_lora_rank=a.kv_lora_rank,
            qk_rope_head_dim=a.qk_rope_head_dim,
            qk_nope_head_dim=a.qk_nope_head_dim,
            v_head_dim=a.v_head_dim,
            index_n_heads=ix.n_heads,
            index_head_dim=ix.head_dim,
            index_topk=ix.topk,
        )
    if m.mla is not None:
        a = m.mla
        return MLAAttentionSpec(
            m.num_attention_heads,
            m.num_kv_heads,
            m.head_dim,
            kv_lora_rank=a.kv_lora_rank,
            qk_rope_head_dim=a.qk_rope_head_dim,
            qk_nope_head_dim=a.qk_nope_head_dim,
            v_head_dim=a.v_head_dim,
        )
    return FullAttentionSpec(m.num_attention_heads, m.num_kv_heads, m.head_dim)


def _mamba_spec(m: ModelProfile) -> Mamba2Spec:
    s = m.mamba
    return Mamba2Spec(
        s.num_heads,
        s.head_dim,
        s.state_size,
        s.n_groups,
        s.conv_kernel,
        s.conv_bias,
        s.proj_bias,
        s.gated_norm,
    )


def _spec_of(m: ModelProfile, kind: str, full: FullAttentionSpec) -> LayerSpec:
    if kind == "full":
        return full
    if kind == "sliding":
        return SlidingWindowSpec(m.num_attention_heads, m.num_kv_heads, m.head_dim, window=m.sliding_window)
    if kind == "mlp":
        return NoMixerSpec()
    if kind == "cross":
        return CrossAttentionSpec(m.num_attention_heads, m.num_kv_heads, m.head_dim)
    if kind == "shared_full":
        return SharedFullAttentionSpec(m.num_attention_heads, m.num_kv_heads, m.head_dim)
    if kind == "shared_sliding":
        return SharedSlidingWindowSpec(
            m.num_attention_heads, m.num_kv_heads, m.head_dim, window=m.sliding_window
        )
    if kind == "chunked":
        return ChunkedLocalAttentionSpec(
            m.num_attention_heads, m.num_kv_heads, m.head_dim, chunk=m.attention_chunk_size
        )
    if kind == "mamba":
        return _mamba_spec(m)
    if kind == "parallel_hybrid":
        return ParallelHybridSpec(m.num_attention_heads, m.num_kv_heads, m.head_dim, mamba=_mamba_spec(m))
    if kind == "linear":
        s = m.linear_attention
        return GatedDeltaNetSpec(
            s.num_key_heads, s.num_value_heads, s.key_head_dim, s.value_head_dim, s.conv_kernel
        )
    raise ValueError(f"unknown layer kind {kind!r}")


def _build(m: ModelProfile):
    full = _attention_spec(m)
    made: dict[str, LayerSpec] = {}
    per_layer = []
    listed = m.layer_types
    # a layer the list does not reach (a profile copied with more layers) is full attention
    for kind in (listed[i] if i < len(listed) else "full" for i in range(m.num_layers)):
        if kind not in made:
            made[kind] = _spec_of(m, kind, full)
        per_layer.append(made[kind])
    counts: dict[LayerSpec, int] = {}
    for spec in per_layer:
        counts[spec] = counts.get(spec, 0) + 1
    return tuple(per_layer), tuple(counts.items()), full


def _memo(m: ModelProfile):
    entry = _MEMO.get(id(m))
    if entry is None or entry[0] is not m:
        entry = _MEMO[id(m)] = (m, _build(m))
    return entry[1]


def layer_specs(m: ModelProfile) -> tuple[LayerSpec, ...]:
    """One spec per layer, in layer order (layers of one kind share one spec object)."""
    return _memo(m)[0]


def spec_counts(m: ModelProfile) -> tuple[tuple[LayerSpec, int], ...]:
    """(spec, number of layers) of each kind, in order of first appearance."""
    return _memo(m)[1]


def attention_layers(m: ModelProfile) -> int:
    """Attention layers (full, sliding, chunked, MLA, KV-shared): their projections and scores."""
    return sum(n for spec, n in spec_counts(m) if spec.attends)


def cross_layers(m: ModelProfile) -> int:
    """Cross-attention layers (their KV holds the request's image tokens)."""
    return sum(n for spec, n in spec_counts(m) if isinstance(spec, CrossAttentionSpec))


def cached_layers(m: ModelProfile) -> int:
    """Attention layers that keep a per-token cache of their own (all but the KV-shared ones)."""
    return sum(n for spec, n in spec_counts(m) if spec.caches)


def state_spec(m: ModelProfile) -> StateSpec | None:
    """The spec of the model's recurrent mixers (None without them; one kind per model): a
    recurrent layer's, or the Mamba2 part of a parallel hybrid layer."""
    return next((spec.state_part() for spec, _ in spec_counts(m) if spec.state_part() is not None), None)


def state_layers(m: ModelProfile) -> int:
    """Layers that keep a fixed state per sequence (recurrent and parallel hybrid layers)."""
    return sum(n for spec, n in spec_counts(m) if spec.state_part() is not None)


def parallel_layers(m: ModelProfile) -> int:
    """Layers with both an attention and a recurrent mixer (parallel hybrid, Falcon-H1): counted
    in :func:`attention_layers` and in :func:`state_layers` alike."""
    return sum(n for spec, n in spec_counts(m) if isinstance(spec, ParallelHybridSpec))


def mixerless_layers(m: ModelProfile) -> int:
    """Layers with no mixer, only an MLP."""
    return sum(n for spec, n in spec_counts(m) if isinstance(spec, NoMixerSpec))


def pairs_per_sequence(m: ModelProfile, phase: str, ctx: int) -> float:
    """(query token, attended token) pairs of one sequence summed over the layers."""
    return sum(n * spec.attended_pairs(phase, ctx) for spec, n in spec_counts(m))


def sparse_spec(m: ModelProfile) -> SparseMLAAttentionSpec | None:
    """The model's sparse (DSA) attention spec, or None."""
    spec = attention_spec(m)
    return spec if isinstance(spec, SparseMLAAttentionSpec) else None


def dims(m: ModelProfile, phase: str) -> tuple[int, int]:
    """(d_qk, d_v) per head of the attention layers (all of a model's attention kinds share them)."""
    return attention_spec(m).attention_dims(phase)

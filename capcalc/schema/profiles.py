"""The profile dataclasses: what a model and a GPU are, as every calculation sees them.

They are built only by :mod:`capcalc.sources.loader`, which validates a YAML mapping
field by field (``docs/profiles.md`` is the file format); nothing here reads files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from capcalc.core.dtypes import canonical_dtype
from capcalc.core.errors import CapcalcError

# --------------------------------------------------------------------------- dataclasses

#: the layer kinds a profile's ``layer_types`` may name (capcalc/model/layers.py has one
#: spec class per kind): full attention, sliding-window attention, chunked-local attention
#: (Llama 4), Mamba2 state, Gated DeltaNet linear-attention state, and 'mlp': a layer with no
#: mixer, only its MLP (Nemotron-H's '-' blocks); 'shared_full' and 'shared_sliding': a full or
#: sliding layer that attends over the KV of the last earlier layer of its kind and caches
#: nothing itself (gemma-3n's num_kv_shared_layers); 'cross': a cross-attention layer whose KV
#: holds the request's image (encoder) tokens, not its text (Llama-3.2-Vision, mllama);
#: 'parallel_hybrid': full attention and a Mamba2 mixer side by side in one layer, keeping both
#: the attention KV per token and the Mamba2 state per sequence (Falcon-H1)
LAYER_KINDS = (
    "full",
    "sliding",
    "chunked",
    "mamba",
    "linear",
    "mlp",
    "shared_full",
    "shared_sliding",
    "cross",
    "parallel_hybrid",
)
#: the kinds that keep a fixed state per sequence ('parallel_hybrid' beside its per-token cache)
STATE_KINDS = ("mamba", "linear", "parallel_hybrid")
#: the kinds whose layers run a Mamba2 mixer (the profile's ``mamba`` block)
MAMBA_KINDS = ("mamba", "parallel_hybrid")


@dataclass(frozen=True)
class MoE:
    num_experts: int
    experts_per_token: int
    expert_intermediate_size: int
    num_shared_experts: int = 0
    shared_expert_intermediate_size: int = 0
    first_dense_layers: int = 0
    expert_bias: bool = False
    router_bias: bool = False
    #: after the leading dense layers, every layer_step-th layer is MoE (layer i when
    #: (i + 1) % layer_step == 0), the others dense: Llama-4 Maverick's interleave_moe_layer_step 2
    layer_step: int = 1


@dataclass(frozen=True)
class Indexer:
    """DeepSeek Sparse Attention's lightning indexer (DeepSeek-V3.2): ``n_heads`` heads of
    ``head_dim`` score every cached token; each query attends to the ``topk`` best."""

    n_heads: int
    head_dim: int
    topk: int


@dataclass(frozen=True)
class MLA:
    kv_lora_rank: int
    qk_rope_head_dim: int
    qk_nope_head_dim: int
    v_head_dim: int
    q_lora_rank: int | None = None
    indexer: Indexer | None = None


@dataclass(frozen=True)
class Mamba2:
    """A Mamba2 mixer (Nemotron-H, Granite-4.0-H, Falcon-H1): ``num_heads`` heads of
    ``head_dim`` channels (intermediate = heads x head_dim), a state of ``state_size``
    per channel shared across ``n_groups`` B/C groups, a causal conv of ``conv_kernel``."""

    num_heads: int
    head_dim: int
    state_size: int
    n_groups: int = 1
    conv_kernel: int = 4
    conv_bias: bool = True
    proj_bias: bool = False
    #: the mixer's gated RMSNorm over the intermediate channels (Falcon-H1 ``mamba_rms_norm``
    #: may turn it off; Nemotron-H and Granite-4.0-H always have it)
    gated_norm: bool = True


@dataclass(frozen=True)
class LinearAttention:
    """A Gated DeltaNet linear-attention mixer (Qwen3-Next, Qwen3.5): ``num_key_heads``
    query/key heads of ``key_head_dim``, ``num_value_heads`` value heads of
    ``value_head_dim``, a causal conv of ``conv_kernel`` over q, k and v."""

    num_key_heads: int
    num_value_heads: int
    key_head_dim: int
    value_head_dim: int
    conv_kernel: int = 4


@dataclass(frozen=True)
class ExtraParams:
    count: int
    what: str
    source: str


@dataclass(frozen=True)
class ModelProfile:
    name: str
    source: str
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    max_context: int
    display_name: str = ""
    aliases: tuple[str, ...] = ()
    params_official: int | None = None
    params_official_kind: str | None = None
    params_official_source: str | None = None
    native_dtype: str = "bf16"
    tie_word_embeddings: bool = False
    mlp: str = "gated"
    attention_bias: bool = False
    attention_output_bias: bool = False
    mlp_bias: bool = False
    norm: str = "rmsnorm"
    norms_per_layer: int = 2
    qk_norm: bool = False
    position_embedding: str = "rope"
    moe: MoE | None = None
    mla: MLA | None = None
    sliding_window: int | None = None
    #: one of :data:`LAYER_KINDS` per layer
    layer_types: tuple[str, ...] = ()
    #: the mixer layers (attention, recurrent) carry no MLP: only the 'mlp' layers have one
    #: (Nemotron-H: each block is a mixer or an MLP)
    mixer_only: bool = False
    #: tokens per chunk of the 'chunked' layers (attention_chunk_size)
    attention_chunk_size: int | None = None
    #: Mamba2 mixer of the 'mamba' layers (and of the 'parallel_hybrid' layers' Mamba2 part)
    mamba: Mamba2 | None = None
    #: Gated DeltaNet mixer of the 'linear' layers
    linear_attention: LinearAttention | None = None
    #: the attention layers' query projection also gives a sigmoid output gate (Qwen3-Next)
    attention_output_gate: bool = False
    #: dtype of the recurrent (SSM) state the checkpoint asks for (config ``mamba_ssm_dtype``);
    #: None: the conv state's dtype
    ssm_state_dtype: str | None = None
    extra_params: ExtraParams | None = None
    notes: str = ""
    path: str = ""

    @cached_property  # immutable profile; asked for on every step of a latency average
    def num_sliding_layers(self) -> int:
        return sum(1 for t in self.layer_types if t == "sliding")

    @property
    def num_full_layers(self) -> int:
        """Full-attention layers (MLA ones included, and the attention of a parallel hybrid
        layer); not sliding, not recurrent."""
        if not self.layer_types:
            return self.num_layers
        return sum(1 for t in self.layer_types if t in ("full", "parallel_hybrid"))

    def has_mlp(self, i: int) -> bool:
        """Whether layer ``i`` has an MLP (every layer, unless ``mixer_only``: then the 'mlp' ones)."""
        if not self.mixer_only:
            return True
        return i < len(self.layer_types) and self.layer_types[i] == "mlp"

    def is_moe_layer(self, i: int) -> bool:
        """Whether layer ``i`` has the MoE (else a dense MLP of intermediate_size, or none)."""
        m = self.moe
        return m is not None and i >= m.first_dense_layers and (i + 1) % m.layer_step == 0 and self.has_mlp(i)

    @cached_property  # asked for on every step of a latency average
    def num_moe_layers(self) -> int:
        if self.moe is None:
            return 0
        if self.moe.layer_step == 1 and not self.mixer_only:
            return self.num_layers - self.moe.first_dense_layers
        return sum(1 for i in range(self.num_layers) if self.is_moe_layer(i))

    @cached_property
    def num_dense_layers(self) -> int:
        """Layers with a dense MLP of intermediate_size."""
        if not self.mixer_only:
            return self.num_layers - self.num_moe_layers
        return sum(1 for i in range(self.num_layers) if self.has_mlp(i) and not self.is_moe_layer(i))


@dataclass(frozen=True)
class HardwareProfile:
    name: str
    memory_bytes: float
    bandwidth_bytes_per_s: float
    #: dense peak FLOP/s (or OP/s for integer types) per dtype
    peak_flops_per_s: dict[str, float]
    sources: dict[str, str]
    display_name: str = ""
    aliases: tuple[str, ...] = ()
    vendor: str = ""
    memory_reported_bytes: float | None = None
    interconnect: str = ""
    interconnect_bandwidth_bytes_per_s: float | None = None
    l2_cache_bytes: float | None = None
    price_per_hour: float | None = None
    efficiency: dict[str, Any] = field(default_factory=dict)
    notes: str = ""
    path: str = ""

    def peak(self, dtype: str) -> float:
        """Dense peak rate for ``dtype``; fp16 and bf16 stand in for each other."""
        if dtype in self.peak_flops_per_s:  # the hot path of latency averaging
            return self.peak_flops_per_s[dtype]
        dtype = canonical_dtype(dtype)
        for candidate in (dtype, {"bf16": "fp16", "fp16": "bf16"}.get(dtype)):
            if candidate and candidate in self.peak_flops_per_s:
                return self.peak_flops_per_s[candidate]
        raise CapcalcError(
            f"{self.name} has no {dtype} peak rate in its profile "
            f"(it lists {', '.join(self.peak_flops_per_s)})"
        )

    def ridge_point(self, dtype: str = "bf16") -> float:
        """FLOP/byte at which a kernel turns from memory- to compute-bound: peak / bandwidth."""
        return self.peak(dtype) / self.bandwidth_bytes_per_s

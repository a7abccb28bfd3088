"""Parameter accounting from the architecture, itemised like nanoGPT's sizing notebook.

Every count is a product of shapes from the profile:

* embedding: vocab x hidden; LM head: vocab x hidden unless tied to the embedding;
  learned positions (GPT-2): max_context x hidden.
* attention per layer: q = hidden x heads*head_dim, k and v = hidden x kv_heads*head_dim
  each, o = heads*head_dim x hidden (+ biases where the profile says).
  MLA (DeepSeek): q through an optional low-rank q_lora_rank bottleneck, one shared
  down-projection to kv_lora_rank + qk_rope_head_dim, an up-projection from the
  latent to heads*(qk_nope_head_dim + v_head_dim), o = heads*v_head_dim x hidden.
* MLP per dense layer: gated 3 x hidden x intermediate, plain 2 x hidden x intermediate.
* MoE per layer: num_experts routed experts and num_shared_experts shared ones,
  each an MLP of its own width, plus a router of hidden x num_experts.
* norms: hidden weights each (plus a bias for layernorm), norms_per_layer per
  layer and one final norm; qk-norm adds 2 x head_dim per attention layer.
* a recurrent layer (Mamba2, Gated DeltaNet) has its mixer in place of attention: input
  and output projections (``recurrent``, matrix weights) and its conv, per-head vectors
  and gated norm (``recurrent_other``), as its spec counts them
  (:meth:`capcalc.model.layers.StateSpec.params`). A parallel hybrid layer (Falcon-H1) has
  both mixers: its attention projections and its Mamba2 mixer's, and the layer norms once. A gated attention layer (Qwen3-Next,
  ``attention_output_gate``) doubles q's projection: it also gives the output gate.

``active`` counts what one token touches: everything but the routed experts it
was not routed to. Weights outside the text decoder (a vision tower recorded in
``extra_params``) count towards memory but not towards per-token FLOPs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from capcalc.model.layers import attention_layers, mixerless_layers, parallel_layers, state_layers, state_spec
from capcalc.schema.profiles import ModelProfile


@dataclass(frozen=True)
class LayerShapes:
    """Parameter counts of one layer's pieces (weights only unless named *_bias)."""

    attention: int  # all attention projection weights of one layer
    attention_bias: int
    dense_mlp: int  # one dense MLP (dense layers, or a model without MoE)
    dense_mlp_bias: int
    expert: int  # one routed expert's MLP weights (0 without MoE)
    expert_bias: int
    shared_experts: int  # all shared experts of one MoE layer
    router: int  # router weights + bias of one MoE layer
    norms: int  # all norm parameters of one attention layer (incl. qk-norm)
    recurrent: int = 0  # input + output projection weights of one recurrent layer
    recurrent_other: int = 0  # conv, per-head vectors, gated norm, biases of one recurrent layer
    recurrent_norms: int = 0  # the layer norms of one recurrent (or MLP-only) layer (no qk-norm)


_MEMO: dict[tuple[str, int], tuple[ModelProfile, object]] = {}


def _memoized(kind: str, model: ModelProfile, compute):
    """``compute(model)``, remembered per profile object: profiles are immutable, and
    sweeps and latency averaging ask for the same model's counts thousands of times."""
    entry = _MEMO.get((kind, id(model)))
    if entry is None or entry[0] is not model:
        entry = _MEMO[(kind, id(model))] = (model, compute(model))
    return entry[1]


def indexer_params(m: ModelProfile) -> int:
    """Matrix weights of one layer's DSA lightning indexer: wq_b (q_lora_rank, or hidden when
    q is not low-rank, -> n_heads x head_dim), wk (hidden -> head_dim) and weights_proj
    (hidden -> n_heads); its k_norm LayerNorm (2 x head_dim) is counted with the norms."""
    ix = m.mla.indexer
    q_in = m.mla.q_lora_rank or m.hidden_size
    return ix.n_heads * ix.head_dim * q_in + ix.head_dim * m.hidden_size + ix.n_heads * m.hidden_size


def layer_shapes(m: ModelProfile) -> LayerShapes:
    return _memoized("layer_shapes", m, _layer_shapes)


def _layer_shapes(m: ModelProfile) -> LayerShapes:
    h = m.hidden_size
    if m.mla is not None:
        a = m.mla
        qk_head = a.qk_nope_head_dim + a.qk_rope_head_dim
        if a.q_lora_rank:
            q = h * a.q_lora_rank + a.q_lora_rank * m.num_attention_heads * qk_head
            q_norm = a.q_lora_rank
        else:
            q = h * m.num_attention_heads * qk_head
            q_norm = 0
        kv_down = h * (a.kv_lora_rank + a.qk_rope_head_dim)
        kv_up = a.kv_lora_rank * m.num_attention_heads * (a.qk_nope_head_dim + a.v_head_dim)
        out = m.num_attention_heads * a.v_head_dim * h
        attention = q + kv_down + kv_up + out
        latent_norms = q_norm + a.kv_lora_rank
        attention_bias = h if m.attention_output_bias else 0
        if a.indexer is not None:  # DSA: wq_b (q latent -> heads x dim), wk, weights_proj; k_norm
            attention += indexer_params(m)
            latent_norms += 2 * a.indexer.head_dim
    else:
        q_width = m.num_attention_heads * m.head_dim
        kv_width = m.num_kv_heads * m.head_dim
        attention = h * q_width + 2 * h * kv_width + q_width * h
        if m.attention_output_gate:
            attention += h * q_width
        attention_bias = (q_width + 2 * kv_width if m.attention_bias else 0) + (
            h if m.attention_output_bias else 0
        )
        latent_norms = 0

    def mlp(width: int) -> int:
        return (3 if m.mlp == "gated" else 2) * h * width

    def mlp_bias(width: int) -> int:
        return (2 if m.mlp == "gated" else 1) * width + h

    norm_size = h * (2 if m.norm == "layernorm" else 1)
    qk_norm = 2 * m.head_dim * (2 if m.norm == "layernorm" else 1) if m.qk_norm else 0
    norms = m.norms_per_layer * norm_size + qk_norm + latent_norms
    recurrent = recurrent_other = 0
    spec = state_spec(m)
    if spec is not None:
        inp, out, recurrent_other = spec.params(h)
        recurrent = inp + out

    expert = expert_bias = shared = router = 0
    if m.moe is not None:
        e = m.moe
        expert = mlp(e.expert_intermediate_size)
        expert_bias = mlp_bias(e.expert_intermediate_size) if e.expert_bias else 0
        shared = e.num_shared_experts * mlp(e.shared_expert_intermediate_size)
        router = h * e.num_experts + (e.num_experts if e.router_bias else 0)
    return LayerShapes(
        attention=attention,
        attention_bias=attention_bias,
        dense_mlp=mlp(m.intermediate_size),
        dense_mlp_bias=mlp_bias(m.intermediate_size) if m.mlp_bias else 0,
        expert=expert,
        expert_bias=expert_bias,
        shared_experts=shared,
        router=router,
        norms=norms,
        recurrent=recurrent,
        recurrent_other=recurrent_other,
        recurrent_norms=m.norms_per_layer * norm_size,
    )


@dataclass(frozen=True)
class ParamCount:
    """Itemised parameter count of a model (each field a number of parameters)."""

    embedding: int
    position_embedding: int
    lm_head: int  # 0 when tied to the embedding
    attention: int  # projection weights, all layers
    attention_bias: int
    dense_mlp: int  # MLP weights of the dense layers (incl. their biases)
    routed_experts: int  # all routed experts of all MoE layers (incl. their biases)
    shared_experts: int
    router: int
    norms: int
    extra: int  # outside the text decoder (vision tower ...)
    routed_experts_active: int  # the routed experts one token uses
    recurrent: int = 0  # projection weights of the recurrent mixers, all layers
    recurrent_other: int = 0  # their conv, per-head vectors, norms and biases

    @property
    def total(self) -> int:
        return (
            self.embedding
            + self.position_embedding
            + self.lm_head
            + self.attention
            + self.attention_bias
            + self.dense_mlp
            + self.routed_experts
            + self.shared_experts
            + self.router
            + self.norms
            + self.extra
            + self.recurrent
            + self.recurrent_other
        )

    @property
    def active(self) -> int:
        """Parameters one token of text touches (the text decoder, routed experts
        counted only for the experts_per_token it is routed to)."""
        return self.total - self.extra - self.routed_experts + self.routed_experts_active

    @property
    def linear(self) -> int:
        """Weights of the decoder's matrix multiplies (what weight-only quantisation
        shrinks): attention and recurrent projections, MLPs, experts and router."""
        return (
            self.attention + self.dense_mlp + self.routed_experts + self.shared_experts + self.router
        ) + self.recurrent

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "total": self.total, "active": self.active}


def count_params(m: ModelProfile) -> ParamCount:
    return _memoized("count_params", m, _count_params)


def _count_params(m: ModelProfile) -> ParamCount:
    s = layer_shapes(m)
    dense_layers = m.num_dense_layers
    moe_layers = m.num_moe_layers
    routed = routed_active = shared = router = 0
    if m.moe is not None:
        per_expert = s.expert + s.expert_bias
        routed = moe_layers * m.moe.num_experts * per_expert
        routed_active = moe_layers * m.moe.experts_per_token * per_expert
        shared = moe_layers * s.shared_experts
        router = moe_layers * s.router
    final_norm = m.hidden_size * (2 if m.norm == "layernorm" else 1)
    attn, recur = attention_layers(m), state_layers(m)
    return ParamCount(
        embedding=m.vocab_size * m.hidden_size,
        position_embedding=m.max_context * m.hidden_size if m.position_embedding == "learned" else 0,
        lm_head=0 if m.tie_word_embeddings else m.vocab_size * m.hidden_size,
        attention=attn * s.attention,
        attention_bias=attn * s.attention_bias,
        dense_mlp=dense_layers * (s.dense_mlp + s.dense_mlp_bias),
        routed_experts=routed,
        shared_experts=shared,
        router=router,
        # a parallel hybrid layer (attention and Mamba2) has its norms counted with the attention
        norms=attn * s.norms
        + (recur - parallel_layers(m) + mixerless_layers(m)) * s.recurrent_norms
        + final_norm,
        extra=m.extra_params.count if m.extra_params else 0,
        routed_experts_active=routed_active,
        recurrent=recur * s.recurrent,
        recurrent_other=recur * s.recurrent_other,
    )

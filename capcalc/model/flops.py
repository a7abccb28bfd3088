"""FLOPs and bytes moved by one forward step, itemised by component (per GPU).

A step runs ``batch`` sequences through the model, ``new_tokens`` each: 1 in decode
(each sequence attends to ``ctx`` cached tokens, its own included), the whole prompt
in prefill. With T = batch x new_tokens tokens in the step, L layers:

* matrix products cost 2 FLOP per weight per token: QKV and output projections,
  the dense MLP, and in MoE layers the router, the shared experts and the k routed
  experts each token is sent to (never the other experts);
* attention costs, per query token, per attended token, per layer:
  2 x heads x d_qk (scores) + 2 x heads x d_v (values); d = head_dim for MHA/GQA/MQA.
  MLA decodes in latent space (weights absorbed, as vLLM does):
  d_qk = kv_lora_rank + qk_rope_head_dim, d_v = kv_lora_rank; MLA prefill attends in
  full head space: d_qk = qk_nope + qk_rope, d_v = v_head_dim. A sliding-window layer
  attends to at most ``window`` tokens; prefill is causal (token i attends to i tokens);
* the LM head multiplies every decode token, but only the last prompt token of each
  sequence in prefill (engines compute logits for the sampled position only);
* each layer kind attends as its spec says (:mod:`capcalc.model.layers`): a chunked
  layer within its chunk, a DeepSeek-Sparse-Attention layer to its top-k tokens plus its
  indexer scoring every cached token (added to ``attention_scores``); a recurrent layer
  (Mamba2, Gated DeltaNet) instead updates its state, ``recurrent_update``, and its input
  and output projections count as ``qkv_proj`` and ``o_proj``.

Bytes moved from memory:

* every weight the step uses is read once (the whole point of batching): projections,
  MLPs, router, shared experts, LM head, norms and biases;
* routed experts: under uniform routing each of the T tokens picks k of E experts, so a
  layer reads the experts any token touched, E x (1 - (1 - k/E)^T) of them -- at T=1
  just k, at large T all E;
* the input embedding is gathered (T rows), not streamed -- unless it is tied to the LM
  head, which reads the whole table anyway;
* KV read: every sequence's cache at ``ctx`` (decode; under sparse attention every indexer
  key but only the top-k latents), the prompt's own KV once (prefill; FlashAttention keeps
  the tiles on chip); KV write: one token per caching attention layer per new token (a
  KV-shared layer writes none and reads the cache it shares). A recurrent
  layer's fixed state is read with the cache and written back once per sequence and step
  (the bytes of ``recurrent_update``): in decode with every token, in prefill once after the
  prompt. ``StepCost.kv_bytes`` counts all three as cache traffic.
  Sizes (GQA heads, MLA latent, windows, tp replication) come from :mod:`capcalc.model.kv`.
* activations, in prefill only: every activation tensor passed between kernels is written
  once and read once, in the 16-bit activation dtype (4 bytes for fp32 models). Per token
  and layer (see :func:`activation_elements_per_token`), with h the hidden size, q/k/v/o
  the widths of the queries, keys, values and attention output, I the MLP width:
    - residual stream: each of the norms_per_layer norms writes its output and the
      residual it adds to (2h), and the attention and MLP outputs are written before the
      add (2h): (2 x norms_per_layer + 2) x h, not divided by tp (replicated);
    - attention: the q/k/v projection's output (q + k + v), RoPE rewriting q and k (q + k),
      the attention output (o); the K/V cache write is priced as ``kv_write``;
    - MLP: the gate and up outputs (2I; I for a plain MLP) and the activation's output
      (I); an MoE layer has that for each of its k routed experts (I = the expert width)
      plus the token copied to and gathered from each of them (2kh), and the same for its
      shared experts.
  Each element is moved twice (write + read). Llama-3.2-1B: 12 x 2048 + 2 (2048 + 512 +
  512) + 2 (2048 + 512) + 2 x 2048 + 6 x 8192 = 89,088 element writes and reads, 178 KB
  per token per layer in bf16 -- at 512 tokens 1.46 GB for 16 layers beside 2.47 GB of weights. In
  decode (batch x width, a few MB) they stay in the L2 cache and are not counted.
  They are streamed at the weight efficiency (``weight_bytes`` includes them).

Weights, per GPU, are those :func:`capcalc.model.weights.gpu_weights` lays out -- the same
layout ``fit`` holds in memory (:func:`capcalc.model.weights.weight_bytes_per_gpu`), at the
same widths (:func:`capcalc.model.weights.weight_widths`: quantised dtypes shrink the
decoder's matrix weights, mxfp4 only the routed experts, and keep embeddings, LM head,
norms and biases 16-bit). Tensor parallelism splits the projections, MLPs, experts,
embedding and LM head by tp, but every GPU holds, reads and multiplies whole the
replicated pieces: K/V projections once tp exceeds the KV heads, MLA's
down-projections, the router, norms and biases. So a step touching every expert
streams exactly the weights one GPU holds, less the untied embedding table (gathered)
and the weights outside the decoder. Attention FLOPs split by heads; KV per GPU comes
from :func:`capcalc.model.kv.kv_bytes_per_sequence`, which keeps replicated KV heads whole.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from capcalc.core.dtypes import resolve_kv_dtype
from capcalc.core.errors import CapcalcError
from capcalc.model.kv import (
    kv_bytes_per_sequence,
    kv_bytes_per_token_per_layer,
    kv_bytes_read_per_sequence,
    state_bytes_per_sequence,
)
from capcalc.model.layers import (
    attention_layers,
    cached_layers,
    dims,
    layer_specs,
    mixerless_layers,
    pairs_per_sequence,
    parallel_layers,
    sparse_spec,
    spec_counts,
    state_layers,
    state_spec,
)
from capcalc.model.weights import gpu_weights
from capcalc.schema.deployment import Deployment
from capcalc.schema.profiles import ModelProfile

#: component names, in the order tables print them
COMPONENTS = (
    "embedding",
    "qkv_proj",
    "o_proj",
    "attention_scores",
    "attention_values",
    "mlp",
    "router",
    "shared_experts",
    "routed_experts",
    "norms_biases",
    "activations",
    "lm_head",
    "kv_read",
    "kv_write",
    "recurrent_update",
)


@dataclass(frozen=True)
class Component:
    name: str
    flops: float
    bytes: float
    #: 'matmul' (weights x activations), 'attention', or 'memory' (no FLOPs)
    kind: str


#: the components whose bytes are cache traffic rather than weights (StepCost.kv_bytes)
KV_COMPONENTS = frozenset(("kv_read", "kv_write", "recurrent_update"))


@dataclass(frozen=True)
class StepCost:
    """FLOPs and bytes of one step on one GPU, itemised. (Totals are computed once:
    the object is immutable and latency averaging reads them many times.)"""

    phase: str  # decode | prefill
    model: str
    batch: int
    new_tokens: int  # per sequence: 1 in decode, the prompt length in prefill
    ctx: int  # decode: tokens each sequence attends to; prefill: the prompt length
    tp: int
    weight_dtype: str
    kv_dtype: str
    components: tuple[Component, ...]
    experts_touched_per_layer: float | None  # routed experts read per MoE layer (None: dense)
    #: sequences the step advances when not ``batch`` (a mixed step: its decodes and chunks)
    step_sequences: int | None = None
    # totals, set once from the components (__post_init__)
    flops: float = field(init=False, repr=False, compare=False)
    matmul_flops: float = field(init=False, repr=False, compare=False)
    attention_flops: float = field(init=False, repr=False, compare=False)
    bytes: float = field(init=False, repr=False, compare=False)
    #: cache traffic: KV reads and writes (``kv_read``, ``kv_write``) and the recurrent state
    #: written back (``recurrent_update``'s bytes, where the step has that component)
    kv_bytes: float = field(init=False, repr=False, compare=False)

    @property
    def tokens(self) -> int:
        return self.batch * self.new_tokens

    @property
    def sequences(self) -> int:
        """Sequences the step advances: its batch, or a mixed step's decodes plus chunks."""
        return self.batch if self.step_sequences is None else self.step_sequences

    def component(self, name: str) -> Component:
        return next(c for c in self.components if c.name == name)

    def __post_init__(self) -> None:
        # one pass for every total: a simulation times thousands of these, each read once
        flops = matmul = attention = total_bytes = kv = 0.0
        for c in self.components:
            flops += c.flops
            total_bytes += c.bytes
            if c.kind == "matmul":
                matmul += c.flops
            elif c.kind == "attention":
                attention += c.flops
            if c.name in KV_COMPONENTS:
                kv += c.bytes
        for name, value in (
            ("flops", flops),
            ("matmul_flops", matmul),
            ("attention_flops", attention),
            ("bytes", total_bytes),
            ("kv_bytes", kv),
        ):
            object.__setattr__(self, name, value)

    @property
    def weight_bytes(self) -> float:
        """Everything but the KV cache: weights, gathered embedding rows, prefill activations."""
        return self.bytes - self.kv_bytes

    @property
    def intensity(self) -> float:
        """Arithmetic intensity, FLOP per byte moved."""
        return self.flops / self.bytes


def experts_touched(num_experts: int, experts_per_token: int, tokens: float) -> float:
    """Expected distinct experts that ``tokens`` tokens route to, each picking
    ``experts_per_token`` of ``num_experts`` uniformly: E x (1 - (1 - k/E)^T)."""
    return num_experts * (1.0 - (1.0 - experts_per_token / num_experts) ** tokens)


def activation_elements_per_token(model: ModelProfile, tp: int = 1) -> float:
    """Activation elements one prefill token writes and reads between kernels, summed over
    the layers, on one of ``tp`` GPUs (the count is in the module docstring)."""
    h = model.hidden_size
    d_qk, d_v = attention_dims(model, "prefill")
    heads = model.num_attention_heads
    kv_heads = heads if model.mla is not None else model.num_kv_heads  # MLA expands per head
    q, k, v, o = heads * d_qk, kv_heads * d_qk, kv_heads * d_v, heads * d_v
    stream = (2 * model.norms_per_layer + 2) * h
    attention = (q + k + v) + (q + k) + o
    recurrent = state_spec(model)

    def mlp(width: int) -> int:
        return (2 * width if model.mlp == "gated" else width) + width

    moe_mlp = 0
    if model.moe is not None:
        e = model.moe
        routed = e.experts_per_token * (mlp(e.expert_intermediate_size) + 2 * h)
        moe_mlp = routed + e.num_shared_experts * mlp(e.shared_expert_intermediate_size)
    total = 0.0
    specs = layer_specs(model)
    # the attention layers, then a recurrent mixer's (its projections' and conv's outputs)
    parallel = parallel_layers(model)  # attention and a recurrent mixer in one layer: priced once
    for mixer, layers in ((attention, attention_layers(model)), (None, state_layers(model) - parallel)):
        if not layers:
            continue
        dense = sum(
            1 for i, s in enumerate(specs) if s.attends == (mixer is not None) and not model.is_moe_layer(i)
        )
        per_moe_layer = 0.0
        if mixer is None:
            width = recurrent.activation_width() * tp  # the mixer's columns, before the split
            per_dense_layer = stream + (width + mlp(model.intermediate_size)) / tp
            per_moe_layer = stream + (width + moe_mlp) / tp if model.moe is not None else 0.0
        else:
            per_dense_layer = stream + (mixer + mlp(model.intermediate_size)) / tp
            per_moe_layer = stream + (mixer + moe_mlp) / tp if model.moe is not None else 0.0
        total += dense * per_dense_layer + (layers - dense) * per_moe_layer
    if parallel:  # their recurrent mixer's columns beside the attention's
        total += parallel * recurrent.activation_width()
    if model.mixer_only:  # a layer is a mixer or an MLP: price each by what it has
        total = 0.0
        for i, spec in enumerate(specs):
            if spec.attends:
                mixer = attention
            elif spec.kind == "mlp":
                mixer = 0
            else:
                mixer = recurrent.activation_width() * tp
            ffn = 0
            if model.has_mlp(i):
                ffn = moe_mlp if model.is_moe_layer(i) else mlp(model.intermediate_size)
            total += stream + (mixer + ffn) / tp
    return 2.0 * total


def attended_pairs(model: ModelProfile, phase: str, ctx: int) -> float:
    """(query token, attended token) pairs of one sequence summed over layers (each layer
    kind's spec counts its own: all tokens, a window, none for a recurrent layer)."""
    return pairs_per_sequence(model, phase, ctx)


def attention_dims(model: ModelProfile, phase: str) -> tuple[int, int]:
    """(d_qk, d_v) per head of the attention products (see module docstring for MLA)."""
    return dims(model, phase)


def recurrent_flops(model: ModelProfile, tokens: float, tp: int = 1) -> float:
    """FLOPs of the recurrent layers' state updates for ``tokens`` tokens on one of ``tp``
    GPUs (:meth:`capcalc.model.layers.LayerSpec.recurrent_flops`; 0 without such layers)."""
    return sum(n * spec.recurrent_flops(tokens) for spec, n in spec_counts(model)) / tp


def step_cost(
    model: ModelProfile, phase: str, batch: int, ctx: int, deployment: Deployment | None = None, **fields
) -> StepCost:
    """Itemised FLOPs and bytes of a decode step (``ctx``: tokens attended) or of the
    prefill of ``batch`` prompts of ``ctx`` tokens, on one of the deployment's ``tp`` GPUs
    (``fields``: changes to ``deployment``, :meth:`Deployment.of`)."""
    if phase not in ("decode", "prefill"):
        raise ValueError(phase)
    if batch < 1:
        raise CapcalcError(f"batch must be at least 1, got {batch}", parameter="batch")
    if ctx < 1:
        what = "ctx" if phase == "decode" else "prompt_tokens"
        raise CapcalcError(f"{what} must be at least 1, got {ctx}", parameter=what)
    d = Deployment.of(deployment, **fields)
    tp = d.tp
    g = gpu_weights(model, d)  # checks tp
    w = g.widths
    kdtype = resolve_kv_dtype(d.kv_dtype, model.native_dtype)
    new_tokens = 1 if phase == "decode" else ctx
    tokens = batch * new_tokens
    logit_tokens = batch  # decode: every token; prefill: the last of each prompt
    moe_layers = model.num_moe_layers
    attn_layers, recur_layers = attention_layers(model), state_layers(model)
    # a parallel hybrid layer's norms are counted with its attention (norms_biases)
    parallel = parallel_layers(model)

    def matmul(name: str, weights: float, weight_bytes_each: float, uses: float) -> Component:
        """``weights`` parameters (on this GPU) read once, each used by ``uses`` tokens (2 FLOP per use)."""
        return Component(name, 2.0 * weights * uses, weights * weight_bytes_each, "matmul")

    d_qk, d_v = attention_dims(model, phase)
    pairs = batch * attended_pairs(model, phase, ctx)
    heads = model.num_attention_heads
    # vocabulary-parallel table: a GPU gathers the rows it holds; learned positions are replicated
    position_width = w.high if model.position_embedding == "learned" else 0.0
    embedding_rows = tokens * model.hidden_size * (w.embedding / tp + position_width)

    touched = None
    routed = Component("routed_experts", 0.0, 0.0, "matmul")
    if model.moe is not None:
        m = model.moe
        touched = experts_touched(m.num_experts, m.experts_per_token, tokens)
        routed = Component(
            "routed_experts",
            2.0 * moe_layers * g.expert * m.experts_per_token * tokens,
            moe_layers * g.expert * touched * w.expert,
            "matmul",
        )

    kv_write = tokens * kv_bytes_per_token_per_layer(model, kdtype, tp) * cached_layers(model)
    activations = tokens * activation_elements_per_token(model, tp) * w.high if phase == "prefill" else 0.0
    state_dtype = d.mamba_ssm_cache_dtype
    if phase == "decode":
        kv_read = batch * kv_bytes_read_per_sequence(model, ctx, kdtype, tp, state_dtype)
    else:
        kv_read = batch * kv_bytes_per_sequence(model, ctx, kdtype, tp, state_dtype)
    scores = 2.0 * heads * d_qk * pairs / tp
    sparse = sparse_spec(model)
    if sparse is not None:  # the lightning indexer scores every cached token, replicated
        scores += batch * attn_layers * sparse.indexer_flops(phase, ctx)
    recurrent = Component("recurrent_update", 0.0, 0.0, "attention")
    if recur_layers:
        # each sequence's state is read with the cache (kv_read) and written back once per
        # step (decode: per token; prefill: once, the state passed between the prompt's
        # chunks stays on chip): the write is this component's bytes, so that kv_write stays
        # per new token
        state = batch * state_bytes_per_sequence(model, tp, state_dtype)
        recurrent = Component("recurrent_update", recurrent_flops(model, tokens, tp), state, "attention")
    components = (
        Component("embedding", 0.0, embedding_rows, "memory"),
        matmul("qkv_proj", attn_layers * g.qkv + recur_layers * g.recurrent_in, w.linear, tokens),
        matmul("o_proj", attn_layers * g.o + recur_layers * g.recurrent_out, w.linear, tokens),
        Component("attention_scores", scores, 0.0, "attention"),
        Component("attention_values", 2.0 * heads * d_v * pairs / tp, 0.0, "attention"),
        matmul("mlp", model.num_dense_layers * g.dense_mlp, w.linear, tokens),
        matmul("router", moe_layers * g.router, w.linear, tokens),
        matmul("shared_experts", moe_layers * g.shared_experts, w.linear, tokens),
        routed,
        Component(
            "norms_biases",
            0.0,
            (
                attn_layers * g.norms_biases
                + recur_layers * (g.recurrent_norms + g.recurrent_other)
                - parallel * g.recurrent_norms
                + mixerless_layers(model) * g.recurrent_norms
                + g.final_norm
            )
            * w.high,
            "memory",
        ),
        Component("activations", 0.0, activations, "memory"),
        matmul("lm_head", g.embedding if model.tie_word_embeddings else g.lm_head, w.embedding, logit_tokens),
        Component("kv_read", 0.0, kv_read, "memory"),
        Component("kv_write", 0.0, kv_write, "memory"),
        recurrent,
    )
    return StepCost(
        phase=phase,
        model=model.name,
        batch=batch,
        new_tokens=new_tokens,
        ctx=ctx,
        tp=tp,
        weight_dtype=g.dtype,
        kv_dtype=kdtype,
        components=components,
        experts_touched_per_layer=touched,
    )


def decode_cost(
    model: ModelProfile, batch: int, ctx: int, deployment: Deployment | None = None, **fields
) -> StepCost:
    """One decode step: ``batch`` sequences, each attending to ``ctx`` tokens."""
    return step_cost(model, "decode", batch, ctx, deployment, **fields)


def prefill_cost(
    model: ModelProfile, batch: int, prompt_tokens: int, deployment: Deployment | None = None, **fields
) -> StepCost:
    """The prefill of ``batch`` prompts of ``prompt_tokens`` tokens, as one step."""
    return step_cost(model, "prefill", batch, prompt_tokens, deployment, **fields)


def decode_costs(
    model: ModelProfile, batch: int, contexts: list[int], deployment: Deployment | None = None, **fields
) -> dict[int, StepCost]:
    """Decode steps at many contexts, computed exactly from a few.

    Every component of a decode step is affine in the context between kinks: KV
    reads and attention FLOPs grow with ``ctx`` in full layers and with
    ``min(ctx, window)`` in sliding ones (``min(ctx, index_topk)`` for the latents a
    sparse-attention layer reads; a recurrent layer's state does not grow at all);
    nothing else depends on it. So the steps at the smallest and largest context (and
    at the window or top-k, when it lies between) are computed with
    :func:`decode_cost`, and the others by linear interpolation between the two anchors
    around them — the same numbers, at a fraction of the cost (latency averages a
    decode over up to 33 contexts, and sweeps do that thousands of times). A chunked
    layer's cache is a sawtooth in ``ctx`` (it restarts at each chunk), so for a model
    with one every context is computed.
    """
    wanted = sorted(set(contexts))
    lo, hi = wanted[0], wanted[-1]
    anchors = {lo, hi}
    if model.sliding_window is not None and lo < model.sliding_window < hi:
        anchors.add(model.sliding_window)
    sparse = sparse_spec(model)
    if sparse is not None and lo < sparse.index_topk < hi:
        anchors.add(sparse.index_topk)
    if model.attention_chunk_size is not None:
        anchors = set(wanted)  # a chunked layer's cache is a sawtooth in ctx: every one computed
    d = Deployment.of(deployment, **fields)
    computed = {c: decode_cost(model, batch, c, d) for c in sorted(anchors)}
    points = sorted(computed)
    out: dict[int, StepCost] = {}
    for ctx in wanted:
        if ctx in computed:
            out[ctx] = computed[ctx]
            continue
        right = next(p for p in points if p > ctx)
        left = max(p for p in points if p < ctx)
        a, b = computed[left], computed[right]
        t = (ctx - left) / (right - left)
        components = tuple(
            Component(
                ca.name, ca.flops + (cb.flops - ca.flops) * t, ca.bytes + (cb.bytes - ca.bytes) * t, ca.kind
            )
            for ca, cb in zip(a.components, b.components, strict=True)
        )
        out[ctx] = replace(a, ctx=ctx, components=components)
    return out

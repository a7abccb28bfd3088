"""Weight bytes for a weight dtype, including quantisation scales.

16-bit and fp8 weights cost their width per parameter (fp8's per-tensor or
per-block scales are negligible). Integer weight-only quantisation stores, per
group of ``group_size`` weights along the input dimension, one 16-bit scale, and
for int4 (asymmetric, as GPTQ/AWQ checkpoints do) one 4-bit zero point:

    int4:  4 + (16 + 4) / group_size bits per weight   (group 128: 4.156 bits)
    int8:  8 + 16 / group_size bits per weight          (group 128: 8.125 bits)
    mxfp4: 4 + 8 / 32 bits per weight                   (an 8-bit E8M0 scale per 32 weights)
    nvfp4: 4 + 8 / 16 bits per weight                   (an fp8 E4M3 scale per 16 weights,
                                                         plus one fp32 scale per tensor)

(OCP Microscaling Formats v1.0 for MXFP4; NVIDIA's NVFP4 description: "Introducing NVFP4
for Efficient and Accurate Low-Precision Inference", NVIDIA technical blog, 2025, and the
ModelOpt checkpoints' tensors -- ``weight`` U8 of two fp4 values, ``weight_scale`` F8_E4M3
of in_features / 16 per row, ``weight_scale_2`` one F32. The per-tensor scale is 32 bits
per matrix, under 1e-6 bits per weight, and is left out.)

Only the decoder's matrix-multiply weights are quantised; embeddings and the LM
head stay 16-bit unless ``quantize_embeddings`` is set; norms, biases and the
extra (vision) weights stay 16-bit. mxfp4, as in gpt-oss, quantises only the
routed experts; nvfp4 (ModelOpt checkpoints) quantises every decoder matmul, as int4 does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from capcalc.core.dtypes import WEIGHT_DTYPES, canonical_dtype, serving_dtype
from capcalc.core.errors import CapcalcError
from capcalc.model.layers import NoMixerSpec, layer_specs, state_spec
from capcalc.model.parallel import check_tp, kv_heads_per_gpu, pp_layer_ranges
from capcalc.model.params import ParamCount, count_params, indexer_params, layer_shapes
from capcalc.schema.deployment import Deployment
from capcalc.schema.profiles import ModelProfile

__all__ = ["WEIGHT_DTYPES", "bits_per_weight", "gpu_weights", "weight_bytes", "weight_bytes_per_gpu"]


def bits_per_weight(dtype: str, group_size: int = 128) -> float:
    """Storage bits per quantised weight, scales included (see module docstring)."""
    if group_size < 1:
        raise CapcalcError(f"group_size must be at least 1, got {group_size}", parameter="group_size")
    return {
        "fp32": 32.0,
        "bf16": 16.0,
        "fp16": 16.0,
        "fp8": 8.0,
        "int8": 8.0 + 16.0 / group_size,
        "int4": 4.0 + 20.0 / group_size,
        "mxfp4": 4.0 + 8.0 / 32,
        "nvfp4": 4.0 + 8.0 / 16,
    }[dtype]


def resolve_weight_dtype(weight_dtype: str, model: ModelProfile) -> str:
    """``auto`` means the dtype the official checkpoint ships in, except that fp32
    checkpoints are served in their serving dtype (:func:`capcalc.core.dtypes.serving_dtype`,
    fp16, as vLLM's ``--dtype auto`` does)."""
    dtype = canonical_dtype(weight_dtype, WEIGHT_DTYPES, "weight dtype", "weight_dtype")
    if dtype == "auto":
        native = model.native_dtype
        if native == "fp32":
            return serving_dtype(native)
        return native if native in WEIGHT_DTYPES else "bf16"
    return dtype


class WeightWidths(NamedTuple):
    """Bytes per weight of each kind under one (resolved) weight dtype."""

    linear: float  # decoder matmul weights but the routed experts: attention, MLPs, shared experts, router
    high: float  # unquantised weights: norms, biases, learned positions, extra (vision) weights
    expert: float  # routed-expert weights (the only ones mxfp4 quantises)
    embedding: float  # embedding table and LM head (quantised only with quantize_embeddings)


def weight_widths(dtype: str, group_size: int = 128, quantize_embeddings: bool = False) -> WeightWidths:
    """Bytes per weight of each kind for a resolved weight ``dtype`` (module docstring):
    fp32 and 16-bit weights all cost their width; a quantised dtype shrinks the decoder's
    matmul weights (mxfp4: only the routed experts) and, with ``quantize_embeddings``,
    the embedding and LM head; everything else stays 16-bit."""
    high = 4.0 if dtype == "fp32" else 2.0
    quant = high if dtype in ("fp32", "bf16", "fp16") else bits_per_weight(dtype, group_size) / 8
    return WeightWidths(
        linear=high if dtype == "mxfp4" else quant,
        high=high,
        expert=quant,
        embedding=quant if quantize_embeddings else high,
    )


@dataclass(frozen=True)
class WeightBytes:
    dtype: str
    quantized_params: int
    other_params: int
    bytes: float


def weight_bytes(
    model: ModelProfile,
    weight_dtype: str = "auto",
    group_size: int = 128,
    quantize_embeddings: bool = False,
    params: ParamCount | None = None,
) -> WeightBytes:
    """Bytes of all the model's weights stored as ``weight_dtype``."""
    dtype = resolve_weight_dtype(weight_dtype, model)
    p = params or count_params(model)
    w = weight_widths(dtype, group_size, quantize_embeddings)
    tables = p.embedding + p.lm_head
    other_linear = p.linear - p.routed_experts
    total = (
        p.routed_experts * w.expert
        + other_linear * w.linear
        + tables * w.embedding
        + (p.total - p.linear - tables) * w.high
    )
    if dtype in ("fp32", "bf16", "fp16"):
        return WeightBytes(dtype, p.total, 0, total)
    quantized = p.routed_experts if dtype == "mxfp4" else p.linear
    if quantize_embeddings:
        quantized += tables
    return WeightBytes(dtype, quantized, p.total - quantized, total)


@dataclass(frozen=True)
class GpuWeights:
    """The parameters one GPU holds under tensor parallelism ``tp``, by kind (the layout
    of :func:`weight_bytes_per_gpu`), and the bytes each kind costs (``widths``).

    Per-layer fields count one layer: ``dense_mlp`` sits in each dense layer,
    ``expert`` (one routed expert, ``num_experts`` of them), ``shared_experts`` and
    ``router`` in each MoE layer; ``qkv``, ``o`` and ``norms_biases`` in every layer.
    The model-level fields are held once (by the first or last pipeline stage).
    Counts are per GPU, so fractional where a split does not divide evenly."""

    dtype: str  # the resolved weight dtype
    widths: WeightWidths
    qkv: float  # q, k, v projections; MLA: q and kv down- and up-projections
    o: float
    dense_mlp: float  # incl. its biases
    expert: float  # incl. its biases
    num_experts: int
    shared_experts: float
    router: float  # weights + bias, replicated
    norms_biases: float  # norms and attention biases, replicated
    embedding: float  # the token table (vocabulary-parallel)
    lm_head: float  # 0 when tied to the embedding
    final_norm: float  # replicated
    position_embedding: float  # learned positions, replicated
    extra: float  # outside the text decoder (vision tower)
    #: a recurrent layer's mixer in place of qkv / o: its input and output projections
    #: (split by tp) and its conv, per-head vectors and gated norm (split by tp, 16-bit)
    recurrent_in: float = 0.0
    recurrent_out: float = 0.0
    recurrent_other: float = 0.0
    recurrent_norms: float = 0.0  # a recurrent layer's layer norms, replicated

    def dense_layer_bytes(self, recurrent: bool = False) -> float:
        w = self.widths
        if recurrent:
            return w.linear * (self.recurrent_in + self.recurrent_out + self.dense_mlp) + w.high * (
                self.recurrent_norms + self.recurrent_other
            )
        return w.linear * (self.qkv + self.o + self.dense_mlp) + w.high * self.norms_biases

    def part_bytes(self, mixer: str, mlp: str | None) -> float:
        """Bytes of a layer made of ``mixer`` ('attention', 'recurrent', 'both': a parallel
        hybrid layer's attention and recurrent mixer, its norms once with the attention's, or
        'none') and ``mlp`` ('dense', 'moe' or None), its norms included (a mixer-only or
        MLP-only layer)."""
        w = self.widths
        total = {
            "attention": w.linear * (self.qkv + self.o) + w.high * self.norms_biases,
            "both": w.linear * (self.qkv + self.o + self.recurrent_in + self.recurrent_out)
            + w.high * (self.norms_biases + self.recurrent_other),
            "recurrent": w.linear * (self.recurrent_in + self.recurrent_out)
            + w.high * (self.recurrent_norms + self.recurrent_other),
            "none": w.high * self.recurrent_norms,
        }[mixer]
        if mlp == "dense":
            total += w.linear * self.dense_mlp
        elif mlp == "moe":
            total += (
                w.linear * (self.shared_experts + self.router) + w.expert * self.num_experts * self.expert
            )
        return total

    def moe_layer_bytes(self, recurrent: bool = False) -> float:
        w = self.widths
        if recurrent:
            return (
                w.linear * (self.recurrent_in + self.recurrent_out + self.shared_experts + self.router)
                + w.expert * self.num_experts * self.expert
                + w.high * (self.recurrent_norms + self.recurrent_other)
            )
        return (
            w.linear * (self.qkv + self.o + self.shared_experts + self.router)
            + w.expert * self.num_experts * self.expert
            + w.high * self.norms_biases
        )


def gpu_weights(model: ModelProfile, deployment: Deployment | None = None, **fields) -> GpuWeights:
    """The weights one GPU holds under the deployment's tensor parallelism ``tp``, by kind,
    at its weight dtype, group size and embedding quantisation (``fields``: changes to
    ``deployment``, :meth:`Deployment.of`; its ``pp`` plays no part here).

    Tensor parallelism (Megatron-style, as vLLM shards): the q and o projections,
    the MLP, every expert and the shared experts are divided by ``tp``; the k and v
    projections hold ``max(1, kv_heads / tp)`` heads per GPU, so they stop shrinking
    once tp exceeds the KV heads (replication). MLA's down-projections to the latent
    (kv_a, and q_a when q is low-rank) are replicated; its up-projections and o are
    split. The embedding and LM head are vocabulary-parallel (divided by ``tp``);
    the router, norms and biases (MLP and expert biases included) are replicated,
    and so are learned positions. The extra (vision) weights are assumed split by
    ``tp`` like the decoder.
    """
    d = Deployment.of(deployment, **fields)
    tp = check_tp(model, d.tp)
    dtype = resolve_weight_dtype(d.weight_dtype, model)
    s = layer_shapes(model)
    p = count_params(model)
    h = model.hidden_size
    if model.mla is not None:
        a = model.mla
        o = model.num_attention_heads * a.v_head_dim * h
        down = (h * a.q_lora_rank if a.q_lora_rank else 0) + h * (a.kv_lora_rank + a.qk_rope_head_dim)
        if a.indexer is not None:
            down += indexer_params(model)  # the DSA indexer is replicated (vLLM ReplicatedLinear)
        qkv = down + (s.attention - o - down) / tp  # q_b and kv_b split
    else:
        o = model.num_attention_heads * model.head_dim * h
        qkv = o / tp + 2 * h * kv_heads_per_gpu(model, tp) * model.head_dim  # q split, k and v per head
        if model.attention_output_gate:
            qkv += o / tp  # the gate half of q's projection
    recurrent = {}
    spec = state_spec(model)
    if spec is not None:
        inp, out, other = spec.params(h)
        recurrent = dict(
            recurrent_in=inp / tp,
            recurrent_out=out / tp,
            recurrent_other=other / tp,
            recurrent_norms=s.recurrent_norms,
        )
    return GpuWeights(
        dtype=dtype,
        widths=weight_widths(dtype, d.group_size, d.quantize_embeddings),
        qkv=qkv,
        o=o / tp,
        dense_mlp=s.dense_mlp / tp + s.dense_mlp_bias,
        expert=s.expert / tp + s.expert_bias,
        num_experts=model.moe.num_experts if model.moe is not None else 0,
        shared_experts=s.shared_experts / tp,
        router=s.router,
        norms_biases=s.norms + s.attention_bias,
        embedding=p.embedding / tp,
        lm_head=p.lm_head / tp,
        final_norm=h * (2 if model.norm == "layernorm" else 1),
        position_embedding=p.position_embedding,
        extra=p.extra / tp,
        **recurrent,
    )


@dataclass(frozen=True)
class StageWeights:
    """The weights one GPU of one pipeline stage holds (every tp rank of a stage holds the same)."""

    stage: int
    first_layer: int
    end_layer: int  # exclusive
    holds_embedding: bool
    holds_lm_head: bool
    bytes: float


def weight_bytes_per_gpu(
    model: ModelProfile, deployment: Deployment | None = None, **fields
) -> list[StageWeights]:
    """Weight bytes on one GPU of each of the deployment's ``pp`` pipeline stages under its
    tensor parallelism ``tp`` (the layout of :func:`gpu_weights`; ``fields`` as there).

    Pipeline parallelism: each stage holds the layers of
    :func:`capcalc.model.parallel.pp_layer_ranges`; the first stage also holds the
    embedding (and the extra weights), the last the final norm and the LM head.
    A tied LM head shares the embedding's memory only when one GPU holds both:
    with ``pp > 1`` the last stage keeps its own copy of the tied matrix.

    Quantised widths follow :func:`weight_bytes` (the same parameters are quantised),
    so at tp=1, pp=1 the one stage holds exactly ``weight_bytes(...).bytes``.
    """
    d = Deployment.of(deployment, **fields)
    g = gpu_weights(model, d)
    w = g.widths
    # bytes of a layer by (mixer, MLP), summed in this order: attention or recurrent mixer with a
    # dense or MoE MLP, then the layers missing one of the two (Nemotron-H)
    layouts = [(r, moe) for r in ("attention", "recurrent") for moe in ("dense", "moe")]
    layouts += [("attention", None), ("recurrent", None), ("none", "dense"), ("none", "moe"), ("none", None)]
    layouts += [("both", "dense"), ("both", "moe"), ("both", None)]
    layer_bytes = {
        ("attention", "dense"): g.dense_layer_bytes(),
        ("attention", "moe"): g.moe_layer_bytes(),
        ("recurrent", "dense"): g.dense_layer_bytes(True),
        ("recurrent", "moe"): g.moe_layer_bytes(True),
    }
    for layout in layouts[4:]:
        layer_bytes[layout] = g.part_bytes(*layout)
    specs = layer_specs(model)

    def layout_of(layer: int) -> tuple[str, str | None]:
        spec = specs[layer]
        mixer = "attention" if spec.attends else "none" if isinstance(spec, NoMixerSpec) else "recurrent"
        if spec.attends and spec.state_part() is not None:
            mixer = "both"
        mlp = ("moe" if model.is_moe_layer(layer) else "dense") if model.has_mlp(layer) else None
        return mixer, mlp

    table = g.embedding * w.embedding
    stages = []
    ranges = pp_layer_ranges(model.num_layers, d.pp)
    for i, (start, end) in enumerate(ranges):
        first, last = i == 0, i == len(ranges) - 1
        counts = dict.fromkeys(layouts, 0)
        for layer in range(start, end):
            counts[layout_of(layer)] += 1
        total = 0.0
        for layout in layouts:
            if counts[layout]:
                total += counts[layout] * layer_bytes[layout]
        if first:
            total += table + (g.position_embedding + g.extra) * w.high
        if last:
            total += g.final_norm * w.high
            if not model.tie_word_embeddings:
                total += g.lm_head * w.embedding
            elif not first:
                total += table  # the tied head's own copy on the last stage
        stages.append(StageWeights(i, start, end, first, last, total))
    return stages

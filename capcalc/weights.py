"""Weight bytes for a weight dtype, including quantisation scales.

16-bit and fp8 weights cost their width per parameter (fp8's per-tensor or
per-block scales are negligible). Integer weight-only quantisation stores, per
group of ``group_size`` weights along the input dimension, one 16-bit scale, and
for int4 (asymmetric, as GPTQ/AWQ checkpoints do) one 4-bit zero point:

    int4:  4 + (16 + 4) / group_size bits per weight   (group 128: 4.156 bits)
    int8:  8 + 16 / group_size bits per weight          (group 128: 8.125 bits)
    mxfp4: 4 + 8 / 32 bits per weight                   (an 8-bit scale per 32 weights)

Only the decoder's matrix-multiply weights are quantised; embeddings and the LM
head stay 16-bit unless ``quantize_embeddings`` is set; norms, biases and the
extra (vision) weights stay 16-bit. mxfp4, as in gpt-oss, quantises only the
routed experts.
"""

from __future__ import annotations

from dataclasses import dataclass

from .dtypes import canonical_dtype
from .errors import CapcalcError
from .params import ParamCount, count_params, layer_shapes
from .profiles import ModelProfile

WEIGHT_DTYPES = ("auto", "fp32", "bf16", "fp16", "fp8", "int8", "int4", "mxfp4")
_HIGH_PRECISION = 2.0  # bytes per parameter of everything that is not quantised


def bits_per_weight(dtype: str, group_size: int = 128) -> float:
    """Storage bits per quantised weight, scales included (see module docstring)."""
    if group_size < 1:
        raise CapcalcError(f"--group-size must be at least 1, got {group_size}")
    return {
        "fp32": 32.0,
        "bf16": 16.0,
        "fp16": 16.0,
        "fp8": 8.0,
        "int8": 8.0 + 16.0 / group_size,
        "int4": 4.0 + 20.0 / group_size,
        "mxfp4": 4.0 + 8.0 / 32,
    }[dtype]


def resolve_weight_dtype(weight_dtype: str, model: ModelProfile) -> str:
    """``auto`` means the dtype the official checkpoint ships in, except that fp32
    checkpoints are served in fp16 (vLLM's ``--dtype auto``)."""
    dtype = canonical_dtype(weight_dtype, WEIGHT_DTYPES, "weight dtype")
    if dtype == "auto":
        native = model.native_dtype
        if native == "fp32":
            return "fp16"
        return native if native in WEIGHT_DTYPES else "bf16"
    return dtype


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
    if dtype == "fp32":
        return WeightBytes(dtype, p.total, 0, p.total * 4.0)
    if dtype in ("bf16", "fp16"):
        return WeightBytes(dtype, p.total, 0, p.total * 2.0)
    quantized = p.routed_experts if dtype == "mxfp4" else p.linear
    if quantize_embeddings:
        quantized += p.embedding + p.lm_head
    other = p.total - quantized
    total = quantized * bits_per_weight(dtype, group_size) / 8 + other * _HIGH_PRECISION
    return WeightBytes(dtype, quantized, other, total)


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
    model: ModelProfile,
    weight_dtype: str = "auto",
    group_size: int = 128,
    quantize_embeddings: bool = False,
    tp: int = 1,
    pp: int = 1,
) -> list[StageWeights]:
    """Weight bytes on one GPU of each pipeline stage under tensor parallelism ``tp``.

    Tensor parallelism (Megatron-style, as vLLM shards): the q and o projections,
    the MLP, every expert and the shared experts are divided by ``tp``; the k and v
    projections hold ``max(1, kv_heads / tp)`` heads per GPU, so they stop shrinking
    once tp exceeds the KV heads (replication). MLA's down-projections to the latent
    (kv_a, and q_a when q is low-rank) are replicated; its up-projections and o are
    split. The embedding and LM head are vocabulary-parallel (divided by ``tp``);
    the router, norms and biases are replicated. The extra (vision) weights are
    assumed split by ``tp`` like the decoder and held by the first stage.

    Pipeline parallelism: each stage holds the layers of
    :func:`capcalc.parallel.pp_layer_ranges`; the first stage also holds the
    embedding (and the extra weights), the last the final norm and the LM head.
    A tied LM head shares the embedding's memory only when one GPU holds both:
    with ``pp > 1`` the last stage keeps its own copy of the tied matrix.

    Quantised widths follow :func:`weight_bytes` (the same parameters are quantised),
    so at tp=1, pp=1 the one stage holds exactly ``weight_bytes(...).bytes``.
    """
    from .parallel import check_tp, kv_heads_per_gpu, pp_layer_ranges

    check_tp(model, tp)
    dtype = resolve_weight_dtype(weight_dtype, model)
    s = layer_shapes(model)
    if dtype == "fp32":
        q_width = other = 4.0
    elif dtype in ("bf16", "fp16"):
        q_width = other = 2.0
    else:
        q_width, other = bits_per_weight(dtype, group_size) / 8, _HIGH_PRECISION
    # mxfp4 (gpt-oss) quantises only the routed experts; the other formats every linear layer
    linear = other if dtype == "mxfp4" else q_width
    embed = q_width if quantize_embeddings else other

    h = model.hidden_size
    if model.mla is not None:
        a = model.mla
        q_down = h * a.q_lora_rank if a.q_lora_rank else 0
        kv_down = h * (a.kv_lora_rank + a.qk_rope_head_dim)
        attention = q_down + kv_down + (s.attention - q_down - kv_down) / tp  # q_b, kv_b, o split
    else:
        q_and_o = 2 * h * model.num_attention_heads * model.head_dim
        attention = q_and_o / tp + 2 * h * kv_heads_per_gpu(model, tp) * model.head_dim
    replicated = s.attention_bias + s.norms
    dense = linear * (attention + s.dense_mlp / tp + s.dense_mlp_bias) + other * replicated
    moe_layer = dense
    if model.moe is not None:
        e = model.moe
        experts = e.num_experts * (s.expert / tp + s.expert_bias)
        moe_layer = (
            linear * (attention + s.shared_experts / tp + s.router) + q_width * experts + other * replicated
        )
    first_moe = model.moe.first_dense_layers if model.moe is not None else model.num_layers

    p = count_params(model)
    table = (p.embedding / tp) * embed
    stages = []
    ranges = pp_layer_ranges(model.num_layers, pp)
    for i, (start, end) in enumerate(ranges):
        first, last = i == 0, i == len(ranges) - 1
        n_dense = max(0, min(end, first_moe) - start)
        total = n_dense * dense + (end - start - n_dense) * moe_layer
        if first:
            total += table + (p.position_embedding + p.extra / tp) * other
        if last:
            total += other * h * (2 if model.norm == "layernorm" else 1)  # final norm
            if not model.tie_word_embeddings:
                total += (p.lm_head / tp) * embed
            elif not first:
                total += table  # the tied head's own copy on the last stage
        stages.append(StageWeights(i, start, end, first, last, total))
    return stages

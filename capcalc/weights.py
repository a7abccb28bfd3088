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
from .params import ParamCount, count_params
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

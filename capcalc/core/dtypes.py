"""Data types: their width in bytes and the names capcalc accepts."""

from __future__ import annotations

from capcalc.core.errors import CapcalcError
from capcalc.core.inputs import excerpt

#: bytes per element. 4-bit formats are half a byte before their scales.
DTYPE_BYTES: dict[str, float] = {
    "fp32": 4.0,
    "tf32": 4.0,
    "bf16": 2.0,
    "fp16": 2.0,
    "fp8": 1.0,
    "int8": 1.0,
    "int4": 0.5,
    "fp4": 0.5,
    "mxfp4": 0.5,
    "nvfp4": 0.5,
}

_SYNONYMS = {
    "float32": "fp32",
    "float": "fp32",
    "bfloat16": "bf16",
    "float16": "fp16",
    "half": "fp16",
    "float8": "fp8",
    "fp8_e4m3": "fp8",
    "fp8_e5m2": "fp8",
    "float8_e4m3fn": "fp8",
    # safetensors header names
    "f32": "fp32",
    "f16": "fp16",
    "f8_e4m3": "fp8",
    "f8_e5m2": "fp8",
}

#: dtypes a KV cache may be stored in (``auto`` resolves to the model's dtype)
KV_DTYPES = ("auto", "bf16", "fp16", "fp8", "int8", "fp32")

#: dtypes weights may be stored in (``auto``: the checkpoint's, see
#: :func:`capcalc.model.weights.resolve_weight_dtype`)
WEIGHT_DTYPES = ("auto", "fp32", "bf16", "fp16", "fp8", "int8", "int4", "mxfp4", "nvfp4")

#: dtypes whose peak may bound the matrix products (``auto``: from the weights, see
#: :func:`capcalc.perf.latency.resolve_compute_dtype`)
COMPUTE_DTYPES = ("auto", "fp32", "tf32", "bf16", "fp16", "fp8", "int8", "fp4", "int4")

#: dtypes a hardware profile may list a peak rate for
PEAK_DTYPES = ("fp64", "fp32", "tf32", "bf16", "fp16", "fp8", "int8", "fp4", "int4")


def canonical_dtype(name: str, allowed=None, what: str = "dtype", parameter: str | None = None) -> str:
    """Normalise a dtype name ('bfloat16' -> 'bf16') and check it is allowed
    (``parameter``: the argument at fault, for the error)."""
    if allowed is None and name in DTYPE_BYTES:  # already canonical: the hot path
        return name
    key = str(name).strip().lower()
    key = _SYNONYMS.get(key, key)
    choices = tuple(allowed) if allowed is not None else tuple(DTYPE_BYTES)
    if key not in choices:
        raise CapcalcError(
            f"unknown {what} {excerpt(name)}: expected one of {', '.join(choices)}", parameter=parameter
        )
    return key


def serving_dtype(native_dtype: str) -> str:
    """The activation dtype vLLM serves a checkpoint in with ``--dtype auto``: bf16 and
    fp16 checkpoints as they are, fp32 checkpoints in fp16, and quantised (fp8,
    4-bit) checkpoints in bf16."""
    if native_dtype in ("bf16", "fp16"):
        return native_dtype
    return "fp16" if native_dtype == "fp32" else "bf16"


def resolve_kv_dtype(kv_dtype: str, native_dtype: str) -> str:
    """``auto`` stores KV in the serving activation dtype, as vLLM's
    ``--kv-cache-dtype auto`` does (see :func:`serving_dtype`)."""
    kv = canonical_dtype(kv_dtype, KV_DTYPES, "KV dtype", "kv_dtype")
    return serving_dtype(native_dtype) if kv == "auto" else kv

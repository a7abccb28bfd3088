"""Device microbenchmarks: copy bandwidth, dense matmul throughput, weight streaming.

* copy: ``dst.copy_(src)`` of one large buffer; bytes = read + written = 2 x size.
  Buffers are several times the L2 cache (at least 8 x L2 and 1 GiB on a GPU) so
  the figure is DRAM/HBM bandwidth, not cache bandwidth.
* matmul: C = A @ B with square n x n operands, FLOPs = 2 n^3, for bf16, fp16, fp32
  with TF32 off (plain fp32), fp32 with TF32 on (reported as tf32), and fp8 (e4m3,
  ``torch._scaled_mm``, bf16 output) where the device has it (compute capability
  >= 8.9: Ada, Hopper).
* matvec: y = x W^T with x a single token (batch 1) and W a weight matrix of a
  real model's shape; one call runs over enough matrices to total well past the
  L2 cache, as a decode step streams every layer's weights once. bytes = weight
  bytes read (the activations are negligible), FLOPs = 2 x weight elements.

Every input is random (``randn``), never zeros: some hardware paths short-cut
zeros. Each figure is the median over repeats after warm-up (see ``device``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from capcalc.measure import require_torch
from capcalc.measure.device import DeviceInfo, median, time_calls

GiB = 2.0**30
#: buffer sizes on the CPU, where there is no L2 figure to scale from (a few x a large L3)
CPU_COPY_BYTES = 64 * 2**20
CPU_STREAM_BYTES = 128 * 2**20
CPU_MATMUL_N = 512

#: weight shapes (out_features, in_features) of real models' per-layer projections,
#: from their config.json (fused q/k/v and gate/up as inference engines store them)
MATVEC_SHAPES: tuple[tuple[str, int, int], ...] = (
    ("llama-3-8b qkv", 6144, 4096),  # (32 + 2 x 8) heads x 128, hidden 4096
    ("llama-3-8b gate_up", 28672, 4096),  # 2 x intermediate 14336
    ("llama-3-8b down", 4096, 14336),
    ("llama-3-70b down", 8192, 28672),
)


@dataclass(frozen=True)
class BenchResult:
    benchmark: str  # copy | matmul | matvec
    dtype: str
    shape: str
    bytes: float  # bytes moved per call
    flops: float  # FLOP per call
    time_s: float  # median seconds per call
    repeats: int
    bandwidth_bytes_per_s: float | None
    flops_per_s: float | None


def torch_dtype(name: str):
    torch = require_torch()
    return {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def copy_bandwidth(
    info: DeviceInfo, size_bytes: float | None = None, repeats: int | None = None
) -> BenchResult:
    torch = require_torch()
    if size_bytes is None:
        size_bytes = max(GiB, 8 * (info.l2_cache_bytes or 0)) if info.is_cuda else CPU_COPY_BYTES
    repeats = repeats or (20 if info.is_cuda else 5)
    n = int(size_bytes // 4)
    src = torch.randn(n, device=info.device, dtype=torch.float32)
    dst = torch.empty_like(src)
    times = time_calls(lambda: dst.copy_(src), info.device, repeats, warmup=3)
    t = median(times)
    moved = 2.0 * n * 4
    return BenchResult(
        "copy", "fp32", f"{n * 4 / 2**20:.0f} MiB buffer", moved, 0.0, t, repeats, moved / t, None
    )


def matmul_dtypes(info: DeviceInfo) -> list[str]:
    """The dtypes worth timing on this device."""
    if not info.is_cuda:
        return ["fp32", "bf16"]
    dtypes = ["bf16", "fp16", "fp32", "tf32"]
    if info.fp8_matmul:
        dtypes.append("fp8")
    return dtypes


def matmul_throughput(
    info: DeviceInfo, dtype: str, n: int | None = None, repeats: int | None = None
) -> BenchResult:
    torch = require_torch()
    n = n or (8192 if info.is_cuda else CPU_MATMUL_N)
    repeats = repeats or (10 if info.is_cuda else 3)
    device = info.device
    if dtype == "fp8":
        fp8 = torch.float8_e4m3fn
        a = torch.randn(n, n, device=device, dtype=torch.bfloat16).to(fp8)
        # _scaled_mm wants the second operand column-major: transpose a row-major matrix
        b = torch.randn(n, n, device=device, dtype=torch.bfloat16).to(fp8).t()
        scale = torch.tensor(1.0, device=device, dtype=torch.float32)

        def call():
            return torch._scaled_mm(a, b, scale_a=scale, scale_b=scale, out_dtype=torch.bfloat16)

        times = time_calls(call, device, repeats)
    else:
        a = torch.randn(n, n, device=device, dtype=torch_dtype(dtype))
        b = torch.randn(n, n, device=device, dtype=torch_dtype(dtype))
        out = torch.empty(n, n, device=device, dtype=torch_dtype(dtype))
        previous = torch.get_float32_matmul_precision()
        previous_cuda = torch.backends.cuda.matmul.allow_tf32
        # 'highest' = true fp32; 'high' lets cuBLAS use TF32 tensor cores
        torch.set_float32_matmul_precision("high" if dtype == "tf32" else "highest")
        torch.backends.cuda.matmul.allow_tf32 = dtype == "tf32"
        try:
            times = time_calls(lambda: torch.matmul(a, b, out=out), device, repeats)
        finally:
            torch.set_float32_matmul_precision(previous)
            torch.backends.cuda.matmul.allow_tf32 = previous_cuda
    t = median(times)
    flops = 2.0 * n**3
    element = 1 if dtype == "fp8" else torch_dtype(dtype).itemsize
    return BenchResult(
        "matmul", dtype, f"{n}x{n}x{n}", 3.0 * n * n * element, flops, t, repeats, None, flops / t
    )


def matvec_streaming(
    info: DeviceInfo,
    dtype: str = "bf16",
    shapes=None,
    scale: int | None = None,
    repeats: int | None = None,
) -> list[BenchResult]:
    """Batch-1 weight streaming at real model shapes (``scale`` divides each dimension, for the CPU)."""
    torch = require_torch()
    import torch.nn.functional as F

    shapes = MATVEC_SHAPES if shapes is None else shapes
    scale = scale or (1 if info.is_cuda else 4)
    repeats = repeats or (10 if info.is_cuda else 3)
    target = max(GiB, 8 * (info.l2_cache_bytes or 0)) if info.is_cuda else CPU_STREAM_BYTES
    wdtype = torch_dtype(dtype)
    results = []
    for label, rows, cols in shapes:
        rows, cols = rows // scale, cols // scale
        one = rows * cols * wdtype.itemsize
        count = max(2, math.ceil(target / one))
        weights = [
            torch.randn(rows, cols, device=info.device, dtype=wdtype) / math.sqrt(cols) for _ in range(count)
        ]
        x = torch.randn(1, cols, device=info.device, dtype=wdtype)

        def sweep(weights=weights, x=x):
            for w in weights:
                F.linear(x, w)

        t = median(time_calls(sweep, info.device, repeats))
        moved = float(count * one)
        flops = 2.0 * count * rows * cols
        results.append(
            BenchResult(
                "matvec",
                dtype,
                f"{label}: {count} x {rows}x{cols}",
                moved,
                flops,
                t,
                repeats,
                moved / t,
                flops / t,
            )
        )
    return results

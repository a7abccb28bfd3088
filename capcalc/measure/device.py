"""The device under test: which one, what it is, and how to time work on it.

Timing practice (followed by every benchmark and by the decode loop):

* warm-up runs first (allocator, cuBLAS heuristics, lazy module loading);
* on a GPU, each repeat is bracketed by CUDA events recorded on the stream, so
  the time is the device's own, not the host's launch time; on the CPU,
  ``time.perf_counter`` around a call that returns only when the work is done;
* the result is the median over repeats, robust to a stray slow run.
"""

from __future__ import annotations

import os
import platform
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

from capcalc.core.errors import CapcalcError
from capcalc.core.inputs import excerpt
from capcalc.measure import require_torch


@dataclass(frozen=True)
class DeviceInfo:
    device: str  # 'cuda:0' or 'cpu'
    device_name: str  # what the driver reports ('NVIDIA H100 80GB HBM3') or the CPU model
    is_cuda: bool
    memory_total_bytes: float
    memory_free_bytes: float
    l2_cache_bytes: float | None
    compute_capability: str | None  # '9.0' on Hopper
    torch_version: str
    cpu_threads: int

    @property
    def fp8_matmul(self) -> bool:
        """fp8 tensor-core matmuls (torch._scaled_mm) need compute capability 8.9 or newer."""
        if not self.is_cuda or not self.compute_capability:
            return False
        major, minor = (int(x) for x in self.compute_capability.split("."))
        return (major, minor) >= (8, 9)


def resolve_device(spec: str | None) -> str:
    """'auto'/None: the first CUDA device if torch sees one, else the CPU. Checks that it exists."""
    torch = require_torch()
    text = (spec or "auto").strip().lower()
    if text == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if text == "cpu":
        return "cpu"
    match = re.fullmatch(r"cuda(?::(\d+))?", text)
    if not match:
        raise CapcalcError(f"device: expected cpu, cuda or cuda:N, got {excerpt(spec)}", parameter="device")
    if not torch.cuda.is_available():
        raise CapcalcError(
            f"device {spec}: torch {torch.__version__} sees no CUDA device (a CPU-only build, or no driver); "
            "use device cpu",
            exit_code=1,
            parameter="device",
        )
    index = int(match.group(1) or 0)
    count = torch.cuda.device_count()
    if index >= count:
        raise CapcalcError(
            f"device {spec}: there is no CUDA device {index} (torch sees {count}: "
            f"{', '.join(f'cuda:{i}' for i in range(count))})",
            parameter="device",
        )
    return f"cuda:{index}"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def _meminfo() -> tuple[float, float]:
    """(total, available) bytes of host memory."""
    try:
        fields = {}
        with open("/proc/meminfo", encoding="utf-8") as handle:
            for line in handle:
                key, value = line.split(":", 1)
                fields[key] = float(value.split()[0]) * 1024
        return fields["MemTotal"], fields.get("MemAvailable", fields["MemFree"])
    except (OSError, KeyError, ValueError):
        total = float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
        return total, total / 2


def device_info(device: str) -> DeviceInfo:
    torch = require_torch()
    if device.startswith("cuda"):
        index = torch.device(device).index or 0
        props = torch.cuda.get_device_properties(index)
        free, total = torch.cuda.mem_get_info(index)
        l2 = getattr(props, "L2_cache_size", 0) or None
        return DeviceInfo(
            device=device,
            device_name=props.name,
            is_cuda=True,
            memory_total_bytes=float(total),
            memory_free_bytes=float(free),
            l2_cache_bytes=float(l2) if l2 else None,
            compute_capability=f"{props.major}.{props.minor}",
            torch_version=str(torch.__version__),
            cpu_threads=torch.get_num_threads(),
        )
    total, available = _meminfo()
    return DeviceInfo(
        device="cpu",
        device_name=_cpu_name(),
        is_cuda=False,
        memory_total_bytes=total,
        memory_free_bytes=available,
        l2_cache_bytes=None,
        compute_capability=None,
        torch_version=str(torch.__version__),
        cpu_threads=torch.get_num_threads(),
    )


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        require_torch().cuda.synchronize(device)


def time_calls(fn: Callable[[], object], device: str, repeats: int, warmup: int = 2) -> list[float]:
    """Seconds per call of ``fn``, one figure per repeat, after ``warmup`` untimed calls."""
    torch = require_torch()
    for _ in range(warmup):
        fn()
    synchronize(device)
    if device.startswith("cuda"):
        pairs = []
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            pairs.append((start, end))
        torch.cuda.synchronize(device)
        return [start.elapsed_time(end) / 1e3 for start, end in pairs]
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def slug(text: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3' (a valid profile name)."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "device"

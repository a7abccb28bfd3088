"""The shipped GPU profiles: what memory_reported means, that every source names a
document, and that efficiency blocks only hold what differs from the vendor defaults."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from capcalc.perf.efficiency import PARAMETERS, check_mapping, default_efficiency, resolve_efficiency
from capcalc.schema.profiles import HardwareProfile
from capcalc.sources.loader import load_profile_file

ROOT = Path(__file__).resolve().parent.parent
GPU_FILES = sorted((ROOT / "hardware_profiles").glob("*.yaml"))
GIB = 2**30


def _gpus() -> list[HardwareProfile]:
    return [load_profile_file(path) for path in GPU_FILES]


GPUS = {gpu.name: gpu for gpu in _gpus()}
WITH_REPORTED = sorted(name for name, gpu in GPUS.items() if gpu.memory_reported_bytes)


def test_the_shipped_gpu_profiles_are_found():
    assert len(GPUS) >= 20 and "h100-sxm" in GPUS and "rtx-3090" in GPUS


# ---------------------------------------------------------------- memory_reported


@pytest.mark.parametrize("name", WITH_REPORTED)
def test_memory_reported_is_below_the_datasheet_capacity(name):
    # torch's total never exceeds the board's memory; nvidia-smi's memory.total equals it
    # (a binary 24576 MiB on a "24 GB" card), so a memory_reported equal to memory is a
    # copied nvidia-smi figure
    gpu = GPUS[name]
    assert gpu.memory_reported_bytes < gpu.memory_bytes


@pytest.mark.parametrize("name", WITH_REPORTED)
def test_memory_reported_is_close_to_the_capacity(name):
    # ECC on GDDR6 parts (T4, L40S) hides ~1/16 of the board; never more than a tenth goes
    gpu = GPUS[name]
    assert gpu.memory_reported_bytes > 0.9 * gpu.memory_bytes


@pytest.mark.parametrize(
    "name, total_gib, where",
    [
        # vLLM log "total_gpu_memory (23.58GiB)" (vLLM issue 10517, PR 14447)
        ("rtx-3090", 23.58, "vllm-project/vllm/issues/10517"),
        # PyTorch OOM "GPU 0 has a total capacity of 79.15 GiB" (vLLM issue 4408)
        ("a100-80gb-sxm", 79.15, "vllm-project/vllm/issues/4408"),
        ("t4", 14.58, "datawhalechina/self-llm/issues/162"),
        ("l40s", 44.53, "Wan-Video/Wan2.1/issues/205"),
        ("rtx-4090", 23.64, "ali-vilab/VGen/issues/104"),
        ("v100", 31.74, "liucongg/ChatGLM-Finetuning/issues/73"),
        # CUDA deviceQuery "Total Global Memory: 178.35 GB" (binary units)
        ("b200", 178.35, "pytorch/ao/pull/4002"),
    ],
)
def test_memory_reported_reproduces_its_source(name, total_gib, where):
    gpu = GPUS[name]
    assert round(gpu.memory_reported_bytes / GIB, 2) == total_gib
    assert where in gpu.sources["memory_reported"]


def test_h100_memory_reported_is_the_measured_torch_total():
    # docs/validation/h100-2026-11-26/run.log: "device NVIDIA H100 80GB HBM3 ... memory 85017493504"
    assert GPUS["h100-sxm"].memory_reported_bytes == 85_017_493_504
    run_log = (ROOT / "docs/validation/h100-2026-11-26/run.log").read_text()
    assert "memory 85017493504" in run_log


def test_the_a100_40gb_totals_are_cuda_totals_not_nvidia_smi():
    # deviceQuery 42298834944 bytes (40339 MiB) vs nvidia-smi 40960 MiB
    assert GPUS["a100-40gb-sxm"].memory_reported_bytes == 42_298_834_944
    assert GPUS["a100-40gb-pcie"].memory_reported_bytes == pytest.approx(40339.3125 * 2**20)


@pytest.mark.parametrize("name", WITH_REPORTED)
def test_memory_reported_is_not_an_nvidia_smi_figure(name):
    source = GPUS[name].sources["memory_reported"]
    head = source.split("nvidia-smi")[0]  # nvidia-smi may be mentioned, as the figure it is not
    assert re.search(r"torch|vLLM|PyTorch|CUDA|deviceQuery", head), source


# ---------------------------------------------------------------- sources

NAMES_A_DOCUMENT = re.compile(r"https?://|arXiv|docs/|datasheet|whitepaper|white paper", re.I)
VAGUE = re.compile(
    r"search-library|code search result|same table|same sources|same datasheet|table above|page above"
    r"|README above|json above|cited above|cited for|as above|quoted in the notes",
    re.I,
)
SOURCES = [(gpu.name, key, text) for gpu in GPUS.values() for key, text in gpu.sources.items()]


@pytest.mark.parametrize("name, key, text", SOURCES, ids=[f"{n}.{k}" for n, k, _ in SOURCES])
def test_every_gpu_source_names_a_document(name, key, text):
    assert NAMES_A_DOCUMENT.search(text), f"{name}: sources.{key} names no document: {text!r}"


@pytest.mark.parametrize("name, key, text", SOURCES, ids=[f"{n}.{k}" for n, k, _ in SOURCES])
def test_no_gpu_source_is_an_internal_id_or_points_at_another_field(name, key, text):
    assert not VAGUE.search(text), f"{name}: sources.{key}: {VAGUE.search(text).group(0)!r}"


# ---------------------------------------------------------------- efficiency blocks


@pytest.mark.parametrize("name", sorted(n for n, g in GPUS.items() if g.efficiency))
def test_efficiency_blocks_only_hold_what_differs_from_the_defaults(name):
    gpu = GPUS[name]
    values = check_mapping(gpu.efficiency, name)
    base = default_efficiency(gpu)
    repeats = [k for k, v in values.items() if getattr(base, k) == pytest.approx(v)]
    assert not repeats, f"{name}: efficiency repeats the vendor defaults for {repeats}"
    assert "efficiency" in gpu.sources


@pytest.mark.parametrize("name", ["a100-40gb-sxm", "a100-80gb-sxm"])
def test_the_a100_profiles_use_the_defaults(name):
    gpu = GPUS[name]
    assert not gpu.efficiency and "efficiency" not in gpu.sources
    resolved = resolve_efficiency(gpu)
    assert set(resolved.sources.values()) == {"default"}
    assert resolved.efficiency == default_efficiency(gpu)


def test_h100_keeps_only_its_prefill_efficiency():
    gpu = GPUS["h100-sxm"]
    assert gpu.efficiency == {"prefill_flops_efficiency": 0.65}
    resolved = resolve_efficiency(gpu)
    assert resolved.sources["prefill_flops_efficiency"] == "profile"
    assert resolved.efficiency.prefill_flops_efficiency == 0.65
    others = [p for p in PARAMETERS if p != "prefill_flops_efficiency"]
    assert {resolved.sources[p] for p in others} == {"default"}
    # the values are what the removed block held
    assert resolved.efficiency.weight_bandwidth_efficiency == 0.80
    assert resolved.efficiency.layer_overhead_s == pytest.approx(10e-6)
    assert resolved.efficiency.step_overhead_s == pytest.approx(0.3e-3)


# ---------------------------------------------------------------- 2025-26 GPUs (issue 12)

TERA = 1e12


def test_gb200_is_half_the_datasheet_sparse_rates():
    # NVIDIA Blackwell datasheet, GB200 NVL72 per GPU (sparse): FP4 20 PF, FP8 10, INT8 10 POPS,
    # FP16/BF16 5, TF32 2.5; "dense is one-half"; FP32 80 TF; 186 GB HBM3E at 8 TB/s
    gpu = GPUS["gb200"]
    sparse = {"fp4": 20_000, "fp8": 10_000, "int8": 10_000, "bf16": 5_000, "fp16": 5_000, "tf32": 2_500}
    for dtype, tflops in sparse.items():
        assert gpu.peak(dtype) == tflops / 2 * TERA, dtype
    assert gpu.peak("fp32") == 80 * TERA
    assert (gpu.memory_bytes, gpu.bandwidth_bytes_per_s) == (186e9, 8e12)
    # 72 GPUs of an NVL72: the datasheet's 576 TB/s and 720 PFLOPS dense NVFP4
    assert 72 * gpu.bandwidth_bytes_per_s == 576e12 and 72 * gpu.peak("fp4") == 720e15


def test_blackwell_rates_double_per_halving_of_width():
    for name in ("b200", "b300", "gb200", "gb300"):
        gpu = GPUS[name]
        assert gpu.peak("fp8") == 2 * gpu.peak("bf16") == 4 * gpu.peak("tf32"), name
        assert gpu.peak("fp4") >= 2 * gpu.peak("fp8"), name
    # Blackwell Ultra: sources disagree on the cut INT8 rate, so none is shipped
    assert "int8" not in GPUS["b300"].peak_flops_per_s and "int8" not in GPUS["gb300"].peak_flops_per_s
    assert GPUS["gb300"].peak("fp4") == 1.5 * GPUS["gb200"].peak("fp4")  # 15 vs 10 PFLOPS dense


def test_mi355x_rates_from_its_clock():
    # 2400 MHz x 512 FMA per Matrix Core per clock x 2 FLOP x 1024 Matrix Cores = 2516.6 TFLOPS bf16
    gpu = GPUS["mi355x"]
    bf16 = 2400e6 * 512 * 2 * 1024
    assert gpu.peak("bf16") == pytest.approx(bf16, rel=1e-4)
    assert gpu.peak("fp8") == pytest.approx(2 * bf16, rel=1e-4)
    assert gpu.peak("fp4") == pytest.approx(4 * bf16, rel=1e-4)
    assert gpu.memory_bytes == 288 * GIB and gpu.bandwidth_bytes_per_s == 8e12


def test_rtx_pro_6000_blackwell_from_its_datasheet():
    # "4000 AI TOPS" = effective FP4 with sparsity -> 2000 dense; fp8 and bf16 by Blackwell's 4:2:1
    gpu = GPUS["rtx-pro-6000-blackwell"]
    assert gpu.peak("fp4") == 4000 / 2 * TERA
    assert gpu.peak("fp8") == gpu.peak("fp4") / 2 and gpu.peak("bf16") == gpu.peak("fp4") / 4
    assert (gpu.memory_bytes, gpu.bandwidth_bytes_per_s, gpu.peak("fp32")) == (96e9, 1792e9, 125 * TERA)


@pytest.mark.parametrize("name", ["b300", "gb200", "gb300", "mi355x", "rtx-pro-6000-blackwell"])
def test_new_gpus_claim_no_unmeasured_torch_total(name):
    assert GPUS[name].memory_reported_bytes is None

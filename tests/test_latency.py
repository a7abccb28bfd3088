"""Latency: the step formula recomputed by hand, efficiency resolution (flag > calibration >
profile > default), the calibration file, tensor parallelism, errors, and monotonicity."""

from __future__ import annotations

import dataclasses
import textwrap

import pytest
import yaml
from conftest import TINY_MOE
from hypothesis import given, settings
from hypothesis import strategies as st

from capcalc.core.errors import CapcalcError
from capcalc.model.flops import decode_cost, prefill_cost
from capcalc.perf.efficiency import PARAMETERS, Efficiency, default_efficiency, resolve_efficiency
from capcalc.perf.latency import decode_contexts, predict_decode_step, predict_latency, predict_prefill
from capcalc.sources.calibration import CALIBRATION_FILE, load_calibration, save_calibration
from capcalc.sources.registry import Registry

EFF = Efficiency(
    weight_bandwidth_efficiency=0.5,
    kv_bandwidth_efficiency=0.25,
    prefill_flops_efficiency=0.6,
    prefill_tokens_half_efficiency=200,
    layer_overhead_s=20e-6,
    step_overhead_s=1e-3,
    allreduce_latency_s=5e-6,
)


@pytest.fixture(scope="module")
def llama(registry):
    return registry.model("llama-3-8b")


@pytest.fixture(scope="module")
def seed_gpu(registry):
    return registry.gpu("a100-seed")  # 2 TB/s, 312 TFLOP/s bf16


def test_decode_step_by_hand(llama, seed_gpu):
    cost = decode_cost(llama, 4, 1000)
    step = predict_decode_step(llama, seed_gpu, 4, 1000, efficiency=EFF)
    kv = 4 * 1000 * 131_072 + 4 * 131_072  # read 4 caches of 1000 tokens, write one token each
    assert cost.kv_bytes == kv
    # every weight but the gathered embedding table, (8,030,261,248 - 128,256 x 4096) x 2 B
    # = 15,009,849,344 B, plus the 4 gathered rows (4 x 4096 x 2 B): 15,009,882,112 B
    weights = (8_030_261_248 - 128_256 * 4096) * 2 + 4 * 4096 * 2
    memory = weights / (2e12 * 0.5) + kv / (2e12 * 0.25)
    assert step.memory_s == pytest.approx(memory)
    # 2 FLOP per multiplied weight (not the embedding, not the 266,240 norm weights) per
    # sequence, plus attention: 32 layers x 32 heads x (2 x 128 scores + 2 x 128 values)
    # x 1000 cached tokens per sequence; decode runs at the asymptote, 0.6 x 312 TFLOP/s
    flops = 2 * (8_030_261_248 - 128_256 * 4096 - 266_240) * 4 + 32 * 32 * 512 * 1000 * 4
    assert step.compute_s == pytest.approx(flops / (312e12 * 0.6))
    assert step.time_s == pytest.approx(memory + 32 * 20e-6 + 1e-3)
    assert step.bound == "memory"


def test_moe_layers_add_their_routing_cost(registry, llama, seed_gpu):
    """moe_layer_overhead_s is paid once per MoE layer per step: DeepSeek-V3 has 61 layers,
    the first 3 dense (first_k_dense_replace), so 58 pay it; a dense model pays nothing."""
    eff = dataclasses.replace(EFF, moe_layer_overhead_s=40e-6)
    dsv3 = registry.model("deepseek-v3")
    assert (dsv3.num_layers, dsv3.num_moe_layers) == (61, 58)
    with_moe = predict_decode_step(dsv3, seed_gpu, 1, 1000, efficiency=eff, weight_dtype="fp8")
    without = predict_decode_step(dsv3, seed_gpu, 1, 1000, efficiency=EFF, weight_dtype="fp8")
    assert with_moe.overhead_s == pytest.approx(61 * 20e-6 + 58 * 40e-6 + 1e-3)
    assert with_moe.time_s - without.time_s == pytest.approx(58 * 40e-6)
    # prefill pays it once per layer too (one step)
    p_with = predict_prefill(dsv3, seed_gpu, 1, 512, efficiency=eff, weight_dtype="fp8")
    p_without = predict_prefill(dsv3, seed_gpu, 1, 512, efficiency=EFF, weight_dtype="fp8")
    assert p_with.time_s - p_without.time_s == pytest.approx(58 * 40e-6)
    # a dense model is unaffected
    dense = predict_decode_step(llama, seed_gpu, 4, 1000, efficiency=eff)
    assert dense.time_s == predict_decode_step(llama, seed_gpu, 4, 1000, efficiency=EFF).time_s


def test_moe_layers_add_their_per_token_dispatch_cost(registry, seed_gpu):
    """moe_token_overhead_s is paid per token per MoE layer: a DeepSeek-V3 decode step of
    batch 8 pays 58 x 8 of it, the prefill of 2 x 512 tokens 58 x 1,024."""
    eff = dataclasses.replace(EFF, moe_token_overhead_s=200e-9)
    dsv3 = registry.model("deepseek-v3")
    kw = dict(weight_dtype="fp8")
    decode_with = predict_decode_step(dsv3, seed_gpu, 8, 1000, efficiency=eff, **kw)
    decode_without = predict_decode_step(dsv3, seed_gpu, 8, 1000, efficiency=EFF, **kw)
    assert decode_with.time_s - decode_without.time_s == pytest.approx(58 * 8 * 200e-9)
    prefill_with = predict_prefill(dsv3, seed_gpu, 2, 512, efficiency=eff, **kw)
    prefill_without = predict_prefill(dsv3, seed_gpu, 2, 512, efficiency=EFF, **kw)
    assert prefill_with.time_s - prefill_without.time_s == pytest.approx(58 * 1024 * 200e-9)


def test_prefill_activation_bytes_by_hand(registry):
    """Llama-3.2-1B (hidden 2048, 32 query / 8 KV heads of 64, gated MLP 8192, 2 norms, 16
    layers): every activation tensor between kernels is written once and read once.
    Per token per layer: residual stream (2 x 2 norms + 2) x 2048 x 2, q/k/v output
    (2048 + 512 + 512) x 2, RoPE on q and k (2048 + 512) x 2, attention output 2048 x 2,
    MLP gate+up 2 x 8192 x 2 and activation output 8192 x 2 = 89,088 element accesses,
    x 2 B x 16 layers x 512 tokens = 1,459,617,792 B. Decode counts none (cache-resident)."""
    m = registry.model("llama-3.2-1b")
    per_token_layer = 12 * 2048 + 2 * (2048 + 512 + 512) + 2 * (2048 + 512) + 2 * 2048 + 6 * 8192  # 89,088
    cost = prefill_cost(m, 1, 512)
    assert cost.component("activations").bytes == per_token_layer * 2 * 16 * 512  # = 1,459,617,792 B
    assert decode_cost(m, 8, 512).component("activations").bytes == 0
    # tp=2 halves the sharded widths; the residual stream (12 x 2048) is on every GPU
    sharded = per_token_layer - 12 * 2048
    assert (
        prefill_cost(m, 1, 512, tp=2).component("activations").bytes
        == (12 * 2048 + sharded / 2) * 2 * 16 * 512
    )


def test_moe_prefill_activation_bytes_by_hand():
    """tiny-moe-test (hidden 64, 4 query heads and 1 KV head of 16, gated MLP 128; layers 2-3
    MoE with 2 of 8 experts of 32 and one shared expert of 32), fp32 activations:
    stream 6 x 64 = 384, attention (64 + 16 + 16) + (64 + 16) + 64 = 240, dense MLP 3 x 128 =
    384; an MoE layer's MLP 2 x (3 x 32 + 2 x 64) routed + 3 x 32 shared = 544. Written and
    read: 2 x (1008 + 2 x 1168) = 6688 accesses per token, x 4 B x 2 x 10 tokens."""
    cost = prefill_cost(TINY_MOE, 2, 10, weight_dtype="fp32")
    assert cost.component("activations").bytes == 2 * (1008 + 2 * 1168) * 4 * 20  # = 535,040 B


def test_prefill_by_hand(llama, seed_gpu):
    step = predict_prefill(llama, seed_gpu, 2, 1500, efficiency=EFF)
    eff = 0.6 * 3000 / (3000 + 200)  # eff(n) = eff_max x n / (n + n_half), n = 2 x 1500 tokens
    assert step.flops_efficiency == pytest.approx(eff)
    # FLOPs by hand (43,058,466,914,304): 2 x the 6,979,321,856 layer matmul weights (all but
    # embedding, head and the 266,240 norm weights) x 3000 tokens; the LM head for the last
    # token of each prompt, 2 x 2 x 128,256 x 4096; causal attention, 2 prompts x 32 layers
    # x 32 heads x (2 x 128 + 2 x 128) x 1500 x 1501 / 2 attended pairs
    body = 8_030_261_248 - 2 * 128_256 * 4096 - 266_240
    flops = 2 * body * 3000 + 2 * 2 * 128_256 * 4096 + 2 * 32 * 32 * 512 * 1500 * 1501 / 2
    assert step.time_s == pytest.approx(flops / (312e12 * eff) + 32 * 20e-6 + 1e-3)
    assert step.bound == "compute"


def test_request_arithmetic(llama, seed_gpu):
    r = predict_latency(llama, seed_gpu, prompt_tokens=500, output_tokens=11, batch=3, efficiency=EFF)
    steps = [predict_decode_step(llama, seed_gpu, 3, c, efficiency=EFF).time_s for c in range(501, 511)]
    assert r.itl_s == pytest.approx(sum(steps) / 10)
    assert (r.itl_first_s, r.itl_last_s) == (steps[0], steps[-1])
    assert r.ttft_s == predict_prefill(llama, seed_gpu, 3, 500, efficiency=EFF).time_s
    assert r.e2e_s == pytest.approx(r.ttft_s + 10 * r.itl_s)
    assert r.output_tokens_per_s == pytest.approx(3 * 11 / r.e2e_s)
    assert r.output_tokens_per_s_per_user == pytest.approx(1 / r.itl_s)
    assert r.total_tokens_per_s == pytest.approx(3 * 511 / r.e2e_s)
    assert (r.prefill_bound, r.decode_bound) == ("compute", "memory")
    # the datasheet roofline is a lower bound
    assert r.ttft_roofline_s < r.ttft_s and r.itl_roofline_s < r.itl_s


def test_decode_split_is_the_step_at_the_middle_context(llama, seed_gpu):
    """decode_bound and the decode_* split describe the step at the middle context
    (P+1 + P+O-1) // 2, which decode_costs interpolates exactly with the others."""
    r = predict_latency(llama, seed_gpu, prompt_tokens=500, output_tokens=100, batch=3, efficiency=EFF)
    middle = predict_decode_step(llama, seed_gpu, 3, (501 + 599) // 2, efficiency=EFF)
    assert r.decode_weight_memory_s == pytest.approx(middle.weight_memory_s, rel=1e-12)
    assert r.decode_kv_memory_s == pytest.approx(middle.kv_memory_s, rel=1e-12)
    assert r.decode_compute_s == pytest.approx(middle.compute_s, rel=1e-12)
    assert r.decode_bound == middle.bound


def test_dequantised_weights_compute_in_the_serving_dtype(registry):
    """int4 and mxfp4 weights multiply in the serving dtype of dtypes.serving_dtype, the
    rule KV and fit use too: an fp32 checkpoint (gpt2) serves in fp16, not bf16."""
    from capcalc.perf.latency import resolve_compute_dtype

    h100 = registry.gpu("h100-sxm")
    assert resolve_compute_dtype("auto", "int4", registry.model("gpt2"), h100) == "fp16"
    assert resolve_compute_dtype("auto", "auto", registry.model("gpt2"), h100) == "fp16"
    assert resolve_compute_dtype("auto", "int4", registry.model("llama-3-8b"), h100) == "bf16"
    deepseek = registry.model("deepseek-v3")  # an fp8 checkpoint: activations in bf16
    assert resolve_compute_dtype("auto", "int4", deepseek, h100) == "bf16"


def test_nvfp4_weights_compute_in_fp4_where_the_gpu_has_it(registry):
    """ModelOpt NVFP4 runs W4A4 on Blackwell's fp4 tensor cores; a GPU without an fp4 rate
    dequantises to the serving dtype, as for int4."""
    from capcalc.perf.latency import resolve_compute_dtype

    qwen = registry.model("qwen3-32b-nvfp4")
    assert resolve_compute_dtype("auto", "auto", qwen, registry.gpu("b200")) == "fp4"
    assert resolve_compute_dtype("auto", "auto", qwen, registry.gpu("h100-sxm")) == "bf16"


def test_long_outputs_sample_evenly_spaced_contexts():
    assert decode_contexts(100, 5) == [101, 102, 103, 104]
    assert decode_contexts(100, 1) == [101]
    many = decode_contexts(0, 1001)
    assert len(many) == 33 and many[0] == 1 and many[-1] == 1000
    assert all(b > a for a, b in zip(many, many[1:], strict=False))


def test_tensor_parallel_adds_two_ring_allreduces_per_layer(registry):
    m, h100 = registry.model("llama-3-70b"), registry.gpu("h100-sxm")
    step = predict_decode_step(m, h100, 16, 1024, tp=4, efficiency=EFF)
    ring = 2 * 3 / 4 * 16 * 8192 * 2 / 450e9  # 2(tp-1)/tp x message / link bandwidth
    assert step.comm_s == pytest.approx(2 * 80 * (ring + 5e-6))
    # per GPU, by hand: a quarter of the matmul weights, (70,553,706,496 - 128,256 x 8192
    # embedding - 1,318,912 norm weights) / 4 x 2 B, the norms whole (1,318,912 x 2 B) and a
    # quarter of the 16 gathered embedding rows (16 x 8192 x 2 B / 4): 34,753,560,576 B; KV: 2 of
    # the 8 KV heads, 80 layers x 2 x 2 x 128 x 2 B = 81,920 B per token, 16 x 1024 read + 16 written
    weights = (70_553_706_496 - 128_256 * 8192 - 1_318_912) / 4 * 2 + 1_318_912 * 2 + 16 * 8192 * 2 / 4
    kv = 81_920 * (16 * 1024 + 16)
    assert step.memory_s == pytest.approx(weights / (3.35e12 * 0.5) + kv / (3.35e12 * 0.25))
    # at 0.6 of the link the ring transfer takes 1 / 0.6 as long; the per-call cost stays
    slow = predict_decode_step(
        m, h100, 16, 1024, tp=4, efficiency=dataclasses.replace(EFF, allreduce_bandwidth_efficiency=0.6)
    )
    assert slow.comm_s == pytest.approx(2 * 80 * (ring / 0.6 + 5e-6))
    assert slow.memory_s == step.memory_s


def test_tp_without_interconnect_is_one_line(cli, tmp_path):
    (tmp_path / "lonely.yaml").write_text(
        "name: lonely\nbandwidth: 1 TB/s\nmemory: 80 GB\npeak_flops: {bf16: 100 TFLOP/s}\n"
        "sources: {memory: test, bandwidth: test, peak_flops: test}\n"
    )
    r = cli(
        "latency",
        "llama-3-8b",
        "--gpu",
        "lonely",
        "--prompt",
        "10",
        "--output",
        "10",
        "--tp",
        "2",
        "--profiles",
        tmp_path,
    )
    assert r.code == 2 and r.out == ""
    assert r.err.strip() == (
        "capcalc: error: lonely has no interconnect_bandwidth in its profile: tp=2 needs it for the all-reduces"
    )


# ---------------------------------------------------------------- efficiency resolution


def test_defaults_come_from_the_vendor(registry):
    assert default_efficiency(registry.gpu("mi300x")).weight_bandwidth_efficiency == 0.65
    assert default_efficiency(registry.gpu("l4")).weight_bandwidth_efficiency == 0.80
    assert Efficiency.ideal().flops_efficiency(1) == 1.0


GPU_WITH_BLOCK = """\
name: test-gpu
vendor: nvidia
memory: 80 GB
bandwidth: 2 TB/s
peak_flops: {bf16: 300 TFLOP/s}
interconnect_bandwidth: 100 GB/s
efficiency:
  weight_bandwidth_efficiency: 0.9
  kv_bandwidth_efficiency: 0.7
  layer_overhead_s: 5 us
sources:
  memory: test
  bandwidth: test
  peak_flops: test
  interconnect: test
  efficiency: written for this test
"""


def test_resolution_order_flag_calibration_profile_default(cli, tmp_path):
    (tmp_path / "test-gpu.yaml").write_text(GPU_WITH_BLOCK)
    args = (
        "latency",
        "llama-3-8b",
        "--gpu",
        "test-gpu",
        "--prompt",
        "100",
        "--output",
        "10",
        "--json",
        "--profiles",
        tmp_path,
    )
    rec = cli(*args).json()
    assert rec["efficiency_source"] == "profile"
    assert rec["assume_weight_bandwidth_efficiency"] == 0.9
    assert rec["assume_layer_overhead_s"] == pytest.approx(5e-6)
    assert rec["assume_step_overhead_s"] == 0.3e-3  # not in the block: the vendor default
    save_calibration(
        "test-gpu",
        {
            "device_name": "Test GPU",
            "measured_at": "2026-11-26",
            "efficiency": {"kv_bandwidth_efficiency": 0.6, "weight_bandwidth_efficiency": 0.85},
        },
        tmp_path,
    )
    r = cli(*args)
    rec = r.json()
    assert rec["efficiency_source"] == "calibration"
    assert (rec["assume_weight_bandwidth_efficiency"], rec["assume_kv_bandwidth_efficiency"]) == (0.85, 0.6)
    assert rec["assume_layer_overhead_s"] == pytest.approx(
        5e-6
    )  # the profile still fills what calibration lacks
    assert "note: using the calibration of test-gpu measured 2026-11-26" in r.err
    r = cli(*args, "--weight-bandwidth-efficiency", "0.5", "--layer-overhead", "2us")
    rec = r.json()
    assert rec["efficiency_source"] == "flag"
    assert rec["assume_weight_bandwidth_efficiency"] == 0.5
    assert rec["assume_layer_overhead_s"] == pytest.approx(2e-6)
    assert rec["assume_kv_bandwidth_efficiency"] == 0.6
    rec = cli(*args, "--no-calibration").json()
    assert rec["efficiency_source"] == "profile"


def test_every_parameter_has_a_flag(cli):
    flags = {
        "weight_bandwidth_efficiency": ("--weight-bandwidth-efficiency", "0.5", 0.5),
        "kv_bandwidth_efficiency": ("--kv-bandwidth-efficiency", "0.4", 0.4),
        "prefill_flops_efficiency": ("--prefill-flops-efficiency", "0.3", 0.3),
        "prefill_tokens_half_efficiency": ("--prefill-tokens-half-efficiency", "50", 50),
        "layer_overhead_s": ("--layer-overhead", "7us", 7e-6),
        "step_overhead_s": ("--step-overhead", "2ms", 2e-3),
        "allreduce_latency_s": ("--allreduce-latency", "0.00002", 2e-5),
        "moe_layer_overhead_s": ("--moe-layer-overhead", "15 us", 15e-6),
        "moe_token_overhead_s": ("--moe-token-overhead", "200ns", 200e-9),
        "allreduce_latency_per_rank_s": ("--allreduce-latency-per-rank", "2us", 2e-6),
        "expert_flops_ratio": ("--expert-flops-ratio", "0.5", 0.5),
        "seq_layer_overhead_s": ("--seq-layer-overhead", "300ns", 300e-9),
        "allreduce_bandwidth_efficiency": ("--allreduce-bandwidth-efficiency", "0.7", 0.7),
    }
    assert set(flags) == set(PARAMETERS)
    args = ["latency", "llama-3-8b", "--gpu", "h100-sxm", "--prompt", "64", "--output", "4", "--json"]
    for flag, text, _ in flags.values():
        args += [flag, text]
    rec = cli(*args).json()
    for name, (_, _, value) in flags.items():
        assert rec[f"assume_{name}"] == pytest.approx(value), name


def test_latency_record_echoes_inputs_and_prints_assumptions(cli):
    r = cli(
        "latency", "llama-3-8b", "--gpu", "h100-sxm", "--prompt", "1024", "--output", "256", "--batch", "32"
    )
    assert r.code == 0, r.err
    assert "Assumptions (flag > calibration > GPU profile > built-in default" in r.out
    assert "weight_bandwidth_efficiency = 0.8" in r.out
    rec = cli(
        "latency",
        "llama-3-8b",
        "--gpu",
        "h100-sxm",
        "--prompt",
        "1024",
        "--output",
        "256",
        "--batch",
        "32",
        "--json",
    ).json()
    for key in (
        "model",
        "gpu",
        "batch",
        "prompt_tokens",
        "output_tokens",
        "tp",
        "weight_dtype",
        "kv_dtype",
        "compute_dtype",
        "ttft_s",
        "itl_s",
        "itl_first_s",
        "itl_last_s",
        "e2e_s",
        "output_tokens_per_s",
        "output_tokens_per_s_per_user",
        "total_tokens_per_s",
        "prefill_bound",
        "decode_bound",
        "efficiency_source",
        *(f"assume_{p}" for p in PARAMETERS),
    ):
        assert key in rec, key
    assert rec["schema_version"] == 1


def test_bad_efficiency_values_are_one_line(cli, tmp_path):
    base = ("latency", "llama-3-8b", "--gpu", "h100-sxm", "--prompt", "10", "--output", "10")
    r = cli(*base, "--weight-bandwidth-efficiency", "1.5")
    assert r.code == 2 and r.out == ""
    assert r.err.strip() == (
        "capcalc: error: --weight-bandwidth-efficiency must be a fraction in (0, 1], got 1.5"
    )
    r = cli(*base, "--layer-overhead", "5 parsecs")
    assert r.code == 2 and len(r.err.strip().splitlines()) == 1 and "unknown time unit" in r.err
    bad = GPU_WITH_BLOCK.replace("layer_overhead_s: 5 us", "layer_overhead: 5 us")
    (tmp_path / "test-gpu.yaml").write_text(bad)
    r = cli(
        "latency",
        "llama-3-8b",
        "--gpu",
        "test-gpu",
        "--prompt",
        "10",
        "--output",
        "10",
        "--profiles",
        tmp_path,
    )
    assert r.code == 2
    assert r.err.strip().endswith(
        "efficiency: unknown efficiency parameter 'layer_overhead' (did you mean 'layer_overhead_s'?)"
    )
    r = cli(*base[:-2], "--output", "0")
    assert r.err.strip() == "capcalc: error: --output must be at least 1, got 0"


def test_moe_layer_overhead_from_profile_calibration_and_flag(cli, tmp_path):
    """The routing cost resolves like every parameter (profile block < calibration < flag),
    takes units, and moves an MoE model's inter-token latency by moe_layers x the value:
    qwen3-30b-a3b has 48 MoE layers, so 20 us more per layer is 0.96 ms more per step."""
    gpu = GPU_WITH_BLOCK.replace(
        "  layer_overhead_s: 5 us\n", "  layer_overhead_s: 5 us\n  moe_layer_overhead_s: 30 us\n"
    )
    (tmp_path / "test-gpu.yaml").write_text(gpu)
    base = ("latency", "qwen3-30b-a3b", "--gpu", "test-gpu", "--prompt", "128", "--output", "8")
    base += ("--profiles", tmp_path, "--json")
    profile = cli(*base).json()
    assert profile["assume_moe_layer_overhead_s"] == pytest.approx(30e-6)
    save_calibration("test-gpu", {"efficiency": {"moe_layer_overhead_s": "50 us"}}, tmp_path)
    calibrated = cli(*base)
    assert calibrated.code == 0, calibrated.err
    assert calibrated.json()["assume_moe_layer_overhead_s"] == pytest.approx(50e-6)
    assert calibrated.json()["efficiency_source"] == "calibration"
    flagged = cli(*base, "--moe-layer-overhead", "0.07 ms").json()
    assert flagged["assume_moe_layer_overhead_s"] == pytest.approx(70e-6)
    assert flagged["itl_s"] - calibrated.json()["itl_s"] == pytest.approx(48 * 20e-6, rel=1e-9)
    bad = cli(*base, "--moe-layer-overhead", "-3us")
    assert bad.code == 2 and bad.out == ""
    assert bad.err.strip() == "capcalc: error: --moe-layer-overhead must be >= 0, got '-3us'"
    assert len(bad.err.strip().splitlines()) == 1


def test_not_fitting_is_a_note_not_an_error(cli):
    r = cli("latency", "llama-3-70b", "--gpu", "l4", "--prompt", "100", "--output", "10", "--json")
    assert r.code == 0
    assert "does not fit (see `capcalc fit`)" in r.err


def test_a_batch_beyond_vllms_kv_capacity_is_a_note(cli):
    """The note is fit's own verdict: the same max_concurrency `capcalc fit` reports."""
    capacity = cli("fit", "llama-3-8b", "--gpu", "rtx-4090", "--max-model-len", "5000", "--json").json()
    assert capacity["max_concurrency"] < 64
    r = cli(
        "latency",
        "llama-3-8b",
        "--gpu",
        "rtx-4090",
        "--batch",
        "64",
        "--prompt",
        "4000",
        "--output",
        "1000",
        "--json",
    )
    assert r.code == 0
    assert f"holds {capacity['max_concurrency']:.2f} requests of 5,000 tokens, fewer than --batch 64" in r.err
    fits = cli(
        "latency",
        "llama-3-8b",
        "--gpu",
        "rtx-4090",
        "--batch",
        "4",
        "--prompt",
        "4000",
        "--output",
        "1000",
        "--json",
    )
    assert "note:" not in fits.err


# ---------------------------------------------------------------- calibration file


def test_calibration_round_trip_and_merge(tmp_path):
    first = {
        "device_name": "NVIDIA H100 80GB HBM3",
        "measured_at": "2026-11-26",
        "command": "capcalc measure llama-3-8b --save",
        "torch_version": "2.5.1",
        "measured": {"bandwidth_bytes_per_s": 2.9e12, "peak_flops_per_s": {"bf16": 7.6e14}},
        "efficiency": {"weight_bandwidth_efficiency": 0.86, "layer_overhead_s": 8e-6},
    }
    path = save_calibration("h100-sxm", first, tmp_path)
    assert path == tmp_path / CALIBRATION_FILE
    save_calibration("a100-80gb-sxm", {"efficiency": {"weight_bandwidth_efficiency": 0.7}}, tmp_path)
    data = yaml.safe_load(path.read_text())
    assert data["schema_version"] == 1
    assert set(data["gpus"]) == {"h100-sxm", "a100-80gb-sxm"}  # merged, not replaced
    assert data["gpus"]["h100-sxm"]["measured"]["peak_flops_per_s"]["bf16"] == 7.6e14
    save_calibration("h100-sxm", {"efficiency": {"weight_bandwidth_efficiency": 0.9}}, tmp_path)
    loaded = load_calibration([tmp_path])
    assert loaded["gpus"]["h100-sxm"]["efficiency"] == {"weight_bandwidth_efficiency": 0.9}
    assert loaded["gpus"]["a100-80gb-sxm"]["path"] == str(path)


def test_calibration_defaults_to_the_user_profile_dir(isolated_user_config, registry):
    path = save_calibration("h100-sxm", {"efficiency": {"step_overhead_s": 1e-4}})
    assert path == isolated_user_config / CALIBRATION_FILE
    resolved = resolve_efficiency(registry.gpu("h100-sxm"), {}, load_calibration())
    assert resolved.calibrated and resolved.source == "calibration"
    assert resolved.efficiency.step_overhead_s == 1e-4
    assert resolved.sources["prefill_flops_efficiency"] == "profile"  # h100-sxm's block keeps only this
    assert resolved.sources["weight_bandwidth_efficiency"] == "default"
    assert resolved.sources["allreduce_latency_s"] == "default"


def test_calibration_write_is_atomic(tmp_path, monkeypatch):
    path = save_calibration("h100-sxm", {"efficiency": {"weight_bandwidth_efficiency": 0.8}}, tmp_path)
    before = path.read_text()

    def broken_replace(*args):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", broken_replace)
    with pytest.raises(CapcalcError, match="cannot write"):  # one line, not a traceback
        save_calibration("a100-80gb-sxm", {"efficiency": {"weight_bandwidth_efficiency": 0.7}}, tmp_path)
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == [CALIBRATION_FILE]  # no temporary file left


def test_bad_calibration_file_is_one_line(cli, isolated_user_config):
    isolated_user_config.mkdir(parents=True)
    (isolated_user_config / CALIBRATION_FILE).write_text(
        textwrap.dedent("""\
        schema_version: 1
        gpus:
          h100-sxm:
            efficiency: {weight_bandwidth_efficiency: 2}
        """)
    )
    r = cli("latency", "llama-3-8b", "--gpu", "h100-sxm", "--prompt", "10", "--output", "10")
    assert r.code == 2 and r.out == ""
    assert (
        "gpus.h100-sxm.efficiency: weight_bandwidth_efficiency must be a fraction in (0, 1], got 2" in r.err
    )
    with pytest.raises(CapcalcError, match="unknown key 'colour'"):
        save_calibration("h100-sxm", {"colour": "green"}, isolated_user_config)


# ---------------------------------------------------------------- monotonicity (hypothesis)

FACTOR = st.floats(min_value=1.0, max_value=8.0)
PROMPT = st.integers(min_value=1, max_value=20_000)
OUTPUT = st.integers(min_value=1, max_value=2_000)
BATCH = st.integers(min_value=1, max_value=512)
SETTINGS = settings(max_examples=25, deadline=None)


def _faster(gpu, bandwidth=1.0, flops=1.0):
    return dataclasses.replace(
        gpu,
        bandwidth_bytes_per_s=gpu.bandwidth_bytes_per_s * bandwidth,
        peak_flops_per_s={k: v * flops for k, v in gpu.peak_flops_per_s.items()},
    )


def _latencies(r):
    return (r.ttft_s, r.itl_s, r.itl_first_s, r.itl_last_s, r.e2e_s)


def _no_faster(a, b):
    """Every latency of b is at most that of a (tiny float slack)."""
    return all(y <= x * (1 + 1e-12) for x, y in zip(_latencies(a), _latencies(b), strict=False))


@pytest.fixture(scope="module")
def cases(registry):
    return [
        (registry.model("llama-3-8b"), registry.gpu("h100-sxm"), 1),
        (registry.model("mixtral-8x7b"), registry.gpu("a100-80gb-sxm"), 2),
        (registry.model("gemma-2-9b"), registry.gpu("l40s"), 1),
    ]


@SETTINGS
@given(st.integers(0, 2), FACTOR, FACTOR, PROMPT, OUTPUT, BATCH)
def test_latency_never_rises_with_bandwidth_or_flops(cases, i, bw, fl, prompt, output, batch):
    model, gpu, tp = cases[i]
    eff = default_efficiency(gpu)
    base = predict_latency(model, gpu, prompt, output, batch, tp=tp, efficiency=eff)
    assert _no_faster(
        base, predict_latency(model, _faster(gpu, bandwidth=bw), prompt, output, batch, tp=tp, efficiency=eff)
    )
    assert _no_faster(
        base, predict_latency(model, _faster(gpu, flops=fl), prompt, output, batch, tp=tp, efficiency=eff)
    )


@SETTINGS
@given(st.integers(0, 2), PROMPT, st.integers(1, 20_000), OUTPUT, BATCH)
def test_latency_never_falls_with_context(cases, i, prompt, more, output, batch):
    model, gpu, tp = cases[i]
    eff = default_efficiency(gpu)
    short = predict_latency(model, gpu, prompt, output, batch, tp=tp, efficiency=eff)
    long = predict_latency(model, gpu, prompt + more, output, batch, tp=tp, efficiency=eff)
    assert _no_faster(long, short)


@SETTINGS
@given(st.integers(0, 2), PROMPT, OUTPUT, BATCH, st.integers(1, 512))
def test_latency_never_falls_and_per_user_throughput_never_rises_with_batch(
    cases, i, prompt, output, batch, more
):
    model, gpu, tp = cases[i]
    eff = default_efficiency(gpu)
    small = predict_latency(model, gpu, prompt, output, batch, tp=tp, efficiency=eff)
    big = predict_latency(model, gpu, prompt, output, batch + more, tp=tp, efficiency=eff)
    assert _no_faster(big, small)
    assert big.output_tokens_per_s_per_user <= small.output_tokens_per_s_per_user * (1 + 1e-12)


@pytest.fixture(scope="module")
def h100(registry):
    return registry.gpu("h100-sxm")


@SETTINGS
@given(st.integers(1, 64), st.integers(1, 64), st.integers(1, 4), PROMPT, OUTPUT, BATCH)
def test_latency_never_falls_with_model_size(llama, h100, layers, more_layers, width, prompt, output, batch):
    """A model with more layers or a wider MLP (everything else equal) is never faster."""

    def sized(n_layers, mlp_scale):
        return dataclasses.replace(
            llama,
            num_layers=n_layers,
            layer_types=("full",) * n_layers,
            intermediate_size=llama.intermediate_size * mlp_scale,
        )

    eff = default_efficiency(h100)
    base = predict_latency(sized(layers, 1), h100, prompt, output, batch, efficiency=eff)
    deeper = predict_latency(sized(layers + more_layers, 1), h100, prompt, output, batch, efficiency=eff)
    wider = predict_latency(sized(layers, width), h100, prompt, output, batch, efficiency=eff)
    assert _no_faster(deeper, base)
    assert _no_faster(wider, base)


def test_calibration_in_capcalc_profiles_is_used_and_noted(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("CAPCALC_PROFILES", str(tmp_path))
    path = save_calibration(
        "h100-sxm", {"measured_at": "2026-11-20", "efficiency": {"step_overhead_s": 2e-3}}
    )
    assert path == tmp_path / CALIBRATION_FILE  # the first $CAPCALC_PROFILES directory
    r = cli("latency", "llama-3-8b", "--gpu", "h100-sxm", "--prompt", "100", "--output", "10", "--json")
    assert r.code == 0, r.err
    assert r.json()["assume_step_overhead_s"] == 2e-3
    assert r.json()["efficiency_source"] == "calibration"
    assert (
        r.err.strip() == f"capcalc: note: using the calibration of h100-sxm measured 2026-11-20 from {path}"
    )


def test_a_measured_only_calibration_entry_calibrates_nothing(cli, tmp_path, monkeypatch):
    """`measure --gpu --save` writes device figures only: no parameter comes from them,
    so there is no note and the record says where the parameters did come from."""
    (tmp_path / "test-gpu.yaml").write_text(GPU_WITH_BLOCK)
    monkeypatch.setenv("CAPCALC_PROFILES", str(tmp_path))
    save_calibration(
        "test-gpu",
        {"device_name": "Test GPU", "measured_at": "2026-11-20", "measured": {"bandwidth_bytes_per_s": 3e12}},
    )
    r = cli("latency", "llama-3-8b", "--gpu", "test-gpu", "--prompt", "100", "--output", "10", "--json")
    assert r.code == 0, r.err
    assert r.json()["efficiency_source"] == "profile"
    assert "calibration" not in r.err
    resolved = resolve_efficiency(Registry.load().gpu("test-gpu"), {}, load_calibration())
    assert not resolved.calibrated and "calibration" not in resolved.sources.values()
    assert resolved.calibration_path is None and resolved.calibration_date is None


def test_calibration_is_read_and_noted_once_per_process(cli, tmp_path, monkeypatch):
    """A sweep runs `latency` once per combination: the file is parsed once (again when it
    changes) and the note printed once per entry."""
    from capcalc import api

    path = save_calibration(
        "h100-sxm", {"measured_at": "2026-11-21", "efficiency": {"step_overhead_s": 1e-3}}, tmp_path
    )
    reads = []
    monkeypatch.setattr(api, "load_calibration", lambda dirs: reads.append(dirs) or load_calibration(dirs))
    args = ("latency", "llama-3-8b", "--gpu", "h100-sxm", "--prompt", 100, "--output", 10, "--json", "--profiles", tmp_path)  # fmt: skip
    first, second = cli(*args), cli(*args, "--batch", "2")
    assert first.code == second.code == 0, first.err + second.err
    note = f"capcalc: note: using the calibration of h100-sxm measured 2026-11-21 from {path}"
    assert first.err.strip() == note and second.err == ""
    assert second.json()["assume_step_overhead_s"] == 1e-3
    assert len(reads) == 1
    save_calibration(
        "h100-sxm", {"measured_at": "2026-11-22", "efficiency": {"step_overhead_s": 2.5e-3}}, tmp_path
    )
    third = cli(*args)
    assert len(reads) == 2 and third.json()["assume_step_overhead_s"] == 2.5e-3
    assert "measured 2026-11-22" in third.err  # a new entry is noted


def test_prompt_and_output_default_to_1024_in_256_out(cli):
    """DESIGN's sweep example names no prompt or output: the defaults are echoed in the record."""
    default = cli("latency", "llama-3-8b", "--gpu", "h100-sxm", "--json").json()
    explicit = cli(
        "latency", "llama-3-8b", "--gpu", "h100-sxm", "--prompt", "1024", "--output", "256", "--json"
    ).json()
    assert (default["prompt_tokens"], default["output_tokens"]) == (1024, 256)
    assert default == explicit


def test_routed_experts_prefill_at_the_efficiency_of_their_own_token_count(registry):
    """Each routed expert multiplies only the tokens routed to it: qwen3-30b-a3b prefilling
    2,048 tokens routes 2,048 x 8 = 16,384 (token, expert) pairs over the 128 experts
    (all touched), 128 tokens per expert, so its expert matmuls run at eff(128), not eff(2048)."""
    from capcalc.model.flops import prefill_cost
    from capcalc.perf.efficiency import Efficiency
    from capcalc.perf.latency import predict_step, tokens_per_expert

    model, gpu = registry.model("qwen3-30b-a3b"), registry.gpu("h100-sxm")
    cost = prefill_cost(model, 1, 2048)
    touched = cost.experts_touched_per_layer
    assert tokens_per_expert(model, cost.tokens, touched) == pytest.approx(2048 * 8 / 128, rel=1e-6)
    eff = Efficiency(prefill_flops_efficiency=0.6, prefill_tokens_half_efficiency=100)
    step = predict_step(model, gpu, cost, "bf16", eff)
    routed = cost.component("routed_experts").flops
    peak = gpu.peak("bf16")
    by_hand = (
        (cost.matmul_flops - routed) / (peak * 0.6 * 2048 / 2148)
        + routed / (peak * 0.6 * 128 / 228)
        + cost.attention_flops / (peak * 0.6 * 2048 / 2148)
    )
    assert step.compute_s == pytest.approx(by_hand, rel=1e-9)
    # a dense model is unaffected: every matmul at eff(n) of the step's tokens
    dense = prefill_cost(registry.model("llama-3-8b"), 1, 2048)
    dense_step = predict_step(registry.model("llama-3-8b"), gpu, dense, "bf16", eff)
    assert dense_step.compute_s == pytest.approx(
        (dense.matmul_flops + dense.attention_flops) / (peak * 0.6 * 2048 / 2148), rel=1e-9
    )


def test_low_precision_routed_experts_run_at_the_expert_flops_ratio(registry):
    """In fp8 the routed experts' products run at expert_flops_ratio x their own eff(n); the
    dense products and attention keep eff(n), and a 16-bit step ignores the ratio."""
    from capcalc.model.flops import prefill_cost
    from capcalc.perf.efficiency import Efficiency
    from capcalc.perf.latency import predict_step

    model, gpu = registry.model("qwen3-30b-a3b"), registry.gpu("h100-sxm")
    cost = prefill_cost(model, 1, 2048)
    eff = Efficiency(prefill_flops_efficiency=0.6, prefill_tokens_half_efficiency=100, expert_flops_ratio=0.5)
    routed = cost.component("routed_experts").flops
    dense_eff, expert_eff = 0.6 * 2048 / 2148, 0.6 * 128 / 228
    fp8 = predict_step(model, gpu, cost, "fp8", eff)
    by_hand = (
        (cost.matmul_flops - routed) / (gpu.peak("fp8") * dense_eff)
        + routed / (gpu.peak("fp8") * expert_eff * 0.5)
        + cost.attention_flops / (gpu.peak("bf16") * dense_eff)
    )
    assert fp8.compute_s == pytest.approx(by_hand, rel=1e-9)
    bf16 = predict_step(model, gpu, cost, "bf16", eff)
    assert bf16.compute_s == pytest.approx(
        predict_step(
            model,
            gpu,
            cost,
            "bf16",
            Efficiency(prefill_flops_efficiency=0.6, prefill_tokens_half_efficiency=100),
        ).compute_s,
        rel=1e-12,
    )

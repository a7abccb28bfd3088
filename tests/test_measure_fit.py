"""`capcalc measure`'s pure pieces (no torch): the memory pre-check and the least-squares
calibration of the latency model's efficiency parameters."""

from __future__ import annotations

import dataclasses
import math
import os

import pytest
import yaml
from conftest import TINY, TINY_MOE
from hypothesis import given, settings
from hypothesis import strategies as st

from capcalc.core.errors import CapcalcError
from capcalc.measure.calibrate import (
    FITTED,
    Point,
    calibrate,
    draft_profile,
    draft_profile_dict,
    predict,
    save_entry,
    shipped_efficiency,
)
from capcalc.measure.fit import least_squares, median_abs_pct, solve
from capcalc.measure.memory import CPU_WORKSPACE_BYTES, check_point, estimate_memory, loop_weight_bytes
from capcalc.model.kv import kv_bytes_per_sequence
from capcalc.perf.efficiency import Efficiency
from capcalc.sources import calibration

# --------------------------------------------------------------------------- linear algebra


def test_solve_a_system_worked_by_hand():
    # 2x + y = 5, x + 3y = 10  ->  x = 1, y = 3
    assert solve([[2.0, 1.0], [1.0, 3.0]], [5.0, 10.0]) == pytest.approx([1.0, 3.0])


def test_solve_needs_pivoting():
    # a zero on the diagonal: 0x + y = 2, x + y = 3 -> x = 1, y = 2
    assert solve([[0.0, 1.0], [1.0, 1.0]], [2.0, 3.0]) == pytest.approx([1.0, 2.0])


def test_least_squares_recovers_a_line():
    # t = a * n + b with a = 2e-3, b = 5e-2, sampled exactly: the fit finds both
    ns = [1, 2, 4, 8, 16, 32]
    measured = [2e-3 * n + 5e-2 for n in ns]

    def residuals(x):
        return [(x[0] * n + x[1] - t) / t for n, t in zip(ns, measured, strict=True)]

    fit = least_squares(residuals, [1e-2, 1e-2], [1e-9, 1e-9], [1.0, 1.0])
    assert fit.values == pytest.approx([2e-3, 5e-2], rel=1e-4)
    assert fit.cost_after < 1e-12 < fit.cost_before


def test_median_abs_pct():
    assert median_abs_pct([-10.0, 2.0, 4.0]) == 4.0
    assert median_abs_pct([]) is None


# --------------------------------------------------------------------------- calibration


def _synthetic(model, gpu, true: Efficiency):
    """Points whose 'measured' times are the latency model's own at ``true``."""
    points = [Point(model, "decode", b, c, 1.0) for b in (1, 8, 64, 256) for c in (512, 4096)]
    points += [Point(model, "prefill", 1, p, 1.0) for p in (128, 512, 2048, 8192)]
    return [Point(model, p.phase, p.batch, p.tokens, predict(gpu, p, "bf16", true).time_s) for p in points]


def test_calibration_lowers_the_error_on_its_own_points(registry):
    """Times generated at known efficiencies (decode 0.7/0.6 of the H100's 3.35 TB/s, prefill
    0.55 of its 989 TFLOP/s): from the shipped defaults the prediction is off by more than
    10%; after the fit every point is within 0.1%."""
    model, gpu = registry.model("llama-3-8b"), registry.gpu("h100-sxm")
    true = Efficiency(0.7, 0.6, 0.55, 300.0, 20e-6, 0.5e-3, 10e-6)
    points = _synthetic(model, gpu, true)
    cal = calibrate(gpu, points, "bf16", shipped_efficiency(gpu))
    assert cal.median(points, "decode", after=False) > 10
    assert cal.median(points, "prefill", after=False) > 10
    assert max(abs(e) for e in cal.errors_after_pct) < 0.1
    # the KV bandwidth and prefill FLOP efficiency are identifiable on their own
    assert cal.after.kv_bandwidth_efficiency == pytest.approx(0.6, rel=1e-3)
    assert cal.after.prefill_flops_efficiency == pytest.approx(0.55, rel=1e-2)
    # all-reduce latency is not fitted on one GPU
    assert cal.after.allreduce_latency_s == cal.before.allreduce_latency_s


def test_two_models_separate_the_fixed_costs_from_bandwidth(registry):
    """With one model the weight-streaming time and the per-layer and per-step costs are all
    constant per step, so only their sum is fitted. Two models of different sizes and depths
    (1B: 16 layers, 8B: 32 layers) pin each: the fit recovers the parameters themselves."""
    gpu = registry.gpu("h100-sxm")
    true = Efficiency(0.7, 0.6, 0.55, 300.0, 20e-6, 0.5e-3, 10e-6)
    points = _synthetic(registry.model("llama-3.2-1b"), gpu, true) + _synthetic(
        registry.model("llama-3-8b"), gpu, true
    )
    cal = calibrate(gpu, points, "bf16", shipped_efficiency(gpu))
    assert cal.after.weight_bandwidth_efficiency == pytest.approx(0.7, rel=1e-2)
    assert cal.after.layer_overhead_s == pytest.approx(20e-6, rel=5e-2)
    assert cal.after.step_overhead_s == pytest.approx(0.5e-3, rel=5e-2)
    assert cal.median(points, "decode", after=True, model="llama-3.2-1b") < 0.1


@settings(max_examples=3, deadline=None)
@given(
    weight=st.floats(0.3, 1.0),
    kv=st.floats(0.3, 1.0),
    overhead=st.floats(1e-6, 1e-4),
    noise=st.lists(st.floats(-0.2, 0.2), min_size=12, max_size=12),
)
def test_calibration_never_makes_the_fit_worse(registry, weight, kv, overhead, noise):
    """Whatever the truth and noise, the sum of squared relative errors after the fit is at
    most what it was before, and every fitted fraction stays in (0, 1]."""
    model, gpu = registry.model("llama-3.2-1b"), registry.gpu("h100-sxm")
    true = Efficiency(weight, kv, 0.6, 200.0, overhead, 2e-4, 1e-5)
    points = [
        Point(model, p.phase, p.batch, p.tokens, p.measured_s * (1 + n))
        for p, n in zip(_synthetic(model, gpu, true), noise, strict=True)
    ]
    cal = calibrate(gpu, points, "bf16", shipped_efficiency(gpu))
    assert sum(e * e for e in cal.errors_after_pct) <= sum(e * e for e in cal.errors_before_pct) + 1e-9
    # no MoE model among the points: its routing costs are unconstrained and keep their start
    assert cal.after.moe_layer_overhead_s == cal.before.moe_layer_overhead_s == 0.0
    assert cal.after.moe_token_overhead_s == cal.before.moe_token_overhead_s == 0.0
    for name in FITTED:
        value = getattr(cal.after, name)
        if name in ("moe_layer_overhead_s", "moe_token_overhead_s"):
            continue
        assert value > 0 and math.isfinite(value)
        if name.endswith("_efficiency") and "tokens" not in name:
            assert value <= 1.0


def test_calibrate_needs_points(registry):
    with pytest.raises(CapcalcError, match="no measured points"):
        calibrate(registry.gpu("h100-sxm"), [], "bf16", Efficiency())


# --------------------------------------------------------------------------- memory pre-check


def test_loop_weight_bytes_tiny_model_by_hand():
    # tiny-test: embedding 256x64 and an untied LM head 256x64; per layer q 64x64, k and v
    # 64x32 each, o 64x64, q/k/v biases 64+32+32, gated MLP 3x64x128, two norms of 64;
    # a final norm of 64. fp32: 4 bytes each.
    per_layer = 64 * 64 + 2 * 64 * 32 + 64 * 64 + (64 + 32 + 32) + 3 * 64 * 128 + 2 * 64
    params = 2 * 256 * 64 + 2 * per_layer + 64  # = 107,072
    assert loop_weight_bytes(TINY, "fp32") == params * 4


def test_estimate_memory_decode_by_hand():
    # batch 64, 1024 cache slots, fp32 (w = 4), hidden 64, q width 64, kv width 32, MLP 128
    e = estimate_memory(TINY, "fp32", batch=64, cache_tokens=1024, new_tokens=1, is_cuda=False)
    assert e.kv_bytes == 64 * 1024 * (2 * 2 * 2 * 16 * 4)  # 2 layers x K,V x 2 heads x 16 x 4 B
    n = 64
    activations = (
        n * 4 * (4 * 64 + 2 * (64 + 2 * 32) + 2 * 64 + 3 * 128)  # residual, norms, qkv, attention, MLP
        + n * 4 * (2 * 64 + 2 * (64 + 32))  # fp32 temporaries
        + n * 4 * 1024 * 4  # attention scores: heads x slots x 4 B
        + 64 * 256 * 4 * 2  # logits
    )
    assert e.activation_bytes == activations
    assert e.workspace_bytes == CPU_WORKSPACE_BYTES
    assert e.total_bytes == e.weights_bytes + e.kv_bytes + e.activation_bytes + e.workspace_bytes


def test_estimate_uses_the_window_for_sliding_layers():
    # tiny-moe-test: 3 layers, [sliding, full, sliding], window 16, one KV head of 16, fp32
    e = estimate_memory(TINY_MOE, "fp32", batch=2, cache_tokens=100, new_tokens=1, is_cuda=False)
    per_token_layer = 2 * 1 * 16 * 4
    assert e.kv_bytes == 2 * per_token_layer * (1 * 100 + 2 * 16)
    assert e.kv_bytes == 2 * kv_bytes_per_sequence(TINY_MOE, 100, "fp32")


def test_pre_check_refuses_with_the_numbers_and_a_suggestion():
    """60 MB free on the CPU: 80% usable = 48 MB. Weights 0.43 MB + workspace 33.6 MB leave
    14,017,280 B. At ctx 1024 one sequence needs 524,288 B of KV + 23,808 B of activations
    -> 25 sequences. At batch 64 each context token costs 64 x (512 + 16) = 33,792 B over a
    fixed 475,136 B of activations -> 400 tokens."""
    with pytest.raises(CapcalcError) as err:
        check_point(TINY, "fp32", "decode", 64, 1024, 1024, 60e6, False, "cpu")
    assert err.value.exit_code == 1
    assert err.value.message == (
        "tiny-test decode at batch 64, ctx 1024 needs 0.0691 GB (weights 0.000428 GB + KV cache "
        "0.0336 GB + activations 0.00152 GB + workspace 0.0336 GB) but cpu has 0.048 GB usable "
        "(0.06 GB free); try batch 25 at this ctx or ctx 400 at this batch"
    )
    # and the suggestions do fit
    check_point(TINY, "fp32", "decode", 25, 1024, 1024, 60e6, False, "cpu")
    check_point(TINY, "fp32", "decode", 64, 400, 400, 60e6, False, "cpu")


def test_pre_check_when_the_weights_alone_do_not_fit(registry):
    model = registry.model("llama-3-70b")
    with pytest.raises(CapcalcError, match=r"the bf16 weights alone do not fit: measure a smaller model"):
        check_point(model, "bf16", "decode", 1, 512, 544, 80e9, True, "cuda:0")


@settings(max_examples=30, deadline=None)
@given(batch=st.integers(1, 512), ctx=st.integers(1, 32768), more=st.integers(1, 64))
def test_estimate_grows_with_batch_and_context(batch, ctx, more):
    base = estimate_memory(TINY_MOE, "bf16", batch, ctx, 1, True).total_bytes
    assert estimate_memory(TINY_MOE, "bf16", batch + more, ctx, 1, True).total_bytes > base
    assert estimate_memory(TINY_MOE, "bf16", batch, ctx + more, 1, True).total_bytes >= base


# --------------------------------------------------------------------------- the MoE routing cost


def _moe_truth() -> Efficiency:
    """The truth of the tests above (no all-reduce), with 115 us of routing per MoE layer."""
    return dataclasses.replace(Efficiency(0.7, 0.6, 0.55, 300.0, 20e-6, 0.5e-3), moe_layer_overhead_s=115e-6)


#: a CPU-like device (20 GB/s, 200 GFLOP/s) on which the tiny models' bytes and FLOPs show
CPU_LIKE = draft_profile(draft_profile_dict("Test CPU", False, 16e9, 20e9, {"bf16": 200e9}, None, "test"))


def test_dense_and_moe_points_recover_the_moe_layer_overhead():
    """Points from tiny-test (2 dense layers), the same model 6 layers deep, and tiny-moe-test
    (3 layers, 2 of them MoE), timed on a CPU-like device at a known efficiency with 115 us
    of routing per MoE layer. From the shipped defaults (no routing cost) the MoE model's
    decode is off by about half; the joint fit drives every point's error to zero and
    recovers each fixed cost: the dense depths pin the per-layer cost a and the per-step
    cost s (2a + s, 6a + s), the MoE model then its routing cost m (3a + 2m + s)."""
    true = _moe_truth()
    deep = dataclasses.replace(TINY, name="tiny-test-6", num_layers=6)
    assert (TINY.num_moe_layers, deep.num_moe_layers, TINY_MOE.num_moe_layers) == (0, 0, 2)
    points = [p for m in (TINY, deep, TINY_MOE) for p in _synthetic(m, CPU_LIKE, true)]
    start = shipped_efficiency(CPU_LIKE)
    assert start.moe_layer_overhead_s == 0.0
    cal = calibrate(CPU_LIKE, points, "bf16", start)
    assert cal.median(points, "decode", after=False, model="tiny-moe-test") > 40
    assert max(abs(e) for e in cal.errors_after_pct) < 0.01
    assert cal.after.moe_layer_overhead_s == pytest.approx(115e-6, rel=1e-2)
    assert cal.after.layer_overhead_s == pytest.approx(20e-6, rel=1e-2)
    assert cal.after.step_overhead_s == pytest.approx(0.5e-3, rel=1e-2)
    assert cal.after.weight_bandwidth_efficiency == pytest.approx(0.7, rel=1e-2)


def test_one_dense_depth_fits_but_cannot_split_the_fixed_costs():
    """With only tiny-test and tiny-moe-test the fit still predicts every point, but the three
    fixed costs meet in two sums only -- 2a + s (dense) and 3a + 2m + s (MoE) -- so it pins
    those sums, not a, m and s: measure dense models of two depths beside an MoE one."""
    true = _moe_truth()
    points = [p for m in (TINY, TINY_MOE) for p in _synthetic(m, CPU_LIKE, true)]
    cal = calibrate(CPU_LIKE, points, "bf16", shipped_efficiency(CPU_LIKE))
    assert max(abs(e) for e in cal.errors_after_pct) < 0.01
    a, m, s = cal.after.layer_overhead_s, cal.after.moe_layer_overhead_s, cal.after.step_overhead_s
    assert 2 * a + s == pytest.approx(2 * 20e-6 + 0.5e-3, rel=1e-3)
    assert 3 * a + 2 * m + s == pytest.approx(3 * 20e-6 + 2 * 115e-6 + 0.5e-3, rel=1e-3)


def test_the_per_token_dispatch_cost_is_recovered_beside_the_per_layer_one(registry):
    """With a per-token dispatch cost in the truth as well (150 ns per token per MoE layer),
    the H100 mix of models, batches and prompt lengths tells it apart from the per-layer
    routing cost: decode steps of one batch and prefills of thousands of tokens pay them in
    very different proportions."""
    gpu = registry.gpu("h100-sxm")
    true = dataclasses.replace(_moe_truth(), moe_token_overhead_s=150e-9)
    models = [registry.model(n) for n in ("llama-3.2-1b", "llama-3-8b", "qwen3-30b-a3b")]
    points = [p for m in models for p in _synthetic(m, gpu, true)]
    cal = calibrate(gpu, points, "bf16", shipped_efficiency(gpu))
    assert cal.after.moe_token_overhead_s == pytest.approx(150e-9, rel=5e-2)
    assert cal.after.moe_layer_overhead_s == pytest.approx(115e-6, rel=5e-2)
    assert max(abs(e) for e in cal.errors_after_pct) < 0.5


def test_joint_fit_of_dense_and_moe_models_as_on_the_h100(registry):
    """The H100 validation's mix -- llama-3.2-1b, llama-3-8b and qwen3-30b-a3b (48 MoE
    layers) -- timed at a known efficiency with 115 us per MoE layer (what the plain-PyTorch
    routing cost there): one joint fit predicts every model's points within 0.1% and
    recovers the routing cost, where without the term it could not fit both kinds."""
    gpu = registry.gpu("h100-sxm")
    true = _moe_truth()
    models = [registry.model(n) for n in ("llama-3.2-1b", "llama-3-8b", "qwen3-30b-a3b")]
    points = [p for m in models for p in _synthetic(m, gpu, true)]
    cal = calibrate(gpu, points, "bf16", shipped_efficiency(gpu))
    assert cal.after.moe_layer_overhead_s == pytest.approx(115e-6, rel=3e-2)
    for m in models:
        assert cal.median(points, "decode", after=True, model=m.name) < 0.1
        assert cal.median(points, "prefill", after=True, model=m.name) < 0.1


# --------------------------------------------------------------------------- saving the calibration


def test_save_entry_reads_only_its_target_file_once(tmp_path, monkeypatch, isolated_user_config):
    """`measure --save` merges into the user directory's own entry, never copying in an
    entry that another profile directory holds for the same GPU."""
    other = tmp_path / "other"
    calibration.save_calibration(
        "h100-sxm", {"notes": "theirs", "efficiency": {"step_overhead_s": 1e-3}}, other
    )
    monkeypatch.setenv("CAPCALC_PROFILES", os.pathsep.join([str(isolated_user_config), str(other)]))
    mine = {"efficiency": {"layer_overhead_s": 2e-5}}
    calibration.save_calibration("h100-sxm", mine, isolated_user_config)
    calibration.save_calibration("a100-80gb-sxm", mine, isolated_user_config)
    reads = []
    real_read = calibration._read
    monkeypatch.setattr(calibration, "_read", lambda path: reads.append(path) or real_read(path))
    path = save_entry(
        "h100-sxm",
        "NVIDIA H100 80GB HBM3",
        "capcalc measure --gpu --save",
        "2.5.1",
        {"bandwidth_bytes_per_s": 3e12},
    )
    assert path == isolated_user_config / calibration.CALIBRATION_FILE
    assert reads == [path]  # the target alone, once
    saved = yaml.safe_load(path.read_text())["gpus"]
    assert saved["a100-80gb-sxm"] == mine  # other GPUs kept
    entry = saved["h100-sxm"]
    assert entry["efficiency"] == {"layer_overhead_s": 2e-5}  # its own kept, the other directory's not merged
    assert "notes" not in entry and "path" not in entry
    assert entry["measured"] == {"bandwidth_bytes_per_s": 3e12}
    assert entry["device_name"] == "NVIDIA H100 80GB HBM3" and entry["torch_version"] == "2.5.1"
    # fitted efficiencies are merged over what the entry held
    save_entry(
        "h100-sxm",
        "NVIDIA H100 80GB HBM3",
        "capcalc measure x --save",
        "2.5.1",
        efficiency=Efficiency(layer_overhead_s=3e-5),
    )
    entry = yaml.safe_load(path.read_text())["gpus"]["h100-sxm"]
    assert entry["efficiency"]["layer_overhead_s"] == 3e-5 and set(entry["efficiency"]) == set(FITTED)
    assert entry["measured"] == {"bandwidth_bytes_per_s": 3e12}

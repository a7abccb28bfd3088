"""Tensor-parallel measure on the CPU: 2 gloo ranks spawned by capcalc on the tiny models.

The sharded decoder computes what the unsharded one computes (prefill, every position's
logits, and decode steps through the cache), for a dense GQA model whose KV heads split
(2 over 2 ranks) and an MoE model whose single KV head is replicated and whose experts
split along their intermediate dimension; the all-reduce benchmark returns positive,
finite times; the fits recover known all-reduce costs from synthetic points; the CLI's
records carry the tp fields and `--save` reaches `latency --tp`. No timing is asserted
beyond its sign: CPU timings on a shared machine are noise."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import yaml
from conftest import TEST_PROFILES

from capcalc.core.errors import CapcalcError
from capcalc.measure import require_torch
from capcalc.measure.allreduce import (
    AllreduceTiming,
    LatencyFit,
    MessageSize,
    bus_bandwidth,
    fit_latency,
    fit_tp_form,
    message_sizes,
    sub_degrees,
)
from capcalc.measure.calibrate import Point, calibrate, predict, shipped_efficiency
from capcalc.measure.tp import kv_head_range, shard_profile, vocab_shard
from capcalc.perf.efficiency import Efficiency
from capcalc.perf.latency import predict_decode_step
from capcalc.sources.loader import load_profile_file

TINY = load_profile_file(TEST_PROFILES / "tiny-test.yaml")
TINY_MOE = load_profile_file(TEST_PROFILES / "tiny-moe-test.yaml")
P = ("--profiles", str(TEST_PROFILES))


def _torch_available() -> bool:
    try:
        require_torch()
        return True
    except CapcalcError:
        return False


needs_torch = pytest.mark.skipif(not _torch_available(), reason="torch is not installed")


# --------------------------------------------------------------------------- shapes (no torch)


def test_shard_profile_splits_heads_and_widths():
    dense = shard_profile(TINY, 2)
    assert (dense.num_attention_heads, dense.num_kv_heads, dense.intermediate_size) == (2, 1, 64)
    assert (dense.hidden_size, dense.vocab_size, dense.num_layers) == (64, 256, 2)
    moe = shard_profile(TINY_MOE, 2)
    # 1 KV head over 2 ranks: replicated, each rank holds it
    assert (moe.num_attention_heads, moe.num_kv_heads) == (2, 1)
    assert moe.moe.expert_intermediate_size == 16 and moe.moe.num_experts == 8
    assert shard_profile(TINY, 1) is TINY
    with pytest.raises(CapcalcError, match="tp=3 is not valid"):
        shard_profile(TINY, 3)


def test_kv_heads_split_or_replicate(registry):
    llama70 = registry.model("llama-3-70b")  # 64 heads, 8 KV heads
    assert [kv_head_range(llama70, r, 4) for r in range(4)] == [(0, 2), (2, 4), (4, 6), (6, 8)]
    # tp 16 > 8 KV heads: each head on two ranks, next to the query heads that read it
    assert [kv_head_range(llama70, r, 16)[0] for r in range(16)] == [r // 2 for r in range(16)]
    assert vocab_shard(128256, 8) == 16032 and vocab_shard(151936, 3) == 50646


def test_bus_bandwidth_is_nccl_tests_definition():
    # 1 GB in 10 ms on 8 ranks: algbw 100 GB/s, busbw = 100 x 2 x 7 / 8 = 175 GB/s
    assert bus_bandwidth(1e9, 10e-3, 8) == pytest.approx(175e9)
    assert bus_bandwidth(1e9, 10e-3, 2) == pytest.approx(100e9)


def test_message_sizes_of_decode_and_prefill():
    sizes = message_sizes(8192, 2, batches=(1, 256), prefill_tokens=(2048,))
    assert [(s.phase, s.tokens, s.bytes) for s in sizes] == [
        ("decode", 1, 16384), ("decode", 256, 4194304), ("prefill", 2048, 33554432),
    ]  # fmt: skip
    assert sub_degrees(8) == [2, 4, 8] and sub_degrees(6) == [2, 4, 6] and sub_degrees(2) == [2]


def test_latency_fit_recovers_intercept_and_bandwidth():
    """t = 12 us + S x 2 (n-1)/n / 300 GB/s on 4 ranks, exactly: the fit returns both."""
    a, busbw, n = 12e-6, 300e9, 4
    timings = [
        AllreduceTiming(n, MessageSize("decode", b, b * 16384), a + b * 16384 * 1.5 / busbw, False, 5)
        for b in (1, 4, 16, 64, 256)
    ]
    fit = fit_latency(timings)
    assert fit.latency_s == pytest.approx(a, rel=1e-9) and fit.method == "intercept"
    assert fit.busbw_bytes_per_s == pytest.approx(busbw, rel=1e-9)


def test_tp_form_linear_when_the_data_ask_and_flat_when_not():
    """gpt-fast on A100 implies ~3 us per call at tp 2 rising to ~17 us at tp 8 (issue 13):
    a line a + (tp - 1) b through 3, 7.67, 17 us at tp 2, 4, 8 is a = 0.667 us, b = 2.333 us."""
    b, a = 14e-6 / 6, 3e-6 - 14e-6 / 6
    fits = [LatencyFit(tp, a + (tp - 1) * b, None, 5, "intercept") for tp in (2, 4, 8)]
    form = fit_tp_form(fits)
    assert form.form == "linear"
    assert (form.allreduce_latency_s, form.allreduce_latency_per_rank_s) == pytest.approx((a, b), rel=1e-9)
    flat = fit_tp_form([LatencyFit(tp, t, None, 5, "intercept") for tp, t in ((2, 10e-6), (4, 11e-6))])
    assert (flat.form, flat.allreduce_latency_per_rank_s) == ("flat", 0.0)
    assert flat.allreduce_latency_s == pytest.approx(10.5e-6)


def test_latency_model_charges_the_per_rank_growth(registry):
    model, gpu = registry.model("llama-3-70b"), registry.gpu("h100-sxm")
    flat = Efficiency(allreduce_latency_s=1e-6)
    grows = Efficiency(allreduce_latency_s=1e-6, allreduce_latency_per_rank_s=2e-6)
    extra = predict_decode_step(model, gpu, 1, 1024, tp=8, efficiency=grows).comm_s
    extra -= predict_decode_step(model, gpu, 1, 1024, tp=8, efficiency=flat).comm_s
    assert extra == pytest.approx(2 * 80 * 7 * 2e-6)  # 2 calls x 80 layers x (8 - 1) x 2 us


def _tp_points(model, gpu, true, degrees):
    points = []
    for tp in degrees:
        for b in (1, 8, 64):
            for collectives in (True, False):
                p = Point(model, "decode", b, 2048, 1.0, tp=tp, collectives=collectives)
                points.append(
                    Point(model, "decode", b, 2048, predict(gpu, p, "bf16", true).time_s, tp, collectives)
                )
    return points


def test_fit_recovers_a_known_allreduce_latency(registry):
    """Synthetic tp=4 points of Llama-3-8B on an H100 at a 7 us all-reduce, each step also
    'timed' without its collectives: the fit recovers 7 us from the 10 us default."""
    model, gpu = registry.model("llama-3-8b"), registry.gpu("h100-sxm")
    start = shipped_efficiency(gpu)
    true = replace(start, allreduce_latency_s=7e-6)
    cal = calibrate(gpu, _tp_points(model, gpu, true, (4,)), "bf16", start)
    assert cal.after.allreduce_latency_s == pytest.approx(7e-6, rel=1e-3)
    assert cal.after.allreduce_latency_per_rank_s == start.allreduce_latency_per_rank_s  # one degree


def test_fit_recovers_the_per_rank_growth_from_two_degrees(registry):
    model, gpu = registry.model("llama-3-70b"), registry.gpu("h100-sxm")
    start = shipped_efficiency(gpu)
    true = replace(start, allreduce_latency_s=1e-6, allreduce_latency_per_rank_s=2e-6)
    cal = calibrate(gpu, _tp_points(model, gpu, true, (2, 8)), "bf16", start)
    assert cal.after.allreduce_latency_s == pytest.approx(1e-6, rel=1e-2)
    assert cal.after.allreduce_latency_per_rank_s == pytest.approx(2e-6, rel=1e-2)


# --------------------------------------------------------------------------- on 2 gloo ranks


#: biases on the row-parallel products (added by rank 0 alone), a plain GELU MLP, LayerNorm,
#: and Falcon's parallel attention + MLP block (one norm): the paths the two tiny models miss
TINY_BIASED = replace(
    TINY,
    name="tiny-biased",
    mlp="plain",
    mlp_bias=True,
    attention_output_bias=True,
    norm="layernorm",
    norms_per_layer=1,
)


def _compare_on_ranks(where, profiles):
    """On each rank: the full model (same seed) and this rank's shard of it; rank 0 returns,
    per model, the largest logit difference relative to the largest logit, over a prefill
    with every position's logits and 6 decode steps through the cache; then an all-reduce
    sweep of two sizes."""
    from capcalc.measure import allreduce
    from capcalc.measure.model import DecoderModel, KVCache
    from capcalc.measure.tp import TPDecoderModel

    torch = require_torch()
    worst = {}
    for profile in profiles:
        name = profile.name
        with torch.inference_mode():
            full = DecoderModel(profile, "fp32", "cpu", seed=3, max_positions=64)
            shard = TPDecoderModel(profile, "fp32", "cpu", where.rank, where.world, full=full)
            direct = TPDecoderModel(profile, "fp32", "cpu", where.rank, where.world, max_positions=64)
            torch.manual_seed(5)
            tokens = torch.randint(0, profile.vocab_size, (3, 26))
            out = []
            for model in (full, shard):
                every = model.prefill(tokens, KVCache(model, 3, 26), all_logits=True)  # [B, T, V]
                cache = KVCache(model, 3, 26)
                logits = [model.prefill(tokens[:, :20], cache)]
                pos = torch.tensor(20)
                for i in range(6):
                    logits.append(model.decode(tokens[:, 20 + i : 21 + i], cache, pos))
                    pos += 1
                out.append((every, torch.stack(logits)))
        (e0, d0), (e1, d1) = out
        worst[name] = (
            float((e0 - e1).abs().max() / e0.abs().max()),
            float((d0 - d1).abs().max() / d0.abs().max()),
            tuple(d1.shape),
            # weights drawn directly have the sliced weights' shapes
            all(
                a.shape == b.shape
                for la, lb in zip(shard.layers, direct.layers, strict=True)
                for a, b in _tensors(la, lb)
            )
            and shard.lm_head.shape == direct.lm_head.shape,
        )
    sizes = message_sizes(64, 4, batches=(1, 64), prefill_tokens=())
    timings = allreduce.sweep(where, sizes, "fp32", [where.world], repeats=2)
    return worst, timings


def _tensors(a: dict, b: dict):
    for key, value in a.items():
        if isinstance(value, dict):
            yield from _tensors(value, b[key])
        elif hasattr(value, "shape"):
            yield value, b[key]


@pytest.fixture(scope="module")
def on_two_ranks():
    from capcalc.measure.tp import launch

    return launch(_compare_on_ranks, [TINY, TINY_MOE, TINY_BIASED], 2, "cpu")


@needs_torch
def test_sharded_model_equals_unsharded(on_two_ranks):
    (worst, _), launcher = on_two_ranks
    assert launcher == "spawn"
    for name in ("tiny-test", "tiny-moe-test", "tiny-biased"):
        prefill_all, steps, shape, same_shapes = worst[name]
        assert prefill_all < 1e-5 and steps < 1e-5, name  # fp32: equal up to summation order
        assert shape == (7, 3, 256)  # 1 prefill + 6 steps, batch 3, the whole vocab gathered
        assert same_shapes, name


@needs_torch
def test_allreduce_benchmark_on_gloo(on_two_ranks):
    (_, timings), _ = on_two_ranks
    assert [(t.tp, t.size.bytes) for t in timings] == [(2, 256), (2, 16384)]
    for t in timings:
        assert 0 < t.time_s < 10 and math.isfinite(t.busbw_bytes_per_s) and t.busbw_bytes_per_s > 0
        assert t.cuda_graph is False


@needs_torch
def test_measure_model_tp_records(cli, monkeypatch, isolated_user_config):
    from capcalc.measure import allreduce, bench

    # the parent drafts the CPU's profile and sizes the messages: small buffers keep it quick
    monkeypatch.setattr(bench, "CPU_COPY_BYTES", 4 * 2**20)
    monkeypatch.setattr(bench, "CPU_MATMUL_N", 128)
    monkeypatch.setitem(allreduce.BANDWIDTH_BYTES, False, 2**20)
    r = cli(
        "measure", "tiny-moe-test", *P, "--device", "cpu", "--tp", "2", "--batch", "1,2", "--ctx", "24",
        "--prompt", "16", "--repeats", "2", "--save", "--json",
    )  # fmt: skip
    assert r.code == 0, r.err
    records = r.json()
    points, summary = records[:-1], records[-1]
    # --save stores the all-reduce latency alone: the single-GPU terms fitted on shards are not saved
    entry = yaml.safe_load((isolated_user_config / "calibration.yaml").read_text())["gpus"][summary["gpu"]]
    assert entry["efficiency"] == {
        "allreduce_latency_s": pytest.approx(summary["fitted_allreduce_latency_s"])
    }
    assert summary["calibration_file"] == str(isolated_user_config / "calibration.yaml")
    assert [(p["record"], p["batch"]) for p in points] == [("decode", 1), ("decode", 2), ("prefill", 1)]
    for p in points:
        assert (p["tp"], p["backend"], p["launcher"], p["gpu_profile"]) == (2, "gloo", "spawn", "drafted")
        assert p["measured_time_s"] > 0 and p["measured_time_no_comm_s"] > 0
        assert p["measured_comm_s"] == pytest.approx(p["measured_time_s"] - p["measured_time_no_comm_s"])
        assert p["predicted_comm_s"] > 0 and p["predicted_time_s"] > p["predicted_no_comm_time_s"]
        assert p["error_pct"] == pytest.approx(100 * (p["predicted_time_s"] / p["measured_time_s"] - 1))
        tokens = p["batch"] * (1 if p["record"] == "decode" else p["prompt_tokens"])
        assert p["allreduce_bytes_per_call"] == tokens * 64 * 4  # hidden 64, fp32
        assert p["allreduce_calls_per_step"] == 6  # 2 per layer, 3 layers
        assert p["allreduce_per_call_s"] > 0 and p["allreduce_latency_s"] > 0
        assert p["interconnect_source"] == "measured"
        # the one KV head is replicated: each rank caches what tp=1 caches (1 head of 16, fp32)
        if p["record"] == "decode":
            assert p["kv_cache_bytes"] == p["batch"] * 2 * 16 * 4 * (2 * 16 + 32)
    assert summary["record"] == "calibration" and summary["tp"] == 2
    assert summary["fitted_allreduce_latency_s"] > 0
    assert "measuring tiny-moe-test on 2 ranks" in r.err


@needs_torch
def test_measure_gpu_tp_saves_and_latency_uses_it(cli, isolated_user_config, monkeypatch):
    from capcalc.measure import allreduce

    monkeypatch.setattr(allreduce, "SWEEP_HIDDEN", 64)  # the sizes are made here, not on the ranks
    monkeypatch.setattr(allreduce, "PREFILL_TOKENS", (256,))
    r = cli("measure", "--gpu", "--device", "cpu", "--tp", "2", "--hardware", "h100-sxm", "--repeats", "2",
            "--save", "--json")  # fmt: skip
    assert r.code == 0, r.err
    records = r.json()
    sweep = [x for x in records if x["record"] == "allreduce"]
    assert [x["bytes_per_call"] for x in sweep] == [b * 64 * 4 for b in allreduce.DECODE_BATCHES] + [65536]
    for x in sweep:
        assert x["busbw_bytes_per_s"] == pytest.approx(x["algbw_bytes_per_s"])  # 2 (n-1)/n = 1 at n = 2
    form = records[-1]
    assert form["record"] == "allreduce_tp_form" and form["form"] == "flat" and form["tp_degrees"] == [2]
    entry = yaml.safe_load((isolated_user_config / "calibration.yaml").read_text())["gpus"]["h100-sxm"]
    assert entry["efficiency"]["allreduce_latency_s"] == pytest.approx(form["allreduce_latency_s"])
    assert entry["efficiency"]["allreduce_latency_per_rank_s"] == 0.0
    rec = cli("latency", "llama-3-8b", "--gpu", "h100-sxm", "--tp", "2", "--prompt", "64", "--output", "4",
              "--json").json()  # fmt: skip
    assert rec["assume_allreduce_latency_s"] == pytest.approx(form["allreduce_latency_s"])
    assert rec["efficiency_source"] == "calibration"


@needs_torch
@pytest.mark.parametrize(
    "args, message",
    [
        (("tiny-test", "--tp", "3"), "tp=3 is not valid for tiny-test (4 attention heads, 2 KV heads)"),
        (("tiny-test,tiny-moe-test", "--tp", "2"), "--tp measures one model at a time"),
        (("tiny-test", "--tp", "2", "--ctx", "none", "--prompt", "none"), "nothing to measure"),
        (("--gpu", "--tp", "2", "--save"), "give --hardware NAME to save the all-reduce terms"),
        (("--gpu", "--tp", "0"), "--tp must be at least 1"),  # the input layer refuses it first
    ],
)
def test_tp_usage_errors_before_any_rank_starts(cli, args, message):
    r = cli("measure", *args, *P, "--device", "cpu")
    assert r.code == 2 and r.out == "" and message in r.err and r.err.count("\n") == 1

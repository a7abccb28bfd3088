"""The serving replica under load (capcalc.serving.engine): scheduler, mixed step, fit."""

from __future__ import annotations

import statistics
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capcalc.core.errors import CapcalcError
from capcalc.perf.efficiency import default_efficiency
from capcalc.perf.latency import predict_latency, step_totals
from capcalc.serving.calibrate import ServedPoint, apply, fit_serving, predict_point, serving_defaults
from capcalc.serving.engine import (
    Replica,
    Simulation,
    Workload,
    engine_kv_bytes,
    kv_pool,
    predict_serving,
    shortest_prompt,
    step_model,
)
from capcalc.serving.engines import EngineConfig, engine_defaults, sglang_mem_fraction_static
from capcalc.serving.fit import FitRequest, fit
from capcalc.serving.stepmodel import Chunk, MixedStepModel


@pytest.fixture(scope="module")
def llama8b(registry):
    return registry.model("llama-3.1-8b")


@pytest.fixture(scope="module")
def h100(registry):
    return registry.gpu("h100-sxm")


def sim(model, gpu, config, kv_tokens=10**7, eff=None, prompt=512):
    eff = eff or default_efficiency(gpu)
    return Simulation(MixedStepModel(model, gpu, eff, ctx_floor=prompt), config, kv_tokens)


VLLM = EngineConfig("vllm", max_num_batched_tokens=8192, max_num_seqs=1024, frontend_s=0.004)


def test_littles_law_closed_loop(llama8b, h100):
    """C clients always inside a request: C = requests/s x mean e2e (frontend included),
    the rate's definition; and Little's law for the admitted requests alone, an
    independent check: the time-averaged running batch (integrated over the steps) equals
    requests/s x the mean time a request spends admitted (e2e - frontend - queue)."""
    for c in (3, 24):
        for spread in (0.0, 0.15):
            r = sim(llama8b, h100, VLLM).run(
                Workload(512, 128, concurrency=c, warmup_requests=c, num_requests=8 * c, output_spread=spread)
            )
            assert r.requests_per_s * r.e2e_s == pytest.approx(c, rel=1e-9)
            admitted = r.e2e_s - VLLM.frontend_s - r.queue_s
            assert r.running_batch == pytest.approx(r.requests_per_s * admitted, rel=0.08)


def test_littles_law_open_loop(llama8b, h100):
    """Poisson arrivals below saturation: completions/s match the arrivals, and the running
    batch is requests/s x the mean time admitted (Little's law for the admitted set)."""
    for rate in (2.0, 8.0):
        r = sim(llama8b, h100, VLLM).run(Workload(1024, 128, rate_per_s=rate, num_requests=400))
        assert r.requests_per_s == pytest.approx(rate, rel=0.1)
        admitted = r.e2e_s - VLLM.frontend_s - r.queue_s
        assert r.running_batch == pytest.approx(r.requests_per_s * admitted, rel=0.05)


def test_concurrency_one_is_batch_one_plus_frontend(llama8b, h100):
    eff = default_efficiency(h100)
    lat = predict_latency(llama8b, h100, 1024, 256, batch=1, efficiency=eff)
    # requests of exactly 256 tokens, as latency's static batch (the default spreads lengths)
    r = sim(llama8b, h100, VLLM, eff=eff, prompt=1024).run(
        Workload(1024, 256, concurrency=1, output_spread=0.0)
    )
    assert r.ttft_s == pytest.approx(lat.ttft_s + VLLM.frontend_s, rel=1e-6)
    # latency's ITL averages 33 evenly spaced contexts of a linear step time: the exact mean
    assert r.tpot_s == pytest.approx(lat.itl_s, rel=1e-4)
    assert r.e2e_s == pytest.approx(lat.e2e_s + VLLM.frontend_s, rel=1e-4)
    assert r.queue_s == 0 and r.binding_limit == "none"


def test_a_lone_client_finds_nothing_streaming(llama8b, h100):
    """One client: its next request is in the frontend only after its last one finished, so
    nothing streams then and the frontend takes exactly frontend_s whatever its cost per
    streamed token; with 8 clients the other decodes stream meanwhile and TTFT grows."""
    wl = Workload(1024, 128, concurrency=1, num_requests=10)
    plain = replace(VLLM, frontend_s=0.1)
    loaded = replace(plain, stream_token_host_s=1e-3)
    base = sim(llama8b, h100, plain, prompt=1024).run(wl)
    assert sim(llama8b, h100, loaded, prompt=1024).run(wl).ttft_s == base.ttft_s
    eight = replace(wl, concurrency=8, num_requests=40)
    assert sim(llama8b, h100, loaded, prompt=1024).run(eight).ttft_s > (
        sim(llama8b, h100, plain, prompt=1024).run(eight).ttft_s + 0.05
    )


@settings(max_examples=10, deadline=None)
@given(h=st.floats(1e-6, 2e-3), c=st.integers(1, 64), open_loop=st.booleans())
def test_frontend_streaming_cost_never_shortens_ttft_and_is_capped(registry, h, c, open_loop):
    """More frontend time per streamed token never means a shorter TTFT, closed or open loop,
    and the busy share is held below MAX_FRONTEND_BUSY: a request's frontend takes at most
    frontend_s / (1 - 0.9) = 10 x frontend_s however fast the tokens stream (give or take
    the step the later arrival lands in)."""
    from capcalc.serving.engine import MAX_FRONTEND_BUSY

    model, gpu = registry.model("llama-3.2-1b"), registry.gpu("h100-sxm")
    load = dict(rate_per_s=c * 2.0, num_requests=60) if open_loop else dict(concurrency=c)
    wl = Workload(512, 64, output_spread=0.0, **load)
    base = sim(model, gpu, VLLM).run(wl)
    loaded = sim(model, gpu, replace(VLLM, stream_token_host_s=h)).run(wl)
    assert loaded.ttft_s >= base.ttft_s - 1e-12
    cap = VLLM.frontend_s * MAX_FRONTEND_BUSY / (1 - MAX_FRONTEND_BUSY)
    assert loaded.ttft_s <= base.ttft_s + cap + 2 * loaded.itl_s
    with pytest.raises(CapcalcError, match="stream_token_host_s"):
        replace(VLLM, stream_token_host_s=-1e-6)


def test_ttft_grows_once_kv_capacity_binds(llama8b, h100):
    """Room for 64 requests of 640 tokens: at C=64 nobody waits, at C=256 most queue."""
    wl = dict(prompt_tokens=512, output_tokens=128, warmup_requests=0)
    for admission in ("on_demand", "reserve"):
        cfg = replace(VLLM, admission=admission)
        free = sim(llama8b, h100, cfg, kv_tokens=10**7).run(Workload(**wl, concurrency=256))
        tight = sim(llama8b, h100, cfg, kv_tokens=64 * 640).run(Workload(**wl, concurrency=256))
        assert free.binding_limit == "none"
        assert tight.binding_limit == "kv_capacity"
        assert tight.ttft_s > 2 * free.ttft_s
        assert tight.queue_s > free.queue_s
        assert tight.running_batch <= 64 * 640 / 512  # every admitted request holds its prompt


def test_max_num_seqs_binds(llama8b, h100):
    cfg = replace(VLLM, max_num_seqs=16)
    r = sim(llama8b, h100, cfg).run(Workload(512, 128, concurrency=64))
    assert r.binding_limit == "max_num_seqs"
    assert r.running_batch <= 16 + 1e-9


def test_mixed_step_by_hand(llama8b, h100):
    """Llama-3.1-8B, tp 1, bf16: two decodes at contexts 100 and 300 plus one chunk of 32
    prompt tokens after 64 computed ones: n = 34 tokens, 3 logit positions.
    KV per token: 2 (K, V) x 8 heads x 128 x 2 B x 32 layers = 131,072 B.
      kv_read  = (100 + 300) x 131,072 + (64 + 32) x 131,072 = 65,011,712 B
      kv_write = 34 x 131,072 = 4,456,448 B
    attention scores, 2 x 32 heads x 128 = 8,192 FLOP per attended pair:
      decodes 400 pairs x 32 layers; chunk 32 x 64 + 32 x 33 / 2 = 2,576 pairs x 32 layers
      = 8,192 x 32 x 2,976 = 780,140,544 FLOP
    q/k/v projection: 4096 x (4096 + 2 x 1024) = 25,165,824 weights x 32 layers, 2 FLOP per
    weight per token: 2 x 34 x 805,306,368 = 54,760,833,024 FLOP, its weights read once
    (805,306,368 x 2 B). LM head: 2 x 3 x 128,256 x 4,096 FLOP."""
    sm = MixedStepModel(llama8b, h100, default_efficiency(h100))
    cost = sm.cost(2, 400, (Chunk(prefix=64, tokens=32),))
    assert cost.tokens == 34
    assert cost.component("kv_read").bytes == pytest.approx(65_011_712)
    assert cost.component("kv_write").bytes == pytest.approx(4_456_448)
    assert cost.component("attention_scores").flops == pytest.approx(780_140_544)
    assert cost.component("qkv_proj").flops == pytest.approx(54_760_833_024)
    assert cost.component("qkv_proj").bytes == pytest.approx(805_306_368 * 2)
    assert cost.component("lm_head").flops == pytest.approx(2 * 3 * 128_256 * 4_096)
    assert cost.phase == "prefill"  # a step holding a chunk gets eff(n) of its 34 tokens


def test_open_loop_low_rate_is_concurrency_one(llama8b, h100):
    # equal lengths: the two runs measure different request numbers, whose lengths would differ
    one = sim(llama8b, h100, VLLM).run(Workload(512, 64, concurrency=1, output_spread=0.0))
    slow = sim(llama8b, h100, VLLM).run(
        Workload(512, 64, rate_per_s=1e-4, num_requests=50, output_spread=0.0)
    )
    assert slow.ttft_s == pytest.approx(one.ttft_s, rel=1e-6)
    assert slow.tpot_s == pytest.approx(one.tpot_s, rel=1e-6)
    assert slow.running_batch < 0.01


def test_open_loop_is_deterministic_and_queues_near_saturation(llama8b, h100):
    a = sim(llama8b, h100, VLLM).run(Workload(512, 64, rate_per_s=20, seed=3))
    b = sim(llama8b, h100, VLLM).run(Workload(512, 64, rate_per_s=20, seed=3))
    assert a == b
    fast = sim(llama8b, h100, VLLM).run(Workload(512, 64, rate_per_s=200, seed=3))
    assert fast.tpot_s > a.tpot_s and fast.running_batch > a.running_batch


def test_sglang_prefill_stalls_decodes(llama8b, h100):
    """Open loop (arrivals spread out): without mixed chunks every arriving prompt gets a step of its own, which the
    running decodes wait through: TPOT under load is higher than vLLM's mixed steps."""
    mixed = sim(llama8b, h100, VLLM).run(Workload(2048, 256, rate_per_s=8))
    split = sim(llama8b, h100, replace(VLLM, mixed_batches=False)).run(Workload(2048, 256, rate_per_s=8))
    assert split.tpot_s > mixed.tpot_s


def test_engine_defaults_follow_gpu_memory(registry):
    h100, b200, l4 = registry.gpu("h100-sxm"), registry.gpu("b200"), registry.gpu("l4")
    assert engine_defaults("vllm", h100).max_num_batched_tokens == 8192
    assert engine_defaults("vllm", l4).max_num_seqs == 256
    assert engine_defaults("sglang", h100).max_num_batched_tokens == 8192
    assert engine_defaults("sglang", b200).max_num_batched_tokens == 16384
    assert engine_defaults("sglang", l4).max_num_batched_tokens == 2048
    # SGLang's 35-60 GiB bucket (A100-40GB, L40S) chunks 4096
    assert engine_defaults("sglang", registry.gpu("a100-40gb-sxm")).max_num_batched_tokens == 4096
    assert engine_defaults("trtllm", b200).max_num_seqs == 2048


def test_sglang_mem_fraction_static_by_hand():
    """(gpu_mem - reserved) / gpu_mem in MiB, reserved = 512 + 1.5 chunk + 2 graph_bs + 1024 tp / 8:
    an 80 GiB card at tp1 (graph bs 256), chunk 8192: 512 + 12288 + 512 + 128 = 13440 of 81920;
    180 GiB at tp8 (graph bs 512), chunk 16384: 512 + 24576 + 1024 + 1024 = 27136 of 184320;
    24 GiB at tp1 (graph bs 24), chunk 2048: 512 + 3072 + 48 + 128 = 3760 of 24576, no 10 GiB
    floor below 60 GiB; 64 GiB at tp1 with a 2048 chunk: 512 + 3072 + 512 + 128 = 4224, raised to
    the 10240 floor."""
    gib = 2**30
    assert sglang_mem_fraction_static(80 * gib, 1, 8192) == round(68480 / 81920, 3) == 0.836
    assert sglang_mem_fraction_static(180 * gib, 8, 16384) == round(157184 / 184320, 3) == 0.853
    assert sglang_mem_fraction_static(24 * gib, 1, 2048) == round(20816 / 24576, 3) == 0.847
    assert sglang_mem_fraction_static(64 * gib, 1, 2048) == round((65536 - 10240) / 65536, 3)


def test_each_engine_sizes_its_kv_pool_by_its_own_rule(registry):
    """DeepSeek-V3 in fp8 on four B200s: 169 GB of weights per GPU. vLLM's 0.9 share of the card
    leaves no KV cache; TensorRT-LLM takes 0.9 of what is free once the model is loaded, SGLang
    mem_fraction_static x (memory - overheads) - weights, which is below zero at its default
    (0.854 on this card) and positive once raised, as its --mem-fraction-static flag does."""
    model, b200 = registry.model("deepseek-v3"), registry.gpu("b200")
    replica = Replica(model, b200, tp=4, weight_dtype="fp8")
    with pytest.raises(CapcalcError, match="vllm's memory rule"):
        kv_pool(replica, engine_defaults("vllm", b200), 2048)
    trt = engine_defaults("trtllm", b200)
    r = fit(
        model,
        FitRequest(
            memory_bytes=b200.memory_reported_bytes,
            memory_source="reported",
            gpu=b200.name,
            deployment=replica.deployment,
            max_model_len=2048,
            max_num_seqs=trt.max_num_seqs,
            max_num_batched_tokens=trt.max_num_batched_tokens,
        ),
        suggest=False,
    )
    assert not r.weights_fit
    free = r.memory_bytes - r.weights_bytes_per_gpu - r.activation_bytes_per_gpu - r.overhead_bytes_per_gpu
    assert engine_kv_bytes(r, trt, 4) == pytest.approx(0.9 * free, rel=1e-12)
    tokens = kv_pool(replica, trt, 2048).tokens
    assert tokens == int(0.9 * free / r.kv_bytes_per_token_per_gpu) // r.block_size * r.block_size > 100_000
    sglang = engine_defaults("sglang", b200)
    with pytest.raises(CapcalcError, match="sglang's memory rule"):
        kv_pool(replica, sglang, 2048)
    raised = replace(sglang, mem_fraction_static=0.95)
    budget = 0.95 * (r.memory_bytes - r.overhead_bytes_per_gpu) - r.weights_bytes_per_gpu
    assert kv_pool(replica, raised, 2048).tokens == int(budget / r.kv_bytes_per_token_per_gpu) // 16 * 16


def test_fit_recovers_known_parameters(registry):
    """Synthetic points made with frontend 20 ms and 0.8x bandwidth: the fit finds both."""
    model, gpu = registry.model("llama-3.2-1b"), registry.gpu("h100-sxm")
    replica = Replica(model, gpu)
    truth = {"frontend_s": 0.020, "bandwidth_scale": 0.8}
    points = []
    for c, p, o in ((1, 512, 64), (8, 1024, 64), (32, 512, 128), (4, 2048, 32)):
        wl = Workload(p, o, concurrency=c)
        probe = ServedPoint(replica, wl, "vllm", 1.0, 1.0)
        r = predict_point(probe, apply(serving_defaults(probe), truth))
        points.append(replace(probe, ttft_s=r.ttft_s, tpot_s=r.tpot_s))
    fit = fit_serving(points, parameters=("frontend_s", "bandwidth_scale"), rounds=3, evaluations=14)
    assert fit.values["frontend_s"] == pytest.approx(0.020, rel=0.05)
    assert fit.values["bandwidth_scale"] == pytest.approx(0.8, rel=0.03)
    assert fit.loss_after < fit.loss_before
    assert max(abs(e) for pair in fit.after for e in pair) < 0.02


def test_fit_recovers_a_known_frontend_streaming_cost(registry):
    """Points made with 120 us per streamed token (vLLM's default is 50): the fit finds it from
    TTFTs at 16-128 clients, where the frontend streams thousands of tokens a second."""
    model, gpu = registry.model("llama-3.2-1b"), registry.gpu("h100-sxm")
    replica = Replica(model, gpu)
    truth = {"stream_token_host_s": 120e-6}
    points = []
    for c, p, o in ((16, 512, 128), (64, 1024, 128), (128, 512, 64)):
        probe = ServedPoint(replica, Workload(p, o, concurrency=c), "vllm", 1.0, 1.0)
        r = predict_point(probe, apply(serving_defaults(probe), truth))
        points.append(replace(probe, ttft_s=r.ttft_s, tpot_s=r.tpot_s))
    fit = fit_serving(points, parameters=("stream_token_host_s",), rounds=2, evaluations=14)
    assert fit.values["stream_token_host_s"] == pytest.approx(120e-6, rel=0.05)
    assert max(abs(e) for pair in fit.after for e in pair) < 0.02


def test_fit_recovers_a_known_allreduce_bandwidth_share(registry):
    """Points made on four GPUs with the all-reduces at 0.4 of the link (the engines' default
    0.65): prompts of 1,024-4,096 tokens put 8-34 MB through every call (4,096 x 2 B per token),
    and the fit finds the share."""
    model, gpu = registry.model("llama-3-8b"), registry.gpu("h100-sxm")
    replica = Replica(model, gpu, tp=4)
    truth = {"allreduce_bandwidth_efficiency": 0.4}
    points = []
    for c, p, o in ((1, 4096, 16), (4, 2048, 32), (8, 1024, 16)):
        probe = ServedPoint(replica, Workload(p, o, concurrency=c), "vllm", 1.0, 1.0)
        r = predict_point(probe, apply(serving_defaults(probe), truth))
        points.append(replace(probe, ttft_s=r.ttft_s, tpot_s=r.tpot_s))
    assert serving_defaults(points[0]).efficiency.allreduce_bandwidth_efficiency == 0.65
    fit = fit_serving(points, parameters=("allreduce_bandwidth_efficiency",), rounds=2, evaluations=14)
    assert fit.values["allreduce_bandwidth_efficiency"] == pytest.approx(0.4, rel=0.03)
    assert fit.loss_after < fit.loss_before


def test_predict_serving_sizes_kv_from_fit(llama8b, h100):
    replica = Replica(llama8b, h100)
    cfg = engine_defaults("vllm", h100)
    r = predict_serving(replica, Workload(1024, 128, concurrency=4), cfg, default_efficiency(h100))
    assert r.kv_capacity_tokens > 100_000  # ~55 GiB of a 80 GiB card at 128 KiB per token
    assert r.output_tokens_per_s_per_gpu == pytest.approx(r.output_tokens_per_s)


@settings(max_examples=12, deadline=None)
@given(scale=st.floats(1.05, 3.0), c=st.integers(1, 48))
def test_more_bandwidth_never_slower(registry, scale, c):
    model, gpu = registry.model("llama-3.2-1b"), registry.gpu("h100-sxm")
    wl = Workload(512, 64, concurrency=c)
    base = sim(model, gpu, VLLM).run(wl)
    faster_gpu = replace(gpu, bandwidth_bytes_per_s=gpu.bandwidth_bytes_per_s * scale)
    fast = sim(model, faster_gpu, VLLM, eff=default_efficiency(gpu)).run(wl)
    assert fast.e2e_s <= base.e2e_s * (1 + 1e-9)
    assert fast.requests_per_s >= base.requests_per_s * (1 - 1e-9)


@settings(max_examples=12, deadline=None)
@given(c=st.integers(1, 63))
def test_more_concurrency_never_fewer_requests_per_s(registry, c):
    """Below saturation (KV and max_num_seqs ample) one more client never lowers throughput."""
    model, gpu = registry.model("llama-3.2-1b"), registry.gpu("h100-sxm")
    s = sim(model, gpu, VLLM)
    lo = s.run(Workload(512, 64, concurrency=c, warmup_requests=c, num_requests=6 * c))
    hi = s.run(Workload(512, 64, concurrency=c + 1, warmup_requests=c + 1, num_requests=6 * (c + 1)))
    assert hi.requests_per_s >= lo.requests_per_s * 0.97


def test_step_model_reused_by_predict_serving(llama8b, h100):
    replica = Replica(llama8b, h100)
    eff = default_efficiency(h100)
    sm = step_model(replica, eff, 1024)
    cfg = engine_defaults("trtllm", h100)
    a = predict_serving(replica, Workload(1024, 64, concurrency=2), cfg, eff, steps=sm)
    b = predict_serving(replica, Workload(1024, 64, concurrency=2), cfg, eff)
    assert a == b


def test_kernel_roofline_agrees_on_pure_steps_and_adds_on_mixed(llama8b, h100):
    """Per kernel class, max(matmul, weights) + max(attention, KV), equals the single roofline
    max(compute, memory) when one bound holds for both classes (a lone decode: memory; a
    2,048-token prefill: compute), and exceeds it in a step of 64 decodes at 4k context plus a
    2,048-token chunk: there the chunk's products are compute-bound while the decodes' attention
    reads 64 x 4,096 x 128 KiB = 34 GB of KV, which the single max hides behind the products."""
    eff = default_efficiency(h100)
    one = MixedStepModel(llama8b, h100, eff)
    split = MixedStepModel(llama8b, h100, eff, kernel_roofline=True)
    for args in ((1, 1000.0), (0, 0.0, (Chunk(0, 2048),))):
        assert split.time_s(*args) == pytest.approx(one.time_s(*args), rel=1e-12)
    mixed = (64, 64 * 4096.0, (Chunk(0, 2048),))
    p = split.predict(*mixed)
    matmul_s = p.compute_s - p.attention_compute_s
    assert matmul_s > p.weight_memory_s and p.kv_memory_s > p.attention_compute_s
    fixed = p.overhead_s + p.comm_s
    assert p.time_s == pytest.approx(matmul_s + p.kv_memory_s + fixed, rel=1e-12)
    assert p.time_s > one.time_s(*mixed) * 1.2


@settings(max_examples=20, deadline=None)
@given(d=st.integers(1, 300), ctx=st.integers(512, 20000), split=st.booleans())
def test_decode_line_is_the_step_model(registry, d, ctx, split):
    """The affine decode lines the simulation sums in closed form give the step model's own time."""
    model, gpu = registry.model("qwen3-32b"), registry.gpu("h100-sxm")
    sm = MixedStepModel(model, gpu, default_efficiency(gpu), tp=2, ctx_floor=512, kernel_roofline=split)
    assert sm.decode_time_s(d, d * ctx) == pytest.approx(sm.time_s(d, d * ctx), rel=1e-9)


def test_output_spread_keeps_the_mean_length(llama8b, h100):
    """Lengths spread evenly over O x (1 +- s): the measured requests' mean output is O within
    a token or two, no request leaves the range, and the waves of equal lengths break up."""
    wl = Workload(1024, 200, concurrency=32, output_spread=0.3)
    r = sim(llama8b, h100, VLLM, prompt=1024).run(wl)
    assert r.output_tokens_per_s == pytest.approx(r.requests_per_s * 200, rel=0.01)
    flat = sim(llama8b, h100, VLLM, prompt=1024).run(replace(wl, output_spread=0.0))
    # equal lengths: every later prompt lands in a burst of 32; spread: fewer wait together
    assert r.ttft_s < flat.ttft_s
    with pytest.raises(CapcalcError):
        Workload(1024, 200, concurrency=4, output_spread=1.5)


def test_prompt_spread_keeps_the_mean_length_and_is_not_tied_to_the_output():
    """Prompts spread evenly over P x (1 +- s) in 8 levels, over a sequence of their own: the
    mean of 800 requests is P within a token, every prompt inside the range, the shortest
    is the lowest level's, and long prompts are not paired with long outputs."""
    from capcalc.serving.engine import _output_len, _prompt_len

    wl = Workload(1000, 200, concurrency=8, prompt_spread=0.2, output_spread=0.2)
    prompts = [_prompt_len(wl, i) for i in range(800)]
    outputs = [_output_len(wl, i, 0.15) for i in range(800)]
    assert sum(prompts) / 800 == pytest.approx(1000, abs=1)
    assert min(prompts) == shortest_prompt(wl) == round(1000 * (1 - 0.2 * 7 / 8)) == 825
    assert max(prompts) == round(1000 * (1 + 0.2 * 7 / 8)) == 1175
    assert len(set(prompts)) == 8
    assert abs(statistics.correlation(prompts, outputs)) < 0.2
    exact = Workload(1000, 200, concurrency=8)
    assert {_prompt_len(exact, i) for i in range(50)} == {1000} and shortest_prompt(exact) == 1000
    with pytest.raises(CapcalcError, match="prompt_spread"):
        Workload(1000, 200, concurrency=8, prompt_spread=1.0)


def test_the_pool_is_sized_for_the_longest_request(llama8b, h100):
    """max_model_len is the longest prompt plus the longest output the workload asks for: 922
    tokens spread 0.111 both ways reach round(922 x (1 + 0.111 x 7/8)) = 1012 each, 2,024 in all
    (not the means' 1,844); an unset output spread is the engine's (vLLM 0.15: 256 -> 290)."""
    from capcalc.serving.engine import longest_request

    cfg = engine_defaults("vllm", h100)
    spread = Workload(922, 922, concurrency=8, prompt_spread=205 / 1843, output_spread=205 / 1843)
    assert longest_request(spread, cfg) == 2 * round(922 * (1 + 205 / 1843 * 7 / 8)) == 2024
    assert longest_request(Workload(1024, 256, concurrency=8), cfg) == 1024 + round(256 * (1 + 0.15 * 7 / 8))
    assert longest_request(Workload(1024, 256, concurrency=8, output_spread=0), cfg) == 1280
    replica = Replica(llama8b, h100)
    got = predict_serving(replica, spread, cfg, default_efficiency(h100))
    assert got.kv_capacity_tokens == kv_pool(replica, cfg, 2024).tokens


def test_prompt_spread_prices_each_prompt_at_its_own_length(llama8b, h100):
    """At concurrency 1 (no queue) each request's TTFT is its own prompt's: the mean TTFT of a
    spread workload is the mean, over its requests' prompt lengths, of exact-length TTFTs."""
    from capcalc.serving.engine import _prompt_len

    def ttft(wl):
        return predict_serving(Replica(llama8b, h100), wl, VLLM, default_efficiency(h100)).ttft_s

    spread = Workload(4096, 64, concurrency=1, num_requests=16, prompt_spread=0.5, output_spread=0)
    lengths = [_prompt_len(spread, i) for i in range(16)]
    by_length = {
        p: ttft(Workload(p, 64, concurrency=1, num_requests=2, output_spread=0)) for p in set(lengths)
    }
    assert ttft(spread) == pytest.approx(sum(by_length[p] for p in lengths) / 16, rel=1e-9)
    assert len(by_length) > 4


#: a tiny Qwen3.5-style hybrid (``qwen3_5_moe_text`` fields): layers 0-2 Gated DeltaNet,
#: layer 3 full attention (full_attention_interval 4), recurrent state in fp32
TINY_HYBRID = {
    "model_type": "qwen3_5_moe_text",
    "hidden_size": 256,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "intermediate_size": 128,
    "vocab_size": 1024,
    "max_position_embeddings": 32768,
    "tie_word_embeddings": False,
    "full_attention_interval": 4,
    "attn_output_gate": True,
    "linear_num_key_heads": 2,
    "linear_num_value_heads": 4,
    "linear_key_head_dim": 32,
    "linear_value_head_dim": 32,
    "linear_conv_kernel_dim": 4,
    "num_experts": 4,
    "num_experts_per_tok": 2,
    "moe_intermediate_size": 128,
    "shared_expert_intermediate_size": 128,
    "mamba_ssm_dtype": "float32",
    "dtype": "bfloat16",
}


@pytest.fixture(scope="module")
def tiny_hybrid():
    from capcalc.sources.hfconfig import profile_mapping
    from capcalc.sources.loader import model_from_dict

    data, _ = profile_mapping(TINY_HYBRID, name="tiny-hybrid", source="test", where="tiny-hybrid")
    return model_from_dict(data, "tiny-hybrid")


def test_mixed_step_of_a_hybrid_by_hand(tiny_hybrid, h100):
    """Decodes at contexts 1,000 and 8,000 plus a chunk of 100 prompt tokens (prefix 0), bf16:
    n = 102 tokens, 3 sequences in the step.
    Full layer (1): KV 2 x 2 heads x 64 x 2 B = 512 B per token.
    Gated DeltaNet layers (3), per sequence: conv state (4 - 1) x (2 x 2 x 32 + 4 x 32) = 768
    elements x 2 B = 1,536 B, recurrent state 4 x 32 x 32 = 4,096 x 4 B (fp32) = 16,384 B:
    17,920 B a layer, 53,760 B for three.
      kv_read  = (1,000 + 8,000 + 100) x 512 + 3 x 53,760 = 4,820,480 B (each state read)
      recurrent_update bytes = 3 x 53,760 = 161,280 B (each state written back)
      recurrent_update FLOPs = 102 tokens x 3 layers x (7 x 4,096 + 2 x 256 x 4) = 9,400,320
    A decode's share in the recurrent layers does not grow with its context: moving one from
    1k to 8k adds 7,000 x 512 B of full-layer KV and nothing else."""
    sm = MixedStepModel(tiny_hybrid, h100, default_efficiency(h100), ctx_floor=1000)
    cost = sm.cost(2, 9000, (Chunk(prefix=0, tokens=100),))
    assert cost.component("kv_read").bytes == pytest.approx(4_820_480)
    assert cost.component("recurrent_update").bytes == pytest.approx(161_280)
    assert cost.component("recurrent_update").flops == pytest.approx(9_400_320)
    assert cost.component("kv_write").bytes == pytest.approx(102 * 512)
    at_1k, at_8k = sm.cost(1, 1000), sm.cost(1, 8000)
    assert at_8k.component("recurrent_update") == at_1k.component("recurrent_update")
    assert at_8k.component("kv_read").bytes - at_1k.component("kv_read").bytes == pytest.approx(7000 * 512)
    # and a pure decode step is the step model's own decode step of one sequence, component by component
    from capcalc.model.flops import decode_cost

    ref = {c.name: c for c in decode_cost(tiny_hybrid, 1, 8000).components}
    for c in at_8k.components:
        assert c.flops == pytest.approx(ref[c.name].flops, rel=1e-9, abs=1e-6), c.name
        assert c.bytes == pytest.approx(ref[c.name].bytes, rel=1e-9, abs=1e-6), c.name


@pytest.mark.parametrize(
    ("model", "gpu", "tp", "tokens"),
    [("gemma-3-27b", "h100-sxm", 1, 2048), ("qwen3.5-397b-a17b", "b200", 8, 8192)],
)
def test_admission_holds_as_many_requests_as_fit_says(registry, model, gpu, tp, tokens):
    """Where KV binds, the simulation runs fit's max_concurrency requests at once: Gemma-3's
    sliding layers hold window - 1 + max_num_batched_tokens tokens (+1 block), not the whole
    16k request; Qwen3.5's Gated DeltaNet layers one state page each. Admission reserves
    each request's whole length (prompt + output - 1 stored tokens), so the oracle is
    floor(num_blocks / blocks_per_request) from capcalc.serving.fit."""
    from capcalc.serving.engine import kv_pool
    from capcalc.serving.fit import FitRequest, fit, memory_of

    m, g = registry.model(model), registry.gpu(gpu)
    replica = Replica(m, g, tp=tp)
    memory, source = memory_of(g)

    def fit_at(length):
        req = FitRequest(
            memory_bytes=memory,
            memory_source=source,
            gpu=g.name,
            deployment=replica.deployment,
            max_model_len=length,
            max_num_seqs=256,
            max_num_batched_tokens=tokens,
        )
        return fit(m, req, suggest=False)

    # a length of whole blocks (the simulation counts tokens, fit whole blocks; a hybrid's
    # block is raised to cover a state page)
    block = fit_at(16384).block_size
    prompt = 12288
    output = block * -(-16384 // block) - prompt
    capacity = fit_at(prompt + output)
    cfg = EngineConfig("vllm", max_num_batched_tokens=tokens, max_num_seqs=256, admission="reserve")
    expected = int(capacity.max_concurrency)
    assert 2 <= expected < 256  # KV binds, not max_num_seqs
    steps = step_model(replica, default_efficiency(g), prompt)
    pool = kv_pool(replica, cfg, prompt + output)
    wl = Workload(prompt, output, concurrency=expected + 4, num_requests=2 * expected + 8, output_spread=0.0)
    r = Simulation(steps, cfg, pool).run(wl)
    assert r.max_running == expected
    assert r.binding_limit == "kv_capacity"


def test_pooled_gap_percentiles_are_those_of_every_gap():
    """vllm bench serve pools every inter-token gap and takes numpy's linear-interpolated
    percentile. 1,001 gaps 10, 10.01, ..., 20 ms as one piece: the q-th percentile of evenly
    spaced values is 10 + q/100 x 10 ms (p50 15 ms, p90 19 ms). With 3 gaps of 100 ms
    more (1,004 in all), p99.9 falls among them (position 0.999 x 1,003 = 1,002.0 of 0..1,003,
    at or past the 1,001st) and p50 at position 501.5: 10 + 501.5 x 0.01 = 15.015 ms."""
    from capcalc.serving.engine import _mixture_pcts

    assert _mixture_pcts([(0.010, 0.020, 1001.0)], (50, 90)) == pytest.approx((0.015, 0.019), rel=1e-3)
    both = _mixture_pcts([(0.010, 0.020, 1001.0), (0.1, 0.1, 3.0)], (50, 99.9))
    assert both == pytest.approx((0.015015, 0.1), rel=1e-3)
    assert _mixture_pcts([], (50,)) == (0.0,)


def test_itl_percentiles_at_concurrency_one_and_under_prefill_stalls(llama8b, h100):
    """One client: every gap is one decode step of one sequence, the steps growing with the
    context, so p50 is the mean ITL (a linear step) and p99 is near the last step. SGLang's
    prefill-only steps (mixed_batches off) make the decodes wait whole prefills: a tail far
    above the median."""
    one = sim(llama8b, h100, VLLM, prompt=1024).run(Workload(1024, 256, concurrency=1, output_spread=0.0))
    assert one.itl_p50_s == pytest.approx(one.itl_s, rel=1e-3)
    assert one.itl_p50_s <= one.itl_p90_s <= one.itl_p99_s < 1.01 * one.itl_p50_s
    sglang = replace(VLLM, mixed_batches=False)
    busy = sim(llama8b, h100, sglang, prompt=4096).run(Workload(4096, 256, concurrency=32))
    assert busy.itl_p99_s > 3 * busy.itl_p50_s


@pytest.mark.parametrize("name", ["llama-3.1-8b", "qwen3.5-397b-a17b", "gpt-oss-120b"])
def test_step_time_from_totals_times_as_the_itemised_cost(registry, h100, name):
    """The simulation times mixed steps from their totals alone; same time as the itemised
    cost through predict_step (dense, MoE with its experts' own eff(), a hybrid)."""
    m = registry.model(name)
    tp = 8 if name.startswith("qwen3.5") else 1
    sm = MixedStepModel(m, h100, default_efficiency(h100), tp=tp, ctx_floor=1000, kernel_roofline=True)
    for decodes, ctx_sum, chunks in (
        (3, 4000.0, ()),
        (40, 60_000.0, (Chunk(0, 700), Chunk(5000, 2000))),
        (0, 0.0, (Chunk(100, 50),)),
    ):
        full, totals = (
            step_totals(m, sm.cost(decodes, ctx_sum, chunks)),
            sm.step_totals(decodes, ctx_sum, chunks),
        )
        assert totals.keys() == full.keys()
        for total, value in full.items():
            assert totals[total] == pytest.approx(value, rel=1e-12), total
        assert sm.step_time_s(decodes, ctx_sum, chunks) == pytest.approx(
            sm.time_s(decodes, ctx_sum, chunks), rel=1e-12
        )


def test_a_run_past_the_event_budget_stops_with_one_error(llama8b, h100, monkeypatch):
    """A simulation that would run for minutes stops at MAX_EVENTS scheduling events: up front
    when the measured prompts alone need more prefill steps (20 x 4,096 tokens at 64 per step
    = 1,280 > 1,000), else when the loop passes it (a cache of two requests preempting)."""
    import capcalc.serving.engine as engine

    monkeypatch.setattr(engine, "MAX_EVENTS", 1000)
    chunked = replace(VLLM, max_num_batched_tokens=64)
    with pytest.raises(CapcalcError, match="1,000 scheduling events") as upfront:
        sim(llama8b, h100, chunked).run(Workload(4096, 16, concurrency=4, num_requests=20))
    assert upfront.value.parameters == ("num_requests", "max_num_batched_tokens")
    # 320 prompts of 1,024 at 8,192 per step need only 40 steps: the loop's count stops this one
    monkeypatch.setattr(engine, "MAX_EVENTS", 50)
    with pytest.raises(CapcalcError, match="50 scheduling events"):
        sim(llama8b, h100, VLLM, kv_tokens=2 * 2048).run(Workload(1024, 1024, concurrency=64))


def test_a_fit_past_its_event_budget_is_refused_before_it_starts(registry, monkeypatch):
    """Each fit simulates every point 3 + rounds x parameters x (evaluations + 3) times: one
    point of 20 prompts of 2,048 tokens at 64 tokens per step needs 640 prefill steps, 1 round
    of 2 parameters at 4 evaluations is 17 simulations, 10,880 in all: over a budget of
    10,000, under one of 11,000."""
    import capcalc.serving.calibrate as calibrate

    model, gpu = registry.model("llama-3.2-1b"), registry.gpu("h100-sxm")
    point = ServedPoint(
        Replica(model, gpu),
        Workload(2048, 8, concurrency=4, num_requests=20),
        "vllm",
        0.1,
        0.01,
        max_num_batched_tokens=64,
    )
    fit = dict(parameters=("frontend_s", "bandwidth_scale"), rounds=1, evaluations=4)
    monkeypatch.setattr(calibrate, "MAX_FIT_EVENTS", 10_000)
    with pytest.raises(CapcalcError, match="at least 10,880 prefill steps") as refused:
        fit_serving([point], **fit)
    assert refused.value.parameters == ("max_num_batched_tokens",)
    monkeypatch.setattr(calibrate, "MAX_FIT_EVENTS", 11_000)
    assert fit_serving([point], **fit).values is not None


def test_a_fit_whose_simulation_runs_too_long_says_so_in_its_own_terms(registry, monkeypatch):
    """A simulation past MAX_EVENTS inside a fit is refused as the fit's, naming the token
    budget: a fit's runs take their request counts from the files, not from num_requests."""
    import capcalc.serving.engine as engine
    from capcalc.serving.engine import TooManyEvents

    monkeypatch.setattr(engine, "MAX_EVENTS", 50)
    point = ServedPoint(
        Replica(registry.model("llama-3.2-1b"), registry.gpu("h100-sxm")),
        Workload(1024, 256, concurrency=16),
        "vllm",
        0.1,
        0.01,
    )
    with pytest.raises(
        CapcalcError, match="one simulation of a fit to 1 run passed 50 scheduling events"
    ) as refused:
        fit_serving([point], parameters=("frontend_s",), rounds=1, evaluations=2)
    assert not isinstance(refused.value, TooManyEvents)
    assert refused.value.parameters == ("max_num_batched_tokens",)


def test_a_step_that_preempts_admits_no_waiting_request(llama8b, h100, monkeypatch):
    """vLLM v1 schedules the waiting queue only when the step preempted nothing
    (`if not preempted_reqs`): the step after a preemption is a pure decode step, never a
    prefill chunk that recomputes the victim in the step that evicted it. A cache of 1,650
    tokens admits three 500-token prompts, which outgrow it as they decode: preemptions."""
    s = sim(llama8b, h100, VLLM, kv_tokens=3 * 550)
    calls: list[str] = []
    preempt, step, run = s._preempt, s.sm.step_time_s, s._decode_run_time

    def log(name, f):
        def wrapped(*a, **k):
            calls.append(name)
            return f(*a, **k)

        return wrapped

    monkeypatch.setattr(s, "_preempt", log("preempt", preempt))
    monkeypatch.setattr(s.sm, "step_time_s", log("mixed", step))
    monkeypatch.setattr(s, "_decode_run_time", log("decode", run))
    out = s.run(Workload(500, 100, concurrency=8, output_spread=0))
    assert out.preemptions > 0 and out.binding_limit == "kv_capacity"
    after = [calls[i + 1] for i, c in enumerate(calls[:-1]) if c == "preempt"]
    assert after and set(after) == {"decode"}, after


def test_per_sequence_layer_cost_by_hand(llama8b, h100):
    """seq_layer_overhead_s c adds layers x sequences x c to a step: Llama-3.1-8B has 32 layers,
    so at c = 1 us a decode of 8 sequences costs 256 us more, a mixed step of 8 decodes and 2
    chunks 320 us (its time from totals likewise), and a static prefill of 4 prompts 128 us."""
    from capcalc.model.flops import prefill_cost
    from capcalc.perf.latency import predict_step

    eff = default_efficiency(h100)
    more = replace(eff, seq_layer_overhead_s=1e-6)
    base, extra = MixedStepModel(llama8b, h100, eff), MixedStepModel(llama8b, h100, more)
    assert extra.time_s(8, 8000.0) - base.time_s(8, 8000.0) == pytest.approx(32 * 8 * 1e-6, rel=1e-9)
    mixed = (8, 8000.0, (Chunk(0, 512), Chunk(256, 256)))
    assert extra.time_s(*mixed) - base.time_s(*mixed) == pytest.approx(32 * 10 * 1e-6, rel=1e-9)
    assert extra.step_time_s(*mixed) - base.step_time_s(*mixed) == pytest.approx(32 * 10 * 1e-6, rel=1e-9)
    assert extra.decode_time_s(8, 8000.0) - base.decode_time_s(8, 8000.0) == pytest.approx(256e-6, rel=1e-9)
    cost = prefill_cost(llama8b, 4, 512)
    gap = (
        predict_step(llama8b, h100, cost, "bf16", more).time_s
        - predict_step(llama8b, h100, cost, "bf16", eff).time_s
    )
    assert gap == pytest.approx(32 * 4 * 1e-6, rel=1e-9)


@pytest.mark.parametrize("engine", ["vllm", "sglang", "trtllm"])
def test_fit_recovers_a_known_memory_fraction(registry, engine):
    """Qwen3-32B in bf16 on one H100 holds ~61 GiB of weights, so the engine's memory knob
    decides how many of 16 clients' 2,048 + 256 tokens fit, and queueing shows in TTFT:
    points made with the knob at 0.88 give it back (and every point after the fit within 2 %)."""
    model, gpu = registry.model("qwen3-32b"), registry.gpu("h100-sxm")
    replica = Replica(model, gpu)
    truth = {"memory_fraction": 0.88}
    points = []
    for c, p, o in ((16, 2048, 256), (24, 1024, 256), (8, 4096, 128)):
        probe = ServedPoint(replica, Workload(p, o, concurrency=c), engine, 1.0, 1.0)
        r = predict_point(probe, apply(serving_defaults(probe), truth))
        points.append(replace(probe, ttft_s=r.ttft_s, tpot_s=r.tpot_s))
    before = predict_point(points[0], serving_defaults(points[0]))
    assert (
        before.kv_capacity_tokens
        != predict_point(points[0], apply(serving_defaults(points[0]), truth)).kv_capacity_tokens
    )
    fit = fit_serving(points, parameters=("memory_fraction",), rounds=2, evaluations=14)
    assert fit.values["memory_fraction"] == pytest.approx(0.88, abs=0.01)
    assert max(abs(e) for pair in fit.after for e in pair) < 0.02


# --------------------------------------------------------------------------- SGLang's poll interval


def _two_arrivals(model, gpu):
    """The step model of ``model`` at 512-token prompts, the two arrival times of
    ``Workload(rate_per_s=1, seed=0)`` (the simulation's own generator, redrawn) and the
    time of one 512-token prefill alone."""
    import random

    steps = MixedStepModel(model, gpu, default_efficiency(gpu), ctx_floor=512)
    rng = random.Random(0)
    a1 = rng.expovariate(1.0)
    a2 = a1 + rng.expovariate(1.0)
    return steps, a1, a2, steps.step_time_s(0, 0.0, (Chunk(0, 512),))


def _two_arrivals_ttft(steps, cfg) -> float:
    """Mean TTFT of the two arrivals of :func:`_two_arrivals` (512 in, 400 out) under ``cfg``."""
    wl = Workload(512, 400, rate_per_s=1.0, num_requests=2, warmup_requests=0, output_spread=0.0)
    return Simulation(steps, cfg, 10**7).run(wl).ttft_s


def _lone_client_ttfts(model, gpu, cfg, changed) -> tuple[float, float]:
    """TTFT of one closed-loop client (1024 in, 128 out) under ``cfg`` and under ``changed``."""
    wl = Workload(1024, 128, concurrency=1, num_requests=6)
    return sim(model, gpu, cfg).run(wl).ttft_s, sim(model, gpu, changed).run(wl).ttft_s


SGLANG_LIKE = EngineConfig(
    "sglang", max_num_batched_tokens=8192, max_num_seqs=64, mixed_batches=False, frontend_s=0.01
)


@pytest.mark.parametrize("interval", [1, 10, 30])
def test_a_request_arriving_mid_decode_waits_for_the_next_poll_by_hand(llama8b, h100, interval):
    """Two Poisson arrivals (seed 0, 1/s: at 0.736 s and 2.178 s): A is prefilled alone, then
    decodes 400 tokens (~3.4 s); B reaches the scheduler during A's decode and is seen at the
    first poll after it: the end of the decode step that brings the count since the poll
    after A's prefill to a multiple of ``interval``. B's prefill runs alone (no mixed
    batches). Summed here from the step model, step by step."""
    steps, a1, a2, prefill = _two_arrivals(llama8b, h100)
    cfg = replace(SGLANG_LIKE, recv_interval=interval)
    poll = a1 + cfg.frontend_s + prefill  # A's first token; the scheduler polls after it
    t, i, seen = poll, 0, None
    while seen is None:  # A's decode steps at contexts 513, 514, ...
        t += steps.step_time_s(1, 513.0 + i)
        i += 1
        if i % interval == 0 and t >= a2 + cfg.frontend_s:
            seen = t
    assert i < 399  # B is seen while A still decodes
    ttft_b = seen + prefill - a2
    assert _two_arrivals_ttft(steps, cfg) == pytest.approx((cfg.frontend_s + prefill + ttft_b) / 2, rel=1e-6)


def test_a_lone_client_never_waits_for_a_poll(llama8b, h100):
    """One client: each request reaches an idle scheduler, which polls at once."""
    base, polled = _lone_client_ttfts(llama8b, h100, SGLANG_LIKE, replace(SGLANG_LIKE, recv_interval=30))
    assert polled == base


@pytest.mark.parametrize("c", [8, 32])
def test_polling_every_n_decode_steps_costs_ttft_within_n_steps(llama8b, h100, c):
    """A request waits at most N decode steps for the scheduler to see it: TTFT grows with
    N, by less than N longest decode steps; the decode steps themselves are unchanged, so
    TPOT moves only with where the prefills land."""
    wl = Workload(1024, 256, concurrency=c, num_requests=8 * c)
    runs = {
        n: sim(llama8b, h100, replace(SGLANG_LIKE, recv_interval=n), prompt=1024).run(wl) for n in (1, 10, 30)
    }
    assert runs[1].ttft_s < runs[10].ttft_s < runs[30].ttft_s
    for n in (10, 30):
        assert runs[n].ttft_s - runs[1].ttft_s < n * runs[1].itl_p99_s
        assert runs[n].tpot_s == pytest.approx(runs[1].tpot_s, rel=0.1)


def test_recv_interval_is_sglangs_alone():
    with pytest.raises(CapcalcError, match="SGLang's alone: vllm"):
        replace(VLLM, recv_interval=10)
    with pytest.raises(CapcalcError, match="at least 1"):
        replace(SGLANG_LIKE, recv_interval=0)


# --------------------------------------------------------------------------- TensorRT-LLM batch waiting

TRTLLM_LIKE = EngineConfig(
    "trtllm", max_num_batched_tokens=8192, max_num_seqs=64, chunked_prefill=False, admission="reserve",
    frontend_s=0.01,
)  # fmt: skip


@pytest.mark.parametrize("iters, ratio, held", [(0, 0.0, 0), (20, 0.9, 20), (5, 0.9, 5), (20, 0.05, 0)])
def test_a_prompt_beside_decodes_waits_for_a_fuller_batch_by_hand(llama8b, h100, iters, ratio, held):
    """Two Poisson arrivals (seed 0, 1/s) as above, TensorRT-LLM-like (mixed steps, whole
    prompts): B is seen at the end of the decode step of A during which it arrives; with
    batch waiting its 512 tokens plus A's one (513 < 0.9 x 8192) are held for ``iters`` more
    decode steps of A, then run in one mixed step with A's decode. At ratio 0.05 (410 tokens)
    the step is full enough at once and nothing is held."""
    steps, a1, a2, prefill = _two_arrivals(llama8b, h100)
    cfg = replace(TRTLLM_LIKE, batch_wait_iters=iters, batch_wait_max_tokens_ratio=ratio)
    t, i = a1 + cfg.frontend_s + prefill, 0
    while t < a2 + cfg.frontend_s:  # A's decode steps at contexts 513, 514, ...
        t += steps.step_time_s(1, 513.0 + i)
        i += 1
    for _ in range(held):
        t += steps.step_time_s(1, 513.0 + i)
        i += 1
    t += steps.step_time_s(1, 513.0 + i, (Chunk(0, 512),))  # B's prompt beside A's decode
    ttft_b = t - a2
    assert _two_arrivals_ttft(steps, cfg) == pytest.approx((cfg.frontend_s + prefill + ttft_b) / 2, rel=1e-6)


def test_batch_waiting_never_holds_a_prompt_with_nothing_decoding(llama8b, h100):
    """One client: nothing decodes when its next prompt arrives, so it is never held."""
    waiting = replace(TRTLLM_LIKE, batch_wait_iters=40, batch_wait_max_tokens_ratio=0.9)
    base, held = _lone_client_ttfts(llama8b, h100, TRTLLM_LIKE, waiting)
    assert held == base


def test_batch_waiting_is_tensorrt_llms_alone():
    with pytest.raises(CapcalcError, match="TensorRT-LLM's alone: vllm"):
        replace(VLLM, batch_wait_iters=20)
    with pytest.raises(CapcalcError, match="batch_wait_max_tokens_ratio must be a number in"):
        replace(TRTLLM_LIKE, batch_wait_max_tokens_ratio=1.5)

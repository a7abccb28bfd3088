"""Roofline: the seed's A100 arithmetic, FLOP and byte accounting checked a second way,
the bound of each phase on every GPU, MoE expert reads, and the critical batch."""

from __future__ import annotations

import math

import pytest

from capcalc.model.flops import COMPONENTS, decode_cost, experts_touched, prefill_cost
from capcalc.model.params import count_params
from capcalc.model.weights import weight_bytes
from capcalc.perf.latency import predict_decode_step, predict_prefill
from capcalc.perf.roofline import critical_batch, roofline

# ---------------------------------------------------------------- the seed's A100 (§0.10)
# Llama-3-8B bf16 on "an A100 (HBM bandwidth ~ 2 TB/s, compute ~ 312 TFLOP/s bf16)":
# 16 GB read per decode step -> 8 ms -> ~125 tok/s; 16 GFLOP -> ~0.05 ms; intensity ~1;
# ridge 312e12 / 2e12 = 156; "to reach the ridge you need batch ~150".
# The seed rounds Llama-3-8B to 8e9 parameters and streams all of them. capcalc counts
# the exact 8,030,261,248 and, as engines do, gathers B rows of the input embedding
# instead of streaming the 128256 x 4096 table: 525 M parameters fewer to read and to
# multiply. So the exact numbers sit ~6% under the seed's round ones.


@pytest.fixture(scope="module")
def seed(registry):
    return roofline(
        registry.model("llama-3-8b"), registry.gpu("a100-seed"), batch=1, ctx=1, prompt_tokens=1024
    )


def test_seed_bytes_and_flops_recomputed_from_first_principles(registry, seed):
    m = registry.model("llama-3-8b")
    p = count_params(m)
    assert p.total == 8_030_261_248
    streamed = p.total - p.embedding  # every weight but the gathered embedding table
    # one token: the embedding row (4096 x 2 B) gathered, one token of KV (128 KiB) read and written
    assert seed.decode.bytes == streamed * 2 + 4096 * 2 + 2 * 131_072
    # 2 FLOP per multiplied weight (norms are not matmuls) + attention over 1 token:
    # 32 layers x 32 heads x (2 x 128 + 2 x 128)
    assert seed.decode.flops == 2 * (streamed - p.norms) + 32 * 32 * 512


def test_seed_a100_landmarks(seed):
    assert seed.decode.bytes == pytest.approx(16e9, rel=0.07)  # "16 GB"
    assert seed.decode.memory_s == pytest.approx(8e-3, rel=0.07)  # "8 ms"
    assert seed.decode_speed_limit_tokens_per_s == pytest.approx(125, rel=0.07)  # "~125 tok/s"
    assert seed.decode.flops == pytest.approx(16e9, rel=0.07)  # "16 GFLOP"
    assert seed.decode.compute_s == pytest.approx(0.05e-3, rel=0.07)  # "~0.05 ms"
    assert seed.decode.intensity == pytest.approx(1.0, rel=0.01)  # "1 FLOP/byte"
    assert seed.ridge_point_flop_per_byte == 156  # 312e12 / 2e12
    assert seed.decode.bound == "memory"
    # "memory (8 ms) dwarfs compute (0.05 ms) by ~160x"; utilisation = 1/160 ~ 0.6% (lab-04)
    assert seed.decode.memory_s / seed.decode.compute_s == pytest.approx(156, rel=0.02)
    assert seed.single_stream_compute_utilization_pct == pytest.approx(100 / 156, rel=0.02)


def test_seed_critical_batch_is_about_the_ridge(seed):
    # "intensity ~ B FLOP/byte ... you need batch ~150": with a short context (KV small)
    # the batch that reaches the ridge is of that order
    assert 150 <= seed.critical_batch <= 175
    assert seed.critical_batch_ctx_limit_tokens > 1


def test_critical_batch_kv_bytes_are_its_decode_steps_kv_reads(registry, seed):
    m, a100 = registry.model("llama-3-8b"), registry.gpu("a100-seed")
    crit = predict_decode_step(m, a100, seed.critical_batch, 1)
    assert seed.critical_batch_kv_bytes_per_gpu == crit.cost.component("kv_read").bytes
    assert seed.critical_batch_kv_bytes_per_gpu == seed.critical_batch * 131_072  # 128 KiB per token
    assert crit.bound == "compute"
    assert predict_decode_step(m, a100, seed.critical_batch - 1, 1).bound == "memory"
    assert seed.compute_dtype == seed.decode.compute_dtype == "bf16"


def test_seed_record_and_table(cli):
    r = cli("roofline", "llama-3-8b", "--gpu", "a100-seed", "--ctx", "1", "--json")
    assert r.code == 0, r.err
    rec = r.json()
    assert rec["ridge_point_flop_per_byte"] == 156
    assert rec["decode_bound"] == "memory" and rec["prefill_bound"] == "compute"
    assert rec["compute_dtype"] == "bf16"
    for key in ("model", "gpu", "batch", "ctx", "prompt_tokens", "tp", "weight_dtype", "kv_dtype"):
        assert key in rec  # every input echoed
    for name in COMPONENTS:
        assert f"decode_{name}_flops" in rec and f"prefill_{name}_bytes" in rec
    table = cli("roofline", "llama-3-8b", "--gpu", "a100-seed", "--ctx", "1")
    assert table.code == 0
    assert "Ridge point (bf16): 156 FLOP/B" in table.out
    assert "Critical batch at ctx 1" in table.out


# ---------------------------------------------------------------- accounting checked a second way


@pytest.mark.parametrize(
    "name", ["llama-3-8b", "qwen2.5-7b", "gemma-2-9b", "mixtral-8x7b", "deepseek-v3", "gpt-oss-20b"]
)
@pytest.mark.parametrize("dtype", ["bf16", "fp8", "int4"])
def test_streamed_bytes_add_up_to_the_checkpoint(registry, name, dtype):
    """At a batch large enough to touch every expert, the weights one step streams plus
    the gathered embedding table (untied) and the weights outside the decoder equal
    capcalc.model.weights' size of the checkpoint."""
    m = registry.model(name)
    p = count_params(m)
    big = 1_000_000
    cost = decode_cost(m, big, 1, weight_dtype=dtype, kv_dtype="bf16")
    streamed = cost.weight_bytes - cost.component("embedding").bytes
    untied_table = 0 if m.tie_word_embeddings else p.embedding * 2.0
    rest = (p.position_embedding + p.extra) * 2.0
    assert streamed + untied_table + rest == pytest.approx(weight_bytes(m, dtype).bytes, rel=1e-9)


@pytest.mark.parametrize("name", ["llama-3-8b", "gemma-2-2b", "mixtral-8x7b", "qwen3-30b-a3b", "deepseek-v3"])
def test_decode_flops_per_token_are_twice_the_active_matmul_weights(registry, name):
    """FLOPs/token ~ 2 x active parameters (+ attention): the non-attention FLOPs of a
    1-token step are exactly 2 x (active params - gathered embedding - norms - biases).
    A tied table is multiplied by the LM head, so it stays in."""
    m = registry.model(name)
    p = count_params(m)
    cost = decode_cost(m, 1, 1, kv_dtype="bf16")
    gathered_only = 0 if m.tie_word_embeddings else p.embedding
    matmul_weights = p.active - gathered_only - p.norms - p.attention_bias - p.position_embedding
    assert cost.matmul_flops == pytest.approx(2 * matmul_weights, rel=1e-12)


def test_attention_flops_grow_with_context_and_stop_at_the_window(registry):
    m = registry.model("mistral-7b-v0.1")  # every layer slides over 4096 tokens
    at = {c: decode_cost(m, 1, c).attention_flops for c in (1024, 4096, 32768)}
    assert at[4096] == 4 * at[1024]
    assert at[32768] == at[4096]
    # 32 layers x 32 heads x (2 x 128 scores + 2 x 128 values) per attended token
    assert at[1024] == 32 * 32 * 512 * 1024


def test_prefill_attention_is_causal(registry):
    m = registry.model("llama-3-8b")
    p = prefill_cost(m, 1, 1000)
    # token i attends to i tokens: 1000 x 1001 / 2 pairs per layer
    assert p.attention_flops == 32 * 32 * 512 * 1000 * 1001 / 2
    # the LM head runs for the last prompt token only
    assert p.component("lm_head").flops == 2 * 128_256 * 4096


def test_mla_attends_in_latent_space_when_decoding(registry):
    m = registry.model("deepseek-v3")  # 128 heads, kv_lora 512, rope 64, nope 128, v 128
    d = decode_cost(m, 1, 1000, kv_dtype="bf16")
    assert d.component("attention_scores").flops == 61 * 128 * 2 * (512 + 64) * 1000
    assert d.component("attention_values").flops == 61 * 128 * 2 * 512 * 1000
    p = prefill_cost(m, 1, 10, kv_dtype="bf16")
    assert p.component("attention_scores").flops == 61 * 128 * 2 * (128 + 64) * 55
    assert p.component("attention_values").flops == 61 * 128 * 2 * 128 * 55


def test_tied_embedding_is_read_whole_by_the_lm_head(registry):
    m = registry.model("gemma-2-2b")
    assert m.tie_word_embeddings
    d = decode_cost(m, 1, 1)
    assert d.component("lm_head").bytes == m.vocab_size * m.hidden_size * 2
    assert d.component("embedding").bytes == m.hidden_size * 2  # one gathered row


# ---------------------------------------------------------------- MoE


def test_experts_touched_formula():
    assert experts_touched(8, 2, 1) == 2
    assert experts_touched(8, 2, 2) == pytest.approx(8 * (1 - 0.75**2))  # 3.5
    assert experts_touched(256, 8, 10_000) == pytest.approx(256)
    assert experts_touched(256, 8, 1) == pytest.approx(8)


def test_moe_batch_one_reads_few_experts_large_batch_reads_all(registry):
    m = registry.model("mixtral-8x7b")  # 8 experts, 2 per token, 32 layers
    one = decode_cost(m, 1, 1, weight_dtype="bf16")
    many = decode_cost(m, 256, 1, weight_dtype="bf16")
    per_expert = 3 * 4096 * 14336
    assert one.experts_touched_per_layer == 2
    assert one.component("routed_experts").bytes == 32 * 2 * per_expert * 2
    assert many.experts_touched_per_layer == pytest.approx(8)
    # FLOPs come from the routed experts only: 2 of 8 per token, whatever the batch
    assert many.component("routed_experts").flops == 256 * one.component("routed_experts").flops


def test_quantised_weights_read_fewer_bytes_and_name_their_compute_dtype(registry):
    m, h100 = registry.model("llama-3-8b"), registry.gpu("h100-sxm")
    bf16 = roofline(m, h100, weight_dtype="bf16")
    fp8 = roofline(m, h100, weight_dtype="fp8")
    int4 = roofline(m, h100, weight_dtype="int4")
    assert int4.decode.cost.weight_bytes < fp8.decode.cost.weight_bytes < bf16.decode.cost.weight_bytes
    assert (bf16.compute_dtype, fp8.compute_dtype, int4.compute_dtype) == ("bf16", "fp8", "bf16")
    assert fp8.ridge_point_flop_per_byte == pytest.approx(2 * bf16.ridge_point_flop_per_byte, rel=1e-4)
    a100 = roofline(m, registry.gpu("a100-80gb-sxm"), weight_dtype="fp8")
    assert a100.compute_dtype == "bf16"  # no fp8 tensor cores: weight-only fp8


# ---------------------------------------------------------------- every GPU profile

DENSE = ["llama-3-8b", "llama-3-70b", "qwen2.5-0.5b", "gemma-2-9b", "mistral-7b-v0.1", "falcon-7b"]


@pytest.mark.parametrize("name", DENSE)
def test_prefill_is_compute_bound_and_decode_memory_bound_on_every_gpu(registry, name):
    """Prefill of a 7B+ model is compute-bound at 4096 tokens on every GPU, and at 1000 on
    every NVIDIA one (on TPU v6e and Gaudi 3, whose ridge is ~500 FLOP/B, the activation
    traffic of a 1000-token prefill tips a few models over). A 0.5B model moves ~2.2 MB of
    activations per prompt token (capcalc.model.flops) for ~1 GFLOP: ~450 FLOP/B, memory-bound
    on GPUs whose ridge is above that, whatever the prompt length."""
    m = registry.model(name)
    assert len(registry.gpus) >= 10
    for gpu in registry.gpus.values():
        if name != "qwen2.5-0.5b":
            assert predict_prefill(m, gpu, 1, 4096).bound == "compute", gpu.name
            if gpu.vendor.lower() == "nvidia":
                assert predict_prefill(m, gpu, 1, 1000).bound == "compute", gpu.name
        assert predict_decode_step(m, gpu, 1, 1000).bound == "memory", gpu.name
        assert predict_decode_step(m, gpu, 1, 1).bound == "memory", gpu.name


def test_moe_prefill_needs_more_tokens_to_turn_compute_bound(registry):
    """A fine-grained MoE splits a 1000-token prompt over 128 experts (~60 tokens each),
    so prefill stays memory-bound until the prompt feeds every expert enough tokens."""
    m, h100 = registry.model("qwen3-30b-a3b"), registry.gpu("h100-sxm")
    assert predict_prefill(m, h100, 1, 1000).bound == "memory"
    assert predict_prefill(m, h100, 1, 32_000).bound == "compute"


def test_no_critical_batch_at_long_context(registry, cli):
    m, a100 = registry.model("llama-3-8b"), registry.gpu("a100-80gb-sxm")
    long = roofline(m, a100, ctx=8192)
    assert long.critical_batch is None
    limit = long.critical_batch_ctx_limit_tokens
    # Asymptotic intensity (B -> inf) = FLOPs/token / KV bytes/token:
    # (2 x 7.5e9 matmul + 32 x 32 x 512 x C) / (131072 x C) = ridge (2039 GB/s, 312 TFLOP/s)
    flops_per_token = decode_cost(m, 1, 1).matmul_flops
    ridge = 312e12 / 2039e9
    exact = flops_per_token / (131_072 * ridge - 32 * 32 * 512)
    assert abs(limit - exact) <= 2
    assert critical_batch(m, a100, limit) is not None
    assert critical_batch(m, a100, limit + 2) is None
    r = cli("roofline", "llama-3-8b", "--gpu", "a100-80gb-sxm", "--ctx", "8192")
    assert "Decode never turns compute-bound at ctx 8,192" in r.out
    assert f"below {limit + 1:,} tokens" in r.out


def test_tensor_parallel_divides_flops_and_weight_bytes(registry):
    m, h100 = registry.model("llama-3-70b"), registry.gpu("h100-sxm")
    one = decode_cost(m, 8, 2048)
    four = decode_cost(m, 8, 2048, tp=4)
    assert four.flops == pytest.approx(one.flops / 4)
    # Weights split by tp, except the norms, which every GPU holds and reads whole (as fit
    # holds them; llama has no biases, and its 8 KV heads split 2 per GPU at tp=4):
    # norms = 80 layers x 2 x 8192 + 8192 final = 1,318,912 params x 2 B = 2,637,824 B on
    # every GPU, so tp=4 reads one.weight_bytes / 4 + 3/4 x 2,637,824 = + 1,978,368 B.
    # (This used to pin one.weight_bytes / 4: flops divided the norms too, unlike fit.)
    norms = 2 * (80 * 2 * 8192 + 8192)
    assert one.component("norms_biases").bytes == four.component("norms_biases").bytes == norms
    assert four.weight_bytes == pytest.approx((one.weight_bytes - norms) / 4 + norms, rel=1e-12)
    assert four.weight_bytes - one.weight_bytes / 4 == pytest.approx(1_978_368, abs=1)
    assert four.component("kv_read").bytes == pytest.approx(one.component("kv_read").bytes / 4)
    sixteen = decode_cost(m, 8, 2048, tp=16)  # 8 KV heads < 16 GPUs: replicated, KV stops shrinking
    assert sixteen.component("kv_read").bytes == four.component("kv_read").bytes / 2
    step = predict_decode_step(m, h100, 8, 2048, tp=4)
    # two ring all-reduces per layer of 8 tokens x 8192 x 2 B at 450 GB/s, datasheet: no latency
    assert step.comm_s == pytest.approx(2 * 80 * 1.5 * 8 * 8192 * 2 / 450e9)


# ---------------------------------------------------------------- errors


def test_bad_input_is_one_line(cli):
    r = cli("roofline", "llama-3-8b", "--gpu", "a100-seed", "--weight-dtype", "fp8", "--compute-dtype", "fp8")
    assert r.code == 2 and r.out == ""
    assert r.err.strip() == "capcalc: error: a100-seed has no fp8 peak rate in its profile (it lists bf16)"
    r = cli("roofline", "llama-3-8b", "--gpu", "a100-seed", "--batch", "0")
    assert r.err.strip() == "capcalc: error: --batch must be at least 1, got 0"
    r = cli("roofline", "llama-3-70b", "--gpu", "h100-sxm", "--tp", "3")
    assert r.code == 2 and "valid tp degrees are 1, 2, 4, 8" in r.err
    assert len(r.err.strip().splitlines()) == 1
    r = cli("roofline", "llama-3-8b", "--gpu", "h100-sxm", "--plot", "chart.pdf")
    assert r.err.strip() == "capcalc: error: --plot: 'chart.pdf' must end in .png or .svg"


def test_json_numbers_are_finite(cli):
    rec = cli("roofline", "deepseek-v3", "--gpu", "h200", "--batch", "64", "--tp", "8", "--json").json()
    for key, value in rec.items():
        if isinstance(value, float):
            assert math.isfinite(value), key
    assert rec["decode_experts_touched_per_layer"] == pytest.approx(256 * (1 - (1 - 8 / 256) ** 64))


@pytest.mark.parametrize(
    "name", ["llama-3-8b", "gemma-2-9b", "gemma-3-27b", "mistral-7b-v0.1", "qwen3-30b-a3b", "deepseek-v3"]
)
def test_decode_costs_interpolate_exactly(registry, name):
    """decode_costs computes a few anchor contexts and interpolates the rest: every decode
    component is affine in the context between the window's kink and the ends, so the
    interpolated steps must equal the directly computed ones."""
    from capcalc.model.flops import decode_cost, decode_costs

    model = registry.model(name)
    contexts = list(range(100, 9000, 397))
    many = decode_costs(model, 8, contexts)
    for ctx in contexts:
        direct = decode_cost(model, 8, ctx)
        for a, b in zip(direct.components, many[ctx].components, strict=True):
            assert b.flops == pytest.approx(a.flops, rel=1e-12, abs=1e-9)
            assert b.bytes == pytest.approx(a.bytes, rel=1e-12, abs=1e-9)
        assert many[ctx].ctx == ctx

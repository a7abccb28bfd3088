"""Weight widths and the per-GPU weight layout, shared by fit (memory held) and by the
step costs of latency and roofline (bytes streamed): one layout, so the two agree."""

from __future__ import annotations

import pytest

from capcalc.model.flops import decode_cost
from capcalc.model.params import count_params
from capcalc.model.weights import (
    bits_per_weight,
    gpu_weights,
    resolve_weight_dtype,
    weight_bytes,
    weight_bytes_per_gpu,
    weight_widths,
)

# ---------------------------------------------------------------- widths


def test_weight_widths_per_kind():
    assert weight_widths("bf16") == (2.0, 2.0, 2.0, 2.0)
    assert weight_widths("fp32") == (4.0, 4.0, 4.0, 4.0)
    int4 = (4 + 20 / 128) / 8
    w = weight_widths("int4")
    assert (w.linear, w.high, w.expert, w.embedding) == (int4, 2.0, int4, 2.0)
    assert weight_widths("int4", quantize_embeddings=True).embedding == int4
    assert weight_widths("int8", 64).linear == (8 + 16 / 64) / 8
    # mxfp4 (gpt-oss) quantises only the routed experts: 4 bits + an 8-bit scale per 32
    w = weight_widths("mxfp4")
    assert (w.linear, w.high, w.expert, w.embedding) == (2.0, 2.0, 4.25 / 8, 2.0)
    assert weight_widths("fp8") == (1.0, 2.0, 1.0, 2.0)
    assert bits_per_weight("mxfp4") == 4.25
    # nvfp4 (ModelOpt) quantises every decoder matmul: 4 bits + an 8-bit E4M3 scale per 16
    # (the fp32 per-tensor scale is 32 bits per matrix, left out)
    w = weight_widths("nvfp4")
    assert (w.linear, w.high, w.expert, w.embedding) == (4.5 / 8, 2.0, 4.5 / 8, 2.0)
    assert bits_per_weight("nvfp4") == 4 + 8 / 16 == 4.5


def test_nvfp4_weights_of_qwen3_32b_by_hand(registry):
    """Qwen3-32B: 64 layers x (attention 5120 x 8192 + 2 x 5120 x 1024 + 8192 x 5120, MLP
    3 x 5120 x 25600) = 31.2B matmul weights at 4.5 bits; embedding and LM head 151936 x 5120
    each, norms (64 x (2 x 5120 + 2 x 128) + 5120) at 16 bits."""
    m = registry.model("qwen3-32b-nvfp4")
    linear = 64 * (5120 * 8192 + 2 * 5120 * 1024 + 8192 * 5120 + 3 * 5120 * 25600)
    other = 2 * 151936 * 5120 + 64 * (2 * 5120 + 2 * 128) + 5120
    w = weight_bytes(m)
    assert (w.dtype, w.quantized_params) == ("nvfp4", linear)
    assert w.bytes == pytest.approx(linear * 4.5 / 8 + other * 2)


def test_fp32_checkpoints_are_served_in_the_serving_dtype(registry):
    assert resolve_weight_dtype("auto", registry.model("gpt2")) == "fp16"  # fp32 checkpoint
    assert resolve_weight_dtype("auto", registry.model("llama-3-8b")) == "bf16"
    assert resolve_weight_dtype("auto", registry.model("deepseek-v3")) == "fp8"


# ---------------------------------------------------------------- layout


@pytest.mark.parametrize("name", ["llama-3-8b", "gpt2", "gemma-3-12b", "deepseek-v3", "gpt-oss-20b"])
def test_layout_at_tp1_is_the_parameter_count(registry, name):
    m = registry.model(name)
    p, g = count_params(m), gpu_weights(m)
    moe = m.num_moe_layers
    assert m.num_layers * (g.qkv + g.o) == p.attention
    assert m.num_layers * g.norms_biases + g.final_norm == p.norms + p.attention_bias
    assert m.num_dense_layers * g.dense_mlp == p.dense_mlp
    assert moe * g.num_experts * g.expert == p.routed_experts
    assert moe * g.shared_experts == p.shared_experts and moe * g.router == p.router
    assert (g.embedding, g.lm_head, g.position_embedding, g.extra) == (
        p.embedding,
        p.lm_head,
        p.position_embedding,
        p.extra,
    )


def test_replicated_pieces_stay_whole_under_tp(registry):
    # qwen3-30b-a3b: hidden 2048, 32 heads and 4 KV heads of 128, 48 layers, 128 experts
    q = registry.model("qwen3-30b-a3b")
    g = gpu_weights(q, tp=8)
    # q split 8 ways (2048 x 4096 / 8 = 1,048,576); 4 KV heads < 8 GPUs: one whole k and v
    # head each (2 x 2048 x 128 = 524,288); o split (4096 x 2048 / 8 = 1,048,576)
    assert (g.qkv, g.o) == (1_048_576 + 524_288, 1_048_576)
    assert g.router == 2048 * 128  # replicated, whatever tp
    # deepseek-v3 MLA: the q_a (7168 x 1536) and kv_a (7168 x (512 + 64)) down-projections
    # are replicated, q_b, kv_b and o split
    d = registry.model("deepseek-v3")
    one, eight = gpu_weights(d), gpu_weights(d, tp=8)
    down = 7168 * 1536 + 7168 * 576  # = 15,138,816 parameters per layer
    assert eight.qkv == pytest.approx(down + (one.qkv - down) / 8, rel=1e-15)
    assert eight.norms_biases == one.norms_biases and eight.router == one.router


# ---------------------------------------------------------------- streamed = held


@pytest.mark.parametrize("name", ["llama-3-8b", "deepseek-v3", "qwen3-30b-a3b"])
@pytest.mark.parametrize("tp", [1, 8])
@pytest.mark.parametrize(("dtype", "quantize_embeddings"), [("auto", False), ("int4", False), ("int4", True)])
def test_a_decode_step_streams_the_weights_fit_holds(registry, name, tp, dtype, quantize_embeddings):
    """A decode step that touches every expert reads, per GPU, exactly the weights one GPU
    holds (``weight_bytes_per_gpu`` with pp=1, the number fit subtracts from memory).

    Excluded from the step's side: its ``embedding`` component (the B gathered rows of
    the table: a read of held weights, not more weights) and ``activations`` (0 in decode).
    Excluded from the held side: the untied input embedding table, vocab/tp rows, which is
    held but gathered, not streamed (a tied one is streamed whole by the LM head, so it
    stays in); learned positions and extra (vision) weights would be excluded too, but
    none of these models has any."""
    m = registry.model(name)
    p = count_params(m)
    assert p.position_embedding == p.extra == 0
    held = weight_bytes_per_gpu(m, weight_dtype=dtype, quantize_embeddings=quantize_embeddings, tp=tp)
    assert len(held) == 1  # pp=1: one stage holds every layer, the embedding and the head
    kw = dict(weight_dtype=dtype, kv_dtype="bf16", tp=tp, quantize_embeddings=quantize_embeddings)
    cost = decode_cost(m, 1_000_000, 1, **kw)
    if m.moe is not None:
        assert cost.experts_touched_per_layer == m.moe.num_experts  # a million tokens touch all
    assert cost.component("activations").bytes == 0
    streamed = cost.weight_bytes - cost.component("embedding").bytes
    width = weight_widths(cost.weight_dtype, quantize_embeddings=quantize_embeddings).embedding
    gathered_table = 0 if m.tie_word_embeddings else p.embedding / tp * width
    assert streamed + gathered_table == pytest.approx(held[0].bytes, rel=1e-12)
    if tp == 1:
        assert held[0].bytes == pytest.approx(
            weight_bytes(m, dtype, quantize_embeddings=quantize_embeddings).bytes, rel=1e-12
        )


def test_replicated_weights_are_streamed_and_multiplied_on_every_gpu(registry):
    """qwen3-30b-a3b at tp=8 (bf16): the replicated K/V heads and router are read whole
    by every GPU, and every GPU multiplies them (the step used to divide them by tp)."""
    m = registry.model("qwen3-30b-a3b")
    cost = decode_cost(m, 4, 1024, tp=8)
    # 48 layers x (1,048,576 q + 524,288 k and v) = 75,497,472 params, 2 B each
    assert cost.component("qkv_proj").bytes == 48 * 1_572_864 * 2  # = 150,994,944 B
    assert cost.component("qkv_proj").flops == 2 * 48 * 1_572_864 * 4
    # router: 48 x 2048 x 128 = 12,582,912 params, whole on each GPU
    assert cost.component("router").bytes == 12_582_912 * 2
    assert cost.component("router").flops == 2 * 12_582_912 * 4
    held = weight_bytes_per_gpu(m, tp=8)[0].bytes
    assert held > weight_bytes(m).bytes / 8  # replication: more than an eighth

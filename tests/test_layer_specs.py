"""Layer kinds as spec classes (capcalc/model/layers.py): each kind's arithmetic, and the
regression pin that the shipped models give the same numbers as before the refactor."""

from __future__ import annotations

import json
import math

from snapshot_numbers import FIXTURE, snapshot


def _empty(value) -> bool:
    """A value a field added for a new layer kind reads for the old models: 0, None, [0, 0]..."""
    if isinstance(value, dict):
        return all(_empty(v) for v in value.values())
    if isinstance(value, list):
        return all(_empty(v) for v in value)
    return value in (0, None, False)


def _diff(old, new, path=""):
    """The first place two JSON trees differ (floats compared exactly), or None. A key
    only in the new tree is allowed when it reads empty (a field for a new layer kind)."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            if key not in old and _empty(new[key]):
                continue
            if key not in old or key not in new:
                return f"{path}/{key}: only in {'fixture' if key in old else 'now'}"
            found = _diff(old[key], new[key], f"{path}/{key}")
            if found:
                return found
        return None
    if isinstance(old, list) and isinstance(new, list | tuple):
        if len(old) != len(new):
            return f"{path}: {len(old)} entries, now {len(new)}"
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            found = _diff(a, b, f"{path}[{i}]")
            if found:
                return found
        return None
    if isinstance(old, float) and isinstance(new, float) and math.isnan(old) and math.isnan(new):
        return None
    return None if old == new else f"{path}: {old!r} in the fixture, now {new!r}"


def test_the_shipped_models_give_identical_numbers_before_and_after_the_spec_refactor():
    # regression pin (tests/snapshot_numbers.py wrote it from the code before the refactor)
    pinned = json.loads(FIXTURE.read_text())["models"]
    now = json.loads(json.dumps(snapshot(), sort_keys=True))  # tuples -> lists, as stored
    assert set(pinned) <= set(now)  # new profiles may join; none may leave
    for name, record in pinned.items():
        assert _diff(record, now[name]) is None, (name, _diff(record, now[name]))


# --------------------------------------------------------------------------- the kinds

import pytest  # noqa: E402
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from capcalc.model.layers import (  # noqa: E402
    ChunkedLocalAttentionSpec,
    CrossAttentionSpec,
    FullAttentionSpec,
    GatedDeltaNetSpec,
    Mamba2Spec,
    MLAAttentionSpec,
    ParallelHybridSpec,
    SharedFullAttentionSpec,
    SharedSlidingWindowSpec,
    SlidingWindowSpec,
)


def test_each_kind_by_hand():
    full = FullAttentionSpec(32, 8, 128)  # Llama-3-8B
    assert full.cache_bytes_per_token(2.0) == 2 * 8 * 128 * 2 == 4096
    assert full.cache_bytes_per_token(2.0, tp=16) == 2 * 1 * 128 * 2  # one head, replicated
    assert full.blocks_per_request(32_768, 16, 8192) == 2048
    slide = SlidingWindowSpec(32, 8, 128, window=4096)  # Mistral-7B-v0.1
    # vLLM admits min(4096 - 1 + 8192, 32768) = 12,287 tokens: 768 blocks, plus one
    assert slide.blocks_per_request(32_768, 16, 8192) == 769
    assert (slide.tokens_held(32_768), slide.attended_pairs("prefill", 5)) == (4096, 15)
    mla = MLAAttentionSpec(
        128, 128, 192, kv_lora_rank=512, qk_rope_head_dim=64, qk_nope_head_dim=128, v_head_dim=128
    )
    assert mla.cache_bytes_per_token(2.0, tp=8) == (512 + 64) * 2  # DeepSeek-V3: the same on every rank
    assert mla.attention_dims("decode") == (576, 512) and mla.attention_dims("prefill") == (192, 128)
    gdn = GatedDeltaNetSpec(16, 32, 128, 128, 4)
    assert gdn.state_shapes(1) == (3 * (2 * 16 * 128 + 32 * 128), 32 * 128 * 128)
    assert gdn.blocks_per_request(262_144, 16, 8192) == 1 and gdn.tokens_held(10**6) == 0
    shared = SharedSlidingWindowSpec(8, 2, 256, window=512)  # gemma-3n's KV-shared layers
    assert shared.cache_bytes_per_token(2.0) == 0 and shared.blocks_per_request(32_768, 16, 2048) == 0
    assert (shared.tokens_held(8192), shared.tokens_read(8192), shared.attended_pairs("decode", 8192)) == (
        0,
        512,
        512,
    )
    mamba = Mamba2Spec(128, 64, 128, 1, 4)
    # tp 4 does not divide one B/C group: each rank keeps it (n_groups raised to 4)
    assert mamba.state_shapes(4) == (3 * (8192 + 2 * 4 * 128) // 4, 32 * 64 * 128)
    # Falcon-H1-7B's layer: its attention part caches as a full layer of 2 KV heads of 128, its
    # Mamba2 part (24 heads of 128, state 256, 1 group, conv 4) keeps 3 x 3584 + 24 x 128 x 256
    both = ParallelHybridSpec(12, 2, 128, mamba=Mamba2Spec(24, 128, 256, 1, 4))
    assert both.cache_bytes_per_token(2.0) == 2 * 2 * 128 * 2 and both.tokens_held(8192) == 8192
    assert both.state_bytes(1, 2.0, 2.0) == (3 * 3584 + 24 * 128 * 256) * 2 == 1_594_368
    assert both.blocks_per_request(32_768, 1568, 8192) == 21  # its attention part's; the state: 1
    assert both.recurrent_flops(1) == 5 * 24 * 128 * 256 + 2 * 3584 * 4
    assert not both.tp_valid(3)  # 24 Mamba heads split 3 ways, 2 KV heads do not


shapes = st.tuples(
    st.integers(1, 8).map(lambda x: 2**x),  # KV heads
    st.sampled_from([64, 128, 256]),  # head_dim
    st.integers(1, 1 << 17),  # window or chunk
    st.integers(1, 1 << 18),  # context
    st.sampled_from([1, 2, 4, 8]),  # tp
    st.sampled_from([16, 32, 528]),  # block size
    st.integers(1, 1 << 14),  # max_num_batched_tokens
)


@given(shapes)
def test_no_kind_holds_more_than_a_full_attention_layer_of_the_same_shape(shape):
    kv, head_dim, window, ctx, tp, block, batched = shape
    full = FullAttentionSpec(kv * 4, kv, head_dim)
    others = [
        SlidingWindowSpec(kv * 4, kv, head_dim, window=window),
        ChunkedLocalAttentionSpec(kv * 4, kv, head_dim, chunk=window),
        GatedDeltaNetSpec(kv, kv * 2, head_dim, head_dim, 4),
        Mamba2Spec(kv * 4, head_dim, 128, 1, 4),
        SharedFullAttentionSpec(kv * 4, kv, head_dim),
        SharedSlidingWindowSpec(kv * 4, kv, head_dim, window=window),
        CrossAttentionSpec(kv * 4, kv, head_dim),
        # attention AND Mamba2 in one layer: its attention part holds no more than a full layer
        ParallelHybridSpec(kv * 4, kv, head_dim, mamba=Mamba2Spec(kv * 4, head_dim, 128, 1, 4)),
    ]
    per_token = full.cache_bytes_per_token(2.0, tp)
    both = others[-1]
    assert both.attention_part() == full  # its attention part is a full layer of the same shape
    assert both.state_bytes(tp) == both.mamba.state_bytes(tp) > 0  # plus the state of its Mamba2 part
    for spec in others:
        assert spec.tokens_held(ctx) <= full.tokens_held(ctx)
        assert spec.cache_bytes_per_token(2.0, tp) * spec.tokens_held(ctx) <= per_token * ctx
        assert spec.tokens_read(ctx) <= full.tokens_read(ctx)
        assert spec.attended_pairs("decode", ctx) <= full.attended_pairs("decode", ctx)
        assert spec.attended_pairs("prefill", ctx) <= full.attended_pairs("prefill", ctx)
        if isinstance(spec, CrossAttentionSpec):
            continue  # it reserves the encoder budget, max_num_batched_tokens, whatever the context
        # vLLM's sliding-window admission keeps one block more than the window's: at most one
        # block beyond a full layer's
        assert (
            spec.blocks_per_request(ctx, block, batched) <= full.blocks_per_request(ctx, block, batched) + 1
        )


# --------------------------------------------------------------------------- Llama 4

#: meta-llama/Llama-4-Scout-17B-16E-Instruct config.json (the fields capcalc reads),
#: https://huggingface.co/meta-llama/Llama-4-Scout-17B-16E-Instruct/blob/main/config.json
LLAMA4_VISION = {
    "model_type": "llama4_vision_model",
    "hidden_size": 1408,
    "intermediate_size": 5632,
    "num_hidden_layers": 34,
    "num_attention_heads": 16,
    "image_size": 336,
    "patch_size": 14,
    "num_channels": 3,
    "vision_output_dim": 4096,
    "projector_input_dim": 4096,
    "projector_output_dim": 4096,
    "pixel_shuffle_ratio": 0.5,
}
SCOUT_TEXT = {
    "model_type": "llama4_text",
    "hidden_size": 5120,
    "head_dim": 128,
    "intermediate_size": 8192,
    "intermediate_size_mlp": 16384,
    "interleave_moe_layer_step": 1,
    "max_position_embeddings": 10485760,
    "num_attention_heads": 40,
    "num_key_value_heads": 8,
    "num_hidden_layers": 48,
    "num_local_experts": 16,
    "num_experts_per_tok": 1,
    "vocab_size": 202048,
    "attention_chunk_size": 8192,
    "use_qk_norm": True,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}


def _llama4(text):
    from capcalc.sources.hfconfig import profile_mapping
    from capcalc.sources.loader import model_from_dict

    config = {"model_type": "llama4", "text_config": text, "vision_config": LLAMA4_VISION}
    data, _ = profile_mapping(config, name="llama4-test", source="test", where="test")
    return model_from_dict(data, "test")


def test_llama4_configs_map_to_the_shipped_profiles(registry):
    maverick = {**SCOUT_TEXT, "num_local_experts": 128, "interleave_moe_layer_step": 2, "use_qk_norm": False}
    maverick["max_position_embeddings"] = 1048576
    for text, name in ((SCOUT_TEXT, "llama-4-scout"), (maverick, "llama-4-maverick")):
        mapped, shipped = _llama4(text), registry.model(name)
        for field in ("layer_types", "attention_chunk_size", "moe", "intermediate_size", "extra_params"):
            got, want = getattr(mapped, field), getattr(shipped, field)
            if field == "extra_params":
                got, want = got.count, want.count
            assert got == want, (name, field)
    # transformers' default when no_rope_layers is absent: layers 3, 7, ... are NoPE (global)
    assert registry.model("llama-4-scout").layer_types[:8] == ("chunked",) * 3 + ("full",) + (
        "chunked",
    ) * 3 + ("full",)


def test_llama4_scout_kv_per_token_and_sequence_by_hand(registry):
    from capcalc.model.kv import kv_bytes_per_sequence, kv_bytes_per_token

    m = registry.model("llama-4-scout")
    per_layer = 2 * 8 * 128 * 2  # 4,096 B per token per layer in bf16
    assert kv_bytes_per_token(m, "bf16") == 48 * per_layer == 196_608
    # within the first chunk every layer holds every token
    assert kv_bytes_per_sequence(m, 8192, "bf16") == 8192 * 196_608 == 1_610_612_736
    # one token into the second chunk: the 36 chunked layers hold 1, the 12 global 8,193
    assert kv_bytes_per_sequence(m, 8193, "bf16") == per_layer * (12 * 8193 + 36 * 1)
    # 32k: global layers all of it, chunked layers one whole chunk
    assert kv_bytes_per_sequence(m, 32_768, "bf16") == per_layer * (12 * 32_768 + 36 * 8192) == 2_818_572_288


def test_llama4_scout_parameters_by_hand(registry):
    from capcalc.model.params import count_params

    p = count_params(registry.model("llama-4-scout"))
    h = 5120
    assert p.attention == 48 * (h * 5120 + 2 * h * 1024 + 5120 * h)
    assert p.routed_experts == 48 * 16 * 3 * h * 8192
    assert p.shared_experts == 48 * 3 * h * 8192
    assert p.router == 48 * h * 16
    # vision: patch 3 x 14^2 x 1408, class 1408, positions 577 x 1408, 2 LayerNorms,
    # 34 x (attention 4 (1408^2 + 1408) + MLP 2 x 1408 x 5632 + 5632 + 1408 + 2 LayerNorms),
    # adapter 5632 x 4096 + 4096 x 4096, projector 4096 x 5120
    vision = 3 * 196 * 1408 + 1408 + 577 * 1408 + 4 * 1408
    vision += 34 * (4 * (1408**2 + 1408) + 2 * 1408 * 5632 + 5632 + 1408 + 4 * 1408)
    vision += 5632 * 4096 + 4096 * 4096 + 4096 * 5120
    assert p.extra == vision == 871_932_416
    assert p.total == pytest.approx(109e9, rel=0.005)  # Meta: 109B total
    assert p.active == pytest.approx(17e9, rel=0.02)  # Meta: 17B active


def test_llama4_maverick_interleaves_dense_and_moe_layers(registry):
    from capcalc.model.params import count_params

    m = registry.model("llama-4-maverick")
    assert (m.num_moe_layers, m.num_dense_layers) == (24, 24)
    assert [m.is_moe_layer(i) for i in range(4)] == [False, True, False, True]
    p = count_params(m)
    assert p.dense_mlp == 24 * 3 * 5120 * 16384
    assert p.routed_experts == 24 * 128 * 3 * 5120 * 8192
    assert p.total == pytest.approx(400e9, rel=0.01)  # Meta: 400B total


def test_llama4_fit_admits_a_chunk_plus_one_step_per_chunked_group(registry):
    from capcalc.serving.fit import kv_cache_groups, request_blocks

    m = registry.model("llama-4-scout")
    groups = kv_cache_groups(m)
    # 36 chunked layers in 3 groups of 12 beside the 12 global layers
    assert [(g.kind, len(g.layers)) for g in groups] == [("chunked", 12)] * 3 + [("full", 12)]
    # vLLM: cdiv(min(8192 + 8192, 131072), 16) = 1,024 blocks a chunked group; 131072 / 16 global
    assert request_blocks(m, groups, 131_072, 16, 8192) == 3 * 1024 + 8192
    # without the hybrid manager every layer is full: one group
    assert request_blocks(m, kv_cache_groups(m, hybrid=False), 131_072, 16, 8192) == 8192


def test_chunked_prefill_and_decode_attend_within_the_chunk():
    spec = ChunkedLocalAttentionSpec(40, 8, 128, chunk=4)
    # a 10-token prompt in chunks of 4: 4+3+2+1 twice, then 1+2
    assert spec.attended_pairs("prefill", 10) == 10 + 10 + 3
    assert [spec.tokens_held(c) for c in (1, 4, 5, 8, 9)] == [1, 4, 1, 4, 1]


# --------------------------------------------------------------------------- DeepSeek-V3.2

#: the DeepSeek-V3.2 config.json fields capcalc reads beyond DeepSeek-V3's: DeepSeek's
#: inference ModelArgs, https://github.com/deepseek-ai/DeepSeek-V3.2-Exp/blob/main/inference/model.py
DSA = {"index_n_heads": 64, "index_head_dim": 128, "index_topk": 2048}


def test_deepseek_v32_config_maps_to_the_shipped_profile(registry):
    import json

    from conftest import ROOT

    from capcalc.sources.hfconfig import profile_mapping

    v3 = json.loads((ROOT / "tests/fixtures/hf_configs/deepseek-ai__DeepSeek-R1.json").read_text())
    config = {**v3, **DSA, "model_type": "deepseek_v32", "architectures": ["DeepseekV32ForCausalLM"]}
    data, model_type = profile_mapping(config, name="dsv32", source="test", where="test")
    assert model_type == "deepseek_v32"
    assert data["mla"]["indexer"] == {"n_heads": 64, "head_dim": 128, "topk": 2048}
    shipped = registry.model("deepseek-ai/DeepSeek-V3.2")
    assert shipped.mla.indexer.topk == 2048 and shipped.num_layers == data["architecture"]["num_layers"]


def test_deepseek_v32_caches_latent_and_indexer_keys_by_hand(registry):
    from capcalc.model.kv import kv_bytes_per_sequence, kv_bytes_per_token, kv_bytes_read_per_sequence

    m = registry.model("deepseek-v3.2")
    indexer = 128 + 4  # 128 fp8 values + one fp32 scale per 128
    assert kv_bytes_per_token(m, "bf16") == 61 * ((512 + 64) * 2 + indexer) == 78_324
    # fp8: vLLM's fp8_ds_mla latent, 512 fp8 + 4 fp32 scales + 64 bf16 rope dims = 656 bytes
    assert kv_bytes_per_token(m, "fp8") == 61 * (512 + 16 + 128 + indexer) == 48_068
    assert kv_bytes_per_sequence(m, 8192, "bf16") == 8192 * 78_324 == 641_630_208
    # decode at 100k: every indexer key, the 2,048 selected latents
    assert kv_bytes_read_per_sequence(m, 100_000, "bf16") == 61 * (indexer * 100_000 + 1152 * 2048)
    # within the top-k nothing is skipped
    assert kv_bytes_read_per_sequence(m, 2048, "bf16") == kv_bytes_per_sequence(m, 2048, "bf16")


def test_deepseek_v32_attention_over_the_top_k_at_long_context(registry):
    from capcalc.model.flops import decode_cost, decode_costs

    m = registry.model("deepseek-v3.2")
    d = decode_cost(m, 1, 100_000)
    # latent-space scores over 2,048 tokens (d_qk 576) + the indexer over all 100,000 (64 x 128)
    assert d.component("attention_scores").flops == 61 * (2 * 128 * 576 * 2048 + 2 * 64 * 128 * 100_000)
    assert d.component("attention_values").flops == 61 * 2 * 128 * 512 * 2048
    # the step at a context between anchors is the interpolation of exact anchors (top-k is one)
    many = decode_costs(m, 1, [1000, 3000, 100_000])
    assert many[3000].component("kv_read").bytes == decode_cost(m, 1, 3000).component("kv_read").bytes


def test_deepseek_v32_parameters_count_the_replicated_indexer(registry):
    from capcalc.model.params import count_params
    from capcalc.model.weights import gpu_weights

    m, v3 = registry.model("deepseek-v3.2"), registry.model("deepseek-v3")
    per_layer = 64 * 128 * 1536 + 128 * 7168 + 64 * 7168  # wq_b, wk, weights_proj
    assert count_params(m).attention - count_params(v3).attention == 61 * per_layer
    assert count_params(m).norms - count_params(v3).norms == 61 * 2 * 128  # k_norm LayerNorm
    # replicated: the indexer is whole on every tensor-parallel rank
    assert gpu_weights(m, tp=8).qkv - gpu_weights(v3, tp=8).qkv == per_layer


def test_chunked_decode_costs_follow_the_sawtooth(registry):
    # a chunked layer's cache drops back to one token at each chunk boundary: every context
    # is computed, none interpolated across a boundary
    from capcalc.model.flops import decode_cost, decode_costs

    m = registry.model("llama-4-scout")
    contexts = [4096, 8192, 8193, 12000]
    many = decode_costs(m, 2, contexts)
    for ctx in contexts:
        assert many[ctx].component("kv_read").bytes == decode_cost(m, 2, ctx).component("kv_read").bytes
    assert many[8193].component("kv_read").bytes < many[8192].component("kv_read").bytes

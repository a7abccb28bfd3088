"""Hybrid models: recurrent layers (Gated DeltaNet, Mamba2) beside attention, their fixed
state per sequence, and vLLM's hybrid allocator, against hand-worked numbers from the real
configs and the block sizes vLLM's logs and pull requests state."""

from __future__ import annotations

import pytest

from capcalc.core.errors import CapcalcError
from capcalc.model.flops import decode_cost, prefill_cost
from capcalc.model.kv import kv_bytes_per_sequence, kv_bytes_per_token, kv_cache, state_bytes_per_sequence
from capcalc.model.layers import state_spec
from capcalc.model.params import count_params
from capcalc.schema.deployment import Deployment
from capcalc.serving.fit import FitRequest, fit, hybrid_pages, kv_cache_groups
from capcalc.sources.hfconfig import profile_mapping
from capcalc.sources.loader import model_from_dict

GIB = 2**30

#: Qwen3.5-397B-A17B text_config, https://huggingface.co/Qwen/Qwen3.5-397B-A17B/blob/main/config.json
#: (as transcribed in the Megatron-Bridge test fixture qwen3_5_397b_a17b_config_dict and in
#: inference engines' model tables); only the fields capcalc reads
QWEN35_397B_TEXT = {
    "model_type": "qwen3_5_moe_text",
    "hidden_size": 4096,
    "num_hidden_layers": 60,
    "num_attention_heads": 32,
    "num_key_value_heads": 2,
    "head_dim": 256,
    "intermediate_size": 1024,
    "vocab_size": 248320,
    "max_position_embeddings": 262144,
    "tie_word_embeddings": False,
    "full_attention_interval": 4,
    "attn_output_gate": True,
    "linear_num_key_heads": 16,
    "linear_num_value_heads": 64,
    "linear_key_head_dim": 128,
    "linear_value_head_dim": 128,
    "linear_conv_kernel_dim": 4,
    "num_experts": 512,
    "num_experts_per_tok": 10,
    "moe_intermediate_size": 1024,
    "shared_expert_intermediate_size": 1024,
    "mamba_ssm_dtype": "float32",
    "dtype": "bfloat16",
}
QWEN35_397B = {
    "model_type": "qwen3_5_moe",
    "architectures": ["Qwen3_5MoeForConditionalGeneration"],
    "text_config": QWEN35_397B_TEXT,
}


def _profile(config: dict, name: str):
    data, _ = profile_mapping(config, name=name, source="test", where=name)
    return model_from_dict(data, name)


def test_qwen35_397b_config_maps_to_the_shipped_profile(registry):
    mapped = _profile(QWEN35_397B, "qwen3.5-397b-a17b")
    shipped = registry.model("Qwen/Qwen3.5-397B-A17B")
    fields = (
        "num_layers",
        "hidden_size",
        "num_kv_heads",
        "head_dim",
        "layer_types",
        "linear_attention",
        "moe",
    )
    for f in fields + ("attention_output_gate", "ssm_state_dtype", "qk_norm"):
        assert getattr(mapped, f) == getattr(shipped, f), f
    assert shipped.layer_types[:4] == ("linear", "linear", "linear", "full")
    assert (shipped.num_full_layers, shipped.layer_types.count("linear")) == (15, 45)


def test_qwen35_397b_kv_per_token_and_8k_sequence_and_state(registry):
    m = registry.model("qwen3.5-397b-a17b")
    # 15 full-attention layers x 2 (K, V) x 2 KV heads x 256 x 2 bytes
    assert kv_bytes_per_token(m, "bf16") == 15 * 2 * 2 * 256 * 2 == 30_720
    # 45 Gated DeltaNet layers: conv 3 x (2 x 16 x 128 + 64 x 128) bf16 + state 64 x 128 x 128 fp32
    per_layer_state = 3 * (2 * 16 * 128 + 64 * 128) * 2 + 64 * 128 * 128 * 4
    assert per_layer_state == 73_728 + 4_194_304
    assert state_bytes_per_sequence(m) == 45 * per_layer_state == 192_061_440
    assert kv_bytes_per_sequence(m, 8192, "bf16") == 8192 * 30_720 + 192_061_440 == 443_719_680
    # the state does not grow with the context; the fp8 KV halves only the attention part
    assert kv_bytes_per_sequence(m, 16384, "fp8") - kv_bytes_per_sequence(m, 8192, "fp8") == 8192 * 15_360
    r = kv_cache(m, 8192, batch=2, tp=4, state_dtype="bf16")
    assert r.state_layers == 45 and r.mamba_ssm_cache_dtype == "bf16"
    # tp 4: 1 KV head per GPU (2 / 4, replicated); state split by 4, the recurrent part in bf16
    assert r.state_bytes_per_sequence_per_gpu == 45 * (3 * 12_288 // 4 * 2 + 16 * 128 * 128 * 2)


def test_qwen35_397b_parameters_by_hand(registry):
    p = count_params(registry.model("qwen3.5-397b-a17b"))
    h = 4096
    attention = 15 * (h * 32 * 256 * 2 + 2 * h * 2 * 256 + 32 * 256 * h)  # q (+ gate), k, v, o
    gdn = 45 * (h * (2 * 16 * 128 + 2 * 64 * 128) + h * 2 * 64 + 64 * 128 * h)  # qkvz, ba, out
    gdn_other = 45 * ((2 * 16 * 128 + 64 * 128) * 4 + 64 + 64 + 128)  # conv, dt_bias, A_log, norm
    experts = 60 * 512 * 3 * h * 1024
    shared = 60 * 3 * h * 1024
    router = 60 * h * 512
    norms = 60 * 2 * h + 15 * 2 * 256 + h
    tables = 2 * 248_320 * h
    assert (p.attention, p.recurrent, p.recurrent_other) == (attention, gdn, gdn_other)
    assert p.total == attention + gdn + gdn_other + experts + shared + router + norms + tables
    assert p.total == 396_346_104_576  # the name says 397B (the vision encoder is not counted)
    assert p.active == pytest.approx(17.35e9, rel=1e-3)  # "A17B"


def test_qwen35_397b_fit_raises_the_block_size_to_cover_a_state_page(registry):
    m = registry.model("qwen3.5-397b-a17b")
    pages = hybrid_pages(m, "fp8", tp=4, block_size=16)
    # tp 4: state 3 x 12288 / 4 x 2 B + 16 x 128 x 128 x 4 B = 1,067,008 B; attention 512 B per
    # token (1 KV head x 256 x 2 x 1 B); 16 x cdiv(1,067,008, 16 x 512) = 16 x 131
    assert pages.state_page_bytes == 18_432 + 1_048_576
    assert pages.block_size == 2096 and pages.raised
    assert pages.padding_pct == pytest.approx(100 * (2096 * 512 - 1_067_008) / 1_067_008)
    groups = kv_cache_groups(m)
    # 45 linear layers cut into 3 groups of 15 beside the one group of the 15 full layers
    assert [(g.kind, len(g.layers)) for g in groups] == [("linear", 15)] * 3 + [("full", 15)]
    r = fit(m, FitRequest(180 * GIB, "flag", deployment=Deployment(tp=4, kv_dtype="fp8"), max_model_len=8192))
    assert r.block_size == 2096 and r.block_size_raised
    assert r.blocks_per_request == 3 + 4  # one block per state group, cdiv(8192, 2096) attention blocks
    assert r.page_bytes == 2096 * 512
    assert r.num_blocks == int(r.kv_cache_bytes_per_gpu // r.page_bytes // 15)


def test_granite_4h_small_block_size_528_as_vllm_sets_it():
    # vllm-project/vllm-gaudi PR 1453: "528 is required for Granite 4.0-H (granitemoehybrid)
    # without prefix caching (16-token FA alignment)"; vLLM PR 37467's log: "Setting attention
    # block size to 528 tokens to ensure that attention page size is >= mamba page size".
    # The shapes that decide it, from ibm-granite/granite-4.0-h-small config.json: hidden 4096,
    # 32 heads, 8 KV heads (head_dim 128), mamba_n_heads 128, mamba_d_head 64, mamba_d_state
    # 128, mamba_n_groups 1, mamba_d_conv 4; 4 attention layers among 40. The MLP here is a
    # stand-in (it plays no part in the page sizes).
    config = {
        "model_type": "granitemoehybrid",
        "hidden_size": 4096,
        "num_hidden_layers": 40,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "intermediate_size": 8192,
        "vocab_size": 100352,
        "max_position_embeddings": 131072,
        "layer_types": ["mamba"] * 5 + ["attention"] + ["mamba"] * 9 + ["attention"] + ["mamba"] * 24,
        "mamba_n_heads": 128,
        "mamba_d_head": 64,
        "mamba_d_state": 128,
        "mamba_n_groups": 1,
        "mamba_d_conv": 4,
        "torch_dtype": "bfloat16",
    }
    m = _profile(config, "granite-shapes")
    # conv 3 x (8192 + 2 x 128) x 2 B + state 128 x 64 x 128 x 2 B = 2,147,840 B per layer;
    # attention 2 x 8 x 128 x 2 = 4,096 B per token: 16 x cdiv(2,147,840, 65,536) = 16 x 33
    pages = hybrid_pages(m, "bf16", tp=1, block_size=16)
    assert pages.state_page_bytes == 3 * 8448 * 2 + 128 * 64 * 128 * 2 == 2_147_840
    assert pages.block_size == 528
    # tp 2 halves both pages: the same block size
    assert hybrid_pages(m, "bf16", tp=2, block_size=16).block_size == 528
    assert state_bytes_per_sequence(m) == 38 * 2_147_840


def test_qwen35_35b_ssm_page_at_tp8_as_vllm_ascend_logs():
    # vllm-project/vllm-ascend issue 7393 (Qwen3.5 35B, TP8): ssm_block_page_size=262144,
    # attn_single_token_k_page_size=512. Shapes of Qwen/Qwen3.5-35B-A3B config.json: 40 layers,
    # hidden 2048, 16 heads, 2 KV heads of 256, linear 16 key / 32 value heads of 128.
    config = {
        **QWEN35_397B_TEXT,
        "hidden_size": 2048,
        "num_hidden_layers": 40,
        "num_attention_heads": 16,
        "linear_num_value_heads": 32,
        "num_experts": 256,
        "num_experts_per_tok": 8,
        "moe_intermediate_size": 512,
        "shared_expert_intermediate_size": 512,
    }
    m = _profile(config, "qwen35-35b-shapes")
    _, ssm = state_spec(m).state_shapes(8)
    assert ssm * 4 == 262_144  # 4 value heads x 128 x 128 in fp32
    assert kv_bytes_per_token(m, "bf16", tp=8) / 10 / 2 == 512  # the K half of one layer's token


def test_more_sequences_than_state_blocks_is_refused_as_vllm_does(registry):
    m = registry.model("qwen3.5-397b-a17b")
    req = FitRequest(
        180 * GIB,
        "flag",
        deployment=Deployment(tp=8, weight_dtype="fp8"),
        max_model_len=32_768,
        kv_cache_memory=4 * GIB,
        max_num_seqs=1024,
    )
    r = fit(m, req)
    # tp 8, bf16 KV: 1 KV head, 1,024 B per token; state 9,216 + 524,288 B: block
    # 16 x cdiv(533,504, 16 x 1,024) = 528 tokens, a page of 540,672 B, 15 layers a group
    assert r.block_size == 528 and r.num_blocks == 4 * GIB // (528 * 1024) // 15 == 529
    assert not r.fits and r.max_num_seqs_over_state_blocks
    assert f"max_num_seqs (1024) exceeds available Mamba cache blocks ({r.num_blocks})" in r.vllm_error()
    assert ("max_num_seqs", r.num_blocks) in r.suggestions
    assert fit(m, req.changed(max_num_seqs=r.num_blocks)).fits


def test_recurrent_layers_need_the_hybrid_manager(registry):
    with pytest.raises(CapcalcError, match="hybrid"):
        kv_cache_groups(registry.model("qwen3.5-397b-a17b"), hybrid=False)


def test_decode_prices_the_state_update_and_its_traffic(registry):
    m = registry.model("qwen3.5-397b-a17b")
    one, two = decode_cost(m, 1, 4096), decode_cost(m, 2, 4096)
    state = state_bytes_per_sequence(m)
    # each sequence reads its state and writes it back; 7 FLOPs per state element per token
    assert two.component("kv_read").bytes - one.component("kv_read").bytes == kv_bytes_per_sequence(
        m, 4096, "bf16"
    )
    assert one.component("kv_write").bytes == 15 * 2048  # the KV of the new token
    assert one.component("recurrent_update").bytes == state  # the state written back
    assert one.kv_bytes == one.component("kv_read").bytes + 15 * 2048 + state
    conv = 2 * (2 * 16 * 128 + 64 * 128) * 4
    assert one.component("recurrent_update").flops == 45 * (7 * 64 * 128 * 128 + conv)
    # prefill: the update per prompt token, the state written once per sequence
    pre = prefill_cost(m, 1, 1000)
    assert pre.component("recurrent_update").flops == 1000 * one.component("recurrent_update").flops
    assert pre.component("kv_write").bytes == 1000 * 15 * 2048
    assert pre.component("recurrent_update").bytes == state


def test_qwen3_next_80b_kv_state_and_parameters_by_hand(registry):
    m = registry.model("Qwen/Qwen3-Next-80B-A3B-Instruct")
    # 12 full-attention layers x 2 x 2 KV heads x 256 x 2 B; 36 Gated DeltaNet layers of
    # conv 3 x (2 x 16 x 128 + 32 x 128) + state 32 x 128 x 128, both bf16 (no mamba_ssm_dtype)
    assert kv_bytes_per_token(m, "bf16") == 12 * 2048 == 24_576
    state = 36 * (3 * 8192 * 2 + 32 * 128 * 128 * 2)
    assert state_bytes_per_sequence(m) == state == 39_518_208
    assert kv_bytes_per_sequence(m, 8192, "bf16") == 8192 * 24_576 + state == 240_844_800
    p = count_params(m)
    h = 2048
    attention = 12 * (h * 16 * 256 * 2 + 2 * h * 2 * 256 + 16 * 256 * h)
    gdn = 36 * (h * (2 * 16 * 128 + 2 * 32 * 128) + h * 2 * 32 + 32 * 128 * h)
    experts = 48 * 512 * 3 * h * 512
    assert (p.attention, p.recurrent, p.routed_experts) == (attention, gdn, experts)
    assert p.total == pytest.approx(80e9, rel=0.01)  # "80B"
    assert p.active == pytest.approx(3.9e9, rel=0.02)  # "A3B": 3.9B touched per token


def test_qwen3_next_block_size_at_tp1_bf16(registry):
    m = registry.model("qwen3-next-80b-a3b")
    # state 3 x 8192 x 2 + 32 x 128 x 128 x 2 = 1,097,728 B; 2 x 2 x 256 x 2 = 2,048 B a token:
    # 16 x cdiv(1,097,728, 32,768) = 16 x 34 = 544, the state padded by 1.5%
    pages = hybrid_pages(m, "bf16", tp=1, block_size=16)
    assert (pages.state_page_bytes, pages.block_size) == (1_097_728, 544)


def test_granite_4h_small_profile_kv_state_and_block_size(registry):
    m = registry.model("ibm-granite/granite-4.0-h-small")
    # 4 attention layers x 2 x 8 KV heads x 128 x 2 B; 36 Mamba2 layers of 2,147,840 B each
    assert kv_bytes_per_token(m, "bf16") == 4 * 4096 == 16_384
    assert state_bytes_per_sequence(m) == 36 * 2_147_840 == 77_322_240
    assert kv_bytes_per_sequence(m, 8192, "bf16") == 8192 * 16_384 + 77_322_240 == 211_539_968
    r = fit(m, FitRequest(80 * GIB, "flag", max_model_len=32_768))
    assert r.block_size == 528 and r.block_size_raised  # vllm-gaudi PR 1453
    # 36 Mamba2 layers in 9 groups of 4 beside the 4 attention layers
    assert r.kv_cache_groups == 10 and r.layers_per_group == 4
    assert r.blocks_per_request == 9 + 63  # one a state group, cdiv(32768, 528) attention blocks
    p = count_params(m)
    mamba_in = 4096 * (8192 + 8192 + 2 * 128 + 128)  # z, xBC, dt
    assert p.recurrent == 36 * (mamba_in + 8192 * 4096)
    assert p.recurrent_other == 36 * (8448 * 5 + 3 * 128 + 8192)  # conv + bias, dt_bias, A_log, D, norm


#: Qwen/Qwen3-Next-80B-A3B-Instruct config.json, the fields capcalc reads, as a public dump of
#: it reproduces them (official: https://huggingface.co/Qwen/Qwen3-Next-80B-A3B-Instruct)
QWEN3_NEXT = {
    "architectures": ["Qwen3NextForCausalLM"],
    "model_type": "qwen3_next",
    "decoder_sparse_step": 1,
    "full_attention_interval": 4,
    "head_dim": 256,
    "hidden_size": 2048,
    "intermediate_size": 5120,
    "linear_conv_kernel_dim": 4,
    "linear_key_head_dim": 128,
    "linear_num_key_heads": 16,
    "linear_num_value_heads": 32,
    "linear_value_head_dim": 128,
    "max_position_embeddings": 262144,
    "mlp_only_layers": [],
    "moe_intermediate_size": 512,
    "num_attention_heads": 16,
    "num_key_value_heads": 2,
    "num_hidden_layers": 48,
    "num_experts": 512,
    "num_experts_per_tok": 10,
    "shared_expert_intermediate_size": 512,
    "vocab_size": 151936,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}


def test_qwen3_next_config_maps_to_the_shipped_profile(registry):
    mapped = _profile(QWEN3_NEXT, "qwen3-next-80b-a3b")
    shipped = registry.model("qwen3-next-80b-a3b")
    for f in (
        "layer_types",
        "linear_attention",
        "moe",
        "attention_output_gate",
        "num_kv_heads",
        "vocab_size",
    ):
        assert getattr(mapped, f) == getattr(shipped, f), f
    assert count_params(mapped).total == count_params(shipped).total
    # an explicit layer_types list wins over the interval
    listed = {**QWEN3_NEXT, "layer_types": ["full_attention"] * 48}
    assert _profile(listed, "all-full").layer_types == ("full",) * 48


def test_an_unknown_layer_type_is_refused_with_the_kinds_capcalc_knows():
    bad = {**QWEN3_NEXT, "layer_types": ["linear_attention"] * 47 + ["sliding_attention"]}
    with pytest.raises(CapcalcError, match="layer_types must list 48 entries"):
        _profile(bad, "bad")


def test_a_granitemoehybrid_config_of_attention_layers_only_has_no_state():
    # Granite 4.0 Micro ships model_type granitemoehybrid with every layer 'attention'
    config = {
        "model_type": "granitemoehybrid",
        "hidden_size": 2560,
        "num_hidden_layers": 40,
        "num_attention_heads": 40,
        "num_key_value_heads": 8,
        "intermediate_size": 8192,
        "shared_intermediate_size": 8192,
        "vocab_size": 100352,
        "max_position_embeddings": 131072,
        "layer_types": ["attention"] * 40,
        "torch_dtype": "bfloat16",
    }
    m = _profile(config, "micro")
    assert m.mamba is None and state_bytes_per_sequence(m) == 0
    assert kv_bytes_per_token(m, "bf16") == 40 * 2 * 8 * 64 * 2


#: nvidia/NVIDIA-Nemotron-Nano-9B-v2 config.json, the fields capcalc reads (the Megatron-Bridge
#: Nemotron-H documentation, https://github.com/NVIDIA-NeMo/Megatron-Bridge/blob/main/docs/models/llm/nemotronh.md,
#: and NemotronHConfig's names)
NEMOTRON_NANO_9B = {
    "architectures": ["NemotronHForCausalLM"],
    "model_type": "nemotron_h",
    "num_hidden_layers": 56,
    "hidden_size": 4480,
    "intermediate_size": 15680,
    "num_attention_heads": 40,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "vocab_size": 131072,
    "max_position_embeddings": 131072,
    "hybrid_override_pattern": "M-M-M-MM-M-M-M*-M-M-M*-M-M-M-M*-M-M-M-M*-M-MM-M-M-M-M-M-",
    "ssm_state_size": 128,
    "conv_kernel": 4,
    "n_groups": 8,
    "mamba_num_heads": 128,
    "mamba_head_dim": 80,
    "torch_dtype": "bfloat16",
}


def test_nemotron_nano_9b_block_size_672_as_vllm_quotes_it(registry):
    # https://github.com/vllm-project/vllm/issues/24280: "large attention page sizes (672 tokens
    # for nvidia/NVIDIA-Nemotron-Nano-9B-v2)"
    m = registry.model("nvidia/NVIDIA-Nemotron-Nano-9B-v2")
    pages = hybrid_pages(m, "bf16", tp=1, block_size=16)
    # conv 3 x (128 x 80 + 2 x 8 x 128) x 2 B + state 128 x 80 x 128 x 2 B; 2 x 8 x 128 x 2 a token
    assert pages.state_page_bytes == 3 * 12_288 * 2 + 128 * 80 * 128 * 2 == 2_695_168
    assert pages.block_size == 16 * 42 == 672
    # 27 Mamba2 layers in 7 groups (4 layers each, the last 3) beside the 4 attention layers;
    # the 25 MLP-only layers cache nothing
    groups = kv_cache_groups(m)
    assert [len(g.layers) for g in groups if g.kind == "mamba"] == [4] * 6 + [3]
    assert [g.kind for g in groups].count("full") == 1
    assert kv_bytes_per_token(m, "bf16") == 4 * 4096
    assert state_bytes_per_sequence(m) == 27 * 2_695_168 == 72_769_536


def test_nemotron_nano_9b_parameters_by_hand(registry):
    m = registry.model("nemotron-nano-9b-v2")
    h, v = 4480, 131072
    embed = 2 * v * h
    attention = 4 * (h * 5120 + 2 * h * 1024 + 5120 * h)
    mamba = 27 * (h * (10240 + 12288 + 128) + 10240 * h)  # in_proj (z, xBC, dt), out_proj
    mamba_other = 27 * (12288 * 5 + 3 * 128 + 10240)  # conv + bias, dt_bias, A_log, D, gated norm
    mlp = 25 * 2 * h * 15680  # up and down, no gate, only the '-' blocks
    norms = 56 * h + h
    p = count_params(m)
    assert (p.attention, p.recurrent, p.recurrent_other, p.dense_mlp) == (attention, mamba, mamba_other, mlp)
    assert p.total == embed + attention + mamba + mamba_other + mlp + norms == 8_888_227_328  # "9B"
    mapped = _profile(NEMOTRON_NANO_9B, "nano")
    assert count_params(mapped).total == p.total and mapped.layer_types == m.layer_types


def test_nemotron_weights_and_decode_price_each_block_by_what_it_has(registry):
    from capcalc.model.weights import weight_bytes, weight_bytes_per_gpu

    m = registry.model("nemotron-nano-9b-v2")
    # one GPU holds exactly the bf16 weights, every block type counted once
    assert weight_bytes_per_gpu(m)[0].bytes == weight_bytes(m, "bf16").bytes == 2 * 8_888_227_328
    d = decode_cost(m, 1, 1000)
    assert d.component("mlp").flops == 2 * 25 * 2 * 4480 * 15680
    assert d.component("attention_scores").flops == 2 * 40 * 128 * 4 * 1000
    # the Mamba2 update: 5 FLOPs per state element, plus the conv
    assert d.component("recurrent_update").flops == 27 * (5 * 128 * 80 * 128 + 2 * 12288 * 4)


def test_nemotron_moe_blocks_are_refused_with_the_block_named():
    with pytest.raises(CapcalcError, match="MoE blocks"):
        _profile({**NEMOTRON_NANO_9B, "hybrid_override_pattern": "ME" * 28}, "nemotron-3")


def test_show_lists_every_layer_kind(registry, cli):
    from capcalc.report.summary import layer_layout

    assert layer_layout(registry.model("qwen3-next-80b-a3b")).startswith("12 full + 36 Gated DeltaNet, MoE")
    assert layer_layout(registry.model("nemotron-h-8b")) == "4 full + 24 Mamba2 + 24 MLP-only"
    assert layer_layout(registry.model("llama-4-scout")).startswith("12 full + 36 chunked(8192)")
    assert layer_layout(registry.model("mistral-7b-v0.1")) == "32 sliding(4096)"  # no '0 full'
    assert layer_layout(registry.model("llama-3-8b")) == "32 full"
    r = cli("show", "granite-4.0-h-small", "--json")
    assert r.code == 0 and r.json()["layer_kinds"] == {"full": 4, "mamba": 36}


# --------------------------------------------------------------------------- Falcon-H1: attention and Mamba2 in one layer


def _falcon_h1_config() -> dict:
    from conftest import real_config

    return real_config("tiiuae__Falcon-H1-7B-Instruct")  # the fixture names its source


#: Falcon-H1-7B by hand, from its config.json: attention 12 heads / 2 KV heads of 128; Mamba2
#: 24 heads of 128 (mamba_d_ssm 3072), state 256, 1 group, conv 4; conv_dim 3072 + 2 x 256 = 3584
FALCON_KV_PER_TOKEN_LAYER = 2 * 2 * 128 * 2  # K and V x 2 KV heads x 128 x bf16 = 1,024
FALCON_STATE_LAYER = 3 * 3584 * 2 + 24 * 128 * 256 * 2  # conv 21,504 + SSM 1,572,864


def test_falcon_h1_7b_kv_per_token_8k_sequence_and_state_by_hand(registry):
    m = registry.model("falcon-h1-7b-instruct")
    assert set(m.layer_types) == {"parallel_hybrid"} and len(m.layer_types) == 44
    # every layer caches attention KV: 44 x 1,024 = 45,056 bytes per token
    assert kv_bytes_per_token(m, "bf16") == 44 * FALCON_KV_PER_TOKEN_LAYER == 45_056
    # AND keeps a Mamba2 state: 44 x 1,594,368 = 70,152,192 bytes per sequence
    assert FALCON_STATE_LAYER == 1_594_368
    assert state_bytes_per_sequence(m) == 44 * FALCON_STATE_LAYER == 70_152_192
    # an 8k sequence: 45,056 x 8,192 + 70,152,192
    assert kv_bytes_per_sequence(m, 8192, "bf16") == 45_056 * 8192 + 70_152_192 == 439_250_944
    r = kv_cache(m, 8192)
    assert (r.full_layers, r.state_layers, r.kv_bytes_per_sequence) == (44, 44, 439_250_944)
    # tp 2: one KV head per GPU (512 B per token per layer); the one B/C group is kept on both
    # ranks (n_groups raised to 2): conv 3 x (3072 + 2 x 2 x 256) / 2, SSM 12 heads x 128 x 256
    assert kv_bytes_per_token(m, "bf16", tp=2) == 44 * 512
    assert state_bytes_per_sequence(m, tp=2) == 44 * (3 * 4096 // 2 + 12 * 128 * 256) * 2
    # an fp32 SSM state (--mamba-ssm-cache-dtype float32) doubles only the SSM part
    assert state_bytes_per_sequence(m, state_dtype="fp32") == 44 * (3 * 3584 * 2 + 24 * 128 * 256 * 4)


def test_falcon_h1_7b_parameters_by_hand(registry):
    m = registry.model("falcon-h1-7b-instruct")
    h, vocab, layers = 3072, 130_049, 44
    attention = h * 1536 + 2 * h * 256 + 1536 * h  # q, k, v, o: 11,010,048
    # Mamba2 in_proj -> z (3072), xBC (3584), dt (24); out_proj 3072 -> 3072
    mixer = h * (3072 + 3584 + 24) + 3072 * h
    mixer_other = 3584 * (4 + 1) + 3 * 24 + 3072  # conv with bias, A_log / D / dt_bias, gated norm
    mlp = 3 * h * 12288
    norms = 2 * h  # input_layernorm, pre_ff_layernorm: once per layer, not once per mixer
    layer = attention + mixer + mixer_other + mlp + norms
    assert layer == 154_241_608
    total = 2 * vocab * h + layers * layer + h  # untied embedding and LM head, final norm
    p = count_params(m)
    assert p.total == total == 7_585_654_880
    assert (p.attention, p.recurrent, p.recurrent_other) == (
        layers * attention,
        layers * mixer,
        layers * mixer_other,
    )
    assert p.norms == layers * norms + h
    # the technical report (arXiv 2507.22448) calls it the 7B model
    assert p.total == pytest.approx(7e9, rel=0.09)
    # bf16 weights: 2 bytes each, and one GPU of one stage holds them all
    from capcalc.model.weights import weight_bytes, weight_bytes_per_gpu

    assert weight_bytes(m, "bf16").bytes == 2 * total
    assert weight_bytes_per_gpu(m, Deployment(weight_dtype="bf16"))[0].bytes == 2 * total


def test_falcon_h1_fit_counts_each_layer_in_the_attention_and_the_state_group(registry):
    # vLLM registers a Falcon-H1 layer's attention and its Mamba2 mixer as two cache layers
    # (FalconH1ParallelHybrid: the mixer's prefix takes index num_hidden_layers + i): 44 of each,
    # so one group of 44 attention layers and one of 44 Mamba2 layers (44 < 1.5 x 44)
    m = registry.model("falcon-h1-7b-instruct")
    groups = kv_cache_groups(m)
    assert [(g.kind, g.layers) for g in groups] == [("full", tuple(range(44))), ("mamba", tuple(range(44)))]
    # one attention page must cover a state page: 16 x cdiv(1,594,368, 16 x 1,024) = 16 x 98
    pages = hybrid_pages(m, "bf16", tp=1, block_size=16)
    assert (pages.state_page_bytes, pages.block_size) == (1_594_368, 1568)
    page = 1568 * 1024  # 1,605,632 bytes: the state page padded by 11,264 bytes (0.71%)
    assert pages.padding_pct == pytest.approx(100 * (page - 1_594_368) / 1_594_368)
    # a KV budget of 44 x page x 300 gives 300 blocks; a 32k request takes cdiv(32768, 1568)
    # = 21 attention blocks and 1 state block
    r = fit(
        m,
        FitRequest(80 * GIB, "flag", max_model_len=32_768, max_num_seqs=256, kv_cache_memory=44 * page * 300),
    )
    assert (r.kv_cache_groups, r.layers_per_group, r.block_size, r.page_bytes) == (2, 44, 1568, page)
    assert (r.num_blocks, r.blocks_per_request, r.state_layers) == (300, 22, 44)
    assert r.kv_cache_tokens == 300 // 2 * 1568
    assert r.fits and not r.max_num_seqs_over_state_blocks
    # more running sequences than the 300 state blocks: vLLM refuses to start
    crowded = fit(
        m,
        FitRequest(80 * GIB, "flag", max_model_len=32_768, max_num_seqs=512, kv_cache_memory=44 * page * 300),
    )
    assert crowded.max_num_seqs_over_state_blocks and not crowded.fits
    with pytest.raises(CapcalcError, match="hybrid"):
        kv_cache_groups(m, hybrid=False)


def test_falcon_h1_decode_prices_both_mixers(registry):
    m = registry.model("falcon-h1-7b-instruct")
    cost = {c.name: c for c in decode_cost(m, batch=1, ctx=4096).components}
    # the Mamba2 update of one token: 5 x 24 x 128 x 256 on the state plus the conv 2 x 3584 x 4, x 44
    assert cost["recurrent_update"].flops == 44 * (5 * 24 * 128 * 256 + 2 * 3584 * 4) == 174_276_608
    # and the attention over the 4,096 cached tokens: 2 x 12 heads x 128 x 4,096 x 44 layers
    assert cost["attention_scores"].flops == 2 * 12 * 128 * 4096 * 44
    # both mixers' projections are read: q, k, v (12 + 2 + 2 heads of 128) and in_proj, per layer
    assert cost["qkv_proj"].bytes == 44 * (3072 * 2048 + 3072 * 6680) * 2


def test_falcon_h1_config_maps_to_the_parallel_kind_and_refuses_what_it_cannot_model():
    config = _falcon_h1_config()
    m = _profile(config, "falcon-h1")
    assert m.layer_types == ("parallel_hybrid",) * 44
    assert (m.mamba.num_heads, m.mamba.head_dim, m.mamba.state_size, m.mamba.gated_norm) == (
        24,
        128,
        256,
        True,
    )
    assert state_spec(m).intermediate == 3072
    # mamba_rms_norm false drops the gated norm: 3,072 parameters a layer
    plain = _profile({**config, "mamba_rms_norm": False}, "falcon-h1-plain")
    assert count_params(m).total - count_params(plain).total == 44 * 3072
    with pytest.raises(CapcalcError, match="attn_layer_indices"):
        _profile({**config, "attn_layer_indices": [0, 1]}, "x")
    with pytest.raises(CapcalcError, match="mamba_d_ssm 4096 is not mamba_n_heads x mamba_d_head"):
        _profile({**config, "mamba_d_ssm": 4096}, "x")


def test_a_parallel_hybrid_profile_needs_its_mamba_block(registry):
    from capcalc.core.errors import ProfileError

    data, _ = profile_mapping(_falcon_h1_config(), name="fh1", source="test", where="fh1")
    del data["mamba"]
    with pytest.raises(ProfileError, match="'parallel_hybrid' layer kind and a mamba block go together"):
        model_from_dict(data, "fh1")


def test_falcon_h1_05b_parameters_and_state_by_hand():
    from conftest import real_config

    m = _profile(real_config("tiiuae__Falcon-H1-0.5B-Instruct"), "falcon-h1-0.5b")
    # no mamba_d_ssm in the config: 24 heads x mamba_d_head 64 = 1536 channels; conv_dim 1536 + 2 x 128
    spec = state_spec(m)
    assert (spec.intermediate, spec.conv_dim(), spec.gated_norm) == (1536, 1792, False)
    h = 1024
    attention = h * 512 + 2 * h * 128 + 512 * h  # 8 heads and 2 KV heads of 64
    mixer = h * (1536 + 1792 + 24) + 1536 * h + 1792 * 5 + 3 * 24  # no gated norm (mamba_rms_norm false)
    layer = attention + mixer + 3 * h * 2048 + 2 * h
    assert layer == 12_618_568
    total = 2 * 32_784 * h + 36 * layer + h
    assert count_params(m).total == total == 521_411_104
    assert round(total / 1e6) == 521  # the published 521M (the fixture names its source)
    # the state of one layer: 3 x 1792 conv + 24 x 64 x 128 SSM values, bf16
    assert state_bytes_per_sequence(m) == 36 * (3 * 1792 + 24 * 64 * 128) * 2
    assert kv_bytes_per_token(m, "bf16") == 36 * 2 * 2 * 64 * 2


def test_falcon_h1_prefill_activations_and_pipeline_stages_hold_both_mixers(registry):
    from capcalc.model.flops import activation_elements_per_token
    from capcalc.model.weights import weight_bytes, weight_bytes_per_gpu

    m = registry.model("falcon-h1-7b-instruct")
    # per token per layer: the residual stream (2 x 2 norms + 2) x 3072; the attention's q, k, v
    # (1536 + 256 + 256), roped q and k (1536 + 256) and output (1536); the Mamba2 mixer's in_proj
    # output (3072 + 3584 + 24), conv output (3584) and its own output (3072); the gated MLP's
    # 2 x 12288 + 12288; written and read: x 2
    stream, attention, mamba, mlp = 6 * 3072, 2048 + 1792 + 1536, 6680 + 3584 + 3072, 3 * 12288
    assert activation_elements_per_token(m) == 2 * 44 * (stream + attention + mamba + mlp)
    # two pipeline stages of 22 layers hold every weight once (the LM head is untied)
    stages = weight_bytes_per_gpu(m, Deployment(weight_dtype="bf16", pp=2))
    assert [(s.first_layer, s.end_layer) for s in stages] == [(0, 22), (22, 44)]
    assert sum(s.bytes for s in stages) == weight_bytes(m, "bf16").bytes == 2 * 7_585_654_880


def test_fit_table_names_the_state_blocks_as_what_stops_it(cli):
    """Granite-4.0-H-Small at 32k on an H100: the KV budget holds a request, but vLLM's
    default max_num_seqs (1024) is over the pool's state blocks, so the table's verdict
    names that and not the KV cache; the JSON says the same through its flags."""
    args = ("fit", "granite-4.0-h-small", "--gpu", "h100-sxm", "--ctx", "32768")
    rec = cli(*args, "--json").json()
    assert not rec["fits"] and rec["max_num_seqs_over_state_blocks"]
    assert rec["kv_needed_bytes"] <= rec["kv_cache_bytes_per_gpu"]
    table = cli(*args)
    assert table.code == 1
    assert "does not fit: max_num_seqs over the state blocks" in table.out
    assert f"exceeds available Mamba cache blocks ({rec['num_blocks']})" in table.out.replace("\n", " ")

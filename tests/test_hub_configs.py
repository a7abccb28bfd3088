"""Real config.json files (tests/fixtures/hf_configs, each with its source) mapped into
profiles: at least one per supported architecture, checked against the shipped
profile of the same model (identical KV bytes, parameter count within 1%) or, where
capcalc's schema cannot express the layout exactly, against a count itemised here
from the architecture's module structure."""

from __future__ import annotations

import json

import pytest
from conftest import FIXTURES, real_config
from hypothesis import given
from hypothesis import strategies as st

from capcalc.core.errors import CapcalcError
from capcalc.model.kv import kv_bytes_per_sequence, kv_bytes_per_token_per_layer
from capcalc.model.params import count_params
from capcalc.schema.profiles import ModelProfile
from capcalc.sources.hfconfig import (
    SUPPORTED,
    model_type_of,
    pixtral_vision_params,
    profile_mapping,
    siglip_vision_params,
)
from capcalc.sources.loader import model_from_dict

STEMS = sorted(p.stem for p in FIXTURES.glob("*.json"))


def mapped(config: dict, name: str = "m") -> ModelProfile:
    data, _ = profile_mapping(config, name=name, source="test", where="config.json")
    return model_from_dict(data, "config.json")


def fixture(stem: str) -> ModelProfile:
    return mapped(real_config(stem), stem.lower().replace("_", "-"))


#: fixture -> the shipped profile of the same model
SHIPPED = {
    "pandyamarut__Meta-Llama-3-8B": "llama-3-8b",
    "NbAiLab__nb-llama-3.1-8B": "llama-3.1-8b",
    "Emm9625__Llama-3.2-1B-chatml": "llama-3.2-1b",
    "mickume__alt_pantheon_mistral_7b": "mistral-7b-v0.1",
    "mistralai__Mistral-7B-Instruct-v0.3": "mistral-7b-v0.3",
    "avemio__GRAG-NEMO-12B-CPT-HESSIAN-AI": "mistral-nemo-12b",
    "mistralai__Mixtral-8x7B-Instruct-v0.1": "mixtral-8x7b",
    "mistral-community__Mixtral-8x22B-v0.1": "mixtral-8x22b",
    "Qwen__Qwen2.5-7B": "qwen2.5-7b",
    "Qwen__Qwen2.5-32B": "qwen2.5-32b",
    "Qwen__Qwen3-8B": "qwen3-8b",
    "Qwen__Qwen3-32B": "qwen3-32b",
    "Qwen__Qwen3-30B-A3B": "qwen3-30b-a3b",
    "google__gemma-2-9b-it": "gemma-2-9b",
    "mlx-community__gemma-3-4b-it-bf16": "gemma-3-4b",
    "microsoft__Phi-3-mini-4k-instruct": "phi-3-mini",
    "deepseek-ai__DeepSeek-R1": "deepseek-v3",
    "openai-community__gpt2": "gpt2",
    "tiiuae__falcon-7b-instruct": "falcon-7b",
    "openai__gpt-oss-20b": "gpt-oss-20b",
    "MiniMaxAI__MiniMax-M2.5": "minimax-m2",
    "zai-org__GLM-4.6": "glm-4.6",
    "zai-org__GLM-5.1": "glm-5",
    "moonshotai__Kimi-K2-Instruct": "kimi-k2",
    "mistralai__Mistral-Small-3.2-24B-Instruct-2506": "mistral-small-3.1-24b",
    "google__gemma-3n-E4B-it": "gemma-3n-e4b",
    "meta-llama__Llama-3.2-11B-Vision-Instruct": "llama-3.2-11b-vision",
    "tiiuae__Falcon-H1-7B-Instruct": "falcon-h1-7b-instruct",
}

#: the architectures the issue lists, by model_type
LISTED = {
    "llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "gemma2", "gemma3", "phi3",
    "deepseek_v2", "deepseek_v3", "gpt2", "opt", "falcon", "gpt_oss", "cohere",
    "glm4_moe", "minimax_m2", "mistral3", "glm_moe_dsa",
}  # fmt: skip


def test_every_fixture_records_its_source():
    for stem in STEMS:
        source = json.loads((FIXTURES / f"{stem}.json").read_text()).get("_capcalc_source", "")
        assert source.startswith("https://"), stem  # a page a reader can open


@pytest.mark.parametrize("stem", STEMS)
def test_every_real_config_maps_to_a_valid_profile(stem):
    profile = fixture(stem)
    assert count_params(profile).total > 0


def test_every_listed_architecture_has_a_real_config():
    types = {model_type_of(real_config(stem), stem) for stem in STEMS}
    assert LISTED <= types <= set(SUPPORTED)


@pytest.mark.parametrize("stem, name", sorted(SHIPPED.items()))
def test_matches_the_shipped_profile(stem, name, registry):
    got, want = fixture(stem), registry.model(name)
    for dtype in ("bf16", "fp8"):
        assert kv_bytes_per_token_per_layer(got, dtype) == kv_bytes_per_token_per_layer(want, dtype)
        # windows and layer layout too: the whole sequence at short and long contexts
        for ctx in (1, 4096, 200_000):
            assert kv_bytes_per_sequence(got, ctx, dtype) == kv_bytes_per_sequence(want, ctx, dtype)
    computed, shipped = count_params(got).total, count_params(want).total
    assert abs(computed - shipped) <= 0.01 * shipped
    assert count_params(got).active == pytest.approx(count_params(want).active, rel=0.01)


# --------------------------------------------------------------------------- layouts the schema cannot express exactly


def test_opt_125m_against_its_module_structure():
    """OPTForCausalLM (facebook/opt-125m): embed_tokens 50272 x 768, embed_positions
    (2048 + 2) x 768 (offset 2), per layer q/k/v/out_proj 768 x 768 + bias, fc1 768 x 3072
    + bias, fc2 3072 x 768 + bias, two LayerNorms (weight + bias), final LayerNorm; LM
    head tied: 125,239,296 parameters (the model's name says 125M)."""
    h, f, v, layers = 768, 3072, 50272, 12
    per_layer = 4 * (h * h + h) + (h * f + f) + (f * h + h) + 2 * 2 * h
    exact = v * h + (2048 + 2) * h + layers * per_layer + 2 * h  # 125,239,296
    computed = count_params(fixture("facebook__opt-125m")).total
    assert exact - computed == 2 * h  # the two offset rows of the position table
    assert abs(computed - exact) <= 0.01 * exact


def test_opt_with_an_embedding_projection_is_refused():
    config = {**real_config("facebook__opt-125m"), "hidden_size": 1024, "word_embed_proj_dim": 512}
    with pytest.raises(CapcalcError, match="word_embed_proj_dim 512 != hidden_size 1024"):
        mapped(config)


def test_falcon_7b_multi_query_parallel_block():
    """tiiuae/falcon-7b-instruct: multi_query (1 KV head although num_kv_heads says 71),
    fused query_key_value 4544 x (71 + 2) x 64, dense 4544 x 4544, MLP 4544 x 18176 twice,
    one LayerNorm per layer (parallel_attn), no biases, tied LM head."""
    p = fixture("tiiuae__falcon-7b-instruct")
    assert (p.num_kv_heads, p.norms_per_layer, p.mlp, p.norm) == (1, 1, "plain", "layernorm")
    h, layers, v = 4544, 32, 65024
    per_layer = h * (71 + 2) * 64 + h * h + 2 * h * 4 * h + 2 * h
    assert count_params(p).total == v * h + layers * per_layer + 2 * h  # 6,921,720,704
    assert kv_bytes_per_token_per_layer(p, "bf16") * p.num_layers == 2 * 32 * 1 * 64 * 2


def test_falcon_40b_new_decoder_architecture():
    """tiiuae/falcon-40b-instruct: new_decoder_architecture, 8 KV groups, ln_attn + ln_mlp."""
    p = fixture("tiiuae__falcon-40b-instruct")
    assert (p.num_kv_heads, p.norms_per_layer, p.head_dim) == (8, 2, 64)
    h, layers, v = 8192, 60, 65024
    per_layer = h * (128 + 2 * 8) * 64 + h * h + 2 * h * 4 * h + 2 * 2 * h
    assert count_params(p).total == v * h + layers * per_layer + 2 * h


def test_cohere_parallel_block_and_bias_free_layernorm():
    """CohereForCausalLM: per layer q/k/v/o, SwiGLU gate/up/down, ONE LayerNorm without
    bias (weight only) feeding both branches; final norm weight only; tied LM head."""
    cfg = real_config("mlc-ai__mlc-llm-cohere-example")
    p = mapped(cfg)
    h, f, v, layers, heads, kv = 4096, 14336, 256000, 32, 32, 8
    d = h // heads
    per_layer = h * heads * d + 2 * h * kv * d + heads * d * h + 3 * h * f + h
    exact = v * h + layers * per_layer + h
    assert count_params(p).total == exact
    assert "LayerNorm" in p.notes and p.norms_per_layer == 1


def test_cohere_qk_norm_within_one_percent():
    """use_qk_norm: CohereLayerNorm weights of (heads, head_dim) for q and (kv_heads, head_dim)
    for k; the profile counts 2 x head_dim per layer."""
    cfg = {**real_config("mlc-ai__mlc-llm-cohere-example"), "use_qk_norm": True}
    p = mapped(cfg)
    without = count_params(mapped(real_config("mlc-ai__mlc-llm-cohere-example"))).total
    exact = without + 32 * (32 + 8) * 128
    assert abs(count_params(p).total - exact) <= 0.01 * exact
    assert "use_qk_norm" in p.notes


def test_deepseek_v25_against_the_paper():
    """DeepSeek-V2 (arXiv:2405.04434, abstract): '236B total parameters, of which 21B are
    activated for each token'; V2.5 keeps the architecture."""
    p = fixture("deepseek-ai__DeepSeek-V2.5")
    params = count_params(p)
    assert params.total == pytest.approx(236e9, rel=0.01)
    assert params.active == pytest.approx(21e9, rel=0.05)
    # MLA: one latent of kv_lora_rank + qk_rope_head_dim per layer, no factor 2
    assert kv_bytes_per_token_per_layer(p, "bf16") == (512 + 64) * 2
    assert (p.moe.num_shared_experts, p.moe.first_dense_layers, p.moe.router_bias) == (2, 1, False)


def test_deepseek_r1_fp8_and_noaux_router_bias():
    p = fixture("deepseek-ai__DeepSeek-R1")
    assert p.native_dtype == "fp8"
    assert p.moe.router_bias and p.mla.q_lora_rank == 1536
    assert "multi-token-prediction" in p.notes


def test_qwen2_57b_a14b_shared_expert():
    """Qwen/Qwen2-57B-A14B: the name gives 57B total and 14B activated (rounded)."""
    p = fixture("Qwen__Qwen2-57B-A14B")
    params = count_params(p)
    assert round(params.total / 1e9) == 57 and round(params.active / 1e9) == 14
    assert (p.moe.num_shared_experts, p.moe.shared_expert_intermediate_size) == (1, 20480)
    assert p.attention_bias and not p.attention_output_bias


# --------------------------------------------------------------------------- mapping rules


def test_explicit_head_dim_wins():
    nemo = fixture("avemio__GRAG-NEMO-12B-CPT-HESSIAN-AI")
    assert nemo.hidden_size // nemo.num_attention_heads == 160 and nemo.head_dim == 128
    gemma = fixture("google__gemma-2-9b-it")
    assert gemma.head_dim == 256 != gemma.hidden_size // gemma.num_attention_heads


def test_gemma3_text_config_nested_with_class_defaults():
    """mlx-community/gemma-3-4b-it-bf16 leaves heads, head_dim and vocab at the
    Gemma3TextConfig defaults (8 / 4 / 256 / 262208) and nests them under text_config."""
    p = fixture("mlx-community__gemma-3-4b-it-bf16")
    assert (p.num_attention_heads, p.num_kv_heads, p.head_dim, p.vocab_size) == (8, 4, 256, 262208)
    assert (p.num_sliding_layers, p.num_full_layers, p.sliding_window) == (29, 5, 1024)
    assert p.layer_types[:6] == ("sliding",) * 5 + ("full",)
    # SigLIP 1152 wide, 4304 MLP, 27 layers, 896/14 patches, plus the 1152 x 2560 projector and its norm
    assert p.extra_params.count == 416_866_032 + 1152 * 2560 + 1152


def test_siglip_count_by_hand():
    d, f, layers, patch, image = 1152, 4304, 27, 14, 896
    tower = 3 * patch * patch * d + d + (image // patch) ** 2 * d
    tower += layers * (4 * (d * d + d) + 2 * d * f + f + d + 4 * d) + 2 * d
    vision = dict(
        hidden_size=d, intermediate_size=f, num_hidden_layers=layers, patch_size=patch, image_size=image
    )
    # tower = 416,866,032: the Gemma 3 report's Table 1 gives "417M" for the vision encoder
    assert siglip_vision_params(vision, 2560) == tower + d * 2560 + d


@pytest.mark.parametrize(
    "stem, sliding, full, window",
    [
        ("openai__gpt-oss-20b", 12, 12, 128),  # layer_types alternate from layer 0
        ("google__gemma-2-9b-it", 21, 21, 4096),  # every other layer from layer 0
        ("microsoft__Phi-3-mini-4k-instruct", 32, 0, 2047),  # one window for every layer
        ("mickume__alt_pantheon_mistral_7b", 32, 0, 4096),
        ("mistralai__Mistral-7B-Instruct-v0.3", 0, 32, None),  # sliding_window null
        ("Qwen__Qwen2.5-7B", 0, 28, None),  # use_sliding_window false
    ],
)
def test_layer_layout(stem, sliding, full, window):
    p = fixture(stem)
    assert (p.num_sliding_layers, p.num_full_layers, p.sliding_window) == (sliding, full, window)


def test_layer_types_listed_in_the_config_win():
    config = {**real_config("Qwen__Qwen3-8B"), "sliding_window": 4096}
    config["layer_types"] = ["full_attention"] * 30 + ["sliding_attention"] * 6
    p = mapped(config)
    assert p.layer_types == ("full",) * 30 + ("sliding",) * 6
    config["layer_types"] = ["linear_attention"] * 36
    with pytest.raises(CapcalcError, match="capcalc cannot model \\['linear_attention'\\]"):
        mapped(config)


@pytest.mark.parametrize(
    "quantization, dtype",
    [
        ({"quant_method": "awq", "bits": 4, "group_size": 128}, "int4"),
        ({"quant_method": "gptq", "bits": 8, "group_size": 128}, "int8"),
        ({"quant_method": "fp8", "fmt": "e4m3"}, "fp8"),
        ({"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}, "int4"),
        ({"quant_method": "bitsandbytes", "load_in_8bit": True}, "int8"),
        ({"quant_method": "mxfp4"}, "mxfp4"),
        (
            {
                "quant_method": "compressed-tensors",
                "config_groups": {"g": {"weights": {"num_bits": 8, "type": "float"}}},
            },
            "fp8",
        ),
    ],
)
def test_quantization_sets_the_weight_dtype(quantization, dtype):
    config = {**real_config("pandyamarut__Meta-Llama-3-8B"), "quantization_config": quantization}
    assert mapped(config).native_dtype == dtype


def test_unknown_quantization_is_an_error():
    config = {**real_config("pandyamarut__Meta-Llama-3-8B"), "quantization_config": {"quant_method": "hqq"}}
    with pytest.raises(CapcalcError, match="unknown quantization method 'hqq'; capcalc knows awq, gptq"):
        mapped(config)


def test_interleaved_dense_layers_are_refused_and_leading_ones_kept():
    config = {**real_config("Qwen__Qwen3-30B-A3B"), "mlp_only_layers": [0, 1]}
    assert mapped(config).moe.first_dense_layers == 2
    config["mlp_only_layers"] = [5]
    with pytest.raises(CapcalcError, match="interleaved with MoE layers"):
        mapped(config)


@given(
    layers=st.integers(1, 96),
    kv_heads=st.sampled_from([1, 2, 4, 8]),
    group=st.integers(1, 8),
    head_dim=st.sampled_from([64, 80, 96, 128, 256]),
    explicit=st.booleans(),
)
def test_llama_like_kv_bytes_follow_the_config(layers, kv_heads, group, head_dim, explicit):
    """KV bytes/token = 2 x layers x kv_heads x head_dim x 2 (bf16) for any Llama-style config;
    an explicit head_dim is used even when it differs from hidden/heads."""
    heads = kv_heads * group
    hidden = heads * head_dim + (64 if explicit else 0)
    config = dict(
        model_type="llama",
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        intermediate_size=4 * hidden,
        vocab_size=1000,
        max_position_embeddings=4096,
        torch_dtype="bfloat16",
    )
    if explicit:
        config["head_dim"] = head_dim
    p = mapped(config)
    assert p.head_dim == head_dim
    assert kv_bytes_per_token_per_layer(p, "bf16") * p.num_layers == 2 * layers * kv_heads * head_dim * 2


# --------------------------------------------------------------------------- 2025-26 architectures (issue 12)


def _per_8k(p: ModelProfile, dtype: str = "bf16") -> float:
    return kv_bytes_per_sequence(p, 8192, dtype)


def test_glm46_shared_expert_leading_dense_layers_and_mtp():
    """zai-org/GLM-4.6 (Glm4MoeForCausalLM), counted by hand from its modules:
    attention per layer: q 5120 x 12288 + k, v 5120 x 1024 each + o 12288 x 5120, biases on
    q, k, v (12288 + 2 x 1024), per-head q_norm/k_norm (2 x 128), two RMSNorms (2 x 5120);
    layers 0-2 dense SwiGLU 3 x 5120 x 12288; layers 3-91 MoE: 160 experts + 1 shared of
    3 x 5120 x 1536, router 160 x 5120 + e_score_correction_bias 160; embedding and LM head
    151552 x 5120 each; final norm 5120. The MTP layer 92 (one MoE layer + enorm, hnorm,
    shared_head.norm + eh_proj 10240 x 5120) is extra_params."""
    p = fixture("zai-org__GLM-4.6")
    h, v = 5120, 151552
    attention = h * 12288 + 2 * h * 1024 + 12288 * h + 12288 + 2 * 1024 + 2 * 128 + 2 * h
    dense = attention + 3 * h * 12288
    moe = attention + 161 * 3 * h * 1536 + 160 * h + 160
    main = 3 * dense + 89 * moe + 2 * v * h + h
    assert main == 352_797_829_024
    assert p.extra_params.count == moe + 3 * h + 2 * h * h == 3_988_069_792
    assert count_params(p).total == main + p.extra_params.count
    # GLM-5 README: "GLM-4.5's 355B parameters (32B active)"; GLM-4.6 keeps the architecture
    assert count_params(p).total == pytest.approx(355e9, rel=0.01)
    assert count_params(p).active == pytest.approx(32e9, rel=0.06)
    assert (p.moe.first_dense_layers, p.moe.num_shared_experts, p.moe.router_bias) == (3, 1, True)
    assert p.attention_bias and not p.attention_output_bias and p.qk_norm
    # KV: 2 (K, V) x 92 layers x 8 KV heads x 128 x 2 bytes; partial_rotary_factor 0.5 changes nothing
    assert kv_bytes_per_token_per_layer(p, "bf16") * p.num_layers == 2 * 92 * 8 * 128 * 2 == 376_832
    assert _per_8k(p) == 8192 * 376_832 == 3_087_007_744


def test_minimax_m25_full_attention_moe():
    """MiniMaxAI/MiniMax-M2.5 (MiniMaxM2ForCausalLM): per layer q 3072 x 6144, k, v 3072 x 1024,
    o 6144 x 3072, no biases; 256 experts of 3 x 3072 x 1536, router 256 x 3072 + bias 256;
    two RMSNorms, qk-norm counted as 2 x 128 (the real per_layer norms hold 6144 + 1024);
    embedding and LM head 200064 x 3072; final norm."""
    p = fixture("MiniMaxAI__MiniMax-M2.5")
    h, v = 3072, 200064
    layer = h * 6144 + 2 * h * 1024 + 6144 * h + 256 * 3 * h * 1536 + 256 * h + 256 + 2 * h + 2 * 128
    assert count_params(p).total == 62 * layer + 2 * v * h + h == 228_689_336_320
    # transformers docs: "230 billion total parameters with 10 billion active"
    assert round(count_params(p).total / 10e9) == 23
    assert (p.moe.num_experts, p.moe.experts_per_token, p.moe.num_shared_experts) == (256, 8, 0)
    assert kv_bytes_per_token_per_layer(p, "bf16") * p.num_layers == 2 * 62 * 8 * 128 * 2 == 253_952
    assert _per_8k(p) == 8192 * 253_952 == 2_080_374_784
    assert "per_layer" in p.notes


def test_minimax_lightning_attention_layers_are_refused():
    config = real_config("MiniMaxAI__MiniMax-M2.5")
    config["attn_type_list"] = [0] * 7 + [1] + [0] * 54
    with pytest.raises(
        CapcalcError, match="lightning \\(linear\\) attention .* no linear-attention layer kind"
    ):
        mapped(config)
    config = {**real_config("MiniMaxAI__MiniMax-M2.5"), "layer_types": ["linear_attention"] * 62}
    del config["attn_type_list"]
    with pytest.raises(CapcalcError, match="no linear-attention layer kind"):
        mapped(config)


def test_mistral3_unwraps_text_config_and_counts_the_pixtral_tower():
    """Mistral-Small-3.x-24B (Mistral3ForConditionalGeneration). Text: 40 layers of q 5120 x 4096,
    k, v 5120 x 1024, o 4096 x 5120, SwiGLU 3 x 5120 x 32768, two RMSNorms; embedding and LM
    head 131072 x 5120; final norm. Pixtral: conv 3 x 14^2 x 1024 (no bias), ln_pre 1024,
    24 layers of 4 x 1024^2 attention + 3 x 1024 x 4096 SwiGLU + 2 x 1024 norms; projector:
    RMSNorm 1024, patch merger 4096 x 1024, linear_1 1024 x 5120, linear_2 5120 x 5120."""
    p = fixture("mistralai__Mistral-Small-3.2-24B-Instruct-2506")
    text = 40 * (5120 * 4096 + 2 * 5120 * 1024 + 4096 * 5120 + 3 * 5120 * 32768 + 2 * 5120)
    text += 2 * 131072 * 5120 + 5120
    tower = 3 * 14 * 14 * 1024 + 1024 + 24 * (4 * 1024 * 1024 + 3 * 1024 * 4096 + 2 * 1024)
    projector = 1024 + 4 * 1024 * 1024 + 1024 * 5120 + 5120 * 5120
    assert p.extra_params.count == tower + projector == 438_958_080
    assert count_params(p).total == text + tower + projector == 24_011_361_280  # "24B"
    assert p.sliding_window is None and p.native_dtype == "bf16"
    assert kv_bytes_per_token_per_layer(p, "bf16") * p.num_layers == 2 * 40 * 8 * 128 * 2 == 163_840
    assert _per_8k(p) == 1_342_177_280
    vision = real_config("mistralai__Mistral-Small-3.2-24B-Instruct-2506")["vision_config"]
    assert pixtral_vision_params(vision, 5120, 2, True, 1) == tower + projector + 2 * 5120


def test_kimi_k2_maps_through_its_architectures_class():
    """model_type kimi_k2 is unknown to capcalc; architectures names DeepseekV3ForCausalLM, so
    the DeepSeek-V3 mapping applies, with a note. MLA per layer: q_a 7168 x 1536 + q_b 1536 x
    64 x 192, kv_a 7168 x 576, kv_b 512 x 64 x 256, o 64 x 128 x 7168, norms 1536 + 512 + 2 x 7168;
    layer 0 dense 3 x 7168 x 18432; 60 MoE layers of 385 x 3 x 7168 x 2048 (384 routed + 1 shared)
    + router 384 x 7168 + 384; embedding and head 163840 x 7168; final norm."""
    config = real_config("moonshotai__Kimi-K2-Instruct")
    assert model_type_of(config, "config.json") == "deepseek_v3"
    p = mapped(config)
    assert "'kimi_k2' is not one capcalc maps" in p.notes
    h = 7168
    attention = h * 1536 + 1536 * 64 * 192 + h * 576 + 512 * 64 * 256 + 64 * 128 * h
    norms = 1536 + 512 + 2 * h
    dense = attention + norms + 3 * h * 18432
    moe = attention + norms + 385 * 3 * h * 2048 + 384 * h + 384
    assert count_params(p).total == dense + 60 * moe + 2 * 163840 * h + h == 1_026_408_232_448
    assert count_params(p).active == pytest.approx(32e9, rel=0.03)  # README: 1T total, 32B activated
    assert kv_bytes_per_token_per_layer(p, "bf16") * p.num_layers == 61 * (512 + 64) * 2 == 70_272
    assert _per_8k(p) == 8192 * 70_272 == 575_668_224


def test_glm5_mla_with_the_indexer_counted_and_the_kv_bound_stated():
    """zai-org/GLM-5.1 (GlmMoeDsaForCausalLM): the computed main model plus the indexers
    (78 x [32 x 128 x 2048 + 128 x 6144 + 2 x 128 + 32 x 6144]) plus the MTP layer equal the
    checkpoint's own count, 753,864,139,008 (its model report in the fixture's source)."""
    p = fixture("zai-org__GLM-5.1")
    indexer = 32 * 128 * 2048 + 128 * 6144 + 2 * 128 + 32 * 6144
    assert p.extra_params.count == 78 * indexer == 731_008_512
    h = 6144
    attention = h * 2048 + 2048 * 64 * 256 + h * 576 + 512 * 64 * (192 + 256) + 64 * 256 * h
    moe_layer = attention + 2048 + 512 + 2 * h + 257 * 3 * h * 2048 + 256 * h + 256
    mtp = moe_layer + indexer + 3 * h + 2 * h * h
    assert count_params(p).total + mtp == 753_864_139_008
    assert count_params(p).total == pytest.approx(744e9, rel=0.001)  # GLM-5 README: 744B
    # the latent only: (512 + 64) x 2 bytes x 78 layers; the notes give the indexer's share
    assert kv_bytes_per_token_per_layer(p, "bf16") * p.num_layers == 78 * 576 * 2 == 89_856
    assert _per_8k(p) == 8192 * 89_856 == 736_100_352
    assert "1.11x capcalc's at bf16" in p.notes and "1.37x at fp8" in p.notes


def test_glm5_shared_indexers_are_refused():
    config = {**real_config("zai-org__GLM-5.1"), "indexer_types": ["full"] * 3 + ["shared"] * 75}
    with pytest.raises(CapcalcError, match="IndexShare"):
        mapped(config)


def test_an_unknown_architecture_points_to_hand_written_profiles():
    config = {"model_type": "mamba", "architectures": ["MambaForCausalLM"], "hidden_size": 8}
    with pytest.raises(CapcalcError, match="docs/profiles.md\\) and pass its directory with --profiles DIR"):
        mapped(config)


def test_modelopt_nvfp4_sets_the_weight_dtype():
    quantization = {"quant_method": "modelopt", "quant_algo": "NVFP4", "group_size": 16}
    config = {**real_config("Qwen__Qwen3-32B"), "quantization_config": quantization}
    assert mapped(config).native_dtype == "nvfp4"


# --------------------------------------------------------------------------- gemma-3n: KV shared across layers


def test_gemma3n_e4b_kv_sharing_by_hand():
    # google/gemma-3n-E4B (fixture; source there): 35 layers, (4 sliding + 1 full) x 7, the last
    # 15 reuse the KV of layer 18 (sliding) or 19 (full) and cache nothing
    m = fixture("google__gemma-3n-E4B-it")
    assert m.layer_types[:20] == ("sliding",) * 4 + ("full",) + ("sliding",) * 4 + ("full",) + (
        "sliding",
    ) * 4 + ("full",) + ("sliding",) * 4 + ("full",)
    assert m.layer_types[20:].count("shared_sliding") == 12 and m.layer_types[20:].count("shared_full") == 3
    # one token of one caching layer in bf16: 2 (K and V) x 2 KV heads x 256 x 2 bytes = 2,048
    assert kv_bytes_per_token_per_layer(m, "bf16") == 2048
    # 20 caching layers (16 sliding, 4 full): 40,960 bytes per token within the window
    from capcalc.model.kv import kv_bytes_per_token

    assert kv_bytes_per_token(m, "bf16") == 20 * 2048 == 40_960
    # an 8k sequence: 4 full layers x 8192 tokens + 16 sliding x 512 tokens, x 2,048 bytes
    assert kv_bytes_per_sequence(m, 8192, "bf16") == (4 * 8192 + 16 * 512) * 2048 == 83_886_080
    # without sharing it would be 7 full + 28 sliding: 146,800,640 bytes
    assert (7 * 8192 + 28 * 512) * 2048 == 146_800_640


def test_gemma3n_e4b_parameters_by_hand():
    m = fixture("google__gemma-3n-E4B-it")
    h, layers, p, n, r = 2048, 35, 256, 4, 64
    # a Gemma 3 decoder layer: q 2048 x 2048, k and v 2048 x 512, o 2048 x 2048, gated MLP
    # 3 x 2048 x 16384, 4 RMSNorms of 2048, q_norm and k_norm of 256 (v_norm has no scale)
    layer = 2 * 2048 * 2048 + 2 * 2048 * 512 + 3 * 2048 * 16384 + 4 * 2048 + 2 * 256
    decoder = 262_400 * 2048 + layers * layer + 2048  # tied embedding, final norm
    assert decoder == 4_427_918_848
    # per-layer embeddings 262,144 x 35 x 256, their projection 2048 x 8960 and norm, AltUp's 2 x 3
    # projections of 2048^2; per layer LAuReL (2 x 2048 x 64 + norm), AltUp (2 x 2048 + 16 + 64 +
    # 2048 x 4), per-layer input gate and projection (2 x 2048 x 256 + norm)
    extra = 262_144 * layers * p + h * layers * p + p + 2 * (n - 1) * h * h
    extra += layers * ((2 * h * r + h) + (2 * h + n * n + n**3 + h * n) + (2 * h * p + h))
    assert extra == 2_438_777_840
    counted = count_params(m)
    assert counted.extra == extra and counted.total == decoder + extra == 6_866_696_688
    # LM Studio lists the text-only gemma-3n-E4B as 6.9B parameters; Google's "8B raw" adds the
    # ~0.3B MobileNet-v5 vision and ~0.7B audio encoders, not counted here
    assert round(counted.total / 1e9, 1) == 6.9


def test_gemma3n_fit_gives_shared_layers_no_blocks(registry):
    from capcalc.serving.fit import FitRequest, fit, kv_cache_groups

    m = fixture("google__gemma-3n-E4B-it")
    groups = kv_cache_groups(m)
    # 16 sliding and 4 full caching layers: 16 >= 1.5 x 4, so groups of 4: one full, four sliding
    assert sorted((g.kind, len(g.layers)) for g in groups) == [("full", 4)] + [("sliding", 4)] * 4
    assert all(i < 20 for g in groups for i in g.layers)
    r = fit(m, FitRequest(24 * 2**30, "flag", max_model_len=32_768))
    # a request at 32,768 tokens: 2,048 blocks in the full group, cdiv(511 + 2048, 16) + 1 = 161 in
    # each sliding one (max_num_batched_tokens 2048 below 70 GiB)
    assert r.blocks_per_request == 2048 + 4 * 161
    assert r.layers_per_group == 4 and r.kv_cache_groups == 5


def test_gemma3n_mixed_mlp_widths_are_refused():
    config = real_config("google__gemma-3n-E4B-it")
    config["text_config"]["intermediate_size"] = [16384] * 20 + [8192] * 15
    with pytest.raises(CapcalcError, match="intermediate_size varies by layer"):
        mapped(config)


# --------------------------------------------------------------------------- mllama: cross-attention KV per image token


def test_llama32_vision_cross_attention_kv_by_hand():
    # meta-llama/Llama-3.2-11B-Vision-Instruct (fixture; source there): 40 layers, the 8 at
    # 3, 8, ..., 38 cross-attention; 8 KV heads of 128
    m = fixture("meta-llama__Llama-3.2-11B-Vision-Instruct")
    assert [i for i, t in enumerate(m.layer_types) if t == "cross"] == [3, 8, 13, 18, 23, 28, 33, 38]
    from capcalc.model.kv import kv_bytes_per_token, kv_cache

    # a text token: 32 self-attention layers x 2 x 8 x 128 x 2 bytes = 131,072 (the cross layers add none)
    assert kv_bytes_per_token(m, "bf16") == 32 * 2 * 8 * 128 * 2 == 131_072
    assert kv_bytes_per_sequence(m, 8192, "bf16") == 8192 * 131_072 == 1_073_741_824
    # one 560 px image of 4 tiles: 4 x ((560 / 14)^2 + 1) = 6,404 image tokens, held by each of the
    # 8 cross layers at 4,096 bytes, whatever the text length
    image = 4 * ((560 // 14) ** 2 + 1)
    assert image == 6404
    r = kv_cache(m, 8192, image_tokens=image)
    assert r.kv_bytes_per_sequence == 1_073_741_824 + 8 * image * 4096 == 1_283_588_096
    assert kv_cache(m, 100, image_tokens=image).kv_bytes_per_sequence - kv_cache(
        m, 100
    ).kv_bytes_per_sequence == (8 * image * 4096)


def test_llama32_vision_parameters_by_hand():
    m = fixture("meta-llama__Llama-3.2-11B-Vision-Instruct")
    h = 4096
    layer = 2 * h * h + 2 * h * 1024 + 3 * h * 14336 + 2 * h  # q, o; k, v; MLP; 2 RMSNorms
    text = (128_256 + 8) * h + 128_256 * h + 40 * layer + 8 * (2 * 128 + 2) + h  # + cross q/k norms, gates
    d, f, n = 1280, 5120, 40 * 40 + 1  # vision width, MLP, patches + class token
    enc = 4 * d * d + (d * f + f) + (f * d + d) + 4 * d
    vision = (
        3 * 14 * 14 * d + d  # patch conv, class embedding
        + 1 + n * d + 9 * 4 * n * d  # gated positions, tile positions (8 aspect ratios + 1, 4 tiles)
        + 2 * (9 * 4 * d + 1)  # pre- and post-tile aspect embeddings
        + 4 * d  # layernorm_pre, layernorm_post
        + 32 * enc + 8 * (enc + 2)  # local and gated global layers
        + 7680 * h + h  # multi_modal_projector
    )  # fmt: skip
    assert vision == 895_028_755
    assert count_params(m).total == text + vision == 10_670_220_835
    # Meta's model card: "11B (10.6B)" parameters
    assert abs(count_params(m).total / 10.6e9 - 1) < 0.01


def test_llama32_vision_fit_reserves_the_encoder_budget():
    from capcalc.serving.fit import FitRequest, fit, kv_cache_groups

    m = fixture("meta-llama__Llama-3.2-11B-Vision-Instruct")
    # 32 full and 8 cross layers: 32 >= 1.5 x 8, groups of 8: four full, one cross
    assert sorted((g.kind, len(g.layers)) for g in kv_cache_groups(m)) == [("cross", 8)] + [("full", 8)] * 4
    r = fit(m, FitRequest(80 * 2**30, "flag", max_model_len=8192))
    # vLLM's CrossAttentionSpec: cdiv(max_num_encoder_input_tokens = max_num_batched_tokens 8192, 16)
    assert r.blocks_per_request == 4 * 512 + 512 and r.image_tokens == 8192
    r = fit(m, FitRequest(80 * 2**30, "flag", max_model_len=8192, image_tokens=6404))
    assert r.blocks_per_request == 4 * 512 + 401  # cdiv(6404, 16)
    assert r.kv_bytes_per_token_per_gpu == 131_072 and r.cross_attention_layers == 8


def test_gemma3n_decode_reads_the_shared_cache_and_writes_only_its_own():
    from capcalc.model.flops import decode_cost

    m = fixture("google__gemma-3n-E4B-it")
    step = decode_cost(m, 1, 8192)
    # every full layer, shared or not, reads 8,192 tokens and every sliding one 512, x 2,048 bytes:
    # (4 + 3) full and (16 + 12) sliding layers
    assert step.component("kv_read").bytes == ((4 + 3) * 8192 + (16 + 12) * 512) * 2048
    # only the 20 caching layers write the new token's KV
    assert step.component("kv_write").bytes == 20 * 2048

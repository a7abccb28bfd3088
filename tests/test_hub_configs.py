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
from capcalc.sources.hfconfig import SUPPORTED, profile_mapping, siglip_vision_params
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
}

#: the architectures the issue lists, by model_type
LISTED = {
    "llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "gemma2", "gemma3", "phi3",
    "deepseek_v2", "deepseek_v3", "gpt2", "opt", "falcon", "gpt_oss", "cohere",
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
    types = {real_config(stem)["model_type"] for stem in STEMS}
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

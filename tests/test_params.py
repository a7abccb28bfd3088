"""Parameter counts computed from the architecture, checked against official figures."""

from __future__ import annotations

import pytest
from conftest import SHIPPED

from capcalc.model.params import count_params
from capcalc.model.weights import bits_per_weight, weight_bytes

EXACT = sorted(
    n for n, m in SHIPPED.models.items() if m.params_official and m.params_official_kind == "exact"
)


def test_gpt2_by_hand(registry):
    # wte 50257x768 + wpe 1024x768 + 12 x (c_attn 768x2304+2304, c_proj 768x768+768,
    # 2 layernorms 2x(768+768), c_fc 768x3072+3072, c_proj 3072x768+768) + ln_f 768+768
    # = 38,597,376 + 786,432 + 12 x 7,087,872 + 1,536 = 124,439,808, the count transformers'
    # GPT2LMHeadModel reports for openai-community/gpt2 (nanoGPT's 124M)
    per_layer = (768 * 2304 + 2304) + (768 * 768 + 768) + 2 * 1536 + (768 * 3072 + 3072) + (3072 * 768 + 768)
    assert count_params(registry.model("gpt2")).total == 50257 * 768 + 1024 * 768 + 12 * per_layer + 1536


def test_llama3_8b_by_hand(registry):
    # embed + head (untied) 2 x 128256 x 4096; per layer q,o 4096x4096, k,v 4096x1024,
    # MLP 3 x 4096 x 14336, two RMSNorms; final norm
    # = 1,050,673,152 + 32 x 218,112,000 + 4,096 = 8,030,261,248 (Meta's model card: 8.03B)
    per_layer = 2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336 + 2 * 4096
    assert count_params(registry.model("llama-3-8b")).total == 2 * 128256 * 4096 + 32 * per_layer + 4096


@pytest.mark.parametrize("name", EXACT)
def test_within_one_percent_of_the_official_count(registry, name):
    m = registry.model(name)
    total = count_params(m).total
    assert abs(total - m.params_official) / m.params_official < 0.01, (total, m.params_official)


def test_moe_active_is_less_than_total_and_dense_equal(registry):
    for m in registry.models.values():
        p = count_params(m)
        if m.moe is None:
            assert p.active == p.total - p.extra
        else:
            assert p.active < p.total


def test_mixtral_active_parameters(registry):
    # Mixtral 8x7B: 46.7B total, 12.9B active (Mistral AI announcement)
    p = count_params(registry.model("mixtral-8x7b"))
    assert p.total == pytest.approx(46.7e9, rel=0.01)
    assert p.active == pytest.approx(12.9e9, rel=0.01)


def test_deepseek_v3_active_parameters(registry):
    # DeepSeek-V3 technical report: 671B total, 37B activated per token
    p = count_params(registry.model("deepseek-v3"))
    assert p.total == pytest.approx(671e9, rel=0.01)
    assert p.active == pytest.approx(37e9, rel=0.03)


def test_int4_group128_costs_more_than_four_bits(registry):
    # GPTQ/AWQ-style int4: per group of 128 weights one fp16 scale and one 4-bit zero point
    assert bits_per_weight("int4", 128) == 4 + (16 + 4) / 128  # 4.15625
    m = registry.model("llama-3-8b")
    # Llama-3-8B's matmul weights, by hand: 32 layers x (q, o 4096 x 4096; k, v 4096 x 1024;
    # MLP 3 x 4096 x 14336) = 6,979,321,856 at 4.15625 bits = 3,625,975,808 B; the other
    # 8,030,261,248 - 6,979,321,856 = 1,050,939,392 (embedding, head, norms) at 2 B
    # = 2,101,878,784 B; in all 5,727,854,592 B
    assert weight_bytes(m, "int4", group_size=128).bytes == 5_727_854_592
    assert weight_bytes(m, "bf16").bytes == 2 * 8_030_261_248

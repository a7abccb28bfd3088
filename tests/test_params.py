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
    per_layer = (768 * 2304 + 2304) + (768 * 768 + 768) + 2 * 1536 + (768 * 3072 + 3072) + (3072 * 768 + 768)
    by_hand = 50257 * 768 + 1024 * 768 + 12 * per_layer + 1536
    assert by_hand == 124_439_808
    assert count_params(registry.model("gpt2")).total == by_hand


def test_llama3_8b_by_hand(registry):
    # embed + head (untied) 2 x 128256 x 4096; per layer q,o 4096x4096, k,v 4096x1024,
    # MLP 3 x 4096 x 14336, two RMSNorms; final norm
    per_layer = 2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336 + 2 * 4096
    by_hand = 2 * 128256 * 4096 + 32 * per_layer + 4096
    assert by_hand == 8_030_261_248
    assert count_params(registry.model("llama-3-8b")).total == by_hand


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
    assert bits_per_weight("int4", 128) == 4 + 20 / 128
    m = registry.model("llama-3-8b")
    p = count_params(m)
    w = weight_bytes(m, "int4", group_size=128)
    # linear weights at 4.15625 bits, embeddings and head (and norms) kept at 2 bytes
    assert w.bytes == p.linear * (4 + 20 / 128) / 8 + (p.total - p.linear) * 2
    assert weight_bytes(m, "bf16").bytes == p.total * 2 == 16_060_522_496

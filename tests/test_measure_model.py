"""The torch model `capcalc measure` times computes the real thing: decoding token by token
with the preallocated KV cache gives the same logits as one full-sequence forward pass
(grouped-query attention, RoPE, the cache written in place, the sliding-window ring
buffer, MoE routing through the grouped matmul). Runs on the CPU; on a CUDA machine the
same checks run on the GPU too."""

from __future__ import annotations

import pytest
from conftest import TINY, TINY_MOE, torch_or_skip

from capcalc.core.errors import CapcalcError
from capcalc.measure.memory import estimate_memory, loop_weight_bytes
from capcalc.measure.model import DecoderModel, KVCache, cache_lengths, check_supported

torch = torch_or_skip()
DEVICES = ["cpu"] + (["cuda:0"] if torch.cuda.is_available() else [])
#: relative to the largest logit: fp32 is exact up to summation order; bf16 has 8 bits of mantissa
TOLERANCE = {"fp32": 1e-5, "bf16": 3e-2}


def _decode_matches_full_forward(profile, dtype, device, prompt=20, steps=6, batch=3):
    torch.manual_seed(1)
    with torch.inference_mode():
        model = DecoderModel(profile, dtype, device, max_positions=64)
        tokens = torch.randint(0, profile.vocab_size, (batch, prompt + steps), device=device)
        full = model.prefill(tokens, KVCache(model, batch, prompt + steps), all_logits=True)
        cache = KVCache(model, batch, prompt + steps)  # random contents: every slot used is overwritten
        last = model.prefill(tokens[:, :prompt], cache)
        worst = (last - full[:, prompt - 1]).abs().max() / full[:, prompt - 1].abs().max()
        pos = torch.tensor(prompt, device=device)
        for i in range(steps):
            logits = model.decode(tokens[:, prompt + i : prompt + i + 1], cache, pos)
            expected = full[:, prompt + i]
            worst = max(worst, (logits - expected).abs().max() / expected.abs().max())
            pos += 1
    return float(worst), model


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_decode_with_cache_equals_full_forward_dense(device, dtype):
    worst, _ = _decode_matches_full_forward(TINY, dtype, device)
    assert worst < TOLERANCE[dtype]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_decode_with_cache_equals_full_forward_moe_sliding(device, dtype):
    """The prompt (20) is longer than the window (16): the sliding layers' ring buffer has
    wrapped before decoding starts, and keeps wrapping during it."""
    worst, model = _decode_matches_full_forward(TINY_MOE, dtype, device)
    assert worst < TOLERANCE[dtype]
    assert model.profile.sliding_window < 20


def test_moe_fallback_loop_matches_the_grouped_matmul():
    torch.manual_seed(2)
    with torch.inference_mode():
        model = DecoderModel(TINY_MOE, "fp32", "cpu", max_positions=64)
        x = torch.randn(5, TINY_MOE.hidden_size)
        layer = model.layers[1]  # the first MoE layer (layer 0 is dense)
        model.grouped_mm = True
        grouped = model._moe(x, layer)
        model.grouped_mm = False
        looped = model._moe(x, layer)
    assert torch.allclose(grouped, looped, rtol=1e-5, atol=1e-5)


def test_expert_biases_are_applied_on_both_moe_paths():
    """gpt-oss's experts carry gate_up and down biases: one token routed by hand through its
    top-2 experts, softmax-weighted, equals both paths, and the biases move the output."""
    import dataclasses

    F = torch.nn.functional
    biased = dataclasses.replace(TINY_MOE, moe=dataclasses.replace(TINY_MOE.moe, expert_bias=True))
    torch.manual_seed(3)
    with torch.inference_mode():
        model = DecoderModel(biased, "fp32", "cpu", max_positions=64)
        layer = model.layers[1]
        x = torch.randn(5, biased.hidden_size)
        by_hand = []
        for row in x:
            top, experts = F.linear(row, layer["router"]).topk(2)
            out = model._dense_mlp(row, layer["shared"])
            for w, e in zip(top.softmax(-1), experts.tolist(), strict=True):
                gate, up = F.linear(row, layer["w13"][e], layer["b13"][e]).chunk(2)
                out = out + w * F.linear(F.silu(gate) * up, layer["w2"][e], layer["b2"][e])
            by_hand.append(out)
        by_hand = torch.stack(by_hand)
        results = {}
        for grouped in (True, False):
            model.grouped_mm = grouped
            results[grouped] = model._moe(x, layer)
            assert torch.allclose(results[grouped], by_hand, rtol=1e-5, atol=1e-5), grouped
        layer["b13"].zero_()
        layer["b2"].zero_()
        assert not torch.allclose(model._moe(x, layer), by_hand, rtol=1e-3, atol=1e-3)


def test_allocated_weights_and_cache_match_the_estimates():
    """The pre-check's weight and KV bytes are the bytes the loop really allocates."""
    for profile in (TINY, TINY_MOE):
        model = DecoderModel(profile, "fp32", "cpu", max_positions=64)
        assert model.weight_bytes == loop_weight_bytes(profile, "fp32")
        cache = KVCache(model, 3, 40)
        assert cache.bytes == estimate_memory(profile, "fp32", 3, 40, 1, False).kv_bytes


def test_cache_lengths_cap_sliding_layers_at_the_window():
    assert cache_lengths(TINY_MOE, 100) == [16, 100, 16]
    assert cache_lengths(TINY_MOE, 8) == [8, 8, 8]
    assert cache_lengths(TINY, 100) == [100, 100]


def test_random_cache_is_not_zeros():
    model = DecoderModel(TINY, "fp32", "cpu", max_positions=64)
    cache = KVCache(model, 2, 16)
    assert all(float(t.abs().sum()) > 0 for t in (*cache.k, *cache.v))


def test_unsupported_architectures_are_refused(registry):
    with pytest.raises(CapcalcError, match=r"multi-head latent attention \(MLA\)"):
        check_supported(registry.model("deepseek-v2-lite"), "bf16")
    with pytest.raises(
        CapcalcError, match=r"^weight_dtype int4: the measure loop runs in bf16, fp16, fp32 only"
    ):
        check_supported(TINY, "int4")

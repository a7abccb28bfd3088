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

from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from capcalc.model.layers import (  # noqa: E402
    FullAttentionSpec,
    GatedDeltaNetSpec,
    Mamba2Spec,
    MLAAttentionSpec,
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
    mamba = Mamba2Spec(128, 64, 128, 1, 4)
    # tp 4 does not divide one B/C group: each rank keeps it (n_groups raised to 4)
    assert mamba.state_shapes(4) == (3 * (8192 + 2 * 4 * 128) // 4, 32 * 64 * 128)


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
        GatedDeltaNetSpec(kv, kv * 2, head_dim, head_dim, 4),
        Mamba2Spec(kv * 4, head_dim, 128, 1, 4),
    ]
    per_token = full.cache_bytes_per_token(2.0, tp)
    for spec in others:
        assert spec.tokens_held(ctx) <= full.tokens_held(ctx)
        assert spec.cache_bytes_per_token(2.0, tp) * spec.tokens_held(ctx) <= per_token * ctx
        assert spec.attended_pairs("decode", ctx) <= full.attended_pairs("decode", ctx)
        assert spec.attended_pairs("prefill", ctx) <= full.attended_pairs("prefill", ctx)
        # vLLM's sliding-window admission keeps one block more than the window's: at most one
        # block beyond a full layer's
        assert (
            spec.blocks_per_request(ctx, block, batched) <= full.blocks_per_request(ctx, block, batched) + 1
        )

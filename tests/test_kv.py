"""KV-cache size: the seed's worked numbers and first-principles values, recomputed by hand."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capcalc.model.kv import kv_cache
from capcalc.model.layers import sparse_spec

# Llama-3-8B: 2 (K and V) x 32 layers x 8 KV heads x 128 head_dim x 2 bytes (seed §0.11)
LLAMA3_8B_PER_TOKEN = 2 * 32 * 8 * 128 * 2
# Llama-3-70B: 2 x 80 layers x 8 KV heads x 128 x 2 bytes (seed §0.11)
LLAMA3_70B_PER_TOKEN = 2 * 80 * 8 * 128 * 2


def test_llama3_8b_is_128_kib_per_token(registry):
    r = kv_cache(registry.model("llama-3-8b"), ctx=1)
    assert r.kv_bytes_per_token == LLAMA3_8B_PER_TOKEN  # 131,072 B = 128 KiB
    assert r.kv_dtype == "bf16"


def test_seed_thirty_users_on_a_24gb_card(cli):
    # Seed §0.11: a 24 GB GPU after ~16 GB of weights keeps ~8 GB for KV;
    # a 2,000-token conversation is 2000 x 128 KiB = 262,144,000 B -> 30 users.
    r = cli("kv", "llama-3-8b", "--ctx", "2000", "--memory", "8GB", "--json").json()
    assert r["kv_bytes_per_sequence"] == 262_144_000
    assert r["sequences_fit"] == 30


def test_llama3_70b_320_kib_per_token_and_8k_sequence(registry):
    r = kv_cache(registry.model("llama-3-70b"), ctx=8192)
    assert r.kv_bytes_per_token == LLAMA3_70B_PER_TOKEN  # 327,680 B, the seed's "~320 KB/token"
    assert r.kv_bytes_per_sequence == 2_684_354_560  # seed: "2.6 GB per sequence"


def test_deepseek_v3_mla_caches_one_latent_without_factor_two(registry):
    r = kv_cache(registry.model("deepseek-v3"), ctx=1, kv_dtype="bf16")
    assert r.kv_bytes_per_token == 61 * (512 + 64) * 2  # = 70,272 B: 61 layers x (latent + rope) x 2 B
    assert r.mla_layers == 61


def test_falcon_7b_mqa_uses_its_single_kv_head(registry):
    r = kv_cache(registry.model("falcon-7b"), ctx=1, kv_dtype="bf16")
    assert r.kv_heads == 1
    assert r.kv_bytes_per_token == 2 * 32 * 1 * 64 * 2  # = 8,192 B


def test_mistral_7b_v01_window_caps_every_layer_at_4096(registry):
    m = registry.model("mistral-7b-v0.1")
    at_32k = kv_cache(m, ctx=32_768, kv_dtype="bf16")
    # every layer slides: 32 layers x 4096 tokens x (2 x 8 x 128 x 2 B)
    assert at_32k.kv_bytes_per_sequence == 32 * 4096 * 4096  # = 536,870,912 B
    assert at_32k.sliding_layers == 32 and at_32k.full_layers == 0
    # below the window nothing is capped
    assert kv_cache(m, ctx=4096).kv_bytes_per_sequence == 4096 * 131_072


def test_gemma2_alternates_local_and_global_layers(registry):
    m = registry.model("gemma-2-9b")
    r = kv_cache(m, ctx=8192, kv_dtype="bf16")
    # 42 layers, half sliding (window 4096), 8 KV heads x head_dim 256 -> 8,192 B per layer-token
    assert (r.full_layers, r.sliding_layers, r.sliding_window) == (21, 21, 4096)
    assert r.kv_bytes_per_sequence == 8192 * (21 * 8192 + 21 * 4096)  # = 2,113,929,216 B


def test_gemma3_five_local_to_one_global(registry):
    m = registry.model("gemma-3-27b")
    r = kv_cache(m, ctx=32_768, kv_dtype="bf16")
    # 62 layers: every sixth is global -> 10 full, 52 sliding (window 1024);
    # 16 KV heads x head_dim 128 x 2 x 2 B = 8,192 B per layer-token
    assert (r.full_layers, r.sliding_layers, r.sliding_window) == (10, 52, 1024)
    assert m.layer_types[:6] == ("sliding",) * 5 + ("full",)
    assert r.kv_bytes_per_sequence == 8192 * (10 * 32_768 + 52 * 1024)  # = 3,120,562,176 B


def test_fp8_halves_bf16_for_every_model(registry):
    # the KV part; a recurrent layer's fixed state has its own dtype (mamba_ssm_cache_dtype), and
    # DeepSeek Sparse Attention keeps fp8 indexer keys and an fp8_ds_mla latent with its own
    # scales and bf16 rope dims (tests/test_layer_specs.py)
    for m in registry.models.values():
        if sparse_spec(m) is not None:
            continue
        bf16 = kv_cache(m, ctx=4096, kv_dtype="bf16")
        fp8 = kv_cache(m, ctx=4096, kv_dtype="fp8")
        assert fp8.state_bytes_per_sequence == bf16.state_bytes_per_sequence, m.name
        kv = bf16.kv_bytes_total - bf16.state_bytes_per_sequence
        assert (fp8.kv_bytes_total - fp8.state_bytes_per_sequence) * 2 == kv, m.name


def test_tp_larger_than_kv_heads_replicates(registry, cli):
    m = registry.model("llama-3-8b")
    tp8 = kv_cache(m, ctx=1, tp=8)
    tp16 = kv_cache(m, ctx=1, tp=16)
    assert tp8.kv_bytes_per_token_per_gpu == 32 * 2 * 1 * 128 * 2  # = 16,384 B: one KV head per GPU
    assert tp16.kv_bytes_per_token_per_gpu == tp8.kv_bytes_per_token_per_gpu  # stops shrinking
    assert tp16.kv_replicated and tp16.kv_replication_factor == 2
    assert not tp8.kv_replicated
    table = cli("kv", "llama-3-8b", "--tp", "16")
    assert table.code == 0 and "replicated" in table.out


def test_mla_latent_is_replicated_on_every_gpu(registry):
    m = registry.model("deepseek-v3")
    assert kv_cache(m, ctx=10, tp=8).kv_bytes_per_gpu == kv_cache(m, ctx=10, tp=1).kv_bytes_per_gpu


def test_invalid_tp_lists_valid_degrees(cli):
    r = cli("kv", "llama-3-8b", "--tp", "3")
    assert r.code == 2
    assert r.err.strip() == (
        "capcalc: error: tp=3 is not valid for llama-3-8b (32 attention heads, 8 KV heads): "
        "valid tp degrees are 1, 2, 4, 8, 16, 32"
    )
    assert r.out == ""


@pytest.mark.parametrize(
    "args", [["--ctx", "0"], ["--batch", "-1"], ["--kv-dtype", "fp7"], ["--memory", "-1GB"]]
)
def test_bad_numbers_are_one_line_errors(cli, args):
    r = cli("kv", "llama-3-8b", *args)
    assert r.code == 2
    assert r.out == ""
    assert len(r.err.strip().splitlines()) == 1 and r.err.startswith("capcalc: error: ")


MODELS = [
    "llama-3-8b",
    "mistral-7b-v0.1",
    "gemma-2-9b",
    "gemma-3-27b",
    "deepseek-v3",
    "falcon-7b",
    "qwen3-30b-a3b",
]
WIDTHS = ["fp8", "bf16", "fp32"]


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(MODELS),
    ctx=st.integers(1, 200_000),
    extra=st.integers(0, 50_000),
    batch=st.integers(1, 512),
    more=st.integers(0, 64),
)
def test_more_context_or_batch_never_means_less_kv(registry, name, ctx, extra, batch, more):
    m = registry.model(name)
    base = kv_cache(m, ctx=ctx, batch=batch).kv_bytes_total
    assert kv_cache(m, ctx=ctx + extra, batch=batch).kv_bytes_total >= base
    assert kv_cache(m, ctx=ctx, batch=batch + more).kv_bytes_total >= base


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(MODELS), ctx=st.integers(1, 100_000), i=st.integers(0, 1))
def test_wider_dtype_never_means_less_kv(registry, name, ctx, i):
    m = registry.model(name)
    narrow = kv_cache(m, ctx=ctx, kv_dtype=WIDTHS[i]).kv_bytes_total
    assert kv_cache(m, ctx=ctx, kv_dtype=WIDTHS[i + 1]).kv_bytes_total >= narrow


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(MODELS), ctx=st.integers(1, 100_000))
def test_per_gpu_kv_never_increases_with_tp(registry, name, ctx):
    from capcalc.model.parallel import valid_tp_degrees

    m = registry.model(name)
    per_gpu = [kv_cache(m, ctx=ctx, tp=tp).kv_bytes_per_gpu for tp in valid_tp_degrees(m)]
    assert all(a >= b for a, b in zip(per_gpu, per_gpu[1:], strict=False))

"""`capcalc fit` against numbers vLLM itself printed.

Each case feeds the logged "available KV cache memory" through --kv-cache-memory
(the log rounds it to 0.01 GiB, i.e. +-0.005 GiB, so block counts can differ by
that rounding; the exact budget implied by the logged block count is fed too).
The formulas being checked are vLLM's (vllm/v1/core/kv_cache_utils.py and
vllm/v1/kv_cache_interface.py at commit 001cabc): one block of one layer is
``block_size x 2 x kv_heads x head_dim x dtype`` bytes (MLA: ``block_size x
(kv_lora_rank + rope) x dtype``), ``num_blocks = budget // page // layers_per_group``
and ``max_concurrency = num_blocks / blocks_per_request``.
"""

from __future__ import annotations

import pytest

from capcalc.schema.deployment import Deployment
from capcalc.serving.fit import GIB, FitRequest, fit, kv_cache_groups

MIB = 2**20


# --------------------------------------------------------------------------- vLLM issue 10517
# https://github.com/vllm-project/vllm/issues/10517 (comment of 2024-12-02, RTX 3090,
# meta-llama/Llama-3.1-8B-Instruct, vLLM 0.6.x):
#   total_gpu_memory=23.58GiB ... kv_cache_size=3.81GiB gpu_memory_utilization=0.90
#   GPU blocks: 1952 / Maximum concurrency for 20000 tokens per request: 1.56x
#   (29k) kv_cache_size=2.89GiB / # GPU blocks: 1478 / ... 29000 tokens per request: 0.82x
#   "The model's max seq len (29000) is larger than the maximum number of tokens that can
#    be stored in KV cache (23648)."

# One block of Llama-3.1-8B: 16 tokens x 32 layers x 2 x 8 KV heads x 128 x 2 B = 2 MiB.
# The log agrees with itself under this reading: 1952 x 2 MiB = 3.8125 GiB ("3.81GiB") and
# 1478 x 2 MiB = 2.887 GiB ("2.89GiB").
LLAMA31_8B_BLOCK = 16 * 32 * 2 * 8 * 128 * 2


def rtx3090(cli, kv_cache_memory, max_model_len, *extra):
    """The issue-10517 run: Llama-3.1-8B, torch's 23.58 GiB total, the logged KV budget."""
    return cli(
        "fit",
        "llama-3.1-8b",
        "--gpu-memory",
        "23.58GiB",
        "--kv-cache-memory",
        str(kv_cache_memory),
        "--max-model-len",
        str(max_model_len),
        *extra,
    )


def test_issue_10517_20k_on_rtx_3090(cli):
    r = rtx3090(cli, "3.81GiB", 20000, "--json").json()
    assert r["page_bytes"] * r["layers_per_group"] == LLAMA31_8B_BLOCK
    assert r["num_blocks"] == 1950  # 3.81 GiB // 2 MiB = 1950.7: 1952 within the log's rounding
    assert abs(r["num_blocks"] - 1952) <= 0.005 * GIB / LLAMA31_8B_BLOCK
    assert f"{r['max_concurrency']:.2f}" == "1.56"
    assert r["fits"] is True and r["kv_cache_memory_source"] == "flag"

    exact = rtx3090(cli, str(1952 * LLAMA31_8B_BLOCK), 20000, "--json").json()
    assert exact["num_blocks"] == 1952
    assert exact["kv_cache_tokens"] == 1952 * 16
    assert exact["blocks_per_request"] == 1250  # cdiv(20000, 16)
    assert exact["max_concurrency"] == 1952 / 1250  # 1.5616, the log's "1.56x"


def test_issue_10517_29k_fails_with_vllms_numbers(cli):
    r = rtx3090(cli, "2.89GiB", 29000, "--json").json()
    assert f"{r['max_concurrency']:.2f}" == "0.82"
    assert r["fits"] is False and r["weights_fit"] is True
    # KV needed for one 29,000-token request: cdiv(29000, 16) = 1813 blocks of 2 MiB
    assert r["kv_needed_bytes"] == 1813 * LLAMA31_8B_BLOCK
    exact = rtx3090(cli, str(1478 * LLAMA31_8B_BLOCK), 29000, "--json").json()
    assert exact["num_blocks"] == 1478
    assert exact["max_model_len_that_fits"] == 23_648  # 1478 x 16, the log's "(23648)"
    assert "--max-model-len 23648" in exact["suggestions"]


def test_issue_10517_29k_table_prints_vllms_three_numbers(cli):
    r = rtx3090(cli, str(1478 * LLAMA31_8B_BLOCK), 29000)
    assert r.code == 1  # it does not fit: the table, then exit 1
    text = " ".join(r.out.split())
    assert (
        "To serve at least one request with the models's max seq len (29000), (3.54 GiB KV cache is needed, "
        "which is larger than the available KV cache memory (2.89 GiB). Based on the available memory, the "
        "estimated maximum model length is 23648."
    ) in text


# --------------------------------------------------------------------------- DeepSeek MLA, tp=2 pp=2
# https://github.com/vllm-project/vllm/pull/20665 (2025-07-09): `vllm serve
# deepseek-ai/DeepSeek-V2-Lite --max-model-len=1024 --tensor-parallel-size=2
# --pipeline-parallel-size=2` on four L4s logged
#   rank 0, 1: Available KV cache memory: 12.13 GiB
#   rank 2, 3: Available KV cache memory: 11.33 GiB
#   GPU KV cache size: 807,792 tokens
#   Maximum concurrency for 1,024 tokens per request: 788.86x

# MLA page: 16 tokens x (kv_lora_rank 512 + rope 64) x 2 B, the same latent on every tp rank
DSV2_LITE_PAGE = 16 * (512 + 64) * 2


def test_deepseek_v2_lite_mla_tp2_pp2(cli, registry):
    model = registry.model("deepseek-v2-lite")
    r = fit(
        model,
        FitRequest(
            memory_bytes=23034 * MIB,
            memory_source="flag",
            max_model_len=1024,
            kv_cache_memory=12.13 * GIB,
            deployment=Deployment(tp=2, pp=2),
        ),
    )
    assert r.page_bytes == DSV2_LITE_PAGE  # 18,432 B
    assert r.kv_heads_per_gpu == 1 and r.kv_replicated  # the latent is on both tp ranks
    # 27 layers on pp=2: vLLM puts 14 on the first stage, 13 on the last
    assert r.binding_stage == 0 and r.layers_per_group == 14
    # 807,792 tokens / 16 = 50,487 blocks; 50,487 x 14 layers x 18,432 B = 12.13 GiB, the
    # logged figure of stage 0; the 13-layer stage's 11.33 GiB would hold 50,770 blocks, so
    # stage 0 bounds, as logged
    blocks = 807_792 // 16
    assert abs(r.num_blocks - blocks) <= 0.005 * GIB / (14 * DSV2_LITE_PAGE)
    exact = fit(
        model,
        FitRequest(
            memory_bytes=23034 * MIB,
            memory_source="flag",
            max_model_len=1024,
            kv_cache_memory=blocks * 14 * DSV2_LITE_PAGE,
            deployment=Deployment(tp=2, pp=2),
        ),
    )
    assert exact.kv_cache_tokens == 807_792
    assert exact.blocks_per_request == 1024 // 16
    assert f"{exact.max_concurrency:.2f}" == "788.86"


def test_mla_kv_per_gpu_does_not_shrink_with_tp(registry):
    model = registry.model("deepseek-v2-lite")
    per_gpu = [
        fit(
            model,
            FitRequest(
                memory_bytes=80 * GIB, memory_source="flag", max_model_len=4096, deployment=Deployment(tp=tp)
            ),
        ).page_bytes
        for tp in (1, 2, 4, 8, 16)
    ]
    assert per_gpu == [DSV2_LITE_PAGE] * 5


# --------------------------------------------------------------------------- the whole budget
# llm-d capacity planner, "vLLM Empirical Memory Profiling Results" (vllm/vllm-openai:v0.11.0,
# H100 reporting 79.18 GiB, --gpu-memory-utilization 0.9, --max-model-len 16000,
# --block-size 128): meta-llama/Llama-3.1-8B-Instruct weights 14.99 GiB, activation 4.76 GiB,
# non-torch 0.13 GiB, KV cache 51.38 GiB; Qwen/Qwen3-32B at tp=2: 30.59 / 5.64 / 0.54 / 34.49 GiB.
# 79.18 x 0.9 - 14.99 - 4.76 - 0.13 = 51.38: the budget equation, with no CUDA-graph term.


@pytest.mark.parametrize(
    "model, tp, weights_gib, activation_gib, kv_gib",
    [("llama-3.1-8b", 1, 14.99, 4.76, 51.38), ("qwen3-32b", 2, 30.59, 5.64, 34.49)],
)
def test_budget_matches_vllm_011_on_h100(registry, model, tp, weights_gib, activation_gib, kv_gib):
    r = fit(
        registry.model(model),
        FitRequest(
            memory_bytes=79.18 * GIB,
            memory_source="flag",
            max_model_len=16000,
            block_size=128,
            deployment=Deployment(tp=tp),
        ),
    )
    assert (r.max_num_seqs, r.max_num_batched_tokens) == (1024, 8192)  # vllm serve on a >= 70 GiB GPU
    assert r.weights_bytes_per_gpu / GIB == pytest.approx(weights_gib, rel=0.005)
    assert r.activation_bytes_per_gpu / GIB == pytest.approx(activation_gib, rel=0.02)
    assert r.kv_cache_bytes_per_gpu / GIB == pytest.approx(kv_gib, rel=0.005)


# --------------------------------------------------------------------------- Gemma-3: window groups
# No Gemma-3 log from the hybrid-manager era (vLLM >= 0.10) with its available memory was found
# in the searchable issues (a vLLM 0.8.2 one, before the hybrid manager, is checked below); this
# case is recomputed by hand from vLLM's grouping rule (_get_kv_cache_groups_uniform_page_size)
# and SlidingWindowSpec.max_memory_usage_bytes.


def test_gemma3_27b_groups_and_blocks_by_hand(registry):
    model = registry.model("gemma-3-27b")
    # 62 layers: every sixth is full -> 10 full, 52 sliding (window 1024).
    # Group size = the smaller count (10; 52 >= 1.5 x 10); sliding splits into cdiv(52, 10) = 6
    # groups (9, 9, 9, 9, 8, 8: padded to 10), full is one group -> 7 groups of 10.
    groups = kv_cache_groups(model)
    assert [(g.kind, len(g.layers)) for g in groups] == [("sliding", 9)] * 4 + [("sliding", 8)] * 2 + [
        ("full", 10)
    ]
    assert groups[0].layers[:3] == (0, 7, 14)  # layers[i::num_groups]

    page = 16 * 2 * 16 * 128 * 2  # 16 KV heads x head_dim 128, bf16
    budget = 20 * GIB
    r = fit(
        model,
        FitRequest(
            memory_bytes=80 * GIB,
            memory_source="flag",
            max_model_len=32768,
            max_num_batched_tokens=8192,
            kv_cache_memory=budget,
        ),
    )
    assert r.page_bytes == page
    assert r.num_blocks == budget // page // 10
    assert r.kv_cache_tokens == r.num_blocks // 7 * 16
    # one 32k request: the full group holds cdiv(32768, 16) = 2048 blocks; each sliding group
    # cdiv(min(1024 - 1 + 8192, 32768), 16) + 1 = 577
    assert r.blocks_per_request == 2048 + 6 * 577
    assert r.max_concurrency == r.num_blocks / (2048 + 6 * 577)
    assert r.kv_needed_bytes == 10 * page * (2048 + 6 * 577)


def test_window_saves_memory_only_when_window_plus_batch_is_below_max_model_len(registry):
    model = registry.model("gemma-3-27b")

    def concurrency(mml, hybrid):
        return fit(
            model,
            FitRequest(
                memory_bytes=80 * GIB,
                memory_source="flag",
                max_model_len=mml,
                max_num_batched_tokens=8192,
                kv_cache_memory=20 * GIB,
                hybrid=hybrid,
            ),
        ).max_concurrency

    # 1023 + 8192 < 32768: per request 10 x (2048 + 6 x 577) layer-blocks instead of 62 x 2048,
    # so the hybrid manager serves 2.3x the sequences of all-full layers
    ratio = (62 * 2048) / (10 * (2048 + 6 * 577))  # 2.31
    assert concurrency(32768, True) / concurrency(32768, False) == pytest.approx(ratio, rel=1e-3)
    # 1023 + 8192 >= 8192: sliding groups hold the whole request plus a block, and the padded
    # groups cost more: the hybrid manager is no better than treating every layer as full
    assert concurrency(8192, True) <= concurrency(8192, False)


# --------------------------------------------------------------------------- tp=4 / tp=8, 4 KV heads
# Qwen3-235B-A22B has 4 KV heads, so at tp=8 every KV head lives on two GPUs.
# https://github.com/vllm-project/vllm/issues/18446 (2025-05-21, 8 x A100-SXM4-80GB, tp=8):
#   "Model loading took 54.9206 GiB" on every rank.
# Qwen3-30B-A3B (4 KV heads) at tp=4, vLLM 0.8.5, https://github.com/vllm-project/vllm/issues/17469
# and the same run in https://github.com/vllm-project/vllm/issues/17327:
#   "Model loading took 14.2474 GiB" per rank; "GPU KV cache size: 198,784 tokens";
#   "Maximum concurrency for 8,192 tokens per request: 24.27x".


def test_qwen3_235b_tp8_weights_replicate_the_kv_projections(registry):
    model = registry.model("qwen3-235b-a22b")
    r = fit(
        model,
        FitRequest(
            memory_bytes=80 * GIB, memory_source="flag", max_model_len=8192, deployment=Deployment(tp=8)
        ),
    )
    assert r.weights_bytes_per_gpu / GIB == pytest.approx(54.9206, rel=5e-4)
    # splitting the 4 KV heads' k/v projections 8 ways instead would miss the log by 5x more:
    # each GPU holds a whole head, 94 layers x 2 (k, v) x 4096 x 128 x 2 B, not half of one
    half_head = 94 * 2 * 4096 * 128 * 2 / 2
    assert abs(r.weights_bytes_per_gpu - half_head - 54.9206 * GIB) > 5 * abs(
        r.weights_bytes_per_gpu - 54.9206 * GIB
    )
    assert r.kv_heads_per_gpu == 1 and r.kv_replicated
    assert r.kv_bytes_per_token_per_gpu == 94 * 2 * 1 * 128 * 2  # the same as at tp=4
    tp4 = fit(
        model,
        FitRequest(
            memory_bytes=80 * GIB, memory_source="flag", max_model_len=8192, deployment=Deployment(tp=4)
        ),
    )
    assert tp4.kv_bytes_per_token_per_gpu == r.kv_bytes_per_token_per_gpu and not tp4.kv_replicated


def test_qwen3_30b_a3b_tp4_log(registry):
    model = registry.model("qwen3-30b-a3b")
    page = 16 * 2 * 1 * 128 * 2  # one of the 4 KV heads per GPU at tp=4
    blocks = 198_784 // 16  # 12,424 blocks / 512 per 8,192-token request = 24.27x, as logged
    r = fit(
        model,
        FitRequest(
            memory_bytes=80 * GIB,
            memory_source="flag",
            max_model_len=8192,
            kv_cache_memory=blocks * 48 * page,
            deployment=Deployment(tp=4),
        ),
    )
    assert r.weights_bytes_per_gpu / GIB == pytest.approx(14.2474, rel=1e-3)
    assert r.page_bytes == page
    assert r.kv_cache_tokens == 198_784
    assert f"{r.max_concurrency:.2f}" == "24.27"
    # at tp=8 each GPU still holds one (replicated) head: the same per-GPU page, not half
    tp8 = fit(
        model,
        FitRequest(
            memory_bytes=80 * GIB,
            memory_source="flag",
            max_model_len=8192,
            kv_cache_memory=blocks * 48 * page,
            deployment=Deployment(tp=8),
        ),
    )
    assert tp8.page_bytes == page and tp8.kv_replicated and tp8.kv_cache_tokens == 198_784


# --------------------------------------------------------------------------- Gemma-3 before the hybrid manager
# https://github.com/vllm-project/vllm/issues/15676 (comment of 2025-04-07, vLLM 0.8.2,
# google/gemma-3-27b-it, tensor-parallel-size 2):
#   "GPU KV cache size: 54,048 tokens" / "Maximum concurrency for 4,096 tokens per request: 13.20x"
# vLLM 0.8 predates the hybrid KV cache manager (v0.10): every layer was sized as full
# attention, which is what --disable-hybrid-kv-cache-manager reproduces.


def test_gemma3_27b_tp2_log_before_the_hybrid_manager(registry):
    model = registry.model("gemma-3-27b")
    page = 16 * 2 * 8 * 128 * 2  # 16 KV heads / tp 2, head_dim 128, bf16
    blocks = 54_048 // 16
    budget = blocks * 62 * page  # one group of all 62 layers
    old = fit(
        model,
        FitRequest(
            memory_bytes=80 * GIB,
            memory_source="flag",
            max_model_len=4096,
            kv_cache_memory=budget,
            hybrid=False,
            deployment=Deployment(tp=2),
        ),
    )
    assert old.page_bytes == page and old.kv_cache_groups == 1
    assert old.kv_cache_tokens == 54_048
    assert f"{old.max_concurrency:.2f}" == "13.20"
    # today's hybrid manager, same budget: 7 groups of 10 layers; at 4,096 tokens a sliding group
    # still holds cdiv(min(1023 + 8192, 4096), 16) + 1 = 257 blocks, so it holds fewer sequences
    new = fit(
        model,
        FitRequest(
            memory_bytes=80 * GIB,
            memory_source="flag",
            max_model_len=4096,
            kv_cache_memory=budget,
            deployment=Deployment(tp=2),
        ),
    )
    assert new.blocks_per_request == 256 + 6 * 257
    assert new.num_blocks == budget // page // 10
    assert new.max_concurrency == new.num_blocks / 1798 < old.max_concurrency

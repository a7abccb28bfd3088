"""`capcalc fit`: the budget, weights per GPU, layouts, verdicts, errors and invariants."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capcalc.core.errors import CapcalcError
from capcalc.model.parallel import MAX_TP, pp_layer_ranges, valid_tp_degrees
from capcalc.model.params import count_params
from capcalc.model.weights import weight_bytes, weight_bytes_per_gpu
from capcalc.schema.deployment import FIELDS as DEPLOYMENT_FIELDS
from capcalc.schema.deployment import Deployment
from capcalc.serving.fit import GIB, FitRequest, check_request, fit, kv_cache_groups, search_tp
from capcalc.sources.loader import model_from_dict

REQUIRED_KEYS = {
    "model",
    "gpu",
    "tp",
    "pp",
    "weight_dtype",
    "kv_dtype",
    "gpu_memory_utilization",
    "max_model_len",
    "block_size",
    "weights_bytes_per_gpu",
    "activation_bytes_per_gpu",
    "overhead_bytes_per_gpu",
    "kv_cache_bytes_per_gpu",
    "kv_bytes_per_token_per_gpu",
    "num_blocks",
    "kv_cache_tokens",
    "max_concurrency",
    "fits",
    "max_model_len_that_fits",
    "memory_source",
    "schema_version",
}


def req(**kw) -> FitRequest:
    kw.setdefault("memory_bytes", 80 * GIB)
    kw.setdefault("memory_source", "flag")
    deployment = Deployment(**{k: kw.pop(k) for k in list(kw) if k in DEPLOYMENT_FIELDS})
    return FitRequest(deployment=deployment, **kw)


# --------------------------------------------------------------------------- the seed's 70B case


def test_seed_70b_bf16_does_not_fit_one_80gb_gpu(registry, cli):
    # seed §0.11: "70B in bf16 is 140 GB, so it doesn't even fit on one 80 GB GPU"
    model = registry.model("llama-3-70b")
    assert weight_bytes(model, "bf16").bytes == 2 * count_params(model).total > 140e9
    r = cli("fit", "llama-3-70b", "--gpu", "h100-sxm", "--ctx", "8192", "--json").json()
    assert r["fits"] is False and r["weights_fit"] is False
    # short by weights + activation + overhead - usable
    short = (
        r["weights_bytes_per_gpu"]
        + r["activation_bytes_per_gpu"]
        + r["overhead_bytes_per_gpu"]
        - r["usable_bytes_per_gpu"]
    )
    assert r["weights_shortfall_bytes"] == pytest.approx(short)
    assert short > 60e9
    assert r["num_blocks"] == 0 and r["max_concurrency"] == 0


def test_seed_70b_smallest_tp_on_h100_at_8k(registry, cli):
    r = cli("fit", "llama-3-70b", "--gpu", "h100-sxm", "--ctx", "8192", "--tp", "auto", "--json").json()
    assert r["tp"] == 4 and r["fits"] is True
    # tp=2 halves 141 GB of weights to 70.6 GB; with ~5 GB of sampler peak and 0.55 GiB of NCCL
    # buffers that leaves less than one 8k request: 8192 tokens x 80 layers x 2 x 4 heads x 128 x 2 B
    tp2 = cli("fit", "llama-3-70b", "--gpu", "h100-sxm", "--ctx", "8192", "--tp", "2", "--json").json()
    assert tp2["kv_needed_bytes"] == 8192 * 80 * 2 * 4 * 128 * 2
    assert 0 < tp2["kv_cache_bytes_per_gpu"] < tp2["kv_needed_bytes"]
    assert tp2["fits"] is False and tp2["weights_fit"] is True


def test_n_gpus_and_concurrency_search(cli):
    one = cli("fit", "llama-3-70b", "--gpu", "h100-sxm", "--ctx", "8192", "--tp", "4", "--json").json()
    r = cli(
        "fit",
        "llama-3-70b",
        "--gpu",
        "h100-sxm",
        "--ctx",
        "8192",
        "--n-gpus",
        "8",
        "--concurrency",
        str(math.floor(one["max_concurrency"]) + 1),
        "--json",
    ).json()
    assert r["tp"] == 8 and r["max_concurrency"] > one["max_concurrency"]
    assert r["replicas"] == 1 and r["n_gpus"] == 8
    fits = cli("fit", "llama-3-70b", "--gpu", "h100-sxm", "--ctx", "8192", "--n-gpus", "8", "--json").json()
    assert fits["tp"] == 4 and fits["replicas"] == 2
    assert fits["total_max_concurrency"] == pytest.approx(2 * fits["max_concurrency"])


def test_search_reports_when_nothing_fits(cli):
    r = cli("fit", "llama-3.1-405b", "--gpu", "h100-sxm", "--n-gpus", "2")
    assert r.code == 1  # nothing fits: exit 1, as plan does (issue 14)
    assert "no valid tp within 2 GPUs fits; showing the largest, tp=2" in r.err


# --------------------------------------------------------------------------- memory source


def test_memory_source_reported_else_datasheet(registry, tmp_path, cli):
    h100 = registry.gpu("h100-sxm")
    r = cli("fit", "llama-3.1-8b", "--gpu", "h100-sxm", "--json").json()
    assert r["memory_source"] == "reported" and r["memory_bytes"] == h100.memory_reported_bytes
    (tmp_path / "card.yaml").write_text(
        "name: datasheet-card\nmemory: 48 GiB\nbandwidth: 1 TB/s\npeak_flops: {bf16: 100 TFLOP/s}\n"
        "sources: {memory: test, bandwidth: test, peak_flops: test}\n"
    )
    r = cli("fit", "llama-3.1-8b", "--gpu", "datasheet-card", "--profiles", tmp_path, "--json").json()
    assert r["memory_source"] == "datasheet" and r["memory_bytes"] == 48 * GIB
    # below 70 GiB vllm serve defaults to 256 sequences and 2048 batched tokens
    assert (r["max_num_seqs"], r["max_num_batched_tokens"]) == (256, 2048)
    r = cli("fit", "llama-3.1-8b", "--gpu-memory", "23.58GiB", "--json").json()
    assert r["memory_source"] == "flag" and r["memory_bytes"] == 23.58 * GIB


def test_budget_equation(registry):
    r = fit(
        registry.model("llama-3.1-8b"),
        req(
            memory_bytes=40 * GIB,
            gpu_memory_utilization=0.8,
            max_model_len=8192,
            activation_bytes=1 * GIB,
            overhead_bytes=0.5 * GIB,
            cudagraph_bytes=0.25 * GIB,
        ),
    )
    assert r.usable_bytes_per_gpu == 32 * GIB  # 0.8 x 40 GiB
    # Llama-3.1-8B's bf16 weights are 2 x 8,030,261,248 = 16,060,522,496 B; the KV cache
    # gets 32 GiB - that - (1 + 0.5 + 0.25) GiB = 16,420,167,680 B
    assert r.weights_bytes_per_gpu == 16_060_522_496
    assert r.kv_cache_bytes_per_gpu == 32 * GIB - 16_060_522_496 - 1.75 * GIB
    # one block of one layer: 16 tokens x 2 x 8 KV heads x 128 x 2 B = 65,536 B, 32 layers:
    # 16,420,167,680 // 65,536 // 32 = 7,829 blocks of 16 tokens; one 8192-token request
    # takes 512 of them
    assert r.num_blocks == 7_829
    assert r.kv_cache_tokens == 7_829 * 16
    assert r.max_concurrency == 7_829 / 512


# --------------------------------------------------------------------------- weights per GPU


def test_weights_split_by_tp_with_kv_projection_replication(registry):
    m = registry.model("llama-3-8b")  # 8 KV heads
    one = weight_bytes_per_gpu(m, weight_dtype="bf16")[0].bytes
    h, hd = 4096, 128
    for tp in (2, 4, 8):
        assert weight_bytes_per_gpu(m, weight_dtype="bf16", tp=tp)[0].bytes < one
    # past 8 GPUs each still holds one KV head: k/v stop shrinking (replicated)
    tp8 = weight_bytes_per_gpu(m, weight_dtype="bf16", tp=8)[0].bytes
    tp16 = weight_bytes_per_gpu(m, weight_dtype="bf16", tp=16)[0].bytes
    q_o = 2 * h * 32 * hd * 2
    mlp_embed = (3 * h * 14336 * 32 + 2 * 128256 * h) * 2
    # k/v (one head per GPU at tp=8 and tp=16 alike) and the norms do not change
    assert tp8 - tp16 == pytest.approx((q_o * 32 + mlp_embed) * (1 / 8 - 1 / 16))


def test_pipeline_stages_hold_layers_embedding_and_head(registry):
    m = registry.model("llama-3-8b")  # untied
    stages = weight_bytes_per_gpu(m, weight_dtype="bf16", pp=2)
    assert [(s.first_layer, s.end_layer) for s in stages] == [(0, 16), (16, 32)]
    assert stages[0].holds_embedding and not stages[0].holds_lm_head
    assert stages[1].holds_lm_head and not stages[1].holds_embedding
    assert sum(s.bytes for s in stages) == pytest.approx(weight_bytes(m, "bf16").bytes)


def test_tied_head_needs_its_own_copy_on_the_last_stage(registry):
    m = registry.model("gemma-3-12b")  # tie_word_embeddings: true
    table = count_params(m).embedding * 2
    stages = weight_bytes_per_gpu(m, weight_dtype="bf16", pp=2)
    assert sum(s.bytes for s in stages) == pytest.approx(weight_bytes(m, "bf16").bytes + table)


def test_int4_weights_carry_group_scales(registry):
    m = registry.model("llama-3-8b")
    w = weight_bytes_per_gpu(m, weight_dtype="int4", group_size=128)[0].bytes
    # 6,979,321,856 matmul weights at 4 + 20/128 bits + 1,050,939,392 others at 2 B (test_params)
    assert w == 5_727_854_592
    assert weight_bytes_per_gpu(m, weight_dtype="int4", group_size=32)[0].bytes > w


def test_vllm_pp_split_gives_the_remainder_to_the_stages_before_the_last():
    assert pp_layer_ranges(27, 2) == [(0, 14), (14, 27)]
    assert pp_layer_ranges(61, 4) == [(0, 15), (15, 30), (30, 46), (46, 61)]  # 15 each, one extra on stage 2


# --------------------------------------------------------------------------- groups


def _hybrid_profile(sliding: int, full: int) -> dict:
    return {
        "name": "toy-hybrid",
        "source": "test",
        "architecture": {
            "num_layers": sliding + full,
            "hidden_size": 256,
            "num_attention_heads": 4,
            "num_kv_heads": 2,
            "head_dim": 64,
            "intermediate_size": 512,
            "vocab_size": 1000,
            "max_context": 65536,
        },
        "sliding_window": {"window": 128, "layer_types": ["sliding"] * sliding + ["full"] * full},
    }


def test_group_size_uses_the_larger_count_under_one_and_a_half(registry):
    # vLLM's own example: gpt-oss-20b + eagle, 12 sliding + 13 full -> (13 sw, 13 full), not (12 sw, 24 full)
    m = model_from_dict(_hybrid_profile(12, 13))
    assert [len(g.layers) for g in kv_cache_groups(m)] == [12, 13]
    m = model_from_dict(_hybrid_profile(20, 10))
    assert [(g.kind, len(g.layers)) for g in kv_cache_groups(m)] == [("sliding", 10)] * 2 + [("full", 10)]
    gpt_oss = registry.model("gpt-oss-120b")
    assert [(g.kind, len(g.layers)) for g in kv_cache_groups(gpt_oss)] == [("sliding", 18), ("full", 18)]
    assert len(kv_cache_groups(gpt_oss, hybrid=False)) == 1


def test_uniform_and_all_sliding_models_are_one_group(registry):
    assert len(kv_cache_groups(registry.model("llama-3-8b"))) == 1
    mistral = registry.model("mistral-7b-v0.1")  # every layer slides (window 4096)
    (group,) = kv_cache_groups(mistral)
    r = fit(mistral, req(max_model_len=32768, max_num_batched_tokens=2048, kv_cache_memory=4 * GIB))
    assert group.kind == "sliding" and r.blocks_per_request == math.ceil((4095 + 2048) / 16) + 1


# --------------------------------------------------------------------------- verdict and suggestions


def test_every_suggestion_makes_it_fit(registry):
    model = registry.model("llama-3.1-8b")
    base = req(memory_bytes=24 * GIB, max_model_len=131072)
    r = fit(model, base)
    assert not r.fits and r.suggestions
    for parameter, value in r.suggestions:
        assert fit(model, base.changed(**{parameter: value})).fits, (parameter, value)


def test_search_tp_returns_the_smallest_fitting_degree(registry):
    model = registry.model("qwen2.5-72b")
    found, ok = search_tp(model, req(max_model_len=32768))
    assert ok
    smaller = [t for t in valid_tp_degrees(model) if t < found.tp]
    assert all(not fit(model, req(max_model_len=32768, tp=t)).fits for t in smaller)


def test_search_tp_that_fails_gives_the_largest_degree_as_fit_gives_it(registry):
    # qwen2.5-72b's weights (~145 GB in bf16) cannot fit one 80 GiB GPU: with --n-gpus 1 only tp=1
    # is tried, and the failure carries the same suggestions a plain `fit --tp 1` would
    model = registry.model("qwen2.5-72b")
    found, ok = search_tp(model, req(max_model_len=32768, n_gpus=1))
    assert not ok and found.tp == 1 and not found.fits
    assert found == fit(model, req(max_model_len=32768, n_gpus=1, tp=1))
    assert found.suggestions  # e.g. --weight-dtype int4 / --tp 2, each checked by fitting again


def test_search_tp_without_n_gpus_stops_at_max_tp(registry):
    model = registry.model("llama-3.1-8b")
    # a 1 GiB GPU fits no tp: the search ends at the largest valid degree up to MAX_TP
    found, ok = search_tp(model, req(memory_bytes=1 * GIB))
    assert not ok and found.tp == max(valid_tp_degrees(model)) <= MAX_TP


def test_check_request_is_the_usage_check_and_leaves_tp_to_fit(registry):
    model = registry.model("llama-3.1-8b")
    check_request(req(tp=3), model)  # an invalid tp is a per-candidate matter (plan rejects it)
    with pytest.raises(CapcalcError, match=r"^gpu_memory_utilization must be in \(0, 1\], got 1.5$") as err:
        check_request(req(gpu_memory_utilization=1.5), model)
    assert err.value.parameter == "gpu_memory_utilization"
    with pytest.raises(CapcalcError, match="^unknown KV dtype 'fp9'"):
        check_request(req(kv_dtype="fp9"), model)
    with pytest.raises(CapcalcError, match="^unknown weight dtype 'fp9'"):
        check_request(req(weight_dtype="fp9"), model)
    with pytest.raises(CapcalcError, match="^tp=3 is not valid for llama-3.1-8b"):
        fit(model, req(tp=3))


def test_kv_cache_memory_flag_weights_fit_when_the_card_holds_it_all(registry):
    # with --kv-cache-memory the budget is bypassed: it fits when weights + activation + overhead
    # + the flag's KV cache are within the card, and the shortfall is the excess
    model = registry.model("llama-3.1-8b")
    base = fit(model, req(max_model_len=8192, kv_cache_memory=1 * GIB), suggest=False)
    others = base.weights_bytes_per_gpu + base.activation_bytes_per_gpu + base.overhead_bytes_per_gpu
    room = 80 * GIB - others
    ok = fit(model, req(max_model_len=8192, kv_cache_memory=room), suggest=False)
    assert ok.weights_fit and ok.weights_shortfall_bytes == 0
    over = fit(model, req(max_model_len=8192, kv_cache_memory=room + GIB), suggest=False)
    assert not over.weights_fit and over.weights_shortfall_bytes == pytest.approx(GIB)


# --------------------------------------------------------------------------- CLI and errors


def test_json_has_every_required_key_and_table_shows_the_stack(cli):
    r = cli("fit", "llama-3.1-8b", "--gpu", "h100-sxm", "--json")
    assert r.code == 0 and set(r.json()) >= REQUIRED_KEYS
    table = cli("fit", "llama-3.1-8b", "--gpu", "h100-sxm")
    assert table.code == 0
    for word in ("Memory per GPU", "weights", "activation peak", "KV cache", "stacked", "fits", "█", "░"):
        assert word in table.out, word
    csv = cli("fit", "llama-3.1-8b", "--gpu", "h100-sxm", "--csv")
    assert csv.out.splitlines()[0].startswith("schema_version,model,gpu")


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--gpu", "h100-sxm", "--tp", "3"],
            "tp=3 is not valid for llama-3.1-8b (32 attention heads, 8 KV heads): valid tp degrees are 1, 2, 4, 8, 16, 32",
        ),
        (["--gpu-memory", "0"], "--gpu-memory must be positive, got '0'"),
        (["--gpu-memory", "-24GB"], "--gpu-memory must be positive, got '-24GB'"),
        (
            ["--gpu", "h100-sxm", "--gpu-memory-utilization", "0"],
            "--gpu-memory-utilization must be in (0, 1], got 0",
        ),
        (
            ["--gpu", "h100-sxm", "--gpu-memory-utilization", "1.2"],
            "--gpu-memory-utilization must be in (0, 1], got 1.2",
        ),
        (
            ["--gpu", "h100-sxm", "--max-model-len", "200000"],
            "--max-model-len 200000 exceeds llama-3.1-8b's maximum context of 131072 tokens",
        ),
        ([], "give exactly one of --gpu GPU or --gpu-memory BYTES"),
        (["--gpu", "h100-sxm", "--kv-cache-memory", "0"], "--kv-cache-memory must be positive, got '0'"),
        (["--gpu", "h100-sxm", "--tp", "two"], "--tp: expected a whole number or 'auto', got 'two'"),
        (
            ["--gpu", "h100-sxm", "--concurrency", "10"],
            "--concurrency needs --tp auto or --n-gpus to search over",
        ),
        (["--gpu", "h100-sxm", "--pp", "40"], "--pp 40 exceeds the model's 32 layers"),
        # the byte overrides are parsed by the CLI and range-checked by fit.check_request
        (
            ["--gpu", "h100-sxm", "--activation-bytes", "-1GB"],
            "--activation-bytes must not be negative, got -1e+09",
        ),
        (["--gpu", "h100-sxm", "--overhead-bytes", "-5"], "--overhead-bytes must not be negative, got -5"),
        (
            ["--gpu", "h100-sxm", "--cudagraph-bytes", "-2KiB"],
            "--cudagraph-bytes must not be negative, got -2048",
        ),
        (
            ["--gpu", "h100-sxm", "--activation-bytes", "lots"],
            "cannot read --activation-bytes 'lots': expected a number with an optional unit",
        ),
    ],
)
def test_bad_input_is_one_clear_line(cli, args, message):
    r = cli("fit", "llama-3.1-8b", *args)
    assert r.code == 2 and r.out == ""
    assert r.err == f"capcalc: error: {message}\n"


# --------------------------------------------------------------------------- invariants

MODELS = ["llama-3.1-8b", "qwen3-30b-a3b", "gemma-3-12b", "deepseek-v2-lite", "mistral-7b-v0.1", "qwen2.5-7b"]


@settings(max_examples=40, deadline=None)
@given(
    name=st.sampled_from(MODELS), u=st.floats(0.3, 0.99), du=st.floats(0.0, 0.5), mml=st.integers(1, 32768)
)
def test_more_utilisation_never_fewer_blocks(registry, name, u, du, mml):
    m = registry.model(name)
    lo = fit(m, req(gpu_memory_utilization=u, max_model_len=mml), suggest=False)
    hi = fit(m, req(gpu_memory_utilization=min(1.0, u + du), max_model_len=mml), suggest=False)
    assert hi.num_blocks >= lo.num_blocks


@settings(max_examples=30, deadline=None)
@given(name=st.sampled_from(MODELS), mml=st.integers(1, 32768), gib=st.integers(24, 192))
def test_higher_tp_never_fewer_kv_tokens_per_sequence_slot(registry, name, mml, gib):
    m = registry.model(name)
    results = [
        fit(m, req(memory_bytes=gib * GIB, tp=tp, max_model_len=mml), suggest=False)
        for tp in valid_tp_degrees(m, limit=16)
    ]
    conc = [r.max_concurrency for r in results]
    assert all(a <= b for a, b in zip(conc, conc[1:], strict=False))


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(MODELS), mml=st.integers(1, 32768), gib=st.integers(16, 192))
def test_fp8_kv_holds_at_least_as_many_tokens_as_bf16(registry, name, mml, gib):
    m = registry.model(name)
    bf16 = fit(m, req(memory_bytes=gib * GIB, kv_dtype="bf16", max_model_len=mml), suggest=False)
    fp8 = fit(m, req(memory_bytes=gib * GIB, kv_dtype="fp8", max_model_len=mml), suggest=False)
    assert fp8.kv_cache_tokens >= bf16.kv_cache_tokens
    assert fp8.max_model_len_that_fits >= bf16.max_model_len_that_fits

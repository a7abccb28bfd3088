"""Speculative decoding: the draft's weights and KV in `fit`, and the expected tokens per
target step and the draft's cost in `latency`, against hand-worked numbers."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capcalc.core.errors import CapcalcError
from capcalc.model.draft import MTP, make_draft, mtp_params
from capcalc.model.flops import decode_cost
from capcalc.perf.latency import (
    expected_tokens_per_step,
    predict_latency,
    predict_speculative_latency,
    verify_cost,
)
from capcalc.serving.fit import GIB, FitRequest, fit, kv_cache_groups
from capcalc.sources.loader import model_from_dict
from tests.conftest import SHIPPED, TINY

H100 = SHIPPED.gpu("h100")


def _tiny(layers: int, **arch):
    """tests/profiles/tiny-test.yaml with ``layers`` layers (a draft of the same KV shape)."""
    architecture = dict(
        num_layers=layers, hidden_size=64, num_attention_heads=4, num_kv_heads=2, head_dim=16,
        intermediate_size=128, vocab_size=256, max_context=2048, tie_word_embeddings=False,
        mlp="gated", attention_bias=True, norm="rmsnorm", norms_per_layer=2, position_embedding="rope",
    )  # fmt: skip
    architecture.update(arch)
    return model_from_dict(
        {
            "name": f"tiny-draft-{layers}",
            "source": "test",
            "native_dtype": "fp32",
            "architecture": architecture,
        },
        "test",
    )


# --------------------------------------------------------------------------- tokens per step


def test_expected_tokens_hand_worked():
    # (1 - A^(K+1)) / (1 - A): K=3, A=0.5: (1 - 1/16) / (1/2) = 1.875
    assert expected_tokens_per_step(3, 0.5) == pytest.approx(1.875)
    # K=4, A=0.8: (1 - 0.32768) / 0.2 = 3.3616
    assert expected_tokens_per_step(4, 0.8) == pytest.approx(3.3616)
    assert expected_tokens_per_step(5, 0.0) == 1.0  # nothing accepted: the target's own token
    assert expected_tokens_per_step(5, 1.0) == 6.0  # everything accepted: K + 1


@given(st.integers(1, 12), st.floats(0.0, 0.999))
def test_expected_tokens_is_the_sum_of_survival_chances(k, a):
    # token i of the draft survives with probability A^i; the target's own token always comes
    assert expected_tokens_per_step(k, a) == pytest.approx(sum(a**i for i in range(k + 1)))


# --------------------------------------------------------------------------- the verify step


def test_verify_step_reads_each_cache_once_and_multiplies_every_token():
    # 2 sequences, K = 3: 8 tokens at a context of 100 on the tiny model (fp16 KV: 2 layers x
    # 2 (K and V) x 2 KV heads x 16 x 2 bytes = 128 bytes per token per layer)
    plain, widened = decode_cost(TINY, 2, 100), decode_cost(TINY, 8, 100)
    v = verify_cost(plain, widened, 3)
    assert v.tokens == 8
    assert v.component("kv_read").bytes == 2 * 100 * 2 * 128  # two caches, once each
    assert v.component("kv_write").bytes == 8 * 2 * 128  # every token writes its KV
    assert v.component("lm_head").flops == 2 * 256 * 64 * 8  # logits of every verified token
    q, k, vv, o = 64 * 64, 64 * 32, 64 * 32, 64 * 64
    assert v.component("qkv_proj").flops == 2 * 2 * (q + k + vv) * 8
    assert v.component("o_proj").flops == 2 * 2 * o * 8


# --------------------------------------------------------------------------- latency


def _spec(a: float, k: int = 3, output: int = 2, model=TINY, draft=None, batch: int = 1):
    d = make_draft(model, draft or _tiny(1))
    return predict_speculative_latency(model, H100, 128, output, k, a, d, batch=batch)


def test_no_acceptance_is_one_token_per_step_and_slower_than_no_speculation():
    plain = predict_latency(TINY, H100, 128, 64)
    r = _spec(0.0, output=64)
    assert r.tokens_per_target_step == 1.0
    assert r.itl_s > plain.itl_s
    assert r.itl_without_spec_s == plain.itl_s


def test_full_acceptance_gives_k_plus_one_tokens_per_round():
    # one decode context (output 2): the ITL is the round's cost over K + 1 = 4 tokens
    r = _spec(1.0, k=3)
    assert r.tokens_per_target_step == 4.0
    assert r.itl_s == pytest.approx((r.verify_step_s + r.draft_steps_s) / 4)
    assert r.e2e_s == pytest.approx(r.ttft_s + r.itl_s)


def test_draft_cost_is_k_draft_decode_steps():
    one, three = _spec(0.5, k=1), _spec(0.5, k=3)
    assert three.draft_steps_s == pytest.approx(3 * one.draft_steps_s)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 8), st.floats(0.0, 1.0), st.floats(0.0, 1.0), st.integers(1, 16))
def test_higher_acceptance_is_never_slower(k, a, b, batch):
    lo, hi = sorted((a, b))
    assert _spec(hi, k, batch=batch).itl_s <= _spec(lo, k, batch=batch).itl_s * (1 + 1e-12)


def test_mtp_speculation_on_deepseek_v3():
    # DeepSeek-V3 with its MTP layer, K = 1 at A = 0.85 (DeepSeek-V3 technical report, 5.4.3:
    # "the acceptance rate of the second token prediction ranges between 85% and 90%",
    # and 1.8x the tokens per second): 1.85 tokens per round
    ds = SHIPPED.model("deepseek-v3")
    h200 = SHIPPED.gpu("h200")
    d = make_draft(ds, MTP)
    r = predict_speculative_latency(ds, h200, 1024, 256, 1, 0.85, d, tp=8)
    assert r.tokens_per_target_step == pytest.approx(1.85)
    # one MTP layer drafts for a fraction of a 61-layer target step
    assert r.draft_steps_s < r.verify_step_s / 5
    assert r.itl_s < r.itl_without_spec_s


def test_speculation_needs_all_three_and_valid_values(cli):
    r = cli("latency", "llama-3.1-8b", "--gpu", "h100", "--spec-tokens", "3", "--acceptance", "0.7")
    assert r.code == 2 and "--draft-model is missing" in r.err
    r = cli("latency", "llama-3.1-8b", "--gpu", "h100", "--spec-tokens", "3", "--acceptance", "1.2",
            "--draft-model", "mtp")  # fmt: skip
    assert r.code == 2 and "--acceptance must be in [0, 1]" in r.err
    r = cli("latency", "llama-3.1-8b", "--gpu", "h100", "--spec-tokens", "2", "--acceptance", "0.5",
            "--draft-model", "mtp", "--concurrency", "4")  # fmt: skip
    assert r.code == 2 and "--spec-tokens is for a static batch" in r.err
    assert "Traceback" not in r.err


def test_latency_json_carries_the_speculative_fields(cli):
    r = cli("latency", "deepseek-v3", "--gpu", "h200", "--tp", "8", "--spec-tokens", "1",
            "--acceptance", "0.85", "--draft-model", "mtp", "--json")  # fmt: skip
    assert r.code == 0, r.err
    rec = json.loads(r.out)
    assert rec["spec_tokens"] == 1 and rec["draft_model"] == "deepseek-v3-mtp"
    assert rec["tokens_per_target_step"] == pytest.approx(1.85)
    assert rec["itl_s"] < rec["itl_without_spec_s"]


# --------------------------------------------------------------------------- MTP weights


def test_deepseek_v3_mtp_layer_counted_from_the_config():
    # one MLA + MoE layer of DeepSeek-V3's config.json (hidden 7168, q_lora_rank 1536,
    # kv_lora_rank 512, rope 64, nope 128, v 128, 128 heads; 256 routed experts and 1 shared
    # of 2048; noaux_tc router bias), plus enorm, hnorm, shared_head.norm and eh_proj
    attention = (
        7168 * 1536 + 1536  # q_a_proj, q_a_layernorm
        + 1536 * 128 * 192  # q_b_proj
        + 7168 * 576 + 512  # kv_a_proj_with_mqa, kv_a_layernorm
        + 512 * 128 * 256  # kv_b_proj
        + 128 * 128 * 7168  # o_proj
    )  # fmt: skip
    moe = 257 * 3 * 7168 * 2048 + 256 * 7168 + 256  # experts, shared expert, router and its bias
    mtp = 3 * 7168 + 2 * 7168 * 7168  # three norms, eh_proj
    assert attention + moe + 2 * 7168 + mtp == 11_610_068_224
    assert mtp_params(SHIPPED.model("deepseek-v3")) == 11_610_068_224
    # DeepSeek's README_WEIGHTS.md: "11.5B unique parameters" for the MTP module, without the
    # shared embedding and head: within 1%
    assert abs(11_610_068_224 / 11.5e9 - 1) < 0.01


def test_glm_mtp_layer_already_in_the_profile_adds_no_weights():
    glm = SHIPPED.model("glm-4.6")
    d = make_draft(glm, MTP)
    assert d.params == glm.extra_params.count == 3_988_069_792
    assert d.counted_in_target


# --------------------------------------------------------------------------- fit


def _fit(model, draft=None, **settings):
    req = FitRequest(
        GIB, "flag", activation_bytes=0.0, overhead_bytes=0.0, max_model_len=1024, draft=draft, **settings
    )
    return fit(model, req)


def test_fit_holds_the_draft_weights_and_its_kv_layer_in_the_pool():
    # the tiny model served in fp16: 107,072 parameters (2 x 256 x 64 embedding and head, 2 layers of
    # 4096 q + 2048 k + 2048 v + 4096 o + 128 biases + 24,576 MLP + 128 norms, final norm 64), 214,144
    # bytes; its 1-layer draft 69,952 parameters (embedding, head, one layer, final norm), 139,904
    # bytes. A page is 16 tokens x 2 x 2 KV heads x 16 x 2 bytes = 2,048 bytes.
    plain = _fit(TINY)
    with_draft = _fit(TINY, make_draft(TINY, _tiny(1)))
    assert plain.weights_bytes_per_gpu == 214_144
    assert with_draft.weights_bytes_per_gpu == 214_144 + 139_904
    assert with_draft.draft_weights_bytes_per_gpu == 139_904
    assert plain.layers_per_group == 2 and with_draft.layers_per_group == 3
    assert plain.num_blocks == int((0.9 * GIB - 214_144) // 2048 // 2)  # 235,877
    assert with_draft.num_blocks == int((0.9 * GIB - 354_048) // 2048 // 3)  # 157,229
    assert with_draft.draft_kv_layers == 1
    assert with_draft.kv_bytes_per_token_per_gpu == 3 * 128


def test_fit_with_mtp_of_a_profile_that_counts_it_adds_only_kv():
    glm = SHIPPED.model("glm-4.6")
    h200 = SHIPPED.gpu("h200")
    base = dict(gpu="h200", max_model_len=32768)
    memory = h200.memory_bytes
    from capcalc.schema.deployment import Deployment

    a = fit(glm, FitRequest(memory, "datasheet", deployment=Deployment(tp=8), **base))
    b = fit(
        glm, FitRequest(memory, "datasheet", deployment=Deployment(tp=8), draft=make_draft(glm, MTP), **base)
    )
    assert b.weights_bytes_per_gpu == a.weights_bytes_per_gpu
    assert (a.layers_per_group, b.layers_per_group) == (92, 93)
    assert b.num_blocks == int(b.kv_cache_bytes_per_gpu // b.page_bytes // 93)


def test_draft_layer_joins_the_full_attention_group_of_a_sliding_model():
    # gpt-oss-20b: 12 sliding and 12 full layers; an EAGLE head of one full-attention layer of
    # the same KV shape (8 KV heads of 64) makes 13 full layers: under 1.5 x 12, so groups of 13
    # (vLLM PR 29303, gpt-oss with EAGLE: the draft layer reuses a target group)
    oss = SHIPPED.model("gpt-oss-20b")
    head = model_from_dict(
        {
            "name": "oss-eagle-head",
            "source": "test",
            "architecture": dict(
                num_layers=1, hidden_size=2880, num_attention_heads=64, num_kv_heads=8, head_dim=64,
                intermediate_size=17280, vocab_size=201088, max_context=131072,
            ),
        },
        "test",
    )  # fmt: skip
    d = make_draft(oss, head)
    groups = kv_cache_groups(oss, True, d.kv_layers())
    assert sorted((g.kind, len(g.layers)) for g in groups) == [("full", 13), ("sliding", 12)]
    assert 24 in next(g.layers for g in groups if g.kind == "full")


def test_a_draft_of_another_kv_shape_is_refused():
    other = _tiny(1, num_kv_heads=4)
    with pytest.raises(CapcalcError) as e:
        _fit(TINY, make_draft(TINY, other))
    assert e.value.parameter == "draft_model"


def test_fit_cli_draft_model(cli):
    r = cli(
        "fit", "deepseek-v3", "--gpu", "h200", "--tp", "8", "--ctx", "32768", "--draft-model", "mtp", "--json"
    )
    assert r.code == 0, r.err
    rec = json.loads(r.out)
    assert rec["draft_model"] == "deepseek-v3-mtp" and rec["draft_method"] == "mtp"
    assert rec["draft_kv_layers"] == 1 and rec["layers_per_group"] == 62
    assert rec["draft_weights_bytes_per_gpu"] > 1.3 * GIB  # 11.6 B parameters in fp8 over 8 GPUs
    r = cli("fit", "llama-3.1-8b", "--gpu", "h100", "--draft-model", "nosuch")
    assert r.code == 2 and "unknown model 'nosuch'" in r.err


def test_latency_judges_the_fit_with_the_draft():
    from capcalc.api import Session

    s = Session()
    plain = s.latency("llama-3.1-8b", "h100", 1024, 16)
    assert plain.record()["fits_in_memory"]
    # a draft of the same KV page too large for the card: Llama-3.1-70B's 141 GB beside the 8B's 16 GB
    # on one 80 GB H100
    heavy = s.latency("llama-3.1-8b", "h100", 1024, 16, spec_tokens=2, acceptance=0.5,
                      draft_model="llama-3.1-70b")  # fmt: skip
    assert not heavy.record()["fits_in_memory"]


def test_mtp_of_a_profile_without_one_says_so():
    from capcalc.api import Session

    s = Session()
    s.fit("deepseek-v3", "h200", tp=8, max_model_len=32768, draft_model="mtp")
    assert any("cannot check that the checkpoint ships one" in str(n) for n in s.notes)
    s = Session()
    s.fit("glm-4.6", "h200", tp=8, max_model_len=32768, draft_model="mtp")
    assert not any("MTP" in str(n) for n in s.notes)


def test_recurrent_layers_keep_one_state_block_per_speculative_token(registry):
    # Qwen3-Next-80B-A3B at tp=4, 32,768 tokens: 12 full layers and 36 Gated DeltaNet layers make
    # one full group and three recurrent groups of 12; the attention block is raised to 272 tokens.
    # A request holds cdiv(32768, 272) = 121 full blocks plus one state block per recurrent group,
    # and with K = 3 speculative tokens 1 + 3 per recurrent group (vLLM MambaSpec,
    # num_speculative_blocks = num_speculative_tokens)
    from capcalc.schema.deployment import Deployment
    from capcalc.serving.fit import memory_of

    m = registry.model("qwen3-next-80b-a3b")
    memory, source = memory_of(registry.gpu("h200"))
    base = dict(gpu="h200", deployment=Deployment(tp=4), max_model_len=32768)
    plain = fit(m, FitRequest(memory, source, **base))
    spec = fit(m, FitRequest(memory, source, spec_tokens=3, **base))
    assert (plain.block_size, plain.kv_cache_groups) == (272, 4)
    assert plain.blocks_per_request == 121 + 3 * 1
    assert spec.blocks_per_request == 121 + 3 * (1 + 3)
    assert spec.num_blocks == plain.num_blocks and spec.max_concurrency < plain.max_concurrency
    with pytest.raises(CapcalcError) as e:
        fit(m, FitRequest(memory, source, spec_tokens=-1, **base))
    assert e.value.parameter == "spec_tokens"

"""The parameter count checked against an instantiated model, as nanoGPT's sizing notebook
(karpathy/nanoGPT, scaling_laws.ipynb / transformer_sizing.ipynb) checks its hand count
against ``sum(p.numel() for p in model.parameters())``.

Every shipped profile the torch loop of ``capcalc measure`` builds (dense, GQA, MQA,
sliding-window, MoE) is shrunk to 2 layers and a 256-token vocabulary, keeping every width
(hidden, heads, KV heads, head_dim, MLP and expert sizes, expert counts, learned
positions), so every term of :func:`capcalc.model.params.count_params` is exercised at
its real width. The model is built on torch's ``meta`` device: shapes without storage, so
a 405B-wide layer costs no memory; one real CPU build checks that meta counts the same.
"""

from __future__ import annotations

import dataclasses

import pytest
from conftest import SHIPPED as REGISTRY
from conftest import TINY_MOE, torch_or_skip

from capcalc.core.errors import CapcalcError
from capcalc.measure.model import DecoderModel, check_supported
from capcalc.model.params import count_params
from capcalc.schema.profiles import ModelProfile

torch = torch_or_skip()
SHIPPED = REGISTRY.models

#: shipped profiles the torch loop refuses, and why (check_supported's own reasons)
REFUSED = {
    name: "multi-head latent attention"
    for name in ("deepseek-v2-lite", "deepseek-v3", "deepseek-v3.2", "deepseek-r1-nvfp4", "glm-5", "kimi-k2")
} | {
    name: "linear layers" for name in ("qwen3.5-397b-a17b", "qwen3-next-80b-a3b")
}  # Gated DeltaNet: a recurrent state the loop does not build
REFUSED |= {name: "chunked layers" for name in ("llama-4-scout", "llama-4-maverick")}
REFUSED.update(dict.fromkeys(("granite-4.0-h-small", "nemotron-nano-9b-v2", "nemotron-h-8b"), "mamba layers"))
REFUSED.update({"gemma-3n-e4b": "shared_sliding layers", "llama-3.2-11b-vision": "cross layers"})
REFUSED["falcon-h1-7b-instruct"] = "parallel_hybrid layers"  # attention and Mamba2 in one layer


def _refused(profile: ModelProfile) -> bool:
    try:
        check_supported(profile, "bf16")
    except CapcalcError:
        return True
    return False


BUILT = sorted(name for name, m in SHIPPED.items() if not _refused(m))


def shrink(m: ModelProfile, layers: int = 2, vocab: int = 256) -> ModelProfile:
    """``m`` with ``layers`` layers and a ``vocab``-token vocabulary, every width kept. A
    window model keeps one sliding and one full layer; an MoE model with leading dense
    layers keeps one of them, so the dense-MLP and expert terms both appear."""
    kinds = tuple(dict.fromkeys(m.layer_types)) or ("full",)
    layer_types = (kinds * layers)[:layers] if m.layer_types else ()
    moe = m.moe
    if moe is not None:
        moe = dataclasses.replace(moe, first_dense_layers=min(moe.first_dense_layers, layers - 1))
    return dataclasses.replace(
        m, name=f"{m.name}-shrunk", num_layers=layers, vocab_size=vocab, layer_types=layer_types, moe=moe
    )


def numel(model: DecoderModel) -> int:
    return sum(t.numel() for t in model.parameters())


def test_the_refused_profiles_are_the_listed_ones():
    refused = {name for name, m in SHIPPED.items() if _refused(m)}
    assert refused == set(REFUSED)
    for name, why in REFUSED.items():
        with pytest.raises(CapcalcError, match=why):
            check_supported(SHIPPED[name], "bf16")
    assert len(BUILT) == len(SHIPPED) - len(REFUSED) >= 30


@pytest.mark.parametrize("name", BUILT)
def test_count_params_equals_the_instantiated_module(name):
    small = shrink(SHIPPED[name])
    counted = count_params(small)
    model = DecoderModel(small, "bf16", "meta", max_positions=16)
    # a vision tower (extra_params) is counted for memory but not built by the text loop
    assert numel(model) == counted.total - counted.extra, name
    # the two embedding-sized tables, and the tie, as the module holds them
    assert model.embedding.numel() == counted.embedding
    assert (model.lm_head is model.embedding) == (counted.lm_head == 0)
    if small.position_embedding == "learned":
        assert model.positions.numel() == counted.position_embedding > 0


def test_shrinking_exercises_every_kind_of_term():
    """The shrunk set still has each piece count_params itemises, so none goes unchecked."""
    counts = [count_params(shrink(SHIPPED[n])) for n in BUILT]
    for piece in (
        "position_embedding",
        "lm_head",
        "attention_bias",
        "dense_mlp",
        "routed_experts",
        "router",
        "extra",
    ):
        assert any(getattr(c, piece) for c in counts), piece
    assert any(c.lm_head == 0 for c in counts)  # a tied head too
    small = {n: shrink(SHIPPED[n]) for n in BUILT}
    assert any(m.moe and m.moe.expert_bias for m in small.values())  # gpt-oss
    assert any(m.moe and m.moe.router_bias for m in small.values())
    assert any(m.qk_norm for m in small.values()) and any(m.mlp_bias for m in small.values())
    assert {m.norms_per_layer for m in small.values()} >= {1, 2, 4}
    assert {m.norm for m in small.values()} == {"rmsnorm", "layernorm"}
    assert {m.mlp for m in small.values()} == {"gated", "plain"}


def test_gpt2_by_hand_against_the_module():
    """GPT-2 small shrunk to 2 layers and 256 tokens, counted by hand: wte 256 x 768,
    wpe 1024 x 768, per layer c_attn 768 x 2304 + 2304, c_proj 768 x 768 + 768, c_fc
    768 x 3072 + 3072, c_proj 3072 x 768 + 768, two LayerNorms of 2 x 768; ln_f 2 x 768;
    the head tied to wte: 196,608 + 786,432 + 2 x 7,087,872 + 1,536 = 15,160,320."""
    model = DecoderModel(shrink(SHIPPED["gpt2"]), "fp32", "meta", max_positions=16)
    assert numel(model) == 15_160_320


def test_the_meta_build_counts_what_a_real_build_holds():
    """The same shrunk GPT-2 and an expert-biased MoE, allocated for real on the CPU."""
    biased = dataclasses.replace(
        TINY_MOE, moe=dataclasses.replace(TINY_MOE.moe, expert_bias=True, router_bias=True)
    )
    for profile in (shrink(SHIPPED["gpt2"]), biased):
        meta = DecoderModel(profile, "fp32", "meta", max_positions=16)
        real = DecoderModel(profile, "fp32", "cpu", max_positions=16)
        assert [tuple(t.shape) for t in meta.parameters()] == [tuple(t.shape) for t in real.parameters()]
        assert numel(real) == count_params(profile).total
        assert real.weight_bytes == 4 * numel(real)

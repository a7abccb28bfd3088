"""A Hugging Face ``config.json`` (and, when present, the checkpoint's safetensors
headers) mapped into capcalc's model profile schema.

Only JSON is read: no ``trust_remote_code``, no import of the repo's modelling
code, no tensors. Each supported ``model_type`` has a small mapping below that
names every field it reads; the result is a profile mapping validated by
:func:`capcalc.sources.loader.model_from_dict`, the one place profiles are checked.

Rules shared by all architectures:

* ``head_dim`` in the config wins; otherwise head_dim = hidden_size / num_attention_heads.
* ``num_key_value_heads`` absent means plain multi-head attention (= heads).
* The layer layout comes from ``layer_types`` when the config lists it
  ('sliding_attention' / 'full_attention'), else from the architecture's own rule
  (Gemma 2: every other layer slides; Gemma 3: ``sliding_window_pattern``; Mistral
  and Phi-3: every layer slides when ``sliding_window`` is set; Qwen2/3: layers from
  ``max_window_layers`` on when ``use_sliding_window``). A window at least as long
  as the context has no effect and is dropped.
* ``quantization_config`` sets the native (default) weight dtype: AWQ / GPTQ by
  their bits, fp8, bitsandbytes 4- or 8-bit, mxfp4, compressed-tensors by its
  weight bits; otherwise ``torch_dtype`` (absent: fp32, transformers' default).
* Fields a config may omit take the default of transformers' config class for
  that architecture (named beside each mapping).

Parameter counts: the profile's architecture gives the computed count
(:func:`capcalc.model.params.count_params`). When the folder holds the safetensors
files (or an index with ``total_parameters``) the checkpoint's own count is
recorded as the profile's exact ``params_official``; tensors outside the text
decoder (a vision tower) become ``extra_params``; multi-token-prediction layers
beyond ``num_hidden_layers``, quantisation scales, non-parameter buffers and a
duplicate of a tied LM head are left out and named.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from capcalc.core.dtypes import canonical_dtype
from capcalc.core.errors import CapcalcError
from capcalc.core.inputs import BOUNDS, excerpt, load_json
from capcalc.model.draft import mtp_params
from capcalc.model.params import count_params
from capcalc.schema.profiles import ModelProfile
from capcalc.sources.loader import model_from_dict
from capcalc.sources.safetensors_header import Checkpoint, read_checkpoint

#: older model_type spellings of a supported architecture
_MODEL_TYPE_ALIASES = {"RefinedWeb": "falcon", "RefinedWebModel": "falcon"}

_MISSING = object()

#: the bound (:data:`capcalc.core.inputs.BOUNDS`) of a config.json count, checked as it is
#: read, before a per-layer list is built from it (``num_hidden_layers: 100000000``)
_COUNT_KIND = {
    "num_hidden_layers": "layers",
    "n_layer": "layers",
    "num_layers": "layers",
    "hidden_size": "hidden_size",
    "n_embd": "hidden_size",
    "d_model": "hidden_size",
    "intermediate_size": "intermediate_size",
    "moe_intermediate_size": "intermediate_size",
    "shared_expert_intermediate_size": "intermediate_size",
    "ffn_dim": "intermediate_size",
    "n_inner": "intermediate_size",
    "num_attention_heads": "heads",
    "num_key_value_heads": "heads",
    "n_head": "heads",
    "head_dim": "head_dim",
    "vocab_size": "vocab",
    "max_position_embeddings": "context",
    "n_positions": "context",
    "sliding_window": "context",
    "num_local_experts": "experts",
    "num_experts": "experts",
    "n_routed_experts": "experts",
    "n_shared_experts": "experts",
    "num_experts_per_tok": "experts",
    "first_k_dense_replace": "layers",
    "max_window_layers": "layers",
    "num_nextn_predict_layers": "layers",
    "decoder_sparse_step": "layers",
    "moe_layer_freq": "layers",
    "sliding_window_pattern": "layers",
    "num_ln_in_parallel_attn": "layers",
    "num_kv_heads": "heads",
    "kv_lora_rank": "hidden_size",
    "q_lora_rank": "hidden_size",
    "word_embed_proj_dim": "hidden_size",
    "image_size": "hidden_size",
    "patch_size": "hidden_size",
    "num_channels": "hidden_size",
    "qk_nope_head_dim": "head_dim",
    "qk_rope_head_dim": "head_dim",
    "v_head_dim": "head_dim",
    "ffn_hidden_size": "intermediate_size",
    "full_attention_interval": "layers",
    "linear_num_key_heads": "heads",
    "linear_num_value_heads": "heads",
    "linear_key_head_dim": "head_dim",
    "linear_value_head_dim": "head_dim",
    "linear_conv_kernel_dim": "head_dim",
    "mamba_n_heads": "heads",
    "mamba_d_head": "head_dim",
    "mamba_d_state": "head_dim",
    "mamba_n_groups": "heads",
    "mamba_d_conv": "head_dim",
    "mamba_expand": "heads",
    "mamba_d_ssm": "intermediate_size",
    "shared_intermediate_size": "intermediate_size",
    "mtp_num_hidden_layers": "layers",
    "attention_chunk_size": "context",
    "interleave_moe_layer_step": "layers",
    "no_rope_layer_interval": "layers",
    "intermediate_size_mlp": "intermediate_size",
    "projector_input_dim": "hidden_size",
    "projector_output_dim": "hidden_size",
    "vision_output_dim": "hidden_size",
    "index_n_heads": "heads",
    "index_head_dim": "head_dim",
    "index_topk": "context",
    "mamba_num_heads": "heads",
    "mamba_head_dim": "head_dim",
    "ssm_state_size": "head_dim",
    "n_groups": "heads",
    "mamba_num_groups": "heads",
    "conv_kernel": "head_dim",
}


def supported_list() -> str:
    return ", ".join(SUPPORTED)


# --------------------------------------------------------------------------- config reading


class _Cfg:
    """One config mapping of one architecture: typed reads with one-line errors."""

    def __init__(self, data: dict, where: str, family: str):
        self.data = data
        self.where = where
        self.family = family

    def has(self, key: str) -> bool:
        return key in self.data

    def get(self, *keys: str, default: Any = None) -> Any:
        for key in keys:
            if self.data.get(key) is not None:
                return self.data[key]
        return default

    def int(self, *keys: str, default: Any = _MISSING, minimum: int = 1) -> int:
        value = self.get(*keys, default=default)
        if value is _MISSING:
            raise CapcalcError(f"{self.where}: missing {keys[0]!r} (a {self.family} config needs it)")
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise CapcalcError(
                f"{self.where}: {keys[0]!r} must be a whole number >= {minimum}, got {excerpt(value)}"
            )
        bound = BOUNDS[_COUNT_KIND.get(keys[0], "count")]
        if value > bound.high:
            raise CapcalcError(
                f"{self.where}: {keys[0]!r} is {excerpt(value)}, above the bound {bound.high:,} ({bound.reason})"
            )
        return value

    def flag(self, key: str, default: bool) -> bool:
        value = self.get(key, default=default)
        if not isinstance(value, bool):
            raise CapcalcError(f"{self.where}: {key!r} must be true or false, got {excerpt(value)}")
        return value

    def fail(self, problem: str) -> CapcalcError:
        return CapcalcError(f"{self.where}: {problem}")


@dataclass
class _Mapping:
    """What one architecture's mapping produced (before checkpoint facts)."""

    architecture: dict
    moe: dict | None = None
    mla: dict | None = None
    window: int | None = None
    layer_types: list[str] | None = None
    extra_params: dict | None = None
    notes: list[str] = field(default_factory=list)
    #: the kinds of a hybrid model's layers ('full' / 'linear' / 'mamba' / 'parallel_hybrid'), with its mixer block
    kinds: list[str] | None = None
    linear_attention: dict | None = None
    mamba: dict | None = None
    chunk: int | None = None
    mixer_only: bool = False


def _head_dim(c: _Cfg, hidden: int, heads: int, default: int | None = None) -> int:
    if c.get("head_dim") is not None:
        return c.int("head_dim")
    if default is not None:
        return default
    if hidden % heads:
        raise c.fail(
            f"no 'head_dim' and hidden_size {hidden} is not divisible by num_attention_heads {heads}"
        )
    return hidden // heads


def _shape(
    c: _Cfg,
    *,
    hidden: int,
    heads: int,
    kv_heads: int,
    layers: int,
    intermediate: int,
    max_context: int,
    tie: bool,
    head_dim_default: int | None = None,
) -> dict:
    """The sizes every architecture block has (head_dim: explicit in the config, else hidden / heads)."""
    return dict(
        num_layers=layers,
        hidden_size=hidden,
        num_attention_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=_head_dim(c, hidden, heads, head_dim_default),
        intermediate_size=intermediate,
        vocab_size=c.int("vocab_size"),
        max_context=max_context,
        tie_word_embeddings=c.flag("tie_word_embeddings", tie),
    )


def _decoder(
    c: _Cfg,
    *,
    tie_default: bool,
    qkv_bias: bool = False,
    o_bias: bool = False,
    mlp_bias: bool = False,
    qk_norm: bool = False,
    norms_per_layer: int = 2,
    head_dim_default: int | None = None,
    max_context_default: Any = _MISSING,
) -> dict:
    """The architecture block of a Llama-style decoder (RMSNorm, gated MLP, RoPE)."""
    heads = c.int("num_attention_heads")
    sizes = _shape(
        c,
        hidden=c.int("hidden_size"),
        heads=heads,
        kv_heads=c.int("num_key_value_heads", default=heads),
        layers=c.int("num_hidden_layers"),
        intermediate=c.int("intermediate_size"),
        max_context=c.int("max_position_embeddings", default=max_context_default),
        tie=tie_default,
        head_dim_default=head_dim_default,
    )
    style = dict(mlp="gated", norm="rmsnorm", position_embedding="rope", qk_norm=qk_norm)
    biases = dict(attention_bias=qkv_bias, attention_output_bias=o_bias, mlp_bias=mlp_bias)
    return {**sizes, **style, **biases, "norms_per_layer": norms_per_layer}


def _plain_block(
    c: _Cfg,
    *,
    hidden: int,
    heads: int,
    layers: int,
    intermediate: int,
    max_context: int,
    bias: bool,
    kv_heads: int | None = None,
    norms_per_layer: int = 2,
    position: str = "learned",
) -> dict:
    """The architecture block of a GPT-style decoder: LayerNorm with bias, plain (ungated)
    MLP, one ``bias`` switch for every linear layer, LM head tied by default."""
    sizes = _shape(
        c,
        hidden=hidden,
        heads=heads,
        kv_heads=kv_heads or heads,
        layers=layers,
        intermediate=intermediate,
        max_context=max_context,
        tie=True,
    )
    style = dict(mlp="plain", norm="layernorm", position_embedding=position, qk_norm=False)
    biases = dict(attention_bias=bias, attention_output_bias=bias, mlp_bias=bias)
    return {**sizes, **style, **biases, "norms_per_layer": norms_per_layer}


def _window(c: _Cfg, rule: Callable[[int], bool] | None, default: int | None = None):
    """(window, per-layer types): ``layer_types`` if listed, else ``rule(i)`` says if layer i slides."""
    layers = c.int("num_hidden_layers")
    listed = c.get("layer_types")
    if listed is not None:
        mapping = {"sliding_attention": "sliding", "full_attention": "full"}
        if not isinstance(listed, list) or len(listed) != layers or any(t not in mapping for t in listed):
            raise c.fail(
                f"layer_types must list {layers} entries of 'sliding_attention' / 'full_attention' "
                f"(capcalc cannot model {excerpt(sorted(set(map(str, listed)) - set(mapping)) or listed)})"
            )
        types = [mapping[t] for t in listed]
    elif rule is not None:
        types = ["sliding" if rule(i) else "full" for i in range(layers)]
    else:
        return None, None
    if "sliding" not in types:
        return None, None
    return c.int("sliding_window", default=default if default is not None else _MISSING), types


def _moe_layers(c: _Cfg, is_moe: Callable[[int], bool], what: str) -> int:
    """first_dense_layers, when the dense (non-MoE) layers are a leading run."""
    layers = c.int("num_hidden_layers")
    flags = [is_moe(i) for i in range(layers)]
    first = flags.index(True) if True in flags else layers
    if not all(flags[first:]) or first >= layers:
        dense = [i for i, f in enumerate(flags) if not f]
        raise c.fail(
            f"dense layers {dense[:8]}{'...' if len(dense) > 8 else ''} interleaved with MoE layers ({what}): "
            "capcalc's profile schema only has leading dense layers (first_dense_layers)"
        )
    return first


# --------------------------------------------------------------------------- architectures


def _llama(c: _Cfg) -> _Mapping:
    # LlamaConfig: attention_bias (q, k, v and o) and mlp_bias default false; untied
    bias = c.flag("attention_bias", False)
    arch = _decoder(c, tie_default=False, qkv_bias=bias, o_bias=bias, mlp_bias=c.flag("mlp_bias", False))
    return _Mapping(arch)


def _mistral(c: _Cfg) -> _Mapping:
    # MistralConfig: no biases, untied, sliding_window default 4096 applied to every layer
    arch = _decoder(c, tie_default=False)
    default = 4096 if not c.has("sliding_window") else None
    window, types = _window(
        c, (lambda i: True) if c.get("sliding_window", default=default) else None, default
    )
    return _Mapping(arch, window=window, layer_types=types)


def _mixtral(c: _Cfg) -> _Mapping:
    # MixtralConfig: every layer a sparse MoE of num_local_experts SwiGLU experts of
    # width intermediate_size, router without bias; sliding_window default null
    arch = _decoder(c, tie_default=False)
    moe = dict(
        num_experts=c.int("num_local_experts"),
        experts_per_token=c.int("num_experts_per_tok"),
        expert_intermediate_size=arch["intermediate_size"],
    )
    window, types = _window(c, (lambda i: True) if c.get("sliding_window") else None)
    return _Mapping(arch, moe=moe, window=window, layer_types=types)


def _qwen_window(c: _Cfg):
    """Qwen2/Qwen3: layers from max_window_layers on slide, only when use_sliding_window."""
    if not c.flag("use_sliding_window", False):
        return _window(c, None)  # layer_types, if listed, still decide
    start = c.int("max_window_layers", default=28, minimum=0)
    return _window(c, lambda i: i >= start, default=4096)


def _qwen_moe(c: _Cfg, arch: dict, shared_width: int) -> dict:
    """Qwen2-MoE / Qwen3-MoE: layer i is MoE unless in mlp_only_layers, every decoder_sparse_step."""
    experts = c.int("num_experts")
    step = c.int("decoder_sparse_step", default=1)
    dense_only = set(c.get("mlp_only_layers", default=[]))
    first = _moe_layers(
        c, lambda i: i not in dense_only and (i + 1) % step == 0, "mlp_only_layers/decoder_sparse_step"
    )
    moe = dict(
        num_experts=experts,
        experts_per_token=c.int("num_experts_per_tok"),
        expert_intermediate_size=c.int("moe_intermediate_size"),
        first_dense_layers=first,
    )
    if shared_width:
        moe.update(num_shared_experts=1, shared_expert_intermediate_size=shared_width)
    return moe


def _qwen2(c: _Cfg) -> _Mapping:
    # Qwen2Attention: q, k, v with bias, o without; untied by default
    arch = _decoder(c, tie_default=False, qkv_bias=True)
    window, types = _qwen_window(c)
    return _Mapping(arch, window=window, layer_types=types)


def _qwen2_moe(c: _Cfg) -> _Mapping:
    arch = _decoder(c, tie_default=False, qkv_bias=c.flag("qkv_bias", True))
    shared = c.int("shared_expert_intermediate_size", default=0, minimum=0)
    window, types = _qwen_window(c)
    notes = []
    if shared:
        notes.append(
            "Not modelled: the shared expert's sigmoid gate (one hidden_size vector per MoE layer, "
            f"{arch['hidden_size']} parameters each), under 0.01% of the total."
        )
    return _Mapping(arch, moe=_qwen_moe(c, arch, shared), window=window, layer_types=types, notes=notes)


def _qwen3(c: _Cfg) -> _Mapping:
    # Qwen3Attention: attention_bias (default false) on q, k, v, o; per-head RMSNorm on q and k
    bias = c.flag("attention_bias", False)
    arch = _decoder(c, tie_default=False, qkv_bias=bias, o_bias=bias, qk_norm=True, head_dim_default=None)
    window, types = _qwen_window(c)
    return _Mapping(arch, window=window, layer_types=types)


def _qwen3_moe(c: _Cfg) -> _Mapping:
    mapping = _qwen3(c)
    mapping.moe = _qwen_moe(c, mapping.architecture, 0)
    return mapping


def _gemma2(c: _Cfg) -> _Mapping:
    # Gemma2Config: head_dim 256, tied, 4 RMSNorms per layer, sliding_window 4096 on even layers
    bias = c.flag("attention_bias", False)
    arch = _decoder(
        c,
        tie_default=True,
        qkv_bias=bias,
        o_bias=bias,
        norms_per_layer=4,
        head_dim_default=256,
        max_context_default=8192,
    )
    window, types = _window(c, lambda i: i % 2 == 0, default=4096)
    return _Mapping(arch, window=window, layer_types=types)


#: Gemma3TextConfig defaults, for fields a Gemma 3 config.json leaves out
_GEMMA3_TEXT_DEFAULTS = dict(
    vocab_size=262_208,
    hidden_size=2304,
    intermediate_size=9216,
    num_hidden_layers=26,
    num_attention_heads=8,
    num_key_value_heads=4,
    head_dim=256,
    max_position_embeddings=131_072,
    tie_word_embeddings=True,
    attention_bias=False,
    sliding_window=4096,
    sliding_window_pattern=6,
)


def _gemma3_text(c: _Cfg) -> _Mapping:
    # Gemma3TextConfig defaults above; QK-norm; 4 RMSNorms per layer; layer i slides unless
    # (i + 1) is a multiple of sliding_window_pattern (5 local : 1 global)
    c = _Cfg(
        {**_GEMMA3_TEXT_DEFAULTS, **{k: v for k, v in c.data.items() if v is not None}}, c.where, c.family
    )
    bias = c.flag("attention_bias", False)
    arch = _decoder(c, tie_default=True, qkv_bias=bias, o_bias=bias, qk_norm=True, norms_per_layer=4)
    pattern = c.int("sliding_window_pattern", "_sliding_window_pattern")
    window, types = _window(c, lambda i: (i + 1) % pattern != 0)
    return _Mapping(arch, window=window, layer_types=types)


def siglip_vision_params(vision: dict, text_hidden: int) -> int:
    """SigLIP vision tower (vision_use_head false) plus the Gemma 3 projector.

    conv patch embedding (channels x patch^2 x d + d) + (image/patch)^2 x d positions
    + layers x [4 (d^2 + d) attention + (d f + f) + (f d + d) MLP + 2 LayerNorms (4 d)]
    + post LayerNorm (2 d) + projector (d x text_hidden + RMSNorm d).
    Defaults are SiglipVisionConfig's (d 768, f 3072, 12 layers, 3 channels, image 224, patch 16)."""
    v = _Cfg(vision, "vision_config", "siglip_vision_model")
    d = v.int("hidden_size", default=768)
    f = v.int("intermediate_size", default=3072)
    layers = v.int("num_hidden_layers", default=12)
    channels = v.int("num_channels", default=3)
    image, patch = v.int("image_size", default=224), v.int("patch_size", default=16)
    if v.flag("vision_use_head", False):
        raise v.fail("vision_use_head true: capcalc counts the SigLIP tower without its pooling head only")
    tower = channels * patch * patch * d + d + (image // patch) ** 2 * d
    tower += layers * (4 * (d * d + d) + (d * f + f) + (f * d + d) + 4 * d) + 2 * d
    return tower + d * text_hidden + d


def _gemma3(c: _Cfg) -> _Mapping:
    text = c.get("text_config")
    if not isinstance(text, dict):
        raise c.fail("missing 'text_config' (a multimodal gemma3 config nests the text decoder there)")
    mapping = _gemma3_text(_Cfg(text, f"{c.where}: text_config", "gemma3_text"))
    vision = c.get("vision_config")
    if isinstance(vision, dict) and vision.get("model_type", "siglip_vision_model") == "siglip_vision_model":
        count = siglip_vision_params(vision, mapping.architecture["hidden_size"])
        mapping.extra_params = dict(
            count=count,
            what="SigLIP vision tower and Gemma 3 multimodal projector",
            source="computed from config.json vision_config (SiglipVisionModel without head + projector)",
        )
    else:
        mapping.notes.append("No SigLIP vision_config: weights outside the text decoder are not counted.")
    return mapping


#: Gemma3nTextConfig defaults (transformers models/gemma3n/configuration_gemma3n.py, whose
#: defaults are google/gemma-3n-E4B's), for fields a Gemma 3n config.json leaves out
_GEMMA3N_TEXT_DEFAULTS = dict(
    vocab_size=262_400,
    hidden_size=2048,
    intermediate_size=16_384,
    num_hidden_layers=35,
    num_attention_heads=8,
    num_key_value_heads=2,
    head_dim=256,
    max_position_embeddings=32_768,
    tie_word_embeddings=True,
    attention_bias=False,
    sliding_window=512,
    vocab_size_per_layer_input=262_144,
    hidden_size_per_layer_input=256,
    altup_num_inputs=4,
    num_kv_shared_layers=15,
    laurel_rank=64,
)


def gemma3n_extra_params(c: _Cfg) -> int:
    """Gemma 3n's text-decoder parameters outside a Gemma 3 decoder layer (transformers
    Gemma3nTextModel / Gemma3nTextDecoderLayer), with h hidden, L layers, P the per-layer
    input width, n AltUp inputs, r the LAuReL rank, V' the per-layer vocabulary::

        per-layer embeddings   V' x L P  (embed_tokens_per_layer, a table looked up per token)
        + h x L P + P          (per_layer_model_projection, per_layer_projection_norm)
        + 2 (n - 1) h^2        (altup_projections, altup_unembed_projections)
        + L x [2 h r + h                        LAuReL: linear_left, linear_right, post_laurel_norm
               + h + n^2 + n^3 + h n + h        AltUp: correct_output_scale, correction_coefs,
                                                prediction_coefs (n -> n^2), modality_router, router_norm
               + 2 h P + h]                     per_layer_input_gate, per_layer_projection, its norm

    (v_norm has no scale; q_norm and k_norm are the profile's qk_norm)."""
    h, layers = c.int("hidden_size"), c.int("num_hidden_layers")
    p, n = c.int("hidden_size_per_layer_input"), c.int("altup_num_inputs")
    r, vocab = c.int("laurel_rank"), c.int("vocab_size_per_layer_input")
    model = vocab * layers * p + h * layers * p + p + 2 * (n - 1) * h * h
    per_layer = (2 * h * r + h) + (h + n * n + n**3 + h * n + h) + (2 * h * p + h)
    return model + layers * per_layer


def _gemma3n_text(c: _Cfg) -> _Mapping:
    # Gemma3nTextConfig defaults above; a Gemma 3 decoder (QK-norm, 4 RMSNorms per layer,
    # gelu-tanh gated MLP, tied) with layer_types (default: every 5th layer full) and the last
    # num_kv_shared_layers attending over the KV of the last earlier layer of their type
    # (Gemma3nTextAttention.kv_shared_layer_index; vLLM gives them no KV cache of their own,
    # PR 18212 kv_sharing_target_layer_name). The per-layer embeddings, AltUp and LAuReL
    # weights are extra parameters (gemma3n_extra_params).
    c = _Cfg(
        {**_GEMMA3N_TEXT_DEFAULTS, **{k: v for k, v in c.data.items() if v is not None}}, c.where, c.family
    )
    sizes = c.get("intermediate_size")
    if isinstance(sizes, list):
        if not sizes or len(set(map(str, sizes))) != 1:
            raise c.fail(
                f"intermediate_size varies by layer ({excerpt(sorted(set(map(str, sizes))))}): capcalc's "
                "profile has one MLP width (a MatFormer slice of mixed widths is not modelled)"
            )
        c = _Cfg({**c.data, "intermediate_size": sizes[0]}, c.where, c.family)
    bias = c.flag("attention_bias", False)
    arch = _decoder(c, tie_default=True, qkv_bias=bias, o_bias=bias, qk_norm=True, norms_per_layer=4)
    window, types = _window(c, lambda i: (i + 1) % 5 != 0)
    layers = arch["num_layers"]
    types = types or ["full"] * layers
    shared = c.int("num_kv_shared_layers", minimum=0)
    if shared >= layers:
        raise c.fail(f"num_kv_shared_layers {shared} leaves no layer of the {layers} to hold the KV")
    first = layers - shared
    for kind in set(types[first:]):
        if kind not in types[:first]:
            raise c.fail(f"a KV-shared {kind} layer has no earlier {kind} layer to share the KV of")
    kinds = types[:first] + [f"shared_{kind}" for kind in types[first:]]
    m = _Mapping(arch, window=window, kinds=kinds)
    count = gemma3n_extra_params(c)
    m.extra_params = dict(
        count=count,
        what="per-layer embeddings (embed_tokens_per_layer), their projection, AltUp and LAuReL weights",
        source="computed from config.json text_config (transformers Gemma3nTextModel)",
    )
    m.notes.append(
        f"The last {shared} layers reuse the KV of layers before them and cache nothing. The "
        f"{count:,} parameters of the per-layer embeddings, AltUp and LAuReL are extra_params: in "
        "memory, not in the per-token FLOPs (the table is looked up; the rest is under 2% of the "
        "matrix products)."
    )
    return m


def _gemma3n(c: _Cfg) -> _Mapping:
    # Gemma3nForConditionalGeneration: the text decoder under text_config; the MobileNet-v5
    # vision tower and the audio encoder are not counted (their sizes are not in config.json)
    text = c.get("text_config")
    if not isinstance(text, dict):
        raise c.fail("missing 'text_config' (a gemma3n config nests the text decoder there)")
    mapping = _gemma3n_text(_Cfg(text, f"{c.where}: text_config", "gemma3n_text"))
    if c.get("vision_config") is not None or c.get("audio_config") is not None:
        mapping.notes.append(
            "The vision (MobileNet-v5) and audio encoders are not counted: config.json does not give "
            "their sizes (timm's mobilenetv5_300m_enc and a 12-layer conformer)."
        )
    return mapping


def mllama_vision_params(vision: dict, text_hidden: int) -> int:
    """The Llama-3.2-Vision image tower and projector (transformers MllamaVisionModel and
    multi_modal_projector), with d hidden, f intermediate, N = (image / patch)^2 + 1 patches
    and the class token, T max_num_tiles, R = len(supported_aspect_ratios) + 1 aspect ids::

        patch conv 3 p^2 d (no bias) + class embedding d
        + gated positions (1 + N d) + tile positions R x T N d
        + pre- and post-tile aspect embeddings 2 (R x T d + 1 gate)
        + layernorm_pre and layernorm_post 4 d
        + layers x [4 d^2 attention (no bias) + (d f + f) + (f d + d) MLP + 4 d LayerNorms]
        + global layers x [the same + 2 gates]
        + projector vision_output_dim x text_hidden + text_hidden

    Defaults are MllamaVisionConfig's (d 1280, f 5120, 32 + 8 global layers, image 448,
    patch 14, 4 tiles, 8 aspect ratios, output 7680)."""
    v = _Cfg(vision, "vision_config", "mllama_vision_model")
    d, f = v.int("hidden_size", default=1280), v.int("intermediate_size", default=5120)
    layers, global_layers = v.int("num_hidden_layers", default=32), v.int("num_global_layers", default=8)
    image, patch = v.int("image_size", default=448), v.int("patch_size", default=14)
    tiles, channels = v.int("max_num_tiles", default=4), v.int("num_channels", default=3)
    ratios = v.get("supported_aspect_ratios")
    aspect_ids = (len(ratios) if isinstance(ratios, list) else 8) + 1
    out = v.int("vision_output_dim", default=7680)
    patches = (image // patch) ** 2 + 1
    encoder = 4 * d * d + (d * f + f) + (f * d + d) + 4 * d
    tower = channels * patch * patch * d + d + (1 + patches * d) + aspect_ids * tiles * patches * d
    tower += 2 * (aspect_ids * tiles * d + 1) + 4 * d
    tower += layers * encoder + global_layers * (encoder + 2)
    return tower + out * text_hidden + text_hidden


def _mllama(c: _Cfg) -> _Mapping:
    # MllamaForConditionalGeneration (Llama-3.2-Vision): a Llama-3 text decoder under
    # text_config whose cross_attention_layers attend to the image tokens (kind 'cross': their
    # KV holds the request's image tokens, not its text), the vision tower under vision_config.
    # Extra parameters: the tower and projector, the 8 image-token rows of embed_tokens
    # (vocab_size + 8), and each cross layer's q_norm, k_norm and two tanh gates.
    text = c.get("text_config")
    if not isinstance(text, dict):
        raise c.fail("missing 'text_config' (an mllama config nests the text decoder there)")
    t = _Cfg(text, f"{c.where}: text_config", "mllama_text_model")
    arch = _decoder(t, tie_default=False)
    layers = arch["num_layers"]
    cross = t.get("cross_attention_layers")
    if (
        not isinstance(cross, list)
        or not cross
        or any(not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < layers for i in cross)
    ):
        raise t.fail(f"cross_attention_layers must list layer indices below {layers}, got {excerpt(cross)}")
    kinds = ["cross" if i in set(cross) else "full" for i in range(layers)]
    m = _Mapping(arch, kinds=kinds)
    h, head_dim = arch["hidden_size"], arch["head_dim"]
    extra = 8 * h + len(set(cross)) * (2 * head_dim + 2)
    vision = c.get("vision_config")
    if isinstance(vision, dict):
        tower = mllama_vision_params(vision, h)
        extra += tower
        what = "Mllama vision tower and projector, 8 image-token embedding rows, the cross layers' q/k norms and gates"
    else:
        what = "8 image-token embedding rows, the cross layers' q/k norms and gates"
        m.notes.append("No vision_config: the vision tower is not counted.")
    m.extra_params = dict(
        count=extra, what=what, source="computed from config.json (transformers Mllama modules)"
    )
    v = _Cfg(vision if isinstance(vision, dict) else {}, "vision_config", "mllama_vision_model")
    per_image = v.int("max_num_tiles", default=4) * (
        (v.int("image_size", default=448) // v.int("patch_size", default=14)) ** 2 + 1
    )
    m.notes.append(
        f"The {len(set(cross))} cross-attention layers hold the KV of the image tokens, {per_image:,} per image "
        "(max_num_tiles x ((image_size / patch_size)^2 + 1)): `kv --image-tokens`; `fit` reserves vLLM's "
        "max_num_encoder_input_tokens (max_num_batched_tokens) per request."
    )
    return m


def _phi3(c: _Cfg) -> _Mapping:
    # Phi3: fused qkv_proj and gate_up_proj (same counts as separate), no biases, untied;
    # sliding_window, when set, applies to every layer
    arch = _decoder(c, tie_default=False)
    window, types = _window(c, (lambda i: True) if c.get("sliding_window") else None)
    return _Mapping(arch, window=window, layer_types=types)


def _deepseek(c: _Cfg) -> _Mapping:
    # DeepseekV2/V3Config: MLA (q through q_lora_rank when set), MoE after first_k_dense_replace
    # dense layers, n_shared_experts always-on experts of moe_intermediate_size, untied
    heads = c.int("num_attention_heads")
    nope, rope = c.int("qk_nope_head_dim"), c.int("qk_rope_head_dim")
    if c.flag("attention_bias", False):
        raise c.fail("attention_bias true: capcalc's MLA accounting has no projection biases")
    arch = _decoder(c, tie_default=False, head_dim_default=nope + rope)
    # MLA: every query head has its own key/value from the latent; head_dim is q/k's (nope + rope)
    arch.update(num_kv_heads=heads, head_dim=nope + rope)
    mla = dict(
        kv_lora_rank=c.int("kv_lora_rank"),
        qk_rope_head_dim=rope,
        qk_nope_head_dim=nope,
        v_head_dim=c.int("v_head_dim"),
        q_lora_rank=c.get("q_lora_rank") or None,
    )
    if mla["q_lora_rank"] is not None:
        mla["q_lora_rank"] = c.int("q_lora_rank")
    moe = None
    notes = []
    if c.get("n_routed_experts"):
        freq = c.int("moe_layer_freq", default=1)
        first_k = c.int("first_k_dense_replace", default=0, minimum=0)
        first = _moe_layers(c, lambda i: i >= first_k and i % freq == 0, "moe_layer_freq")
        moe = dict(
            num_experts=c.int("n_routed_experts"),
            experts_per_token=c.int("num_experts_per_tok"),
            expert_intermediate_size=c.int("moe_intermediate_size"),
            num_shared_experts=c.int("n_shared_experts", default=0, minimum=0),
            shared_expert_intermediate_size=c.int("moe_intermediate_size"),
            first_dense_layers=first,
            # noaux_tc routing adds e_score_correction_bias, one value per routed expert
            router_bias=c.get("topk_method") == "noaux_tc",
        )
    mtp = c.int("num_nextn_predict_layers", default=0, minimum=0)
    if mtp:
        notes.append(
            f"The {mtp} multi-token-prediction layer(s) stored after the {arch['num_layers']} main layers "
            "are not part of the profile (they are not used for ordinary decoding)."
        )
    return _Mapping(arch, moe=moe, mla=mla, notes=notes)


def _gpt2(c: _Cfg) -> _Mapping:
    # GPT2Config: learned positions (n_positions), LayerNorm with bias, biases on every
    # linear layer, plain GELU MLP of n_inner (null: 4 x n_embd), tied LM head
    hidden = c.int("n_embd", "hidden_size")
    arch = _plain_block(
        c,
        hidden=hidden,
        heads=c.int("n_head", "num_attention_heads"),
        layers=c.int("n_layer", "num_hidden_layers"),
        intermediate=c.int("n_inner", default=4 * hidden),
        max_context=c.int("n_positions", "max_position_embeddings"),
        bias=True,
    )
    return _Mapping(arch)


def _opt(c: _Cfg) -> _Mapping:
    # OPTConfig: learned positions with 2 extra rows (offset 2), LayerNorm with bias,
    # enable_bias (default true) on q, k, v, o, fc1, fc2, plain ReLU MLP of ffn_dim, tied
    hidden = c.int("hidden_size")
    heads = c.int("num_attention_heads")
    proj = c.int("word_embed_proj_dim", default=hidden)
    if proj != hidden:
        raise c.fail(
            f"word_embed_proj_dim {proj} != hidden_size {hidden} (OPT-350m's project_in/project_out): "
            "capcalc's profile schema has no embedding projection; write the profile by hand"
        )
    if not c.flag("layer_norm_elementwise_affine", True):
        raise c.fail(
            "layer_norm_elementwise_affine false: capcalc's profile schema has no parameter-free norms"
        )
    max_ctx = c.int("max_position_embeddings")
    arch = _plain_block(
        c,
        hidden=hidden,
        heads=heads,
        layers=c.int("num_hidden_layers"),
        intermediate=c.int("ffn_dim"),
        max_context=max_ctx,
        bias=c.flag("enable_bias", True),
    )
    notes = [
        f"OPT's learned position table has max_position_embeddings + 2 rows ({max_ctx + 2} x {hidden}: "
        f"positions start at offset 2); the profile counts {max_ctx} rows, {2 * hidden} parameters fewer."
    ]
    if not c.flag("do_layer_norm_before", True) or c.flag("_remove_final_layer_norm", False):
        notes.append(
            f"This OPT has no final LayerNorm; the profile still counts one ({2 * hidden} parameters)."
        )
    return _Mapping(arch, notes=notes)


def _falcon(c: _Cfg) -> _Mapping:
    # FalconConfig: fused query_key_value (heads + 2 kv_heads) x head_dim wide, `bias` on every
    # linear layer, LayerNorm with bias, plain GELU MLP of ffn_hidden_size (null: 4 x hidden),
    # rotary unless alibi, tied LM head, max_position_embeddings default 2048.
    hidden = c.int("hidden_size", "n_embed")
    heads = c.int("num_attention_heads", "n_head")
    new_arch = c.flag("new_decoder_architecture", False)
    parallel = c.flag("parallel_attn", True)
    if new_arch:
        kv_heads = c.int("num_kv_heads", "n_head_kv", default=heads)
    elif c.flag("multi_query", True):
        kv_heads = 1
    else:
        kv_heads = heads
    if new_arch:
        # FalconDecoderLayer: ln_attn + ln_mlp when num_ln_in_parallel_attn is 2 (its default
        # for the new architecture), else one input_layernorm
        norms = 2 if c.int("num_ln_in_parallel_attn", default=2) == 2 else 1
    else:
        norms = 1 if parallel else 2  # parallel: one input_layernorm; else input + post-attention
    arch = _plain_block(
        c,
        hidden=hidden,
        heads=heads,
        kv_heads=kv_heads,
        layers=c.int("num_hidden_layers", "n_layer"),
        intermediate=c.int("ffn_hidden_size", default=4 * hidden),
        max_context=c.int("max_position_embeddings", default=2048),
        bias=c.flag("bias", False),
        norms_per_layer=norms,
        position="alibi" if c.flag("alibi", False) else "rope",
    )
    notes = [
        f"Falcon {'parallel' if parallel else 'sequential'} attention/MLP block with {norms} LayerNorm(s) "
        f"per layer{' (new decoder architecture)' if new_arch else ''}; the fused query_key_value "
        "projection counts as separate q, k, v. The parallel block changes the data flow, not the "
        "parameter count. Falcon checkpoints may store a duplicate of the tied LM head, which is not counted."
    ]
    return _Mapping(arch, notes=notes)


def _gpt_oss(c: _Cfg) -> _Mapping:
    # GptOssConfig: q, k, v, o with bias (attention_bias default true), every layer a MoE of
    # num_local_experts experts of width intermediate_size with biases, router with bias,
    # layer_types alternating sliding (even) / full, untied
    bias = c.flag("attention_bias", True)
    arch = _decoder(c, tie_default=False, qkv_bias=bias, o_bias=bias)
    moe = dict(
        num_experts=c.int("num_local_experts"),
        experts_per_token=c.int("num_experts_per_tok", "experts_per_token"),
        expert_intermediate_size=arch["intermediate_size"],
        expert_bias=True,
        router_bias=True,
    )
    window, types = _window(c, lambda i: i % 2 == 0, default=128)
    notes = [
        f"Not modelled: the learned attention sinks ({arch['num_attention_heads']} per layer), negligible."
    ]
    return _Mapping(arch, moe=moe, window=window, layer_types=types, notes=notes)


def _cohere(c: _Cfg) -> _Mapping:
    # CohereConfig: parallel attention/MLP block behind one LayerNorm without bias
    # (weight only), SwiGLU MLP, tied LM head, attention_bias default false, optional
    # per-head q/k LayerNorms (use_qk_norm), max_position_embeddings default 8192
    bias = c.flag("attention_bias", False)
    qk_norm = c.flag("use_qk_norm", False)
    arch = _decoder(
        c,
        tie_default=True,
        qkv_bias=bias,
        o_bias=bias,
        qk_norm=qk_norm,
        norms_per_layer=1,
        max_context_default=8192,
    )
    notes = [
        "Cohere's parallel block reads one LayerNorm per layer and its LayerNorms have no bias: the "
        "profile counts them as weight-only norms (norm rmsnorm, norms_per_layer 1), which is exact for "
        "the parameter count; the parallel block changes the data flow, not the count."
    ]
    if qk_norm:
        h, kv, d = arch["num_attention_heads"], arch["num_kv_heads"], arch["head_dim"]
        notes.append(
            f"use_qk_norm: Cohere's q/k norms hold a weight per head ({h} + {kv} heads x {d}); the "
            f"profile's qk_norm counts 2 x {d} per layer, {(h + kv - 2) * d} parameters fewer per layer."
        )
    return _Mapping(arch, notes=notes)


def _mtp_params(c: _Cfg, m: _Mapping, layers: int) -> int:
    """Parameters of ``layers`` multi-token-prediction modules stored after the main layers
    (DeepSeek-V3 / GLM-4.5 layout), as :func:`capcalc.model.draft.mtp_params` counts them
    (one decoder layer of the main model's last layer's shape plus enorm, hnorm,
    shared_head.norm and eh_proj each; the embedding and the output head are the main
    model's), of the main model this mapping describes."""
    probe = {"name": "mtp-probe", "source": c.where, "native_dtype": "bf16", "architecture": m.architecture}
    if m.moe is not None:
        probe["moe"] = m.moe
    if m.mla is not None:
        probe["mla"] = m.mla
    return mtp_params(model_from_dict(probe, c.where), layers)


def _glm4_moe(c: _Cfg) -> _Mapping:
    # Glm4MoeConfig (GLM-4.5 / 4.6 / 4.7): q, k, v with bias when attention_bias, o without;
    # per-head q/k RMSNorm when use_qk_norm (default false); the first first_k_dense_replace
    # layers dense (intermediate_size), the rest MoE: n_routed_experts of moe_intermediate_size,
    # n_shared_experts of the same width, sigmoid router with e_score_correction_bias;
    # untied. partial_rotary_factor only changes which dims RoPE turns: not the KV size.
    bias = c.flag("attention_bias", False)
    arch = _decoder(c, tie_default=False, qkv_bias=bias, qk_norm=c.flag("use_qk_norm", False))
    first_k = c.int("first_k_dense_replace", default=1, minimum=0)
    moe = dict(
        num_experts=c.int("n_routed_experts"),
        experts_per_token=c.int("num_experts_per_tok"),
        expert_intermediate_size=c.int("moe_intermediate_size"),
        num_shared_experts=c.int("n_shared_experts", default=1, minimum=0),
        shared_expert_intermediate_size=c.int("moe_intermediate_size"),
        first_dense_layers=_moe_layers(c, lambda i: i >= first_k, "first_k_dense_replace"),
        router_bias=True,  # gate.e_score_correction_bias, one per routed expert
    )
    m = _Mapping(arch, moe=moe)
    mtp = c.int("num_nextn_predict_layers", default=0, minimum=0)
    if mtp:
        count = _mtp_params(c, m, mtp)
        m.extra_params = dict(
            count=count,
            what=f"{mtp} multi-token-prediction layer(s) after the {arch['num_layers']} main layers",
            source="computed from config.json: one MoE decoder layer + enorm, hnorm, shared_head.norm "
            "+ eh_proj (2 hidden x hidden) per MTP layer",
        )
        m.notes.append(
            f"The {mtp} MTP layer(s) ({count:,} parameters) are counted as extra_params, held in memory "
            "at 16 bits; vLLM loads them only when MTP speculative decoding is on."
        )
    return m


def _minimax_m2(c: _Cfg) -> _Mapping:
    # MiniMaxM2Config: every layer a MoE of num_local_experts SwiGLU experts of width
    # intermediate_size (no shared expert, shared_intermediate_size 0), sigmoid router with
    # e_score_correction_bias (use_routing_bias); q, k, v, o without bias; untied.
    # attn_type_list: 1 = softmax (full) attention, 0 = lightning (linear) attention.
    layers = c.int("num_hidden_layers")
    kinds = c.get("attn_type_list")
    if kinds is not None:
        if not isinstance(kinds, list) or len(kinds) != layers:
            raise c.fail(f"attn_type_list must list {layers} entries of 0 or 1")
        linear = [i for i, kind in enumerate(kinds) if kind != 1]
        if linear:
            raise c.fail(
                f"layers {linear[:8]}{'...' if len(linear) > 8 else ''} use lightning (linear) attention "
                "(attn_type_list 0): capcalc has no linear-attention layer kind yet"
            )
    listed = c.get("layer_types")
    if isinstance(listed, list) and any(kind != "full_attention" for kind in listed):
        other = sorted({str(kind) for kind in listed} - {"full_attention"})
        raise c.fail(f"layer_types {other}: capcalc has no linear-attention layer kind yet")
    if c.int("shared_intermediate_size", default=0, minimum=0):
        raise c.fail("shared_intermediate_size > 0: capcalc maps MiniMax-M2 without a shared expert only")
    arch = _decoder(c, tie_default=False, qk_norm=c.flag("use_qk_norm", True))
    moe = dict(
        num_experts=c.int("num_local_experts"),
        experts_per_token=c.int("num_experts_per_tok"),
        expert_intermediate_size=arch["intermediate_size"],
        router_bias=c.flag("use_routing_bias", True),
    )
    window, types = _window(c, None)
    notes = []
    if arch["qk_norm"]:
        h, kv, d = arch["num_attention_heads"], arch["num_kv_heads"], arch["head_dim"]
        notes.append(
            f"qk_norm_type {c.get('qk_norm_type', default='per_layer')}: one RMSNorm over all q heads "
            f"({h} x {d}) and one over all k heads ({kv} x {d}) per layer; the profile's qk_norm counts "
            f"2 x {d}, {(h + kv - 2) * d} parameters fewer per layer (negligible)."
        )
    mtp = c.int("num_mtp_modules", default=0, minimum=0)
    if mtp and c.flag("use_mtp", False):
        notes.append(
            f"The {mtp} multi-token-prediction modules are not part of the profile "
            "(not used for ordinary decoding)."
        )
    return _Mapping(arch, moe=moe, window=window, layer_types=types, notes=notes)


def pixtral_vision_params(vision: dict, text_hidden: int, merge: int, bias: bool, feature_layers: int) -> int:
    """Pixtral vision tower plus the Mistral 3 multimodal projector.

    tower: conv patch embedding without bias (channels x patch^2 x d) + ln_pre RMSNorm (d)
    + layers x [q, k, v, o without bias (4 d (heads x head_dim)) + SwiGLU gate, up, down
    without bias (3 d f) + attention_norm and ffn_norm RMSNorms (2 d)];
    projector: RMSNorm (d) + patch merger (merge^2 d x d, no bias) + linear_1
    (feature_layers d x text_hidden) + linear_2 (text_hidden x text_hidden), biases when
    multimodal_projector_bias. Defaults are PixtralVisionConfig's (d 1024, f 4096,
    24 layers, 16 heads, 3 channels, patch 16)."""
    v = _Cfg(vision, "vision_config", "pixtral")
    d = v.int("hidden_size", default=1024)
    f = v.int("intermediate_size", default=4096)
    heads = v.int("num_attention_heads", default=16)
    width = heads * v.int("head_dim", default=d // heads)
    layers = v.int("num_hidden_layers", default=24)
    channels, patch = v.int("num_channels", default=3), v.int("patch_size", default=16)
    tower = channels * patch * patch * d + d + layers * (4 * d * width + 3 * d * f + 2 * d)
    projector = d + merge * merge * d * d + feature_layers * d * text_hidden + text_hidden * text_hidden
    return tower + projector + (2 * text_hidden if bias else 0)


def _mistral3(c: _Cfg) -> _Mapping:
    # Mistral3ForConditionalGeneration (Mistral-Small-3.1 / 3.2): a Mistral text decoder under
    # text_config, a Pixtral vision tower under vision_config and the Mistral 3 projector
    text = c.get("text_config")
    if not isinstance(text, dict):
        raise c.fail("missing 'text_config' (a mistral3 config nests the text decoder there)")
    text_type = text.get("model_type", "mistral")
    if text_type not in ("mistral", "llama"):
        raise c.fail(
            f"text_config model_type {text_type!r}: capcalc maps a mistral3 text decoder of type mistral"
        )
    mapping = _MAPPERS[text_type](_Cfg(text, f"{c.where}: text_config", text_type))
    vision = c.get("vision_config")
    if isinstance(vision, dict) and vision.get("model_type", "pixtral") == "pixtral":
        layer = c.get("vision_feature_layer", default=-1)
        count = pixtral_vision_params(
            vision,
            mapping.architecture["hidden_size"],
            c.int("spatial_merge_size", default=2),
            c.flag("multimodal_projector_bias", False),
            len(layer) if isinstance(layer, list) else 1,
        )
        mapping.extra_params = dict(
            count=count,
            what="Pixtral vision tower and Mistral 3 multimodal projector (patch merger, two linears)",
            source="computed from config.json vision_config (PixtralVisionModel + Mistral3MultiModalProjector)",
        )
    else:
        mapping.notes.append("No Pixtral vision_config: weights outside the text decoder are not counted.")
    return mapping


#: DSA lightning-indexer key cache per token per layer in vLLM (DeepseekV32IndexerCache):
#: index_head_dim fp8 values plus one fp32 scale per 128 of them
_INDEXER_QUANT_BLOCK = 128
#: vLLM's fp8_ds_mla latent per token per layer: 512 fp8 + 4 fp32 scales + 64 bf16 rope dims
_FP8_DS_MLA_BYTES = 656


def _glm_moe_dsa(c: _Cfg) -> _Mapping:
    # GlmMoeDsaConfig (GLM-5, GLM-5.1): DeepSeek-V3's MLA + MoE layout (same config keys,
    # same module names) plus DeepSeek Sparse Attention: a lightning indexer per layer
    # (wq_b q_lora_rank -> index_n_heads x index_head_dim, wk hidden -> index_head_dim,
    # a LayerNorm of index_head_dim, weights_proj hidden -> index_n_heads) that picks
    # index_topk cached tokens for each query
    m = _deepseek(c)
    listed = c.get("mlp_layer_types")
    if isinstance(listed, list) and m.moe is not None:
        first = m.moe["first_dense_layers"]
        if listed != ["dense"] * first + ["sparse"] * (len(listed) - first):
            raise c.fail(f"mlp_layer_types does not match first_k_dense_replace {first}")
    shared = [i for i, kind in enumerate(c.get("indexer_types") or []) if kind != "full"]
    if shared:
        raise c.fail(
            f"indexer_types: layers {shared[:8]} share another layer's indexer (IndexShare): "
            "capcalc has no shared-indexer layer kind yet"
        )
    h = m.architecture["hidden_size"]
    q_rank = m.mla["q_lora_rank"] or h
    heads, dim, topk = c.int("index_n_heads"), c.int("index_head_dim"), c.int("index_topk")
    per_layer = heads * dim * q_rank + dim * h + 2 * dim + heads * h
    layers = m.architecture["num_layers"]
    m.extra_params = dict(
        count=layers * per_layer,
        what=f"DSA lightning indexer of each of the {layers} layers (wq_b, wk, k_norm, weights_proj)",
        source="computed from config.json index_n_heads, index_head_dim, q_lora_rank, hidden_size",
    )
    latent = m.mla["kv_lora_rank"] + m.mla["qk_rope_head_dim"]
    indexer = dim + 4 * (dim // _INDEXER_QUANT_BLOCK)
    m.notes.append(
        "DeepSeek Sparse Attention, not modelled yet: the KV cache here is the MLA latent only "
        f"({latent} values per token per layer). vLLM also caches the indexer's keys ({indexer} bytes "
        f"per token per layer: {dim} fp8 + fp32 scales) and, with an fp8 KV cache, stores the latent as "
        f"fp8_ds_mla ({_FP8_DS_MLA_BYTES} bytes, not {latent}); so the real KV per token is "
        f"{(2 * latent + indexer) / (2 * latent):.2f}x capcalc's at bf16 and "
        f"{(_FP8_DS_MLA_BYTES + indexer) / latent:.2f}x at fp8 (a lower bound, stated). Attention reads "
        f"all cached tokens here; the model reads index_topk {topk} of them beyond that context. "
        "The indexer weights are extra_params (16-bit, not in the active count)."
    )
    return m


def _hybrid_kinds(c: _Cfg, names: dict[str, str], rule: Callable[[int], str]) -> list[str]:
    """Per-layer kinds from ``layer_types`` (config names mapped by ``names``), else ``rule(i)``."""
    layers = c.int("num_hidden_layers")
    listed = c.get("layer_types")
    if listed is None:
        return [rule(i) for i in range(layers)]
    if not isinstance(listed, list) or len(listed) != layers or any(t not in names for t in listed):
        raise c.fail(
            f"layer_types must list {layers} entries of {' / '.join(repr(n) for n in names)} "
            f"(capcalc cannot model {excerpt(sorted(set(map(str, listed)) - set(names)) or listed)})"
        )
    return [names[t] for t in listed]


def _state_dtype(c: _Cfg, block: dict) -> dict:
    """``mamba_ssm_dtype`` (the recurrent state's dtype the checkpoint asks for) into the mixer block."""
    dtype = c.get("mamba_ssm_dtype")
    if dtype is not None:
        block["state_dtype"] = _torch_dtype(dtype, c.where)
    return block


def _qwen3_next(c: _Cfg) -> _Mapping:
    # Qwen3NextConfig / Qwen3_5TextConfig (Qwen3-Next, Qwen3.5): layer i is Gated DeltaNet
    # linear attention unless (i + 1) is a multiple of full_attention_interval (default 4)
    # or layer_types says 'full_attention'; the full-attention layers gate their output
    # (q_proj gives q and a sigmoid gate: attn_output_gate, default true) and norm q and k
    # per head; MoE of num_experts of moe_intermediate_size plus one shared expert of
    # shared_expert_intermediate_size (Qwen3.5 dense: an MLP of intermediate_size); untied.
    arch = _decoder(c, tie_default=False, qk_norm=True, head_dim_default=None)
    interval = c.int("full_attention_interval", default=4)
    kinds = _hybrid_kinds(
        c,
        {"linear_attention": "linear", "full_attention": "full"},
        lambda i: "full" if (i + 1) % interval == 0 else "linear",
    )
    linear = _state_dtype(
        c,
        dict(
            num_key_heads=c.int("linear_num_key_heads"),
            num_value_heads=c.int("linear_num_value_heads"),
            key_head_dim=c.int("linear_key_head_dim"),
            value_head_dim=c.int("linear_value_head_dim"),
            conv_kernel=c.int("linear_conv_kernel_dim", default=4),
        ),
    )
    m = _Mapping(arch, kinds=kinds, linear_attention=linear)
    if "linear" not in kinds:  # every layer full attention: no recurrent state
        m.kinds = m.linear_attention = None
    if c.flag("attn_output_gate", True):
        arch["attention_output_gate"] = True
    if c.get("num_experts"):
        shared = c.int("shared_expert_intermediate_size", default=0, minimum=0)
        m.moe = _qwen_moe(c, arch, shared)
        if shared:
            m.notes.append(
                "Not modelled: the shared expert's sigmoid gate (one hidden_size vector per MoE layer)."
            )
    mtp = c.int("mtp_num_hidden_layers", "num_nextn_predict_layers", default=0, minimum=0)
    if mtp:
        m.notes.append(
            f"The {mtp} multi-token-prediction layer(s) are not part of the profile (used only for "
            "speculative decoding)."
        )
    m.notes.append(
        "partial_rotary_factor only changes which dims RoPE turns: not the KV size. The Gated DeltaNet "
        "layers keep a fixed state per sequence (conv + recurrent), no per-token cache."
    )
    return m


def _qwen3_5(c: _Cfg) -> _Mapping:
    # Qwen3_5(Moe)ForConditionalGeneration: the Qwen3-Next-style text decoder under text_config
    text = c.get("text_config")
    if not isinstance(text, dict):
        raise c.fail(f"missing 'text_config' (a {c.family} config nests the text decoder there)")
    mapping = _qwen3_next(_Cfg(text, f"{c.where}: text_config", f"{c.family}_text"))
    mapping.notes.append("The vision encoder of the multimodal checkpoint is not counted.")
    return mapping


def _granitemoehybrid(c: _Cfg) -> _Mapping:
    # GraniteMoeHybridConfig (Granite-4.0-H): layer_types 'mamba' / 'attention' (default every
    # layer mamba); Mamba2 mixer of mamba_n_heads x mamba_d_head (mamba_expand x hidden), state
    # mamba_d_state, mamba_n_groups B/C groups, conv mamba_d_conv with bias (mamba_conv_bias),
    # projections without bias (mamba_proj_bias); every layer a MoE of num_local_experts of
    # intermediate_size plus a shared MLP of shared_intermediate_size (no experts: the shared
    # MLP alone); tied; position_embedding_type 'nope' (no positions) or 'rope'.
    bias = c.flag("attention_bias", False)
    arch = _decoder(c, tie_default=True, qkv_bias=bias, o_bias=bias)
    kinds = _hybrid_kinds(c, {"mamba": "mamba", "attention": "full"}, lambda i: "mamba")
    hidden = arch["hidden_size"]
    heads = c.int("mamba_n_heads", default=128)
    head_dim = c.int("mamba_d_head", default=max(1, c.int("mamba_expand", default=2) * hidden // heads))
    mamba = _state_dtype(
        c,
        dict(
            num_heads=heads,
            head_dim=head_dim,
            state_size=c.int("mamba_d_state", default=256),
            n_groups=c.int("mamba_n_groups", default=1),
            conv_kernel=c.int("mamba_d_conv", default=4),
            conv_bias=c.flag("mamba_conv_bias", True),
            proj_bias=c.flag("mamba_proj_bias", False),
        ),
    )
    m = _Mapping(arch, kinds=kinds, mamba=mamba)
    if "mamba" not in kinds:  # Granite-4.0-Micro: every layer attention
        m.kinds = m.mamba = None
    shared = c.int("shared_intermediate_size", default=0, minimum=0)
    if c.get("num_local_experts"):
        m.moe = dict(
            num_experts=c.int("num_local_experts"),
            experts_per_token=c.int("num_experts_per_tok"),
            expert_intermediate_size=arch["intermediate_size"],
        )
        if shared:
            m.moe.update(num_shared_experts=1, shared_expert_intermediate_size=shared)
    elif shared:
        arch["intermediate_size"] = shared
    if c.get("position_embedding_type", default="nope") == "nope":
        m.notes.append("position_embedding_type nope: no positional encoding (no parameters, as RoPE).")
    return m


def _nemotron_h(c: _Cfg) -> _Mapping:
    # NemotronHConfig (Nemotron-H, NVIDIA-Nemotron-Nano-v2): hybrid_override_pattern gives one
    # block per layer behind one RMSNorm: 'M' a Mamba2 mixer (mamba_num_heads x mamba_head_dim,
    # ssm_state_size, n_groups, conv_kernel with bias use_conv_bias, no projection bias), '*'
    # attention (no RoPE, no bias), '-' an MLP without gate (relu2, mlp_bias default false); untied
    layers = c.int("num_hidden_layers")
    pattern = c.get("hybrid_override_pattern")
    if not isinstance(pattern, str) or len(pattern) != layers:
        raise c.fail(f"hybrid_override_pattern must be a string of {layers} characters of M, * and -")
    names = {"M": "mamba", "*": "full", "-": "mlp"}
    unknown = sorted(set(pattern) - set(names))
    if unknown:
        raise c.fail(
            f"hybrid_override_pattern block {excerpt(unknown[0])}: capcalc maps M (Mamba2), * (attention) and "
            "- (MLP) blocks; MoE blocks ('E') are not mapped yet"
        )
    bias = c.flag("attention_bias", False)
    arch = _decoder(c, tie_default=False, qkv_bias=bias, o_bias=bias, mlp_bias=c.flag("mlp_bias", False))
    arch.update(mlp="plain", norms_per_layer=1)
    mamba = _state_dtype(
        c,
        dict(
            num_heads=c.int("mamba_num_heads"),
            head_dim=c.int("mamba_head_dim"),
            state_size=c.int("ssm_state_size"),
            n_groups=c.int("n_groups", "mamba_num_groups", default=8),
            conv_kernel=c.int("conv_kernel", default=4),
            conv_bias=c.flag("use_conv_bias", True),
            proj_bias=c.flag("mamba_proj_bias", False),
        ),
    )
    m = _Mapping(arch, kinds=[names[ch] for ch in pattern], mamba=mamba, mixer_only=True)
    m.notes.append(
        "Nemotron-H blocks: each layer is a Mamba2 mixer, an attention layer (no RoPE: no parameters either "
        "way) or a relu2 MLP, each behind one RMSNorm."
    )
    return m


def _falcon_h1(c: _Cfg) -> _Mapping:
    # FalconH1Config (Falcon-H1): every decoder layer runs attention (num_attention_heads,
    # num_key_value_heads of head_dim, RoPE, no bias) AND a Mamba2 mixer in parallel on the
    # same normed input (FalconH1DecoderLayer: their outputs summed), then a gated MLP of
    # intermediate_size; two RMSNorms per layer (input_layernorm, pre_ff_layernorm). The mixer:
    # mamba_n_heads x mamba_d_head = mamba_d_ssm channels (default mamba_expand x hidden),
    # state mamba_d_state, mamba_n_groups B/C groups, conv mamba_d_conv with bias
    # (mamba_conv_bias), in_proj bias mamba_proj_bias, out_proj bias projectors_bias, its gated
    # RMSNorm only when mamba_rms_norm. The muP multipliers (embedding, lm_head, key,
    # attention/ssm in and out, mlp, ssm) scale activations and add no parameters. Untied.
    if c.get("attn_layer_indices") is not None:
        raise c.fail(
            "attn_layer_indices (attention in some layers only) is not mapped: capcalc maps "
            "Falcon-H1 with attention and Mamba2 in every layer"
        )
    if not c.flag("mamba_use_mlp", True):
        raise c.fail("mamba_use_mlp false (layers without an MLP) is not mapped")
    arch = _decoder(
        c,
        tie_default=False,
        qkv_bias=c.flag("attention_bias", False),
        o_bias=c.flag("attention_bias", False),
        mlp_bias=c.flag("mlp_bias", False),
    )
    hidden = arch["hidden_size"]
    heads = c.int("mamba_n_heads", default=128)
    # without mamba_d_ssm: heads x mamba_d_head when the config gives the head width (the only
    # width the mixer can have), else mamba_expand x hidden (FalconH1Config's default)
    if c.get("mamba_d_ssm") is None and c.get("mamba_d_head") is not None:
        d_ssm = heads * c.int("mamba_d_head")
    else:
        d_ssm = c.int("mamba_d_ssm", default=c.int("mamba_expand", default=2) * hidden)
    head_dim = c.int("mamba_d_head", default=max(1, d_ssm // heads))
    if heads * head_dim != d_ssm:
        raise c.fail(
            f"mamba_d_ssm {d_ssm} is not mamba_n_heads x mamba_d_head ({heads} x {head_dim} = {heads * head_dim})"
        )
    proj_bias = c.flag("mamba_proj_bias", False)
    if c.flag("projectors_bias", False) != proj_bias:
        raise c.fail(
            "projectors_bias and mamba_proj_bias differ: capcalc counts the mixer's in and out "
            "projection biases together"
        )
    mamba = _state_dtype(
        c,
        dict(
            num_heads=heads,
            head_dim=head_dim,
            state_size=c.int("mamba_d_state", default=256),
            n_groups=c.int("mamba_n_groups", default=1),
            conv_kernel=c.int("mamba_d_conv", default=4),
            conv_bias=c.flag("mamba_conv_bias", True),
            proj_bias=proj_bias,
            gated_norm=c.flag("mamba_rms_norm", False),
        ),
    )
    m = _Mapping(arch, kinds=["parallel_hybrid"] * arch["num_layers"], mamba=mamba)
    m.notes.append(
        "Falcon-H1 parallel hybrid: every layer keeps the attention KV per token and the Mamba2 state "
        "per sequence. The muP multipliers change no parameter or cache count."
    )
    return m


def llama4_vision_params(vision: dict, text_hidden: int) -> int:
    """Llama 4's vision tower, pixel-shuffle adapter and projector.

    patch embedding (unfolded conv, no bias: channels x patch^2 x d) + class embedding (d)
    + positions ((image/patch)^2 + 1) x d + LayerNorm pre and post (4 d) + layers x
    [q, k, v, o with bias (4 (d^2 + d)) + fc1, fc2 with bias (2 d f + f + d) + 2 LayerNorms
    (4 d)]; adapter fc1 (d / ratio^2 -> projector_input_dim) and fc2 (projector_input_dim ->
    projector_output_dim), no bias; projector vision_output_dim -> text hidden, no bias
    (transformers Llama4VisionModel, Llama4VisionPixelShuffleMLP, Llama4MultiModalProjector).
    Defaults are Llama4VisionConfig's."""
    v = _Cfg(vision, "vision_config", "llama4_vision_model")
    d = v.int("hidden_size", default=768)
    f = v.int("intermediate_size", default=3072)
    layers = v.int("num_hidden_layers", default=34)
    channels = v.int("num_channels", default=3)
    image, patch = v.int("image_size", default=448), v.int("patch_size", default=14)
    ratio = v.get("pixel_shuffle_ratio", default=0.5)
    if not isinstance(ratio, (int, float)) or not 0 < ratio <= 1:
        raise v.fail(f"pixel_shuffle_ratio must be in (0, 1], got {excerpt(ratio)}")
    proj_in = v.int("projector_input_dim", default=4096)
    proj_out = v.int("projector_output_dim", default=4096)
    out = v.int("vision_output_dim", default=7680)
    tower = channels * patch * patch * d + d + ((image // patch) ** 2 + 1) * d + 4 * d
    tower += layers * (4 * (d * d + d) + (2 * d * f + f + d) + 4 * d)
    adapter = round(d / ratio**2) * proj_in + proj_in * proj_out
    return tower + adapter + out * text_hidden


def _llama4_text(c: _Cfg) -> _Mapping:
    # Llama4TextConfig: layers whose no_rope_layers entry is 1 use RoPE and chunked-local
    # attention over attention_chunk_size tokens; entry 0 (NoPE) layers attend globally; an
    # empty or absent no_rope_layers is transformers' default, every no_rope_layer_interval-th
    # (4th) layer global. Layer i is MoE when (i + 1) % interleave_moe_layer_step == 0 (or in
    # moe_layers): num_local_experts routed experts of intermediate_size and one shared expert
    # of the same width, router without bias; the other layers a dense MLP of
    # intermediate_size_mlp. use_qk_norm is an L2 norm without weights (no parameters); untied.
    arch = _decoder(c, tie_default=False, qkv_bias=c.flag("attention_bias", False))
    layers = arch["num_layers"]
    flags = c.get("no_rope_layers") or []
    if flags:
        if not isinstance(flags, list) or len(flags) != layers or any(x not in (0, 1) for x in flags):
            raise c.fail(f"no_rope_layers must list {layers} entries of 0 / 1")
    else:
        interval = c.int("no_rope_layer_interval", default=4)
        flags = [int((i + 1) % interval != 0) for i in range(layers)]
    chunk = c.get("attention_chunk_size")
    kinds = ["chunked" if rope and chunk else "full" for rope in flags]
    m = _Mapping(arch)
    if "chunked" in kinds:
        m.kinds, m.chunk = kinds, c.int("attention_chunk_size")
    step = c.int("interleave_moe_layer_step", default=1)
    listed = c.get("moe_layers")
    expected = [i for i in range(layers) if (i + 1) % step == 0]
    if listed is not None and list(listed) != expected:
        raise c.fail(
            f"moe_layers {excerpt(listed)}: capcalc's profile schema has every layer_step-th layer MoE only"
        )
    width = c.int("intermediate_size")
    arch["intermediate_size"] = c.int("intermediate_size_mlp", default=width) if step > 1 else width
    m.moe = dict(
        num_experts=c.int("num_local_experts"),
        experts_per_token=c.int("num_experts_per_tok"),
        expert_intermediate_size=width,
        num_shared_experts=1,
        shared_expert_intermediate_size=width,
        layer_step=step,
    )
    if c.flag("use_qk_norm", True):
        m.notes.append("use_qk_norm: an L2 norm of q and k without weights (no parameters).")
    m.notes.append(
        f"Chunked-local attention over {chunk} tokens on the RoPE layers, global attention on the NoPE "
        "layers (no_rope_layers)."
        if chunk
        else "No attention_chunk_size: every layer attends globally."
    )
    return m


def _llama4(c: _Cfg) -> _Mapping:
    # Llama4ForConditionalGeneration (Llama 4 Scout, Maverick): the text decoder under
    # text_config, the vision tower and projector under vision_config as extra parameters
    text = c.get("text_config")
    if not isinstance(text, dict):
        raise c.fail("missing 'text_config' (a llama4 config nests the text decoder there)")
    mapping = _llama4_text(_Cfg(text, f"{c.where}: text_config", "llama4_text"))
    vision = c.get("vision_config")
    if isinstance(vision, dict):
        mapping.extra_params = dict(
            count=llama4_vision_params(vision, mapping.architecture["hidden_size"]),
            what="Llama 4 vision tower, pixel-shuffle adapter and multimodal projector",
            source="computed from config.json vision_config (Llama4VisionModel + Llama4MultiModalProjector)",
        )
    else:
        mapping.notes.append("No vision_config: weights outside the text decoder are not counted.")
    return mapping


def _deepseek_v32(c: _Cfg) -> _Mapping:
    # DeepseekV32 (DeepSeek-V3.2, -Exp): DeepSeek-V3's MLA + MoE layout plus DeepSeek Sparse
    # Attention: a lightning indexer per layer (index_n_heads x index_head_dim, picking
    # index_topk cached tokens for each query), whose keys vLLM caches beside the latent
    m = _deepseek(c)
    m.mla["indexer"] = dict(
        n_heads=c.int("index_n_heads"), head_dim=c.int("index_head_dim"), topk=c.int("index_topk")
    )
    m.notes.append(
        "DeepSeek Sparse Attention: the KV cache holds the latent and the indexer's fp8 keys of every "
        "token; attention reads the index_topk tokens the indexer selects."
    )
    return m


_MAPPERS: dict[str, Callable[[_Cfg], _Mapping]] = {
    "llama": _llama,
    "mistral": _mistral,
    "mixtral": _mixtral,
    "qwen2": _qwen2,
    "qwen2_moe": _qwen2_moe,
    "qwen3": _qwen3,
    "qwen3_moe": _qwen3_moe,
    "gemma2": _gemma2,
    "gemma3": _gemma3,
    "gemma3_text": _gemma3_text,
    "gemma3n": _gemma3n,
    "mllama": _mllama,
    "gemma3n_text": _gemma3n_text,
    "phi3": _phi3,
    "deepseek_v2": _deepseek,
    "deepseek_v3": _deepseek,
    "gpt2": _gpt2,
    "opt": _opt,
    "falcon": _falcon,
    "gpt_oss": _gpt_oss,
    "cohere": _cohere,
    "glm4_moe": _glm4_moe,
    "minimax_m2": _minimax_m2,
    "mistral3": _mistral3,
    "glm_moe_dsa": _glm_moe_dsa,
    "qwen3_next": _qwen3_next,
    "qwen3_5_text": _qwen3_next,
    "qwen3_5_moe_text": _qwen3_next,
    "qwen3_5": _qwen3_5,
    "qwen3_5_moe": _qwen3_5,
    "granitemoehybrid": _granitemoehybrid,
    "llama4": _llama4,
    "deepseek_v32": _deepseek_v32,
    "nemotron_h": _nemotron_h,
    "falcon_h1": _falcon_h1,
    "llama4_text": _llama4_text,
}
#: transformers model classes (config.json ``architectures``) of the mapped model_types: a
#: config whose model_type capcalc does not know maps through its class (Kimi-K2 ships
#: model_type kimi_k2 with DeepseekV3ForCausalLM)
_ARCHITECTURE_CLASSES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "MixtralForCausalLM": "mixtral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen2MoeForCausalLM": "qwen2_moe",
    "Qwen3ForCausalLM": "qwen3",
    "Qwen3MoeForCausalLM": "qwen3_moe",
    "Gemma2ForCausalLM": "gemma2",
    "Gemma3ForConditionalGeneration": "gemma3",
    "Gemma3ForCausalLM": "gemma3_text",
    "Gemma3nForConditionalGeneration": "gemma3n",
    "MllamaForConditionalGeneration": "mllama",
    "Gemma3nForCausalLM": "gemma3n_text",
    "Phi3ForCausalLM": "phi3",
    "DeepseekV2ForCausalLM": "deepseek_v2",
    "DeepseekV3ForCausalLM": "deepseek_v3",
    "GPT2LMHeadModel": "gpt2",
    "OPTForCausalLM": "opt",
    "FalconForCausalLM": "falcon",
    "GptOssForCausalLM": "gpt_oss",
    "CohereForCausalLM": "cohere",
    "Glm4MoeForCausalLM": "glm4_moe",
    "MiniMaxM2ForCausalLM": "minimax_m2",
    "Mistral3ForConditionalGeneration": "mistral3",
    "GlmMoeDsaForCausalLM": "glm_moe_dsa",
    "Qwen3NextForCausalLM": "qwen3_next",
    "Qwen3_5ForConditionalGeneration": "qwen3_5",
    "Qwen3_5MoeForConditionalGeneration": "qwen3_5_moe",
    "Qwen3_5ForCausalLM": "qwen3_5_text",
    "Qwen3_5MoeForCausalLM": "qwen3_5_moe_text",
    "GraniteMoeHybridForCausalLM": "granitemoehybrid",
    "Llama4ForConditionalGeneration": "llama4",
    "DeepseekV32ForCausalLM": "deepseek_v32",
    "NemotronHForCausalLM": "nemotron_h",
    "FalconH1ForCausalLM": "falcon_h1",
    "Llama4ForCausalLM": "llama4_text",
}
#: the config.json model_type values capcalc maps (what `import` accepts)
SUPPORTED: tuple[str, ...] = tuple(_MAPPERS)


# --------------------------------------------------------------------------- dtype


def _quantized_dtype(qc: dict, where: str) -> tuple[str, str]:
    """(weight dtype, note) of a quantization_config."""
    method = str(qc.get("quant_method", "")).lower()
    group = qc.get("group_size") or qc.get("q_group_size")
    group_note = f", group size {group}" if group else ""
    if method in ("awq", "gptq", "auto-round", "autoround"):
        bits = qc.get("bits") or qc.get("w_bit")
        if bits in (4, 8):
            return f"int{bits}", f"{method} {bits}-bit weights{group_note}"
        raise CapcalcError(
            f"{where}: {excerpt(method)} with {excerpt(bits)}-bit weights: capcalc knows 4- and 8-bit"
        )
    if method in ("fp8", "fbgemm_fp8"):
        return "fp8", f"{method} weights"
    if method == "mxfp4":
        return "mxfp4", "mxfp4 weights (experts; see modules_to_not_convert)"
    if method in ("modelopt", "modelopt_fp4") and str(qc.get("quant_algo", "")).upper() == "NVFP4":
        return "nvfp4", "ModelOpt NVFP4 weights (16-element groups, fp8 E4M3 scales)"
    if method == "bitsandbytes":
        if qc.get("load_in_4bit"):
            return "int4", f"bitsandbytes 4-bit ({qc.get('bnb_4bit_quant_type', 'nf4')}) weights"
        if qc.get("load_in_8bit"):
            return "int8", "bitsandbytes 8-bit weights"
        raise CapcalcError(f"{where}: bitsandbytes config with neither load_in_4bit nor load_in_8bit")
    if method == "compressed-tensors":
        for group_cfg in (qc.get("config_groups") or {}).values():
            weights = (group_cfg or {}).get("weights") or {}
            bits, kind = weights.get("num_bits"), weights.get("type")
            if (bits, kind) == (8, "float"):
                return "fp8", "compressed-tensors fp8 weights"
            if kind == "int" and bits in (4, 8):
                size = weights.get("group_size")
                return f"int{bits}", f"compressed-tensors int{bits} weights" + (
                    f", group size {size}" if size else ""
                )
        raise CapcalcError(f"{where}: compressed-tensors config with no fp8, int4 or int8 weight group")
    known = "awq, gptq, fp8, bitsandbytes, mxfp4, modelopt NVFP4, compressed-tensors"
    raise CapcalcError(
        f"{where}: unknown quantization method {excerpt(method or '(none)')}; capcalc knows {known}"
    )


def _torch_dtype(value: Any, where: str) -> str:
    if value is None:
        return "fp32"
    try:
        return canonical_dtype(str(value).replace("torch.", ""), ("fp32", "bf16", "fp16"), "torch_dtype")
    except CapcalcError as exc:
        raise CapcalcError(f"{where}: {exc.message}") from None


# --------------------------------------------------------------------------- checkpoint counts

_EXTRA_TENSOR = re.compile(
    r"(^|\.)(vision_tower|vision_model|visual|vision_embed|multi_modal_projector|mm_projector|"
    r"audio_tower|embed_vision|embed_audio)(\.|$)"
)
_SCALE_TENSOR = re.compile(r"(_scale|_scale_inv|_scale_2|\.scales|\.qzeros|\.g_idx|_zero_point)$")
_BUFFER_TENSOR = re.compile(r"(rotary_emb\.inv_freq|(^|\.)attn\.(masked_)?bias)$")
_LAYER_INDEX = re.compile(r"(?:^|\.)(?:layers|h)\.(\d+)\.")


def _checkpoint_dtype(name: str) -> str | None:
    """A safetensors dtype ('BF16', 'F8_E4M3') as capcalc names it, or None for integer
    and other storage types that name no weight dtype."""
    try:
        return canonical_dtype(name)
    except CapcalcError:
        return None


@dataclass(frozen=True)
class CheckpointCount:
    """A checkpoint's parameters split the way a profile counts them."""

    params: int  # text decoder + extra
    extra: int  # outside the text decoder
    left_out: dict[str, int]  # reason -> parameters not counted
    method: str
    files: int
    tensors: int
    dominant_dtype: str | None


def count_checkpoint(ckpt: Checkpoint, num_layers: int, tied: bool) -> CheckpointCount:
    """Split the checkpoint's tensors into decoder, extra (vision ...) and left-out ones."""
    if not ckpt.tensors:
        return CheckpointCount(ckpt.total, 0, {}, ckpt.method, len(ckpt.files), 0, None)
    kept = extra = 0
    left_out: Counter = Counter()
    dtypes: Counter = Counter()
    for t in ckpt.tensors:
        layer = _LAYER_INDEX.search(t.name)
        if _EXTRA_TENSOR.search(t.name):
            extra += t.numel
        elif _SCALE_TENSOR.search(t.name):
            left_out["quantisation scales"] += t.numel
        elif _BUFFER_TENSOR.search(t.name):
            left_out["buffers (not parameters)"] += t.numel
        elif layer and int(layer.group(1)) >= num_layers:
            left_out[f"layers beyond num_hidden_layers {num_layers} (multi-token prediction)"] += t.numel
        elif tied and t.name == "lm_head.weight":
            left_out["a stored copy of the tied LM head"] += t.numel
        else:
            kept += t.numel
            dtypes[t.dtype] += t.numel
    dominant = _checkpoint_dtype(dtypes.most_common(1)[0][0]) if dtypes else None
    return CheckpointCount(
        kept + extra, extra, dict(left_out), ckpt.method, len(ckpt.files), len(ckpt.tensors), dominant
    )


# --------------------------------------------------------------------------- the whole mapping


@dataclass(frozen=True)
class ImportedModel:
    """A profile read from a config.json, with where its numbers came from."""

    profile: ModelProfile
    data: dict  # the profile mapping (what `capcalc import` writes)
    model_type: str
    config_path: Path
    params_source: str  # 'safetensors headers' | 'safetensors index metadata' | 'architecture'
    params_checkpoint: int | None
    warnings: tuple[str, ...] = ()


def model_type_of(config: dict, where: str) -> str:
    """The supported model_type of a config, or a one-line error naming it and the supported ones."""
    model_type = config.get("model_type")
    model_type = _MODEL_TYPE_ALIASES.get(model_type, model_type) if isinstance(model_type, str) else None
    archs = config.get("architectures") or []
    label = model_type or (archs[0] if archs else None)
    if model_type in _MAPPERS:
        return model_type
    through = [_ARCHITECTURE_CLASSES[a] for a in archs if isinstance(a, str) and a in _ARCHITECTURE_CLASSES]
    if through:
        return through[0]
    remote = " (its code lives in the repo: auto_map / trust_remote_code, which capcalc never runs)"
    hint = remote if config.get("auto_map") else ""
    if label is None:
        raise CapcalcError(f"{where}: no model_type or architectures: not a transformers config.json")
    raise CapcalcError(
        f"{where}: unsupported architecture {excerpt(label)}{hint}; supported model_type: {supported_list()}; "
        "for another architecture write a model profile (format: docs/profiles.md) and pass its "
        "directory with --profiles DIR"
    )


#: the order docs/profiles.md lists the architecture keys in (what `import` writes)
_ARCH_ORDER = (
    "num_layers", "hidden_size", "num_attention_heads", "num_kv_heads", "head_dim", "intermediate_size",
    "vocab_size", "max_context", "tie_word_embeddings", "mlp", "attention_bias", "attention_output_bias",
    "mlp_bias", "norm", "norms_per_layer", "qk_norm", "position_embedding",
)  # fmt: skip


def profile_mapping(
    config: dict, *, name: str, source: str, where: str, display_name: str = "", aliases: tuple[str, ...] = ()
) -> tuple[dict, str]:
    """(profile mapping, model_type) for a config.json mapping. Raises CapcalcError."""
    if not isinstance(config, dict):
        raise CapcalcError(f"{where}: expected a JSON object")
    check_field_types(config, where)
    model_type = model_type_of(config, where)
    c = _Cfg(config, where, model_type)
    try:
        return _profile_mapping(config, c, model_type, name, source, where, display_name, aliases)
    except (TypeError, AttributeError, KeyError, ValueError, IndexError) as exc:
        # a nested field of a type no mapping expects (the typed reads catch the rest)
        raise CapcalcError(
            f"{where}: a {model_type} field has a type capcalc cannot read ({type(exc).__name__}: "
            f"{excerpt(str(exc), 80)})"
        ) from None


def _profile_mapping(config, c, model_type, name, source, where, display_name, aliases):
    m = _MAPPERS[model_type](c)
    text = (
        config.get("text_config")
        if model_type in ("gemma3", "gemma3n", "mistral3", "mllama", "qwen3_5", "qwen3_5_moe")
        else config
    )
    qc = config.get("quantization_config") or (text or {}).get("quantization_config")
    notes = list(m.notes)
    if config.get("model_type") != model_type and config.get("model_type") not in _MODEL_TYPE_ALIASES:
        notes.insert(
            0,
            f"model_type {config.get('model_type')!r} is not one capcalc maps; its architectures name "
            f"a {model_type} class, so it is mapped as {model_type} (the same modules).",
        )
    if qc:
        native, quant_note = _quantized_dtype(qc, where)
        notes.insert(0, f"quantization_config: {quant_note}.")
    else:
        native = _torch_dtype(
            (text or {}).get("torch_dtype")
            or (text or {}).get("dtype")
            or config.get("torch_dtype")
            or config.get("dtype"),
            where,
        )
    data: dict[str, Any] = {
        "name": name,
        "display_name": display_name or name,
        "aliases": list(aliases),
        "source": source,
        "native_dtype": native,
        "architecture": {key: m.architecture[key] for key in _ARCH_ORDER},
    }
    if m.architecture.get("attention_output_gate"):
        data["architecture"]["attention_output_gate"] = True
    if m.kinds is not None:
        data["layers"] = _layout(m.kinds)
        if m.mixer_only:
            data["layers"]["mixer_only"] = True
    for key in ("linear_attention", "mamba"):
        if getattr(m, key) is not None:
            data[key] = getattr(m, key)
    if m.chunk is not None:
        data["chunked_attention"] = {"chunk_size": m.chunk}
    if m.moe is not None:
        data["moe"] = m.moe
    if m.mla is not None:
        data["mla"] = m.mla
    if m.window is not None and m.window < m.architecture["max_context"]:
        data["sliding_window"] = {"window": m.window, **({} if m.kinds else _layout(m.layer_types))}
    elif m.window is not None:
        notes.append(
            f"sliding_window {m.window} >= max context {m.architecture['max_context']}: no effect, dropped."
        )
    if m.extra_params is not None:
        data["extra_params"] = m.extra_params
    data["notes"] = " ".join([f"Imported by capcalc from {source} (model_type {model_type})."] + notes)
    return data, model_type


def _layout(types: list[str]) -> dict:
    """The shortest repeating pattern from layer 0, or the explicit list when none repeats.

    The shortest period p with types[i] == types[i % p] for every i is n minus the longest
    proper prefix that is also a suffix (the prefix function of Knuth-Morris-Pratt): one
    linear pass, where trying every period was quadratic (46 s on 30,000 layers)."""
    n = len(types)
    border = [0] * n
    for i in range(1, n):
        k = border[i - 1]
        while k and types[i] != types[k]:
            k = border[k - 1]
        border[i] = k + 1 if types[i] == types[k] else 0
    period = n - border[-1] if n else 0
    if 0 < period < n:
        return {"pattern": types[:period]}
    return {"layer_types": list(types)}


def read_config(path: Path) -> dict:
    """config.json through the input layer: a regular UTF-8 file of bounded size and depth,
    whose top-level fields capcalc reads have the JSON types they must have."""
    config = load_json(path, "config", "JSON")
    if not isinstance(config, dict):
        raise CapcalcError(f"{path}: expected a JSON object")
    check_field_types(config, str(path))
    return config


#: the JSON type of every config.json field the mappings read (a field may also be null)
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "model_type": (str,),
    "architectures": (list,),
    "auto_map": (dict,),
    "layer_types": (list,),
    "mlp_only_layers": (list,),
    "quantization_config": (dict,),
    "text_config": (dict,),
    "vision_config": (dict,),
    "torch_dtype": (str,),
    "dtype": (str,),
    "rope_scaling": (dict,),
    "topk_method": (str,),
    "hidden_act": (str,),
    "sliding_window_pattern": (int,),
    "head_dim": (int,),
}
_NAMES = {dict: "an object", list: "a list", str: "a string", int: "a whole number"}


def check_field_types(config: dict, where: str) -> None:
    """One line naming the first field (of the config or its text_config) whose JSON type
    is not the one capcalc reads it as, before any mapping touches it."""
    for prefix, data in (("", config), ("text_config.", config.get("text_config"))):
        if not isinstance(data, dict):
            continue
        for key, types in _FIELD_TYPES.items():
            value = data.get(key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, types):
                raise CapcalcError(
                    f"{where}: {prefix}{key}: expected {_NAMES[types[0]]}, got {excerpt(value)}"
                )
        archs = data.get("architectures")
        if isinstance(archs, list) and not all(isinstance(a, str) for a in archs):
            raise CapcalcError(
                f"{where}: {prefix}architectures: expected a list of strings, got {excerpt(archs)}"
            )
        listed = data.get("layer_types")
        if isinstance(listed, list) and not all(isinstance(t, str) for t in listed):
            raise CapcalcError(
                f"{where}: {prefix}layer_types: expected a list of strings, got {excerpt(listed)}"
            )


def import_folder(
    folder: str | Path,
    *,
    name: str,
    source: str | None = None,
    display_name: str = "",
    aliases: tuple[str, ...] = (),
) -> ImportedModel:
    """Map ``folder/config.json`` (plus any safetensors there) into a validated profile."""
    folder = Path(folder)
    config_path = folder / "config.json"
    config = read_config(config_path)
    source = source or str(config_path.resolve())
    data, model_type = profile_mapping(
        config, name=name, source=source, where=str(config_path), display_name=display_name, aliases=aliases
    )
    warnings: list[str] = []
    params_source, params_checkpoint = "architecture", None
    quantized = "quantization_config" in config or "quantization_config" in (config.get("text_config") or {})
    ckpt = read_checkpoint(folder)
    if ckpt is not None and quantized and data["native_dtype"] != "fp8":
        warnings.append(
            f"{folder}: the checkpoint stores packed {data['native_dtype']} weights, so its tensor sizes "
            "are not parameter counts; parameters computed from the architecture"
        )
        ckpt = None
    if ckpt is not None:
        arch = data["architecture"]
        counted = count_checkpoint(ckpt, arch["num_layers"], arch["tie_word_embeddings"])
        params_source, params_checkpoint = counted.method, counted.params
        what = (
            f"{counted.tensors} tensors in {counted.files} file(s)" if counted.tensors else "total_parameters"
        )
        left = "; ".join(f"left out {n:,} in {why}" for why, n in sorted(counted.left_out.items()))
        data["params_official"] = counted.params
        data["params_official_kind"] = "exact"
        data["params_official_source"] = f"{counted.method} of {folder.resolve()}: {what}" + (
            f" ({left})" if left else ""
        )
        if counted.extra:
            data["extra_params"] = dict(
                count=counted.extra,
                what="checkpoint tensors outside the text decoder (vision/audio tower, projector)",
                source=f"{counted.method} of {folder.resolve()}",
            )
        if "torch_dtype" not in config and "dtype" not in config and counted.dominant_dtype and not quantized:
            data["native_dtype"] = counted.dominant_dtype
    profile = model_from_dict(data, config_path)
    computed = count_params(profile).total
    if params_checkpoint and abs(computed - params_checkpoint) > 0.01 * params_checkpoint:
        warnings.append(
            f"{profile.name}: computed parameter count {computed:,} differs from the checkpoint's "
            f"{params_checkpoint:,} by {100 * (computed - params_checkpoint) / params_checkpoint:+.2f}% "
            "(the mapping may miss part of this architecture)"
        )
    return ImportedModel(
        profile, data, model_type, config_path, params_source, params_checkpoint, tuple(warnings)
    )

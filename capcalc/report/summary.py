"""Headline and derived numbers of one profile, as flat records for `models`,
`gpus` and `show`."""

from __future__ import annotations

from dataclasses import asdict

from capcalc.core.dtypes import PEAK_DTYPES, resolve_kv_dtype
from capcalc.model.kv import kv_bytes_per_token
from capcalc.model.params import count_params
from capcalc.model.weights import weight_bytes
from capcalc.perf.efficiency import resolve_efficiency
from capcalc.schema.profiles import HardwareProfile, ModelProfile

SHOW_WEIGHT_DTYPES = ("bf16", "fp8", "int8", "int4")
SHOW_KV_DTYPES = ("bf16", "fp8")


#: how `show` and `models` name each layer kind (schema LAYER_KINDS), in the order listed
_KIND_LABELS = {
    "full": "full",
    "sliding": "sliding({window})",
    "chunked": "chunked({chunk})",
    "mamba": "Mamba2",
    "linear": "Gated DeltaNet",
    "mlp": "MLP-only",
    "shared_full": "full KV-shared",
    "shared_sliding": "sliding({window}) KV-shared",
    "parallel_hybrid": "attention+Mamba2 parallel",
}


def layer_kind_counts(model: ModelProfile) -> dict[str, int]:
    """Layers of each kind, in the order of :data:`_KIND_LABELS` (a profile without a layer
    list is all full attention)."""
    types = model.layer_types or ("full",) * model.num_layers
    types = tuple(types[i] if i < len(types) else "full" for i in range(model.num_layers))
    return {kind: types.count(kind) for kind in _KIND_LABELS if kind in types}


def layer_layout(model: ModelProfile) -> str:
    """'32 full', '13 full + 13 sliding(4096)', '12 full + 36 Gated DeltaNet', with MoE/MLA noted."""
    labels = {
        kind: label.format(window=model.sliding_window, chunk=model.attention_chunk_size)
        for kind, label in _KIND_LABELS.items()
    }
    counts = layer_kind_counts(model)
    text = " + ".join(f"{n} {labels[kind]}" for kind, n in counts.items())
    if model.mla is not None:
        text += ", MLA latent"
    if model.moe is not None:
        m = model.moe
        text += f", MoE {m.experts_per_token}/{m.num_experts}"
        if m.num_shared_experts:
            text += f" + {m.num_shared_experts} shared"
        if m.first_dense_layers:
            text += f" (first {m.first_dense_layers} dense)"
    return text


def model_headline(model: ModelProfile) -> dict:
    """One row of `capcalc models`."""
    params = count_params(model)
    kv_dtype = resolve_kv_dtype("auto", model.native_dtype)
    return {
        "model": model.name,
        "params_total": params.total,
        "params_active": params.active,
        "num_layers": model.num_layers,
        "num_attention_heads": model.num_attention_heads,
        "num_kv_heads": model.num_kv_heads,
        "head_dim": model.head_dim,
        "kv_dtype": kv_dtype,
        "kv_bytes_per_token": kv_bytes_per_token(model, kv_dtype),
        "max_context": model.max_context,
        "layout": layer_layout(model),
    }


def model_details(model: ModelProfile) -> dict:
    """Everything `capcalc show MODEL` prints: the profile, the itemised parameter
    count and its check against the official figure, weight and KV bytes per dtype."""
    params = count_params(model)
    rec = {"kind": "model", **model_headline(model)}
    rec.update(
        display_name=model.display_name,
        aliases=list(model.aliases),
        source=model.source,
        hidden_size=model.hidden_size,
        intermediate_size=model.intermediate_size,
        vocab_size=model.vocab_size,
        tie_word_embeddings=model.tie_word_embeddings,
        native_dtype=model.native_dtype,
        full_layers=model.num_full_layers,
        sliding_layers=model.num_sliding_layers,
        layer_kinds=layer_kind_counts(model),
        sliding_window=model.sliding_window,
        mla_layers=model.num_layers if model.mla else 0,
        moe_layers=model.num_moe_layers,
        num_experts=model.moe.num_experts if model.moe else None,
        experts_per_token=model.moe.experts_per_token if model.moe else None,
        params_official=model.params_official,
        params_official_kind=model.params_official_kind,
        params_official_source=model.params_official_source,
        params_error_pct=(
            100.0 * (params.total - model.params_official) / model.params_official
            if model.params_official
            else None
        ),
    )
    for key, value in params.as_dict().items():
        if key not in ("total", "active"):
            rec[f"params_{key}"] = value
    for dtype in SHOW_WEIGHT_DTYPES:
        rec[f"weight_bytes_{dtype}"] = weight_bytes(model, dtype, params=params).bytes
    for dtype in SHOW_KV_DTYPES:
        rec[f"kv_bytes_per_token_{dtype}"] = kv_bytes_per_token(model, dtype)
    return rec


def gpu_headline(gpu: HardwareProfile) -> dict:
    """One row of `capcalc gpus`."""
    bf16 = gpu.peak("bf16")
    return {
        "gpu": gpu.name,
        "vendor": gpu.vendor,
        "memory_bytes": gpu.memory_bytes,
        "bandwidth_bytes_per_s": gpu.bandwidth_bytes_per_s,
        "peak_flops_per_s_bf16": bf16,
        "ridge_point_bf16_flop_per_byte": bf16 / gpu.bandwidth_bytes_per_s,
        "interconnect_bandwidth_bytes_per_s": gpu.interconnect_bandwidth_bytes_per_s,
        "price_per_gpu_hour_usd": gpu.price_per_hour,
    }


def gpu_details(gpu: HardwareProfile) -> dict:
    """Everything `capcalc show GPU` prints: memory in both units, ridge point per dtype, sources."""
    rec = {"kind": "gpu", **gpu_headline(gpu)}
    rec.update(
        display_name=gpu.display_name,
        aliases=list(gpu.aliases),
        memory_gb=gpu.memory_bytes / 1e9,
        memory_gib=gpu.memory_bytes / 2**30,
        memory_reported_bytes=gpu.memory_reported_bytes,
        interconnect=gpu.interconnect,
        l2_cache_bytes=gpu.l2_cache_bytes,
    )
    for dtype in PEAK_DTYPES:
        if dtype in gpu.peak_flops_per_s:
            rec[f"peak_flops_per_s_{dtype}"] = gpu.peak_flops_per_s[dtype]
            rec[f"ridge_point_{dtype}_flop_per_byte"] = (
                gpu.peak_flops_per_s[dtype] / gpu.bandwidth_bytes_per_s
            )
    # the latency model's efficiencies for this GPU, before any flag or calibration
    resolved = resolve_efficiency(gpu)
    for name, value in asdict(resolved.efficiency).items():
        rec[f"efficiency_{name}"] = value
        rec[f"efficiency_{name}_from"] = resolved.sources[name]
    for key, source in gpu.sources.items():
        rec[f"source_{key}"] = source
    return rec

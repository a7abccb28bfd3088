"""Reading and validating profile files: the one place YAML becomes a profile.

YAML is parsed with the safe loader only; every problem is reported as one line naming
the file, the field and what was expected (see ``docs/profiles.md`` for the format).
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

from capcalc.core.dtypes import DTYPE_BYTES, PEAK_DTYPES, canonical_dtype
from capcalc.core.errors import CapcalcError, ProfileError
from capcalc.core.inputs import BOUNDS, check_number, excerpt, load_yaml, parse_yaml, read_text
from capcalc.core.units import parse_quantity
from capcalc.perf.efficiency import check_mapping
from capcalc.schema.profiles import (
    LAYER_KINDS,
    MAMBA_KINDS,
    MLA,
    ExtraParams,
    HardwareProfile,
    Indexer,
    LinearAttention,
    Mamba2,
    ModelProfile,
    MoE,
)
from capcalc.sources.yamlcache import YamlCache

# --------------------------------------------------------------------------- validation


class _Reader:
    """Reads one mapping of a profile, remembering which keys were used so that
    unknown (typo'd) keys can be reported."""

    def __init__(self, path, data, prefix: str = ""):
        self.path = path
        self.prefix = prefix
        if not isinstance(data, dict):
            raise ProfileError(
                path, prefix.rstrip(".") or "(top level)", "expected a mapping of keys to values"
            )
        self.data = data
        self.used: set[str] = set()

    def _name(self, key):
        return f"{self.prefix}{key}"

    def fail(self, key, problem):
        raise ProfileError(self.path, self._name(key), problem)

    def raw(self, key, required=True, default=None):
        self.used.add(key)
        if key not in self.data or self.data[key] is None:
            if required:
                self.fail(key, "missing (required)")
            return default
        return self.data[key]

    def string(self, key, required=True, default=None):
        value = self.raw(key, required, default)
        if value is default and not required:
            return value
        if not isinstance(value, str) or not value.strip():
            self.fail(key, f"expected a non-empty string, got {excerpt(value)}")
        return value.strip()

    def integer(self, key, required=True, default=None, minimum=1):
        value = self.raw(key, required, default)
        if value is default and not required:
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(key, f"expected a whole number, got {excerpt(value)}")
        if value < minimum:
            self.fail(key, f"must be >= {minimum}, got {excerpt(value)}")
        bound = BOUNDS[_COUNT_KIND.get(key, "count")]
        if value > bound.high:
            self.fail(key, f"{excerpt(value)} is above the bound {bound.high:,} ({bound.reason})")
        return value

    def boolean(self, key, default=False):
        value = self.raw(key, False, default)
        if not isinstance(value, bool):
            self.fail(key, f"expected true or false, got {excerpt(value)}")
        return value

    def choice(self, key, choices, default=None):
        value = self.raw(key, default is None, default)
        if not isinstance(value, str) or value not in choices:
            self.fail(key, f"expected one of {', '.join(choices)}, got {excerpt(value)}")
        return value

    def quantity(self, key, kind, required=True):
        value = self.raw(key, required)
        if value is None:
            return None
        try:
            number = parse_quantity(value, kind, self._name(key))
        except CapcalcError as exc:
            raise ProfileError(self.path, self._name(key), exc.message.split(": ", 1)[-1]) from None
        if not number > 0:
            self.fail(key, f"must be positive, got {excerpt(value)}")
        return number

    def string_list(self, key):
        value = self.raw(key, False, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
            self.fail(key, f"expected a list of strings, got {excerpt(value)}")
        return tuple(v.strip() for v in value)

    def sub(self, key, required=False):
        value = self.raw(key, required)
        if value is None:
            return None
        return _Reader(self.path, value, f"{self._name(key)}.")

    def finish(self):
        unknown = [k for k in self.data if k not in self.used]
        if unknown:
            known = sorted(self.used)
            key = unknown[0]
            close = difflib.get_close_matches(str(key)[:64], known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (known keys: {', '.join(known)})"
            more = f"; {len(unknown) - 1:,} more unknown keys" if len(unknown) > 1 else ""
            raise ProfileError(
                self.path, self._name(excerpt(str(key), 48).strip("'")), f"unknown key{hint}{more}"
            )


def _load_yaml(path: Path, cache: YamlCache | None = None):
    """The file's YAML, within the input layer's limits (:func:`capcalc.core.inputs.load_yaml`),
    through ``cache`` when given (a registry load)."""
    try:
        if cache is None:
            return load_yaml(path, "profile")
        return cache.parse(path, lambda p: read_text(p, "profile"), lambda text: parse_yaml(text, path))
    except ProfileError:
        raise
    except CapcalcError as exc:
        raise ProfileError(path, "", exc.message.removeprefix(f"{path}: ")) from None


#: the bound (:data:`capcalc.core.inputs.BOUNDS`) of each whole-number profile field
_COUNT_KIND = {
    "num_layers": "layers",
    "first_dense_layers": "layers",
    "norms_per_layer": "layers",
    "hidden_size": "hidden_size",
    "kv_lora_rank": "hidden_size",
    "q_lora_rank": "hidden_size",
    "num_attention_heads": "heads",
    "num_kv_heads": "heads",
    "head_dim": "head_dim",
    "qk_rope_head_dim": "head_dim",
    "qk_nope_head_dim": "head_dim",
    "v_head_dim": "head_dim",
    "intermediate_size": "intermediate_size",
    "expert_intermediate_size": "intermediate_size",
    "shared_expert_intermediate_size": "intermediate_size",
    "vocab_size": "vocab",
    "max_context": "context",
    "window": "context",
    "chunk_size": "context",
    "topk": "context",
    "n_heads": "heads",
    "layer_step": "layers",
    "num_experts": "experts",
    "experts_per_token": "experts",
    "num_shared_experts": "experts",
    "num_heads": "heads",
    "num_key_heads": "heads",
    "num_value_heads": "heads",
    "n_groups": "heads",
    "key_head_dim": "head_dim",
    "value_head_dim": "head_dim",
    "state_size": "head_dim",
    "conv_kernel": "head_dim",
}


#: a profile name: lower-case letters and digits, words joined by '-', '.' in versions
PROFILE_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]*$")
#: a profile is saved as NAME.yaml: the name leaves room for the suffix in a 255-byte file name
MAX_NAME_CHARS = 200


def _check_name(reader: _Reader, name: str):
    if len(name) > MAX_NAME_CHARS or not PROFILE_NAME.match(name):
        reader.fail(
            "name", f"expected a lower-case, hyphenated name (letters, digits, '-', '.'), got {excerpt(name)}"
        )


def _official_kind(top: _Reader, data: dict) -> str | None:
    """``exact`` or ``rounded`` (default), and only beside a ``params_official`` count."""
    if "params_official" not in data:
        if data.get("params_official_kind") is not None:
            top.fail("params_official_kind", "given without params_official")
        top.used.add("params_official_kind")
        return None
    return top.choice("params_official_kind", ("exact", "rounded"), "rounded")


def model_from_dict(data: dict, path="<model>") -> ModelProfile:
    """Validate a model profile mapping and build a :class:`ModelProfile`."""
    top = _Reader(path, data)
    name = top.string("name")
    _check_name(top, name)
    arch = top.sub("architecture", required=True)
    values: dict[str, Any] = dict(
        name=name,
        source=top.string("source"),
        display_name=top.string("display_name", False, "") or name,
        aliases=top.string_list("aliases"),
        params_official=top.integer("params_official", False),
        params_official_kind=_official_kind(top, data),
        params_official_source=top.string("params_official_source", "params_official" in data),
        native_dtype=_dtype_field(top, "native_dtype"),
        notes=str(top.raw("notes", False, "") or ""),
        path=str(path),
    )
    for key in ("num_layers", "hidden_size", "num_attention_heads", "num_kv_heads", "head_dim"):
        values[key] = arch.integer(key)
    values["intermediate_size"] = arch.integer("intermediate_size")
    values["vocab_size"] = arch.integer("vocab_size")
    values["max_context"] = arch.integer("max_context")
    values["tie_word_embeddings"] = arch.boolean("tie_word_embeddings")
    values["mlp"] = arch.choice("mlp", ("gated", "plain"), "gated")
    values["attention_bias"] = arch.boolean("attention_bias")
    values["attention_output_bias"] = arch.boolean("attention_output_bias")
    values["mlp_bias"] = arch.boolean("mlp_bias")
    values["norm"] = arch.choice("norm", ("rmsnorm", "layernorm"), "rmsnorm")
    values["norms_per_layer"] = arch.integer("norms_per_layer", False, 2, minimum=0)
    values["qk_norm"] = arch.boolean("qk_norm")
    values["position_embedding"] = arch.choice("position_embedding", ("rope", "learned", "alibi"), "rope")
    values["attention_output_gate"] = arch.boolean("attention_output_gate")
    arch.finish()

    heads, kv_heads = values["num_attention_heads"], values["num_kv_heads"]
    if heads % kv_heads:
        arch.fail(
            "num_kv_heads",
            f"num_attention_heads ({heads}) must be divisible by num_kv_heads ({kv_heads})",
        )

    moe = top.sub("moe")
    if moe is not None:
        values["moe"] = MoE(
            num_experts=moe.integer("num_experts"),
            experts_per_token=moe.integer("experts_per_token"),
            expert_intermediate_size=moe.integer("expert_intermediate_size"),
            num_shared_experts=moe.integer("num_shared_experts", False, 0, minimum=0),
            shared_expert_intermediate_size=moe.integer(
                "shared_expert_intermediate_size", False, 0, minimum=0
            ),
            first_dense_layers=moe.integer("first_dense_layers", False, 0, minimum=0),
            expert_bias=moe.boolean("expert_bias"),
            router_bias=moe.boolean("router_bias"),
            layer_step=moe.integer("layer_step", False, 1),
        )
        moe.finish()
        m = values["moe"]
        if m.experts_per_token > m.num_experts:
            moe.fail(
                "experts_per_token", f"cannot exceed num_experts ({m.num_experts}), got {m.experts_per_token}"
            )
        if m.first_dense_layers >= values["num_layers"]:
            moe.fail("first_dense_layers", f"must be below num_layers ({values['num_layers']})")
        if m.num_shared_experts and not m.shared_expert_intermediate_size:
            values["moe"] = MoE(
                **{**m.__dict__, "shared_expert_intermediate_size": m.expert_intermediate_size}
            )

    mla = top.sub("mla")
    if mla is not None:
        q_lora = mla.raw("q_lora_rank", False)
        indexer = mla.sub("indexer")
        values["mla"] = MLA(
            kv_lora_rank=mla.integer("kv_lora_rank"),
            qk_rope_head_dim=mla.integer("qk_rope_head_dim"),
            qk_nope_head_dim=mla.integer("qk_nope_head_dim"),
            v_head_dim=mla.integer("v_head_dim"),
            q_lora_rank=mla.integer("q_lora_rank") if q_lora is not None else None,
            indexer=None
            if indexer is None
            else Indexer(
                n_heads=indexer.integer("n_heads"),
                head_dim=indexer.integer("head_dim"),
                topk=indexer.integer("topk"),
            ),
        )
        if indexer is not None:
            indexer.finish()
        mla.finish()
        a = values["mla"]
        # MLA's config states these; they must agree with the latent shapes (docs/profiles.md)
        if values["num_kv_heads"] != heads:
            arch.fail(
                "num_kv_heads",
                f"with mla it equals num_attention_heads ({heads}), got {values['num_kv_heads']}",
            )
        if values["head_dim"] != a.qk_nope_head_dim + a.qk_rope_head_dim:
            arch.fail(
                "head_dim",
                f"with mla it is qk_nope_head_dim + qk_rope_head_dim "
                f"({a.qk_nope_head_dim + a.qk_rope_head_dim}), got {values['head_dim']}",
            )

    layer_types = _layer_kinds(top, values["num_layers"], values)
    window = top.sub("sliding_window")
    if window is not None:
        values["sliding_window"] = window.integer("window")
        listed = _kind_list(window, values["num_layers"], ("sliding", "full"), required=layer_types is None)
        if listed is not None:
            layer_types = listed
        window.finish()
    layer_types = layer_types or ("full",) * values["num_layers"]
    if "sliding" in layer_types and window is None:
        top.fail("layers", "lists 'sliding' layers but the profile has no sliding_window block (window)")
    values["layer_types"] = layer_types
    chunked = top.sub("chunked_attention")
    if (chunked is None) != ("chunked" not in layer_types):
        top.fail(
            "chunked_attention" if chunked is not None else "layers",
            "a 'chunked' layer kind and a chunked_attention block go together (one without the other)",
        )
    if chunked is not None:
        values["attention_chunk_size"] = chunked.integer("chunk_size")
        chunked.finish()
    _recurrent_blocks(top, values, layer_types)
    extra = top.sub("extra_params")
    if extra is not None:
        values["extra_params"] = ExtraParams(
            count=extra.integer("count"), what=extra.string("what"), source=extra.string("source")
        )
        extra.finish()
    top.finish()
    return ModelProfile(**values)


def _kind_list(reader: _Reader, layers: int, kinds: tuple[str, ...], required: bool = True):
    """The per-layer kinds of a block's ``pattern`` (repeating from layer 0) or ``layer_types``
    (one per layer); None when neither is given and ``required`` is false."""
    pattern = reader.raw("pattern", False)
    explicit = reader.raw("layer_types", False)
    if pattern is None and explicit is None and not required:
        return None
    if (pattern is None) == (explicit is None):
        reader.fail("pattern", "give exactly one of 'pattern' (repeating from layer 0) or 'layer_types'")
    key, listed = ("pattern", pattern) if pattern is not None else ("layer_types", explicit)
    if not isinstance(listed, list) or not listed or any(t not in kinds for t in listed):
        reader.fail(key, f"expected a list of {' / '.join(repr(k) for k in kinds)}, got {excerpt(listed)}")
    if explicit is not None and len(explicit) != layers:
        reader.fail(key, f"expected {layers} entries (one per layer), got {len(explicit)}")
    return tuple(listed[i % len(listed)] for i in range(layers))


def _layer_kinds(top: _Reader, layers: int, values: dict):
    """The ``layers:`` block (the kinds of a hybrid model; ``mixer_only``: the mixer layers
    carry no MLP, only the 'mlp' layers have one), or None."""
    block = top.sub("layers")
    if block is None:
        return None
    kinds = _kind_list(block, layers, LAYER_KINDS)
    values["mixer_only"] = block.boolean("mixer_only")
    block.finish()
    if not any(k in ("full", "sliding", "chunked", "parallel_hybrid") for k in kinds):
        top.fail(
            "layers", "needs at least one attention layer ('full', 'sliding', 'chunked' or 'parallel_hybrid')"
        )
    return kinds


def _recurrent_blocks(top: _Reader, values: dict, layer_types: tuple[str, ...]) -> None:
    """The ``mamba`` and ``linear_attention`` mixer blocks, each present exactly when a kind
    that runs it is in the layer list ('mamba' or 'parallel_hybrid'; 'linear')."""
    for key, kinds in (("mamba", MAMBA_KINDS), ("linear_attention", ("linear",))):
        block = top.sub(key)
        if (block is None) != (not any(k in layer_types for k in kinds)):
            named = " or ".join(f"'{k}'" for k in kinds)
            top.fail(
                key if block is not None else "layers",
                f"a {named} layer kind and a {key} block go together (one without the other)",
            )
        if block is None:
            continue
        state = block.raw("state_dtype", False)
        if state is not None:
            values["ssm_state_dtype"] = _dtype_field(block, "state_dtype")
        if key == "mamba":
            values["mamba"] = Mamba2(
                num_heads=block.integer("num_heads"),
                head_dim=block.integer("head_dim"),
                state_size=block.integer("state_size"),
                n_groups=block.integer("n_groups", False, 1),
                conv_kernel=block.integer("conv_kernel", False, 4),
                conv_bias=block.boolean("conv_bias", True),
                proj_bias=block.boolean("proj_bias"),
                gated_norm=block.boolean("gated_norm", True),
            )
        else:
            values["linear_attention"] = LinearAttention(
                num_key_heads=block.integer("num_key_heads"),
                num_value_heads=block.integer("num_value_heads"),
                key_head_dim=block.integer("key_head_dim"),
                value_head_dim=block.integer("value_head_dim"),
                conv_kernel=block.integer("conv_kernel", False, 4),
            )
        block.finish()


def _dtype_field(reader: _Reader, key: str) -> str:
    value = reader.raw(key, False, "bf16")
    if not isinstance(value, str):
        reader.fail(key, f"expected a dtype name, got {excerpt(value)}")
    try:
        return canonical_dtype(str(value))
    except CapcalcError:
        reader.fail(key, f"unknown dtype {excerpt(value)}: expected one of {', '.join(DTYPE_BYTES)}")


def _efficiency_field(top: _Reader, path) -> dict[str, float]:
    """The ``efficiency:`` block, checked (known parameters, valid values) and parsed to
    base units when the profile loads, not each time a prediction reads it."""
    raw = top.raw("efficiency", False, {}) or {}
    if not isinstance(raw, dict):
        top.fail("efficiency", "expected a mapping")
    try:
        return check_mapping(raw, "efficiency")
    except CapcalcError as exc:
        field, _, problem = exc.message.partition(": ")
        raise ProfileError(path, field, problem) from None


_HW_SOURCED = {
    "memory": "memory",
    "memory_reported": "memory_reported",
    "bandwidth": "bandwidth",
    "peak_flops": "peak_flops",
    "interconnect_bandwidth": "interconnect",
    "l2_cache": "l2_cache",
    "price_per_hour": "price",
}


def hardware_from_dict(data: dict, path="<gpu>") -> HardwareProfile:
    """Validate a GPU profile mapping and build a :class:`HardwareProfile`."""
    top = _Reader(path, data)
    name = top.string("name")
    _check_name(top, name)
    peaks_reader = top.sub("peak_flops", required=True)
    peaks: dict[str, float] = {}
    for key in list(peaks_reader.data):
        if key not in PEAK_DTYPES:
            peaks_reader.fail(key, f"unknown dtype: expected one of {', '.join(PEAK_DTYPES)}")
        peaks[key] = peaks_reader.quantity(key, "flops")
    peaks_reader.finish()
    if "bf16" not in peaks and "fp16" not in peaks:
        top.fail("peak_flops", "needs at least a bf16 or fp16 rate")

    sources_reader = top.sub("sources", required=True)
    sources = {k: sources_reader.string(k) for k in list(sources_reader.data)}
    sources_reader.used.update(sources)
    for key, source_key in _HW_SOURCED.items():
        if key in data and data[key] is not None and source_key not in sources:
            top.fail(f"sources.{source_key}", f"missing: every number needs a source ({key} has none)")
    unknown_sources = set(sources) - set(_HW_SOURCED.values()) - {"efficiency", "notes"}
    if unknown_sources:
        top.fail(
            f"sources.{sorted(unknown_sources)[0]}",
            f"unknown key (known: {', '.join(sorted(set(_HW_SOURCED.values())))})",
        )

    efficiency = _efficiency_field(top, path)
    if efficiency and "efficiency" not in sources:
        top.fail("sources.efficiency", "missing: the efficiency defaults need a source")
    price = top.raw("price_per_hour", False)
    if price is not None:
        try:
            price = check_number(price, "price_per_hour", positive=True)
        except CapcalcError:
            top.fail(
                "price_per_hour", f"expected a positive, finite number of USD per hour, got {excerpt(price)}"
            )

    profile = HardwareProfile(
        name=name,
        display_name=top.string("display_name", False, "") or name,
        aliases=top.string_list("aliases"),
        vendor=top.string("vendor", False, ""),
        memory_bytes=top.quantity("memory", "bytes"),
        memory_reported_bytes=top.quantity("memory_reported", "bytes", required=False),
        bandwidth_bytes_per_s=top.quantity("bandwidth", "bandwidth"),
        peak_flops_per_s=peaks,
        interconnect=top.string("interconnect", False, ""),
        interconnect_bandwidth_bytes_per_s=top.quantity(
            "interconnect_bandwidth", "bandwidth", required=False
        ),
        l2_cache_bytes=top.quantity("l2_cache", "bytes", required=False),
        price_per_hour=float(price) if price is not None else None,
        sources=sources,
        efficiency=dict(efficiency),
        notes=str(top.raw("notes", False, "") or ""),
        path=str(path),
    )
    top.finish()
    reported = profile.memory_reported_bytes
    if reported is not None and reported > profile.memory_bytes:
        top.fail(
            "memory_reported",
            f"{excerpt(data.get('memory_reported'))} is above memory ({excerpt(data.get('memory'))}): "
            "the driver reports at most the memory fitted",
        )
    return profile


def load_profile_file(path: Path, cache: YamlCache | None = None):
    """Load one YAML file as a model or GPU profile, deciding by its keys (its parsed
    YAML from ``cache`` when that holds this very file)."""
    data = _load_yaml(path, cache)
    if not isinstance(data, dict):
        raise ProfileError(
            path, "(top level)", "expected a mapping with 'name' and either 'architecture' or 'bandwidth'"
        )
    if "architecture" in data:
        return model_from_dict(data, path)
    if "bandwidth" in data or "peak_flops" in data:
        return hardware_from_dict(data, path)
    raise ProfileError(
        path, "(top level)", "neither a model profile ('architecture') nor a GPU profile ('bandwidth')"
    )

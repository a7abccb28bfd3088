"""Exact parameter counts from safetensors headers (capcalc.sources.safetensors_header): only the
8-byte length and the JSON header are read. The files are written here by hand with
struct/json; their data is a sparse, zero-filled region (nothing is loaded)."""

from __future__ import annotations

import json
import math
import struct

import pytest
from conftest import TINY_LLAMA, llama_tensors, real_config, write_folder, write_safetensors
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capcalc.core.errors import CapcalcError
from capcalc.model.params import count_params
from capcalc.sources.hfconfig import count_checkpoint, import_folder
from capcalc.sources.safetensors_header import read_checkpoint, read_header


def test_header_shapes(tmp_path):
    n = write_safetensors(tmp_path / "a.safetensors", {"w": ("BF16", (3, 4)), "b": ("F32", (4,))})
    tensors = {t.name: t for t in read_header(tmp_path / "a.safetensors")}
    assert (tensors["w"].shape, tensors["w"].dtype, tensors["w"].numel) == ((3, 4), "BF16", 12)
    assert n == 16 == sum(t.numel for t in tensors.values())


def test_only_the_header_is_read(tmp_path):
    """A 64 GiB tensor (a sparse file) is counted from its header alone."""
    path = tmp_path / "big.safetensors"
    write_safetensors(path, {"w": ("BF16", (2**17, 2**18))})
    assert path.stat().st_size > 64 * 2**30
    assert read_checkpoint(tmp_path).total == 2**35


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    shapes=st.lists(st.lists(st.integers(0, 40), min_size=0, max_size=3), min_size=1, max_size=8),
    split=st.integers(1, 3),
)
def test_total_is_the_sum_of_shape_products(tmp_path_factory, shapes, split):
    """Whatever the shards, the total is the sum over tensors of the product of the shape."""
    folder = tmp_path_factory.mktemp("ckpt")
    tensors = {f"t{i}": ("F16", tuple(s)) for i, s in enumerate(shapes)}
    names = list(tensors)
    weight_map = {}
    for k in range(split):
        part = {n: tensors[n] for n in names[k::split]}
        if part:
            write_safetensors(folder / f"model-{k}.safetensors", part)
            weight_map.update({n: f"model-{k}.safetensors" for n in part})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    assert read_checkpoint(folder).total == sum(math.prod(s) for s in shapes)


def test_index_metadata_when_the_shards_are_absent(tmp_path):
    index = {
        "metadata": {"total_size": 10, "total_parameters": 8_030_261_248},
        "weight_map": {"w": "m-1.safetensors"},
    }
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    ckpt = read_checkpoint(tmp_path)
    assert (ckpt.total, ckpt.method) == (8_030_261_248, "safetensors index metadata")
    del index["metadata"]["total_parameters"]
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    assert read_checkpoint(tmp_path) is None


def test_no_checkpoint(tmp_path):
    assert read_checkpoint(tmp_path) is None


def test_consolidated_duplicate_is_not_counted_twice(tmp_path):
    write_safetensors(tmp_path / "model.safetensors", {"w": ("BF16", (8, 8))})
    write_safetensors(tmp_path / "consolidated.safetensors", {"layers.0.w": ("BF16", (8, 8))})
    assert read_checkpoint(tmp_path).total == 64


_HEADER = b'{"w": {"dtype": "F16", "shape": [4], "data_offsets": [0, 8]}}'


@pytest.mark.parametrize(
    "content, problem",
    [
        (b"\x01\x02", "not a safetensors file (shorter than its 8-byte header length)"),
        (
            struct.pack("<Q", 1000) + b"{}",
            "not a safetensors file (header length 1000 does not fit in 10 bytes)",
        ),
        (struct.pack("<Q", 2) + b"{x", "safetensors header is not valid JSON"),
        (
            struct.pack("<Q", len(_HEADER)) + _HEADER,
            f"truncated: the header promises 8 data bytes, the file is {8 + len(_HEADER)} bytes",
        ),
    ],
)
def test_corrupt_files_are_one_line_errors(tmp_path, content, problem):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(CapcalcError) as err:
        read_header(path)
    assert err.value.message.startswith(f"{path}: {problem}")


def test_tiny_llama_checkpoint_equals_the_computed_count(tmp_path):
    folder = write_folder(tmp_path / "tiny", TINY_LLAMA, llama_tensors(TINY_LLAMA))
    imported = import_folder(folder, name="tiny")
    assert imported.params_source == "safetensors headers"
    assert (
        imported.params_checkpoint == count_params(imported.profile).total == imported.profile.params_official
    )
    assert imported.profile.params_official_kind == "exact"
    assert imported.warnings == ()


def opt_125m_tensors() -> dict:
    """The tensors OPTForCausalLM saves for facebook/opt-125m (positions: 2048 + 2 rows)."""
    h, f = 768, 3072
    t = {
        "model.decoder.embed_tokens.weight": ("F16", (50272, h)),
        "model.decoder.embed_positions.weight": ("F16", (2050, h)),
        "model.decoder.final_layer_norm.weight": ("F16", (h,)),
        "model.decoder.final_layer_norm.bias": ("F16", (h,)),
    }
    for i in range(12):
        p = f"model.decoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            t[p + f"self_attn.{proj}.weight"] = ("F16", (h, h))
            t[p + f"self_attn.{proj}.bias"] = ("F16", (h,))
        t[p + "fc1.weight"], t[p + "fc1.bias"] = ("F16", (f, h)), ("F16", (f,))
        t[p + "fc2.weight"], t[p + "fc2.bias"] = ("F16", (h, f)), ("F16", (h,))
        for norm in ("self_attn_layer_norm", "final_layer_norm"):
            t[p + f"{norm}.weight"], t[p + f"{norm}.bias"] = ("F16", (h,)), ("F16", (h,))
    return t


def test_opt_125m_checkpoint_is_exact_and_the_profile_within_one_percent(tmp_path):
    folder = write_folder(tmp_path / "opt-125m", real_config("facebook__opt-125m"), opt_125m_tensors())
    imported = import_folder(folder, name="opt-125m")
    assert imported.params_checkpoint == 125_239_296
    computed = count_params(imported.profile).total
    assert imported.params_checkpoint - computed == 2 * 768
    assert imported.warnings == ()


def test_tensors_left_out_and_extra(tmp_path):
    """Vision towers count as extra; MTP layers past num_hidden_layers, quantisation
    scales, buffers and a duplicate of a tied LM head are left out, each named."""
    tensors = {
        "model.layers.0.mlp.w": ("BF16", (4, 4)),
        "model.layers.1.mlp.w": ("BF16", (4, 4)),  # beyond 1 layer: an MTP layer
        "model.layers.0.mlp.w.weight_scale_inv": ("F32", (2,)),
        "h.0.attn.bias": ("F32", (1, 1, 3, 3)),
        "h.0.attn.c_attn.bias": ("F32", (5,)),  # a real parameter
        "vision_tower.encoder.w": ("BF16", (6,)),
        "lm_head.weight": ("BF16", (7,)),
    }
    write_safetensors(tmp_path / "model.safetensors", tensors)
    counted = count_checkpoint(read_checkpoint(tmp_path), num_layers=1, tied=True)
    assert counted.params == 16 + 5 + 6 and counted.extra == 6
    assert counted.left_out == {
        "layers beyond num_hidden_layers 1 (multi-token prediction)": 16,
        "quantisation scales": 2,
        "buffers (not parameters)": 9,
        "a stored copy of the tied LM head": 7,
    }


def test_packed_quantised_weights_fall_back_to_the_architecture(tmp_path):
    config = {**TINY_LLAMA, "quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 128}}
    folder = write_folder(tmp_path / "q", config, {"model.layers.0.qweight": ("I32", (8, 8))})
    imported = import_folder(folder, name="q")
    assert imported.params_source == "architecture" and imported.params_checkpoint is None
    assert imported.profile.native_dtype == "int4"
    assert "packed int4 weights" in imported.warnings[0]


def test_a_count_far_from_the_mapping_warns(tmp_path):
    tensors = {**llama_tensors(TINY_LLAMA), "model.extra_thing.weight": ("BF16", (1000, 100))}
    imported = import_folder(write_folder(tmp_path / "t", TINY_LLAMA, tensors), name="t")
    assert "the mapping may miss part of this architecture" in imported.warnings[0]


def test_dtype_from_headers_when_the_config_has_none(tmp_path):
    config = {k: v for k, v in TINY_LLAMA.items() if k != "torch_dtype"}
    tensors = {k: ("F16", shape) for k, (_, shape) in llama_tensors(TINY_LLAMA).items()}
    assert (
        import_folder(write_folder(tmp_path / "t", config, tensors), name="t").profile.native_dtype == "fp16"
    )
    assert import_folder(write_folder(tmp_path / "u", config), name="u").profile.native_dtype == "fp32"

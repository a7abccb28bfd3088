"""Profile loading: strict validation with one-line errors, user overrides, name lookup."""

from __future__ import annotations

import os
import textwrap

import pytest

GOOD_MODEL = """\
name: tiny-test
aliases: [example-org/Tiny-Test]
source: written for this test
architecture:
  num_layers: 2
  hidden_size: 64
  num_attention_heads: 4
  num_kv_heads: 2
  head_dim: 16
  intermediate_size: 128
  vocab_size: 256
  max_context: 512
"""


def write(directory, name, text):
    path = directory / name
    path.write_text(textwrap.dedent(text))
    return path


def one_error_line(result):
    assert result.code == 2, result
    assert result.out == ""
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert "Traceback" not in result.err
    return lines[0]


def test_good_user_profile_loads(cli, tmp_path):
    write(tmp_path, "tiny.yaml", GOOD_MODEL)
    r = cli("kv", "tiny-test", "--ctx", "10", "--profiles", tmp_path, "--json")
    assert r.code == 0, r.err
    # 2 x 2 layers x 2 KV heads x 16 x 2 B = 256 B per token
    assert r.json()["kv_bytes_per_token"] == 256


@pytest.mark.parametrize(
    "mutate, field, expected",
    [
        (lambda t: t.replace("  num_layers: 2\n", ""), "architecture.num_layers", "missing (required)"),
        (
            lambda t: t.replace("hidden_size: 64", "hidden_size: -64"),
            "architecture.hidden_size",
            "must be >= 1, got -64",
        ),
        (
            lambda t: t.replace("num_kv_heads: 2", "num_kv_heads: 3"),
            "architecture.num_kv_heads",
            "num_attention_heads (4) must be divisible by num_kv_heads (3)",
        ),
        (
            lambda t: t.replace("head_dim: 16", "head_dim: 16\n  hiden_size: 3"),
            "architecture.hiden_size",
            "unknown key",
        ),
        (lambda t: t + "native_dtype: fp7\n", "native_dtype", "unknown dtype 'fp7'"),
        (lambda t: t.replace("source: written for this test\n", ""), "source", "missing (required)"),
    ],
)
def test_invalid_model_profiles_name_file_and_field(cli, tmp_path, mutate, field, expected):
    path = write(tmp_path, "tiny.yaml", mutate(GOOD_MODEL))
    line = one_error_line(cli("models", "--profiles", tmp_path))
    assert line.startswith(f"capcalc: error: {path}: {field}: "), line
    assert expected in line


def test_unknown_key_suggests_the_right_one(cli, tmp_path):
    path = write(tmp_path, "tiny.yaml", GOOD_MODEL.replace("num_kv_heads", "num_kv_head"))
    line = one_error_line(cli("models", "--profiles", tmp_path))
    assert f"{path}: architecture." in line
    # beside the real key, the typo'd one reaches the unknown-key check and its suggestion
    path = write(
        tmp_path,
        "tiny.yaml",
        GOOD_MODEL.replace("  num_kv_heads: 2\n", "  num_kv_heads: 2\n  num_kv_head: 2\n"),
    )
    line = one_error_line(cli("models", "--profiles", tmp_path))
    assert (
        line
        == f"capcalc: error: {path}: architecture.num_kv_head: unknown key (did you mean 'num_kv_heads'?)"
    )


def test_mla_shapes_must_agree_with_heads_and_head_dim(cli, tmp_path):
    mla = GOOD_MODEL + "mla: {kv_lora_rank: 32, qk_rope_head_dim: 8, qk_nope_head_dim: 8, v_head_dim: 16}\n"
    path = write(tmp_path, "tiny.yaml", mla)
    line = one_error_line(cli("models", "--profiles", tmp_path))
    assert line == (
        f"capcalc: error: {path}: architecture.num_kv_heads: with mla it equals num_attention_heads (4), got 2"
    )
    path = write(
        tmp_path,
        "tiny.yaml",
        mla.replace("num_kv_heads: 2", "num_kv_heads: 4").replace("head_dim: 16", "head_dim: 12"),
    )
    line = one_error_line(cli("models", "--profiles", tmp_path))
    assert line.endswith(
        "architecture.head_dim: with mla it is qk_nope_head_dim + qk_rope_head_dim (16), got 12"
    )


def test_official_kind_needs_an_official_count(cli, tmp_path):
    path = write(tmp_path, "tiny.yaml", GOOD_MODEL + "params_official_kind: bogus\n")
    line = one_error_line(cli("models", "--profiles", tmp_path))
    assert line == f"capcalc: error: {path}: params_official_kind: given without params_official"


def test_gpu_efficiency_block_is_checked_when_the_profile_loads(cli, tmp_path):
    path = write(
        tmp_path,
        "gpu.yaml",
        """\
        name: test-gpu
        memory: 24 GB
        bandwidth: 1 TB/s
        peak_flops: {bf16: 100 TFLOP/s}
        efficiency: {layer_overhed_s: 10 us}
        sources: {memory: x, bandwidth: x, peak_flops: x, efficiency: x}
        """,
    )
    line = one_error_line(cli("gpus", "--profiles", tmp_path))
    assert line == (
        f"capcalc: error: {path}: efficiency: unknown efficiency parameter 'layer_overhed_s' "
        "(did you mean 'layer_overhead_s'?)"
    )


def test_python_object_tag_is_refused_by_the_safe_loader(cli, tmp_path):
    path = write(
        tmp_path, "evil.yaml", GOOD_MODEL + "notes: !!python/object/apply:os.system ['echo pwned']\n"
    )
    line = one_error_line(cli("models", "--profiles", tmp_path))
    assert line.startswith(f"capcalc: error: {path}: notes (line 13): invalid YAML: ")
    assert "python/object/apply:os.system" in line


def test_gpu_profile_numbers_need_sources(cli, tmp_path):
    path = write(
        tmp_path,
        "gpu.yaml",
        """\
        name: test-gpu
        memory: 24 GB
        bandwidth: 1 TB/s
        peak_flops: {bf16: 100 TFLOP/s}
        sources: {memory: x, peak_flops: x}
        """,
    )
    line = one_error_line(cli("gpus", "--profiles", tmp_path))
    assert (
        line
        == f"capcalc: error: {path}: sources.bandwidth: missing: every number needs a source (bandwidth has none)"
    )


def test_gpu_profile_rejects_zero_memory_and_unknown_dtype(cli, tmp_path):
    base = """\
        name: test-gpu
        memory: {memory}
        bandwidth: 1 TB/s
        peak_flops: {{{dtype}: 100 TFLOP/s}}
        sources: {{memory: x, bandwidth: x, peak_flops: x}}
        """
    path = write(tmp_path, "gpu.yaml", base.format(memory="0 GB", dtype="bf16"))
    assert "memory: must be positive" in one_error_line(cli("gpus", "--profiles", tmp_path))
    write(tmp_path, "gpu.yaml", base.format(memory="24 GB", dtype="bf17"))
    line = one_error_line(cli("gpus", "--profiles", tmp_path))
    assert line.startswith(f"capcalc: error: {path}: peak_flops.bf17: unknown dtype")


def test_user_profile_wins_and_says_so(cli, tmp_path, monkeypatch):
    override = GOOD_MODEL.replace("name: tiny-test", "name: llama-3-8b").replace(
        "num_layers: 2", "num_layers: 3"
    )
    write(tmp_path, "mine.yaml", override)
    monkeypatch.setenv("CAPCALC_PROFILES", str(tmp_path))
    r = cli("kv", "llama-3-8b", "--ctx", "1", "--json")
    assert r.code == 0
    assert r.json()["kv_bytes_per_token"] == 2 * 3 * 2 * 16 * 2
    assert "overrides" in r.err and "llama-3-8b" in r.err


def test_lookup_by_alias_and_hf_id_is_case_insensitive(registry):
    assert registry.model("META-LLAMA/Meta-Llama-3-8B").name == "llama-3-8b"
    assert registry.model("Llama-3-8B").name == "llama-3-8b"
    assert registry.gpu("NVIDIA H100 80GB HBM3").name == "h100-sxm"


def test_unknown_model_lists_three_closest(cli):
    line = one_error_line(cli("kv", "llama-3-7b"))
    assert line.startswith("capcalc: error: unknown model 'llama-3-7b'; closest: ")
    closest = line.split("closest: ")[1].split(" (")[0].split(", ")
    assert len(closest) == 3 and "llama-3-8b" in closest


def test_missing_profile_directory(cli, tmp_path):
    line = one_error_line(cli("models", "--profiles", tmp_path / "nope"))
    assert "does not exist" in line


def test_profile_dirs_one_rule_for_profiles_and_calibration(tmp_path, monkeypatch, isolated_user_config):
    """$CAPCALC_PROFILES directories, else the user directory if it exists; then --profiles."""
    from capcalc.sources.calibration import load_calibration, save_calibration
    from capcalc.sources.dirs import profile_dirs
    from capcalc.sources.registry import Registry

    extra, env_a, env_b = tmp_path / "extra", tmp_path / "env-a", tmp_path / "env-b"
    for d in (extra, env_a, env_b):
        d.mkdir()
    assert profile_dirs([extra]) == [extra]  # no user directory yet
    isolated_user_config.mkdir(parents=True)
    assert profile_dirs([extra]) == [isolated_user_config, extra]
    assert profile_dirs([extra], include_env=False) == [extra]
    monkeypatch.setenv("CAPCALC_PROFILES", os.pathsep.join([str(env_a), str(env_b)]))
    assert profile_dirs([extra]) == [env_a, env_b, extra]  # the user directory is not read
    assert profile_dirs([env_a]) == [env_b, env_a]  # named twice: read once, at its last place
    # profiles and calibration follow it: the user directory's files are both left out
    write(isolated_user_config, "mine.yaml", GOOD_MODEL)
    save_calibration("h100-sxm", {"efficiency": {"step_overhead_s": 1e-3}}, isolated_user_config)
    assert "tiny-test" not in Registry.load().models
    assert load_calibration()["gpus"] == {}
    monkeypatch.delenv("CAPCALC_PROFILES")
    assert "tiny-test" in Registry.load().models
    assert load_calibration()["gpus"]["h100-sxm"]["efficiency"] == {"step_overhead_s": 1e-3}


def test_every_shipped_profile_cites_sources(registry):
    for m in registry.models.values():
        assert m.source.strip(), m.name
        if m.params_official:
            assert m.params_official_source, m.name
    for g in registry.gpus.values():
        for key in ("memory", "bandwidth", "peak_flops"):
            assert g.sources.get(key, "").strip(), (g.name, key)


def test_profile_names_are_lower_case_hyphenated(registry):
    for name in [*registry.models, *registry.gpus]:
        assert name == name.lower() and " " not in name and "_" not in name, name


def test_required_models_and_gpus_are_shipped(registry):
    models = [
        "llama-2-7b",
        "llama-2-13b",
        "llama-2-70b",
        "llama-3-8b",
        "llama-3-70b",
        "llama-3.1-8b",
        "llama-3.1-70b",
        "llama-3.1-405b",
        "llama-3.2-1b",
        "llama-3.2-3b",
        "llama-3.3-70b",
        "mistral-7b-v0.1",
        "mistral-7b-v0.3",
        "mistral-nemo-12b",
        "mixtral-8x7b",
        "mixtral-8x22b",
        "qwen2.5-0.5b",
        "qwen2.5-1.5b",
        "qwen2.5-7b",
        "qwen2.5-14b",
        "qwen2.5-32b",
        "qwen2.5-72b",
        "qwen3-8b",
        "qwen3-32b",
        "qwen3-30b-a3b",
        "qwen3-235b-a22b",
        "gemma-2-2b",
        "gemma-2-9b",
        "gemma-2-27b",
        "gemma-3-4b",
        "gemma-3-12b",
        "gemma-3-27b",
        "phi-3-mini",
        "phi-4",
        "deepseek-v2-lite",
        "deepseek-v3",
        "gpt-oss-20b",
        "gpt-oss-120b",
        "falcon-7b",
        "gpt2",
    ]
    gpus = [
        "a10g",
        "l4",
        "l40s",
        "a100-40gb-pcie",
        "a100-40gb-sxm",
        "a100-80gb-pcie",
        "a100-80gb-sxm",
        "h100-pcie",
        "h100-sxm",
        "h100-nvl",
        "h200",
        "h20",
        "gh200",
        "b200",
        "rtx-3090",
        "rtx-4090",
        "rtx-5090",
        "rtx-6000-ada",
        "v100",
        "t4",
        "mi250x",
        "mi300x",
        "mi325x",
        "gaudi3",
        "tpu-v5e",
        "tpu-v6e",
        "a100-seed",
    ]
    assert sorted(set(models) - set(registry.models)) == []
    assert sorted(set(gpus) - set(registry.gpus)) == []


#: profiles that share another profile's architecture: base and the one field they change
SAME_ARCHITECTURE = {
    "deepseek-r1-nvfp4": ("deepseek-v3", "native_dtype"),  # NVIDIA ModelOpt NVFP4 weights
    "qwen3-32b-nvfp4": ("qwen3-32b", "native_dtype"),
    "qwen3-235b-a22b-2507": ("qwen3-235b-a22b", "max_context"),  # 262,144-token context
    "qwen3-30b-a3b-2507": ("qwen3-30b-a3b", "max_context"),
}


@pytest.mark.parametrize("variant", sorted(SAME_ARCHITECTURE))
def test_variants_keep_their_base_architecture(registry, variant):
    """A variant (NVFP4 weights, a longer context) is its base model with one field changed:
    every other architecture, MoE, MLA and window setting must stay equal."""
    from dataclasses import fields

    base, changed = SAME_ARCHITECTURE[variant]
    a, b = registry.model(variant), registry.model(base)
    differ = {f.name for f in fields(a) if getattr(a, f.name) != getattr(b, f.name)}
    assert differ == {"name", "display_name", "aliases", "notes", "path", changed}, differ


def test_readme_counts_the_shipped_profiles():
    """The README's "(N models, M GPUs)" is the number of shipped profile files."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    said = re.search(r"\((\d+) models, (\d+) GPUs\)", (root / "README.md").read_text())
    assert said, "README.md no longer says how many profiles ship"
    models = len(list((root / "model_profiles").glob("*.yaml")))
    gpus = len(list((root / "hardware_profiles").glob("*.yaml")))
    assert (int(said[1]), int(said[2])) == (models, gpus)

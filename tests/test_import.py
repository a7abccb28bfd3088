"""`capcalc import SOURCE`: a validated profile YAML written atomically into the user
profile directory (or --out), idempotent, never overwriting a different profile
without --force. Offline: folders and a fake Hub cache built in tmp_path."""

from __future__ import annotations

import pytest
import yaml
from conftest import (
    COMMIT,
    TINY_LLAMA,
    TINY_LLAMA_KV_BYTES_PER_TOKEN,
    llama_tensors,
    make_hub_cache,
    real_config,
    write_folder,
)

from capcalc.model.params import count_params
from capcalc.sources.loader import load_profile_file

pytestmark = pytest.mark.usefixtures("offline_hub")  # every test: an empty offline Hub cache


def test_import_folder_writes_a_profile_the_registry_loads(cli, tmp_path, isolated_user_config):
    folder = write_folder(tmp_path / "Tiny_Llama", TINY_LLAMA)
    r = cli("import", str(folder), "--json")
    assert r.code == 0, r.err
    rec = r.json()
    target = isolated_user_config / "tiny-llama.yaml"
    assert rec["profile_path"] == str(target) and rec["action"] == "written"
    assert rec["model_type"] == "llama" and rec["params_source"] == "architecture"
    assert rec["params_checkpoint"] is None
    assert rec["source"] == str((folder / "config.json").resolve())
    profile = load_profile_file(target)
    assert rec["params_total"] == count_params(profile).total
    # by hand: embedding and untied head 2 x 256 x 64; per layer q and o 64 x 64, k and v
    # 64 x 32 each, gated MLP 3 x 64 x 128, two RMSNorms of 64; a final norm of 64
    assert rec["params_total"] == 2 * 256 * 64 + 2 * (2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 128 + 2 * 64) + 64
    # the profile is now a name like any other
    kv = cli("kv", "tiny-llama", "--ctx", "8", "--json").json()
    assert kv["kv_bytes_per_sequence"] == 8 * TINY_LLAMA_KV_BYTES_PER_TOKEN
    assert [p.name for p in isolated_user_config.iterdir()] == ["tiny-llama.yaml"]  # no temp file left


def test_reimport_is_idempotent(cli, tmp_path, isolated_user_config):
    folder = write_folder(tmp_path / "m", TINY_LLAMA)
    assert cli("import", str(folder)).code == 0
    before = (isolated_user_config / "m.yaml").read_text()
    r = cli("import", str(folder), "--json")
    assert (r.code, r.json()["action"]) == (0, "unchanged")
    assert (isolated_user_config / "m.yaml").read_text() == before


def test_a_different_profile_is_not_overwritten_without_force(cli, tmp_path, isolated_user_config):
    folder = write_folder(tmp_path / "m", TINY_LLAMA)
    cli("import", str(folder))
    write_folder(folder, {**TINY_LLAMA, "num_hidden_layers": 4})
    r = cli("import", str(folder))
    target = isolated_user_config / "m.yaml"
    assert r.code == 1
    assert r.err == (
        f"capcalc: error: {target} already exists and differs; pass --force to overwrite it "
        "or --name to choose another name\n"
    )
    assert load_profile_file(target).num_layers == 2
    r = cli("import", str(folder), "--force", "--json")
    assert r.json()["action"] == "overwritten" and load_profile_file(target).num_layers == 4


def test_out_and_name(cli, tmp_path):
    folder = write_folder(tmp_path / "m", TINY_LLAMA)
    r = cli("import", str(folder), "--name", "my-llama", "--out", str(tmp_path / "profiles"))
    assert r.code == 0, r.err
    assert f"Use it as: capcalc kv my-llama --profiles {tmp_path / 'profiles'}" in r.out
    assert load_profile_file(tmp_path / "profiles" / "my-llama.yaml").name == "my-llama"
    assert cli("kv", "my-llama", "--profiles", str(tmp_path / "profiles"), "--json").code == 0


def test_bad_name(cli, tmp_path):
    r = cli("import", str(write_folder(tmp_path / "m", TINY_LLAMA)), "--name", "My Model")
    assert (r.code, r.err) == (
        2,
        "capcalc: error: --name must be lower-case letters, digits, '-' or '.', got 'My Model'\n",
    )


def test_import_from_the_hub_cache_records_the_source(cli, offline_hub, isolated_user_config):  # noqa: F811
    make_hub_cache(offline_hub, "acme/Tiny-Llama", TINY_LLAMA)
    r = cli("import", "acme/Tiny-Llama", "--json")
    assert r.code == 0, r.err
    data = yaml.safe_load((isolated_user_config / "tiny-llama.yaml").read_text())
    assert data["source"] == f"https://huggingface.co/acme/Tiny-Llama/blob/{COMMIT}/config.json"
    assert data["aliases"] == ["acme/Tiny-Llama"]
    # the repo id now resolves to the profile, with the cache gone
    for path in sorted(offline_hub.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    rec = cli("kv", "acme/Tiny-Llama", "--json")
    assert (rec.code, rec.err, rec.json()["model"]) == (0, "", "tiny-llama")


def test_import_with_safetensors_records_the_exact_count(cli, tmp_path, isolated_user_config):
    folder = write_folder(tmp_path / "t", TINY_LLAMA, llama_tensors(TINY_LLAMA))
    rec = cli("import", str(folder), "--json").json()
    assert rec["params_source"] == "safetensors headers"
    assert rec["params_checkpoint"] == rec["params_total"]
    shown = cli("show", "t", "--json").json()
    assert shown["params_official"] == rec["params_checkpoint"] and shown["params_error_pct"] == 0
    assert shown["params_official_kind"] == "exact"


def test_import_gemma3_multimodal_real_config(cli, tmp_path, isolated_user_config):
    folder = write_folder(tmp_path / "gemma-3-4b-it", real_config("mlx-community__gemma-3-4b-it-bf16"))
    rec = cli("import", str(folder), "--json").json()
    assert rec["layout"] == "5 full + 29 sliding(1024)"
    data = yaml.safe_load((isolated_user_config / "gemma-3-4b-it.yaml").read_text())
    assert data["sliding_window"] == {"window": 1024, "pattern": ["sliding"] * 5 + ["full"]}
    assert data["extra_params"]["count"] == 419_816_304


def test_name_of_a_shipped_profile_is_noted(cli, tmp_path):
    folder = write_folder(tmp_path / "gpt2", real_config("openai-community__gpt2"))
    r = cli("import", str(folder))
    assert r.code == 0
    assert "capcalc: note: a profile named gpt2 already exists (" in r.err
    assert "will override it (use --name to keep both)" in r.err


@pytest.mark.parametrize(
    "source, expected",
    [
        (
            "llama-3-8b",
            "'llama-3-8b' is neither a folder nor a Hugging Face repo id (org/name); it is already a profile (see `capcalc show`)",
        ),
        ("./missing", "no such folder './missing'"),
    ],
)
def test_import_errors(cli, source, expected):
    r = cli("import", source)
    assert r.code == 2
    assert r.err.startswith(f"capcalc: error: {expected}")
    assert r.err.count("\n") == 1

"""A model argument that is a local folder or a Hugging Face repo id (capcalc.sources.hub),
resolved after profile names. No network: the Hub is a fake cache in tmp_path with
the layout huggingface-hub itself reads (models--org--name/refs/<ref>,
snapshots/<commit>/config.json) and HF_HUB_OFFLINE=1; error paths of the Hub client
are exercised by replacing hf_hub_download."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import huggingface_hub
import pytest
from conftest import (
    COMMIT,
    TINY_LLAMA,
    TINY_LLAMA_KV_BYTES_PER_TOKEN,
    llama_tensors,
    make_hub_cache,
    real_config,
    write_folder,
    write_safetensors,
)
from huggingface_hub import errors as hf_errors

from capcalc.core.errors import CapcalcError
from capcalc.sources import hub
from capcalc.sources.registry import Registry
from capcalc.sources.resolve import ModelResolver
from tests.conftest import ROOT

pytestmark = pytest.mark.usefixtures("offline_hub")  # every test: an empty offline Hub cache


# --------------------------------------------------------------------------- resolution


def test_hub_id_read_from_the_cache(cli, offline_hub):
    make_hub_cache(offline_hub, "acme/tiny-llama", TINY_LLAMA)
    r = cli("kv", "acme/tiny-llama", "--ctx", "100", "--json")
    assert r.code == 0, r.err
    rec = r.json()
    assert rec["model"] == "tiny-llama"
    assert rec["kv_bytes_per_token"] == TINY_LLAMA_KV_BYTES_PER_TOKEN
    assert rec["kv_bytes_per_sequence"] == 100 * TINY_LLAMA_KV_BYTES_PER_TOKEN
    snapshot = offline_hub / "models--acme--tiny-llama" / "snapshots" / COMMIT / "config.json"
    assert r.err == (
        f"capcalc: note: acme/tiny-llama: read {snapshot} (llama; parameter count computed from the architecture)\n"
    )


def test_revision_by_branch_and_by_commit(cli, offline_hub):
    make_hub_cache(offline_hub, "acme/tiny-llama", TINY_LLAMA)
    wider = {**TINY_LLAMA, "num_key_value_heads": 4}
    other = "f" * 40
    make_hub_cache(offline_hub, "acme/tiny-llama", wider, commit=other, ref="v2")
    by_branch = cli("kv", "acme/tiny-llama@v2", "--ctx", "1", "--json").json()
    by_commit = cli("kv", f"acme/tiny-llama@{other}", "--ctx", "1", "--json").json()
    default = cli("kv", "acme/tiny-llama", "--ctx", "1", "--json").json()
    assert (
        by_branch["kv_bytes_per_token"]
        == by_commit["kv_bytes_per_token"]
        == 2 * TINY_LLAMA_KV_BYTES_PER_TOKEN
    )
    assert default["kv_bytes_per_token"] == TINY_LLAMA_KV_BYTES_PER_TOKEN


def test_hf_home_locates_the_cache(cli, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    make_hub_cache(tmp_path / "hf-home" / "hub", "acme/tiny-llama", TINY_LLAMA)
    assert hub.hub_cache_dir() == tmp_path / "hf-home" / "hub"
    assert cli("kv", "acme/tiny-llama", "--json").json()["kv_heads"] == 2


def test_local_folder(cli, tmp_path):
    folder = write_folder(tmp_path / "My_Model", TINY_LLAMA)
    r = cli("kv", str(folder), "--ctx", "10", "--json")
    assert r.code == 0, r.err
    assert r.json()["model"] == "my-model"
    assert r.json()["kv_bytes_per_sequence"] == 10 * TINY_LLAMA_KV_BYTES_PER_TOKEN
    # the config.json itself names the folder too
    assert cli("kv", str(folder / "config.json"), "--json").code == 0


def test_profile_name_and_alias_come_before_folders_and_the_hub(cli, tmp_path, monkeypatch, registry):
    monkeypatch.chdir(tmp_path)
    write_folder(tmp_path / "gpt2", TINY_LLAMA)  # a folder named like a shipped profile
    shipped = registry.model("gpt2")
    rec = cli("kv", "gpt2", "--ctx", "1", "--json").json()
    assert rec["full_layers"] == shipped.num_layers == 12
    # an HF id that is a shipped alias never touches the (empty, offline) cache
    r = cli("kv", "openai-community/gpt2", "--ctx", "1", "--json")
    assert r.code == 0 and r.err == ""


def test_local_folder_comes_before_the_hub(cli, tmp_path, monkeypatch, offline_hub):
    monkeypatch.chdir(tmp_path)
    make_hub_cache(offline_hub, "acme/tiny-llama", {**TINY_LLAMA, "num_key_value_heads": 4})
    write_folder(tmp_path / "acme" / "tiny-llama", TINY_LLAMA)
    assert cli("kv", "acme/tiny-llama", "--json").json()["kv_heads"] == 2


def test_hub_snapshot_safetensors_give_the_exact_count(offline_hub):
    tensors = llama_tensors(TINY_LLAMA)
    make_hub_cache(offline_hub, "acme/tiny-llama", TINY_LLAMA, extra={"model.safetensors": tensors})
    imported = hub.load("acme/tiny-llama")
    assert imported.params_source == "safetensors headers"
    assert imported.params_checkpoint == imported.profile.params_official
    # the elements the test wrote into the header, counted independently of the reader
    written = write_safetensors(offline_hub.parent / "count-check.safetensors", tensors)
    assert imported.params_checkpoint == written
    assert imported.profile.aliases == ("acme/tiny-llama",)
    assert imported.profile.source == f"https://huggingface.co/acme/tiny-llama/blob/{COMMIT}/config.json"


def test_resolved_once_per_resolver(monkeypatch, tmp_path):
    folder = write_folder(tmp_path / "m", TINY_LLAMA)
    resolver = ModelResolver(Registry.load(include_env=False))
    first = resolver.resolve(str(folder))
    monkeypatch.setattr(hub, "load", lambda *a, **k: pytest.fail("read twice"))
    assert resolver.resolve(str(folder)) is first
    # the notes are data, not prints: where the config came from and how params were counted
    assert any("config.json" in n and "parameter count" in n for n in first.notes)


def test_commands_stay_free_of_huggingface_hub():
    """Plain profile commands do not import huggingface-hub (it is imported lazily)."""
    code = (
        "import sys; from capcalc.cli import main; main(['kv', 'llama-3-8b', '--json']); "
        "print('huggingface_hub' in sys.modules, file=sys.stderr)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stderr.strip() == "False"


@pytest.mark.parametrize(
    "name, kind",
    [
        ("Qwen/Qwen3-8B", "hub"),
        ("Qwen/Qwen3-8B@main", "hub"),
        ("org/name@refs/pr/1", "hub"),
        ("./model", "folder"),
        ("/abs/model", "folder"),
        ("~/model", "folder"),
        ("a/b/c", "folder"),
        ("config.json", "folder"),
        ("llama-3-8x", None),
        ("some model", None),
    ],
)
def test_classify(name, kind):
    assert hub.classify(name) == kind


# --------------------------------------------------------------------------- errors, one line each


def test_offline_without_a_cached_copy(cli, offline_hub):
    r = cli("kv", "Qwen/Qwen3-14B")
    assert r.code == 2
    assert r.err == (
        f"capcalc: error: Qwen/Qwen3-14B: config.json is not in the Hugging Face cache ({offline_hub}) and "
        "HF_HUB_OFFLINE is set; fetch it once online with `hf download Qwen/Qwen3-14B config.json`, "
        "or pass a local folder holding config.json\n"
    )


def test_path_that_does_not_exist(cli):
    r = cli("kv", "./no-such-model")
    assert r.code == 2
    assert r.err == (
        "capcalc: error: no such folder './no-such-model' (give a folder holding config.json, a Hugging Face "
        "repo id like Qwen/Qwen3-8B, or a profile name from `capcalc models`)\n"
    )


def test_folder_without_config(cli, tmp_path):
    (tmp_path / "empty").mkdir()
    r = cli("kv", str(tmp_path / "empty"))
    assert r.code == 2
    assert (
        r.err
        == f"capcalc: error: {tmp_path / 'empty'}: no config.json here (a model folder holds a transformers config.json)\n"
    )


def test_unknown_name_keeps_closest_profiles(cli):
    r = cli("kv", "llama-3-8x")
    assert r.code == 2
    assert r.err.startswith("capcalc: error: unknown model 'llama-3-8x'; closest: llama-3-8b")


def _raiser(exc):
    def fake(*args, **kwargs):
        raise exc

    return fake


def _hf_error(cls, message="boom"):
    exc = cls.__new__(cls)
    Exception.__init__(exc, message)
    return exc


@pytest.mark.parametrize(
    "cls, token, expected",
    [
        (
            hf_errors.GatedRepoError,
            None,
            "acme/gated is a gated repository: accept the licence on https://huggingface.co/acme/gated "
            "and set HF_TOKEN (or run `hf auth login`)",
        ),
        (
            hf_errors.GatedRepoError,
            "hf_x",
            "acme/gated is a gated repository: your HF_TOKEN has no access: accept the licence on its Hub page",
        ),
        (
            hf_errors.RepositoryNotFoundError,
            None,
            "no Hugging Face repository 'acme/gated' (or it is private: set HF_TOKEN); "
            "see `capcalc models` for the profiles capcalc ships",
        ),
        (
            hf_errors.RemoteEntryNotFoundError,
            None,
            "acme/gated has no config.json: not a transformers model repository",
        ),
        (
            hf_errors.HfHubHTTPError,
            None,
            "cannot fetch config.json of acme/gated from the Hugging Face Hub: 500 Server Error",
        ),
    ],
)
def test_hub_errors_are_one_line(cli, monkeypatch, cls, token, expected):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    if token:
        monkeypatch.setenv("HF_TOKEN", token)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _raiser(_hf_error(cls, "500 Server Error\nmore")))
    r = cli("kv", "acme/gated")
    assert (r.code, r.err) == (2, f"capcalc: error: {expected}\n")


def test_unreachable_hub_without_cache(cli, monkeypatch, offline_hub):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(
        huggingface_hub, "hf_hub_download", _raiser(_hf_error(hf_errors.LocalEntryNotFoundError))
    )
    r = cli("kv", "acme/tiny@v1")
    assert (
        "the Hub cannot be reached; fetch it once online with `hf download acme/tiny config.json --revision v1`"
        in r.err
    )


def test_token_and_cache_reach_the_download(monkeypatch, offline_hub):
    seen = {}

    def fake(repo_id, filename, **kwargs):
        seen.update(kwargs, repo_id=repo_id, filename=filename)
        raise _hf_error(hf_errors.RevisionNotFoundError)

    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake)
    with pytest.raises(CapcalcError, match=r"^acme/x has no revision 'nope' \(a branch, tag or commit\)$"):
        hub.fetch_config("acme/x", "nope")
    assert seen == dict(
        repo_id="acme/x",
        filename="config.json",
        revision="nope",
        cache_dir=str(offline_hub),
        local_files_only=True,
        token="hf_secret",
    )


def test_unsupported_architecture_names_it_and_lists_supported(cli, tmp_path):
    folder = write_folder(tmp_path / "m", {"model_type": "mamba", "architectures": ["MambaForCausalLM"]})
    r = cli("kv", str(folder))
    assert r.code == 2
    assert r.err.startswith(f"capcalc: error: {folder / 'config.json'}: unsupported architecture 'mamba'; ")
    assert "supported model_type: llama, mistral, mixtral, qwen2, qwen2_moe, qwen3" in r.err
    assert r.err.count("\n") == 1


def test_remote_code_architecture_is_refused_not_run(cli, tmp_path):
    config = {"model_type": "my_arch", "auto_map": {"AutoModelForCausalLM": "modeling_my.MyModel"}}
    folder = write_folder(tmp_path / "m", config)
    (folder / "modeling_my.py").write_text("raise SystemExit('repo code ran')\n")
    r = cli("kv", str(folder))
    assert r.code == 2
    assert "auto_map / trust_remote_code, which capcalc never runs" in r.err


def test_missing_field(cli, tmp_path):
    config = {k: v for k, v in TINY_LLAMA.items() if k != "hidden_size"}
    folder = write_folder(tmp_path / "m", config)
    r = cli("kv", str(folder))
    assert (
        r.err
        == f"capcalc: error: {folder / 'config.json'}: missing 'hidden_size' (a llama config needs it)\n"
    )


def test_broken_json(cli, tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text("{not json")
    r = cli("kv", str(folder))
    assert r.code == 2
    assert r.err.startswith(f"capcalc: error: {folder / 'config.json'}: not valid JSON (line 1")


def test_show_takes_a_folder_like_every_model_command(cli, tmp_path, registry):
    folder = write_folder(tmp_path / "llama", real_config("pandyamarut__Meta-Llama-3-8B"))
    shown = cli("show", folder, "--json")
    assert shown.code == 0, shown.err
    record = shown.json()
    shipped = registry.model("llama-3-8b")
    assert record["kv_bytes_per_token"] == 131_072
    assert record["num_layers"] == shipped.num_layers


# --------------------------------------------------------------------------- no network, not offline


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again when the block ends: connections are refused


def _run_without_network(tmp_path, *args: str):
    import subprocess
    import sys
    import time

    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("HF_", "HTTP", "http", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"))
    }
    env.update(
        PYTHONPATH=str(ROOT),
        HF_ENDPOINT=f"http://127.0.0.1:{_closed_port()}",
        HF_HUB_CACHE=str(tmp_path / "hf-cache"),
        HF_HOME=str(tmp_path / "hf-home"),
        XDG_CONFIG_HOME=str(tmp_path / "xdg"),
    )
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "capcalc", *args], env=env, capture_output=True, text=True, cwd=tmp_path
    )
    return done, time.perf_counter() - start


def test_uncached_hub_id_without_network_fails_fast(tmp_path):
    done, elapsed = _run_without_network(tmp_path, "kv", "acme/not-cached", "--json")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "acme/not-cached: config.json is not in the Hugging Face cache" in lines[0]
    assert "the Hub cannot be reached" in lines[0]
    assert elapsed < 2.0  # huggingface-hub's own retries took about 24 s


def test_cached_hub_id_without_network_is_read_from_the_cache(tmp_path):
    make_hub_cache(tmp_path / "hf-cache", "acme/tiny-llama", TINY_LLAMA)
    done, elapsed = _run_without_network(tmp_path, "kv", "acme/tiny-llama", "--ctx", "8", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["kv_bytes_per_token"] > 0
    assert elapsed < 2.0


def test_reachability_probe(monkeypatch):
    import socket

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert hub.hub_reachable()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    assert not hub.hub_reachable()

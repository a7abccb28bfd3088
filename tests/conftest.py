"""Shared test helpers: the CLI run in-process (stdout and stderr apart), the shipped
registry, the tiny test profiles, torch when present, and the Hugging Face fixtures
(real config.json files, hand-built safetensors files, a fake offline Hub cache)."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import pytest

from capcalc.cli import main
from capcalc.core.errors import CapcalcError
from capcalc.sources.loader import load_profile_file
from capcalc.sources.registry import Registry

ROOT = Path(__file__).resolve().parent.parent
TEST_PROFILES = Path(__file__).resolve().parent / "profiles"

#: the shipped profiles only (no $CAPCALC_PROFILES, no user directory), loaded once
SHIPPED = Registry.load(include_env=False)
#: tests/profiles: a 2-layer dense model and a 3-layer MoE one with sliding windows
TINY = load_profile_file(TEST_PROFILES / "tiny-test.yaml")
TINY_MOE = load_profile_file(TEST_PROFILES / "tiny-moe-test.yaml")


def torch_available() -> bool:
    from capcalc.measure import require_torch

    try:
        require_torch()
        return True
    except CapcalcError:
        return False


def torch_or_skip():
    """torch for a module that needs it (``torch = torch_or_skip()`` at the top); skips the
    module where it is not installed. Quiet about a missing numpy, unlike a bare import."""
    from capcalc.measure import require_torch

    try:
        return require_torch()
    except CapcalcError:
        pytest.skip("torch is not installed", allow_module_level=True)


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self):
        return json.loads(self.out)


@pytest.fixture(autouse=True)
def isolated_user_config(tmp_path, tmp_path_factory, monkeypatch):
    """No test reads or writes the real ~/.config/capcalc, $CAPCALC_PROFILES or the
    real parsed-profile cache (one cache for the whole session, as for a user)."""
    monkeypatch.delenv("CAPCALC_PROFILES", raising=False)
    monkeypatch.delenv("CAPCALC_NO_CACHE", raising=False)
    monkeypatch.setenv("CAPCALC_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "capcalc-cache"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    return tmp_path / "xdg-config" / "capcalc"


@pytest.fixture
def cli(capsys):
    """cli("kv", "llama-3-8b", "--json") -> Result(code, out, err)."""

    def run(*args: str) -> Result:
        capsys.readouterr()
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


@pytest.fixture(scope="session")
def registry() -> Registry:
    return SHIPPED


# --------------------------------------------------------------------------- Hugging Face fixtures

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "hf_configs"  # real config.json files
COMMIT = "0123456789abcdef0123456789abcdef01234567"

#: a small Llama: 2 layers, 4 query heads, 2 KV heads of dim 16
TINY_LLAMA = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 256,
    "max_position_embeddings": 512,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}
#: KV bytes per token of TINY_LLAMA in bf16: 2 (K and V) x 2 layers x 2 KV heads x 16 dims x 2 bytes
TINY_LLAMA_KV_BYTES_PER_TOKEN = 2 * 2 * 2 * 16 * 2


def real_config(stem: str) -> dict:
    """A real config.json saved under tests/fixtures/hf_configs, without its _capcalc_source note."""
    data = json.loads((FIXTURES / f"{stem}.json").read_text())
    data.pop("_capcalc_source", None)
    return data


_ST_BYTES = {"BF16": 2, "F16": 2, "F32": 4, "F8_E4M3": 1, "I32": 4, "U8": 1}


def write_safetensors(path: Path, tensors: dict[str, tuple[str, tuple[int, ...]]]) -> int:
    """A valid safetensors file built by hand: 8-byte little-endian header length, the JSON
    header, then zero-filled data (a sparse file: truncate, nothing written). Returns the
    number of elements."""
    header, offset = {}, 0
    for name, (dtype, shape) in tensors.items():
        size = _ST_BYTES[dtype]
        for d in shape:
            size *= d
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        handle.write(struct.pack("<Q", len(raw)) + raw)
        handle.truncate(8 + len(raw) + offset)
    count = 0
    for _, shape in tensors.values():
        n = 1
        for d in shape:
            n *= d
        count += n
    return count


def llama_tensors(cfg: dict) -> dict[str, tuple[str, tuple[int, ...]]]:
    """The tensor names and shapes transformers' LlamaForCausalLM saves for ``cfg``."""
    h, f, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    d = h // heads
    t = {"model.embed_tokens.weight": ("BF16", (v, h)), "model.norm.weight": ("BF16", (h,))}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        t[p + "self_attn.q_proj.weight"] = ("BF16", (heads * d, h))
        t[p + "self_attn.k_proj.weight"] = ("BF16", (kv * d, h))
        t[p + "self_attn.v_proj.weight"] = ("BF16", (kv * d, h))
        t[p + "self_attn.o_proj.weight"] = ("BF16", (h, heads * d))
        t[p + "mlp.gate_proj.weight"] = ("BF16", (f, h))
        t[p + "mlp.up_proj.weight"] = ("BF16", (f, h))
        t[p + "mlp.down_proj.weight"] = ("BF16", (h, f))
        t[p + "input_layernorm.weight"] = ("BF16", (h,))
        t[p + "post_attention_layernorm.weight"] = ("BF16", (h,))
    if not cfg.get("tie_word_embeddings"):
        t["lm_head.weight"] = ("BF16", (v, h))
    return t


def write_folder(path: Path, config: dict, tensors: dict | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config))
    if tensors:
        write_safetensors(path / "model.safetensors", tensors)
    return path


def make_hub_cache(
    cache: Path, repo_id: str, config: dict, commit: str = COMMIT, ref: str = "main", extra=None
):
    """One snapshot of ``repo_id`` in huggingface-hub's cache layout; returns the snapshot folder."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = write_folder(repo / "snapshots" / commit, config)
    for name, tensors in (extra or {}).items():
        write_safetensors(snapshot / name, tensors)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / ref).write_text(commit)
    return snapshot


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty Hub cache in tmp_path, offline, no token (the hub tests use it for every test)."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_HOME", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return cache

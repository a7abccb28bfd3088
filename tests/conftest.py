"""Shared test helpers: run the CLI in-process and capture stdout/stderr separately."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from capcalc.cli import main
from capcalc.sources.registry import Registry

ROOT = Path(__file__).resolve().parent.parent
TEST_PROFILES = Path(__file__).resolve().parent / "profiles"


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
    return Registry.load(include_env=False)

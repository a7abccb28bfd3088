"""Start-up: commands load when used, option values convert as typer's Pydantic path
would, and the parsed-profile cache never serves a changed file."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import time

import pytest
import typer
from hypothesis import given
from hypothesis import strategies as st

from capcalc.cli.common import app
from capcalc.cli.startup import COMMAND_MODULES, _to_bool, _to_float, _to_int
from capcalc.sources import yamlcache
from capcalc.sources.registry import Registry
from tests.conftest import ROOT


def test_command_map_matches_the_registrations():
    for module in set(COMMAND_MODULES.values()):
        importlib.import_module(f"capcalc.cli.{module}")
    registered = {
        info.name or typer.main.get_command_name(info.callback.__name__) for info in app.registered_commands
    }
    assert registered == set(COMMAND_MODULES)


def _modules_after(args: list[str], env: dict) -> set[str]:
    script = (
        "import sys, io; from capcalc.cli import main; out = sys.stdout; sys.stdout = io.StringIO(); "
        f"code = main({args!r}); sys.stdout = out; "
        "print(code); print(' '.join(sorted(sys.modules)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True, check=True
    )
    code, modules = done.stdout.splitlines()
    assert code == "0", done.stderr
    return set(modules.split())


def test_kv_loads_only_what_it_uses(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CAPCALC_CACHE_DIR": str(tmp_path)}
    args = ["kv", "llama-3-70b", "--ctx", "8192"]
    first = _modules_after(args, env)
    assert "capcalc.cli.kv" in first
    assert not {f"capcalc.cli.{m}" for m in COMMAND_MODULES.values() if m != "kv"} & first
    assert "pydantic" not in first  # option values converted by capcalc.cli.startup
    # the second run finds every shipped profile parsed already (they are older than RACY_S)
    second = _modules_after(args, env)
    assert "yaml" not in second


def test_help_lists_every_command(cli):
    result = cli("-h")
    assert result.code == 0
    for name in COMMAND_MODULES:
        assert f"  {name} " in result.out


# --- option values: the same rules and messages as typer's Pydantic adapters ---------

NUMBERISH = st.text(alphabet="0123456789+-._eE infaINF\t", max_size=8)


def _pydantic(annotation, text):
    from pydantic import TypeAdapter, ValidationError

    try:
        return TypeAdapter(annotation).validate_python(text)
    except ValidationError as exc:
        return ("error", exc.errors()[0]["msg"])


def _light(convert, text):
    try:
        return convert(text)
    except ValueError as exc:
        return ("error", str(exc))


def _underscore_next_to_a_non_digit(text: str) -> bool:
    padded = f" {text.strip()} "
    return any(
        c == "_" and not (a.isdigit() and b.isdigit())
        for a, c, b in zip(padded, padded[1:], padded[2:], strict=False)
    )


@given(NUMBERISH)
def test_int_conversion_agrees_with_pydantic(text):
    assert _light(_to_int, text) == _pydantic(int, text)


@given(NUMBERISH)
def test_float_conversion_agrees_with_pydantic(text):
    ours, theirs = _light(_to_float, text), _pydantic(float, text)
    if _underscore_next_to_a_non_digit(text):  # Pydantic takes "1_.5"; we refuse it
        assert ours == theirs or ours[0] == "error"
    elif isinstance(theirs, float) and theirs != theirs:
        assert ours != ours  # nan
    else:
        assert ours == theirs


@pytest.mark.parametrize("text", ["true", "False", "yes", "off", "1", "0", "t", "maybe", "2", " on "])
def test_bool_conversion_agrees_with_typer(text):
    # typer strips the text and reads "" as False before Pydantic sees it
    stripped = text.strip()
    assert _light(_to_bool, text) == (_pydantic(bool, stripped) if stripped else False)


def test_bad_int_is_one_line_with_the_flag(cli):
    result = cli("kv", "llama-3-8b", "--ctx", "8k")
    assert result.code == 2
    # the input layer (capcalc/core/inputs.py) sees the value before any conversion
    assert result.err.strip().splitlines() == [
        "capcalc: error: --ctx: expected a whole number in ASCII digits, got '8k'"
    ]


def test_whole_numbers_keep_their_underscores_but_not_a_fraction(cli):
    assert cli("kv", "llama-3-8b", "--ctx", "1_024", "--json").json()["ctx"] == 1024
    result = cli("kv", "llama-3-8b", "--ctx", "1024.0")
    assert result.code == 2 and result.err.count("\n") == 1 and "--ctx" in result.err


# --- the parsed-profile cache ---------------------------------------------------------


def _old(path, seconds=60):
    """Date ``path`` back (older than yamlcache.RACY_S, so that it may be cached)."""
    past = time.time() - seconds
    os.utime(path, (past, past))


TINY = ROOT / "tests" / "profiles" / "tiny-test.yaml"


def test_cache_serves_an_unchanged_file_and_reparses_a_changed_one(tmp_path, monkeypatch):
    from capcalc.sources import loader

    monkeypatch.setenv("CAPCALC_CACHE_DIR", str(tmp_path / "cache"))
    user_dir = tmp_path / "profiles"
    user_dir.mkdir()
    path = user_dir / "tiny-test.yaml"
    text = TINY.read_text()
    assert "num_layers: 2\n" in text
    path.write_text(text)
    _old(path)
    assert Registry.load([user_dir], include_env=False).model("tiny-test").num_layers == 2
    assert (tmp_path / "cache").is_dir()
    parsed = []
    real = loader.parse_yaml
    monkeypatch.setattr(loader, "parse_yaml", lambda t, p: parsed.append(p) or real(t, p))
    assert Registry.load([user_dir], include_env=False).model("tiny-test").num_layers == 2
    assert parsed == []  # every file, shipped and user, came from the cache
    path.write_text(text.replace("num_layers: 2\n", "num_layers: 3\n"))  # same inode and size
    _old(path, 30)
    assert Registry.load([user_dir], include_env=False).model("tiny-test").num_layers == 3
    assert parsed == [path]


def test_a_just_written_file_is_not_cached(tmp_path):
    cache = yamlcache.YamlCache(tmp_path / "c.pickle")
    path = tmp_path / "a.yaml"
    path.write_text("x: 1\n")
    assert cache.parse(path, lambda p: p.read_text(), lambda t: {"x": 1}) == {"x": 1}
    cache.save()
    assert not (tmp_path / "c.pickle").exists()  # modified within RACY_S: nothing stored


def test_a_cached_copy_is_fresh_and_a_broken_cache_is_ignored(tmp_path):
    path = tmp_path / "a.yaml"
    path.write_text("x: [1]\n")
    _old(path)
    cache = yamlcache.YamlCache(tmp_path / "c.pickle")
    cache.parse(path, lambda p: p.read_text(), lambda t: {"x": [1]})
    cache.save()
    reread = yamlcache.YamlCache(tmp_path / "c.pickle")
    first = reread.parse(path, lambda p: 1 / 0, lambda t: 1 / 0)
    first["x"].append(2)
    assert reread.parse(path, lambda p: 1 / 0, lambda t: 1 / 0) == {"x": [1]}
    (tmp_path / "c.pickle").write_bytes(b"not a pickle")
    assert (
        yamlcache.YamlCache(tmp_path / "c.pickle").parse(path, lambda p: "", lambda t: "parsed") == "parsed"
    )


def test_no_cache_switch(monkeypatch):
    monkeypatch.setenv("CAPCALC_NO_CACHE", "1")
    assert yamlcache.cache_path() is None

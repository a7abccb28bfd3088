"""The process entry point: bad input and a bare interpreter both get one line, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import ROOT

# Runs `python -m capcalc ...` with `typer` made unimportable, as on a Python that lacks
# capcalc's dependencies.
WITHOUT_TYPER = """
import runpy, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "typer" or name.startswith("typer."):
            raise ModuleNotFoundError("No module named 'typer'", name="typer")
        return None
sys.meta_path.insert(0, Block())
sys.argv = ["capcalc", *sys.argv[1:]]
runpy.run_module("capcalc", run_name="__main__")
"""


def run(*args: str, code: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CAPCALC_PROFILES"}
    env["PYTHONPATH"] = str(ROOT)
    command = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "capcalc", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)


def test_unknown_model_from_the_command_line_is_one_line():
    r = run("kv", "no-such-model-xyz")
    assert r.returncode == 2
    assert r.stdout == ""
    assert "Traceback" not in r.stderr
    assert r.stderr.startswith("capcalc: error: unknown model 'no-such-model-xyz'; closest: ")
    assert len(r.stderr.strip().splitlines()) == 1


def test_missing_dependency_is_one_line_with_the_fix():
    r = run("kv", "no-such-model-xyz", code=WITHOUT_TYPER)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("capcalc: error: the Python at ")
    assert "lacks typer" in lines[0] and "pip install ." in lines[0]

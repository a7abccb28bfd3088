"""The wheel ships the profiles: install it into a fresh virtualenv outside the
checkout and run capcalc from there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest
from conftest import ROOT


@pytest.mark.slow
def test_wheel_installs_and_runs_outside_the_checkout(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(ROOT),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(dist),
        ],
        check=True,
        cwd=tmp_path,
    )
    wheel = next(dist.glob("capcalc-*.whl"))
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    bin_dir = env_dir / ("Scripts" if os.name == "nt" else "bin")
    # The dependencies (typer, rich, pyyaml, huggingface-hub) come from the test's own
    # environment through a .pth file, since tests have no network; a plain path in a .pth
    # file does not process that environment's own .pth files, so an editable install of
    # capcalc there stays invisible and capcalc can only come from the wheel.
    new_site = subprocess.run(
        [bin_dir / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    Path(new_site, "test-deps.pth").write_text("\n".join(sorted(ours)) + "\n")
    subprocess.run([bin_dir / "python", "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CAPCALC_PROFILES")}
    out = subprocess.run(
        [bin_dir / "capcalc", "kv", "llama-3-70b", "--ctx", "8192", "--json"],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    record = json.loads(out.stdout)
    assert record["kv_bytes_per_sequence"] == 2_684_354_560
    where = subprocess.run(
        [bin_dir / "python", "-c", "import capcalc; print(capcalc.__file__)"],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    ).stdout
    assert str(ROOT) not in where and Path(where.strip()).is_relative_to(env_dir)

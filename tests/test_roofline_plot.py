"""`roofline --plot`: the chart is written (PNG of the expected pixel size, SVG), the JSON
still prints, and without matplotlib --plot fails with an install hint while the rest works."""

from __future__ import annotations

import struct
import sys

import pytest

from capcalc.report.plot import DPI, FIGSIZE

HINT = "capcalc: error: --plot needs matplotlib: pip install 'capcalc[plot]' (or pip install matplotlib)"


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_png_chart_has_the_expected_pixels_and_json_still_prints(cli, tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "charts" / "roofline.png"
    r = cli("roofline", "llama-3-8b", "--gpu", "a100-80gb-sxm", "--batch", "8", "--plot", path, "--json")
    assert r.code == 0, r.err
    assert r.json()["decode_bound"] == "memory"
    assert path.stat().st_size > 10_000
    assert png_size(path) == (int(FIGSIZE[0] * DPI), int(FIGSIZE[1] * DPI)) == (1000, 600)
    assert [p.name for p in path.parent.iterdir()] == ["roofline.png"]  # no temporary file left


def test_svg_chart(cli, tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "roofline.svg"
    r = cli("roofline", "mixtral-8x7b", "--gpu", "h100-sxm", "--ctx", "8192", "--plot", path)
    assert r.code == 0, r.err
    text = path.read_text()
    assert text.lstrip().startswith("<?xml") and "<svg" in text
    assert f'width="{FIGSIZE[0] * 72:g}pt" height="{FIGSIZE[1] * 72:g}pt"' in text  # 720 x 432 pt


def test_without_matplotlib_plot_fails_with_a_hint_and_the_rest_works(cli, tmp_path, monkeypatch):
    # a None entry in sys.modules makes `import matplotlib` raise ImportError,
    # whether or not matplotlib is installed
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    path = tmp_path / "roofline.png"
    r = cli("roofline", "llama-3-8b", "--gpu", "h100-sxm", "--plot", path, "--json")
    assert r.code == 2
    assert r.out == ""
    assert r.err.strip() == HINT
    assert not path.exists()
    r = cli("roofline", "llama-3-8b", "--gpu", "h100-sxm", "--json")
    assert r.code == 0 and r.json()["prefill_bound"] == "compute"
    r = cli("latency", "llama-3-8b", "--gpu", "h100-sxm", "--prompt", "100", "--output", "10", "--json")
    assert r.code == 0 and r.json()["ttft_s"] > 0

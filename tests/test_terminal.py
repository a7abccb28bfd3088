"""Tables in a person's 100-column terminal: nothing cut, names whole, COLUMNS honoured."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from capcalc.report.output import WHOLE_CELL, console_width

ROOT = Path(__file__).resolve().parent.parent

COMMANDS = [
    ["kv", "llama-3-70b", "--ctx", "8192"],
    ["fit", "llama-3-70b", "--gpu", "h100-sxm", "--tp", "4"],
    ["roofline", "llama-3-8b", "--gpu", "h100-sxm"],
    ["latency", "llama-3-8b", "--gpu", "h100-sxm", "--prompt", "512", "--output", "128"],
    ["plan", "llama-3-70b", "--rps", "10", "--prompt", "1000", "--output", "200"],
    ["models"],
    ["gpus"],
    ["show", "llama-3-8b"],
    ["littles", "--throughput", "10", "--latency", "2"],
    ["sweep", "latency", "llama-3-8b", "--gpu", "h100-sxm,a100-80gb-sxm", "--batch", "1,8"],
    ["roofline", "llama-3-70b", "--gpu", "h100-sxm", "--batch", "64", "--ctx", "8192"],
    ["plan", "llama-3-70b", "--rps", "5", "--prompt", "1000", "--output", "200", "--itl-slo", "50ms"],
    ["sweep", "fit", "llama-3-8b,qwen3-8b", "--gpu", "h100-sxm,l4"],
    ["sweep", "roofline", "llama-3-8b,llama-3-70b", "--gpu", "h100-sxm", "--batch", "1,64"],
    ["show", "deepseek-v3"],
    ["show", "h100-sxm"],
]


def table_figures(text: str) -> list[tuple[str, str]]:
    """(column header, cell) of every cell of the tables in ``text`` that is a figure (starts
    with a digit, a sign or $, and is short enough to stay whole: longer text may wrap
    between words), as drawn wide enough for no cell to wrap."""
    figures, headers = [], None
    for line in text.splitlines():
        if line.startswith("┃"):
            headers = [h.strip() for h in line.strip("┃").split("┃")]
        elif line.startswith("│") and headers:
            cells = [c.strip() for c in line.strip("│").split("│")]
            figures += [
                (h, c)
                for h, c in zip(headers, cells, strict=True)
                if (c[:1].isdigit() or c[:1] in "+-$") and len(c) <= WHOLE_CELL
            ]
        elif line.startswith("└"):
            headers = None
    return figures


def left_out_text(text: str) -> str:
    """The notes under the tables of what they left out, each on one line."""
    return " ".join(
        re.findall(r"left out to fit \d+ columns: .*?\(all in --json/--csv\)", text, re.S)
    ).replace("\n", " ")


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: " ".join(a[:2]))
def test_every_table_reads_at_100_columns(cli, monkeypatch, args):
    monkeypatch.setenv("COLUMNS", "100")
    result = cli(*args)
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines
    assert max(len(line) for line in lines) <= 100
    assert "…" not in result.out
    # every figure of the wide table is on one line of the narrow one (a number and its
    # unit together; a second unit in brackets may go to the next line), unless its
    # column is named as left out
    left_out = left_out_text(result.out)
    monkeypatch.setenv("COLUMNS", "1000")
    wide = cli(*args).out
    for header, cell in table_figures(wide):
        if f" {header}," in left_out or f" {header} (" in left_out:
            continue
        for piece in cell.replace(" (", "\0(").split("\0"):
            assert any(piece in line for line in lines), f"{header}: {piece!r} broken or missing"


def test_roofline_keeps_its_bound_and_utilisation_at_100_columns(cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    out = cli("roofline", "llama-3-70b", "--gpu", "h100-sxm", "--batch", "64", "--ctx", "8192").out
    header = next(line for line in out.splitlines() if line.startswith("┃") and "phase" in line)
    assert "bound" in header and "utilisation" in header
    assert "left out to fit 100 columns: bytes (all in --json/--csv)" in out


def test_plan_keeps_kv_per_gpu_whole_at_100_columns(cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    args = ("plan", "llama-3-70b", "--rps", "5", "--prompt", "1000", "--output", "200", "--itl-slo", "50ms")
    out = cli(*args).out
    best = next(r for r in cli(*args, "--json").json() if r["feasible"])
    assert f"{best['kv_bytes_used_per_gpu'] / 2**30:.2f} GiB" in out  # on one line
    assert "KV/GPU" in out


def test_model_names_stay_whole_at_100_columns(cli, monkeypatch, registry):
    monkeypatch.setenv("COLUMNS", "100")
    out = cli("models").out
    first_cells = {line.split("│")[1].strip() for line in out.splitlines() if line.startswith("│")}
    assert set(registry.models) <= first_cells  # each name whole in its own cell


def test_plan_keeps_tp_and_whole_figures(cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    out = cli("plan", "llama-3-70b", "--rps", "10", "--prompt", "1000", "--output", "200").out
    data = cli("plan", "llama-3-70b", "--rps", "10", "--prompt", "1000", "--output", "200", "--json").json()
    best = next(r for r in data if r["feasible"])
    row = next(line for line in out.splitlines() if line.startswith("│") and best["gpu"] in line)
    cells = [c.strip() for c in row.strip("│").split("│")]
    assert cells[1] == str(best["tp"])  # the tp column is not blank


def test_columns_is_honoured_when_piped(monkeypatch):
    class Pipe:
        def isatty(self):
            return False

    monkeypatch.setenv("COLUMNS", "77")
    assert console_width(Pipe()) == 77
    monkeypatch.delenv("COLUMNS")
    assert console_width(Pipe()) == 160


def test_version_and_short_help(cli):
    from capcalc import __version__

    version = cli("--version")
    assert version.code == 0 and version.out.strip() == f"capcalc {__version__}"
    assert cli("kv", "-h").out.startswith("Usage: capcalc kv")


def test_completion_options_are_offered(cli):
    out = cli("--help").out
    assert "--install-completion" in out and "--show-completion" in out


def _measure_records() -> tuple[SimpleNamespace, list[dict], list[dict]]:
    """What `measure` hands its renderers: an H100's device benchmarks and a model's points
    (figures of the size an H100 gives; only their width matters here)."""
    from capcalc.measure.calibrate import FITTED

    result = SimpleNamespace(device_name="NVIDIA H100 80GB HBM3", device="cuda:0", gpu="h100-sxm",
                             torch_version="2.5.1")  # fmt: skip
    device = [
        {"benchmark": "copy", "dtype": "bf16", "shape": "4.29 GB", "time_s": 2.851e-3,
         "measured_bandwidth_bytes_per_s": 3.013e12, "measured_flops_per_s": None,
         "datasheet_bandwidth_bytes_per_s": 3.35e12, "datasheet_flops_per_s": None,
         "measured_over_datasheet": 0.8994, "measured_over_copy": None},
        {"benchmark": "matmul", "dtype": "bf16", "shape": "8192x8192x8192", "time_s": 1.4301e-3,
         "measured_bandwidth_bytes_per_s": None, "measured_flops_per_s": 7.688e14,
         "datasheet_bandwidth_bytes_per_s": None, "datasheet_flops_per_s": 9.89e14,
         "measured_over_datasheet": 0.7774, "measured_over_copy": None},
        {"benchmark": "matvec", "dtype": "bf16", "shape": "llama-3-8b mlp 4096x14336", "time_s": 4.3e-5,
         "measured_bandwidth_bytes_per_s": 2.731e12, "measured_flops_per_s": 2.731e12,
         "datasheet_bandwidth_bytes_per_s": 3.35e12, "datasheet_flops_per_s": 9.89e14,
         "measured_over_datasheet": 0.8152, "measured_over_copy": 0.9064},
    ]  # fmt: skip
    point = {"model": "llama-3-8b", "batch": 64, "ctx": 4096, "prompt_tokens": None,
             "measured_time_s": 1.2345e-2, "predicted_time_s": 1.1876e-2, "error_pct": -3.799,
             "calibrated_time_s": 1.2301e-2, "calibrated_error_pct": -0.3564,
             "achieved_bandwidth_bytes_per_s": 2.4512e12, "achieved_flops_per_s": 8.123e13,
             "memory_predicted_bytes": 3.3415e10, "memory_measured_bytes": 3.3842e10}  # fmt: skip
    prefill = {"record": "prefill", "batch": 1, "ctx": None, "prompt_tokens": 4096, "measured_time_s": 0.2911,
               "predicted_time_s": 0.2876, "error_pct": -1.202, "calibrated_time_s": 0.2905,
               "calibrated_error_pct": -0.2061, "achieved_bandwidth_bytes_per_s": 5.512e10,
               "achieved_flops_per_s": 6.021e14, "memory_predicted_bytes": 1.8234e10,
               "memory_measured_bytes": 1.8561e10}  # fmt: skip
    points = [{**point, "record": "decode"}, {**point, **prefill}]
    summary = {"model": "llama-3-8b", "record": "calibration", "decode_points": 12, "prefill_points": 4,
               "decode_median_abs_error_pct": 14.62, "decode_median_abs_error_calibrated_pct": 2.211,
               "prefill_median_abs_error_pct": 9.877, "prefill_median_abs_error_calibrated_pct": 4.591,
               "decode_median_abs_error_calibrated_alone_pct": 1.902,
               "prefill_median_abs_error_calibrated_alone_pct": 3.114, "calibration_file": None}  # fmt: skip
    for name in FITTED:
        summary[f"default_{name}"] = summary[f"fitted_{name}"] = 1.234e-5 if name.endswith("_s") else 0.7123
    return result, device, [*points, summary]


@pytest.mark.parametrize("which", ["device", "model"])
def test_measure_tables_read_at_100_columns(which):
    from capcalc.cli.measure import _device_spec, _render_model
    from capcalc.report.output import _fitting_console, rows_table

    result, device, model = _measure_records()

    def draw(width: int) -> str:
        console = _fitting_console()(file=io.StringIO(), width=width, color_system=None)
        if which == "device":
            console.print(rows_table(device, _device_spec(result)))
        else:
            _render_model(result)(model, console)
        return console.file.getvalue()

    narrow, wide = draw(100), draw(1000)
    lines = narrow.splitlines()
    if which == "device":  # the ratios stay; the datasheet's own figures go first
        assert "measured/datasheet" in narrow and "matvec/copy" in narrow
    assert max(len(line) for line in lines) <= 100 and "…" not in narrow
    left_out = left_out_text(narrow)
    for header, cell in table_figures(wide):
        if f" {header}," in left_out or f" {header} (" in left_out:
            continue
        for piece in cell.replace(" (", "\0(").split("\0"):
            assert any(piece in line for line in lines), f"{header}: {piece!r} broken or missing"


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("tty", [False, True], ids=["piped", "terminal"])
@pytest.mark.parametrize("columns", ["100", "60", "160"])
def test_a_field_table_without_rich_is_what_rich_draws(registry, monkeypatch, tty, columns):
    """`kv` and every other one-record table are drawn without importing rich when they need
    no wrapping; the text (and a terminal's bold and italic) is rich's, to the character."""
    from capcalc import Session
    from capcalc.report.output import _fitting_console, field_table, plain_field_table

    monkeypatch.setenv("COLUMNS", columns)
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    s = Session()
    records = [s.kv(name, ctx=4096, memory_bytes=8e9).record() for name in sorted(registry.models)]
    notes = ["KV heads replicated: 1 KV heads < tp=2, so each GPU holds 1 head", "12 sequences fit"]
    drawn = 0
    for rec in records:
        plain_out, rich_out = (_Tty(), _Tty()) if tty else (io.StringIO(), io.StringIO())
        plain = plain_field_table(rec, f"KV cache: {rec['model']}", {"schema_version"}, notes, plain_out)
        console = _fitting_console()(file=rich_out, soft_wrap=False, highlight=False, width=int(columns))
        console.print(field_table(rec, f"KV cache: {rec['model']}", {"schema_version"}))
        for note in notes:
            console.print(note)
        if plain is not None:
            drawn += 1
            assert plain == rich_out.getvalue(), rec["model"]
    assert drawn == (len(records) if columns != "60" else 0)  # at 60 columns the values would wrap


def test_kv_does_not_import_rich():
    code = (
        "import sys; from capcalc.entry import main; main(['kv', 'llama-3-70b', '--ctx', '8192']); "
        "print('rich' in sys.modules, 'capcalc.serving.fit' in sys.modules, file=sys.stderr)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert "KV cache: llama-3-70b" in out.stdout
    assert out.stderr.split() == ["False", "False"]

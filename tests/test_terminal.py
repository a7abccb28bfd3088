"""Tables in a person's 100-column terminal: nothing cut, names whole, COLUMNS honoured."""

from __future__ import annotations

import pytest

from capcalc.report.output import console_width

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
]


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: " ".join(a[:2]))
def test_every_table_reads_at_100_columns(cli, monkeypatch, args):
    monkeypatch.setenv("COLUMNS", "100")
    result = cli(*args)
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines
    assert max(len(line) for line in lines) <= 100
    assert "…" not in result.out


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

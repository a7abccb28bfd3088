"""The Python API (capcalc.api.Session) used apart from the CLI: the README's example runs,
records equal what the commands print, errors name parameters, notes are data."""

from __future__ import annotations

import math
import re
import subprocess
import sys

import pytest

from capcalc import Deployment, Session
from capcalc.cli.usage import error_message
from capcalc.core.errors import CapcalcError
from capcalc.sources.calibration import save_calibration
from tests.conftest import ROOT

GIB = 2**30


def plain(value):
    """A record value as the CLI's JSON carries it: tuples as lists, non-finite floats as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def assert_same_record(api_record: dict, cli_record: dict, skip: tuple[str, ...] = ()) -> None:
    assert list(api_record) == list(cli_record)
    for key, value in api_record.items():
        if key not in skip:
            assert plain(value) == cli_record[key], key


def readme_example() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Use from Python", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "README's 'Use from Python' section has no python block"
    return match.group(1)


def test_the_readme_example_runs_as_written(capsys):
    exec(compile(readme_example(), "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "KV cache: 2.50 GiB per sequence" in out  # 80 layers x 8 KV heads x 128 x 2 x 2 B x 8192
    assert "would fit with: (('max_model_len', 43696), ('tp', 2))" in out


def test_kv_record_is_what_kv_json_prints(cli):
    s = Session()
    result = s.kv("llama-3-70b", ctx=8192, batch=4, tp=4, kv_dtype="fp8")
    # 80 layers x 8 KV heads x 128 dims x (K and V) x 1 byte x 8192 tokens
    assert result.kv_bytes_per_sequence == 80 * 8 * 128 * 2 * 1 * 8192
    printed = cli("kv", "llama-3-70b", "--ctx", 8192, "--batch", 4, "--tp", 4, "--kv-dtype", "fp8", "--json")
    assert_same_record(result.record(), printed.json())
    assert result.record()["schema_version"] == 1


def test_fit_record_is_what_fit_json_prints_with_structured_suggestions(cli):
    s = Session()
    result = s.fit("llama-3.1-8b", memory_bytes=24 * GIB)
    printed = cli("fit", "llama-3.1-8b", "--gpu-memory", "24GiB", "--json").json()
    assert_same_record(result.record(), printed, skip=("suggestions",))
    assert result.suggestions == (("max_model_len", 43696), ("tp", 2))
    assert printed["suggestions"] == ["--max-model-len 43696", "--tp 2"]
    for parameter, value in result.suggestions:
        assert s.fit("llama-3.1-8b", memory_bytes=24 * GIB, **{parameter: value}).fits, parameter


def test_fit_tp_auto_searches_and_notes_a_failed_search():
    s = Session()
    found = s.fit("llama-3-70b", "h100-sxm", tp="auto", max_model_len=8192)
    assert found.fits and found.tp == 4  # 141 GB of bf16 weights: tp=2 leaves no KV room at 0.9
    assert not s.fit("llama-3-70b", "h100-sxm", tp=2, max_model_len=8192).fits
    assert s.notes == []
    s.fit("qwen2.5-72b", "h100-sxm", n_gpus=1, max_model_len=32768)
    assert [str(n) for n in s.notes] == ["no valid tp within 1 GPUs fits; showing the largest, tp=1"]


def test_latency_record_is_what_latency_json_prints(cli):
    s = Session()
    report = s.latency(
        "qwen3-8b", "h100-sxm", prompt_tokens=800, output_tokens=64, batch=4, weight_dtype="fp8"
    )
    args = ("latency", "qwen3-8b", "--gpu", "h100-sxm", "--prompt", 800, "--output", 64, "--batch", 4)
    printed = cli(*args, "--weight-dtype", "fp8", "--json").json()
    assert_same_record(report.record(), printed)
    assert report.ttft_s == report.result.ttft_s  # fields read through
    assert report.record()["efficiency_source"] == report.efficiency.source != "calibration"


def test_roofline_and_plan_records_are_what_the_commands_print(cli):
    s = Session()
    roof = s.roofline("llama-3-8b", "a100-80gb-sxm", batch=8, ctx=2048, weight_dtype="int4")
    printed = cli("roofline", "llama-3-8b", "--gpu", "a100-80gb-sxm", "--batch", 8, "--ctx", 2048,
                  "--weight-dtype", "int4", "--json").json()  # fmt: skip
    assert_same_record(roof.record(), printed)
    report = s.plan("llama-3-8b", 20, 1000, 200, gpus=["h100-sxm"], itl_s=0.05, step_overhead_s="1 ms")
    printed = cli("plan", "llama-3-8b", "--rps", 20, "--prompt", 1000, "--output", 200, "--gpu", "h100-sxm",
                  "--itl-slo", "50ms", "--step-overhead", "1ms", "--json").json()  # fmt: skip
    assert len(report.records()) == len(printed) == 4  # tp 1, 2, 4, 8
    for mine, theirs in zip(report.records(), printed, strict=True):
        assert_same_record(mine, theirs)
    assert report.best is report.results[0] and report.best.feasible


def test_a_deployment_and_its_fields_as_keywords_are_one_thing():
    s = Session()
    d = Deployment(weight_dtype="bfloat16", kv_dtype="FP8", tp=2)
    assert (d.weight_dtype, d.kv_dtype) == ("bf16", "fp8")  # names normalised
    by_value = s.latency("llama-3-8b", "h100-sxm", deployment=d)
    by_keywords = s.latency("llama-3-8b", "h100-sxm", weight_dtype="bf16", kv_dtype="fp8", tp=2)
    assert by_value.record() == by_keywords.record()
    # a keyword changes the given deployment
    assert s.latency("llama-3-8b", "h100-sxm", deployment=d, tp=1).tp == 1


@pytest.mark.parametrize(
    "fields, parameter",
    [
        ({"tp": 0}, "tp"),
        ({"pp": -1}, "pp"),
        ({"group_size": 0}, "group_size"),
        ({"weight_dtype": "fp9"}, "weight_dtype"),
        ({"kv_dtype": "int3"}, "kv_dtype"),
        ({"compute_dtype": "fp7"}, "compute_dtype"),
    ],
)
def test_a_bad_deployment_names_its_field(fields, parameter):
    with pytest.raises(CapcalcError) as err:
        Deployment(**fields)
    assert err.value.parameter == parameter and "--" not in err.value.message


def test_library_errors_name_parameters_and_the_cli_says_flags():
    s = Session()
    with pytest.raises(CapcalcError) as err:
        s.kv("llama-3-8b", ctx=0)
    assert (err.value.message, err.value.parameter) == ("ctx must be at least 1, got 0", "ctx")
    assert error_message(err.value) == "--ctx must be at least 1, got 0"
    with pytest.raises(CapcalcError) as err:
        s.fit("llama-3.1-8b", "h100-sxm", max_model_len=200_000)
    assert err.value.parameter == "max_model_len"
    assert err.value.message.startswith("max_model_len 200000 exceeds llama-3.1-8b's maximum context")
    assert error_message(err.value).startswith("--max-model-len 200000 exceeds")
    with pytest.raises(CapcalcError) as err:
        s.plan("llama-3-8b", 1, 8000, 500, gpus=["h100-sxm"])
    assert err.value.parameters == ("prompt_tokens", "output_tokens")
    assert error_message(err.value).startswith("--prompt + --output = 8,500 tokens exceeds")


def test_notes_are_data_and_nothing_is_printed(tmp_path, capsys):
    path = save_calibration(
        "h100-sxm", {"measured_at": "2026-11-21", "efficiency": {"step_overhead_s": 1e-3}}, tmp_path
    )
    s = Session(profiles=[tmp_path])
    report = s.latency("llama-3-8b", "h100-sxm", prompt_tokens=4000, output_tokens=1000, batch=512)
    assert report.efficiency.efficiency.step_overhead_s == 1e-3
    notes = [str(n) for n in s.notes]
    assert notes[0] == f"using the calibration of h100-sxm measured 2026-11-21 from {path}"
    # 512 requests of 5,000 tokens are more than vLLM's KV cache on one H100 holds
    assert notes[1].startswith("vLLM's KV cache on h100-sxm holds") and notes[1].endswith(
        "fewer than batch 512 (see `capcalc fit`)"
    )
    assert error_message(s.notes[1]).endswith("fewer than --batch 512 (see `capcalc fit`)")
    ignored = Session(profiles=[tmp_path], use_calibration=False)
    plain = ignored.latency("llama-3-8b", "h100-sxm")
    assert plain.efficiency.sources["step_overhead_s"] != "calibration" and ignored.notes == []
    assert capsys.readouterr() == ("", "")


def test_profiles_are_accepted_as_objects(registry):
    s = Session()
    model, gpu = registry.model("llama-3-8b"), registry.gpu("h100-sxm")
    assert s.roofline(model, gpu).record() == s.roofline("llama-3-8b", "h100-sxm").record()


def test_import_capcalc_does_not_import_the_api():
    code = "import sys, capcalc; print('capcalc.api' in sys.modules, 'capcalc.serving.fit' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_measure_returns_the_records_the_command_prints_and_its_warnings_as_notes(monkeypatch):
    pytest.importorskip("torch")
    from capcalc.measure import bench
    from tests.conftest import TEST_PROFILES

    for name, value in (
        ("CPU_COPY_BYTES", 4 * 2**20),
        ("CPU_STREAM_BYTES", 4 * 2**20),
        ("CPU_MATMUL_N", 128),
    ):
        monkeypatch.setattr(bench, name, value)
    s = Session(profiles=[TEST_PROFILES])
    result = s.measure(
        "tiny-test", device="cpu", batches=(1, 100_000_000), contexts=(24,), prompts=(16,), repeats=2
    )
    points, summary = result.records[:-1], result.records[-1]
    assert [(p["record"], p["batch"]) for p in points] == [("decode", 1), ("prefill", 1)]
    # the median of 2 timed steps after 2 warm-up steps attends ctx + 3 tokens (measure.run.attended_tokens)
    assert points[0]["ctx_attended"] == 24 + 3
    assert summary["record"] == "calibration" and summary["skipped_points"] == 1
    # the refused point is a note (an error naming its parameters), not a line on stderr
    assert any("tiny-test decode at batch 100000000, ctx 24 needs" in str(n) for n in s.notes)

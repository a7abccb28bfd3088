"""`capcalc measure` end to end on the CPU with the tiny test models (seconds, not minutes):
the records and their keys, calibration on its own points, the memory pre-check, --save,
and the one-line install hint when torch is missing. No timing is asserted: CPU timings
on a shared machine are noise; what is checked is what the command computes from them."""

from __future__ import annotations

import statistics
import subprocess
import sys

import pytest
import yaml
from conftest import TEST_PROFILES, torch_available

from capcalc.measure.calibrate import FITTED
from capcalc.perf.efficiency import resolve_efficiency
from capcalc.sources.calibration import load_calibration
from capcalc.sources.registry import Registry

HINT = "capcalc: error: capcalc measure needs torch, which is not installed: pip install 'capcalc[measure]'\n"
P = ("--profiles", str(TEST_PROFILES))


needs_torch = pytest.mark.skipif(not torch_available(), reason="torch is not installed")


@pytest.fixture
def small_bench(monkeypatch):
    """CPU microbenchmarks on small buffers, so the tests take milliseconds."""
    from capcalc.measure import bench

    monkeypatch.setattr(bench, "CPU_COPY_BYTES", 4 * 2**20)
    monkeypatch.setattr(bench, "CPU_STREAM_BYTES", 4 * 2**20)
    monkeypatch.setattr(bench, "CPU_MATMUL_N", 128)
    monkeypatch.setattr(bench, "MATVEC_SHAPES", (("tiny", 256, 256),))


# --------------------------------------------------------------------------- without torch


def test_missing_torch_gives_the_install_hint(cli, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    for args in (("measure", "tiny-test", *P, "--device", "cpu"), ("measure", "--gpu")):
        r = cli(*args)
        assert (r.code, r.out, r.err) == (1, "", HINT)
    # every other command still works
    r = cli("kv", "llama-3-8b", "--ctx", "8192", "--json")
    assert r.code == 0 and r.json()["kv_bytes_per_token"] == 131072


def test_importing_capcalc_does_not_import_torch():
    code = "import sys, capcalc.cli, capcalc.measure.calibrate, capcalc.measure.run; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


# --------------------------------------------------------------------------- usage errors


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ("measure",),
            "give a MODEL to measure (e.g. `capcalc measure llama-3.2-1b`) or --gpu to time the device",
        ),
        (
            ("measure", "tiny-test", "--gpu"),
            "give either --gpu (time the device) or a MODEL to measure, not both",
        ),
        (
            ("measure", "tiny-test", *P, "--weight-dtype", "int4"),
            "unknown weight dtype 'int4': expected one of bf16, fp16, fp32",
        ),
        (
            ("measure", "tiny-test", *P, "--ctx", "none", "--prompt", "none"),
            "nothing to measure: give --ctx or --prompt values",
        ),
        (
            ("measure", "tiny-test", *P, "--batch", "0"),
            "--batch: expected positive whole numbers separated by commas, got '0'",
        ),
    ],
)
def test_usage_errors(cli, args, message):
    r = cli(*args)
    assert (r.code, r.out, r.err) == (2, "", f"capcalc: error: {message}\n")


@needs_torch
def test_bad_device(cli):
    r = cli("measure", "tiny-test", *P, "--device", "tpu")
    assert (r.code, r.err) == (2, "capcalc: error: --device: expected cpu, cuda or cuda:N, got 'tpu'\n")


@needs_torch
def test_mla_model_is_refused(cli):
    r = cli("measure", "deepseek-v2-lite", "--device", "cpu")
    assert r.code == 2
    assert "uses multi-head latent attention (MLA), which the measure loop does not build yet" in r.err


# --------------------------------------------------------------------------- memory pre-check


@needs_torch
def test_memory_pre_check_refuses_an_oversized_run(cli):
    r = cli(
        "measure",
        "tiny-test",
        *P,
        "--device",
        "cpu",
        "--batch",
        "100000",
        "--ctx",
        "2000",
        "--prompt",
        "none",
    )
    assert r.code == 1 and r.out == ""
    assert r.err.startswith("capcalc: error: tiny-test decode at batch 100000, ctx 2000 needs 10")
    assert "(weights 0.000428 GB + KV cache 103 GB" in r.err  # 1e5 x 2016 slots x 512 B
    assert "try --batch" in r.err and "at this ctx or --ctx" in r.err


@needs_torch
def test_memory_pre_check_refuses_a_model_too_large_for_ram(cli):
    r = cli(
        "measure", "llama-3.1-405b", "--device", "cpu", "--batch", "1", "--ctx", "512", "--prompt", "none"
    )
    assert r.code == 1
    assert r.err.startswith("capcalc: error: llama-3.1-405b decode at batch 1, ctx 512 needs 1.6")
    assert r.err.endswith(
        "the fp32 weights alone do not fit: measure a smaller model or use a larger device\n"
    )


# --------------------------------------------------------------------------- measure MODEL

POINT_KEYS = [
    "schema_version", "record", "model", "device", "device_name", "gpu", "gpu_profile", "weight_dtype",
    "kv_dtype", "batch", "ctx", "ctx_attended", "prompt_tokens", "measured_time_s", "predicted_time_s",
    "error_pct", "calibrated_time_s", "calibrated_error_pct", "predicted_bound", "predicted_bytes_per_step", "predicted_flops_per_step",
    "achieved_bandwidth_bytes_per_s", "achieved_flops_per_s", "achieved_bandwidth_over_copy", "tokens_per_s",
    "cuda_graph", "repeats", "memory_predicted_bytes", "memory_measured_bytes", "memory_error_pct",
    "kv_cache_bytes", "copy_bandwidth_bytes_per_s", "torch_version",
]  # fmt: skip


@needs_torch
def test_measure_model_on_the_cpu(cli, small_bench):
    r = cli(
        "measure", "tiny-moe-test", *P, "--device", "cpu", "--batch", "1,2,16000000", "--ctx", "24,48",
        "--prompt", "16,32", "--repeats", "2", "--json",
    )  # fmt: skip
    assert r.code == 0, r.err
    records = r.json()
    points, summary = records[:-1], records[-1]
    assert [p["record"] for p in points] == ["decode"] * 4 + ["prefill"] * 2
    assert [(p["batch"], p["ctx"], p["prompt_tokens"]) for p in points] == [
        (1, 24, None), (1, 48, None), (2, 24, None), (2, 48, None), (1, None, 16), (1, None, 32),
    ]  # fmt: skip
    for p in points:
        assert list(p) == POINT_KEYS
        assert p["model"] == "tiny-moe-test" and p["device"] == "cpu" and p["gpu_profile"] == "drafted"
        assert p["weight_dtype"] == p["kv_dtype"] == "fp32"  # auto on the CPU
        assert p["measured_time_s"] > 0 and p["repeats"] == 2 and p["cuda_graph"] is False
        # the record's own arithmetic
        assert p["error_pct"] == pytest.approx(100 * (p["predicted_time_s"] / p["measured_time_s"] - 1))
        assert p["achieved_bandwidth_bytes_per_s"] == pytest.approx(
            p["predicted_bytes_per_step"] / p["measured_time_s"]
        )
        expected_tokens = p["batch"] if p["record"] == "decode" else p["batch"] * p["prompt_tokens"]
        assert p["tokens_per_s"] == pytest.approx(expected_tokens / p["measured_time_s"])
        # the cache allocated: sliding layers (0, 2) hold the 16-token window, fp32, 1 KV head of 16
        if p["record"] == "decode":
            # the step at position pos attends pos + 1 tokens: 2 warm-up steps, then 2 timed
            # ones attending ctx + 3 and ctx + 4, whose median (rounded down) is ctx + 3
            assert p["ctx_attended"] == p["ctx"] + 3
            # slots: ctx + the warm-up and timed steps, rounded up to a multiple of 16
            slots = {24: 32, 48: 64}[p["ctx"]]
            assert p["kv_cache_bytes"] == p["batch"] * 2 * 16 * 4 * (2 * 16 + slots)
    # calibration lowers the error on its own points (sum of squares: what the fit minimises)
    assert sum(p["calibrated_error_pct"] ** 2 for p in points) <= sum(p["error_pct"] ** 2 for p in points)
    assert summary["record"] == "calibration" and summary["model"] == "tiny-moe-test"
    assert (summary["decode_points"], summary["prefill_points"], summary["skipped_points"]) == (4, 2, 2)
    assert summary["models_in_fit"] == 1
    for name in FITTED:
        assert summary[f"fitted_{name}"] > 0
    assert summary["calibration_file"] is None
    assert "capcalc: warning: skipping: tiny-moe-test decode at batch 16000000, ctx 24 needs" in r.err


@needs_torch
def test_measure_model_table_and_csv(cli, small_bench):
    args = (
        "measure",
        "tiny-test",
        *P,
        "--device",
        "cpu",
        "--batch",
        "1",
        "--ctx",
        "16",
        "--prompt",
        "16",
        "--repeats",
        "1",
    )
    table = cli(*args)
    assert table.code == 0, table.err
    assert "median |error|, before and after" in table.out
    assert "weight_bandwidth_efficiency" in table.out and "layer_overhead_s" in table.out
    rows = cli(*args, "--csv").out.splitlines()
    assert rows[0].split(",")[:3] == ["schema_version", "record", "model"]
    assert [row.split(",")[1] for row in rows[1:]] == ["decode", "prefill", "calibration"]


@needs_torch
def test_measure_model_save_writes_the_calibration(cli, small_bench, isolated_user_config):
    r = cli(
        "measure", "tiny-test", *P, "--device", "cpu", "--batch", "1,2", "--ctx", "16,32", "--prompt", "16",
        "--repeats", "1", "--save", "--json",
    )  # fmt: skip
    assert r.code == 0, r.err
    summary = r.json()[-1]
    gpu = summary["gpu"]
    assert gpu.startswith("cpu-")
    path = isolated_user_config / "calibration.yaml"
    assert summary["calibration_file"] == str(path)
    entry = yaml.safe_load(path.read_text())["gpus"][gpu]
    assert entry["device_name"] == summary["device_name"]
    assert entry["measured"]["bandwidth_bytes_per_s"] == pytest.approx(summary["copy_bandwidth_bytes_per_s"])
    assert entry["efficiency"] == pytest.approx({name: summary[f"fitted_{name}"] for name in FITTED})
    assert "capcalc: Drafted profile:" in r.err and "capcalc: Calibration saved:" in r.err
    # the drafted profile is now a user profile found by the device's name, and
    # `latency` on it resolves its efficiencies from the calibration file
    reg = Registry.load()
    profile = reg.gpu(summary["device_name"])
    assert profile.name == gpu
    resolved = resolve_efficiency(profile, calibration=load_calibration())
    assert resolved.source == "calibration"
    assert resolved.efficiency.layer_overhead_s == pytest.approx(summary["fitted_layer_overhead_s"])
    # no MoE model was measured: the routing cost is not fitted and keeps its default (0)
    assert summary["fitted_moe_layer_overhead_s"] == summary["default_moe_layer_overhead_s"] == 0.0


@needs_torch
def test_several_models_share_one_fit(cli, small_bench, monkeypatch):
    from capcalc.measure import calibrate as calibrate_module

    fits = []  # every Calibration `measure` computes: the joint fit, then each model's alone

    def recording(*args, **kwargs):
        fits.append(real_calibrate(*args, **kwargs))
        return fits[-1]

    real_calibrate = calibrate_module.calibrate
    monkeypatch.setattr(calibrate_module, "calibrate", recording)
    r = cli(
        "measure", "tiny-test,tiny-moe-test", *P, "--device", "cpu", "--batch", "1", "--ctx", "16,32",
        "--prompt", "16", "--repeats", "1", "--json",
    )  # fmt: skip
    assert r.code == 0, r.err
    records = r.json()
    assert [(x["record"], x["model"]) for x in records] == [
        ("decode", "tiny-test"), ("decode", "tiny-test"), ("prefill", "tiny-test"),
        ("decode", "tiny-moe-test"), ("decode", "tiny-moe-test"), ("prefill", "tiny-moe-test"),
        ("calibration", "tiny-test"), ("calibration", "tiny-moe-test"), ("calibration", "all"),
    ]  # fmt: skip
    summaries = records[6:]
    assert [s["decode_points"] for s in summaries] == [2, 2, 4]
    assert all(s["models_in_fit"] == 2 for s in summaries)
    # one fit for the GPU: the same fitted parameters in every summary
    assert len({tuple(s[f"fitted_{n}"] for n in FITTED) for s in summaries}) == 1
    # and, per model, what a fit on its points alone reaches (never worse in sum of squares)
    for s in summaries:
        assert s["decode_median_abs_error_calibrated_alone_pct"] is not None
    assert len(fits) == 3  # the joint fit, then tiny-test alone and tiny-moe-test alone
    for fit in fits:
        assert sum(e * e for e in fit.errors_after_pct) <= sum(e * e for e in fit.errors_before_pct)
    points = records[:6]
    joint_before = sum(p["error_pct"] ** 2 for p in points)
    assert sum(p["calibrated_error_pct"] ** 2 for p in points) <= joint_before
    for s, fit in zip(summaries[:2], fits[1:], strict=True):
        # the summary's "alone" figure is that fit's, on that model's points
        mine = [p for p in points if p["model"] == s["model"]]
        decode = [abs(e) for e, p in zip(fit.errors_after_pct, mine, strict=True) if p["record"] == "decode"]
        assert s["decode_median_abs_error_calibrated_alone_pct"] == pytest.approx(statistics.median(decode))


# --------------------------------------------------------------------------- measure --gpu

DEVICE_KEYS = [
    "schema_version", "record", "device", "device_name", "gpu", "gpu_profile", "benchmark", "dtype", "shape",
    "bytes_per_call", "flops_per_call", "time_s", "repeats", "measured_bandwidth_bytes_per_s", "measured_flops_per_s",
    "datasheet_bandwidth_bytes_per_s", "datasheet_flops_per_s", "measured_over_datasheet", "measured_over_copy",
    "memory_total_bytes", "l2_cache_bytes", "torch_version",
]  # fmt: skip


@needs_torch
def test_measure_device_on_the_cpu(cli, small_bench, isolated_user_config):
    r = cli("measure", "--gpu", "--device", "cpu", "--json", "--save")
    assert r.code == 0, r.err
    records = r.json()
    assert [(x["benchmark"], x["dtype"]) for x in records] == [
        ("copy", "fp32"), ("matmul", "fp32"), ("matmul", "bf16"), ("matvec", "fp32"),
    ]  # fmt: skip
    for x in records:
        assert list(x) == DEVICE_KEYS
        assert x["gpu_profile"] == "drafted" and x["datasheet_bandwidth_bytes_per_s"] is None
    copy, matmul, _, matvec = records
    assert copy["bytes_per_call"] == 2 * 4 * 2**20  # read + written
    assert copy["measured_bandwidth_bytes_per_s"] == pytest.approx(copy["bytes_per_call"] / copy["time_s"])
    assert matmul["flops_per_call"] == 2 * 128**3
    # on the CPU each dimension is divided by 4: 4 MiB of fp32 64x64 matrices (16 KiB each)
    assert matvec["shape"] == "tiny: 256 x 64x64"
    assert matvec["measured_over_copy"] == pytest.approx(
        matvec["measured_bandwidth_bytes_per_s"] / copy["measured_bandwidth_bytes_per_s"]
    )
    entry = load_calibration()["gpus"][copy["gpu"]]
    assert entry["measured"]["bandwidth_bytes_per_s"] == pytest.approx(copy["measured_bandwidth_bytes_per_s"])
    assert set(entry["measured"]["peak_flops_per_s"]) == {"fp32", "bf16"}
    assert (isolated_user_config / f"{copy['gpu']}.yaml").is_file()

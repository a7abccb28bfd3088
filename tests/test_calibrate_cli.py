"""`capcalc calibrate RESULT...`: the user's benchmark results fitted, saved, and used.

Result files in each tool's real format are the fixtures of tests/fixtures/bench_results
(their README names the tool versions and the source each shape was copied from) and
rows copied unchanged from the served-runs CSV (aiconfigurator's silicon_sample.csv, the
validation file's source). The oracles: a run's measured values are the file's numbers
in seconds; its "before" prediction is `latency --concurrency` with the shipped defaults;
after `--save`, `latency --concurrency` predicts what the fit's "after" column said.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from capcalc.api import Session
from capcalc.core.errors import CapcalcError
from capcalc.sources.benchresults import read_results
from capcalc.sources.served import find_gpu, precision_dtypes, run_workload

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "bench_results"
VLLM = FIXTURES / "vllm_bench_serve.json"

#: the served-runs CSV header and three rows copied unchanged from it (NVIDIA aiconfigurator,
#: aic-core/src/aiconfigurator_core/systems/silicon_sample.csv, Apache-2.0): vLLM 0.12.0,
#: Qwen3-32B bf16 on two H100 SXM, 1024 in / 128 out at 8, 16 and 32 clients
CSV_HEADER = (
    "id,silicon_data_source,backend,backend_version,model_path,system,precision,mode,isl,osl,"
    "gemm_quant_mode,moe_quant_mode,batch_size,tp_size,pp_size,attention_dp_size,moe_tp_size,"
    "moe_ep_size,prefill_batch_size,prefill_num_workers,prefill_tp_size,prefill_pp_size,"
    "prefill_attention_dp_size,prefill_moe_tp_size,prefill_moe_ep_size,decode_batch_size,"
    "decode_num_workers,decode_tp_size,decode_pp_size,decode_attention_dp_size,decode_moe_tp_size,"
    "decode_moe_ep_size,silicon_ttft_ms,silicon_tpot_ms"
)
QWEN_ROWS = [
    "qwen_qwen3_32b_qwen_qwen3_32b_h100_sxm_vllm_agg_1024x128_c8_tp2_epnone_1,silicon_concurrency=8,"
    "vllm,0.12.0,Qwen/Qwen3-32B,h100_sxm,,agg,1024,128,,,8,2,1,,1,1,,,,,,,,,,,,,,,154.2481599,18.0370482875",
    "qwen_qwen3_32b_qwen_qwen3_32b_h100_sxm_vllm_agg_1024x128_c16_tp2_epnone_4,silicon_concurrency=16,"
    "vllm,0.12.0,Qwen/Qwen3-32B,h100_sxm,,agg,1024,128,,,16,2,1,,1,1,,,,,,,,,,,,,,,187.937802475,22.18353344375",
    "qwen_qwen3_32b_qwen_qwen3_32b_h100_sxm_vllm_agg_1024x128_c32_tp2_epnone_7,silicon_concurrency=32,"
    "vllm,0.12.0,Qwen/Qwen3-32B,h100_sxm,,agg,1024,128,,,32,2,1,,1,1,,,,,,,,,,,,,,,250.471311665625,29.375371071875",
]
#: Llama-3.1-70B NVFP4 on four B200 (system "b200_sxm", precision "fp4", gemm "nvfp4"), vLLM
LLAMA_FP4_ROW = (
    "2026_04_06_llama_3_1_70b_b200_sxm_vllm_fp4_agg_1024x8192_c4_tp4_ep1_301,"
    "source_file=2026-04-06.csv; model=Llama-3.1-70B; silicon_concurrency=4; measured=2025-10-29T00:00:00.000Z; "
    "wip=False,vllm,,meta-llama/Llama-3.1-70B,b200_sxm,fp4,agg,1024,8192,nvfp4,nvfp4,4,4,1,1,4,1,"
    ",,,,,,,,,,,,,,87.40209329407662,7.464780910375318"
)
#: SGLang 0.5.8.post1, Qwen3-32B bf16 on one H100 SXM, 16 clients, copied unchanged from the same
#: file: TTFTs of 6.8 s and 89 s say the requests queued on a KV pool smaller than SGLang's default
#: mem_fraction_static (0.834 on this card) leaves
SGLANG_KV_BOUND_ROWS = [
    "qwen_qwen3_32b_qwen_qwen3_32b_h100_sxm_sglang_agg_1024x128_c16_tp1_epnone_1,source_file=/Users/harrli/"
    "projects/aic-auto-gap-analysis/data/h100_sxm/sglang/0.5.8.post1/Qwen_Qwen3-32B.csv; silicon_concurrency=16,"
    "sglang,0.5.8.post1,Qwen/Qwen3-32B,h100_sxm,,agg,1024,128,,,16,1,1,,1,1,,,,,,,,,,,,,,,6775.53813289375,"
    "25.47610364375",
    "qwen_qwen3_32b_qwen_qwen3_32b_h100_sxm_sglang_agg_2048x512_c16_tp1_epnone_6,source_file=/Users/harrli/"
    "projects/aic-auto-gap-analysis/data/h100_sxm/sglang/0.5.8.post1/Qwen_Qwen3-32B.csv; silicon_concurrency=16,"
    "sglang,0.5.8.post1,Qwen/Qwen3-32B,h100_sxm,,agg,2048,512,,,16,1,1,,1,1,,,,,,,,,,,,,,,88769.65587960937,"
    "26.328024493749997",
]
#: a disaggregated TensorRT-LLM row of the same file (fixture served_runs.csv, row 2)
DISAGG_ROW = next(
    line for line in (FIXTURES / "served_runs.csv").read_text().splitlines() if ",disagg," in line
)


def write_csv(tmp_path: Path, rows: list[str], name: str = "runs.csv") -> Path:
    path = tmp_path / name
    path.write_text("\n".join([CSV_HEADER, *rows]) + "\n")
    return path


def one_line_error(got, code: int = 1) -> str:
    assert got.code == code, (got.code, got.err)
    lines = got.err.strip().splitlines()
    errors = [line for line in lines if line.startswith("capcalc: error:")]
    assert len(errors) == 1 and "Traceback" not in got.err, got.err
    assert got.out == ""
    return errors[0]


def calibration_file(config_dir: Path) -> Path:
    return config_dir / "calibration.yaml"


# --------------------------------------------------------------------------- each format


@pytest.mark.parametrize(
    "name, fmt, runs, first",
    [
        # (file, format, runs in it, the first run's (model, C, rate, P, O, TTFT s, TPOT s))
        ("vllm_bench_serve.json", "vllm-bench-serve", 1, ("llama-3.1-8b", 16, None, 1024, 128, 0.150, 0.024)),
        ("vllm_bench_serve_append.json", "vllm-bench-serve", 2, ("qwen3-8b", None, 2, 512, 256, None, None)),
        ("profile_export_aiperf.json", "aiperf", 1, ("llama-3.1-8b", 8, None, 512, 200, 0.045, 0.0125)),
        (
            "profile_export_genai_perf.json",
            "genai-perf",
            1,
            ("llama-3.1-8b", 4, None, 550, 128, 0.080, 0.015),
        ),
        ("guidellm_benchmarks.json", "guidellm", 2, ("llama-3.1-8b", 1, None, 256, 128, 0.030, 0.008)),
    ],
)
def test_each_format_through_the_cli(cli, name, fmt, runs, first):
    got = cli("calibrate", FIXTURES / name, "--gpu", "h100-sxm", "--engine", "vllm", "--parameters", "frontend_s", "--json")  # fmt: skip
    assert got.code == 0, got.err
    records = got.json()
    points = [r for r in records if r["record"] == "point"]
    (summary,) = [r for r in records if r["record"] == "calibration"]
    assert len(points) == runs and summary["points"] == runs
    assert {p["source"] for p in points} == {fmt}
    model, c, rate, prompt, output, ttft, tpot = first
    p = points[0]
    assert (p["model"], p["concurrency"], p["requests_per_s"]) == (model, c, rate)
    assert (p["prompt_tokens"], p["output_tokens"]) == (prompt, output)
    if ttft is not None:  # the file's means, in seconds
        assert p["ttft_measured_s"] == pytest.approx(ttft) and p["tpot_measured_s"] == pytest.approx(tpot)
    # never worse than the shipped defaults
    assert summary["loss_after"] <= summary["loss_before"] + 1e-12
    assert summary["gpu"] == "h100-sxm" and summary["engine"] == "vllm"


def test_before_is_latency_concurrency_with_the_shipped_defaults(cli):
    """The vLLM fixture: 16 clients, 200 prompts of 1024 in / 128 out (12.5 per client)."""
    got = cli(
        "calibrate", VLLM, "--gpu", "h100-sxm", "--engine", "vllm", "--parameters", "frontend_s", "--json"
    )
    point = got.json()[0]
    want = Session(use_calibration=False).serving(
        "llama-3.1-8b", "h100-sxm", 1024, 128, concurrency=16, num_requests=200
    )
    assert point["ttft_before_s"] == pytest.approx(want.ttft_s, rel=1e-9)
    assert point["tpot_before_s"] == pytest.approx(want.tpot_s, rel=1e-9)
    assert point["ttft_error_before_pct"] == pytest.approx((want.ttft_s / 0.150 - 1) * 100, rel=1e-9)
    # the measured tokens/s is the file's output_throughput
    assert point["tokens_per_s_measured"] == pytest.approx(640.4002501563477)


def test_csv_runs_take_the_deployment_from_the_file(cli, tmp_path):
    path = write_csv(tmp_path, QWEN_ROWS)
    got = cli("calibrate", path, "--json")  # GPU, engine, model, tp and precision from the rows
    assert got.code == 0, got.err
    points = [r for r in got.json() if r["record"] == "point"]
    assert [p["concurrency"] for p in points] == [8, 16, 32]
    assert {(p["model"], p["tp"], p["weight_dtype"]) for p in points} == {("qwen3-32b", 2, "bf16")}
    assert points[1]["ttft_measured_s"] == pytest.approx(0.187937802475)
    summary = got.json()[-1]
    assert set(summary) >= {
        f"fitted_{n}" for n in ("bandwidth_scale", "flops_scale", "layer_overhead_s", "frontend_s")
    }
    for m in ("ttft", "tpot"):
        assert summary[f"{m}_mean_abs_error_after_pct"] <= summary[f"{m}_mean_abs_error_before_pct"] * 1.5


def test_an_inferencex_row_is_replayed_as_its_benchmark_sent_it():
    """InferenceX's 1024/1024 at 256 clients: lengths uniform over [819, 1024] (mean 921.5, rounded
    to 922, half-width 205 / 1843), 2,560 requests; a row from elsewhere keeps its nominal
    lengths, the engine's output spread and the default request count."""
    fixture = Path(__file__).parent / "fixtures" / "bench_results" / "served_runs.csv"
    runs = {p.id: p for p in read_results(fixture)}
    wl = run_workload(runs["minimaxm2_5_b200_vllm_fp8_agg_1024x1024_c256_cfg691"])
    assert (wl.prompt_tokens, wl.output_tokens, wl.concurrency, wl.num_requests) == (922, 922, 256, 2560)
    assert wl.prompt_spread == wl.output_spread == pytest.approx(205 / 1843)
    other = run_workload(runs["qwen3_32b_qwen3_32b_h100_sxm_trtllm_agg_4000x1000_c_tp2_epnone_1"])
    assert (other.prompt_tokens, other.output_tokens, other.concurrency) == (4000, 1000, 64)
    assert (other.prompt_spread, other.output_spread, other.num_requests) == (0.0, None, None)


def test_gpu_aliases_and_precision_names_map_to_capcalc(cli, tmp_path):
    """b200_sxm is the b200 profile; fp4 with gemm_quant_mode nvfp4 is NVFP4 weights."""
    path = write_csv(tmp_path, [LLAMA_FP4_ROW])
    got = cli("calibrate", path, "--parameters", "frontend_s", "--json")
    assert got.code == 0, got.err
    point, summary = got.json()
    assert summary["gpu"] == "b200" and summary["engine"] == "vllm"
    assert (point["model"], point["tp"], point["weight_dtype"]) == ("llama-3.1-70b", 4, "nvfp4")
    # the same GPU named by its alias on the command line agrees with the file
    again = cli("calibrate", path, "--gpu", "b200", "--engine", "vllm", "--tp", "4", "--weight-dtype", "nvfp4", "--parameters", "frontend_s", "--json")  # fmt: skip
    assert again.code == 0, again.err


def test_find_gpu_reads_benchmark_spellings(registry):
    assert find_gpu("b200_sxm", registry.gpu).name == "b200"
    assert find_gpu("h100_sxm", registry.gpu).name == "h100-sxm"
    assert find_gpu("NVIDIA H100 80GB HBM3", registry.gpu).name == "h100-sxm"
    with pytest.raises(CapcalcError, match="closest"):
        find_gpu("zz_sxm", registry.gpu)


def test_every_gpu_profile_is_found_under_a_benchmark_spelling(registry):
    """Suites write GPU names upper-case with underscores (H100_SXM): each profile is found back."""
    for name in registry.gpus:
        assert find_gpu(name.replace("-", "_").upper(), registry.gpu).name == name
        assert find_gpu(f"{name}_sxm", registry.gpu).name == name


@pytest.mark.parametrize(
    "precision, gemm, model, want",
    [
        ("fp4", "nvfp4", "llama-3.1-70b", ("nvfp4", "fp8")),
        ("nvfp4", None, "llama-3.1-70b", ("nvfp4", "fp8")),
        ("fp4", "mxfp4", "llama-3.1-70b", ("mxfp4", "fp8")),
        ("mxfp4", None, "llama-3.1-70b", ("mxfp4", "fp8")),
        ("fp8", "fp8_block", "qwen3-32b", ("fp8", "fp8")),
        ("fp4", "nvfp4", "gpt-oss-120b", ("mxfp4", "fp8")),  # the checkpoint's MXFP4 experts
        ("fp8", "fp8", "gpt-oss-120b", ("mxfp4", "fp8")),  # W4A8
        ("", None, "qwen3-32b", ("bf16", "auto")),
        ("bfloat16", None, "qwen3-32b", ("bf16", "auto")),
        ("int4", None, "qwen3-32b", ("int4", "auto")),
    ],
)
def test_precision_names(registry, precision, gemm, model, want):
    assert precision_dtypes(precision, gemm, registry.model(model)) == want


def test_unknown_precision_is_one_line(registry):
    with pytest.raises(CapcalcError, match="unknown precision 'w3a5'"):
        precision_dtypes("w3a5", None, registry.model("qwen3-32b"))


# --------------------------------------------------------------------------- bad files


def _vllm_doc() -> dict:
    return json.loads(VLLM.read_text())


@pytest.mark.parametrize(
    "content, words",
    [
        (b"", ("empty",)),
        (b"   \n\n", ("empty",)),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", ("not UTF-8",)),
        (b"\x00\x01\x02binary\x00garbage", ("unknown format",)),
        (b"just some text\nsecond line\n", ("unknown format",)),
        (b'{"hello": "world"}', ("unknown format",)),
        (b"[1, 2, 3]", ("unknown format",)),
        (b'{"mean_ttft_ms": 12', ("invalid JSON",)),
    ],
)
def test_unreadable_files_fail_cleanly(cli, tmp_path, content, words):
    path = tmp_path / "result.json"
    path.write_bytes(content)
    line = one_line_error(cli("calibrate", path, "--gpu", "h100-sxm", "--engine", "vllm"))
    assert str(path) in line
    for word in words:
        assert word in line


@pytest.mark.parametrize("field", ["mean_ttft_ms", "mean_tpot_ms", "completed", "total_output_tokens"])
def test_missing_fields_fail_cleanly(cli, tmp_path, field):
    doc = _vllm_doc()
    del doc[field]
    path = tmp_path / "result.json"
    path.write_text(json.dumps(doc))
    line = one_line_error(cli("calibrate", path, "--gpu", "h100-sxm", "--engine", "vllm"))
    assert field in line and "missing" in line


def test_missing_file(cli, tmp_path):
    line = one_line_error(cli("calibrate", tmp_path / "nope.json", "--gpu", "h100-sxm", "--engine", "vllm"))
    assert "no such file" in line


@pytest.mark.parametrize(
    "args, words",
    [
        (("--gpu", "b200"), ("b200", "h100-sxm", "--gpu")),
        (("--engine", "sglang"), ("sglang", "vllm", "--engine")),
        (("--tp", "4"), ("tp 2", "--tp is 4")),
        (("--weight-dtype", "fp8"), ("precision", "--weight-dtype")),
        (("--model", "llama-3.1-8b"), ("Qwen/Qwen3-32B", "--model")),
    ],
)
def test_a_deployment_that_contradicts_the_flags_fails_cleanly(cli, tmp_path, args, words):
    path = write_csv(tmp_path, QWEN_ROWS[:1])
    line = one_line_error(cli("calibrate", path, *args))
    for word in words:
        assert word in line


def test_a_model_that_contradicts_the_flag_fails_cleanly(cli):
    line = one_line_error(
        cli("calibrate", VLLM, "--gpu", "h100-sxm", "--engine", "vllm", "--model", "qwen3-8b")
    )
    assert "meta-llama/Llama-3.1-8B-Instruct" in line and "--model is qwen3-8b" in line


@pytest.mark.parametrize(
    "args, words",
    [
        (("--engine", "vllm"), ("does not name the GPU", "--gpu")),
        (("--gpu", "h100-sxm"), ("does not name the engine", "--engine")),
        (("--gpu", "h100-sxm", "--engine", "vllm", "--format", "aiperf"), ("vllm-bench-serve", "not aiperf")),
    ],
)
def test_what_the_file_does_not_say_must_be_given(cli, args, words):
    line = one_line_error(cli("calibrate", VLLM, *args))
    for word in words:
        assert word in line


@pytest.mark.parametrize(
    "args, words",
    [
        (("--engine", "tgi"), ("--engine", "tgi")),
        (("--format", "xml"), ("--format", "xml")),
        (("--parameters", "speed"), ("--parameters", "speed")),
        (("--gpu", "h999"), ("unknown GPU", "h999")),
    ],
)
def test_bad_flags_are_usage_errors(cli, args, words):
    base = {"--gpu": "h100-sxm", "--engine": "vllm"}
    base.update(dict([args]))
    line = one_line_error(
        cli("calibrate", VLLM, *[x for kv in base.items() for x in kv]), code=2 if args[0] != "--gpu" else 1
    )
    for word in words:
        assert word in line


def test_disaggregated_and_mixed_runs_are_refused(cli, tmp_path):
    line = one_line_error(cli("calibrate", write_csv(tmp_path, [DISAGG_ROW], "disagg.csv")))
    assert "disaggregated" in line and "disagg.csv" in line
    mixed = write_csv(tmp_path, [QWEN_ROWS[0], LLAMA_FP4_ROW], "mixed.csv")
    line = one_line_error(cli("calibrate", mixed))
    assert "several GPUs" in line and "b200" in line and "h100-sxm" in line


def test_open_loop_all_at_once_is_refused(cli, tmp_path):
    doc = _vllm_doc()
    doc["max_concurrency"] = None  # request_rate "inf": every prompt sent at once
    path = tmp_path / "burst.json"
    path.write_text(json.dumps(doc))
    line = one_line_error(cli("calibrate", path, "--gpu", "h100-sxm", "--engine", "vllm"))
    assert "load is not known" in line


# --------------------------------------------------------------------------- --save


def test_save_then_latency_uses_the_fit_and_says_so(cli, isolated_user_config):
    got = cli("calibrate", VLLM, "--gpu", "h100-sxm", "--engine", "vllm", "--parameters", "frontend_s,bandwidth_scale", "--save", "--json")  # fmt: skip
    assert got.code == 0, got.err
    point, summary = got.json()
    path = calibration_file(isolated_user_config)
    assert summary["calibration_file"] == str(path) and path.is_file()
    served = cli("latency", "llama-3.1-8b", "--gpu", "h100-sxm", "--prompt", "1024", "--output", "128", "--concurrency", "16", "--num-requests", "200", "--json")  # fmt: skip
    assert served.code == 0, served.err
    record = served.json()
    assert record["efficiency_source"] == f"calibration:{path} (vllm, 1 point)"
    assert "using the vllm calibration of h100-sxm" in served.err
    # the saved values reproduce the fit's own "after" prediction
    assert record["ttft_s"] == pytest.approx(point["ttft_after_s"], rel=1e-9)
    assert record["tpot_s"] == pytest.approx(point["tpot_after_s"], rel=1e-9)
    assert record["frontend_s"] == pytest.approx(summary["fitted_frontend_s"])
    # another engine on that GPU, the static batch, and --no-calibration are untouched
    other = cli(
        "latency", "llama-3.1-8b", "--gpu", "h100-sxm", "--concurrency", "16", "--engine", "sglang", "--json"
    )
    assert other.json()["efficiency_source"] == "engine:sglang"
    static = cli("latency", "llama-3.1-8b", "--gpu", "h100-sxm", "--json").json()
    assert static["efficiency_source"] != "calibration"
    off = cli(
        "latency", "llama-3.1-8b", "--gpu", "h100-sxm", "--concurrency", "16", "--no-calibration", "--json"
    )
    assert off.json()["efficiency_source"] == "engine:vllm"


def test_save_then_plan_uses_the_fit_and_says_so(cli, isolated_user_config):
    got = cli("calibrate", VLLM, "--gpu", "h100-sxm", "--engine", "vllm", "--parameters", "frontend_s,bandwidth_scale", "--save", "--json")  # fmt: skip
    assert got.code == 0, got.err
    _, summary = got.json()
    path = calibration_file(isolated_user_config)
    args = ("plan", "llama-3.1-8b", "--gpu", "h100-sxm", "--tp", "1", "--rps", "2", "--prompt", "1024", "--output", "128", "--json")  # fmt: skip
    planned = cli(*args)
    assert planned.code == 0, planned.err
    (row,) = planned.json()
    assert row["efficiency_source"] == f"calibration:{path} (vllm, 1 point)"
    assert row["frontend_s"] == pytest.approx(summary["fitted_frontend_s"])
    # the same plan for another engine runs on that engine's defaults
    (other,) = cli(*args, "--engine", "sglang").json()
    assert other["efficiency_source"] == "engine:sglang"


def test_a_fitted_memory_fraction_is_saved_and_sizes_later_pools(cli, tmp_path, isolated_user_config):
    """Runs that queued on the KV cache give the engine's memory knob back: the fit puts SGLang's
    mem_fraction_static below its default, meets the measured TTFTs, and a later latency call
    under that calibration sizes its pool with the fitted share and says where it came from."""
    path = write_csv(tmp_path, SGLANG_KV_BOUND_ROWS)
    got = cli("calibrate", str(path), "--parameters", "memory_fraction,frontend_s", "--save", "--json")
    assert got.code == 0, got.err
    *points, summary = got.json()
    fitted = summary["fitted_memory_fraction"]
    assert 0.5 < fitted < 0.834
    assert all(abs(p["ttft_error_after_pct"]) < 10 < abs(p["ttft_error_before_pct"]) for p in points)
    served = cli("latency", "qwen3-32b", "--gpu", "h100-sxm", "--engine", "sglang", "--concurrency", "16",
                 "--prompt", "1024", "--output", "128", "--json").json()  # fmt: skip
    assert served["memory_fraction"] == pytest.approx(fitted)
    assert served["efficiency_source"].startswith("calibration:")
    flag = cli("latency", "qwen3-32b", "--gpu", "h100-sxm", "--engine", "sglang", "--concurrency", "16",
               "--prompt", "1024", "--output", "128", "--memory-fraction", "0.85", "--json").json()  # fmt: skip
    assert flag["memory_fraction"] == 0.85  # the flag over the calibration


def test_save_keeps_the_rest_of_the_calibration_file(cli, isolated_user_config):
    import yaml

    path = calibration_file(isolated_user_config)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "schema_version: 1\n"
        "gpus:\n"
        "  h100-sxm:\n"
        "    measured_at: 2026-11-26\n"
        "    efficiency: {layer_overhead_s: 9.0e-06}\n"
        "    engines:\n"
        "      sglang: {points: 3, parameters: {frontend_s: 0.2}}\n"
        "  a100-80gb-sxm:\n"
        "    efficiency: {weight_bandwidth_efficiency: 0.8}\n"
    )
    got = cli(
        "calibrate", VLLM, "--gpu", "h100-sxm", "--engine", "vllm", "--parameters", "frontend_s", "--save"
    )
    assert got.code == 0, got.err
    data = yaml.safe_load(path.read_text())
    h100 = data["gpus"]["h100-sxm"]
    assert h100["efficiency"] == {"layer_overhead_s": 9.0e-06}
    assert h100["engines"]["sglang"] == {"points": 3, "parameters": {"frontend_s": 0.2}}
    assert set(h100["engines"]["vllm"]["parameters"]) == {"frontend_s"}
    assert h100["engines"]["vllm"]["points"] == 1
    assert data["gpus"]["a100-80gb-sxm"] == {"efficiency": {"weight_bandwidth_efficiency": 0.8}}
    # the static batch still uses the measured efficiency block
    static = cli("latency", "llama-3.1-8b", "--gpu", "h100-sxm", "--json").json()
    assert static["assume_layer_overhead_s"] == pytest.approx(9.0e-06)


def test_a_failed_calibration_writes_nothing(cli, tmp_path, isolated_user_config):
    path = calibration_file(isolated_user_config)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("schema_version: 1\ngpus:\n  h100-sxm:\n    efficiency: {layer_overhead_s: 9.0e-06}\n")
    before = path.read_bytes()
    bad = tmp_path / "bad.json"
    bad.write_bytes(b"\xff\x00garbage")
    one_line_error(cli("calibrate", VLLM, bad, "--gpu", "h100-sxm", "--engine", "vllm", "--save"))
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["calibration.yaml"]


def test_a_failed_write_leaves_the_old_file_whole(cli, isolated_user_config, monkeypatch):
    path = calibration_file(isolated_user_config)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("schema_version: 1\ngpus: {}\n")
    before = path.read_bytes()

    def refuse(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    got = cli(
        "calibrate", VLLM, "--gpu", "h100-sxm", "--engine", "vllm", "--parameters", "frontend_s", "--save"
    )
    line = one_line_error(got, code=got.code)
    assert got.code != 0 and "No space left on device" in line
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["calibration.yaml"]


def test_a_bad_engine_entry_in_the_calibration_file_is_one_line(cli, isolated_user_config):
    path = calibration_file(isolated_user_config)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "schema_version: 1\ngpus:\n  h100-sxm:\n    engines:\n      vllm: {parameters: {speed: 2}}\n"
    )
    line = one_line_error(cli("latency", "llama-3.1-8b", "--gpu", "h100-sxm", "--concurrency", "4"), code=2)
    assert str(path) in line and "speed" in line


def _model_made_runs(tmp_path, concurrencies, prompt, output, **serving) -> list:
    """vllm bench serve result files of runs the model itself makes of llama-3.1-8b on
    h100-sxm (vLLM, 5 requests per client) with ``serving`` (Session.serving's keywords)."""
    doc = _vllm_doc()
    paths = []
    for c in concurrencies:
        truth = Session(use_calibration=False).serving(
            "llama-3.1-8b", "h100-sxm", prompt, output, concurrency=c, num_requests=5 * c, **serving
        )
        run = {
            **doc,
            "max_concurrency": c,
            "num_prompts": 5 * c,
            "completed": 5 * c,
            "total_input_tokens": prompt * 5 * c,
            "total_output_tokens": output * 5 * c,
            "mean_ttft_ms": truth.ttft_s * 1e3,
            "mean_tpot_ms": truth.tpot_s * 1e3,
            "output_throughput": truth.output_tokens_per_s,
        }
        paths.append(tmp_path / f"c{c}.json")
        paths[-1].write_text(json.dumps(run))
    return paths


def test_calibrate_recovers_a_known_frontend_cost(cli, tmp_path):
    """Runs made by the model itself with a 30 ms frontend, written as vllm bench serve
    results: the fit of the frontend alone finds 30 ms back."""
    paths = _model_made_runs(tmp_path, (1, 4), 1024, 128, frontend_s=0.030)
    got = cli(
        "calibrate", *paths, "--gpu", "h100-sxm", "--engine", "vllm", "--parameters", "frontend_s", "--json"
    )
    assert got.code == 0, got.err
    summary = got.json()[-1]
    assert summary["fitted_frontend_s"] == pytest.approx(0.030, rel=0.1)
    assert summary["ttft_mean_abs_error_after_pct"] < summary["ttft_mean_abs_error_before_pct"]


def test_calibrate_recovers_a_known_allreduce_bandwidth_share(cli, tmp_path):
    """Runs made by the model on four GPUs with the all-reduces at 0.4 of the link (the
    engine's own value is 0.65), written as vllm bench serve results with 2,048-token
    prompts: the fit of that share alone finds 0.4 back."""
    share = {"allreduce_bandwidth_efficiency": 0.4}
    paths = _model_made_runs(tmp_path, (1, 8), 2048, 32, tp=4, efficiency=share)
    args = ("--gpu", "h100-sxm", "--engine", "vllm", "--tp", "4")
    got = cli("calibrate", *paths, *args, "--parameters", "allreduce_bandwidth_efficiency", "--json")
    assert got.code == 0, got.err
    summary = got.json()[-1]
    assert summary["fitted_allreduce_bandwidth_efficiency"] == pytest.approx(0.4, rel=0.05)
    assert summary["ttft_mean_abs_error_after_pct"] < summary["ttft_mean_abs_error_before_pct"]


def test_table_view_fits_100_columns(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    path = write_csv(tmp_path, QWEN_ROWS[:2])
    got = cli("calibrate", path, "--parameters", "frontend_s")
    assert got.code == 0, got.err
    assert "Calibration: qwen3-32b on h100-sxm / vllm" in got.out and "fitted: frontend_s =" in got.out
    assert "not saved" in got.out
    assert max(len(line) for line in got.out.splitlines()) <= 100


def test_the_fixture_copy_is_read_by_content_not_name(cli, tmp_path):
    copy = tmp_path / "results.txt"
    shutil.copy(VLLM, copy)
    got = cli("calibrate", copy, "--gpu", "h100-sxm", "--engine", "vllm", "--format", "vllm", "--parameters", "frontend_s", "--json")  # fmt: skip
    assert got.code == 0, got.err


def test_a_recv_interval_flag_contradicting_the_launcher_is_one_line(cli, tmp_path):
    """An InferenceX SGLang DeepSeek-R1 row on B200 at 64 clients was served polling every 30
    decode steps (its launcher, capcalc.sources.launchers): a flag saying otherwise is refused,
    one saying the same is taken."""
    row = (
        "dsr1_sglang_c64,db-dump/2026-04-27; config_id=7; silicon_concurrency=64; workflow_run_id=799,"
        "sglang,0.5.9,deepseek-ai/DeepSeek-R1,b200_sxm,fp8,agg,1024,1024,fp8,fp8,64,8,1,1,8,1,"
        ",,,,,,,,,,,,,,650.0,21.9"
    )
    path = write_csv(tmp_path, [row])
    line = one_line_error(cli("calibrate", path, "--scheduler-recv-interval", "10", "--json"))
    assert "its launcher sets --scheduler-recv-interval 30, the command line 10" in line
    same = cli("calibrate", path, "--scheduler-recv-interval", "30", "--parameters", "frontend_s", "--json")
    assert same.code == 0, same.err


def test_a_tensorrt_llm_row_is_fitted_with_its_launchers_batch_waiting(tmp_path, registry):
    """InferenceX's Llama-3.1-70B FP8 launcher on B200 holds new prompts at 1024/1024 below
    tp 8 (20 steps or 0.9 of its 16,384-token budget): the point calibrate fits carries both,
    and its TTFT before the fit is the held one (measured 256 ms at tp 2, C 4; about 112 ms
    without the hold)."""
    from capcalc.serving.calibrate import predict_point, serving_defaults
    from capcalc.sources.served import Requested, to_points

    row = (
        "llama70b_trt_c4,source_file=2026-04-06.csv; model=Llama-3.1-70B; silicon_concurrency=4; wip=False,"
        "trtllm,,meta-llama/Llama-3.1-70B,b200_sxm,fp8,agg,1024,1024,fp8,fp8,4,2,1,1,2,1,"
        ",,,,,,,,,,,,,,256.0,9.7"
    )
    runs = read_results(write_csv(tmp_path, [row]))
    _, _, (point,) = to_points(runs, Requested(), registry.model, registry.gpu, registry.find_model)
    assert point.engine_settings == {"batch_wait_iters": 20, "batch_wait_max_tokens_ratio": 0.9}
    assert point.max_num_batched_tokens == 16384
    params = serving_defaults(point)
    assert (params.config.batch_wait_iters, params.config.max_num_batched_tokens) == (20, 16384)
    assert 0.2 < predict_point(point, params).ttft_s < 0.35

"""capcalc.sources.benchresults against fixtures shaped like each tool's real output.

The fixtures and where their shapes come from are described in
tests/fixtures/bench_results/README.md. The pinned numbers can be worked out from the
files: times are converted to seconds, so 150.0 ms in ``mean_ttft_ms`` becomes 0.150.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pytest

from capcalc.core.errors import CapcalcError
from capcalc.sources import benchresults
from capcalc.sources.benchresults import (
    ServedPoint,
    inferencex_source,
    read_many,
    read_results,
    uniform_lengths,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "bench_results"
approx = pytest.approx


def one(name: str) -> ServedPoint:
    points = read_results(FIXTURES / name)
    assert len(points) == 1
    return points[0]


def load(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def write_json(tmp_path: Path, doc, name: str = "result.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return path


def error_of(path: Path) -> str:
    """The message read_results raises for ``path``: one line, naming the file."""
    with pytest.raises(CapcalcError) as caught:
        read_results(path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    return message


# --------------------------------------------------------------------------- vllm bench serve


def test_vllm_closed_loop_run():
    p = one("vllm_bench_serve.json")
    assert p.source_format == "vllm-bench-serve"
    assert p.id == "vllm_bench_serve.json"
    assert p.model == "meta-llama/Llama-3.1-8B-Instruct"
    assert (p.tool_version, p.engine, p.gpu, p.tp) == (None, None, None, None)
    assert p.input_tokens == 1024.0  # 204800 / 200
    assert p.output_tokens == 128.0  # 25600 / 200
    assert p.num_requests == 200
    assert p.concurrency == 16
    assert p.request_rate == math.inf  # "inf" in the file
    assert p.ttft_mean_s == approx(0.150)
    assert p.tpot_mean_s == approx(0.024)
    assert p.itl_mean_s == approx(0.0239)
    assert p.e2e_mean_s is None  # e2el is not in the default --percentile-metrics
    assert p.requests_per_s == approx(200 / 39.975)
    assert p.output_tokens_per_s == approx(25600 / 39.975)
    assert p.percentiles == approx(
        {
            "ttft_p50_s": 0.1425,  # from median_ttft_ms
            "ttft_p99_s": 0.241,
            "tpot_p50_s": 0.0238,
            "tpot_p99_s": 0.0279,
            "itl_p50_s": 0.0231,
            "itl_p99_s": 0.0417,
        }
    )
    # The fixture is consistent: e2e = ttft + tpot x (osl - 1), and Little's law holds.
    e2e = p.ttft_mean_s + p.tpot_mean_s * (p.output_tokens - 1)
    assert p.concurrency / e2e == approx(p.requests_per_s)


def test_vllm_append_result_gives_one_point_a_line():
    first, second = read_results(FIXTURES / "vllm_bench_serve_append.json")
    assert (first.id, second.id) == ("vllm_bench_serve_append.json:1", "vllm_bench_serve_append.json:2")
    assert (first.request_rate, second.request_rate) == (2.0, 4.0)
    assert first.concurrency is None and second.concurrency is None
    assert first.model == "Qwen/Qwen3-8B"
    assert (first.input_tokens, first.output_tokens) == (512.0, 256.0)
    assert first.ttft_mean_s == approx(0.060)
    assert first.tpot_mean_s == approx(0.011)
    assert first.e2e_mean_s == approx(0.060 + 0.011 * 255)
    assert second.e2e_mean_s == approx(0.085 + 0.014 * 255)
    assert first.percentiles["e2e_p90_s"] == approx(3.438)
    assert first.percentiles["ttft_p50_s"] == approx(0.0582)  # p50 and median agree
    assert second.percentiles["tpot_p99_s"] == approx(0.021)
    assert second.requests_per_s == approx(3.4898)


def test_vllm_percentile_with_a_fraction_keeps_it(tmp_path):
    doc = load("vllm_bench_serve.json") | {"p99.9_ttft_ms": 300.0}
    (p,) = read_results(write_json(tmp_path, doc))
    assert p.percentiles["ttft_p99.9_s"] == approx(0.300)


# --------------------------------------------------------------------------- aiperf, genai-perf


def test_aiperf_profile_export():
    p = one("profile_export_aiperf.json")
    assert p.source_format == "aiperf"
    assert p.tool_version == "0.8.0"
    assert p.model == "meta-llama/Llama-3.1-8B-Instruct"
    assert (p.concurrency, p.request_rate) == (8, None)
    assert (p.input_tokens, p.output_tokens) == (512.0, 200.0)
    assert p.num_requests == 64
    assert p.ttft_mean_s == approx(0.045)
    assert p.tpot_mean_s == approx(0.0125)  # inter_token_latency, which is vLLM's TPOT
    assert p.itl_mean_s is None
    assert p.e2e_mean_s == approx(2.5325)
    assert p.e2e_mean_s == approx(p.ttft_mean_s + p.tpot_mean_s * (p.output_tokens - 1))
    assert p.requests_per_s == approx(3.1589)
    assert p.output_tokens_per_s == approx(631.78)
    assert p.percentiles["ttft_p1_s"] == approx(0.036)
    assert p.percentiles["ttft_p99_s"] == approx(0.0585)
    assert p.percentiles["tpot_p90_s"] == approx(0.01375)
    assert p.percentiles["e2e_p50_s"] == approx(2.507175)


@pytest.mark.parametrize(("unit", "scale"), [("ns", 1e6), ("us", 1e3), ("s", 1e-3), ("sec", 1e-3)])
def test_aiperf_metric_units_are_honoured(tmp_path, unit, scale):
    """Rewrite the fixture's ms metrics in another unit: the seconds must not change."""
    doc = load("profile_export_aiperf.json")
    for name in ("time_to_first_token", "inter_token_latency", "request_latency"):
        metric = doc[name]
        for key, value in list(metric.items()):
            if key != "unit":
                metric[key] = value * scale
        metric["unit"] = unit
    (p,) = read_results(write_json(tmp_path, doc, "profile_export_aiperf.json"))
    assert p.ttft_mean_s == approx(0.045)
    assert p.tpot_mean_s == approx(0.0125)
    assert p.e2e_mean_s == approx(2.5325)
    assert p.percentiles["ttft_p99_s"] == approx(0.0585)


def test_genai_perf_flat_input_config():
    p = one("profile_export_genai_perf.json")
    assert p.source_format == "genai-perf"
    assert p.tool_version is None
    assert p.model == "meta-llama/Llama-3.1-8B-Instruct"
    assert p.engine == "vllm"  # Triton with the vLLM backend
    assert (p.concurrency, p.request_rate) == (4, None)
    assert (p.input_tokens, p.output_tokens) == (550.0, 128.0)
    assert p.num_requests is None
    assert p.ttft_mean_s == approx(0.080)
    assert p.tpot_mean_s == approx(0.015)
    assert p.e2e_mean_s == approx(1.985)
    assert p.requests_per_s == approx(2.0151)
    assert p.percentiles["ttft_p25_s"] == approx(0.0752)
    assert "ttft_p1_s" not in p.percentiles  # genai-perf reports p25 and up


def test_genai_perf_nested_input_config():
    p = one("profile_export_genai_perf_nested.json")
    assert p.source_format == "genai-perf"
    assert p.model == "Qwen/Qwen3-8B"
    assert p.engine is None  # service_kind openai: endpoint.backend's default does not name it
    assert (p.concurrency, p.request_rate) == (None, 2.0)
    assert (p.input_tokens, p.output_tokens) == (1000.0, 256.0)
    assert p.ttft_mean_s == approx(0.060)
    assert p.tpot_mean_s == approx(0.010)
    assert p.e2e_mean_s == approx(2.610)


# --------------------------------------------------------------------------- guidellm


def test_guidellm_report_gives_one_point_per_benchmark():
    single, eight = read_results(FIXTURES / "guidellm_benchmarks.json")
    assert single.id == "guidellm_benchmarks.json:benchmarks[0]"
    assert (single.source_format, single.model) == ("guidellm", "meta-llama/Llama-3.1-8B-Instruct")
    assert (single.concurrency, eight.concurrency) == (1, 8)
    assert single.request_rate is None
    assert (single.num_requests, eight.num_requests) == (57, 330)
    assert (single.input_tokens, single.output_tokens) == (256.0, 128.0)
    assert single.ttft_mean_s == approx(0.030)
    assert single.tpot_mean_s == approx(0.008)  # inter_token_latency_ms, not time_per_output_token_ms
    assert single.itl_mean_s is None
    assert single.e2e_mean_s == approx(1.046)  # request_latency is already in seconds
    assert eight.e2e_mean_s == approx(0.055 + 0.011 * 127)
    assert eight.requests_per_s == approx(5.5096)
    assert eight.output_tokens_per_s == approx(705.229)
    assert eight.percentiles["ttft_p99.9_s"] == approx(0.055 * 1.40)  # p999
    assert eight.percentiles["ttft_p0.1_s"] == approx(0.055 * 0.80)  # p001
    assert eight.percentiles["tpot_p99_s"] == approx(0.011 * 1.25)
    assert eight.percentiles["e2e_p50_s"] == approx(1.4375)


def test_guidellm_03_layout():
    p = one("guidellm_v03_benchmarks.json")
    assert p.model is None  # that report has no top-level args
    assert (p.concurrency, p.request_rate) == (None, 3.0)  # args.strategy, a constant rate
    assert p.num_requests == 120  # request_totals beside metrics
    assert (p.input_tokens, p.output_tokens) == (512.0, 64.0)
    assert p.ttft_mean_s == approx(0.040)
    assert p.tpot_mean_s == approx(0.009)
    assert p.e2e_mean_s == approx(0.607)
    assert p.percentiles["tpot_p50_s"] == approx(0.00891)  # no p50: the median, 8.91 ms


@pytest.mark.parametrize(
    ("strategy", "concurrency", "rate"),
    [
        ({"type_": "synchronous"}, 1, None),
        ({"type_": "throughput", "max_concurrency": 64}, 64, math.inf),
        ({"type_": "poisson", "rate": 7.5}, None, 7.5),
    ],
)
def test_guidellm_strategies(tmp_path, strategy, concurrency, rate):
    doc = load("guidellm_benchmarks.json")
    doc["benchmarks"] = doc["benchmarks"][:1]
    doc["benchmarks"][0]["config"]["strategy"] = strategy
    (p,) = read_results(write_json(tmp_path, doc))
    assert (p.concurrency, p.request_rate) == (concurrency, rate)


# --------------------------------------------------------------------------- served-runs CSV


def test_served_csv_rows():
    points = {p.id: p for p in read_results(FIXTURES / "served_runs.csv")}
    assert len(points) == 5

    vllm = points["minimaxm2_5_b200_vllm_fp8_agg_1024x1024_c256_cfg691"]
    assert vllm.source_format == "served-csv"
    assert (vllm.model, vllm.gpu, vllm.engine, vllm.engine_version) == (
        "MiniMaxAI/MiniMax-M2.5",
        "b200_sxm",
        "vllm",
        "0.19.0",
    )
    assert (vllm.tp, vllm.pp, vllm.attention_dp, vllm.moe_tp, vllm.moe_ep) == (4, 1, 4, 1, 16)
    assert (vllm.precision, vllm.mode, vllm.disagg) == ("fp8", "agg", None)
    assert vllm.concurrency == 256 and isinstance(vllm.concurrency, int)
    # an InferenceX row (a db-dump with a workflow_run_id): isl/osl 1024 are the upper ends of
    # lengths uniform over [int(0.8 x 1024), 1024] = [819, 1024], 10 requests per client
    assert (vllm.input_tokens, vllm.output_tokens) == (921.5, 921.5)
    assert vllm.input_spread == vllm.output_spread == approx(205 / 1843)
    assert vllm.num_requests == 2560
    assert vllm.ttft_mean_s == approx(0.3880431298702206)
    assert vllm.tpot_mean_s == approx(0.023670495370491842)
    assert (vllm.e2e_mean_s, vllm.percentiles) == (None, {})

    disagg = points["dsr1_b200_trtllm_fp8_disagg_8192x1024_c128_cfg666"]
    assert (disagg.engine, disagg.mode, disagg.concurrency, disagg.tp) == ("trtllm", "disagg", 128, None)
    assert disagg.disagg["decode_batch_size"] == 16
    assert disagg.disagg["prefill_attention_dp_size"] == 8
    assert disagg.disagg["decode_moe_ep_size"] == 8
    assert len(disagg.disagg) == 14

    # No silicon_concurrency=: batch_size x attention_dp_size (empty, so 1) = 64 x 1.
    fallback = points["qwen3_32b_qwen3_32b_h100_sxm_trtllm_agg_4000x1000_c_tp2_epnone_1"]
    assert (fallback.concurrency, fallback.attention_dp, fallback.moe_ep) == (64, None, 0)
    assert fallback.gpu == "h100_sxm"
    # not InferenceX's: the nominal lengths, their spread and the request count unknown
    assert (fallback.input_tokens, fallback.output_tokens) == (4000.0, 1000.0)
    assert (fallback.input_spread, fallback.output_spread, fallback.num_requests) == (None, None, None)
    # Neither silicon_concurrency= nor batch_size: unknown.
    assert (
        points["qwen3_32b_qwen3_32b_h100_sxm_sglang_disagg_4000x1000_c_tpnone_epnone_1"].concurrency is None
    )


@pytest.mark.parametrize(
    "source, inferencex",
    [
        ("source_file=2026-04-06.csv; model=GPT-OSS-120B; silicon_concurrency=8; wip=False", True),
        ("db-dump/2026-04-27; config_id=7; silicon_concurrency=8; workflow_run_id=799", True),
        ("db-dump/2026-04-27; config_id=7; silicon_concurrency=8", False),
        ("source_file=/Users/x/aic-auto-gap-analysis/data/h100_sxm/vllm/0.12.0/Qwen.csv", False),
        ("source_file=2026-04-06.csv.bak", False),
    ],
)
def test_inferencex_rows_are_told_by_their_source(source, inferencex):
    assert inferencex_source(source) is inferencex


def test_a_served_row_on_its_own_is_named_by_its_id():
    row = {"id": "run-7", "isl": "1024", "osl": "x", "silicon_ttft_ms": "10", "silicon_tpot_ms": "2"}
    with pytest.raises(CapcalcError, match=r"^runs\.csv: run-7: osl: expected a number"):
        benchresults.served_csv_run(row, "runs.csv")


def test_uniform_lengths_by_hand():
    """[int(0.8 x 8192), 8192] = [6553, 8192]: mean 7372.5, half-width 819.5 / 7372.5."""
    assert uniform_lengths(8192, 0.8) == (7372.5, approx(1639 / 14745))
    assert uniform_lengths(100, 1.0) == (100.0, 0.0)


def test_vllm_detailed_result_gives_the_spread_of_lengths(tmp_path):
    """``--save-detailed`` lists each request's lengths: prompts 900..1100, outputs all 128."""
    doc = load("vllm_bench_serve.json") | {
        "input_lens": [900, 1000, 1100, 1000] * 50,
        "output_lens": [128] * 200,
    }
    (p,) = read_results(write_json(tmp_path, doc))
    assert p.input_spread == approx(200 / 2000)
    assert p.output_spread == 0.0
    assert one("vllm_bench_serve.json").input_spread is None


def test_served_csv_concurrency_falls_back_to_batch_times_attention_dp(tmp_path):
    text = (FIXTURES / "served_runs.csv").read_text().replace("silicon_concurrency=256; ", "")
    path = tmp_path / "runs.csv"
    path.write_text(text)
    p = read_results(path)[0]
    assert p.id == "minimaxm2_5_b200_vllm_fp8_agg_1024x1024_c256_cfg691"
    assert p.concurrency == 64 * 4  # batch_size x attention_dp_size


def test_served_csv_reads_the_whole_validation_file():
    path = Path("/work/shared/validation/served_dev.csv")
    if not path.is_file():
        pytest.skip("the shared validation file is not here")
    points = read_results(path)
    assert len(points) == 2720
    assert {p.engine for p in points} == {"vllm", "sglang", "trtllm"}


# --------------------------------------------------------------------------- detection, read_many

EXPECTED_FORMATS = {
    "vllm_bench_serve.json": "vllm-bench-serve",
    "vllm_bench_serve_append.json": "vllm-bench-serve",
    "profile_export_aiperf.json": "aiperf",
    "profile_export_genai_perf.json": "genai-perf",
    "profile_export_genai_perf_nested.json": "genai-perf",
    "guidellm_benchmarks.json": "guidellm",
    "guidellm_v03_benchmarks.json": "guidellm",
    "served_runs.csv": "served-csv",
}


def test_every_fixture_is_listed():
    on_disk = {p.name for p in FIXTURES.iterdir() if p.name != "README.md"}
    assert on_disk == set(EXPECTED_FORMATS)


@pytest.mark.parametrize(("name", "fmt"), sorted(EXPECTED_FORMATS.items()))
def test_format_is_told_by_content_not_name(tmp_path, name, fmt):
    misleading = tmp_path / ("results.csv" if name.endswith(".json") else "results.json")
    shutil.copy(FIXTURES / name, misleading)
    points = read_results(misleading)
    assert points and {p.source_format for p in points} == {fmt}
    assert all(p.source_path == str(misleading) for p in points)


def test_read_many_keeps_order():
    names = ["served_runs.csv", "vllm_bench_serve.json", "guidellm_benchmarks.json"]
    points = read_many(FIXTURES / n for n in names)
    assert [p.source_format for p in points] == ["served-csv"] * 5 + ["vllm-bench-serve"] + ["guidellm"] * 2


def test_points_are_frozen_and_hashable():
    p = one("vllm_bench_serve.json")
    with pytest.raises(AttributeError):
        p.ttft_mean_s = 1.0  # type: ignore[misc]
    assert hash(p) == hash(one("vllm_bench_serve.json"))


def test_a_utf8_bom_is_ignored(tmp_path):
    path = tmp_path / "runs.csv"
    path.write_bytes(b"\xef\xbb\xbf" + (FIXTURES / "served_runs.csv").read_bytes())
    assert len(read_results(path)) == 5


# --------------------------------------------------------------------------- bad files


def test_unknown_json_format(tmp_path):
    message = error_of(write_json(tmp_path, {"hello": "world"}))
    assert "unknown format" in message


def test_unknown_text_format(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("ttft was fast\n")
    assert "unknown format" in error_of(path)


def test_missing_ttft_vllm(tmp_path):
    doc = load("vllm_bench_serve.json")
    del doc["mean_ttft_ms"]
    doc.pop("median_ttft_ms")
    message = error_of(write_json(tmp_path, doc))
    assert "mean_ttft_ms" in message and "missing" in message


def test_missing_ttft_aiperf(tmp_path):
    doc = load("profile_export_aiperf.json")
    del doc["time_to_first_token"]
    message = error_of(write_json(tmp_path, doc))
    assert "time_to_first_token" in message and "missing" in message


def test_missing_ttft_guidellm(tmp_path):
    doc = load("guidellm_benchmarks.json")
    del doc["benchmarks"][1]["metrics"]["time_to_first_token_ms"]
    message = error_of(write_json(tmp_path, doc))
    assert "benchmarks[1].metrics.time_to_first_token_ms" in message


def test_missing_lengths_vllm(tmp_path):
    doc = load("vllm_bench_serve.json")
    del doc["total_output_tokens"]
    assert "total_output_tokens" in error_of(write_json(tmp_path, doc))


def test_missing_ttft_cell_csv(tmp_path):
    lines = (FIXTURES / "served_runs.csv").read_text().splitlines()
    head, cells = lines[0], lines[2].split(",")
    cells[head.split(",").index("silicon_ttft_ms")] = ""
    path = tmp_path / "runs.csv"
    path.write_text("\n".join([head, ",".join(cells)]) + "\n")
    message = error_of(path)
    assert "line 2" in message and "silicon_ttft_ms" in message and "missing" in message


def test_nan_json(tmp_path):
    doc = load("vllm_bench_serve.json") | {"mean_tpot_ms": float("nan")}
    path = write_json(tmp_path, doc)  # json.dumps writes NaN, as Python's json.dump would
    assert "NaN" in path.read_text()
    message = error_of(path)
    assert "mean_tpot_ms" in message and "not a finite number" in message


def test_infinite_latency_json(tmp_path):
    doc = load("profile_export_aiperf.json")
    doc["inter_token_latency"]["avg"] = float("inf")
    assert "not a finite number" in error_of(write_json(tmp_path, doc))


def test_nan_csv(tmp_path):
    text = (FIXTURES / "served_runs.csv").read_text().replace("23.670495370491842", "nan")
    path = tmp_path / "runs.csv"
    path.write_text(text)
    message = error_of(path)
    assert "silicon_tpot_ms" in message and "not a finite number" in message


def test_negative(tmp_path):
    doc = load("profile_export_aiperf.json")
    doc["time_to_first_token"]["avg"] = -45.0
    message = error_of(write_json(tmp_path, doc))
    assert "time_to_first_token.avg" in message and "negative" in message


def test_zero_completed_vllm(tmp_path):
    doc = load("vllm_bench_serve.json") | {"completed": 0}
    assert "completed" in error_of(write_json(tmp_path, doc))


def test_wrong_type(tmp_path):
    doc = load("vllm_bench_serve.json") | {"mean_ttft_ms": "fast"}
    message = error_of(write_json(tmp_path, doc))
    assert "mean_ttft_ms" in message and "expected a number" in message


def test_latency_without_a_time_unit(tmp_path):
    doc = load("profile_export_aiperf.json")
    del doc["time_to_first_token"]["unit"]
    message = error_of(write_json(tmp_path, doc))
    assert "time_to_first_token.unit" in message


def test_latency_with_a_count_unit(tmp_path):
    doc = load("profile_export_aiperf.json")
    doc["inter_token_latency"]["unit"] = "tokens"
    assert "inter_token_latency.unit" in error_of(write_json(tmp_path, doc))


def test_bad_json(tmp_path):
    path = tmp_path / "result.json"
    path.write_text('{"mean_ttft_ms": 150.0, "completed": ')
    message = error_of(path)
    assert "invalid JSON at line 1" in message


def test_bad_json_line_in_append_file(tmp_path):
    lines = (FIXTURES / "vllm_bench_serve_append.json").read_text().splitlines()
    path = tmp_path / "result.json"
    path.write_text(lines[0] + "\n" + lines[1][:40] + "\n")
    assert "invalid JSON at line 2" in error_of(path)


def test_several_json_values_that_are_not_vllm(tmp_path):
    path = tmp_path / "result.json"
    path.write_text('{"a": 1}\n{"b": 2}\n')
    assert "not all vllm bench serve results" in error_of(path)


def test_directory(tmp_path):
    assert "a directory" in error_of(tmp_path)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_fifo_is_not_opened(tmp_path):
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    assert "not a regular file" in error_of(fifo)


def test_missing_file(tmp_path):
    assert "no such file" in error_of(tmp_path / "nope.json")


@pytest.mark.parametrize("content", ["", "\n  \n"])
def test_empty_file(tmp_path, content):
    path = tmp_path / "result.json"
    path.write_text(content)
    assert "empty file" in error_of(path)


def test_empty_guidellm_report(tmp_path):
    assert "benchmarks" in error_of(write_json(tmp_path, {"benchmarks": []}))


def test_csv_header_only(tmp_path):
    path = tmp_path / "runs.csv"
    path.write_text((FIXTURES / "served_runs.csv").read_text().splitlines()[0] + "\n")
    assert "no data rows" in error_of(path)


def test_csv_unknown_engine(tmp_path):
    text = (FIXTURES / "served_runs.csv").read_text().replace(",vllm,0.19.0,", ",tgi,0.19.0,")
    path = tmp_path / "runs.csv"
    path.write_text(text)
    message = error_of(path)
    assert "backend" in message and "'tgi'" in message


def test_over_the_size_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(benchresults, "MAX_BYTES", 100)
    message = error_of(FIXTURES / "vllm_bench_serve.json")
    assert "limit" in message


def test_not_utf8(tmp_path):
    path = tmp_path / "result.json"
    path.write_bytes(b'{"model_id": "\xff\xfe"}')
    assert "not UTF-8" in error_of(path)


def test_deep_nesting(tmp_path):
    path = tmp_path / "result.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    message = error_of(path)
    assert "nested too deeply" in message or "unknown format" in message


def test_long_values_are_cut_short(tmp_path):
    doc = load("vllm_bench_serve.json") | {"mean_ttft_ms": "x" * 5000}
    message = error_of(write_json(tmp_path, doc))
    assert "x" * 200 not in message
    assert "..." in message
    assert len(message) < len(str(tmp_path)) + 200


def _sglang_row(
    model="deepseek-ai/DeepSeek-R1", system="b200_sxm", precision="fp8", tp="8", conc=64, source=None
):
    source = source or f"db-dump/2026-04-27; config_id=7; silicon_concurrency={conc}; workflow_run_id=799"
    return {
        "id": "r", "silicon_data_source": source, "backend": "sglang", "model_path": model, "system": system,
        "precision": precision, "mode": "agg", "isl": "1024", "osl": "1024", "tp_size": tp,
        "silicon_ttft_ms": "500", "silicon_tpot_ms": "20",
    }  # fmt: skip


@pytest.mark.parametrize(
    "changes, interval",
    [
        ({}, 30),  # dsr1_fp8_b200.sh, tp 8: 30 from CONC 16
        ({"conc": 8}, 10),  # ... below it
        ({"tp": "4", "conc": 64}, 10),  # tp 4: always 10
        ({"precision": "fp4", "conc": 16}, 30),  # dsr1_fp4_b200.sh
        ({"model": "Qwen/Qwen3.5-397B-A17B", "precision": "", "conc": 4}, 10),  # bf16 below 16
        ({"model": "Qwen/Qwen3.5-397B-A17B", "precision": "fp4", "conc": 8}, 30),  # fp4: from CONC 5
        ({"model": "zhipuai/GLM-5", "precision": "fp4"}, 10),  # glm5_fp4_b200.sh: always 10
        ({"model": "zhipuai/GLM-5", "precision": "fp8"}, 1),  # glm5_fp8_b200.sh sets none
        ({"system": "h100_sxm"}, None),  # no launcher read for other GPUs
        ({"model": "Qwen/Qwen3-32B"}, None),  # nor for other models
        (
            {"source": "source_file=/x/aic/sglang/0.5.9/DeepSeek.csv; silicon_concurrency=64"},
            None,
        ),  # not InferenceX
    ],
)
def test_inferencex_sglang_rows_carry_their_launchers_recv_interval(changes, interval):
    """InferenceX's SGLang launchers (capcalc.sources.launchers names each file and commit)
    start the server with --scheduler-recv-interval, which the row does not say."""
    settings = benchresults.served_csv_run(_sglang_row(**changes)).engine_settings
    assert settings == ({} if interval is None else {"recv_interval": interval})


@pytest.mark.parametrize(
    "changes, settings",
    [
        # 70b_fp8_b200_trt_slurm.sh: 1024/1024 below tp 8 waits 20 steps or 0.9 of 16,384 tokens
        ({"model": "meta-llama/Llama-3.1-70B", "tp": "2", "conc": 4},
         {"batch_wait_iters": 20, "batch_wait_max_tokens_ratio": 0.9, "max_num_batched_tokens": 16384}),
        ({"model": "meta-llama/Llama-3.1-70B", "precision": "fp4", "tp": "1"},
         {"batch_wait_iters": 20, "batch_wait_max_tokens_ratio": 0.9}),
        ({"model": "meta-llama/Llama-3.1-70B", "tp": "8"}, {}),  # tp 8: no waiting
        ({"conc": 64}, {"batch_wait_iters": 40, "batch_wait_max_tokens_ratio": 0.8}),  # dsr1_fp8_b200_trt.sh
        ({"conc": 32}, {}),  # below CONC 64
        ({"conc": 256}, {}),  # the launcher versions disagree from 256
        ({"precision": "fp4", "conc": 64}, {}),  # dsr1_fp4_b200_trt.sh sets none
    ],
)  # fmt: skip
def test_inferencex_trtllm_rows_carry_their_launchers_batch_waiting(changes, settings):
    row = _sglang_row(**changes) | {"backend": "trtllm"}
    assert benchresults.served_csv_run(row).engine_settings == settings
    longer = row | {"osl": "8192"}  # only 1024/1024 waits
    assert benchresults.served_csv_run(longer).engine_settings == {}


def test_inferencex_trtllm_gpt_oss_rows_carry_their_launchers_limits():
    """gptoss_fp4_b200_trt*.sh: --max_num_tokens 20000, --max_batch_size 512,
    free_gpu_memory_fraction 0.85 at every length; no batch waiting."""
    limits = {"max_num_batched_tokens": 20000, "max_num_seqs": 512, "kv_free_memory_fraction": 0.85}
    row = _sglang_row(model="openai/gpt-oss-120b", precision="fp4", conc=64) | {"backend": "trtllm"}
    assert benchresults.served_csv_run(row).engine_settings == limits
    assert benchresults.served_csv_run(row | {"isl": "8192"}).engine_settings == limits
    assert benchresults.served_csv_run(row | {"system": "h100_sxm"}).engine_settings == {}


def test_vllm_rows_get_no_launcher_settings():
    row = _sglang_row() | {"backend": "vllm"}
    assert benchresults.served_csv_run(row).engine_settings == {}

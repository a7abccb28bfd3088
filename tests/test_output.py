"""The output contract: JSON, JSONL and CSV carry the same keys, stdout carries only data."""

from __future__ import annotations

import csv
import io
import json

import pytest

from capcalc.report.output import SCHEMA_VERSION


def test_kv_formats_agree(cli):
    args = ("kv", "llama-3-70b", "--ctx", "8192", "--batch", "4", "--tp", "2")
    as_json = cli(*args, "--json")
    as_jsonl = cli(*args, "--jsonl")
    as_csv = cli(*args, "--csv")
    for r in (as_json, as_jsonl, as_csv):
        assert r.code == 0 and r.err == ""
    record = json.loads(as_json.out)
    lines = as_jsonl.out.splitlines()
    assert len(lines) == 1
    line_record = json.loads(lines[0])
    rows = list(csv.DictReader(io.StringIO(as_csv.out)))
    assert len(rows) == 1
    assert list(record) == list(line_record) == list(rows[0])
    assert record == line_record
    assert record["schema_version"] == SCHEMA_VERSION
    for key in (
        "model",
        "ctx",
        "batch",
        "kv_dtype",
        "tp",
        "kv_bytes_per_token",
        "kv_bytes_per_sequence",
        "kv_bytes_total",
        "kv_bytes_per_gpu",
        "full_layers",
        "sliding_layers",
        "mla_layers",
    ):
        assert key in record
    assert int(rows[0]["kv_bytes_total"]) == record["kv_bytes_total"] == 4 * 2_684_354_560


@pytest.mark.parametrize("command", [["models"], ["gpus"]])
def test_listings_are_arrays_and_rows(cli, command):
    records = cli(*command, "--json").json()
    assert isinstance(records, list) and len(records) > 20
    jsonl = cli(*command, "--jsonl").out.splitlines()
    assert len(jsonl) == len(records)
    rows = list(csv.DictReader(io.StringIO(cli(*command, "--csv").out)))
    assert len(rows) == len(records)
    assert all(r["schema_version"] == SCHEMA_VERSION for r in records)


def test_show_model_and_gpu_records(cli):
    model = cli("show", "llama-3-8b", "--json").json()
    assert model["params_total"] == 8_030_261_248
    assert model["kv_bytes_per_token"] == 131_072
    assert "params_active" in model and model["weight_bytes_bf16"] == 2 * 8_030_261_248
    gpu = cli("show", "h100-sxm", "--json").json()
    for key in ("memory_bytes", "bandwidth_bytes_per_s", "peak_flops_per_s_bf16", "peak_flops_per_s_fp8"):
        assert gpu[key] > 0
    assert gpu["memory_gib"] == pytest.approx(gpu["memory_bytes"] / 2**30)


def test_seed_a100_ridge_point(cli):
    gpu = cli("show", "a100-seed", "--json").json()
    # seed §0.10: 312e12 / 2e12 = 156 FLOP/byte
    assert gpu["ridge_point_bf16_flop_per_byte"] == pytest.approx(156)


def test_two_formats_at_once_is_a_usage_error(cli):
    r = cli("kv", "llama-3-8b", "--json", "--csv")
    assert r.code == 2 and r.out == ""
    assert r.err.strip() == "capcalc: error: choose one output format, not --json and --csv"


def test_table_labels_units(cli):
    r = cli("kv", "llama-3-70b", "--ctx", "8192")
    assert r.code == 0
    assert "2.68 GB (2.50 GiB)" in r.out


def test_fractions_are_not_formatted_as_their_unit():
    from capcalc.report.output import humanize

    # "efficiency_prefill_flops_efficiency" names FLOPs but is a fraction of them
    assert humanize("efficiency_prefill_flops_efficiency", 0.65) == "0.6500"
    assert humanize("prefill_flops", 2e12) == "2.00 TFLOP"


def test_show_gpu_lists_its_latency_efficiencies(cli):
    rec = cli("show", "h100-sxm", "--json").json()
    # the h100-sxm profile's efficiency block (only its prefill fraction differs from the
    # NVIDIA default), and the vendor default where it is silent
    assert rec["efficiency_weight_bandwidth_efficiency"] == 0.8
    assert rec["efficiency_prefill_flops_efficiency"] == 0.65
    assert rec["efficiency_prefill_flops_efficiency_from"] == "profile"
    assert rec["efficiency_weight_bandwidth_efficiency_from"] == "default"
    assert rec["efficiency_moe_token_overhead_s"] == 0
    assert rec["efficiency_moe_token_overhead_s_from"] == "default"

"""`capcalc plan` on the serving model: the largest load meeting the SLOs, replicas, cost.

Most cases: Llama-3-8B on one H100-SXM (tp=1), 1000 prompt tokens and 200 output tokens per
request, vLLM. What a replica does at C closed-loop clients is the serving model's answer,
:func:`capcalc.serving.engine.predict_serving`, called here the way docs/serving.md shows
(``served`` below: the engine's own KV sizing, defaults and efficiencies), independently of
the plan's own calls, so that it is an oracle the plan can disagree with.

    capcalc fit llama-3-8b --gpu h100-sxm --ctx 1200
        num_blocks 26349, blocks_per_request 75 -> max_concurrency 351.3, max_num_seqs 1024

Until the plan moved onto the serving model, these tests pinned the old model's numbers (a
replica at batch b, itl = step(b) / (1 - f), TTFT = one prompt's prefill, capacity from a
quadratic in the load). Those numbers are gone with that model; each test below says what
replaced its pin.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capcalc.perf.efficiency import resolve_efficiency
from capcalc.perf.latency import predict_latency
from capcalc.schema.deployment import Deployment
from capcalc.serving.engine import Replica, Workload, predict_serving
from capcalc.serving.engines import FIXED_COSTS, engine_defaults, engine_efficiency
from capcalc.serving.plan import (
    Candidate,
    SLOs,
    Traffic,
    bracket,
    parse_slo,
    plan,
    plan_candidate,
    slo_value,
)

BASE = ("plan", "llama-3-8b", "--gpu", "h100-sxm", "--tp", "1", "--prompt", "1000", "--output", "200")


def one_plan(cli, *args) -> dict:
    r = cli(*BASE, *args, "--json")
    assert r.code == 0, r.err
    (rec,) = r.json()
    assert rec["feasible"], rec["rejected_because"]
    return rec


def served(
    registry, concurrency, model="llama-3-8b", gpu="h100-sxm", tp=1, prompt=1000, output=200, engine="vllm"
):
    """The serving model at ``concurrency`` clients, as docs/serving.md calls it."""
    m, g = registry.model(model), registry.gpu(gpu)
    replica = Replica(m, g, tp=tp)
    eff = engine_efficiency(engine, resolve_efficiency(g).efficiency, "bf16")
    return predict_serving(
        replica, Workload(prompt, output, concurrency=concurrency), engine_defaults(engine, g), eff
    )


def assert_operating_point(rec: dict, registry=None) -> None:
    """What every feasible plan satisfies: the replicas are the fewest that carry the load at
    the replica's capacity, the operating point carries its share, the SLOs hold there, and
    KV in use fits."""
    lam = rec["requests_per_s"] / rec["replicas"]
    assert rec["requests_per_s_per_replica"] == pytest.approx(lam)
    assert rec["replicas"] == math.ceil(rec["requests_per_s"] / rec["max_requests_per_s_per_replica"] - 1e-9)
    assert rec["gpus"] == rec["replicas"] * rec["tp"]
    assert rec["served_requests_per_s_per_replica"] >= lam * (1 - 1e-9)
    assert rec["concurrency_per_replica"] == rec["batch_per_replica"] <= rec["batch_at_max_load"]
    assert rec["batch_at_max_load"] <= min(rec["kv_capacity_requests"], rec["max_num_seqs"])
    assert rec["kv_bytes_used_per_gpu"] <= rec["kv_cache_bytes_per_gpu"]
    for key in ("ttft", "itl", "tpot", "e2e"):
        if rec[f"{key}_slo_s"] is not None:
            stat = rec[f"{key}_slo_stat"]
            value = rec[f"{key}_s"] if stat == "mean" else rec[f"{key}_{stat}_s"]
            assert value <= rec[f"{key}_slo_s"]
    assert rec["ttft_p50_s"] <= rec["ttft_p90_s"] <= rec["ttft_p99_s"]
    assert rec["e2e_s"] > rec["ttft_s"]
    if registry is not None and rec["batch_per_replica"] > 1:  # the operating point is the fewest clients
        below = served(registry, rec["batch_per_replica"] - 1, rec["model"], rec["gpu"], rec["tp"],
                       rec["prompt_tokens"], rec["output_tokens"], rec["engine"])  # fmt: skip
        assert (rec["batch_per_replica"] - 1) / below.e2e_s < lam


# --------------------------------------------------------------------------- SLO statistics


@pytest.mark.parametrize(
    "text, expected",
    [
        ("500ms", (0.5, "mean")),
        ("p90:500ms", (0.5, "p90")),
        (" P99 : 2s ", (2.0, "p99")),
        ("mean:1.5s", (1.5, "mean")),
        ("p50:250 ms", (0.25, "p50")),
        (0.25, (0.25, "mean")),  # a number of seconds, through the library
    ],
)
def test_slo_statistics_parse(text, expected):
    assert parse_slo(text, "ttft_s") == expected


def test_a_percentile_slo_reaches_the_records_and_the_table(cli):
    rec = one_plan(cli, "--rps", "20", "--ttft-slo", "p90:1s", "--tpot-slo", "p99:40ms")
    assert (rec["ttft_slo_s"], rec["ttft_slo_stat"]) == (1.0, "p90")
    assert (rec["tpot_slo_s"], rec["tpot_slo_stat"]) == (0.040, "p99")
    assert rec["itl_slo_stat"] is None and rec["itl_slo_s"] is None
    assert rec["ttft_p90_s"] <= 1.0 and rec["tpot_p99_s"] <= 0.040
    table = cli(*BASE, "--rps", "20", "--ttft-slo", "p90:1s", "--tpot-slo", "p99:40ms").out
    assert "TTFT p90 ≤ 1.00 s, TPOT p99 ≤ 40.0 ms" in table  # the title
    assert "TTFT p90" in table.split("Candidates")[1]  # the column shows the statistic the SLO binds


def test_sglangs_poll_interval_reaches_the_plan(cli):
    """3 requests/s on one replica: SGLang polling every 30 decode steps gives a longer TTFT
    than polling every step; vLLM has no such knob (one line). 2,000-token outputs, so that
    the clients of a wave finish further apart than SGLang's 200 ms frontend cost and new
    requests arrive while decodes run (an idle scheduler polls at once)."""
    long = ("--output", "2000", "--rps", "3", "--engine", "sglang")
    plain = one_plan(cli, *long)
    polled = one_plan(cli, *long, "--scheduler-recv-interval", "30")
    assert polled["ttft_s"] > plain["ttft_s"] and polled["recv_interval"] == 30
    got = cli(*BASE, "--rps", "3", "--scheduler-recv-interval", "30")
    assert got.code == 2 and "--scheduler-recv-interval is SGLang's alone" in got.err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--ttft-slo", "p95:1s"], "--ttft-slo 'p95:1s': the serving model gives the mean, p50, p90, p99; "
         "expected e.g. p90:500ms or 500ms (the mean)"),
        (["--ttft-slo", "p90:"], "--ttft-slo 'p90:': no time after 'p90:'"),
        (["--ttft-slo", "p90"], "--ttft-slo 'p90': expected STAT:TIME, e.g. p90:500ms"),
        (["--tpot-slo", "p99:0ms"], "--tpot-slo must be positive, got 0 s"),
        (["--e2e-slo", "mean:-1s"], "--e2e-slo must be positive, got -1 s"),
        (["--ttft-slo", "p90:fast"], "cannot read --ttft-slo 'fast': expected a number with an optional unit"),
        (["--engine", "vlm"], "--engine 'vlm' is not known: expected one of vllm, sglang, trtllm"),
    ],
)  # fmt: skip
def test_bad_slos_are_one_line(cli, args, message):
    r = cli(*BASE, "--rps", "1", *args)
    assert r.code == 2 and r.out == ""
    assert r.err.strip() == f"capcalc: error: {message}"


# --------------------------------------------------------------------------- the largest load


@pytest.mark.parametrize(
    "slo, key, stat, target",
    [
        (["--ttft-slo", "p90:1s"], "ttft", "p90", 1.0),
        (["--itl-slo", "30ms"], "itl", "mean", 0.030),
        (["--tpot-slo", "p99:25ms"], "tpot", "p99", 0.025),
        (["--e2e-slo", "p50:5s"], "e2e", "p50", 5.0),
    ],
)
def test_the_chosen_load_is_the_largest_meeting_the_slo(cli, registry, slo, key, stat, target):
    rec = one_plan(cli, "--rps", "100", *slo)
    c = rec["batch_at_max_load"]
    assert rec["binding_constraint"] == key.upper()
    assert rec["binding_slo"] == (key.upper() if stat == "mean" else f"{key.upper()} {stat}")
    at, beyond = served(registry, c), served(registry, c + 1)
    assert slo_value(at, key, stat) <= target < slo_value(beyond, key, stat)  # holds at C, breaks at C + 1
    assert rec["max_requests_per_s_per_replica"] == pytest.approx(c / at.e2e_s)  # Little's law
    assert_operating_point(rec, registry)


def test_memory_bound_plan_by_hand(cli, registry):
    # Was: lam(351) = 24.92 req/s from the old quadratic, 5 replicas. Now the replica's capacity is
    # the serving model's requests/s at the KV limit, and the count follows from it by hand.
    rec = one_plan(cli, "--rps", "100", "--price", "h100-sxm=2.50")
    # fit at max_model_len = 1000 + 200: 26349 blocks // 75 blocks per request = 351.3 -> 351 requests;
    # the simulation's cache, 26349 x 16 = 421,584 tokens, holds 421,584 // 1200 = 351 too
    assert rec["kv_capacity_requests"] == 351 and rec["kv_capacity_tokens"] == 26349 * 16
    assert rec["batch_at_max_load"] == 351 and rec["binding_constraint"] in ("memory", "compute")
    x = 351 / served(registry, 351).e2e_s  # 351 clients, each always inside a request (Little's law)
    assert rec["max_requests_per_s_per_replica"] == pytest.approx(x)
    assert rec["replicas"] == math.ceil(100 / x) == rec["gpus"]
    # cost: GPUs x $2.50 an hour; 100 req/s x 200 tokens x 3600 s = 72 M output tokens an hour
    assert rec["cost_usd_per_hour"] == pytest.approx(2.50 * rec["gpus"])
    assert rec["cost_usd_per_million_output_tokens"] == pytest.approx(2.50 * rec["gpus"] / 72)
    # KV in use at the operating point, each request 75 blocks x 16 tokens x 131,072 B/token
    # (32 layers x 2 x 8 KV heads x 128 x 2 B)
    assert rec["kv_bytes_used_per_gpu"] == rec["batch_per_replica"] * 75 * 16 * 131072
    assert_operating_point(rec, registry)


def test_one_request_at_a_time_by_hand(cli, registry):
    # Was: a trickle matched `latency --batch 1`, ITL stretched by 1 / (1 - 0.01 t_p). Now: at 0.01
    # req/s one client suffices, and one request alone is the batch-1 step model at the engine's
    # efficiencies plus vLLM's frontend cost (capcalc.serving.engines.FIXED_COSTS, fitted on served
    # runs: docs/latency.md).
    rec = one_plan(cli, "--rps", "0.01")
    assert rec["replicas"] == 1 and rec["batch_per_replica"] == 1
    g = registry.gpu("h100-sxm")
    eff = engine_efficiency("vllm", resolve_efficiency(g).efficiency, "bf16")
    one = predict_latency(registry.model("llama-3-8b"), g, 1000, 200, batch=1, efficiency=eff)
    frontend = FIXED_COSTS["vllm"]["frontend_s"]
    assert rec["frontend_s"] == frontend > 0
    assert rec["ttft_s"] == pytest.approx(one.ttft_s + frontend, rel=1e-6)
    # vLLM's default spreads output lengths evenly over 200 x (1 +- 0.15) around the mean (the
    # lengths are whole tokens), so TPOT and E2E are the batch-1 ones to the rounding of the lengths
    assert rec["tpot_s"] == pytest.approx(one.itl_s, rel=2e-3)
    assert rec["e2e_s"] == pytest.approx(one.ttft_s + 199 * one.itl_s + frontend, rel=0.02)
    assert rec["ttft_p99_s"] == pytest.approx(rec["ttft_s"])  # alone, every prompt is the same
    assert rec["prefill_s"] == pytest.approx(one.ttft_s, rel=1e-6)
    # one client sends its next request as the last ends: exactly 1 / e2e requests/s
    assert rec["served_requests_per_s_per_replica"] * rec["e2e_s"] == pytest.approx(1.0)


def test_littles_law_in_the_plan_output(cli, registry):
    # C clients, each always inside a request: a replica serves C / mean e2e requests/s, at the
    # operating point and at the largest load, with the e2e the serving model gives there
    for args in (["--rps", "40"], ["--rps", "100", "--ttft-slo", "p90:1s"]):
        rec = one_plan(cli, *args)
        assert rec["batch_per_replica"] > 1
        assert rec["concurrency_per_replica"] == pytest.approx(
            rec["served_requests_per_s_per_replica"] * rec["e2e_s"]
        )
        c = rec["batch_at_max_load"]
        assert rec["max_requests_per_s_per_replica"] * served(registry, c).e2e_s == pytest.approx(c)


def test_no_replica_computes_more_than_its_arithmetic_can(cli, registry):
    # Prompts of 4000 tokens, 20 out, at the KV limit: prefill-bound. Each request computes
    # P + O - 1 = 4019 tokens through the matrices: attention 1,342,177,280 + MLP 5,637,144,576 =
    # 6,979,321,856 weights (`capcalc show llama-3-8b`; the LM head runs on one position per
    # sequence), 2 FLOP each: 13.96 GFLOP per token. An H100's 989.4 TFLOP/s (bf16, dense) at the
    # best single matmul's 86.9 % (capcalc.serving.engines.MAX_MATMUL_FRACTION) computes at most
    # 859.8e12 / 13.96e9 = 61,594 tokens/s, 15.33 requests/s. The simulation's own send-count rate
    # (15.7 here: a run that opens with all clients sending at once) would exceed it; C / e2e does not.
    r = cli(*BASE[:-4], "--prompt", "4000", "--output", "20", "--rps", "100", "--json")
    (rec,) = r.json()
    assert rec["feasible"] and rec["batch_at_max_load"] == rec["kv_capacity_requests"]
    ceiling = 989.4e12 * 0.869 / (2 * 6_979_321_856) / 4019
    assert ceiling == pytest.approx(15.33, rel=1e-3)
    assert rec["max_requests_per_s_per_replica"] <= ceiling
    assert rec["served_requests_per_s_per_replica"] <= ceiling


def test_itl_bound_plan(cli, registry):
    # Was: replicas == 3 from itl = step(b) / (1 - lam t_p) <= 30 ms. Now the mean ITL of the serving
    # model binds: within 30 ms at batch_at_max_load clients, over it one client more.
    rec = one_plan(cli, "--rps", "50", "--itl-slo", "30ms")
    assert rec["binding_constraint"] == "ITL" and rec["binding_slo"] == "ITL"
    c = rec["batch_at_max_load"]
    assert served(registry, c).itl_s <= 0.030 < served(registry, c + 1).itl_s
    assert c < rec["kv_capacity_requests"]  # memory is not what binds
    assert rec["replicas"] == math.ceil(50 / (c / served(registry, c).e2e_s))
    assert_operating_point(rec, registry)


def test_itl_percentile_bound_plan(cli, registry):
    # the p99 of every gap between tokens, pooled over requests as vllm bench serve does: the
    # gaps that hold another request's prefill chunk set it, so it binds far below the mean's limit
    rec = one_plan(cli, "--rps", "50", "--itl-slo", "p99:30ms")
    assert rec["binding_slo"] == "ITL p99" and rec["itl_slo_stat"] == "p99"
    c = rec["batch_at_max_load"]
    assert served(registry, c).itl_p99_s <= 0.030 < served(registry, c + 1).itl_p99_s
    # the record carries the percentile at its operating point, within the SLO
    assert rec["itl_p99_s"] <= 0.030
    assert served(registry, c + 1).itl_s < 0.030  # the mean alone would allow more clients


def test_compute_bound_plan(cli):
    # long prompts, short answers: the prefills keep the arithmetic busy at the KV limit
    r = cli(*BASE[:-4], "--prompt", "4000", "--output", "20", "--rps", "100", "--json")
    (rec,) = r.json()
    assert rec["binding_constraint"] == "compute"
    assert rec["compute_busy_fraction"] >= 0.9
    assert_operating_point(rec)


@pytest.mark.regression_pin
def test_impossible_plan(cli, registry):
    # Was: 6.27 ms, `latency --batch 1`'s ITL. Now one request alone on vLLM's efficiencies (a bandwidth
    # scale of 0.95, 43.5 us per layer and 0.1 us per sequence per layer, capcalc.serving.engines):
    # 7.70 ms (7.80 before the per-sequence cost took 3.1 us of the 32 layers' fixed cost), over 5 ms.
    r = cli(*BASE, "--rps", "10", "--itl-slo", "5ms", "--json")
    assert r.code == 1
    (rec,) = r.json()
    assert rec["feasible"] is False and rec["replicas"] is None
    assert rec["rejected_because"] == "ITL SLO unreachable even at concurrency 1: ITL 7.70 ms > 5.00 ms"
    assert rec["batch1_itl_s"] == pytest.approx(served(registry, 1).itl_s)
    assert r.err.strip() == (
        "capcalc: error: no candidate carries 10 requests/s within the SLOs (1 rejected; see rejected_because)"
    )


def test_weights_that_do_not_fit_are_rejected_with_the_numbers(cli):
    # seed: 70B parameters in bf16 are 140 GB, more than one 80 GB GPU
    r = cli("plan", "llama-3-70b", "--gpu", "h100-sxm", "--tp", "1,4", "--rps", "1", "--prompt", "1000",
            "--output", "100", "--json")  # fmt: skip
    assert r.code == 0
    best, rejected = r.json()
    assert best["tp"] == 4 and best["feasible"]
    assert rejected["tp"] == 1 and not rejected["feasible"]
    assert rejected["rejected_because"].startswith("weights do not fit: 141 GB (131 GiB) per GPU")


@pytest.mark.regression_pin
def test_kv_used_counts_sliding_windows_and_blocks_as_fit_does(cli, registry):
    # gemma-3-27b: 62 layers (52 sliding, window 1024; 10 full), 16 KV heads x 128, bf16; tp=2 -> 8 heads.
    # fit at P + O = 30,200 tokens: page = 16 x 2 x 8 x 128 x 2 B = 65,536 B; groups of g = 10 layers
    # (1 full + cdiv(52, 10) = 6 sliding). One request holds cdiv(30200, 16) = 1888 full blocks and,
    # per sliding group, cdiv(min(1024 - 1 + 8192, 30200), 16) + 1 = 577: 1888 + 6 x 577 = 5350 blocks,
    # kv_needed = 10 x 65,536 x 5350 = 3,506,176,000 B: fit holds 10 such requests in its 38.2 GB.
    # Was: batch 9 at 10 req/s. The serving model's cache is fit's pool (a request holds its context
    # in the full group and 577 pages in each sliding group), so it admits fit's 10 requests and
    # the plan's memory limit is 10 clients per replica.
    args = ("plan", "gemma-3-27b", "--gpu", "h100-sxm", "--prompt", "30000", "--output", "200", "--tp", "2")
    r = cli(*args, "--rps", "10", "--json")
    assert r.code == 0, r.err
    (rec,) = r.json()
    assert rec["kv_capacity_requests"] == 10 and rec["kv_capacity_tokens"] == 133_056  # regression pin (fit)
    assert rec["batch_at_max_load"] == rec["kv_capacity_requests"] == 10
    assert rec["binding_constraint"] == "memory"
    # regression pin: fit's KV cache for gemma-3-27b at tp=2 on an H100
    assert rec["kv_cache_bytes_per_gpu"] == pytest.approx(38.154e9, rel=1e-4)
    fitted = cli("fit", "gemma-3-27b", "--gpu", "h100-sxm", "--tp", "2", "--ctx", "30200", "--json").json()
    assert fitted["blocks_per_request"] == 5350 and fitted["kv_needed_bytes"] == 3_506_176_000
    # at every load, the requests in flight fit in the cache, each counted at its 5350 blocks
    for rps in ("0.1", "1", "10"):
        (rec,) = cli(*args, "--rps", rps, "--json").json()
        assert rec["kv_bytes_used_per_gpu"] <= rec["kv_cache_bytes_per_gpu"]
        assert rec["kv_bytes_used_per_gpu"] == rec["batch_per_replica"] * 3_506_176_000
        assert_operating_point(rec, registry)


def test_an_invalid_tp_is_rejected_per_candidate_in_the_api(registry):
    # the CLI checks --tp up front; through the API a tp the heads do not divide into only rejects its candidate
    model, gpu = registry.model("llama-3-8b"), registry.gpu("h100-sxm")
    results = plan(
        model,
        [Candidate(gpu, Deployment(tp=3)), Candidate(gpu, Deployment(tp=1))],
        Traffic(1.0, 1000, 200),
        SLOs(),
        lambda g: resolve_efficiency(g, None, None),
    )
    assert [(r.tp, r.feasible) for r in results] == [(1, True), (3, False)]
    assert results[1].rejected_because == (
        "tp=3 is not valid for llama-3-8b (32 attention heads, 8 KV heads): valid tp degrees are 1, 2, 4, 8, 16, 32"
    )


# --------------------------------------------------------------------------- engines


@pytest.mark.parametrize("engine", ["sglang", "trtllm"])
def test_each_engine_plans_on_its_own_scheduler(cli, registry, engine):
    rec = one_plan(cli, "--rps", "50", "--ttft-slo", "p90:2s", "--engine", engine)
    assert rec["engine"] == engine
    defaults = engine_defaults(engine, registry.gpu("h100-sxm"))
    assert rec["max_num_seqs"] == defaults.max_num_seqs and rec["frontend_s"] == defaults.frontend_s
    c = rec["batch_at_max_load"]
    one = served(registry, c, engine=engine)
    assert one.ttft_p90_s <= 2.0 < served(registry, c + 1, engine=engine).ttft_p90_s
    assert_operating_point(rec, registry)


@pytest.mark.parametrize("engine", ["vllm", "sglang", "trtllm"])
def test_memory_fraction_sizes_the_plans_pool_as_latency_does(cli, engine):
    """plan --memory-fraction is the engine's knob, as latency's: the pool it plans with is the
    one latency --concurrency simulates (vLLM's gpu_memory_utilization, SGLang's
    mem_fraction_static, TensorRT-LLM's free_gpu_memory_fraction), and a larger share holds more."""
    pools = []
    for fraction in ("0.85", "0.95"):
        rec = one_plan(cli, "--rps", "5", "--engine", engine, "--memory-fraction", fraction)
        lat = cli("latency", "llama-3-8b", "--gpu", "h100-sxm", "--prompt", "1000", "--output", "200",
                  "--concurrency", "1", "--engine", engine, "--memory-fraction", fraction, "--json").json()  # fmt: skip
        assert rec["kv_capacity_tokens"] == lat["kv_capacity_tokens"]
        assert rec["memory_fraction"] == lat["memory_fraction"] == float(fraction)
        pools.append(rec["kv_capacity_tokens"])
    assert pools[1] > pools[0]


# --------------------------------------------------------------------------- candidates, sorting, cost


def test_candidates_sorted_by_gpus_then_cost_with_prices(cli):
    r = cli("plan", "llama-3-8b", "--gpu", "h100-sxm,a100-80gb-sxm", "--tp", "1,2", "--rps", "20", "--prompt",
            "1000", "--output", "200", "--price", "h100-sxm=2.50", "--price", "a100-80gb-sxm=1.50", "--json")  # fmt: skip
    assert r.code == 0, r.err
    recs = r.json()
    assert len(recs) == 4 and all(rec["feasible"] for rec in recs)
    keys = [(rec["gpus"], rec["cost_usd_per_hour"]) for rec in recs]
    assert keys == sorted(keys)
    for rec in recs:
        price = 2.50 if rec["gpu"] == "h100-sxm" else 1.50
        assert rec["price_per_gpu_hour_usd"] == price and rec["price_source"] == "flag"
        assert rec["cost_usd_per_hour"] == pytest.approx(price * rec["gpus"])
        # 20 req/s x 200 tokens = 4000 tokens/s = 14.4 M tokens an hour
        assert rec["cost_usd_per_million_output_tokens"] == pytest.approx(price * rec["gpus"] / 14.4)
        assert rec["output_tokens_per_s_per_gpu"] == pytest.approx(4000 / rec["gpus"])


def test_more_traffic_never_needs_fewer_gpus(cli):
    gpus = [one_plan(cli, "--rps", rps, "--itl-slo", "40ms")["gpus"] for rps in (1, 10, 30, 60, 120)]
    assert gpus == sorted(gpus) and gpus[-1] > gpus[0]


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    faster=st.floats(1.0, 3.0),
    rps=st.floats(0.5, 60),
    prompt=st.integers(64, 2048),
    output=st.integers(8, 256),
    slo=st.sampled_from([SLOs(), SLOs(ttft_s=0.5, ttft_stat="p90"), SLOs(tpot_s=0.004), SLOs(e2e_s=1.5)]),
)
def test_more_bandwidth_never_needs_more_replicas(registry, faster, rps, prompt, output, slo):
    # The same GPU with its memory bandwidth scaled up: every step is as fast or faster, so at every
    # concurrency latencies fall and requests/s rise, and the capacity can only grow.
    model, gpu = registry.model("llama-3.2-1b"), registry.gpu("l4")
    quick = replace(gpu, bandwidth_bytes_per_s=gpu.bandwidth_bytes_per_s * faster)
    traffic = Traffic(rps, prompt, output)
    slow_plan, quick_plan = (
        plan_candidate(model, Candidate(g), traffic, slo, resolve_efficiency(gpu)) for g in (gpu, quick)
    )
    if slow_plan.feasible:
        assert quick_plan.feasible
        assert quick_plan.replicas <= slow_plan.replicas
        assert quick_plan.max_requests_per_s_per_replica >= slow_plan.max_requests_per_s_per_replica * (
            1 - 1e-9
        )


def test_table_view(cli):
    args = (*BASE, "--rps", "50", "--itl-slo", "30ms", "--price", "h100-sxm=2.5")
    r = cli(*args)
    assert r.code == 0
    (rec,) = cli(*args, "--json").json()
    # the table shows the JSON's cost per hour: GPUs x $2.50
    assert "Candidates, best first" in r.out and f"${2.5 * rec['gpus']:.2f}" in r.out
    assert "Each replica is the serving model of its engine under load" in r.out
    assert "Plan: llama-3-8b on vllm, 50 requests/s" in r.out


UNKNOWN_KV_FP9 = "unknown KV dtype 'fp9': expected one of auto, bf16, fp16, fp8, int8, fp32"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--rps", "0"], "--rps must be positive, got 0"),
        (["--rps", "100tok/s"], "--rps is requests per second (e.g. 200 or 200/s), got '100tok/s'"),
        (
            ["--rps", "1", "--itl-slo", "fast"],
            "cannot read --itl-slo 'fast': expected a number with an optional unit",
        ),
        (
            ["--rps", "1", "--price", "h100-sxm"],
            "--price: expected GPU=USD_PER_HOUR (e.g. h100-sxm=2.49), got 'h100-sxm'",
        ),
        (
            ["--rps", "1", "--tp", "3"],
            "tp=3 is not valid for llama-3-8b (32 attention heads, 8 KV heads): valid tp degrees are 1, 2, 4, 8, 16, 32",
        ),
        # usage errors are the same for every candidate: one line and exit 2, not a row per candidate
        (
            ["--rps", "1", "--gpu-memory-utilization", "1.5"],
            "--gpu-memory-utilization must be in (0, 1], got 1.5",
        ),
        (["--rps", "1", "--kv-dtype", "fp9"], UNKNOWN_KV_FP9),
        (
            ["--rps", "1", "--memory-fraction", "0"],
            "--memory-fraction must be a number above 0 and at most 1, got 0.0",
        ),
        (
            ["--rps", "1", "--engine", "sglang", "--gpu-memory-utilization", "0.8"],
            "--gpu-memory-utilization is vLLM's memory knob; for sglang give --memory-fraction",
        ),
        (
            ["--rps", "1", "--gpu-memory-utilization", "0.8", "--memory-fraction", "0.8"],
            "give --gpu-memory-utilization or --memory-fraction, not both",
        ),
        (["--rps", "1", "--kv-dtype", "fp8,fp9"], UNKNOWN_KV_FP9),  # one bad dtype among several
        (
            ["--rps", "1", "--weight-dtype", "fp9"],
            "unknown weight dtype 'fp9': expected one of auto, fp32, bf16, fp16, fp8, int8, int4, mxfp4, nvfp4",
        ),
        (["--rps", "1", "--max-num-seqs", "0"], "--max-num-seqs must be at least 1, got 0"),
    ],
)
def test_errors(cli, args, message):
    r = cli(*[a for a in BASE if a not in ("--tp", "1")], *args)
    assert r.code == 2 and r.out == ""
    assert r.err.strip() == f"capcalc: error: {message}"


def test_context_beyond_the_model_is_an_error(cli):
    r = cli("plan", "llama-3-8b", "--gpu", "h100-sxm", "--rps", "1", "--prompt", "8000", "--output", "500")
    assert r.code == 2
    assert r.err.strip() == (
        "capcalc: error: --prompt + --output = 8,500 tokens exceeds llama-3-8b's maximum context of 8,192 tokens"
    )


# --------------------------------------------------------------------------- the search
# Was: tests of the old fixed point's quadratic (littles_rate) and of a replica with made-up
# latencies under it; that model is gone. What replaced it is a search, tested on any shape.


@settings(max_examples=300)
@given(
    flags=st.lists(st.booleans(), min_size=1, max_size=300),
    guess=st.one_of(st.none(), st.floats(-1e3, 1e3), st.just(math.inf), st.just(math.nan)),
)
def test_bracket_returns_a_boundary_the_predicate_gave(flags, guess):
    # below(0) holds and below(len + 1) does not; in between, anything: the answer is adjacent and
    # each end is as the predicate said, whatever the (even useless) estimate
    values = [True, *flags, False]
    calls = []

    def below(c: int) -> bool:
        calls.append(c)
        return values[c]

    lo, hi = bracket(below, 0, len(values) - 1, lambda lo, hi: guess)
    assert hi == lo + 1 and values[lo] and not values[hi]
    assert len(calls) <= 2 * math.ceil(math.log2(len(values))) + 2  # never much worse than bisection


def test_bracket_with_a_good_estimate_takes_few_probes():
    # a monotone predicate whose boundary the estimate knows: two probes, not bisection's ten
    calls = []

    def below(c: int) -> bool:
        calls.append(c)
        return c <= 637

    assert bracket(below, 1, 1024, lambda lo, hi: 637.4) == (637, 638)
    assert len(calls) == 2


# --------------------------------------------------------------------------- the library and sweep


def test_the_session_takes_slo_statistics(cli):
    from capcalc import Session

    report = Session().plan(
        "llama-3-8b", 20, 1000, 200, gpus=["h100-sxm"], tps=[1], ttft_s="p90:1s", tpot_s=0.03
    )
    (rec,) = report.records()
    assert (rec["ttft_slo_s"], rec["ttft_slo_stat"], rec["tpot_slo_s"], rec["tpot_slo_stat"]) == (
        1.0, "p90", 0.03, "mean"
    )  # fmt: skip
    assert rec == one_plan(cli, "--rps", "20", "--ttft-slo", "p90:1s", "--tpot-slo", "30ms")


def test_sweep_varies_the_engine_and_the_slo_statistic(cli):
    r = cli("sweep", *BASE, "--rps", "20", "--engine", "vllm,trtllm", "--ttft-slo", "p90:1s,1s", "--json")
    assert r.code == 0, r.err
    rows = r.json()
    assert [(row["engine"], row["ttft_slo_stat"]) for row in rows] == [
        ("vllm", "p90"), ("vllm", "mean"), ("trtllm", "p90"), ("trtllm", "mean")
    ]  # fmt: skip
    for row in rows:
        value = row["ttft_p90_s"] if row["ttft_slo_stat"] == "p90" else row["ttft_s"]
        assert row["feasible"] and value <= 1.0

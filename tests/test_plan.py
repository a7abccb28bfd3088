"""`capcalc plan`: Little's law as a fixed point, each binding constraint, rejections, cost.

The traffic of most cases: Llama-3-8B on one H100-SXM (tp=1), 1000 prompt tokens and 200
output tokens per request. The numbers a person needs to check them come from `latency`
and `fit` (default efficiencies, no calibration), quoted in the comments where they are used.
They are capcalc's own output (at commit 9337b1a), so the asserts that pin numbers derived
from them are regression pins (marked ``regression_pin``), not independent figures; the hand
arithmetic shows how each follows from them, and the operating-point checks hold whatever they are:

    capcalc latency llama-3-8b --gpu h100-sxm --prompt 1000 --output 200 --batch 1
        ttft_s 0.0258306   itl_s 0.00627454
    ... --batch 350: itl_s 0.0250683          ... --batch 351: itl_s 0.0251221
    capcalc fit llama-3-8b --gpu h100-sxm --ctx 1200
        num_blocks 26349, blocks_per_request 75 -> max_concurrency 351.3, max_num_seqs 1024
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capcalc.perf.efficiency import resolve_efficiency
from capcalc.schema.deployment import Deployment
from capcalc.serving.plan import Candidate, Replica, SLOs, Traffic, littles_rate, plan, replica_capacity

BASE = ("plan", "llama-3-8b", "--gpu", "h100-sxm", "--tp", "1", "--prompt", "1000", "--output", "200")


def one_plan(cli, *args) -> dict:
    r = cli(*BASE, *args, "--json")
    assert r.code == 0, r.err
    (rec,) = r.json()
    assert rec["feasible"], rec["rejected_because"]
    return rec


def latency(cli, batch: int) -> dict:
    r = cli(
        "latency",
        "llama-3-8b",
        "--gpu",
        "h100-sxm",
        "--prompt",
        "1000",
        "--output",
        "200",
        "--batch",
        batch,
        "--json",
    )
    assert r.code == 0, r.err
    return r.json()


def assert_operating_point(rec: dict) -> None:
    """What every feasible plan satisfies: Little's law at the operating point, the
    SLOs, the memory limit, and the replicas being the fewest that carry the load."""
    lam = rec["requests_per_s"] / rec["replicas"]
    assert rec["requests_per_s_per_replica"] == pytest.approx(lam)
    assert rec["concurrency_per_replica"] == pytest.approx(lam * rec["e2e_s"])  # N = X x L
    assert rec["concurrency_per_replica"] <= rec["batch_per_replica"] + 1e-9
    assert rec["batch_per_replica"] <= min(rec["kv_capacity_requests"], rec["max_num_seqs"])
    assert rec["kv_bytes_used_per_gpu"] <= rec["kv_cache_bytes_per_gpu"]
    assert rec["replicas"] == math.ceil(rec["requests_per_s"] / rec["max_requests_per_s_per_replica"] - 1e-9)
    assert rec["gpus"] == rec["replicas"] * rec["tp"]
    for slo in ("ttft", "itl", "e2e"):
        if rec[f"{slo}_slo_s"] is not None:
            assert rec[f"{slo}_s"] <= rec[f"{slo}_slo_s"]
    # the prefill share stretches decode: itl = step / (1 - f), f = lam x t_p
    assert rec["prefill_share"] == pytest.approx(lam * rec["prefill_s"])
    assert rec["itl_s"] == pytest.approx(rec["decode_step_s"] / (1 - rec["prefill_share"]))
    assert rec["e2e_s"] == pytest.approx(rec["ttft_s"] + (rec["output_tokens"] - 1) * rec["itl_s"])


# --------------------------------------------------------------------------- the four bindings


@pytest.mark.regression_pin
def test_memory_bound_plan_by_hand(cli):
    rec = one_plan(cli, "--rps", "100")
    assert rec["binding_constraint"] == "memory"
    # fit at max_model_len = 1000 + 200: 26349 blocks // 75 blocks per request = 351.3 -> 351 requests
    assert rec["kv_capacity_requests"] == 351 and rec["batch_at_max_load"] == 351  # regression pin (fit)
    # lam(351): A = t_p + step(350) = 0.0258306 + 0.0250683 = 0.0508989 s
    #           B = (O - 1) step(351) = 199 x 0.0251221 = 4.999298 s
    #           s = A + B + 351 t_p = 0.0508989 + 4.999298 + 9.066544 = 14.116741
    #           lam = 2 x 351 / (s + sqrt(s^2 - 4 A t_p 351)) = 702 / (14.116741 + 14.051208) = 24.9219 req/s
    # replicas = ceil(100 / 24.9219) = ceil(4.0125) = 5
    t_p, s350, s351 = latency(cli, 1)["ttft_s"], latency(cli, 350)["itl_s"], latency(cli, 351)["itl_s"]
    a, b = t_p + s350, 199 * s351
    s = a + b + 351 * t_p
    lam_max = 702 / (s + math.sqrt(s * s - 4 * a * t_p * 351))
    assert rec["max_requests_per_s_per_replica"] == pytest.approx(lam_max)
    assert lam_max == pytest.approx(24.9219, rel=1e-4)  # regression pin: capcalc's latencies above
    assert rec["replicas"] == 5 and rec["gpus"] == 5  # regression pin
    # each replica then carries 20 req/s: f = 20 x 0.0258306 = 0.5166 of its time prefilling
    assert rec["prefill_share"] == pytest.approx(20 * t_p)
    assert rec["compute_busy_fraction"] < 0.9  # not "compute"
    # KV in use at the operating batch (20 req/s per replica: batch 94), each request 75 blocks x 16 tokens
    # x 131,072 B/token (32 layers x 2 x 8 KV heads x 128 x 2 B): 94 x 157,286,400 = 14,784,921,600 B
    assert rec["batch_per_replica"] == 94  # regression pin
    assert rec["kv_bytes_used_per_gpu"] == rec["batch_per_replica"] * 75 * 16 * 131072
    assert_operating_point(rec)


@pytest.mark.regression_pin
def test_itl_bound_plan(cli):
    rec = one_plan(cli, "--rps", "50", "--itl-slo", "30ms")
    assert rec["binding_constraint"] == "ITL"
    # the largest load lam_max runs at batch b = batch_at_max_load with itl = step(b) / (1 - lam_max t_p)
    # within 30 ms; one more request in flight (batch b + 1) would break it at any load above lam_max
    b, lam_max, t_p = rec["batch_at_max_load"], rec["max_requests_per_s_per_replica"], rec["prefill_s"]
    assert latency(cli, b)["itl_s"] / (1 - lam_max * t_p) <= 0.030 * (1 + 1e-9)
    assert latency(cli, b + 1)["itl_s"] / (1 - lam_max * t_p) > 0.030
    assert b < rec["kv_capacity_requests"]  # memory is not what binds
    assert rec["replicas"] == 3  # regression pin: ceil(50 / lam_max) at capcalc's latencies
    assert rec["replicas"] == math.ceil(50 / lam_max - 1e-9)
    assert_operating_point(rec)


def test_ttft_bound_plan(cli):
    rec = one_plan(cli, "--rps", "100", "--ttft-slo", "40ms")
    assert rec["binding_constraint"] == "TTFT"
    # ttft(b) = t_p + step(b - 1): within 40 ms at batch_at_max_load, not one batch further
    b = rec["batch_at_max_load"]
    t_p = rec["prefill_s"]
    assert t_p + latency(cli, b - 1)["itl_s"] <= 0.040 < t_p + latency(cli, b)["itl_s"]
    assert rec["replicas"] == math.ceil(100 / rec["max_requests_per_s_per_replica"])
    assert_operating_point(rec)


def test_compute_bound_plan(cli):
    # long prompts, short answers: prefill alone fills most of each GPU-second
    r = cli(*BASE[:-4], "--prompt", "4000", "--output", "20", "--rps", "100", "--json")
    (rec,) = r.json()
    assert rec["binding_constraint"] == "compute"
    assert rec["compute_busy_fraction"] >= 0.9
    assert_operating_point(rec)


@pytest.mark.regression_pin
def test_impossible_plan(cli):
    # batch-1 ITL on an H100 is 6.27 ms: 5 ms cannot be met at any load
    r = cli(*BASE, "--rps", "10", "--itl-slo", "5ms", "--json")
    assert r.code == 1
    (rec,) = r.json()
    assert rec["feasible"] is False and rec["replicas"] is None
    # regression pin: 6.27 ms is capcalc's own batch-1 ITL (latency, above)
    assert rec["rejected_because"] == "ITL SLO unreachable even at batch 1: ITL 6.27 ms > 5.00 ms"
    assert rec["batch1_itl_s"] == pytest.approx(latency(cli, 1)["itl_s"])
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
def test_kv_used_counts_sliding_windows_and_blocks_as_fit_does(cli):
    # gemma-3-27b: 62 layers (52 sliding, window 1024; 10 full), 16 KV heads x 128, bf16; tp=2 -> 8 heads.
    # fit at P + O = 30,200 tokens: page = 16 x 2 x 8 x 128 x 2 B = 65,536 B; groups of g = 10 layers
    # (1 full + cdiv(52, 10) = 6 sliding). One request holds cdiv(30200, 16) = 1888 full blocks and,
    # per sliding group, cdiv(min(1024 - 1 + 8192, 30200), 16) + 1 = 577: 1888 + 6 x 577 = 5350 blocks,
    # kv_needed = 10 x 65,536 x 5350 = 3,506,176,000 B. At batch 9: 31,555,584,000 B (31.6 GB),
    # within the 38.2 GB KV cache -- not 9 x 30,200 x 253,952 B/token = 69.0 GB, which ignored the windows.
    r = cli("plan", "gemma-3-27b", "--gpu", "h100-sxm", "--rps", "10", "--prompt", "30000", "--output", "200",
            "--tp", "2", "--json")  # fmt: skip
    assert r.code == 0, r.err
    (rec,) = r.json()
    assert rec["feasible"] and rec["batch_per_replica"] == 9  # regression pin
    assert rec["kv_bytes_used_per_gpu"] == 9 * 3_506_176_000  # 31,555,584,000 B
    # regression pin: fit's KV cache for gemma-3-27b at tp=2 on an H100
    assert rec["kv_bytes_used_per_gpu"] <= rec["kv_cache_bytes_per_gpu"] == pytest.approx(38.154e9, rel=1e-4)
    fitted = cli("fit", "gemma-3-27b", "--gpu", "h100-sxm", "--tp", "2", "--ctx", "30200", "--json").json()
    assert fitted["blocks_per_request"] == 5350 and fitted["kv_needed_bytes"] == 3_506_176_000
    # at every load up to the KV limit, the requests in flight fit in the cache
    for rps in ("0.1", "1", "5", "20"):
        r = cli("plan", "gemma-3-27b", "--gpu", "h100-sxm", "--rps", rps, "--prompt", "30000", "--output", "200",
                "--tp", "2", "--json")  # fmt: skip
        (rec,) = r.json()
        assert rec["kv_bytes_used_per_gpu"] <= rec["kv_cache_bytes_per_gpu"]
        assert rec["kv_bytes_used_per_gpu"] == rec["batch_per_replica"] * 3_506_176_000


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


# --------------------------------------------------------------------------- at low load


def test_a_trickle_runs_at_batch_one_and_matches_latency(cli):
    rec = one_plan(cli, "--rps", "0.01")
    one = latency(cli, 1)
    assert rec["replicas"] == 1 and rec["batch_per_replica"] == 1
    # alone on the GPU: TTFT is the prompt's prefill, as `latency --batch 1` says
    assert rec["ttft_s"] == pytest.approx(one["ttft_s"])
    assert rec["batch1_e2e_s"] == pytest.approx(one["e2e_s"])
    # the prefill share at 0.01 req/s: 0.01 x 25.8 ms = 0.026 %; itl barely stretched
    assert rec["itl_s"] == pytest.approx(one["itl_s"] / (1 - 0.01 * one["ttft_s"]))


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


def test_table_view(cli):
    r = cli(*BASE, "--rps", "50", "--itl-slo", "30ms", "--price", "h100-sxm=2.5")
    assert r.code == 0
    assert "Candidates, best first" in r.out and "$7.50" in r.out
    assert "Simplification: prefill and decode share each GPU" in r.out


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


# --------------------------------------------------------------------------- the fixed point itself


@settings(max_examples=300)
@given(
    batch=st.integers(1, 4096),
    wait=st.floats(0, 1),
    step=st.floats(1e-5, 1),
    output=st.integers(2, 8192),
    prefill=st.floats(1e-5, 10),
)
def test_littles_rate_solves_littles_law(batch, wait, step, output, prefill):
    ttft = prefill + wait  # ttft(b) = t_p + step(b - 1)
    lam = littles_rate(batch, ttft, step, output, prefill)
    assert 0 < lam < 1 / prefill  # prefill cannot take more than all of the time
    e2e = ttft + (output - 1) * step / (1 - lam * prefill)
    assert lam * e2e == pytest.approx(batch, rel=1e-6)  # N = X x L
    # more requests in flight at the same latencies: a higher rate
    assert littles_rate(batch + 1, ttft, step, output, prefill) > lam


def test_littles_rate_with_one_output_token_is_capped_by_prefill():
    # O = 1: nothing to decode, e2e = ttft, so lam = b / ttft -- but never above 1 / t_p
    assert littles_rate(2, 0.5, 0.01, 1, 0.1) == pytest.approx(4.0)
    assert littles_rate(20, 0.5, 0.01, 1, 0.1) == pytest.approx(10.0)


# --------------------------------------------------------------------------- a replica with made-up latencies

# t_p = 100 ms for a prompt; a decode step of b sequences takes 10 ms + 0.1 ms per sequence; O = 101.
TOY = Traffic(requests_per_s=10.0, prompt_tokens=1000, output_tokens=101)


def toy_latency(batch: int) -> SimpleNamespace:
    return SimpleNamespace(
        ttft_s=0.1, itl_s=0.010 + 0.0001 * batch, prefill_compute_s=0.1, decode_compute_s=0.001
    )


def test_fixed_point_by_hand_memory_bound():
    replica = Replica(toy_latency, TOY, SLOs())
    cap = replica_capacity(replica, kv_requests=4, max_num_seqs=1024)
    # b = 4: A = t_p + step(3) = 0.1 + 0.0103 = 0.1103 s; B = 100 x step(4) = 100 x 0.0104 = 1.04 s
    #        s = A + B + 4 t_p = 1.5503; sqrt(s^2 - 4 A t_p 4) = sqrt(2.40343 - 0.17648) = 1.49230
    #        lam(4) = 8 / (1.5503 + 1.4923) = 2.6293 requests/s
    # check: f = 0.26293, itl = 0.0104 / 0.73707 = 14.110 ms, e2e = 0.1103 + 100 x 0.014110 = 1.5213 s,
    #        lam x e2e = 2.6293 x 1.5213 = 4.000 requests in flight (Little's law)
    assert cap.binding == "memory" and cap.batch == 4
    assert cap.max_load == pytest.approx(2.6293, rel=1e-4)
    ttft, itl, e2e = replica.latencies(4, cap.max_load)
    assert itl == pytest.approx(0.014110, rel=1e-4) and e2e == pytest.approx(1.5213, rel=1e-4)
    assert cap.max_load * e2e == pytest.approx(4.0)


def test_fixed_point_by_hand_itl_bound():
    replica = Replica(toy_latency, TOY, SLOs(itl_s=0.014))
    cap = replica_capacity(replica, kv_requests=1000, max_num_seqs=1024)
    # b = 3: lam(3) = 6 / (1.4402 + 1.39353) = 2.11735, itl = 0.0103 / (1 - 0.211735) = 13.07 ms: within 14 ms
    # b = 4: lam(4) = 2.6293 gives itl 14.11 ms: too slow. The largest load that runs at batch 4 with
    #        itl <= 14 ms: 0.0104 / (1 - 0.1 lam) <= 0.014  ->  lam <= (1 - 0.0104 / 0.014) / 0.1 = 2.5714
    assert cap.binding == "ITL" and cap.batch == 4
    assert cap.max_load == pytest.approx(2.5714, rel=1e-4)
    # 10 requests/s -> ceil(10 / 2.5714) = 4 replicas of 2.5 requests/s each, running at batch 4
    assert replica.operating_batch(10 / 4, cap.batch) == 4
    assert replica.rate(3) < 2.5 <= replica.rate(4)

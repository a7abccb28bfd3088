"""`capcalc latency --concurrency C | --rps R`: one serving replica under load, through the CLI.

The numbers come from the library (Session.serving, capcalc.serving.engine); these tests
check that the command prints the library's record, that its flags reach it, and the
invariants a person can check on the output: Little's law, concurrency 1 = the static
batch of one plus the frontend cost, a per-request cost added once per request.
"""

from __future__ import annotations

import pytest

from capcalc.api import Session

MODEL, GPU = "llama-3.1-8b", "h100-sxm"
#: the keys the brief of `latency --concurrency` promises
SERVING_KEYS = (
    "ttft_s",
    "tpot_s",
    "itl_s",
    "e2e_s",
    "ttft_p50_s",
    "ttft_p90_s",
    "ttft_p99_s",
    "tpot_p50_s",
    "tpot_p90_s",
    "tpot_p99_s",
    "e2e_p50_s",
    "e2e_p90_s",
    "e2e_p99_s",
    "requests_per_s",
    "output_tokens_per_s",
    "output_tokens_per_s_per_gpu",
    "output_tokens_per_s_per_user",
    "running_batch",
    "queue_s",
    "binding_limit",
    "engine",
    "efficiency_source",
)


def _same(cli_record: dict, library_record: dict) -> None:
    assert list(cli_record) == list(library_record)
    for key, value in library_record.items():
        if isinstance(value, float):
            assert cli_record[key] == pytest.approx(value, rel=1e-12, abs=1e-15), key
        else:
            assert cli_record[key] == value, key


def test_concurrency_record_is_the_library_record(cli):
    got = cli(
        "latency", MODEL, "--gpu", GPU, "--prompt", "1024", "--output", "128", "--concurrency", "8", "--json"
    )
    assert got.code == 0, got.err
    record = got.json()
    for key in SERVING_KEYS:
        assert key in record, key
    want = Session().serving(MODEL, GPU, 1024, 128, concurrency=8).record()
    _same(record, want)
    assert record["engine"] == "vllm" and record["efficiency_source"] == "engine:vllm"
    assert record["binding_limit"] in ("kv_capacity", "max_num_seqs", "none")


def test_rps_record_is_the_library_record_and_the_seed_reaches_it(cli):
    args = ("latency", MODEL, "--gpu", GPU, "--prompt", "512", "--output", "64", "--rps", "4", "--json")
    a = cli(*args, "--seed", "3")
    assert a.code == 0, a.err
    _same(a.json(), Session().serving(MODEL, GPU, 512, 64, requests_per_s=4.0, seed=3).record())
    b = cli(*args, "--seed", "4").json()
    assert b["rate_per_s"] == 4 and b["concurrency"] is None
    assert b["ttft_p99_s"] != a.json()["ttft_p99_s"]  # other arrival times


def test_littles_law_in_the_printed_record(cli):
    """Closed loop: every client is always inside a request, so C = requests/s x mean e2e;
    and the running batch is requests/s x the time admitted (Little's law for the admitted
    requests, checked against the simulation's own integral of the running batch)."""
    for c in (4, 32):
        r = cli("latency", MODEL, "--gpu", GPU, "--output", "128", "--concurrency", str(c), "--json").json()
        assert r["requests_per_s"] * r["e2e_s"] == pytest.approx(c, rel=1e-9)
        admitted = r["e2e_s"] - r["frontend_s"] - r["queue_s"]
        assert r["running_batch"] == pytest.approx(r["requests_per_s"] * admitted, rel=0.08)
        # the engine's default spreads output lengths around 128 (mean kept to a few per cent)
        assert r["output_tokens_per_s"] == pytest.approx(r["requests_per_s"] * 128, rel=0.05)
        # with every request exactly 128 tokens, output tokens/s is requests/s x 128 exactly
        args = (
            "latency",
            MODEL,
            "--gpu",
            GPU,
            "--output",
            "128",
            "--concurrency",
            str(c),
            "--output-spread",
            "0",
        )
        exact = cli(*args, "--json").json()
        assert exact["output_tokens_per_s"] == pytest.approx(exact["requests_per_s"] * 128)
        # the record says which spread it simulated: the flag's, else vLLM's default
        default = Session(use_calibration=False).serving_parameters(GPU, "vllm").config.output_spread
        assert exact["output_spread"] == 0 and r["output_spread"] == default > 0
        assert exact["prompt_spread"] == r["prompt_spread"] == 0  # prompts exact unless told
        spread = cli(*args, "--prompt-spread", "0.25", "--json").json()
        assert spread["prompt_spread"] == 0.25 and spread["prompt_tokens"] == exact["prompt_tokens"]


def test_concurrency_one_is_the_static_batch_of_one_plus_the_frontend(cli):
    """One client: nothing queues and nothing shares a step, so TTFT and E2E are the static
    batch-1 prediction (`latency --batch 1` with the same efficiencies) plus the per-request
    frontend cost, and TPOT is its inter-token latency."""
    # every request exactly O tokens (the engine's default spreads the lengths)
    served = cli(
        "latency", MODEL, "--gpu", GPU, "--concurrency", "1", "--output-spread", "0", "--json"
    ).json()
    flags = []
    for key, value in served.items():
        if key.startswith("assume_"):
            flags += [f"--{key.removeprefix('assume_').removesuffix('_s').replace('_', '-')}", repr(value)]
    static = cli("latency", MODEL, "--gpu", GPU, "--batch", "1", *flags, "--json")
    assert static.code == 0, static.err
    static = static.json()
    assert served["ttft_s"] == pytest.approx(static["ttft_s"] + served["frontend_s"], rel=1e-6)
    assert served["tpot_s"] == pytest.approx(static["itl_s"], rel=1e-4)
    assert served["e2e_s"] == pytest.approx(static["e2e_s"] + served["frontend_s"], rel=1e-4)
    assert served["queue_s"] == 0 and served["binding_limit"] == "none"


@pytest.mark.parametrize(
    "dtypes",
    [
        (),
        ("--weight-dtype", "fp8"),
        ("--weight-dtype", "fp8", "--kv-dtype", "fp8"),
        ("--weight-dtype", "int4"),
    ],
)
def test_dtypes_are_reported_resolved_as_the_static_batch_reports_them(cli, dtypes):
    served = cli("latency", MODEL, "--gpu", GPU, "--concurrency", "2", *dtypes, "--json").json()
    static = cli("latency", MODEL, "--gpu", GPU, *dtypes, "--json").json()
    for key in ("weight_dtype", "kv_dtype", "compute_dtype"):
        assert served[key] == static[key] != "auto"


def test_frontend_overhead_is_paid_once_per_request(cli):
    """At one client the frontend cost is the only difference: 12 ms - 2 ms = 10 ms of TTFT and E2E."""

    def run(cost: str) -> dict:
        args = ("latency", MODEL, "--gpu", GPU, "--concurrency", "1", "--frontend-overhead", cost, "--json")
        return cli(*args).json()

    low, high = run("2ms"), run("12ms")
    assert low["frontend_s"] == pytest.approx(0.002) and high["frontend_s"] == pytest.approx(0.012)
    assert high["ttft_s"] - low["ttft_s"] == pytest.approx(0.010, rel=1e-6)
    assert high["e2e_s"] - low["e2e_s"] == pytest.approx(0.010, rel=1e-6)
    assert high["tpot_s"] == pytest.approx(low["tpot_s"], rel=1e-9)
    assert low["efficiency_source"] == "flag + engine:vllm"


def test_max_num_seqs_flag_binds(cli):
    """16 clients and 4 slots: at most 4 run, the others queue, and max_num_seqs binds."""
    r = cli(
        "latency",
        MODEL,
        "--gpu",
        GPU,
        "--output",
        "64",
        "--concurrency",
        "16",
        "--max-num-seqs",
        "4",
        "--json",
    )
    assert r.code == 0, r.err
    r = r.json()
    assert r["max_num_seqs"] == 4
    assert r["running_batch"] <= 4 + 1e-9
    assert r["binding_limit"] == "max_num_seqs"
    assert r["queue_s"] > 0


def test_token_budget_and_engine_flags(cli):
    r = cli("latency", MODEL, "--gpu", GPU, "--engine", "sglang", "--concurrency", "4", "--max-num-batched-tokens", "4096", "--json")  # fmt: skip
    assert r.code == 0, r.err
    r = r.json()
    assert r["engine"] == "sglang" and r["max_num_batched_tokens"] == 4096


def test_memory_fraction_sets_the_engines_own_knob(cli, registry):
    """--memory-fraction is vLLM's gpu_memory_utilization, SGLang's mem_fraction_static,
    TensorRT-LLM's free_gpu_memory_fraction: the record echoes the value that sized the pool
    (the engine's default without the flag, SGLang's its heuristic), and a larger share never
    holds fewer tokens."""
    from capcalc.serving.engines import engine_defaults, sglang_mem_fraction_static

    h100 = registry.gpu(GPU)
    chunk = engine_defaults("sglang", h100).max_num_batched_tokens
    defaults = {
        "vllm": 0.9,
        "sglang": sglang_mem_fraction_static(h100.memory_reported_bytes, 1, chunk),
        "trtllm": 0.9,
    }
    assert defaults["sglang"] == 0.834  # (81,079 - 13,440) / 81,079 MiB, the H100 total torch reports
    for engine, default in defaults.items():
        args = ("latency", MODEL, "--gpu", GPU, "--engine", engine, "--concurrency", "4", "--json")
        base = cli(*args).json()
        more = cli(*args, "--memory-fraction", "0.97")
        assert more.code == 0, more.err
        more = more.json()
        assert base["memory_fraction"] == default and more["memory_fraction"] == 0.97
        assert more["kv_capacity_tokens"] > base["kv_capacity_tokens"]
        want = Session().serving(MODEL, GPU, 1024, 256, concurrency=4, engine=engine, memory_fraction=0.97)
        _same(more, want.record())


def test_per_gpu_throughput_divides_by_tp(cli):
    r = cli("latency", MODEL, "--gpu", GPU, "--tp", "2", "--concurrency", "8", "--json").json()
    assert r["gpus"] == 2
    assert r["output_tokens_per_s_per_gpu"] == pytest.approx(r["output_tokens_per_s"] / 2)


def test_static_batch_keys_are_unchanged(cli):
    """Without --concurrency / --rps the command is the static batch, the library's latency record."""
    got = cli("latency", MODEL, "--gpu", GPU, "--batch", "4", "--json").json()
    assert list(got) == list(Session().latency(MODEL, GPU, batch=4).record())
    assert "binding_limit" not in got


@pytest.mark.parametrize(
    "args, words",
    [
        (("--concurrency", "4", "--rps", "2"), ("--concurrency", "--rps")),
        (("--engine", "sglang"), ("--engine", "--concurrency")),
        (("--max-num-seqs", "8"), ("--max-num-seqs", "--concurrency")),
        (("--frontend-overhead", "2ms"), ("--frontend-overhead",)),
        (("--concurrency", "4", "--batch", "8"), ("--batch", "--concurrency")),
        (("--concurrency", "4", "--engine", "tgi"), ("--engine", "tgi")),
        (("--concurrency", "0"), ("--concurrency",)),
        (("--concurrency", "1000000000"), ("--concurrency", "65,536")),
        (("--concurrency", "4", "--num-requests", "99999999"), ("--num-requests",)),
        (("--rps", "0"), ("--rps",)),
        (("--concurrency", "4", "--frontend-overhead", "fast"), ("--frontend-overhead",)),
        (("--output-spread", "0.1"), ("--output-spread", "--concurrency")),
        (("--memory-fraction", "0.9"), ("--memory-fraction", "--concurrency")),
        (("--concurrency", "4", "--memory-fraction", "0"), ("--memory-fraction", "0")),
        (("--concurrency", "4", "--memory-fraction", "1.5"), ("--memory-fraction", "1.5")),
        # SGLang's static share at 0.1 of an 80 GB card holds less than the 16 GB of weights
        (
            ("--concurrency", "4", "--engine", "sglang", "--memory-fraction", "0.1"),
            ("does not fit", "mem_fraction_static 0.1"),
        ),
        (("--concurrency", "4", "--output-spread", "1"), ("--output-spread", "1")),
        (("--concurrency", "4", "--output-spread", "-0.2"), ("--output-spread",)),
        (("--concurrency", "4", "--output-spread", "nan"), ("--output-spread",)),
        (("--prompt-spread", "0.1"), ("--prompt-spread", "--concurrency")),
        (("--concurrency", "4", "--scheduler-recv-interval", "30"), ("--scheduler-recv-interval", "vllm")),
        (
            ("--concurrency", "4", "--engine", "sglang", "--scheduler-recv-interval", "0"),
            ("--scheduler-recv-interval",),
        ),
        (("--scheduler-recv-interval", "30"), ("--scheduler-recv-interval", "--concurrency")),
        (("--concurrency", "4", "--batch-wait-iters", "20"), ("--batch-wait-iters", "vllm")),
        (
            ("--concurrency", "4", "--engine", "trtllm", "--batch-wait-max-tokens-ratio", "1.5"),
            ("--batch-wait-max-tokens-ratio",),
        ),
        (("--concurrency", "4", "--engine", "trtllm", "--batch-wait-iters", "-1"), ("--batch-wait-iters",)),
        (("--concurrency", "4", "--prompt-spread", "1"), ("--prompt-spread", "1")),
        # 20 prompts of 8,000 tokens one token per step: 160,000 steps at least, over a
        # budget of 100,000 (set below), refused before the simulation starts
        (
            ("--concurrency", "4", "--prompt", "8000", "--max-num-batched-tokens", "1"),
            ("--num-requests", "--max-num-batched-tokens", "scheduling events"),
        ),
    ],
)
def test_bad_serving_flags_are_one_line(cli, args, words, monkeypatch):
    monkeypatch.setattr("capcalc.serving.engine.MAX_EVENTS", 100_000)
    got = cli("latency", MODEL, "--gpu", GPU, *args)
    assert got.code == 2
    lines = got.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("capcalc: error:"), got.err
    for word in words:
        assert word in lines[0]
    assert "Traceback" not in got.err and got.out == ""


def test_table_fits_100_columns_and_says_where_assumptions_came_from(cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    got = cli("latency", MODEL, "--gpu", GPU, "--concurrency", "8")
    assert got.code == 0, got.err
    assert "Serving: llama-3.1-8b on h100-sxm x1, vllm, 8 clients" in got.out
    assert "ttft_p90_s" in got.out and "engine:vllm" in got.out
    assert max(len(line) for line in got.out.splitlines()) <= 100


def test_sweep_over_concurrency_runs_the_same_calls(cli):
    got = cli("sweep", "latency", MODEL, "--gpu", GPU, "--output", "64", "--concurrency", "2,8", "--json")
    assert got.code == 0, got.err
    rows = got.json()
    assert [r["concurrency"] for r in rows] == [2, 8]
    want = Session().serving(MODEL, GPU, 1024, 64, concurrency=8).record()
    assert rows[1]["ttft_s"] == pytest.approx(want["ttft_s"], rel=1e-12)


def test_requests_beyond_the_max_context_are_a_note(cli):
    """vLLM refuses a request longer than the model's context; the simulation still prices
    it (as the static batch does) and says so once on stderr."""
    got = cli("latency", MODEL, "--gpu", GPU, "--concurrency", "2", "--prompt", "130000", "--output", "2000")
    assert got.code == 0
    assert got.err.count("132,000 tokens exceed llama-3.1-8b's max context (131,072)") == 1


def test_scheduler_recv_interval_reaches_sglangs_scheduler(cli):
    """SGLang polling every 30 decode steps: 16 clients' TTFT grows, the flag is named as the source.
    The outputs are spread (0.15) so that clients finish apart and requests arrive while decodes
    run: at SGLang's own spread (0.02) a wave finishes within its 200 ms frontend cost, the
    engine is idle when the next requests arrive, and an idle scheduler polls at once."""
    args = (
        "latency",
        MODEL,
        "--gpu",
        GPU,
        "--concurrency",
        "16",
        "--engine",
        "sglang",
        "--output-spread",
        "0.15",
        "--json",
    )
    plain = cli(*args).json()
    slow = cli(*args, "--scheduler-recv-interval", "30").json()
    assert slow["ttft_s"] > plain["ttft_s"]
    assert slow["efficiency_source"].startswith("flag + ")


def test_batch_waiting_reaches_tensorrt_llms_scheduler(cli):
    """TensorRT-LLM holding prompts for up to 20 steps beside running decodes: 4 clients'
    TTFT grows by about 20 decode steps; the record carries the setting."""
    args = ("latency", MODEL, "--gpu", GPU, "--concurrency", "4", "--engine", "trtllm", "--json")
    plain = cli(*args).json()
    held = cli(*args, "--batch-wait-iters", "20", "--batch-wait-max-tokens-ratio", "0.9").json()
    assert (held["batch_wait_iters"], held["batch_wait_max_tokens_ratio"]) == (20, 0.9)
    assert 5 * plain["itl_s"] < held["ttft_s"] - plain["ttft_s"] < 21 * held["itl_s"]


@pytest.mark.parametrize("gpu", ["mi300x", "tpu-v6e"])
def test_tensorrt_llm_on_a_gpu_it_does_not_run_on_is_one_line(cli, gpu):
    got = cli("latency", MODEL, "--gpu", gpu, "--concurrency", "4", "--engine", "trtllm")
    assert got.code == 2 and got.out == ""
    assert got.err.strip().startswith(f"capcalc: error: TensorRT-LLM runs on NVIDIA GPUs only: {gpu} is ")
    assert len(got.err.strip().splitlines()) == 1

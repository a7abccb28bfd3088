"""Little's law, N = X x L, both ways and with units."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capcalc.core.errors import CapcalcError
from capcalc.serving.littles import littles_law


def test_seed_phrasing_n_equals_x_times_l(cli):
    # Seed §0.12: sustain X requests/s, each in the system L seconds -> N = X*L in flight.
    r = cli("littles", "--throughput", "20/s", "--latency", "4s", "--json").json()
    assert r["concurrency"] == 80
    assert r["unit"] == "requests" and r["solved_for"] == "concurrency"


@pytest.mark.parametrize(
    "args, key, expected",
    [
        (["--concurrency", "80", "--latency", "4s"], "throughput_per_s", 20.0),
        (["--concurrency", "80", "--throughput", "20/s"], "latency_s", 4.0),
        (["--concurrency", "64", "--latency", "250ms"], "throughput_per_s", 256.0),
        (["--throughput", "1200tok/s", "--latency", "50ms"], "concurrency", 60.0),
        (["--throughput", "600/min", "--latency", "2s"], "concurrency", 20.0),
        (["--throughput", "1200 tok/s", "--concurrency", "600"], "latency_s", 0.5),
    ],
)
def test_any_two_give_the_third(cli, args, key, expected):
    r = cli("littles", *args, "--json")
    assert r.code == 0, r.err
    assert r.json()[key] == pytest.approx(expected)


def test_token_rates_are_labelled_tokens(cli):
    assert cli("littles", "--throughput", "1200tok/s", "--latency", "1s", "--json").json()["unit"] == "tokens"


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--throughput", "20/s"],
            "give two of --concurrency, --throughput and --latency (Little's law: N = X x L)",
        ),
        (["--throughput", "0/s", "--latency", "1s"], "--throughput must be positive, got 0"),
        (["--concurrency", "-3", "--latency", "1s"], "--concurrency must be positive, got -3"),
        (
            ["--throughput", "20/s", "--latency", "4s", "--concurrency", "10"],
            "inconsistent: throughput x latency = 80 but --concurrency is 10; give only two of the three",
        ),
        (
            ["--throughput", "fast", "--latency", "1s"],
            "cannot read --throughput 'fast': expected e.g. '20/s', '20req/s', '1200tok/s'",
        ),
        (
            ["--throughput", "2/s", "--latency", "4 fortnights"],
            "--latency: unknown time unit 'fortnights' in '4 fortnights' (use ns, us, ms, s, min, h)",
        ),
    ],
)
def test_errors(cli, args, message):
    r = cli("littles", *args)
    assert r.code == 2 and r.out == ""
    assert r.err.strip() == f"capcalc: error: {message}"


def test_consistent_triple_is_accepted():
    r = littles_law(concurrency=80, throughput_per_s=20, latency_s=4)
    assert r.solved_for == "none"
    with pytest.raises(CapcalcError):
        littles_law(concurrency=81, throughput_per_s=20, latency_s=4)


@settings(max_examples=200)
@given(
    x=st.floats(1e-3, 1e6, allow_nan=False),
    latency=st.floats(1e-4, 1e4, allow_nan=False),
)
def test_littles_law_holds_both_ways(x, latency):
    n = littles_law(throughput_per_s=x, latency_s=latency).concurrency
    assert littles_law(concurrency=n, latency_s=latency).throughput_per_s == pytest.approx(x, rel=1e-9)
    assert littles_law(concurrency=n, throughput_per_s=x).latency_s == pytest.approx(latency, rel=1e-9)

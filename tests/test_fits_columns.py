"""`fits_in_memory` and `within_max_context` on latency, roofline and sweep records.

The oracles are worked by hand from the profiles:

* llama-3-8b (32 layers, 8 KV heads of 128, bf16): 2 x 32 x 8 x 128 x 2 B = 128 KiB of KV
  per token, so one request of 8,192 tokens holds exactly 1 GiB. Its bf16 weights are
  8.03 B x 2 B = 16.1 GB. On an H100 vLLM budgets 0.9 x 85,017,493,504 B = 76.5 GB, so at
  most 76.5 - 16.1 = 60.4 GB = 56.3 GiB are left for the KV cache before activations and
  overhead: 64 requests of 1 GiB never fit, and 40 do unless the activation peak and
  overhead took more than 16 GiB (vLLM's own profile of this model is 4.8 GiB).
* llama-3-70b: 70.6 B x 2 B = 141 GB of bf16 weights, more than one H100 holds; a quarter
  of them (tp=4) is 35 GB.
* llama-3-8b's max context is 8,192 tokens.
"""

from __future__ import annotations

import csv
import io
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capcalc import Session
from capcalc.schema.deployment import Deployment
from capcalc.serving.fit import request_fits


@pytest.mark.parametrize("batch, fits", [(1, True), (40, True), (64, False), (512, False)])
def test_latency_records_say_whether_the_batch_fits(cli, batch, fits):
    args = ("latency", "llama-3-8b", "--gpu", "h100-sxm", "--prompt", 7192, "--output", 1000)
    rec = cli(*args, "--batch", batch, "--json").json()
    assert (rec["fits_in_memory"], rec["within_max_context"]) == (fits, True)


def test_beyond_the_context_is_its_own_column(cli):
    # 8,000 + 500 tokens > 8,192: vLLM refuses the length, although one such request's
    # KV (8,500 x 128 KiB = 1.04 GiB) fits easily
    out = cli("latency", "llama-3-8b", "--gpu", "h100-sxm", "--prompt", 8000, "--output", 500, "--json")
    rec = out.json()
    assert (rec["within_max_context"], rec["fits_in_memory"]) == (False, True)
    assert "8,500 tokens exceed llama-3-8b's max context (8,192)" in out.err


def test_roofline_records_say_whether_the_weights_and_requests_fit(cli):
    base = ("roofline", "llama-3-70b", "--gpu", "h100-sxm", "--ctx", 8192)
    one = cli(*base, "--json").json()
    four = cli(*base, "--tp", 4, "--json").json()
    assert (one["fits_in_memory"], four["fits_in_memory"]) == (False, True)
    assert one["within_max_context"] and four["within_max_context"]
    table = cli(*base, "--tp", 4).out
    assert "fits in memory yes, within the max context yes" in table


def test_the_columns_agree_with_capcalc_fit(cli):
    """The same rule as `capcalc fit --max-model-len`: fits, and its max concurrency covers the batch."""
    fitted = cli("fit", "llama-3-8b", "--gpu", "h100-sxm", "--max-model-len", 8192, "--json").json()
    most = int(fitted["max_concurrency"])
    assert 40 <= most < 64  # the hand-worked bounds of the module docstring
    for batch in (most, most + 1):
        rec = cli("latency", "llama-3-8b", "--gpu", "h100-sxm", "--prompt", 8000, "--output", 192,
                  "--batch", batch, "--json").json()  # fmt: skip
        assert rec["fits_in_memory"] is (batch <= fitted["max_concurrency"])


@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(1, 300),
    more=st.integers(0, 300),
    context=st.integers(1, 8192),
    longer=st.integers(0, 8192),
)
def test_fitting_is_monotone_in_batch_and_length(registry, batch, more, context, longer):
    """Fewer or shorter requests never fit worse."""
    model, gpu, d = registry.model("llama-3-8b"), registry.gpu("h100-sxm"), Deployment()
    big = request_fits(model, gpu, d, batch + more, context + longer)
    small = request_fits(model, gpu, d, batch, context)
    assert small.fits_in_memory or not big.fits_in_memory
    assert small.within_max_context or not big.within_max_context


def test_a_deployment_vllm_refuses_does_not_fit(registry):
    # 8 KV heads and 32 query heads do not split over 3 GPUs
    r = request_fits(registry.model("llama-3-8b"), registry.gpu("h100-sxm"), Deployment(tp=3), 1, 1024)
    assert (r.fits_in_memory, r.within_max_context) == (False, True) and r.note is not None


def test_session_results_carry_the_columns():
    s = Session()
    report = s.latency("llama-3-8b", "h100-sxm", prompt_tokens=7192, output_tokens=1000, batch=64)
    assert report.record()["fits_in_memory"] is False and report.serving.within_max_context
    roof = s.roofline("llama-3-70b", "h100-sxm", tp=4, ctx=8192)
    assert roof.record()["fits_in_memory"] is True and roof.critical_batch == roof.result.critical_batch


def test_sweep_rows_carry_the_columns(cli):
    out = cli("sweep", "latency", "llama-3-8b", "--gpu", "h100-sxm", "--prompt", 7192, "--output", 1000,
              "--batch", "1,40,64", "--csv")  # fmt: skip
    rows = list(csv.DictReader(io.StringIO(out.out)))
    assert [r["fits_in_memory"] for r in rows] == ["True", "True", "False"]
    assert {r["within_max_context"] for r in rows} == {"True"}
    roof = cli("sweep", "roofline", "llama-3-70b", "--gpu", "h100-sxm", "--tp", "1,4", "--jsonl")
    assert [json.loads(line)["fits_in_memory"] for line in roof.out.splitlines()] == [False, True]

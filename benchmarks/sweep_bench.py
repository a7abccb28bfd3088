"""How fast `capcalc sweep` runs: combinations per second for a kv and a latency sweep.

Run by hand (not part of the test suite):

    python benchmarks/sweep_bench.py [--format csv|jsonl|json] [--repeat N]

Each sweep runs in this process through ``capcalc.cli.main`` (as the ``capcalc``
script does), with stdout sent to /dev/null so that the terminal is not what is
timed. The profiles are loaded once before the sweeps (that load is timed on its own
line); each figure is the best of ``--repeat`` runs. Sweeps of 1,000 or more
combinations spread over one worker process per CPU unless ``--jobs`` says
otherwise, so the figure depends on the cores available.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

# fmt: off
KV_SWEEP = [
    "kv",
    "llama-3-8b,llama-3-70b,qwen3-8b,mistral-7b-v0.3,gemma-2-9b",
    "--ctx", ",".join(str(1024 * i) for i in range(1, 21)),  # 20 contexts
    "--batch", ",".join(str(b) for b in range(1, 51)),  # 50 batches
    "--kv-dtype", "bf16,fp8",
]  # 5 x 20 x 50 x 2 = 10,000 combinations
LATENCY_SWEEP = [
    "latency",
    "llama-3-8b,qwen3-8b",
    "--gpu", "h100-sxm,a100-80gb-sxm,l40s,h200,mi300x",
    "--prompt", "128,512,1024,2048,4096",
    "--output", "128,256,512,1024,2048",
    "--batch", ",".join(str(b) for b in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)),
    "--tp", "1,2",
    "--kv-dtype", "bf16,fp8",
]  # 2 x 5 x 5 x 5 x 10 x 2 x 2 = 10,000 combinations
# fmt: on


def _count(args: list[str]) -> int:
    n = 1
    for value in (a for a in args[1:] if not a.startswith("--")):
        n *= len(value.split(","))
    return n


def run(args: list[str], fmt: str, jobs: int | None) -> tuple[float, int]:
    from capcalc.cli import main

    extra = [f"--{fmt}"] + ([f"--jobs={jobs}"] if jobs else [])
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        start = time.perf_counter()
        code = main(["sweep", *args, *extra])
        elapsed = time.perf_counter() - start
    return elapsed, code


def limited(args: list[str], limit: int) -> list[str]:
    """Trim the last swept options' value lists until the product is at most ``limit``."""
    args = list(args)
    while _count(args) > limit:
        for i in range(len(args) - 1, 0, -1):
            if not args[i].startswith("--") and "," in args[i]:
                args[i] = args[i].rsplit(",", 1)[0]
                break
    return args


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--format", default="csv", choices=["csv", "jsonl", "json"])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--limit", type=int, default=10_000, help="combinations per sweep (default 10,000)")
    parser.add_argument(
        "--jobs", type=int, default=None, help="sweep --jobs (default: the sweep's own choice)"
    )
    opts = parser.parse_args()

    start = time.perf_counter()
    from capcalc.cli.common import load_registry
    from capcalc.cli.sweep import default_jobs

    load_registry(None)
    print(f"import + profile load: {time.perf_counter() - start:.2f} s (once per process)")
    for name, args in (("kv", KV_SWEEP), ("latency", LATENCY_SWEEP)):
        args = limited(args, opts.limit)
        n = _count(args)
        best, code = min(run(args, opts.format, opts.jobs) for _ in range(opts.repeat))
        status = "" if code == 0 else f"  (exit code {code})"
        print(
            f"{name:8s} {n:>7,} combinations  {best:6.2f} s  {n / best:>9,.0f} combinations/s  "
            f"--{opts.format} --jobs {opts.jobs or default_jobs(n)}{status}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

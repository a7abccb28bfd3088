"""How fast `capcalc` starts: one `capcalc kv llama-3-70b --ctx 8192` against a bare `python -c pass`.

Run by hand (not part of the test suite):

    python benchmarks/startup_bench.py [--runs N] [--warmup N]

Each figure is the median wall time of ``--runs`` fresh subprocesses (after
``--warmup`` untimed ones, so the file cache is warm), run with this interpreter and
this checkout first on PYTHONPATH, stdout sent to /dev/null. The runs measure an
installed capcalc's steady state: bytecode is written and read (``PYTHONDONTWRITEBYTECODE``
is dropped: pip compiles an installed package), and the parsed-profile cache is a
private one that the warm-up runs fill (a shared one, rewritten by another checkout's
runs, would make some runs parse every profile again). The ratio to the bare
interpreter is what carries over between machines; the absolute figure depends on the
CPU and on how busy it is; the CPU time (user + system, of the child) is printed beside it
as the figure a busy machine disturbs least. The target: a median of at most 0.15 s, or at most
8x `python -c pass`.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMAND = ["-m", "capcalc", "kv", "llama-3-70b", "--ctx", "8192"]
TARGET_S = 0.15
TARGET_RATIO = 8.0


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def median_s(args: list[str], runs: int, warmup: int, cache_dir: str) -> tuple[float, float, float]:
    """(median wall seconds, median CPU seconds, fastest wall seconds) of ``runs`` runs of
    ``python ARGS``."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env["CAPCALC_CACHE_DIR"] = cache_dir
    walls, cpus = [], []
    for i in range(warmup + runs):
        cpu = _children_cpu_s()
        start = time.perf_counter()
        subprocess.run([sys.executable, *args], env=env, stdout=subprocess.DEVNULL, check=True)
        if i >= warmup:
            walls.append(time.perf_counter() - start)
            cpus.append(_children_cpu_s() - cpu)
    return statistics.median(walls), statistics.median(cpus), min(walls)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=21)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="capcalc-bench-") as cache_dir:
        bare, bare_cpu, bare_min = median_s(["-c", "pass"], args.runs, args.warmup, cache_dir)
        kv, kv_cpu, kv_min = median_s(COMMAND, args.runs, args.warmup, cache_dir)
    ratio = kv / bare
    met = kv <= TARGET_S or ratio <= TARGET_RATIO
    print(f"median of {args.runs} runs                  wall       CPU   (fastest wall)")
    print(
        f"python -c pass                    {bare * 1000:6.1f} ms {bare_cpu * 1000:6.1f} ms ({bare_min * 1000:6.1f} ms)"
    )
    print(
        f"capcalc kv llama-3-70b --ctx 8192 {kv * 1000:6.1f} ms {kv_cpu * 1000:6.1f} ms ({kv_min * 1000:6.1f} ms)"
    )
    print(
        f"ratio                             {ratio:6.1f} x  {kv_cpu / bare_cpu:6.1f} x  ({kv_min / bare_min:6.1f} x)"
    )
    print(f"target (<= {TARGET_S} s or <= {TARGET_RATIO:g}x wall): {'met' if met else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Speed of the serving model: one answer, and 1,000 answers over varied concurrency.

    PYTHONPATH=$PWD python benchmarks/serving_speed.py

Targets: one answer <= 0.3 s; 1,000 answers <= 30 s on 2 cores.
"""

from __future__ import annotations

import itertools
import time

from capcalc.perf.efficiency import resolve_efficiency
from capcalc.serving.engine import Replica, Workload, predict_serving
from capcalc.serving.engines import engine_defaults, engine_efficiency
from capcalc.sources.registry import Registry


def main() -> None:
    reg = Registry.load()
    cases = [
        ("llama-3.1-70b", "h100-sxm", 4, "fp8"),
        ("qwen3-32b", "h100-sxm", 2, "auto"),
        ("gpt-oss-120b", "b200", 1, "auto"),
        ("deepseek-v3", "b200", 8, "fp8"),
    ]
    worst, worst_case = 0.0, ""
    t_all = time.perf_counter()
    n = 0
    concurrencies = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 512]
    shapes = [(1024, 1024), (8192, 1024), (1024, 8192), (2048, 256), (4096, 512)]
    for (m, g, tp, wd), engine in itertools.product(cases, ("vllm", "sglang", "trtllm")):
        model, gpu = reg.model(m), reg.gpu(g)
        replica = Replica(model, gpu, tp=tp, weight_dtype=wd, kv_dtype="fp8" if wd == "fp8" else "auto")
        cfg = engine_defaults(engine, gpu)
        eff = engine_efficiency(engine, resolve_efficiency(gpu).efficiency, replica.weight_dtype)
        for (p, o), c in itertools.product(shapes, concurrencies):
            if n >= 1000:
                break
            t = time.perf_counter()
            predict_serving(replica, Workload(p, o, concurrency=c), cfg, eff)  # sizes its pool and steps
            took = time.perf_counter() - t
            if took > worst:
                worst, worst_case = took, f"{m} {g} tp{tp} {wd} {engine} {p}/{o} C={c}"
            n += 1
    total = time.perf_counter() - t_all
    print(
        f"{n} answers in {total:.1f} s ({total / n * 1e3:.1f} ms each); slowest single answer {worst:.3f} s"
        f" ({worst_case})"
    )


if __name__ == "__main__":
    main()

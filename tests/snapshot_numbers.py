"""Regression pin: the numbers every shipped model profile gives, written to a JSON fixture.

This script generated ``tests/fixtures/regression/model_numbers.json`` BEFORE the layer
kinds became spec classes (capcalc/model/layers.py), from the code as it was then. The
fixture is a regression pin, not an oracle: it says nothing about whether the numbers
are right (the other tests do that, from first principles and published figures); it
says that the refactor changed none of them. ``tests/test_layer_specs.py`` recomputes
the same records and asserts they are identical.

Regenerate only when a number is meant to change, and say which and why in the commit:

    PYTHONPATH=$PWD python tests/snapshot_numbers.py

Per model it records: KV bytes per token (per layer, whole model, tp 1 and tp 2 where
valid), per sequence at 1k, 8k and 128k tokens, the itemised parameter count, the
weight bytes for each weight dtype and per pipeline stage, vLLM's fit on an H100 SXM at
four settings (suggestions included), and the itemised FLOPs and bytes of decode and
prefill steps (and of the interpolated decode contexts latency averages over).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "regression" / "model_numbers.json"


def _cost(step) -> dict:
    return {c.name: [c.flops, c.bytes] for c in step.components} | {
        "experts_touched": step.experts_touched_per_layer
    }


def model_record(model, h100) -> dict:
    """Every number the snapshot pins for one model."""
    from capcalc.core.errors import CapcalcError
    from capcalc.model import flops, kv, parallel, params, weights
    from capcalc.schema.deployment import Deployment
    from capcalc.serving.fit import FitRequest, activation_bytes, fit, memory_of

    tps = [t for t in (1, 2, 8) if parallel.tp_is_valid(model, t)]
    out: dict = {"tps": tps}
    out["kv"] = {
        f"tp{tp}": {
            "per_token_per_layer": kv.kv_bytes_per_token_per_layer(model, "bf16", tp),
            "per_token": kv.kv_bytes_per_token(model, "fp8", tp),
            "per_sequence": {
                str(ctx): kv.kv_bytes_per_sequence(model, ctx, "bf16", tp) for ctx in (1024, 8192, 131072)
            },
            "record": kv.kv_cache(model, 8192, batch=3, kv_dtype="auto", tp=tp, memory_bytes=4e10).record(),
        }
        for tp in tps
    }
    out["params"] = params.count_params(model).as_dict()
    out["weights"] = {}
    for dtype in ("auto", "bf16", "fp8", "int8", "int4", "mxfp4", "nvfp4"):
        w = weights.weight_bytes(model, dtype)
        out["weights"][dtype] = [w.quantized_params, w.other_params, w.bytes]
    out["stages"] = {
        f"tp{tp}pp{pp}": [
            [s.first_layer, s.end_layer, s.bytes]
            for s in weights.weight_bytes_per_gpu(model, Deployment(tp=tp, pp=pp, weight_dtype="fp8"))
        ]
        for tp in tps
        for pp in (1, 2)
    }
    memory, source = memory_of(h100)
    settings = {
        "len8k": dict(max_model_len=min(8192, model.max_context)),
        "max_len": dict(),
        "tp_fp8": dict(deployment=Deployment(tp=tps[-1], kv_dtype="fp8"), max_model_len=model.max_context),
        "pp2_nohybrid": dict(
            deployment=Deployment(tp=tps[min(1, len(tps) - 1)], pp=2),
            hybrid=False,
            max_num_batched_tokens=2048,
            max_model_len=min(32768, model.max_context),
        ),
    }
    out["fit"] = {}
    for label, fields in settings.items():
        try:
            r = fit(model, FitRequest(memory, source, gpu=h100.name, **fields))
            out["fit"][label] = r.record()
        except CapcalcError as exc:
            out["fit"][label] = {"error": exc.message}
    out["activation"] = activation_bytes(model, tps[-1], 8192, 1024)
    out["flops"] = {}
    for tp in tps[:2]:
        d = Deployment(tp=tp)
        out["flops"][f"tp{tp}"] = {
            "decode_b1_c1024": _cost(flops.decode_cost(model, 1, 1024, d)),
            "decode_b32_c8192": _cost(flops.decode_cost(model, 32, 8192, d)),
            "prefill_b1_p2048": _cost(flops.prefill_cost(model, 1, 2048, d)),
            "prefill_b4_p512": _cost(flops.prefill_cost(model, 4, 512, d)),
            "decode_costs_b8": {
                str(c): _cost(s) for c, s in flops.decode_costs(model, 8, [100, 700, 3000, 20000], d).items()
            },
            "activation_elements": flops.activation_elements_per_token(model, tp),
        }
    return out


def snapshot() -> dict:
    """The records of every shipped model profile and the two tiny test profiles."""
    from capcalc.sources.loader import load_profile_file
    from capcalc.sources.registry import Registry

    registry = Registry.load(include_env=False)
    h100 = registry.gpu("h100-sxm")
    models = dict(registry.models)
    for name in ("tiny-test", "tiny-moe-test"):
        models[name] = load_profile_file(ROOT / "tests" / "profiles" / f"{name}.yaml")
    return {name: model_record(models[name], h100) for name in sorted(models)}


def main() -> None:
    sys.path.insert(0, str(ROOT))
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "about": "Regression pin generated by tests/snapshot_numbers.py before the layer-spec refactor; "
        "numbers as the code gave them, not an oracle (see the script's docstring).",
        "models": snapshot(),
    }
    FIXTURE.write_text(json.dumps(data, indent=0, sort_keys=True) + "\n")
    print(f"wrote {FIXTURE} ({len(data['models'])} models)")


if __name__ == "__main__":
    main()

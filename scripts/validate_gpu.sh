#!/usr/bin/env bash
# Validate capcalc's latency model on your own GPU: time the device (`capcalc measure --gpu`),
# then measure decode and prefill of four models against capcalc's prediction, and write
# everything under $OUT. docs/validation.md shows what one such run on an H100 found.
#
#   OUT=/tmp/out bash scripts/validate_gpu.sh            # from the repository root
#   MODELS="llama-3.2-1b" BATCHES=1,8 bash scripts/validate_gpu.sh   # a quicker subset
#
# Needs torch (CUDA), typer, rich, pyyaml; not pytest, numpy or the internet. Runs the
# package from the checkout (PYTHONPATH=.). About 3 minutes on one H100 (each step has its
# own timeout). The fitted efficiencies are saved (--save) into a calibration file inside
# the results, and a `capcalc latency` run afterwards shows it being used.
# Points that would not fit in memory are skipped by capcalc's own pre-check (logged).
#
# What it writes (four files, small enough to attach to a bug report):
#   $OUT/summary.txt           environment, each model's calibration summary, the 60%-of-copy check
#   $OUT/all.csv               every record of every run, one CSV
#   $OUT/validation.tar.gz     per-run JSON and stderr logs
#   $OUT/run.log               this script's own log
set -u -o pipefail
OUT=${OUT:-./validation-out}
MODELS=${MODELS:-"llama-3.2-1b llama-3-8b qwen2.5-7b qwen3-30b-a3b"}
BATCHES=${BATCHES:-1,4,16,64,256}
CONTEXTS=${CONTEXTS:-512,2048,8192}
PROMPTS=${PROMPTS:-512,2048,8192}
PREFILL_BATCHES=${PREFILL_BATCHES:-1,4}
DEVICE=${DEVICE:-cuda:0}
STEP_TIMEOUT=${STEP_TIMEOUT:-150}   # measure --gpu
MODEL_TIMEOUT=${MODEL_TIMEOUT:-480} # all models together (about 2 minutes on an H100)
EXTRA=${EXTRA:-}                  # e.g. "--repeats 10" or "--profiles DIR"

mkdir -p "$OUT"
WORK="$OUT/validation"
mkdir -p "$WORK"
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
# keep calibration / drafted profiles of this run inside the results, not in ~/.config
export CAPCALC_PROFILES="$WORK/profiles"
mkdir -p "$CAPCALC_PROFILES"
exec > >(tee "$OUT/run.log") 2>&1

echo "== $(date -u +%Y-%m-%dT%H:%M:%SZ) capcalc GPU validation"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit --format=csv 2>&1 | tee "$WORK/nvidia-smi.csv"
python3 - <<'EOF' 2>&1 | tee "$WORK/env.txt"
import platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("device", p.name, "sm", f"{p.major}.{p.minor}", "memory", p.total_memory, "L2", getattr(p, "L2_cache_size", None))
EOF

start=$SECONDS
echo "== measure --gpu"
timeout "$STEP_TIMEOUT" python3 -m capcalc measure --gpu --device "$DEVICE" --json $EXTRA \
    >"$WORK/device.json" 2>"$WORK/device.log"
echo "rc=$? in $((SECONDS - start)) s"; cat "$WORK/device.log"

# all models in one command: one least-squares fit of the efficiency parameters for this GPU
# (several model sizes separate the per-layer and per-step costs from the bandwidth terms)
t0=$SECONDS
LIST=$(echo $MODELS | tr ' ' ',')
echo "== measure $LIST"
timeout "$MODEL_TIMEOUT" python3 -m capcalc measure "$LIST" --device "$DEVICE" \
    --batch "$BATCHES" --ctx "$CONTEXTS" --prompt "$PROMPTS" --prefill-batch "$PREFILL_BATCHES" \
    --weight-dtype bf16 --save --json $EXTRA >"$WORK/models.json" 2>"$WORK/models.log"
echo "rc=$? in $((SECONDS - t0)) s"; cat "$WORK/models.log"

# later predictions on this GPU use the saved calibration, and say so (efficiency_source)
GPU_NAME=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[-1]['gpu'])" "$WORK/models.json" 2>/dev/null)
echo "== latency llama-3-8b --gpu '$GPU_NAME' after --save"
timeout 60 python3 -m capcalc latency llama-3-8b --gpu "$GPU_NAME" --prompt 512 --output 128 --batch 1 --json $EXTRA \
    >"$WORK/latency-after-save.json" 2>"$WORK/latency-after-save.log"
echo "rc=$?"; cat "$WORK/latency-after-save.log"; grep -E '"(efficiency_source|itl_s|ttft_s)"' "$WORK/latency-after-save.json"

echo "== total $((SECONDS - start)) s"

python3 - "$WORK" "$OUT" <<'EOF' 2>&1 | tee "$OUT/summary.txt"
import json, sys
from pathlib import Path
from capcalc.report.output import write_csv
work, out = Path(sys.argv[1]), Path(sys.argv[2])
records = []
for path in sorted(work.glob("*.json")):
    try:
        data = json.loads(path.read_text() or "[]")
    except json.JSONDecodeError:
        print(f"{path.name}: no JSON (see its .log)")
        continue
    records.extend(data if isinstance(data, list) else [data])
with open(out / "all.csv", "w") as fh:
    write_csv(records, fh)
print((work / "env.txt").read_text())
for r in records:
    if r.get("record") == "device":
        ratio = r.get("measured_over_datasheet")
        fig = r.get("measured_bandwidth_bytes_per_s") or r.get("measured_flops_per_s")
        print(f"{r['benchmark']:7} {r['dtype']:5} {r['shape']:40} {fig:.4g}  vs datasheet {ratio if ratio is None else round(ratio, 3)}")
for r in records:
    if r.get("record") == "calibration":
        def pct(x):
            return "-" if x is None else f"{x:.1f} %"
        print(f"\n{r['model']} on {r['device_name']} ({r['gpu']}): decode points {r['decode_points']}, "
              f"prefill points {r['prefill_points']}, skipped {r['skipped_points']}")
        print(f"  decode  median |error| {pct(r['decode_median_abs_error_pct'])} -> calibrated "
              f"{pct(r['decode_median_abs_error_calibrated_pct'])}")
        print(f"  prefill median |error| {pct(r['prefill_median_abs_error_pct'])} -> calibrated "
              f"{pct(r['prefill_median_abs_error_calibrated_pct'])}")
        if r["model"] != "all":
            print(f"  fitted on this model alone: decode {pct(r['decode_median_abs_error_calibrated_alone_pct'])}, "
                  f"prefill {pct(r['prefill_median_abs_error_calibrated_alone_pct'])}")
fits = [r for r in records if r.get("record") == "calibration"]
if fits:
    print("\nfitted (one fit over all models): " + ", ".join(f"{k[7:]}={v:.4g}" for k, v in fits[-1].items() if k.startswith("fitted_")))
    print("defaults: " + ", ".join(f"{k[8:]}={v:.4g}" for k, v in fits[-1].items() if k.startswith("default_")))
print("\nphase   model            batch  ctx/prompt  measured_ms  predicted_ms  err%   cal_err%  achieved_GB/s  of_copy  graph")
for r in records:
    if r.get("record") in ("decode", "prefill"):
        print(f"{r['record']:7} {r['model']:16} {r['batch']:5} {r['ctx'] or r['prompt_tokens']:10} "
              f"{r['measured_time_s']*1e3:11.3f} {r['predicted_time_s']*1e3:13.3f} {r['error_pct']:6.1f} "
              f"{r['calibrated_error_pct']:8.1f} {r['achieved_bandwidth_bytes_per_s']/1e9:14.1f} "
              f"{r['achieved_bandwidth_over_copy']:8.2f}  {r['cuda_graph']}")
eight = [r for r in records if r.get("record") == "decode" and r["model"] == "llama-3-8b" and r["batch"] == 1]
for r in eight:
    print(f"\nllama-3-8b batch 1 ctx {r['ctx']}: {r['achieved_bandwidth_over_copy']:.0%} of measured copy bandwidth "
          f"(target >= 60%)")
EOF

tar czf "$OUT/validation.tar.gz" -C "$OUT" validation && rm -rf "$WORK"
ls -la "$OUT"

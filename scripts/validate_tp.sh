#!/usr/bin/env bash
# Multi-GPU validation of `capcalc measure --tp N`: the all-reduce on 2..N GPUs,
# then measured-vs-predicted decode and prefill of an 8B and a 70B model at tp 1, 2, 4, 8
# (those the host has), written under $OUT. Run from the repository root on an N-GPU host:
#
#   OUT=/tmp/out bash scripts/validate_tp.sh                 # every GPU torch sees
#   OUT=/tmp/out TPS="1 2 4" MODELS=llama-3-8b bash scripts/validate_tp.sh
#
# Needs torch (CUDA, NCCL), typer, rich, pyyaml; no internet. capcalc spawns the ranks
# itself (one process per GPU, NCCL over a free local port); points that do not fit one
# GPU's share (llama-3-70b at tp 1) are refused by the memory pre-check and logged.
# The all-reduce terms are saved (--save) into a calibration file inside the results, and
# a `capcalc latency --tp` run afterwards shows them used.
#
# What comes back:
#   $OUT/summary.txt    each run's measured vs predicted step times and the speed-up over tp 1
#   $OUT/all.jsonl      every record of every run
#   $OUT/run.log        this script's log (every command, its stderr)
set -u -o pipefail
OUT=${OUT:-./validation-tp-out}
GPUS=$(python3 -c "import torch; print(torch.cuda.device_count())")
TPS=${TPS:-"1 2 4 8"}
MODELS=${MODELS:-"llama-3-8b llama-3-70b"}
BATCHES=${BATCHES:-1,16,64}
CONTEXTS=${CONTEXTS:-2048}
PROMPTS=${PROMPTS:-2048}
TIMEOUT=${TIMEOUT:-900}
EXTRA=${EXTRA:-}

mkdir -p "$OUT/runs"
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export CAPCALC_PROFILES="$OUT/profiles"
mkdir -p "$CAPCALC_PROFILES"
exec > >(tee "$OUT/run.log") 2>&1
echo "== $(date -u +%Y-%m-%dT%H:%M:%SZ) capcalc multi-GPU validation on $GPUS GPUs"
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv
nvidia-smi topo -m || true
# NCCL's own settings are kept as the environment has them (NCCL_NVLS_ENABLE among them):
# the all-reduce figures hold for these settings
env | grep -E '^(NCCL|TORCH_NCCL|TORCH_SYMM_MEM)_' || true
python3 -c "import torch; print('torch', torch.__version__, 'nccl', torch.cuda.nccl.version())"

echo "== measure --gpu --tp $GPUS"
timeout "$TIMEOUT" python3 -m capcalc measure --gpu --tp "$GPUS" --save --jsonl $EXTRA \
    >"$OUT/runs/allreduce.jsonl"
echo "rc=$?"

for model in $MODELS; do
    for tp in $TPS; do
        [ "$tp" -le "$GPUS" ] || continue
        echo "== measure $model --tp $tp"
        timeout "$TIMEOUT" python3 -m capcalc measure "$model" --tp "$tp" --batch "$BATCHES" \
            --ctx "$CONTEXTS" --prompt "$PROMPTS" --weight-dtype bf16 --save --jsonl $EXTRA \
            >"$OUT/runs/$model-tp$tp.jsonl"
        echo "rc=$?"
    done
done
cat "$OUT"/runs/*.jsonl >"$OUT/all.jsonl"
cp "$CAPCALC_PROFILES/calibration.yaml" "$OUT/" 2>/dev/null || true

for tp in $TPS; do
    [ "$tp" -le "$GPUS" ] && [ "$tp" -gt 1 ] || continue
    echo "== latency llama-3-8b --tp $tp (uses the saved all-reduce terms)"
    python3 -m capcalc latency llama-3-8b --gpu "$(python3 -c "import torch; print(torch.cuda.get_device_name(0))")" \
        --tp "$tp" --prompt 2048 --output 128 --json | grep -E '"(assume_allreduce|itl_s|efficiency_source)'
done

python3 - "$OUT" <<'EOF' | tee "$OUT/summary.txt"
import json, sys
rows = [json.loads(line) for line in open(f"{sys.argv[1]}/all.jsonl") if line.strip()]
steps = [r for r in rows if r.get("record") in ("decode", "prefill")]
base = {(r["model"], r["record"], r["batch"]): r["measured_time_s"] for r in steps if r.get("tp", 1) == 1}
pbase = {(r["model"], r["record"], r["batch"]): r["predicted_time_s"] for r in steps if r.get("tp", 1) == 1}
print(f"{'model':<12} {'phase':<8} {'batch':>5} {'tp':>3} {'measured':>10} {'predicted':>10} {'error':>7} "
      f"{'comm meas.':>10} {'comm pred.':>10} {'speed-up meas./pred.':>21}")
for r in sorted(steps, key=lambda r: (r["model"], r["record"], r["batch"], r.get("tp", 1))):
    key, tp = (r["model"], r["record"], r["batch"]), r.get("tp", 1)
    up = f"{base[key] / r['measured_time_s']:.2f} / {pbase[key] / r['predicted_time_s']:.2f}" if key in base else "-"
    comm = lambda k: f"{r[k] * 1e3:.3f}ms" if r.get(k) is not None else "-"
    print(f"{r['model']:<12} {r['record']:<8} {r['batch']:>5} {tp:>3} {r['measured_time_s'] * 1e3:>8.3f}ms "
          f"{r['predicted_time_s'] * 1e3:>8.3f}ms {r['error_pct']:>6.1f}% {comm('measured_comm_s'):>10} "
          f"{comm('predicted_comm_s'):>10} {up:>21}")
for r in rows:
    if r.get("record") in ("allreduce_fit", "allreduce_tp_form"):
        print(json.dumps({k: v for k, v in r.items() if k.startswith(("record", "tp", "allreduce", "busbw", "form"))}))
EOF

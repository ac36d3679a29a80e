#!/usr/bin/env bash
# The GPU check, in one go: about 8 minutes on one H100/H200.
#
#   benchmarks/gpu.sh [--dry-run] [OUTDIR]     # OUTDIR: default $OUT, else benchmarks/results/gpu
#
# 1. tests:  the device-capable tests on CUDA (GPTBENCH_TEST_DEVICE=cuda: the backend contract
#            and torch's specifics, the MLX ones left out), ~2-3 min
# 2. train:  the gpt2 124M shape, bf16 autocast, torch.compile, fused AdamW, 200 steps of
#            16 x 1024 tokens; every step prints as it ends; tokens/s, MFU against the chip's
#            dense bf16 peak, peak memory (benchmarks/gpu_check.py train), ~2-3 min
# 3. decode: 124M greedy decoding at batch 1 and 16, tokens/s and peak memory, < 1 min
#
# Each part runs under its own timeout and its output goes to OUTDIR/<part>.log as it
# prints; a part that fails or times out does not stop the next. JSON: OUTDIR/train.json,
# train_steps.jsonl (one line per step), decode.json, decode_rows.jsonl, tests.xml.
# --dry-run takes the same code on this machine's CPU with tiny shapes (< 2 minutes):
# a handful of the tests, a 1-layer model for a few steps, 16 decoded tokens.
#
# NOT YET RUN ON A GPU: written and dry-run on a CPU only (no device was lent).
set -u
cd "$(dirname "$0")/.."
DRY=""
if [ "${1:-}" = "--dry-run" ]; then DRY="--dry-run"; shift; fi
OUTDIR="${1:-${OUT:-benchmarks/results/gpu}}"
PY="${PYTHON:-python}"
mkdir -p "$OUTDIR"
failed=""

part() {  # part NAME TIMEOUT_S COMMAND...: run, tee to OUTDIR/NAME.log, note a failure
  local name=$1 limit=$2 start rc
  shift 2
  start=$(date +%s)
  echo "== $name: $*"
  timeout --signal=INT --kill-after=15 "$limit" "$@" 2>&1 | tee "$OUTDIR/$name.log"
  rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc after $(( $(date +%s) - start )) s"
  [ "$rc" -eq 0 ] || failed="$failed $name($rc)"
}

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUTDIR/nvidia-smi.log"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"

if [ -n "$DRY" ]; then
  part tests 120 env GPTBENCH_TEST_DEVICE=cpu "$PY" -m pytest -q -p no:cacheprovider --junitxml="$OUTDIR/tests.xml" \
    tests/test_backend_specifics.py -k "torch_compile_keeps or torch_unknown_device"
else
  part tests 240 env GPTBENCH_TEST_DEVICE=cuda "$PY" -m pytest -q -p no:cacheprovider --junitxml="$OUTDIR/tests.xml" \
    tests/test_backend_contract.py tests/test_backend_specifics.py -k "not mlx"
fi
part train 300 "$PY" benchmarks/gpu_check.py train $DRY --out "$OUTDIR"
part decode 120 "$PY" benchmarks/gpu_check.py decode $DRY --out "$OUTDIR"

echo "== results in $OUTDIR"
if [ -n "$failed" ]; then echo "== failed:$failed"; exit 1; fi
echo "== all parts passed"

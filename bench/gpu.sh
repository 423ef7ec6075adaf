#!/usr/bin/env bash
# The GPU benches issue 14 names, in one pass, each under its own time limit so that a slow or
# failing one leaves the others' tables: bench.training's CUDA table (bf16-mixed; eager, then
# with [trainer] compile) and bench.sampling on CUDA (speed with early stop on and off, where a
# 32x32 x 8192 step's time goes, bf16 against float32, compiled against eager). Logs go to OUT_DIR.
#
#   bash bench/gpu.sh [PY] [OUT_DIR] [DIGITS_CKPT]      (from the repository root: python -m bench.X)
set -uo pipefail
PY=${1:-python3}
OUT_DIR=${2:-bench-gpu-out}
CKPT=${3:-runs/digits/checkpoints/last.ckpt}
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1 SUNDAE_THREADS=${SUNDAE_THREADS:-4}

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  "$PY" -c 'import torch, pytorch_lightning as pl; print("torch", torch.__version__, "Lightning", pl.__version__)'
} 2>&1 | tee "$OUT_DIR/machine.txt"

run() {  # run NAME SECONDS CMD...: the command's output in OUT_DIR/NAME.md, its exit status noted
    local name=$1 limit=$2; shift 2
    echo "== $name (limit ${limit}s)"
    local start=$SECONDS
    # to a file, not a pipe: torch.compile's worker processes outlive a killed run and would hold
    # a pipe open, so `timeout ... | tee` waits for them past the limit
    timeout -k 5 "$limit" "$@" >"$OUT_DIR/$name.md" 2>&1
    echo "== $name: exit $? after $((SECONDS - start)) s" >>"$OUT_DIR/$name.md"
    cat "$OUT_DIR/$name.md"
}

[ -n "${SKIP_TRAINING:-}" ] || run training 170 "$PY" -m bench.training --device cuda
run sampling 170 "$PY" -m bench.sampling --device cuda --digits-ckpt "$CKPT" \
    --digits-samples 1000 --ffhq-samples 16 --ffhq-steps 20 ${SAMPLING_ARGS:-}
[ -n "${SKIP_COMPILED_TRAINING:-}" ] ||  # digits only: each compilation takes over a minute
    run training-compiled 150 "$PY" -m bench.training --device cuda --compile --rounds 1 --shapes digits

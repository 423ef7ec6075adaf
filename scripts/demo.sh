#!/usr/bin/env bash
# The main job on the embedded default (config/digits.toml), what `make demo` runs:
#   scikit-learn's bundled digits -> train.py (SUNDAE prior) -> sample.py (1000 class-balanced
#   samples) -> inpaint.py -> evaluate.py (the samples beside the harness's reference rows).
# Each stage prints the time since the start, so the run is its own profile. The console shows
# the stages, the training progress bar and the scores; OUT_DIR/demo.log keeps everything.
#
#   scripts/demo.sh [PYTHON] [OUT_DIR] [CONFIG]   (defaults: .venv/bin/python demo-out config/digits.toml)
set -euo pipefail

PY=${1:-.venv/bin/python}
OUT=${2:-demo-out}
CFG=${3:-config/digits.toml}
# Resolved once for the whole job: the config's run directory and dataset (the demo owns both and
# starts them from scratch), and the CPU threads: SUNDAE_THREADS or OMP_NUM_THREADS if set, else
# 'idle', the cores other work leaves free now. Every script alone takes one thread; a second
# makes the digits step 1.4x faster on an idle machine but spins when another process shares the
# cores, so it is taken only when they look free (README: CPU threads).
resolved=$("$PY" - "$CFG" <<'PYTHON'
import os
import sys
from infra.devices import thread_count
from infra.errors import UserError
from training.config import load_config
try:
    cfg = load_config(sys.argv[1])
    env = dict(os.environ)
    if not any(env.get(name, "").strip() for name in ("SUNDAE_THREADS", "OMP_NUM_THREADS")):
        env["SUNDAE_THREADS"] = "idle"
    print(f"{cfg.trainer.runs_dir}/{cfg.trainer.exp_name}", cfg.data.root, thread_count(environ=env)[0])
except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
PYTHON
) || exit 2
read -r RUN DATA SUNDAE_THREADS <<< "$resolved"
CKPT=$RUN/checkpoints/last.ckpt
export SUNDAE_THREADS

rm -rf "$OUT" "$RUN"
mkdir -p "$OUT"
LOG=$OUT/demo.log  # every stage's full output; the console shows the stages, the training bar and the scores
SECONDS=0
stage() { echo; echo "=== [$((SECONDS / 60))m$((SECONDS % 60))s] $*" | tee -a "$LOG"; }
failed() { status=$1; tail -n 20 "$LOG"; echo "failed (exit $status); the full log: $LOG"; exit "$status"; }
quiet() { "$@" >>"$LOG" 2>&1 || failed $?; }  # a stage's output to the log only
echo "threads: $SUNDAE_THREADS (the full log: $LOG)"

stage "1/5 the digits dataset"
quiet "$PY" generate-discrete-mnist.py digits "$DATA" --overwrite

stage "2/5 train the prior"
"$PY" train.py --cfg-path "$CFG" --overwrite 2>&1 | tee -a "$LOG" | "$PY" scripts/progress_filter.py || failed $?

stage "3/5 sample 1000 digits, 100 per class"
quiet "$PY" sample.py --cfg-path "$CFG" --resume "$CKPT" --nb-samples 1000 --batch-size 250 --class-balanced \
    --out-dir "$OUT/samples" --no-progress --save-latents "$OUT/samples.npy" --save-labels "$OUT/labels.npy" \
    --grid "$OUT/samples.png"

stage "4/5 inpaint the bottom half of six held-out digits"
quiet "$PY" inpaint.py --dataset-rows 0 1 2 3 4 5 --cfg-path "$CFG" --resume "$CKPT" --block 4 0 4 8 \
    --nb-samples 6 --out-dir "$OUT/inpainting"

stage "5/5 score the samples with the evaluation harness"
"$PY" evaluate.py "$OUT/samples.npy" --dataset "$DATA" --labels "$OUT/labels.npy" \
    --sampling-summary "$OUT/samples/summary.json" --json "$OUT/quality.json" 2>&1 | tee -a "$LOG" || failed $?

stage "done"
echo "samples: $OUT/samples.png  inpainting: $OUT/inpainting/  scores: $OUT/quality.json  log: $LOG"

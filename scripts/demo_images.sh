#!/usr/bin/env bash
# The whole image pipeline on the CPU, on photographs that ship inside scikit-image (no download):
#   crops of the photos -> train-vqgan.py -> generate-latents.py -> train.py (SUNDAE prior)
#   -> sample.py (grid), inpaint.py, recon-vqgan.py (crops of a photo that training never sees).
# About ten minutes on 2 CPU cores.
#
#   scripts/demo_images.sh [PYTHON] [OUT_DIR]      (defaults: .venv/bin/python demo-images-out)
set -euo pipefail

PY=${1:-.venv/bin/python}
OUT=${2:-demo-images-out}
# Tiny models: a second intra-op thread gains little, and on a busy machine two spinning threads
# per process make every step many times slower. Set OMP_NUM_THREADS yourself to override.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}  # scripts/ imports the repository's packages

CROPS=data/skimage-crops
LATENTS=data/skimage-crops-latents  # = [data] root of the prior config
VQ_CFG=config/vqgan/tiny-crops32.yaml
VQ_RUN=runs/vqgan-tiny-crops32      # = [vqgan] checkpoint's directory in the prior config
VQ_CKPT=$VQ_RUN/checkpoints/last.ckpt
PRIOR_CFG=config/tiny-images.toml
PRIOR_RUN=runs/tiny-images          # = trainer.exp_name of the prior config
PRIOR_CKPT=$PRIOR_RUN/checkpoints/last.ckpt
# held-out 32x32 crops of the cat: left eye, right eye, nose, forehead
INPAINT=(chelsea-0048-0064 chelsea-0048-0144 chelsea-0112-0112 chelsea-0016-0096)

# Start from scratch: the demo owns these run directories. (train.py --overwrite alone would leave
# an earlier run's last.ckpt in place and write last-v1.ckpt beside it.)
rm -rf "$OUT" "$VQ_RUN" "$PRIOR_RUN"
mkdir -p "$OUT/inpaint-inputs"
SECONDS=0
stage() { echo; echo "=== [$((SECONDS / 60))m$((SECONDS % 60))s] $*"; }

stage "1/7 crops of scikit-image's sample photographs"
"$PY" scripts/shipped_image_crops.py "$CROPS" --size 32

stage "2/7 train the tiny VQ-GAN"
"$PY" train-vqgan.py --cfg-path "$VQ_CFG" --dataset "$CROPS/train" --eval-dataset "$CROPS/heldout" \
    --run-dir "$VQ_RUN" --overwrite

stage "3/7 encode the training crops into a latent dataset"
"$PY" generate-latents.py --cfg-path "$VQ_CFG" --ckpt-path "$VQ_CKPT" --dataset-in "$CROPS/train" \
    --latents-out "$LATENTS" --eval-fraction 0.05 --nb-workers 0 --device cpu --overwrite

stage "4/7 train the SUNDAE prior on the code grids"
"$PY" train.py --cfg-path "$PRIOR_CFG" --overwrite

stage "5/7 sample a grid"
"$PY" sample.py --cfg-path "$PRIOR_CFG" --resume "$PRIOR_CKPT" --nb-samples 64 --batch-size 64 \
    --out-dir "$OUT/samples" --grid "$OUT/samples.png" --device cpu --no-progress

stage "6/7 inpaint the centre 16x16 pixels of held-out crops"
for name in "${INPAINT[@]}"; do cp "$CROPS/heldout/$name.png" "$OUT/inpaint-inputs/"; done
"$PY" inpaint.py "$OUT/inpaint-inputs" --cfg-path "$PRIOR_CFG" --resume "$PRIOR_CKPT" \
    --block 8 8 16 16 --nb-samples 6 --out-dir "$OUT/inpainting" --device cpu

stage "7/7 reconstruct the held-out crops through the VQ-GAN"
"$PY" recon-vqgan.py "$CROPS/heldout" --cfg-path "$VQ_CFG" --ckpt-path "$VQ_CKPT" \
    --out-dir "$OUT/recon" --device cpu | tail -n 3

stage "done"
echo "samples:        $OUT/samples.png"
echo "inpainting:     $OUT/inpainting/"
echo "reconstruction: $OUT/recon/ (original | reconstruction per held-out crop)"
echo "VQ-GAN reconstructions at each evaluation: $VQ_RUN/reconstructions/"

# Set-up and entry points. `make test` and `make demo` work on a fresh machine:
# they create .venv and install the pinned requirements first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: test test-fast demo demo-images

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -r requirements.txt
	touch $(STAMP)

# Every test, the slow end-to-end ones included (what CI runs).
test: $(STAMP)
	$(PY) -m pytest -q -ra

# Skip the tests marked slow, for quick iteration.
test-fast: $(STAMP)
	$(PY) -m pytest -q -ra -m "not slow"

# Every script uses one CPU thread unless SUNDAE_THREADS (a number, or 'all') or OMP_NUM_THREADS
# says otherwise: on a shared machine more threads spin and slow down (README: CPU threads).
# The main job on the embedded default: build the digits dataset (bundled with scikit-learn),
# train the prior on the CPU (~25 minutes: bench/README.md), sample 1000 digits (100 per class), inpaint, and
# score the samples with the evaluation harness beside its two reference rows.
DEMO := demo-out
demo: $(STAMP)
	rm -rf $(DEMO)
	$(PY) generate-discrete-mnist.py digits data/digits --overwrite
	$(PY) train.py --cfg-path config/digits.toml --overwrite
	$(PY) sample.py --cfg-path config/digits.toml --resume runs/digits/checkpoints/last.ckpt \
		--nb-samples 1000 --batch-size 250 --class-balanced --out-dir $(DEMO)/samples --no-progress \
		--save-latents $(DEMO)/samples.npy --save-labels $(DEMO)/labels.npy --grid $(DEMO)/samples.png
	$(PY) inpaint.py --dataset-rows 0 1 2 3 4 5 --cfg-path config/digits.toml \
		--resume runs/digits/checkpoints/last.ckpt --block 4 0 4 8 --nb-samples 6 \
		--out-dir $(DEMO)/inpainting
	@echo "samples: $(DEMO)/samples.png  inpainting: $(DEMO)/inpainting/"
	$(PY) evaluate.py $(DEMO)/samples.npy --dataset data/digits --labels $(DEMO)/labels.npy \
		--sampling-summary $(DEMO)/samples/summary.json --json $(DEMO)/quality.json

# The whole image pipeline on photographs bundled with scikit-image (no download), on the CPU in
# about ten minutes: crops, train-vqgan.py, generate-latents.py, train.py, then sample.py,
# inpaint.py and recon-vqgan.py.
demo-images: $(STAMP)
	bash scripts/demo_images.sh $(PY) demo-images-out

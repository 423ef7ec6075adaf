# Set-up and entry points. `make test` and `make demo` work on a fresh machine:
# they create .venv and install the pinned requirements first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: test test-fast demo demo-images

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	@# pip's output (its index warnings included) to a log, shown only when the install fails
	$(VENV)/bin/pip install --quiet -r requirements.txt > $(VENV)/install.log 2>&1 || { cat $(VENV)/install.log; exit 1; }
	touch $(STAMP)

# Every test, the slow end-to-end ones included (what CI runs), on every core: pytest-xdist runs
# one worker per core, each test module on one worker (so module fixtures are built once).
TEST_ARGS := -q -ra -n auto --dist loadscope
test: $(STAMP)
	$(PY) -m pytest $(TEST_ARGS)

# Skip the tests marked slow, for quick iteration.
test-fast: $(STAMP)
	$(PY) -m pytest $(TEST_ARGS) -m "not slow"

# The main job on the embedded default (scripts/demo.sh): build the digits dataset (bundled with
# scikit-learn), train the prior on the CPU, sample 1000 digits (100 per class), inpaint, and score
# the samples with the evaluation harness beside its two reference rows. Its threads: the cores
# other work leaves free when it starts, unless SUNDAE_THREADS says otherwise (README: CPU threads).
DEMO := demo-out
demo: $(STAMP)
	bash scripts/demo.sh $(PY) $(DEMO)

# The whole image pipeline on photographs bundled with scikit-image (no download), on the CPU in
# about ten minutes: crops, train-vqgan.py, generate-latents.py, train.py, then sample.py,
# inpaint.py and recon-vqgan.py.
demo-images: $(STAMP)
	bash scripts/demo_images.sh $(PY) demo-images-out

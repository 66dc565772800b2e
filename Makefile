# speechbrain-ssrl: `make demo` (MiniVox end to end) and `make test` (the test suite).
# Each target installs what it needs first (Debian packages, a venv, the package) and is safe to re-run.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SYSSTAMP := $(VENV)/.system-deps
DEMO_DIR ?= data/minivox_demo
DEMO_OUT ?= results/demo

.PHONY: setup system venv test test-all demo clean-demo

setup: system venv

system: $(SYSSTAMP)
$(SYSSTAMP): tools/install_system_deps.sh
	bash tools/install_system_deps.sh
	@mkdir -p $(VENV) && touch $(SYSSTAMP)

venv: $(STAMP)
$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -e '.[dev]'
	touch $(STAMP)

# the CI suite: everything but the long end-to-end runs (a small version of each runs here); pytest-xdist runs
# the tests on every core (-n auto: 2 workers on the 2-core CI machine; worksteal: an idle worker takes queued
# tests from the other), each test's torch on 1 thread
test: setup
	$(PY) -m pytest -q -n auto --dist worksteal -m "not slow" tests

# everything, including the long end-to-end runs
test-all: setup
	$(PY) -m pytest -q -n auto --dist worksteal tests

demo: setup
	$(PY) tools/demo.py --data $(DEMO_DIR) --out $(DEMO_OUT)

clean-demo:
	rm -rf $(DEMO_OUT)

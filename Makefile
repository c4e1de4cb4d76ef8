# Both entry points create and use .venv in the repo root; nothing is installed by hand.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.snnet-installed
# Where `make demo` writes its stitches.csv, pareto.csv and pareto.png. A maintainer refreshes the
# committed ones with `make demo DEMO_OUT=results/demo`.
DEMO_OUT ?= output/demo/results

# Debian packages whose real programs the tests drive (each test module says which it needs).
SYSTEM_DEPS ?= chromium chromium-driver slurm-wlm munge

.PHONY: venv lint system-deps test test-fast demo clean

# Re-installs only when the dependency lists change.
$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

system-deps:
	bash scripts/system_deps.sh $(SYSTEM_DEPS)

# Everything: lint, then the whole suite (what .ci/run runs).
test: lint system-deps
	$(PY) -m pytest -q tests

# The inner loop: the suite without the tests marked slow (subprocesses, torchrun, the demo).
test-fast: venv
	$(PY) -m pytest -q -m "not slow" tests

demo: venv
	PYTHON=$(PY) DEMO_RESULTS=$(DEMO_OUT) bash scripts/demo.sh

clean:
	rm -rf $(VENV) output

# Both entry points create and use .venv in the repo root; nothing is installed by hand.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.snnet-installed

.PHONY: venv test demo clean

# Re-installs only when the dependency lists change.
$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

test: venv
	$(PY) -m pytest -q tests

demo: venv
	PYTHON=$(PY) bash scripts/demo.sh

clean:
	rm -rf $(VENV) output

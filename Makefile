# `make test` builds or refreshes .venv from setup.py, then runs the test suite.
# `make evolve` builds or refreshes .venv, then runs the embedded tiny self-evolution
# default (configs/tiny.py) in runs/tiny; run it again to resume an interrupted run.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
PYTEST_ARGS ?= -q -n 2 --dist loadfile

EVOLVE_ARGS ?=

.PHONY: test evolve venv clean

venv: $(STAMP)

$(STAMP): setup.py
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -e ".[test]"
	touch $(STAMP)

# pytest exits 5 when it collects no tests; that is not a failure of the code.
test: $(STAMP)
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS) tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

evolve: $(STAMP)
	$(VENV)/bin/python launch/evolve.py --config configs/tiny.py --workdir runs/tiny $(EVOLVE_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info

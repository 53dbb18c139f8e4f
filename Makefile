# The two commands of the README. Each creates or refreshes .venv first.
#   make demo   run the embedded demo workflow on this machine's CPU (snakemake --cores 2)
#   make test   run the test suite
#   make lint   ruff (package, scripts, tests) and snakefmt (Snakefile, rules/), as CI runs them
VENV ?= .venv
PY := $(VENV)/bin/python
CORES ?= 2
PYTEST_ARGS ?=

.PHONY: demo test lint setup clean-results rulegraph
setup: $(VENV)/.cellmamba-ready

$(VENV)/.cellmamba-ready: pyproject.toml scripts/setup_env.sh
	VENV=$(VENV) bash scripts/setup_env.sh
	touch $@

demo: setup
	$(VENV)/bin/snakemake --cores $(CORES)

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/snakefmt --check Snakefile rules/

rulegraph: setup
	$(VENV)/bin/snakemake --rulegraph | dot -Tpng > docs/rulegraph.png

clean-results:
	rm -rf results logs .snakemake

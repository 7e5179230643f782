# Two commands do all the set-up themselves: `make demo` (the main job) and `make test` (the suite).
# Both create .venv on first use and reuse it afterwards; it is re-installed when pyproject.toml
# changes. `make examples` runs the example notebooks; `make docs` serves the documentation site
# offline on http://127.0.0.1:8000, `make docs-build` builds it into site/ as CI does (--strict: a
# broken link or API reference fails).
# TORCH is what pip installs for torch: the default pins the CPU build this project is tested with;
# for a CUDA or ROCm machine pass your build's pip arguments, e.g.
#   make demo TORCH="torch==2.13.0 --index-url <the index PyTorch's install selector gives you>"
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.asymcl-installed
DOCS_STAMP := $(VENV)/.asymcl-docs-installed
LINT_STAMP := $(VENV)/.asymcl-lint-installed
# mkdocs-gen-files and Material print a banner about mkdocs' future on every build: noise here.
DOCS_ENV := DISABLE_MKDOCS_2_WARNING=true NO_MKDOCS_2_WARNING=1

.PHONY: demo test examples docs docs-build lint clean-venv

demo: $(STAMP)
	$(BIN)/asymcl demo

test: $(STAMP)
	$(BIN)/python -m pytest

# Each notebook runs top to bottom in a fresh kernel, from its own folder (its runs go to examples/runs/).
# nbmake stops a cell after 300 s by default; the sweep cell takes about a minute alone, several on a busy machine.
examples: $(STAMP)
	$(BIN)/python -m pytest --nbmake --nbmake-timeout=900 examples

# ruff (lint and format) and mypy, configured in pyproject.toml; CI runs it.
LINT_PATHS := src tests benchmarks examples/*.py
lint: $(LINT_STAMP)
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/mypy

docs: $(DOCS_STAMP)
	$(DOCS_ENV) $(BIN)/mkdocs serve

docs-build: $(DOCS_STAMP)
	$(DOCS_ENV) $(BIN)/mkdocs build --strict

# torch first and on its own: an unpinned torch pulled in by a dependency would be a CUDA build of
# several GB.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[test,export]"
	$(BIN)/python -c "import torch, asymcl; print('torch', torch.__version__, 'asymcl', asymcl.__version__)"
	touch $(STAMP)

$(LINT_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[lint]"
	touch $(LINT_STAMP)

$(DOCS_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[docs]"
	touch $(DOCS_STAMP)

clean-venv:
	rm -rf $(VENV)

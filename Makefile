# Two commands do all the set-up themselves: `make demo` (the main job) and `make test` (the suite).
# Both create .venv on first use and reuse it afterwards; it is re-installed when pyproject.toml
# changes. TORCH is what pip installs for torch: the default pins the CPU build this project is
# tested with; for a CUDA or ROCm machine pass your build's pip arguments, e.g.
#   make demo TORCH="torch==2.13.0 --index-url <the index PyTorch's install selector gives you>"
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.asymcl-installed

.PHONY: demo test clean-venv

demo: $(STAMP)
	$(BIN)/asymcl demo

test: $(STAMP)
	$(BIN)/python -m pytest

# torch first and on its own: an unpinned torch pulled in by a dependency would be a CUDA build of
# several GB.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[test,export]"
	$(BIN)/python -c "import torch, asymcl; print('torch', torch.__version__, 'asymcl', asymcl.__version__)"
	touch $(STAMP)

clean-venv:
	rm -rf $(VENV)

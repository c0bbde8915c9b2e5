# Set-up is part of every target: a fresh clone needs only `make demo` or `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint gallery setup graphviz compiler clean

demo: setup
	$(BIN)/python -m rnnc.tools.demo specs out

test: setup lint
	$(BIN)/python -m pytest -q

# Redraw docs/gallery (a test fails when a picture there is out of date).
gallery: setup
	$(BIN)/python -m rnnc.tools.gallery_pictures specs docs

lint: setup
	$(BIN)/ruff check rnnc backends tests
	$(BIN)/ruff format --check rnnc backends tests
	$(BIN)/mypy

setup: $(STAMP) graphviz compiler

# The virtual environment, with rnnc installed in it (editable) at the pinned versions.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,torch,plot]'
	@touch $@

# Graphviz's `dot` draws svg/png/pdf; `rnnc render --format dot` works without it.
graphviz:
	@if command -v dot >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "Installing Graphviz (Debian package graphviz) ..."; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq graphviz >/dev/null) \
	    || echo "warning: could not install Graphviz; rendering to svg/png/pdf will not work"; \
	else \
	  echo "note: Graphviz's 'dot' is missing. Install it to render svg/png/pdf:"; \
	  echo "  Debian/Ubuntu: sudo apt-get install graphviz    macOS: brew install graphviz"; \
	fi

# A C compiler builds the C steps of custom cells on the PyTorch backend; without
# one those cells run their Python scans (slower, the same numbers).
compiler:
	@if command -v "$${CC:-cc}" >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "Installing a C compiler (Debian package gcc) ..."; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc libc6-dev >/dev/null) \
	    || echo "warning: could not install gcc; custom cells will run without their C steps"; \
	else \
	  echo "note: no C compiler ('cc'); custom cells on the PyTorch backend run slower without one."; \
	fi

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache .hypothesis *.egg-info

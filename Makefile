# xrq: the two commands of the README, and the checks CI runs.
#   make demo   set up .venv, report the bundled example X-rays with the shipped demo model, print the reports
#   make test   set up .venv and run the whole test suite
#   make test-fast  the suite without the `slow` tests (training, workers, the full benchmark): for development
#   make lint   ruff and mypy

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU wheel by default. On a GPU host: make setup TORCH="torch==2.11.0" (any 2.11 <= x < 2.15 CUDA build).
TORCH  ?= torch==2.13.0

export OMP_NUM_THREADS ?= 1
export HF_HUB_OFFLINE ?= 1

.PHONY: setup demo test test-fast lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first: installed after the rest, a plain dependency would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

demo: setup
	mkdir -p demo
	XRQ_DATABASE_URL=sqlite:///demo/xrq.db $(BIN)/xrq submit examples/iu --model models/demo
	XRQ_DATABASE_URL=sqlite:///demo/xrq.db $(BIN)/xrq reports --format table

test: setup
	$(BIN)/python -m pytest

test-fast: setup
	$(BIN)/python -m pytest -m "not slow"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy

clean:
	rm -rf demo .pytest_cache .mypy_cache .ruff_cache

# The two commands of the README: `make serve` and `make test`. Each installs what it needs into .venv.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install serve test lint build report bench reproduce

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# The pinned CPU wheel first: an unpinned torch would pull GBs of CUDA packages.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Serves on 127.0.0.1:8000 at once and builds any missing or stale catalog artifact in the background (one
# progress display), each task's default first; QBERT_* variables (README) set host, port, workers and the rest.
serve: $(STAMP)
	$(BIN)/qbert serve

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check quantization service tests
	$(BIN)/ruff format --check quantization service tests

build: $(STAMP)
	$(BIN)/qbert build

report: build
	$(BIN)/qbert report

# Our runtime beside PyTorch and ONNX Runtime (≈15 min on 2 cores; `qbert bench --quick` < 5 min), then the report.
bench: build
	$(BIN)/qbert --threads 2 bench --json models/bench.json
	$(BIN)/qbert report

# The Q-BERT reproduction (issue 3): Hessian sensitivity, plans, QAT and ablation artifacts, report (≈2.5 h on 2 cores).
reproduce: build
	scripts/reproduce.sh

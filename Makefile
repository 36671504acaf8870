# The two commands of the README: `make serve` and `make test`. Each installs what it needs into .venv.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install system-packages serve test lint build report bench reproduce
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo -n)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# The pinned CPU wheel first: an unpinned torch would pull GBs of CUDA packages.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	# The packed backend's kernels, built once here rather than on the first model load (where the CPU can run them)
	$(BIN)/qbert kernels
	touch $(STAMP)

install: $(STAMP)

# Serves on 127.0.0.1:8000 at once and builds any missing or stale catalog artifact in the background (one
# progress display), each task's default first; QBERT_* variables (README) set host, port, workers and the rest.
serve: $(STAMP)
	$(BIN)/qbert serve

# System packages the tests use: a real Prometheus (Debian's `prometheus`, promtool beside it) and a real browser
# for the playground (Debian's `chromium` with `chromium-driver`, driven through Selenium; no browser download).
# Installed here, in the README's test path, never inside a test; where apt-get cannot, those tests skip and say why.
SYSTEM_PACKAGES := prometheus:prometheus chromium:chromium chromedriver:chromium-driver
system-packages:
	@missing=$$(for pair in $(SYSTEM_PACKAGES); do command -v $${pair%%:*} >/dev/null 2>&1 || echo $${pair#*:}; done); \
	[ -z "$$missing" ] || { command -v apt-get >/dev/null 2>&1 && export DEBIAN_FRONTEND=noninteractive && \
	  { $(SUDO) apt-get install -y -q --no-install-recommends $$missing >/dev/null 2>&1 || \
	    { $(SUDO) apt-get update -q >/dev/null && $(SUDO) apt-get install -y -q --no-install-recommends $$missing >/dev/null; }; }; } || \
	  echo "could not install $$missing: the tests that need them will skip"

test: $(STAMP) system-packages
	$(BIN)/python -m pytest -q --durations=15

# Style, the import contract (tests/unit/test_layering.py: no cycles, layers, fences) and types.
lint: $(STAMP)
	$(BIN)/ruff check quantization service tests
	$(BIN)/ruff format --check quantization service tests
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/unit/test_layering.py
	$(BIN)/mypy

build: $(STAMP)
	$(BIN)/qbert build

report: build
	$(BIN)/qbert report

# Our runtime beside PyTorch, ONNX Runtime and OpenVINO (≈15 min on 2 cores; `qbert bench --quick`: README), then the report.
bench: build
	$(BIN)/qbert --threads 2 bench --json models/bench.json
	$(BIN)/qbert report

# The Q-BERT reproduction (issue 3): Hessian sensitivity, plans, QAT and ablation artifacts, report (≈2.5 h on 2 cores).
reproduce: build
	scripts/reproduce.sh

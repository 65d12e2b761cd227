# The two set-up commands of the README, and the others a developer needs.
#   make run    installs the runtime into .venv and runs the whole platform on embedded defaults (microgpt up)
#   make test   adds the dev extra (test servers, clients, linters) and runs the default test suite
#   make lint   what CI checks besides the tests: ruff check, ruff format --check, mypy
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch first and pinned: an unpinned torch pulls several GB of CUDA packages.
TORCH ?= torch==2.13.0

.PHONY: install install-dev run test bench lint clean

# The runtime only: what `make run` needs, none of the test-only packages.
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e .
	$(BIN)/microgpt build-kernels  # ~40 s once, so no first request or step waits on a compiler
	touch $@

install-dev: $(VENV)/.installed-dev

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

run: install
	$(BIN)/microgpt up

test: install-dev
	$(BIN)/python -m pytest -q

bench: install-dev
	$(BIN)/microgpt bench train
	$(BIN)/microgpt bench generate --backend eager native
	$(BIN)/microgpt bench engine --preset shakespeare --precision int8 bf16 fp32
	for p in int8 bf16 fp32; do $(BIN)/microgpt bench serve --preset shakespeare --precision $$p; done
	$(BIN)/microgpt bench quantize --data ../shared/data/tinyshakespeare.txt
	$(BIN)/microgpt bench registry --size-mb 200
	$(BIN)/microgpt bench registry --size-mb 200 --store s3
	$(BIN)/microgpt bench tokenizer
	$(BIN)/microgpt bench prepare --size-gb 1

# What CI checks besides the tests (.ci/run); .pre-commit-config.yaml runs the same on each commit.
lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache

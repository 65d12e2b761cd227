# The two set-up commands of the README, and the others a developer needs.
#   make run    installs into .venv and runs the whole platform on embedded defaults (microgpt up)
#   make test   installs into .venv (with the dev extra) and runs the default test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch first and pinned: an unpinned torch pulls several GB of CUDA packages.
TORCH ?= torch==2.13.0

.PHONY: install run test test-slow bench lint clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

run: install
	$(BIN)/microgpt up

test: install
	$(BIN)/python -m pytest -q

test-slow: install
	$(BIN)/python -m pytest -q -m slow

bench: install
	$(BIN)/microgpt bench train
	$(BIN)/microgpt bench generate --backend eager native
	$(BIN)/microgpt bench engine --preset shakespeare --precision int8 bf16 fp32
	for p in int8 bf16 fp32; do $(BIN)/microgpt bench serve --preset shakespeare --precision $$p; done
	$(BIN)/microgpt bench quantize --data ../shared/data/tinyshakespeare.txt
	$(BIN)/microgpt bench registry --size-mb 200
	$(BIN)/microgpt bench registry --size-mb 200 --store s3
	$(BIN)/microgpt bench tokenizer
	$(BIN)/microgpt bench prepare --size-gb 1

lint: install
	$(BIN)/ruff check shared services tests

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache

# Two entry points for a fresh machine; both bootstrap .venv themselves (idempotent).
#   make demo   - run the main job on the embedded default (local, Parquet + DuckDB)
#   make test   - run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.filterlens-installed
# torch/torchvision are pinned to the builds this project is tested with.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
OUT ?= out

.PHONY: venv demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e ".[all,dev]"
	touch $@

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/filterlens demo --out $(OUT)/demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check pipeline jobs schemas tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_extract.py

clean:
	rm -rf $(OUT) .pytest_cache

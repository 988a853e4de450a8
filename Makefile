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

.PHONY: venv demo test lint bench bench-gpu clean browser

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e ".[all,dev]"
	touch $@

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/filterlens demo --out $(OUT)/demo

# tests/test_report_browser.py renders report.html in headless Chromium: install Debian's chromium when it is
# missing and we are root (CI containers); otherwise that test skips and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	      echo "installing chromium for tests/test_report_browser.py"; \
	      (DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 || \
	       (apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1)) || \
	      echo "could not install chromium: tests/test_report_browser.py will skip"; \
	    else echo "chromium not installed (not root): tests/test_report_browser.py will skip"; fi; }

test: $(STAMP) browser
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check pipeline jobs schemas tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_extract.py

# On a CUDA machine: the CUDA-vs-CPU metric tests, then metrics, extraction and probe benchmarks on the GPU with a
# WRN-70-16-size random checkpoint (29M filters). Without a GPU it says so and exits 0.
GPU_ARCH ?= robustbench:cifar10:Linf:Gowal2020Uncovering_70_16
bench-gpu: $(STAMP)
	@if $(BIN)/python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then \
	  set -e; work=$$(mktemp -d /tmp/filterlens-bench-gpu-XXXXXX); \
	  $(BIN)/python -m pytest -q tests/test_metrics.py tests/test_probe.py -k cuda; \
	  $(BIN)/python benchmarks/make_checkpoint.py --arch $(GPU_ARCH) --wrap state_dict --prefix module. \
	    --out $$work/$$(echo $(GPU_ARCH) | sed 's/.*://').pt; \
	  $(BIN)/python benchmarks/bench_metrics.py --device cuda --checkpoint $$work/$$(echo $(GPU_ARCH) | sed 's/.*://').pt --repeat 5; \
	  $(BIN)/python benchmarks/bench_extract.py --device cuda --arch $(GPU_ARCH) --work $$work --repeat 2; \
	  $(BIN)/python benchmarks/bench_probe.py --device cuda; \
	  rm -rf $$work; \
	else echo "bench-gpu: no CUDA GPU visible (torch.cuda.is_available() is False): nothing to run"; fi

clean:
	rm -rf $(OUT) .pytest_cache

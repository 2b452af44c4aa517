# tlserve: `make demo` and `make test` each do their own set-up on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8000

.PHONY: install sample-data test-deps demo test test-fast serve lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml client/pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -e ./client -e '.[dev]'
	$(BIN)/tlserve warm  # the default backbone's ONNX export, once per installation (~10 s)
	touch $@

# Real images from a Debian package (Fashion-MNIST); the demo falls back to scikit-learn's digits without it.
sample-data:
	@test -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz || \
	  { [ "$$(id -u)" = 0 ] && (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	    (apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null)) || \
	    echo "dataset-fashion-mnist not installed; the demo will use scikit-learn's digits"; }

# System packages the tests use: docker-compose (the compose file is validated), Fashion-MNIST, and
# headless Chromium with its driver (the web console's browser tests, through Selenium).
TEST_DEBS := docker-compose:/usr/bin/docker-compose chromium:/usr/bin/chromium chromium-driver:/usr/bin/chromedriver \
  dataset-fashion-mnist:/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
test-deps:
	@missing=""; for t in $(TEST_DEBS); do test -e "$${t#*:}" || missing="$$missing $${t%%:*}"; done; \
	  if [ -n "$$missing" ]; then \
	    if [ "$$(id -u)" != 0 ]; then echo "install as root: apt-get install$$missing"; exit 1; fi; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null 2>&1 || \
	      (apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null); \
	  fi

demo: install sample-data
	$(BIN)/python scripts/demo.py --port $(PORT)

test: install test-deps
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

test-fast: install
	$(BIN)/python -m pytest -m "not integration and not slow"

serve: install
	$(BIN)/tlserve up --port $(PORT)

lint: install
	$(BIN)/ruff check .

bench: install sample-data
	$(BIN)/python benchmarks/bench_ingest.py
	$(BIN)/python benchmarks/bench_first_model.py
	$(BIN)/python benchmarks/bench_extract.py --memory
	$(BIN)/python benchmarks/bench_shards.py
	$(BIN)/python benchmarks/bench_head_fit.py
	$(BIN)/python benchmarks/bench_predict.py
	$(BIN)/python benchmarks/bench_load.py
	$(BIN)/python benchmarks/bench_search.py
	$(BIN)/python benchmarks/bench_active.py
	$(BIN)/python benchmarks/bench_finetune.py
	$(BIN)/python benchmarks/bench_quality.py
	$(BIN)/python benchmarks/report.py

clean:
	rm -rf $(VENV) .pytest_cache

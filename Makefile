# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint fuzz bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/iris/demo.py

test: $(STAMP)
	$(BIN)/ruff check src tests examples benchmarks
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests examples benchmarks
	$(BIN)/ruff format --check src tests
	$(BIN)/mypy

# The fuzz suite's long pass (make test runs a short one).
fuzz: $(STAMP)
	$(BIN)/python -m pytest tests/test_fuzz.py -q -p no:cacheprovider --hypothesis-profile=fuzz --timeout=3600

# Benchmarks need h2load (Debian: nghttp2-client); installed here when missing.
bench: $(STAMP)
	command -v h2load >/dev/null || (apt-get update -qq && apt-get install -y -qq nghttp2-client)
	$(BIN)/python benchmarks/bench_unary.py
	$(BIN)/python benchmarks/bench_streaming.py
	$(BIN)/python benchmarks/bench_batching.py
	$(BIN)/python benchmarks/bench_kserve.py
	$(BIN)/python benchmarks/bench_workers.py
	$(BIN)/python benchmarks/bench_replicas.py
	$(BIN)/python benchmarks/bench_admission.py
	$(BIN)/python benchmarks/bench_stream_input.py
	$(BIN)/python benchmarks/bench_percall.py
	$(BIN)/python benchmarks/bench_models.py
	$(BIN)/python benchmarks/profile_call.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MODELS_STAMP := $(VENV)/.installed-models

.PHONY: demo test test-models lint docs docs-serve plots fuzz bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The [models] extra (torch 2.13.0's CPU wheel, transformers, ONNX Runtime) on top of [dev].
$(MODELS_STAMP): pyproject.toml $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,models]'
	touch $(MODELS_STAMP)

demo: $(STAMP)
	$(BIN)/python examples/iris/demo.py

test: $(STAMP)
	$(BIN)/ruff check src tests examples benchmarks docs
	$(BIN)/python -m pytest -q

# What needs the frameworks (the [models] extra: torch, transformers, ONNX Runtime): every test
# marked `models` (tests/models, and the doc pages and blocks marked
# `<!-- docs-test: needs models -->`), which `make test` deselects (pytest counts them).
test-models: $(MODELS_STAMP)
	$(BIN)/python -m pytest -q -m models

# The documentation site, strict: a broken link, anchor or nav entry fails the build.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

docs-serve: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

# Charts for benchmarks/RESULTS.md and the site, from the JSON the benchmarks write.
plots: $(STAMP)
	$(BIN)/python benchmarks/plot.py

lint: $(STAMP)
	$(BIN)/ruff check src tests examples benchmarks docs
	$(BIN)/ruff format --check src tests docs/hooks.py
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
	rm -rf $(VENV) .pytest_cache .ruff_cache site

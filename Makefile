# Every target creates the local virtualenv on first use, so a fresh clone
# needs nothing installed by hand beyond python3.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CHAOS_SECONDS ?= 60
PROTO_FILES := $(wildcard proto/stockd/v1/*.proto)
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: demo test bench proto proto-check lint chaos clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m clients.demo

test: $(STAMP) proto-check lint
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

bench: $(STAMP)
	$(BIN)/python -m bench

chaos: $(STAMP)
	$(BIN)/python -m tests.chaos.soak --seconds $(CHAOS_SECONDS)

# Regenerates the committed stubs (python, pyi for mypy, grpc).
proto: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -Iproto \
	  --python_out=proto --mypy_out=proto \
	  --grpc_python_out=proto --mypy_grpc_out=proto \
	  $(PROTO_FILES)

# Fails when the committed stubs differ from what the .proto files generate.
proto-check: $(STAMP)
	rm -rf .proto-check && mkdir -p .proto-check
	$(BIN)/python -m grpc_tools.protoc -Iproto \
	  --python_out=.proto-check --mypy_out=.proto-check \
	  --grpc_python_out=.proto-check --mypy_grpc_out=.proto-check \
	  $(PROTO_FILES)
	for f in .proto-check/stockd/v1/*; do \
	  cmp -s "$$f" "proto/stockd/v1/$$(basename $$f)" || { echo "stale generated stub: proto/stockd/v1/$$(basename $$f); run 'make proto'"; exit 1; }; \
	done
	for f in proto/stockd/v1/*_pb2*; do \
	  test -e ".proto-check/stockd/v1/$$(basename $$f)" || { echo "orphan generated stub: $$f"; exit 1; }; \
	done
	rm -rf .proto-check

lint: $(STAMP)
	$(BIN)/buf lint
	@if git rev-parse --verify -q HEAD~1 >/dev/null && git cat-file -e HEAD~1:proto/stockd/v1/common.proto 2>/dev/null; then \
	  echo "buf breaking against HEAD~1"; $(BIN)/buf breaking --against '.git#ref=HEAD~1'; \
	else echo "buf breaking: no previous contract to compare"; fi
	$(BIN)/ruff check .
	$(BIN)/mypy .

clean:
	rm -rf $(VENV) .proto-check .mypy_cache .ruff_cache

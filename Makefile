# make setup | make run | make test
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
ARGS ?=

.PHONY: setup run test bench clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch/torchvision pinned to the builds this workplace serves from disk
	$(BIN)/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

setup: $(BIN)/.installed

run: setup
	$(BIN)/python -m factory $(ARGS)

test: setup
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=30 tests

bench: setup
	$(BIN)/python benchmarks/pipeline_overhead.py

clean:
	rm -rf runs outputs .pytest_cache

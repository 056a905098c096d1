# The two set-up commands of the README:
#   make demo   install modelmux and run the main job (local mesh, demo models, traffic, summary)
#   make test   install modelmux with every extra and run the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test install install-test lint typecheck protos protos-check bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -e '.[onnx,torch,xgboost]'

install-test: $(BIN)/python
	$(BIN)/pip install -e '.[all,test]'

demo: install
	$(BIN)/modelmux demo

test: install-test
	$(BIN)/python -m protos.generate --check
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/mypy mesh placement puller runtime_adapters controller
	$(BIN)/python -m pytest -q --durations=25

protos:
	$(BIN)/python -m protos.generate

bench:
	$(BIN)/python -m bench

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache

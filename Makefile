# Quick start: `make demo` and `make test`; both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_WHEEL := $(wildcard /opt/wheels/torch-2.13.0+cpu-cp311-*.whl)

.PHONY: venv demo test bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# A local CPU torch wheel, when the machine has one, keeps pip from pulling a CUDA build.
	$(if $(TORCH_WHEEL),$(BIN)/pip install -q $(TORCH_WHEEL))
	$(BIN)/pip install -q -e '.[test]'
	touch $@

demo: venv
	$(BIN)/python -m search.demo

test: venv
	$(BIN)/python -m pytest -q -ra

bench: venv
	$(BIN)/python bench/train_speed.py
	$(BIN)/python bench/eval_speed.py
	$(BIN)/python bench/sample_store.py

clean:
	rm -rf $(VENV) demo-output

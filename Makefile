# Every target installs what it needs into .venv first, so each works on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install test demo map-demo lint format bench soak schema clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

test: install
	$(BIN)/python -m pytest -q

demo: install
	$(BIN)/python examples/demo.py

map-demo: install
	$(BIN)/python examples/map_demo.py

lint: install
	$(BIN)/ruff check mlsync tests bench examples
	$(BIN)/ruff format --check mlsync tests bench examples
	$(BIN)/mypy mlsync

format: install
	$(BIN)/ruff format mlsync tests bench examples
	$(BIN)/ruff check --fix mlsync tests bench examples

schema: install
	$(BIN)/python -m mlsync.manifest --write-schema

bench: install
	$(BIN)/python bench/run.py

soak: install
	$(BIN)/python bench/soak.py

clean:
	rm -rf $(VENV) demo-output bench/work .pytest_cache .mypy_cache .ruff_cache

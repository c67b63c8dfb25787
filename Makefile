# Every target sets itself up: a fresh machine needs only Python 3.10+ and make.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: install demo test test-slow lint docs clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-*; touch $@

install: $(STAMP)

## demo: a real grouping search on real images (scikit-learn's digits, no download), groups printed at the end
demo: $(STAMP)
	$(BIN)/dmtg search digits --out runs/digits-demo --overwrite

## test: lint, type-check, the documentation build and the default (fast, offline, CPU) test suite
test: lint docs
	$(BIN)/python -m pytest -m "not slow" -q

## test-slow: the longer end-to-end tests (CI runs these too)
test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow -q

lint: $(STAMP)
	$(BIN)/ruff check dmtg_nas tests examples benchmarks
	$(BIN)/ruff format --check dmtg_nas tests examples benchmarks
	$(BIN)/mypy

## docs: the documentation site (mkdocs.yml, docs/) built into site/ with --strict: a broken link or a missing page fails
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

clean:
	rm -rf runs site .pytest_cache .mypy_cache .ruff_cache build dist *.egg-info

# Commands for a machine without Slicer. `make test` is what CI runs (.ci/run).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed-requirements-dev

.PHONY: test lint screenshots clean

# The environment is rebuilt only when the pinned requirements change.
$(INSTALLED): requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

lint: $(INSTALLED)
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest

screenshots: $(INSTALLED)
	$(BIN)/python Testing/render_screenshots.py Resources/Screenshots

clean:
	rm -rf $(VENV)

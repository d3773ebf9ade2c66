# Commands for a machine without Slicer. `make test` is what CI runs (.ci/run).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed-requirements-dev

.PHONY: test lint machine demo screenshots clean

# The environment is rebuilt only when the pinned requirements change. requirements-dev.txt is a complete lock
# file, so nothing is resolved: --no-deps keeps any package from pulling in another torch (see the file).
$(INSTALLED): requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-dev.txt
	touch $@

lint: $(INSTALLED)
	$(BIN)/ruff check .

# System libraries for Qt and a container runtime (installed on Debian as root; see the script).
machine:
	bash Testing/setup_machine.sh

test: machine lint
	$(BIN)/python -m pytest

# The main job on built-in defaults: install brain-tissue-demo from the bundled registry, segment a
# rotated, resampled MNI template on the CPU, write the result and a picture to demo-output/.
demo: $(INSTALLED)
	$(BIN)/python DeepSegment/Demo/run_demo.py --output demo-output

screenshots: $(INSTALLED)
	$(BIN)/python Testing/render_screenshots.py Resources/Screenshots

clean:
	rm -rf $(VENV)

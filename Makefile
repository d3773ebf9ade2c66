# Commands for a machine without Slicer. `make test` is what CI runs (.ci/run).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed-requirements-dev

.PHONY: test lint machine demo screenshots clean test-compat compat-wheels

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

# The Pythons Slicer ships besides 3.11: 3.9 (Slicer 5.8; PyTorch 2.8, no slicer-core wheel) and 3.12 (Slicer 5.10
# and later). Each has its own complete lock file (requirements-py39.txt; requirements-py312.txt, which includes
# requirements-dev.txt) and venv ($(COMPAT_VENVS)/.venv-py39, .venv-py312), rebuilt when its lock files' content
# changes: the stamp is named by their hash, so a fresh clone reuses venvs kept in a COMPAT_VENVS outside it.
# PyPI's torch for these Pythons is a CUDA build with GBs of NVIDIA libraries: `make compat-wheels` keeps every
# wheel in $(COMPAT_WHEELS) (about 7 GB, once); when that folder holds wheels, venvs are built from it alone.
PYTHON39 ?= $(or $(lastword $(wildcard $(HOME)/.pyenv/versions/3.9.*/bin/python3.9)),python3.9)
PYTHON312 ?= $(or $(lastword $(wildcard $(HOME)/.pyenv/versions/3.12.*/bin/python3.12)),python3.12)
COMPAT_WHEELS ?= .compat-wheels
COMPAT_VENVS ?= .
COMPAT_SOURCE = $(if $(wildcard $(COMPAT_WHEELS)/*.whl),--no-index --find-links $(COMPAT_WHEELS))
COMPAT_PYTHONS := 39 312
COMPAT_LOCKS_39 := requirements-py39.txt
COMPAT_LOCKS_312 := requirements-py312.txt requirements-dev.txt
compat_python = $(COMPAT_VENVS)/.venv-py$(1)/bin/python
compat_stamp = $(COMPAT_VENVS)/.venv-py$(1)/.installed-$(shell cat $(COMPAT_LOCKS_$(1)) | sha256sum | cut -c1-16)

# No prerequisites: the stamp's name changes with the lock files' content (their times change with every clone).
define compat_venv
$(call compat_stamp,$(1)):
	rm -rf $(COMPAT_VENVS)/.venv-py$(1)
	$(PYTHON$(1)) -m venv $(COMPAT_VENVS)/.venv-py$(1)
	$(call compat_python,$(1)) -m pip install --quiet --disable-pip-version-check --no-deps $$(COMPAT_SOURCE) \
		-r requirements-py$(1).txt
	touch $$@
endef
$(foreach version,$(COMPAT_PYTHONS),$(eval $(call compat_venv,$(version))))

compat-wheels:
	$(foreach version,$(COMPAT_PYTHONS),$(PYTHON$(version)) -m pip wheel --quiet --disable-pip-version-check \
		--no-deps --find-links $(COMPAT_WHEELS) --wheel-dir $(COMPAT_WHEELS) -r requirements-py$(version).txt &&) true

# Every file compiles on 3.9 (module files too, which need Slicer to import); then the suite on each Python,
# without the container tests (they test the runtime and images made from the test interpreter; `make test`
# runs them). On 3.9 conftest.py skips what needs the stand-in, and says so.
test-compat: machine $(foreach version,$(COMPAT_PYTHONS),$(call compat_stamp,$(version)))
	$(call compat_python,39) -m compileall -q ModelRegistry DeepSegment TrainingDataExport Testing
	$(foreach version,$(COMPAT_PYTHONS),SLICER_DEEPLEARNING_SKIP_CONTAINER_TESTS=1 \
		$(call compat_python,$(version)) -m pytest -q &&) true

# The main job on built-in defaults: install brain-tissue-demo from the bundled registry, segment a
# rotated, resampled MNI template on the CPU, write the result and a picture to demo-output/.
demo: $(INSTALLED)
	$(BIN)/python DeepSegment/Demo/run_demo.py --output demo-output

screenshots: $(INSTALLED)
	$(BIN)/python Testing/render_screenshots.py Resources/Screenshots

clean:
	rm -rf $(VENV) $(foreach version,$(COMPAT_PYTHONS),$(COMPAT_VENVS)/.venv-py$(version))

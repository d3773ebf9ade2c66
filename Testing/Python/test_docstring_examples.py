"""The runnable examples in the docstrings of every module's Lib are run, so they stay true."""

from __future__ import annotations

import doctest
import importlib
import os
import pkgutil

import pytest

REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LIB_PACKAGES = sorted(
    name + "Lib" for name in os.listdir(REPOSITORY) if os.path.isdir(os.path.join(REPOSITORY, name, name + "Lib"))
)


def lib_modules() -> list:
    names = []
    for package in LIB_PACKAGES:
        path = os.path.join(REPOSITORY, package[: -len("Lib")], package)
        # __main__ runs the command line when imported; subpackages (DeepSegmentLib.runtimes) are walked too.
        names += [f"{package}.{info.name}" for info in pkgutil.walk_packages([path], onerror=print)
                  if info.name.rsplit(".", 1)[-1] != "__main__"]
    return names


@pytest.mark.parametrize("module_name", lib_modules())
def test_docstring_examples_run(module_name):
    result = doctest.testmod(importlib.import_module(module_name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0

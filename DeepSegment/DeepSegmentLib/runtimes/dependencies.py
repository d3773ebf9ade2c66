"""The field's libraries each runtime needs: pinned, optional, installed on first use without touching Slicer's own.

DeepSegment's engine needs only PyTorch. The other runtimes need their field's library, at the version these
runtimes are tested with (``requirements-dev.txt`` pins the same). In Slicer they are installed when a model of
that runtime first runs, after the user agrees, with every package already installed pinned by a constraints file
(``torchsetup.installed_packages``): pip may add packages, never change Slicer's numpy, SimpleITK, vtk or requests
(an install that would is refused by pip, and nothing is changed).

Example::

    >>> requirements("nnunet-v2")
    ('nnunetv2==2.8.1',)
    >>> install_arguments(["nnunetv2==2.8.1"], "pins.txt")
    ['nnunetv2==2.8.1', '--constraint', 'pins.txt']
"""

from __future__ import annotations

import importlib.util

# The releases requirements-dev.txt pins for the tests.
MONAI_REQUIREMENT = "monai==1.6.1"
NNUNET_REQUIREMENT = "nnunetv2==2.8.1"
# Requirement, and the module whose presence says it is installed.
_REQUIREMENTS = {
    "deepsegment": (),
    # YAML: bundles may write their configurations in YAML, which MONAI reads with PyYAML.
    "monai-bundle": ((MONAI_REQUIREMENT, "monai"), ("PyYAML>=5.4", "yaml")),
    "nnunet-v2": ((NNUNET_REQUIREMENT, "nnunetv2"),),
    "auto3dseg": ((MONAI_REQUIREMENT, "monai"),),
}


class RuntimeDependencyError(RuntimeError):
    """A runtime's library is not installed; ``missing`` lists the pip requirements to install."""

    def __init__(self, runtime: str, missing) -> None:
        self.runtime = runtime
        self.missing = tuple(missing)
        super().__init__(f"The {runtime} runtime needs {', '.join(self.missing)}: install "
                         f"{'it' if len(self.missing) == 1 else 'them'} (in Slicer, Deep Segment offers to)")


def requirements(runtime: str) -> tuple:
    """The pip requirements of ``runtime`` (empty for DeepSegment's engine)."""
    return tuple(requirement for requirement, _ in _REQUIREMENTS.get(runtime, ()))


def missing_requirements(runtime: str) -> list:
    """The requirements of ``runtime`` whose module cannot be imported here (an installed release other than the
    pinned one is used as it is: only missing libraries are installed)."""
    return [requirement for requirement, module in _REQUIREMENTS.get(runtime, ())
            if importlib.util.find_spec(module) is None]


def install_arguments(missing, constraints_file: str) -> list:
    """Arguments for ``pip install`` (``slicer.util.pip_install``) adding the requirements ``missing``, every installed
    package pinned by ``constraints_file`` (``torchsetup.pinned_constraints`` are its lines)."""
    return [*missing, "--constraint", constraints_file]

"""Shipping a DeepSegment model package as a container image, in one step.

``build_image`` fills a build context with the reference recipe
(``DeepSegment/Resources/Container/Containerfile``), DeepSegment's engine code and the package, builds
it with Docker or Podman and returns what a registry index needs: the image's ID and digest and the
parameters its entry point takes. ``save_image`` writes the image archive that offline sites load.

Example (needs a container runtime and, for the recipe's default base image, the network)::

    python -m DeepSegmentLib image build --package my-model/ --tag ghcr.io/lab/my-model:1.0.0
    python -m DeepSegmentLib image save --image ghcr.io/lab/my-model:1.0.0 --output my-model-1.0.0.tar
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

import ModelRegistryLib
import TrainingDataExportLib
from ModelRegistryLib.download import file_sha256

from .container_entrypoint import PARAMETERS
from .container_runtime import ContainerError, ContainerRuntime
from .package import load_package

RECIPE_FOLDER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "Resources", "Container")
# DeepSegmentLib and the Libs it imports (registry labels and files; image files and case lists).
_LIBRARIES = tuple(os.path.dirname(os.path.abspath(module.__file__))
                   for module in (sys.modules[__package__], ModelRegistryLib, TrainingDataExportLib))


@dataclass(frozen=True)
class BuiltImage:
    """A built image: the ``tag`` it got, its ``id`` and manifest ``digest`` in the local store."""

    tag: str
    id: str
    digest: str

    def index_entry(self) -> dict:
        """The version's ``image`` object for a registry index (the name without its tag).

        A registry gives the image a new manifest digest when it is pushed: use the digest the push
        reports (``podman push --digestfile``) when the image is pulled from there.
        """
        name = self.tag.rsplit(":", 1)[0] if ":" in self.tag.rsplit("/", 1)[-1] else self.tag
        return {"name": name, "digest": self.digest, "id": self.id, "parameters": [dict(p) for p in PARAMETERS]}


def _copy_library(source: str, target: str) -> None:
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def prepare_build_context(package_folder: str, context: str) -> None:
    """Fill ``context`` with the recipe, DeepSegment's code (lib/) and the checked package (model/)."""
    load_package(package_folder)  # a broken package fails here, not inside a half-built image
    shutil.copy2(os.path.join(RECIPE_FOLDER, "Containerfile"), os.path.join(context, "Containerfile"))
    for library in _LIBRARIES:
        _copy_library(library, os.path.join(context, "lib", os.path.basename(library)))
    shutil.copytree(package_folder, os.path.join(context, "model"))


def build_image(runtime: ContainerRuntime, package_folder: str, tag: str, *, base_image: str = "",
                pip_packages: str | None = None, log: Callable[[str], None] | None = None) -> BuiltImage:
    """Build the reference image for ``package_folder`` as ``tag``.

    ``base_image`` replaces the recipe's base (any image with Python 3.9+); ``pip_packages`` replaces
    what is pip-installed on it (``""`` when the base has PyTorch, NumPy and SimpleITK already).
    """
    arguments = ["build", "--tag", tag]
    if base_image:
        arguments += ["--build-arg", f"BASE_IMAGE={base_image}"]
    if pip_packages is not None:
        arguments += ["--build-arg", f"PIP_PACKAGES={pip_packages}"]
    context = tempfile.mkdtemp(prefix="deepsegment-image-")
    try:
        prepare_build_context(package_folder, context)
        output = runtime.call([*arguments, "--file", os.path.join(context, "Containerfile"), context],
                              timeout=3600)
    finally:
        shutil.rmtree(context, ignore_errors=True)
    if log is not None:
        for line in output.splitlines():
            log(line)
    return inspect_image(runtime, tag)


def inspect_image(runtime: ContainerRuntime, reference: str) -> BuiltImage:
    """The ID and manifest digest of a local image."""
    image = runtime.local_image(reference)
    if image is None:
        raise ContainerError(f"No image {reference}")
    return BuiltImage(tag=reference, id=image.id, digest=image.digests[0] if image.digests else "")


def save_image(runtime: ContainerRuntime, reference: str, archive: str) -> dict:
    """Write ``reference`` to the image archive ``archive``; returns the index's ``archive`` object."""
    runtime.call(["save", "--output", archive, reference], timeout=3600)
    return {"url": os.path.basename(archive), "sha256": file_sha256(archive),
            "size": os.path.getsize(archive)}

"""Runtimes: what runs an installed model version in this Python, behind one call, :func:`run_model`.

A registry version names its runtime (``ModelRegistryLib.index.ModelVersion.runtime``):

- ``deepsegment`` (the default): DeepSegment's engine and the package's declarative ``model.json``;
- ``monai-bundle``: a MONAI bundle's own inference configuration (network definition, pre- and post-transforms,
  inferer) through MONAI's bundle API (``monai_bundle.py``);
- ``nnunet-v2``: an nnU-Net v2 trained model folder through nnunetv2's own predictor (``nnunet.py``);
- ``auto3dseg``: a SlicerMONAIAuto3DSeg model archive, run as that extension runs it (``auto3dseg.py``).

Every runtime takes the input volumes as SimpleITK images in memory, reports progress (``EngineProgress``) and
honours a cancel event (``EngineCancelled``), and gives back a :class:`ModelRun`: the model's labels (names,
colors, terminology) and a label map on exactly the first input's grid, checked as the container backend checks a
container's. The same call serves the Slicer panel, the Python console, the command line and a worker process; its
arguments and result are picklable. The field's libraries are optional dependencies (:mod:`.dependencies`),
imported only when their runtime runs.

Example (a DeepSegment package folder; any installed version folder works the same)::

    >>> import tempfile, numpy as np, SimpleITK as sitk, torch
    >>> from DeepSegmentLib.package import write_package
    >>> class Bright(torch.nn.Module):
    ...     def forward(self, x):
    ...         return torch.cat([0.5 - x, x - 0.5], dim=1)
    >>> contract = {"schemaVersion": 1, "format": "torch.export", "weights": "model.pt2", "dimensions": 3,
    ...     "inputs": [{"name": "image"}], "preprocessing": {"spacing": None, "orientation": "native",
    ...     "normalization": [{"kind": "none"}]}, "inference": {"patchSize": [8, 8, 8], "activation": "softmax",
    ...     "outputChannels": 2}, "postprocessing": {"mode": "argmax"},
    ...     "labels": [{"value": 1, "name": "Bright", "color": "#ff0000"}]}
    >>> folder = tempfile.mkdtemp()
    >>> write_package(folder, Bright(), contract)
    >>> detect_runtime(folder)
    'deepsegment'
    >>> voxels = np.zeros((6, 7, 8), np.float32); voxels[2:4, 2:5, 3:6] = 1
    >>> run = run_model(folder, [sitk.GetImageFromArray(voxels)], device="cpu")
    >>> [label.name for label in run.labels], run.result.label_values, run.runtime
    (['Bright'], (1,), 'deepsegment')
"""

from __future__ import annotations

import importlib
import os
import threading
from collections.abc import Callable, Sequence

from ModelRegistryLib.importers import AUTO3DSEG_LABELS_FILE, BUNDLE_INFERENCE_FILES, nnunet_model_folders
from ModelRegistryLib.index import DEFAULT_RUNTIME, RUNTIMES

from ..engine import EngineError, EngineProgress
from ..package import CONTRACT_NAME
from .common import ModelRun, RunOptions
from .dependencies import RuntimeDependencyError, missing_requirements, requirements

# The module of each runtime, imported when it first runs (each imports its field library).
_RUNNERS = {
    DEFAULT_RUNTIME: "native",
    "monai-bundle": "monai_bundle",
    "nnunet-v2": "nnunet",
    "auto3dseg": "auto3dseg",
}


def _relative_files(folder: str) -> list:
    return [os.path.relpath(os.path.join(directory, name), folder).replace(os.sep, "/")
            for directory, _, names in os.walk(folder) for name in names]


def detect_runtime(folder: str) -> str:
    """The runtime a model folder's files call for: ``model.json`` (DeepSegment), a bundle's
    ``configs/inference.json`` or ``.yaml``, an nnU-Net ``plans.json`` with ``dataset.json`` and fold checkpoints,
    or ``model.pt`` with ``labels.csv`` (Auto3DSeg). EngineError when none fits."""
    names = _relative_files(folder)

    def ends(suffix: str) -> bool:
        return any(name == suffix or name.endswith("/" + suffix) for name in names)

    if ends(CONTRACT_NAME):
        return DEFAULT_RUNTIME
    if nnunet_model_folders(names):
        return "nnunet-v2"
    if any(ends(name) for name in BUNDLE_INFERENCE_FILES):
        return "monai-bundle"
    if ends(AUTO3DSEG_LABELS_FILE) and ends("model.pt"):
        return "auto3dseg"
    raise EngineError(f"{folder} holds no model DeepSegment can run: no model.json, MONAI bundle configuration, "
                      "nnU-Net model folder or Auto3DSeg model (model.pt and labels.csv)")


def run_model(
    model,
    images: Sequence,
    *,
    runtime: str = "",
    device="auto",
    options: RunOptions | None = None,
    progress: Callable[[EngineProgress], None] | None = None,
    cancel: threading.Event | None = None,
    pool=None,
) -> ModelRun:
    """Segment ``images`` (SimpleITK volumes, one per model input, in the model's input order) with an installed model.

    Args:
        model: the installed version's folder, or a ModelRegistryLib ``InstalledModel``.
        images: the input volumes; the result lies on the first one's grid.
        runtime: the version's runtime (``ModelVersion.runtime``); empty: told from the folder's files.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps`` or a ``ComputeDevice``.
        options: quality, threads, precision, folds (:class:`RunOptions`).
        progress: called with ``EngineProgress`` (fraction of the run, stage).
        cancel: set to stop; the run raises ``EngineCancelled`` and returns nothing.
        pool: a ``ModelPool`` keeping DeepSegment networks loaded between runs (other runtimes load per run).

    Raises EngineError (a model or input that cannot run, a result off the input's grid), RuntimeDependencyError (the
    runtime's library is missing: :func:`missing_requirements` names what to install) or EngineCancelled.
    """
    folder = os.fspath(getattr(model, "path", model))
    if not os.path.isdir(folder):
        raise EngineError(f"The model folder {folder} does not exist: install the model first")
    runtime = runtime or detect_runtime(folder)
    if runtime not in _RUNNERS:
        raise EngineError(f"Unknown runtime {runtime!r}: DeepSegment runs {', '.join(RUNTIMES)}")
    missing = missing_requirements(runtime)
    if missing:
        raise RuntimeDependencyError(runtime, missing)
    runner = importlib.import_module(f"{__name__}.{_RUNNERS[runtime]}")
    images = list(images)
    if not images:
        raise EngineError("No input volume given")
    return runner.run(folder, images, device=device, options=options or RunOptions(), progress=progress,
                      cancel=cancel, pool=pool)


__all__ = [
    "RUNTIMES",
    "ModelRun",
    "RunOptions",
    "RuntimeDependencyError",
    "detect_runtime",
    "missing_requirements",
    "requirements",
    "run_model",
]

"""The ``deepsegment`` runtime: DeepSegment's own engine, driven by the package's declarative ``model.json``.

Example: see :func:`DeepSegmentLib.runtimes.run_model`.
"""

from __future__ import annotations

from ..engine import EngineError, quality_options, segment
from ..package import CONTRACT_NAME, PackageError, load_package
from .common import ModelRun, RunOptions, compute_device, find_root


def run(folder: str, images: list, *, device, options: RunOptions, progress, cancel, pool) -> ModelRun:
    """Segment ``images`` with the package in ``folder`` (``model.json`` and its weights); ``pool`` keeps the
    network loaded for the next run."""
    try:
        package = load_package(find_root(folder, CONTRACT_NAME))
    except PackageError as error:
        raise EngineError(f"The model package cannot be used: {error}") from error
    chosen, _ = compute_device(device)
    network = pool.get(package, chosen.torch_name) if pool is not None else None
    localizer = package.localizer.package if package.localizer is not None and pool is not None else None
    localizer_network = pool.get(localizer, chosen.torch_name) if localizer is not None else None
    result = segment(images, package, network, localizer_network=localizer_network, device=chosen,
                     threads=options.threads, precision=options.precision, progress=progress, cancel=cancel,
                     **quality_options(package, options.quality))
    return ModelRun(package.labels, result, "deepsegment")

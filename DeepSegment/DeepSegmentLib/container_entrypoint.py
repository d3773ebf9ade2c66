"""The entry point of the reference image (``DeepSegment/Resources/Container``): a DeepSegment model
package served through the container contract (see ``container_contract``).

Inside the container it reads ``/input/request.json`` and the input volumes, segments them with
DeepSegment's engine and the package baked into the image, and writes ``/output/labels.nrrd`` and
``/output/result.json``. Every failure is also a ``result.json`` with ``"status": "error"`` and a
non-zero exit code, so the user sees the reason, not only an exit code.

Parameters the reference image takes (``PARAMETERS``, declared in the registry entry that
``python -m DeepSegmentLib image build`` prints): ``quality`` (``fast``, ``accurate`` or ``exact``), ``threads``
(CPU threads, 0 for PyTorch's choice) and ``precision`` (``auto`` or ``float32``).

Example (what the image runs)::

    python3 -m DeepSegmentLib.container_entrypoint --package /opt/deepsegment/model
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

from ModelRegistryLib.files import write_json_atomically

from .container_contract import (
    INPUT_MOUNT,
    LABEL_MAP_FILE,
    OUTPUT_MOUNT,
    RESULT_FILE,
    ContractError,
    RunResult,
    format_progress,
    read_request,
)
from .engine import DEFAULT_QUALITY, PRECISIONS, QUALITY_PRESETS, EngineProgress, quality_options, segment
from TrainingDataExportLib.imagefiles import write_image

from .imageio import read_volume
from .package import load_package

PACKAGE_FOLDER = "/opt/deepsegment/model"
# The registry's description of the parameters above (the index's image "parameters" list).
PARAMETERS = (
    {"name": "quality", "type": "enum", "title": "Quality", "choices": list(QUALITY_PRESETS),
     "default": DEFAULT_QUALITY, "description": "exact: the model's own windows, overlap and mirroring; accurate: "
     "the same with fewer, larger windows where the network allows, background skipped; fast: no mirroring, less "
     "overlap"},
    {"name": "threads", "type": "int", "title": "CPU threads", "minimum": 0, "maximum": 256, "default": 0,
     "description": "0 lets PyTorch choose"},
    {"name": "precision", "type": "enum", "title": "Precision", "choices": list(PRECISIONS), "default": "auto",
     "description": "auto: float16 on CUDA, bfloat16 on CPUs that compute it natively; float32: always"},
)


def _print_progress(step: EngineProgress) -> None:
    print(format_progress(step.fraction, step.stage), flush=True)


def _checked_parameters(given: dict) -> dict:
    known = {parameter["name"]: parameter for parameter in PARAMETERS}
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ContractError(f"Unknown parameter(s) {', '.join(unknown)}; this image takes {', '.join(known)}")
    values = {name: given.get(name, parameter["default"]) for name, parameter in known.items()}
    if values["quality"] not in QUALITY_PRESETS:
        raise ContractError(f"Parameter quality must be one of {', '.join(QUALITY_PRESETS)}, not {values['quality']!r}")
    threads = values["threads"]
    if not isinstance(threads, int) or isinstance(threads, bool) or not 0 <= threads <= 256:
        raise ContractError(f"Parameter threads must be an integer from 0 to 256, not {threads!r}")
    if values["precision"] not in PRECISIONS:
        raise ContractError(f"Parameter precision must be one of {', '.join(PRECISIONS)}, not {values['precision']!r}")
    return values


def serve(package_folder: str, input_folder: str, output_folder: str) -> RunResult:
    """Answer the request in ``input_folder``; the label map is written before the result that names it."""
    start = time.perf_counter()
    request = read_request(input_folder)
    parameters = _checked_parameters(request.parameters)
    package = load_package(package_folder)
    images = [read_volume(os.path.join(input_folder, file)) for _, file in request.inputs]
    read_at = time.perf_counter()
    result = segment(images, package, device=request.device, threads=parameters["threads"] or None,
                     precision=parameters["precision"], progress=_print_progress,
                     **quality_options(package, parameters["quality"]))
    written_at = time.perf_counter()
    write_image(result.labels, os.path.join(output_folder, LABEL_MAP_FILE))
    timings = {"reading": read_at - start, **result.timings, "writing": time.perf_counter() - written_at}
    return RunResult(
        status="ok",
        labels=tuple((label.value, label.name) for label in package.labels),
        timings=timings,
        messages=(f"Segmented on {result.device} in {result.precision}",),
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m DeepSegmentLib.container_entrypoint",
                                     description="Serve a DeepSegment model package through the container contract.")
    parser.add_argument("--package", default=os.environ.get("DEEPSEGMENT_PACKAGE", PACKAGE_FOLDER))
    parser.add_argument("--input", default=INPUT_MOUNT)
    parser.add_argument("--output", default=OUTPUT_MOUNT)
    arguments = parser.parse_args(argv)
    try:
        result = serve(arguments.package, arguments.input, arguments.output)
    except Exception as error:
        message = f"{type(error).__name__}: {error}"
        print(message, file=sys.stderr, flush=True)
        write_json_atomically(os.path.join(arguments.output, RESULT_FILE),
                              RunResult(status="error", messages=(message,)).to_json())
        return 1
    write_json_atomically(os.path.join(arguments.output, RESULT_FILE), result.to_json())
    return 0


if __name__ == "__main__":
    sys.exit(main())

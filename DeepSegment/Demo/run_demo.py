"""The demo: segment gray and white matter on CPU with ``brain-tissue-demo`` from the bundled registry.

What it does, needing only the repository and its virtual environment:

1. installs ``brain-tissue-demo`` from the index bundled with ModelRegistry into the model cache (the
   archive's sha256 is checked at install, the unpacked files' afterwards);
2. builds a brain volume the model never saw as it is: the 1 mm MNI template (see mni_template.py for
   where it comes from) rotated by 10° about the left-right axis and 7° about the inferior-superior axis,
   resampled onto an oblique grid (tilted 15° about the anterior-posterior axis) of 1.0 × 1.3 × 2.5 mm
   voxels, with its intensities changed (gamma 0.8, scaled to 0..1000, stored as int16); the reference
   labels are moved the same way (nearest neighbour);
3. segments it in this process on the CPU with ``DeepSegmentLib.engine.segment`` in the default quality;
4. writes into ``--output``: ``t1.nii.gz`` (the volume), ``brain-tissue.nii.gz`` (label map),
   ``brain-tissue.seg.nrrd`` (Slicer segmentation with names, colors, terminology),
   ``reference.nii.gz`` and ``brain-tissue.png`` (three orthogonal slices with the result overlaid);
5. prints the time of each stage and the Dice of each label against the reference.

Run from the repository root::

    .venv/bin/python DeepSegment/Demo/run_demo.py --output demo-output

The exit status is 0 on success, 1 on an error, 2 when a label's Dice is below ``--min-dice``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

DEMO_FOLDER = os.path.dirname(os.path.abspath(__file__))
REPOSITORY = os.path.dirname(os.path.dirname(DEMO_FOLDER))
sys.path[:0] = [os.path.join(REPOSITORY, "DeepSegment"), os.path.join(REPOSITORY, "ModelRegistry")]

from mni_template import dice_scores, read_template, reference_label_image, template_folder  # noqa: E402

from DeepSegmentLib.engine import DEFAULT_QUALITY, quality_options, segment  # noqa: E402
from DeepSegmentLib.imageio import write_labels  # noqa: E402
from TrainingDataExportLib.imagefiles import write_image  # noqa: E402
from DeepSegmentLib.package import load_package  # noqa: E402
from DeepSegmentLib.segfile import SegmentInfo  # noqa: E402
from ModelRegistryLib.registry import Registry, bundled_source  # noqa: E402
from ModelRegistryLib.store import default_cache_dir  # noqa: E402

MODEL_ID = "brain-tissue-demo"
# The test volume: how the head is turned (degrees about x, y, z), the tilt of the slices, the voxel size.
HEAD_ROTATION_DEGREES = (10.0, 0.0, 7.0)
GRID_TILT_DEGREES = (0.0, 15.0, 0.0)
TEST_SPACING = (1.0, 1.3, 2.5)
GAMMA, INTENSITY_SCALE = 0.8, 1000.0
FIELD_OF_VIEW_MARGIN_MM = 10.0
OVERLAY_OPACITY = 0.45


def euler(degrees: Sequence[float], center: Sequence[float] = (0.0, 0.0, 0.0)) -> sitk.Euler3DTransform:
    return sitk.Euler3DTransform(tuple(center), *(math.radians(d) for d in degrees))


def box_corners(image: sitk.Image, low: Sequence[float], high: Sequence[float]) -> np.ndarray:
    """The 8 physical corners of the continuous-index box [low, high] of ``image`` (x y z order)."""
    choices = np.array(np.meshgrid(*zip(low, high), indexing="ij")).reshape(3, -1).T
    return np.array([image.TransformContinuousIndexToPhysicalPoint(tuple(float(c) for c in corner))
                     for corner in choices])


def oblique_grid(corners: np.ndarray, head: sitk.Transform) -> sitk.Image:
    """An empty image on the tilted, anisotropic test grid that holds ``corners`` once the head is turned."""
    direction = np.array(euler(GRID_TILT_DEGREES).GetMatrix()).reshape(3, 3)
    inverse = head.GetInverse()
    along_axes = np.array([direction.T @ np.array(inverse.TransformPoint(tuple(corner))) for corner in corners])
    low, high = along_axes.min(axis=0), along_axes.max(axis=0)
    spacing = np.array(TEST_SPACING)
    grid = sitk.Image([int(n) for n in np.ceil((high - low) / spacing)], sitk.sitkInt16)
    grid.SetSpacing(TEST_SPACING)
    grid.SetDirection(tuple(direction.ravel()))
    grid.SetOrigin(tuple(direction @ (low + spacing / 2.0)))
    return grid


def build_test_case(folder: str) -> tuple:
    """(T1 volume, reference labels) on the test grid, from the 1 mm template."""
    template = read_template(folder)
    t1 = template["t1"]
    labels = reference_label_image(template["gm"], template["wm"])
    center = t1.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in t1.GetSize()])
    head = euler(HEAD_ROTATION_DEGREES, center)
    # The field of view holds the brain and a margin, as a scan is planned around the head.
    brain = np.argwhere(sitk.GetArrayViewFromImage(labels) > 0)[:, ::-1]
    margin = FIELD_OF_VIEW_MARGIN_MM / np.array(t1.GetSpacing())
    grid = oblique_grid(box_corners(t1, brain.min(axis=0) - margin, brain.max(axis=0) + margin), head)
    # Resample maps output points to input points: the head appears turned by the inverse of ``head``.
    moved = sitk.Resample(t1, grid, head, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    changed = sitk.Cast(sitk.Pow(sitk.Clamp(moved / 255.0, lowerBound=0.0), GAMMA) * INTENSITY_SCALE, sitk.sitkInt16)
    reference = sitk.Resample(labels, grid, head, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return changed, reference


def _display_grid(image: sitk.Image) -> sitk.Image:
    """A 1 mm grid aligned with the patient axes (LPS) around ``image``, for pictures a reader recognizes."""
    corners = box_corners(image, (-0.5,) * 3, [n - 0.5 for n in image.GetSize()])
    low, high = corners.min(axis=0), corners.max(axis=0)
    grid = sitk.Image([int(n) for n in np.ceil(high - low)], sitk.sitkUInt8)
    grid.SetOrigin(tuple(low + 0.5))
    return grid


def _hex_to_rgb(color: str) -> np.ndarray:
    return np.array([int(color[i:i + 2], 16) for i in (1, 3, 5)], dtype=np.float32)


def overlay_picture(image: sitk.Image, labels: sitk.Image, colors: dict) -> np.ndarray:
    """Axial, coronal and sagittal slices through the volume's centre, side by side, labels blended in
    their colors (rows × columns × RGB, uint8; the patient's right on the picture's left)."""
    grid = _display_grid(image)
    gray = sitk.GetArrayFromImage(sitk.Resample(image, grid, sitk.Transform(), sitk.sitkLinear, 0.0,
                                                sitk.sitkFloat32))
    label = sitk.GetArrayFromImage(sitk.Resample(labels, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0))
    low, high = np.percentile(gray, (0.5, 99.5))
    gray = np.clip((gray - low) / max(high - low, 1e-6), 0, 1) * 255.0
    k, j, i = (n // 2 for n in gray.shape)
    # Arrays are (S, P, L) in LPS: axial rows run anterior to posterior; the others get superior up.
    cuts = [(gray[k], label[k]), (gray[::-1, j, :], label[::-1, j, :]), (gray[::-1, :, i], label[::-1, :, i])]
    height = max(g.shape[0] for g, _ in cuts)
    tiles = []
    for slice_gray, slice_label in cuts:
        rgb = np.repeat(slice_gray[..., None], 3, axis=2)
        for value, color in colors.items():
            mask = slice_label == value
            rgb[mask] = (1 - OVERLAY_OPACITY) * rgb[mask] + OVERLAY_OPACITY * _hex_to_rgb(color)
        padding = height - rgb.shape[0]
        tiles.append(np.pad(rgb, ((padding // 2, padding - padding // 2), (0, 4), (0, 0))))
    return np.concatenate(tiles, axis=1).round().astype(np.uint8)


def write_png(path: str, rgb: np.ndarray) -> None:
    write_image(sitk.GetImageFromArray(rgb, isVector=True), path, compression_level=0)


class Stopwatch:
    """Seconds per named stage, in the order they ran."""

    def __init__(self) -> None:
        self.seconds: dict = {}

    def run(self, name: str, function, *args, **kwargs):
        start = time.perf_counter()
        value = function(*args, **kwargs)
        self.seconds[name] = time.perf_counter() - start
        return value


def run(output: str, cache_dir: str, threads: int, wheel: str | None) -> dict:
    """The whole demo; returns the Dice per label name."""
    watch = Stopwatch()
    registry = Registry([bundled_source()], cache_dir)
    registry.refresh(offline=True)
    installed = watch.run("install model", registry.ensure_installed, MODEL_ID)
    for result in registry.verify(f"{MODEL_ID}@{installed.version}"):
        if not result.ok:
            raise RuntimeError(result.text)
    print(f"{MODEL_ID} {installed.version} installed and verified in {installed.path}")
    package = load_package(installed.path)

    folder = watch.run("find template", template_folder, cache_dir, wheel)
    image, reference = watch.run("build test volume", build_test_case, folder)
    print(f"test volume: {image.GetSize()} voxels of {image.GetSpacing()} mm, oblique, head turned "
          f"{HEAD_ROTATION_DEGREES} degrees, gamma {GAMMA}")
    result = watch.run("segment (total)", segment, [image], package, device="cpu", threads=threads,
                       **quality_options(package, DEFAULT_QUALITY))

    os.makedirs(output, exist_ok=True)
    segments = [SegmentInfo(label.value, label.name, label.color,
                            label.terminology.slicer_entry() if label.terminology else "") for label in package.labels]
    colors = {label.value: label.color for label in package.labels}

    def write_all() -> None:
        write_image(image, os.path.join(output, "t1.nii.gz"))
        write_image(reference, os.path.join(output, "reference.nii.gz"))
        write_labels(os.path.join(output, "brain-tissue.nii.gz"), result.labels, segments)
        write_labels(os.path.join(output, "brain-tissue.seg.nrrd"), result.labels, segments)
        write_png(os.path.join(output, "brain-tissue.png"), overlay_picture(image, result.labels, colors))

    watch.run("write results", write_all)
    print(f"results in {output}")
    print(f"device: {result.device}; torch threads: {threads}; "
          f"peak memory {result.peak_memory_bytes / 2**30:.2f} GiB")
    print(f"quality {DEFAULT_QUALITY}, {result.precision}: {result.windows}")
    print("engine stages: " + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in result.timings.items()))
    print("demo stages: " + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in watch.seconds.items()))
    scores = dice_scores(sitk.GetArrayViewFromImage(result.labels), sitk.GetArrayViewFromImage(reference),
                         [label.value for label in package.labels])
    names = {label.value: label.name for label in package.labels}
    print("Dice against the reference: " + ", ".join(f"{names[v]} {s:.3f}" for v, s in scores.items()))
    return {names[v]: s for v, s in scores.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", help="folder for the results (default: a new temporary folder)")
    parser.add_argument("--cache-dir", default=default_cache_dir(), help="model cache (default: the user's)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch")
    parser.add_argument("--nilearn-wheel", help="a downloaded nilearn 0.14.1 wheel (else found or fetched)")
    parser.add_argument("--min-dice", type=float, default=0.5, help="fail when a label's Dice is below this")
    args = parser.parse_args(argv)
    output = args.output or tempfile.mkdtemp(prefix=f"{MODEL_ID}-")
    try:
        scores = run(output, args.cache_dir, args.threads, args.nilearn_wheel)
    except Exception as error:  # the demo's user gets one line, not a traceback
        print(f"demo failed: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    failing = [name for name, score in scores.items() if score < args.min_dice]
    if failing:
        print(f"Dice below {args.min_dice} for {', '.join(failing)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

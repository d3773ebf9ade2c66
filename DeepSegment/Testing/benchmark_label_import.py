"""Benchmark: a label map into segments, one call of Slicer's segmentations logic against one update per label.

Run from the repository root: ``.venv/bin/python DeepSegment/Testing/benchmark_label_import.py [--size 256]
[--labels 10] [--repeats 3]``.

Input: a seeded ``size``³ uint8 label map of ``labels`` values (overlapping random balls on 0.8 × 0.8 × 1.5 mm
voxels, a tilted grid), as DeepSegment's engine returns one. Both methods fill a new segmentation node, named,
colored segment by segment, on the stand-in's real MRML (the ``slicer-core`` wheel):

- ``per-segment``: what DeepSegment's ``applyResult`` and TrainingDataExport's label-map import did before: for
  each label a mask ``labels == value`` and ``slicer.util.updateSegmentBinaryLabelmapFromArray``;
- ``one-call``: ``DeepSegmentLogic.applyResult`` now: the segments, then one
  ``vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode`` (``ModelRegistry.importLabelMap``).

Both include making the segments; ``one-call`` also makes the label map node from the engine's SimpleITK image
(as ``applyResult`` does), while ``per-segment`` starts from a ready one. The methods run interleaved (the order
turns every round), best of ``--repeats``; the results are compared voxel for voxel, segment by segment.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def label_map(size: int, count: int):
    """A seeded (size, size, size) uint8 array holding 0 and the values 1..count, each a few random balls."""
    import numpy as np

    rng = np.random.default_rng(3)
    grid = np.indices((size,) * 3, dtype=np.float32)
    labels = np.zeros((size,) * 3, np.uint8)
    for value in range(1, count + 1):
        for _ in range(3):
            center = rng.uniform(0.15 * size, 0.85 * size, 3)
            radius = rng.uniform(0.05 * size, 0.18 * size)
            inside = ((grid - center[:, None, None, None]) ** 2).sum(axis=0) < radius**2
            labels[inside] = value
    return labels


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--labels", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    arguments = parser.parse_args(argv)

    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    sys.path.insert(0, os.path.join(REPOSITORY, "Testing", "SlicerStandIn"))
    import slicer_standin

    slicer_standin.boot()
    slicer_standin.load_modules(slicer_standin.extension_module_paths(REPOSITORY))
    import numpy as np
    import SimpleITK as sitk
    import slicer

    from DeepSegment import DeepSegmentLogic, RunResult
    from DeepSegmentLib import SegmentationResult
    from ModelRegistry import addLabelSegment
    from ModelRegistryLib.index import Label

    array = label_map(arguments.size, arguments.labels)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.8, 0.8, 1.5))
    image.SetDirection((0.96, -0.28, 0.0, 0.28, 0.96, 0.0, 0.0, 0.0, 1.0))
    palette = np.random.default_rng(1).integers(0, 256, (arguments.labels, 3))
    labels = [Label(value, f"Structure {value}", "#{:02x}{:02x}{:02x}".format(*palette[value - 1]))
              for value in range(1, arguments.labels + 1)]
    logic = DeepSegmentLogic()
    volume = logic.volumeNodeFromImage(sitk.Cast(image, sitk.sitkInt16), "Input")
    labelmap = logic.volumeNodeFromImage(image, "Labels", "vtkMRMLLabelMapVolumeNode")
    run = RunResult(labels, SegmentationResult(image, tuple(range(1, arguments.labels + 1))), volume, 0.0)

    def per_segment():
        node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "per-segment")
        node.CreateDefaultDisplayNodes()
        node.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        voxels = slicer.util.arrayFromVolume(labelmap)
        for label in labels:
            segmentId = addLabelSegment(node, label, f"label_{label.value}")
            slicer.util.updateSegmentBinaryLabelmapFromArray(
                (voxels == label.value).astype(np.uint8), node, segmentId, labelmap
            )
        return node

    def one_call():
        return logic.applyResult(run)

    methods = {"per-segment": per_segment, "one-call": one_call}
    best = dict.fromkeys(methods, float("inf"))
    results = {}
    for round_index in range(arguments.repeats):
        names = list(methods)
        names = names[round_index % len(names) :] + names[: round_index % len(names)]
        for name in names:
            start = time.perf_counter()
            node = methods[name]()
            best[name] = min(best[name], time.perf_counter() - start)
            previous = results.pop(name, None)
            if previous is not None:
                slicer.mrmlScene.RemoveNode(previous)
            results[name] = node

    for label in labels:
        segmentId = f"label_{label.value}"
        masks = [slicer.util.arrayFromSegmentBinaryLabelmap(node, segmentId, volume) for node in results.values()]
        if not all(np.array_equal(mask, masks[0]) for mask in masks[1:]):
            print(f"MISMATCH in segment {segmentId}")
            return 1
    print(f"{arguments.size}³ label map, {arguments.labels} labels, best of {arguments.repeats} (identical segments):")
    for name, seconds in best.items():
        print(f"  {name:12s} {seconds:7.3f} s")
    print(f"  per-segment / one-call: {best['per-segment'] / best['one-call']:.1f}×")
    return 0


if __name__ == "__main__":
    sys.exit(main())

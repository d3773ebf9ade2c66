"""The checks of one case, the same for ``check`` (command line, panel) and ``export``: what one passes, the
other accepts.

:func:`inspect_case` reads a case's files and lists every problem, as
:class:`~TrainingDataExportLib.segmentations.LabelProblem` s (``blocking`` ones stop an export):

- a missing image or segmentation file;
- an image that cannot be read, or whose data is truncated or holds NaN or infinity (the shared reader of
  ``DeepSegmentLib.imageio``), and the same for the segmentation;
- the segmentation against the label schema: unmapped segments, values outside the schema, overlaps, an
  empty segmentation (blocking); missing labels, segments matched by terminology (for review);
- an image that is neither 3D nor (for 2D slices only) a 4D sequence, or has several components per voxel;
- a label map on another voxel grid than its image (unless the settings resample it);
- a target spacing that would make a case absurdly large.

Without export settings, the settings' defaults apply (no resampling of label maps, overlaps are errors) and
4D sequences are accepted (they can be exported as 2D slices).

Example::

    >>> import os, shutil, tempfile
    >>> import numpy as np, SimpleITK as sitk
    >>> from ModelRegistryLib.index import Label
    >>> from TrainingDataExportLib.caselist import Case
    >>> folder = tempfile.mkdtemp()
    >>> image, segmentation = os.path.join(folder, "c1.nrrd"), os.path.join(folder, "c1_seg.nrrd")
    >>> sitk.WriteImage(sitk.Image([4, 4, 2], sitk.sitkInt16), image)
    >>> label = sitk.GetImageFromArray(np.full((2, 4, 4), 3, np.uint8))
    >>> label.SetSpacing((2.0, 1.0, 1.0))
    >>> sitk.WriteImage(label, segmentation)
    >>> check_case(Case("c1", "p1", {"image": image}, segmentation), [Label(1, "Liver", "#dd8259")])
    ['extra label value 3 (not in the schema)', "no voxel has label 'Liver' (1)"]
    >>> label = sitk.GetImageFromArray(np.ones((2, 4, 4), np.uint8))
    >>> label.SetSpacing((2.0, 1.0, 1.0))
    >>> sitk.WriteImage(label, segmentation)
    >>> check_case(Case("c1", "p1", {"image": image}, segmentation), [Label(1, "Liver", "#dd8259")])
    ['label map grid differs from the image: spacing (2.0, 1.0, 1.0) instead of (1.0, 1.0, 1.0) (set ...)']
    >>> shutil.rmtree(folder)
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import SimpleITK as sitk
from DeepSegmentLib.imagecheck import ImageFileError
from DeepSegmentLib.imageio import read_image_information

from .caselist import Case
from .segmentations import LabelProblem, label_counts, label_on_grid, read_label_map
from .settings import MAX_VOXELS_PER_CASE, ExportSettings


@dataclass(frozen=True)
class CaseCheck:
    """What :func:`inspect_case` found: every problem, and the label values the segmentation holds."""

    problems: tuple
    present: frozenset = frozenset()

    @property
    def blocking(self) -> list:
        return [str(problem) for problem in self.problems if problem.blocking]

    @property
    def warnings(self) -> list:
        return [str(problem) for problem in self.problems if not problem.blocking]


def missing_files(case: Case) -> list:
    """Messages for the files of ``case`` that do not exist."""
    found = [f"image {path} ({channel}) does not exist" for channel, path in case.images.items()
             if not os.path.isfile(path)]
    if case.segmentation and not os.path.isfile(case.segmentation):
        found.append(f"segmentation {case.segmentation} does not exist")
    return found


def resampled_size_problem(reader, spacing: Sequence[float]) -> str:
    """Why the image whose header ``reader`` read is too large once resampled to ``spacing`` (every frame of a 4D
    one), or ""."""
    size, old_spacing = reader.GetSize(), reader.GetSpacing()
    if len(size) not in (3, 4):
        return ""
    voxels = math.prod(max(1, round(n * s / t)) for n, s, t in zip(size[:3], old_spacing[:3], spacing))
    voxels *= size[3] if len(size) == 4 else 1
    if voxels <= MAX_VOXELS_PER_CASE:
        return ""
    return (
        f"resampled to a spacing of {' x '.join(f'{s:g}' for s in spacing)} mm it would hold {voxels:,} voxels "
        f"(at most {MAX_VOXELS_PER_CASE:,} per case): check the spacing"
    )


def _image_problems(case: Case, settings: ExportSettings | None) -> tuple:
    """``(problems, reader of the first channel or None)``."""
    problems, readers = [], {}
    for channel, path in case.images.items():
        try:
            readers[channel] = read_image_information(path)
        except ImageFileError as error:
            problems.append(LabelProblem(f"image ({channel}): {error}"))
    if problems:
        return problems, None
    reference = readers[next(iter(case.images))]
    if reference.GetDimension() == 4 and settings is not None and settings.format != "slices2d":
        problems.append(LabelProblem("is a 4D sequence: sequences can only be exported as 2D slices (format slices2d)"))
    elif reference.GetDimension() not in (3, 4):
        problems.append(LabelProblem(f"image is {reference.GetDimension()}D; 3D images (or 4D sequences) are exported"))
    for channel, reader in readers.items():
        if reader.GetNumberOfComponents() != 1:
            problems.append(LabelProblem(f"image of channel {channel} has {reader.GetNumberOfComponents()} components"))
    if settings is not None and settings.spacing is not None:
        size_problem = resampled_size_problem(reference, settings.spacing)
        if size_problem:
            problems.append(LabelProblem(size_problem))
    return problems, reference


def inspect_case(case: Case, labels: Sequence, settings: ExportSettings | None = None) -> CaseCheck:
    """Every problem of ``case`` against the label schema ``labels`` (see the module description)."""
    missing = missing_files(case)
    if missing or not case.annotated:
        return CaseCheck(tuple(LabelProblem(message) for message in missing))
    problems, reference = _image_problems(case, settings)
    label, label_problems = read_label_map(case.segmentation, labels,
                                           overlap=settings.overlap if settings is not None else "error")
    problems += label_problems
    if label is None or reference is None or any(problem.blocking for problem in problems):
        return CaseCheck(tuple(problems))
    resample = settings is not None and settings.resample_label_to_image
    _, grid_problem = label_on_grid(label, reference, resample=resample)
    if grid_problem:
        problems.append(LabelProblem(grid_problem + " (set resample_label_to_image to resample it)"))
    counts = label_counts(sitk.GetArrayViewFromImage(label), [0, *(int(lab.value) for lab in labels)])
    return CaseCheck(tuple(problems), frozenset(value for value in counts if value))


def case_problems(case: Case, labels: Sequence, settings: ExportSettings | None = None) -> list:
    """:func:`inspect_case`'s problems of ``case``, as :class:`~TrainingDataExportLib.segmentations.LabelProblem` s."""
    return list(inspect_case(case, labels, settings).problems)


def check_case(case: Case, labels: Sequence, settings: ExportSettings | None = None) -> list:
    """The problems of ``case`` against the schema ``labels``, as text (empty: nothing to fix)."""
    return [str(problem) for problem in case_problems(case, labels, settings)]

"""Where the annotation workflow keeps a case's files: its saved segmentation and its recovery file.

A case is saved as a Slicer segmentation, ``<case>.seg.nrrd``: where the case list already points to one, or
next to the case's first image (a label-map segmentation is then left as it was and the case list points to
the new file). Between saves, the panel writes the work in progress to ``<case>.recovery.seg.nrrd`` in the
same folder, so that nothing annotated is lost if Slicer or the machine stops; a recovery file newer than
the saved segmentation is offered when the case is loaded again.

Example::

    >>> from TrainingDataExportLib.caselist import Case
    >>> case = Case("ct01", "p1", {"image": "/data/ct01.nrrd"}, "/data/labels/ct01_seg.nii.gz")
    >>> segmentation_save_path(case), recovery_path(case)
    ('/data/ct01.seg.nrrd', '/data/ct01.recovery.seg.nrrd')
    >>> format_duration(3725)
    '1:02:05'
"""

from __future__ import annotations

import os

from .caselist import RECOVERY_SUFFIX, SEGMENTATION_EXTENSIONS, Case

SEGMENTATION_FILE_EXTENSION = SEGMENTATION_EXTENSIONS[0]


def is_slicer_segmentation_file(path: str) -> bool:
    return path.lower().endswith(SEGMENTATION_EXTENSIONS)


def segmentation_save_path(case: Case) -> str:
    """Where saving ``case`` writes its segmentation (see the module description)."""
    if case.segmentation and is_slicer_segmentation_file(case.segmentation):
        return case.segmentation
    folder = os.path.dirname(next(iter(case.images.values()), "")) if case.images else ""
    return os.path.join(folder, case.case_id + SEGMENTATION_FILE_EXTENSION)


def recovery_path(case: Case) -> str:
    """The recovery file of ``case``: next to where it is saved."""
    return os.path.join(os.path.dirname(segmentation_save_path(case)), case.case_id + RECOVERY_SUFFIX)


def recovery_to_offer(case: Case) -> str:
    """The recovery file of ``case`` when it holds work newer than the saved segmentation, else ``""``.

    >>> import os, tempfile
    >>> folder = tempfile.mkdtemp()
    >>> case = Case("c1", "c1", {"image": os.path.join(folder, "c1.nrrd")})
    >>> recovery_to_offer(case)
    ''
    >>> open(recovery_path(case), "wb").close()
    >>> recovery_to_offer(case) == recovery_path(case)
    True
    >>> os.remove(recovery_path(case)); os.rmdir(folder)
    """
    recovery = recovery_path(case)
    if not os.path.isfile(recovery):
        return ""
    saved = case.segmentation
    if saved and os.path.isfile(saved) and os.path.getmtime(saved) >= os.path.getmtime(recovery):
        return ""
    return recovery


def format_duration(seconds: int) -> str:
    """``h:mm:ss`` of a number of seconds."""
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}"

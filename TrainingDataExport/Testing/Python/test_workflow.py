"""Where the annotation workflow keeps files (TrainingDataExportLib.workflow), on real files in tmp_path."""

from __future__ import annotations

import os

from TrainingDataExportLib.caselist import Case
from TrainingDataExportLib.workflow import format_duration, recovery_path, recovery_to_offer, segmentation_save_path


def touch(path, mtime):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "wb").close()
    os.utime(path, (mtime, mtime))
    return path


def test_slicer_segmentations_are_saved_in_place(tmp_path):
    case = Case("c1", "p1", {"image": str(tmp_path / "images" / "c1.nrrd")}, str(tmp_path / "seg" / "c1.seg.nrrd"))
    assert segmentation_save_path(case) == str(tmp_path / "seg" / "c1.seg.nrrd")
    assert recovery_path(case) == str(tmp_path / "seg" / "c1.recovery.seg.nrrd")


def test_label_maps_and_new_cases_are_saved_next_to_the_first_image(tmp_path):
    images = {"t1": str(tmp_path / "t1" / "c1_t1.nii.gz"), "flair": str(tmp_path / "flair" / "c1_flair.nii.gz")}
    for segmentation in ("", str(tmp_path / "labels" / "c1_seg.nii.gz")):
        case = Case("c1", "p1", images, segmentation)
        assert segmentation_save_path(case) == str(tmp_path / "t1" / "c1.seg.nrrd")


def test_a_recovery_file_is_offered_only_when_newer_than_the_saved_segmentation(tmp_path):
    case = Case("c1", "p1", {"image": str(tmp_path / "c1.nrrd")}, touch(str(tmp_path / "c1.seg.nrrd"), 1000))
    assert recovery_to_offer(case) == ""
    recovery = touch(recovery_path(case), 900)
    assert recovery_to_offer(case) == ""
    os.utime(recovery, (1100, 1100))
    assert recovery_to_offer(case) == recovery
    # The saved segmentation gone (deleted, or never saved): the recovery file is all there is.
    os.remove(case.segmentation)
    assert recovery_to_offer(case) == recovery


def test_durations_read_as_hours_minutes_seconds():
    durations = [format_duration(seconds) for seconds in (0, 59, 61, 3600, 36000 + 61)]
    assert durations == ["0:00:00", "0:00:59", "0:01:01", "1:00:00", "10:01:01"]

"""Fault injection on the export: kill -9 at every stage, a full disk, read-only folders, hostile manifests,
journals and case lists, corrupted inputs.

Each interrupted export runs in a child process (export_child.py) that kills itself with SIGKILL at a chosen
moment: before the N-th rename of a finished file, the N-th removal, the N-th flush to disk, or at the N-th
progress report, for every N until the export completes. The folder is then exported again, with the same or
other settings, and must be byte for byte what a clean export with those settings writes into a new folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from fault_injection import child_environment
from ModelRegistryLib.index import Label

from TrainingDataExportLib.caselist import Case
from TrainingDataExportLib.export import ExportError, ExportSettings, export_dataset
from TrainingDataExportLib.manifest import JOURNAL_NAME, MANIFEST_NAME

CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "export_child.py")
SCHEMA = [Label(1, "liver", "#dd8259"), Label(2, "tumor", "#90d5ff")]
NNUNET = {"format": "nnunet"}
SEED_1 = {"folds": 2, "test_fraction": 0.3, "seed": 1, "workers": 1}
SEED_2 = dict(SEED_1, seed=2)


def make_case(folder, index: int) -> Case:
    rng = np.random.default_rng(index)
    image = sitk.GetImageFromArray(rng.normal(100, 20, (6, 12, 14)).astype(np.int16))
    image.SetSpacing((0.9, 0.9, 2.0))
    label = np.zeros((6, 12, 14), np.uint8)
    label[1:5, 2 + index % 4 : 9, 3:10] = 1
    label[2:4, 4:6, 5 : 7 + index % 3] = 2
    label_image = sitk.GetImageFromArray(label)
    label_image.CopyInformation(image)
    paths = [os.path.join(folder, f"case{index:02d}{suffix}.nrrd") for suffix in ("", "_seg")]
    sitk.WriteImage(image, paths[0])
    sitk.WriteImage(label_image, paths[1])
    return Case(f"case{index:02d}", f"patient{index:02d}", {"image": paths[0]}, paths[1])


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    """Eight small annotated cases of eight patients (seeded)."""
    folder = str(tmp_path_factory.mktemp("data"))
    return [make_case(folder, index) for index in range(8)]


def export(cases, output, settings: dict, options: dict):
    return export_dataset(cases, SCHEMA, str(output), ExportSettings(**settings), **options)


@pytest.fixture(scope="module")
def children():
    """The export_child.py server: one import of the export, a fork per interrupted export."""
    server = subprocess.Popen([sys.executable, CHILD], env=child_environment(), stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    yield server
    server.stdin.close()
    server.wait(timeout=60)


@pytest.fixture
def interrupted_export(children):
    def run(cases, output, settings: dict, options: dict, kill: dict | None, file_size_limit: int = 0) -> int:
        """Run the export in a child killed as ``kill`` says (or failing on files over ``file_size_limit`` bytes);
        return its exit status (negative: killed by that signal; 1: OSError)."""
        request = {
            "cases": [[c.case_id, c.patient_id, c.images, c.segmentation] for c in cases],
            "schema": [[label.value, label.name, label.color] for label in SCHEMA],
            "output": str(output),
            "settings": settings,
            "options": options,
            "kill": kill,
            "file_size_limit": file_size_limit,
        }
        children.stdin.write(json.dumps(request) + "\n")
        children.stdin.flush()
        status = int(children.stdout.readline())
        assert status in (0, 1, -signal.SIGKILL), f"the child export failed unexpectedly ({status})"
        return status

    return run


def tree(folder) -> dict:
    """relative path -> sha256 of every file under ``folder``, and every folder (value None)."""
    found = {}
    for directory, folders, files in os.walk(folder):
        for name in folders:
            found[os.path.relpath(os.path.join(directory, name), folder)] = None
        for name in files:
            path = os.path.join(directory, name)
            with open(path, "rb") as file:
                found[os.path.relpath(path, folder)] = hashlib.sha256(file.read()).hexdigest()
    return found


@pytest.fixture(scope="module")
def clean(cases, tmp_path_factory):
    """``clean(settings, options)``: the tree of a clean export with those settings into a new folder."""
    trees = {}

    def clean_tree(settings: dict, options: dict, selected=None) -> dict:
        key = json.dumps([settings, options, [c.case_id for c in selected or cases]], sort_keys=True)
        if key not in trees:
            output = tmp_path_factory.mktemp("clean") / "out"
            export(selected or cases, output, settings, options)
            trees[key] = tree(output)
        return trees[key]

    return clean_tree


def kill_points(at: str, step: int = 1):
    """``{"at": at, "call": N}`` for N = 1, 1 + step, ... (the caller stops when the child completes)."""
    call = 1
    while True:
        yield {"at": at, "call": call}
        call += step


def test_the_issue_leak_a_killed_re_export_with_another_seed_leaves_no_test_case_in_training(
    cases, tmp_path, clean, interrupted_export
):
    """Export with seed 1, kill a re-export with seed 2 while it writes, export with seed 1 again."""
    output = tmp_path / "out"
    first = export(cases, output, NNUNET, SEED_1)
    second = export(cases, tmp_path / "other", NNUNET, SEED_2)
    moved = {s.case_id for s in first.summaries if s.subset == "test"} ^ {
        s.case_id for s in second.summaries if s.subset == "test"}
    assert moved, "the two seeds must move cases between training and test for this test to mean anything"
    # The 6th rename: some cases moved by the new seed are written, the run dies before its index files.
    assert interrupted_export(cases, output, NNUNET, SEED_2, {"at": "os.replace", "call": 6}) == -signal.SIGKILL
    export(cases, output, NNUNET, SEED_1)
    dataset = output / "Dataset001_Export"
    training = {name.split(".")[0] for name in os.listdir(dataset / "labelsTr")}
    testing = {name.split(".")[0] for name in os.listdir(dataset / "labelsTs")}
    assert not training & testing, f"test cases in labelsTr: {sorted(training & testing)}"
    assert json.loads((dataset / "dataset.json").read_text())["numTraining"] == len(training)
    assert tree(output) == clean(NNUNET, SEED_1)


@pytest.mark.parametrize(("at", "step"), [("os.replace", 1), ("os.remove", 1), ("progress", 1), ("os.fsync", 2)])
def test_kill_at_every_moment_of_a_re_export_then_export_again(cases, tmp_path, clean, interrupted_export, at, step):
    """Every rename, removal, progress report (and every 2nd flush) of a re-export with another seed."""
    first = tmp_path / "first"
    export(cases, first, NNUNET, SEED_1)
    for number, kill in enumerate(kill_points(at, step)):
        output = tmp_path / f"run{number}"
        shutil.copytree(first, output)
        status = interrupted_export(cases, output, NNUNET, SEED_2, kill)
        assert status in (0, -signal.SIGKILL)
        # Alternately the first settings again (the issue) and the interrupted ones.
        final = SEED_1 if number % 2 == 0 else SEED_2
        export(cases, output, NNUNET, final)
        assert tree(output) == clean(NNUNET, final), f"killed at {kill}, then exported with seed {final['seed']}"
        shutil.rmtree(output)
        if status == 0:
            break
    assert number >= 3, "the export was never interrupted"


@pytest.mark.parametrize("at", ["os.replace", "progress"])
def test_kill_a_first_export_at_every_moment_then_export_again(cases, tmp_path, clean, interrupted_export, at):
    """Every 3rd rename and progress report of an export into a new folder (the claim of the folder included)."""
    for number, kill in enumerate(kill_points(at, 3)):
        output = tmp_path / f"run{number}"
        status = interrupted_export(cases, output, {"format": "pairs"}, SEED_1, kill)
        export(cases, output, {"format": "pairs"}, SEED_1)
        assert tree(output) == clean({"format": "pairs"}, SEED_1), f"killed at {kill}"
        if status == 0:
            break


VARIANTS = {
    "folds": ({"format": "monai"}, dict(SEED_1, folds=3)),
    "spacing": ({"format": "monai", "spacing": [1.5, 1.5, 1.5]}, SEED_1),
    "compression": ({"format": "monai", "compression_level": 0}, SEED_1),
    "crop": ({"format": "monai", "crop_margin_mm": 2.0}, SEED_1),
    "test fraction": ({"format": "monai"}, dict(SEED_1, test_fraction=0.0)),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("kill", [{"at": "os.replace", "call": 3}, {"at": "os.fsync", "call": 14}])
def test_kill_a_re_export_with_other_settings_then_export_with_either(
    cases, tmp_path, clean, interrupted_export, variant, kill
):
    base = ({"format": "monai"}, SEED_1)
    other = VARIANTS[variant]
    for final in (base, other):
        output = tmp_path / f"to-{'base' if final is base else 'other'}"
        export(cases, output, *base)
        assert interrupted_export(cases, output, *other, kill) == -signal.SIGKILL
        export(cases, output, *final)
        assert tree(output) == clean(*final)


def test_kill_a_re_export_without_a_case_then_export_with_it(cases, tmp_path, clean, interrupted_export):
    output = tmp_path / "out"
    export(cases, output, NNUNET, SEED_1)
    assert interrupted_export(cases[:-2], output, NNUNET, SEED_1, {"at": "os.remove", "call": 2}) == -signal.SIGKILL
    export(cases[:-2], output, NNUNET, SEED_1)
    assert tree(output) == clean(NNUNET, SEED_1, cases[:-2])
    export(cases, output, NNUNET, SEED_1)
    assert tree(output) == clean(NNUNET, SEED_1)


# --- full disks and read-only folders --------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [1500, 6000, 10000])
def test_a_full_disk_fails_the_export_and_the_next_export_completes_it(
    cases, tmp_path, clean, interrupted_export, limit
):
    """Writes past ``limit`` bytes fail as on a full disk: a case file, an index file or a card plot."""
    for final in (SEED_1, SEED_2):
        output = tmp_path / f"seed{final['seed']}"
        export(cases, output, NNUNET, SEED_1)
        before = tree(output)
        assert interrupted_export(cases, output, dict(NNUNET, compression_level=0), SEED_2, None, limit) == 1
        assert tree(output) != before  # it failed part-way
        export(cases, output, NNUNET, final)
        assert tree(output) == clean(NNUNET, final)


# --- hostile manifests, journals and case lists; read-only folders; corrupted inputs ------------------------


def victim(tmp_path):
    """A file outside the export folder that nothing may touch."""
    path = tmp_path / "victim.txt"
    path.write_text("precious")
    return path


@pytest.mark.parametrize("entry", ["../victim.txt", "labelsTr/../../victim.txt", "ABSOLUTE", "linked/victim.txt"])
def test_a_manifest_naming_files_outside_the_folder_is_refused_and_nothing_is_deleted(cases, tmp_path, entry):
    """The issue's crafted `../` entry in .training-data-export.json deleted files outside the export."""
    target = victim(tmp_path)
    output = tmp_path / "out"
    export(cases, output, {"format": "pairs"}, SEED_1)
    (output / "linked").symlink_to(tmp_path)
    manifest = json.loads((output / MANIFEST_NAME).read_text())
    entry = str(target) if entry == "ABSOLUTE" else entry
    manifest["cases"]["case00"]["files"][entry] = 8
    (output / MANIFEST_NAME).write_text(json.dumps(manifest))
    before = tree(output)
    with pytest.raises(ExportError, match="not a file inside the export folder"):
        export(cases[1:], output, {"format": "pairs"}, SEED_1)  # case00 gone: its files would be removed
    assert target.read_text() == "precious" and tree(output) == before


@pytest.mark.parametrize("damage", ["not json", "a list", "files not a mapping", "index_files of numbers"])
def test_a_damaged_manifest_is_refused_with_the_reason(cases, tmp_path, damage):
    output = tmp_path / "out"
    export(cases, output, {"format": "pairs"}, SEED_1)
    manifest = json.loads((output / MANIFEST_NAME).read_text())
    if damage == "not json":
        text = "{"
    elif damage == "a list":
        text = "[]"
    elif damage == "files not a mapping":
        manifest["cases"]["case00"]["files"] = ["images/case00_image.nii.gz"]
        text = json.dumps(manifest)
    else:
        manifest["index_files"] = [1, 2]
        text = json.dumps(manifest)
    (output / MANIFEST_NAME).write_text(text)
    with pytest.raises(ExportError, match="cannot use the manifest"):
        export(cases, output, {"format": "pairs"}, SEED_1)


def test_a_journal_naming_files_outside_the_folder_is_ignored(cases, tmp_path, clean):
    target = victim(tmp_path)
    output = tmp_path / "out"
    export(cases, output, NNUNET, SEED_1)
    root = output / "Dataset001_Export"
    (root / "linked").symlink_to(tmp_path)
    lines = ["../../victim.txt", str(target), "linked/victim.txt", "imagesTr/../../../victim.txt", 42]
    (root / JOURNAL_NAME).write_text("".join(json.dumps(line) + "\n" for line in lines) + '"torn')
    export(cases, output, NNUNET, SEED_2)
    assert target.read_text() == "precious"
    (root / "linked").unlink()
    assert tree(output) == clean(NNUNET, SEED_2)


def test_a_case_list_cannot_make_the_export_write_outside_its_folder(cases, tmp_path):
    hostile = [Case("../escape", "p", dict(cases[0].images), cases[0].segmentation), *cases[1:]]
    with pytest.raises(ExportError, match="not usable as a file name"):
        export(hostile, tmp_path / "out", {"format": "pairs"}, SEED_1)
    assert not (tmp_path / "escape_image.nii.gz").exists() and not (tmp_path / "out").exists()


def test_an_export_folder_made_read_only_fails_cleanly_and_keeps_what_it_held(cases, tmp_path):
    from fault_injection import read_only

    output = tmp_path / "out"
    export(cases, output, {"format": "pairs"}, SEED_1)
    before = tree(output)
    with read_only(output), pytest.raises(ExportError, match="cannot be written"):
        export(cases, output, {"format": "pairs"}, SEED_2)
    assert tree(output) == before


@pytest.mark.parametrize("kind", ["truncated image", "NaN in the image", "truncated segmentation"])
def test_corrupted_inputs_stop_the_export_before_anything_is_written(cases, tmp_path, kind):
    from test_checks import spoil

    spoiled = [Case(c.case_id, c.patient_id, dict(c.images), c.segmentation) for c in cases]
    folder = tmp_path / "inputs"
    folder.mkdir()
    for case in spoiled[2:3]:
        for channel, path in case.images.items():
            case.images[channel] = shutil.copy(path, folder)
        case.segmentation = shutil.copy(case.segmentation, folder)
    image = sitk.ReadImage(spoiled[2].images["image"])
    float_path = str(folder / "case02.nii")
    sitk.WriteImage(sitk.Cast(image, sitk.sitkFloat32), float_path)
    spoiled[2].images["image"] = float_path
    spoil(kind, spoiled[2])
    with pytest.raises(ExportError, match=r"in 1 case\(s\): case02"):
        export(spoiled, tmp_path / "out", {"format": "pairs"}, SEED_1)
    assert not (tmp_path / "out").exists()

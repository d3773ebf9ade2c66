"""Batch runs (DeepSegmentLib.batch, batch_cases, batch_outputs, batch_cli): a registry model over a folder of images,
a case list or DICOM series, with real worker processes, real files, a real crash and a real Ctrl-C."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest
import SimpleITK as sitk
from batch_test_support import (
    MODEL_ID,
    case_image,
    expected_labels,
    result_files,
    write_cases,
    write_dicom_series,
    write_threshold_model,
)
from ModelRegistryLib.files import is_temporary_name
from TrainingDataExportLib.caselist import (
    DONE,
    IN_PROGRESS,
    PRE_ANNOTATED,
    TO_DO,
    Case,
    read_case_list,
    write_case_list,
)

from DeepSegmentLib.batch import (
    FAILED,
    NOT_RUN,
    SKIPPED,
    BatchError,
    BatchSettings,
    run_batch,
)
from DeepSegmentLib.batch_cases import cases_from_dicom, find_cases, select_cases
from DeepSegmentLib.batch_outputs import STATE_FOLDER, SUMMARY_NAME, is_up_to_date, read_record
from DeepSegmentLib.cli import main
from DeepSegmentLib.geometry import geometry_mismatch

MODULE_FOLDER = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CPU = BatchSettings(device="cpu", workers=1, threads=1)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """The threshold model's index (versions 1.0.0 and 2.0.0, the latter doubling the image) and a model cache."""
    folder = tmp_path_factory.mktemp("batch-model")
    index = write_threshold_model(str(folder), {"1.0.0": 1.0, "2.0.0": 2.0})
    return {"index": index, "cache": str(folder / "cache")}


def batch(model, kind, source, output, settings=CPU, spec=MODEL_ID + "@1.0.0", **options):
    return run_batch(spec, kind, str(source), str(output), settings, indexes=[model["index"]],
                     cache_dir=model["cache"], **options)


def states(summary) -> dict:
    return {case.case_id: case.state for case in summary.cases}


def no_partial_files(folder) -> bool:
    return not any(is_temporary_name(name) for _, _, names in os.walk(folder) for name in names)


def test_a_folder_of_images_gives_exact_labels_on_each_input_grid_with_two_workers(model, tmp_path):
    images = write_cases(str(tmp_path / "images"), 5)
    summary = batch(model, "images", tmp_path / "images", tmp_path / "out",
                    BatchSettings(device="cpu", workers=2, threads=1, output_format="nii.gz"))
    assert states(summary) == dict.fromkeys(images, "done")
    assert summary.workers == 2 and {case.where for case in summary.cases} == {"worker 0 (cpu)", "worker 1 (cpu)"}
    for case_id, image in images.items():
        written = sitk.ReadImage(str(tmp_path / "out" / f"{case_id}.nii.gz"))
        assert geometry_mismatch(image, written) == ""
        np.testing.assert_array_equal(sitk.GetArrayFromImage(written), expected_labels(image))
        record = read_record(str(tmp_path / "out"), case_id)
        assert record["model"] == {"id": MODEL_ID, "version": "1.0.0"} and record["label_values"] == [1]
        assert record["inputs"][0]["path"].endswith(f"{case_id}.nii.gz")
    assert sorted(os.listdir(tmp_path / "out")) == [STATE_FOLDER, SUMMARY_NAME, *(f"{c}.nii.gz" for c in images)]
    with open(tmp_path / "out" / SUMMARY_NAME, encoding="utf-8") as file:
        saved = json.load(file)
    assert saved["model_id"] == MODEL_ID and len(saved["cases"]) == 5 and saved["settings"]["workers"] == 2


def test_a_batch_result_is_the_same_file_as_a_run_of_the_case(model, tmp_path):
    write_cases(str(tmp_path / "images"), 1)
    batch(model, "images", tmp_path / "images", tmp_path / "out")
    code = main(["run", "--model", MODEL_ID + "@1.0.0", "--input", str(tmp_path / "images" / "case0.nii.gz"),
                 "--output", str(tmp_path / "single.seg.nrrd"), "--device", "cpu", "--index", model["index"],
                 "--cache-dir", model["cache"]])
    assert code == 0
    assert result_files(str(tmp_path / "out"))["case0.seg.nrrd"] == result_files(str(tmp_path))["single.seg.nrrd"]


def test_a_rerun_skips_exactly_the_cases_whose_inputs_model_and_options_are_unchanged(model, tmp_path):
    write_cases(str(tmp_path / "images"), 4)
    output = tmp_path / "out"
    batch(model, "images", tmp_path / "images", output)
    assert set(states(batch(model, "images", tmp_path / "images", output)).values()) == {SKIPPED}

    # A new time stamp is no change; new content is.
    os.utime(tmp_path / "images" / "case0.nii.gz")
    sitk.WriteImage(case_image(42), str(tmp_path / "images" / "case1.nii.gz"))
    # A result deleted, or changed behind the batch's back, is made again.
    os.remove(output / "case2.seg.nrrd")
    with open(output / "case3.seg.nrrd", "ab") as file:
        file.write(b"\0")
    rerun = batch(model, "images", tmp_path / "images", output)
    assert states(rerun) == {"case0": SKIPPED, "case1": "done", "case2": "done", "case3": "done"}
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(output / "case1.seg.nrrd"))),
                                  expected_labels(case_image(42)))

    # Another model version, an option that changes the labels, or --force: every case again.
    assert set(states(batch(model, "images", tmp_path / "images", output, spec=MODEL_ID)).values()) == {"done"}
    for image_id in ("case0", "case1"):
        record = read_record(str(output), image_id)
        assert record["model"]["version"] == "2.0.0"
    fast = BatchSettings(device="cpu", workers=1, threads=1, quality="fast")
    assert set(states(batch(model, "images", tmp_path / "images", output, fast, spec=MODEL_ID)).values()) == {"done"}
    assert set(states(batch(model, "images", tmp_path / "images", output, fast, spec=MODEL_ID)).values()) == {SKIPPED}
    forced = BatchSettings(device="cpu", workers=1, threads=1, quality="fast", force=True)
    assert set(states(batch(model, "images", tmp_path / "images", output, forced, spec=MODEL_ID)).values()) == {"done"}


def test_failing_cases_are_reported_with_their_reasons_and_the_others_go_on(model, tmp_path, capsys):
    images = write_cases(str(tmp_path / "images"), 3)
    truncated = tmp_path / "images" / "broken.nii"
    sitk.WriteImage(case_image(7), str(truncated))
    with open(truncated, "r+b") as file:
        file.truncate(os.path.getsize(truncated) - 100)
    cases = [Case(case_id, case_id, {"image": str(tmp_path / "images" / f"{case_id}.nii.gz")}) for case_id in images]
    cases += [Case("broken", "broken", {"image": str(truncated)}),
              Case("missing", "missing", {"image": str(tmp_path / "images" / "missing.nii.gz")})]
    write_case_list(str(tmp_path / "cases.csv"), cases)
    code = main(["batch", "--model", MODEL_ID + "@1.0.0", "--cases", str(tmp_path / "cases.csv"), "--output",
                 str(tmp_path / "out"), "--device", "cpu", "--workers", "1", "--index", model["index"],
                 "--cache-dir", model["cache"]])
    captured = capsys.readouterr()
    assert code == 1
    assert "3 done, 0 skipped, 2 failed, 0 not run" in captured.out
    assert "failed: broken: cannot read its input" in captured.out and "truncated" in captured.out
    assert "failed: missing: cannot read its input: Input not found" in captured.out
    assert captured.err.strip().splitlines()[-1] == "error: 2 of 5 cases failed"
    assert sorted(name for name in os.listdir(tmp_path / "out") if name.endswith(".seg.nrrd")) == [
        f"{case_id}.seg.nrrd" for case_id in images]


def test_a_crashed_worker_fails_only_its_case_and_a_new_worker_runs_the_rest(model, tmp_path):
    """A real crash: the first worker process aborts (SIGABRT) as its first case starts; the case queued behind it
    goes to a fresh worker."""
    write_cases(str(tmp_path / "images"), 3)
    launcher = tmp_path / "python"
    launcher.write_text(
        "#!/bin/sh\n"
        f"if [ ! -e '{tmp_path}/crashed-once' ]; then touch '{tmp_path}/crashed-once';"
        " export SLICER_DEEPLEARNING_WORKER_ABORT=DeepSegmentLib.batch_worker:segment_shared; fi\n"
        f"exec '{sys.executable}' \"$@\"\n")
    launcher.chmod(0o755)
    logged = []
    summary = batch(model, "images", tmp_path / "images", tmp_path / "out", python=str(launcher),
                    log=lambda text, level="info": logged.append((level, text)))
    assert states(summary) == {"case0": FAILED, "case1": "done", "case2": "done"}
    reason = summary.cases[0].reason
    assert "stopped unexpectedly" in reason and "SIGABRT" in reason, reason
    assert logged == [("warning", f"case0: failed: {reason}")]
    assert no_partial_files(tmp_path / "out")


def test_cancel_stops_the_run_writes_what_was_computed_and_a_rerun_goes_on(model, tmp_path):
    write_cases(str(tmp_path / "images"), 8, shape=(40, 40, 40))
    cancel = threading.Event()
    reports = []

    def progress(fraction, text):
        reports.append((fraction, text))
        if re.match(r"[1-7] of 8 cases", text):
            cancel.set()

    summary = batch(model, "images", tmp_path / "images", tmp_path / "out", progress=progress, cancel=cancel)
    assert summary.cancelled
    done = [case.case_id for case in summary.cases if case.state == "done"]
    assert 1 <= len(done) < 8 and {case.state for case in summary.cases} <= {"done", NOT_RUN}
    assert sorted(name[: -len(".seg.nrrd")] for name in os.listdir(tmp_path / "out")
                  if name.endswith(".seg.nrrd")) == sorted(done)
    assert no_partial_files(tmp_path / "out")
    for case_id in done:  # complete results, each with its record
        record = read_record(str(tmp_path / "out"), case_id)
        assert is_up_to_date(str(tmp_path / "out"), case_id, ".seg.nrrd", record["fingerprint"])
    rerun = batch(model, "images", tmp_path / "images", tmp_path / "out")
    assert not rerun.cancelled
    assert states(rerun) == {f"case{n}": SKIPPED if f"case{n}" in done else "done" for n in range(8)}


def test_progress_names_the_running_cases_and_the_time_left(model, tmp_path):
    write_cases(str(tmp_path / "images"), 4, shape=(30, 30, 30))
    reports = []
    batch(model, "images", tmp_path / "images", tmp_path / "out", progress=lambda *report: reports.append(report))
    fractions = [fraction for fraction, _ in reports]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    texts = [text for _, text in reports]
    assert any("segmenting case" in text for text in texts)
    assert any(text.startswith(("1 of 4", "2 of 4", "3 of 4")) and "left" in text for text in texts), texts
    assert texts[-1] == "4 of 4 cases"


def test_dicom_series_one_per_folder_or_several_in_one_are_cases(model, tmp_path):
    root = tmp_path / "study"
    write_dicom_series(case_image(1), str(root / "patient1" / "t1"), "1.2.826.0.1.3680043.2.1125.1.11")
    write_dicom_series(case_image(2), str(root / "patient2"), "1.2.826.0.1.3680043.2.1125.1.21", 3)
    write_dicom_series(case_image(3), str(root / "patient2"), "1.2.826.0.1.3680043.2.1125.1.22", 4)
    cases = cases_from_dicom(str(root))
    assert [case.case_id for case in cases] == ["patient1_t1", "patient2_3", "patient2_4"]
    assert cases[1].inputs[0].series == "1.2.826.0.1.3680043.2.1125.1.21"
    summary = batch(model, "dicom", root, tmp_path / "out")
    assert set(states(summary).values()) == {"done"}
    from DeepSegmentLib.imageio import read_volume

    for case in cases:
        image = read_volume(case.inputs[0].path, case.inputs[0].series)
        written = sitk.ReadImage(str(tmp_path / "out" / f"{case.case_id}.seg.nrrd"))
        assert geometry_mismatch(image, written) == ""
        np.testing.assert_array_equal(sitk.GetArrayFromImage(written), expected_labels(image))


def test_case_filters_pick_cases_by_id_pattern_and_status(tmp_path):
    cases = [Case(f"ct{n:02d}", "p", {"image": f"ct{n:02d}.nrrd"}, status=status)
             for n, status in enumerate([TO_DO, DONE, TO_DO, IN_PROGRESS, TO_DO])]
    write_case_list(str(tmp_path / "cases.csv"), cases)
    found = find_cases("cases", str(tmp_path / "cases.csv"))
    assert [c.case_id for c in select_cases(found, ["CT0[0-2]"])] == ["ct00", "ct01", "ct02"]
    assert [c.case_id for c in select_cases(found, [], [TO_DO])] == ["ct00", "ct02", "ct04"]
    assert [c.case_id for c in select_cases(found, ["ct0[3-4]", "ct00"], [TO_DO])] == ["ct00", "ct04"]


def test_pre_annotation_records_predictions_of_cases_nobody_started(model, tmp_path):
    images = write_cases(str(tmp_path / "images"), 4)
    statuses = {"case0": TO_DO, "case1": TO_DO, "case2": IN_PROGRESS, "case3": DONE}
    write_case_list(str(tmp_path / "cases.csv"), [
        Case(case_id, case_id, {"image": str(tmp_path / "images" / f"{case_id}.nii.gz")}, status=statuses[case_id],
             segmentation=str(tmp_path / f"{case_id}.seg.nrrd") if statuses[case_id] != TO_DO else "")
        for case_id in images])
    settings = BatchSettings(device="cpu", workers=1, threads=1, pre_annotate=True, patterns=("case[0-2]",))
    summary = batch(model, "cases", tmp_path / "cases.csv", tmp_path / "predicted", settings)
    assert states(summary) == {"case0": "done", "case1": "done", "case2": "done"}
    assert summary.pre_annotated == ["case0", "case1"]
    cases = {case.case_id: case for case in read_case_list(str(tmp_path / "cases.csv"))}
    for case_id in ("case0", "case1"):
        assert cases[case_id].status == PRE_ANNOTATED
        assert cases[case_id].pre_annotation == str(tmp_path / "predicted" / f"{case_id}.seg.nrrd")
        assert (cases[case_id].model_id, cases[case_id].model_version) == (MODEL_ID, "1.0.0")
    assert cases["case2"].status == IN_PROGRESS and not cases["case2"].pre_annotation
    assert cases["case3"].status == DONE and not cases["case3"].pre_annotation
    # A newer model's prediction replaces a pre-annotation nobody has opened yet (skipped cases count too).
    again = batch(model, "cases", tmp_path / "cases.csv", tmp_path / "predicted", settings, spec=MODEL_ID)
    assert again.pre_annotated == ["case0", "case1"]
    assert read_case_list(str(tmp_path / "cases.csv"))[0].model_version == "2.0.0"


@pytest.mark.parametrize("arguments, reason", [
    (["--images", "{images}", "--output", "{images}/case0.nii.gz"], "is a file, not a folder"),
    (["--images", "{images}", "--output", "{images}", "--format", "nii.gz"], "would replace an input"),
    (["--images", "{images}", "--output", "{out}", "--pre-annotate"], "run the batch on a case list"),
    (["--images", "{images}", "--output", "{out}", "--case", "mr*"], "No case of"),
    (["--images", "{missing}", "--output", "{out}"], "Image folder not found"),
    (["--cases", "{missing}", "--output", "{out}"], "Case list not found"),
    (["--images", "{images}", "--output", "{out}", "--device", "gpu"], "Unknown device"),
    (["--images", "{images}", "--output", "{out}", "--workers", "-1"], "--workers"),
    (["--images", "{images}", "--output", "{out}", "--status", "later"], "invalid choice"),
    (["--images", "{images}", "--output", "{out}", "--channel", "t1"], "the name ends with none of the channels"),
    (["--cases", "{images}/case0.nii.gz", "--output", "{out}", "--channel", "t1"], "--channel goes with --images"),
    (["--images", "{images}", "--output", "{out}", "--ray", "auto", "--device", "mps"], "not on Apple's MPS"),
])
def test_bad_arguments_fail_in_one_line_before_anything_is_written(model, tmp_path, capsys, arguments, reason):
    write_cases(str(tmp_path / "images"), 1)
    paths = {"images": tmp_path / "images", "out": tmp_path / "out", "missing": tmp_path / "missing"}
    code = main(["batch", "--model", MODEL_ID, *(a.format(**paths) for a in arguments), "--index", model["index"],
                 "--cache-dir", str(tmp_path / "cache")])
    errors = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and errors[-1].startswith("error: ") and reason in errors[-1], errors
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache" / "models").exists()
    assert sorted(os.listdir(tmp_path / "images")) == ["case0.nii.gz"]


def test_a_second_batch_into_the_same_folder_is_refused(model, tmp_path):
    from ModelRegistryLib.locking import FileLock

    write_cases(str(tmp_path / "images"), 1)
    with FileLock(str(tmp_path / "out" / STATE_FOLDER / "lock")), pytest.raises(BatchError, match="Another batch"):
        batch(model, "images", tmp_path / "images", tmp_path / "out")


def test_the_command_as_a_process_stops_cleanly_on_sigterm_and_goes_on_when_run_again(model, tmp_path):
    write_cases(str(tmp_path / "images"), 8, shape=(64, 64, 64))
    command = [sys.executable, "-m", "DeepSegmentLib", "batch", "--model", MODEL_ID + "@1.0.0", "--images",
               str(tmp_path / "images"), "--output", str(tmp_path / "out"), "--device", "cpu", "--workers", "1",
               "--threads", "1", "--index", model["index"], "--cache-dir", model["cache"]]
    process = subprocess.Popen(command, cwd=MODULE_FOLDER, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen = b""
    while not re.search(rb"\b[1-7] of 8 cases", seen):  # progress lines on standard error, rewritten in place
        chunk = os.read(process.stderr.fileno(), 4096)
        assert chunk, f"the batch ended early: {seen.decode(errors='replace')}"
        seen += chunk
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert b"(cancelled)" in out and err.strip().splitlines()[-1].startswith(b"error: interrupted")
    assert no_partial_files(tmp_path / "out")
    finished = subprocess.run(command, cwd=MODULE_FOLDER, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    assert "0 failed, 0 not run" in finished.stdout and " skipped" in finished.stdout
    assert len([name for name in os.listdir(tmp_path / "out") if name.endswith(".seg.nrrd")]) == 8

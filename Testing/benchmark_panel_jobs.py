"""Benchmark: each panel's long job while the GUI idles as Slicer's does, and while it releases the GIL.

Run from the repository root: ``.venv/bin/python Testing/benchmark_panel_jobs.py [--repeats N]``.

The panels run in the Slicer stand-in and are driven by their buttons, as a user would. While a job runs,
the main thread idles in one of two loops, interleaved, best of N:

- *Slicer-like*: ``processEvents()`` then a 1 ms sleep in a C call that keeps the GIL, as Slicer's event
  loop does (PythonQt never releases the GIL; a Python thread of the GUI process runs only while the GUI
  runs Python);
- *GIL-free*: ``processEvents()`` then ``time.sleep(0.001)``, which releases it (what PySide would do).

Jobs: Model Registry *Install* of a 60 MB model from a server on 127.0.0.1 (in a process of its own), Deep
Segment *Apply* of the bundled demo model on the MNI152 template (197×233×189 voxels) on the CPU, the first
run (a new model service: start, PyTorch import, model load) and the second (the network stays loaded),
and Training Data Export *Export* of 10 cases of 128³ to nnU-Net. For each it prints the time from the click
to the result shown, the ratio Slicer-like / GIL-free (goal ≤ 1.25), the 99th percentile of how late a
20 ms GUI timer fired while the job ran (goal < 50 ms), and the time from the click to the first progress
shown (goal < 1 s; the panels poll every 100 ms).
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
import zipfile

import numpy as np
import SimpleITK as sitk

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_BYTES = 60 * 1000 * 1000
EXPORT_CASES = 10
TIMER_MSEC = 20
_keep_gil_sleep = ctypes.PyDLL(None).usleep


def boot(state: str):
    """The stand-in with the extension's modules loaded (what the tests' conftest.py does)."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    os.environ["SLICER_DEEPLEARNING_CACHE_DIR"] = os.path.join(state, "cache")
    sys.path.insert(0, os.path.join(REPOSITORY, "Testing", "SlicerStandIn"))
    sys.path.insert(1, os.path.join(REPOSITORY, "ModelRegistry", "Testing", "Python"))
    sys.path.insert(2, os.path.join(REPOSITORY, "DeepSegment", "Demo"))
    import slicer_standin

    slicer_standin.boot(os.path.join(state, "standin"))
    slicer_standin.load_modules(slicer_standin.extension_module_paths(REPOSITORY))


def slicer_like_idle():
    import slicer

    slicer.app.processEvents()
    _keep_gil_sleep(1000)


def gil_free_idle():
    import slicer

    slicer.app.processEvents()
    time.sleep(0.001)


IDLES = {"Slicer-like": slicer_like_idle, "GIL-free": gil_free_idle}


class Measurement:
    def __init__(self, seconds: float, first_progress: float | None, timer_p99: float) -> None:
        self.seconds, self.first_progress, self.timer_p99 = seconds, first_progress, timer_p99


def measure(poller, click, idle) -> Measurement:
    """Click, idle until the poller has handed over the result; the GUI timer's lateness meanwhile."""
    import qt

    ticks = []
    timer = qt.QTimer()
    timer.setTimerType(qt.Qt.PreciseTimer)
    timer.setInterval(TIMER_MSEC)
    timer.connect("timeout()", lambda: ticks.append(time.perf_counter()))
    first_progress = []
    show_progress = poller._onProgress

    def progress_seen(step):
        if not first_progress:
            first_progress.append(time.perf_counter())
        show_progress(step)

    poller._onProgress = progress_seen
    timer.start()
    began = time.perf_counter()
    try:
        click()
        while poller.busy:
            idle()
        seconds = time.perf_counter() - began
    finally:
        timer.stop()
        poller._onProgress = show_progress
    lateness = np.diff(ticks) - TIMER_MSEC / 1000 if len(ticks) > 1 else np.zeros(1)
    return Measurement(seconds, first_progress[0] - began if first_progress else None,
                       float(np.percentile(np.maximum(lateness, 0.0), 99)))


# -- the jobs ------------------------------------------------------------------------------------------------


class InstallJob:
    name = f"Model Registry Install ({MODEL_BYTES // 1000**2} MB, 127.0.0.1)"

    def __init__(self, folder: str) -> None:
        from registry_test_server import served_in_a_process

        import slicer

        served = os.path.join(folder, "served")
        os.makedirs(served)
        archive = os.path.join(served, "big-1.0.0.zip")
        with zipfile.ZipFile(archive, "w") as zipped:
            zipped.writestr("weights.bin", np.random.default_rng(1).bytes(MODEL_BYTES))
        with open(archive, "rb") as file:
            digest = hashlib.sha256(file.read()).hexdigest()
        index = {"schemaVersion": 1, "models": [{"id": "big", "title": "Big model", "versions": [
            {"version": "1.0.0", "files": [{"url": "big-1.0.0.zip", "sha256": digest,
                                            "size": os.path.getsize(archive)}]}]}]}
        with open(os.path.join(served, "index.json"), "w", encoding="utf-8") as file:
            json.dump(index, file)
        self.server = served_in_a_process({"/index.json": os.path.join(served, "index.json"),
                                           "/big-1.0.0.zip": archive})
        self.base_url = self.server.__enter__()
        self.folder = folder
        self.panel = slicer.modules.modelregistry.widgetRepresentation().self()
        self.runs = 0

    def run(self, idle) -> Measurement:
        from ModelRegistry import ModelRegistryLogic

        self.runs += 1
        self.panel.logic = ModelRegistryLogic(cacheDir=os.path.join(self.folder, f"cache-{self.runs}"))
        self.panel.logic.addSource(self.base_url + "/index.json")
        self.panel.refresh(offline=True)
        assert self.panel.selectModel("big")
        measured = measure(self.panel.poller, self.panel.ui.installButton.click, idle)
        assert "done" in self.panel.ui.progressLabel.text, self.panel.ui.progressLabel.text
        shutil.rmtree(self.panel.logic.cacheDir)
        return measured

    def close(self) -> None:
        self.server.__exit__(None, None, None)


class ApplyJob:
    name = "Deep Segment Apply (demo model, 197×233×189, CPU)"

    def __init__(self, folder: str) -> None:
        import mni_template

        import slicer
        from DeepSegment import DeepSegmentLogic

        template = mni_template.read_template(mni_template.template_folder(folder))["t1"]
        self.volume = DeepSegmentLogic.volumeNodeFromImage(template, "MNI T1")
        self.panel = slicer.modules.deepsegment.widgetRepresentation().self()
        self.panel.logic = DeepSegmentLogic()
        self.panel.updateModelList()
        self.panel.ui.modelSelector.setCurrentIndex(self.panel.ui.modelSelector.findData("brain-tissue-demo"))
        self.panel.inputSelectors[0].setCurrentNode(self.volume)
        self.panel.ui.deviceSelector.setCurrentIndex(self.panel.ui.deviceSelector.findData("cpu"))

    def run(self, idle, cold: bool) -> Measurement:
        import slicer

        if cold:
            self.panel.logic.service.stop()
        self.panel.ui.outputSelector.setCurrentNode(None)
        measured = measure(self.panel.poller, self.panel.ui.applyButton.click, idle)
        assert self.panel.ui.stageLabel.text == "Done.", self.panel.ui.stageLabel.text
        slicer.mrmlScene.RemoveNode(self.panel.ui.outputSelector.currentNode())
        return measured

    def close(self) -> None:
        self.panel.logic.service.stop()


class ExportJob:
    name = f"Training Data Export Export ({EXPORT_CASES} cases of 128³, nnU-Net)"

    def __init__(self, folder: str) -> None:
        import slicer
        from TrainingDataExport import TrainingDataExportLogic

        data = os.path.join(folder, "cases")
        os.makedirs(data)
        rng = np.random.default_rng(2)
        grid = np.indices((128, 128, 128)).astype(np.float32) - 64
        for number in range(EXPORT_CASES):
            image = sitk.GetImageFromArray((rng.normal(40, 20, (128, 128, 128))).astype(np.int16))
            image.SetSpacing((0.8, 0.8, 1.5))
            sitk.WriteImage(image, os.path.join(data, f"case{number:02d}.nrrd"), True)
            labels = sitk.GetImageFromArray(((grid**2).sum(axis=0) < (30 + number) ** 2).astype(np.uint8))
            labels.CopyInformation(image)
            sitk.WriteImage(labels, os.path.join(data, f"case{number:02d}_seg.nrrd"), True)
        with open(os.path.join(data, "labels.json"), "w", encoding="utf-8") as file:
            json.dump({"labels": [{"value": 1, "name": "Organ", "color": "#dd8259"}]}, file)
        logic = TrainingDataExportLogic()
        logic.createCaseListFromFolder(data)
        logic.loadLabelSchema(os.path.join(data, "labels.json"))
        self.panel = slicer.modules.trainingdataexport.widgetRepresentation().self()
        self.panel.logic = logic
        self.panel.updateCaseTable()
        self.panel.ui.formatComboBox.currentText = "nnunet"
        self.panel.ui.foldsSpinBox.value = 0
        self.panel.ui.testFractionSpinBox.value = 0.0
        self.folder = folder
        self.runs = 0

    def run(self, idle) -> Measurement:
        self.runs += 1
        output = os.path.join(self.folder, f"export-{self.runs}")
        self.panel.ui.outputPathLineEdit.currentPath = output
        measured = measure(self.panel.exportPoller, self.panel.ui.exportButton.click, idle)
        assert self.panel.ui.exportResultLabel.text.startswith(f"Exported {EXPORT_CASES} case(s)"), \
            self.panel.ui.exportResultLabel.text
        shutil.rmtree(output)
        return measured

    def close(self) -> None:
        pass


# -- the table -------------------------------------------------------------------------------------------------


def best(measurements: list) -> Measurement:
    return min(measurements, key=lambda m: m.seconds)


def row(name: str, runs: dict) -> str:
    slicer_like, gil_free = best(runs["Slicer-like"]), best(runs["GIL-free"])
    first = max(m.first_progress for m in (slicer_like, gil_free))
    return (f"| {name} | {slicer_like.seconds:.2f} s | {gil_free.seconds:.2f} s | "
            f"{slicer_like.seconds / gil_free.seconds:.2f} | "
            f"{max(slicer_like.timer_p99, gil_free.timer_p99) * 1000:.0f} ms | {first:.2f} s |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per job and idle loop (best is kept)")
    parser.add_argument("--jobs", default="install,apply,export", help="which jobs to run (comma-separated)")
    parser.add_argument("--quality", choices=("accurate", "fast"), default="accurate",
                        help="Deep Segment's quality (accurate is the panel's default)")
    arguments = parser.parse_args(argv)
    chosen = set(arguments.jobs.split(","))
    state = tempfile.mkdtemp(prefix="benchmark-panel-jobs-")
    try:
        boot(state)
        jobs = {"install": InstallJob, "apply": ApplyJob, "export": ExportJob}
        made = {name: jobs[name](state) for name in jobs if name in chosen}
        if "apply" in made:
            made["apply"].panel.ui.qualitySelector.setCurrentIndex(
                made["apply"].panel.ui.qualitySelector.findData(arguments.quality))
        runs = {"install": lambda idle: made["install"].run(idle),
                "cold": lambda idle: made["apply"].run(idle, cold=True),
                "warm": lambda idle: made["apply"].run(idle, cold=False),
                "export": lambda idle: made["export"].run(idle)}
        rows = [name for name in runs if (name if name in jobs else "apply") in made]
        results = {name: {idle: [] for idle in IDLES} for name in rows}
        try:
            for repeat in range(arguments.repeats):
                for idle_name, idle in IDLES.items():
                    for name in rows:
                        results[name][idle_name].append(runs[name](idle))
                print(f"repeat {repeat + 1} of {arguments.repeats} done", file=sys.stderr)
        finally:
            for job in made.values():
                job.close()
        print(f"Best of {arguments.repeats}, interleaved; {os.cpu_count()} CPU cores; load average "
              f"{os.getloadavg()[0]:.1f}.\n")
        print("| job | Slicer-like idle | GIL-free idle | ratio (goal ≤ 1.25) |"
              " 20 ms timer, p99 lateness (goal < 50 ms) | first progress (goal < 1 s) |")
        print("|---|---|---|---|---|---|")
        names = {"install": InstallJob.name, "export": ExportJob.name,
                 "cold": ApplyJob.name.replace("(", f"first run (new service, {arguments.quality}, "),
                 "warm": ApplyJob.name.replace("(", f"second run (model loaded, {arguments.quality}, ")}
        for name in rows:
            print(row(names[name], results[name]))
    finally:
        shutil.rmtree(state, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Batch throughput: ``python -m DeepSegmentLib batch`` on N cases against ``run`` once per case.

The model is the demo model, ``brain-tissue-demo`` from the bundled registry (a 3D U-Net on a 2 mm grid, 64³
windows). The cases are the MNI152 2009 T1 template (read from the installed ``nilearn`` package, or fetched as the
demo does) turned by up to 8° about each axis and rescaled in intensity by a seeded draw per case, on its 1 mm grid
(197 × 233 × 189 voxels), written as ``.nii.gz``. Both ways use the same model, cases and options (CPU, the chosen
quality, automatic precision) and write ``.seg.nrrd`` files; the results are compared voxel by voxel.

Rounds alternate the order (command per case first, then batch; then the other way round), so that a change in the
machine's load hits both alike; ``--workers-sweep`` also times the batch with one worker of two threads against two
workers of one thread (the question behind ``DeepSegmentLib.batch.default_workers``), in alternating order.

    .venv/bin/python DeepSegment/Testing/benchmark_batch.py --cases 20 --quality fast --workers-sweep
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import SimpleITK as sitk

TESTING = os.path.dirname(os.path.abspath(__file__))
DEEPSEGMENT = os.path.dirname(TESTING)
REPOSITORY = os.path.dirname(DEEPSEGMENT)
sys.path[:0] = [DEEPSEGMENT, os.path.join(DEEPSEGMENT, "Demo"), os.path.join(REPOSITORY, "ModelRegistry"),
                os.path.join(REPOSITORY, "TrainingDataExport")]

from mni_template import read_template, template_folder  # noqa: E402

from DeepSegmentLib.cli import open_registry  # noqa: E402

MODEL = "brain-tissue-demo"


def write_cases(folder: str, count: int, cache_dir: str) -> None:
    """``count`` brain volumes ``case<NN>.nii.gz``: the template turned and rescaled, seeded per case."""
    t1 = read_template(template_folder(cache_dir))["t1"]
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    centre = t1.TransformContinuousIndexToPhysicalPoint([(size - 1) / 2 for size in t1.GetSize()])
    for number in range(count):
        turn = sitk.Euler3DTransform(centre, *np.radians(rng.uniform(-8, 8, 3)))
        image = sitk.Resample(t1, t1, turn, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        image = sitk.Cast(image * float(rng.uniform(0.8, 1.2)), sitk.sitkInt16)
        sitk.WriteImage(image, os.path.join(folder, f"case{number:02d}.nii.gz"), True)


def command(*arguments: str) -> list:
    return [sys.executable, "-m", "DeepSegmentLib", *arguments]


def run_quietly(arguments: list) -> None:
    result = subprocess.run(arguments, cwd=DEEPSEGMENT, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(arguments)} failed: {result.stderr.strip()[-2000:]}")


def per_case_commands(cases: str, output: str, cache_dir: str, quality: str) -> float:
    """Seconds to segment every case with one ``run`` command each, one after another."""
    shutil.rmtree(output, ignore_errors=True)
    os.makedirs(output)
    began = time.perf_counter()
    for name in sorted(os.listdir(cases)):
        case_id = name[: -len(".nii.gz")]
        run_quietly(command("run", "--model", MODEL, "--input", os.path.join(cases, name), "--output",
                            os.path.join(output, case_id + ".seg.nrrd"), "--device", "cpu", "--quality", quality,
                            "--cache-dir", cache_dir))
    return time.perf_counter() - began


def batch_command(cases: str, output: str, cache_dir: str, quality: str, workers: int = 0, threads: int = 0) -> float:
    """Seconds for one ``batch`` command over every case (from scratch: the output folder is emptied first)."""
    shutil.rmtree(output, ignore_errors=True)
    began = time.perf_counter()
    run_quietly(command("batch", "--model", MODEL, "--images", cases, "--output", output, "--device", "cpu",
                        "--quality", quality, "--cache-dir", cache_dir, "--workers", str(workers),
                        "--threads", str(threads)))
    return time.perf_counter() - began


def differing_voxels(first: str, second: str) -> tuple:
    """(voxels that differ, voxels) over the ``.seg.nrrd`` files both folders hold."""
    differ = total = 0
    for name in sorted(name for name in os.listdir(first) if name.endswith(".seg.nrrd")):
        a = sitk.GetArrayViewFromImage(sitk.ReadImage(os.path.join(first, name)))
        b = sitk.GetArrayViewFromImage(sitk.ReadImage(os.path.join(second, name)))
        differ += int(np.count_nonzero(a != b))
        total += a.size
    return differ, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--quality", choices=("fast", "accurate"), default="fast")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of both ways, alternating their order")
    parser.add_argument("--workers-sweep", action="store_true",
                        help="also time 1 worker x 2 threads against 2 workers x 1 thread")
    parser.add_argument("--folder", default="", help="work folder (default: a temporary one, removed afterwards)")
    arguments = parser.parse_args()
    folder = arguments.folder or tempfile.mkdtemp(prefix="benchmark-batch-")
    cache_dir = os.path.join(folder, "cache")
    try:
        cases = os.path.join(folder, "cases")
        write_cases(cases, arguments.cases, cache_dir)
        open_registry([], cache_dir).ensure_installed(MODEL)
        print(f"{arguments.cases} cases of {sitk.ReadImage(os.path.join(cases, 'case00.nii.gz')).GetSize()} voxels, "
              f"{MODEL}, CPU, quality {arguments.quality}, {os.cpu_count()} cores, load average "
              f"{os.getloadavg()[0]:.1f}", flush=True)
        times = {"command per case": [], "batch": []}
        for round_number in range(arguments.rounds):
            ways = [("command per case", lambda: per_case_commands(cases, os.path.join(folder, "single"), cache_dir,
                                                                   arguments.quality)),
                    ("batch", lambda: batch_command(cases, os.path.join(folder, "batch"), cache_dir,
                                                    arguments.quality))]
            for name, way in ways if round_number % 2 == 0 else ways[::-1]:
                seconds = way()
                times[name].append(seconds)
                print(f"round {round_number + 1}: {name}: {seconds:.1f} s ({seconds / arguments.cases:.2f} s per case)"
                      f", load average {os.getloadavg()[0]:.1f}", flush=True)
        best = {name: min(values) for name, values in times.items()}
        differ, total = differing_voxels(os.path.join(folder, "single"), os.path.join(folder, "batch"))
        print(f"best: command per case {best['command per case']:.1f} s, batch {best['batch']:.1f} s: batch "
              f"{best['command per case'] / best['batch']:.2f}x faster; results differ in {differ} of {total} voxels")
        if arguments.workers_sweep:
            sweep = {"1 worker x 2 threads": (1, 2), "2 workers x 1 thread": (2, 1)}
            order = list(sweep.items())
            measured = {name: [] for name in sweep}
            for round_number in range(2):
                for name, (workers, threads) in order if round_number % 2 == 0 else order[::-1]:
                    seconds = batch_command(cases, os.path.join(folder, "sweep"), cache_dir, arguments.quality,
                                            workers, threads)
                    measured[name].append(seconds)
                    print(f"sweep round {round_number + 1}: {name}: {seconds:.1f} s", flush=True)
            one, two = (min(measured[name]) for name in sweep)
            print(f"best: 1 worker x 2 threads {one:.1f} s, 2 workers x 1 thread {two:.1f} s (ratio {one / two:.2f})")
    finally:
        if not arguments.folder:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()

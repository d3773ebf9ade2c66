"""Benchmark of DeepSegmentLib's evaluation against MONAI's metrics, on the same label maps, in one run.

A cohort of seeded synthetic cases (default 50 cases of 256³ voxels, 5 labels): organ-like blobs with
curved, irregular surfaces (radii 8 to 40 voxels) as references, and as predictions the same blobs moved by
about 1.5 voxels, resized by about 5% and reshaped, now and then one missed or one extra; each case has its
own anisotropic spacing (x, y 0.6-1.0 mm, z 1-3 mm). Measured per case and label:

- ``ours``: ``DeepSegmentLib.evaluation.label_map_metrics`` on the two uint8 label maps: Dice, HD95,
  symmetric mean surface distance, normalized surface Dice at ``--tolerance`` mm and the volumes;
- ``monai``: MONAI's ``compute_dice``, ``compute_hausdorff_distance(percentile=95)``,
  ``compute_average_surface_distance(symmetric=True)`` and ``compute_surface_dice`` with the spacing, on
  one-hot tensors made beforehand (their making, ``monai.networks.utils.one_hot``, is timed apart as
  ``monai one-hot``: a user starting from label maps pays it too).

Methods alternate which runs first from case to case and from repeat to repeat; each repeat times every
case once, and the best of ``--repeats`` totals is reported with the ratio. Every value of the first repeat
is compared with MONAI's: they must agree within 1e-3 (the conventions for empty masks are those of
``DeepSegmentLib.evaluation``; see ``evaluation_cases.monai_disagreements``).

Cases are generated once and kept zlib-compressed in memory (some 30 MB instead of 1.7 GB); decompressing
is not timed. MONAI is a benchmark-only dependency (``pip install monai==1.6.1``).

Usage (from the repository root): .venv/bin/python DeepSegment/Testing/benchmark_evaluation.py
    [--cases 50] [--size 256] [--labels 5] [--repeats 3] [--tolerance 2.0]
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
REPOSITORY = os.path.dirname(os.path.dirname(HERE))
sys.path[:0] = [os.path.join(REPOSITORY, "DeepSegment"), os.path.join(HERE, "Python")]

import numpy as np  # noqa: E402
from evaluation_cases import label_map_pair, monai_disagreements, monai_inputs, monai_metrics  # noqa: E402

from DeepSegmentLib.evaluation import label_map_metrics  # noqa: E402


def generated_cases(count: int, size: int, labels: int) -> list:
    """``[(compressed reference, compressed prediction, spacing x y z)]``, seeded by case number."""
    cases = []
    for seed in range(count):
        reference, prediction = label_map_pair(seed, shape=(size,) * 3, labels=labels, smallest=8 * size / 256,
                                               largest=40 * size / 256, shift=1.5, scale=0.05, miss=0.02, extra=0.1)
        rng = np.random.default_rng(10_000 + seed)
        spacing = (float(rng.uniform(0.6, 1.0)), float(rng.uniform(0.6, 1.0)), float(rng.uniform(1.0, 3.0)))
        cases.append((zlib.compress(reference.tobytes(), 1), zlib.compress(prediction.tobytes(), 1), spacing))
        print(f"\rgenerated {seed + 1}/{count} cases", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return cases


def arrays(case: tuple, size: int) -> tuple:
    return tuple(np.frombuffer(zlib.decompress(data), np.uint8).reshape((size,) * 3) for data in case[:2])


def run_ours(reference: np.ndarray, prediction: np.ndarray, spacing, labels: int, tolerance: float) -> tuple:
    """``(results, {"ours": seconds})``."""
    start = time.perf_counter()
    results = label_map_metrics(reference, prediction, spacing, range(1, labels + 1), tolerance)
    return results, {"ours": time.perf_counter() - start}


def run_monai(reference: np.ndarray, prediction: np.ndarray, spacing, labels: int, tolerance: float,
              with_maximum: bool) -> tuple:
    """``(rows, {"monai one-hot": seconds, "monai": seconds})``; HD100, when asked, is computed untimed."""
    start = time.perf_counter()
    inputs = monai_inputs(reference, prediction, labels)
    made = time.perf_counter()
    rows = monai_metrics(reference, prediction, spacing, labels, tolerance, one_hot_inputs=inputs, maximum=False)
    seconds = {"monai one-hot": made - start, "monai": time.perf_counter() - made}
    if with_maximum:  # the value MONAI gives where one side is empty (infinity)
        rows[:, 4] = monai_metrics(reference, prediction, spacing, labels, tolerance, one_hot_inputs=inputs)[:, 4]
    return rows, seconds


def largest_differences(results, rows, largest: dict) -> None:
    """Update ``largest`` with the largest |ours − MONAI| per measure where both masks are present."""
    for result, row in zip(results, rows):
        if result.status == "both present":
            for name, ours, theirs in (("dice", result.dice, row[0]), ("hd95", result.hd95_mm, row[1]),
                                       ("msd", result.msd_mm, row[2]), ("nsd", result.nsd, row[3])):
                largest[name] = max(largest.get(name, 0.0), abs(ours - float(theirs)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=50)
    parser.add_argument("--size", type=int, default=256, help="voxels along each axis")
    parser.add_argument("--labels", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tolerance", type=float, default=2.0, help="NSD tolerance in mm")
    arguments = parser.parse_args()
    cases = generated_cases(arguments.cases, arguments.size, arguments.labels)
    totals = {"ours": [], "monai": [], "monai one-hot": []}
    disagreements, largest, checked = [], {}, 0
    for repeat in range(arguments.repeats):
        times = dict.fromkeys(totals, 0.0)
        for number, case in enumerate(cases):
            reference, prediction = arrays(case, arguments.size)
            gc.collect()
            common = (reference, prediction, case[2], arguments.labels, arguments.tolerance)
            if (number + repeat) % 2:
                results, ours_seconds = run_ours(*common)
                rows, monai_seconds = run_monai(*common, with_maximum=repeat == 0)
            else:
                rows, monai_seconds = run_monai(*common, with_maximum=repeat == 0)
                results, ours_seconds = run_ours(*common)
            for method, seconds in {**ours_seconds, **monai_seconds}.items():
                times[method] += seconds
            if repeat == 0:
                checked += len(results)
                disagreements += [f"case {number}: {problem}" for problem in monai_disagreements(results, rows, 1e-3)]
                largest_differences(results, rows, largest)
            print(f"\rrepeat {repeat + 1}/{arguments.repeats}: case {number + 1}/{len(cases)}", end="",
                  file=sys.stderr, flush=True)
        print(file=sys.stderr)
        for method, seconds in times.items():
            totals[method].append(seconds)
    best = {method: min(seconds) for method, seconds in totals.items()}
    print(f"{arguments.cases} cases of {arguments.size}³ voxels, {arguments.labels} labels, NSD tolerance "
          f"{arguments.tolerance:g} mm; best of {arguments.repeats} repeats (all repeats: "
          + "; ".join(f"{method} " + ", ".join(f"{s:.1f}" for s in seconds) for method, seconds in totals.items())
          + ")")
    print(f"ours:                    {best['ours']:8.2f} s  ({1000 * best['ours'] / len(cases):.0f} ms per case)")
    print(f"MONAI metrics:           {best['monai']:8.2f} s  ({best['monai'] / best['ours']:.1f}× ours)")
    print(f"MONAI one-hot + metrics: {best['monai'] + best['monai one-hot']:8.2f} s  "
          f"({(best['monai'] + best['monai one-hot']) / best['ours']:.1f}× ours)")
    print(f"values: {checked} case-labels compared, {len(disagreements)} differ from MONAI by more than 1e-3; "
          "largest difference where both present: "
          + ", ".join(f"{name} {value:.2e}" for name, value in largest.items()))
    for problem in disagreements[:20]:
        print("  " + problem)
    return 1 if disagreements else 0


if __name__ == "__main__":
    sys.exit(main())

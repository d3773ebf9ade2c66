"""The demo model as TorchScript (brain-tissue-demo 1.0.0) and as a torch.export program (1.1.0, the same weights):
load time and segmentation time per quality and precision, interleaved (the two formats alternate in each round,
their order swapped every round), best of ``--rounds`` after ``--warmup`` untimed rounds, with the ratio
torch.export / TorchScript. The labels of both are compared on every run (voxels that differ).

Run from the repository root::

    .venv/bin/python DeepSegment/Testing/benchmark_formats.py --threads 2 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import zipfile

REPOSITORY = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path[:0] = [os.path.join(REPOSITORY, name) for name in ("DeepSegment", "ModelRegistry", "TrainingDataExport")]
sys.path.insert(0, os.path.join(REPOSITORY, "DeepSegment", "Demo"))

import SimpleITK as sitk  # noqa: E402
import torch  # noqa: E402
from mni_template import template_folder  # noqa: E402
from train_brain_tissue_demo import VALIDATION_SEED, AugmentationSettings, TrainingData, sample_seed  # noqa: E402

from DeepSegmentLib.engine import quality_options, segment  # noqa: E402
from DeepSegmentLib.package import load_network, load_package  # noqa: E402
from ModelRegistryLib.store import default_cache_dir  # noqa: E402

REGISTRY = os.path.join(REPOSITORY, "ModelRegistry", "Resources", "Registry")
FORMATS = {"TorchScript": "brain-tissue-demo-1.0.0.zip", "torch.export": "brain-tissue-demo-1.1.0.zip"}


def unpacked(folder: str, archive: str) -> str:
    target = os.path.join(folder, os.path.splitext(archive)[0])
    with zipfile.ZipFile(os.path.join(REGISTRY, archive)) as zipped:
        zipped.extractall(target)
    return target


def interleaved(runs: dict, rounds: int, warmup: int) -> dict:
    """name → (best seconds, last result) of calling each of ``runs`` once per round, alternating the order."""
    best, results = dict.fromkeys(runs, float("inf")), {}
    names = list(runs)
    for number in range(warmup + rounds):
        for name in names if number % 2 == 0 else reversed(names):
            start = time.perf_counter()
            results[name] = runs[name]()
            if number >= warmup:
                best[name] = min(best[name], time.perf_counter() - start)
    return {name: (best[name], results[name]) for name in names}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--qualities", default="exact,accurate")
    parser.add_argument("--precisions", default="float32,auto")
    parser.add_argument("--cache-dir", default=default_cache_dir(), help="where the template files are kept")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = TrainingData(template_folder(args.cache_dir))
    image, _ = data.variant(sample_seed(VALIDATION_SEED, 0, 7), AugmentationSettings())
    print(f"PyTorch {torch.__version__}, {args.threads} threads; volume {image.GetSize()} at 2 mm; best of "
          f"{args.rounds} after {args.warmup} untimed, interleaved")
    with tempfile.TemporaryDirectory() as folder:
        packages = {name: load_package(unpacked(folder, archive)) for name, archive in FORMATS.items()}
        loads = interleaved({name: (lambda p=p: load_network(p, "cpu")) for name, p in packages.items()},
                            args.rounds, args.warmup)
        seconds = {name: loads[name][0] for name in FORMATS}
        print(f"load: TorchScript {seconds['TorchScript']:.3f} s, torch.export {seconds['torch.export']:.3f} s, "
              f"ratio {seconds['torch.export'] / seconds['TorchScript']:.2f}")
        networks = {name: result for name, (_, result) in loads.items()}
        for quality in args.qualities.split(","):
            for precision in args.precisions.split(","):
                runs = {name: (lambda n=name, p=precision, q=quality: segment(
                    [image], packages[n], networks[n], device="cpu", precision=p, **quality_options(packages[n], q)))
                        for name in FORMATS}
                timed = interleaved(runs, args.rounds, args.warmup)
                (script, script_result), (export, export_result) = timed["TorchScript"], timed["torch.export"]
                differing = int((sitk.GetArrayFromImage(script_result.labels)
                                 != sitk.GetArrayFromImage(export_result.labels)).sum())
                print(f"{quality:9} {export_result.precision:9}: TorchScript {script:.2f} s, torch.export "
                      f"{export:.2f} s, ratio {export / script:.2f}; voxels differing {differing}; windows: "
                      f"{script_result.windows} | {export_result.windows}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

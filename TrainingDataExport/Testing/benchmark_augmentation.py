"""Benchmark: spatial augmentation throughput on 128³ volumes (image + label map) against TorchIO and MONAI.

Run from the repository root: ``.venv/bin/python TrainingDataExport/Testing/benchmark_augmentation.py
[--size 128] [--repeats 5] [--samples 2] [--threads 2]``.

Input: a seeded synthetic float32 image (smooth structures plus noise) and a uint8 label map with three values,
1 mm voxels. Every method applies a random affine and an elastic deformation, always (probability 1), with
comparable magnitudes, the image linearly and the labels by nearest neighbour:

- ``ours``: :func:`TrainingDataExportLib.augmentation.augment` (one composed grid, one ``grid_sample`` per
  sample for the image and one for the labels), one sample per call; ``ours-batch4``: four samples per call.
  Rotation ±15° about each axis, scales 0.9-1.1 per axis, shear ±0.05, translation ±10 mm; elastic: control
  points 32 mm apart (7 per axis over 128 mm), displacements within ±7.5 mm.
- ``torchio``: ``RandomAffine(scales=(0.9, 1.1), degrees=15, translation=10)`` then
  ``RandomElasticDeformation(num_control_points=7, max_displacement=7.5)`` (each resamples, with SimpleITK;
  TorchIO's affine has no shear).
- ``monai``: ``RandAffined`` (same rotation, scale, shear and translation ranges) then ``Rand3DElasticd``
  (``sigma_range=(5, 8)``, ``magnitude_range=(200, 500)``: a Gaussian-smoothed full-resolution random field
  whose largest displacement is then about 7.5 voxels, measured).
- ``ours-full`` (for information, not compared): ours with every intensity change too (thick slices, blur,
  bias field, gamma, contrast, noise), always.

Methods run interleaved (the order turns every round), each ``--samples`` samples per round, best of
``--repeats`` rounds, on the CPU with ``--threads`` threads for torch and SimpleITK. Goal: ours at least 3×
faster than the faster of TorchIO and MONAI. When CUDA is available, ours and MONAI are timed on the GPU too
(TorchIO resamples on the CPU only). TorchIO and MONAI are benchmark-only dependencies.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), os.path.join(os.path.dirname(os.path.dirname(HERE)), "ModelRegistry")]

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402
import torch  # noqa: E402

from TrainingDataExportLib.augmentation import AugmentationSettings, augment  # noqa: E402

SPACING = (1.0, 1.0, 1.0)
ROTATION_DEGREES = 15.0
SCALES = (0.9, 1.1)
SHEAR = 0.05
TRANSLATION_MM = 10.0
CONTROL_POINTS = 7
DISPLACEMENT_MM = 7.5


def settings_for(size: int, everything: bool = False) -> AugmentationSettings:
    """Affine and elastic always, with ``CONTROL_POINTS`` control points per axis over the volume (as TorchIO's
    count); with ``everything``, every intensity change too."""
    always = 1.0 if everything else 0.0
    return AugmentationSettings(
        rotation_degrees=(ROTATION_DEGREES,) * 3, scale_range=SCALES, isotropic_scaling=False, shear=SHEAR,
        translation_mm=(TRANSLATION_MM,) * 3, elastic_probability=1.0, elastic_displacement_mm=DISPLACEMENT_MM,
        elastic_control_spacing_mm=(size - 1) * SPACING[0] / (CONTROL_POINTS - 3),
        thick_slice_probability=always, blur_probability=always, bias_field_probability=always,
        gamma_probability=always, contrast_probability=always, noise_probability=always,
    )


def make_volume(size: int) -> tuple:
    """(image, labels) as (1, 1, size, size, size) tensors: float32 and uint8."""
    rng = np.random.default_rng(0)
    grid = np.indices((size,) * 3, dtype=np.float32) - size / 2
    distance = np.sqrt((grid**2).sum(axis=0))
    band = (np.abs(grid[2] - grid[1]) < 0.1 * size) & (distance < 0.2 * size)
    labels = (distance < 0.35 * size).astype(np.uint8) + band
    image = labels * 100.0 + np.sin(grid[2] / 6.0) * 20 + rng.normal(0.0, 10.0, labels.shape)
    return torch.tensor(image, dtype=torch.float32)[None, None], torch.from_numpy(labels.astype(np.uint8))[None, None]


def ours(image: torch.Tensor, labels: torch.Tensor, device: str, batch: int, everything: bool = False):
    settings = settings_for(image.shape[-1], everything)
    image, labels = image.to(device), labels.to(device)
    counter = iter(range(1 << 30))

    def run() -> None:
        augment(image, labels, SPACING, [next(counter) for _ in range(batch)], settings, device=device)

    return run, batch


def torchio_pipeline(image: torch.Tensor, labels: torch.Tensor):
    import torchio

    subject = torchio.Subject(image=torchio.ScalarImage(tensor=image[0]), labels=torchio.LabelMap(tensor=labels[0]))
    transform = torchio.Compose([
        torchio.RandomAffine(scales=SCALES, degrees=ROTATION_DEGREES, translation=TRANSLATION_MM),
        torchio.RandomElasticDeformation(num_control_points=CONTROL_POINTS, max_displacement=DISPLACEMENT_MM),
    ])
    return (lambda: transform(subject)), 1


def monai_pipeline(image: torch.Tensor, labels: torch.Tensor, device: str):
    from monai.transforms import Compose, Rand3DElasticd, RandAffined

    keys, modes = ["image", "labels"], ("bilinear", "nearest")
    transform = Compose([
        RandAffined(keys, prob=1.0, rotate_range=[np.radians(ROTATION_DEGREES)] * 3, shear_range=[SHEAR] * 3,
                    translate_range=[TRANSLATION_MM / SPACING[0]] * 3, scale_range=[SCALES[1] - 1.0] * 3,
                    mode=modes, padding_mode="zeros", device=torch.device(device)),
        Rand3DElasticd(keys, sigma_range=(5, 8), magnitude_range=(200, 500), prob=1.0, mode=modes,
                       padding_mode="zeros", device=torch.device(device)),
    ])
    transform.set_random_state(0)
    data = {"image": image[0].to(device), "labels": labels[0].to(device)}
    return (lambda: transform(data)), 1


def timed(run, samples_per_call: int, samples: int, device: str) -> float:
    """Seconds per sample over at least ``samples`` samples."""
    calls = max(1, -(-samples // samples_per_call))
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        run()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / (calls * samples_per_call)


def compare(methods: dict, repeats: int, samples: int, device: str) -> dict:
    """Best seconds per sample of each method, run interleaved (the order turns each round)."""
    for run, _ in methods.values():
        run()  # warm-up: imports, allocations, kernels
    best = dict.fromkeys(methods, float("inf"))
    names = list(methods)
    for round_index in range(repeats):
        order = names[round_index % len(names):] + names[:round_index % len(names)]
        seconds = {name: timed(*methods[name], samples, device) for name in order}
        for name in names:
            best[name] = min(best[name], seconds[name])
        print(f"  round {round_index + 1}: " + ", ".join(f"{name} {seconds[name]:.3f}" for name in names), flush=True)
    return best


def report(best: dict, references: list, size: int, device: str) -> None:
    print(f"\n{device.upper()}, {size}³ image + label map, best seconds per sample:")
    for name, seconds in best.items():
        print(f"  {name:12s} {seconds:7.3f} s  ({1.0 / seconds:6.1f} samples/s)")
    present = [name for name in references if name in best]
    if present:
        fastest = min(present, key=best.get)
        for name in ("ours", "ours-batch4"):
            print(f"  {name} is {best[fastest] / best[name]:.2f}× faster than {fastest} (the faster reference)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--samples", type=int, default=2, help="samples per method and round")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch and SimpleITK")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    image, labels = make_volume(args.size)
    print(f"torch {torch.__version__}, {args.threads} threads; our settings: {settings_for(args.size).to_dict()}")

    cpu = {"ours": ours(image, labels, "cpu", 1), "ours-batch4": ours(image, labels, "cpu", 4),
           "ours-full": ours(image, labels, "cpu", 1, everything=True),
           "torchio": torchio_pipeline(image, labels), "monai": monai_pipeline(image, labels, "cpu")}
    report(compare(cpu, args.repeats, args.samples, "cpu"), ["torchio", "monai"], args.size, "cpu")

    if torch.cuda.is_available():
        print(f"\nGPU: {torch.cuda.get_device_name(0)}")
        gpu = {"ours": ours(image, labels, "cuda", 1), "ours-batch4": ours(image, labels, "cuda", 4),
               "ours-full": ours(image, labels, "cuda", 1, everything=True),
               "monai": monai_pipeline(image, labels, "cuda")}
        report(compare(gpu, args.repeats, max(args.samples, 8), "cuda"), ["monai"], args.size, "cuda")
    else:
        print("\nNo CUDA GPU: GPU figures not measured.")
    return 0


if __name__ == "__main__":
    sys.exit(main())

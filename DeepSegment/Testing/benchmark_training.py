"""Benchmark: time per training step of DeepSegment's trainer against a plain MONAI training loop.

Run from the repository root: ``.venv/bin/python DeepSegment/Testing/benchmark_training.py [--patch 64]
[--batch 2] [--steps 4] [--rounds 3] [--threads 2] [--precision auto|float32] [--device cpu|cuda]``.

Both sides train the same network (MONAI's ``UNet``, channels 16-256, strides 2, two residual units: the
trainer's default) on the same data, with the same batch, patch, precision, optimizer (AdamW) and loss
(cross-entropy plus Dice), in one process (no data-loader workers on either side). A step is: get a batch of
augmented patches, then forward, loss, backward and update.

- ``ours``: ``training_samples.PatchSampler`` (patches from the memory-mapped prepared cases: a third centred
  on a label, augmented with ``TrainingDataExportLib.augmentation``'s default settings, one composed sampling
  grid per sample) and ``training.training_step``.
- ``monai``: the loop of MONAI's tutorials: a ``Dataset`` of the same prepared arrays in memory, a ``Compose`` of
  ``SpatialPadd`` to the patch size and ``RandCropByPosNegLabeld`` (one positive for two negatives) then
  augmentations with the ranges and probabilities of our defaults (``RandAffined`` rotation ±15°, scale ±15 %,
  shear 0.05, translation ±10 mm; ``Rand3DElasticd`` half of the time; ``RandSimulateLowResolutiond``,
  ``RandGaussianSmoothd``, ``RandBiasFieldd``, ``RandAdjustContrastd``, ``RandScaleIntensityd``,
  ``RandGaussianNoised``), a
  ``DataLoader`` with ``num_workers=0``, and ``monai.losses.DiceCELoss``, on the ``MetaTensor`` batches it
  gives; ``monai-tensors``: the same with the batches turned into plain tensors before the network (what the
  metadata costs).

Data: eight seeded synthetic cases of 64×112×112 voxels (``Testing/Python/training_cases.py``), prepared once by
the trainer (model grid, per-image z-score). The sides alternate, ``--steps`` steps each per round, the order
turning every round; each side's best mean step time of ``--rounds`` rounds is reported, with the time of
getting its batches, and the ratio.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
REPOSITORY = os.path.dirname(os.path.dirname(HERE))
sys.path[:0] = [os.path.join(HERE, "Python"), *(os.path.join(REPOSITORY, name)
                                                 for name in ("DeepSegment", "ModelRegistry", "TrainingDataExport"))]

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402
import torch  # noqa: E402

import DeepSegmentLib  # noqa: E402, F401  (puts the sibling Libs on sys.path)
from DeepSegmentLib.devices import available_devices, choose_device, reduced_precision  # noqa: E402
from DeepSegmentLib.training import training_step  # noqa: E402
from DeepSegmentLib.training_networks import NetworkSettings, build_network  # noqa: E402
from DeepSegmentLib.training_samples import PatchSampler, prepare_cases  # noqa: E402
from training_cases import case_arrays  # noqa: E402
from TrainingDataExportLib.augmentation import AugmentationSettings  # noqa: E402

SHAPE = (64, 112, 112)  # z, y, x
SPACING = (1.0, 1.0, 1.5)  # x, y, z mm
CASES = 8
LABELS = 2


def prepared_cases(folder: str) -> list:
    """The synthetic cases prepared by the trainer into ``folder``; returns their ids."""
    from types import SimpleNamespace

    case_ids = [f"case{index}" for index in range(CASES)]

    def read_case(case_id):
        image, labels = case_arrays(int(case_id[4:]) + 100, SHAPE, SPACING)
        images = []
        for array in (image, labels):
            volume = sitk.GetImageFromArray(array)
            volume.SetSpacing(SPACING)
            images.append(volume)
        return [images[0]], images[1]

    grid = SimpleNamespace(inputs=[SimpleNamespace(name="image")],
                           preprocessing=SimpleNamespace(spacing=SPACING, orientation="RAS"))
    prepare_cases(folder, case_ids, read_case, grid, [{"kind": "z-score", "foreground": "all"}], 0, {})
    return case_ids


def network(device: str):
    torch.manual_seed(0)
    return build_network(NetworkSettings(), 1, LABELS + 1).to(device)


def ours(folder: str, case_ids: list, patch: int, batch: int, device: str, autocast: str):
    sampler = PatchSampler(folder, case_ids, (patch,) * 3, SPACING, AugmentationSettings(), seed=0,
                           direction=(-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0), device=device)
    module = network(device)
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cuda") if autocast == "float16" else None
    counter = iter(range(1 << 30))

    def get_batch():
        images, classes, _ = sampler.batch(0, next(counter), batch)
        return images, classes

    def step(images, classes):
        training_step(module, optimizer, scaler, images, classes, device.split(":")[0], autocast)

    return get_batch, step


def monai_loop(folder: str, case_ids: list, patch: int, batch: int, device: str, autocast: str,
               plain_tensors: bool = False):
    from monai.data import DataLoader, Dataset
    from monai.losses import DiceCELoss
    from monai.transforms import (
        Compose,
        Rand3DElasticd,
        RandAdjustContrastd,
        RandAffined,
        RandBiasFieldd,
        RandCropByPosNegLabeld,
        RandGaussianNoised,
        RandGaussianSmoothd,
        RandScaleIntensityd,
        RandSimulateLowResolutiond,
        SpatialPadd,
    )

    data = [{"image": np.load(os.path.join(folder, f"{case_id}.image.npy")),
             "label": np.load(os.path.join(folder, f"{case_id}.labels.npy"))[None]} for case_id in case_ids]
    keys, modes = ["image", "label"], ("bilinear", "nearest")
    voxels_mm = [SPACING[2], SPACING[1], SPACING[0]]  # array axes z, y, x
    transform = Compose([
        SpatialPadd(keys, spatial_size=(patch,) * 3),  # a case smaller than the patch cannot be cropped otherwise
        RandCropByPosNegLabeld(keys, label_key="label", spatial_size=(patch,) * 3, pos=1, neg=2, num_samples=1),
        RandAffined(keys, prob=1.0, rotate_range=[math.radians(15.0)] * 3, scale_range=[0.15] * 3,
                    shear_range=[0.05] * 3, translate_range=[10.0 / s for s in voxels_mm], mode=modes,
                    padding_mode="zeros"),
        Rand3DElasticd(keys, sigma_range=(5, 8), magnitude_range=(100, 250), prob=0.5, mode=modes,
                       padding_mode="zeros"),
        RandSimulateLowResolutiond(["image"], prob=0.2, zoom_range=(0.25, 0.67)),
        RandGaussianSmoothd(["image"], prob=0.2, sigma_x=(0.5, 1.5), sigma_y=(0.5, 1.5), sigma_z=(0.5, 1.0)),
        RandBiasFieldd(["image"], prob=0.3, coeff_range=(0.0, 0.3)),
        RandAdjustContrastd(["image"], prob=0.3, gamma=(0.7, 1.5)),
        RandScaleIntensityd(["image"], prob=0.3, factors=0.25),
        RandGaussianNoised(["image"], prob=0.2, std=0.1),
    ])
    transform.set_random_state(0)
    loader = DataLoader(Dataset(data, transform), batch_size=batch, shuffle=True, num_workers=0,
                        generator=torch.Generator().manual_seed(0))
    batches = iter(())
    module = network(device)
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3)
    loss_function = DiceCELoss(to_onehot_y=True, softmax=True)
    scaler = torch.amp.GradScaler("cuda") if autocast == "float16" else None
    device_type = device.split(":")[0]

    def get_batch():
        nonlocal batches
        try:
            item = next(batches)
        except StopIteration:
            batches = iter(loader)
            item = next(batches)
        images, labels = item["image"].to(device), item["label"].to(device)
        if plain_tensors:  # MONAI's MetaTensors carry metadata through every operation; plain tensors do not
            images, labels = images.as_tensor(), labels.as_tensor()
        return images, labels

    def step(images, labels):
        # The same step as ours (autocast, loss scaling, update), with MONAI's loss: the loops differ in their data.
        training_step(module, optimizer, scaler, images, labels, device_type, autocast, loss_function)

    return get_batch, step


def timed(side, steps: int, device: str) -> tuple:
    """(mean seconds per step, of which getting the batch, CPU seconds per step) over ``steps`` steps. The CPU
    time (all threads of this process) says more than the wall time on a machine busy with other work."""
    get_batch, step = side
    batch_seconds = total = 0.0
    cpu = time.process_time()
    for _ in range(steps):
        began = time.perf_counter()
        images, labels = get_batch()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        got = time.perf_counter()
        step(images, labels)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        batch_seconds += got - began
        total += time.perf_counter() - began
    return total / steps, batch_seconds / steps, (time.process_time() - cpu) / steps


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patch", type=int, default=64, help="patch side in voxels (a multiple of 16)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4, help="steps per side and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", choices=("auto", "float32"), default="auto")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    compute = choose_device(args.device, available_devices())
    autocast = reduced_precision(compute) if args.precision == "auto" else ""
    print(f"torch {torch.__version__}, {compute.description}, {args.threads} threads, precision "
          f"{autocast or 'float32'}; UNet 16-256, batch {args.batch} of {args.patch}³, {CASES} cases of "
          f"{'×'.join(map(str, SHAPE))} voxels", flush=True)
    with tempfile.TemporaryDirectory(prefix="benchmark-training-") as folder:
        case_ids = prepared_cases(folder)
        sides = {"ours": ours(folder, case_ids, args.patch, args.batch, compute.torch_name, autocast),
                 "monai": monai_loop(folder, case_ids, args.patch, args.batch, compute.torch_name, autocast),
                 "monai-tensors": monai_loop(folder, case_ids, args.patch, args.batch, compute.torch_name, autocast,
                                             plain_tensors=True)}
        for side in sides.values():
            timed(side, 1, args.device)  # warm-up: imports, allocations, kernels
        best = dict.fromkeys(sides, (math.inf, 0.0, 0.0))
        names = list(sides)
        for round_index in range(args.rounds):
            turn = round_index % len(names)
            order = names[turn:] + names[:turn]
            seconds = {name: timed(sides[name], args.steps, args.device) for name in order}
            for name in names:
                best[name] = min(best[name], seconds[name])
            print(f"  round {round_index + 1}: " + ", ".join(
                f"{name} {seconds[name][0]:.3f} s/step (batch {seconds[name][1]:.3f} s, CPU {seconds[name][2]:.3f} s)"
                for name in names), flush=True)
    print("\nbest mean seconds per step (of which getting the batch; CPU seconds of that round):")
    for name, (step, batch, cpu) in best.items():
        print(f"  {name:13s} {step:7.3f} s  ({batch:.3f} s; CPU {cpu:.3f} s)")
    for name in ("monai", "monai-tensors"):
        print(f"  {name} / ours: {best[name][0] / best['ours'][0]:.2f} per step, "
              f"{best[name][1] / best['ours'][1]:.2f} for the batches")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Train the demo model ``brain-tissue-demo`` and publish it in the bundled registry.

A small 3D UNet (plain torch, about 350k parameters) learns gray and white matter from ONE brain: the MNI
ICBM152 2009a T1 template at 2 mm (see mni_template.py for where the files come from and how the
reference labels are made), made to look like many brains by heavy augmentation (the extension's engine,
``TrainingDataExportLib.augmentation``, with the settings in ``AUGMENTATION``). It trains on random 48³
crops with cross-entropy + Dice loss and Adam for a wall-time budget (or ``--steps``), then:

1. measures Dice per label on held-out augmented variants of the whole volume (seeds never used in
   training) through the real engine (``DeepSegmentLib.engine.segment``), and the CPU run time;
2. exports the network with ``torch.export`` from the module itself (a dynamic batch, window sizes in
   multiples of 8: ``DeepSegmentLib.programs.export_network`` through ``write_package``), writes the model
   package (``model.json`` + ``model.pt2`` + the template's notice) and zips it deterministically (sorted
   entries, fixed timestamps) to ``ModelRegistry/Resources/Registry/brain-tissue-demo-<version>.zip``;
3. writes the model's entry (card, metrics, run time) into the bundled index, with this version (sha256 and
   size) added to the versions published before.

The package records the PyTorch that exported it (``torchVersion``), and a torch.export program loads only in
that release or a later one: export the published model with the oldest PyTorch its users have (2.8, the
newest for Slicer 5.8's Python 3.9). ``--weights-from`` publishes the weights of an earlier release in this
format without training (version 1.1.0 is version 1.0.0's TorchScript network exported so, with PyTorch 2.8)::

    python DeepSegment/Demo/train_brain_tissue_demo.py --weights-from \
        ModelRegistry/Resources/Registry/brain-tissue-demo-1.0.0.zip --version 1.1.0 \
        --changelog "The same network as 1.0.0, exported with torch.export (PyTorch 2.8) instead of TorchScript."

Run from the repository root (about ``--minutes`` plus two minutes)::

    .venv/bin/python DeepSegment/Demo/train_brain_tissue_demo.py --minutes 10 --seed 0

The result depends on the machine's speed (the budget is wall time), so two runs are alike, not identical.
A smoke run that leaves the bundled model and index alone::

    .venv/bin/python DeepSegment/Demo/train_brain_tissue_demo.py --steps 3 --validation-variants 1 \
        --archive /tmp/brain-tissue-demo.zip --index ''

The same network with instance norm, trained the same way, to measure what the engine's speed options cost a
network that normalizes each window (``benchmark_inference.py --parts accuracy --accuracy-model``)::

    .venv/bin/python DeepSegment/Demo/train_brain_tissue_demo.py --norm instance --minutes 10 --seed 0 \
        --validation-variants 2 --archive /tmp/brain-tissue-instance-norm.zip --index ''
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
import zipfile
from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk
import torch
from torch import nn
from torch.nn import functional

DEMO_FOLDER = os.path.dirname(os.path.abspath(__file__))
REPOSITORY = os.path.dirname(os.path.dirname(DEMO_FOLDER))
sys.path[:0] = [os.path.join(REPOSITORY, name) for name in ("DeepSegment", "ModelRegistry", "TrainingDataExport")]

from mni_template import (  # noqa: E402
    GRAY_MATTER,
    TEMPLATE_NOTICE,
    WHITE_MATTER,
    dice_scores,
    read_template,
    reference_labels,
    resample_isotropic,
    sha256_of,
    template_folder,
)

from DeepSegmentLib.engine import segment  # noqa: E402
from DeepSegmentLib.package import load_network, load_package, write_package  # noqa: E402
from ModelRegistryLib.store import default_cache_dir  # noqa: E402
from TrainingDataExportLib.augmentation import AugmentationSettings, augment, sample_seed  # noqa: E402

MODEL_ID = "brain-tissue-demo"
MODEL_VERSION = "1.1.0"
REGISTRY_FOLDER = os.path.join(REPOSITORY, "ModelRegistry", "Resources", "Registry")
INDEX_PATH = os.path.join(REGISTRY_FOLDER, "bundled-index.json")

SPACING_MM = 2.0
PATCH = 64
# Training crops are smaller than the inference windows: more steps in the time budget, and at 2 mm a 48³
# crop (96 mm) still holds plenty of context for tissue classes.
CROP = 48
PERCENTILES = (0.5, 99.5)
CHANNELS = (8, 16, 32, 64)
LEARNING_RATE = 3e-3
# The run seed of the validation variants (sample_seed(VALIDATION_SEED, 0, n)); training seeds stay below it.
VALIDATION_SEED = 1_000_000
# Heavy: one template must look like many brains. Intensities are 0..1 (percentile-scaled).
AUGMENTATION = AugmentationSettings(
    rotation_degrees=(20.0, 20.0, 20.0), scale_range=(0.85, 1.15), isotropic_scaling=False, shear=0.0,
    translation_mm=(10.0, 10.0, 10.0), elastic_probability=1.0, elastic_control_spacing_mm=24.0,
    elastic_displacement_mm=6.0, thick_slice_probability=0.7, thick_slice_factor_range=(1.0, 3.0),
    blur_probability=0.0, bias_field_probability=0.7, bias_field_strength=0.3, bias_field_control_spacing_mm=48.0,
    gamma_probability=0.7, gamma_range=(0.7, 1.5), contrast_probability=0.7, contrast_range=(0.85, 1.15),
    noise_probability=0.7, noise_std_range=(0.0, 0.15),
)
# Fixed zip entry timestamp, so the same files always make the same archive bytes.
ZIP_TIMESTAMP = (2026, 1, 1, 0, 0, 0)

TISSUE = {"scheme": "SCT", "code": "85756007", "meaning": "Tissue"}
LABELS = [
    {"value": GRAY_MATTER, "name": "Gray matter", "color": "#c87d6a",
     "terminology": {"category": TISSUE, "type": {"scheme": "SCT", "code": "389081007", "meaning": "Gray matter"}}},
    {"value": WHITE_MATTER, "name": "White matter", "color": "#f5f0e6",
     "terminology": {"category": TISSUE, "type": {"scheme": "SCT", "code": "389080008", "meaning": "White matter"}}},
]
INPUTS = [{"name": "T1", "modality": "MR", "pattern": "t1|mprage|mni"}]


# -- network -------------------------------------------------------------------------------------------------

# The published model uses batch norm; instance norm (as nnU-Net and MONAI's networks use) is here to measure
# what the engine's speed options cost a network that normalizes each window (README, Quality and speed).
NORMS = {"batch": nn.BatchNorm3d, "instance": lambda channels: nn.InstanceNorm3d(channels, affine=True)}


def _two_convolutions(inputs: int, outputs: int, norm: str) -> nn.Sequential:
    layers = []
    for channels_in in (inputs, outputs):
        layers += [nn.Conv3d(channels_in, outputs, 3, padding=1, bias=False), NORMS[norm](outputs),
                   nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class TissueUNet(nn.Module):
    """A 3D UNet: two 3×3×3 convolutions (batch norm, ReLU) per level, max pooling down, transposed
    convolutions up, skip connections; input sizes must be multiples of 2^(levels - 1).

    Batch norm (``norm="batch"``, with running statistics at inference) rather than instance norm keeps the
    network a fixed function of its input window, so sliding-window stitching is seamless and larger windows
    give the same scores.
    """

    def __init__(self, channels: Sequence[int] = CHANNELS, inputs: int = 1, classes: int = 3,
                 norm: str = "batch") -> None:
        super().__init__()
        widths = [inputs, *channels]
        self.encoders = nn.ModuleList([_two_convolutions(a, b, norm) for a, b in zip(widths[:-1], widths[1:])])
        deep_first = list(reversed(channels))
        self.ups = nn.ModuleList([nn.ConvTranspose3d(a, b, 2, stride=2) for a, b in zip(deep_first, deep_first[1:])])
        self.decoders = nn.ModuleList([_two_convolutions(2 * b, b, norm) for b in deep_first[1:]])
        self.head = nn.Conv3d(channels[0], classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips: list[torch.Tensor] = []
        for level, encoder in enumerate(self.encoders):
            if level > 0:
                skips.append(x)
                x = functional.max_pool3d(x, 2)
            x = encoder(x)
        for up, decoder in zip(self.ups, self.decoders):
            x = decoder(torch.cat([up(x), skips.pop()], dim=1))
        return self.head(x)


# -- data ----------------------------------------------------------------------------------------------------

def normalize(array: np.ndarray) -> np.ndarray:
    """Percentile scaling to 0..1 (clipped), as the model contract asks the engine to do."""
    low, high = np.percentile(array, PERCENTILES)
    return np.clip((array - low) / max(high - low, 1e-6), 0.0, 1.0).astype(np.float32)


class TrainingData:
    """The template at 2 mm: the normalized T1 and its labels as (1, 1, D, H, W) tensors."""

    def __init__(self, folder: str) -> None:
        template = read_template(folder)
        resampled = {kind: resample_isotropic(image, SPACING_MM) for kind, image in template.items()}
        self.reference_image = resampled["t1"]
        self.t1 = normalize(sitk.GetArrayFromImage(resampled["t1"]))
        self.labels = reference_labels(sitk.GetArrayFromImage(resampled["gm"]), sitk.GetArrayFromImage(resampled["wm"]))
        self.image_tensor = torch.from_numpy(self.t1)[None, None]
        self.label_tensor = torch.from_numpy(self.labels.astype(np.uint8))[None, None]
        self.spacing = (SPACING_MM,) * 3
        # Crop centres are drawn in the brain's bounding box (mm from the volume centre, x y z order).
        indices = np.argwhere(self.labels > 0)[:, ::-1]
        centre = (np.array(self.labels.shape[::-1]) - 1) / 2.0
        self.brain_low = (indices.min(axis=0) - centre) * SPACING_MM
        self.brain_high = (indices.max(axis=0) - centre) * SPACING_MM

    def random_crops(self, seeds: Sequence[int], generator: torch.Generator, settings: AugmentationSettings) -> tuple:
        """One augmented crop per seed, centred in the brain's box (centres drawn from ``generator``): (images,
        labels) as (N, 1, 48, 48, 48) float and (N, 48, 48, 48) long tensors, from one call of the engine."""
        fractions = torch.rand((len(seeds), 3), generator=generator, dtype=torch.float64).numpy()
        centres = self.brain_low + fractions * (self.brain_high - self.brain_low)
        batch = augment(self.image_tensor, self.label_tensor, self.spacing, seeds, settings,
                        output_shape=(CROP,) * 3, centers_mm=centres)
        return batch.images, batch.labels[:, 0].long()

    def variant(self, seed: int, settings: AugmentationSettings) -> tuple:
        """A whole-volume augmented variant: (SimpleITK image on the 2 mm grid, label array)."""
        batch = augment(self.image_tensor, self.label_tensor, self.spacing, [seed], settings)
        image = sitk.GetImageFromArray(batch.images[0, 0].numpy())
        image.CopyInformation(self.reference_image)
        return image, batch.labels[0, 0].numpy()


# -- training ------------------------------------------------------------------------------------------------

def loss_function(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy plus (1 - mean soft Dice of the two tissues)."""
    probabilities = functional.softmax(logits, dim=1)
    one_hot = functional.one_hot(labels, logits.shape[1]).permute(0, 4, 1, 2, 3).float()
    dims = (0, 2, 3, 4)
    intersection = (probabilities * one_hot).sum(dims)
    dice = (2 * intersection + 1.0) / (probabilities.sum(dims) + one_hot.sum(dims) + 1.0)
    return functional.cross_entropy(logits, labels) + (1.0 - dice[1:].mean())


def train(network: nn.Module, data: TrainingData, minutes: float, seed: int, batch: int,
          settings: AugmentationSettings, steps: int | None = None) -> list:
    """Adam with a cosine learning-rate decay over the wall-time budget (or over ``steps`` steps, when given and
    reached first); crop ``i`` of step ``s`` is augmented with ``sample_seed(seed, s, i)``. Returns (step,
    seconds, mean loss) every 25 steps and at the end."""
    if not 0 <= seed < VALIDATION_SEED:
        raise ValueError(f"--seed must be in [0, {VALIDATION_SEED}): {VALIDATION_SEED} is the validation's")
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(network.parameters(), lr=LEARNING_RATE)
    budget = minutes * 60.0
    start = time.monotonic()
    curve, recent, step = [], [], 0
    network.train()
    while time.monotonic() - start < budget and (steps is None or step < steps):
        done = max((time.monotonic() - start) / budget, step / steps if steps else 0.0)
        for group in optimizer.param_groups:
            group["lr"] = LEARNING_RATE * 0.5 * (1 + math.cos(math.pi * min(1.0, done)))
        images, labels = data.random_crops([sample_seed(seed, step, i) for i in range(batch)], generator, settings)
        loss = loss_function(network(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        recent.append(loss.item())
        step += 1
        if step % 25 == 0:
            curve.append((step, round(time.monotonic() - start), float(np.mean(recent))))
            recent = []
            print(f"step {step:5d}  {curve[-1][1]:4d} s  loss {curve[-1][2]:.3f}", flush=True)
    if recent:
        curve.append((step, round(time.monotonic() - start), float(np.mean(recent))))
    network.eval()
    return curve


# -- evaluation ----------------------------------------------------------------------------------------------

def validate(package_folder: str, data: TrainingData, count: int, settings: AugmentationSettings) -> dict:
    """Dice per label (mean and min over ``count`` held-out variants) and the engine's mean CPU seconds."""
    package = load_package(package_folder)
    scores = {label["value"]: [] for label in LABELS}
    seconds = []
    for number in range(count):
        image, reference = data.variant(sample_seed(VALIDATION_SEED, 0, number), settings)
        start = time.perf_counter()
        result = segment([image], package, device="cpu")
        seconds.append(time.perf_counter() - start)
        scored = dice_scores(sitk.GetArrayFromImage(result.labels), reference, list(scores))
        for value, values in scores.items():
            values.append(scored[value])
        print(f"variant {number}: " + ", ".join(f"Dice[{v}] {s[-1]:.3f}" for v, s in scores.items())
              + f", {seconds[-1]:.1f} s", flush=True)
    return {"dice": {value: (float(np.mean(s)), float(np.min(s))) for value, s in scores.items()},
            "seconds": float(np.mean(seconds))}


# -- publishing ----------------------------------------------------------------------------------------------

def contract() -> dict:
    return {
        "schemaVersion": 1,
        "format": "torch.export",
        "weights": "model.pt2",
        "dimensions": 3,
        "inputs": INPUTS,
        "preprocessing": {
            "spacing": [SPACING_MM] * 3,
            "orientation": "RAS",
            "normalization": [{"kind": "percentile", "percentiles": list(PERCENTILES), "range": [0, 1]}],
        },
        # Three poolings by 2: windows of any multiple of 8 voxels (as exported).
        "inference": {"patchSize": [PATCH] * 3, "overlap": 0.5, "blending": "gaussian", "batchSize": 2,
                      "mirrorAxes": [], "activation": "softmax", "outputChannels": 3,
                      "sizeMultiple": [2 ** (len(CHANNELS) - 1)] * 3},
        "postprocessing": {"mode": "argmax", "thresholds": {}, "keepLargestComponent": [], "fillHoles": [],
                           "minimumSizeMm3": {}},
        "labels": LABELS,
    }


def write_deterministic_zip(folder: str, archive_path: str) -> None:
    """Zip every file under ``folder`` with sorted names and a fixed timestamp (same files → same bytes)."""
    names = sorted(os.path.relpath(os.path.join(d, f), folder).replace(os.sep, "/")
                   for d, _, files in os.walk(folder) for f in files)
    partial = archive_path + ".part"
    with zipfile.ZipFile(partial, "w") as archive:
        for name in names:
            info = zipfile.ZipInfo(name, date_time=ZIP_TIMESTAMP)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            with open(os.path.join(folder, name), "rb") as file:
                archive.writestr(info, file.read(), compresslevel=9)
    os.replace(partial, archive_path)


def index_entry(metrics: dict, parameters: int, archive_path: str, variants: int, runtime_note: str,
                version: str = MODEL_VERSION, changelog: str = "First release.") -> dict:
    dice_metrics = []
    for label in LABELS:
        mean, lowest = metrics["dice"][label["value"]]
        dataset = f"{variants} held-out augmented variants of the training template (2 mm)"
        dice_metrics += [{"name": f"Dice {label['name'].lower()} (mean)", "value": round(mean, 3), "dataset": dataset},
                         {"name": f"Dice {label['name'].lower()} (lowest)", "value": round(lowest, 3),
                          "dataset": dataset}]
    return {
        "id": MODEL_ID,
        "title": "Brain tissue (demo)",
        "description": ("Gray and white matter from a T1-weighted brain MRI, at 2 mm. A demonstration model: a small "
                        f"3D UNet ({parameters:,} parameters) trained in minutes on a CPU from a single brain "
                        "template, so the extension can be tried end to end without downloading anything."),
        "task": "segmentation",
        "modality": "MR",
        "anatomy": ["brain"],
        "inputs": INPUTS,
        "labels": LABELS,
        "license": TEMPLATE_NOTICE,
        "authors": ["SlicerDeepLearning contributors"],
        "citation": ("Fonov V, Evans AC, McKinstry RC, Almli CR, Collins DL. Unbiased nonlinear average "
                     "age-appropriate brain templates from birth to adulthood. NeuroImage 47 (2009) S102."),
        "homepage": "https://www.bic.mni.mcgill.ca/ServicesAtlases/ICBM152NLin2009",
        "intendedUse": ("Demonstration and testing of SlicerDeepLearning only (installing, running, the output's "
                        "geometry and terminology). Not for clinical or research use."),
        "limitations": ("Trained on ONE image, the MNI ICBM152 2009a T1 template (an average of 152 young adults), "
                        "under synthetic rotations, scaling, elastic deformation, bias field, noise, contrast and "
                        "resolution changes. Expects a skull-stripped T1-weighted volume: skull, scalp and neck are "
                        "not in the training data and will be mislabeled. Not validated on any real scan; "
                        "partial-volume voxels at the cortex are thresholded at 50% tissue. CSF is background."),
        "trainingData": ("MNI ICBM152 2009a nonlinear symmetric T1 template and its gray-/white-matter probability "
                         "maps, as shipped in the nilearn 0.14.1 wheel, resampled to 2 mm; reference labels: tissue "
                         "where gm + wm >= 0.5, then the likelier of gray and white matter."),
        "metrics": dice_metrics,
        "resources": {"ramGB": 1},
        "runtime": [{"device": "cpu", "seconds": round(metrics["seconds"], 1),
                     "note": runtime_note}],
        "versions": [{
            "version": version,
            "releaseDate": time.strftime("%Y-%m-%d"),
            "changelog": changelog,
            "files": [{"url": os.path.basename(archive_path), "sha256": sha256_of(archive_path),
                       "size": os.path.getsize(archive_path)}],
        }],
    }


def write_index_entry(index_path: str, entry: dict) -> None:
    """Replace (or add) the model's entry in the index, keeping the other entries and the versions published
    before (installed users keep them, and are offered the new one as an update)."""
    with open(index_path, encoding="utf-8") as file:
        document = json.load(file)
    earlier = [v for m in document["models"] if m.get("id") == entry["id"] for v in m.get("versions", [])]
    added = {version["version"] for version in entry["versions"]}
    entry = {**entry, "versions": entry["versions"] + [v for v in earlier if v.get("version") not in added]}
    document["models"] = [m for m in document["models"] if m.get("id") != entry["id"]] + [entry]
    with open(index_path + ".part", "w", encoding="utf-8") as file:
        json.dump(document, file, indent=2, ensure_ascii=False)
        file.write("\n")
    os.replace(index_path + ".part", index_path)


def publish(network: nn.Module, data: TrainingData, settings: AugmentationSettings, archive_path: str,
            index_path: str, variants: int, version: str = MODEL_VERSION, changelog: str = "First release.") -> None:
    """Package (torch.export from the module), validate and zip the trained network; write its entry into the
    index unless ``index_path`` is ''."""
    with tempfile.TemporaryDirectory(prefix=f"{MODEL_ID}-") as folder:
        write_package(folder, network.eval(), contract())
        with open(os.path.join(folder, "NOTICE.txt"), "w", encoding="utf-8") as file:
            file.write(TEMPLATE_NOTICE + "\n")
        metrics = validate(folder, data, variants, settings)
        os.makedirs(os.path.dirname(os.path.abspath(archive_path)), exist_ok=True)
        write_deterministic_zip(folder, archive_path)
    print("held-out Dice (mean, lowest): " + ", ".join(
        f"{label['name']} {metrics['dice'][label['value']][0]:.3f} / {metrics['dice'][label['value']][1]:.3f}"
        for label in LABELS))
    print(f"{archive_path}: {os.path.getsize(archive_path)} bytes, sha256 {sha256_of(archive_path)}")
    if index_path:
        parameters = sum(p.numel() for p in network.parameters())
        size = "×".join(str(n) for n in data.t1.shape[::-1])
        note = (f"torch threads: {torch.get_num_threads()}, on a 2-core machine shared with other work; a volume "
                f"of {size} voxels at 2 mm, all stages")
        write_index_entry(index_path, index_entry(metrics, parameters, archive_path, variants, note, version,
                                                  changelog))
        print(f"updated {index_path}")


def published_weights(path: str) -> dict:
    """The state dict of a published release's network: its archive (zip) or package folder, TorchScript or
    torch.export weights (read by DeepSegment's loader: no unpickling)."""
    with tempfile.TemporaryDirectory(prefix=f"{MODEL_ID}-published-") as folder:
        if zipfile.is_zipfile(path) and not path.endswith((".pt", ".pt2")):
            with zipfile.ZipFile(path) as archive:
                archive.extractall(folder)
            path = folder
        network = load_network(load_package(path), "cpu")
        module = getattr(network, "module", network)
        return {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="training wall-time budget")
    parser.add_argument("--steps", type=int, help="stop after this many steps (e.g. a smoke run) if sooner")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=2, help="crops per step")
    parser.add_argument("--threads", type=int, default=2,
                        help="CPU threads for torch (on a machine busy with other work, 1 can be faster)")
    parser.add_argument("--validation-variants", type=int, default=6)
    parser.add_argument("--cache-dir", default=default_cache_dir(), help="where the template files are kept")
    parser.add_argument("--nilearn-wheel", help="a downloaded nilearn 0.14.1 wheel (else found or fetched)")
    parser.add_argument("--version", default=MODEL_VERSION, help="the version published")
    parser.add_argument("--changelog", default="First release.")
    parser.add_argument("--weights-from", help="publish this earlier release's weights (archive or package folder)"
                        " instead of training")
    parser.add_argument("--archive", help="default: brain-tissue-demo-<version>.zip in the bundled registry")
    parser.add_argument("--index", default=INDEX_PATH, help="index to write the entry into ('' to skip)")
    parser.add_argument("--norm", choices=tuple(NORMS), default="batch",
                        help="instance: a variant to measure speed options on (needs --archive and --index '')")
    args = parser.parse_args(argv)
    if args.norm != "batch" and not (args.archive and not args.index):
        parser.error("--norm instance makes a variant, not the published model: give --archive and --index ''")
    archive = args.archive or os.path.join(REGISTRY_FOLDER, f"{MODEL_ID}-{args.version}.zip")

    torch.set_num_threads(args.threads)
    # Adam drives some weights towards denormal floats, which slow CPU arithmetic many times over.
    torch.set_flush_denormal(True)
    data = TrainingData(template_folder(args.cache_dir, args.nilearn_wheel))
    network = TissueUNet(norm=args.norm)
    parameters = sum(p.numel() for p in network.parameters())
    print(f"template at 2 mm: {data.t1.shape[::-1]} voxels; network: {parameters:,} parameters", flush=True)
    if args.weights_from:
        network.load_state_dict(published_weights(args.weights_from))
        network.eval()
        print(f"weights of {args.weights_from}", flush=True)
    else:
        curve = train(network, data, args.minutes, args.seed, args.batch, AUGMENTATION, args.steps)
        print(f"trained {curve[-1][0] if curve else 0} steps; loss curve (step, s, loss): {curve[::8] + curve[-1:]}")

    publish(network, data, AUGMENTATION, archive, args.index, args.validation_variants, args.version, args.changelog)
    return 0


if __name__ == "__main__":
    sys.exit(main())

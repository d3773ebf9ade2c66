"""Benchmark of each runtime through DeepSegment against its library called directly, on the same input, in one run.

For every runtime, a model in its authors' format (random weights; see ``Testing/Python/field_models.py``) segments
the same seeded CT-like volume (anisotropic, axes permuted and flipped: a grid a NIfTI file stores exactly, so that
both sides see one grid; 96×96×48, smaller for the nnU-Net model made here, whose patch is tiny) two ways,
interleaved in alternating order, best of ``--repeats``:

- ``deepsegment``: ``DeepSegmentLib.runtimes.run_model`` on the installed folder and the image in memory, as the
  panel, the console and the command line run it (loading the model, segmenting, checking the grid);
- ``direct``: the library as its users call it, from a NIfTI file to a NIfTI file:
  - ``monai-bundle`` (the zoo's ``spleen_ct_segmentation`` configuration; ``--bundle`` another): the bundle's own
    dataset, network, weights, inferer and postprocessing with its ``SaveImaged`` (``field_models.bundle_directly``:
    what its evaluator does; Ignite is not installed);
  - ``nnunet-v2`` (a model nnunetv2 plans and writes itself, about a minute to make): ``nnUNetPredictor``
    ``initialize_from_trained_model_folder`` and ``predict_from_files_sequential``, mirroring off on both sides;
  - ``auto3dseg``: MONAI's ``LoadImaged`` reading the file, then the pipeline of SlicerMONAIAuto3DSeg's inference
    script (the extension's script itself needs ``fire`` and ``pynrrd``, not in the test environment);
  - ``deepsegment``: the engine's ``segment()`` on the package, without the dispatch, at the same quality.

Both results must hold the same labels, and ours must lie exactly on the input's grid; the ratio of the best times is
printed (goal: at most 1.1). Timings on a loaded machine vary: compare ratios from one run only.

Usage (from the repository root): .venv/bin/python DeepSegment/Testing/benchmark_runtimes.py
    [--runtimes monai-bundle,nnunet-v2,auto3dseg,deepsegment] [--repeats 3] [--size 96 96 48] [--threads N]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPOSITORY = os.path.dirname(os.path.dirname(HERE))
sys.path[:0] = [os.path.join(REPOSITORY, "DeepSegment"), os.path.join(REPOSITORY, "ModelRegistry"),
                os.path.join(HERE, "Python")]

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402
import torch  # noqa: E402
from field_models import (  # noqa: E402
    aligned_volume,
    bundle_directly,
    make_auto3dseg_archive,
    make_bundle,
    make_nnunet_model,
    nnunet_directly,
)

from DeepSegmentLib.geometry import geometry_mismatch  # noqa: E402
from DeepSegmentLib.runtimes import RunOptions, run_model  # noqa: E402

RUNTIMES = ("monai-bundle", "nnunet-v2", "auto3dseg", "deepsegment")


def auto3dseg_directly(folder: str, input_path: str) -> sitk.Image:
    """SlicerMONAIAuto3DSeg's inference pipeline with MONAI reading the input file (its own reader), and the labels
    written back onto the file's grid as the extension's script does (the array in the file's index order)."""
    from monai.data import decollate_batch, list_data_collate
    from monai.inferers import SlidingWindowInfererAdapt
    from monai.transforms import Compose, Invertd, LoadImaged
    from monai.utils import convert_to_dst_type

    from DeepSegmentLib.runtimes import auto3dseg
    from DeepSegmentLib.runtimes.common import find_root, load_checkpoint

    root = find_root(folder, "labels.csv", "model.pt")
    checkpoint = load_checkpoint(os.path.join(root, "model.pt"))
    config = checkpoint["config"]
    network = auto3dseg._network(config)
    network.load_state_dict(checkpoint["state_dict"])
    network = network.to(memory_format=torch.channels_last_3d).eval()
    loaded = LoadImaged(keys=["image1"], ensure_channel_first=True, dtype=None, image_only=False)(
        {"image1": input_path})
    preprocessing = auto3dseg._preprocessing(config, ["image1"], brats=False)
    batch = list_data_collate([preprocessing(loaded)])
    inferer = SlidingWindowInfererAdapt(roi_size=config["roi_size"], sw_batch_size=1, overlap=0.625, mode="gaussian",
                                        cache_roi_weight_map=False)
    with torch.no_grad():
        logits = inferer(inputs=batch["image"].as_subclass(torch.Tensor).to(memory_format=torch.channels_last_3d),
                         network=network)
    predictions = auto3dseg._predictions(logits, config.get("sigmoid", False))
    batch["pred"] = convert_to_dst_type(predictions, batch["image"], dtype=predictions.dtype)[0]
    pred = Compose([Invertd(keys="pred", orig_keys="image", transform=preprocessing, nearest_interp=True)])(
        decollate_batch(batch)[0])["pred"]
    labels = sitk.GetImageFromArray(pred[0].numpy().astype(np.uint8).transpose(2, 1, 0))
    labels.CopyInformation(sitk.ReadImage(input_path))
    return labels


def prepare(runtime: str, folder: str, image: sitk.Image, bundle: str) -> tuple:
    """``(ours, direct)``: two functions segmenting ``image``, each returning a SimpleITK label map."""
    input_path = os.path.join(folder, "input.nii.gz")
    sitk.WriteImage(image, input_path)
    count = iter(range(1_000_000))
    if runtime == "monai-bundle":
        model = make_bundle(bundle, folder)
        return (lambda: run_model(model, [image], device="cpu").result.labels,
                lambda: bundle_directly(model, input_path, os.path.join(folder, f"out-{next(count)}")))
    if runtime == "nnunet-v2":
        model = make_nnunet_model(folder)
        fast = RunOptions(quality="fast")

        def direct() -> sitk.Image:
            with contextlib.redirect_stdout(sys.stderr):  # nnU-Net prints what it does
                return nnunet_directly(model, image, os.path.join(folder, f"out-{next(count)}"), mirroring=False)

        return lambda: run_model(os.path.dirname(model), [image], device="cpu", options=fast).result.labels, direct
    if runtime == "auto3dseg":
        installed = os.path.join(folder, "installed")
        zipfile.ZipFile(make_auto3dseg_archive(folder, roi_size=[96, 96, 96])).extractall(installed)
        return (lambda: run_model(installed, [image], device="cpu").result.labels,
                lambda: auto3dseg_directly(installed, input_path))
    from DeepSegmentLib.engine import DEFAULT_QUALITY, quality_options, segment
    from DeepSegmentLib.package import load_package, write_package

    class Network(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.Sequential(torch.nn.Conv3d(1, 16, 3, padding=1), torch.nn.ReLU(),
                                              torch.nn.Conv3d(16, 16, 3, padding=1), torch.nn.ReLU(),
                                              torch.nn.Conv3d(16, 3, 1))

        def forward(self, x):
            return self.layers(x)

    contract = {"schemaVersion": 1, "format": "torch.export", "weights": "model.pt2", "dimensions": 3,
                "inputs": [{"name": "CT"}],
                "preprocessing": {"spacing": [1.5, 1.5, 1.5], "orientation": "RAS",
                                  "normalization": [{"kind": "ct-window", "window": [-200, 300]}]},
                "inference": {"patchSize": [64, 64, 64], "activation": "softmax", "outputChannels": 3},
                "postprocessing": {"mode": "argmax"},
                "labels": [{"value": 1, "name": "a", "color": "#ff0000"},
                           {"value": 2, "name": "b", "color": "#00ff00"}]}
    torch.manual_seed(0)
    package_folder = os.path.join(folder, "package")
    write_package(package_folder, Network().eval(), contract)
    package = load_package(package_folder)
    return (lambda: run_model(package_folder, [image], device="cpu").result.labels,
            # The same quality as the dispatch's default: the same windows and work on both sides.
            lambda: segment([image], package, device="cpu", **quality_options(package, DEFAULT_QUALITY)).labels)


def timed(function) -> tuple:
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtimes", default=",".join(RUNTIMES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, nargs=3, default=(96, 96, 48), metavar=("X", "Y", "Z"))
    parser.add_argument("--nnunet-size", type=int, nargs=3, default=(48, 40, 24), metavar=("X", "Y", "Z"),
                        help="the nnU-Net model made here has a patch of about 18×24×20: a smaller volume")
    parser.add_argument("--bundle", default="spleen_ct_segmentation", help="a bundle of Testing/Data/FieldModels")
    parser.add_argument("--threads", type=int, default=None)
    arguments = parser.parse_args()
    if arguments.threads:
        torch.set_num_threads(arguments.threads)
    print(f"inputs: spacing 1.25 × 0.75 × 2.5 mm, axes permuted; {torch.get_num_threads()} threads; "
          f"best of {arguments.repeats}")
    print(f"{'runtime':14} {'voxels':>10} {'deepsegment':>12} {'direct':>10} {'ratio':>7}  same labels  exact grid")
    for runtime in arguments.runtimes.split(","):
        size = tuple(arguments.nnunet_size if runtime == "nnunet-v2" else arguments.size)
        image = aligned_volume(size=size)
        with tempfile.TemporaryDirectory(prefix=f"benchmark-{runtime}-") as folder:
            ours, direct = prepare(runtime, folder, image, arguments.bundle)
            times = {ours: [], direct: []}
            results = {}
            for repeat in range(arguments.repeats):
                # Interleaved, in alternating order: both see the same machine load, neither always goes first.
                for function in (ours, direct) if repeat % 2 == 0 else (direct, ours):
                    seconds, results[function] = timed(function)
                    times[function].append(seconds)
            best_ours, best_direct = min(times[ours]), min(times[direct])
            our_labels, direct_labels = results[ours], results[direct]
            same = np.array_equal(sitk.GetArrayFromImage(our_labels), sitk.GetArrayFromImage(direct_labels))
            exact = geometry_mismatch(image, our_labels) == "" and our_labels.GetOrigin() == image.GetOrigin()
            print(f"{runtime:14} {'×'.join(map(str, size)):>10} {best_ours:11.2f}s {best_direct:9.2f}s "
                  f"{best_ours / best_direct:7.2f}  "
                  f"{'yes' if same else 'NO':11}  {'yes' if exact else 'NO'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Inference speed like for like: our sliding window against MONAI's and nnU-Net v2's, on the same network,
input and precision, next to the network's own cost; then what each of our speed options costs in accuracy.

Part "speed", per network and precision (float32, and the reduced precision the device computes natively:
bfloat16 on CPUs with AMX or AVX-512 BF16, float16 on CUDA), every method on the same normalized volume,
timed interleaved (one run of each method per round) after two untimed rounds, best of ``--repeats`` rounds:

- ``network floor``: one forward pass over the whole volume, padded to a size the network accepts: the
  least any sliding window can cost;
- ``MONAI``: ``monai.inferers.sliding_window_inference`` (the model's patch, overlap and batch, Gaussian);
- ``nnU-Net``: ``nnUNetPredictor.predict_sliding_window_return_logits`` set up with ``manual_initialization``
  on the same network (the patch, step = 1 - overlap, Gaussian, no mirroring; one window per call, as
  nnU-Net always runs). nnU-Net autocasts on CUDA only; on the CPU its reduced-precision row runs under
  our ``torch.autocast``;
- ``ours, exact``: the engine's inference stage with the exact quality (the model's windows: the same
  work as MONAI and nnU-Net);
- ``ours, <default>``: the same with the default quality: fewer, larger windows where the network allows,
  background windows skipped, the forward pass tuned. It does less work than the others where it runs
  fewer voxels through the network; the "voxels" column says how much (voxels through the network / the
  volume's voxels), and part "accuracy" what that costs.

Networks (``--networks``): ``monai-unet``, MONAI's residual 3D UNet 16-256 (the project's reference,
untrained, seeded; instance norm, so our plan keeps its 96³ windows) on the 1 mm MNI template cropped to
160³; ``demo``, the bundled ``brain-tissue-demo`` model (trained; batch norm, so it may run larger windows)
on the demo's test volume (``make demo``) on its 2 mm model grid. Both as TorchScript, as packaged.

Part "accuracy": Dice per label of each speed option against the exact quality, through the whole
``segment()``, with the demo model on real anatomy: the demo's test volume, the MNI template itself (1 mm)
and a real brain EPI (nibabel's ``example4d.nii.gz``, first frame; not a T1, so the model is unsure on
much of it). As a yardstick, the exact quality against itself with its windows moved (overlap 0.55).
``--accuracy-model`` measures another archive, e.g. the demo network with instance norm
(``train_brain_tissue_demo.py --norm instance``); for a network that normalizes each window, the part also
measures the larger windows the engine refuses it, to show what they would cost.

Part "forward": the forward-pass candidates of ``forward_pass.py`` against the network as loaded, on the
windows our default plan runs (and the same windows handed over one per call, where the model batches
them), in each precision. Candidates that fail say why. ``--compile`` adds ``torch.compile`` of a
torch.export program of the same network (its compile time is printed; tens of seconds on a CPU unless
Inductor's cache already holds it).

Times are wall-clock seconds and, in brackets, the process's CPU seconds (less disturbed by other work on
a shared machine). Our first run of a network also tunes and probes it once (kept with the loaded
network); that one-off cost is printed, not counted in the best of N.

Requires ``monai`` and ``nnunetv2`` (benchmark-only; the engine imports neither). Usage, from the
repository root::

    .venv/bin/python DeepSegment/Testing/benchmark_inference.py --threads 2 [--device cpu|cuda] [--repeats 3]
        [--networks monai-unet demo] [--parts speed accuracy forward] [--compile] [--accuracy-model ARCHIVE]
        [--adopt CANDIDATE ...] [--without CANDIDATE ...] [--windows-across-threads-here]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import math
import os
import sys
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
REPOSITORY = os.path.dirname(os.path.dirname(HERE))
sys.path[:0] = [os.path.join(REPOSITORY, "DeepSegment"), os.path.join(REPOSITORY, "ModelRegistry"),
                os.path.join(REPOSITORY, "DeepSegment", "Demo")]

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import SimpleITK as sitk  # noqa: E402
import torch  # noqa: E402

from DeepSegmentLib.devices import available_devices, choose_device, reduced_precision  # noqa: E402
from DeepSegmentLib.engine import (  # noqa: E402
    DEFAULT_QUALITY,
    QUALITY_PRESETS,
    infer,
    inference_window,
    normalize,
    quality_options,
    segment,
    window_voxel_limit,
)
from DeepSegmentLib import engine, forward_pass  # noqa: E402
from DeepSegmentLib.forward_pass import CANDIDATES, cuda_graphs, cudnn_autotuned  # noqa: E402
from DeepSegmentLib.package import load_network, load_package  # noqa: E402
from DeepSegmentLib.resample import Grid, model_grid, resample  # noqa: E402
from DeepSegmentLib.window_plan import accepted_multiple, plan_windows  # noqa: E402

DEMO_ARCHIVE = os.path.join(REPOSITORY, "ModelRegistry", "Resources", "Registry", "brain-tissue-demo-1.0.0.zip")
EPI_PATH = ("nibabel", "tests", "data", "example4d.nii.gz")
MONAI_UNET_SIZE = 160
DICE_GOAL = 0.99
SPEED_GOAL = 1.5
# Untimed rounds before the timed ones: TorchScript's profiling executor settles over the first runs of a shape.
WARM_UP_ROUNDS = 2


@dataclass
class Case:
    """A network with its package, and the normalized volume (C×Z×Y×X on the device) it runs on."""

    name: str
    description: str
    package: object
    network: object
    volume: object
    images: list = field(default_factory=list)  # the volume as SimpleITK images (for memory limits)
    eager: object = None  # the same network as a torch.nn.Module, to export and compile

    def copy_of_network(self):
        """The same TorchScript network loaded afresh. Each method runs its own copy: TorchScript's profiling
        executor specializes a module on the inputs of its first runs (shapes, precision) and runs others on
        a slower fallback, so methods sharing one module would slow each other down."""
        buffer = io.BytesIO()
        torch.jit.save(self.network, buffer)
        buffer.seek(0)
        return torch.jit.load(buffer, map_location=self.volume.device).eval()


@dataclass
class Timing:
    wall: float = float("inf")
    cpu: float = float("inf")
    peak_bytes: int = 0
    labels: object = None
    voxels: int = 0
    windows: str = ""


# ------------------------------------------------------------------------------------------------ inputs


def demo_package(folder: str, archive_path: str = DEMO_ARCHIVE):
    with zipfile.ZipFile(archive_path) as archive:
        archive.extractall(folder)
    return load_package(folder)


def template_images(cache: str) -> dict:
    from mni_template import read_template, template_folder

    return read_template(template_folder(cache))


def epi_image() -> sitk.Image:
    import nibabel

    path = os.path.join(os.path.dirname(os.path.dirname(nibabel.__file__)), *EPI_PATH)
    return sitk.ReadImage(path)[:, :, :, 0]


def model_grid_volume(image: sitk.Image, package, device) -> torch.Tensor:
    """``image`` resampled onto the package's model grid and normalized, as ``segment`` does (1×Z×Y×X)."""
    preprocessing = package.preprocessing
    grid = model_grid(image, preprocessing.spacing, preprocessing.orientation)
    tensor = torch.from_numpy(sitk.GetArrayFromImage(image).astype(np.float32)).to(device)[None]
    volume = resample(tensor, Grid.from_image(image), grid)
    normalize(volume[0], preprocessing.normalization[0])
    return volume


def image_of(volume: torch.Tensor) -> sitk.Image:
    return sitk.GetImageFromArray(volume[0].cpu().numpy())


def monai_unet_case(device, cache: str) -> Case:
    from ModelRegistryLib.index import Label, ModelInput
    from monai.networks.nets import UNet

    from DeepSegmentLib.package import Inference, ModelPackage, Normalization, Postprocessing, Preprocessing

    torch.manual_seed(0)
    network = UNet(spatial_dims=3, in_channels=1, out_channels=3, channels=(16, 32, 64, 128, 256),
                   strides=(2, 2, 2, 2), num_res_units=2)
    scripted = torch.jit.script(network.eval()).to(device)
    package = ModelPackage(
        folder="", format="torchscript", weights_path="", dimensions=3, inputs=(ModelInput("T1"),),
        preprocessing=Preprocessing(None, "native", (Normalization("percentile", percentiles=(0.5, 99.5)),)),
        inference=Inference((96, 96, 96), 0.5, "gaussian", 4, (), "softmax", 3),
        postprocessing=Postprocessing("argmax", {}, (), (), {}),
        labels=(Label(1, "one", "#ff0000"), Label(2, "two", "#00ff00")),
    )
    t1 = template_images(cache)["t1"]
    size = np.array(t1.GetSize())
    first = (size - MONAI_UNET_SIZE) // 2
    cropped = t1[tuple(slice(int(f), int(f) + MONAI_UNET_SIZE) for f in first)]
    volume = model_grid_volume(cropped, package, device)
    description = (f"MONAI UNet 16-256 (TorchScript, untrained, instance norm), MNI T1 1 mm cropped to "
                   f"{MONAI_UNET_SIZE}³, patch 96³, overlap 0.5, Gaussian, batch 4")
    return Case("monai-unet", description, package, scripted, volume, [image_of(volume)], network.eval())


def demo_case(device, cache: str, folder: str) -> Case:
    from mni_template import template_folder
    from run_demo import build_test_case

    from train_brain_tissue_demo import TissueUNet

    package = demo_package(folder)
    network = load_network(package, str(device))
    eager = TissueUNet()
    eager.load_state_dict(network.state_dict())
    image, _ = build_test_case(template_folder(cache))
    volume = model_grid_volume(image, package, device)
    shape = "×".join(str(n) for n in reversed(volume.shape[1:]))
    description = (f"brain-tissue-demo (TorchScript, trained, batch norm), the demo's test volume on its 2 mm "
                   f"grid ({shape}), patch 64³, overlap 0.5, Gaussian, batch 2")
    return Case("demo", description, package, network, volume, [image_of(volume)], eager.eval().to(device))


# ------------------------------------------------------------------------------------------------ timing


class PeakMemory:
    """The peak above the start of a block: CUDA allocations, else the process's resident size (sampled)."""

    def __init__(self, device) -> None:
        self.device, self.peak = device, 0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
            return self
        self.process = psutil.Process()
        self.start = self.process.memory_info().rss
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss - self.start)
            time.sleep(0.02)

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device) - self.start
        else:
            self.running = False
            self.thread.join()


def timed(function, device, timing: Timing) -> Timing:
    """Run ``function`` once; keep its times in ``timing`` when best (the labels it returns with them)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    with PeakMemory(device) as memory:
        wall, cpu = time.perf_counter(), time.process_time()
        output = function()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    labels, voxels, windows = output
    if wall < timing.wall:
        timing.wall, timing.labels, timing.voxels, timing.windows = wall, labels, voxels, windows
    timing.cpu = min(timing.cpu, cpu)
    timing.peak_bytes = max(timing.peak_bytes, memory.peak)
    return timing


def autocast(device, precision: str):
    if precision == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=getattr(torch, precision))


def argmax(scores) -> np.ndarray:
    scores = scores[0] if scores.dim() == 5 else scores
    return scores.float().argmax(0).to(torch.uint8).cpu().numpy()


def padded_to_multiple(volume: torch.Tensor, multiple: tuple) -> torch.Tensor:
    pads = []
    for size, m in zip(reversed(volume.shape[1:]), reversed(multiple)):
        pads += [0, -size % m]
    return torch.nn.functional.pad(volume, pads)


@contextlib.contextmanager
def nnunet_autotuner(device):
    """cuDNN's autotuner as nnU-Net sets it (on, on CUDA) within the block, PyTorch's setting restored after."""
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = previous or device.type == "cuda"
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous


def nnunet_predictor(case: Case, network, device):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

    inference = case.package.inference
    patch = list(reversed(inference.patch_size))
    plans = {"plans_name": "benchmark", "experiment_planner_used": "ExperimentPlanner",
             "configurations": {"3d_fullres": {"patch_size": patch, "architecture": {}}}}
    labels = {"background": 0, **{label.name: i + 1 for i, label in enumerate(case.package.labels)}}
    dataset = {"labels": labels, "channel_names": {"0": "MR"}, "file_ending": ".nii.gz"}
    # nnU-Net turns cuDNN's autotuner on for the whole process when it is set up on CUDA: it is on for
    # nnU-Net's own runs only (nnunet_autotuner), so the other methods run with PyTorch's defaults.
    with contextlib.redirect_stdout(io.StringIO()), nnunet_autotuner(device):  # it announces its settings
        predictor = nnUNetPredictor(tile_step_size=1.0 - inference.overlap, use_gaussian=True, use_mirroring=False,
                                    perform_everything_on_device=device.type == "cuda", device=device,
                                    verbose=False, allow_tqdm=False)
        predictor.manual_initialization(network, PlansManager(plans), ConfigurationManager(
            plans["configurations"]["3d_fullres"]), None, dataset, "benchmark", None)
    return predictor


def speed_methods(case: Case, device, precision: str, floor_multiple: tuple | None, adopt: tuple = (),
                  without: tuple = ()) -> dict:
    """name → a function running the method once and returning (labels, voxels through the network, windows)."""
    from monai.inferers import sliding_window_inference

    inference = case.package.inference
    patch = tuple(reversed(inference.patch_size))
    volume = case.volume
    engine_precision = "float32" if precision == "float32" else "auto"
    exact = inference_window(case.package, str(device), precision=engine_precision)
    options = quality_options(case.package, DEFAULT_QUALITY)
    planned = inference_window(case.package, str(device), precision=engine_precision, overlap=options["overlap"],
                               mirror_axes=options["mirror_axes"])
    limit = window_voxel_limit(case.images, case.package, str(device))
    predictor = nnunet_predictor(case, case.copy_of_network(), device)
    floor_network, monai_network = case.copy_of_network(), case.copy_of_network()
    tiling = plan_windows(tuple(volume.shape[1:]), exact)  # MONAI's and nnU-Net's windows are the same
    tiled = (len(tiling.origins) * math.prod(patch), f"{tiling.summary} (their own tiling)")

    def floor():
        padded = padded_to_multiple(volume, floor_multiple)
        with torch.inference_mode(), autocast(device, precision):
            scores = floor_network(padded[None])
        crop = (slice(None), slice(None), *(slice(0, n) for n in volume.shape[1:]))
        return argmax(scores[crop]), padded[0].numel(), f"1 window of {'×'.join(map(str, padded.shape[1:]))}"

    def monai():
        with torch.inference_mode(), autocast(device, precision):
            scores = sliding_window_inference(volume[None], patch, int(inference.batch_size), monai_network,
                                              overlap=inference.overlap, mode="gaussian")
        return (argmax(scores), *tiled)

    def nnunet():
        with autocast(device, precision), contextlib.redirect_stdout(io.StringIO()), nnunet_autotuner(device):
            scores = predictor.predict_sliding_window_return_logits(volume)
        return (argmax(scores), *tiled)

    def ours(window, **keywords):
        network = case.copy_of_network()

        def run():
            probabilities, plan, summary = infer(volume, case.package, network, window, voxel_limit=limit,
                                                 **keywords)
            return argmax(probabilities), len(plan.origins) * math.prod(plan.window.patch_size), summary

        return run

    methods = {}
    if floor_multiple is not None:
        methods["network floor"] = floor
    methods["MONAI"] = monai
    methods["nnU-Net"] = nnunet
    methods["ours, exact"] = ours(exact)
    methods[f"ours, {DEFAULT_QUALITY}"] = ours(planned, windows=options["windows"],
                                               skip_background=options["skip_background"],
                                               fast_forward=options["fast_forward"])
    for label, adopted, dropped in (("+" + "+".join(adopt), adopt, ()), ("−" + "−".join(without), (), without)):
        if adopted or dropped:
            tuned = ours(planned, windows=options["windows"], skip_background=options["skip_background"],
                         fast_forward=True)
            methods[f"ours, {DEFAULT_QUALITY}, {label}"] = functools.partial(with_adoption, device, precision,
                                                                             adopted, dropped, tuned)
    return methods


def with_adoption(device, precision: str, adopt: tuple, without: tuple, method):
    """Run ``method`` with the forward-pass candidates ``adopt`` adopted and those ``without`` not, for ``device``
    and ``precision`` (what ``--adopt`` measures before the engine adopts them, ``--without`` after)."""
    key = (device.type, precision)
    before = forward_pass.ADOPTED.get(key)
    kept = tuple(entry for entry in before or () if entry[0] not in without)
    forward_pass.ADOPTED[key] = (*kept, *((name, lambda network, shape: True) for name in adopt))
    try:
        return method()
    finally:
        if before is None:
            del forward_pass.ADOPTED[key]
        else:
            forward_pass.ADOPTED[key] = before


def run_speed(case: Case, device, precisions: list, repeats: int, adopt: tuple = (), without: tuple = ()) -> None:
    print(f"\n== speed: {case.description}")
    patch = tuple(reversed(case.package.inference.patch_size))
    multiple = accepted_multiple(case.network, int(case.volume.shape[0]), patch, device)
    volume_voxels = case.volume[0].numel()
    ours_name = f"ours, {DEFAULT_QUALITY}"
    for precision in precisions:
        methods = speed_methods(case, device, precision, multiple, adopt, without)
        first_runs = {}  # untimed: TorchScript optimizes over its first runs of each new shape; ours also
        for _ in range(WARM_UP_ROUNDS):  # probes and tunes the network on its first run, once
            for name in [*(n for n in methods if n != ours_name), ours_name]:
                began = time.perf_counter()
                methods[name]()
                first_runs.setdefault(name, time.perf_counter() - began)
        timings = {name: Timing() for name in methods}
        for _ in range(repeats):
            for name, method in methods.items():
                timed(method, device, timings[name])
        reference = timings["ours, exact"].labels
        print(f"-- {precision}, best of {repeats}: wall s [CPU s]; voxels through the network / the volume's")
        for name, timing in timings.items():
            agreement = 100.0 * float(np.mean(timing.labels == reference))
            print(f"  {name:16s} {timing.wall:7.3f} s [{timing.cpu:7.3f}]  {timing.voxels / volume_voxels:4.1f}× "
                  f"voxels  peak {timing.peak_bytes / 2**20:6.0f} MiB  argmax as exact's on {agreement:6.2f}%  "
                  f"{timing.windows}")
        firsts = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in first_runs.items())
        print("  first runs, untimed (TorchScript optimizes over the first runs of a shape; ours also probes and "
              f"tunes the network once): {firsts}")
        ours, exact = timings[ours_name], timings["ours, exact"]
        for other in ("MONAI", "nnU-Net"):
            theirs = timings[other]
            print(f"  {precision}: {ours_name} vs {other} {theirs.wall / ours.wall:.2f}× [CPU "
                  f"{theirs.cpu / ours.cpu:.2f}×] (goal ≥ {SPEED_GOAL}×); ours, exact (the same windows) vs "
                  f"{other} {theirs.wall / exact.wall:.2f}× [CPU {theirs.cpu / exact.cpu:.2f}×]")
        for name in (n for n in timings if n.startswith((f"{ours_name}, +", f"{ours_name}, −"))):
            print(f"  {precision}: {name} vs MONAI {timings['MONAI'].wall / timings[name].wall:.2f}×, vs nnU-Net "
                  f"{timings['nnU-Net'].wall / timings[name].wall:.2f}×, vs {ours_name} "
                  f"{ours.wall / timings[name].wall:.2f}×")
        if ours.voxels < exact.voxels:
            print(f"  {precision}: {ours_name} does less work: {ours.voxels / exact.voxels:.2f}× the voxels through"
                  " the network (see part accuracy for what it costs)")
        if "network floor" in timings:
            floor = timings["network floor"]
            print(f"  {precision}: time / network floor: {ours_name} {ours.wall / floor.wall:.2f}× [CPU "
                  f"{ours.cpu / floor.cpu:.2f}×], ours exact {exact.wall / floor.wall:.2f}×, MONAI "
                  f"{timings['MONAI'].wall / floor.wall:.2f}×, nnU-Net {timings['nnU-Net'].wall / floor.wall:.2f}×")


# ---------------------------------------------------------------------------------------------- accuracy


def accuracy_options(package) -> dict:
    """name → segment() keywords of each speed option (each alone, then the presets)."""
    options = {
        "larger windows": {"windows": "largest"},
        "skip background": {"skip_background": True},
        "forward pass tuned": {"fast_forward": True},
        "overlap 0.25": {"overlap": 0.25},
        "reduced precision": {"precision": "auto"},
    }
    for quality in QUALITY_PRESETS:
        if quality != "exact":
            options[f"quality {quality}"] = quality_options(package, quality)
    options["exact, windows moved (overlap 0.55): yardstick"] = {"overlap": 0.55}
    return options


@contextlib.contextmanager
def every_network_counted_local(network):
    """The engine runs larger windows for ``network`` even if it normalizes each window: to measure what they
    would cost such a network (the engine itself keeps its windows, since ``window_wide_operation`` says why)."""
    counted = engine.window_wide_operation
    engine.window_wide_operation = lambda candidate: "" if candidate is network else counted(candidate)
    try:
        yield
    finally:
        engine.window_wide_operation = counted


def run_accuracy(device, cache: str, folder: str, archive_path: str) -> None:
    from mni_template import dice_scores, template_folder
    from run_demo import build_test_case

    package = demo_package(folder, archive_path)
    network = load_network(package, str(device))
    volumes = {"demo test volume": build_test_case(template_folder(cache))[0],
               "MNI template 1 mm": template_images(cache)["t1"], "EPI (nibabel example4d)": epi_image()}
    names = {label.value: label.name for label in package.labels}
    normalizes_windows = engine.window_wide_operation(network)
    print(f"\n== accuracy: Dice per label against the exact quality, {os.path.basename(archive_path)} "
          f"({normalizes_windows or 'local operations only'}), float32 unless said (goal ≥ {DICE_GOAL}); "
          f"device {device}")
    exact_options = quality_options(package, "exact")
    options = accuracy_options(package)
    forced = f"larger windows, despite {normalizes_windows}"
    if normalizes_windows:
        options[forced] = {"windows": "largest"}
    worst = {}
    for volume_name, image in volumes.items():
        exact = segment([image], package, network, device=str(device), precision="float32", **exact_options)
        reference = sitk.GetArrayFromImage(exact.labels)
        print(f"-- {volume_name}: exact {exact.timings['inferring']:.2f} s, {exact.windows}")
        for option, keywords in options.items():
            keywords = {**exact_options, "precision": "float32", **keywords}
            with every_network_counted_local(network) if option == forced else contextlib.nullcontext():
                result = segment([image], package, network, device=str(device), **keywords)
            scores = dice_scores(sitk.GetArrayFromImage(result.labels), reference, list(names))
            changed = 100.0 * float(np.mean(sitk.GetArrayFromImage(result.labels) != reference))
            text = ", ".join(f"{names[v]} {s:.4f}" for v, s in scores.items())
            print(f"  {option:48s} {text}  ({changed:.2f}% of voxels changed; {result.timings['inferring']:.2f} s;"
                  f" {result.windows})")
            worst[option] = min(worst.get(option, 1.0), *scores.values())
    print("-- lowest Dice of any label on any volume:")
    for option, score in worst.items():
        verdict = "meets" if score >= DICE_GOAL else "below"
        print(f"  {option:48s} {score:.4f} ({verdict} {DICE_GOAL})")


# ----------------------------------------------------------------------------------------------- forward


def run_forward(case: Case, device, precisions: list, repeats: int, compile_too: bool) -> None:
    print(f"\n== forward pass: {case.description}")
    options = quality_options(case.package, DEFAULT_QUALITY)
    window = inference_window(case.package, str(device), overlap=options["overlap"],
                              mirror_axes=options["mirror_axes"])
    _, plan, _ = infer(case.volume, case.package, case.network, window, windows=options["windows"],
                       skip_background=options["skip_background"], voxel_limit=window_voxel_limit(
                           case.images, case.package, str(device)))
    size = plan.window.patch_size
    padded = padded_to_multiple(case.volume, size)
    batch = padded[(slice(None), *(slice(0, n) for n in size))][None].repeat(plan.window.batch_size, 1, 1, 1, 1)
    candidates = {name: build for name, build in CANDIDATES.items() if name != "compiled"}
    if device.type == "cuda":  # the two CUDA candidates together: graphs captured after the autotuner chose
        candidates["cudnn-autotune+cuda-graphs"] = lambda network: cuda_graphs(cudnn_autotuned(network))
    for precision in precisions:
        networks = {"as loaded": case.copy_of_network()}
        if len(batch) > 1:  # the same windows, handed over one per call
            single = case.copy_of_network()
            networks["one per call"] = lambda windows, single=single: torch.cat([single(w[None]) for w in windows])
        builds = [(name, build, case.copy_of_network()) for name, build in candidates.items()]
        if compile_too:  # torch.compile takes a torch.export program of the same network, not TorchScript
            program = torch.export.export(case.eager, (batch,)).module()
            networks["export"] = program
            builds.append(("export, compiled", CANDIDATES["compiled"], program))
        for name, build, network in builds:
            try:
                began = time.perf_counter()
                built = build(network)
                with torch.inference_mode(), autocast(device, precision):
                    built(batch)
                networks[name] = built
                print(f"  {precision} {name}: ready (first call included) in {time.perf_counter() - began:.1f} s")
            except Exception as error:  # the candidate does not apply to this network or precision
                print(f"  {precision} {name}: not applicable ({type(error).__name__}: "
                      f"{str(error).strip().splitlines()[-1][:120]})")
        timings = {name: Timing() for name in networks}
        for _ in range(repeats):
            for name, network in networks.items():
                def call(network=network, precision=precision):
                    with torch.inference_mode(), autocast(device, precision):
                        return argmax(network(batch)), batch.numel(), ""
                timed(call, device, timings[name])
        base = timings["as loaded"]
        print(f"-- {precision}, {plan.window.batch_size} window(s) of {'×'.join(map(str, size))} per call (best of "
              f"{repeats}; wall s [CPU s])")
        for name, timing in timings.items():
            agreement = 100.0 * float(np.mean(timing.labels == base.labels))
            print(f"  {name:18s} {timing.wall:7.3f} s [{timing.cpu:7.3f}]  {base.wall / timing.wall:5.2f}× "
                  f"[CPU {base.cpu / timing.cpu:5.2f}×]  argmax as loaded on {agreement:.2f}%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, required=True, help="CPU threads for torch (say it: 2 on the "
                        "project's reference machine)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--networks", nargs="+", choices=("monai-unet", "demo"), default=["monai-unet", "demo"])
    parser.add_argument("--parts", nargs="+", choices=("speed", "accuracy", "forward"),
                        default=["speed", "accuracy", "forward"])
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile in part forward")
    parser.add_argument("--adopt", nargs="+", default=[], choices=[n for n in CANDIDATES if n != "compiled"],
                        help="part speed: also time the default quality with these forward-pass candidates "
                        "adopted (for every network and precision), before the engine adopts them")
    parser.add_argument("--accuracy-model", default=DEMO_ARCHIVE,
                        help="part accuracy: the model archive measured (default the demo; e.g. its instance-norm "
                        "variant, made by train_brain_tissue_demo.py --norm instance)")
    parser.add_argument("--without", nargs="+", default=[], choices=[n for n in CANDIDATES if n != "compiled"],
                        help="part speed: also time the default quality without these adopted candidates")
    parser.add_argument("--windows-across-threads-here", action="store_true",
                        help="run windows across threads at this --threads count too, where the engine does not "
                        "yet (to measure it there, with --without windows-across-threads)")
    parser.add_argument("--cache-dir", default=os.path.join(tempfile.gettempdir(), "deepsegment-benchmark"),
                        help="where the MNI template is unpacked if nilearn is not installed")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.windows_across_threads_here:
        forward_pass._WINDOWS_ACROSS_THREADS_MEASURED = (args.threads,)
    compute = choose_device(args.device, available_devices())
    device = torch.device(compute.torch_name)
    reduced = reduced_precision(compute)
    precisions = ["float32"] + ([reduced] if reduced else [])
    print(f"torch {torch.__version__}, {compute.description}; torch threads {torch.get_num_threads()}; precisions "
          f"{', '.join(precisions)}; default quality {DEFAULT_QUALITY!r}; load average "
          f"{', '.join(f'{v:.1f}' for v in os.getloadavg())} at the start")
    with tempfile.TemporaryDirectory() as folder:
        cases = []
        if "speed" in args.parts or "forward" in args.parts:
            builders = {"monai-unet": lambda: monai_unet_case(device, args.cache_dir),
                        "demo": lambda: demo_case(device, args.cache_dir, os.path.join(folder, "demo"))}
            cases = [builders[name]() for name in args.networks]
        if "speed" in args.parts:
            for case in cases:
                run_speed(case, device, precisions, args.repeats, tuple(args.adopt), tuple(args.without))
        if "forward" in args.parts:
            for case in cases:
                run_forward(case, device, precisions, args.repeats, args.compile)
        if "accuracy" in args.parts:
            run_accuracy(device, args.cache_dir, os.path.join(folder, "accuracy"), args.accuracy_model)
    print(f"\nload average {', '.join(f'{v:.1f}' for v in os.getloadavg())} at the end")


if __name__ == "__main__":
    main()

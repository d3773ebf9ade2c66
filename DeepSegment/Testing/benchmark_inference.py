"""Benchmark of the inference engine against MONAI's sliding_window_inference, on one network and one volume.

The same TorchScript network runs over the same 1×160³ volume with 96³ windows, overlap 0.5, Gaussian
blending and 4 windows per batch. ``--network monai-unet`` (the default) is MONAI's residual 3D UNet
with channels 16-256, strides 2 and 2 residual units, the network of the reference numbers in the
project's field notes (about 0.17 s per 96³ window on 2 cores: stitching costs matter); ``--network
plain-unet`` is a 4-level U-Net (16-32-64-128) without a strided first level, whose forward passes
(seconds per window) dwarf any stitching. Methods:

- ``ours``: DeepSegmentLib's sliding window alone (the "inferring" stage: windows → blended probabilities),
  in the engine's default precision ("auto": bfloat16 on CPUs with AMX or AVX-512 BF16, float16 on CUDA,
  else float32);
- ``ours-float32``: the same, always in float32 (``precision="float32"``), as MONAI runs;
- ``segment``: the whole ``segment()`` on a native grid (reading, z-score, inference, argmax, label map);
- ``monai``: ``monai.inferers.sliding_window_inference`` with the same settings (it stitches logits and
  stops there: no softmax, no labels).

Each method runs in its own subprocess (so peak memory is its own), best of ``--repeats`` runs. Network
forward calls are timed separately to give the share of time spent outside them. The voxel-wise argmax
of ``ours`` is compared with that of ``ours-float32`` (the same stitching), to show what the faster
precision changes. On this untrained network the class scores are close everywhere, so that is a worst
case: with the trained demo model 99.97% of the voxels keep their label. (MONAI blends logits where we
blend probabilities, so its argmax differs from both wherever windows disagree.) Goals on CPU: ours at
least 1.25× faster than MONAI, and under 15% of our time outside the network.

Peak memory: on CPU the growth of the process's peak resident size (``ru_maxrss``) over what it held
after loading the network and the volume; on CUDA ``torch.cuda.max_memory_allocated``.

MONAI is a benchmark-only dependency (``pip install monai==1.6.1``); the engine never imports it.

Usage (from the repository root): .venv/bin/python DeepSegment/Testing/benchmark_inference.py
    [--device cpu|cuda] [--repeats 3] [--size 160] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPOSITORY = os.path.dirname(os.path.dirname(HERE))
sys.path[:0] = [os.path.join(REPOSITORY, "DeepSegment"), os.path.join(REPOSITORY, "ModelRegistry")]

import numpy as np  # noqa: E402
import torch  # noqa: E402

PATCH = 96
OVERLAP = 0.5
BATCH = 4
CLASSES = 3
METHODS = ("ours", "ours-float32", "segment", "monai")


def conv_block(inputs: int, outputs: int) -> torch.nn.Sequential:
    layers = []
    for channels_in in (inputs, outputs):
        layers += [
            torch.nn.Conv3d(channels_in, outputs, 3, padding=1),
            torch.nn.InstanceNorm3d(outputs, affine=True),
            torch.nn.LeakyReLU(0.01, inplace=True),
        ]
    return torch.nn.Sequential(*layers)


class UpLevel(torch.nn.Module):
    """Transposed-conv upsampling, concatenation with the skip connection, two conv blocks."""

    def __init__(self, inputs: int, outputs: int) -> None:
        super().__init__()
        self.up = torch.nn.ConvTranspose3d(inputs, outputs, 2, stride=2)
        self.block = conv_block(2 * outputs, outputs)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.block(torch.cat([self.up(x), skip], dim=1))


class UNet(torch.nn.Module):
    """A plain 4-level 3D U-Net: two conv blocks per level, max-pool down, transposed conv up, skips."""

    def __init__(self, channels=(16, 32, 64, 128), inputs: int = 1, classes: int = CLASSES) -> None:
        super().__init__()
        widths = [inputs, *channels]
        self.down = torch.nn.ModuleList(conv_block(widths[i], widths[i + 1]) for i in range(len(channels)))
        self.pool = torch.nn.MaxPool3d(2)
        # deepest level first, as the decoder runs
        self.levels = torch.nn.ModuleList(
            UpLevel(channels[i + 1], channels[i]) for i in reversed(range(len(channels) - 1))
        )
        self.head = torch.nn.Conv3d(channels[0], classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips: list[torch.Tensor] = []
        for i, block in enumerate(self.down):
            if i > 0:
                x = self.pool(x)
            x = block(x)
            skips.append(x)
        for i, level in enumerate(self.levels):
            x = level(x, skips[-2 - i])
        return self.head(x)


def scripted_network(kind: str, path: str) -> None:
    torch.manual_seed(0)
    if kind == "monai-unet":
        from monai.networks.nets import UNet as MonaiUNet

        network = MonaiUNet(spatial_dims=3, in_channels=1, out_channels=CLASSES, channels=(16, 32, 64, 128, 256),
                            strides=(2, 2, 2, 2), num_res_units=2)
    else:
        network = UNet()
    torch.jit.save(torch.jit.script(network.eval()), path)


def volume(size: int) -> np.ndarray:
    """A smooth synthetic intensity volume (deterministic)."""
    z, y, x = np.mgrid[0:size, 0:size, 0:size].astype(np.float32) / size
    rng = np.random.default_rng(0)
    return (np.sin(6 * x) * np.cos(5 * y) + z + 0.1 * rng.standard_normal((size,) * 3)).astype(np.float32)


class TimedNetwork:
    """The network, with the wall time of its forward calls added up (synchronized on CUDA)."""

    def __init__(self, network, device: torch.device) -> None:
        self.network, self.device, self.seconds = network, device, 0.0

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        began = time.perf_counter()
        output = self.network(batch)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds += time.perf_counter() - began
        return output


def package_for_benchmark():
    from ModelRegistryLib.index import Label, ModelInput

    from DeepSegmentLib.package import Inference, ModelPackage, Normalization, Postprocessing, Preprocessing

    return ModelPackage(
        folder="",
        format="torchscript",
        weights_path="",
        dimensions=3,
        inputs=(ModelInput("image"),),
        preprocessing=Preprocessing(None, "native", (Normalization("z-score", foreground="all"),)),
        inference=Inference((PATCH,) * 3, OVERLAP, "gaussian", BATCH, (), "softmax", CLASSES),
        postprocessing=Postprocessing("argmax", {}, (), (), {}),
        labels=(Label(1, "one", "#ff0000"), Label(2, "two", "#00ff00")),
    )


def run_method(method: str, model_path: str, size: int, repeats: int, device_name: str, labels_path: str) -> dict:
    """Time one method in this process; the result as a JSON-able dict, its argmax saved to ``labels_path``."""
    import SimpleITK as sitk

    device = torch.device(device_name)
    network = torch.jit.load(model_path, map_location=device).eval()
    voxels = volume(size)
    image = sitk.GetImageFromArray(voxels)
    tensor = torch.from_numpy(voxels)[None].to(device)
    precision = "float32"
    if method in ("ours", "ours-float32"):
        from DeepSegmentLib.devices import available_devices, choose_device, reduced_precision
        from DeepSegmentLib.sliding_window import Window, sliding_window

        compute = choose_device(device_name, available_devices())
        autocast = reduced_precision(compute) if method == "ours" else ""
        window = Window((PATCH,) * 3, OVERLAP, "gaussian", BATCH, autocast=autocast)
        precision = autocast or "float32"
        run = lambda timed: sliding_window(tensor, timed, window, activation="softmax")  # noqa: E731
    elif method == "segment":
        from DeepSegmentLib.engine import segment

        package = package_for_benchmark()
        run = lambda timed: segment([image], package, timed, device=device_name)  # noqa: E731
    else:
        from monai.inferers import sliding_window_inference

        def run(timed):
            with torch.inference_mode():
                return sliding_window_inference(
                    tensor[None], (PATCH,) * 3, BATCH, timed, overlap=OVERLAP, mode="gaussian"
                )

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    best = None
    stages = {}
    for _ in range(repeats):
        timed = TimedNetwork(network, device)
        began = time.perf_counter()
        output = run(timed)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - began
        if best is None or seconds < best[0]:
            best = (seconds, timed.seconds)
            stages = dict(getattr(output, "timings", {}))
            precision = getattr(output, "precision", precision)
            labels = _argmax(output)
        del output
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before
    np.save(labels_path, labels)
    return {"seconds": best[0], "forward_seconds": best[1], "peak_bytes": int(peak), "stages": stages,
            "precision": precision}


def _argmax(output) -> np.ndarray:
    """Labels of a method's output: segment()'s label map, else the argmax of (1×)K×Z×Y×X scores."""
    if hasattr(output, "labels"):
        import SimpleITK as sitk

        return sitk.GetArrayFromImage(output.labels)
    scores = output[0] if output.dim() == 5 else output
    return scores.argmax(0).to(torch.uint8).cpu().numpy()


def in_subprocess(method: str, model_path: str, args) -> dict:
    labels_path = os.path.join(os.path.dirname(model_path), f"{method}-labels.npy")
    command = [sys.executable, os.path.abspath(__file__), "--method", method, "--model", model_path,
               "--labels", labels_path]
    command += ["--size", str(args.size), "--repeats", str(args.repeats), "--device", args.device]
    if args.threads:
        command += ["--threads", str(args.threads)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    result = json.loads(output.strip().splitlines()[-1])
    result["labels"] = np.load(labels_path)
    return result


def report(results: dict, args) -> None:
    mib = 1024**2
    print(f"network {args.network}, device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads,"
          f" volume 1×{args.size}³, patch {PATCH}³, overlap {OVERLAP}, gaussian, batch {BATCH}, best of {args.repeats}")
    for method, label in (("monai", "MONAI sliding_window_inference"), ("ours", "ours: sliding window"),
                          ("ours-float32", "ours: sliding window, float32"), ("segment", "ours: whole segment()")):
        result = results[method]
        outside = 1.0 - result["forward_seconds"] / result["seconds"]
        print(f"  {label:32s} {result['seconds']:7.2f} s   forward {result['forward_seconds']:7.2f} s   "
              f"outside forward {100 * outside:5.1f}%   peak memory {result['peak_bytes'] / mib:6.0f} MiB   "
              f"{result['precision']}")
    stages = results["segment"]["stages"]
    print("  segment() stages: " + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in stages.items()))
    speedup = results["monai"]["seconds"] / results["ours"]["seconds"]
    same_precision = results["monai"]["seconds"] / results["ours-float32"]["seconds"]
    outside = 1.0 - results["ours"]["forward_seconds"] / results["ours"]["seconds"]
    print(f"speed-up of our sliding window over MONAI: {speedup:.2f}× with the engine's default precision "
          f"({results['ours']['precision']}), {same_precision:.2f}× both in float32 (goal ≥ 1.25× on CPU)")
    print(f"share of our inference time outside the network: {100 * outside:.1f}% (goal < 15%)")
    agreement = float(np.mean(results["ours"]["labels"] == results["ours-float32"]["labels"]))
    print(f"voxels whose argmax the default precision leaves as float32 has it: {100 * agreement:.2f}% "
          "(untrained network: a worst case)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--network", choices=("monai-unet", "plain-unet"), default="monai-unet")
    parser.add_argument("--method", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--labels", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.method:
        print(json.dumps(run_method(args.method, args.model, args.size, args.repeats, args.device, args.labels)))
        return
    with tempfile.TemporaryDirectory() as folder:
        model_path = os.path.join(folder, "unet.pt")
        scripted_network(args.network, model_path)
        results = {method: in_subprocess(method, model_path, args) for method in METHODS}
    report(results, args)


if __name__ == "__main__":
    main()

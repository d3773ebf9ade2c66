"""Benchmark of live stream segmentation: latency from send to reply, and frame rate, over OpenIGTLink.

The network is a small 2D U-Net (MONAI's ``UNet(spatial_dims=2, channels=(16, 32, 64, 128), strides=(2, 2, 2),
num_res_units=2)``, 1.6 M parameters, untrained: timing does not depend on weights) exported with TorchScript
(``torch.jit.trace``) and ``torch.export`` into model packages (patch 256×256, z-score). The frames are
256×256 crops of the ultrasound cine of pydicom-data (real pixels), each with its own timestamp.

For each device, precision and format the real command line (``python -m DeepSegmentLib stream ...
--threads 2``) serves in its own process, and a lean client (a plain socket with pyigtl's messages; a reader
thread timestamps each reply as its last byte arrives) measures:

- **paced**: frames sent at 30 frames/s, as a scanner does, for ``--seconds``: latency p50/p99 from just
  before a frame is sent to its reply received, replies per second, and frames left without a reply
  (dropped as stale by the server's newest-frame policy);
- **closed loop**: the next frame sent when the previous reply arrived: latency without any waiting, and
  the most frames per second one stream gets;
- the network's forward pass alone, in this process's main thread with the same threads and precision (as
  the server runs it, on the thread that loaded it): the floor;
- CPU time per frame of the server process (all its threads) and of the network alone: their difference is
  what the stream costs on top of the network (reading, normalizing, argmax, packing, sockets), and unlike
  wall time it hardly changes with other work on the machine.

Every configuration runs ``--repeats`` times, interleaved, and the run with the lowest paced p99 is shown.

Goal (issue #14): p99 < 20 ms on 2 CPU threads. MONAI is a benchmark-only dependency; psutil reads the
server's CPU time.

Usage (from the repository root): .venv/bin/python DeepSegment/Testing/benchmark_stream.py
    [--device cpu|cuda|all] [--seconds 10] [--loop-frames 150] [--precision auto float32]
    [--format torchscript torch.export] [--threads 2]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPOSITORY = os.path.dirname(os.path.dirname(HERE))
MODULE_FOLDER = os.path.join(REPOSITORY, "DeepSegment")
sys.path[:0] = [MODULE_FOLDER, os.path.join(REPOSITORY, "ModelRegistry"), os.path.join(HERE, "Python")]

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import pyigtl  # noqa: E402
import torch  # noqa: E402
from stream_test_support import ultrasound_frames  # noqa: E402

from DeepSegmentLib.devices import available_devices, choose_device, reduced_precision  # noqa: E402
from DeepSegmentLib.package import archive_package, load_network, load_package, write_package  # noqa: E402
from DeepSegmentLib.programs import export_network  # noqa: E402

SIZE = 256
FRAME_SECONDS = 1 / 30
FORMATS = {"torchscript": ("model.pt", "torchscript"), "torch.export": ("model.pt2", "torch.export")}
GOAL_P99_MS = 20.0


def unet() -> torch.nn.Module:
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    return UNet(spatial_dims=2, in_channels=1, out_channels=2, channels=(16, 32, 64, 128), strides=(2, 2, 2),
                num_res_units=2).eval()


def write_models(folder: str) -> str:
    """One package per format and a registry index listing them (``unet2d-torchscript``, ...); returns the index."""
    import json

    network = unet()
    example = torch.zeros(1, 1, SIZE, SIZE)
    models = []
    for name, (weights, model_format) in FORMATS.items():
        contract = {
            "schemaVersion": 1, "format": model_format, "weights": weights, "dimensions": 2,
            "inputs": [{"name": "Ultrasound", "modality": "US"}],
            "preprocessing": {"spacing": None, "orientation": "native",
                              "normalization": [{"kind": "z-score", "foreground": "all"}]},
            "inference": {"patchSize": [SIZE, SIZE], "overlap": 0.25, "blending": "gaussian", "batchSize": 1,
                          "activation": "softmax", "outputChannels": 2},
            "postprocessing": {"mode": "argmax"},
            "labels": [{"value": 1, "name": "Structure", "color": "#f0e68c"}],
        }
        if model_format == "torchscript":
            with torch.inference_mode():
                exported = torch.jit.trace(network, example)
        else:  # as DeepSegment writes programs: a dynamic batch and window sizes
            exported = export_network(network, (2, *example.shape[1:]))
        package = os.path.join(folder, name)
        write_package(package, exported, contract)
        files = [archive_package(package, os.path.join(folder, f"unet2d-{name}-1.0.0.zip"))]
        models.append({"id": f"unet2d-{name.replace('.', '-')}", "title": f"2D U-Net ({name})",
                       "versions": [{"version": "1.0.0", "files": files}]})
    index = os.path.join(folder, "index.json")
    with open(index, "w", encoding="utf-8") as file:
        json.dump({"schemaVersion": 1, "models": models}, file)
    return index


def ultrasound_crops() -> tuple:
    """(60 crops of 256×256 pixels from the middle of the cine's frames, pixel spacing in mm)."""
    frames, spacing = ultrasound_frames(60, step=1)
    rows, columns = frames.shape[1:]
    top, left = (rows - SIZE) // 2, (columns - SIZE) // 2
    return frames[:, top : top + SIZE, left : left + SIZE], spacing


def frame_messages(count: int, first_timestamp: float) -> list:
    """``count`` packed IMAGE messages of 256×256 ultrasound crops, 1/30 s apart."""
    crops, spacing = ultrasound_crops()
    matrix = np.diag([spacing, spacing, 1.0, 1.0])
    return [pyigtl.ImageMessage(crops[i % len(crops)][None], ijk_to_world_matrix=matrix, device_name="Image_Reference",
                                timestamp=first_timestamp + i * FRAME_SECONDS).pack() for i in range(count)]


class Client:
    """A plain OpenIGTLink client: sends packed messages, and a reader thread notes when each reply's last byte
    arrives, keyed by its timestamp bytes (the server echoes the frame's)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.arrivals: dict = {}
        self._arrived = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _receive(self, size: int) -> bytes | None:
        chunks, left = [], size
        while left:
            chunk = self.sock.recv(min(left, 1 << 20))
            if not chunk:
                return None
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def _read(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                header = self._receive(58)
                if header is None or self._receive(int.from_bytes(header[42:50], "big")) is None:
                    return
                arrived = time.perf_counter()
                with self._arrived:
                    self.arrivals[header[34:42]] = arrived
                    self._arrived.notify_all()

    def send(self, message: bytes) -> float:
        sent = time.perf_counter()
        self.sock.sendall(message)
        return sent

    def wait_for(self, message: bytes, timeout: float) -> bool:
        with self._arrived:
            return self._arrived.wait_for(lambda: message[34:42] in self.arrivals, timeout)

    def close(self) -> None:
        self.sock.close()


def percentiles(seconds: list) -> tuple:
    if not seconds:
        return float("nan"), float("nan")
    return tuple(float(np.percentile(np.array(seconds) * 1000, p)) for p in (50, 99))


def paced(client: Client, messages: list) -> dict:
    began = time.perf_counter()
    sent = []
    for index, message in enumerate(messages):
        delay = began + index * FRAME_SECONDS - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        sent.append(client.send(message))
    client.wait_for(messages[-1], 10.0)
    time.sleep(0.5)  # replies to earlier frames still on their way
    latencies = [client.arrivals[m[34:42]] - s for m, s in zip(messages, sent) if m[34:42] in client.arrivals]
    answered = [client.arrivals[m[34:42]] for m in messages if m[34:42] in client.arrivals]
    span = max(answered) - began if answered else float("nan")
    p50, p99 = percentiles(latencies)
    return {"p50": p50, "p99": p99, "rate": len(answered) / span, "dropped": len(messages) - len(answered)}


def closed_loop(client: Client, messages: list) -> dict:
    latencies = []
    began = time.perf_counter()
    for message in messages:
        sent = client.send(message)
        if not client.wait_for(message, 10.0):
            raise RuntimeError("no reply in 10 s")
        latencies.append(client.arrivals[message[34:42]] - sent)
    p50, p99 = percentiles(latencies)
    return {"p50": p50, "p99": p99, "rate": len(messages) / (time.perf_counter() - began)}


def network_alone(package_folder: str, device: str, precision: str, threads: int, repeats: int = 60) -> dict:
    """The network's forward pass on one 256×256 window as the server runs it (on the thread that loaded it, the
    main one; same threads and precision): wall p50 and p99 in ms, and CPU ms per pass."""
    torch.set_num_threads(threads)
    compute = choose_device(device, available_devices())
    network = load_network(load_package(package_folder), compute.torch_name)
    autocast = reduced_precision(compute) if precision == "auto" else ""
    window = torch.randn(1, 1, SIZE, SIZE, device=compute.torch_name)
    times, cpu = [], []

    def run() -> None:
        with torch.inference_mode():
            for index in range(repeats + 5):
                began, began_cpu = time.perf_counter(), time.process_time()
                with torch.autocast(compute.kind, dtype=getattr(torch, autocast or "float32"), enabled=bool(autocast)):
                    network(window)
                if compute.kind == "cuda":
                    torch.cuda.synchronize()
                if index >= 5:
                    times.append(time.perf_counter() - began)
                    cpu.append(time.process_time() - began_cpu)

    run()
    p50, p99 = percentiles(times)
    return {"p50": p50, "p99": p99, "cpu_ms": 1000 * float(np.mean(cpu))}


@contextlib.contextmanager
def stream_server(index: str, model: str, device: str, precision: str, threads: int, cache: str):
    """The command line serving on a free port; yields (port, process, stderr lines)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "DeepSegmentLib", "stream", "--model", model, "--listen", "0", "--device", device,
         "--precision", precision, "--threads", str(threads), "--report-interval", "0", "--index", index,
         "--cache-dir", cache],
        cwd=MODULE_FOLDER, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )
    lines = []
    try:
        for line in process.stderr:
            lines.append(line.rstrip())
            match = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
            if match:
                break
        else:
            raise RuntimeError("the server did not start:\n" + "\n".join(lines))
        yield int(match.group(1)), process, lines
        process.send_signal(signal.SIGTERM)
        lines += [line.rstrip() for line in process.stderr]
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def run_configuration(index: str, folder: str, device: str, precision: str, model_format: str, args) -> dict:
    model = f"unet2d-{model_format.replace('.', '-')}"
    network = network_alone(os.path.join(folder, model_format), device, precision, args.threads)
    paced_frames = int(args.seconds / FRAME_SECONDS)
    with stream_server(index, model, device, precision, args.threads, os.path.join(folder, "cache")) as (port, process,
                                                                                                      lines):
        client = Client(port)
        try:
            closed_loop(client, frame_messages(20, 1.0e9))  # warm-up, not measured
            cpu = psutil.Process(process.pid).cpu_times()
            loop = closed_loop(client, frame_messages(args.loop_frames, 1.1e9))
            steady = paced(client, frame_messages(paced_frames, 1.2e9))
            after = psutil.Process(process.pid).cpu_times()
        finally:
            client.close()
    segmented = args.loop_frames + paced_frames - steady["dropped"]
    cpu_ms = 1000 * ((after.user - cpu.user) + (after.system - cpu.system)) / segmented
    ready = next((line for line in lines if " ready on " in line), "")
    return {"device": device, "precision": precision, "format": model_format, "network": network, "paced": steady,
            "loop": loop, "cpu_ms": cpu_ms, "ran_in": ready.partition("(")[2].partition(",")[0],
            "summary": lines[-1] if lines else ""}


def report(results: list, args) -> None:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\n2D U-Net (MONAI, 16-128, 2 residual units), 256×256 ultrasound frames, --threads {args.threads},"
          f" torch {torch.__version__}, {os.cpu_count()} CPUs, load average {load:.1f} at the end;"
          f" best of {args.repeats} interleaved runs (lowest paced p99)")
    print("| device | precision (ran in) | format | paced 30 fps: p50 / p99, replies/s, dropped |"
          " closed loop: p50 / p99, frames/s | network alone: p50 / p99 | CPU per frame: server / network |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        paced_result, loop, network = r["paced"], r["loop"], r["network"]
        print(f"| {r['device']} | {r['precision']} ({r['ran_in']}) | {r['format']} |"
              f" {paced_result['p50']:.1f} / {paced_result['p99']:.1f} ms, {paced_result['rate']:.1f},"
              f" {paced_result['dropped']} |"
              f" {loop['p50']:.1f} / {loop['p99']:.1f} ms, {loop['rate']:.1f} |"
              f" {network['p50']:.1f} / {network['p99']:.1f} ms | {r['cpu_ms']:.1f} / {network['cpu_ms']:.1f} ms |")
    for r in results:
        verdict = "met" if r["paced"]["p99"] < GOAL_P99_MS else "missed"
        print(f"{r['device']}/{r['precision']}/{r['format']}: goal p99 < {GOAL_P99_MS:g} ms at 30 frames/s {verdict};"
              f" closed-loop p50 {r['loop']['p50'] - r['network']['p50']:+.1f} ms and server CPU"
              f" {r['cpu_ms'] - r['network']['cpu_ms']:+.1f} ms per frame over the network alone;"
              f" server: {r['summary']}")


def parse_arguments(description: str) -> tuple:
    """(arguments, devices to run on) of this benchmark's command line; benchmark_live.py takes the same."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--device", choices=("cpu", "cuda", "all"), default="all",
                        help="all: the CPU, and CUDA when PyTorch sees a GPU")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the paced stream")
    parser.add_argument("--loop-frames", type=int, default=150, help="frames of the closed loop")
    parser.add_argument("--precision", nargs="+", choices=("auto", "float32"), default=["auto", "float32"])
    parser.add_argument("--format", nargs="+", choices=tuple(FORMATS), default=list(FORMATS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="runs of every configuration, interleaved")
    args = parser.parse_args()
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    if "cuda" in devices and not torch.cuda.is_available():
        if args.device == "cuda":
            parser.error("PyTorch sees no CUDA GPU")
        devices.remove("cuda")
    return args, devices


def main() -> None:
    args, devices = parse_arguments(__doc__.split("\n\n")[0])
    with tempfile.TemporaryDirectory() as folder:
        index = write_models(folder)
        configurations = [(device, precision, model_format) for device in devices for precision in args.precision
                          for model_format in args.format]
        best: dict = {}
        for _ in range(args.repeats):
            for configuration in configurations:
                began = time.perf_counter()
                result = run_configuration(index, folder, *configuration, args)
                # A line per run as it ends: a run cut short by a time limit still shows what it measured.
                print(f"{'/'.join(configuration)}: paced p50 / p99 {result['paced']['p50']:.1f} /"
                      f" {result['paced']['p99']:.1f} ms, closed loop p50 {result['loop']['p50']:.1f} ms,"
                      f" network alone p50 {result['network']['p50']:.1f} ms"
                      f" ({time.perf_counter() - began:.0f} s with the server's start)", file=sys.stderr, flush=True)
                if configuration not in best or result["paced"]["p99"] < best[configuration]["paced"]["p99"]:
                    best[configuration] = result
    report([best[configuration] for configuration in configurations], args)


if __name__ == "__main__":
    main()

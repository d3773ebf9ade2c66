"""Benchmark of Slicer's live mode: latency from a frame in the followed volume to its labels in the scene, and the
frame rate, beside the headless stream server's figures measured in the same run.

The network, the frames and the settings are benchmark_stream.py's: MONAI's small 2D U-Net (untrained; timing does
not depend on weights) in TorchScript and ``torch.export`` packages, 256×256 crops of pydicom-data's ultrasound
cine, ``--threads 2``. Slicer's side runs in the Slicer stand-in: a sequence browser holds the 60 crops (each at
its own origin, so a label map names its frame) and ``DeepSegmentLogic.startLive`` follows its proxy volume into a
label map volume; the main thread idles as Slicer's does (events, then 1 ms in a C call that keeps the GIL).

- **paced**: the browser shows the next frame every 1/30 s (a single-shot qt.QTimer re-armed on a fixed
  schedule, as a player does) for ``--seconds``; latency from just before the browser is told to show a frame
  (the volume then changes at once, in the same call) to the label map's ImageDataModifiedEvent on the output
  node (the labels are in the scene), label maps per second, and frames that never got one (dropped as stale by
  the newest-frame policy);
- **closed loop**: the next frame is shown as soon as the previous frame's label map is in the scene: latency
  without any waiting, and the most frames per second the live mode gives;
- CPU time per frame of the live worker process during the paced run, and the time Slicer's main thread spends
  per frame in the live mode's callbacks (taking the frame into shared memory, applying the label map);
- the headless server (``python -m DeepSegmentLib stream``) measured by benchmark_stream.py's client, and the
  network alone, in the same run: the live mode's overhead is the difference.

Every configuration runs ``--repeats`` times, interleaved (live mode, then server), and the run with the lowest
paced p99 of each is shown. MONAI is a benchmark-only dependency; psutil reads the worker's CPU time.

Usage (from the repository root): .venv/bin/python DeepSegment/Testing/benchmark_live.py
    [--device cpu|cuda|all] [--seconds 10] [--loop-frames 150] [--precision auto float32]
    [--format torchscript torch.export] [--threads 2] [--repeats 2]
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPOSITORY = os.path.dirname(os.path.dirname(HERE))
sys.path[:0] = [HERE, os.path.join(REPOSITORY, "Testing")]

import benchmark_stream  # noqa: E402  (puts DeepSegment, ModelRegistry and the test helpers on sys.path)
import numpy as np  # noqa: E402
import psutil  # noqa: E402
import torch  # noqa: E402
from benchmark_panel_jobs import boot, slicer_like_idle  # noqa: E402

FRAME_SECONDS = benchmark_stream.FRAME_SECONDS
WARM_UP_FRAMES = 20


def frame_sequence():
    """The 60 crops in a sequence browser, frame ``n`` at origin (n, 0, 0) mm; returns (browser, proxy volume)."""
    import slicer

    crops, spacing = benchmark_stream.ultrasound_crops()
    sequence = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSequenceNode", "Ultrasound crops")
    for index, crop in enumerate(crops):
        volume = slicer.vtkMRMLScalarVolumeNode()
        volume.SetSpacing(spacing, spacing, 1.0)
        volume.SetOrigin(float(index), 0.0, 0.0)
        slicer.util.updateVolumeFromArray(volume, crop[None])
        sequence.SetDataNodeAtValue(volume, str(index))
    browser = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", "Ultrasound crops browser")
    browser.SetAndObserveMasterSequenceNodeID(sequence.GetID())
    slicer.modules.sequences.logic().UpdateAllProxyNodes()
    return browser, browser.GetProxyNode(sequence)


class SceneClock:
    """When each frame was shown and when its label map reached the output node."""

    def __init__(self, browser, output) -> None:
        import slicer

        self.browser, self.output = browser, output
        self.shown: dict = {}  # item -> when it was last shown
        self.latencies: list = []
        self.arrivals: list = []
        self.on_label = None
        self._tag = output.AddObserver(slicer.vtkMRMLVolumeNode.ImageDataModifiedEvent, self._labelled)

    def show(self, item: int) -> None:
        self.shown[item] = time.perf_counter()
        self.browser.SetSelectedItemNumber(item)

    def _labelled(self, caller, event) -> None:
        now = time.perf_counter()
        item = round(self.output.GetOrigin()[0])
        self.latencies.append(now - self.shown[item])
        self.arrivals.append(now)
        if self.on_label is not None:
            self.on_label(item)

    def reset(self) -> None:
        self.latencies, self.arrivals = [], []

    def close(self) -> None:
        self.output.RemoveObserver(self._tag)


def settled(logic) -> bool:
    status = logic.liveStatus()
    return status.received == status.segmented + status.dropped + status.rejected


def idle_until(condition, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError("the live mode stopped answering")
        slicer_like_idle()


def closed_loop(clock: SceneClock, logic, count: int, first_item: int) -> dict:
    """Show the next frame as soon as the previous one's labels are in the scene."""
    clock.reset()
    shown = [first_item]

    def next_frame(item: int) -> None:
        if item == shown[-1] % 60 and len(shown) < count:
            shown.append(shown[-1] + 1)
            clock.show(shown[-1] % 60)  # the next frame comes while this one's labels are applied

    clock.on_label = next_frame
    began = time.perf_counter()
    clock.show(first_item % 60)
    try:
        idle_until(lambda: len(clock.latencies) >= count, 60.0 + 2.0 * count)
    finally:
        clock.on_label = None
    p50, p99 = benchmark_stream.percentiles(clock.latencies)
    return {"p50": p50, "p99": p99, "rate": count / (time.perf_counter() - began), "next": shown[-1] + 1}


def paced(clock: SceneClock, logic, count: int, first_item: int) -> dict:
    """Show a frame every 1/30 s on a fixed schedule."""
    import qt

    clock.reset()
    timer = qt.QTimer()
    timer.setSingleShot(True)
    timer.setTimerType(qt.Qt.PreciseTimer)
    stepped = [0]
    began = time.perf_counter()

    def step() -> None:
        clock.show((first_item + stepped[0]) % 60)
        stepped[0] += 1
        if stepped[0] < count:
            delay = began + stepped[0] * FRAME_SECONDS - time.perf_counter()
            timer.start(max(0, int(delay * 1000)))

    timer.connect("timeout()", step)
    timer.start(0)
    idle_until(lambda: stepped[0] == count and settled(logic), 60.0 + count * FRAME_SECONDS)
    p50, p99 = benchmark_stream.percentiles(clock.latencies)
    span = max(clock.arrivals) - began if clock.arrivals else float("nan")
    return {"p50": p50, "p99": p99, "rate": len(clock.arrivals) / span, "dropped": count - len(clock.latencies),
            "offered": count / (max(clock.shown.values()) - began)}


class MainThreadTime:
    """Time Slicer's main thread spends in the live mode's two callbacks: taking a frame (the volume's event:
    pixels copied into shared memory, handed to the worker when it is free) and applying a label map."""

    def __init__(self, session_class) -> None:
        self.session_class = session_class
        self.originals = {name: getattr(session_class, name) for name in ("onFrame", "apply")}
        for name, original in self.originals.items():
            setattr(session_class, name, self._timed(name, original))
        self.reset()

    def reset(self) -> None:
        self.seconds = dict.fromkeys(self.originals, 0.0)
        self.in_worker: list = []  # the worker's seconds on each frame applied

    def _timed(self, name: str, original):
        def timed(session, *arguments, **keywords):
            began = time.perf_counter()
            try:
                return original(session, *arguments, **keywords)
            finally:
                self.seconds[name] += time.perf_counter() - began
                if name == "apply":
                    self.in_worker.append(arguments[0].seconds)

        return timed

    def close(self) -> None:
        for name, original in self.originals.items():
            setattr(self.session_class, name, original)


def run_live(logic, browser, proxy, model: str, device: str, precision: str, args) -> dict:
    """One configuration through Slicer's live mode (a new worker: model load and warm-up are not measured)."""
    import slicer

    from DeepSegment import LiveSession

    browser.SetSelectedItemNumber(0)
    main_thread = MainThreadTime(LiveSession)  # before the session observes the volume with its onFrame
    output = logic.startLive(model, proxy, device=device, threads=args.threads, precision=precision)
    try:
        idle_until(lambda: logic.liveStatus().state != "starting", 300.0)
        status = logic.liveStatus()
        if status.state != "running":
            raise RuntimeError(status.message)
        idle_until(lambda: settled(logic), 60.0)
        clock = SceneClock(browser, output)
        try:
            warm = closed_loop(clock, logic, WARM_UP_FRAMES, 1)
            loop = closed_loop(clock, logic, args.loop_frames, warm["next"])
            worker = psutil.Process(logic.live.stream.worker.pid)
            worker_cpu = worker.cpu_times()
            before = logic.liveStatus()
            paced_frames = int(args.seconds / FRAME_SECONDS)
            main_thread.reset()
            steady = paced(clock, logic, paced_frames, loop["next"])
            after_cpu = worker.cpu_times()
            after = logic.liveStatus()
        finally:
            clock.close()
    finally:
        logic.stopLive()
        main_thread.close()
        slicer.mrmlScene.RemoveNode(output)
    segmented = after.segmented - before.segmented
    return {
        "paced": steady, "loop": loop, "ran_in": status.device.rpartition(" (")[2].rstrip(")"),
        "worker_cpu_ms": 1000 * ((after_cpu.user - worker_cpu.user) + (after_cpu.system - worker_cpu.system))
        / max(segmented, 1),
        "frame_in_ms": 1000 * main_thread.seconds["onFrame"] / max(after.received - before.received, 1),
        "apply_ms": 1000 * main_thread.seconds["apply"] / max(segmented, 1),
        "in_worker_ms": 1000 * float(np.median(main_thread.in_worker)) if main_thread.in_worker else float("nan"),
        "summary": after.summary(),
    }


def report(results: list, args) -> None:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\n2D U-Net (MONAI, 16-128, 2 residual units), 256×256 ultrasound frames, --threads {args.threads},"
          f" torch {torch.__version__}, {os.cpu_count()} CPUs, load average {load:.1f} at the end;"
          f" best of {args.repeats} interleaved runs (lowest paced p99 of each)")
    print("| device | precision (ran in) | format | Slicer live mode, paced 30 fps: p50 / p99, labels/s, dropped |"
          " live mode, closed loop: p50 / p99, frames/s | headless server, paced 30 fps: p50 / p99, replies/s,"
          " dropped | server, closed loop: p50 / p99, frames/s | network alone: p50 / p99 |"
          " CPU per frame: live worker / server | Slicer's main thread per frame: frame in / labels applied |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for live, server in results:
        lp, ll, sp, sl, network = live["paced"], live["loop"], server["paced"], server["loop"], server["network"]
        print(f"| {server['device']} | {server['precision']} ({live['ran_in']}) | {server['format']} |"
              f" {lp['p50']:.1f} / {lp['p99']:.1f} ms, {lp['rate']:.1f}, {lp['dropped']} |"
              f" {ll['p50']:.1f} / {ll['p99']:.1f} ms, {ll['rate']:.1f} |"
              f" {sp['p50']:.1f} / {sp['p99']:.1f} ms, {sp['rate']:.1f}, {sp['dropped']} |"
              f" {sl['p50']:.1f} / {sl['p99']:.1f} ms, {sl['rate']:.1f} |"
              f" {network['p50']:.1f} / {network['p99']:.1f} ms |"
              f" {live['worker_cpu_ms']:.1f} / {server['cpu_ms']:.1f} ms |"
              f" {live['frame_in_ms']:.2f} / {live['apply_ms']:.2f} ms |")
    for live, server in results:
        print(f"{server['device']}/{server['precision']}/{server['format']}: live mode closed-loop p50"
              f" {live['loop']['p50'] - server['loop']['p50']:+.1f} ms over the server's; paced: a frame's work in the"
              f" worker p50 {live['in_worker_ms']:.1f} ms, frames offered at {live['paced']['offered']:.1f}/s;"
              f" live mode: {live['summary']}")


def main() -> None:
    args, devices = benchmark_stream.parse_arguments(__doc__.split("\n\n")[0])
    with tempfile.TemporaryDirectory() as folder:
        boot(os.path.join(folder, "state"))
        from DeepSegment import DeepSegmentLogic

        from ModelRegistryLib import IndexSource, Registry

        index = benchmark_stream.write_models(folder)
        registry = Registry([IndexSource(index)], os.path.join(folder, "cache"))
        registry.refresh(offline=True)
        logic = DeepSegmentLogic(registry)
        browser, proxy = frame_sequence()
        configurations = [(device, precision, model_format) for device in devices for precision in args.precision
                          for model_format in args.format]
        best: dict = {}
        for _ in range(args.repeats):
            for configuration in configurations:
                device, precision, model_format = configuration
                model = f"unet2d-{model_format.replace('.', '-')}"
                live = run_live(logic, browser, proxy, model, device, precision, args)
                server = benchmark_stream.run_configuration(index, folder, device, precision, model_format, args)
                kept = best.get(configuration, (None, None))
                best[configuration] = (
                    live if kept[0] is None or live["paced"]["p99"] < kept[0]["paced"]["p99"] else kept[0],
                    server if kept[1] is None or server["paced"]["p99"] < kept[1]["paced"]["p99"] else kept[1],
                )
        logic.service.stop()
    report([best[configuration] for configuration in configurations], args)


if __name__ == "__main__":
    main()

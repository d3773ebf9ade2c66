"""Real ultrasound frames, a threshold 2D model and recording OpenIGTLink peers for the stream tests.

Frames come from the ultrasound cine of the ``pydicom-data`` package (``color3d_jpeg_baseline.dcm``:
SonoSite, 120 frames of 480×640 at 30 frames/s, 0.51 mm pixels by its ultrasound region): the imaged
region of each frame, as luminance, every ``step``-th pixel. The model labels pixels brighter than
``THRESHOLD`` exactly, so every reply can be checked pixel by pixel.

Peers are pyigtl's own client and server; each message they receive is recorded in arrival order (pyigtl
itself keeps only the newest message per device name).
"""

from __future__ import annotations

import functools
import json
import os
import threading
import time

import numpy as np
import pyigtl

from DeepSegmentLib.package import archive_package, write_package

CINE = "color3d_jpeg_baseline.dcm"
# Pixels above this value are labelled 1: the model's window [0, 61] maps it to 0.5 at 30.5, halfway
# between two integers, so no pixel sits on the decision boundary.
THRESHOLD = 30
MODEL_ID = "us-threshold-2d"
# Frames decoded once per test session (2 s of the cine; decoding them takes about as long).
DECODED = 60


def cine_path() -> str:
    import data_store

    return os.path.join(os.path.dirname(data_store.__file__), "data", CINE)


@functools.cache
def _cine() -> tuple:
    """The first ``DECODED`` frames' imaged region as uint8 luminance (n, rows, columns), and the pixel size in mm."""
    import pydicom
    from pydicom.pixels import iter_pixels

    header = pydicom.dcmread(cine_path(), stop_before_pixels=True)
    region = header.SequenceOfUltrasoundRegions[0]
    pixel_mm = float(region.PhysicalDeltaX) * 10.0  # physical units 3: centimetres
    rows = slice(int(region.RegionLocationMinY0), int(region.RegionLocationMaxY1) + 1)
    columns = slice(int(region.RegionLocationMinX0), int(region.RegionLocationMaxX1) + 1)
    frames = []
    for index, rgb in enumerate(iter_pixels(cine_path())):  # pydicom converts its YBR to RGB
        luminance = rgb[rows, columns, :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        frames.append(np.clip(np.round(luminance), 0, 255).astype(np.uint8))
        if index + 1 == DECODED:
            break
    return np.stack(frames), pixel_mm


def ultrasound_frames(count: int = 60, step: int = 4) -> tuple:
    """(frames (n, rows, columns) uint8, pixel spacing in mm) from the cine, every ``step``-th pixel."""
    frames, pixel_mm = _cine()
    assert count <= len(frames), f"the tests decode {DECODED} frames"
    return np.ascontiguousarray(frames[:count, ::step, ::step]), pixel_mm * step


def expected_labels(frame: np.ndarray) -> np.ndarray:
    return (frame > THRESHOLD).astype(np.uint8)


def threshold_2d_contract(patch=(64, 64), batch_size: int = 4) -> dict:
    return {
        "schemaVersion": 1, "format": "torch.export", "weights": "model.pt2", "dimensions": 2,
        "inputs": [{"name": "Ultrasound", "modality": "US"}],
        "preprocessing": {"spacing": None, "orientation": "native",
                          "normalization": [{"kind": "ct-window", "window": [0, 2 * THRESHOLD + 1]}]},
        "inference": {"patchSize": list(patch), "overlap": 0.25, "blending": "gaussian", "batchSize": batch_size,
                      "activation": "softmax", "outputChannels": 2},
        "postprocessing": {"mode": "argmax"},
        "labels": [{"value": 1, "name": "Echogenic", "color": "#f0e68c"}],
    }


def write_threshold_2d_model(folder: str, contract: dict | None = None) -> str:
    """Write the 2D threshold model into ``folder``/package, its zip and a one-model ``index.json``; returns
    the index's path (``MODEL_ID`` 1.0.0)."""
    import torch

    class Threshold(torch.nn.Module):
        def forward(self, image):
            return torch.cat([0.5 - image, image - 0.5], dim=1)

    package = os.path.join(folder, "package")
    write_package(package, Threshold(), contract or threshold_2d_contract())
    files = [archive_package(package, os.path.join(folder, f"{MODEL_ID}-1.0.0.zip"))]
    index = {"schemaVersion": 1, "models": [{
        "id": MODEL_ID, "title": "Ultrasound threshold (2D test model)", "task": "segmentation",
        "versions": [{"version": "1.0.0", "files": files}],
    }]}
    path = os.path.join(folder, "index.json")
    with open(path, "w", encoding="utf-8") as file:
        json.dump(index, file)
    return path


def tracked_matrix(index: int, spacing_mm: float, offset_mm: float = 0.0) -> np.ndarray:
    """IJK-to-world of frame ``index`` of a probe that turns 1.5° and moves 0.7 mm per frame (oblique axes)."""
    angle = np.radians(20 + 1.5 * index)
    axis = np.array([0.3, 0.8, 0.52]) / np.linalg.norm([0.3, 0.8, 0.52])
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rotation = np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross
    matrix = np.eye(4)
    matrix[:3, :3] = rotation @ np.diag([spacing_mm, spacing_mm, 1.0])
    matrix[:3, 3] = [offset_mm - 40 + 0.7 * index, 12.5, -80 + 0.2 * index]
    return matrix


def frame_message(frame: np.ndarray, index: int, spacing_mm: float, *, device: str = "Image_Reference",
                  first_timestamp: float = 1_700_000_000.0, offset_mm: float = 0.0,
                  coordinates: str = "lps", header_version: int = 1) -> pyigtl.ImageMessage:
    """Frame ``index`` as an IMAGE message of a tracked probe, stamped 1/30 s after the previous one."""
    message = pyigtl.ImageMessage(frame[None], ijk_to_world_matrix=tracked_matrix(index, spacing_mm, offset_mm),
                                  world_coordinate_system=coordinates, timestamp=first_timestamp + index / 30.0,
                                  device_name=device)
    message.header_version = header_version
    return message


def as_received(message: pyigtl.MessageBase) -> pyigtl.MessageBase:
    """``message`` as a receiver decodes it (through its bytes: the matrix in float32, the timestamp in the
    header's 64 bits)."""
    packed = message.pack()
    fields = pyigtl.MessageBase.parse_header(packed[:58])
    received = pyigtl.MessageBase.create_message(fields["message_type"])
    received.unpack(fields, packed[58:])
    return received


class Messages:
    """Messages in arrival order, with their arrival times, and waiting for a condition on them."""

    def __init__(self) -> None:
        self.items: list = []
        self.arrived: list = []
        self._changed = threading.Condition()

    def add(self, message) -> None:
        with self._changed:
            self.items.append(message)
            self.arrived.append(time.perf_counter())
            self._changed.notify_all()

    def wait_for(self, predicate, timeout: float = 60.0) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: predicate(self.items), timeout)


class _RecordingInbox(dict):
    """pyigtl's per-device inbox that also records every message it is given."""

    def __init__(self, messages: Messages) -> None:
        super().__init__()
        self.messages = messages

    def __setitem__(self, device, message) -> None:
        super().__setitem__(device, message)
        self.messages.add(message)


def recording_client(port: int) -> tuple:
    """A started pyigtl client of 127.0.0.1:``port`` and the Messages it receives."""
    messages = Messages()
    client = pyigtl.OpenIGTLinkClient(host="127.0.0.1", port=port, start_now=False)
    client.incoming_messages = _RecordingInbox(messages)
    client.start()
    return client, messages


def recording_server(port: int) -> tuple:
    """A started pyigtl server on 127.0.0.1:``port`` and the Messages it receives; stop it with ``stop_server``.

    pyigtl's server replaces the SIGINT and SIGTERM handlers: they are put back by ``stop_server``.
    """
    import signal

    handlers = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    messages = Messages()
    server = pyigtl.OpenIGTLinkServer(port=port, local_server=True, start_now=False)
    server.incoming_messages = _RecordingInbox(messages)
    server.saved_signal_handlers = handlers
    server.start()
    return server, messages


def stop_server(server) -> None:
    import signal

    server.stop()
    for number, handler in server.saved_signal_handlers.items():
        signal.signal(number, handler)


class LogLines:
    """A server's log lines, waited for by content."""

    def __init__(self) -> None:
        self.lines: list = []
        self._changed = threading.Condition()

    def __call__(self, line: str) -> None:
        with self._changed:
            self.lines.append(line)
            self._changed.notify_all()

    def wait_for(self, text: str, timeout: float = 30.0) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: any(text in line for line in self.lines), timeout)

"""DeepSegmentLib.stream: real ultrasound frames streamed at 30 frames/s over OpenIGTLink on 127.0.0.1.

The peers are pyigtl's own client and server. Frames come from pydicom-data's ultrasound cine, each with
the pose of a moving tracked probe; the model labels pixels above a threshold, so every reply is checked
whole: device name, timestamp (the same 64 bits), geometry, labels and order.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pyigtl
import pytest
from fault_injection import interruptible_children
from stream_test_support import (
    MODEL_ID,
    LogLines,
    as_received,
    expected_labels,
    frame_message,
    recording_client,
    recording_server,
    stop_server,
    ultrasound_frames,
    write_threshold_2d_model,
)

from DeepSegmentLib.cli import main
from DeepSegmentLib.frames import FrameSegmenter
from DeepSegmentLib.package import load_network, load_package
from DeepSegmentLib.stream import MAX_BODY_BYTES, StreamServer, bind_listener

MODULE_FOLDER = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FRAME_SECONDS = 1 / 30


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> tuple:
    """(index path, package) of the ultrasound threshold model."""
    folder = tmp_path_factory.mktemp("us-threshold-2d")
    index = write_threshold_2d_model(str(folder))
    return index, load_package(str(folder / "package"))


class SlowNetwork:
    """The threshold network taking ``seconds`` per call: a model slower than the stream."""

    def __init__(self, network, seconds: float) -> None:
        self.network, self.seconds = network, seconds

    def __call__(self, windows):
        time.sleep(self.seconds)
        return self.network(windows)


class GatedNetwork:
    """The threshold network that holds each call until ``gate`` is set, and sets ``busy`` when called."""

    def __init__(self, network) -> None:
        self.network = network
        self.busy, self.gate = threading.Event(), threading.Event()
        self.gate.set()

    def __call__(self, windows):
        self.busy.set()
        assert self.gate.wait(120), "the test never opened the gate"
        return self.network(windows)


@contextlib.contextmanager
def stream_server(package, network=None, *, listen: bool = True, report_seconds: float = 0.0):
    """A started StreamServer (listening on a free port unless ``listen`` is False), its port and its log."""
    log = LogLines()
    segmenter = FrameSegmenter(package, network, device="cpu", quality="fast")
    segmenter.warm_up()
    server = StreamServer(segmenter, log=log, report_seconds=report_seconds)
    with server:
        port = server.listen(bind_listener("127.0.0.1", 0))[1] if listen else None
        yield server, port, log


def stream_frames(peer, frames, spacing, start: int = 0, **message_options) -> list:
    """Send ``frames`` from ``start`` on through ``peer`` (a pyigtl client or server) at 30 frames/s; returns
    the messages."""
    sent = []
    began = time.perf_counter()
    for index in range(start, len(frames)):
        message = frame_message(frames[index], index, spacing, **message_options)
        delay = began + (index - start) * FRAME_SECONDS - time.perf_counter()
        if delay > 0:
            time.sleep(delay)  # the pace of a scanner, not a wait for a result
        peer.send_message(message, wait=False)
        sent.append(message)
    return sent


def wait_for_reply_to(messages, sent_message, timeout: float = 120.0) -> None:
    timestamp = as_received(sent_message).timestamp
    assert messages.wait_for(lambda items: any(m.timestamp == timestamp for m in items), timeout), (
        f"no reply to the frame stamped {timestamp} in {timeout} s")


def check_replies(replies, sent: list, frames, device: str = "Image_Reference_Segm") -> list:
    """Every reply answers one sent frame, exactly, in sending order; returns the answered frame indices."""
    sent_by_timestamp = {as_received(message).timestamp: index for index, message in enumerate(sent)}
    answered = []
    for reply in replies:
        assert reply.message_type == "IMAGE" and reply.device_name == device
        index = sent_by_timestamp[reply.timestamp]  # a reply to another client's frame fails here
        received = as_received(sent[index])
        np.testing.assert_array_equal(reply.ijk_to_world_matrix, received.ijk_to_world_matrix)
        assert reply.world_coordinate_system == received.world_coordinate_system
        assert reply.image.dtype == np.uint8 and reply.image.shape == (1, *frames[index].shape)
        np.testing.assert_array_equal(reply.image[0], expected_labels(frames[index]))
        answered.append(index)
    assert answered == sorted(set(answered)), "replies out of order or repeated"
    return answered


def check_accounting(statistics, frames_sent: int) -> None:
    assert statistics.received == frames_sent
    assert statistics.segmented + statistics.dropped + statistics.rejected == statistics.received


def test_a_client_gets_each_frame_segmented_with_its_geometry_and_timestamp(model):
    _, package = model
    frames, spacing = ultrasound_frames(45)
    with stream_server(package) as (server, port, log):
        client, replies = recording_client(port)
        try:
            sent = stream_frames(client, frames, spacing, header_version=2)
            wait_for_reply_to(replies, sent[-1])
        finally:
            client.stop()
    statistics = server.statistics()  # final once stopped: a reply is counted after its last byte is sent
    answered = check_replies(replies.items, sent, frames)
    assert answered[-1] == len(frames) - 1
    # A header holds 20 bytes of device name; version 2 headers carry the whole name as OpenIGTLinkIO reads it.
    assert {reply.metadata["IGTL_DEVICE_NAME"] for reply in replies.items} == {"Image_Reference_Segmentation"}
    check_accounting(statistics, len(frames))
    assert statistics.replies == statistics.segmented == len(replies.items)
    assert statistics.latency_p50_ms > 0 and statistics.latency_p99_ms >= statistics.latency_p50_ms
    assert log.wait_for("disconnected (45 frames, ")


class ThreadRecordingNetwork:
    """The threshold network, recording the threads that call it."""

    def __init__(self, network) -> None:
        self.network, self.threads = network, set()

    def __call__(self, windows):
        self.threads.add(threading.current_thread())
        return self.network(windows)


def test_serve_runs_the_network_on_the_calling_thread_until_asked_to_stop(model):
    """What the command line does (on its main thread, which loaded the network): no inference thread of its own."""
    _, package = model
    network = ThreadRecordingNetwork(load_network(package, "cpu"))
    segmenter = FrameSegmenter(package, network, device="cpu", quality="fast")
    serving = threading.Thread(target=lambda: server.serve(), name="the caller")
    server = StreamServer(segmenter, log=LogLines(), report_seconds=0).start(inference_thread=False)
    frames, spacing = ultrasound_frames(6)
    try:
        port = server.listen(bind_listener("127.0.0.1", 0))[1]
        serving.start()
        client, replies = recording_client(port)
        try:
            sent = stream_frames(client, frames, spacing)
            wait_for_reply_to(replies, sent[-1])
        finally:
            client.stop()
        assert network.threads == {serving}
        server.request_stop()
        serving.join(10)
        assert not serving.is_alive(), "serve() did not return after request_stop()"
    finally:
        statistics = server.stop()
    check_replies(replies.items, sent, frames)
    assert statistics.segmented == len(replies.items) > 0


def test_a_model_slower_than_the_stream_drops_stale_frames(model):
    _, package = model
    frames, spacing = ultrasound_frames(60)
    slow = SlowNetwork(load_network(package, "cpu"), 0.1)  # 2 batches of windows: at least 0.2 s per frame
    with stream_server(package, slow, report_seconds=0.5) as (server, port, log):
        client, replies = recording_client(port)
        try:
            sent = stream_frames(client, frames, spacing, device="Probe")
            wait_for_reply_to(replies, sent[-1])  # the newest frame is always answered
            assert log.wait_for("dropped as stale")  # in the periodic report
        finally:
            client.stop()
    statistics = server.statistics()
    answered = check_replies(replies.items, sent, frames, device="Probe_Segmentation")
    check_accounting(statistics, len(frames))
    assert statistics.dropped > 0 and len(answered) < len(frames) and answered[-1] == len(frames) - 1


def test_no_backlog_builds_up_behind_a_busy_model(model):
    """While the network is busy with frame 0, frames 1 to 29 arrive: only the newest, 29, is segmented next."""
    _, package = model
    frames, spacing = ultrasound_frames(30)
    network = GatedNetwork(load_network(package, "cpu"))
    with stream_server(package, network) as (server, port, _):
        client, replies = recording_client(port)
        try:
            network.busy.clear()  # the warm-up went through
            network.gate.clear()
            sent = [frame_message(frames[0], 0, spacing, device="Probe")]
            client.send_message(sent[0], wait=False)
            assert network.busy.wait(60), "frame 0 never reached the network"
            sent += stream_frames(client, frames, spacing, start=1, device="Probe")
            # Frames 2 to 29 each replaced the one waiting before it.
            assert _wait(lambda: server.statistics().dropped == len(frames) - 2)
            network.gate.set()
            wait_for_reply_to(replies, sent[-1])
        finally:
            network.gate.set()
            client.stop()
    statistics = server.statistics()
    assert check_replies(replies.items, sent, frames, device="Probe_Segmentation") == [0, len(frames) - 1]
    check_accounting(statistics, len(frames))
    assert (statistics.segmented, statistics.dropped) == (2, len(frames) - 2)


def test_several_clients_each_get_their_own_replies(model):
    _, package = model
    frames, spacing = ultrasound_frames(30)
    with stream_server(package) as (server, port, _):
        peers = [recording_client(port) for _ in range(3)]
        sent = [None] * len(peers)

        def run(number: int) -> None:
            # One device name for all: replies are told apart by their connection only.
            sent[number] = stream_frames(peers[number][0], frames, spacing, device="Probe",
                                         first_timestamp=1_700_000_000.0 + 1000 * number, offset_mm=100.0 * number)

        threads = [threading.Thread(target=run, args=(number,)) for number in range(len(peers))]
        try:
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            for (_, replies), messages in zip(peers, sent):
                wait_for_reply_to(replies, messages[-1])
            assert server.statistics().clients == len(peers)
        finally:
            for client, _ in peers:
                client.stop()
    statistics = server.statistics()
    for (_, replies), messages in zip(peers, sent):
        assert check_replies(replies.items, messages, frames, device="Probe_Segmentation")[-1] == len(frames) - 1
    check_accounting(statistics, len(peers) * len(frames))


def test_a_client_that_stops_reading_does_not_stall_the_others(model):
    _, package = model
    large, large_spacing = ultrasound_frames(20, step=1)  # 384×512: 197 kB replies soon fill its buffers
    frames, spacing = ultrasound_frames(30)
    with stream_server(package) as (server, port, _):
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect(("127.0.0.1", port))
        stop = threading.Event()

        def send_without_reading() -> None:
            index = 0
            while not stop.is_set():
                with contextlib.suppress(OSError):
                    stalled.sendall(frame_message(large[index % len(large)], index, large_spacing,
                                                  device="Stalled").pack())
                index += 1
                stop.wait(FRAME_SECONDS)

        sender = threading.Thread(target=send_without_reading)
        sender.start()
        client, replies = recording_client(port)
        try:
            sent = stream_frames(client, frames, spacing, device="Probe")
            wait_for_reply_to(replies, sent[-1])
            # Replies to the stalled client wait for it, the newest only: the older ones are dropped.
            assert _wait(lambda: server.statistics().replies_dropped > 0)
        finally:
            stop.set()
            sender.join()
            client.stop()
            stalled.close()
    assert check_replies(replies.items, sent, frames, device="Probe_Segmentation")[-1] == len(frames) - 1


def _wait(condition, timeout: float = 60.0) -> bool:
    """Poll a condition on the server's counters, which have no event of their own."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture
def upstream():
    """A pyigtl OpenIGTLink server on a free port of 127.0.0.1 (as PLUS would be), and what it receives."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server, messages = recording_server(port)
    yield server, port, messages
    stop_server(server)


def test_connecting_out_to_a_server_sends_the_replies_back_to_it(model, upstream):
    _, package = model
    peer, upstream_port, replies = upstream
    frames, spacing = ultrasound_frames(30)
    with stream_server(package, listen=False) as (server, _, log):
        server.connect("127.0.0.1", upstream_port)
        assert log.wait_for(f"server 127.0.0.1:{upstream_port} connected")
        sent = stream_frames(peer, frames, spacing, coordinates="ras")
        wait_for_reply_to(replies, sent[-1])
    statistics = server.statistics()
    assert check_replies(replies.items, sent, frames)[-1] == len(frames) - 1
    check_accounting(statistics, len(frames))


def test_with_listen_too_the_upstreams_frames_are_relayed_to_the_listening_clients(model, upstream):
    _, package = model
    peer, upstream_port, upstream_received = upstream
    frames, spacing = ultrasound_frames(20)
    with stream_server(package) as (server, port, log):
        viewer, replies = recording_client(port)
        try:
            assert log.wait_for("client 127.0.0.1:")
            server.connect("127.0.0.1", upstream_port, relay=True)
            assert log.wait_for(f"server 127.0.0.1:{upstream_port} connected")
            sent = stream_frames(peer, frames, spacing)
            wait_for_reply_to(replies, sent[-1])
        finally:
            viewer.stop()
    assert check_replies(replies.items, sent, frames)[-1] == len(frames) - 1
    assert upstream_received.items == []  # PLUS ignores IMAGE messages from its clients


def test_frames_the_model_cannot_take_are_skipped_with_one_line(model):
    _, package = model
    frames, spacing = ultrasound_frames(1)
    with stream_server(package) as (server, port, log):
        client, replies = recording_client(port)
        try:
            client.send_message(pyigtl.StringMessage("hello", device_name="Text"), wait=False)
            for _ in range(3):  # logged once
                client.send_message(pyigtl.ImageMessage(np.zeros((1, 20, 30, 3), np.uint8), device_name="Color"),
                                    wait=False)
            gray = frame_message(frames[0], 0, spacing, device="Probe")
            client.send_message(gray, wait=False)
            wait_for_reply_to(replies, gray)
        finally:
            client.stop()
    statistics = server.statistics()
    assert [reply.device_name for reply in replies.items] == ["Probe_Segmentation"]
    problems = [line for line in log.lines if "Color" in line]
    assert len(problems) == 1 and "3 components per pixel (color 1×20×30); the model takes 1" in problems[0]
    assert (statistics.received, statistics.ignored, statistics.segmented) == (4, 1, 1)
    assert statistics.rejected >= 1 and statistics.rejected + statistics.dropped == 3  # stale ones never reach it


def _receive_message(sock: socket.socket) -> tuple:
    """(header, body) of the next message on ``sock``."""
    def receive(size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = sock.recv(size - len(data))
            assert chunk, "connection closed"
            data += chunk
        return data

    header = receive(58)
    return header, receive(int.from_bytes(header[42:50], "big"))


def _geometry(body: bytes, header_version: int) -> bytes:
    content = int.from_bytes(body[:2], "big") if header_version > 1 else 0
    return body[content + 12 : content + 60]


@pytest.mark.parametrize("header_version", [1, 2])
def test_the_frames_geometry_and_timestamp_bytes_come_back_unchanged(model, header_version):
    """A sender that writes its own centre (as OpenIGTLink's C++ library does) gets exactly its 12 float32 values
    back, not values recomputed from an origin; every reply carries a valid CRC-64."""
    from pyigtl.messages import CRC64

    _, package = model
    frames, spacing = ultrasound_frames(3)
    rng = np.random.default_rng(header_version)
    with stream_server(package) as (_, port, _), socket.create_connection(("127.0.0.1", port)) as sock:
        for index, frame in enumerate(frames):
            message = bytearray(frame_message(frame, index, spacing, header_version=header_version).pack())
            axes = np.linalg.qr(rng.normal(size=(3, 3)))[0] * spacing
            centre = rng.normal(size=3) * 0.01  # near the world origin, far from the image's corner
            content = 58 + (12 if header_version > 1 else 0)
            message[content + 12 : content + 60] = np.concatenate([axes.T.ravel(), centre]).astype(">f4").tobytes()
            message[50:58] = CRC64(bytes(message[58:])).to_bytes(8, "big")
            sock.sendall(bytes(message))
            header, body = _receive_message(sock)
            assert header[34:42] == message[34:42]  # the timestamp
            assert _geometry(body, header_version) == _geometry(bytes(message[58:]), header_version)
            assert int.from_bytes(header[50:58], "big") == CRC64(body)
            assert int.from_bytes(header[:2], "big") == header_version


def test_a_message_over_the_size_limit_closes_the_connection(model):
    _, package = model
    with stream_server(package) as (_, port, log), socket.create_connection(("127.0.0.1", port)) as sock:
        header = bytearray(pyigtl.ImageMessage(np.zeros((1, 2, 2), np.uint8), device_name="Huge").pack()[:58])
        header[42:50] = (MAX_BODY_BYTES + 1).to_bytes(8, "big")
        sock.sendall(bytes(header))
        assert sock.recv(1) == b""  # closed by the server
        assert log.wait_for("over the 256 MiB limit; closing the connection")


# -- the command line ---------------------------------------------------------------------------------------


def _stderr_lines(process) -> queue.Queue:
    lines: queue.Queue = queue.Queue()

    def read() -> None:
        for line in process.stderr:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    return lines


def _next_line_matching(lines: queue.Queue, pattern: str, seen: list, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
        if line is None:
            break
        seen.append(line)
        match = re.search(pattern, line)
        if match:
            return match
    raise AssertionError(f"no line matching {pattern!r}; stderr so far:\n" + "\n".join(seen))


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_the_command_serves_until_stopped_by_a_signal(model, tmp_path, stop_signal):
    index, _ = model
    with interruptible_children():
        process = subprocess.Popen(
            [sys.executable, "-m", "DeepSegmentLib", "stream", "--model", MODEL_ID, "--listen", "0", "--device",
             "cpu", "--threads", "1", "--report-interval", "0.5", "--index", index, "--cache-dir",
             str(tmp_path / "cache")],
            cwd=MODULE_FOLDER, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
        )
    seen: list = []
    try:
        lines = _stderr_lines(process)
        _next_line_matching(lines, f"{MODEL_ID} ready on CPU", seen)
        port = int(_next_line_matching(lines, r"listening on 127\.0\.0\.1:(\d+)", seen).group(1))
        frames, spacing = ultrasound_frames(15)
        client, replies = recording_client(port)
        try:
            sent = stream_frames(client, frames, spacing)
            wait_for_reply_to(replies, sent[-1])
            _next_line_matching(lines, r"^[\d.]+ frames/s over .* 1 connected$", seen)  # the periodic report
        finally:
            client.stop()
        process.send_signal(stop_signal)
        assert process.wait(timeout=60) == 0
        summary = _next_line_matching(lines, "^stopped: ", seen).string
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert check_replies(replies.items, sent, frames)[-1] == len(frames) - 1
    assert "15 frames received" in summary and "latency p50" in summary, summary


def test_command_failures_are_one_line(model, tmp_path, capsys):
    index, _ = model
    from DeepSegment import writeThresholdTestModel

    volume_index = writeThresholdTestModel(str(tmp_path / "3d"))
    with socket.create_server(("127.0.0.1", 0)) as busy:
        busy_port = busy.getsockname()[1]
        for arguments, reason in [
            ([], "stream needs --listen PORT, --connect HOST:PORT or both"),
            (["--listen", "70000"], "--listen takes [HOST:]PORT with a port from 0 to 65535, not '70000'"),
            (["--connect", "18944"], "--connect takes HOST:PORT"),
            (["--listen", "0", "--threads", "0"], "--threads 1 or more"),
            (["--listen", str(busy_port)], f"Port {busy_port} on 127.0.0.1 is in use by another program"),
            (["--listen", "0", "--model", "no-such-model"], "none of the registry indexes"),
            (["--listen", "0", "--model", "threshold-test", "--index", volume_index],
             "3D model (dimensions 3): frames need a 2D model"),
        ]:
            model_arguments = [] if "--model" in arguments else ["--model", MODEL_ID]
            code = main(["stream", *model_arguments, *arguments, "--index", index, "--device", "cpu",
                         "--cache-dir", str(tmp_path / "cache")])
            error = capsys.readouterr().err.strip().splitlines()[-1]
            assert code == 1 and error.startswith("error: ") and reason in error, (arguments, error)

"""Live segmentation of image streams over OpenIGTLink: frames in, label maps back on the same connection.

A :class:`StreamServer` takes OpenIGTLink IMAGE messages from clients that connect to it (``listen``) or
from a server it connects to (``connect``, e.g. PLUS), segments each frame with a :class:`FrameSegmenter`
and sends the label map back as an IMAGE message with the frame's geometry (the same 12 float32 numbers of
axes and centre, and coordinate system), its timestamp (the same 64 bits) and a device name made from the
frame's (``{device}_Segmentation`` by default).

**Newest frame first.** Each connection keeps at most one waiting frame per device name: a frame that
arrives before its predecessor was taken replaces it (counted as dropped), so a model slower than the
stream never builds a queue and every reply is for the newest frame available when the network became
free. One inference thread serves all connections, taking the frame that has waited longest; replies
go out through one writer thread per connection whose only buffer is the newest unsent reply per
device, so a client that stops reading gets fewer replies but never stalls the others.

**Threads and the GIL.** Socket reads and writes run in their own threads and spend their time in
``recv``/``sendall``, which release the GIL, as do PyTorch's kernels in the inference thread: reading a
256×256 frame's message (0.15 ms of CPU) and packing its reply with the CRC-64 (0.4 ms) are the only work
beside the inference. Messages are framed here (58-byte header, then the body) and decoded and encoded by
``pyigtl``'s message classes; its ``OpenIGTLinkServer`` is not used, as it serves one client at a time,
keeps one inbox for all clients and polls every 10 ms.

**What receivers do with replies.** Slicer's OpenIGTLinkIF (through OpenIGTLinkIO) puts an IMAGE into
the volume node named as the device (creating a scalar volume, or updating an existing node of that name:
create a label map volume node of that name first to see the labels as such), and takes the name from the
``IGTL_DEVICE_NAME`` metadata when present. A header holds 20 bytes of device name, so a longer name is
cut to 20 bytes there and, in version 2 headers, sent whole in that metadata, as PLUS does for its long
transform names. PLUS names image streams ``<Image>_<Frame>`` (``Image_Reference``) and ignores IMAGE
messages from its clients, so with PLUS run ``--connect`` together with ``--listen``: frames come from
PLUS and the label maps go to the clients connected to this server (Slicer), as aigt's live scripts do.

Example::

    >>> reply_device_name("{device}_Segmentation", "Image_Reference")
    ('Image_Reference_Segm', 'Image_Reference_Segmentation')
    >>> histogram = LatencyHistogram()
    >>> for milliseconds in range(1, 101):
    ...     histogram.add(milliseconds / 1000)
    >>> round(histogram.percentile(50) * 1000), round(histogram.percentile(99) * 1000)
    (50, 99)
"""

from __future__ import annotations

import contextlib
import errno
import functools
import math
import socket
import struct
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .engine import EngineError
from .frames import FrameError, FrameSegmenter

HEADER_BYTES = 58
DEVICE_NAME_BYTES = 20
# Bytes 34 to 41 of a header hold the timestamp (seconds and fraction), echoed unchanged in replies.
_TIMESTAMP_BYTES = slice(34, 42)
# Bytes 12 to 59 of an IMAGE message's content hold its axes and centre (12 float32), echoed unchanged.
_GEOMETRY_BYTES = slice(12, 60)
DEFAULT_OUTPUT_DEVICE = "{device}_Segmentation"
DEVICE_NAME_METADATA_KEY = "IGTL_DEVICE_NAME"
# A message body above this closes the connection: frames are megabytes at most.
MAX_BODY_BYTES = 256 * 1024 * 1024
MAX_CLIENTS = 32
MAX_DEVICES_PER_CONNECTION = 16
DEFAULT_REPORT_SECONDS = 5.0
# How often an idle inference loop looks whether it was asked to stop.
STOP_CHECK_SECONDS = 0.25
RECONNECT_SECONDS = 1.0
# Distinct problems logged per connection (each once); more are counted, not logged.
_PROBLEMS_LOGGED = 32
_LPS_FROM_RAS_4 = np.diag([-1.0, -1.0, 1.0, 1.0])


class StreamError(Exception):
    """The stream server cannot start as asked (port in use, bad address); the message says why."""


# ------------------------------------------------------------------------------------------------- names


def _cut_utf8(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes, never inside a character."""
    return text.encode("utf-8")[:limit].decode("utf-8", errors="ignore")


def reply_device_name(template: str, device: str) -> tuple:
    """(header name, full name) of the reply to frames of ``device``: ``template`` with ``{device}`` replaced,
    and the same cut to the header's 20 bytes."""
    full = template.replace("{device}", device)
    return _cut_utf8(full, DEVICE_NAME_BYTES), full


def parse_address(text: str, default_host: str | None, option: str) -> tuple:
    """``PORT`` or ``HOST:PORT`` as (host, port); ``default_host`` None makes the host required."""
    host, separator, port_text = text.rpartition(":")
    if not separator:
        host = default_host
    usage = f"{option} takes {'[HOST:]PORT' if default_host is not None else 'HOST:PORT'}"
    if not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"{usage} with a port from 0 to 65535, not {text!r}")
    return host.strip("[]"), int(port_text)


# ------------------------------------------------------------------------------------------------ timing


class LatencyHistogram:
    """Latencies in logarithmic buckets 1% apart: percentiles within 1% in constant memory, however long
    the stream runs."""

    _SMALLEST = 1e-5  # seconds
    _RATIO = math.log(1.01)

    def __init__(self) -> None:
        self._counts: Counter = Counter()
        self.count = 0

    def add(self, seconds: float) -> None:
        self._counts[max(0, math.ceil(math.log(max(seconds, self._SMALLEST) / self._SMALLEST) / self._RATIO))] += 1
        self.count += 1

    def percentile(self, percent: float) -> float:
        """The ``percent``-th percentile in seconds (the upper edge of its bucket), 0 when empty."""
        if not self.count:
            return 0.0
        rank = max(1, math.ceil(percent / 100.0 * self.count))
        seen = 0
        for bucket in sorted(self._counts):
            seen += self._counts[bucket]
            if seen >= rank:
                return self._SMALLEST * math.exp(bucket * self._RATIO)
        return 0.0  # pragma: no cover - the counts add up to count


@dataclass
class StreamStatistics:
    """What a stream server did: IMAGE frames ``received``, ``segmented``, ``dropped`` (stale: a newer frame of
    the device came first), ``rejected`` (the model cannot take them, or segmenting failed); label maps
    ``replies`` sent and ``replies_dropped`` (a newer one replaced them before a slow client read them);
    other messages ``ignored``; ``seconds`` the rates are over; latency from a frame's last byte received to
    its reply's last byte sent."""

    clients: int = 0
    received: int = 0
    segmented: int = 0
    dropped: int = 0
    rejected: int = 0
    replies: int = 0
    replies_dropped: int = 0
    ignored: int = 0
    seconds: float = 0.0
    latency_p50_ms: float = 0.0
    latency_p99_ms: float = 0.0

    @property
    def frames_per_second(self) -> float:
        return self.segmented / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        """One line for the log."""
        return (f"{self.frames_per_second:.1f} frames/s over {self.seconds:.1f} s, latency p50"
                f" {self.latency_p50_ms:.1f} ms, p99 {self.latency_p99_ms:.1f} ms; {self.received} frames received,"
                f" {self.segmented} segmented, {self.dropped} dropped as stale, {self.rejected} rejected;"
                f" {self.replies} replies sent, {self.replies_dropped} dropped for slow clients")


class _Tally:
    """Counters and latencies over one period (the whole run, or since the last report), and when its first
    frame arrived and its last reply left."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.counts: Counter = Counter()
        self.latency = LatencyHistogram()
        self.first_frame = self.last_reply = None

    def statistics(self, clients: int, until: float | None = None) -> StreamStatistics:
        """Rates over the period up to ``until``, or (None) from its first frame to its last reply."""
        if until is not None:
            seconds = until - self.started
        else:
            seconds = self.last_reply - self.first_frame if self.last_reply and self.first_frame else 0.0
        return StreamStatistics(
            clients=clients, seconds=seconds, latency_p50_ms=self.latency.percentile(50) * 1000,
            latency_p99_ms=self.latency.percentile(99) * 1000,
            **{name: self.counts[name] for name in ("received", "segmented", "dropped", "rejected", "replies",
                                                    "replies_dropped", "ignored")},
        )


# ---------------------------------------------------------------------------------------------- messages


@dataclass
class Frame:
    """One IMAGE message as received: pixels in (k, j, i[, c]) order, the 4×4 IJK-to-world matrix of its
    ``coordinates`` (``"ras"`` or ``"lps"``; and the message's 48 bytes of axes and centre), timestamp
    (seconds, and the 8 header bytes), header version, and when its last byte arrived (``time.perf_counter``)."""

    connection: _Connection
    device: str
    pixels: np.ndarray
    ijk_to_world: np.ndarray
    geometry_bytes: bytes
    coordinates: str
    timestamp: float
    timestamp_bytes: bytes
    header_version: int
    received_at: float

    @property
    def ijk_to_ras(self) -> np.ndarray:
        return self.ijk_to_world if self.coordinates == "ras" else _LPS_FROM_RAS_4 @ self.ijk_to_world


def _receive_exactly(sock: socket.socket, size: int) -> bytearray | None:
    """``size`` bytes from ``sock``, or None when the peer closed the connection first."""
    buffer = bytearray(size)
    view = memoryview(buffer)
    while view:
        received = sock.recv_into(view)
        if not received:
            return None
        view = view[received:]
    return buffer


@functools.cache
def _reply_class():
    import pyigtl

    class ReplyImage(pyigtl.ImageMessage):
        """An IMAGE message whose axes and centre are the 48 bytes of the frame it answers: exactly its float32
        values, where pyigtl would recompute the centre from an origin (off by an ulp for some senders)."""

        geometry = b""

        def _pack_content(self) -> bytes:
            content = super()._pack_content()
            return content[:_GEOMETRY_BYTES.start] + self.geometry + content[_GEOMETRY_BYTES.stop :]

    return ReplyImage


def pack_reply(frame: Frame, labels: np.ndarray, template: str = DEFAULT_OUTPUT_DEVICE) -> bytes:
    """The IMAGE message answering ``frame`` with ``labels`` (its (k, j, i) shape): the frame's geometry bytes
    and coordinate system, timestamp bytes and header version (2 at most), and the device name of ``template``."""
    short_name, full_name = reply_device_name(template, frame.device)
    message = _reply_class()(labels, ijk_to_world_matrix=frame.ijk_to_world,
                             world_coordinate_system=frame.coordinates, timestamp=frame.timestamp,
                             device_name=short_name)
    message.geometry = frame.geometry_bytes
    message.header_version = min(2, max(1, frame.header_version))
    if message.header_version > 1 and short_name != full_name:
        message.metadata[DEVICE_NAME_METADATA_KEY] = full_name
    packed = bytearray(message.pack())
    packed[_TIMESTAMP_BYTES] = frame.timestamp_bytes  # exactly the frame's, not a float's round trip
    return bytes(packed)


# ------------------------------------------------------------------------------------------- connections


class _Connection:
    """One socket: a reader thread feeding the server, a writer thread sending the newest replies."""

    def __init__(self, server: StreamServer, sock: socket.socket, name: str, upstream: bool) -> None:
        self.server, self.sock, self.name, self.upstream = server, sock, name, upstream
        self.closed = threading.Event()
        self.devices: set = set()
        self.reported: set = set()  # problems already logged for this connection, logged once each
        self.counts: Counter = Counter()
        self._outbox: OrderedDict = OrderedDict()  # reply device → (frame, labels), newest only
        self._outbox_ready = threading.Condition()
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # replies are sent whole, at once
        sock.settimeout(None)
        self._reader = threading.Thread(target=self._read_loop, name=f"stream reader {name}", daemon=True)
        self._writer = threading.Thread(target=self._write_loop, name=f"stream writer {name}", daemon=True)

    def start(self) -> None:
        self._reader.start()
        self._writer.start()

    def report_once(self, problem: str) -> None:
        if problem not in self.reported and len(self.reported) < _PROBLEMS_LOGGED:
            self.reported.add(problem)
            self.server.log(f"{self.name}: {problem}")

    # -- reading

    def _read_loop(self) -> None:
        import pyigtl

        try:
            while not self.closed.is_set():
                header = _receive_exactly(self.sock, HEADER_BYTES)
                if header is None:
                    break
                fields = pyigtl.MessageBase.parse_header(bytes(header))
                size = int(fields["body_size"])
                if size > MAX_BODY_BYTES:
                    self.server.log(f"{self.name}: a {fields['message_type']} message of {size} bytes is over the"
                                    f" {MAX_BODY_BYTES // 2**20} MiB limit; closing the connection")
                    break
                body = _receive_exactly(self.sock, size)
                if body is None:
                    break
                received_at = time.perf_counter()
                if fields["message_type"] != "IMAGE":
                    self.server.count("ignored")
                    continue
                frame = self._frame(fields, bytes(body), bytes(header[_TIMESTAMP_BYTES]), received_at)
                if frame is not None:
                    self.server.submit(frame)
        except (OSError, UnicodeDecodeError, ValueError) as error:
            if not self.closed.is_set():
                self.server.log(f"{self.name}: connection failed ({error})")
        finally:
            self.close()

    def _frame(self, fields: dict, body: bytes, timestamp_bytes: bytes, received_at: float) -> Frame | None:
        import pyigtl

        device = fields["device_name"]
        self.server.count("received")
        self.counts["received"] += 1
        message = pyigtl.ImageMessage()
        try:
            message.unpack(fields, body)
        except (KeyError, ValueError, NotImplementedError, IndexError, struct.error) as error:
            problem = {KeyError: f"unsupported pixel type {error}", NotImplementedError: "sub-volumes"}.get(
                type(error), str(error))
            self.reject(f"IMAGE '{device}' cannot be read ({problem}); its frames are skipped")
            return None
        if device not in self.devices and len(self.devices) >= MAX_DEVICES_PER_CONNECTION:
            self.reject(f"more than {MAX_DEVICES_PER_CONNECTION} devices on one connection; '{device}' is"
                                " skipped")
            return None
        self.devices.add(device)
        content = int.from_bytes(body[:2], "big") if message.header_version > 1 else 0  # after the extended header
        geometry = body[content + _GEOMETRY_BYTES.start : content + _GEOMETRY_BYTES.stop]
        return Frame(self, device, message.image, np.asarray(message.ijk_to_world_matrix, dtype=float), geometry,
                     message.world_coordinate_system, float(fields["timestamp"]), timestamp_bytes,
                     int(fields["header_version"]), received_at)

    def reject(self, problem: str) -> None:
        """Count a frame that is not segmented, and log why (once per problem)."""
        self.server.count("rejected")
        self.counts["rejected"] += 1
        self.report_once(problem)

    # -- writing

    def deliver(self, frame: Frame, labels: np.ndarray) -> None:
        """Queue the reply to ``frame``, replacing an unsent older reply of the same device."""
        with self._outbox_ready:
            if self.closed.is_set():
                return
            if frame.device in self._outbox:
                self.server.count("replies_dropped")
            self._outbox[frame.device] = (frame, labels)
            self._outbox_ready.notify()

    def _write_loop(self) -> None:
        try:
            while True:
                with self._outbox_ready:
                    while not self._outbox and not self.closed.is_set():
                        self._outbox_ready.wait()
                    if self.closed.is_set():
                        return
                    frame, labels = self._outbox.popitem(last=False)[1]
                self.sock.sendall(pack_reply(frame, labels, self.server.output_device))
                self.counts["replies"] += 1
                self.server.replied(frame)
        except OSError as error:
            if not self.closed.is_set():
                self.server.log(f"{self.name}: sending failed ({error})")
        finally:
            self.close()

    def close(self) -> None:
        with self._outbox_ready:
            if self.closed.is_set():
                return
            self.closed.set()
            self._outbox.clear()
            self._outbox_ready.notify_all()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.server.closed(self)

    def join(self, timeout: float | None = None) -> None:
        for thread in (self._reader, self._writer):
            if thread.is_alive() and thread is not threading.current_thread():
                thread.join(timeout)


# ------------------------------------------------------------------------------------------------ server


def bind_listener(host: str, port: int) -> socket.socket:
    """A socket listening on ``host``:``port`` (0: any free port), or StreamError saying why it cannot."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=MAX_CLIENTS)
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            raise StreamError(f"Port {port} on {host} is in use by another program; choose another --listen port"
                              ) from error
        if error.errno == errno.EACCES:
            raise StreamError(f"Not allowed to listen on port {port} (ports below 1024 need administrator rights)"
                              ) from error
        raise StreamError(f"Cannot listen on {host}:{port}: {error.strerror or error}") from error


class StreamServer:
    """Segments OpenIGTLink IMAGE streams with ``segmenter`` (see the module documentation).

    Args:
        segmenter: a FrameSegmenter (or anything with its ``segment(pixels, ijk_to_ras)``).
        output_device: the reply's device name, ``{device}`` standing for the frame's.
        log: called with one line per event (connections, problems, periodic reports).
        report_seconds: how often a line with frames per second, latency and drops is logged while frames
            arrive; 0 for none.

    Use as a context manager (or ``start()``/``stop()``), then ``listen(socket)`` and/or ``connect(host,
    port)``; ``statistics()`` at any time.
    """

    def __init__(self, segmenter: FrameSegmenter, *, output_device: str = DEFAULT_OUTPUT_DEVICE,
                 log: Callable[[str], None] = print, report_seconds: float = DEFAULT_REPORT_SECONDS) -> None:
        self.segmenter = segmenter
        self.output_device = output_device
        self.log = log
        self.report_seconds = report_seconds
        self._lock = threading.Condition()
        self._pending: dict = {}  # (connection, device) → newest unsegmented Frame
        self._connections: list = []
        self._relay = False  # listening clients receive the upstream's replies
        self._stopping = threading.Event()
        now = time.perf_counter()
        self._total, self._period = _Tally(now), _Tally(now)
        self._threads: list = []

    # -- life cycle

    def start(self, *, inference_thread: bool = True) -> StreamServer:
        """Start the server's threads: the inference loop's too, unless ``inference_thread`` is False and the
        caller runs it with :meth:`serve`, on the thread that loaded and warmed up the network.

        That is faster on the CPU: PyTorch's OpenMP threads serve the thread that started them, and a second
        thread running the network beside them (its own OpenMP team on the same cores) took twice as long
        per frame (a 2D U-Net on 256×256 frames, bfloat16, 2 cores: 8 ms on the loading thread, 16 ms on
        another; any parallel operation on the first thread, a model's loading or warm-up, is enough).
        """
        if inference_thread:
            self._start_thread(self._inference_loop, "stream inference")
        if self.report_seconds > 0:
            self._start_thread(self._report_loop, "stream reports")
        return self

    def serve(self) -> None:
        """Run the inference loop in this thread until :meth:`request_stop` or :meth:`stop` (after
        ``start(inference_thread=False)``). A signal handler may call :meth:`request_stop`; Ctrl-C raises
        KeyboardInterrupt here."""
        self._inference_loop()

    def request_stop(self) -> None:
        """Make the inference loop return (safe from a signal handler: it takes no lock); :meth:`stop` closes
        the rest."""
        self._stopping.set()

    def _start_thread(self, target: Callable, name: str, *args) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self) -> StreamStatistics:
        """Close every connection and stop the threads; returns the statistics of the whole run."""
        self._stopping.set()
        with self._lock:
            self._lock.notify_all()
            connections = list(self._connections)
        for connection in connections:
            connection.close()
        for connection in connections:
            connection.join(5)
        for thread in self._threads:
            thread.join(5)
        return self.statistics()

    def __enter__(self) -> StreamServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def listen(self, listener: socket.socket) -> tuple:
        """Accept clients on ``listener`` (from :func:`bind_listener`); returns its (host, port)."""
        listener.settimeout(0.2)  # to notice stop(): closing a socket does not wake accept() on Linux
        self._start_thread(self._accept_loop, "stream listener", listener)
        address = listener.getsockname()
        self.log(f"listening on {address[0]}:{address[1]}")
        return address[0], address[1]

    def connect(self, host: str, port: int, *, relay: bool = False) -> None:
        """Take frames from the OpenIGTLink server at ``host``:``port``, reconnecting when the connection drops.
        Replies go back to it, or with ``relay`` to every listening client instead (PLUS ignores images)."""
        self._relay = relay
        self._start_thread(self._connect_loop, "stream connector", host, port)

    # -- connections

    def _open(self, sock: socket.socket, name: str, upstream: bool) -> _Connection | None:
        connection = _Connection(self, sock, name, upstream)
        with self._lock:
            if self._stopping.is_set():
                sock.close()
                return None
            self._connections.append(connection)
        self.log(f"{name} connected")
        connection.start()
        return connection

    def closed(self, connection: _Connection) -> None:
        """A connection ended: forget its waiting frames."""
        with self._lock:
            if connection not in self._connections:
                return
            self._connections.remove(connection)
            for key in [key for key in self._pending if key[0] is connection]:
                del self._pending[key]
        counts = connection.counts
        self.log(f"{connection.name} disconnected ({counts['received']} frames, {counts['replies']} replies)")

    def _accept_loop(self, listener: socket.socket) -> None:
        with listener:
            while not self._stopping.is_set():
                try:
                    sock, address = listener.accept()
                except socket.timeout:
                    continue
                except OSError as error:
                    if not self._stopping.is_set():
                        self.log(f"listening failed: {error}")
                    return
                with self._lock:
                    full = len(self._connections) >= MAX_CLIENTS
                if full:
                    self.log(f"client {address[0]}:{address[1]} refused: {MAX_CLIENTS} clients are connected")
                    sock.close()
                    continue
                self._open(sock, f"client {address[0]}:{address[1]}", upstream=False)

    def _connect_loop(self, host: str, port: int) -> None:
        warned = False
        while not self._stopping.is_set():
            try:
                sock = socket.create_connection((host, port), timeout=5)
            except OSError as error:
                if not warned:
                    self.log(f"cannot connect to {host}:{port} ({error.strerror or error}); retrying every"
                             f" {RECONNECT_SECONDS:g} s")
                    warned = True
                self._stopping.wait(RECONNECT_SECONDS)
                continue
            warned = False
            connection = self._open(sock, f"server {host}:{port}", upstream=True)
            if connection is None:
                return
            connection.closed.wait()
            if not self._stopping.is_set():
                self._stopping.wait(RECONNECT_SECONDS)

    # -- frames

    def count(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._total.counts[name] += amount
            self._period.counts[name] += amount

    def submit(self, frame: Frame) -> None:
        """Make ``frame`` the one waiting for its connection and device (an older one waiting is dropped)."""
        key = (frame.connection, frame.device)
        with self._lock:
            if self._total.first_frame is None:
                self._total.first_frame = frame.received_at
            if key in self._pending:
                for tally in (self._total, self._period):
                    tally.counts["dropped"] += 1
                frame.connection.counts["dropped"] += 1
            self._pending[key] = frame
            self._lock.notify()

    def replied(self, frame: Frame) -> None:
        now = time.perf_counter()
        with self._lock:
            self._total.last_reply = now
            for tally in (self._total, self._period):
                tally.counts["replies"] += 1
                tally.latency.add(now - frame.received_at)

    def _next_frame(self) -> Frame | None:
        with self._lock:
            while not self._pending and not self._stopping.is_set():
                # A timed wait: request_stop() (a signal handler) cannot notify without taking the lock.
                self._lock.wait(STOP_CHECK_SECONDS)
            if self._stopping.is_set():
                return None
            key = min(self._pending, key=lambda k: self._pending[k].received_at)  # the longest waiting
            return self._pending.pop(key)

    def _inference_loop(self) -> None:
        while True:
            frame = self._next_frame()
            if frame is None:
                return
            try:
                labels = self.segmenter.segment(frame.pixels, frame.ijk_to_ras)
            except FrameError as error:
                frame.connection.reject(f"frames of '{frame.device}' are skipped: {error}")
                continue
            except EngineError as error:
                frame.connection.reject(f"segmenting '{frame.device}' failed: {error}")
                continue
            except Exception as error:  # a model can fail in any way; the server goes on with the next frame
                frame.connection.reject(f"segmenting '{frame.device}' failed: {type(error).__name__}: {error}")
                continue
            self.count("segmented")
            for connection in self._recipients(frame):
                connection.deliver(frame, labels)

    def _recipients(self, frame: Frame) -> list:
        if not (frame.connection.upstream and self._relay):
            return [frame.connection]
        with self._lock:
            return [connection for connection in self._connections if not connection.upstream]

    # -- statistics

    def statistics(self) -> StreamStatistics:
        """Everything since the server started; rates over the time from the first frame to the last reply."""
        with self._lock:
            return self._total.statistics(len(self._connections))

    def _report_loop(self) -> None:
        while not self._stopping.wait(self.report_seconds):
            with self._lock:
                now = time.perf_counter()
                period = self._period.statistics(len(self._connections), until=now)
                self._period = _Tally(now)
            if period.received or period.replies:
                self.log(f"{period.summary()}; {period.clients} connected")


__all__ = [
    "DEFAULT_OUTPUT_DEVICE",
    "Frame",
    "LatencyHistogram",
    "StreamError",
    "StreamServer",
    "StreamStatistics",
    "bind_listener",
    "pack_reply",
    "parse_address",
    "reply_device_name",
]

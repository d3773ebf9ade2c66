"""A real HTTP server on 127.0.0.1 that serves in-memory files and misbehaves on request, for tests.

Networks fail in ways a mock does not: connections drop mid-file, servers stall, ignore Range or
send wrong bytes. This server does each of these for real, per path, and logs every request, so a
test can check what a client did on the wire (e.g. that a resumed download did not fetch the bytes
it already had again, or that two concurrent installs fetched a file once).

Usage::

    with RegistryTestServer() as server:
        server.add("/m.zip", data, drop_after=1000, times=1)   # first request: 1000 bytes, then closed
        download_file(server.url("/m.zip"), ...)
        first, second = server.requests("/m.zip")
        assert second.range_start == first.sent

Behaviours of :meth:`RegistryTestServer.add` (combine freely):

- normal: 200 with Content-Length and ``Accept-Ranges: bytes``; a ``Range: bytes=N-`` (or ``N-M``)
  request gets 206 and ``Content-Range``; a range starting past the end gets 416.
- ``drop_after=N``: send N bytes of the body, then close the connection.
- ``stall_after=N``: send N bytes, then send nothing for ``stall_seconds`` (or until the server
  stops), then close.
- ``status=S``: answer HTTP status S (404, 500...) with a short text body.
- ``wrong_bytes=True``: serve the data with one byte changed (same size, other sha256).
- ``times=K``: only the first K requests of this path misbehave as above, later ones are served
  normally; None (the default): every request misbehaves.
- ``no_range=True``: ignore Range headers and always answer 200 with the whole body.
- ``wrong_range=True``: answer a Range request with 206 and the whole body, labelled ``bytes 0-…``
  (not the range asked for); ``no_content_range=True``: answer it with 206 and no Content-Range.
- ``redirect_to=URL``: answer 302 with ``Location: URL``.
- ``no_content_length=True``: send no Content-Length; the end of the body is the connection's close.
- ``bytes_per_second=R``: send the body at about R bytes per second (to keep a download running).

Requests in absolute form (``GET http://host:port/path``, what a client sends to an HTTP proxy) are
answered from the same files and logged with ``proxied=True``: point ``http_proxy`` at
``server.base_url`` to check that a client goes through a proxy.

``RegistryTestServer(certificate=(cert_file, key_file))`` serves https with that certificate.

Stopping (leaving the ``with`` block, or :meth:`RegistryTestServer.stop`) ends stalls and open
connections and joins every thread the server started.
"""

from __future__ import annotations

import contextlib
import os
import dataclasses
import re
import socket
import ssl
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SEND_CHUNK = 64 * 1024
_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d+)-(\d*)\s*$")


@dataclasses.dataclass
class Request:
    """One request as the server saw it; ``sent`` counts body bytes written to the client."""

    method: str
    path: str
    range: str | None
    status: int = 0
    sent: int = 0
    proxied: bool = False

    @property
    def range_start(self) -> int:
        """The first byte the request asked for (0 without a Range header)."""
        match = _RANGE.match(self.range or "")
        return int(match.group(1)) if match else 0


@dataclasses.dataclass
class _File:
    data: bytes
    drop_after: int | None = None
    stall_after: int | None = None
    stall_seconds: float = 60.0
    status: int | None = None
    wrong_bytes: bool = False
    times: int | None = None
    no_range: bool = False
    wrong_range: bool = False
    no_content_range: bool = False
    redirect_to: str | None = None
    no_content_length: bool = False
    bytes_per_second: float | None = None
    misbehaved: int = 0

    def take_misbehaviour(self) -> bool:
        """Whether this request misbehaves; called once per request, under the server's lock."""
        if self.times is not None and self.misbehaved >= self.times:
            return False
        self.misbehaved += 1
        return True


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True  # server_close() joins every handler thread

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.files: dict = {}
        self.log: list = []
        self.stopping = threading.Event()
        self.connections: set = set()

    def process_request(self, request, client_address) -> None:
        # Registered here, in the serving thread, so stop() sees every accepted connection.
        with self.lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request) -> None:
        with self.lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request, client_address) -> None:
        # A client that resets a keep-alive connection is what clients do; anything else is printed.
        if not isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 10  # an idle keep-alive connection does not hold a thread for ever
    server: _HTTPServer

    def log_message(self, format: str, *args) -> None:
        pass  # tests read server.requests(), not stderr

    def do_GET(self) -> None:
        proxied = self.path.startswith(("http://", "https://"))
        path = urllib.parse.urlsplit(self.path).path
        record = Request(method="GET", path=path, range=self.headers.get("Range"), proxied=proxied)
        with self.server.lock:
            self.server.log.append(record)
            entry = self.server.files.get(path)
            misbehave = entry is not None and entry.take_misbehaviour()
        if entry is None:
            self._send_status(record, 404)
        elif misbehave and entry.status is not None:
            self._send_status(record, entry.status)
        elif misbehave and entry.redirect_to is not None:
            self._send_status(record, 302, {"Location": entry.redirect_to})
        else:
            self._send_file(record, entry, misbehave)

    def _send_status(self, record: Request, status: int, headers: dict | None = None) -> None:
        body = f"{status} {self.responses.get(status, ('',))[0]}\n".encode()
        record.status = status
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self._write(record, body)

    def _send_file(self, record: Request, entry: _File, misbehave: bool) -> None:
        data = entry.data
        if misbehave and entry.wrong_bytes and data:
            changed = bytearray(data)
            changed[len(changed) // 2] ^= 0xFF
            data = bytes(changed)
        start, end = 0, len(data)
        match = _RANGE.match(record.range or "")
        mangled = misbehave and match is not None and (entry.wrong_range or entry.no_content_range)
        if match and not entry.no_range and not mangled:
            start = int(match.group(1))
            if match.group(2):
                end = min(end, int(match.group(2)) + 1)
            if start >= len(data) or start >= end:
                record.status = 416
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        record.status = 206 if match and not entry.no_range else 200
        self.send_response(record.status)
        self.send_header("Content-Type", "application/octet-stream")
        if not entry.no_range:
            self.send_header("Accept-Ranges", "bytes")
        if record.status == 206 and not (mangled and entry.no_content_range):
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        if entry.no_content_length:
            self.send_header("Connection", "close")
            self.close_connection = True
        else:
            self.send_header("Content-Length", str(end - start))
        self.end_headers()
        body = memoryview(data)[start:end]
        if misbehave and entry.drop_after is not None:
            self._write(record, body[: entry.drop_after], entry.bytes_per_second)
            self.close_connection = True
        elif misbehave and entry.stall_after is not None:
            self._write(record, body[: entry.stall_after], entry.bytes_per_second)
            self.server.stopping.wait(entry.stall_seconds)
            self.close_connection = True
        else:
            self._write(record, body, entry.bytes_per_second)

    def _write(self, record: Request, body, bytes_per_second: float | None = None) -> None:
        """Send ``body``, paced when asked; a client that went away ends the response quietly."""
        chunk = SEND_CHUNK if bytes_per_second is None else max(1, int(bytes_per_second / 20))
        try:
            for offset in range(0, len(body), chunk):
                if self.server.stopping.is_set():
                    break
                piece = body[offset : offset + chunk]
                self.wfile.write(piece)
                with self.server.lock:
                    record.sent += len(piece)
                if bytes_per_second is not None:
                    self.server.stopping.wait(len(piece) / bytes_per_second)
        except OSError:  # the client closed or reset the connection
            self.close_connection = True


class RegistryTestServer:
    """A misbehaving HTTP server on 127.0.0.1 for tests; a context manager (see the module docstring)."""

    def __init__(self, certificate: tuple | None = None) -> None:
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._certificate = certificate

    def __enter__(self) -> RegistryTestServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def start(self) -> RegistryTestServer:
        self._httpd = _HTTPServer()
        if self._certificate is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*self._certificate)
            self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05})
        self._thread.start()
        return self

    def stop(self) -> None:
        """End stalls and connections, stop serving and join every thread; the log stays readable."""
        httpd = self._httpd
        if httpd is None or self._thread is None:
            return
        httpd.stopping.set()
        httpd.shutdown()
        with httpd.lock:
            connections = list(httpd.connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        httpd.server_close()
        self._thread.join()
        self._thread = None

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``, also the address to use as an HTTP proxy."""
        scheme = "http" if self._certificate is None else "https"
        return f"{scheme}://127.0.0.1:{self._httpd.server_address[1]}"

    def url(self, path: str) -> str:
        """The address of ``path`` (which starts with ``/``) on this server."""
        return self.base_url + path

    def add(
        self,
        path: str,
        data: bytes,
        *,
        drop_after: int | None = None,
        stall_after: int | None = None,
        stall_seconds: float = 60.0,
        status: int | None = None,
        wrong_bytes: bool = False,
        times: int | None = None,
        no_range: bool = False,
        wrong_range: bool = False,
        no_content_range: bool = False,
        redirect_to: str | None = None,
        no_content_length: bool = False,
        bytes_per_second: float | None = None,
    ) -> str:
        """Serve ``data`` at ``path`` with the given behaviours (module docstring); returns its URL."""
        if not path.startswith("/"):
            raise ValueError(f"path must start with '/': {path!r}")
        entry = _File(
            bytes(data),
            drop_after=drop_after,
            stall_after=stall_after,
            stall_seconds=stall_seconds,
            status=status,
            wrong_bytes=wrong_bytes,
            times=times,
            no_range=no_range,
            wrong_range=wrong_range,
            no_content_range=no_content_range,
            redirect_to=redirect_to,
            no_content_length=no_content_length,
            bytes_per_second=bytes_per_second,
        )
        with self._httpd.lock:
            self._httpd.files[path] = entry
        return self.url(path)

    def requests(self, path: str | None = None) -> list:
        """Copies of the logged requests, oldest first; only those for ``path`` when given."""
        with self._httpd.lock:
            return [dataclasses.replace(r) for r in self._httpd.log if path is None or r.path == path]


def serve_files(files: dict, bytes_per_second: float | None = None, progress=None, cancel=None) -> None:
    """Job target: serve the files (URL path -> file on disk) until cancelled; the first progress text is the
    base URL. Panel tests run a server this way, in a process of its own: a server thread in the test process
    starves while the test idles as Slicer does."""
    with RegistryTestServer() as server:
        for path, file_path in files.items():
            with open(file_path, "rb") as file:
                server.add(path, file.read(), bytes_per_second=bytes_per_second)
        progress(0.0, server.base_url)
        cancel.wait()


@contextlib.contextmanager
def served_in_a_process(files: dict, bytes_per_second: float | None = None):
    """``with served_in_a_process({"/index.json": path, ...}) as base_url:`` (see :func:`serve_files`)."""
    from ModelRegistryLib.jobs import start_job

    job = start_job("registry_test_server:serve_files", {"files": files, "bytes_per_second": bytes_per_second},
                    description="Test server", sys_path=[os.path.dirname(os.path.abspath(__file__))])
    try:
        while job.progress is None and not job.finished:
            job.wait(0.02)
        if job.finished:
            raise RuntimeError(f"the test server did not start: {job.error}")
        yield job.progress.text
    finally:
        job.cancel()
        job.wait(30)

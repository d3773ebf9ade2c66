"""Verified, resumable, cancellable downloads over http, https and file URLs.

Model weights are large and the networks they cross are not kind: servers stall or drop the
connection at 86 %, proxies sit in between, disks fill up. :func:`download_file` streams into
``<destination>.part`` while hashing, resumes that file with an HTTP Range request after an
interruption (also in a later call), retries transient failures with exponential backoff, checks
size and sha256 and only then renames the file into place, so a partial or corrupt file never sits
where a good one is expected. :func:`fetch_bytes` fetches small documents (registry indexes) into
memory with a size limit. Failures raise the classes of :mod:`ModelRegistryLib.errors`, each with
a one-line message a user can act on.

HTTP goes through ``requests`` (Slicer bundles it; imported only when an http or https URL is
fetched, so file URLs and the rest of the package work without it). Proxies come from the
environment (``http_proxy``, ``https_proxy``, ``no_proxy``, read at each call), certificates from
``REQUESTS_CA_BUNDLE``, else ``SSL_CERT_FILE``, else the bundle requests ships. Each request runs
on a helper thread that hands the body over in chunks, so a cancel is honoured within
``PROGRESS_INTERVAL`` even while a server is silent or a connection is being made, with public APIs
only. Two downloads to one destination at the same time would share one ``.part`` file: callers
serialize them (``ModelRegistryLib.locking.FileLock``).

Example::

    >>> import hashlib, os, pathlib, tempfile
    >>> folder = tempfile.mkdtemp()
    >>> source = os.path.join(folder, "weights.bin")
    >>> with open(source, "wb") as file:
    ...     _ = file.write(b"\\x00" * 3000)
    >>> digest = hashlib.sha256(b"\\x00" * 3000).hexdigest()
    >>> seen = []
    >>> path = download_file(pathlib.Path(source).as_uri(), os.path.join(folder, "copy.bin"),
    ...                      sha256=digest, size=3000, progress=seen.append)
    >>> os.path.getsize(path), seen[-1].done, seen[-1].total
    (3000, 3000, 3000)
    >>> import shutil; shutil.rmtree(folder)
"""

from __future__ import annotations

import collections
import contextlib
import errno
import hashlib
import http.client
import os
import queue
import re
import shutil
import socket
import ssl
import stat
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, Callable

from .errors import (
    CancelledError,
    ChecksumMismatchError,
    ConnectionFailedError,
    DiskFullError,
    DownloadError,
    DownloadTimeoutError,
    NotFoundError,
    RegistryError,
    ServerError,
    TLSError,
)

CHUNK_BYTES = 1024 * 1024
# What one read from the network may return: small enough that a slow link still reports progress
# often (64 KiB is 0.6 s at 100 kB/s), where the HTTP library cannot hand over what has arrived so far.
NETWORK_CHUNK_BYTES = 64 * 1024
QUEUED_CHUNKS = 16  # chunks a helper thread reads ahead of the writer: bounds the memory a download holds
USER_AGENT = "SlicerDeepLearning-ModelRegistry/1"
PROGRESS_INTERVAL = 0.1  # seconds between two progress reports
RATE_WINDOW = 1.0  # seconds of history the transfer rate is averaged over
MAX_BACKOFF = 30.0  # seconds; the doubling stops there

_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$")
# Busy or failing servers: another attempt a little later may well succeed.
_TRANSIENT_HTTP = {408, 429}
_NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


@dataclass(frozen=True)
class Progress:
    """How far a download is: bytes done (including resumed ones), expected total, rate and time left.

    >>> Progress(done=12_300_000, total=200_000_000, rate=85_200_000.0, eta=2.2).text
    '12.3 MB of 200.0 MB, 85.2 MB/s, 2 s left'
    >>> Progress(done=500, total=None, rate=0.0, eta=None).fraction is None
    True
    """

    done: int
    total: int | None
    rate: float
    eta: float | None

    @property
    def fraction(self) -> float | None:
        """Done as a fraction of the total in [0, 1], or None when the total is unknown."""
        if self.total is None:
            return None
        return 1.0 if self.total == 0 else min(1.0, self.done / self.total)

    @property
    def text(self) -> str:
        parts = [format_bytes(self.done) + ("" if self.total is None else f" of {format_bytes(self.total)}")]
        if self.rate > 0:
            parts.append(f"{format_bytes(self.rate)}/s")
        if self.eta is not None and self.done != self.total:
            parts.append(f"{format_duration(self.eta)} left")
        return ", ".join(parts)


def format_bytes(count: float) -> str:
    """A byte count in decimal units, as file managers show it.

    >>> format_bytes(999), format_bytes(12_345), format_bytes(200 * 10**6), format_bytes(3.5e9)
    ('999 B', '12.3 kB', '200.0 MB', '3.5 GB')
    """
    if count < 1000:
        return f"{count:.0f} B"
    for unit in ("kB", "MB", "GB"):
        count /= 1000
        if count < 1000:
            return f"{count:.1f} {unit}"
    return f"{count / 1000:.1f} TB"


def format_duration(seconds: float) -> str:
    """A duration rounded the way a person reads a countdown.

    >>> format_duration(2.4), format_duration(125), format_duration(3 * 3600 + 65)
    ('2 s', '2 min', '3 h 1 min')
    """
    if seconds < 59.5:
        return f"{round(seconds)} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"


def file_sha256(path: str, *, cancel: threading.Event | None = None) -> str:
    """The sha256 of a file's bytes, as 64 lower-case hexadecimal digits.

    Only a regular file is read: a fifo or a device (``/dev/zero``) raises RegistryError at once
    instead of blocking or never ending.

    >>> import os, tempfile
    >>> handle, path = tempfile.mkstemp(); os.close(handle)
    >>> file_sha256(path)
    'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855'
    >>> os.remove(path)
    """
    return file_digests(path, ("sha256",), cancel=cancel)["sha256"]


def file_digests(path: str, algorithms=("sha256",), *, cancel: threading.Event | None = None) -> dict:
    """The digests of a regular file's bytes by ``hashlib`` algorithm name (lower-case hexadecimal), read once.

    >>> import os, tempfile
    >>> handle, path = tempfile.mkstemp(); os.close(handle)
    >>> file_digests(path, ("md5", "sha1"))["md5"]
    'd41d8cd98f00b204e9800998ecf8427e'
    >>> os.remove(path)
    """
    hashers = {name: hashlib.new(name) for name in algorithms}
    with open_regular_file(path) as file:
        while True:
            _check_cancel(cancel, f"hashing {path}")
            chunk = file.read(CHUNK_BYTES)
            if not chunk:
                return {name: hasher.hexdigest() for name, hasher in hashers.items()}
            for hasher in hashers.values():
                hasher.update(chunk)


def open_regular_file(path: str) -> BinaryIO:
    """``path`` opened for reading in binary, if it is a regular file (links followed); else RegistryError.

    The check is made on the opened file, and opening does not wait for a fifo's writer, so neither a
    fifo nor a file swapped for one in between can block the caller.

    >>> open_regular_file("/dev/null")
    Traceback (most recent call last):
    ...
    ModelRegistryLib.errors.RegistryError: /dev/null is not a regular file (a device, fifo or socket)
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    descriptor = os.open(path, flags)
    try:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise RegistryError(f"{path} is not a regular file (a device, fifo or socket)")
        if hasattr(os, "set_blocking"):
            os.set_blocking(descriptor, True)
        return os.fdopen(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise


def download_file(
    url: str,
    destination: str,
    *,
    sha256: str | None,
    size: int | None = None,
    progress: Callable[[Progress], None] | None = None,
    cancel: threading.Event | None = None,
    timeout: float = 30.0,
    retries: int = 4,
    backoff: float = 0.5,
    durable: bool = True,
) -> str:
    """Download ``url`` (http, https or file) to ``destination``, verified; return ``destination``.

    - Writes ``destination + ".part"`` in chunks of about 1 MiB, hashing as it goes; a ``.part`` left
      by an earlier attempt is resumed with an HTTP Range request (a server answering 200 instead of
      206 restarts it from zero, and so does one answering with another range than asked, or none:
      it is not asked for a range again; for file URLs the source is simply read from that offset).
      Redirects are followed to http and https addresses only.
    - ``retries``: how many failed attempts in a row are retried after the first one, waiting
      ``backoff``, then twice as long each time (at most 30 s). Retried: refused, reset or dropped
      connections, no byte for ``timeout`` seconds, HTTP 5xx, 408 and 429. Not retried: other 4xx,
      TLS failures, checksum mismatches, a full disk. An attempt that received bytes before failing
      resets the count, so a connection that keeps dropping still finishes.
    - Checks ``size`` (when given) and ``sha256``, then renames the ``.part`` to ``destination``
      (``os.replace``, atomic). On a mismatch the ``.part`` is deleted and ChecksumMismatchError raised.
      ``durable``: first force the bytes to disk (fsync), so that a power cut cannot leave a renamed
      but empty file; pass False for a file that is unpacked and deleted right away (fsync costs
      about a quarter of a loopback download's time).
    - ``cancel`` set: CancelledError within about 0.1 s, while connecting, waiting for an answer or
      reading (even from a silent server); the ``.part`` is kept for a later resume. The connection
      of a request left this way closes at its next chunk or after ``timeout``, on its helper thread.
    - ``progress`` is called at most about 10 times a second, and once at the end with done == total.
    - When ``destination`` already holds the right bytes, returns at once without the network.
    - ``sha256`` None: nothing to check the bytes against (``ModelRegistryLib.trust`` pins them on a first
      download); only ``size``, when given, is checked, and the file is always fetched.
    """
    expected_sha256 = _checked_sha256(sha256) if sha256 is not None else None
    reporter = _ProgressReporter(progress, size)
    if expected_sha256 is not None and _holds(destination, expected_sha256, size, cancel):
        reporter.finish(os.path.getsize(destination))
        return destination
    folder = os.path.dirname(os.path.abspath(destination))
    _writing(lambda: os.makedirs(folder, exist_ok=True), folder)
    with _PartFile(destination + ".part", size) as part, _Client(url, timeout, cancel) as client:
        try:
            _retrying(
                lambda: _fetch_into(client, part, size, reporter),
                url,
                retries=retries,
                backoff=backoff,
                timeout=timeout,
                cancel=cancel,
                position=lambda: part.length,
            )
            _verify(part, url, expected_sha256, size)
        except ChecksumMismatchError:
            part.discard()
            raise
        part.commit(destination, durable)
    reporter.finish(part.length)
    return destination


def fetch_bytes(
    url: str,
    *,
    max_bytes: int,
    timeout: float = 30.0,
    retries: int = 2,
    backoff: float = 0.5,
    cancel: threading.Event | None = None,
) -> bytes:
    """The whole body of a small document (a registry index) at ``url``, in memory.

    A body over ``max_bytes``, announced by Content-Length or found while reading, raises
    DownloadError saying the limit. Errors and retries as in :func:`download_file`.

    >>> import os, pathlib, tempfile
    >>> handle, path = tempfile.mkstemp(); _ = os.write(handle, b'{"models": []}'); os.close(handle)
    >>> fetch_bytes(pathlib.Path(path).as_uri(), max_bytes=100)
    b'{"models": []}'
    >>> os.remove(path)
    """

    def attempt(client: _Client) -> bytes:
        body = bytearray()
        with client.open(0) as source:
            if source.total is not None and source.total > max_bytes:
                raise _too_large(url, max_bytes)
            for chunk in source.chunks(source.total):
                body += chunk
                if len(body) > max_bytes:
                    raise _too_large(url, max_bytes)
        return bytes(body)

    with _Client(url, timeout, cancel) as client:
        return _retrying(lambda: attempt(client), url, retries=retries, backoff=backoff, timeout=timeout,
                         cancel=cancel)


def _too_large(url: str, max_bytes: int) -> DownloadError:
    return DownloadError(f"{url} is larger than the limit of {format_bytes(max_bytes)}; is it the right address?", url)


def _checked_sha256(sha256: str) -> str:
    if not isinstance(sha256, str) or not _SHA256.match(sha256):
        raise ValueError(f"sha256 must be 64 hexadecimal digits, not {sha256!r}")
    return sha256.lower()


def _check_cancel(cancel: threading.Event | None, doing: str) -> None:
    if cancel is not None and cancel.is_set():
        raise CancelledError(f"cancelled {doing}")


def _holds(path: str, sha256: str, size: int | None, cancel: threading.Event | None) -> bool:
    """Whether ``path`` is a file with exactly the expected bytes."""
    if not os.path.isfile(path) or (size is not None and os.path.getsize(path) != size):
        return False
    return file_sha256(path, cancel=cancel) == sha256


# --- where the bytes go -------------------------------------------------------------------------


def error_for_write(error: OSError, path: str, needed: int | None = None) -> RegistryError:
    """The error a user sees when writing ``path`` failed: a full disk says how much more space ``needed``.

    >>> import errno
    >>> type(error_for_write(OSError(errno.ENOSPC, "No space left on device"), "/tmp/m.bin", 2_000_000)).__name__
    'DiskFullError'
    >>> str(error_for_write(PermissionError(errno.EACCES, "Permission denied"), "/m.bin"))
    'cannot write /m.bin: Permission denied'
    """
    if error.errno in _NO_SPACE:
        folder = os.path.dirname(os.path.abspath(path))
        try:
            free = f", {format_bytes(shutil.disk_usage(folder).free)} free"
        except OSError:
            free = ""
        amount = "more space" if needed is None else f"{format_bytes(needed)} more"
        return DiskFullError(f"disk full while writing {path}: {amount} needed in {folder}{free}")
    return RegistryError(f"cannot write {path}: {error.strerror or error}")


def _writing(operation: Callable[[], object], path: str, needed: int | None = None):
    try:
        return operation()
    except OSError as error:
        raise error_for_write(error, path, needed) from error


class _PartFile:
    """The growing ``.part`` file of a download and the sha256 of the bytes it holds.

    The hash of bytes left by an earlier attempt is computed only when a resume keeps them.
    """

    def __init__(self, path: str, size: int | None) -> None:
        self.path = path
        self.size = size
        self._file: BinaryIO = _writing(lambda: open(path, "ab"), path)  # noqa: SIM115 - closed by commit, discard or __exit__
        self.length = self._file.tell()
        self._hasher = hashlib.sha256() if self.length == 0 else None

    def __enter__(self) -> _PartFile:
        return self

    def __exit__(self, exc_type, *exc_info) -> None:
        if not self._file.closed:
            with contextlib.suppress(OSError):
                self._file.close()
        if exc_type is not None and self.length == 0:  # nothing to resume: leave no litter
            with contextlib.suppress(OSError):
                os.remove(self.path)

    def restart(self) -> None:
        """Forget the bytes so far; the next append writes at the start."""
        _writing(lambda: (self._file.seek(0), self._file.truncate(0)), self.path)
        self.length = 0
        self._hasher = hashlib.sha256()

    def resume(self, cancel: threading.Event | None) -> None:
        """Keep the bytes so far, hashing them if an earlier attempt left them."""
        if self._hasher is not None:
            return
        _writing(self._file.flush, self.path)
        hasher = hashlib.sha256()
        with open(self.path, "rb") as file:
            remaining = self.length
            while remaining:
                _check_cancel(cancel, f"resuming {self.path}")
                chunk = file.read(min(CHUNK_BYTES, remaining))
                if not chunk:
                    raise RegistryError(f"{self.path} shrank while being resumed; is another download writing it?")
                hasher.update(chunk)
                remaining -= len(chunk)
        self._hasher = hasher

    def append(self, data: bytes) -> None:
        needed = None if self.size is None else self.size - self.length
        _writing(lambda: self._file.write(data), self.path, needed)
        self._hasher.update(data)
        self.length += len(data)

    @property
    def sha256(self) -> str:
        return self._hasher.hexdigest()

    def discard(self) -> None:
        self._file.close()
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.path)

    def commit(self, destination: str, durable: bool) -> None:
        """Close the file (forcing its bytes to disk when ``durable``) and move it to ``destination`` atomically."""

        def flush_and_close() -> None:
            self._file.flush()
            if durable:
                os.fsync(self._file.fileno())
            self._file.close()

        _writing(flush_and_close, self.path)
        _writing(lambda: os.replace(self.path, destination), destination)


def _verify(part: _PartFile, url: str, sha256: str | None, size: int | None) -> None:
    if size is not None and part.length != size:
        raise ChecksumMismatchError(
            f"{url} has {part.length} bytes, the registry expects {size}: the file on the server differs",
            url,
            expected=size,
            actual=part.length,
        )
    part.resume(None)  # a .part complete before this call has not been hashed yet
    if sha256 is not None and part.sha256 != sha256:
        raise ChecksumMismatchError(
            f"{url} is corrupt or was replaced: its sha256 is {part.sha256}, the registry expects {sha256}",
            url,
            expected=sha256,
            actual=part.sha256,
        )


# --- where the bytes come from ------------------------------------------------------------------


@dataclass
class _Source:
    """An open body: its bytes from offset ``start`` of a file of ``total`` bytes (None: unknown).

    ``read`` returns the next chunk, ``b""`` at the end.
    """

    start: int
    total: int | None
    read: Callable[[], bytes]
    cancel: threading.Event | None

    def chunks(self, end: int | None) -> Iterator[bytes]:
        """The body's chunks; a body ending before byte ``end`` raises _ConnectionClosedEarlyError."""
        received = self.start
        while True:
            _check_cancel(self.cancel, "the download")
            chunk = self.read()
            if not chunk:
                break
            received += len(chunk)
            yield chunk
        if end is not None and received < end:
            raise _ConnectionClosedEarlyError(received, end)


class _ConnectionClosedEarlyError(Exception):
    def __init__(self, received: int, total: int) -> None:
        super().__init__(f"connection closed after {format_bytes(received)} of {format_bytes(total)}")


class _UnexpectedRangeError(Exception):
    def __init__(self, asked: int, content_range: str) -> None:
        super().__init__(f"asked for bytes from {asked}, the server sent {content_range!r}")


class _HTTPStatusError(Exception):
    """The server answered with an error status."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"HTTP {code} {reason or ''}".rstrip())
        self.code = code


class _Client:
    """Opens one URL at byte offsets, for the attempts of one download; a context manager.

    File URLs are read directly; http and https go through one ``requests`` session, made at the first
    request and closed at the end. A server found to answer a Range request with other bytes than asked
    is from then on asked for the whole file, as a server that ignores ranges would send it.
    """

    def __init__(self, url: str, timeout: float, cancel: threading.Event | None) -> None:
        self.url = url
        self.timeout = timeout
        self.cancel = cancel
        self.scheme = urllib.parse.urlsplit(url).scheme.lower()
        if self.scheme not in ("http", "https", "file"):
            raise DownloadError(f"cannot download {url}: only http, https and file addresses are supported", url)
        self._session = None
        self._ranges_work = True

    def __enter__(self) -> _Client:
        return self

    def __exit__(self, *exc_info) -> None:
        if self._session is not None:
            self._session.close()

    @contextlib.contextmanager
    def open(self, offset: int) -> Iterator[_Source]:
        """The body from ``offset`` where the source can start there, else from 0 (``start`` says which)."""
        if self.scheme == "file":
            with _open_file(self.url, offset) as (stream, start, total):
                yield _Source(start, total, lambda: stream.read(CHUNK_BYTES), self.cancel)
            return
        transfer, start, total = self._open_http(offset)
        try:
            yield _Source(start, total, transfer.read, self.cancel)
        finally:
            transfer.close()

    def _open_http(self, offset: int) -> tuple:
        """``(transfer, start, total)`` of a GET asking for the bytes from ``offset`` where ranges work."""
        if not self._ranges_work:
            offset = 0
        if self._session is None:
            self._session = _new_session()
        transfer = _Transfer(self._session, self.url, offset, self.timeout, self.cancel)
        try:
            if transfer.status == 416 and offset:  # the .part is as long as the file or longer: start over
                transfer.close()
                return self._open_http(0)
            if transfer.status >= 400:
                raise _HTTPStatusError(transfer.status, transfer.reason)
            if transfer.status == 206:
                content_range = transfer.headers.get("Content-Range", "")
                match = _CONTENT_RANGE.match(content_range)
                if match is None or int(match.group(1)) != offset:
                    if not offset:
                        raise _UnexpectedRangeError(offset, content_range)
                    # Resuming such a server can never work, and its .part must not block later installs.
                    self._ranges_work = False
                    transfer.close()
                    return self._open_http(0)
                return transfer, offset, None if match.group(3) == "*" else int(match.group(3))
            length = transfer.headers.get("Content-Length", "")
            return transfer, 0, int(length) if length.strip().isdigit() else None
        except BaseException:
            transfer.close()
            raise


@contextlib.contextmanager
def _open_file(url: str, offset: int) -> Iterator[tuple]:
    """``(stream, start, total)`` of a file URL, read from ``offset`` (from 0 when the file is shorter)."""
    parts = urllib.parse.urlsplit(url)
    # file://server/share/x is a Windows network share; file:///x and file://localhost/x are local.
    location = parts.path if parts.netloc in ("", "localhost") else f"//{parts.netloc}{parts.path}"
    path = urllib.request.url2pathname(location)
    try:
        stream = open_regular_file(path)
    except FileNotFoundError as error:
        raise NotFoundError(f"file not found: {path}", url) from error
    except OSError as error:
        raise DownloadError(f"cannot read {path}: {error.strerror or error}", url) from error
    except RegistryError as error:  # not a regular file
        raise DownloadError(str(error), url) from error
    with stream:
        total = os.fstat(stream.fileno()).st_size
        start = offset if offset <= total else 0
        stream.seek(start)
        yield stream, start, total


def _certificate_bundle() -> str | None:
    """``SSL_CERT_FILE`` where it names a file: requests reads REQUESTS_CA_BUNDLE (which wins) but not it."""
    bundle = os.environ.get("SSL_CERT_FILE", "")
    return bundle if bundle and os.path.isfile(bundle) else None


def _new_session():
    try:
        import requests  # Slicer bundles it; imported here so that file URLs and the rest work without it
    except ImportError as error:
        raise DownloadError("downloading from http and https addresses needs the requests package, which Slicer "
                            "bundles; elsewhere: python -m pip install requests") from error
    session = requests.Session()
    # Identity: the bytes hashed, counted and resumed are the file's, never a compressed form of it.
    session.headers.update({"User-Agent": USER_AGENT, "Accept-Encoding": "identity"})
    bundle = _certificate_bundle()
    if bundle is not None:
        session.verify = bundle
    return session


class _Transfer:
    """One HTTP GET whose connection, headers and body are read on a helper thread.

    A thread blocked on a socket cannot be woken through public APIs, and a silent server keeps a read
    blocked for the whole timeout. So the blocking work runs on a helper thread that hands the body over
    in chunks through a small queue, and the caller waits on that queue in steps of PROGRESS_INTERVAL,
    checking ``cancel``. After a cancel or an error the caller leaves at once; the helper thread stops at
    its next chunk, or when the socket times out, and closes the response itself.
    """

    def __init__(self, session, url: str, offset: int, timeout: float, cancel: threading.Event | None) -> None:
        self._items: queue.Queue = queue.Queue(QUEUED_CHUNKS)
        self._stopped = threading.Event()
        self._cancel = cancel
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        helper = threading.Thread(target=self._run, args=(session, url, headers, timeout), name="download",
                                  daemon=True)
        helper.start()
        self.status, self.reason, self.headers = self._next()

    def _run(self, session, url: str, headers: dict, timeout: float) -> None:
        try:
            response = session.get(url, headers=headers, stream=True, timeout=timeout)
        except BaseException as error:  # handed to the caller, which classifies it
            self._hand_over(error)
            return
        with response:
            if not self._hand_over((response.status_code, response.reason, response.headers)):
                return
            # urllib3 2 hands over what has arrived (read1); urllib3 1.26 (older Slicers) waits for the amount.
            read1 = getattr(response.raw, "read1", None)
            try:
                while True:
                    if read1 is not None:
                        chunk = read1(CHUNK_BYTES, decode_content=False)
                    else:
                        chunk = response.raw.read(NETWORK_CHUNK_BYTES, decode_content=False)
                    if not self._hand_over(chunk) or not chunk:
                        return
            except BaseException as error:
                self._hand_over(error)

    def _hand_over(self, item) -> bool:
        """Queue ``item`` for the caller; False when the caller has stopped listening."""
        while not self._stopped.is_set():
            try:
                self._items.put(item, timeout=PROGRESS_INTERVAL)
                return True
            except queue.Full:
                continue
        return False

    def _next(self):
        while True:
            try:
                item = self._items.get(timeout=PROGRESS_INTERVAL)
                break
            except queue.Empty:
                if self._cancel is not None and self._cancel.is_set():
                    self.close()
                    raise CancelledError("cancelled the download") from None
        if isinstance(item, BaseException):
            self.close()
            raise item
        return item

    def read(self) -> bytes:
        """The next chunk of the body, ``b""`` at its end."""
        return self._next()

    def close(self) -> None:
        """Stop listening: the helper thread ends and closes the response."""
        self._stopped.set()


def _fetch_into(client: _Client, part: _PartFile, size: int | None, reporter: _ProgressReporter) -> None:
    """One attempt: bring ``part`` up to the whole file, resuming what it holds where the source allows."""
    url = client.url
    if size is not None and part.length > size:
        part.restart()
    if size is not None and part.length == size:
        return  # complete already (a crash between download and rename); _verify decides
    with client.open(part.length) as source:
        if size is not None and source.total is not None and source.total != size:
            raise ChecksumMismatchError(
                f"{url} has {source.total} bytes, the registry expects {size}: the file on the server differs",
                url,
                expected=size,
                actual=source.total,
            )
        if source.start == 0 and part.length:
            part.restart()
        part.resume(client.cancel)
        end = size if size is not None else source.total
        reporter.start(part.length, end)
        for chunk in source.chunks(end):
            if end is not None and part.length + len(chunk) > end:
                raise ChecksumMismatchError(
                    f"{url} sends more than the {end} bytes expected: the file on the server differs",
                    url,
                    expected=end,
                    actual=part.length + len(chunk),
                )
            part.append(chunk)
            reporter.update(part.length)


# --- retries and errors -------------------------------------------------------------------------


def _retrying(
    attempt: Callable[[], object],
    url: str,
    *,
    retries: int,
    backoff: float,
    timeout: float,
    cancel: threading.Event | None,
    position: Callable[[], int] = lambda: 0,
):
    """``attempt()``, again after transient failures; ``position()`` growing during an attempt counts as progress."""
    failures = 0
    while True:
        _check_cancel(cancel, f"downloading {url}")
        before = position()
        try:
            return attempt()
        except RegistryError:
            raise
        except Exception as error:
            _check_cancel(cancel, f"downloading {url}")
            classified = _classify(error, url, timeout)
            if classified is None:
                raise
            kind, message, transient = classified
            failures = 1 if position() > before else failures + 1
            if not transient or failures > retries:
                suffix = f" (gave up after {failures} attempts)" if transient and failures > 1 else ""
                raise kind(_one_line(message + suffix), url) from error
            delay = min(MAX_BACKOFF, backoff * 2 ** (failures - 1))
            if cancel is None:
                time.sleep(delay)
            else:
                cancel.wait(delay)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _root_cause(error: BaseException) -> BaseException:
    """The innermost error of a chain (requests wraps urllib3's errors, which wrap the socket's or ssl's)."""
    seen = set()
    while id(error) not in seen:
        seen.add(id(error))
        reason = getattr(error, "reason", None)  # urllib3's MaxRetryError, urllib's URLError
        inner = reason if isinstance(reason, BaseException) else error.__cause__ or error.__context__
        if inner is None:
            inner = next((argument for argument in error.args if isinstance(argument, BaseException)), None)
        if inner is None:
            break
        error = inner
    return error


def _http_library_errors() -> tuple:
    """``(requests.exceptions, urllib3.exceptions)`` once requests is in use, else ``(None, None)``."""
    import sys

    if "requests" not in sys.modules:
        return None, None
    import requests.exceptions
    import urllib3.exceptions

    return requests.exceptions, urllib3.exceptions


def _classify(error: BaseException, url: str, timeout: float) -> tuple[type, str, bool] | None:
    """The error class and message a user sees for a low-level error, and whether another attempt may succeed.

    None for errors that are not about the transfer (bugs): those propagate unchanged.
    """
    host = urllib.parse.urlsplit(url).netloc or url
    if isinstance(error, _HTTPStatusError):
        if error.code in (404, 410):
            return NotFoundError, f"not found ({error}): {url}", False
        if error.code >= 500 or error.code in _TRANSIENT_HTTP:
            return ServerError, f"server error ({error}) from {host}: {url}; try again later", True
        return DownloadError, f"the server refused the download ({error}): {url}", False
    if isinstance(error, _UnexpectedRangeError):
        return ServerError, f"{host} answered a download request wrongly ({error}): {url}", True
    if isinstance(error, _ConnectionClosedEarlyError):
        return ConnectionFailedError, f"cannot download {url}: {error}; check network or proxy settings", True
    requests_errors, urllib3_errors = _http_library_errors()
    if requests_errors is not None:
        if isinstance(error, requests_errors.ProxyError):
            reason = _reason(_root_cause(error))
            return ConnectionFailedError, f"cannot reach the proxy for {url} ({reason}); check http_proxy and " \
                                          "https_proxy", True
        if isinstance(error, (requests_errors.InvalidSchema, requests_errors.InvalidURL,
                              requests_errors.MissingSchema, requests_errors.TooManyRedirects,
                              urllib3_errors.LocationValueError)):
            return DownloadError, f"cannot download {url}: {_reason(error)}", False
    root = _root_cause(error)
    if isinstance(root, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
        return ConnectionFailedError, f"connection to {host} lost: {url}; check network or proxy settings", True
    if isinstance(root, ssl.SSLError) or (urllib3_errors is not None and isinstance(root, urllib3_errors.SSLError)):
        reason = getattr(root, "verify_message", None) or getattr(root, "reason", None) or root
        return (
            TLSError,
            f"secure connection to {host} failed ({reason}); if your network inspects HTTPS traffic, point "
            "REQUESTS_CA_BUNDLE or SSL_CERT_FILE to your organisation's certificate bundle",
            False,
        )
    timeouts, not_timeouts = (socket.timeout, TimeoutError), ()
    if urllib3_errors is not None:
        timeouts += (requests_errors.Timeout, urllib3_errors.TimeoutError)
        not_timeouts = urllib3_errors.NewConnectionError  # a subclass of urllib3's ConnectTimeoutError
    if isinstance(root, timeouts) and not isinstance(root, not_timeouts):
        return DownloadTimeoutError, f"no data from {host} for {timeout:g} s: {url}; try again later", True
    if isinstance(root, http.client.IncompleteRead):
        return ConnectionFailedError, f"connection to {host} closed before the end of {url}; check network or " \
                                      "proxy settings", True
    network = (http.client.HTTPException, OSError)
    if urllib3_errors is not None:
        network += (requests_errors.RequestException, urllib3_errors.HTTPError)
    if isinstance(root, network):
        return ConnectionFailedError, f"cannot download {url}: {_reason(root)}; check network or proxy settings", True
    return None


def _reason(error: BaseException) -> str:
    return _one_line(str(getattr(error, "strerror", None) or error))



# --- progress -----------------------------------------------------------------------------------


class _ProgressReporter:
    """Turns byte counts into Progress reports: at most one per PROGRESS_INTERVAL, plus a final one."""

    def __init__(self, callback: Callable[[Progress], None] | None, total: int | None) -> None:
        self._callback = callback
        self._total = total
        self._samples: collections.deque = collections.deque()
        self._last_report = float("-inf")

    def start(self, done: int, total: int | None) -> None:
        """A (new) attempt begins at ``done``: the rate counts only bytes that arrive from here on."""
        self._total = total
        self._samples.clear()
        self._samples.append((time.monotonic(), done))

    def update(self, done: int) -> None:
        if self._callback is None:
            return
        now = time.monotonic()
        self._samples.append((now, done))
        while len(self._samples) > 2 and now - self._samples[1][0] >= RATE_WINDOW:
            self._samples.popleft()
        if now - self._last_report >= PROGRESS_INTERVAL:
            self._last_report = now
            self._callback(self._progress(done, now))

    def finish(self, done: int) -> None:
        if self._callback is not None:
            self._callback(Progress(done=done, total=done, rate=self._progress(done, time.monotonic()).rate, eta=0.0))

    def _progress(self, done: int, now: float) -> Progress:
        rate = 0.0
        if self._samples:
            first_time, first_done = self._samples[0]
            if now > first_time:
                rate = (done - first_done) / (now - first_time)
        eta = None
        if self._total is not None and rate > 0:
            eta = max(0.0, (self._total - done) / rate)
        return Progress(done=done, total=self._total, rate=rate, eta=eta)

"""ModelRegistryLib.download against a real, misbehaving HTTP server on 127.0.0.1."""

from __future__ import annotations

import contextlib
import hashlib
import os
import pathlib
import random
import shutil
import socket
import subprocess
import threading
import time

import pytest
from registry_test_server import RegistryTestServer

from ModelRegistryLib.download import Progress, download_file, fetch_bytes, file_sha256
from ModelRegistryLib.errors import (
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

MIB = 1024 * 1024


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def server():
    with RegistryTestServer() as running:
        yield running


@pytest.fixture
def no_proxy_environment(monkeypatch):
    """Loopback traffic goes direct whatever proxy the machine running the tests has set."""
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.delenv("NO_PROXY", raising=False)


pytestmark = pytest.mark.usefixtures("no_proxy_environment")


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def fetch(server, data: bytes, destination, **options) -> str:
    """download_file of the server's /m.bin with the right sha256 and size unless told otherwise."""
    options.setdefault("sha256", sha(data))
    options.setdefault("size", len(data))
    options.setdefault("backoff", 0.01)
    return download_file(server.url("/m.bin"), str(destination), **options)


def read(path) -> bytes:
    with open(path, "rb") as file:
        return file.read()


# --- complete downloads and progress ------------------------------------------------------------


def test_download_arrives_verified_and_progress_is_sane(server, tmp_path):
    data = payload(3 * MIB)
    server.add("/m.bin", data)
    reports = []
    destination = tmp_path / "m.bin"
    assert fetch(server, data, destination, progress=reports.append) == str(destination)
    assert read(destination) == data
    assert not os.path.exists(str(destination) + ".part")
    dones = [report.done for report in reports]
    assert dones == sorted(dones)
    assert reports[-1].done == reports[-1].total == len(data)
    assert reports[-1].fraction == 1.0
    assert all(report.total == len(data) for report in reports)
    [request] = server.requests("/m.bin")
    assert request.range is None and request.sent == len(data)


def test_progress_is_reported_about_ten_times_a_second_with_rate_and_time_left(server, tmp_path):
    data = payload(600_000)
    server.add("/m.bin", data, bytes_per_second=1_200_000)
    reports = []
    started = time.monotonic()
    fetch(server, data, tmp_path / "m.bin", progress=reports.append)
    elapsed = time.monotonic() - started
    assert 3 <= len(reports) <= elapsed * 10 + 2
    middle = reports[len(reports) // 2]
    assert middle.rate > 0 and middle.eta is not None and 0 < middle.fraction < 1
    assert "kB of 600.0 kB" in middle.text and "/s" in middle.text and "left" in middle.text


def test_progress_text_without_total_or_rate():
    assert Progress(done=1_500_000, total=None, rate=0.0, eta=None).text == "1.5 MB"
    assert Progress(done=0, total=0, rate=0.0, eta=None).fraction == 1.0


def test_existing_good_destination_returns_without_network(server, tmp_path):
    data = payload(10_000)
    server.add("/m.bin", data)
    destination = tmp_path / "m.bin"
    destination.write_bytes(data)
    reports = []
    fetch(server, data, destination, progress=reports.append)
    assert server.requests() == []
    assert [(report.done, report.total) for report in reports] == [(len(data), len(data))]


def test_existing_wrong_destination_is_replaced(server, tmp_path):
    data = payload(10_000)
    server.add("/m.bin", data)
    destination = tmp_path / "m.bin"
    destination.write_bytes(payload(10_000, seed=1))
    fetch(server, data, destination)
    assert read(destination) == data


def test_complete_part_left_before_the_rename_needs_no_network(server, tmp_path):
    data = payload(10_000)
    server.add("/m.bin", data)
    destination = tmp_path / "m.bin"
    (tmp_path / "m.bin.part").write_bytes(data)
    fetch(server, data, destination)
    assert read(destination) == data
    assert server.requests() == []


def test_unknown_size_is_taken_from_the_server(server, tmp_path):
    data = payload(100_000)
    server.add("/m.bin", data, no_content_length=True)
    reports = []
    fetch(server, data, tmp_path / "m.bin", size=None, progress=reports.append)
    assert read(tmp_path / "m.bin") == data
    assert reports[0].total is None and reports[-1].total == len(data)


# --- resume -------------------------------------------------------------------------------------


def test_dropped_connection_resumes_without_fetching_bytes_twice(server, tmp_path):
    data = payload(3 * MIB)
    server.add("/m.bin", data, drop_after=1_000_000, times=1)
    fetch(server, data, tmp_path / "m.bin")
    assert read(tmp_path / "m.bin") == data
    first, second = server.requests("/m.bin")
    assert first.sent == 1_000_000
    assert (second.range_start, second.status) == (1_000_000, 206)
    assert first.sent + second.sent == len(data)


def test_connection_dropping_every_time_still_finishes_because_each_attempt_progresses(server, tmp_path):
    data = payload(2_000_000)
    server.add("/m.bin", data, drop_after=400_000)
    fetch(server, data, tmp_path / "m.bin", retries=1)
    assert read(tmp_path / "m.bin") == data
    requests = server.requests("/m.bin")
    assert [r.range_start for r in requests] == [0, 400_000, 800_000, 1_200_000, 1_600_000]
    assert sum(r.sent for r in requests) == len(data)


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    data = payload(500_000)
    server.add("/m.bin", data, no_range=True)
    (tmp_path / "m.bin.part").write_bytes(b"stale bytes of another attempt")
    fetch(server, data, tmp_path / "m.bin")
    assert read(tmp_path / "m.bin") == data
    [request] = server.requests("/m.bin")
    assert request.range_start > 0 and request.status == 200


def test_part_as_long_as_the_file_of_unknown_size_starts_over_after_416(server, tmp_path):
    data = payload(50_000)
    server.add("/m.bin", data)
    (tmp_path / "m.bin.part").write_bytes(data)
    fetch(server, data, tmp_path / "m.bin", size=None)
    assert read(tmp_path / "m.bin") == data
    assert [(r.range_start, r.status) for r in server.requests()] == [(len(data), 416), (0, 200)]


def test_corrupt_part_is_deleted_and_the_next_call_succeeds(server, tmp_path):
    data = payload(500_000)
    server.add("/m.bin", data)
    (tmp_path / "m.bin.part").write_bytes(payload(1000, seed=7))
    with pytest.raises(ChecksumMismatchError):
        fetch(server, data, tmp_path / "m.bin")
    assert os.listdir(tmp_path) == []
    fetch(server, data, tmp_path / "m.bin")
    assert read(tmp_path / "m.bin") == data


@pytest.mark.parametrize("mangling", ["wrong_range", "no_content_range"])
def test_part_the_server_answers_with_the_wrong_range_is_fetched_again_whole(server, tmp_path, mangling):
    # Resuming such a server can never work: its .part must not make this or any later download fail.
    data = payload(500_000)
    server.add("/m.bin", data, **{mangling: True})
    (tmp_path / "m.bin.part").write_bytes(data[:200_000])
    fetch(server, data, tmp_path / "m.bin", retries=0)
    assert read(tmp_path / "m.bin") == data
    assert [(r.range_start, r.status) for r in server.requests()] == [(200_000, 206), (0, 200)]


def test_a_server_that_mangled_a_range_is_not_asked_for_one_again(server, tmp_path):
    data = payload(600_000)
    server.add("/m.bin", data, wrong_range=True, drop_after=400_000, times=2)
    (tmp_path / "m.bin.part").write_bytes(data[:100_000])
    fetch(server, data, tmp_path / "m.bin", retries=1)
    assert read(tmp_path / "m.bin") == data
    assert [r.range_start for r in server.requests()] == [100_000, 0, 0]


def test_stall_times_out_then_resumes(server, tmp_path):
    data = payload(200_000)
    server.add("/m.bin", data, stall_after=50_000, times=1)
    fetch(server, data, tmp_path / "m.bin", timeout=0.5)
    assert read(tmp_path / "m.bin") == data
    assert [r.range_start for r in server.requests("/m.bin")] == [0, 50_000]


# --- failures -----------------------------------------------------------------------------------


def test_wrong_bytes_are_refused_and_nothing_is_left(server, tmp_path):
    data = payload(300_000)
    server.add("/m.bin", data, wrong_bytes=True)
    with pytest.raises(ChecksumMismatchError) as caught:
        fetch(server, data, tmp_path / "m.bin")
    assert caught.value.expected == sha(data) and caught.value.actual != sha(data)
    assert caught.value.url == server.url("/m.bin")
    assert "sha256" in str(caught.value)
    assert os.listdir(tmp_path) == []


def test_size_differing_from_the_index_is_refused(server, tmp_path):
    data = payload(300_000)
    server.add("/m.bin", data)
    with pytest.raises(ChecksumMismatchError) as caught:
        fetch(server, data, tmp_path / "m.bin", size=len(data) - 1)
    assert (caught.value.expected, caught.value.actual) == (len(data) - 1, len(data))
    assert os.listdir(tmp_path) == []


def test_body_longer_than_expected_is_cut_off(server, tmp_path):
    data = payload(3 * MIB)
    server.add("/m.bin", data, no_content_length=True)
    with pytest.raises(ChecksumMismatchError, match="more than"):
        fetch(server, data, tmp_path / "m.bin", size=MIB)
    assert os.listdir(tmp_path) == []


def test_not_found_is_not_retried(server, tmp_path):
    with pytest.raises(NotFoundError, match="404") as caught:
        fetch(server, b"", tmp_path / "m.bin", size=10, retries=3)
    assert caught.value.url == server.url("/m.bin")
    assert len(server.requests()) == 1
    assert os.listdir(tmp_path) == []


def test_other_client_errors_are_not_retried(server, tmp_path):
    server.add("/m.bin", b"x", status=403)
    with pytest.raises(DownloadError, match="403") as caught:
        fetch(server, b"x", tmp_path / "m.bin", retries=3)
    assert not isinstance(caught.value, NotFoundError)
    assert len(server.requests()) == 1


def test_server_error_twice_then_ok_succeeds(server, tmp_path):
    data = payload(10_000)
    server.add("/m.bin", data, status=500, times=2)
    fetch(server, data, tmp_path / "m.bin", retries=2)
    assert read(tmp_path / "m.bin") == data
    assert [r.status for r in server.requests()] == [500, 500, 200]


def test_server_error_always_gives_up_after_the_retries_with_backoff(server, tmp_path):
    server.add("/m.bin", b"x", status=503)
    started = time.monotonic()
    with pytest.raises(ServerError, match=r"HTTP 503.*after 3 attempts"):
        fetch(server, b"x", tmp_path / "m.bin", retries=2, backoff=0.05)
    assert time.monotonic() - started >= 0.05 + 0.1
    assert len(server.requests()) == 3


def test_stall_every_time_raises_timeout(server, tmp_path):
    data = payload(100_000)
    server.add("/m.bin", data, stall_after=0)
    started = time.monotonic()
    with pytest.raises(DownloadTimeoutError, match=r"no data .* for 0.5 s.*after 2 attempts"):
        fetch(server, data, tmp_path / "m.bin", timeout=0.5, retries=1)
    assert time.monotonic() - started < 5
    assert len(server.requests()) == 2


def test_connection_refused_says_to_check_the_network(tmp_path):
    url = f"http://127.0.0.1:{unused_port()}/m.bin"
    with pytest.raises(ConnectionFailedError, match="check network or proxy settings"):
        download_file(url, str(tmp_path / "m.bin"), sha256="0" * 64, retries=1, backoff=0.01)


@pytest.fixture
def plain_tcp_server():
    """A server that answers anything, a TLS handshake included, with plain HTTP; counts its connections."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.05)
    stopping = threading.Event()
    connections = []

    def serve() -> None:
        while not stopping.is_set():
            try:
                connection, _ = listener.accept()
            except socket.timeout:
                continue
            connections.append(connection)
            # The client may reset the connection once it has read the answer.
            with connection, contextlib.suppress(OSError):
                connection.settimeout(5)
                connection.recv(65536)
                connection.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                while connection.recv(65536):
                    pass

    thread = threading.Thread(target=serve)
    thread.start()
    yield listener.getsockname()[1], connections
    stopping.set()
    thread.join()
    listener.close()


def test_tls_failure_is_reported_and_not_retried(plain_tcp_server, tmp_path):
    port, connections = plain_tcp_server
    with pytest.raises(TLSError, match=r"secure connection to 127\.0\.0\.1"):
        download_file(f"https://127.0.0.1:{port}/m.bin", str(tmp_path / "m.bin"), sha256="0" * 64, retries=3)
    assert len(connections) == 1


def test_redirect_to_a_local_file_is_refused_and_the_file_never_read(server, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"private")
    server.add("/m.bin", b"", redirect_to=secret.as_uri())
    with pytest.raises(DownloadError) as caught:
        fetch(server, b"private", tmp_path / "copy" / "m.bin", retries=3)
    assert not isinstance(caught.value, ChecksumMismatchError)
    assert len(server.requests()) == 1
    assert not (tmp_path / "copy").exists() or os.listdir(tmp_path / "copy") == []


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1 (cert file, key file), made by the openssl command."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return str(cert), str(key)


@pytest.fixture
def tls_server(certificate, monkeypatch):
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE"):
        monkeypatch.delenv(name, raising=False)
    with RegistryTestServer(certificate=certificate) as running:
        yield running


@pytest.mark.skipif(not shutil.which("openssl"), reason="needs the openssl command")
def test_unknown_certificate_is_a_tls_error_saying_what_to_set(tls_server, tmp_path):
    data = payload(20_000)
    tls_server.add("/m.bin", data)
    with pytest.raises(TLSError, match=r"\(self.signed certificate\).*REQUESTS_CA_BUNDLE or SSL_CERT_FILE") as caught:
        fetch(tls_server, data, tmp_path / "m.bin", retries=2)
    assert "\n" not in str(caught.value)


@pytest.mark.skipif(not shutil.which("openssl"), reason="needs the openssl command")
@pytest.mark.parametrize("variable", ["SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"])
def test_certificate_bundle_from_the_environment_is_trusted(tls_server, certificate, tmp_path, monkeypatch, variable):
    data = payload(20_000)
    tls_server.add("/m.bin", data)
    monkeypatch.setenv(variable, certificate[0])
    fetch(tls_server, data, tmp_path / "m.bin")
    assert read(tmp_path / "m.bin") == data


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux's /dev/full")
def test_full_disk_is_reported_with_the_space_needed(server, tmp_path):
    # /dev/full fails every write with ENOSPC: a real full-disk error from the kernel, deterministic and
    # without root (a tiny tmpfs needs mount rights) and without replacing any of the code under test.
    data = payload(300_000)
    server.add("/m.bin", data)
    os.symlink("/dev/full", tmp_path / "m.bin.part")
    with pytest.raises(DiskFullError, match=r"disk full .*300\.0 kB more needed"):
        fetch(server, data, tmp_path / "m.bin")
    assert not (tmp_path / "m.bin").exists()


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="sha256"):
        download_file("file:///x", str(tmp_path / "m.bin"), sha256="abc")
    with pytest.raises(DownloadError, match="only http, https and file"):
        download_file("ftp://127.0.0.1/m.bin", str(tmp_path / "m.bin"), sha256="0" * 64)


# --- cancel -------------------------------------------------------------------------------------


def test_cancel_keeps_the_part_and_a_later_call_resumes_it(server, tmp_path):
    data = payload(4 * MIB)
    server.add("/m.bin", data)
    cancel = threading.Event()
    with pytest.raises(CancelledError):
        fetch(server, data, tmp_path / "m.bin", cancel=cancel, progress=lambda report: cancel.set())
    kept = os.path.getsize(tmp_path / "m.bin.part")
    assert 0 < kept < len(data)
    assert not (tmp_path / "m.bin").exists()
    fetch(server, data, tmp_path / "m.bin")
    assert read(tmp_path / "m.bin") == data
    assert server.requests()[-1].range_start == kept


def test_cancel_interrupts_a_silent_server_at_once(server, tmp_path):
    data = payload(100_000)
    server.add("/m.bin", data, stall_after=1000)
    cancel = threading.Event()
    timer = threading.Timer(0.3, cancel.set)
    timer.start()
    started = time.monotonic()
    with pytest.raises(CancelledError):
        fetch(server, data, tmp_path / "m.bin", cancel=cancel, timeout=30)
    assert time.monotonic() - started < 3
    timer.join()
    assert os.path.getsize(tmp_path / "m.bin.part") == 1000


def test_cancel_interrupts_a_server_that_never_answers_the_request(tmp_path):
    # The kernel completes the connection, nobody reads the request: the client waits for headers.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        cancel = threading.Event()
        timer = threading.Timer(0.3, cancel.set)
        timer.start()
        started = time.monotonic()
        with pytest.raises(CancelledError):
            download_file(f"http://127.0.0.1:{listener.getsockname()[1]}/m.bin", str(tmp_path / "m.bin"),
                          sha256="0" * 64, cancel=cancel, timeout=30)
        assert time.monotonic() - started < 1.5
        timer.join()
    assert os.listdir(tmp_path) == []


def test_cancel_interrupts_the_backoff(server, tmp_path):
    server.add("/m.bin", b"x", status=500)
    cancel = threading.Event()
    timer = threading.Timer(0.3, cancel.set)
    timer.start()
    started = time.monotonic()
    with pytest.raises(CancelledError):
        fetch(server, b"x", tmp_path / "m.bin", cancel=cancel, backoff=30)
    assert time.monotonic() - started < 3
    timer.join()


# --- file URLs and proxies ----------------------------------------------------------------------


def test_file_url_downloads_and_resumes(tmp_path):
    data = payload(2 * MIB)
    source = tmp_path / "source.bin"
    source.write_bytes(data)
    (tmp_path / "m.bin.part").write_bytes(data[:MIB])
    download_file(source.as_uri(), str(tmp_path / "m.bin"), sha256=sha(data), size=len(data))
    assert read(tmp_path / "m.bin") == data


def test_missing_file_url_is_not_found(tmp_path):
    with pytest.raises(NotFoundError, match="file not found"):
        download_file((tmp_path / "absent.bin").as_uri(), str(tmp_path / "m.bin"), sha256="0" * 64)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs fifos")
def test_file_url_of_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    outcome = []

    def attempt():
        try:
            download_file(fifo.as_uri(), str(tmp_path / "m.bin"), sha256="0" * 64)
        except DownloadError as error:
            outcome.append(error)

    worker = threading.Thread(target=attempt)
    worker.start()
    worker.join(5)
    blocked = worker.is_alive()
    while worker.is_alive():  # it waits for a writer (each retry again): give it one, so that the test ends
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(0.2)
    assert not blocked
    assert len(outcome) == 1 and "not a regular file" in str(outcome[0])


def test_http_proxy_environment_variable_is_honoured(server, tmp_path, monkeypatch):
    data = payload(50_000)
    server.add("/m.bin", data)
    monkeypatch.setenv("http_proxy", server.base_url)
    monkeypatch.delenv("no_proxy")
    # Nothing listens at the address itself: the download can only succeed through the proxy.
    url = f"http://127.0.0.1:{unused_port()}/m.bin"
    download_file(url, str(tmp_path / "m.bin"), sha256=sha(data), size=len(data), retries=0)
    assert read(tmp_path / "m.bin") == data
    [request] = server.requests()
    assert request.proxied and request.path == "/m.bin"


def test_file_sha256_matches_hashlib(tmp_path):
    data = payload(3 * MIB + 5)
    (tmp_path / "f").write_bytes(data)
    assert file_sha256(str(tmp_path / "f")) == sha(data)


# --- fetch_bytes --------------------------------------------------------------------------------


def test_fetch_bytes_returns_the_body(server):
    server.add("/index.json", b'{"models": []}')
    assert fetch_bytes(server.url("/index.json"), max_bytes=100) == b'{"models": []}'


def test_fetch_bytes_refuses_a_body_announced_over_the_limit(server):
    server.add("/index.json", payload(5000))
    with pytest.raises(DownloadError, match=r"larger than the limit of 4\.0 kB"):
        fetch_bytes(server.url("/index.json"), max_bytes=4000, retries=3)
    assert len(server.requests()) == 1


def test_fetch_bytes_refuses_an_unannounced_body_over_the_limit(server):
    server.add("/index.json", payload(5 * MIB), no_content_length=True)
    with pytest.raises(DownloadError, match="larger than the limit"):
        fetch_bytes(server.url("/index.json"), max_bytes=MIB)


def test_fetch_bytes_retries_a_dropped_connection(server):
    data = payload(100_000)
    server.add("/index.json", data, drop_after=10_000, times=1)
    assert fetch_bytes(server.url("/index.json"), max_bytes=MIB, backoff=0.01) == data
    assert [r.range for r in server.requests()] == [None, None]


def test_fetch_bytes_not_found(server):
    with pytest.raises(NotFoundError):
        fetch_bytes(server.url("/absent.json"), max_bytes=100)


def test_every_error_is_a_registry_error():
    for kind in (
        CancelledError,
        ChecksumMismatchError,
        ConnectionFailedError,
        DiskFullError,
        DownloadTimeoutError,
        NotFoundError,
        ServerError,
        TLSError,
    ):
        assert issubclass(kind, RegistryError)


def test_server_stops_with_no_thread_left():
    before = set(threading.enumerate())
    with RegistryTestServer() as stalling:
        stalling.add("/m.bin", payload(10_000), stall_after=10, stall_seconds=60)
        with socket.create_connection(("127.0.0.1", int(stalling.base_url.rsplit(":", 1)[1]))) as client:
            client.sendall(b"GET /m.bin HTTP/1.1\r\nHost: x\r\n\r\n")
            client.recv(1000)
            started = time.monotonic()
    assert time.monotonic() - started < 2
    assert set(threading.enumerate()) <= before


def test_file_urls_resolve_like_paths(tmp_path):
    path = tmp_path / "with space.bin"
    path.write_bytes(b"abc")
    assert fetch_bytes(pathlib.Path(path).as_uri(), max_bytes=10) == b"abc"

"""Files whose publisher gives no sha256: what the publisher gives is checked, the rest is trusted on first use.

Some publishers give no checksum at all (SlicerMONAIAuto3DSeg's ``Models.json``) or only a weaker one (the MONAI
model zoo: MD5 in ``large_files.yml``, SHA-1 in ``model_info.json``). For such a file:

- the first download is checked against the publisher's MD5 or SHA-1 where there is one, and its sha256 is then
  pinned in ``<cache>/trusted-downloads.json`` (URL → sha256, size, when);
- every later download of that URL must have the pinned sha256 (a file replaced on the server is refused, as a
  checksum mismatch, until the user removes the pin with :meth:`TrustStore.forget`);
- neither is silent: each says what it was checked against in a :class:`TrustNotice`, which the store passes on
  as install progress (stage ``"trust"``) and the command lines print; the model card says "not verified by the
  publisher" for such versions.

Trust on first use protects against a file changed after the first download; it cannot tell whether the first
download itself was the publisher's.

Example::

    >>> import os, pathlib, tempfile
    >>> from ModelRegistryLib.index import ModelFile
    >>> folder = tempfile.mkdtemp()
    >>> source = os.path.join(folder, "model.zip")
    >>> with open(source, "wb") as file:
    ...     _ = file.write(b"weights")
    >>> trust = TrustStore(os.path.join(folder, "cache"))
    >>> unverified = ModelFile(pathlib.Path(source).as_uri(), "", None, "model.zip")
    >>> path, digest, notice = trust.first_download(unverified, os.path.join(folder, "downloads"))
    >>> notice.text.startswith("model.zip: not verified by the publisher (it gives no checksum); trusted on first use")
    True
    >>> trust.resolve(unverified).sha256 == digest, trust.resolve(unverified).size
    (True, 7)
    >>> import shutil; shutil.rmtree(folder)
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, replace

from .download import Progress, download_file, file_digests
from .errors import ChecksumMismatchError, RegistryError
from .files import write_json_atomically
from .index import ModelFile
from .locking import FileLock

PINS_FILE = "trusted-downloads.json"
NOT_VERIFIED = "not verified by the publisher"
_DIGEST_NAMES = {"md5": "MD5", "sha1": "SHA-1"}


@dataclass(frozen=True)
class Pin:
    """The sha256 and size of the first download of ``url``, and when it was pinned (UTC, ISO 8601)."""

    url: str
    sha256: str
    size: int
    pinned_at: str


@dataclass(frozen=True)
class TrustNotice:
    """What a download of a file without a publisher's sha256 was checked against, in words for the user."""

    url: str
    text: str


def _name(model_file: ModelFile) -> str:
    return model_file.name or os.path.basename(urllib.parse.urlsplit(model_file.url).path)


def describe(model_file: ModelFile, pin: Pin | None = None) -> str:
    """How ``model_file`` is verified, in words (for a card or a command line).

    >>> describe(ModelFile("https://x.org/m.pt", "", None, "m.pt", md5=32 * "a"))
    "m.pt: checked against the publisher's MD5 (it gives no sha256); its sha256 is pinned on the first download"
    """
    name = _name(model_file)
    if model_file.sha256:
        return f"{name}: verified by the publisher's sha256"
    digest = model_file.publisher_digest
    if digest:
        what = f"checked against the publisher's {_DIGEST_NAMES[digest[0]]} (it gives no sha256)"
    else:
        what = f"{NOT_VERIFIED} (it gives no checksum); trusted on first use"
    if pin is None:
        return f"{name}: {what}; its sha256 is pinned on the first download"
    return f"{name}: {what}; its first download's sha256 {pin.sha256[:12]}… (pinned {pin.pinned_at}) must match"


class TrustStore:
    """The sha256 pins of first downloads, kept in ``<cache_dir>/trusted-downloads.json``."""

    def __init__(self, cache_dir: str) -> None:
        self.cache_dir = os.path.abspath(cache_dir)
        self.path = os.path.join(self.cache_dir, PINS_FILE)

    def _read(self) -> dict:
        try:
            with open(self.path, encoding="utf-8") as file:
                pins = json.load(file)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as error:
            raise RegistryError(f"Cannot read {self.path}: {error}; remove it to trust every file anew") from error
        if not isinstance(pins, dict):
            raise RegistryError(f"{self.path} is not a JSON object; remove it to trust every file anew")
        return pins

    def pins(self) -> list:
        """Every pin, by URL."""
        found = []
        for url, item in sorted(self._read().items()):
            with contextlib.suppress(KeyError, TypeError, ValueError):
                found.append(Pin(url, str(item["sha256"]), int(item["size"]), str(item.get("pinnedAt", ""))))
        return found

    def pinned(self, url: str) -> Pin | None:
        return next((pin for pin in self.pins() if pin.url == url), None)

    def _lock(self) -> FileLock:
        return FileLock(os.path.join(self.cache_dir, "locks", "trusted-downloads.lock"))

    def pin(self, url: str, sha256: str, size: int) -> Pin:
        """Pin ``url`` to ``sha256`` unless it is pinned already; a pin to another digest is a ChecksumMismatchError
        (another process pinned other bytes for the same URL in between)."""
        with self._lock():
            pins = self._read()
            kept = pins.get(url)
            if isinstance(kept, dict) and kept.get("sha256") not in (None, sha256):
                raise ChecksumMismatchError(
                    f"{url} changed: its sha256 is {sha256}, the one pinned on its first download is {kept['sha256']}",
                    url, expected=kept["sha256"], actual=sha256)
            if not isinstance(kept, dict):
                pinned_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
                pins[url] = {"sha256": sha256, "size": size, "pinnedAt": pinned_at}
                write_json_atomically(self.path, pins)
        return self.pinned(url)

    def forget(self, url: str) -> bool:
        """Remove the pin of ``url`` (the publisher replaced the file on purpose); True if there was one."""
        with self._lock():
            pins = self._read()
            if url not in pins:
                return False
            del pins[url]
            write_json_atomically(self.path, pins)
        return True

    def resolve(self, model_file: ModelFile) -> ModelFile:
        """``model_file`` with the pinned sha256 and size filled in where its URL is pinned; else unchanged."""
        if model_file.sha256:
            return model_file
        pin = self.pinned(model_file.url)
        if pin is None:
            return model_file
        return replace(model_file, sha256=pin.sha256, size=pin.size)

    def changed_error(self, model_file: ModelFile, error: ChecksumMismatchError) -> ChecksumMismatchError:
        """The error of a download that does not match its pin: the file changed since its first download."""
        pin = self.pinned(model_file.url)
        return ChecksumMismatchError(
            f"{model_file.url} changed since its first download ({NOT_VERIFIED}): its sha256 is {error.actual}, the "
            f"one pinned on {pin.pinned_at if pin else 'its first download'} is {error.expected}. If the publisher "
            "replaced it on purpose: python -m ModelRegistryLib forget-download URL, then install again",
            model_file.url, expected=error.expected, actual=error.actual)

    def notice(self, model_file: ModelFile) -> TrustNotice:
        """What a download of a pinned file was checked against."""
        return TrustNotice(model_file.url, describe(model_file, self.pinned(model_file.url)))

    def first_download(
        self,
        model_file: ModelFile,
        folder: str,
        *,
        progress: Callable[[Progress], None] | None = None,
        cancel: threading.Event | None = None,
        timeout: float = 30.0,
    ) -> tuple:
        """Download a file no sha256 is known for into ``folder``, check it against the publisher's digest (if any),
        pin its sha256; returns ``(path, sha256, TrustNotice)``.

        The download starts afresh (a ``.part`` left by an earlier attempt is not resumed: with nothing to check
        it against, bytes of two different files could be joined and pinned).
        """
        destination = os.path.join(folder, first_download_name(model_file.url))
        os.makedirs(folder, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.remove(destination + ".part")
        download_file(model_file.url, destination, sha256=None, size=model_file.size, progress=progress,
                      cancel=cancel, timeout=timeout, durable=False)
        try:
            algorithm = model_file.publisher_digest[0] if model_file.publisher_digest else None
            digests = file_digests(destination, ("sha256",) + ((algorithm,) if algorithm else ()), cancel=cancel)
            if algorithm and digests[algorithm] != model_file.publisher_digest[1]:
                raise ChecksumMismatchError(
                    f"{model_file.url} is corrupt or was replaced: its {_DIGEST_NAMES[algorithm]} is "
                    f"{digests[algorithm]}, the publisher gives {model_file.publisher_digest[1]}",
                    model_file.url, expected=model_file.publisher_digest[1], actual=digests[algorithm])
            pin = self.pin(model_file.url, digests["sha256"], os.path.getsize(destination))
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.remove(destination)
            raise
        return destination, pin.sha256, TrustNotice(model_file.url, _first_text(model_file, pin))


def _first_text(model_file: ModelFile, pin: Pin) -> str:
    name = _name(model_file)
    digest = model_file.publisher_digest
    if digest:
        return (f"{name}: matches the publisher's {_DIGEST_NAMES[digest[0]]} (it gives no sha256); its sha256 "
                f"{pin.sha256[:12]}… is now pinned for later downloads")
    return (f"{name}: {NOT_VERIFIED} (it gives no checksum); trusted on first use: its sha256 {pin.sha256[:12]}… "
            "is now pinned, and every later download must match it")


def first_download_name(url: str) -> str:
    """The file name of the first download of ``url`` (made of a digest: no path from the URL reaches the disk)."""
    return "unverified-" + hashlib.sha256(url.encode("utf-8")).hexdigest()

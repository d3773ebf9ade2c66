"""The errors the model registry raises: one class per thing a user can act on.

Every error derives from :class:`RegistryError`, so a caller (the panel, the CLI, DeepSegment) can
catch that one class and show ``str(error)``: a single line that says what went wrong and, where
there is one, what to do about it. The subclasses let code react to a kind of failure (a cancel is
not a failure to report; a checksum mismatch is never retried).

Example::

    >>> error = NotFoundError("not found (HTTP 404): https://example.org/m.zip", url="https://example.org/m.zip")
    >>> isinstance(error, DownloadError), isinstance(error, RegistryError), error.url
    (True, True, 'https://example.org/m.zip')
    >>> ChecksumMismatchError("corrupt", expected="ab", actual="cd").expected
    'ab'
"""

from __future__ import annotations


class RegistryError(Exception):
    """Something the registry could not do; ``str(error)`` is one line a user understands."""


class CancelledError(RegistryError):
    """The user cancelled; nothing to report, and whatever can be resumed was kept."""


class DownloadError(RegistryError):
    """A download failed; ``url`` is what was being fetched."""

    def __init__(self, message: str, url: str = "") -> None:
        super().__init__(message)
        self.url = url


class NotFoundError(DownloadError):
    """The server answered 404 or 410, or a ``file://`` path does not exist: retrying will not help."""


class ServerError(DownloadError):
    """The server kept failing (HTTP 5xx, 408 or 429) through every retry."""


class DownloadTimeoutError(DownloadError):
    """No byte arrived for the timeout, through every retry."""


class ConnectionFailedError(DownloadError):
    """The connection was refused, reset or unreachable through every retry."""


class TLSError(DownloadError):
    """The secure connection failed (certificate, protocol); not retried, the same would happen again."""


class ChecksumMismatchError(DownloadError):
    """What arrived differs in size or sha256 from what the index promises; ``expected`` and ``actual`` say how."""

    def __init__(
        self,
        message: str,
        url: str = "",
        *,
        expected: str | int | None = None,
        actual: str | int | None = None,
    ) -> None:
        super().__init__(message, url)
        self.expected = expected
        self.actual = actual


class DiskFullError(RegistryError):
    """The disk filled up while writing; the message says how much space was needed."""


class UnsafeArchiveError(RegistryError):
    """An archive entry would land outside the target folder, is a link or device, breaks a size or count limit,
    or would take the place of the model store's own record of a version's files."""

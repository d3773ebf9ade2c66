"""Command line of the model registry: ``python -m ModelRegistryLib ...`` (run from the ModelRegistry folder).

Every failure ends with exit code 1 and one line on standard error saying why (usage errors included, and
arguments are checked before any index is read or file written); an interrupt (Ctrl+C) ends with 130.
Progress goes to standard error so that standard output can be piped.

Example::

    >>> main(["--cache-dir", __import__("tempfile").mkdtemp(), "--offline", "list"])  # doctest: +ELLIPSIS
    brain-tissue-demo ... not installed ...
    0
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import threading
import urllib.parse
from collections.abc import Sequence

from .card import card_text
from .errors import RegistryError
from .index import IndexValidationError
from .registry import Registry, bundled_source, parse_model_spec, user_sources
from .sources import IndexSource
from .store import InstallProgress, default_cache_dir
from .trust import NOT_VERIFIED


class _UsageError(Exception):
    """The command line is wrong; the message says how."""


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors as one line and exit code 1 like every other failure."""

    def error(self, message: str):
        raise _UsageError(f"{message} (see {self.prog} --help)")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m ModelRegistryLib",
        description="List, install, check and remove deep-learning models of SlicerDeepLearning registries.",
    )
    parser.add_argument("--index", action="append", default=[], metavar="URL_OR_PATH",
                        help="an index to read after the bundled one and those added in Slicer (http, https, file URL,"
                        " file or folder); repeatable")
    parser.add_argument("--cache-dir", default=None, help=f"model cache folder (default: {default_cache_dir()})")
    parser.add_argument("--offline", action="store_true", help="use cached copies of remote indexes, no network")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("list", help="list the models and their state")
    commands.add_parser("show", help="show a model's card").add_argument("model", metavar="ID")
    commands.add_parser("install", help="install a model version").add_argument("model", metavar="ID[@VERSION]")
    commands.add_parser("remove", help="remove installed versions").add_argument("model", metavar="ID[@VERSION]")
    commands.add_parser("verify", help="re-hash installed files").add_argument("model", nargs="?", metavar="ID")
    commands.add_parser("import", help="install from a local archive or folder: a version an index lists, an"
                        " nnU-Net v2 results folder or zip, a MONAI bundle, a SlicerMONAIAuto3DSeg archive"
                        ).add_argument("path")
    commands.add_parser("pin", help="keep using this version").add_argument("model", metavar="ID@VERSION")
    commands.add_parser("unpin", help="use the newest installed version again").add_argument("model", metavar="ID")
    commands.add_parser("forget-download", help="forget the sha256 pinned on the first download of a file the "
                        "publisher gives no sha256 for (trust the next download anew)").add_argument("url")
    return parser


_progress_line_open = False  # a progress line was printed without its newline


def print_install_progress(step: InstallProgress) -> None:
    """An install's progress on one line of standard error, overwritten as it goes; how a file without the
    publisher's sha256 was checked gets a line of its own, which stays."""
    global _progress_line_open
    if step.stage == "trust":
        print(f"\r{' ' * 100}\rwarning: {step.text}", file=sys.stderr)
        _progress_line_open = False
        return
    percent = f"{step.fraction * 100:5.1f}% " if step.fraction is not None else ""
    _progress_line_open = step.stage != "done"
    print(f"\r{percent}{step.text}"[:100].ljust(100), end="" if _progress_line_open else "\n", file=sys.stderr)


def _list(registry: Registry) -> int:
    models = registry.models()
    if not models:
        print("No models in the registry indexes.")
        return 0
    for model in models:
        release = model.latest_release
        unverified = "" if release.verified_by_publisher else f" ({NOT_VERIFIED})"
        print(f"{model.id:32} {release.version:12} {model.modality:6} {registry.state(model.id):17} {model.title}"
              + unverified)
    return 0


def _verify(registry: Registry, spec: str | None) -> int:
    results = registry.verify(spec, progress=print_install_progress, cancel=threading.Event())
    print_install_progress(InstallProgress("done", 1.0, f"Checked {len(results)} installed version(s)"))
    for result in results:
        print(result.text)
    if not results:
        print("Nothing installed to verify.")
    damaged = [f"{result.model_id} {result.version}" for result in results if not result.ok]
    if damaged:
        raise RegistryError(f"{', '.join(damaged)} failed verification: remove and install again")
    return 0


def _check_arguments(arguments: argparse.Namespace) -> None:
    """Refuse what cannot work before reading any index or writing any file."""
    if arguments.cache_dir is not None and os.path.exists(arguments.cache_dir) and not os.path.isdir(
            arguments.cache_dir):
        raise _UsageError(f"--cache-dir {arguments.cache_dir} is not a folder")
    for location in arguments.index:
        scheme = urllib.parse.urlsplit(location).scheme.lower()
        if len(scheme) > 1 and scheme not in ("http", "https", "file"):  # one letter: a Windows drive
            raise _UsageError(f"--index {location}: only http, https and file URLs, files and folders are indexes")
    command = arguments.command
    if command in ("show", "install", "remove", "pin", "unpin") or (command == "verify" and arguments.model):
        _, version = parse_model_spec(arguments.model)
        if command == "pin" and version is None:
            raise _UsageError("give the version to pin: pin ID@VERSION")
        if command in ("show", "unpin") and version is not None:
            raise _UsageError(f"{command} takes a model id without a version")
    if command == "import" and not (os.path.isfile(arguments.path) or os.path.isdir(arguments.path)):
        raise _UsageError(f"Nothing to import at {arguments.path}: no such file or folder")


def run(arguments: argparse.Namespace) -> int:
    _check_arguments(arguments)
    cache_dir = arguments.cache_dir or default_cache_dir()
    sources = [bundled_source(), *user_sources(cache_dir), *(IndexSource(location) for location in arguments.index)]
    registry = Registry(sources, cache_dir)
    for status in registry.refresh(offline=arguments.offline):
        if status.error:
            print(f"warning: {status.source.location}: {status.error}", file=sys.stderr)
    command = arguments.command
    if command == "list":
        return _list(registry)
    if command == "show":
        entry, _ = registry.resolve(arguments.model)
        print(card_text(entry, installed_versions=registry.store.installed_versions(entry.id)))
        return 0
    if command == "install":
        installed = registry.ensure_installed(arguments.model, progress=print_install_progress,
                                              cancel=threading.Event())
        print(installed.path)
        return 0
    if command == "remove":
        print("Removed " + ", ".join(registry.remove(arguments.model)))
        return 0
    if command == "verify":
        return _verify(registry, arguments.model)
    if command == "import":
        print(registry.import_package(arguments.path, progress=print_install_progress, cancel=threading.Event()).path)
        return 0
    if command == "forget-download":
        if not registry.store.trust.forget(arguments.url):
            raise RegistryError(f"No sha256 is pinned for {arguments.url}")
        print(f"Forgot the sha256 pinned for {arguments.url}; its next download is trusted on first use again")
        return 0
    if command == "pin":
        registry.pin(arguments.model)
        return 0
    registry.pin(arguments.model)  # unpin: no version
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return run(_parser().parse_args(argv))
    except BrokenPipeError:  # the reader of standard output went away (| head): nothing to tell it
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (_UsageError, RegistryError, IndexValidationError, LookupError, ValueError, OSError) as error:
        _fail(str(error))
        return 1
    except KeyboardInterrupt:
        _fail("interrupted")
        return 130
    except Exception as error:  # a bug: still one line, with what a report needs
        _fail(f"unexpected {type(error).__name__}: {error} (please report this)")
        return 1


def _fail(message: str) -> None:
    global _progress_line_open
    start = "\n" if _progress_line_open else ""  # end the progress line: the error is a line of its own
    _progress_line_open = False
    with contextlib.suppress(OSError):  # standard error itself may be gone
        print(start + "error: " + " ".join(message.split()), file=sys.stderr)

"""Command line of the model registry: ``python -m ModelRegistryLib ...`` (run from the ModelRegistry folder).

Every failure ends with exit code 1 and one line saying why; progress goes to standard error so that
standard output can be piped.

Example::

    >>> main(["--cache-dir", __import__("tempfile").mkdtemp(), "--offline", "list"])  # doctest: +ELLIPSIS
    brain-tissue-demo ... not installed ...
    0
"""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Sequence

from .card import card_text
from .errors import RegistryError
from .index import IndexValidationError
from .registry import Registry, bundled_source, user_sources
from .sources import IndexSource
from .store import InstallProgress, default_cache_dir
from .trust import NOT_VERIFIED


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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


def print_install_progress(step: InstallProgress) -> None:
    """An install's progress on one line of standard error, overwritten as it goes; how a file without the
    publisher's sha256 was checked gets a line of its own, which stays."""
    if step.stage == "trust":
        print(f"\r{' ' * 100}\rwarning: {step.text}", file=sys.stderr)
        return
    percent = f"{step.fraction * 100:5.1f}% " if step.fraction is not None else ""
    print(f"\r{percent}{step.text}"[:100].ljust(100), end="" if step.stage != "done" else "\n", file=sys.stderr)


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
    results = registry.verify(spec)
    for result in results:
        print(result.text)
    if not results:
        print("Nothing installed to verify.")
    return 0 if all(result.ok for result in results) else 1


def run(arguments: argparse.Namespace) -> int:
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
        print(registry.import_package(arguments.path, progress=print_install_progress).path)
        return 0
    if command == "forget-download":
        if not registry.store.trust.forget(arguments.url):
            raise RegistryError(f"No sha256 is pinned for {arguments.url}")
        print(f"Forgot the sha256 pinned for {arguments.url}; its next download is trusted on first use again")
        return 0
    if command == "pin":
        if "@" not in arguments.model:
            raise RegistryError("Give the version to pin: ID@VERSION")
        registry.pin(arguments.model)
        return 0
    registry.pin(arguments.model.partition("@")[0])
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    arguments = _parser().parse_args(argv)
    try:
        return run(arguments)
    except (RegistryError, IndexValidationError, LookupError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130

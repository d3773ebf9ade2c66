"""The registry's long operations as job targets: what the Model Registry panel runs in a worker process.

Each function takes what a worker can receive (folders, registry dataclasses) and returns a dataclass the
panel reads; see ModelRegistryLib.jobs. The panel resolves the model and version from its indexes first, so
a worker never reads an index.

Example::

    >>> import tempfile
    >>> from ModelRegistryLib.jobs import start_job
    >>> from ModelRegistryLib.registry import Registry, bundled_source
    >>> registry = Registry([bundled_source()], tempfile.mkdtemp())
    >>> statuses = registry.refresh()
    >>> entry, version = registry.resolve("brain-tissue-demo")
    >>> job = start_job("ModelRegistryLib.tasks:install", {"cache_dir": registry.store.cache_dir,
    ...                 "entry": entry, "version": version}, description="Installing the demo model")
    >>> job.wait(120), job.state, job.result.version
    (True, 'succeeded', '1.1.0')
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from .index import ModelEntry, ModelVersion
from .registry import import_model, parse_model_spec
from .store import InstalledModel, InstallProgress, ModelStore


def _saying_trust(progress, log):
    """Install progress for the job, where how a file without the publisher's sha256 was checked is also logged as
    a warning: the panel shows only the latest progress, and that must not pass unseen. The first report of each
    stage (download, unpack, verify, done...) is logged too: the install's steps, for Slicer's log."""
    stages = []

    def report(step: InstallProgress) -> None:
        if step.stage == "trust" and log is not None:
            log(step.text, "warning")
        elif log is not None and step.stage not in stages:
            stages.append(step.stage)
            log(f"{step.stage}: {step.text}", "info")
        if progress is not None:
            progress(step)

    return report


def install(
    cache_dir: str,
    entry: ModelEntry,
    version: ModelVersion,
    progress: Callable[[InstallProgress], None] | None = None,
    cancel: threading.Event | None = None,
    log: Callable | None = None,
) -> InstalledModel:
    """Install ``version`` of ``entry`` into the store at ``cache_dir`` (nothing to do when it is there)."""
    return ModelStore(cache_dir).install(entry, version, progress=_saying_trust(progress, log), cancel=cancel)


def verify(cache_dir: str, spec: str | None = None) -> list:
    """Re-hash the installed files of ``spec`` (``id`` or ``id@version``; every model when None)."""
    model_id, version = parse_model_spec(spec) if spec else (None, None)
    return ModelStore(cache_dir).verify(model_id, version)


def import_package(cache_dir: str, path: str, entries: Sequence[ModelEntry],
                   progress: Callable[[InstallProgress], None] | None = None, cancel: threading.Event | None = None,
                   log: Callable | None = None) -> InstalledModel:
    """Install the local archive or folder at ``path``: a version of ``entries`` (recognised by sha256), else a model
    of the field, added to the imported models' index (``registry.import_model``)."""
    return import_model(ModelStore(cache_dir), path, entries, progress=_saying_trust(progress, log), cancel=cancel)

"""Qt-free core of the ModelRegistry module: registry indexes and model cards, index sources, verified
downloads, the model store, and the supervisor of the worker processes that run every long job of the
extension's panels (``jobs``, ``worker``; the registry's own jobs are in ``tasks``).

Importable in Slicer, in its Python console, from a command line (``python -m ModelRegistryLib``) and in
tests. Every error it raises derives from ``RegistryError`` (or ``IndexValidationError`` for a bad index).
Its names are imported when first used (``ModelRegistryLib.lazy``): a worker process that imports
``ModelRegistryLib.worker`` does not pay for the HTTP stack.
"""

import sys

from .lazy import lazy_exports

# What each submodule exports, imported when first used (see ModelRegistryLib.lazy).
_EXPORTS = {
    "archive": ("extract_archive", "is_archive"),
    "card": ("card_html", "card_text"),
    "download": ("Progress", "download_file", "fetch_bytes", "format_bytes"),
    "errors": (
        "CancelledError", "ChecksumMismatchError", "ConnectionFailedError", "DiskFullError", "DownloadError",
        "DownloadTimeoutError", "NotFoundError", "RegistryError", "ServerError", "TLSError", "UnsafeArchiveError"
    ),
    "importers": (
        "ImporterError", "foreign_index_document", "from_monai_auto3dseg_models", "from_monai_bundle_metadata",
        "from_nnunet_model", "package_foreign_model"
    ),
    "index": (
        "DEFAULT_RUNTIME", "RUNTIMES", "Coding", "ContainerImage",
        "ImageParameter", "IndexValidationError", "Label", "ModelEntry", "ModelFile",
        "ModelInput", "ModelVersion", "Terminology", "VersionNotFoundError", "load_index", "parse_index",
        "parse_labels", "resolve_version", "search", "semantic_version_key"
    ),
    "registry": (
        "INSTALLED", "NOT_INSTALLED", "UNKNOWN", "UPDATE_AVAILABLE", "Registry", "Update", "bundled_source",
        "imported_source", "parse_model_spec", "save_user_sources", "user_sources"
    ),
    "sources": ("IndexSource", "SourceStatus", "load_sources"),
    "store": ("InstalledModel", "InstallProgress", "ModelStore", "VerifyResult", "default_cache_dir"),
    "jobs": (
        "Job", "JobCancelledError", "JobError", "JobLog", "JobProgress", "WorkerProcess", "start_job",
        "stop_all_workers", "worker_python"
    ),
    "trust": ("TrustNotice", "TrustStore"),
}
__getattr__, __dir__, __all__ = lazy_exports(sys.modules[__name__], _EXPORTS)

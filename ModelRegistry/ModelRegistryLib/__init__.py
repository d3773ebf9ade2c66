"""Qt-free core of the ModelRegistry module: registry indexes and model cards, index sources, verified
downloads, the model store, and background tasks for the panel.

Importable in Slicer, in its Python console, from a command line (``python -m ModelRegistryLib``) and in
tests. Every error it raises derives from ``RegistryError`` (or ``IndexValidationError`` for a bad index).
"""

from .archive import extract_archive, is_archive
from .card import card_html, card_text
from .download import Progress, download_file, fetch_bytes, format_bytes
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
    UnsafeArchiveError,
)
from .importers import from_monai_auto3dseg_models, from_monai_bundle_metadata
from .index import (
    Coding,
    ContainerImage,
    ImageParameter,
    IndexValidationError,
    Label,
    ModelEntry,
    ModelFile,
    ModelInput,
    ModelVersion,
    Terminology,
    VersionNotFoundError,
    load_index,
    parse_index,
    parse_labels,
    resolve_version,
    search,
    semantic_version_key,
)
from .registry import (
    INSTALLED,
    NOT_INSTALLED,
    UNKNOWN,
    UPDATE_AVAILABLE,
    Registry,
    Update,
    bundled_source,
    parse_model_spec,
    save_user_sources,
    user_sources,
)
from .sources import IndexSource, SourceStatus, load_sources
from .store import InstalledModel, InstallProgress, ModelStore, VerifyResult, default_cache_dir
from .tasks import BackgroundTask

__all__ = [
    "INSTALLED",
    "NOT_INSTALLED",
    "UNKNOWN",
    "UPDATE_AVAILABLE",
    "BackgroundTask",
    "CancelledError",
    "ChecksumMismatchError",
    "Coding",
    "ConnectionFailedError",
    "ContainerImage",
    "DiskFullError",
    "DownloadError",
    "DownloadTimeoutError",
    "ImageParameter",
    "IndexSource",
    "IndexValidationError",
    "InstallProgress",
    "InstalledModel",
    "Label",
    "ModelEntry",
    "ModelFile",
    "ModelInput",
    "ModelStore",
    "ModelVersion",
    "NotFoundError",
    "Progress",
    "Registry",
    "RegistryError",
    "ServerError",
    "SourceStatus",
    "TLSError",
    "Terminology",
    "UnsafeArchiveError",
    "Update",
    "VerifyResult",
    "VersionNotFoundError",
    "bundled_source",
    "card_html",
    "card_text",
    "default_cache_dir",
    "download_file",
    "extract_archive",
    "fetch_bytes",
    "format_bytes",
    "from_monai_auto3dseg_models",
    "from_monai_bundle_metadata",
    "is_archive",
    "load_index",
    "load_sources",
    "parse_index",
    "parse_labels",
    "parse_model_spec",
    "resolve_version",
    "save_user_sources",
    "search",
    "semantic_version_key",
    "user_sources",
]

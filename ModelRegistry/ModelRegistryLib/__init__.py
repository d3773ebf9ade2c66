"""Qt-free core of the ModelRegistry module: reading, validating and searching registry indexes.

Importable in Slicer, in its Python console, from a command line and in tests.
"""

from .index import (
    ContainerImage,
    IndexValidationError,
    ModelEntry,
    ModelFile,
    ModelVersion,
    load_index,
    parse_index,
    search,
    semantic_version_key,
)

__all__ = [
    "ContainerImage",
    "IndexValidationError",
    "ModelEntry",
    "ModelFile",
    "ModelVersion",
    "load_index",
    "parse_index",
    "search",
    "semantic_version_key",
]

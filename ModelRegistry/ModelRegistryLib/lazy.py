"""Package namespaces whose names are imported when first used (PEP 562), for the extension's Libs.

Why: every worker process imports the Lib of its job, and Slicer imports all three Libs when it starts. A
package ``__init__`` that imports all its submodules makes each of them pay for NumPy, SimpleITK, SciPy, the
HTTP stack and more before its first line of work (DeepSegmentLib took 1.3 s to import on a loaded 2-core
machine, most of a worker's delay before its first progress report). With :func:`lazy_exports`, ``from
DeepSegmentLib import ModelService`` still works, importing only ``DeepSegmentLib.service_client`` (and what
it imports); ``import DeepSegmentLib`` alone imports nothing heavy.

Example (a package of the standard library stands in for a Lib)::

    >>> import types
    >>> package = types.ModuleType("json")  # what ``sys.modules[__name__]`` is inside a package's __init__
    >>> package.__getattr__, package.__dir__, names = lazy_exports(package, {"decoder": ("JSONDecodeError",)})
    >>> names, package.JSONDecodeError.__module__, "JSONDecodeError" in vars(package)
    (['JSONDecodeError'], 'json.decoder', True)
    >>> package.loads
    Traceback (most recent call last):
    AttributeError: module 'json' has no attribute 'loads'
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from types import ModuleType


def lazy_exports(
    package: ModuleType, exports: Mapping[str, Sequence[str]]
) -> tuple[Callable[[str], object], Callable[[], list], list]:
    """``(__getattr__, __dir__, __all__)`` for ``package``: each name in ``exports[submodule]`` is the object of
    that name in ``package.submodule``, imported on first use and then kept in the package's namespace.

    A package's ``__init__`` ends with
    ``__getattr__, __dir__, __all__ = lazy_exports(sys.modules[__name__], {"engine": ("segment", ...), ...})``.
    Submodules are still imported as usual (``from DeepSegmentLib import engine``).
    """
    owners = {name: submodule for submodule, names in exports.items() for name in names}
    namespace = vars(package)

    def attribute(name: str) -> object:
        submodule = owners.get(name)
        if submodule is None:
            raise AttributeError(f"module {package.__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package.__name__}.{submodule}"), name)
        namespace[name] = value  # later uses find it without calling this
        return value

    def names() -> list:
        return sorted(set(namespace) | set(owners))

    return attribute, names, sorted(owners)

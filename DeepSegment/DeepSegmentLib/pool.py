"""Loaded networks kept for reuse: loaded on first use, unloaded when idle or when memory runs short.

A network is keyed by its package's ``identity`` (folder and file modification times) and the device,
so the same model on the CPU and on a GPU are two entries, and a package whose files changed is loaded
afresh. Which version runs is the caller's choice, made before asking the pool:
``ModelRegistryLib.registry.Registry.installed_model(spec)`` gives the pinned, the requested or else the
newest installed version of a model; a newer version is installed in a folder of its own, so the next
``load_package(installed.path)`` and ``get`` load it as a new entry, and the old one is unloaded once idle.

Example::

    >>> import tempfile, torch
    >>> from DeepSegmentLib.package import load_package, write_package
    >>> contract = {"schemaVersion": 1, "format": "torch.export", "weights": "model.pt2", "dimensions": 3,
    ...     "inputs": [{"name": "CT"}], "inference": {"patchSize": [8, 8, 8], "activation": "sigmoid",
    ...     "outputChannels": 1}, "postprocessing": {"mode": "threshold"}, "labels": [{"value": 1, "name": "Bone",
    ...     "color": "#f0f0e0"}], "preprocessing": {"spacing": None, "orientation": "native", "normalization": [
    ...     {"kind": "ct-window", "window": [-200, 1200]}]}}
    >>> pool = ModelPool(memory_budget_bytes=1024**3, idle_seconds=600)
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     write_package(folder, torch.nn.Conv3d(1, 1, 1), contract)   # exported as torch.export
    ...     package = load_package(folder)
    ...     network = pool.get(package, "cpu")
    ...     same = pool.get(package, "cpu") is network
    >>> same, [(entry.device, entry.bytes) for entry in pool.loaded()]
    (True, [('cpu', 8)])
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from .package import ModelPackage, load_network


@dataclass(frozen=True)
class LoadedNetwork:
    """One pool entry as :meth:`ModelPool.loaded` lists it; ``bytes`` estimated, ``last_used`` on the pool's clock."""

    folder: str
    device: str
    bytes: int
    last_used: float


@dataclass
class _Entry:
    network: Callable
    package: ModelPackage
    device: str
    bytes: int
    last_used: float


def network_bytes(network, package: ModelPackage) -> int:
    """Estimated memory of a loaded network: its parameters and buffers, or its weights file's size (ONNX)."""
    parameters, buffers = getattr(network, "parameters", None), getattr(network, "buffers", None)
    if callable(parameters) and callable(buffers):
        return sum(tensor.numel() * tensor.element_size() for tensor in itertools.chain(parameters(), buffers()))
    return os.path.getsize(package.weights_path)


class ModelPool:
    """Networks loaded on first :meth:`get`, shared by threads, unloaded least recently used first when their
    estimated memory exceeds ``memory_budget_bytes`` (``None``: no limit; the network just asked for always
    stays, even alone over the budget) and by :meth:`unload_idle` after ``idle_seconds`` unused.

    ``loader(package, device)`` loads a network (``load_network`` by default); ``clock`` gives seconds.
    """

    def __init__(
        self,
        memory_budget_bytes: int | None = None,
        idle_seconds: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
        loader: Callable = load_network,
    ) -> None:
        self.memory_budget_bytes = memory_budget_bytes
        self.idle_seconds = idle_seconds
        self.clock = clock
        self.loader = loader
        self._entries: dict = {}
        self._lock = threading.Lock()
        # One lock per key being loaded: two threads asking for one network load it once, while
        # other networks can be loaded or used meanwhile.
        self._loading: dict = {}

    def get(self, package: ModelPackage, device: str) -> Callable:
        """The package's network on ``device``, loaded now if it is not loaded yet."""
        key = (package.identity, device)
        with self._lock:
            network = self._touch(key)
            if network is not None:
                return network
            key_lock = self._loading.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                network = self._touch(key)
            if network is not None:
                return network
            try:
                network = self.loader(package, device)
                size = network_bytes(network, package)
                with self._lock:
                    self._entries[key] = _Entry(network, package, device, size, self.clock())
                    evicted = self._evict_over_budget(keep=key)
            finally:
                with self._lock:
                    self._loading.pop(key, None)
        _release_device_memory(evicted)
        return network

    def _touch(self, key):
        entry = self._entries.get(key)
        if entry is None:
            return None
        entry.last_used = self.clock()
        return entry.network

    def _evict_over_budget(self, keep) -> list:
        evicted = []
        if self.memory_budget_bytes is None:
            return evicted
        while sum(entry.bytes for entry in self._entries.values()) > self.memory_budget_bytes:
            others = [key for key in self._entries if key != keep]
            if not others:
                break
            oldest = min(others, key=lambda key: self._entries[key].last_used)
            evicted.append(self._entries.pop(oldest))
        return evicted

    def unload_idle(self) -> list:
        """Unload networks unused for ``idle_seconds`` (call it from a timer); returns what was unloaded."""
        now = self.clock()
        with self._lock:
            idle = [key for key, entry in self._entries.items() if now - entry.last_used >= self.idle_seconds]
            evicted = [self._entries.pop(key) for key in idle]
        unloaded = [_listing(entry) for entry in evicted]
        _release_device_memory(evicted)
        return unloaded

    def unload(self, folders) -> list:
        """Unload the networks of the packages in ``folders`` (the versions a newer one replaced); returns them."""
        wanted = {os.path.normcase(os.path.abspath(folder)) for folder in folders}
        with self._lock:
            keys = [key for key, entry in self._entries.items()
                    if os.path.normcase(os.path.abspath(entry.package.folder)) in wanted]
            evicted = [self._entries.pop(key) for key in keys]
        unloaded = [_listing(entry) for entry in evicted]
        _release_device_memory(evicted)
        return unloaded

    def loaded(self) -> list:
        """The loaded networks, most recently used first."""
        with self._lock:
            entries = sorted(self._entries.values(), key=lambda entry: entry.last_used, reverse=True)
        return [_listing(entry) for entry in entries]

    def clear(self) -> None:
        """Unload every network."""
        with self._lock:
            evicted = list(self._entries.values())
            self._entries.clear()
        _release_device_memory(evicted)


def _listing(entry: _Entry) -> LoadedNetwork:
    return LoadedNetwork(entry.package.folder, entry.device, entry.bytes, entry.last_used)


def _release_device_memory(evicted: list) -> None:
    """Give CUDA memory of unloaded networks back to the driver (PyTorch's allocator otherwise keeps it)."""
    if not any(entry.device.startswith("cuda") for entry in evicted):
        return
    evicted.clear()  # drop the last references before emptying the cache
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()

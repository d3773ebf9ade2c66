"""DeepSegmentLib.pool: networks load once, and unload least recently used first or when idle."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from DeepSegmentLib.package import load_network, load_package, write_package
from DeepSegmentLib.pool import ModelPool

COLORS = ("#ff0000", "#00ff00", "#0000ff", "#ffff00")


def contract(labels: int) -> dict:
    return {
        "schemaVersion": 1,
        "format": "torchscript",
        "weights": "model.pt",
        "dimensions": 3,
        "inputs": [{"name": "CT"}],
        "preprocessing": {"spacing": None, "orientation": "native", "normalization": [{"kind": "none"}]},
        "inference": {"patchSize": [8, 8, 8], "activation": "sigmoid", "outputChannels": labels},
        "postprocessing": {"mode": "threshold"},
        "labels": [{"value": i + 1, "name": f"L{i + 1}", "color": COLORS[i]} for i in range(labels)],
    }


def package(folder, labels: int = 1):
    """A package whose network, a 1×1×1 convolution, holds ``labels`` weights and biases: 8 × labels bytes."""
    write_package(str(folder), torch.nn.Conv3d(1, labels, kernel_size=1), contract(labels))
    return load_package(str(folder))


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class CountingLoader:
    """The real loader, counting its calls (and optionally slow, to let threads race)."""

    def __init__(self, delay: float = 0.0) -> None:
        self.calls = []
        self.delay = delay
        self.lock = threading.Lock()

    def __call__(self, package, device):
        with self.lock:
            self.calls.append((package.folder, device))
        time.sleep(self.delay)
        return load_network(package, device)


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    root = tmp_path_factory.mktemp("pool")
    return [package(root / f"model{labels}", labels) for labels in (1, 2, 3)]


def test_loads_once_and_lists_what_is_loaded(packages):
    loader, clock = CountingLoader(), FakeClock()
    pool = ModelPool(clock=clock, loader=loader)
    first = pool.get(packages[1], "cpu")
    clock.now = 5.0
    assert pool.get(packages[1], "cpu") is first
    assert loader.calls == [(packages[1].folder, "cpu")]
    [entry] = pool.loaded()
    assert (entry.folder, entry.device, entry.bytes, entry.last_used) == (packages[1].folder, "cpu", 16, 5.0)
    x = torch.ones(1, 1, 2, 2, 2)
    assert first(x).shape == (1, 2, 2, 2, 2)


def test_two_devices_are_two_entries(packages):
    loader = CountingLoader()
    pool = ModelPool(loader=loader)
    # "meta" is a second device every PyTorch build has; a real GPU is another string here.
    assert pool.get(packages[0], "cpu") is not pool.get(packages[0], "meta")
    assert sorted(entry.device for entry in pool.loaded()) == ["cpu", "meta"]
    assert len(loader.calls) == 2


def test_least_recently_used_is_unloaded_over_the_budget(packages):
    clock = FakeClock()
    one, two, three = packages  # 8, 16 and 24 bytes
    pool = ModelPool(memory_budget_bytes=40, clock=clock)
    pool.get(one, "cpu")
    clock.now = 1
    pool.get(two, "cpu")
    clock.now = 2
    pool.get(one, "cpu")  # now two is the least recently used
    clock.now = 3
    pool.get(three, "cpu")  # 48 bytes > 40: two goes
    assert [entry.folder for entry in pool.loaded()] == [three.folder, one.folder]
    # A network over the budget on its own still loads, alone.
    small = ModelPool(memory_budget_bytes=10, clock=clock)
    small.get(one, "cpu")
    small.get(three, "cpu")
    assert [entry.folder for entry in small.loaded()] == [three.folder]


def test_idle_networks_are_unloaded(packages):
    clock, loader = FakeClock(), CountingLoader()
    pool = ModelPool(idle_seconds=600, clock=clock, loader=loader)
    pool.get(packages[0], "cpu")
    clock.now = 300
    pool.get(packages[1], "cpu")
    clock.now = 599
    assert pool.unload_idle() == []
    clock.now = 600
    assert [entry.folder for entry in pool.unload_idle()] == [packages[0].folder]
    assert [entry.folder for entry in pool.loaded()] == [packages[1].folder]
    pool.get(packages[0], "cpu")  # loaded again on the next use
    assert len(loader.calls) == 3
    pool.clear()
    assert pool.loaded() == []


def test_changed_files_are_a_new_entry(tmp_path):
    first = package(tmp_path / "model", 1)
    pool = ModelPool()
    network = pool.get(first, "cpu")
    changed = package(tmp_path / "model", 2)
    assert changed.identity != first.identity
    assert pool.get(changed, "cpu") is not network


def test_concurrent_gets_load_each_network_once(packages):
    loader = CountingLoader(delay=0.05)
    pool = ModelPool(loader=loader)
    results, errors = [], []
    start = threading.Barrier(12)

    def worker(index: int) -> None:
        try:
            start.wait()
            results.append((index % 2, pool.get(packages[index % 2], "cpu")))
        except Exception as error:
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(loader.calls) == sorted((p.folder, "cpu") for p in packages[:2])
    for which in (0, 1):
        assert len({id(network) for index, network in results if index == which}) == 1


def test_unload_removes_the_networks_of_given_folders(tmp_path):
    pool = ModelPool()
    old, new = package(tmp_path / "1.0.0"), package(tmp_path / "2.0.0")
    pool.get(old, "cpu")
    pool.get(new, "cpu")
    assert [entry.folder for entry in pool.unload([str(tmp_path / "1.0.0" / ".")])] == [old.folder]
    assert [entry.folder for entry in pool.loaded()] == [new.folder]

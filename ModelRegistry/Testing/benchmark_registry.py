"""Benchmark of the model registry; prints measured times and their ratio to a reference taken in the same run.

1. Installing a model of about 200 MB (download from a server on 127.0.0.1, sha256, unpack, manifest)
   against a plain download of the same bytes to a file (no checksum, no unpacking), once at loopback
   speed and once with the server sending at a network's speed (default 100 MB/s, a fast LAN).
   Goal: install throughput at least 0.8 of the plain download's.
2. Searching an index of 10,000 models. Goal: under 50 ms per search.

Usage (from the repository root): .venv/bin/python ModelRegistry/Testing/benchmark_registry.py [--megabytes 200]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), os.path.join(HERE, "Python")]

from registry_test_server import RegistryTestServer  # noqa: E402

from ModelRegistryLib.index import ModelEntry, ModelFile, ModelVersion, parse_index, search  # noqa: E402
from ModelRegistryLib.store import ModelStore  # noqa: E402


def model_package(megabytes: int) -> bytes:
    """A zip like a real model package: incompressible weights, stored as they are, and a small model.json."""
    weights = random.Random(0).randbytes(megabytes * 1024 * 1024)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as package:
        package.writestr("model.json", '{"inputs": ["image"]}')
        package.writestr("weights/model.pt", weights)
    return buffer.getvalue()


def plain_download(url: str, path: str) -> None:
    with urllib.request.urlopen(url) as response, open(path, "wb") as file:
        shutil.copyfileobj(response, file, 1024 * 1024)


def best_of(runs: int, function) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def benchmark_install(package: bytes, runs: int, bytes_per_second: float | None) -> None:
    digest = hashlib.sha256(package).hexdigest()
    with RegistryTestServer() as server, tempfile.TemporaryDirectory() as folder:
        url = server.add("/model-1.0.0.zip", package, bytes_per_second=bytes_per_second)
        version = ModelVersion("1.0.0", files=(ModelFile(url, digest, len(package), "model-1.0.0.zip"),))
        entry = ModelEntry("benchmark", "Benchmark", (version,))

        def install():
            cache = tempfile.mkdtemp(dir=folder)
            ModelStore(cache).install(entry, version)
            shutil.rmtree(cache)

        def download():
            path = os.path.join(folder, "plain.zip")
            plain_download(url, path)
            os.remove(path)

        plain = best_of(runs, download)
        ours = best_of(runs, install)
    size = len(package) / 1e6
    speed = f"server limited to {bytes_per_second / 1e6:.0f} MB/s" if bytes_per_second else "loopback speed"
    print(f"install of a {size:.0f} MB model from 127.0.0.1, {speed} (best of {runs}):")
    print(f"  plain download to a file:              {plain:6.2f} s  {size / plain:7.1f} MB/s")
    print(f"  install (download, sha256, unpack):    {ours:6.2f} s  {size / ours:7.1f} MB/s")
    print(f"  throughput ratio install/plain:        {plain / ours:6.2f}   (goal: >= 0.80)")


def synthetic_index(count: int) -> dict:
    generator = random.Random(1)
    organs = ["liver", "spleen", "kidney", "lung", "brain", "prostate", "heart", "pancreas", "bone", "vessel"]
    modalities = ["CT", "MR", "US", "PET"]
    models = []
    for number in range(count):
        organ = generator.choice(organs)
        models.append({
            "id": f"model-{number:05d}",
            "title": f"{organ.title()} segmentation {number}",
            "description": f"Segments the {organ} in {generator.choice(modalities)} images, variant {number}.",
            "task": "segmentation",
            "modality": generator.choice(modalities),
            "anatomy": [organ],
            "versions": [{"version": f"1.{number % 7}.0", "files": [
                {"url": f"https://models.invalid/{number}.zip", "sha256": "0" * 64, "size": 1000}]}],
        })
    return {"schemaVersion": 1, "models": models}


def benchmark_search(count: int, runs: int) -> None:
    models = parse_index(synthetic_index(count))
    queries = ["liver ct", "brain", "segmentation mr kidney", "variant 9999", "nothing-matches"]
    start = time.perf_counter()
    search(models, queries[0])
    first = time.perf_counter() - start
    times = []
    for _ in range(runs):
        for query in queries:
            start = time.perf_counter()
            search(models, query)
            times.append(time.perf_counter() - start)
    print(f"search in an index of {count} models ({len(times)} searches):")
    print(f"  first search (builds search text):     {first * 1000:6.1f} ms")
    print(f"  median / worst search:                 {statistics.median(times) * 1000:6.1f} ms /"
          f" {max(times) * 1000:.1f} ms   (goal: < 50 ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--network-megabytes-per-second", type=float, default=100.0)
    arguments = parser.parse_args()
    package = model_package(arguments.megabytes)
    benchmark_install(package, arguments.runs, None)
    benchmark_install(package, 1, arguments.network_megabytes_per_second * 1e6)
    benchmark_search(10_000, arguments.runs)


if __name__ == "__main__":
    main()

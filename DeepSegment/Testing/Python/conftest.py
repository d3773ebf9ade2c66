"""Fixtures of DeepSegment's container tests: a real runtime and images built on this machine. The model registry's
test server is importable here too.

Without a usable runtime the container tests are skipped, unless SLICER_DEEPLEARNING_REQUIRE_CONTAINER_TESTS
is set (CI sets it), which makes them fail instead. SLICER_DEEPLEARNING_SKIP_CONTAINER_TESTS skips them even with
a runtime: ``make test-compat`` sets it, since they test the runtime and images built from the test interpreter
(with every package of its environment), not the Python version, and ``make test`` runs them.
"""

from __future__ import annotations

import json
import os
import sys

import pytest
from container_test_images import ensure_base_image

REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
# The model registry's test server (a real HTTP server on 127.0.0.1) serves DeepSegment's tests too; the demo's
# scripts (its template and training data) serve the speed-option and CUDA tests.
sys.path[:0] = [os.path.join(REPOSITORY, "ModelRegistry", "Testing", "Python"), os.path.join(REPOSITORY, "DeepSegment",
                                                                                            "Demo")]
DEMO_ARCHIVE = os.path.join(REPOSITORY, "ModelRegistry", "Resources", "Registry", "brain-tissue-demo-1.0.0.zip")

CONTRACT_TEST_RECIPE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "Containers",
                                    "contract-test")
REQUIRE_ENVIRONMENT_VARIABLE = "SLICER_DEEPLEARNING_REQUIRE_CONTAINER_TESTS"
SKIP_ENVIRONMENT_VARIABLE = "SLICER_DEEPLEARNING_SKIP_CONTAINER_TESTS"
CONTRACT_TEST_PARAMETERS = [
    {"name": "behaviour", "type": "enum", "default": "ok",
     "choices": ["ok", "fail", "crash", "malformed", "no-labels", "shifted", "unknown-label", "sleep", "probe"]},
    {"name": "threshold", "type": "float", "minimum": 0.0, "maximum": 1.0, "default": 0.5},
]


def _runtime_or_skip():
    from DeepSegmentLib.container_runtime import ContainerRuntimeNotFoundError, find_runtime

    if os.environ.get(SKIP_ENVIRONMENT_VARIABLE):
        pytest.skip(f"container tests are left out here ({SKIP_ENVIRONMENT_VARIABLE} is set)")
    try:
        return find_runtime()
    except ContainerRuntimeNotFoundError as error:
        if os.environ.get(REQUIRE_ENVIRONMENT_VARIABLE):
            pytest.fail(f"{REQUIRE_ENVIRONMENT_VARIABLE} is set but: {error}")
        pytest.skip(f"container tests need Podman or Docker: {error}")


@pytest.fixture(scope="session")
def container_runtime():
    """The machine's container runtime; the tests are skipped without one unless CI requires them."""
    return _runtime_or_skip()


@pytest.fixture(scope="session")
def base_image(container_runtime) -> str:
    return ensure_base_image(container_runtime.executable)


@pytest.fixture(scope="session")
def threshold_model(tmp_path_factory) -> str:
    """A folder with the threshold test model: package/, its zip and a one-model index.json."""
    from DeepSegment import writeThresholdTestModel

    folder = str(tmp_path_factory.mktemp("threshold-model"))
    writeThresholdTestModel(folder)
    return folder


@pytest.fixture(scope="session")
def reference_image(container_runtime, base_image, threshold_model):
    """The reference recipe built around the threshold test model, on the test base image."""
    from DeepSegmentLib.container_image import build_image

    built = build_image(container_runtime, os.path.join(threshold_model, "package"),
                        "localhost/deepsegment-threshold-test:latest", base_image=base_image, pip_packages="")
    yield built
    container_runtime.remove_image(built.id)  # only the base image, built once per machine, stays


@pytest.fixture(scope="session")
def contract_test_image(container_runtime, base_image):
    from DeepSegmentLib.container_image import inspect_image

    tag = "localhost/deepsegment-contract-test:latest"
    container_runtime.call(["build", "--tag", tag, "--build-arg", f"BASE_IMAGE={base_image}", CONTRACT_TEST_RECIPE],
                           timeout=600)
    built = inspect_image(container_runtime, tag)
    yield built
    container_runtime.remove_image(built.id)  # only the base image, built once per machine, stays


@pytest.fixture(scope="session")
def container_index(threshold_model, reference_image, contract_test_image) -> str:
    """An index with ``threshold-test`` (package and reference image) and ``contract-test`` (image only)."""
    with open(os.path.join(threshold_model, "index.json"), encoding="utf-8") as file:
        index = json.load(file)
    index["models"][0]["versions"][0]["image"] = reference_image.index_entry()
    contract_image = {**contract_test_image.index_entry(), "parameters": CONTRACT_TEST_PARAMETERS}
    index["models"].append({
        "id": "contract-test", "title": "Contract test", "task": "segmentation",
        "inputs": [{"name": "Image", "pattern": "phantom"}],
        "labels": [{"value": 1, "name": "Bright", "color": "#ff0000"}],
        "versions": [{"version": "1.0.0", "image": contract_image}],
    })
    path = os.path.join(threshold_model, "container-index.json")  # beside the package archive it names
    with open(path, "w", encoding="utf-8") as file:
        json.dump(index, file)
    return path


@pytest.fixture
def tiny_image(container_runtime, tmp_path_factory):
    """An image of one small file and no program: enough to pull, save and load in a blink."""
    from DeepSegmentLib.container_image import inspect_image

    context = tmp_path_factory.mktemp("tiny-image")
    (context / "hello.txt").write_text("hello\n")
    (context / "Containerfile").write_text("FROM scratch\nCOPY hello.txt /hello.txt\n")
    tag = "localhost/deepsegment-tiny-test:latest"
    container_runtime.call(["build", "--tag", tag, str(context)], timeout=300)
    built = inspect_image(container_runtime, tag)
    yield built
    container_runtime.remove_image(built.id)  # only the base image, built once per machine, stays


@pytest.fixture
def loopback_registry(container_runtime, tmp_path, monkeypatch):
    """A real image registry (Debian's docker-registry, the CNCF Distribution server) on 127.0.0.1,
    marked insecure (plain HTTP) for the runtime; yields its host:port."""
    import shutil
    import socket
    import subprocess
    import time
    import urllib.request

    executable = shutil.which("docker-registry") or shutil.which("registry")
    if executable is None:
        if os.environ.get(REQUIRE_ENVIRONMENT_VARIABLE):
            pytest.fail("docker-registry is not installed (apt-get install docker-registry)")
        pytest.skip("the pull test needs Debian's docker-registry")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    address = f"127.0.0.1:{port}"
    config = tmp_path / "registry.yml"
    config.write_text(f"version: 0.1\nlog:\n  level: error\nhttp:\n  addr: {address}\n"
                      f"storage:\n  filesystem:\n    rootdirectory: {tmp_path}/data\n")
    registries = tmp_path / "registries.conf"
    registries.write_text(f'[[registry]]\nlocation = "{address}"\ninsecure = true\n')
    monkeypatch.setenv("CONTAINERS_REGISTRIES_CONF", str(registries))
    server = subprocess.Popen([executable, "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://{address}/v2/", timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        yield address
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture()
def threshold_panel(tmp_path):
    """Deep Segment's panel with a logic of its own over an index holding the threshold test models; the panel's
    logic, models and model service are put back as they were afterwards."""
    # Imported here: the Lib tests beside this file also run where there is no slicer (Python 3.9).
    from DeepSegment import DeepSegmentLogic, writeThresholdTestModel

    import slicer
    from ModelRegistryLib import IndexSource, Registry

    index = writeThresholdTestModel(str(tmp_path / "models"))
    registry = Registry([IndexSource(index)], str(tmp_path / "cache"))
    registry.refresh(offline=True)
    widget = slicer.modules.deepsegment.widgetRepresentation().self()
    original = widget.logic
    widget.logic = DeepSegmentLogic(registry)
    widget.updateModelList()
    yield widget
    widget.poller.stop()
    widget.logic.service.stop()
    widget.logic = original
    widget.updateModelList()


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    """The bundled demo model (1.0.0, TorchScript) and a seeded test volume: (package, network on the CPU, the
    volume, the exact quality's labels on the CPU in float32 as an array). The volume is a held-out validation
    variant of a real brain (the MNI template, augmented by the augmentation engine's defaults, as in the
    demo's validation)."""
    import zipfile

    import SimpleITK as sitk
    from mni_template import template_folder
    from train_brain_tissue_demo import VALIDATION_SEED, TrainingData, sample_seed

    from DeepSegmentLib.engine import quality_options, segment
    from DeepSegmentLib.package import load_network, load_package
    from TrainingDataExportLib.augmentation import AugmentationSettings

    folder = str(tmp_path_factory.mktemp("demo-model"))
    with zipfile.ZipFile(DEMO_ARCHIVE) as archive:
        archive.extractall(folder)
    package = load_package(folder)
    network = load_network(package, "cpu")
    data = TrainingData(template_folder(str(tmp_path_factory.mktemp("template-cache"))))
    image, _ = data.variant(sample_seed(VALIDATION_SEED, 0, 7), AugmentationSettings())
    exact = segment([image], package, network, device="cpu", precision="float32", **quality_options(package, "exact"))
    return package, network, image, sitk.GetArrayFromImage(exact.labels)

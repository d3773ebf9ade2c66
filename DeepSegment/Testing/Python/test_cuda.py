"""The CUDA paths give what the CPU gives: the engine in float32 and float16, every quality, the forward-pass
candidates (cuDNN's autotuner, CUDA graphs) on TorchScript and torch.export networks, frames of a stream,
batch worker processes and a training with loss scaling.

Skipped without a CUDA GPU. ``Testing/Device/checks.sh`` runs them on a lent GPU machine. float32 on CUDA
convolves in TF32 by default (PyTorch's ``cudnn.allow_tf32``), so labels are compared by Dice, not voxel
for voxel, except where the model's answer is far from any decision boundary.
"""

from __future__ import annotations

import contextlib
import os
import zipfile

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from batch_test_support import MODEL_ID, expected_labels, write_cases, write_threshold_model
from mni_template import dice_scores
from stream_test_support import expected_labels as expected_frame_labels
from stream_test_support import tracked_matrix, ultrasound_frames, write_threshold_2d_model
from training_cases import write_case_list

from DeepSegmentLib.batch import BatchSettings, run_batch
from DeepSegmentLib.engine import quality_options, segment
from DeepSegmentLib.forward_pass import CudaGraphs, cuda_graphs, cudnn_autotuned, tuned_network
from DeepSegmentLib.frames import FrameSegmenter
from DeepSegmentLib.package import load_network, load_package
from DeepSegmentLib.training import TrainingSettings, train
from DeepSegmentLib.training_networks import NetworkSettings

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (Testing/Device/checks.sh)")

DEMO_EXPORTED_ARCHIVE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "ModelRegistry",
                                     "Resources", "Registry", "brain-tissue-demo-1.1.0.zip")
# Dice per label against the CPU's exact labels (the speed options' bar; fast also shrinks the overlap).
DICE_BAR = 0.99
FAST_DICE_BAR = 0.98


def dice_against(result, reference: np.ndarray, package) -> dict:
    return dice_scores(sitk.GetArrayFromImage(result.labels), reference, [label.value for label in package.labels])


@pytest.fixture(scope="module")
def demo_on_cuda(demo):
    """``demo`` with its network loaded onto the GPU."""
    package, _, image, exact = demo
    return package, load_network(package, "cuda"), image, exact


@pytest.mark.parametrize(("quality", "precision", "bar"), [
    ("exact", "float32", DICE_BAR), ("exact", "auto", DICE_BAR), ("accurate", "auto", DICE_BAR),
    ("accurate", "float32", DICE_BAR), ("fast", "auto", FAST_DICE_BAR)])
def test_the_engine_on_cuda_agrees_with_the_cpu(demo_on_cuda, quality, precision, bar):
    package, network, image, exact = demo_on_cuda
    result = segment([image], package, network, device="cuda", precision=precision,
                     **quality_options(package, quality))
    scores = dice_against(result, exact, package)
    assert min(scores.values()) >= bar, (quality, precision, scores, result.windows)
    assert result.device.startswith("CUDA GPU 0") and result.peak_memory_bytes > 0
    assert result.precision == ("float16" if precision == "auto" else "float32")
    assert result.labels.GetSize() == image.GetSize()


CUDA_CANDIDATES = {"cudnn-autotune": cudnn_autotuned, "cuda-graphs": cuda_graphs,
                   "cudnn-autotune+cuda-graphs": lambda network: cuda_graphs(cudnn_autotuned(network))}


@pytest.mark.parametrize("precision", ["float32", "float16"])
@pytest.mark.parametrize("candidate", list(CUDA_CANDIDATES))
def test_cuda_candidates_compute_the_network_s_function(demo, tmp_path, candidate, precision):
    """On TorchScript (the demo 1.0.0) and on torch.export (the demo 1.1.0), fresh inputs each call."""
    with zipfile.ZipFile(DEMO_EXPORTED_ARCHIVE) as archive:
        archive.extractall(tmp_path)
    for network in (load_network(demo[0], "cuda"), load_network(load_package(str(tmp_path)), "cuda")):
        built = CUDA_CANDIDATES[candidate](network)
        generator = torch.Generator(device="cuda").manual_seed(3)
        autocast = torch.autocast("cuda", dtype=torch.float16, enabled=precision == "float16")
        for _ in range(3):  # the first call captures, the others replay
            batch = torch.rand(2, 1, 64, 64, 64, device="cuda", generator=generator)
            with torch.inference_mode(), autocast:
                expected, given = network(batch).float(), built(batch).float()
            scale = float(expected.abs().max())
            assert float((given - expected).abs().max()) <= 2e-2 * scale, (candidate, precision, type(network))


def test_cuda_graphs_return_copies_capture_each_shape_and_run_the_rest_as_they_are():
    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU()).cuda().eval()
    graphs = CudaGraphs(network, max_graphs=2)
    first, second = torch.rand(2, 1, 8, 8, 8, device="cuda"), torch.rand(2, 1, 8, 8, 8, device="cuda")
    with torch.inference_mode():
        out_first = graphs(first)
        out_second = graphs(second)  # a replay of the same graph: the first output must stay as it was
        torch.testing.assert_close(out_first, network(first))
        torch.testing.assert_close(out_second, network(second))
        graphs(torch.rand(1, 1, 8, 8, 8, device="cuda"))  # a partial batch: a second graph
        with torch.autocast("cuda", dtype=torch.float16):
            halved = graphs(first)  # beyond max_graphs: run as it is, still right
        assert len(graphs._graphs) == 2 and halved.dtype == torch.float16
        torch.testing.assert_close(halved.float(), network(first), atol=2e-2, rtol=2e-2)
        on_cpu = CudaGraphs(network.cpu())
        cpu = torch.rand(1, 1, 8, 8, 8)
        torch.testing.assert_close(on_cpu(cpu), network(cpu))  # not on the GPU: run as it is, no graph
        assert not on_cpu._graphs


@pytest.mark.parametrize("autocast", ["", "float16"])
def test_the_engine_freezes_a_batch_norm_network_on_cuda(demo, autocast):
    """As adopted for CUDA: the demo network (batch norm) runs frozen, with the network's own outputs."""
    network = load_network(demo[0], "cuda")
    tuned, applied = tuned_network(network, torch.device("cuda"), autocast, (2, 1, 64, 64, 64))
    assert applied == "frozen"
    probe = torch.rand(2, 1, 64, 64, 64, generator=torch.Generator().manual_seed(1)).cuda()
    context = torch.autocast("cuda", dtype=torch.float16) if autocast else contextlib.nullcontext()
    with torch.inference_mode(), context:
        torch.testing.assert_close(tuned(probe).float(), network(probe).float(), atol=2e-2, rtol=2e-2)


def test_the_engine_keeps_a_cuda_candidate_only_where_it_agrees(demo, monkeypatch):
    """Adopted for CUDA, each candidate passes tuned_network's check on the demo network, and a candidate that
    computes something else is dropped."""
    from DeepSegmentLib import forward_pass

    network = load_network(demo[0], "cuda")
    monkeypatch.setitem(forward_pass.ADOPTED, ("cuda", "float16"),
                        (("cudnn-autotune", lambda n, shape: True), ("cuda-graphs", lambda n, shape: True)))
    _, applied = tuned_network(network, torch.device("cuda"), "float16", (2, 1, 64, 64, 64))
    assert applied == "cudnn-autotune+cuda-graphs"
    monkeypatch.setitem(forward_pass.CANDIDATES, "cuda-graphs", lambda n: (lambda batch: 2 * n(batch)))
    _, applied = tuned_network(load_network(demo[0], "cuda"), torch.device("cuda"), "float16", (2, 1, 64, 64, 64))
    assert applied == "cudnn-autotune"


@pytest.mark.parametrize("precision", ["auto", "float32"])
def test_frames_on_cuda_get_exact_labels(tmp_path, precision):
    write_threshold_2d_model(str(tmp_path))
    segmenter = FrameSegmenter(load_package(str(tmp_path / "package")), device="cuda", precision=precision)
    segmenter.warm_up()
    assert segmenter.precision == ("float16" if precision == "auto" else "float32")
    frames, spacing = ultrasound_frames(6)
    for index, frame in enumerate(frames):
        labels = segmenter.segment(frame[None], tracked_matrix(index, spacing))
        np.testing.assert_array_equal(labels[0], expected_frame_labels(frame))


def test_batch_worker_processes_run_on_cuda(tmp_path):
    """Two worker processes (spawned, each with its own CUDA context) give the exact labels."""
    index = write_threshold_model(str(tmp_path / "model"))
    images = write_cases(str(tmp_path / "images"), 4)
    summary = run_batch(MODEL_ID + "@1.0.0", "images", str(tmp_path / "images"), str(tmp_path / "out"),
                        BatchSettings(device="cuda", workers=2, threads=1, output_format="nii.gz"), indexes=[index],
                        cache_dir=str(tmp_path / "cache"))
    assert {case.state for case in summary.cases} == {"done"}
    assert all("cuda" in case.where for case in summary.cases), [case.where for case in summary.cases]
    for case_id, image in images.items():
        written = sitk.ReadImage(str(tmp_path / "out" / f"{case_id}.nii.gz"))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(written), expected_labels(image))


def test_a_training_on_cuda_with_loss_scaling_learns_and_publishes_a_model_the_cpu_runs(tmp_path):
    pytest.importorskip("monai")
    settings = TrainingSettings(
        data=write_case_list(str(tmp_path / "cases")), output=str(tmp_path / "run"), folds=2, epochs=6,
        network=NetworkSettings(channels=(8, 16, 32), strides=(2, 2), residual_units=1), steps_per_epoch=8,
        batch_size=2, patch_size=(16, 16, 16), learning_rate=1e-2, device="cuda", precision="auto",
        foreground_fraction=0.5, registry=str(tmp_path / "registry"), cache_dir=str(tmp_path / "cache"))
    result = train(settings)
    assert result.device.startswith("CUDA GPU 0") and result.precision == "float16"
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    package = load_package(result.package)
    network = load_network(package, "cpu")
    assert tuple(network(torch.zeros(1, 1, 16, 16, 16)).shape) == (1, 3, 16, 16, 16)

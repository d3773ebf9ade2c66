"""DeepSegmentLib.frames: frame after frame with a loaded 2D model, the same labels as the engine gives."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from stream_test_support import (
    expected_labels,
    threshold_2d_contract,
    tracked_matrix,
    ultrasound_frames,
    write_threshold_2d_model,
)

from DeepSegmentLib.engine import EngineError, quality_options, segment
from DeepSegmentLib.frames import PLAN_CACHE_SIZE, FrameError, FrameSegmenter
from DeepSegmentLib.geometry import image_from_array
from DeepSegmentLib.package import load_network, load_package, write_package


@pytest.fixture(scope="module")
def threshold_package(tmp_path_factory):
    folder = tmp_path_factory.mktemp("threshold-2d")
    write_threshold_2d_model(str(folder))
    return load_package(str(folder / "package"))


def conv_package(folder, inputs: int = 1, slice_axis: int = 2, **changes) -> object:
    """A small untrained 2D convolutional network (3 labels) in a package; ``changes`` replace contract parts."""
    torch.manual_seed(7)
    network = torch.nn.Sequential(torch.nn.Conv2d(inputs, 8, 3, padding=1), torch.nn.ReLU(),
                                  torch.nn.Conv2d(8, 4, 3, padding=1))
    contract = threshold_2d_contract(patch=(48, 40))
    contract["inputs"] = [{"name": f"channel {c}"} for c in range(inputs)]
    contract["preprocessing"]["normalization"] = [{"kind": "z-score", "foreground": "all"}] * inputs
    contract["labels"] = [{"value": v, "name": f"label {v}", "color": "#102030"} for v in (1, 2, 7)]
    contract["inference"]["outputChannels"] = 4
    contract["sliceAxis"] = slice_axis
    for section, values in changes.items():
        contract[section] = {**contract[section], **values} if isinstance(values, dict) else values
    write_package(str(folder), network, contract)
    return load_package(str(folder))


def engine_labels(frame: np.ndarray, matrix: np.ndarray, package, network, **options) -> np.ndarray:
    channels = [frame] if frame.ndim == 3 else [frame[..., c] for c in range(frame.shape[-1])]
    images = [image_from_array(channel, matrix) for channel in channels]
    result = segment(images, package, network, device="cpu", **options)
    return sitk.GetArrayFromImage(result.labels)


def test_real_ultrasound_frames_get_exact_labels(threshold_package):
    frames, spacing = ultrasound_frames(12)
    segmenter = FrameSegmenter(threshold_package, device="cpu")
    segmenter.warm_up()
    for index, frame in enumerate(frames):
        labels = segmenter.segment(frame[None], tracked_matrix(index, spacing))
        assert labels.shape == (1, *frame.shape) and labels.dtype == np.uint8
        np.testing.assert_array_equal(labels[0], expected_labels(frame))
    assert segmenter.segment(frames[0]).shape == (1, *frames[0].shape)  # (rows, columns) is a frame too
    assert segmenter.label_values == (1,)


@pytest.mark.parametrize(("name", "changes", "precision", "quality"), [
    ("native grid", {}, "float32", "fast"),
    ("native grid, reduced precision", {}, "auto", "fast"),
    ("mirroring and overlap", {"inference": {"mirrorAxes": [0, 1]}}, "float32", "accurate"),
    ("own spacing", {"preprocessing": {"spacing": [2.6, 1.7, 1.0]}}, "float32", "fast"),
    # A tilted frame on RAS axes: the model grid is the box around it, a few 5 mm slices.
    ("RAS axes and spacing", {"preprocessing": {"spacing": [5.0, 5.0, 5.0], "orientation": "RAS"}}, "float32",
     "fast"),
    ("clean-up", {"postprocessing": {"mode": "argmax", "keepLargestComponent": [1], "fillHoles": [2],
                                     "minimumSizeMm3": {"7": 3.0}}}, "float32", "fast"),
])
def test_labels_are_the_engines(tmp_path, name, changes, precision, quality):
    package = conv_package(tmp_path, **changes)
    network = load_network(package, "cpu")
    segmenter = FrameSegmenter(package, network, device="cpu", precision=precision, quality=quality)
    frames, spacing = ultrasound_frames(3)
    # Frames run the model's own windows (no window plan): the engine is asked for the same.
    options = {"precision": precision, **quality_options(package, quality), "windows": "model",
               "skip_background": False, "fast_forward": False}
    for index, frame in enumerate(frames):
        matrix = tracked_matrix(index, spacing)
        expected = engine_labels(frame[None], matrix, package, network, **options)
        np.testing.assert_array_equal(segmenter.segment(frame[None], matrix), expected, err_msg=name)
    assert len(np.unique(expected)) > 1, "the case should produce several labels"


def test_frames_with_one_component_per_input_channel(tmp_path):
    package = conv_package(tmp_path, inputs=2)
    network = load_network(package, "cpu")
    frames, spacing = ultrasound_frames(2)
    frame = np.stack([frames[0], 255 - frames[1]], axis=-1)[None]  # (1, rows, columns, 2)
    matrix = tracked_matrix(0, spacing)
    labels = FrameSegmenter(package, network, device="cpu", precision="float32", quality="fast").segment(frame, matrix)
    expected = engine_labels(frame, matrix, package, network, precision="float32", overlap=0.25, mirror_axes=())
    np.testing.assert_array_equal(labels, expected)


def test_a_moving_probe_reuses_one_plan(threshold_package, tmp_path):
    frames, spacing = ultrasound_frames(8)
    segmenter = FrameSegmenter(threshold_package, device="cpu")
    for index, frame in enumerate(frames):
        segmenter.segment(frame[None], tracked_matrix(index, spacing))
    assert len(segmenter._plans) == 1  # position and turn never change a native-grid model's plan
    segmenter.segment(frames[0][None, :40], tracked_matrix(0, spacing))
    assert len(segmenter._plans) == 2  # another depth setting: another shape
    # A model resampling onto RAS axes depends on how the frame is turned: plans differ, the cache stays bounded.
    ras = FrameSegmenter(conv_package(tmp_path, preprocessing={"spacing": [8.0, 8.0, 8.0], "orientation": "RAS"}),
                         device="cpu")
    for index in range(PLAN_CACHE_SIZE + 3):
        ras.segment(frames[0][None], tracked_matrix(index, spacing))
    assert len(ras._plans) == PLAN_CACHE_SIZE


def test_models_and_frames_that_do_not_fit_are_refused(threshold_package, tmp_path):
    contract = threshold_2d_contract()
    contract.update(dimensions=3)
    contract["inference"]["patchSize"] = [16, 16, 16]
    write_package(str(tmp_path / "3d"), torch.nn.Identity(), contract)
    with pytest.raises(EngineError, match="3D model"):
        FrameSegmenter(load_package(str(tmp_path / "3d")), device="cpu")
    with pytest.raises(EngineError, match="Unknown precision"):
        FrameSegmenter(threshold_package, device="cpu", precision="half")

    segmenter = FrameSegmenter(threshold_package, device="cpu")
    frame = ultrasound_frames(1)[0][0]
    for bad, matrix, reason in [
        (np.zeros((1, 20, 30, 3), np.uint8), None, "3 components per pixel \\(color 1×20×30\\)"),
        (np.zeros((1, 20, 30, 2), np.uint8), None, "has 2 components"),
        (np.zeros((1, 1, 1, 20, 30), np.uint8), None, "must be a 2D image"),
        (np.zeros((1, 0, 30), np.uint8), None, "must be a 2D image"),
        (np.full((1, 20, 30), np.nan, np.float32), None, "NaN"),
        (np.zeros((1, 20, 30), bool), None, "type bool"),
        (frame[None], np.diag([1.0, 1.0, 0.0, 1.0]), "singular"),
        (frame[None], np.eye(3), "4×4"),
    ]:
        with pytest.raises(FrameError, match=reason):
            segmenter.segment(bad, matrix)
    across_x = FrameSegmenter(conv_package(tmp_path / "x", slice_axis=0), device="cpu")
    with pytest.raises(FrameError, match="slices across x \\(sliceAxis 0\\) but the frame is a single slice across z"):
        across_x.segment(frame[None])
    assert across_x.segment(np.zeros((9, 12, 1), np.float32)).shape == (9, 12, 1)  # a frame across x is fine


def test_a_network_that_breaks_its_contract_is_an_engine_error(threshold_package):
    segmenter = FrameSegmenter(threshold_package, lambda x: torch.zeros(x.shape[0], 5, *x.shape[2:]), device="cpu")
    with pytest.raises(EngineError, match="5 output channels, the model says 2"):
        segmenter.segment(np.zeros((1, 20, 30), np.uint8))

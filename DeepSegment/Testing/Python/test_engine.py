"""DeepSegmentLib.engine: volumes and a model package in, a label map exactly on the input grid out."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from ModelRegistryLib.index import Label, ModelInput

from DeepSegmentLib.engine import (
    STAGES,
    EngineCancelled,
    EngineError,
    estimate_memory,
    normalize,
    segment,
)
from DeepSegmentLib.devices import ComputeDevice, reduced_precision
from DeepSegmentLib.geometry import geometry_mismatch
from DeepSegmentLib.sliding_window import window_starts
from DeepSegmentLib.package import (
    Inference,
    ModelPackage,
    Normalization,
    Postprocessing,
    Preprocessing,
    load_package,
    write_package,
)
from geometry_cases import empty_image, rotation


class Threshold(torch.nn.Module):
    """Analytic segmentation network: foreground where channel ``source`` is above 0.5."""

    def __init__(self, source: int = 0) -> None:
        super().__init__()
        self.source = source

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channel = x[:, self.source : self.source + 1]
        return torch.cat([0.5 - channel, channel - 0.5], dim=1)


THRESHOLD = torch.jit.script(Threshold())


def make_package(
    inputs: int = 1,
    labels=((1, "sphere"),),
    spacing=None,
    orientation: str = "native",
    patch_size=(16, 16, 16),
    activation: str = "softmax",
    **postprocessing,
) -> ModelPackage:
    mode = "argmax" if activation == "softmax" else "threshold"
    return ModelPackage(
        folder="",
        format="torchscript",
        weights_path="",
        dimensions=3,
        inputs=tuple(ModelInput(f"channel{i}") for i in range(inputs)),
        preprocessing=Preprocessing(spacing, orientation, (Normalization("none"),) * inputs),
        inference=Inference(
            patch_size=patch_size,
            overlap=0.5,
            blending="gaussian",
            batch_size=2,
            mirror_axes=(),
            activation=activation,
            output_channels=len(labels) + (1 if mode == "argmax" else 0),
        ),
        postprocessing=Postprocessing(
            mode=mode,
            thresholds=postprocessing.get("thresholds", {}),
            keep_largest_component=postprocessing.get("keep_largest_component", ()),
            fill_holes=(),
            minimum_size_mm3={},
        ),
        labels=tuple(Label(value, name, "#ff0000") for value, name in labels),
    )


def phantom(reference: sitk.Image, spheres) -> sitk.Image:
    """1 inside physical spheres ((centre relative to the volume's centre), radius in mm), else 0."""
    size = np.array(reference.GetSize())
    k, j, i = np.indices(tuple(reversed(size)))
    index = np.stack([i, j, k], axis=-1).reshape(-1, 3).astype(float)
    direction = np.array(reference.GetDirection()).reshape(3, 3) @ np.diag(reference.GetSpacing())
    points = index @ direction.T + reference.GetOrigin()
    centre = direction @ ((size - 1) / 2) + reference.GetOrigin()
    inside = np.zeros(len(points), bool)
    for offset, radius in spheres:
        inside |= np.linalg.norm(points - centre - np.asarray(offset, float), axis=1) <= radius
    image = sitk.GetImageFromArray(inside.reshape(tuple(reversed(size))).astype(np.float32))
    image.CopyInformation(reference)
    return image


SPHERES = [((-4.0, 2.0, 0.0), 7.0), ((7.0, -5.0, 3.0), 4.5)]
GEOMETRIES = {
    "RAS-like axes, anisotropic": ((40, 36, 18), (0.8, 0.9, 2.0), (-12.0, 30.5, 7.0), np.diag([-1.0, -1.0, 1.0])),
    "LPS axes, non-zero origin": ((36, 40, 20), (0.9, 0.8, 1.6), (101.0, -52.5, -300.0), np.eye(3)),
    "oblique": ((38, 38, 22), (0.85, 0.85, 1.5), (5.0, -7.0, 12.0), rotation(0, 17) @ rotation(2, -32)),
    "left-handed": ((34, 36, 24), (1.0, 0.9, 1.4), (0.0, 0.0, 50.0), np.diag([1.0, 1.0, -1.0])),
}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def labels_of(result) -> np.ndarray:
    return sitk.GetArrayFromImage(result.labels)


@pytest.mark.parametrize("geometry", GEOMETRIES.values(), ids=GEOMETRIES.keys())
def test_native_grid_lands_on_the_exact_voxels(geometry):
    image = phantom(empty_image(*geometry), SPHERES)
    result = segment([image], make_package(), THRESHOLD, device="cpu")
    assert geometry_mismatch(image, result.labels, tolerance=0.0) == ""
    assert result.labels.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_array_equal(labels_of(result), sitk.GetArrayFromImage(image))
    assert result.label_values == (1,)


@pytest.mark.parametrize("orientation", ["RAS", "LPS"])
@pytest.mark.parametrize("geometry", GEOMETRIES.values(), ids=GEOMETRIES.keys())
def test_resampled_model_grid_gives_exact_geometry_and_the_phantom(geometry, orientation):
    image = phantom(empty_image(*geometry), SPHERES)
    result = segment([image], make_package(spacing=(1.0, 1.0, 1.0), orientation=orientation), THRESHOLD, device="cpu")
    assert geometry_mismatch(image, result.labels, tolerance=0.0) == ""
    assert dice(labels_of(result) == 1, sitk.GetArrayFromImage(image) == 1) > 0.95


@pytest.mark.parametrize("orientation", ["RAS", "LPS"])
def test_axis_aligned_input_reoriented_without_new_spacing_is_exact(orientation):
    """A model grid that only flips the input's axes puts voxel centres on voxel centres: nothing is blurred."""
    image = phantom(empty_image(*GEOMETRIES["LPS axes, non-zero origin"]), SPHERES)
    result = segment([image], make_package(orientation=orientation), THRESHOLD, device="cpu")
    np.testing.assert_array_equal(labels_of(result), sitk.GetArrayFromImage(image))


def test_a_second_channel_on_another_grid_is_resampled_onto_the_first():
    reference = empty_image(*GEOMETRIES["oblique"])
    finer = empty_image((50, 46, 40), (0.7, 0.7, 0.8), (-10.0, -12.0, 5.0), np.eye(3))
    first = phantom(reference, [])  # all zero: the network looks at the second channel only
    second = phantom(finer, [((0.0, 0.0, 0.0), 8.0)])
    truth = sitk.GetArrayFromImage(sitk.Resample(second, reference, sitk.Transform(), sitk.sitkNearestNeighbor))
    result = segment([first, second], make_package(inputs=2), torch.jit.script(Threshold(1)), device="cpu")
    assert geometry_mismatch(first, result.labels, tolerance=0.0) == ""
    assert dice(labels_of(result) == 1, truth == 1) > 0.9


def test_output_channels_follow_the_packages_label_order():
    class TwoLevels(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            # channel 1: intensity near 1, channel 2: intensity near 2
            return torch.cat([-(x - 0) ** 2, -(x - 1) ** 2, -(x - 2) ** 2], dim=1) * 10

    voxels = np.zeros((12, 12, 12), np.float32)
    voxels[2:5], voxels[7:10] = 1, 2
    package = make_package(labels=((9, "first listed"), (4, "second listed")))
    result = segment([sitk.GetImageFromArray(voxels)], package, torch.jit.script(TwoLevels()), device="cpu")
    expected = np.select([voxels == 1, voxels == 2], [9, 4], 0)
    np.testing.assert_array_equal(labels_of(result), expected)
    assert result.label_values == (9, 4)


def test_threshold_mode_uses_per_label_thresholds_and_the_most_probable_label():
    class Ramps(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([x, 2 * x - 1], dim=1)  # logits of the two labels

    voxels = np.repeat(np.linspace(-3, 3, 13, dtype=np.float32)[None, None], 6, axis=0).repeat(6, axis=1)
    package = make_package(labels=((1, "a"), (2, "b")), activation="sigmoid", thresholds={1: 0.9, 2: 0.5})
    labels = labels_of(segment([sitk.GetImageFromArray(voxels)], package, torch.jit.script(Ramps()), device="cpu"))
    a, b = 1 / (1 + np.exp(-voxels)), 1 / (1 + np.exp(-(2 * voxels - 1)))
    expected = np.where(b >= 0.5, np.where((a >= 0.9) & (a > b), 1, 2), np.where(a >= 0.9, 1, 0))
    np.testing.assert_array_equal(labels, expected)


def test_keep_largest_component_runs_on_the_model_grid():
    image = phantom(empty_image(*GEOMETRIES["oblique"]), SPHERES)
    result = segment([image], make_package(keep_largest_component=(1,)), THRESHOLD, device="cpu")
    only_large = phantom(empty_image(*GEOMETRIES["oblique"]), SPHERES[:1])
    np.testing.assert_array_equal(labels_of(result), sitk.GetArrayFromImage(only_large))


def test_a_volume_smaller_than_the_patch_is_padded():
    voxels = np.zeros((5, 7, 6), np.float32)
    voxels[1:4, 2:5, 1:3] = 1
    result = segment([sitk.GetImageFromArray(voxels)], make_package(patch_size=(16, 16, 16)), THRESHOLD, device="cpu")
    np.testing.assert_array_equal(labels_of(result), voxels)


def test_mirroring_a_symmetric_model_changes_nothing_but_runs_every_flip():
    calls = []

    def counted(batch):
        calls.append(batch.shape[0])
        return THRESHOLD(batch)

    image = phantom(empty_image(*GEOMETRIES["oblique"]), SPHERES)
    plain = labels_of(segment([image], make_package(), counted, device="cpu"))
    plain_calls = len(calls)
    mirrored = labels_of(segment([image], make_package(), counted, device="cpu", mirror_axes=(0, 1, 2)))
    np.testing.assert_array_equal(mirrored, plain)
    assert len(calls) - plain_calls == 8 * plain_calls


def test_progress_goes_through_every_stage_in_order_and_threads_are_restored():
    seen, threads_inside = [], []

    def network(batch):
        threads_inside.append(torch.get_num_threads())
        return THRESHOLD(batch)

    before = torch.get_num_threads()
    image = phantom(empty_image(*GEOMETRIES["oblique"]), SPHERES)
    package = make_package(spacing=(1.2, 1.2, 1.2))
    result = segment([image], package, network, device="cpu", threads=1, progress=seen.append)
    assert torch.get_num_threads() == before
    assert set(threads_inside) == {1}
    fractions = [p.fraction for p in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert [name for name, _ in STAGES] == list(dict.fromkeys(p.stage for p in seen))
    assert sum(p.stage == "inferring" for p in seen) > 2  # per batch of windows
    assert set(result.timings) == {name for name, _ in STAGES} | {"total"}
    assert result.device.startswith("CPU") and result.peak_memory_bytes > 0


def test_cancel_between_batches_stops_the_run():
    cancel = threading.Event()
    calls = []

    def network(batch):
        calls.append(1)
        cancel.set()  # the user clicks Cancel while the first batch runs
        return THRESHOLD(batch)

    image = phantom(empty_image(*GEOMETRIES["oblique"]), SPHERES)
    with pytest.raises(EngineCancelled):
        segment([image], make_package(), network, device="cpu", cancel=cancel)
    assert len(calls) == 1


def test_a_cancel_before_starting_runs_nothing():
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(EngineCancelled):
        segment([phantom(empty_image(*GEOMETRIES["oblique"]), SPHERES)], make_package(), _never, cancel=cancel)


def _never(batch):
    raise AssertionError("the network must not run")


def _with_nan(value: float) -> sitk.Image:
    voxels = np.ones((8, 8, 8), np.float32)
    voxels[3, 4, 5] = value
    return sitk.GetImageFromArray(voxels)


BAD_INPUTS = {
    "wrong channel count": ([np.zeros((8, 8, 8), np.float32)] * 2, "needs 1 input volume"),
    "2D image": ([sitk.Image(16, 16, sitk.sitkFloat32)], "2D image"),
    "single slice": ([np.zeros((1, 16, 16), np.float32)], "single slice"),
    "empty": ([sitk.Image(0, 0, 0, sitk.sitkFloat32)], "empty"),
    "NaN": ([_with_nan(float("nan"))], "'channel0' contains NaN"),
    "infinity": ([_with_nan(float("-inf"))], "'channel0' contains NaN or infinite"),
    "color": ([sitk.Image([8, 8, 8], sitk.sitkVectorUInt8, 3)], "3 components"),
}


@pytest.mark.parametrize(("images", "message"), BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_inputs_raise_a_clear_error_before_running(images, message):
    images = [sitk.GetImageFromArray(i) if isinstance(i, np.ndarray) else i for i in images]
    with pytest.raises(EngineError, match=message):
        segment(images, make_package(), _never, device="cpu")


def test_a_volume_over_the_memory_budget_is_refused_before_running():
    image = phantom(empty_image(*GEOMETRIES["oblique"]), SPHERES)
    needed = estimate_memory([image], make_package(), "cpu")
    assert needed > 64 * image.GetNumberOfPixels()  # inputs, accumulators and the network's working set
    with pytest.raises(EngineError, match="memory budget"):
        segment([image], make_package(), _never, device="cpu", memory_budget=needed - 1)
    segment([image], make_package(), THRESHOLD, device="cpu", memory_budget=needed)


def test_the_estimate_grows_with_the_model_grid():
    image = phantom(empty_image(*GEOMETRIES["oblique"]), SPHERES)
    coarse = estimate_memory([image], make_package(spacing=(2.0, 2.0, 2.0), orientation="RAS"), "cpu")
    fine = estimate_memory([image], make_package(spacing=(0.5, 0.5, 0.5), orientation="RAS"), "cpu")
    assert fine > 4 * coarse


def test_a_network_giving_other_channels_than_declared_is_an_error():
    package = make_package()
    package = dataclasses.replace(package, labels=(*package.labels, Label(2, "other", "#00ff00")))
    package = dataclasses.replace(package, inference=dataclasses.replace(package.inference, output_channels=3))
    with pytest.raises(EngineError, match="gives 2 output channels"):
        segment([phantom(empty_image(*GEOMETRIES["oblique"]), SPHERES)], package, THRESHOLD, device="cpu")


def test_a_missing_device_is_an_error():
    with pytest.raises(EngineError, match="not available"):
        segment([phantom(empty_image(*GEOMETRIES["oblique"]), SPHERES)], make_package(), _never, device="cuda:7")


def test_a_package_on_disk_is_loaded_and_run(tmp_path):
    contract = {
        "schemaVersion": 1, "format": "torchscript", "weights": "model.pt", "dimensions": 3,
        "inputs": [{"name": "T1", "modality": "MR"}],
        "preprocessing": {"spacing": None, "orientation": "native", "normalization": [{"kind": "none"}]},
        "inference": {"patchSize": [16, 16, 16], "activation": "softmax", "outputChannels": 2},
        "postprocessing": {"mode": "argmax"},
        "labels": [{"value": 3, "name": "Sphere", "color": "#ff0000"}],
    }  # fmt: skip
    write_package(str(tmp_path), THRESHOLD, contract)
    image = phantom(empty_image(*GEOMETRIES["oblique"]), SPHERES)
    result = segment([image], load_package(str(tmp_path)), device="cpu")
    np.testing.assert_array_equal(labels_of(result), 3 * sitk.GetArrayFromImage(image))


def test_a_missing_or_unreadable_model_is_an_error(tmp_path):
    weights = tmp_path / "model.pt"
    weights.write_bytes(b"not a TorchScript archive")
    package = dataclasses.replace(make_package(), folder=str(tmp_path), weights_path=str(weights))
    with pytest.raises(EngineError, match="model cannot be loaded"):
        segment([phantom(empty_image(*GEOMETRIES["oblique"]), SPHERES)], package, device="cpu")


# ------------------------------------------------------------------------------------------- normalization


def test_ct_window_clips_and_scales_onto_the_range():
    values = torch.tensor([-2000.0, -160.0, 40.0, 240.0, 3000.0])
    result = normalize(values, Normalization("ct-window", window=(-160.0, 240.0), range=(-1.0, 1.0)))
    np.testing.assert_allclose(result.numpy(), [-1.0, -1.0, 0.0, 1.0, 1.0], atol=1e-6)


@pytest.mark.parametrize(
    ("normalization", "mask"),
    [
        (Normalization("z-score", foreground="all"), lambda v: np.ones_like(v, bool)),
        (Normalization("z-score", foreground="nonzero"), lambda v: v != 0),
        (Normalization("z-score", foreground="threshold", threshold=50.0), lambda v: v > 50),
    ],
    ids=["all", "nonzero", "threshold"],
)
def test_z_score_uses_the_foreground_statistics(normalization, mask):
    values = np.random.default_rng(3).normal(100, 30, size=(6, 7, 8)).astype(np.float32)
    values[:2] = 0
    inside = mask(values)
    expected = np.where(inside, (values - values[inside].mean()) / values[inside].std(), 0)
    result = normalize(torch.from_numpy(values.copy()), normalization).numpy()
    np.testing.assert_allclose(result, expected, atol=1e-4)


def test_percentiles_of_the_foreground_map_onto_the_range():
    values = np.concatenate([np.zeros(50), np.arange(1, 1002)]).astype(np.float32)  # 1..1001 in the foreground
    normalization = Normalization("percentile", percentiles=(10.0, 90.0), range=(0.0, 1.0), foreground="nonzero")
    result = normalize(torch.from_numpy(values.copy()), normalization).numpy()
    np.testing.assert_allclose(result, np.clip((values - 101) / 800, 0, 1), atol=1e-6)


@pytest.mark.parametrize("slice_axis", [0, 1, 2])
def test_a_2d_model_runs_slice_by_slice_along_its_axis(slice_axis):
    """Every slice along the axis reaches the 2D network as N×C×H×W windows of the plane patch."""
    size = [13, 11, 12]
    size[slice_axis] = 5
    image = empty_image(size, (0.8, 1.1, 2.0), (5.0, -3.0, 12.0), rotation(1, 20))
    voxels = np.random.default_rng(slice_axis).random(tuple(reversed(size))).astype(np.float32)
    volume = sitk.GetImageFromArray(voxels)
    volume.CopyInformation(image)
    plane_patch = (6, 4)  # in image axes, x first, without the slice axis
    package = dataclasses.replace(make_package(), dimensions=2, slice_axis=slice_axis)
    package = dataclasses.replace(package, inference=dataclasses.replace(package.inference, patch_size=plane_patch))
    shapes = []

    def network(slices):
        shapes.append(tuple(slices.shape))
        return THRESHOLD(slices)

    result = segment([volume], package, network, device="cpu")
    assert geometry_mismatch(volume, result.labels) == ""
    np.testing.assert_array_equal(labels_of(result), (voxels > 0.5).astype(np.uint8))
    assert {shape[1:] for shape in shapes} == {(1, *reversed(plane_patch))}
    plane = [n for axis, n in enumerate(size) if axis != slice_axis]
    windows_per_slice = np.prod([len(window_starts(n, p, 0.5)) for n, p in zip(plane, plane_patch)])
    assert sum(shape[0] for shape in shapes) == size[slice_axis] * windows_per_slice


def test_a_2d_model_segments_a_single_slice_volume():
    frame = empty_image((9, 7, 1), (0.3, 0.3, 1.0), (0.0, 0.0, 0.0), np.eye(3))
    voxels = np.random.default_rng(3).random((1, 7, 9)).astype(np.float32)
    volume = sitk.GetImageFromArray(voxels)
    volume.CopyInformation(frame)
    package = dataclasses.replace(make_package(), dimensions=2, slice_axis=2)
    package = dataclasses.replace(package, inference=dataclasses.replace(package.inference, patch_size=(8, 8)))
    result = segment([volume], package, THRESHOLD, device="cpu")
    np.testing.assert_array_equal(labels_of(result), (voxels > 0.5).astype(np.uint8))
    with pytest.raises(EngineError, match="single slice"):
        segment([volume], make_package(), THRESHOLD, device="cpu")


class Smoothing(torch.nn.Module):
    """A convolutional network (3×3×3 mean, then a threshold at 0.5): autocast changes its arithmetic."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = torch.full((1, 1, 3, 3, 3), 1.0 / 27.0, dtype=x.dtype, device=x.device)
        smooth = torch.nn.functional.conv3d(x, weight, padding=1)
        return torch.cat([0.5 - smooth, smooth - 0.5], dim=1)


def test_precision_auto_runs_reduced_where_native_and_keeps_the_labels():
    image = empty_image((20, 18, 16), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))
    volume = phantom(image, [((10.0, 9.0, 8.0), 6.0)])
    network = torch.jit.script(Smoothing())
    full = segment([volume], make_package(), network, device="cpu", precision="float32")
    automatic = segment([volume], make_package(), network, device="cpu")
    assert full.precision == "float32"
    assert automatic.precision == (reduced_precision(ComputeDevice(kind="cpu")) or "float32")
    assert np.mean(labels_of(full) == labels_of(automatic)) > 0.99
    with pytest.raises(EngineError, match="Unknown precision"):
        segment([volume], make_package(), network, device="cpu", precision="half")

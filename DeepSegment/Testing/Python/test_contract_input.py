"""The input side of the model contract (issue #11 point 4): tensor axis order, normalization step lists,
closest-canonical orientation, NaN policy, spacing tolerance and padding value.

Every engine test has a known answer: the networks are fixed functions (a threshold, a forward difference
along one tensor dimension) that record what they are given, so the expected labels and network inputs are
computed independently with NumPy (and nibabel's ``as_closest_canonical`` for the orientation).
"""

from __future__ import annotations

import json

import nibabel
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from geometry_cases import rotation
from test_package import SCHEMA_PATH, schema_validator

from DeepSegmentLib.engine import EngineError, quality_options, segment
from DeepSegmentLib.frames import FrameSegmenter
from DeepSegmentLib.package import Normalization, PackageError, parse_contract
from DeepSegmentLib.resample import Grid, axis_permutation, model_grid

RNG_SEED = 11


def contract(inputs: int = 1, patch=(10, 8, 6), dimensions: int = 3, **sections) -> dict:
    """A one-label softmax model.json; ``sections`` update preprocessing/inference (dicts) or set other keys."""
    document = {
        "schemaVersion": 2, "format": "torchscript", "weights": "model.pt", "dimensions": dimensions,
        "inputs": [{"name": f"channel {c}"} for c in range(inputs)],
        "preprocessing": {"spacing": None, "orientation": "native", "normalization": [{"kind": "none"}] * inputs},
        "inference": {"patchSize": list(patch), "activation": "softmax", "outputChannels": 2},
        "postprocessing": {"mode": "argmax"},
        "labels": [{"value": 1, "name": "bright", "color": "#ff0000"}],
    }
    for key, value in sections.items():
        document[key] = {**document[key], **value} if isinstance(value, dict) else value
    return document


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"weights")
    return str(tmp_path)


def parsed(folder: str, document: dict):
    schema_validator().validate(document)
    return parse_contract(document, folder)


class Recorder:
    """A fixed-function network that keeps a copy of every batch of windows it is given."""

    def __init__(self, logits) -> None:
        self.logits = logits
        self.inputs = []

    def __call__(self, windows):
        self.inputs.append(windows.detach().clone())
        return self.logits(windows)


def threshold(windows):
    """Logits of "above 0.5" for the first channel."""
    return torch.cat([0.5 - windows[:, :1], windows[:, :1] - 0.5], dim=1)


def forward_difference(dim: int):
    """Logits of "the next voxel along tensor dimension ``dim`` is over 0.5 brighter" (0 at the last voxel)."""

    def logits(windows):
        step = torch.diff(windows[:, :1], dim=dim, append=windows[:, :1].narrow(dim, windows.shape[dim] - 1, 1))
        return torch.cat([0.5 - step, step - 0.5], dim=1)

    return logits


def numpy_forward_difference(array_zyx: np.ndarray, axis: int) -> np.ndarray:
    last = np.take(array_zyx, [-1], axis=axis)
    return (np.diff(array_zyx, axis=axis, append=last) > 0.5).astype(np.uint8)


def image(array_zyx: np.ndarray, spacing=(1.0, 1.0, 1.0), direction=None, origin=(4.0, -3.0, 7.0)) -> sitk.Image:
    result = sitk.GetImageFromArray(np.asarray(array_zyx, np.float32))
    result.SetSpacing(tuple(float(s) for s in spacing))
    result.SetDirection(tuple(np.asarray(np.eye(3) if direction is None else direction, float).ravel()))
    result.SetOrigin(origin)
    return result


def random_volume(shape_zyx, low=0.0, high=2.0, seed=RNG_SEED) -> np.ndarray:
    return np.random.default_rng(seed).uniform(low, high, shape_zyx).astype(np.float32)


def labels_of(result) -> np.ndarray:
    return sitk.GetArrayFromImage(result.labels)


# ------------------------------------------------------------------------------------------ the contract


def test_older_contracts_parse_to_the_same_defaults(folder):
    package = parsed(folder, contract())
    assert package.inference.axis_order == "zyx" and package.inference.padding_value == 0.0
    assert package.preprocessing.spacing_tolerance is None and package.preprocessing.non_finite_value is None
    assert package.preprocessing.normalization == (Normalization("none"),)


def test_new_fields_parse(folder):
    steps = [{"kind": "clip", "percentiles": [0.5, 99.5], "foreground": "all"},
             {"kind": "z-score", "foreground": "all"}, {"kind": "scale-shift", "scale": 0.5, "shift": 0.5}]
    document = contract(
        inputs=2,
        preprocessing={"spacing": [1, 1, 2], "orientation": "closest-RAS", "spacingTolerance": {"fraction": 0.05},
                       "nonFinite": {"replaceWith": -1}, "normalization": [
                           {"kind": "percentile", "percentiles": [1, 99], "foreground": "all", "clip": False}, steps]},
        inference={"axisOrder": "xyz", "paddingValue": -1.5, "mirrorAxes": [0, 2]},
    )
    package = parsed(folder, document)
    percentile, pipeline = package.preprocessing.normalization
    assert (percentile.foreground, percentile.clip) == ("all", False)
    assert [step.kind for step in pipeline] == ["clip", "z-score", "scale-shift"]
    assert (pipeline[0].percentiles, pipeline[0].foreground, pipeline[2].scale) == ((0.5, 99.5), "all", 0.5)
    assert package.preprocessing.orientation == "closest-RAS"
    assert package.preprocessing.spacing_tolerance == ("fraction", 0.05)
    assert package.preprocessing.non_finite_value == -1.0
    assert (package.inference.axis_order, package.inference.padding_value) == ("xyz", -1.5)
    # The network's own tensor order: (batch, channel, x, y, z).
    assert package.tensor_patch_size == (10, 8, 6) and package.tensor_mirror_dims == (2, 4)


NORM = ("preprocessing", "normalization", 0)
BAD = {
    "inference.axisOrder": ({"inference": {"axisOrder": "yxz"}}),
    "inference.paddingValue": ({"inference": {"paddingValue": "zero"}}),
    "preprocessing.orientation": ({"preprocessing": {"orientation": "closest-RAI"}}),
    "preprocessing.spacingTolerance": ({"preprocessing": {"spacing": [1, 1, 1], "spacingTolerance": {"cm": 1}}}),
    "preprocessing.spacingTolerance.fraction": (
        {"preprocessing": {"spacing": [1, 1, 1], "spacingTolerance": {"fraction": 1.5}}}),
    "preprocessing.nonFinite": ({"preprocessing": {"nonFinite": "zero"}}),
    "preprocessing.nonFinite.replaceWith": ({"preprocessing": {"nonFinite": {"replaceWith": "zero"}}}),
    "preprocessing.normalization[0]": ({"preprocessing": {"normalization": [[]]}}),
    "preprocessing.normalization[0][1].std": (
        {"preprocessing": {"normalization": [[{"kind": "clip", "window": [0, 1]}, {"kind": "z-score", "mean": 1}]]}}),
    # The field #11 found silently ignored is honoured now; a misspelt one is refused, not ignored.
    "preprocessing.normalization[0].forground": (
        {"preprocessing": {"normalization": [{"kind": "percentile", "percentiles": [1, 99], "forground": "all"}]}}),
    "preprocessing.normalization[0].foreground": (
        {"preprocessing": {"normalization": [{"kind": "z-score", "mean": 0, "std": 1, "foreground": "all"}]}}),
    "preprocessing.normalization[0].window": (
        {"preprocessing": {"normalization": [{"kind": "clip", "window": [0, 1], "percentiles": [1, 99]}]}}),
    "preprocessing.normalization[0].scale": ({"preprocessing": {"normalization": [{"kind": "sigmoid", "scale": 2}]}}),
    "preprocessing.normalization[0].range": (
        {"preprocessing": {"normalization": [{"kind": "z-score", "range": [0, 1]}]}}),
    "preprocessing.normalization[0].clip": (
        {"preprocessing": {"normalization": [{"kind": "ct-window", "window": [0, 1], "clip": "no"}]}}),
    "preprocessing.normalization[0].std": (
        {"preprocessing": {"normalization": [{"kind": "z-score", "mean": 0, "std": 0}]}}),
}


@pytest.mark.parametrize("field", BAD)
def test_schema_and_parser_both_refuse_and_name_the_field(folder, field):
    document = contract(**BAD[field])
    assert not schema_validator().is_valid(document)
    with pytest.raises(PackageError) as raised:
        parse_contract(document, folder)
    assert raised.value.field == field


def test_a_spacing_tolerance_needs_a_spacing(folder):
    with pytest.raises(PackageError) as raised:
        parse_contract(contract(preprocessing={"spacingTolerance": {"mm": 0.1}}), folder)
    assert raised.value.field == "preprocessing.spacingTolerance"


# ------------------------------------------------------------------------------------------- axis order


def test_a_network_taking_xyz_tensors_gets_them_and_its_labels_come_back_in_place(folder):
    volume = random_volume((6, 8, 10))  # z, y, x; one window of 10 × 8 × 6 (x, y, z)
    package = parsed(folder, contract(inference={"axisOrder": "xyz"}))
    network = Recorder(forward_difference(dim=2))  # x is the first spatial dimension of an xyz tensor
    labels = labels_of(segment([image(volume)], package, network, device="cpu"))
    (windows,) = network.inputs
    assert tuple(windows.shape) == (1, 1, 10, 8, 6)
    np.testing.assert_array_equal(windows[0, 0].numpy(), volume.transpose(2, 1, 0))
    np.testing.assert_array_equal(labels, numpy_forward_difference(volume, axis=2))
    assert labels.any() and not labels.all()


@pytest.mark.parametrize("quality", ["exact", "accurate"])
def test_xyz_and_zyx_packages_of_one_function_agree_over_many_mirrored_windows(tmp_path, quality):
    volume = random_volume((20, 27, 33))
    results = {}
    for order, dim in (("zyx", 4), ("xyz", 2)):  # the same function: a difference along x
        folder = tmp_path / order
        folder.mkdir()
        (folder / "model.pt").write_bytes(b"weights")
        package = parsed(str(folder), contract(inference={"axisOrder": order, "mirrorAxes": [0, 1, 2],
                                                          "patchSize": [12, 10, 8]}))
        results[order] = labels_of(segment([image(volume)], package, forward_difference(dim), device="cpu",
                                           precision="float32", **quality_options(package, quality)))
    np.testing.assert_array_equal(results["xyz"], results["zyx"])
    assert results["xyz"].any()


def test_a_2d_network_taking_xy_slices(folder):
    volume = random_volume((3, 8, 10))
    package = parsed(folder, contract(dimensions=2, patch=(10, 8), inference={"axisOrder": "xyz"}))
    network = Recorder(forward_difference(dim=2))  # (N, C, x, y) slices
    labels = labels_of(segment([image(volume)], package, network, device="cpu"))
    assert {tuple(windows.shape[1:]) for windows in network.inputs} == {(1, 10, 8)}
    np.testing.assert_array_equal(labels, numpy_forward_difference(volume, axis=2))
    frame_labels = FrameSegmenter(package, network, device="cpu", precision="float32", quality="exact").segment(
        volume[:1], np.diag([1.0, 1.0, 1.0, 1.0]))
    np.testing.assert_array_equal(frame_labels, labels[:1])


# -------------------------------------------------------------------------------------- normalization


def nearest_rank(values: np.ndarray, percent: float) -> float:
    ordered = np.sort(values.ravel())
    return float(ordered[round(percent / 100 * (len(ordered) - 1))])


def network_input(folder: str, volume: np.ndarray, normalization) -> np.ndarray:
    """What a one-window network is given for ``volume`` under ``normalization`` (one channel's entry)."""
    package = parsed(folder, contract(preprocessing={"normalization": [normalization]}))
    network = Recorder(threshold)
    segment([image(volume)], package, network, device="cpu")
    return network.inputs[0][0, 0].numpy()


def test_percentiles_honour_their_foreground(folder):
    volume = random_volume((6, 8, 10), 50, 150)
    volume[:, :4] = 0  # half the volume is zero
    step = {"kind": "percentile", "percentiles": [10, 90], "range": [0, 1]}
    seen = {foreground: network_input(folder, volume, {**step, "foreground": foreground})
            for foreground in ("all", "nonzero")}
    for foreground, values in (("all", volume), ("nonzero", volume[volume != 0])):
        low, high = nearest_rank(values, 10), nearest_rank(values, 90)
        expected = (np.clip(volume, low, high) - low) / (high - low)
        np.testing.assert_allclose(seen[foreground], expected, atol=1e-6, err_msg=foreground)
    assert not np.allclose(seen["all"], seen["nonzero"])


def test_percentile_clip_then_z_score_then_scale_and_shift(folder):
    volume = random_volume((6, 8, 10), -100, 400)
    steps = [{"kind": "clip", "percentiles": [5, 95], "foreground": "all"}, {"kind": "z-score", "foreground": "all"},
             {"kind": "scale-shift", "scale": 0.5, "shift": 0.5}]
    clipped = np.clip(volume, nearest_rank(volume, 5), nearest_rank(volume, 95)).astype(np.float64)
    expected = (clipped - clipped.mean()) / clipped.std() * 0.5 + 0.5
    np.testing.assert_allclose(network_input(folder, volume, steps), expected, atol=1e-5)


def test_ct_window_without_clipping_then_sigmoid(folder):
    volume = random_volume((6, 8, 10), -1000, 1500)
    steps = [{"kind": "ct-window", "window": [-200, 300], "range": [-1, 1], "clip": False}, {"kind": "sigmoid"}]
    expected = 1 / (1 + np.exp(-((volume.astype(np.float64) + 200) / 500 * 2 - 1)))
    seen = network_input(folder, volume, steps)
    np.testing.assert_allclose(seen, expected, atol=1e-6)
    assert seen.min() < 0.1 and seen.max() > 0.9  # clipped to [-1, 1] they would lie in [0.27, 0.73]


def test_fixed_mean_and_std_and_absolute_clip(folder):
    volume = random_volume((6, 8, 10), -1000, 1000)
    steps = [{"kind": "clip", "window": [-500, 500]}, {"kind": "z-score", "mean": 80, "std": 120}]
    np.testing.assert_allclose(network_input(folder, volume, steps), (np.clip(volume, -500, 500) - 80) / 120,
                               rtol=1e-6, atol=1e-5)


def test_each_channel_has_its_own_steps(folder):
    first, second = random_volume((6, 8, 10), seed=1), random_volume((6, 8, 10), -10, 10, seed=2)
    document = contract(inputs=2, preprocessing={"normalization": [
        {"kind": "none"}, [{"kind": "scale-shift", "shift": 10}, {"kind": "scale-shift", "scale": 0.1}]]})
    network = Recorder(threshold)
    segment([image(first), image(second)], parsed(folder, document), network, device="cpu")
    np.testing.assert_array_equal(network.inputs[0][0, 0].numpy(), first)
    np.testing.assert_allclose(network.inputs[0][0, 1].numpy(), (second + 10) * 0.1, atol=1e-6)


# ------------------------------------------------------------------------------- closest orientation


def oblique_volume():
    """A scan whose voxel axes point roughly inferior, right and posterior, turned by 20° and 12°."""
    permutation = np.array([[0.0, -1, 0], [0, 0, 1], [-1, 0, 0]])  # LPS columns: i → I, j → R, k → P
    direction = rotation(0, 20) @ rotation(2, 12) @ permutation
    volume = random_volume((6, 8, 10))
    return volume, image(volume, spacing=(0.8, 1.1, 2.5), direction=direction, origin=(12.0, -40.0, 33.0))


@pytest.mark.parametrize("order", ["xyz", "zyx"])
def test_closest_ras_permutes_like_nibabel_and_labels_come_back_exactly(folder, order):
    volume, oblique = oblique_volume()
    source = Grid.from_image(oblique)
    grid = model_grid(oblique, None, "closest-RAS")
    # RAS-flipped (x, y, z) is (j, -k, -i): a 10 × 6 × 8 window holds it all.
    assert axis_permutation(source, grid) == ((1, False), (2, True), (0, True)) and grid.size == (8, 6, 10)
    package = parsed(folder, contract(patch=grid.size, preprocessing={"orientation": "closest-RAS"},
                                      inference={"axisOrder": order}))
    network = Recorder(threshold)
    result = segment([oblique], package, network, device="cpu")
    # nibabel on the same voxels and geometry (its affine maps i, j, k to RAS).
    affine = np.eye(4)
    affine[:3, :3] = np.diag([-1.0, -1, 1]) @ np.array(oblique.GetDirection()).reshape(3, 3) @ np.diag(
        oblique.GetSpacing())
    affine[:3, 3] = np.diag([-1.0, -1, 1]) @ np.array(oblique.GetOrigin())
    canonical = nibabel.as_closest_canonical(nibabel.Nifti1Image(volume.transpose(2, 1, 0), affine))
    expected = np.asarray(canonical.dataobj)  # x, y, z
    seen = network.inputs[0][0, 0].numpy()
    np.testing.assert_array_equal(seen if order == "xyz" else seen.transpose(2, 1, 0), expected)
    # The model grid keeps the scan's oblique axes, so nibabel's canonical affine is the model grid's.
    canonical_lps = np.diag([-1.0, -1, 1]) @ canonical.affine[:3, :3]
    np.testing.assert_allclose(np.array(grid.direction).reshape(3, 3) @ np.diag(grid.spacing), canonical_lps,
                               atol=1e-9)
    np.testing.assert_array_equal(labels_of(result), (volume > 0.5).astype(np.uint8))
    for get in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
        assert getattr(result.labels, get)() == getattr(oblique, get)()


def test_ras_resamples_an_oblique_scan_where_closest_ras_does_not(folder):
    volume, oblique = oblique_volume()
    package = parsed(folder, contract(patch=(8, 8, 8), preprocessing={"orientation": "RAS"}))
    labels = labels_of(segment([oblique], package, threshold, device="cpu"))
    assert not np.array_equal(labels, (volume > 0.5).astype(np.uint8))  # interpolated twice


# ------------------------------------------------------------------------------ spacing tolerance


def test_spacing_tolerance_keeps_the_input_grid():
    scan = image(random_volume((6, 8, 10)), spacing=(0.98, 1.0, 2.03))
    assert model_grid(scan, (1, 1, 2), "native").spacing == (1.0, 1.0, 2.0)
    assert model_grid(scan, (1, 1, 2), "native", ("mm", 0.05)) == Grid.from_image(scan)
    # 2% off in x and 1.5% in z: a 1.6% tolerance keeps y and z only.
    assert model_grid(scan, (1, 1, 2), "native", ("fraction", 0.016)).spacing == (1.0, 1.0, 2.03)


def test_within_the_tolerance_the_network_sees_the_input_voxels(folder):
    volume = random_volume((6, 8, 10))
    document = contract(preprocessing={"spacing": [1, 1, 2], "spacingTolerance": {"mm": 0.05}})
    network = Recorder(threshold)
    labels = labels_of(segment([image(volume, spacing=(0.98, 1.0, 2.03))], parsed(folder, document), network,
                               device="cpu"))
    np.testing.assert_array_equal(network.inputs[0][0, 0].numpy(), volume)
    np.testing.assert_array_equal(labels, (volume > 0.5).astype(np.uint8))


# --------------------------------------------------------------------------- NaN and padding values


def test_non_finite_voxels_are_refused_unless_the_model_says_what_they_become(folder):
    volume = random_volume((6, 8, 10))
    volume[2, 3, 4], volume[0, 0, 0], volume[5, 7, 9] = np.nan, np.inf, -np.inf
    with pytest.raises(EngineError, match="NaN or infinite"):
        segment([image(volume)], parsed(folder, contract()), threshold, device="cpu")
    document = contract(preprocessing={"nonFinite": {"replaceWith": 0.75}})
    network = Recorder(threshold)
    labels = labels_of(segment([image(volume)], parsed(folder, document), network, device="cpu"))
    replaced = np.where(np.isfinite(volume), volume, 0.75)
    np.testing.assert_array_equal(network.inputs[0][0, 0].numpy(), replaced)
    np.testing.assert_array_equal(labels, (replaced > 0.5).astype(np.uint8))


def test_windows_beyond_the_volume_hold_the_padding_value(folder):
    volume = random_volume((4, 5, 6))  # smaller than the 8³ window
    document = contract(patch=(8, 8, 8), inference={"paddingValue": -2.5})
    network = Recorder(threshold)
    labels = labels_of(segment([image(volume)], parsed(folder, document), network, device="cpu"))
    expected = np.full((8, 8, 8), -2.5, np.float32)
    expected[2:6, 1:6, 1:7] = volume  # centred: (8 - n) // 2 voxels before
    np.testing.assert_array_equal(network.inputs[0][0, 0].numpy(), expected)
    np.testing.assert_array_equal(labels, (volume > 0.5).astype(np.uint8))


def test_the_schema_documents_every_new_field():
    with open(SCHEMA_PATH, encoding="utf-8") as file:
        schema = json.load(file)["$defs"]
    assert {"spacingTolerance", "nonFinite"} <= set(schema["preprocessing"]["properties"])
    assert {"axisOrder", "paddingValue"} <= set(schema["inference"]["properties"])
    assert {"closest-RAS", "closest-LPS"} <= set(schema["preprocessing"]["properties"]["orientation"]["enum"])

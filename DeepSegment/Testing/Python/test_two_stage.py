"""Two-stage models (issue #11, point 4.5): a localizer network on its own coarse grid bounds the box the main
network runs in, declared in one model.json with two weights files.

The localizer marks the voxels above 1.5 (a bright cube, and optionally a bright speck); the main network labels
the voxels above 0.5. The expected label map, computed with NumPy, is the main threshold inside the cube's box plus
the margin, and background outside it, on the input's grid.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from test_contract_output import Bright, Recorder, image, labels_of, run
from test_package import schema_validator

from DeepSegmentLib.package import PackageError, load_package, parse_contract, write_package
from DeepSegmentLib.runtimes import RunOptions, run_model


class AboveOneAndHalf(torch.nn.Module):
    """The localizer: softmax logits of 'above 1.5'."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([1.5 - x[:, :1], x[:, :1] - 1.5], dim=1)


def two_stage_contract(margin_mm=3.0, largest_component: bool = False, localizer_mode: str = "whole-volume") -> dict:
    localizer_inference = {"mode": localizer_mode, "activation": "softmax", "outputChannels": 2}
    if localizer_mode == "sliding-window":
        localizer_inference["patchSize"] = [8, 8, 8]
    return {
        "schemaVersion": 2, "format": "torchscript", "weights": "main.pt", "dimensions": 3,
        "inputs": [{"name": "image"}],
        "preprocessing": {"spacing": None, "orientation": "native", "normalization": [{"kind": "none"}]},
        "inference": {"patchSize": [16, 16, 16], "activation": "softmax", "outputChannels": 2,
                      "crop": {"to": "localizer", "marginMm": margin_mm}},
        "postprocessing": {"mode": "argmax"},
        "labels": [{"value": 1, "name": "Object", "color": "#ff0000"}],
        "localizer": {
            "format": "torchscript", "weights": "localizer.pt",
            "preprocessing": {"spacing": [2.0, 2.0, 2.0], "orientation": "native",
                              "normalization": [{"kind": "none"}]},
            "inference": localizer_inference,
            "postprocessing": {"mode": "argmax"},
            "largestComponent": largest_component,
        },
    }


def write_two_stage(folder, document: dict):
    folder.mkdir(parents=True, exist_ok=True)
    torch.jit.save(torch.jit.script(AboveOneAndHalf()), str(folder / "localizer.pt"))
    write_package(str(folder), Bright(), document)
    return load_package(str(folder))


def volume(speck: bool = False) -> np.ndarray:
    """Noise below 1 on a 1 mm grid of 40×36×32 voxels, a bright cube over voxels 8 to 19 on every axis (whole 2 mm
    voxels of the localizer's grid), and optionally a bright 2-voxel speck far from it."""
    rng = np.random.default_rng(11)
    voxels = rng.random((32, 36, 40)) * 0.99
    voxels[8:20, 8:20, 8:20] = 2.0
    if speck:
        voxels[26:28, 30:32, 34:36] = 2.0
    return voxels


def expected_labels(voxels: np.ndarray, box) -> np.ndarray:
    expected = np.zeros(voxels.shape, np.uint8)
    expected[box] = voxels[box] > 0.5
    return expected


def test_the_contract_declares_two_networks_in_one_package(tmp_path):
    document = two_stage_contract()
    schema_validator().validate(document)
    package = write_two_stage(tmp_path, document)
    localizer = package.localizer
    assert localizer.package.weights_path.endswith("localizer.pt") and package.weights_path.endswith("main.pt")
    assert localizer.package.preprocessing.spacing == (2.0, 2.0, 2.0)
    assert [label.value for label in localizer.package.labels] == [1]
    assert localizer.package.identity != package.identity  # the model pool keeps both networks
    assert package.inference.crop.margin_mm == (3.0, 3.0, 3.0)


@pytest.mark.parametrize(("change", "field"), [
    (lambda d: d["inference"].pop("crop"), "localizer"),
    (lambda d: d.pop("localizer"), "inference.crop.to"),
    (lambda d: d["localizer"].update(weights="missing.pt"), "localizer.weights"),
    (lambda d: d["localizer"]["inference"].update(outputChannels=1), "localizer.inference.outputChannels"),
    (lambda d: d["localizer"]["inference"].update(crop={"to": "localizer"}), "localizer.inference.crop.to"),
    (lambda d: d["localizer"]["preprocessing"].update(normalization=[]), "localizer.preprocessing.normalization"),
    (lambda d: d["localizer"].update(largestComponent="yes"), "localizer.largestComponent"),
])
def test_a_bad_two_stage_contract_is_refused_naming_the_field(tmp_path, change, field):
    write_two_stage(tmp_path, two_stage_contract())
    document = two_stage_contract()
    change(document)
    with pytest.raises(PackageError) as raised:
        parse_contract(document, str(tmp_path))
    assert raised.value.field == field


@pytest.mark.parametrize("localizer_mode", ["whole-volume", "sliding-window"])
def test_the_main_network_runs_in_the_localizers_box_plus_the_margin(tmp_path, localizer_mode):
    package = write_two_stage(tmp_path, two_stage_contract(margin_mm=3.0, localizer_mode=localizer_mode))
    voxels = volume()
    network = Recorder(Bright())
    result = run([image(voxels)], package, network)
    # The cube covers voxels 8..19 (2 mm voxels 4..9 of the localizer); 3 mm more on each side: 5..22.
    box = (slice(5, 23),) * 3
    np.testing.assert_array_equal(labels_of(result), expected_labels(voxels, box))
    assert network.shapes == [(1, 1, 16, 16, 16)] * 8  # the model's windows tile the 18³ box alone
    assert "cropped to its box: 18×18×18 of 40×36×32 voxels" in result.windows
    assert result.labels.GetSize() == (40, 36, 32)


def test_the_localizers_largest_component_leaves_a_speck_out_of_the_box(tmp_path):
    voxels = volume(speck=True)
    every = write_two_stage(tmp_path / "every", two_stage_contract(margin_mm=0.0))
    # Without it the box reaches the speck (2 mm voxels 13, 15 and 17: 1 mm voxels up to 27, 31 and 35).
    np.testing.assert_array_equal(labels_of(run([image(voxels)], every)),
                                  expected_labels(voxels, (slice(8, 28), slice(8, 32), slice(8, 36))))
    largest = write_two_stage(tmp_path / "largest", two_stage_contract(margin_mm=0.0, largest_component=True))
    np.testing.assert_array_equal(labels_of(run([image(voxels)], largest)),
                                  expected_labels(voxels, (slice(8, 20),) * 3))


def test_a_localizer_that_finds_nothing_gives_an_empty_label_map(tmp_path):
    package = write_two_stage(tmp_path, two_stage_contract())
    network = Recorder(Bright())
    result = run([image(np.random.default_rng(12).random((16, 16, 16)))], package, network)
    assert not labels_of(result).any() and network.shapes == []
    assert "labelled nothing" in result.windows


def test_a_two_stage_package_runs_through_the_model_dispatch_on_an_oblique_grid(tmp_path):
    """Both networks loaded from the package (through run_model), the input on a turned grid: the labels land on
    the input's grid, inside the box the localizer found (carried through patient space)."""
    write_two_stage(tmp_path, two_stage_contract(margin_mm=2.0))
    voxels = volume()
    turned = image(voxels)
    angle = np.radians(20)
    turned.SetDirection((np.cos(angle), -np.sin(angle), 0, np.sin(angle), np.cos(angle), 0, 0, 0, 1))
    run_result = run_model(str(tmp_path), [turned], device="cpu", options=RunOptions(quality="exact"))
    labels = sitk.GetArrayFromImage(run_result.result.labels)
    assert run_result.result.labels.GetSize() == turned.GetSize()
    assert run_result.result.labels.GetDirection() == turned.GetDirection()
    cube = np.zeros(voxels.shape, bool)
    cube[8:20, 8:20, 8:20] = True
    assert labels[cube].all()  # the cube itself is found on the turned grid
    far = np.ones(voxels.shape, bool)
    far[2:26, 2:26, 2:26] = False
    assert not labels[far].any()  # nothing far outside the cube's box

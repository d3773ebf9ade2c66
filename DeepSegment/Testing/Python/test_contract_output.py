"""The structure and output side of the model contract (issue #11, point 4): whole-volume and resize inference,
crops to the foreground, activation none, channel thresholds, nested regions, 26-connectivity and dilation.

Every network here is a fixed function, so the labels each feature must give are computed independently with
NumPy (and SciPy for connected components) on seeded synthetic volumes. Two-stage models: test_two_stage.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage
from test_package import DELETE, mutate, schema_validator, valid_contract

from DeepSegmentLib.engine import quality_options, segment
from DeepSegmentLib.package import PackageError, load_package, parse_contract, write_package


class Probabilities(torch.nn.Module):
    """Ends in its own softmax: channel 1 is the intensity (clipped to 0..1), channel 0 its complement."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = x[:, :1].clamp(0.0, 1.0)
        return torch.cat([1.0 - p, p], dim=1)


class Levels(torch.nn.Module):
    """One logit per level: channel c is positive where the intensity is above c + 0.5 (nested regions)."""

    def __init__(self, levels: int = 3) -> None:
        super().__init__()
        self.levels = levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([10.0 * (x[:, :1] - (c + 0.5)) for c in range(self.levels)], dim=1)


class Bright(torch.nn.Module):
    """Softmax logits of 'above 0.5'."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([0.5 - x[:, :1], x[:, :1] - 0.5], dim=1)


def contract(**changes) -> dict:
    """A version 2 contract of one input on its own grid, no normalization, one label; ``changes`` update its
    sections (dicts merged, other values replaced)."""
    document = {
        "schemaVersion": 2, "format": "torchscript", "weights": "model.pt", "dimensions": 3,
        "inputs": [{"name": "image"}],
        "preprocessing": {"spacing": None, "orientation": "native", "normalization": [{"kind": "none"}]},
        "inference": {"patchSize": [16, 16, 16], "activation": "softmax", "outputChannels": 2},
        "postprocessing": {"mode": "argmax"},
        "labels": [{"value": 1, "name": "Object", "color": "#ff0000"}],
    }
    for section, value in changes.items():
        merged = {**document[section], **value} if isinstance(value, dict) else value
        document[section] = {k: v for k, v in merged.items() if v is not DELETE} if isinstance(merged, dict) else merged
    return document


def packaged(tmp_path, network: torch.nn.Module, document: dict):
    write_package(str(tmp_path), network, document)
    return load_package(str(tmp_path))


def image(voxels: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> sitk.Image:
    result = sitk.GetImageFromArray(voxels.astype(np.float32))
    result.SetSpacing(spacing)
    return result


def labels_of(result) -> np.ndarray:
    return sitk.GetArrayFromImage(result.labels)


def run(images, package, network=None, quality: str = "exact", **options):
    return segment(images, package, network, device="cpu", precision="float32",
                   **{**quality_options(package, quality), **options})


# --------------------------------------------------------------------------------------------- the parser

NEW_FIELDS_REFUSED = {
    # field named in the error: (section, what replaces it)
    "inference.mode": ("inference", {"mode": "tiles"}),
    "inference.shape": ("inference", {"mode": "resize", "patchSize": DELETE}),
    "inference.shape[1]": ("inference", {"mode": "resize", "patchSize": DELETE, "shape": [64, 0, 64]}),
    "inference.patchSize": ("inference", {"mode": "whole-volume"}),
    "inference.crop.to": ("inference", {"crop": {"to": "brain"}}),
    "inference.crop.marginMm": ("inference", {"crop": {"to": "foreground", "marginMm": -1}}),
    "inference.crop.threshold": ("inference", {"crop": {"to": "foreground", "threshold": "high"}}),
    "inference.activation": ("inference", {"activation": "relu"}),
    "postprocessing.connectivity": ("postprocessing", {"connectivity": 18}),
    "postprocessing.dilate[0]": ("postprocessing", {"dilate": [{"labels": [1]}]}),
    "postprocessing.dilate[0].mm": ("postprocessing", {"dilate": [{"labels": [1], "mm": 0}]}),
    "postprocessing.dilate[0].voxels": ("postprocessing", {"dilate": [{"labels": [1], "voxels": 1.5}]}),
    "postprocessing.channelThresholds.5": ("postprocessing", {"channelThresholds": {"5": 2}}),
}
# Rules the schema cannot say: the parser alone refuses them, naming the field.
NEW_FIELDS_PARSER_ONLY = {
    "inference.shape": ("inference", {"mode": "resize", "patchSize": DELETE, "shape": [64, 64]}),
    "inference.sizeMultiple[0]": ("inference", {"mode": "resize", "patchSize": DELETE, "shape": [60, 64, 64]}),
    "inference.crop.to": ("inference", {"crop": {"to": "localizer"}}),
    "postprocessing.dilate[0].labels[0]": ("postprocessing", {"dilate": [{"labels": [3], "voxels": 1}]}),
    "postprocessing.channelThresholds.3": ("postprocessing", {"channelThresholds": {"3": 0.5}}),
}


def changed(section: str, values: dict) -> dict:
    document = {**valid_contract(), "schemaVersion": 2}
    for key, value in values.items():
        document = mutate(document, (section, key), value)
    return document


def field_refused(folder, document) -> str:
    with pytest.raises(PackageError) as raised:
        parse_contract(document, str(folder))
    return raised.value.field


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"weights")
    return tmp_path


@pytest.mark.parametrize("field", NEW_FIELDS_REFUSED)
def test_schema_and_parser_refuse_bad_new_fields_naming_them(folder, field):
    document = changed(*NEW_FIELDS_REFUSED[field])
    assert not schema_validator().is_valid(document)
    assert field_refused(folder, document) == field


@pytest.mark.parametrize("field", NEW_FIELDS_PARSER_ONLY)
def test_parser_refuses_what_the_schema_cannot_say_of_new_fields(folder, field):
    assert field_refused(folder, changed(*NEW_FIELDS_PARSER_ONLY[field])) == field


def test_new_fields_parse_with_their_defaults(folder):
    document = changed("inference", {"mode": "resize", "patchSize": DELETE, "shape": [128, 128, 64],
                                     "crop": {"to": "foreground", "threshold": -500, "marginMm": [5, 5, 2]}})
    document = mutate(document, ("postprocessing", "connectivity"), 26)
    document = mutate(document, ("postprocessing", "dilate"), [{"labels": [1, 5], "mm": 2.5}, {"labels": [5],
                                                                                              "voxels": 1}])
    document = mutate(document, ("postprocessing", "channelThresholds"), {"5": 0.3})
    schema_validator().validate(document)
    package = parse_contract(document, str(folder))
    inference, steps = package.inference, package.postprocessing
    assert (inference.mode, inference.shape, inference.patch_size) == ("resize", (128, 128, 64), None)
    assert (inference.crop.to, inference.crop.threshold, inference.crop.margin_mm) == ("foreground", -500.0,
                                                                                       (5.0, 5.0, 2.0))
    assert steps.connectivity == 26 and steps.channel_thresholds == {5: 0.3}
    assert [(d.labels, d.voxels, d.mm) for d in steps.dilate] == [((1, 5), None, 2.5), ((5,), 1, None)]
    defaults = parse_contract(valid_contract(), str(folder))
    assert (defaults.inference.mode, defaults.inference.crop, defaults.postprocessing.connectivity,
            defaults.postprocessing.dilate, defaults.localizer) == ("sliding-window", None, 6, (), None)
    one_margin = parse_contract(changed("inference", {"crop": {"to": "foreground", "marginMm": 4}}), str(folder))
    assert one_margin.inference.crop.margin_mm == (4.0, 4.0, 4.0)


def test_version_1_contracts_parse_and_may_not_use_version_2_fields(folder):
    schema_validator().validate(valid_contract())  # schemaVersion 1, as every package written so far
    parse_contract(valid_contract(), str(folder))
    document = mutate(valid_contract(), ("postprocessing", "connectivity"), 26)
    assert not schema_validator().is_valid(document)
    with pytest.raises(PackageError, match="needs schemaVersion 2") as raised:
        parse_contract(document, str(folder))
    assert raised.value.field == "postprocessing.connectivity"
    document = mutate(valid_contract(), ("inference", "activation"), "none")
    assert not schema_validator().is_valid(document)
    assert field_refused(folder, document) == "inference.activation"
    # The input side's additions too: a version 1 reader would run the network on the wrong axes or values.
    for path, value, field in (
        (("inference", "axisOrder"), "xyz", "inference.axisOrder"),
        (("inference", "paddingValue"), -1.0, "inference.paddingValue"),
        (("preprocessing", "spacingTolerance"), {"mm": 0.1}, "preprocessing.spacingTolerance"),
        (("preprocessing", "orientation"), "closest-RAS", "preprocessing.orientation"),
        (("preprocessing", "normalization"), [[{"kind": "none"}]], "preprocessing.normalization[0]"),
        (("preprocessing", "normalization"), [{"kind": "sigmoid"}], "preprocessing.normalization[0].kind"),
        (("preprocessing", "normalization"), [{"kind": "z-score", "mean": 1.0, "std": 2.0}],
         "preprocessing.normalization[0].mean"),
    ):
        document = mutate(valid_contract(), path, value)
        assert not schema_validator().is_valid(document), field
        assert field_refused(folder, document) == field
        document["schemaVersion"] = 2
        schema_validator().validate(document)


def test_activation_none_allows_every_mode_and_sigmoid_allows_regions(folder):
    for mode, channels in (("argmax", 3), ("threshold", 2)):
        document = changed("inference", {"activation": "none", "outputChannels": channels})
        document = mutate(document, ("postprocessing",), {"mode": mode})
        schema_validator().validate(document)
        assert parse_contract(document, str(folder)).postprocessing.mode == mode
    regions = {"mode": "regions", "regions": [{"label": 5}, {"label": 1, "threshold": 0.4}]}
    document = mutate(changed("inference", {"activation": "sigmoid", "outputChannels": 2}), ("postprocessing",),
                      regions)
    schema_validator().validate(document)
    package = parse_contract(document, str(folder))
    assert package.channel_values == (5, 1)
    assert [(r.label, r.threshold) for r in package.postprocessing.regions] == [(5, 0.5), (1, 0.4)]
    twice = mutate(document, ("postprocessing", "regions", 1, "label"), 5)
    assert field_refused(folder, twice) == "postprocessing.regions"
    softmax_regions = mutate(document, ("inference", "activation"), "softmax")
    assert not schema_validator().is_valid(softmax_regions)
    assert field_refused(folder, softmax_regions) == "postprocessing.mode"


# ------------------------------------------------------------------------------------------------ outputs


def test_activation_none_takes_the_outputs_as_probabilities(tmp_path):
    """The network ends in its own softmax: with a channel threshold of 0.7, a voxel of intensity 0.75 is the label
    (0.75 >= 0.7); softmax applied again would make it 0.62 and miss it."""
    voxels = np.random.default_rng(1).choice([0.1, 0.45, 0.65, 0.75, 0.9], size=(10, 12, 14))
    package = packaged(tmp_path, Probabilities(), contract(
        inference={"activation": "none"}, postprocessing={"mode": "argmax", "channelThresholds": {"1": 0.7}}))
    np.testing.assert_array_equal(labels_of(run([image(voxels)], package)), (voxels >= 0.7).astype(np.uint8))
    plain = packaged(tmp_path / "plain", Probabilities(), contract(inference={"activation": "none"}))
    np.testing.assert_array_equal(labels_of(run([image(voxels)], plain)), (voxels > 0.5).astype(np.uint8))


def test_channel_thresholds_give_a_label_above_its_threshold_and_argmax_elsewhere(tmp_path):
    """Three classes from fixed probabilities: label 2 wherever p2 >= 0.3, else the most probable of background and
    label 1."""
    rng = np.random.default_rng(2)
    probabilities = rng.dirichlet([1.0, 1.0, 1.0], size=(8, 9, 10)).astype(np.float32)  # Z×Y×X×3

    class Given(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x  # three input channels are the probabilities

    document = contract(
        inputs=[{"name": f"p{c}"} for c in range(3)],
        preprocessing={"normalization": [{"kind": "none"}] * 3},
        inference={"activation": "none", "outputChannels": 3},
        postprocessing={"mode": "argmax", "channelThresholds": {"2": 0.3}},
        labels=[{"value": 1, "name": "One", "color": "#ff0000"}, {"value": 2, "name": "Two", "color": "#00ff00"}],
    )
    package = packaged(tmp_path, Given(), document)
    images = [image(probabilities[..., c]) for c in range(3)]
    expected = np.where(probabilities[..., 2] >= 0.3, 2, np.where(probabilities[..., 1] > probabilities[..., 0], 1, 0))
    np.testing.assert_array_equal(labels_of(run(images, package)), expected)


def test_nested_regions_give_the_innermost_region_present(tmp_path):
    """BraTS-like: channels whole tumor ⊇ tumor core ⊇ enhancing (intensity above 0.5, 1.5, 2.5) mapped to labels
    edema 2, necrotic core 1, enhancing 3."""
    grid = np.indices((20, 22, 24)).astype(float)
    radius = np.sqrt(((grid - np.array([10, 11, 12])[:, None, None, None]) ** 2).sum(axis=0))
    voxels = np.select([radius < 3, radius < 5, radius < 8], [3.0, 2.0, 1.0], 0.0)
    names = {2: "Edema", 1: "Necrotic core", 3: "Enhancing"}
    document = contract(
        inference={"activation": "sigmoid", "outputChannels": 3},
        postprocessing={"mode": "regions", "regions": [{"label": 2}, {"label": 1}, {"label": 3}]},
        labels=[{"value": value, "name": name, "color": "#808080"} for value, name in names.items()],
    )
    package = packaged(tmp_path, Levels(), document)
    expected = np.select([voxels == 3, voxels == 2, voxels == 1], [3, 1, 2], 0)
    result = run([image(voxels)], package, quality="accurate")
    np.testing.assert_array_equal(labels_of(result), expected)
    assert set(np.unique(expected)) == {0, 1, 2, 3}


def components_kept(mask: np.ndarray, connectivity: int) -> np.ndarray:
    structure = ndimage.generate_binary_structure(3, 1 if connectivity == 6 else 3)
    components, _ = ndimage.label(mask, structure)
    sizes = np.bincount(components.ravel())[1:]
    return components == 1 + int(np.argmax(sizes))


@pytest.mark.parametrize("connectivity", [6, 26])
def test_largest_component_follows_the_declared_connectivity(tmp_path, connectivity):
    """Cubes touching only at corners form one component with 26-connectivity and stay apart with 6."""
    voxels = np.zeros((20, 20, 20))
    voxels[2:6, 2:6, 2:6] = 1
    voxels[6:10, 6:10, 6:10] = 1  # touches the first cube at a corner
    voxels[12:17, 12:17, 12:17] = 1  # larger than either cube alone, smaller than both together
    package = packaged(tmp_path, Bright(), contract(
        postprocessing={"mode": "argmax", "keepLargestComponent": [1], "connectivity": connectivity}))
    expected = components_kept(voxels > 0.5, connectivity)
    np.testing.assert_array_equal(labels_of(run([image(voxels)], package)), expected.astype(np.uint8))
    assert expected.sum() == (128 if connectivity == 26 else 125)


def within_distance(mask: np.ndarray, spacing_zyx, radius: float) -> np.ndarray:
    """Voxels whose centre is within ``radius`` (in the units of ``spacing_zyx``) of a voxel of ``mask``."""
    points = np.argwhere(mask) * np.array(spacing_zyx)
    centres = np.indices(mask.shape).reshape(3, -1).T * np.array(spacing_zyx)
    nearest = np.min(((centres[:, None, :] - points[None]) ** 2).sum(axis=2), axis=1)
    return (nearest <= radius**2 + 1e-9).reshape(mask.shape)


@pytest.mark.parametrize(("dilation", "units"), [({"mm": 2.5}, "mm"), ({"voxels": 2}, "voxels")])
def test_dilation_grows_a_label_into_the_background_by_a_ball(tmp_path, dilation, units):
    spacing = (0.8, 1.0, 1.7)  # x, y, z
    voxels = np.zeros((12, 14, 16))
    voxels[5:7, 6:8, 7:9] = 1
    voxels[3, 3, 3] = 2  # a second label is never overwritten, and does not grow
    voxels[6, 4, 8] = 2
    document = contract(
        inference={"outputChannels": 3}, postprocessing={"mode": "argmax", "dilate": [{"labels": [1], **dilation}]},
        labels=[{"value": 1, "name": "One", "color": "#ff0000"}, {"value": 2, "name": "Two", "color": "#00ff00"}])

    class Values(torch.nn.Module):  # logits picking the class equal to the intensity
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([-(x - c).abs() for c in range(3)], dim=1)

    package = packaged(tmp_path, Values(), document)
    spacing_zyx = tuple(reversed(spacing)) if units == "mm" else (1.0, 1.0, 1.0)
    grown = within_distance(voxels == 1, spacing_zyx, dilation.get("mm", dilation.get("voxels")))
    expected = np.where(voxels == 2, 2, np.where(grown, 1, 0))
    np.testing.assert_array_equal(labels_of(run([image(voxels, spacing)], package)), expected)
    assert (expected == 1).sum() > (voxels == 1).sum()


# ------------------------------------------------------------------------------------ inference structure


class Recorder:
    """Calls a network and records the shape of every input it gets."""

    def __init__(self, network) -> None:
        self.network, self.shapes = network, []

    def __call__(self, x):
        self.shapes.append(tuple(x.shape))
        return self.network(x)


def test_whole_volume_runs_the_network_once_on_the_volume_padded_to_its_multiple(tmp_path):
    voxels = np.random.default_rng(3).random((21, 30, 37))
    package = packaged(tmp_path, Bright(), contract(inference={"mode": "whole-volume", "patchSize": DELETE,
                                                               "sizeMultiple": [16, 16, 8]}))
    network = Recorder(Bright())
    result = run([image(voxels)], package, network)
    assert network.shapes == [(1, 1, 24, 32, 48)]  # z, y, x: 21→24, 30→32, 37→48
    np.testing.assert_array_equal(labels_of(result), (voxels > 0.5).astype(np.uint8))
    assert result.windows == "whole volume: 37×30×21 voxels, padded to 48×32×24"


def test_whole_volume_sees_the_whole_volume_at_once(tmp_path):
    """A network labelling what is above the mean of its input gives the whole volume's answer only when it sees
    the whole volume; windows of 8 voxels would each use their own mean."""

    class AboveMean(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            above = x[:, :1] - x[:, :1].mean()
            return torch.cat([-above, above], dim=1)

    rng = np.random.default_rng(4)
    voxels = rng.random((16, 16, 16)) + np.linspace(0, 2, 16)[None, None, :]  # a ramp along x
    whole = packaged(tmp_path / "whole", AboveMean(), contract(inference={"mode": "whole-volume", "patchSize": DELETE}))
    np.testing.assert_array_equal(labels_of(run([image(voxels)], whole)), (voxels > voxels.mean()).astype(np.uint8))
    tiled = packaged(tmp_path / "tiled", AboveMean(), contract(inference={"patchSize": [8, 8, 8]}))
    assert (labels_of(run([image(voxels)], tiled)) != (voxels > voxels.mean())).any()


def test_resize_runs_the_network_on_its_shape_and_interpolates_the_probabilities_back(tmp_path):
    """The network labels the first 3 of its 8 columns; on a 16-wide grid the probabilities, resized back
    linearly (voxel centres mapped as align_corners=False), cross 0.5 between columns 5 and 6."""

    class FirstColumns(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            columns = torch.arange(x.shape[4], device=x.device).to(x.dtype)
            inside = (columns < 3).to(x.dtype).expand(x.shape[0], 1, x.shape[2], x.shape[3], x.shape[4])
            return torch.cat([1.0 - inside, inside], dim=1)

    package = packaged(tmp_path, FirstColumns(), contract(
        inference={"mode": "resize", "patchSize": DELETE, "shape": [8, 8, 8], "activation": "none"}))
    network = Recorder(FirstColumns())
    voxels = np.random.default_rng(5).random((12, 20, 16))
    result = run([image(voxels)], package, network)
    assert network.shapes == [(1, 1, 8, 8, 8)]
    source = (np.arange(16) + 0.5) * 8 / 16 - 0.5  # where each column's centre falls among the network's columns
    probability = np.clip(3.0 - source, 0.0, 1.0)  # 1 up to column 2, 0 from column 3, linear between
    expected = np.broadcast_to(probability > 0.5, voxels.shape).astype(np.uint8)
    np.testing.assert_array_equal(labels_of(result), expected)
    assert expected[0, 0].tolist() == [1] * 6 + [0] * 10
    assert result.windows == "resized 16×20×12 to 8×8×8 voxels and back"


@pytest.mark.parametrize("mode", ["whole-volume", "resize"])
def test_quality_presets_keep_whole_volume_and_resize_as_the_model_says(tmp_path, mode):
    """No tiling to change: exact, accurate and fast give the model's own answer (fast leaves out mirroring)."""
    inference = {"mode": mode, "patchSize": DELETE, "mirrorAxes": [0, 1]}
    if mode == "resize":
        inference["shape"] = [20, 24, 16]  # the grid's own size: the labels are the threshold's
    package = packaged(tmp_path, Bright(), contract(inference=inference))
    voxels = np.random.default_rng(6).random((16, 24, 20))
    expected = (voxels > 0.5).astype(np.uint8)
    for quality in ("exact", "accurate", "fast"):
        network = Recorder(Bright())
        np.testing.assert_array_equal(labels_of(run([image(voxels)], package, network, quality=quality)), expected)
        assert len(network.shapes) == (1 if quality == "fast" else 4), quality  # mirrored: 4 flips, one call each


def test_crop_to_the_foreground_runs_the_network_in_its_box_plus_the_margin(tmp_path):
    """A network labelling everything it sees: the label map is the box of the voxels above the threshold, grown
    by 3 mm (2 voxels of 1.5 mm along x, 3 of 1 mm along y, 1 of 4 mm along z) and clipped to the grid."""

    class Everything(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([torch.zeros_like(x[:, :1]), torch.ones_like(x[:, :1])], dim=1)

    rng = np.random.default_rng(7)
    voxels = rng.normal(-1000, 5, size=(20, 24, 28))  # air
    voxels[6:9, 5:15, 2:9] = rng.normal(40, 10, size=(3, 10, 7))  # tissue
    package = packaged(tmp_path, Everything(), contract(inference={"crop": {"to": "foreground", "threshold": -500,
                                                                            "marginMm": 3}}))
    network = Recorder(Everything())
    result = run([image(voxels, (1.5, 1.0, 4.0))], package, network)
    expected = np.zeros(voxels.shape, np.uint8)
    expected[5:10, 2:18, 0:11] = 1
    np.testing.assert_array_equal(labels_of(result), expected)
    assert network.shapes == [(1, 1, 16, 16, 16)]  # one window: the 5×16×11 box is padded to the patch
    assert "cropped to the foreground: 11×16×5 of 28×24×20 voxels" in result.windows
    empty = Recorder(Everything())
    nothing = run([image(np.full((8, 8, 8), -1000.0))], package, empty)
    assert not labels_of(nothing).any() and empty.shapes == []
    assert "nothing to segment" in nothing.windows


def test_crop_normalizes_the_box_alone(tmp_path):
    """Normalization statistics come from the cropped box, as nnU-Net and MONAI crop before normalizing: z-scores of
    the box put its mean at 0."""

    class Positive(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([-x[:, :1], x[:, :1]], dim=1)

    rng = np.random.default_rng(8)
    voxels = np.zeros((16, 16, 16))
    voxels[4:12, 4:12, 4:12] = rng.normal(100, 20, size=(8, 8, 8))
    package = packaged(tmp_path, Positive(), contract(
        preprocessing={"normalization": [{"kind": "z-score", "foreground": "all"}]},
        inference={"crop": {"to": "foreground"}}))
    box = voxels[4:12, 4:12, 4:12]
    expected = np.zeros(voxels.shape, np.uint8)
    expected[4:12, 4:12, 4:12] = box > box.mean()
    np.testing.assert_array_equal(labels_of(run([image(voxels)], package)), expected)

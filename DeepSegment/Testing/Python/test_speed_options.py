"""Every speed option of the engine agrees with the exact quality: the bundled demo model on a seeded
variant of a real brain (the MNI template, augmented as in the model's validation), Dice per label.

Times are not asserted; ``Testing/benchmark_inference.py`` measures them.
"""

from __future__ import annotations


import threading

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from DeepSegmentLib.devices import available_devices, choose_device, reduced_precision
from DeepSegmentLib.engine import QUALITY_PRESETS, EngineError, quality_options, segment
from DeepSegmentLib.package import load_network, load_package, write_package

from mni_template import dice_scores

# The Dice against the exact quality each option must keep, per label (the README states the measured values).
DICE_BAR = 0.99
FAST_DICE_BAR = 0.98  # fast also shrinks the overlap of the model's own windows to a quarter


def options_under_test(package) -> dict:
    """name → (segment() keywords on top of the exact quality, the Dice bar, what the run must report)."""
    options = {
        "larger windows": ({"windows": "largest"}, DICE_BAR, "1 window of"),
        "background skipped": ({"skip_background": True}, DICE_BAR, "windows of 64×64×64"),
        "forward pass tuned": ({"fast_forward": True}, DICE_BAR, "forward pass: frozen"),
        "quality accurate": (quality_options(package, "accurate"), DICE_BAR, "1 window of"),
        "quality fast": (quality_options(package, "fast"), FAST_DICE_BAR, "1 window of"),
    }
    if reduced_precision(choose_device("cpu", available_devices())):
        options["reduced precision"] = ({"precision": "auto"}, DICE_BAR, "")
    return options


@pytest.mark.parametrize("option", ["larger windows", "background skipped", "forward pass tuned",
                                    "reduced precision", "quality accurate", "quality fast"])
def test_each_speed_option_agrees_with_the_exact_quality(demo, option):
    package, network, image, exact = demo
    options = options_under_test(package)
    if option not in options:
        pytest.skip("this CPU computes bfloat16 only by emulation: auto precision is float32 here")
    keywords, bar, reported = options[option]
    keywords = {**quality_options(package, "exact"), "precision": "float32", **keywords}
    result = segment([image], package, network, device="cpu", **keywords)
    scores = dice_scores(sitk.GetArrayFromImage(result.labels), exact, [label.value for label in package.labels])
    assert min(scores.values()) >= bar, (option, scores, result.windows)
    assert reported in result.windows


def test_every_quality_preset_is_tested_and_exact_is_the_package_s_own_settings(demo):
    package = demo[0]
    assert set(QUALITY_PRESETS) == {"fast", "accurate", "exact"}
    assert quality_options(package, "exact") == {"overlap": package.inference.overlap, "mirror_axes": (),
                                                 "windows": "model", "skip_background": False,
                                                 "fast_forward": False}
    with pytest.raises(EngineError, match="fast, accurate, exact"):
        quality_options(package, "quick")


class Threshold(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([0.5 - x, x - 0.5], dim=1)


def exported_package(folder: str, size_multiple=None):
    """A threshold-like network exported for 16³ windows only (torch.export with static shapes, as a third party
    may export it: its fixed batch is written on request)."""
    inference = {"patchSize": [16, 16, 16], "activation": "softmax", "outputChannels": 2, "batchSize": 1}
    if size_multiple:
        inference["sizeMultiple"] = size_multiple
    contract = {"schemaVersion": 1, "format": "torch.export", "weights": "model.pt2", "dimensions": 3,
                "inputs": [{"name": "image"}], "inference": inference, "postprocessing": {"mode": "argmax"},
                "labels": [{"value": 1, "name": "bright", "color": "#ffffff"}],
                "preprocessing": {"spacing": None, "orientation": "native", "normalization": [{"kind": "none"}]}}
    program = torch.export.export(Threshold(), (torch.zeros(1, 1, 16, 16, 16),))
    write_package(folder, program, contract, static_batch=True)
    return load_package(folder)


@pytest.mark.parametrize("declared", [None, [2, 2, 2]])
def test_a_network_exported_for_its_patch_only_keeps_its_windows(tmp_path, declared):
    """Probed, the program accepts no other size; declared otherwise, its shape guard refuses the first
    larger window: either way the model's windows run, and the result says why."""
    package = exported_package(str(tmp_path), declared)
    voxels = np.zeros((30, 34, 40), np.float32)
    voxels[8:20, 10:24, 12:30] = 1
    image = sitk.GetImageFromArray(voxels)
    result = segment([image], package, device="cpu", **quality_options(package, "accurate"))
    assert "windows of 16×16×16 voxels (the model's own)" in result.windows
    reason = "refused windows of" if declared else "accepts no window size but the model's own"
    assert reason in result.windows
    np.testing.assert_array_equal(sitk.GetArrayFromImage(result.labels), voxels)


@pytest.mark.parametrize("slice_axis", [0, 2])
def test_a_2d_model_runs_whole_slices_with_larger_windows(tmp_path, slice_axis):
    """A 2D network of local operations gets whole slices, still one voxel thick, with the same labels."""
    torch.manual_seed(4)
    network = torch.jit.script(torch.nn.Sequential(torch.nn.Conv2d(1, 6, 1), torch.nn.Tanh(),
                                                   torch.nn.Conv2d(6, 2, 1)).eval())
    inference = {"patchSize": [8, 8], "activation": "softmax", "outputChannels": 2, "batchSize": 3}
    contract = {"schemaVersion": 1, "format": "torchscript", "weights": "model.pt", "dimensions": 2,
                "sliceAxis": slice_axis, "inputs": [{"name": "frame"}], "inference": inference,
                "postprocessing": {"mode": "argmax"}, "labels": [{"value": 1, "name": "a", "color": "#ffffff"}],
                "preprocessing": {"spacing": None, "orientation": "native", "normalization": [{"kind": "none"}]}}
    write_package(str(tmp_path), network, contract)
    package = load_package(str(tmp_path))
    voxels = np.random.default_rng(5).standard_normal((9, 21, 26)).astype(np.float32)
    image = sitk.GetImageFromArray(voxels)
    exact = segment([image], package, device="cpu", **quality_options(package, "exact"))
    larger = segment([image], package, device="cpu", **quality_options(package, "accurate"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(larger.labels), sitk.GetArrayFromImage(exact.labels))
    expected = {0: "26 windows of 9×21×1 voxels", 2: "9 windows of 1×21×26 voxels"}[slice_axis]
    assert larger.windows.startswith(expected), larger.windows


def test_larger_windows_stay_within_the_memory_budget(tmp_path):
    """A budget that holds windows of at most 28³ voxels splits a 40³ volume into overlapping windows;
    a pointwise network gives the exact quality's labels all the same."""
    from DeepSegmentLib.engine import MAX_WINDOW_VOXELS, estimate_memory, window_voxel_limit

    torch.manual_seed(6)
    network = torch.jit.script(torch.nn.Sequential(torch.nn.Conv3d(1, 4, 1), torch.nn.Tanh(),
                                                   torch.nn.Conv3d(4, 2, 1)).eval())
    inference = {"patchSize": [16, 16, 16], "activation": "softmax", "outputChannels": 2, "batchSize": 1}
    contract = {"schemaVersion": 1, "format": "torchscript", "weights": "model.pt", "dimensions": 3,
                "inputs": [{"name": "image"}], "inference": inference, "postprocessing": {"mode": "argmax"},
                "labels": [{"value": 1, "name": "a", "color": "#ffffff"}],
                "preprocessing": {"spacing": None, "orientation": "native", "normalization": [{"kind": "none"}]}}
    write_package(str(tmp_path), network, contract)
    package = load_package(str(tmp_path))
    image = sitk.GetImageFromArray(np.random.default_rng(7).standard_normal((40, 40, 40)).astype(np.float32))
    assert 0 < window_voxel_limit([image], package, "cpu") <= MAX_WINDOW_VOXELS  # within the free memory
    per_voxel = 1 * 4 + 2 * 12 + 4 * 64
    fixed = estimate_memory([image], package, "cpu") - 16**3 * per_voxel
    budget = fixed + 2 * 28**3 * per_voxel  # half of what is left goes to a window
    assert window_voxel_limit([image], package, "cpu", budget) == 28**3
    exact = segment([image], package, device="cpu", **quality_options(package, "exact"))
    planned = segment([image], package, device="cpu", memory_budget=budget, **quality_options(package, "accurate"))
    sizes = [int(n) for n in planned.windows.split(" of ")[1].split(" ")[0].split("×")]
    assert np.prod(sizes) <= 28**3 and not planned.windows.startswith("1 window"), planned.windows
    np.testing.assert_array_equal(sitk.GetArrayFromImage(planned.labels), sitk.GetArrayFromImage(exact.labels))


class ThresholdAt(torch.nn.Module):
    """Label 1 above ``level``: 0.5 labels the dark background as background; -1 labels it too (as a model
    marking what lies outside an organ does)."""

    def __init__(self, level: float) -> None:
        super().__init__()
        self.level = level

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.level - x, x - self.level], dim=1)


@pytest.mark.parametrize(("level", "block", "probed", "expected"), [
    (0.5, (slice(2, 14),) * 3, True, "27 windows of 16×16×16 voxels (the model's own), 19 skipped as background"),
    (-1.0, (slice(2, 14),) * 3, True, "27 windows of 16×16×16 voxels (the model's own); the network does not label"),
    (0.5, (slice(2, 30),) * 3, False, "27 windows of 16×16×16 voxels (the model's own)"),
])
def test_background_windows_are_skipped_only_where_the_network_labels_them_background(tmp_path, monkeypatch, level,
                                                                                      block, probed, expected):
    """The probe (one window of background through the network) decides; it runs only when some window holds
    nothing but background, and skipping never changes the labels."""
    package = threshold_package(tmp_path, level)
    image = sitk.GetImageFromArray(block_on_background(block))
    probes = counted_probes(monkeypatch)
    skipping = segment([image], package, device="cpu", windows="model", skip_background=True, mirror_axes=())
    assert skipping.windows.startswith(expected), skipping.windows
    assert bool(probes) == probed
    exact = segment([image], package, device="cpu", **quality_options(package, "exact"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(skipping.labels), sitk.GetArrayFromImage(exact.labels))


def test_the_background_probe_runs_once_per_network_and_darkest_value(tmp_path, monkeypatch):
    package = threshold_package(tmp_path, 0.5)
    network = load_network(package, "cpu")
    probes = counted_probes(monkeypatch)
    voxels = block_on_background((slice(2, 14),) * 3)
    for background in (0.0, 0.0, -0.5, -0.5):
        voxels[voxels < 0.2] = background
        result = segment([sitk.GetImageFromArray(voxels)], package, network, device="cpu", windows="model",
                         skip_background=True, mirror_axes=())
        assert "19 skipped as background" in result.windows
    assert [float(args[0][0]) for args in probes] == [0.0, -0.5]


def threshold_package(folder, level: float, batch_size: int = 2):
    """A 3D package of ``ThresholdAt(level)`` on 16³ windows, its input used as it is (no normalization)."""
    inference = {"patchSize": [16, 16, 16], "activation": "softmax", "outputChannels": 2, "batchSize": batch_size}
    contract = {"schemaVersion": 1, "format": "torchscript", "weights": "model.pt", "dimensions": 3,
                "inputs": [{"name": "image"}], "inference": inference, "postprocessing": {"mode": "argmax"},
                "labels": [{"value": 1, "name": "bright", "color": "#ffffff"}],
                "preprocessing": {"spacing": None, "orientation": "native", "normalization": [{"kind": "none"}]}}
    write_package(str(folder), torch.jit.script(ThresholdAt(level)), contract)
    return load_package(str(folder))


def block_on_background(block: tuple) -> np.ndarray:
    """A 32³ volume of zeros with seeded bright voxels (0.2 to 1) in ``block``."""
    voxels = np.zeros((32, 32, 32), np.float32)
    voxels[block] = np.random.default_rng(2).uniform(0.2, 1.0, voxels[block].shape)
    return voxels


def counted_probes(monkeypatch) -> list:
    """The arguments of every background probe the engine runs from now on."""
    from DeepSegmentLib import engine

    probes = []
    probe = engine._labels_background
    monkeypatch.setattr(engine, "_labels_background", lambda *args: probes.append(args) or probe(*args))
    return probes


def test_on_two_threads_a_one_window_model_gets_a_window_per_thread(tmp_path):
    """The default quality shares windows out across 2 CPU threads: a model that takes one window per call is
    handed two, one per thread, and gives the labels of its exact run."""
    package = threshold_package(tmp_path, 0.5, batch_size=1)
    network = load_network(package, "cpu")
    calls = []

    def recorded(batch):
        calls.append((threading.current_thread().name, len(batch)))
        return network(batch)

    image = sitk.GetImageFromArray(block_on_background((slice(2, 30),) * 3))
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        result = segment([image], package, recorded, device="cpu", windows="model", fast_forward=True,
                         mirror_axes=())
    finally:
        torch.set_num_threads(previous)
    assert "forward pass: windows-across-threads" in result.windows
    shared_out = [size for name, size in calls if name.startswith("windows")]
    # 27 windows: 13 calls of two, one per thread, and the last alone; before them, the check of the tuned
    # network against the network itself on two windows.
    assert shared_out == [1] * (2 + 26)
    exact = segment([image], package, network, device="cpu", **quality_options(package, "exact"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(result.labels), sitk.GetArrayFromImage(exact.labels))

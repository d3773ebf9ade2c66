"""torch.export programs written and run (programs.py), and weights files of another kind than declared."""

from __future__ import annotations

import os
import re
import zipfile

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from DeepSegmentLib.engine import EngineError, quality_options, segment
from DeepSegmentLib.forward_pass import has_batch_norm
from DeepSegmentLib.package import PackageError, load_network, load_package, write_package
from DeepSegmentLib.programs import (
    ExportedNetwork,
    NetworkInputError,
    describe_extents,
    export_network,
    has_static_batch,
    input_extents,
)
from DeepSegmentLib.window_plan import window_wide_operation


class Threshold(torch.nn.Module):
    """Logits of background and "bright" (above 0.5): its labels are known exactly."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([0.5 - x, x - 0.5], dim=1)


class PooledThreshold(torch.nn.Module):
    """Threshold through two poolings by 2 and back, with batch norm: accepts window sizes in multiples of 4."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = torch.nn.BatchNorm3d(1).eval()
        self.down = torch.nn.MaxPool3d(4)
        self.up = torch.nn.Upsample(scale_factor=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x) + self.up(self.down(x)) * 0
        return torch.cat([0.5 - x, x - 0.5], dim=1)


def contract(patch=(8, 8, 8), batch_size: int = 2, model_format: str = "torch.export") -> dict:
    weights = "model.pt2" if model_format == "torch.export" else "model.pt"
    return {
        "schemaVersion": 1, "format": model_format, "weights": weights, "dimensions": 3, "inputs": [{"name": "image"}],
        "preprocessing": {"spacing": None, "orientation": "native", "normalization": [{"kind": "none"}]},
        "inference": {"patchSize": list(patch), "overlap": 0.25, "blending": "constant", "batchSize": batch_size,
                      "activation": "softmax", "outputChannels": 2},
        "postprocessing": {"mode": "argmax"},
        "labels": [{"value": 1, "name": "bright", "color": "#ffffff"}],
    }


def phantom() -> tuple:
    """(image, its expected labels): a bright box in a volume whose 8³ windows at overlap 0.25 number 3×3×5."""
    voxels = np.zeros((20, 19, 33), np.float32)
    voxels[4:15, 6:12, 3:29] = 1
    return sitk.GetImageFromArray(voxels), voxels.astype(np.uint8)


def labels_of(result) -> np.ndarray:
    return sitk.GetArrayFromImage(result.labels)


def test_an_eager_module_is_exported_with_a_dynamic_batch_and_the_window_sizes_it_accepts(tmp_path):
    program = export_network(PooledThreshold(), (2, 1, 8, 8, 8))
    assert describe_extents(input_extents(program)) == "{1, 2, ...}×1×{4, 8, ...}×{4, 8, ...}×{4, 8, ...}"
    assert not has_static_batch(program)
    write_package(str(tmp_path), PooledThreshold(), contract())
    network = load_network(load_package(str(tmp_path)), "cpu")
    assert isinstance(network, ExportedNetwork)
    # The window plan and the forward pass read the program's graph through the loaded network.
    assert window_wide_operation(network) == ""
    assert has_batch_norm(network)
    probe = torch.rand(3, 1, 12, 16, 20)
    assert torch.allclose(network(probe), PooledThreshold()(probe), atol=1e-6)


def test_a_program_with_a_fixed_batch_is_refused_unless_asked_for_and_nothing_is_left(tmp_path):
    program = torch.export.export(Threshold(), (torch.zeros(2, 1, 8, 8, 8),))
    with pytest.raises(PackageError, match="batch dimension is fixed at 2") as raised:
        write_package(str(tmp_path), program, contract())
    assert raised.value.field == "weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    write_package(str(tmp_path), program, contract(), static_batch=True)
    assert has_static_batch(torch.export.load(str(tmp_path / "model.pt2")))


@pytest.mark.parametrize("program_batch, contract_batch", [(2, 2), (2, 4), (1, 4), (3, 2)])
def test_a_program_with_a_fixed_batch_runs_every_window_of_a_volume(tmp_path, program_batch, contract_batch):
    """45 windows in batches the program does not take: the last one padded, larger ones split; the labels
    are the network's, in the model's own windows and in larger ones (a fixed window size: refused, then the
    model's)."""
    program = torch.export.export(Threshold(), (torch.zeros(program_batch, 1, 8, 8, 8),))
    write_package(str(tmp_path), program, contract(batch_size=contract_batch), static_batch=True)
    package = load_package(str(tmp_path))
    image, expected = phantom()
    for quality in ("exact", "accurate"):
        result = segment([image], package, device="cpu", precision="float32", **quality_options(package, quality))
        np.testing.assert_array_equal(labels_of(result), expected)
        assert "windows of 8×8×8 voxels (the model's own)" in result.windows


def test_a_program_with_a_dynamic_batch_gives_the_same_labels(tmp_path):
    write_package(str(tmp_path), Threshold(), contract(batch_size=2))
    package = load_package(str(tmp_path))
    image, expected = phantom()
    result = segment([image], package, device="cpu", **quality_options(package, "exact"))
    np.testing.assert_array_equal(labels_of(result), expected)


def test_a_window_size_the_program_was_not_exported_for_is_an_engine_error_saying_both(tmp_path):
    """The package's patch (16³) is not the program's (8³): not a bare AssertionError but which shape it takes."""
    program = export_network(Threshold(), (2, 1, 8, 8, 8), dynamic_sizes=False)
    write_package(str(tmp_path), program, contract(patch=(16, 16, 16)))
    package = load_package(str(tmp_path))
    with pytest.raises(EngineError) as raised:
        segment([phantom()[0]], package, device="cpu", **quality_options(package, "exact"))
    message = str(raised.value)
    assert "accepts inputs of {1, 2, ...}×1×8×8×8 voxels (batch×channels×z×y×x), not 2×1×16×16×16" in message


def test_shapes_a_program_refuses_are_network_input_errors_before_or_from_its_guards():
    program = export_network(PooledThreshold(), (2, 1, 8, 8, 8))
    network = ExportedNetwork(program.module(), input_extents(program))
    for shape in [(1, 1, 9, 8, 8), (1, 2, 8, 8, 8), (1, 1, 8, 8)]:  # PyTorch 2.13 lets the first through
        with pytest.raises(NetworkInputError, match="accepts inputs of"):
            network(torch.zeros(shape))
    # Without the extents read from the program (an unknown range), the program's own guard is translated.
    fixed = torch.export.export(Threshold(), (torch.zeros(2, 1, 8, 8, 8),)).module()
    unread = ExportedNetwork(fixed, extents=())
    with pytest.raises(NetworkInputError, match="not 1×1×8×8×8"):
        unread(torch.zeros(1, 1, 8, 8, 8))


def saved(path, content, zipped: bool = True) -> None:
    torch.save(content, str(path), _use_new_zipfile_serialization=zipped)


@pytest.mark.parametrize("zipped", [True, False])
@pytest.mark.parametrize("declared", ["torchscript", "torch.export"])
def test_a_pickled_checkpoint_is_named_as_such_with_what_to_do(tmp_path, declared, zipped):
    network = torch.nn.Conv3d(1, 2, 1)
    expected = {"torchscript": "TorchScript", "torch.export": "a torch.export program"}[declared]
    cases = {
        "state dict": (network.state_dict(), r"a dictionary of 2 entries \('weight', 'bias'\), 2 of them tensors"),
        "whole module": (network, r"Python objects whose classes are needed to load it \(torch\.nn\.modules"),
    }
    for case, (content, holds) in cases.items():
        folder = tmp_path / case.replace(" ", "-")
        folder.mkdir()
        weights = folder / contract(model_format=declared)["weights"]
        saved(weights, content, zipped)
        write_package(str(folder), weights.read_bytes(), contract(model_format=declared))
        with pytest.raises(PackageError) as raised:
            load_network(load_package(str(folder)), "cpu")
        message = str(raised.value)
        assert raised.value.field == "weights"
        assert f"this is a pickled checkpoint, not {expected}: " in message, case
        assert re.search(holds, message), message
        assert "torch.export" in message and "monai-bundle" in message
        assert "corrupted" not in message and "PytorchStreamReader" not in message


def test_torchscript_and_torch_export_files_declared_as_the_other_are_named(tmp_path):
    script, program = tmp_path / "script", tmp_path / "program"
    # A built-in module: TorchScript reads no source of a class defined here.
    write_package(str(script), torch.jit.script(torch.nn.Conv3d(1, 2, 1)), contract(model_format="torchscript"))
    write_package(str(program), Threshold(), contract())
    swapped = {
        "torch.export": ((script / "model.pt").read_bytes(), 'this is TorchScript, not a torch.export program: set '
                         '"format": "torchscript"'),
        "torchscript": ((program / "model.pt2").read_bytes(), 'this is a torch.export program, not TorchScript: set '
                        '"format": "torch.export"'),
    }
    for declared, (data, message) in swapped.items():
        folder = tmp_path / f"declared-{declared}"
        write_package(str(folder), data, contract(model_format=declared))
        with pytest.raises(PackageError) as raised:
            load_network(load_package(str(folder)), "cpu")
        assert message in str(raised.value)


def test_the_demo_exported_with_torch_export_computes_what_its_torchscript_release_did(tmp_path):
    """brain-tissue-demo 1.1.0 is 1.0.0's network exported with torch.export (PyTorch 2.8): loaded here it gives
    the same scores, on the model's window and on larger windows of other sizes and batches."""
    registry = os.path.join(os.path.dirname(__file__), "..", "..", "..", "ModelRegistry", "Resources", "Registry")
    networks = {}
    for version in ("1.0.0", "1.1.0"):
        with zipfile.ZipFile(os.path.join(registry, f"brain-tissue-demo-{version}.zip")) as archive:
            archive.extractall(tmp_path / version)
        package = load_package(str(tmp_path / version))
        networks[version] = load_network(package, "cpu")
    assert (package.format, package.torch_version) == ("torch.export", "2.8.0")
    assert describe_extents(networks["1.1.0"].extents) == "{1, 2, ...}×1×{8, 16, ...}×{8, 16, ...}×{8, 16, ...}"
    generator = torch.Generator().manual_seed(0)
    for shape in [(1, 1, 64, 64, 64), (3, 1, 40, 72, 56)]:
        probe = torch.rand(shape, generator=generator)
        with torch.inference_mode():
            expected, given = networks["1.0.0"](probe), networks["1.1.0"](probe)
        assert torch.allclose(given, expected, atol=1e-5), shape

"""DeepSegmentLib.package: the contract agrees with its JSON Schema, and weights load without running code."""

from __future__ import annotations

import functools
import io
import json
import os
import pickle
import sys
import zipfile

import jsonschema
import pytest
import referencing
import torch

from DeepSegmentLib.package import (
    MAX_CONTRACT_BYTES,
    PackageError,
    check_torch_version,
    load_network,
    load_package,
    parse_contract,
    release,
    write_package,
)

HERE = os.path.dirname(os.path.abspath(__file__))
# The channel-mix network (ChannelMix below) as PyTorch 2.8 and 2.13 saved it: Data/write_channel_mix.py.
DATA = os.path.join(HERE, "Data")
SCHEMA_PATH = os.path.join(HERE, "..", "..", "Resources", "Schema", "model-package.schema.json")
REGISTRY_SCHEMA_PATH = os.path.join(
    HERE, "..", "..", "..", "ModelRegistry", "Resources", "Schema", "registry-index.schema.json"
)


def read_json(path: str) -> dict:
    with open(path, encoding="utf-8") as file:
        return json.load(file)


@functools.lru_cache(maxsize=1)
def schema_validator() -> jsonschema.Draft202012Validator:
    # Inputs and labels refer to the registry index's schema by its $id.
    registry_schema = read_json(REGISTRY_SCHEMA_PATH)
    resources = referencing.Registry().with_resource(
        registry_schema["$id"], referencing.Resource.from_contents(registry_schema)
    )
    return jsonschema.Draft202012Validator(read_json(SCHEMA_PATH), registry=resources)


TISSUE = {"scheme": "SCT", "code": "85756007", "meaning": "Tissue"}
GRAY_MATTER = {"scheme": "SCT", "code": "389081007", "meaning": "Gray matter"}


def valid_contract() -> dict:
    return {
        "schemaVersion": 1,
        "format": "torchscript",
        "weights": "model.pt",
        "dimensions": 3,
        "inputs": [{"name": "T1", "modality": "MR", "pattern": "t1|mprage"}, {"name": "CT"}],
        "preprocessing": {
            "spacing": [1.0, 1.5, 2],
            "orientation": "RAS",
            "normalization": [
                {"kind": "z-score", "foreground": {"threshold": 10}},
                {"kind": "ct-window", "window": [-1000, 1000], "range": [0, 1]},
            ],
        },
        "inference": {
            "patchSize": [96, 80, 64],
            "sizeMultiple": [16, 16, 16],
            "overlap": 0.5,
            "blending": "gaussian",
            "batchSize": 2,
            "mirrorAxes": [0, 2],
            "activation": "softmax",
            "outputChannels": 3,
        },
        "postprocessing": {
            "mode": "argmax",
            "keepLargestComponent": [1, 5],
            "fillHoles": [5],
            "minimumSizeMm3": {"1": 50},
        },
        "labels": [
            {
                "value": 1,
                "name": "Gray matter",
                "color": "#b4b4b4",
                "terminology": {"category": TISSUE, "type": GRAY_MATTER},
            },
            {"value": 5, "name": "White matter", "color": "#f0f0f0"},
        ],
    }


def sigmoid_contract() -> dict:
    contract = valid_contract()
    contract["inference"].update(activation="sigmoid", outputChannels=2)
    contract["postprocessing"] = {"mode": "threshold", "thresholds": {"5": 0.3}}
    return contract


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"weights")
    return tmp_path


def test_schema_is_a_valid_json_schema():
    jsonschema.Draft202012Validator.check_schema(read_json(SCHEMA_PATH))


def test_valid_contract_parses(folder):
    schema_validator().validate(valid_contract())
    package = parse_contract(valid_contract(), str(folder))
    assert package.torch_version == ""
    recorded = {**valid_contract(), "torchVersion": "2.13.0+cpu"}
    schema_validator().validate(recorded)
    assert parse_contract(recorded, str(folder)).torch_version == "2.13.0+cpu"
    assert package.weights_path == os.path.realpath(folder / "model.pt")
    assert [(i.name, i.modality, i.pattern) for i in package.inputs] == [("T1", "MR", "t1|mprage"), ("CT", "", "")]
    z_score, window = package.preprocessing.normalization
    assert (z_score.kind, z_score.foreground, z_score.threshold) == ("z-score", "threshold", 10.0)
    assert (window.window, window.range) == ((-1000.0, 1000.0), (0.0, 1.0))
    assert package.preprocessing.spacing == (1.0, 1.5, 2.0)
    assert package.inference.patch_size == (96, 80, 64)
    assert package.labels[0].terminology.type.meaning == "Gray matter"
    assert package.postprocessing.minimum_size_mm3 == {1: 50.0}
    assert package.postprocessing.keep_largest_component == (1, 5)


def test_channel_mapping_and_tensor_order(folder):
    package = parse_contract(valid_contract(), str(folder))
    # Channel 0 is the background; channel c is the c-th label whatever its value.
    assert package.channel_values == (0, 1, 5)
    assert package.tensor_patch_size == (64, 80, 96)
    # x and z of a (batch, channel, z, y, x) tensor.
    assert package.tensor_mirror_dims == (2, 4)
    sigmoid = parse_contract(sigmoid_contract(), str(folder))
    assert sigmoid.channel_values == (1, 5)
    # Labels without a threshold get 0.5.
    assert sigmoid.postprocessing.thresholds == {1: 0.5, 5: 0.3}


def test_two_dimensional_models_step_along_their_slice_axis(folder):
    contract = valid_contract()
    contract.update(dimensions=2, sliceAxis=1)
    contract["inference"].update(patchSize=[256, 128], mirrorAxes=[2], sizeMultiple=[32, 16])
    schema_validator().validate(contract)
    package = parse_contract(contract, str(folder))
    assert package.spatial_axes == (0, 2) and package.inference.size_multiple == (32, 16)
    assert package.tensor_patch_size == (128, 256)
    assert package.tensor_mirror_dims == (2,)


def test_defaults(folder):
    contract = valid_contract()
    for key in ("overlap", "blending", "batchSize", "mirrorAxes"):
        del contract["inference"][key]
    contract["preprocessing"]["normalization"] = [{"kind": "z-score"}, {"kind": "none"}]
    contract["preprocessing"]["spacing"] = None
    schema_validator().validate(contract)
    package = parse_contract(contract, str(folder))
    inference = package.inference
    assert (inference.overlap, inference.blending, inference.batch_size, inference.mirror_axes) == (
        0.5,
        "gaussian",
        1,
        (),
    )
    assert package.preprocessing.normalization[0].foreground == "nonzero"
    assert package.preprocessing.spacing is None


def mutate(document: dict, path: tuple, value) -> dict:
    document = json.loads(json.dumps(document))
    target = document
    for key in path[:-1]:
        target = target[key]
    if value is DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return document


DELETE = object()
PRE, INF, POST = ("preprocessing",), ("inference",), ("postprocessing",)
BAD_CONTRACTS = {
    "schemaVersion": (("schemaVersion",), 99),
    "format": (("format",), "pickle"),
    "weights": (("weights",), "/etc/passwd"),
    "dimensions": (("dimensions",), 4),
    "sliceAxis": (("sliceAxis",), 3),
    "torchVersion": (("torchVersion",), "latest"),
    "inputs": (("inputs",), []),
    "inputs[1].name": (("inputs", 1, "name"), DELETE),
    "labels": (("labels",), []),
    "labels[0].color": (("labels", 0, "color"), "gray"),
    "labels[1].value": (("labels", 1, "value"), 0),
    "preprocessing": (PRE, DELETE),
    "preprocessing.spacing": ((*PRE, "spacing"), [1, 1]),
    "preprocessing.spacing[2]": ((*PRE, "spacing", 2), 0),
    "preprocessing.orientation": ((*PRE, "orientation"), "RAI"),
    "preprocessing.normalization[0].kind": ((*PRE, "normalization", 0, "kind"), "min-max"),
    "preprocessing.normalization[0].foreground": ((*PRE, "normalization", 0, "foreground"), "brain"),
    "preprocessing.normalization[1].window": ((*PRE, "normalization", 1, "window"), DELETE),
    "preprocessing.normalization[1].range": ((*PRE, "normalization", 1, "range"), [0, 1, 2]),
    "inference.patchSize": ((*INF, "patchSize"), [96, 96]),
    "inference.patchSize[1]": ((*INF, "patchSize", 1), 0),
    "inference.sizeMultiple": ((*INF, "sizeMultiple"), [16, 16]),
    "inference.sizeMultiple[0]": ((*INF, "sizeMultiple", 0), 0),
    "inference.overlap": ((*INF, "overlap"), 1),
    "inference.blending": ((*INF, "blending"), "linear"),
    "inference.batchSize": ((*INF, "batchSize"), 0),
    "inference.mirrorAxes[1]": ((*INF, "mirrorAxes", 1), 3),
    "inference.activation": ((*INF, "activation"), "relu"),
    "inference.outputChannels": ((*INF, "outputChannels"), 0),
    "postprocessing.mode": ((*POST, "mode"), "threshold"),
    "postprocessing.thresholds": ((*POST, "thresholds"), {"1": 0.5}),
    "postprocessing.keepLargestComponent[0]": ((*POST, "keepLargestComponent", 0), "1"),
    "postprocessing.minimumSizeMm3.1": ((*POST, "minimumSizeMm3", "1"), -5),
}

# What a JSON Schema cannot say; the parser still refuses these, naming the field.
PARSER_ONLY_RULES = {
    "preprocessing.normalization": ((*PRE, "normalization"), [{"kind": "none"}]),
    "inference.outputChannels": ((*INF, "outputChannels"), 2),
    "inference.sizeMultiple[1]": ((*INF, "sizeMultiple", 1), 32),  # 80 is no multiple of 32
    "postprocessing.fillHoles[0]": ((*POST, "fillHoles", 0), 3),
    "postprocessing.minimumSizeMm3.3": ((*POST, "minimumSizeMm3"), {"3": 10}),
    "preprocessing.normalization[1].window": ((*PRE, "normalization", 1, "window"), [100, -100]),
    "weights": (("weights",), "../model.pt"),
    "labels[1].value": (("labels", 1, "value"), 1),
    "inputs[0].pattern": (("inputs", 0, "pattern"), "t1|(mprage"),
}


@pytest.mark.parametrize("field", BAD_CONTRACTS)
def test_schema_and_parser_both_refuse_and_name_the_field(folder, field):
    path, value = BAD_CONTRACTS[field]
    document = mutate(valid_contract(), path, value)
    assert not schema_validator().is_valid(document)
    with pytest.raises(PackageError) as raised:
        parse_contract(document, str(folder))
    assert raised.value.field == field


@pytest.mark.parametrize("field", PARSER_ONLY_RULES)
def test_parser_refuses_what_a_schema_cannot_say_and_names_the_field(folder, field):
    path, value = PARSER_ONLY_RULES[field]
    with pytest.raises(PackageError) as raised:
        parse_contract(mutate(valid_contract(), path, value), str(folder))
    assert raised.value.field == field


def test_sigmoid_contract_rules(folder):
    schema_validator().validate(sigmoid_contract())
    for path, value, field in [
        ((*POST, "mode"), "argmax", "postprocessing.mode"),
        ((*POST, "thresholds", "5"), 1.5, "postprocessing.thresholds.5"),
        ((*INF, "outputChannels"), 3, "inference.outputChannels"),
    ]:
        document = mutate(sigmoid_contract(), path, value)
        with pytest.raises(PackageError) as raised:
            parse_contract(document, str(folder))
        assert raised.value.field == field
        assert field == "inference.outputChannels" or not schema_validator().is_valid(document)


def test_weights_must_be_a_file_inside_the_folder(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (tmp_path / "outside.pt").write_bytes(b"x")
    (folder / "link.pt").symlink_to(tmp_path / "outside.pt")
    (folder / "sub").mkdir()
    for name, message in [
        ("missing.pt", "is not a file"),
        ("sub", "is not a file"),
        ("link.pt", "outside"),
        ("../outside.pt", "outside"),
        (str(tmp_path / "outside.pt"), "relative"),
    ]:
        with pytest.raises(PackageError, match=message) as raised:
            parse_contract(mutate(valid_contract(), ("weights",), name), str(folder))
        assert raised.value.field == "weights"


def test_load_package_reads_model_json_and_refuses_bad_files(folder):
    (folder / "model.json").write_text(json.dumps(valid_contract()), encoding="utf-8")
    package = load_package(str(folder))
    assert package.format == "torchscript" and package.contract_mtime_ns > 0
    assert package.identity == (
        os.path.realpath(folder), package.contract_mtime_ns, package.weights_mtime_ns, package.weights_path
    )
    (folder / "model.json").write_text('{"schemaVersion": 1,', encoding="utf-8")
    with pytest.raises(PackageError, match="not valid JSON"):
        load_package(str(folder))
    with open(folder / "model.json", "wb") as file:
        file.truncate(MAX_CONTRACT_BYTES + 1)
    with pytest.raises(PackageError, match="limit"):
        load_package(str(folder))
    with pytest.raises(PackageError, match="cannot read"):
        load_package(str(folder / "nowhere"))


def test_identity_changes_when_the_weights_change(folder):
    (folder / "model.json").write_text(json.dumps(valid_contract()), encoding="utf-8")
    before = load_package(str(folder)).identity
    os.utime(folder / "model.pt", ns=(1, 1))
    assert load_package(str(folder)).identity != before


class ChannelMix(torch.nn.Module):
    """A 1×1×1 convolution with fixed weights: output channel c = weights[c] · input + c."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(2, 3, kernel_size=1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, -1.0]]).reshape(3, 2, 1, 1, 1))
            self.conv.bias.copy_(torch.tensor([0.0, 1.0, 2.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def expected_output(x: torch.Tensor) -> torch.Tensor:
    a, b = x[:, 0], x[:, 1]
    return torch.stack([a, 2 * b + 1, a - b + 2], dim=1)


def sample_input(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 2, 4, 5, 6, generator=torch.Generator().manual_seed(0))


def exported_program():
    batch = torch.export.Dim("batch", min=1, max=64)
    return torch.export.export(ChannelMix().eval(), (sample_input(),), dynamic_shapes=({0: batch},))


def write(folder, model_format: str, network_or_program, weights: str = "", **recorded) -> None:
    """A package of ``valid_contract()`` in ``model_format``; ``recorded``: more contract fields (torchVersion)."""
    contract = valid_contract()
    contract.update(
        format=model_format,
        weights=weights or {"torchscript": "model.pt", "torch.export": "model.pt2", "onnx": "model.onnx"}[model_format],
        **recorded,
    )
    write_package(str(folder), network_or_program, contract)


@pytest.mark.parametrize("model_format", ["torchscript", "torch.export"])
def test_written_packages_load_and_compute_the_expected_output(tmp_path, model_format):
    network = ChannelMix().eval() if model_format == "torchscript" else exported_program()
    write(tmp_path, model_format, network)
    package = load_package(str(tmp_path))
    loaded = load_network(package, "cpu")
    for batch in (1, 3):
        x = sample_input(batch)
        with torch.inference_mode():
            assert torch.allclose(loaded(x), expected_output(x), atol=1e-6)


def test_write_package_refuses_a_bad_contract_and_leaves_no_weights(tmp_path):
    contract = mutate(valid_contract(), ("inference", "outputChannels"), 7)
    with pytest.raises(PackageError, match="outputChannels"):
        write_package(str(tmp_path), ChannelMix(), contract)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(PackageError, match="outside"):
        write_package(str(tmp_path / "model"), b"x", mutate(valid_contract(), ("weights",), "../evil.pt"))
    assert not (tmp_path / "evil.pt").exists()


class RunsCode:
    """Unpickling this creates a marker file: proof that code from the file ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def torch_saved(value) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def replaced(archive: bytes, suffix: str, data: bytes, edit_config=None) -> bytes:
    """``archive`` with the member ending in ``suffix`` replaced by ``data`` (and configs edited)."""
    output = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(archive)) as source, zipfile.ZipFile(output, "w") as target:
        for info in source.infolist():
            content = data if info.filename.endswith(suffix) else source.read(info.filename)
            if edit_config is not None and info.filename.endswith("_weights_config.json"):
                content = json.dumps(edit_config(json.loads(content))).encode()
            target.writestr(info, content)
    return output.getvalue()


def added(archive: bytes, member: str, data: bytes) -> bytes:
    """``archive`` with one more member, ``member`` below its root folder."""
    output = io.BytesIO()
    output.write(archive)
    with zipfile.ZipFile(output, "a") as target:
        target.writestr(target.namelist()[0].split("/")[0] + "/" + member, data)
    return output.getvalue()


def legacy_layout(archive: bytes) -> bool:
    """Whether a torch.export archive pickles all its weights into one member (PyTorch 2.8 and earlier)."""
    with zipfile.ZipFile(io.BytesIO(archive)) as source:
        return not any(name.endswith("_weights_config.json") for name in source.namelist())


def shipped(written_by: str, model_format: str) -> bytes:
    """The channel-mix network's weights file as PyTorch ``written_by`` (2.8, 2.13) saved it."""
    with open(os.path.join(DATA, f"channel-mix-torch-{written_by}.pt{'2' if model_format == 'torch.export' else ''}"),
              "rb") as file:
        return file.read()


def use_pickle_for_bias(config: dict) -> dict:
    config["config"]["conv.bias"]["use_pickle"] = True
    return config


def valid_archive(tmp_path, model_format: str) -> bytes:
    folder = tmp_path / "valid"
    write(folder, model_format, ChannelMix().eval() if model_format == "torchscript" else exported_program())
    name = "model.pt" if model_format == "torchscript" else "model.pt2"
    return (folder / name).read_bytes()


def malicious_files(tmp_path, marker: str) -> dict:
    evil = RunsCode(marker)
    script, program = valid_archive(tmp_path, "torchscript"), valid_archive(tmp_path, "torch.export")
    return {
        "plain pickle as torchscript": ("torchscript", pickle.dumps(evil)),
        "plain pickle as torch.export": ("torch.export", pickle.dumps(evil)),
        "torch.save file as torchscript": ("torchscript", torch_saved(evil)),
        "torch.save file as torch.export": ("torch.export", torch_saved(evil)),
        "torchscript with pickled data": ("torchscript", replaced(script, "/data.pkl", pickle.dumps(evil, 2))),
        "torchscript with pickled constants": (
            "torchscript",
            replaced(script, "/constants.pkl", pickle.dumps((evil,), 2)),
        ),
        # torch.export.load itself would unpickle these two with the full unpickler.
        "torch.export with pickled sample inputs": (
            "torch.export",
            replaced(program, "sample_inputs/model.pt", torch_saved(evil)),
        ),
        "torch.export with a pickled weight": (
            "torch.export",
            replaced(program, "weights/model.pt", torch_saved({"conv.bias": evil}))
            if legacy_layout(program)
            else replaced(program, "weights/weight_1", torch_saved(evil), use_pickle_for_bias),
        ),
        # PyTorch 2.8 and earlier pickle every weight into one member, which later releases still load.
        "torch.export in PyTorch 2.8's layout with pickled code as weights": (
            "torch.export",
            replaced(shipped("2.8", "torch.export"), "weights/model.pt", torch_saved({"weight": evil})),
        ),
        # An AOTInductor library is native code; the check refuses the member without loading it.
        "torch.export with compiled code": ("torch.export", added(program, "data/aotinductor/model/model.so", b"ELF")),
    }


def test_files_that_would_run_code_are_refused_not_run(tmp_path):
    marker = str(tmp_path / "code-ran")
    for case, (model_format, data) in malicious_files(tmp_path, marker).items():
        folder = tmp_path / case.replace(" ", "-")
        write(folder, model_format, data)
        with pytest.raises(PackageError) as raised:
            load_network(load_package(str(folder)), "cpu")
        assert raised.value.field == "weights", case
        assert not os.path.exists(marker), f"{case}: code from the file ran"


def test_pickled_tensors_in_an_export_archive_are_accepted(tmp_path):
    """A weight stored as a pickled tensor (as torch.export.save does for some tensors) passes the check."""
    program = valid_archive(tmp_path, "torch.export")
    if legacy_layout(program):
        pytest.skip("PyTorch before 2.9 pickles every weight: test_files_of_other_pytorch_releases_... loads those")
    bias = torch.tensor([0.0, 1.0, 2.0], requires_grad=True)
    data = replaced(program, "weights/weight_1", torch_saved(torch.nn.Parameter(bias)), use_pickle_for_bias)
    write(tmp_path / "pickled", "torch.export", data)
    loaded = load_network(load_package(str(tmp_path / "pickled")), "cpu")
    x = sample_input()
    assert torch.allclose(loaded(x), expected_output(x), atol=1e-6)


@pytest.mark.parametrize("written_by", ["2.8", "2.13"])
@pytest.mark.parametrize("model_format", ["torchscript", "torch.export"])
def test_files_of_other_pytorch_releases_load_or_are_refused_before_loading(tmp_path, model_format, written_by):
    """The same network saved by PyTorch 2.8 and 2.13: a torch.export program needs its writer's release or a
    later one (the suite runs with 2.13, and with 2.8 on Python 3.9: ``make test-compat``); TorchScript loads."""
    write(tmp_path, model_format, shipped(written_by, model_format))
    package = load_package(str(tmp_path))
    # An archive names the release that wrote it; a TorchScript file does not (the contract may).
    assert package.torch_version.startswith(written_by + ".") == (model_format == "torch.export")
    if model_format == "torch.export" and release(torch.__version__)[:2] < release(written_by)[:2]:
        # What PyTorch itself does with it: a bare KeyError from its fallback to the 2.7 file layout.
        with pytest.raises(KeyError, match="version"):
            torch.export.load(package.weights_path)
        with pytest.raises(PackageError, match=rf"needs PyTorch {written_by} or later, and this is PyTorch") as raised:
            load_network(package, "cpu")
        assert raised.value.field == "torchVersion"
        return
    loaded = load_network(package, "cpu")
    for batch in (1, 3):
        x = sample_input(batch)
        with torch.inference_mode():
            assert torch.allclose(loaded(x), expected_output(x), atol=1e-6)


def test_write_package_records_the_pytorch_that_wrote_the_weights(tmp_path):
    write(tmp_path / "network", "torchscript", ChannelMix().eval())
    assert load_package(str(tmp_path / "network")).torch_version == torch.__version__.split("+")[0]
    with open(tmp_path / "network" / "model.json", encoding="utf-8") as file:
        assert json.load(file)["torchVersion"] == torch.__version__.split("+")[0]
    # Bytes of a torch.export archive: the release the archive names; of anything else: the contract's.
    write(tmp_path / "archive", "torch.export", shipped("2.8", "torch.export"))
    assert load_package(str(tmp_path / "archive")).torch_version == "2.8.0+cu128"
    write(tmp_path / "bytes", "torchscript", shipped("2.8", "torchscript"), torchVersion="2.8.0")
    assert load_package(str(tmp_path / "bytes")).torch_version == "2.8.0"
    write(tmp_path / "unknown", "torchscript", shipped("2.8", "torchscript"))
    assert load_package(str(tmp_path / "unknown")).torch_version == ""


def test_an_older_pytorch_is_told_which_release_a_package_needs(tmp_path, monkeypatch):
    write(tmp_path / "export", "torch.export", shipped("2.13", "torch.export"))
    export = load_package(str(tmp_path / "export"))
    check_torch_version(export, "2.13.1")  # a later patch release reads it
    check_torch_version(export, "2.14.0a0+git1234")
    needs = r"needs PyTorch 2\.13 or later, and this is PyTorch 2\.12\.1: .* made for PyTorch 2\.12\."
    with pytest.raises(PackageError, match=needs):
        check_torch_version(export, "2.12.1")
    python39 = r"need Python 3\.10 or later: this is 3\.9"
    with monkeypatch.context() as patched, pytest.raises(PackageError, match=python39):
        patched.setattr(sys, "version_info", (3, 9, 18))
        check_torch_version(export, "2.8.0")
    # A TorchScript file whose format version this PyTorch cannot read (PyTorch's limit: its own error below).
    newer = replaced(shipped("2.13", "torchscript"), "/version", b"11\n")
    write(tmp_path / "script", "torchscript", newer, torchVersion="2.13.0")
    script = load_package(str(tmp_path / "script"))
    check_torch_version(script, "2.8.0", max_torchscript_version=11)
    with pytest.raises(PackageError, match=r"needs PyTorch 2\.13 or later.*format version 11 is newer"):
        check_torch_version(script, "2.8.0", max_torchscript_version=10)
    with pytest.raises(RuntimeError, match="maximum supported version for reading is 10"):
        torch.jit.load(script.weights_path)
    write(tmp_path / "unrecorded", "torchscript", newer)  # no torchVersion: the writer is unknown
    with pytest.raises(PackageError, match=r"needs a newer PyTorch, and this is PyTorch 2\.8\.0: .*version 11"):
        check_torch_version(load_package(str(tmp_path / "unrecorded")), "2.8.0", max_torchscript_version=10)


def test_onnx_needs_onnxruntime(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    write(tmp_path, "onnx", b"not read without onnxruntime")
    with pytest.raises(PackageError, match="onnxruntime") as raised:
        load_network(load_package(str(tmp_path)), "cpu")
    assert raised.value.field == "format"


def test_onnx_model_runs_through_onnxruntime(tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    module = ChannelMix()
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"])],
        "channel-mix",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2, None, None, None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3, None, None, None])],
        [
            numpy_helper.from_array(module.conv.weight.detach().numpy(), "w"),
            numpy_helper.from_array(module.conv.bias.detach().numpy(), "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 9  # what onnxruntime releases of the last years all read
    write(tmp_path, "onnx", model.SerializeToString())
    loaded = load_network(load_package(str(tmp_path)), "cpu")
    x = sample_input()
    assert torch.allclose(loaded(x), expected_output(x), atol=1e-5)
    assert onnx.__version__


def test_a_broken_onnx_file_is_a_package_error(tmp_path):
    pytest.importorskip("onnxruntime")
    write(tmp_path, "onnx", b"not an onnx model")
    with pytest.raises(PackageError, match="onnxruntime cannot load") as raised:
        load_network(load_package(str(tmp_path)), "cpu")
    assert raised.value.field == "weights"

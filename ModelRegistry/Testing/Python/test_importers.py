"""ModelRegistryLib.importers: MONAI bundle metadata and SlicerMONAIAuto3DSeg Models.json become valid entries."""

from __future__ import annotations

import hashlib
import json
import os
import zipfile

import pytest

from ModelRegistryLib.importers import (
    ImporterError,
    bundle_large_files,
    from_monai_auto3dseg_models,
    from_monai_bundle_metadata,
    index_document,
    labels_from_auto3dseg_csv,
    model_id_from,
    nnunet_labels,
    package_foreign_model,
    read_monai_bundle,
)
from ModelRegistryLib.index import load_index, parse_index, parse_labels, search

BUNDLE_FILES = [{"url": "https://example.org/bundles/spleen_ct_segmentation_v0.5.3.zip", "sha256": "a" * 64,
                 "size": 4096}]


def spleen_metadata() -> dict:
    """Written for this test in the shape of a MONAI model-zoo bundle's configs/metadata.json."""
    return {
        "schema": "https://example.org/meta_schema_20220324.json",
        "version": "0.5.3",
        "changelog": {"0.5.3": "update to MONAI 1.3", "0.5.2": "fix the inference transform", "0.1.0": "first"},
        "monai_version": "1.3.0",
        "pytorch_version": "2.1.0",
        "numpy_version": "1.24.4",
        "optional_packages_version": {"nibabel": "5.1.0"},
        "name": "Spleen CT segmentation",
        "task": "Decathlon spleen segmentation",
        "description": "A 3D UNet that segments the spleen in portal venous CT.",
        "authors": "MONAI team",
        "copyright": "Copyright (c) MONAI Consortium",
        "data_source": "Task09_Spleen from the Medical Segmentation Decathlon",
        "data_type": "nibabel",
        "image_classes": "single channel data, intensity scaled to [0, 1]",
        "label_classes": "single channel data, 1 is spleen, 0 is everything else",
        "pred_classes": "2 channels OneHot data, channel 1 is spleen, channel 0 is background",
        "eval_metrics": {"mean_dice": 0.961, "per_case": {"a": 1}, "flag": True},
        "intended_use": "Research only, not for diagnosis",
        "references": ["Author A. et al. A spleen paper. 2019.", "Author B. A UNet paper. 2018."],
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "hounsfield", "modality": "CT", "num_channels": 1,
                                 "spatial_shape": [96, 96, 96], "dtype": "float32", "value_range": [0, 1],
                                 "is_patch_data": True, "channel_def": {"0": "image"}}},
            "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": 2,
                                 "spatial_shape": [96, 96, 96], "dtype": "float32", "value_range": [0, 1],
                                 "is_patch_data": True, "channel_def": {"0": "background", "1": "spleen"}}},
        },
    }


def brain_tumor_metadata() -> dict:
    """A multi-channel MR bundle whose outputs are independent (sigmoid) maps: no background channel."""
    return {
        "version": "1.0.0",
        "task": "Multimodal MRI brain tumor segmentation",
        "authors": ["Lab One", "Lab Two"],
        "network_data_format": {
            "inputs": {"image": {"modality": "MRI", "num_channels": 4,
                                 "channel_def": {"0": "T1c", "1": "T1", "2": "T2", "3": "FLAIR"}}},
            "outputs": {"pred": {"format": "segmentation", "num_channels": 3,
                                 "channel_def": {"2": "Enhancing tumor", "0": "Tumor core", "1": "Whole tumor"}}},
        },
    }


def test_monai_bundle_becomes_a_full_card():
    entry = from_monai_bundle_metadata(spleen_metadata(), model_id="spleen-ct", files=BUNDLE_FILES)
    (model,) = parse_index(index_document([entry]))
    assert (model.id, model.title, model.task, model.modality) == ("spleen-ct", "Spleen CT segmentation",
                                                                   "segmentation", "CT")
    assert model.description.startswith("A 3D UNet that segments the spleen in portal venous CT.")
    assert "Decathlon spleen segmentation" in model.description
    assert "Made with MONAI 1.3.0, PyTorch 2.1.0." in model.description
    assert [(label.value, label.name) for label in model.labels] == [(1, "spleen")]
    assert [(i.name, i.modality, i.pattern) for i in model.inputs] == [("image", "CT", "")]
    assert model.authors == ("MONAI team",)
    assert model.citation == "Author A. et al. A spleen paper. 2019.\nAuthor B. A UNet paper. 2018."
    assert model.intended_use == "Research only, not for diagnosis"
    assert model.training_data.startswith("Task09_Spleen from the Medical Segmentation Decathlon")
    assert "Labels: single channel data, 1 is spleen" in model.training_data
    # Only numbers are metrics: nested results and flags are left out.
    assert [(m.name, m.value) for m in model.metrics] == [("mean_dice", 0.961)]
    (version,) = model.versions
    assert (version.version, version.changelog) == ("0.5.3", "update to MONAI 1.3")
    assert [(f.url, f.sha256, f.size) for f in version.files] == [(BUNDLE_FILES[0]["url"], "a" * 64, 4096)]


def test_monai_channels_become_inputs_and_labels():
    entry = from_monai_bundle_metadata(brain_tumor_metadata(), model_id="brats", files=BUNDLE_FILES)
    (model,) = parse_index(index_document([entry]))
    assert model.title == "Multimodal MRI brain tumor segmentation"
    assert model.modality == "MR"
    assert [(i.name, i.modality) for i in model.inputs] == [("T1c", "MR"), ("T1", "MR"), ("T2", "MR"),
                                                            ("FLAIR", "MR")]
    assert [i.name for i in model.inputs if i.matches("BraTS_001 flair")] == ["FLAIR"]
    # Without a background channel every channel is a label; channel 0 becomes value 1.
    assert [(label.value, label.name) for label in model.labels] == [(1, "Tumor core"), (2, "Whole tumor"),
                                                                     (3, "Enhancing tumor")]
    assert len({label.color for label in model.labels}) == 3
    assert "label value = channel number + 1" in model.description
    assert model.authors == ("Lab One", "Lab Two")


def test_a_bare_monai_bundle_gives_a_minimal_entry():
    entry = from_monai_bundle_metadata({"version": "0.1.0"}, model_id="bare", files=BUNDLE_FILES)
    assert entry == {"id": "bare", "title": "bare", "versions": [
        {"version": "0.1.0", "changelog": "", "files": BUNDLE_FILES, "runtime": "monai-bundle"}]}
    parse_index(index_document([entry]))


@pytest.mark.parametrize(
    ("metadata", "model_id", "message"),
    [
        ({"name": "No version"}, "m", "no 'version'"),
        ({"version": "0.5"}, "m", "models[0].versions[0].version"),
        ({"version": "1.0.0"}, "Not An Id", "models[0].id"),
        ([], "m", "must be a JSON object"),
        ({"version": "1.0.0", "network_data_format": {"outputs": {"pred": {"channel_def": {"one": "x"}}}}}, "m",
         "not a channel number"),
    ],
)
def test_unusable_monai_metadata_raises_a_clear_error(metadata, model_id, message):
    with pytest.raises(ImporterError, match=message.replace("[", r"\[").replace("]", r"\]")):
        from_monai_bundle_metadata(metadata, model_id=model_id, files=BUNDLE_FILES)


RELEASES = "https://github.com/example/SlicerSegModels/releases/download/Models/"


def models_json() -> dict:
    """Written for this test in the shape of SlicerMONAIAuto3DSeg's Resources/Models.json."""
    return {"models": [
        {
            "title": "Abdominal organs - quick",
            "license": "CC BY 4.0",
            "description": "Low resolution (3 mm) for a quick preview. Input is an abdominal CT.",
            "subject": "human",
            "imagingModality": "CT",
            "sampleData": ["CTLiver"],
            "versions": [{"url": RELEASES + "abdominal-organs-3mm-v2.0.1.zip"},
                         {"url": RELEASES + "abdominal-organs-3mm-v2.0.0.zip"}],
            "segmentationTimeSecGPU": 64.6,
            "segmentationTimeSecCPU": 73.2,
            "segmentNames": ["Liver", "Spleen", "Left Kidney"],
        },
        {
            "title": "Prostate - multi-sequence",
            "description": "Prostate zones from T2 and ADC.",
            "subject": "human",
            "imagingModality": "MRI",
            "inputs": [{"title": "Input T2 volume", "namePattern": "*t2*"},
                       {"title": "Input ADC volume", "namePattern": "*adc*"}],
            "versions": [{"url": "prostate-mr-v1.0.0.zip"}],
            "segmentNames": ["Peripheral zone", "Transition zone"],
        },
        {
            "title": "Whole body (MONAI bundle)",
            "description": "104 structures.",
            "subject": "human",
            "imagingModality": "CT",
            "model_type": "MONAIbundle",
            "versions": [{"url": RELEASES + "wholeBody_ct_segmentation_v0.2.3.zip"}],
            "segmentNames": ["Aorta"],
        },
    ]}


BASE_URL = "https://lab.example.org/models/Models.json"


def checksums() -> dict:
    urls = [RELEASES + "abdominal-organs-3mm-v2.0.1.zip", RELEASES + "abdominal-organs-3mm-v2.0.0.zip",
            "https://lab.example.org/models/prostate-mr-v1.0.0.zip", RELEASES + "wholeBody_ct_segmentation_v0.2.3.zip"]
    return {url: (hashlib.sha256(url.encode()).hexdigest(), 1000 + i) for i, url in enumerate(urls)}


def test_auto3dseg_models_become_entries_with_versions_from_their_urls():
    sums = checksums()
    entries = from_monai_auto3dseg_models(models_json(), checksums=sums, base_url=BASE_URL)
    abdominal, prostate, whole_body = parse_index(index_document(entries))
    assert [m.id for m in (abdominal, prostate, whole_body)] == ["abdominal-organs-3mm", "prostate-mr",
                                                                 "wholebody_ct_segmentation"]
    assert [v.version for v in abdominal.versions] == ["2.0.1", "2.0.0"]
    assert abdominal.latest.files[0].sha256 == sums[RELEASES + "abdominal-organs-3mm-v2.0.1.zip"][0]
    assert abdominal.latest.files[0].size == 1000
    assert (abdominal.task, abdominal.modality, abdominal.license) == ("segmentation", "CT", "CC BY 4.0")
    assert [(r.device, r.seconds) for r in abdominal.runtime] == [("cuda", 64.6), ("cpu", 73.2)]
    # Labels live in the archive: none are listed, and the description says so and names the segments.
    assert abdominal.labels == ()
    assert "Segments: Liver, Spleen, Left Kidney." in abdominal.description
    assert "labels.csv inside the model's archive" in abdominal.description
    assert "labels" not in entries[0]
    assert (abdominal.subject, abdominal.sample_data) == ("human", ("CTLiver",))
    assert [v.runtime for v in abdominal.versions] == ["auto3dseg", "auto3dseg"]
    # Models.json may list MONAI bundles beside Auto3DSeg models.
    assert whole_body.latest.runtime == "monai-bundle"
    # A relative URL is resolved against where Models.json came from.
    assert prostate.latest.files[0].url == "https://lab.example.org/models/prostate-mr-v1.0.0.zip"
    assert prostate.modality == "MR"
    t2, adc = prostate.inputs
    assert (t2.name, adc.name) == ("Input T2 volume", "Input ADC volume")
    assert t2.matches("Case01 T2 axial") and not t2.matches("Case01 ADC")
    assert adc.matches("case01_adc") and not adc.matches("case01_t2")
    assert whole_body.latest.version == "0.2.3"
    assert prostate.runtime == ()


def test_auto3dseg_entries_load_as_an_index_and_are_searchable_by_segment(tmp_path):
    entries = from_monai_auto3dseg_models(models_json(), checksums=checksums(), base_url=BASE_URL)
    path = tmp_path / "index.json"
    path.write_text(json.dumps(index_document(entries)), encoding="utf-8")
    models = load_index(path)
    assert [m.id for m in search(models, "kidney")] == ["abdominal-organs-3mm"]
    assert [m.id for m in search(models, "mr transition zone")] == ["prostate-mr"]


def test_auto3dseg_files_without_checksums_are_trusted_on_first_use():
    partial = checksums()
    del partial[RELEASES + "abdominal-organs-3mm-v2.0.0.zip"]
    entries = from_monai_auto3dseg_models(models_json(), checksums=partial, base_url=BASE_URL)
    abdominal = parse_index(index_document(entries))[0]
    newest, older = abdominal.versions
    assert newest.files[0].verification == "sha256" and newest.verified_by_publisher
    assert (older.files[0].sha256, older.files[0].size, older.files[0].verification) == ("", None,
                                                                                       "trusted on first use")
    assert not older.verified_by_publisher


@pytest.mark.parametrize(
    ("urls", "message"),
    [
        (["liver-v1.0.0.zip", "spleen-v1.1.0.zip"], "name 2 model ids"),
        (["liver-latest.zip"], "does not end in <id>-v<X.Y.Z>.zip"),
        (["Liver Model-v1.0.0.zip"], "models\\[0\\].id"),
        ([], "name 0 model ids"),
    ],
)
def test_auto3dseg_urls_that_give_no_id_or_version_are_refused(urls, message):
    document = {"models": [{"title": "Liver", "versions": [{"url": RELEASES + url} for url in urls]}]}
    sums = {RELEASES + url: ("0" * 64, 1) for url in urls}
    with pytest.raises(ImporterError, match=message):
        from_monai_auto3dseg_models(document, checksums=sums)


def test_auto3dseg_document_must_have_a_models_list():
    for document in ({}, {"models": {}}, [], {"models": ["x"]}):
        with pytest.raises(ImporterError):
            from_monai_auto3dseg_models(document)


# --- the field's real files (Testing/Data/FieldModels, see its README) ----------------------------------------------

FIELD_MODELS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))), "Testing", "Data", "FieldModels")
ZOO = os.path.join(FIELD_MODELS, "monai-model-zoo")
SEGMENTATION_BUNDLES = sorted(os.listdir(ZOO))


def real_models_json() -> dict:
    with open(os.path.join(FIELD_MODELS, "SlicerMONAIAuto3DSeg", "Models.json"), encoding="utf-8") as file:
        return json.load(file)


def test_the_whole_real_models_json_converts_with_distinct_ids():
    document = real_models_json()
    entries = from_monai_auto3dseg_models(document, base_url="https://example.org/Models.json")
    models = parse_index(index_document(entries))
    assert len(models) == len(document["models"]) == 33
    assert sum(len(model.versions) for model in models) == sum(len(m["versions"]) for m in document["models"])
    ids = [model.id for model in models]
    assert len(set(ids)) == len(ids)
    # The TotalSegmentator v1 and v2 whole-body models share their URLs' stems: the major version tells them apart.
    by_title = {model.title: model for model in models}
    assert by_title["Whole body segmentation TS1"].id == "whole-body-v1"
    assert by_title["Whole body segmentation TS2"].id == "whole-body-v2"
    assert by_title["Whole body segmentation TS2 - quick"].id == "whole-body-3mm-v2"
    assert by_title["Abdominal organs TS2 - quick"].id == "abdominal-organs-3mm"
    for model, original in zip(models, document["models"]):
        assert model.title == original["title"]
        assert model.subject == original.get("subject", "")
        assert model.sample_data == tuple(original.get("sampleData") or ())
        assert all(version.runtime == "auto3dseg" for version in model.versions)
        assert not any(version.verified_by_publisher for version in model.versions)
        assert [version.files[0].url.rsplit("/", 1)[1] for version in model.versions] == [
            item["url"].rsplit("/", 1)[1] for item in original["versions"]]
    prostate = by_title["Prostate - Multisequence"]
    assert [(i.name, i.modality) for i in prostate.inputs] == [("Input T2 volume", "MR"), ("Input ADC volume", "MR")]
    assert len(by_title["Brain Tumor Segmentation (BRATS) GLI"].inputs) == 4


def test_a_models_json_is_an_index_source_converted_when_read(tmp_path):
    from ModelRegistryLib.sources import IndexSource, load_sources

    path = tmp_path / "Models.json"
    path.write_text(json.dumps(real_models_json()), encoding="utf-8")
    models, (status,) = load_sources([IndexSource(str(path))], str(tmp_path / "cache"))
    assert status.ok and status.model_count == 33
    assert {model.id for model in models} >= {"whole-body-v1", "whole-body-v2", "aorta", "brats-gli"}
    broken = {"models": [{"title": "Liver", "versions": [{"url": "liver.zip"}]}]}
    path.write_text(json.dumps(broken), encoding="utf-8")
    _, (status,) = load_sources([IndexSource(str(path))], str(tmp_path / "cache"))
    assert not status.ok and "Models.json that cannot be converted" in status.error


def read_bundle(name: str) -> tuple:
    metadata, inference, root = read_monai_bundle(os.path.join(ZOO, name))
    assert root == ""
    return metadata, inference


@pytest.mark.parametrize("name", SEGMENTATION_BUNDLES)
def test_real_zoo_bundles_become_runnable_entries(name):
    metadata, inference = read_bundle(name)
    entry = from_monai_bundle_metadata(metadata, model_id=model_id_from(name), files=BUNDLE_FILES, inference=inference)
    (model,) = parse_index(index_document([entry]))
    assert model.latest.runtime == "monai-bundle"
    assert model.task == "segmentation"
    assert model.labels and model.inputs
    channels = metadata["network_data_format"]["outputs"]["pred"]["channel_def"]
    assert {label.name for label in model.labels} <= set(channels.values())
    assert "Runs the bundle's own inference configuration" in model.description


def test_a_bundle_card_says_what_its_inference_does():
    metadata, inference = read_bundle("spleen_ct_segmentation")
    entry = from_monai_bundle_metadata(metadata, model_id="spleen", files=BUNDLE_FILES, inference=inference)
    summary = entry["description"]
    for part in ("Orientationd (axcodes RAS)", "Spacingd (pixdim 1.5 × 1.5 × 2.0)",
                 "ScaleIntensityRanged (a_min -57, a_max 164, b_min 0, b_max 1, clip True)",
                 "SlidingWindowInferer (roi_size 96 × 96 × 96, overlap 0.5)", "Activationsd (softmax True)",
                 "inverted onto the input's grid (Invertd)"):
        assert part in summary
    # References to other items are followed; expressions are shown as written.
    metadata, inference = read_bundle("wholeBody_ct_segmentation")
    summary = from_monai_bundle_metadata(metadata, model_id="wb", files=BUNDLE_FILES, inference=inference)[
        "description"]
    assert "overlap @displayable_configs#sw_overlap" in summary and "pixdim $[1.5, 1.5, 1.5]" in summary


def test_a_multichannel_bundle_reads_its_yaml_and_names_its_channels():
    metadata, inference = read_bundle("brats_mri_segmentation")
    entry = from_monai_bundle_metadata(metadata, model_id="brats", files=BUNDLE_FILES, inference=inference)
    assert len(entry["inputs"]) == 4 and "label value = channel number + 1" in entry["description"]
    metadata, inference = read_bundle("pancreas_ct_dints_segmentation")
    assert inference["preprocessing"]["_target_"] == "Compose"


def test_large_files_give_the_publishers_md5_or_nothing():
    with open(os.path.join(ZOO, "spleen_ct_segmentation", "large_files.yml"), "rb") as file:
        spleen = bundle_large_files(file.read())
    assert spleen == [
        {"url": "https://developer.download.nvidia.com/assets/Clara/monai/tutorials/model_zoo/"
                "model_spleen_ct_segmentation_v1.pt", "name": "model.pt", "md5": "be4fa95e236df91766147c112ee6fafd"},
        {"url": "https://developer.download.nvidia.com/assets/Clara/monai/tutorials/model_zoo/"
                "model_spleen_ct_segmentation_v1.ts", "name": "model.ts", "md5": "3e163505054a1623956de555033b23db"}]
    with open(os.path.join(ZOO, "prostate_mri_anatomy", "large_files.yaml"), "rb") as file:
        prostate = bundle_large_files(file.read(), "large_files.yaml")
    assert [sorted(item) for item in prostate] == [["name", "url"], ["name", "url"]]


def test_a_zoo_bundle_folder_without_weights_lists_them_by_url(tmp_path):
    (entry,) = package_foreign_model(os.path.join(ZOO, "spleen_ct_segmentation"), str(tmp_path))
    (model,) = parse_index(index_document([entry]))
    configuration, weights, torchscript = model.latest.files
    assert configuration.verification == "sha256" and configuration.url.startswith("file://")
    with zipfile.ZipFile(configuration.url[len("file://"):]) as packed:
        assert sorted(packed.namelist()) == ["configs/inference.json", "configs/metadata.json", "large_files.yml"]
    assert (weights.name, weights.md5, weights.verification) == ("model.pt", "be4fa95e236df91766147c112ee6fafd",
                                                                "publisher digest")
    assert torchscript.name == "model.ts"
    assert model.latest.verified_by_publisher


def test_nnunet_labels_and_regions():
    plain = nnunet_labels({"labels": {"background": 0, "liver": 1, "tumour": 2}})
    assert [(label["value"], label["name"]) for label in plain] == [(1, "liver"), (2, "tumour")]
    regions = nnunet_labels({"labels": {"background": 0, "whole tumour": [1, 2, 3], "core": [2, 3], "enhancing": 3},
                             "regions_class_order": [1, 2, 3]})
    assert [(label["value"], label["name"]) for label in regions] == [(1, "whole tumour"), (2, "core"),
                                                                     (3, "enhancing")]
    with pytest.raises(ImporterError, match="regions_class_order"):
        nnunet_labels({"labels": {"background": 0, "a": [1, 2]}})


def test_auto3dseg_labels_csv_with_short_rows_and_terminology():
    text = ("LabelValue,Name,SegmentedPropertyCategoryCodeSequence.CodingSchemeDesignator,"
            "SegmentedPropertyCategoryCodeSequence.CodeValue,SegmentedPropertyCategoryCodeSequence.CodeMeaning,"
            "SegmentedPropertyTypeCodeSequence.CodingSchemeDesignator,SegmentedPropertyTypeCodeSequence.CodeValue,"
            "SegmentedPropertyTypeCodeSequence.CodeMeaning,"
            "SegmentedPropertyTypeModifierCodeSequence.CodingSchemeDesignator,"
            "SegmentedPropertyTypeModifierCodeSequence.CodeValue,SegmentedPropertyTypeModifierCodeSequence.CodeMeaning\n"
            "1,liver,SCT,123037004,Anatomical Structure,SCT,10200004,Liver\n"
            "2,left kidney,SCT,123037004,Anatomical Structure,SCT,64033007,Kidney,SCT,7771000,Left\n\n"
            "5,unknown\n")
    labels = parse_labels({"labels": labels_from_auto3dseg_csv(text)})
    assert [(label.value, label.name) for label in labels] == [(1, "liver"), (2, "left kidney"), (5, "unknown")]
    assert labels[1].terminology.type_modifier.meaning == "Left" and labels[0].terminology.type_modifier is None
    assert labels[2].terminology is None and len({label.color for label in labels}) == 3
    with pytest.raises(ImporterError, match="LabelValue"):
        labels_from_auto3dseg_csv("Value,Name\n1,x\n")
    with pytest.raises(ImporterError, match="row 2"):
        labels_from_auto3dseg_csv("LabelValue,Name\none,x\n")


def test_something_else_is_not_imported(tmp_path):
    (tmp_path / "notes.txt").write_text("hello", encoding="utf-8")
    with pytest.raises(ImporterError, match="not a model of a known kind"):
        package_foreign_model(str(tmp_path), str(tmp_path / "out"))

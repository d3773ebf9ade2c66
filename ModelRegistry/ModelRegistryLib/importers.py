"""Importers: the field's model descriptions, converted into runnable entries of our index.

- A MONAI bundle (:func:`from_monai_bundle_metadata`, :func:`read_monai_bundle`): its ``configs/metadata.json``
  gives the card (name, description, authors, references, intended use, data source, metrics, the changelog of
  its version, inputs from ``network_data_format.inputs``, labels from ``outputs.pred.channel_def``); its
  ``configs/inference.json`` (or ``.yaml``) is summarised in the card (orientation, spacing, intensities, window,
  activation). The version runs with the ``monai-bundle`` runtime: the bundle's own inference configuration.
- SlicerMONAIAuto3DSeg's ``Resources/Models.json`` (:func:`from_monai_auto3dseg_models`): every model, each
  with a distinct id (its download URLs' stem ``<id>-v<X.Y.Z>.zip``; models sharing a stem, such as the
  TotalSegmentator v1 and v2 whole-body models, get the major version added: ``whole-body-v1``,
  ``whole-body-v2``), its versions, subject and sample data; run by the ``auto3dseg`` runtime, whose labels come
  from the ``labels.csv`` inside each archive (:func:`labels_from_auto3dseg_csv`).
- An nnU-Net v2 trained model folder (``dataset.json``, ``plans.json``, ``fold_K/checkpoint_final.pth``;
  :func:`from_nnunet_model`), run by the ``nnunet-v2`` runtime with labels from ``dataset.json``.

Models.json gives no checksums, and the zoo's files only MD5 or SHA-1: such files are trusted on first use
(``ModelRegistryLib.trust``), and their cards say "not verified by the publisher". Where the caller knows
better (``checksums`` for Models.json), the sha256 is used. :func:`foreign_index_document` turns a Models.json
read as an index source into our format; :func:`package_foreign_model` turns a local bundle, nnU-Net results
folder or zip, or Auto3DSeg archive into entries whose archive installs as any other (``import``). Every entry
returned is a dict in our JSON format that :func:`ModelRegistryLib.index.parse_index` accepts.

Example::

    >>> metadata = {"version": "0.2.0", "name": "Spleen CT segmentation", "changelog": {"0.2.0": "unify naming"},
    ...     "network_data_format": {"inputs": {"image": {"modality": "CT", "num_channels": 1}},
    ...                             "outputs": {"pred": {"format": "segmentation",
    ...                                                  "channel_def": {"0": "background", "1": "spleen"}}}}}
    >>> entry = from_monai_bundle_metadata(metadata, model_id="spleen-ct", files=[
    ...     {"url": "spleen_ct_segmentation_v0.2.0.zip", "sha256": 64 * "0", "size": 1000}])
    >>> entry["title"], entry["task"], entry["modality"], [label["name"] for label in entry["labels"]]
    ('Spleen CT segmentation', 'segmentation', 'CT', ['spleen'])
    >>> entry["versions"][0]["version"], entry["versions"][0]["changelog"], entry["versions"][0]["runtime"]
    ('0.2.0', 'unify naming', 'monai-bundle')
"""

from __future__ import annotations

import colorsys
import csv
import io
import json
import math
import os
import posixpath
import re
import shutil
import urllib.parse
import zipfile
from collections.abc import Mapping

from .download import file_sha256
from .files import atomic_target
from .index import SCHEMA_VERSION, IndexValidationError, file_url, parse_index

_AUTO3DSEG_FILE = re.compile(r"(?P<id>.+?)[-_]v(?P<version>\d+\.\d+\.\d+)\.zip", re.ASCII)
_MODALITIES = {"MRI": "MR", "ULTRASOUND": "US"}
_BACKGROUND_NAMES = {"background", "bg", "_background_"}
_GOLDEN_ANGLE = 0.381966
_NOT_AN_ID = re.compile(r"[^a-z0-9._-]+")
# Where a bundle keeps its inference configuration, in the order MONAI's own scripts look for it.
BUNDLE_INFERENCE_FILES = ("configs/inference.json", "configs/inference.yaml", "configs/inference.yml")
BUNDLE_METADATA_FILE = "configs/metadata.json"
AUTO3DSEG_LABELS_FILE = "labels.csv"
NNUNET_CHECKPOINTS = ("checkpoint_final.pth", "checkpoint_best.pth")
_MAX_CONFIG_BYTES = 16 * 1024 * 1024


class ImporterError(ValueError):
    """A description cannot be converted; the message says what is missing or wrong."""


def index_document(entries: list) -> dict:
    """An index document holding ``entries`` (validated)."""
    document = {"schemaVersion": SCHEMA_VERSION, "models": list(entries)}
    try:
        parse_index(document)
    except IndexValidationError as error:
        raise ImporterError(f"the converted entries are not valid: {error}") from error
    return document


def label_color(index: int) -> str:
    """A distinct, readable color for the ``index``-th label (hues a golden angle apart).

    >>> [label_color(i) for i in range(3)]
    ['#d94c4c', '#4cd975', '#9e4cd9']
    """
    red, green, blue = colorsys.hsv_to_rgb((index * _GOLDEN_ANGLE) % 1.0, 0.65, 0.85)
    return "#" + "".join(f"{round(channel * 255):02x}" for channel in (red, green, blue))


def model_id_from(text: str) -> str:
    """A model id (lower-case letters, digits, '.', '_', '-') made from any name.

    >>> model_id_from("Dataset004_Hippocampus 3d_fullres")
    'dataset004_hippocampus-3d_fullres'
    """
    return _NOT_AN_ID.sub("-", text.strip().lower()).strip("-._")[:128] or "model"


def _mapping(value) -> dict:
    """``value`` if it is a JSON object, else an empty one: metadata written by hand often lacks a level."""
    return value if isinstance(value, dict) else {}


def _modality(value) -> str:
    text = str(value or "").strip().upper()
    return _MODALITIES.get(text, text)


def _strings(value) -> list:
    """A list of non-empty strings from a string or a list of them (MONAI writes both)."""
    items = value if isinstance(value, list) else [value]
    return [str(item) for item in items if isinstance(item, (str, int, float)) and str(item).strip()]


def _channels(item: dict) -> list:
    """``(index, name)`` of a MONAI ``channel_def``, by channel index."""
    channel_def = item.get("channel_def")
    if not isinstance(channel_def, dict):
        return []
    channels = []
    for key, name in channel_def.items():
        try:
            channels.append((int(key), str(name)))
        except ValueError as error:
            raise ImporterError(f"channel_def key {key!r} is not a channel number") from error
    return sorted(channels)


def _paragraphs(*texts: str) -> str:
    return "\n\n".join(text.strip() for text in texts if text and text.strip())


def _without_empty(entry: dict) -> dict:
    return {key: value for key, value in entry.items() if value or key in ("id", "title", "versions")}


# ---------------------------------------------------------------------------------------------- MONAI bundles


def _bundle_inputs(inputs: dict) -> list:
    converted = []
    for key, item in inputs.items():
        if not isinstance(item, dict):
            continue
        modality = _modality(item.get("modality"))
        channels = _channels(item)
        if len(channels) > 1:
            # One input per channel, each picking volumes named like it (T1c, FLAIR...).
            converted += [{"name": name, "modality": modality, "pattern": re.escape(name)} for _, name in channels]
        else:
            converted.append({"name": channels[0][1] if channels else key, "modality": modality})
    return converted


def _bundle_pred(metadata: dict) -> dict:
    outputs = _mapping(_mapping(metadata.get("network_data_format")).get("outputs"))
    # Bundles name their output "pred"; a few use another name for their only output.
    return _mapping(outputs.get("pred", next(iter(outputs.values()), None)))


def bundle_labels(metadata: dict) -> tuple:
    """``(labels, note)``: the labels of a bundle's prediction channels (our format), and a note for the card when
    their values are not the channel numbers (no background channel: channel ``c`` is label ``c + 1``)."""
    channels = _channels(_bundle_pred(metadata))
    if not channels:
        return [], ""
    if channels[0][0] == 0 and channels[0][1].strip().lower() in _BACKGROUND_NAMES:
        kept, offset, note = channels[1:], 0, ""
    else:
        # No background channel: the channels are separate (often overlapping) maps; label value = channel + 1.
        kept, offset = channels, 1
        note = "Output channels are independent maps; here label value = channel number + 1."
    labels = [
        {"value": index + offset, "name": name, "color": label_color(position)}
        for position, (index, name) in enumerate(kept)
    ]
    return labels, note


def _task(pred: dict, text: str) -> str:
    output_format = str(pred.get("format", "")).lower()
    for task in ("segmentation", "classification", "detection", "regression"):
        if task in output_format or task in text.lower():
            return task
    return output_format


def _metrics(eval_metrics) -> list:
    if not isinstance(eval_metrics, dict):
        return []
    return [
        {"name": str(name), "value": value}
        for name, value in eval_metrics.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ]


def _config_value(config: dict, value):
    """A value of a bundle configuration as a reader of the card should see it: ``@name`` references to top-level
    items are followed (once); expressions (``$...``) are shown as they are written."""
    if isinstance(value, str) and value.startswith("@") and value[1:] in config:
        value = config[value[1:]]
    if isinstance(value, list):
        return " × ".join(str(v) for v in value)
    return str(value)


def _transforms(config: dict, key: str) -> list:
    component = config.get(key)
    if isinstance(component, str) and component.startswith("@"):
        component = config.get(component[1:])
    transforms = _mapping(component).get("transforms")
    return [item for item in transforms if isinstance(item, dict)] if isinstance(transforms, list) else []


# What the card says of a transform: its name and the arguments that change the result.
_SHOWN_ARGUMENTS = {
    "Orientationd": ("axcodes",),
    "Spacingd": ("pixdim",),
    "ScaleIntensityRanged": ("a_min", "a_max", "b_min", "b_max", "clip"),
    "NormalizeIntensityd": ("nonzero", "channel_wise"),
    "ScaleIntensityd": ("minv", "maxv"),
    "CropForegroundd": ("margin",),
    "Activationsd": ("softmax", "sigmoid"),
    "AsDiscreted": ("argmax", "threshold"),
    "KeepLargestConnectedComponentd": ("applied_labels",),
}
# Transforms that only move data around or write files: left out of the summary.
_UNSHOWN = {"LoadImaged", "EnsureChannelFirstd", "EnsureTyped", "SaveImaged", "Invertd", "CopyItemsd"}


def _transform_text(config: dict, item: dict) -> str:
    name = str(item.get("_target_", "?")).rsplit(".", 1)[-1]
    shown = [f"{key} {_config_value(config, item[key])}" for key in _SHOWN_ARGUMENTS.get(name, ()) if key in item]
    return name + (f" ({', '.join(shown)})" if shown else "")


def inference_summary(inference: dict) -> str:
    """What a bundle's inference configuration does, in one paragraph for its card.

    >>> text = inference_summary({"preprocessing": {"transforms": [{"_target_": "LoadImaged"},
    ...     {"_target_": "Orientationd", "axcodes": "RAS"}, {"_target_": "Spacingd", "pixdim": [1.5, 1.5, 2.0]}]},
    ...     "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [96, 96, 96], "overlap": 0.5},
    ...     "postprocessing": {"transforms": [{"_target_": "Activationsd", "softmax": True},
    ...     {"_target_": "Invertd"}, {"_target_": "AsDiscreted", "argmax": True}]}})
    >>> for part in text.split("; "):
    ...     print(part)
    Runs the bundle's own inference configuration: Orientationd (axcodes RAS), Spacingd (pixdim 1.5 × 1.5 × 2.0)
    SlidingWindowInferer (roi_size 96 × 96 × 96, overlap 0.5)
    Activationsd (softmax True), AsDiscreted (argmax True)
    labels inverted onto the input's grid (Invertd).
    """
    if not isinstance(inference, dict):
        return ""
    steps = []
    for key in ("preprocessing",):
        shown = [_transform_text(inference, item) for item in _transforms(inference, key)
                 if str(item.get("_target_", "")).rsplit(".", 1)[-1] not in _UNSHOWN]
        if shown:
            steps.append(", ".join(shown))
    inferer = _mapping(inference.get("inferer"))
    if inferer:
        arguments = [f"{key} {_config_value(inference, inferer[key])}" for key in ("roi_size", "overlap")
                     if key in inferer]
        name = str(inferer.get("_target_", "?")).rsplit(".", 1)[-1]
        steps.append(name + (f" ({', '.join(arguments)})" if arguments else ""))
    post = _transforms(inference, "postprocessing")
    shown = [_transform_text(inference, item) for item in post
             if str(item.get("_target_", "")).rsplit(".", 1)[-1] not in _UNSHOWN]
    if shown:
        steps.append(", ".join(shown))
    if any(str(item.get("_target_", "")).endswith("Invertd") for item in post):
        steps.append("labels inverted onto the input's grid (Invertd)")
    return "Runs the bundle's own inference configuration: " + "; ".join(steps) + "." if steps else ""


def from_monai_bundle_metadata(metadata: dict, *, model_id: str, files: list, inference: dict | None = None) -> dict:
    """Our index entry for a MONAI bundle, from its ``configs/metadata.json`` (decoded), run by the ``monai-bundle``
    runtime; ``inference`` (its decoded inference configuration), where given, is summarised in the description.

    ``files`` are the version's files in our format (``{"url", "sha256", "size"}``, usually the bundle's zip).
    Only the bundle's own version is listed: the changelog names earlier versions, but not where they are.
    """
    if not isinstance(metadata, dict):
        raise ImporterError("MONAI bundle metadata must be a JSON object")
    if not isinstance(metadata.get("version"), str):
        raise ImporterError("MONAI bundle metadata has no 'version'")
    version = metadata["version"]
    data_format = _mapping(metadata.get("network_data_format"))
    pred = _bundle_pred(metadata)
    labels, labels_note = bundle_labels(metadata)
    task_text = str(metadata.get("task") or "")
    converted_inputs = _bundle_inputs(_mapping(data_format.get("inputs")))
    made_with = ", ".join(
        f"{name} {metadata[key]}" for name, key in (("MONAI", "monai_version"), ("PyTorch", "pytorch_version"))
        if isinstance(metadata.get(key), str)
    )
    changelog = _mapping(metadata.get("changelog"))
    entry = {
        "id": model_id,
        "title": str(metadata.get("name") or task_text or model_id),
        "description": _paragraphs(
            str(metadata.get("description") or ""),
            task_text if metadata.get("name") else "",
            labels_note,
            inference_summary(inference) if inference is not None else "",
            f"Made with {made_with}." if made_with else "",
        ),
        "task": _task(pred, task_text),
        "modality": next((item["modality"] for item in converted_inputs if item.get("modality")), ""),
        "inputs": converted_inputs,
        "labels": labels,
        "license": str(metadata.get("license") or ""),
        "authors": _strings(metadata.get("authors")),
        "citation": "\n".join(_strings(metadata.get("references"))),
        "intendedUse": str(metadata.get("intended_use") or ""),
        "trainingData": _paragraphs(
            str(metadata.get("data_source") or ""),
            f"Images: {metadata['image_classes']}" if metadata.get("image_classes") else "",
            f"Labels: {metadata['label_classes']}" if metadata.get("label_classes") else "",
        ),
        "metrics": _metrics(metadata.get("eval_metrics")),
        "versions": [{"version": version, "changelog": str(changelog.get(version, "")), "files": list(files),
                      "runtime": "monai-bundle"}],
    }
    entry = _without_empty(entry)
    index_document([entry])
    return entry


def decode_config(data: bytes, name: str):
    """A bundle configuration file's content: JSON, or YAML (needs PyYAML, which MONAI's YAML configs need too)."""
    if len(data) > _MAX_CONFIG_BYTES:
        raise ImporterError(f"{name} is larger than {_MAX_CONFIG_BYTES} bytes")
    try:
        if name.endswith(".json"):
            return json.loads(data.decode("utf-8"))
        import yaml

        return yaml.safe_load(data.decode("utf-8"))
    except ImportError as error:
        raise ImporterError(f"{name} is YAML: reading it needs PyYAML") from error
    except (ValueError, UnicodeDecodeError) as error:  # yaml.YAMLError is not a ValueError
        raise ImporterError(f"{name} cannot be read: {error}") from error
    except Exception as error:  # yaml.YAMLError, whose module may be absent
        raise ImporterError(f"{name} cannot be read: {error}") from error


class _Tree:
    """The files of a folder or a zip archive, by '/'-separated path relative to it."""

    def __init__(self, path: str) -> None:
        self.path = path
        if os.path.isdir(path):
            self.names = sorted(
                os.path.relpath(os.path.join(folder, name), path).replace(os.sep, "/")
                for folder, _, names in os.walk(path) for name in names
            )
            self._zip = None
        elif zipfile.is_zipfile(path):
            self._zip = zipfile.ZipFile(path)
            self.names = sorted(name for name in self._zip.namelist() if not name.endswith("/"))
        else:
            raise ImporterError(f"{os.path.basename(path)} is neither a folder nor a zip archive")

    @property
    def is_archive(self) -> bool:
        return self._zip is not None

    def open(self, name: str):
        """A binary file object reading ``name``."""
        if self._zip is not None:
            return self._zip.open(name)
        return open(os.path.join(self.path, name), "rb")

    def read(self, name: str) -> bytes:
        with self.open(name) as file:
            return file.read()

    def roots_holding(self, *relative: str) -> list:
        """The folders (``""`` or ``"x/"``) holding every one of ``relative``, shallowest first."""
        roots = {name[: -len(relative[0])] for name in self.names if name == relative[0] or
                 name.endswith("/" + relative[0])}
        names = set(self.names)
        kept = [root for root in roots if all(root + other in names for other in relative[1:])]
        return sorted(kept, key=lambda root: (root.count("/"), root))

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()


def read_monai_bundle(path: str) -> tuple:
    """``(metadata, inference, root)`` of the MONAI bundle in a folder or zip: its decoded ``configs/metadata.json``
    and inference configuration (None when YAML and PyYAML is missing), and the folder in the archive holding
    ``configs/`` (``""`` or ``"name/"``)."""
    tree = _Tree(path)
    try:
        roots = tree.roots_holding(BUNDLE_METADATA_FILE)
        if not roots:
            raise ImporterError(f"{os.path.basename(path)} holds no {BUNDLE_METADATA_FILE}: not a MONAI bundle")
        root = roots[0]
        metadata = decode_config(tree.read(root + BUNDLE_METADATA_FILE), BUNDLE_METADATA_FILE)
        name = next((root + candidate for candidate in BUNDLE_INFERENCE_FILES if root + candidate in tree.names), "")
        if not name:
            raise ImporterError(f"the bundle {os.path.basename(path)} has no configs/inference.json (or .yaml): "
                                "DeepSegment runs a bundle through its inference configuration")
        try:
            inference = decode_config(tree.read(name), name)
        except ImporterError:
            if name.endswith(".json"):
                raise
            inference = None  # the runtime reads it with MONAI, which brings PyYAML
    finally:
        tree.close()
    return metadata, inference, root


# ------------------------------------------------------------------------------------ SlicerMONAIAuto3DSeg


def _glob_pattern(glob: str) -> str:
    """Our input pattern (a regular expression) for a Models.json ``namePattern`` glob like ``*t2*``.

    Patterns are searched in names, so a leading or trailing ``*`` becomes a missing anchor rather than
    ``.*``: the same names match, with less backtracking (see ``index.input_pattern_problem``).

    >>> _glob_pattern("*T2*"), _glob_pattern("ct?.nrrd"), _glob_pattern("*t2**ax*")
    ('T2', '^ct.\\\\.nrrd$', 't2.*ax')
    """
    glob = re.sub(r"\*+", "*", glob)
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in glob.strip("*"))
    return ("" if glob.startswith("*") else "^") + body + ("" if glob.endswith("*") else "$")


def _auto3dseg_versions(model: dict, base_url: str, checksums: Mapping) -> tuple:
    """``(URL stem, versions)`` of one Models.json model; a URL without a known checksum is trusted on first use."""
    stems, versions = set(), []
    for item in model.get("versions") or []:
        raw = item.get("url", "") if isinstance(item, dict) else ""
        url = urllib.parse.urljoin(base_url, raw) if base_url else raw
        match = _AUTO3DSEG_FILE.fullmatch(posixpath.basename(urllib.parse.urlsplit(url).path))
        if not url or match is None:
            raise ImporterError(f"model {model.get('title')!r}: URL {url!r} does not end in <id>-v<X.Y.Z>.zip")
        stems.add(match.group("id").lower())
        file = {"url": url}
        if url in checksums:
            file["sha256"], file["size"] = checksums[url]
        versions.append({"version": match.group("version"), "files": [file]})
    if len(stems) != 1:
        raise ImporterError(f"model {model.get('title')!r}: its URLs name {len(stems)} model ids ({sorted(stems)})")
    return stems.pop(), versions


def _auto3dseg_runtime(model: dict) -> str:
    # Models.json may list MONAI bundles beside Auto3DSeg models.
    return "monai-bundle" if str(model.get("model_type", "")).lower() == "monaibundle" else "auto3dseg"


def _auto3dseg_entry(model: dict, model_id: str, versions: list) -> dict:
    segments = [str(name) for name in model.get("segmentNames") or []]
    runtime = _auto3dseg_runtime(model)
    labels_note = ("Label values and terminology are in the labels.csv inside the model's archive, read when it runs."
                   if runtime == "auto3dseg" else "")
    estimates = [
        {"device": device, "seconds": model[key]}
        for device, key in (("cuda", "segmentationTimeSecGPU"), ("cpu", "segmentationTimeSecCPU"))
        if isinstance(model.get(key), (int, float)) and not isinstance(model.get(key), bool)
    ]
    modality = _modality(model.get("imagingModality"))
    entry = {
        "id": model_id,
        "title": str(model.get("title") or model_id),
        "description": _paragraphs(
            str(model.get("description") or ""),
            f"Segments: {', '.join(segments)}." if segments else "",
            labels_note,
        ),
        "task": "segmentation",
        "modality": modality,
        "inputs": [
            {"name": str(item.get("title", "Input volume")), "modality": modality,
             "pattern": _glob_pattern(str(item.get("namePattern", "*")))}
            for item in model.get("inputs") or [] if isinstance(item, dict)
        ],
        "license": str(model.get("license") or ""),
        "runtime": estimates,
        "subject": str(model.get("subject") or ""),
        "sampleData": _strings(model.get("sampleData") or []),
        "versions": [{**version, "runtime": runtime} for version in versions],
    }
    return _without_empty(entry)


def _distinct_ids(stems: list, versions: list, titles: list) -> list:
    """One id per model: its URL stem; models sharing a stem get ``-v<MAJOR>`` of their versions added, or, where
    that does not tell them apart either, their title."""
    ids = list(stems)
    for stem in {stem for stem in stems if stems.count(stem) > 1}:
        sharing = [i for i, other in enumerate(stems) if other == stem]
        majors = [{item["version"].split(".")[0] for item in versions[i]} for i in sharing]
        if all(len(major) == 1 for major in majors) and len({next(iter(m)) for m in majors}) == len(sharing):
            for i, major in zip(sharing, majors):
                ids[i] = f"{stem}-v{next(iter(major))}"
        else:
            for i in sharing:
                ids[i] = model_id_from(titles[i])
    return ids


def from_monai_auto3dseg_models(
    models_json: dict, *, checksums: Mapping | None = None, base_url: str | None = None
) -> list:
    """Our index entries for SlicerMONAIAuto3DSeg's ``Models.json`` (decoded): every model, in its order.

    ``checksums`` may map a download URL (after resolving it against ``base_url``, where given) to
    ``(sha256, size)``; Models.json has neither, and files without one are trusted on first use. A model's versions
    are its URLs ``<id>-vX.Y.Z.zip`` (``_vX.Y.Z`` for MONAI bundles); its id, the URLs' stem (see
    :func:`_distinct_ids`).

    >>> url = "https://github.com/org/repo/releases/download/Models/liver-v1.0.1.zip"
    >>> models = {"models": [{"title": "Liver", "description": "Liver from CT", "imagingModality": "CT",
    ...     "segmentNames": ["Liver"], "versions": [{"url": url}]}]}
    >>> [(entry["id"], entry["versions"][0]["version"], entry["versions"][0]["runtime"]) for entry in
    ...  from_monai_auto3dseg_models(models)]
    [('liver', '1.0.1', 'auto3dseg')]
    """
    if not isinstance(models_json, dict) or not isinstance(models_json.get("models"), list):
        raise ImporterError("Models.json must be an object with a 'models' list")
    checksums = checksums or {}
    if not all(isinstance(model, dict) for model in models_json["models"]):
        raise ImporterError("every item of 'models' must be an object")
    stems, versions = [], []
    for model in models_json["models"]:
        stem, found = _auto3dseg_versions(model, base_url or "", checksums)
        stems.append(stem)
        versions.append(found)
    titles = [str(model.get("title") or "") for model in models_json["models"]]
    ids = _distinct_ids(stems, versions, titles)
    converted = [_auto3dseg_entry(model, model_id, found)
                 for model, model_id, found in zip(models_json["models"], ids, versions)]
    return index_document(converted)["models"]


def _is_models_json(document) -> bool:
    """Whether a document has SlicerMONAIAuto3DSeg's Models.json shape (a models list whose versions are URLs)."""
    if not isinstance(document, dict) or "schemaVersion" in document or not isinstance(document.get("models"), list):
        return False
    return all(isinstance(model, dict) and isinstance(model.get("versions"), list) and
               all(isinstance(v, dict) and set(v) <= {"url"} for v in model["versions"])
               for model in document["models"])


def foreign_index_document(document, base_url: str = ""):
    """``document`` as our index: SlicerMONAIAuto3DSeg's Models.json is converted (its relative URLs resolved against
    ``base_url``); anything else is returned as it is, for the index parser to judge.

    >>> document = {"models": [{"title": "Aorta", "versions": [{"url": "aorta-v1.1.0.zip"}]}]}
    >>> converted = foreign_index_document(document, "https://x.org/Models.json")
    >>> converted["models"][0]["versions"][0]["files"]
    [{'url': 'https://x.org/aorta-v1.1.0.zip'}]
    """
    if _is_models_json(document):
        try:
            return index_document(from_monai_auto3dseg_models(document, base_url=base_url))
        except ImporterError as error:
            raise IndexValidationError("(document)", f"a Models.json that cannot be converted: {error}") from error
    return document


def labels_from_auto3dseg_csv(text: str) -> list:
    """The labels (our format) of a SlicerMONAIAuto3DSeg ``labels.csv``: ``LabelValue``, ``Name`` and DICOM codes
    (``SegmentedPropertyCategoryCodeSequence.CodingSchemeDesignator`` ... ``AnatomicRegionModifierSequence...``).

    >>> text = ("LabelValue,Name,SegmentedPropertyCategoryCodeSequence.CodingSchemeDesignator,"
    ...         "SegmentedPropertyCategoryCodeSequence.CodeValue,SegmentedPropertyCategoryCodeSequence.CodeMeaning,"
    ...         "SegmentedPropertyTypeCodeSequence.CodingSchemeDesignator,SegmentedPropertyTypeCodeSequence.CodeValue,"
    ...         "SegmentedPropertyTypeCodeSequence.CodeMeaning\\n"
    ...         "1,liver,SCT,123037004,Anatomical Structure,SCT,10200004,Liver\\n")
    >>> label = labels_from_auto3dseg_csv(text)[0]
    >>> label["value"], label["name"], label["terminology"]["type"]
    (1, 'liver', {'scheme': 'SCT', 'code': '10200004', 'meaning': 'Liver'})
    """
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or "LabelValue" not in rows[0] or "Name" not in rows[0]:
        raise ImporterError("labels.csv must have the columns LabelValue and Name")
    columns = rows[0]

    def coding(row: list, sequence: str) -> dict | None:
        values = []
        for part in ("CodingSchemeDesignator", "CodeValue", "CodeMeaning"):
            column = f"{sequence}.{part}"
            index = columns.index(column) if column in columns else None
            # Rows ending early (no trailing commas) leave the last codes empty.
            values.append(row[index].strip() if index is not None and index < len(row) else "")
        return dict(zip(("scheme", "code", "meaning"), values)) if values[0] and values[1] else None

    labels = []
    for number, row in enumerate(rows[1:]):
        if not any(cell.strip() for cell in row):
            continue
        try:
            value = int(row[columns.index("LabelValue")])
        except (ValueError, IndexError) as error:
            raise ImporterError(f"labels.csv row {number + 2}: LabelValue is not an integer") from error
        label = {"value": value, "name": row[columns.index("Name")].strip(), "color": label_color(len(labels))}
        codings = {key: coding(row, sequence) for key, sequence in (
            ("category", "SegmentedPropertyCategoryCodeSequence"), ("type", "SegmentedPropertyTypeCodeSequence"),
            ("typeModifier", "SegmentedPropertyTypeModifierCodeSequence"), ("region", "AnatomicRegionSequence"),
            ("regionModifier", "AnatomicRegionModifierSequence"))}
        if codings["category"] and codings["type"]:
            label["terminology"] = {key: value for key, value in codings.items() if value}
        labels.append(label)
    return labels


# --------------------------------------------------------------------------------------------- nnU-Net v2


def nnunet_labels(dataset_json: dict) -> list:
    """The labels (our format) of an nnU-Net v2 ``dataset.json``: ``labels`` maps names to values; region-based
    models (values that are lists of labels) give ``regions_class_order`` values, in the order of ``labels``.

    >>> [(label["value"], label["name"]) for label in nnunet_labels({"labels": {"background": 0, "Anterior": 1,
    ...                                                                           "Posterior": 2}})]
    [(1, 'Anterior'), (2, 'Posterior')]
    """
    items = [(name, value) for name, value in _mapping(dataset_json.get("labels")).items()
             if name.lower() not in _BACKGROUND_NAMES and value not in (0, [0])]
    if any(isinstance(value, list) for _, value in items):
        order = dataset_json.get("regions_class_order")
        if not isinstance(order, list) or len(order) != len(items):
            raise ImporterError("dataset.json has regions but no regions_class_order of the same length")
        values = [int(value) for value in order]
    else:
        values = [int(value) for _, value in items]
    return [{"value": value, "name": str(name), "color": label_color(position)}
            for position, ((name, _), value) in enumerate(zip(items, values))]


def from_nnunet_model(dataset_json: dict, plans: dict, *, model_id: str, version: str, files: list,
                      configuration: str, trainer: str, folds: list) -> dict:
    """Our index entry for an nnU-Net v2 trained model folder (``dataset.json`` and ``plans.json`` decoded), run by
    the ``nnunet-v2`` runtime. ``configuration`` (``3d_fullres``...), ``trainer`` (``nnUNetTrainer__nnUNetPlans``)
    and ``folds`` come from the folder's name and its ``fold_K`` folders."""
    if not isinstance(dataset_json, dict) or not isinstance(plans, dict):
        raise ImporterError("dataset.json and plans.json must be JSON objects")
    channels = sorted(_mapping(dataset_json.get("channel_names") or dataset_json.get("modality")).items(),
                      key=lambda item: int(item[0]) if str(item[0]).isdigit() else 0)
    inputs = [{"name": str(name), "modality": _modality(name) if _modality(name) in ("CT", "MR") else ""}
              for _, name in channels]
    dataset = str(plans.get("dataset_name") or dataset_json.get("name") or model_id)
    entry = {
        "id": model_id,
        "title": f"{dataset} ({configuration}, nnU-Net v2)",
        "description": _paragraphs(
            str(dataset_json.get("description") or ""),
            f"nnU-Net v2 model {trainer}, configuration {configuration}, folds {', '.join(map(str, folds))}: "
            "run by nnunetv2's own predictor (its preprocessing, sliding window, mirroring and resampling).",
        ),
        "task": "segmentation",
        "modality": next((item["modality"] for item in inputs if item["modality"]), ""),
        "inputs": inputs,
        "labels": nnunet_labels(dataset_json),
        "license": str(dataset_json.get("licence") or dataset_json.get("license") or ""),
        "trainingData": f"{dataset_json['numTraining']} training cases" if isinstance(
            dataset_json.get("numTraining"), int) else "",
        "versions": [{"version": version, "files": list(files), "runtime": "nnunet-v2"}],
    }
    entry = _without_empty(entry)
    index_document([entry])
    return entry


def nnunet_model_folders(names) -> list:
    """``(root, folds, checkpoint)`` of every nnU-Net v2 trained model folder among '/'-separated file ``names``:
    a folder holding dataset.json and plans.json, with ``fold_K/checkpoint_final.pth`` (else
    ``checkpoint_best.pth``) in at least one fold."""
    names = set(names)
    found = []
    for name in sorted(names):
        if not (name == "plans.json" or name.endswith("/plans.json")):
            continue
        root = name[: -len("plans.json")]
        if root + "dataset.json" not in names:
            continue
        for checkpoint in NNUNET_CHECKPOINTS:
            folds = sorted({m[len(root):].split("/")[0][len("fold_"):] for m in names
                            if m.startswith(root + "fold_") and m.endswith("/" + checkpoint)
                            and m[len(root):].count("/") == 1},
                           key=lambda fold: (not fold.isdigit(), int(fold) if fold.isdigit() else 0, fold))
            if folds:
                found.append((root, folds, checkpoint))
                break
    return found


# ----------------------------------------------------------------------------------------------- importing


def _write_zip(folder: str, stem: str, tree: _Tree, members: list) -> str:
    """A zip in ``folder`` holding ``members`` (pairs of name in ``tree``, name in the zip), written atomically and
    named ``<stem>-<start of its sha256>.zip``, so that a model imported again with other content never replaces
    the archive an earlier version was installed from."""
    target = os.path.join(folder, f"{stem}-new.zip")
    with atomic_target(target, suffix=".zip") as temporary, zipfile.ZipFile(temporary, "w") as archive:
        for source, name in members:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            # Weights hardly compress; stored entries unpack at disk speed.
            info.compress_type = zipfile.ZIP_DEFLATED if name.endswith(".json") else zipfile.ZIP_STORED
            with tree.open(source) as reader, archive.open(info, "w", force_zip64=True) as writer:
                shutil.copyfileobj(reader, writer, 1024 * 1024)
    named = os.path.join(folder, f"{stem}-{file_sha256(target)[:16]}.zip")
    os.replace(target, named)
    return named


def _file_entry(path: str) -> dict:
    return {"url": file_url(path), "sha256": file_sha256(path), "size": os.path.getsize(path)}


def _nnunet_entries(path: str, tree: _Tree, folder: str, version: str) -> list:
    entries = []
    for root, folds, checkpoint in nnunet_model_folders(tree.names):
        parts = [part for part in root.rstrip("/").split("/") if part]
        trained = parts[-1] if parts else os.path.basename(os.path.abspath(path))
        dataset = parts[-2] if len(parts) > 1 else ""
        trainer, _, configuration = trained.rpartition("__")
        dataset_json = decode_config(tree.read(root + "dataset.json"), "dataset.json")
        plans = decode_config(tree.read(root + "plans.json"), "plans.json")
        dataset = dataset or str(plans.get("dataset_name") or "nnunet")
        model_id = model_id_from(f"{dataset}-{configuration or trained}")
        # Only what the predictor reads, under DatasetName/Trainer__Plans__configuration/ as nnU-Net lays it out.
        prefix = f"{dataset}/{trained}/"
        members = [(root + name, prefix + name) for name in ("dataset.json", "plans.json")]
        members += [(f"{root}fold_{fold}/{checkpoint}", f"{prefix}fold_{fold}/{checkpoint}") for fold in folds]
        archive = _write_zip(folder, model_id, tree, members)
        entries.append(from_nnunet_model(dataset_json, plans, model_id=model_id, version=version,
                                         files=[_file_entry(archive)], configuration=configuration or trained,
                                         trainer=trainer, folds=folds))
    return entries


def bundle_large_files(text: bytes, name: str = "large_files.yml") -> list:
    """The files (our format: URL, file name, and the publisher's MD5 or SHA-1 where given) of a MONAI model-zoo
    bundle's ``large_files.yml``: the weights the zoo keeps outside the bundle, with ``path``, ``url``, ``hash_val``
    and ``hash_type``. Any other hash type is not checked (the file is then trusted on first use)."""
    document = decode_config(text, name)
    items = document.get("large_files") if isinstance(document, dict) else None
    if not isinstance(items, list):
        raise ImporterError(f"{name} has no large_files list")
    files = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("url"), str) or not isinstance(item.get("path"), str):
            raise ImporterError(f"{name}: every large file needs a path and a url")
        file = {"url": item["url"], "name": posixpath.basename(item["path"])}
        kind, digest = str(item.get("hash_type", "")).lower().replace("-", ""), str(item.get("hash_val", "")).lower()
        if kind in ("md5", "sha1") and digest:
            file[kind] = digest
        files.append(file)
    return files


def _bundle_entry(path: str, tree: _Tree, folder: str) -> list:
    metadata, inference, root = read_monai_bundle(path)
    name = root.rstrip("/") or os.path.splitext(os.path.basename(os.path.abspath(path)))[0]
    model_id = model_id_from(re.sub(r"_v\d+\.\d+\.\d+$", "", name))
    listed = next((root + candidate for candidate in ("large_files.yml", "large_files.yaml")
                   if root + candidate in tree.names), "")
    large = bundle_large_files(tree.read(listed), listed) if listed else []
    if tree.is_archive:
        files = [_file_entry(path)]
    elif large and not any(f"{root}models/{file['name']}" in tree.names for file in large):
        # A bundle as the zoo's repository holds it: its configuration here, its weights where large_files.yml says.
        members = [(member, member[len(root):]) for member in tree.names if member.startswith(root)]
        files = [_file_entry(_write_zip(folder, model_id, tree, members)), *large]
    else:
        files = [_file_entry(_write_zip(folder, model_id, tree, [(member, f"{name}/{member}")
                                                                  for member in tree.names]))]
    return [from_monai_bundle_metadata(metadata, model_id=model_id, files=files, inference=inference)]


def _auto3dseg_archive_entry(path: str, tree: _Tree) -> list:
    match = _AUTO3DSEG_FILE.fullmatch(os.path.basename(path))
    stem, version = (match.group("id").lower(), match.group("version")) if match else (
        os.path.splitext(os.path.basename(path))[0], "1.0.0")
    root = tree.roots_holding(AUTO3DSEG_LABELS_FILE, "model.pt")[0]
    labels = labels_from_auto3dseg_csv(tree.read(root + AUTO3DSEG_LABELS_FILE).decode("utf-8-sig"))
    entry = _without_empty({
        "id": model_id_from(stem), "title": stem, "task": "segmentation", "labels": labels,
        "description": "A SlicerMONAIAuto3DSeg model (model.pt and labels.csv), imported from a local archive.",
        "versions": [{"version": version, "files": [_file_entry(path)], "runtime": "auto3dseg"}],
    })
    index_document([entry])
    return [entry]


def package_foreign_model(path: str, folder: str, version: str = "1.0.0") -> list:
    """Entries (our format) for a model of the field at ``path``, each with an archive (a ``file://`` URL, its sha256
    and size) that installs it:

    - a MONAI bundle, zip or folder; a folder as the zoo's repository holds it (configuration, no weights) also lists
      the weights its large_files.yml names (checked against the publisher's MD5, trusted on first use);
    - an nnU-Net v2 results folder or zip: one entry per trained model folder in it, repackaged with only
      dataset.json, plans.json and the folds' checkpoints; ``version`` is theirs (nnU-Net models have none);
    - a SlicerMONAIAuto3DSeg archive (model.pt and labels.csv).

    Folders are packed into ``folder`` (created if needed). Raises ImporterError for anything else.
    """
    tree = _Tree(path)
    os.makedirs(folder, exist_ok=True)
    try:
        if nnunet_model_folders(tree.names):
            return _nnunet_entries(path, tree, folder, version)
        if tree.roots_holding(BUNDLE_METADATA_FILE):
            return _bundle_entry(path, tree, folder)
        if tree.is_archive and tree.roots_holding(AUTO3DSEG_LABELS_FILE, "model.pt"):
            return _auto3dseg_archive_entry(path, tree)
    finally:
        tree.close()
    raise ImporterError(
        f"{os.path.basename(os.path.abspath(path))} is not a model of a known kind: a MONAI bundle "
        "(configs/metadata.json and inference.json), an nnU-Net v2 results folder (dataset.json, plans.json, "
        "fold_K/checkpoint_final.pth) or a SlicerMONAIAuto3DSeg archive (model.pt and labels.csv)"
    )

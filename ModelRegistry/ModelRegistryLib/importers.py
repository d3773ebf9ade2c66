"""Importers: model descriptions users already have, converted into entries of our index.

- A MONAI bundle's ``configs/metadata.json`` (:func:`from_monai_bundle_metadata`): name, description, authors,
  references, intended use, data source, evaluation metrics, the changelog of its version, the input modality
  and channels, and the output labels of ``network_data_format.outputs.pred.channel_def``.
- SlicerMONAIAuto3DSeg's ``Resources/Models.json`` (:func:`from_monai_auto3dseg_models`): one entry per model,
  its id and versions taken from the download URLs (``<id>-v<MAJOR.MINOR.PATCH>.zip``). Its label values are
  only in the ``labels.csv`` inside each zip, so these entries list no labels (their descriptions say so and
  name the segments).

Neither format has checksums, and our index requires sha256 and size for every file: the caller gives them
(files already in our format for a bundle; a mapping ``url -> (sha256, size)`` for Models.json). Every entry
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
    >>> entry["versions"][0]["version"], entry["versions"][0]["changelog"]
    ('0.2.0', 'unify naming')
"""

from __future__ import annotations

import colorsys
import math
import posixpath
import re
import urllib.parse
from collections.abc import Mapping

from .index import SCHEMA_VERSION, IndexValidationError, parse_index

_AUTO3DSEG_FILE = re.compile(r"(?P<id>.+?)[-_]v(?P<version>\d+\.\d+\.\d+)\.zip", re.ASCII)
_MODALITIES = {"MRI": "MR", "ULTRASOUND": "US"}
_BACKGROUND_NAMES = {"background", "bg", "_background_"}
_GOLDEN_ANGLE = 0.381966


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


def _bundle_labels(pred: dict) -> tuple:
    """Labels of the prediction's channels, and a note for the description when their values are not channels."""
    channels = _channels(pred)
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


def _paragraphs(*texts: str) -> str:
    return "\n\n".join(text.strip() for text in texts if text and text.strip())


def from_monai_bundle_metadata(metadata: dict, *, model_id: str, files: list) -> dict:
    """Our index entry for a MONAI bundle, from its ``configs/metadata.json`` (decoded).

    ``files`` are the version's files in our format (``{"url", "sha256", "size"}``, usually the bundle's zip).
    Only the bundle's own version is listed: the changelog names earlier versions, but not where they are.
    """
    if not isinstance(metadata, dict):
        raise ImporterError("MONAI bundle metadata must be a JSON object")
    if not isinstance(metadata.get("version"), str):
        raise ImporterError("MONAI bundle metadata has no 'version'")
    version = metadata["version"]
    data_format = _mapping(metadata.get("network_data_format"))
    outputs = _mapping(data_format.get("outputs"))
    # Bundles name their output "pred"; a few use another name for their only output.
    pred = _mapping(outputs.get("pred", next(iter(outputs.values()), None)))
    labels, labels_note = _bundle_labels(pred)
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
        "versions": [{"version": version, "changelog": str(changelog.get(version, "")), "files": list(files)}],
    }
    entry = {key: value for key, value in entry.items() if value or key in ("id", "title", "versions")}
    index_document([entry])
    return entry


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


def _auto3dseg_versions(model: dict, base_url: str, checksums: Mapping, missing: list) -> tuple:
    """``(model id, versions)`` of one Models.json model; URLs without checksums are added to ``missing``."""
    ids, versions = set(), []
    for item in model.get("versions") or []:
        url = urllib.parse.urljoin(base_url, item.get("url", "")) if base_url else item.get("url", "")
        match = _AUTO3DSEG_FILE.fullmatch(posixpath.basename(urllib.parse.urlsplit(url).path))
        if not url or match is None:
            raise ImporterError(f"model {model.get('title')!r}: URL {url!r} does not end in <id>-v<X.Y.Z>.zip")
        ids.add(match.group("id").lower())
        if url not in checksums:
            missing.append(url)
            continue
        sha256, size = checksums[url]
        versions.append({"version": match.group("version"), "files": [{"url": url, "sha256": sha256, "size": size}]})
    if len(ids) != 1:
        raise ImporterError(f"model {model.get('title')!r}: its URLs name {len(ids)} model ids ({sorted(ids)})")
    return ids.pop(), versions


def _auto3dseg_entry(model: dict, model_id: str, versions: list) -> dict:
    segments = [str(name) for name in model.get("segmentNames") or []]
    labels_note = "Label values and terminology are in the labels file inside the model's archive; not listed here."
    runtime = [
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
        "runtime": runtime,
        "versions": versions,
    }
    return {key: value for key, value in entry.items() if value or key in ("id", "title", "versions")}


def from_monai_auto3dseg_models(
    models_json: dict, *, checksums: Mapping | None = None, base_url: str | None = None
) -> list:
    """Our index entries for SlicerMONAIAuto3DSeg's ``Models.json`` (decoded), in its order.

    ``checksums`` maps each download URL (after resolving it against ``base_url``, where given) to
    ``(sha256, size)``; Models.json has neither, and a URL missing from it raises ImporterError naming every
    such URL. A model's versions are its URLs ``<id>-vX.Y.Z.zip`` (``_vX.Y.Z`` for MONAI bundles).

    >>> url = "https://github.com/org/repo/releases/download/Models/liver-v1.0.1.zip"
    >>> models = {"models": [{"title": "Liver", "description": "Liver from CT", "imagingModality": "CT",
    ...     "segmentNames": ["Liver"], "versions": [{"url": url}]}]}
    >>> [(entry["id"], entry["versions"][0]["version"]) for entry in
    ...  from_monai_auto3dseg_models(models, checksums={url: (64 * "0", 1000)})]
    [('liver', '1.0.1')]
    """
    if not isinstance(models_json, dict) or not isinstance(models_json.get("models"), list):
        raise ImporterError("Models.json must be an object with a 'models' list")
    checksums = checksums or {}
    missing: list = []
    converted = []
    for model in models_json["models"]:
        if not isinstance(model, dict):
            raise ImporterError("every item of 'models' must be an object")
        model_id, versions = _auto3dseg_versions(model, base_url or "", checksums, missing)
        converted.append(_auto3dseg_entry(model, model_id, versions))
    if missing:
        raise ImporterError(
            f"sha256 and size are needed for {len(missing)} file(s) that Models.json gives no checksum for; "
            f"pass checksums={{url: (sha256, size)}} for: {', '.join(missing)}"
        )
    return index_document(converted)["models"]

"""A trained network becomes a model in the registry: its package, its card, a local index and the source.

- :func:`model_contract` is the ``model.json`` of the trained model: exactly the preprocessing its training
  used (spacing, orientation, each channel's normalization with the statistics computed on the training
  patients), the patch size it learned on, the labels, and a ``training`` section (ignored by the engine) that
  says how it was made.
- :func:`model_entry` is its registry card: the data (from the export's dataset card: cases, patients, labels,
  spacing, annotators), the held-out evaluation (``evaluation_report.card_metrics``), the hyper-parameters,
  training time, device and software versions. ``intendedUse`` and ``limitations`` are left empty: only the
  model's author can say them.
- :func:`publish` copies the package into a folder holding a registry index (``index.json``, created when
  missing, validated before it is replaced atomically), lists the new version there, registers the folder as
  one of the user's sources (``ModelRegistryLib.registry.save_user_sources``) and installs the version into the
  model cache, so that Deep Segment can run it at once, offline.

Example::

    >>> import os, tempfile
    >>> folder = tempfile.mkdtemp()
    >>> index = os.path.join(folder, "index.json")
    >>> next_version(index, "liver")
    '1.0.0'
    >>> model_id_from("Dataset042_Liver CT")
    'dataset042_liver-ct'
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
from collections.abc import Sequence

from ModelRegistryLib.download import file_sha256
from ModelRegistryLib.files import make_temporary_folder, write_text_atomically
from ModelRegistryLib.index import file_url, model_spec_problem, parse_index, semantic_version_key
from ModelRegistryLib.registry import Registry, bundled_source, save_user_sources, user_sources
from ModelRegistryLib.sources import INDEX_FILE_NAME, IndexSource
from TrainingDataExportLib.labelschema import label_schema_document

REGISTRY_FOLDER_NAME = "trained-models"
SOURCE_NAME = "Trained models"
FIRST_VERSION = "1.0.0"


class PublishError(ValueError):
    """The trained model cannot be added to the registry; the message says why."""


def model_id_from(text: str) -> str:
    """A registry model id made of ``text`` (lower case; other characters than letters, digits, ``.``, ``_`` and
    ``-`` become ``-``)."""
    slug = re.sub(r"[^a-z0-9._-]+", "-", text.strip().lower()).strip("-._")[:128]
    return slug if slug and not model_spec_problem(slug) else "trained-model"


def _read_index(path: str) -> dict:
    try:
        with open(path, encoding="utf-8-sig") as file:
            document = json.load(file)
    except FileNotFoundError:
        return {"schemaVersion": 1, "models": []}
    except (OSError, ValueError) as error:
        raise PublishError(f"cannot read the registry index {path}: {error}") from None
    if not isinstance(document, dict) or not isinstance(document.get("models"), list):
        raise PublishError(f"{path} is not a registry index (no models list)")
    return document


def next_version(index_path: str, model_id: str) -> str:
    """The version after the newest one of ``model_id`` in the index (its patch number plus one), or 1.0.0."""
    versions = [version.get("version") for model in _read_index(index_path)["models"]
                if isinstance(model, dict) and model.get("id") == model_id
                for version in model.get("versions", []) if isinstance(version, dict)]
    released = [version for version in versions if isinstance(version, str) and _is_version(version)]
    if not released:
        return FIRST_VERSION
    major, minor, patch = max(released, key=semantic_version_key).split("-")[0].split(".")
    return f"{major}.{minor}.{int(patch) + 1}"


def _is_version(text: str) -> bool:
    try:
        semantic_version_key(text)
    except ValueError:
        return False
    return True


def version_problem(index_path: str, model_id: str, version: str) -> str:
    """Why ``model_id`` ``version`` cannot be published into the index (an id or version that is not one, a version
    already there), or ""."""
    problem = model_spec_problem(model_id)
    if problem:
        return problem
    if version and not _is_version(version):
        return f"{version!r} is not a version such as 1.0.0"
    if version and version in {item.get("version") for model in _read_index(index_path)["models"]
                               if isinstance(model, dict) and model.get("id") == model_id
                               for item in model.get("versions", []) if isinstance(item, dict)}:
        return f"{model_id} {version} is already in {index_path}: give another version"
    return ""


# --- model.json -------------------------------------------------------------------------------------------


def model_contract(*, model_format: str, channels: Sequence[str], modalities: Sequence[str], labels: Sequence,
                   spacing, orientation: str, normalization: Sequence[dict], patch_size: Sequence[int],
                   batch_size: int, mirror_axes: Sequence[int], training: dict) -> dict:
    """The trained model's ``model.json`` (``patch_size`` and ``spacing`` in x, y, z)."""
    inputs = [{"name": name, **({"modality": modality} if modality else {})}
              for name, modality in zip(channels, modalities)]
    return {
        "schemaVersion": 1,
        "format": model_format,
        "weights": "model.pt2" if model_format == "torch.export" else "model.pt",
        "dimensions": 3,
        "inputs": inputs,
        "preprocessing": {"spacing": None if spacing is None else [float(value) for value in spacing],
                          "orientation": orientation, "normalization": [dict(item) for item in normalization]},
        "inference": {"patchSize": [int(value) for value in patch_size], "overlap": 0.5, "blending": "gaussian",
                      "batchSize": int(batch_size), "mirrorAxes": [int(axis) for axis in mirror_axes],
                      "activation": "softmax", "outputChannels": len(labels) + 1},
        "postprocessing": {"mode": "argmax"},
        "labels": label_schema_document(labels)["labels"],
        "training": training,
    }


# --- the card ---------------------------------------------------------------------------------------------


def _side(summary: dict, name: str) -> str:
    side = summary[name]
    return f"{side['cases']} case(s) of {side['patients']} patient(s)"


def training_data_text(summary: dict) -> str:
    """The card's ``trainingData``: what the model learned from, in a few sentences."""
    source = os.path.basename(summary["source"].rstrip("/")) or summary["source"]
    kind = "case list" if summary["kind"] == "cases" else f"{summary['kind']} export"
    parts = [f"{kind} {source}: {_side(summary, 'all')}, labels "
             + ", ".join(f"{label['name']} ({label['value']})" for label in summary["labels"]) + "."]
    parts.append(f"Trained on {_side(summary, 'training')}; early stopping and the best epoch chosen on "
                 f"{_side(summary, 'validation')}"
                 + (f" (validation fold {summary['fold']})" if summary["fold"] is not None else "")
                 + f"; evaluated on {_side(summary, 'test')} held out (never used in training).")
    if summary.get("median_spacing_mm"):
        parts.append("Median voxel spacing " + " x ".join(f"{value:g}" for value in summary["median_spacing_mm"])
                     + " mm.")
    annotators = [f"{item['annotator']} ({item['cases']})" for item in summary.get("annotators", [])]
    if annotators:
        parts.append("Annotators (cases): " + ", ".join(annotators) + ".")
    return " ".join(parts)


def model_entry(*, model_id: str, title: str, version: str, contract: dict, summary: dict, metrics: Sequence[dict],
                runtime: Sequence[dict], training: dict, files: Sequence[dict]) -> dict:
    """The registry entry (card and one version) of a trained model; ``files`` are the version's files."""
    names = ", ".join(label["name"] for label in contract["labels"])
    modalities = sorted({item.get("modality", "") for item in contract["inputs"]} - {""})
    hyper = training["hyperParameters"]
    description = (f"Segments {names} (3D, {contract['preprocessing']['spacing'] or 'native'} mm). Trained with "
                   f"SlicerDeepLearning's Deep Segment: {training['network']}, {training['epochs']} epoch(s) "
                   f"(best {training['bestEpoch']}), {training['seconds'] / 60:.1f} min on {training['device']}, "
                   f"learning rate {hyper['learningRate']:g}, batch {hyper['batchSize']}, patch "
                   + "x".join(str(value) for value in contract["inference"]["patchSize"]) + ".")
    return {
        "id": model_id,
        "title": title,
        "description": description,
        "task": "segmentation",
        **({"modality": modalities[0]} if len(modalities) == 1 else {}),
        "inputs": contract["inputs"],
        "labels": contract["labels"],
        "intendedUse": "",
        "limitations": "",
        "trainingData": training_data_text(summary),
        "metrics": list(metrics),
        "runtime": list(runtime),
        "training": training,
        "versions": [{"version": version, "releaseDate": datetime.date.today().isoformat(),
                      "changelog": f"Trained {datetime.date.today().isoformat()} from {summary['source']}.",
                      "files": list(files)}],
    }


# --- the registry -----------------------------------------------------------------------------------------


def default_registry_folder(cache_dir: str) -> str:
    """Where trained models are listed unless the user picks a folder: beside the model cache's settings."""
    return os.path.join(cache_dir, REGISTRY_FOLDER_NAME)


def _copy_package(package_folder: str, target: str) -> None:
    """Copy the package's files into ``target`` (a new folder), appearing there complete or not at all."""
    parent = os.path.dirname(target)
    staging = make_temporary_folder(parent, ".incoming-")
    try:
        for name in sorted(os.listdir(package_folder)):
            shutil.copyfile(os.path.join(package_folder, name), os.path.join(staging, name))
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def register_source(cache_dir: str, folder: str) -> bool:
    """Make ``folder`` one of the user's registry sources (read by the panels, the console and the command lines)
    unless it is one already; True when it was added."""
    sources = user_sources(cache_dir)
    real = os.path.realpath(folder)
    if any(not source.remote and os.path.realpath(source.location) == real for source in sources):
        return False
    save_user_sources(cache_dir, [*sources, IndexSource(folder, name=SOURCE_NAME)])
    return True


def publish(package_folder: str, entry: dict, registry_folder: str, cache_dir: str) -> str:
    """Add the version of ``entry`` (whose ``files`` are filled in here from ``package_folder``) to the index in
    ``registry_folder``, register the folder as a source and install the version; returns the index's path.

    The model's card becomes ``entry``'s; its earlier versions stay listed.
    """
    model_id, version = entry["id"], entry["versions"][0]["version"]
    index_path = os.path.join(registry_folder, INDEX_FILE_NAME)
    problem = version_problem(index_path, model_id, version)
    if problem:
        raise PublishError(problem)
    document = _read_index(index_path)
    target = os.path.join(registry_folder, model_id, version)
    if os.path.exists(target):
        raise PublishError(f"{target} exists already and is not listed in {index_path}: remove it or give another "
                           "version")
    os.makedirs(os.path.dirname(target), exist_ok=True)
    _copy_package(package_folder, target)
    files = [{"url": f"{model_id}/{version}/{name}", "sha256": file_sha256(os.path.join(target, name)),
              "size": os.path.getsize(os.path.join(target, name))} for name in sorted(os.listdir(target))]
    entry = {**entry, "versions": [{**entry["versions"][0], "files": files}]}
    earlier = next((model for model in document["models"] if isinstance(model, dict) and model.get("id") == model_id),
                   None)
    if earlier is not None:
        entry["versions"] = entry["versions"] + list(earlier.get("versions", []))
    document["models"] = [model for model in document["models"] if model is not earlier] + [entry]
    try:
        parse_index(document, file_url(os.path.abspath(index_path)))
    except ValueError as error:
        shutil.rmtree(target, ignore_errors=True)
        raise PublishError(f"the model's entry would make {index_path} invalid: {error}") from None
    write_text_atomically(index_path, json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    register_source(cache_dir, registry_folder)
    registry = Registry([bundled_source(), *user_sources(cache_dir)], cache_dir)
    registry.refresh(offline=True)
    registry.ensure_installed(f"{model_id}@{version}")
    return index_path

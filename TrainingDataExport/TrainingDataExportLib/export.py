"""Export a case list as a training set: validated first, split by patient, written in parallel, incremental, and
left complete whatever happens.

:func:`export_dataset` works in steps, each a function below:

1. **Validate the request** before any work: settings, schema, split arguments, the output folder (writable,
   empty or an earlier export of ours, its manifest sound), the case list and its files.
2. **Check every new or changed case** with the one check ``check`` runs too
   (:func:`~TrainingDataExportLib.checks.inspect_case`): unreadable, truncated or NaN-holding images,
   grid mismatches, segments or values that do not map to the label schema, overlaps... Every offending
   case is collected and :class:`ExportError` lists them all; the output folder is left untouched. Cases
   without a segmentation are skipped and listed.
3. **Split by patient** (:func:`~TrainingDataExportLib.splits.split_by_patient`, stratified by which labels a
   case contains) unless a split is given.
4. **Write the cases** on a thread pool (SimpleITK and zlib release the GIL while they read, resample and
   compress; see :mod:`~TrainingDataExportLib.casedata`), reporting progress as each case is written.
5. Write the format's index files and the dataset card, remove what no case needs any more, and write the
   manifest last.

Incremental: the manifest records, per case, the SHA-256 of its inputs and of the settings; a re-run rewrites
only the cases whose inputs or settings changed and removes the files of cases no longer exported.

Interruptions (see :mod:`~TrainingDataExportLib.manifest`): every file is recorded in the export's journal
before it is created, and written under a temporary name then renamed. The index files and the dataset card
are removed before any case file changes, so a folder whose export did not finish never looks finished. The
next export, with any settings, trusts no file an unfinished one may have written: it rewrites the cases that
need them and removes the rest, so the folder ends exactly as a clean export with its settings would leave it.
Nothing is written or removed outside the export folder, whatever its manifest or journal says.

Example::

    >>> import os, shutil, tempfile
    >>> from ModelRegistryLib.index import Label
    >>> from TrainingDataExportLib.caselist import Case
    >>> folder = tempfile.mkdtemp()
    >>> cases = []
    >>> for index in range(4):
    ...     image = sitk.Image([8, 8, 4], sitk.sitkInt16) + index
    ...     label = sitk.Image([8, 8, 4], sitk.sitkUInt8)
    ...     label[2:5, 2:5, 1:3] = 1
    ...     paths = [os.path.join(folder, f"c{index}{suffix}.nrrd") for suffix in ("", "_seg")]
    ...     sitk.WriteImage(image, paths[0]); sitk.WriteImage(label, paths[1])
    ...     cases.append(Case(f"c{index}", f"p{index}", {"image": paths[0]}, paths[1]))
    >>> output = os.path.join(folder, "export")
    >>> settings = ExportSettings("nnunet", channel_names=("CT",))
    >>> report = export_dataset(cases, [Label(1, "liver", "#dd8259")], output, settings, folds=0, test_fraction=0.25)
    >>> sorted(report.written), report.unchanged
    (['c0', 'c1', 'c2', 'c3'], [])
    >>> sorted(os.listdir(os.path.join(output, "Dataset001_Export", "imagesTs")))
    ['c2_0000.nii.gz']
    >>> export_dataset(cases, [Label(1, "liver", "#dd8259")], output, settings, folds=0, test_fraction=0.25).unchanged
    ['c0', 'c1', 'c2', 'c3']
    >>> shutil.rmtree(folder)
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

import SimpleITK as sitk
from ModelRegistryLib.files import contained_path, probe_writable, remove_temporary_files

from . import formats
from .card import card_file_names, card_warnings, write_dataset_card
from .casedata import CaseJob, geometry, prepare_case, summary_from_json, summary_to_json
from .caselist import Case, CaseListError, validate_cases
from .checks import inspect_case, missing_files, resampled_size_problem
from .manifest import MANIFEST_NAME, OWN_FILES, Journal, read_manifest, write_manifest
from .segmentations import schema_terminology_key
from .settings import (
    ExportSettings,
    consecutive_label_values,
    export_root,
    nnunet_channel_names,
    nnunet_dataset,
)
from .splits import DatasetSplit, check_split_arguments, split_by_patient

__all__ = [
    "MANIFEST_NAME",
    "ExportCancelledError",
    "ExportError",
    "ExportReport",
    "ExportSettings",
    "export_dataset",
    "file_sha256",
]

# Part of every case's fingerprint: a change to how cases are written makes a re-run rewrite them.
# 2: label values made consecutive for nnU-Net; images read through the checked reader.
ENGINE_VERSION = 2
_HASH_CHUNK = 1 << 22
_MAX_LISTED = 30
_MAX_WORKERS = 64


@dataclass
class ExportReport:
    """What an export did: case ids written and left unchanged, skipped cases with the reason, summaries."""

    output_dir: str
    written: list = field(default_factory=list)
    unchanged: list = field(default_factory=list)
    skipped: dict = field(default_factory=dict)
    summaries: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    seconds: float = 0.0


class ExportError(ValueError):
    """The export cannot run; ``problems`` lists every ``(case_id, message)`` found ("" for the whole export)."""

    def __init__(self, problems: Sequence[tuple]) -> None:
        self.problems = list(problems)
        cases = sorted({case_id for case_id, _ in self.problems if case_id})
        lines = [f"case {case_id!r}: {message}" if case_id else message for case_id, message in self.problems]
        shown = lines[:_MAX_LISTED] + ([f"... and {len(lines) - _MAX_LISTED} more"] if len(lines) > _MAX_LISTED else [])
        heading = f"export stopped before writing anything: {len(self.problems)} problem(s)"
        if cases:
            heading += f" in {len(cases)} case(s): {', '.join(cases)}"
        super().__init__(heading + "\n  " + "\n  ".join(shown))


class ExportCancelledError(RuntimeError):
    """The export was cancelled; the next export finishes it (see the module description)."""


# --- small pieces ------------------------------------------------------------------------------------------


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _json_sha256(data) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode("utf-8")).hexdigest()


def _schema_pairs(labels: Sequence) -> list:
    return [(int(label.value), str(label.name)) for label in labels]


def _schema_problems(labels: Sequence) -> list:
    problems = []
    values = [int(label.value) for label in labels]
    names = [str(label.name).strip().casefold() for label in labels]
    if not any(value > 0 for value in values):
        problems.append("the label schema has no label (values 1 and up)")
    for value in sorted({v for v in values if values.count(v) > 1}):
        problems.append(f"label value {value} appears twice in the schema")
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"label name {name!r} appears twice in the schema")
    problems.extend(f"label value {v} is outside 0..65535" for v in values if not 0 <= v <= 65535)
    return problems


def _writable_problem(root: str) -> str:
    """Why files cannot be created in ``root`` (tried in its nearest existing folder), or ""."""
    existing = root
    while not os.path.isdir(existing):
        parent = os.path.dirname(existing)
        if parent == existing or os.path.exists(existing):
            return f"output folder {root} cannot be created: {existing} is not a folder"
        existing = parent
    try:
        probe_writable(existing)
    except OSError as error:
        return f"output folder {root} cannot be written ({existing}: {error.strerror or error})"
    return ""


def _case_inputs(case: Case) -> list:
    """The files a case's export depends on: its images, its segmentation and its prediction when a model
    pre-annotated it (a prediction deleted since is noted in the card, not an error)."""
    prediction = [case.pre_annotation] if case.pre_annotated and os.path.isfile(case.pre_annotation) else []
    return sorted({*case.images.values(), case.segmentation, *prediction})


def _case_fingerprint(settings_hash: str, channels: tuple, case: Case, hashes: Mapping) -> str:
    """A case's fingerprint: its inputs, the settings, its id and, for a pre-annotated case, what the card reports
    of it from the case list (model, version, time spent)."""
    parts = [settings_hash, channels, {path: hashes[path] for path in _case_inputs(case)}, case.case_id]
    if case.pre_annotated:
        parts.append([case.pre_annotation, case.model_id, case.model_version, case.time_spent])
    return _json_sha256(parts)


class _Steps:
    """Progress reports, and the cancel check done with each."""

    def __init__(self, progress: Callable | None, cancel: threading.Event | None) -> None:
        self.progress = progress
        self.cancel = cancel

    def cancelled(self) -> bool:
        return self.cancel is not None and self.cancel.is_set()

    def tell(self, fraction: float, message: str) -> None:
        if self.progress is not None:
            self.progress(fraction, message)
        if self.cancelled():
            raise ExportCancelledError("export cancelled")


def _parallel(function, items: Sequence, workers: int, on_done: Callable) -> list:
    """``function`` on every item on ``workers`` threads, results in order; ``on_done(index)`` in this thread as
    each item finishes.

    The first error (or one raised by ``on_done``) cancels the items not started, waits for the running ones
    and is raised.
    """
    results = [None] * len(items)
    if not items:
        return results
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(function, item): index for index, item in enumerate(items)}
        pending = set(futures)
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in sorted(done, key=futures.get):
                    results[futures[future]] = future.result()
                    on_done(futures[future])
        except BaseException:
            for future in pending:
                future.cancel()
            wait(pending)
            raise
    return results


@contextlib.contextmanager
def _itk_threads_for(workers: int):
    """ITK's own threads limited to one while ``workers`` > 1 threads run cases, restored after.

    The cases are the parallelism: ITK's threads would only compete with them for the processors (measured:
    two threads reading NRRD files scale 2x with one ITK thread each, not at all with ITK's default).
    """
    previous = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    if workers > 1:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(previous)


# --- 1. the request ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Request:
    """What :func:`export_dataset` was asked, but the cases and the output folder."""

    labels: Sequence
    settings: ExportSettings
    split: DatasetSplit | None
    folds: int
    test_fraction: float
    seed: int
    workers: int


def _request_problems(cases: Sequence[Case], request: _Request) -> list:
    """What makes the request itself impossible, before any file is read."""
    settings, split, workers = request.settings, request.split, request.workers
    problems = settings.problems() + _schema_problems(request.labels)
    try:
        check_split_arguments(request.folds, request.test_fraction, request.seed)
    except ValueError as error:
        problems.append(str(error))
    if isinstance(workers, bool) or not isinstance(workers, int) or not 0 <= workers <= _MAX_WORKERS:
        problems.append(f"workers must be 0 (one per processor, up to 4) to {_MAX_WORKERS}, not {workers!r}")
    if settings.format == "monai" and (len(split.folds) if split is not None else request.folds) < 2:
        problems.append(
            "MONAI datalists need 2 folds or more: every training entry holds the fold that validates it "
            "(without folds, Auto3DSeg draws its own by case, and a patient's scans can land on both sides)"
        )
    if not cases:
        problems.append("the case list is empty")
    elif settings.format == "nnunet" and not settings.problems():
        _, channel_problem, _ = nnunet_channel_names(settings, tuple(cases[0].images))
        problems += [channel_problem] if channel_problem else []
    return problems


def _folder_problems(output_dir: str, settings: ExportSettings) -> tuple:
    """``(export folder, earlier manifest or None, problems)``."""
    problems = []
    if settings.format == "nnunet":
        _, _, folder_problem = nnunet_dataset(output_dir, settings)
        problems += [folder_problem] if folder_problem else []
    root = export_root(output_dir, settings)
    manifest, manifest_problem = read_manifest(root)
    problems += [message for message in (manifest_problem, _writable_problem(root)) if message]
    if manifest is not None and manifest.get("format") != settings.format:
        problems.append(f"{root} holds a {manifest.get('format')!r} export; use another folder for {settings.format!r}")
    return root, manifest, problems


def _case_list_problems(cases: Sequence[Case]) -> list:
    """Case-list problems and missing files, as (case id, message)."""
    problems = []
    try:
        validate_cases(cases)
    except CaseListError as error:
        problems.extend((problem.case_id or "", str(problem)) for problem in error.problems)
    for case in cases:
        problems.extend((case.case_id, message) for message in missing_files(case))
    return problems


# --- 2. the cases --------------------------------------------------------------------------------------------


def _hash_inputs(annotated: Sequence[Case], workers: int, steps: _Steps) -> dict:
    paths = sorted({path for case in annotated for path in _case_inputs(case)})
    done = []

    def hashed(index: int) -> None:
        done.append(index)
        steps.tell(0.05 * len(done) / len(paths), f"hashing input files ({len(done)} of {len(paths)})")

    return dict(zip(paths, _parallel(file_sha256, paths, workers, hashed)))


def _previous_labels(entry) -> frozenset | None:
    """The label values an earlier export found in a case (its manifest entry), or None when unreadable."""
    try:
        return frozenset(int(value) for value in entry["summary"]["label_voxels"])
    except (KeyError, TypeError, ValueError):
        return None


def _check_cases(cases: Sequence[Case], labels, settings, workers: int, steps: _Steps) -> tuple:
    """``(problems as (case id, message), warnings, {case id: label values present})`` of ``cases``."""
    done = []

    def checked(index: int) -> None:
        done.append(index)
        steps.tell(0.05 + 0.05 * len(done) / len(cases), f"checked case {cases[index].case_id} "
                                                         f"({len(done)} of {len(cases)})")

    with _itk_threads_for(workers):
        results = _parallel(lambda case: inspect_case(case, labels, settings), cases, workers, checked)
    problems, warnings, present = [], [], {}
    for case, result in zip(cases, results):
        problems += [(case.case_id, message) for message in result.blocking]
        warnings += [f"case {case.case_id!r}: {message}" for message in result.warnings]
        present[case.case_id] = result.present
    return problems, warnings, present


def _restricted_split(split: DatasetSplit, case_ids: Sequence[str]) -> tuple:
    """``(split of exactly case_ids, problems)``: a given split may hold more cases than are exported."""
    missing = sorted(set(case_ids) - set(split.case_ids))
    if missing:
        return None, [(case_id, "is not in the given split") for case_id in missing]
    keep = set(case_ids)

    def kept(ids):
        return tuple(i for i in ids if i in keep)

    folds = tuple((kept(train), kept(validation)) for train, validation in split.folds)
    return DatasetSplit(test=kept(split.test), folds=folds, seed=split.seed, train=kept(split.train)), []


# --- 4. writing ----------------------------------------------------------------------------------------------


def _is_unchanged(previous: Mapping | None, job: CaseJob, root: str, writer, untrusted: set) -> bool:
    """Whether an earlier export wrote ``job``'s case as this one would, with its files untouched since."""
    if not previous or previous.get("fingerprint") != job.fingerprint:
        return False
    if previous.get("placement") != writer.placement(job.subset) or untrusted & set(previous["files"]):
        return False
    try:
        summary_from_json(previous["summary"])
    except (KeyError, TypeError, ValueError):
        return False
    return all(
        os.path.isfile(os.path.join(root, path)) and os.path.getsize(os.path.join(root, path)) == size
        for path, size in previous["files"].items()
    )


def _remove_files(root: str, relatives) -> None:
    """Remove ``relatives`` (paths inside ``root``; any other is ignored) that exist."""
    for relative in sorted(set(relatives)):
        try:
            path = contained_path(root, relative)
        except ValueError:
            continue
        if os.path.isfile(path) or os.path.islink(path):
            os.remove(path)


def _remove_empty_folders(root: str) -> None:
    """Folders left empty by removals (a test set that no longer exists...); never ``root`` itself."""
    for folder, _, names in os.walk(root, topdown=False):
        if folder != root and not names and not os.listdir(folder):
            os.rmdir(folder)


def _write_job(job: CaseJob, place, labels, settings, channels, writer, label_values, steps: _Steps) -> dict:
    """Write one case; return its manifest entry."""
    if steps.cancelled():
        raise ExportCancelledError("export cancelled")
    data, summary = prepare_case(job, labels, settings, channels, label_values)
    records = writer.write_case(place, data, job.subset, settings.compression_level)
    files = sorted({path for record in records for path in (*record["images"].values(), record["label"])})
    return {
        "fingerprint": job.fingerprint,
        "placement": writer.placement(job.subset),
        "files": {path: os.path.getsize(contained_path(place.root, path)) for path in files},
        "records": records,
        "geometry": geometry(data.frames[0][1]),
        "summary": summary_to_json(summary),
    }


class _Place:
    """The journal's ``record``, with the export folder at hand: ``place(relatives) -> absolute paths``."""

    def __init__(self, journal: Journal) -> None:
        self.root = journal.root
        self._journal = journal

    def __call__(self, relatives: Sequence[str]) -> list:
        return self._journal.record(relatives)


def _write_cases(to_write: Sequence[CaseJob], place: _Place, labels, settings, channels, writer, label_values,
                 workers: int, steps: _Steps) -> list:
    done = []

    def written(index: int) -> None:
        done.append(index)
        steps.tell(0.1 + 0.8 * len(done) / len(to_write),
                   f"wrote case {to_write[index].case.case_id} ({len(done)} of {len(to_write)})")

    with _itk_threads_for(workers):
        return _parallel(
            lambda job: _write_job(job, place, labels, settings, channels, writer, label_values, steps),
            to_write,
            workers,
            written,
        )


# --- the export ----------------------------------------------------------------------------------------------


@dataclass
class _Run:
    """What one export knows once validated and planned."""

    root: str
    manifest: dict | None
    settings_hash: str
    split: DatasetSplit
    jobs: list
    entries: dict  # case id -> manifest entry of the unchanged cases (then of all)
    to_write: list


# Settings that change only the index files (dataset.json), never a case's files: changing them rewrites no case.
_INDEX_ONLY_SETTINGS = ("dataset_id", "dataset_name", "channel_names")


def _settings_hash(settings: ExportSettings, labels: Sequence) -> str:
    """The part of every case's fingerprint that comes from the settings and the schema."""
    case_settings = {key: value for key, value in settings.to_json().items() if key not in _INDEX_ONLY_SETTINGS}
    return _json_sha256(
        [
            ENGINE_VERSION,
            case_settings,
            _schema_pairs(labels),
            [schema_terminology_key(label.terminology) for label in labels],
        ]
    )


def _validated_request(cases: Sequence[Case], request: _Request, output_dir: str) -> tuple:
    """``(export folder, earlier manifest)``; raises :class:`ExportError` listing every problem."""
    problems = [("", message) for message in _request_problems(cases, request)]
    if problems:
        raise ExportError(problems)
    root, manifest, folder_problems = _folder_problems(output_dir, request.settings)
    problems = [("", message) for message in folder_problems] + _case_list_problems(cases)
    if not problems:
        problems = _size_problems(cases, request.settings)
    if problems:
        raise ExportError(problems)
    return root, manifest


def _size_problems(cases: Sequence[Case], settings: ExportSettings) -> list:
    """Cases a target spacing would make absurdly large, found from their headers alone (a typo such as
    0.001 mm is refused at once; :func:`~TrainingDataExportLib.checks.inspect_case` checks the same later)."""
    if settings.spacing is None:
        return []
    problems = []
    for case in cases:
        if not case.annotated:
            continue
        reader = sitk.ImageFileReader()
        reader.SetFileName(next(iter(case.images.values())))
        try:
            reader.ReadImageInformation()
        except RuntimeError:
            continue  # an unreadable image is reported by the case checks
        problem = resampled_size_problem(reader, settings.spacing)
        if problem:
            problems.append((case.case_id, problem))
    return problems


def _planned_run(annotated: Sequence[Case], request: _Request, root: str, manifest, steps: _Steps,
                 report: ExportReport) -> _Run:
    """Hash and check the cases and split them; raises :class:`ExportError`."""
    labels, settings, split, workers = request.labels, request.settings, request.split, request.workers
    channels = tuple(annotated[0].images)
    settings_hash = _settings_hash(settings, labels)
    previous_cases = (manifest or {}).get("cases", {})
    hashes = _hash_inputs(annotated, workers, steps)
    fingerprints = {case.case_id: _case_fingerprint(settings_hash, channels, case, hashes) for case in annotated}
    # Cases exported before with the same inputs and settings were checked then; the rest are checked now.
    strata = {}
    for case in annotated:
        previous = previous_cases.get(case.case_id, {})
        known = _previous_labels(previous) if previous.get("fingerprint") == fingerprints[case.case_id] else None
        if known is not None:
            strata[case.case_id] = known
    to_check = [case for case in annotated if case.case_id not in strata]
    problems, warnings, present = _check_cases(to_check, labels, settings, workers, steps)
    report.warnings += warnings
    strata.update(present)
    if split is not None:
        split, split_problems = _restricted_split(split, [case.case_id for case in annotated])
        problems += split_problems
    if problems:
        raise ExportError(problems)
    if split is None:
        try:
            split = split_by_patient(annotated, folds=request.folds, test_fraction=request.test_fraction,
                                     seed=request.seed, strata=strata)
        except ValueError as error:
            raise ExportError([("", f"cannot split the cases: {error}")]) from None
    jobs = [
        CaseJob(
            case=case,
            inputs={path: hashes[path] for path in _case_inputs(case)},
            fingerprint=fingerprints[case.case_id],
            subset=split.subset_of(case.case_id),
            fold=split.validation_fold_of(case.case_id),
        )
        for case in sorted(annotated, key=lambda case: case.case_id)
    ]
    return _Run(root, manifest, settings_hash, split, jobs, {}, [])


def _plan_writes(run: _Run, writer, untrusted: set, report: ExportReport) -> None:
    """Split ``run.jobs`` into the unchanged cases (their entries kept) and those to write."""
    previous_cases = (run.manifest or {}).get("cases", {})
    for job in run.jobs:
        previous = previous_cases.get(job.case.case_id)
        if _is_unchanged(previous, job, run.root, writer, untrusted):
            summary = dict(previous["summary"], subset=job.subset, validation_fold=job.fold)
            run.entries[job.case.case_id] = dict(previous, summary=summary)
            report.unchanged.append(job.case.case_id)
        else:
            run.to_write.append(job)


def _manifest_data(run: _Run, settings: ExportSettings, index_files: Sequence[str]) -> dict:
    return {
        "tool": "SlicerDeepLearning TrainingDataExport",
        "format": settings.format,
        "settings": settings.to_json(),
        "settings_sha256": run.settings_hash,
        "split": run.split.to_json(),
        "index_files": sorted(index_files),
        "cases": run.entries,
    }


def _nnunet_card_notes(labels, settings, channels, root) -> tuple:
    """``(card settings to add, warnings)`` of an nnU-Net export: its folder, label values, channel names."""
    if settings.format != "nnunet":
        return {}, []
    values = consecutive_label_values([value for value, _ in labels])
    names, _, warning = nnunet_channel_names(settings, channels)
    notes = {"nnunet_dataset": os.path.basename(root), "nnunet_channel_names": list(names)}
    warnings = [warning] if warning else []
    renumbered = {str(old): new for old, new in values.items() if old != new}
    if renumbered:
        notes["nnunet_label_values"] = {str(old): new for old, new in values.items()}
        warnings.append(
            "nnU-Net needs consecutive label values: the exported label maps hold "
            + ", ".join(f"{old} as {new}" for old, new in renumbered.items())
            + " (dataset.json names them)"
        )
    return notes, warnings


def _finish(run: _Run, place: _Place, request: _Request, channels: tuple, report: ExportReport) -> list:
    """Write the index files and the dataset card; return their paths relative to the export folder."""
    settings = request.settings
    index_entries = [
        formats.IndexEntry(
            case_id=job.case.case_id,
            patient_id=job.case.patient_id,
            subset=job.subset,
            fold=job.fold,
            records=tuple(run.entries[job.case.case_id]["records"]),
            geometry=run.entries[job.case.case_id]["geometry"],
        )
        for job in run.jobs
    ]
    pairs = _schema_pairs(request.labels)
    index_files = formats.write_index(run.root, place, index_entries, run.split, channels, pairs, settings)
    report.summaries = [summary_from_json(run.entries[job.case.case_id]["summary"]) for job in run.jobs]
    notes, nnunet_warnings = _nnunet_card_notes(pairs, settings, channels, run.root)
    report.warnings = report.warnings + nnunet_warnings + card_warnings(report.summaries, pairs)
    card_settings = dict(settings.to_json(), folds=request.folds, test_fraction=request.test_fraction,
                         seed=run.split.seed, **notes)
    write_dataset_card(run.root, report.summaries, pairs, run.split, card_settings, report.warnings, place=place)
    return index_files + card_file_names()


def export_dataset(
    cases: Sequence[Case],
    labels: Sequence,
    output_dir: str,
    settings: ExportSettings,
    *,
    split: DatasetSplit | None = None,
    folds: int = 5,
    test_fraction: float = 0.2,
    seed: int = 0,
    workers: int = 0,
    progress: Callable[[float, str], None] | None = None,
    cancel: threading.Event | None = None,
) -> ExportReport:
    """Export ``cases`` (see the module description) and return what was done.

    Args:
        cases: the case list (:class:`~TrainingDataExportLib.caselist.Case`); cases without a segmentation
            are skipped.
        labels: the label schema (``ModelRegistryLib.index.Label`` objects, see
            :func:`~TrainingDataExportLib.labelschema.load_label_schema`).
        output_dir: the output folder (for nnU-Net, ``nnUNet_raw`` or a ``DatasetNNN_Name`` folder).
        settings: how to write (:class:`~TrainingDataExportLib.settings.ExportSettings`).
        split: a fixed split holding every annotated case; otherwise one is made with ``folds``,
            ``test_fraction`` and ``seed``.
        workers: threads writing cases (0: up to 4, one per processor).
        progress: ``progress(fraction, message)``, called from the calling thread as each case is checked and
            written.
        cancel: an event; setting it stops the export (:class:`ExportCancelledError`).

    Raises :class:`ExportError` listing every problem before anything is written, ``OSError`` when a write
    fails (a full disk: the next export finishes the folder).
    """
    started = time.perf_counter()
    output_dir = os.path.abspath(os.fspath(output_dir))
    cases = list(cases)
    request = _Request(tuple(labels), settings, split, folds, test_fraction, seed, workers)
    steps = _Steps(progress, cancel)
    report = ExportReport(output_dir=output_dir)
    root, manifest = _validated_request(cases, request, output_dir)
    annotated = [case for case in cases if case.annotated]
    report.skipped = {case.case_id: "not annotated" for case in cases if not case.annotated}
    if report.skipped:
        skipped = ", ".join(sorted(report.skipped))
        report.warnings.append(f"{len(report.skipped)} unannotated case(s) skipped: {skipped}")
    if not annotated:
        raise ExportError([("", "no case is annotated: there is nothing to export")])
    request = dataclasses.replace(request, workers=workers or min(os.cpu_count() or 1, 4))
    run = _planned_run(annotated, request, root, manifest, steps, report)
    _write_run(run, request, tuple(annotated[0].images), steps, report)
    report.written.sort()
    report.seconds = time.perf_counter() - started
    if progress is not None:
        progress(1.0, f"exported {len(run.jobs)} case(s) to {root}")
    return report


def _write_run(run: _Run, request: _Request, channels: tuple, steps: _Steps, report: ExportReport) -> None:
    """Write what ``run`` needs into its folder, through the journal, and the manifest last (see the module
    description)."""
    root, manifest, settings = run.root, run.manifest, request.settings
    os.makedirs(root, exist_ok=True)
    if manifest is None:
        # Claims the new folder, so that a re-run after a cancel or a crash knows it as ours.
        write_manifest(root, _manifest_data(run, settings, []))
    remove_temporary_files(root)
    journal = Journal(root)
    untrusted = journal.pending()
    writer = formats.format_for(settings)
    _plan_writes(run, writer, untrusted, report)
    previous = list((manifest or {}).get("index_files", [])) + [
        path for entry in (manifest or {}).get("cases", {}).values() for path in entry["files"]
    ]
    try:
        # A folder whose export is under way never looks finished: no index, no card until the end.
        _remove_files(root, [*formats.index_file_names(settings, run.split), *card_file_names(),
                             *(manifest or {}).get("index_files", [])])
        place = _Place(journal)
        label_values = consecutive_label_values([int(label.value) for label in request.labels]) \
            if settings.format == "nnunet" else None
        written = _write_cases(run.to_write, place, request.labels, settings, channels, writer, label_values,
                               request.workers, steps)
        for job, entry in zip(run.to_write, written):
            run.entries[job.case.case_id] = entry
            report.written.append(job.case.case_id)
        steps.tell(0.92, "writing the index files and the dataset card")
        own_files = _finish(run, place, request, channels, report)
        kept = {path for entry in run.entries.values() for path in entry["files"]} | set(own_files) | set(OWN_FILES)
        _remove_files(root, (set(previous) | untrusted | journal.pending()) - kept)
        _remove_empty_folders(root)
        write_manifest(root, _manifest_data(run, settings, own_files))
    finally:
        journal.close()
    journal.remove()

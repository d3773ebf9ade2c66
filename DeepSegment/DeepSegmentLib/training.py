"""Training a 3D segmentation network from annotated cases, into a model in the registry.

:func:`train` goes from an export written by TrainingDataExport, or a case list, to a model Deep Segment runs:

1. **Data** (``training_data``): the cases with their patients; the fold's training patients train, its
   validation patients validate (or a share of the training patients drawn by patient when there are no folds),
   and the test patients are held out for the final evaluation. No test patient's voxels reach the statistics,
   the batches or the choice of the best epoch.
2. **Preprocessing** (``training_samples``): the training cases on the model grid through the engine's own
   steps (spacing, RAS orientation, normalization), dataset statistics from the training cases only. The spacing
   is the training cases' median unless given; the patch the median case's size, within a voxel budget.
3. **Network** (``training_networks``): MONAI's U-Net or SegResNet, or an installed registry model fine-tuned.
4. **Loop**: AdamW with a learning-rate schedule (``poly``, nnU-Net's, by default), cross-entropy plus Dice loss,
   mixed precision where the device computes it natively (bfloat16 autocast on CPUs with AMX or AVX-512 BF16,
   float16 with loss scaling on CUDA). After every ``validation_interval`` epochs the validation cases are
   segmented through the engine itself (``engine.segment`` with the model's contract: the model is judged on what
   its users will run) and their mean Dice decides the best epoch and early stopping (``patience`` validations
   without improvement).
5. **Checkpoints**: after every epoch one file (``checkpoint.pt``) holds the network, the best network, the
   optimizer, the schedule, the loss scaler, the random state and the history, written atomically. A training
   started again with the same settings into the same folder continues from it; since every sample is drawn
   from its own seed (``training_samples``), a resumed training gives the same result as an uninterrupted one on
   the CPU, bit for bit.
6. **Result** (``training_publish``): the best network is exported (``torch.export`` with a dynamic batch; a
   fine-tuned TorchScript model stays TorchScript), written as a package whose ``model.json`` holds the exact
   preprocessing, run by the engine on every test case, evaluated (``evaluation_cohort``), and published into a
   local registry index that becomes one of the user's sources, with its card.

Everything is seeded: the same settings and seed give the same loss curve on the CPU. Progress goes to
``progress(fraction, text)``, lines to ``log(text)``, each finished epoch to ``on_epoch(record)``; a
``threading.Event`` cancels between steps (the last checkpoint stays, so the training can be continued).
:func:`train_job` is the form a worker process runs (``ModelRegistryLib.jobs``): epochs come back as log lines of
level :data:`EPOCH_LOG_LEVEL` holding the record as JSON.

Example (a settings check; a training takes minutes, see the tests)::

    >>> settings = TrainingSettings(data="cases.csv", output="run", epochs=0)
    >>> try:
    ...     check_settings(settings)
    ... except TrainingError as error:
    ...     print(error)
    epochs must be 1 or more, not 0
    >>> TrainingSettings.from_json(settings.to_json()) == settings
    True
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from ModelRegistryLib.errors import CancelledError, RegistryError
from ModelRegistryLib.files import atomic_target, probe_writable, remove_temporary_files, write_json_atomically
from ModelRegistryLib.index import model_spec_problem

from .training_data import (
    DEFAULT_FOLDS,
    DEFAULT_TEST_FRACTION,
    DEFAULT_VALIDATION_FRACTION,
    TrainingData,
    TrainingDataError,
    data_summary,
    read_case_images,
    read_case_labels,
    read_training_data,
    reference_label_map,
)
from .training_networks import NetworkError, NetworkSettings, describe, size_divisor
from .training_publish import (
    PublishError,
    default_registry_folder,
    model_contract,
    model_entry,
    model_id_from,
    next_version,
    publish,
    version_problem,
)
from .training_samples import NORMALIZATIONS, PreparationError

CHECKPOINT_NAME = "checkpoint.pt"
STATE_NAME = "training.json"
PREPARED_FOLDER = "prepared"
PACKAGE_FOLDER = "package"
EVALUATION_FOLDER = "evaluation"
EPOCH_LOG_LEVEL = "epoch"
SCHEDULES = ("poly", "cosine", "constant")
PRECISIONS = ("auto", "float32")
ORIENTATION = "RAS"
# Voxels in a patch the planner aims at: what a step computes on in reasonable time on each kind of device.
PATCH_VOXELS = {"cuda": 128 ** 3, "cpu": 64 ** 3, "mps": 96 ** 3}
# nnU-Net's poly schedule exponent.
POLY_EXPONENT = 0.9
# Settings that do not change what a training computes: a training may continue with other values of these.
_RESUMABLE_CHANGES = ("device", "threads", "model_id", "title", "version", "registry", "cache_dir")
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


class TrainingError(ValueError):
    """A training that cannot start or go on; the message says why, in one line."""


class TrainingCancelledError(CancelledError):
    """The training was cancelled; its last checkpoint stays, so the same settings continue it."""


@dataclass(frozen=True)
class TrainingSettings:
    """What to train, how, and where the result goes (JSON-able: :meth:`to_json`).

    Data: ``data`` (an export folder or index file, or a case list), ``labels`` (a label schema file, for the
    labels' colors and terminology; a case list's default is ``labels.json`` beside it), ``fold`` (the export's
    fold; None: draw ``validation_fraction`` of the training patients), and for a case list ``folds``,
    ``test_fraction`` and ``split_seed`` as an export takes them. Network: ``network``. Loop: ``epochs``,
    ``steps_per_epoch``, ``batch_size``, ``patch_size`` (x, y, z voxels; None: planned), ``spacing`` (x, y, z mm;
    None: the training cases' median), ``normalization`` (``auto``: CT channels with dataset statistics, others
    z-score per image; or one of ``training_samples.NORMALIZATIONS`` for all), ``learning_rate``,
    ``weight_decay``, ``schedule``, ``patience`` (validations without improvement before stopping; 0: never),
    ``validation_interval`` (epochs), ``foreground_fraction`` (patches centred on a label), ``augment`` and
    ``augmentation`` (``AugmentationSettings.to_dict()`` form; None: its defaults), ``device``, ``precision``
    (``auto``: reduced where native; ``float32``), ``threads`` (0: PyTorch's choice), ``seed``. Result:
    ``output`` (the training's folder), ``model_id``, ``title``, ``version`` (defaults from the data and the
    index), ``registry`` (the folder of the local index; "" is ``<cache>/trained-models``), ``cache_dir``.
    """

    data: str
    output: str
    labels: str = ""
    fold: int | None = 0
    validation_fraction: float = DEFAULT_VALIDATION_FRACTION
    folds: int = DEFAULT_FOLDS
    test_fraction: float = DEFAULT_TEST_FRACTION
    split_seed: int = 0
    network: NetworkSettings = field(default_factory=NetworkSettings)
    epochs: int = 100
    steps_per_epoch: int = 50
    batch_size: int = 2
    patch_size: tuple | None = None
    spacing: tuple | None = None
    normalization: str = "auto"
    learning_rate: float = 1e-3
    weight_decay: float = 1e-5
    schedule: str = "poly"
    patience: int = 10
    validation_interval: int = 1
    foreground_fraction: float = 1 / 3
    augment: bool = True
    augmentation: dict | None = None
    device: str = "auto"
    precision: str = "auto"
    threads: int = 0
    seed: int = 0
    model_id: str = ""
    title: str = ""
    version: str = ""
    registry: str = ""
    cache_dir: str = ""

    def __post_init__(self) -> None:
        for name in ("patch_size", "spacing"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(value))
        if isinstance(self.network, dict):
            object.__setattr__(self, "network", NetworkSettings(**self.network))

    def to_json(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_json(cls, document: dict) -> TrainingSettings:
        return cls(**document)


@dataclass
class TrainingResult:
    """A finished training: the model's id and version, the index it is listed in, the package folder, how the
    training went (``history``: one record per epoch; ``best_epoch``; why it ``stopped``), the held-out
    evaluation (``test_dice``: mean Dice per label name; ``evaluation``: the report folder), the time, the
    device and precision, and the epoch it was resumed from (0: started afresh)."""

    model_id: str
    version: str
    index: str
    package: str
    history: list
    best_epoch: int
    stopped: str
    test_dice: dict
    evaluation: str
    seconds: float
    device: str
    precision: str
    resumed_from: int = 0


# --- settings ---------------------------------------------------------------------------------------------


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise TrainingError(message)


def check_settings(settings: TrainingSettings) -> None:
    """Raise :class:`TrainingError` for settings that cannot work, before any file is read."""
    s = settings
    _check(s.epochs >= 1, f"epochs must be 1 or more, not {s.epochs}")
    _check(s.steps_per_epoch >= 1, f"steps per epoch must be 1 or more, not {s.steps_per_epoch}")
    _check(s.batch_size >= 1, f"the batch size must be 1 or more, not {s.batch_size}")
    _check(math.isfinite(s.learning_rate) and s.learning_rate > 0, f"the learning rate must be positive, not "
                                                                    f"{s.learning_rate}")
    _check(math.isfinite(s.weight_decay) and s.weight_decay >= 0, "the weight decay must be 0 or more")
    _check(s.patience >= 0, f"patience must be 0 (never stop early) or more, not {s.patience}")
    _check(s.validation_interval >= 1, "the validation interval must be 1 epoch or more")
    _check(0 <= s.foreground_fraction <= 1, "the foreground fraction must be between 0 and 1")
    _check(0 < s.validation_fraction < 1, "the validation fraction must be between 0 and 1")
    _check(s.schedule in SCHEDULES, f"unknown schedule {s.schedule!r}: use {', '.join(SCHEDULES)}")
    _check(s.normalization in NORMALIZATIONS, f"unknown normalization {s.normalization!r}: use "
                                              f"{', '.join(NORMALIZATIONS)}")
    _check(s.precision in PRECISIONS, f"unknown precision {s.precision!r}: use {' or '.join(PRECISIONS)}")
    _check(bool(_DEVICE.match(s.device.strip().lower())), f"unknown device {s.device!r}: use auto, cpu, cuda, "
                                                          "cuda:N or mps")
    _check(s.threads >= 0, "threads must be 0 (PyTorch's choice) or more")
    _check(s.fold is None or s.fold >= 0, "the fold must be 0 or more")
    divisor = size_divisor(s.network)
    if s.patch_size is not None:
        _check(len(s.patch_size) == 3 and all(int(n) == n and n >= 1 for n in s.patch_size),
               "the patch size must be three whole numbers of voxels (x, y, z)")
        _check(all(int(n) % divisor == 0 for n in s.patch_size),
               f"every patch side must be a multiple of {divisor} (the network halves it that often)")
    if s.spacing is not None:
        _check(len(s.spacing) == 3 and all(math.isfinite(v) and v > 0 for v in s.spacing),
               "the spacing must be three positive numbers (x, y, z) in mm")
    _check(bool(s.data) and os.path.exists(s.data), f"training data not found: {s.data}")
    _check(bool(s.output) and not os.path.isfile(s.output), f"the output must be a folder: {s.output}")
    _check(not s.model_id or not model_spec_problem(s.model_id), model_spec_problem(s.model_id))
    if s.augment and s.augmentation is not None:
        from TrainingDataExportLib.augmentation import AugmentationSettings

        try:
            AugmentationSettings.from_dict(s.augmentation)
        except (ValueError, TypeError) as error:
            raise TrainingError(f"augmentation: {error}") from None


def _comparable(settings: TrainingSettings) -> dict:
    document = settings.to_json()
    for name in _RESUMABLE_CHANGES:
        document.pop(name)
    return document


# --- the loss ---------------------------------------------------------------------------------------------


def dice_ce_loss(logits, classes):
    """Cross-entropy plus one minus the soft Dice of the labels (the background left out) over the batch: the
    sum nnU-Net and MONAI's ``DiceCELoss`` train with.

    >>> import torch
    >>> classes = torch.zeros(1, 4, 4, 4, dtype=torch.long); classes[0, 1:3, 1:3, 1:3] = 1
    >>> perfect = torch.nn.functional.one_hot(classes, 2).permute(0, 4, 1, 2, 3).float() * 40 - 20
    >>> round(float(dice_ce_loss(perfect, classes)), 4)
    0.0
    """
    import torch
    from torch.nn import functional

    probabilities = torch.softmax(logits, dim=1)
    onehot = functional.one_hot(classes, logits.shape[1]).permute(0, 4, 1, 2, 3).to(probabilities.dtype)
    dims = (0, 2, 3, 4)
    intersection = (probabilities * onehot).sum(dims)
    total = probabilities.sum(dims) + onehot.sum(dims)
    dice = (2 * intersection + 1e-5) / (total + 1e-5)
    return functional.cross_entropy(logits, classes) + 1 - dice[1:].mean()


def training_step(module, optimizer, scaler, images, classes, device_type: str, autocast: str,
                  loss_function: Callable = dice_ce_loss) -> float:
    """One optimization step on a batch: the forward pass under autocast to ``autocast`` (``""``: float32), the
    loss (``loss_function(logits, classes)``, default cross-entropy plus Dice) in float32, the backward pass
    (scaled by ``scaler``, a ``GradScaler``, for float16) and the update. Returns the loss."""
    import torch

    dtype = getattr(torch, autocast) if autocast else None
    with torch.autocast(device_type, dtype=dtype, enabled=dtype is not None):
        logits = module(images)
    loss = loss_function(logits.float(), classes)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    return float(loss.detach())


def _schedule(name: str, epochs: int) -> Callable[[int], float]:
    if name == "poly":
        return lambda epoch: (1 - min(epoch, epochs) / epochs) ** POLY_EXPONENT
    if name == "cosine":
        return lambda epoch: 0.5 * (1 + math.cos(math.pi * min(epoch, epochs) / epochs))
    return lambda epoch: 1.0


# --- validation ---------------------------------------------------------------------------------------------


def dice_per_label(reference, predicted, labels: int) -> list:
    """Dice of each class 1..``labels`` between two class-index arrays; NaN where both lack the class.

    >>> dice_per_label(np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2]), 2)
    [0.6666666666666666, 0.6666666666666666]
    """
    counts = np.bincount(reference.ravel().astype(np.int64) * (labels + 1) + predicted.ravel().astype(np.int64),
                         minlength=(labels + 1) ** 2).reshape(labels + 1, labels + 1)
    scores = []
    for k in range(1, labels + 1):
        both, total = counts[k, k], counts[k, :].sum() + counts[:, k].sum()
        scores.append(float(2 * both / total) if total else float("nan"))
    return scores


def _finite_or_none(value: float):
    return None if value is None or not math.isfinite(value) else float(value)


class _Validator:
    """Segments the validation cases through the engine with the model's contract and scores them."""

    def __init__(self, data: TrainingData, case_ids, package, compute, precision: str) -> None:
        import SimpleITK as sitk

        self.package, self.compute, self.precision = package, compute, precision
        self.labels = len(data.labels)
        self.lookup = np.zeros(max(label.value for label in data.labels) + 1, np.uint8)
        for index, label in enumerate(data.labels, start=1):
            self.lookup[label.value] = index
        self.names = [label.name for label in data.labels]
        self.cases = []
        for case_id in case_ids:
            case = data.case(case_id)
            images = read_case_images(case)
            reference = sitk.GetArrayFromImage(read_case_labels(data, case, images[0]))
            self.cases.append((images, reference))

    def __call__(self, trainable, cancel) -> tuple:
        """(mean Dice over the cases' labels, mean Dice per label name)."""
        import SimpleITK as sitk

        from .engine import EngineCancelled, segment

        trainable.set_training(False)
        scores = []
        try:
            for images, reference in self.cases:
                result = segment(images, self.package, trainable.module, device=self.compute,
                                 precision=self.precision, mirror_axes=(), cancel=cancel)
                predicted = self.lookup[sitk.GetArrayViewFromImage(result.labels)]
                scores.append(dice_per_label(reference, predicted, self.labels))
        except EngineCancelled:
            raise TrainingCancelledError("training cancelled") from None
        finally:
            trainable.set_training(True)
        table = np.array(scores, dtype=np.float64)
        per_label = {name: _finite_or_none(np.nanmean(table[:, k]) if np.isfinite(table[:, k]).any() else None)
                     for k, name in enumerate(self.names)}
        mean = _finite_or_none(np.nanmean(table)) if np.isfinite(table).any() else None
        return mean, per_label


# --- planning ---------------------------------------------------------------------------------------------


def _header_grids(data: TrainingData, case_ids, spacing, orientation: str) -> list:
    """The model grid of each case's first image, from its header alone."""
    from TrainingDataExportLib.imagefiles import read_image_information

    from .resample import model_grid

    grids = []
    for case_id in case_ids:
        try:
            header = read_image_information(data.case(case_id).images[0])
        except (OSError, ValueError) as error:
            raise TrainingError(f"case {case_id}: {error}") from None
        grids.append(model_grid(header, spacing, orientation))
    return grids


def plan_spacing(data: TrainingData, case_ids) -> tuple:
    """The training cases' median spacing along the model axes (x, y, z), rounded to 0.01 mm."""
    spacings = [grid.spacing for grid in _header_grids(data, case_ids, None, ORIENTATION)]
    return tuple(round(statistics.median(values), 2) for values in zip(*spacings))


def plan_patch_size(sizes, divisor: int, budget: int) -> tuple:
    """A patch (x, y, z voxels): the median case size rounded up to multiples of ``divisor``, its largest sides
    shortened by ``divisor`` until it holds at most ``budget`` voxels.

    >>> plan_patch_size([(200, 180, 60), (220, 190, 70)], 16, 64 ** 3)  # the median, 224×192×80, shortened
    (64, 64, 64)
    >>> plan_patch_size([(40, 50, 20)], 16, 64 ** 3)  # a small case: rounded up, within the budget
    (48, 64, 32)
    """
    median = [statistics.median(values) for values in zip(*sizes)]
    patch = [max(divisor, math.ceil(value / divisor) * divisor) for value in median]
    while math.prod(patch) > budget and max(patch) > divisor:
        largest = patch.index(max(patch))
        patch[largest] -= divisor
    return tuple(int(n) for n in patch)


# --- the state of a training ------------------------------------------------------------------------------


def _read_state(output: str) -> dict | None:
    try:
        with open(os.path.join(output, STATE_NAME), encoding="utf-8") as file:
            return json.load(file)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise TrainingError(f"cannot read {os.path.join(output, STATE_NAME)}: {error}; delete the folder or choose "
                            "another") from None


def _start_state(settings: TrainingSettings, partition, output: str) -> dict:
    """The training's state file: a new one, or the one of the training this continues (same settings)."""
    state = _read_state(output)
    sides = {"train": list(partition.train), "validation": list(partition.validation), "test": list(partition.test)}
    if state is None:
        if os.path.isdir(output) and [name for name in os.listdir(output) if not name.startswith(".")]:
            raise TrainingError(f"{output} is not empty and holds no training: choose an empty or new folder")
        return {"settings": settings.to_json(), "partition": sides, "history": [], "finished": None}
    if state.get("finished"):
        raise TrainingError(f"{output} holds a finished training ({state['finished'].get('model_id')} "
                            f"{state['finished'].get('version')}): choose another folder")
    before = _comparable(TrainingSettings.from_json(state["settings"]))
    changed = sorted(name for name, value in _comparable(settings).items() if before.get(name) != value)
    if changed:
        raise TrainingError(f"{output} holds a training with other settings ({', '.join(changed)}): continue it with "
                            "the same settings, or choose another folder")
    if state.get("partition") != sides:
        raise TrainingError(f"the cases of {settings.data} changed since the training in {output} started: choose "
                            "another folder")
    return {**state, "settings": settings.to_json()}


def _save_checkpoint(path: str, content: dict) -> None:
    import torch

    with atomic_target(path) as temporary:
        torch.save(content, temporary)


def _load_checkpoint(path: str):
    import torch

    if not os.path.isfile(path):
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a damaged file can fail in many ways; it is never half-written by us
        raise TrainingError(f"cannot read the checkpoint {path}: {error}") from None


# --- the run ----------------------------------------------------------------------------------------------


class _Run:
    """One training: settings, data, device, network, optimizer, and the loop's state (see the module)."""

    def __init__(self, settings: TrainingSettings, progress, log, cancel, on_epoch) -> None:
        self.settings = settings
        self.progress = progress or (lambda fraction, text: None)
        self.log = log or (lambda text, level="info": None)
        self.cancel = cancel
        self.on_epoch = on_epoch or (lambda record: None)
        self.output = os.path.abspath(settings.output)
        self.cache_dir = settings.cache_dir or _default_cache_dir()

    def cancelled(self) -> bool:
        return self.cancel is not None and self.cancel.is_set()

    def check_cancel(self) -> None:
        if self.cancelled():
            raise TrainingCancelledError("training cancelled; start it again with the same settings to continue")

    # -- set-up --

    def set_up(self) -> None:
        import torch

        from .devices import available_devices, choose_device, reduced_precision

        s = self.settings
        if s.threads:
            torch.set_num_threads(s.threads)
        # Adam drives some weights towards denormal numbers, which make CPU arithmetic many times slower.
        torch.set_flush_denormal(True)
        try:
            self.compute = choose_device(s.device, available_devices())
        except ValueError as error:
            raise TrainingError(str(error)) from None
        self.autocast = reduced_precision(self.compute) if s.precision == "auto" else ""
        self.data = read_training_data(s.data, s.labels, folds=s.folds, test_fraction=s.test_fraction,
                                       seed=s.split_seed)
        self.partition = self.data.partition(s.fold, s.validation_fraction, s.seed)
        os.makedirs(self.output, exist_ok=True)
        try:
            probe_writable(self.output)
        except OSError as error:
            raise TrainingError(f"cannot write into {self.output}: {error.strerror or error}") from None
        self.state = _start_state(s, self.partition, self.output)
        remove_temporary_files(self.output)  # what a killed write left; the files it was replacing stand
        write_json_atomically(os.path.join(self.output, STATE_NAME), self.state)
        self.model_id = s.model_id or model_id_from(_dataset_name(self.data))
        self.registry_folder = os.path.abspath(s.registry or default_registry_folder(self.cache_dir))
        problem = version_problem(os.path.join(self.registry_folder, "index.json"), self.model_id, s.version)
        if problem:
            raise TrainingError(problem)
        self.log(f"{len(self.partition.train)} training, {len(self.partition.validation)} validation and "
                 f"{len(self.partition.test)} test case(s) ({_patients(self.data, self.partition)}); "
                 f"{self.compute.description}, {self.autocast or 'float32'}")

    def set_up_network(self) -> None:
        """The network, and the preprocessing and contract that go with it."""
        import torch

        from .package import PackageError, load_package
        from .training_networks import Trainable, build_network, load_base_network

        s, data = self.settings, self.data
        if s.network.base_model:
            from .cli import open_registry

            try:
                installed = open_registry([], self.cache_dir).ensure_installed(s.network.base_model)
                base = load_package(installed.path)
                self.trainable = load_base_network(base, len(data.channels), len(data.labels), "cpu")
            except (RegistryError, PackageError, LookupError) as error:
                raise TrainingError(f"the model to fine-tune, {s.network.base_model}: {error}") from None
            with open(os.path.join(base.folder, "model.json"), encoding="utf-8") as file:
                base_contract = json.load(file)
            self.spacing = base.preprocessing.spacing
            self.orientation = base.preprocessing.orientation
            self.normalization = list(base_contract["preprocessing"]["normalization"])
            self.patch_size = tuple(base.inference.patch_size)
            self.mirror_axes = tuple(base.inference.mirror_axes)
        else:
            from .training_samples import channel_normalizations, per_image_normalization

            self.orientation = ORIENTATION
            self.spacing = s.spacing or plan_spacing(data, self.partition.train)
            sizes = [grid.size for grid in _header_grids(data, self.partition.train, self.spacing, ORIENTATION)]
            budget = PATCH_VOXELS.get(self.compute.kind, PATCH_VOXELS["cpu"])
            self.patch_size = s.patch_size or plan_patch_size(sizes, size_divisor(s.network), budget)
            kinds = channel_normalizations(s.normalization, data.modalities)
            self.normalization = [kind if kind == "dataset" else per_image_normalization(kind) for kind in kinds]
            flips = (self._augmentation() or _NoFlips).flip_probability
            self.mirror_axes = tuple(axis for axis in range(3) if flips[axis] > 0)
            torch.manual_seed(s.seed)
            try:
                module = build_network(s.network, len(data.channels), len(data.labels) + 1)
            except NetworkError as error:
                raise TrainingError(str(error)) from None
            self.trainable = Trainable(module, "torch.export")
        self.trainable.module.to(self.compute.torch_name)
        self.log(f"network: {describe(s.network)}; spacing {self.spacing} mm, patch {self.patch_size} voxels")

    def _augmentation(self):
        if not self.settings.augment:
            return None
        from TrainingDataExportLib.augmentation import AugmentationSettings

        return AugmentationSettings.from_dict(self.settings.augmentation or {})

    def contract(self, normalization: list, training: dict | None = None) -> dict:
        return model_contract(
            model_format=self.trainable.publish_format, channels=self.data.channels, modalities=self.data.modalities,
            labels=self.data.labels, spacing=self.spacing, orientation=self.orientation, normalization=normalization,
            patch_size=self.patch_size, batch_size=self.settings.batch_size, mirror_axes=self.mirror_axes,
            training=training or {})

    def prepare(self) -> None:
        """The training cases on the model grid, and the contract the model will be published with."""
        from types import SimpleNamespace

        from .package import parse_contract
        from .training_samples import prepare_cases

        data = self.data
        grid_package = SimpleNamespace(
            inputs=[SimpleNamespace(name=name) for name in data.channels],
            preprocessing=SimpleNamespace(spacing=self.spacing, orientation=self.orientation))

        def read_case(case_id):
            case = data.case(case_id)
            images = read_case_images(case)
            return images, read_case_labels(data, case, images[0])

        request = {"data": data.source, "spacing": list(self.spacing) if self.spacing else None,
                   "orientation": self.orientation, "normalization": self.normalization, "seed": self.settings.seed,
                   "files": [_file_identity(path) for case_id in self.partition.train
                             for path in (*data.case(case_id).images, data.case(case_id).label)]}
        self.log(f"preparing {len(self.partition.train)} training case(s)")
        try:
            self.prepared = prepare_cases(os.path.join(self.output, PREPARED_FOLDER), self.partition.train, read_case,
                                          grid_package, self.normalization, self.settings.seed, request,
                                          progress=lambda fraction, text: self.progress(0.0, text), cancel=self.cancel)
        except InterruptedError:
            raise TrainingCancelledError("training cancelled while preparing the cases") from None
        except PreparationError as error:
            raise TrainingError(str(error)) from None
        self.package = parse_contract(self.contract(self.prepared.normalization),
                                      os.path.join(self.output, PACKAGE_FOLDER), weights_required=False)

    # -- the loop --

    def train(self) -> None:
        import torch

        from .training_samples import PatchSampler

        s = self.settings
        module = self.trainable.module
        optimizer = torch.optim.AdamW(module.parameters(), lr=s.learning_rate, weight_decay=s.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(s.schedule, s.epochs))
        scaler = torch.amp.GradScaler("cuda") if self.autocast == "float16" else None
        checkpoint = _load_checkpoint(os.path.join(self.output, CHECKPOINT_NAME))
        self.early = {"best_dice": None, "best_epoch": 0, "bad_validations": 0, "stopped": ""}
        self.best_network = None
        self.history = []
        self.resumed_from = 0
        sampler = PatchSampler(os.path.join(self.output, PREPARED_FOLDER), self.partition.train,
                               tuple(reversed(self.patch_size)), self.package.preprocessing.spacing,
                               self._augmentation(), foreground_fraction=s.foreground_fraction, seed=s.seed,
                               direction=_grid_direction(self.orientation), device=self.compute.torch_name)
        if checkpoint is not None:
            module.load_state_dict(checkpoint["network"])
            optimizer.load_state_dict(checkpoint["optimizer"])
            scheduler.load_state_dict(checkpoint["scheduler"])
            if scaler is not None and checkpoint.get("scaler"):
                scaler.load_state_dict(checkpoint["scaler"])
            torch.set_rng_state(checkpoint["rng"])
            self.early, self.best_network = checkpoint["early"], checkpoint["best_network"]
            self.history, sampler.drawn = checkpoint["history"], dict(checkpoint["drawn"])
            self.resumed_from = checkpoint["epoch"]
            self.log(f"continuing the training in {self.output} after epoch {self.resumed_from}")
        validator = _Validator(self.data, self.partition.validation, self.package, self.compute, s.precision)
        self.trainable.set_training(True)
        device_type = self.compute.kind if self.compute.kind in ("cuda", "cpu") else "cpu"
        for epoch in range(self.resumed_from, s.epochs):
            if self.early["stopped"]:
                break
            began = time.perf_counter()
            losses = []
            for step in range(s.steps_per_epoch):
                self.check_cancel()
                images, classes, _ = sampler.batch(epoch, step, s.batch_size)
                losses.append(training_step(module, optimizer, scaler, images, classes, device_type, self.autocast))
                self.progress((epoch + (step + 1) / s.steps_per_epoch) / s.epochs,
                              f"epoch {epoch + 1} of {s.epochs}, step {step + 1} of {s.steps_per_epoch}: loss "
                              f"{losses[-1]:.4f}")
            learning_rate = optimizer.param_groups[0]["lr"]
            scheduler.step()
            record = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "learning_rate": learning_rate,
                      "validation_dice": None, "dice": None}
            if (epoch + 1) % s.validation_interval == 0 or epoch + 1 == s.epochs:
                self.progress((epoch + 1) / s.epochs, f"epoch {epoch + 1}: validating")
                record["validation_dice"], record["dice"] = validator(self.trainable, self.cancel)
                self._early_stopping(record, module)
            record["seconds"] = time.perf_counter() - began
            self.history.append(record)
            _save_checkpoint(os.path.join(self.output, CHECKPOINT_NAME), {
                "epoch": epoch + 1, "network": module.state_dict(), "best_network": self.best_network,
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None, "rng": torch.get_rng_state(),
                "early": self.early, "history": self.history, "drawn": sampler.drawn})
            write_json_atomically(os.path.join(self.output, STATE_NAME), {**self.state, "history": self.history,
                                                                          "drawn": sampler.drawn})
            self.on_epoch(record)
            self.log(_epoch_line(record, s.epochs))
        if not self.early["stopped"]:
            self.early["stopped"] = f"{s.epochs} epochs done"
        self.drawn = sampler.drawn
        if self.best_network is not None:
            module.load_state_dict(self.best_network)

    def _early_stopping(self, record: dict, module) -> None:
        dice = record["validation_dice"]
        best = self.early["best_dice"]
        if dice is not None and (best is None or dice > best):
            self.early.update(best_dice=dice, best_epoch=record["epoch"], bad_validations=0)
            self.best_network = {name: value.detach().to("cpu", copy=True)
                                 for name, value in module.state_dict().items()}
            return
        self.early["bad_validations"] += 1
        if self.settings.patience and self.early["bad_validations"] >= self.settings.patience:
            self.early["stopped"] = (f"stopped early after epoch {record['epoch']}: no better validation Dice in "
                                     f"{self.settings.patience} validation(s)")
            self.log(self.early["stopped"])

    # -- the result --

    def training_section(self, seconds: float) -> dict:
        """model.json's and the card's ``training`` section: how the model was made."""
        import torch

        from .training_networks import monai_version

        s = self.settings
        return {
            "trainedWith": "SlicerDeepLearning Deep Segment (DeepSegmentLib.training)",
            "network": describe(s.network),
            "networkSettings": dataclasses.asdict(s.network),
            "epochs": len(self.history),
            "bestEpoch": self.early["best_epoch"],
            "bestValidationDice": self.early["best_dice"],
            "stopped": self.early["stopped"],
            "seconds": round(seconds, 1),
            "device": self.compute.description,
            "precision": self.autocast or "float32",
            "hyperParameters": {
                "optimizer": "AdamW", "learningRate": s.learning_rate, "weightDecay": s.weight_decay,
                "schedule": s.schedule, "epochs": s.epochs, "stepsPerEpoch": s.steps_per_epoch,
                "batchSize": s.batch_size, "patchSize": list(self.patch_size), "patience": s.patience,
                "validationInterval": s.validation_interval, "foregroundFraction": s.foreground_fraction,
                "loss": "cross-entropy + Dice", "seed": s.seed,
                "augmentation": self._augmentation().to_dict() if s.augment else None},
            "normalizationCases": len(self.prepared.statistics_cases),
            "data": data_summary(self.data, self.partition, self.prepared.spacings),
            "software": {"python": platform.python_version(), "torch": torch.__version__.split("+")[0],
                         "monai": monai_version(), "numpy": np.__version__, "platform": sys.platform},
        }

    def write_package(self, training: dict) -> str:
        """The best network as the model's package (weights and model.json) in the output folder."""
        import shutil

        import torch

        from .package import write_package
        from .training_networks import export_program

        folder = os.path.join(self.output, PACKAGE_FOLDER)
        shutil.rmtree(folder, ignore_errors=True)
        module = self.trainable.module.to("cpu")
        self.trainable.set_training(False)
        if self.trainable.publish_format == "torch.export":
            try:
                weights = export_program(module, len(self.data.channels), tuple(reversed(self.patch_size)))
            except NetworkError as error:
                raise TrainingError(str(error)) from None
        else:
            weights = module if isinstance(module, torch.jit.ScriptModule) else torch.jit.script(module)
        write_package(folder, weights, self.contract(self.prepared.normalization, training))
        return folder

    def evaluate(self, package_folder: str) -> tuple:
        """Segment every test case with the written package through the engine and evaluate: (report, seconds per
        case)."""
        from .engine import segment
        from .evaluation_cohort import CasePair, Pairing, evaluate_and_report
        from .imageio import write_labels
        from .package import load_package

        package = load_package(package_folder)
        folder = os.path.join(self.output, EVALUATION_FOLDER)
        pairs, seconds = [], []
        for number, case_id in enumerate(self.partition.test):
            self.check_cancel()
            self.progress(1.0, f"segmenting test case {case_id} ({number + 1} of {len(self.partition.test)})")
            case = self.data.case(case_id)
            images = read_case_images(case)
            began = time.perf_counter()
            result = segment(images, package, device=self.compute, precision=self.settings.precision)
            seconds.append(time.perf_counter() - began)
            prediction = os.path.join(folder, "predictions", f"{case_id}.nii.gz")
            reference = os.path.join(folder, "references", f"{case_id}.nii.gz")
            write_labels(prediction, result.labels, [])
            write_labels(reference, reference_label_map(self.data, case, images[0]), [])
            pairs.append(CasePair(case_id, reference, prediction, case.images[0]))
        report = evaluate_and_report(Pairing(tuple(pairs), source={"test set": self.data.source}),
                                     list(self.data.labels), report_folder=folder if pairs else "")
        return report, (statistics.mean(seconds) if seconds else 0.0)

    def publish(self, package_folder: str, report, seconds_per_case: float, training: dict) -> tuple:
        from .evaluation_report import card_metrics

        s = self.settings
        index = os.path.join(self.registry_folder, "index.json")
        version = s.version or next_version(index, self.model_id)
        test = training["data"]["test"]
        metrics = card_metrics(report, f"held-out test set: {test['cases']} case(s) of {test['patients']} "
                                       "patient(s)") if report.cases else []
        runtime = [{"device": self.compute.kind, "seconds": round(seconds_per_case, 2),
                    "note": f"mean per held-out case, all stages, on {self.compute.description}"}] \
            if seconds_per_case else []
        with open(os.path.join(package_folder, "model.json"), encoding="utf-8") as file:
            contract = json.load(file)
        title = s.title or f"{_dataset_name(self.data)} ({describe(s.network).split(',')[0]})"
        entry = model_entry(model_id=self.model_id, title=title, version=version, contract=contract,
                            summary=training["data"], metrics=metrics, runtime=runtime, training=training, files=[])
        try:
            return publish(package_folder, entry, self.registry_folder, self.cache_dir), version
        except (PublishError, RegistryError, OSError) as error:
            raise TrainingError(f"the model could not be added to the registry: {error}") from None


class _NoFlips:
    flip_probability = (0.0, 0.0, 0.0)


def _default_cache_dir() -> str:
    from ModelRegistryLib.store import default_cache_dir

    return default_cache_dir()


def _grid_direction(orientation: str) -> tuple:
    from .resample import ORIENTATIONS

    return tuple(float(value) for value in ORIENTATIONS[orientation].ravel())


def _file_identity(path: str) -> list:
    status = os.stat(path)
    return [path, status.st_size, status.st_mtime_ns]


def _dataset_name(data: TrainingData) -> str:
    if data.kind == "cases":
        return os.path.basename(os.path.dirname(data.source)) or "cases"
    return os.path.basename(data.source.rstrip(os.sep))


def _patients(data: TrainingData, partition) -> str:
    return (f"{len(data.patients(partition.train))}, {len(data.patients(partition.validation))} and "
            f"{len(data.patients(partition.test))} patient(s)")


def _epoch_line(record: dict, epochs: int) -> str:
    line = f"epoch {record['epoch']} of {epochs}: loss {record['loss']:.4f}, {record['seconds']:.1f} s"
    if record["validation_dice"] is not None:
        line += f", validation Dice {record['validation_dice']:.4f}"
    return line


def train(settings: TrainingSettings, progress: Callable | None = None, log: Callable | None = None,
          cancel=None, on_epoch: Callable[[dict], None] | None = None) -> TrainingResult:
    """Train, evaluate and publish a model (see the module description).

    Args:
        settings: what and how (:class:`TrainingSettings`).
        progress: ``progress(fraction, text)``.
        log: ``log(text)``: what happens, one line at a time.
        cancel: a ``threading.Event``; when set the training stops between steps with
            :class:`TrainingCancelledError`, its last checkpoint kept.
        on_epoch: ``on_epoch(record)`` after each epoch: ``epoch``, ``loss``, ``learning_rate``, ``seconds``,
            ``validation_dice`` (None when the epoch was not validated) and ``dice`` per label name.

    Raises :class:`TrainingError` (bad settings or data, one line) or :class:`TrainingCancelledError`.
    """
    began = time.perf_counter()
    check_settings(settings)
    run = _Run(settings, progress, log, cancel, on_epoch)
    try:
        run.set_up()
        run.set_up_network()
        run.prepare()
        run.train()
        training = run.training_section(time.perf_counter() - began)
        run.progress(1.0, "writing the model package")
        package_folder = run.write_package(training)
        report, seconds_per_case = run.evaluate(package_folder)
        index, version = run.publish(package_folder, report, seconds_per_case, training)
    except (TrainingDataError, NetworkError, PreparationError) as error:
        raise TrainingError(str(error)) from None
    test_dice = {label.name: _finite_or_none(np.nanmean([case.label(label.value).dice for case in report.cases
                                                          if not case.error and case.label(label.value) is not None]))
                 if report.cases else None for label in run.data.labels}
    result = TrainingResult(run.model_id, version, index, package_folder, run.history, run.early["best_epoch"],
                            run.early["stopped"], test_dice, os.path.join(run.output, EVALUATION_FOLDER),
                            time.perf_counter() - began, run.compute.description, run.autocast or "float32",
                            run.resumed_from)
    write_json_atomically(os.path.join(run.output, STATE_NAME), {
        **run.state, "history": run.history, "drawn": run.drawn, "statistics_cases": run.prepared.statistics_cases,
        "finished": dataclasses.asdict(result)})
    run.log(f"published {result.model_id} {result.version} in {index}; write its intended use and limitations there")
    return result


def train_job(settings: TrainingSettings, progress=None, log=None, cancel=None) -> TrainingResult:
    """:func:`train` as a worker process runs it: each finished epoch is logged at level :data:`EPOCH_LOG_LEVEL`
    with its record as JSON, for the panel's curves."""
    def on_epoch(record: dict) -> None:
        if log is not None:
            log(json.dumps(record), level=EPOCH_LOG_LEVEL)

    return train(settings, progress, log, cancel, on_epoch)

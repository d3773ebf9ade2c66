"""``python -m DeepSegmentLib train``: a model from annotated cases, into the registry.

The data is an export written by TrainingDataExport (an nnU-Net, MONAI or pairs export folder, or its index
file) or a case list (``cases.csv``, split by patient here). Epochs are printed on standard error as they end;
the result is a model in a local registry index (``--registry``, by default ``trained-models`` in the model
cache) that is one of the user's sources, installed, and runs with ``python -m DeepSegmentLib run --model ID``.
A training interrupted (Ctrl-C, a crash, a killed process) continues from its last epoch when the same command
runs again. Every failure is one line on standard error with exit status 1; the arguments are checked before
any file is read.

Example (from the DeepSegment folder)::

    python -m DeepSegmentLib train --data /data/liver/nnUNet_raw/Dataset042_Liver --output /data/liver/training \
        --epochs 200 --model-id liver-ct
    python -m DeepSegmentLib train --data /data/liver/cases.csv --output run2 --fine-tune liver-ct --epochs 20
"""

from __future__ import annotations

import json
import os
import sys

from ModelRegistryLib.commandline import one_line
from ModelRegistryLib.store import default_cache_dir

from .training import (
    EPOCH_LOG_LEVEL,
    PRECISIONS,
    SCHEDULES,
    TrainingCancelledError,
    TrainingError,
    TrainingSettings,
    check_settings,
    train,
)
from .training_data import DEFAULT_FOLDS, DEFAULT_TEST_FRACTION, DEFAULT_VALIDATION_FRACTION
from .training_networks import ARCHITECTURES, NORMS, NetworkError, NetworkSettings
from .training_samples import NORMALIZATIONS

_DEFAULTS = TrainingSettings(data="", output="")
_NETWORK = NetworkSettings()


def add_train_parser(commands) -> None:
    """Add the ``train`` command to the subparsers of DeepSegmentLib's command line."""
    train_parser = commands.add_parser("train", help="train a model from an export or a case list into the registry")
    data = train_parser.add_argument_group("data")
    data.add_argument("--data", required=True, metavar="EXPORT_OR_CASES",
                      help="an export folder of Training Data Export (nnunet, monai, pairs) or its index file, or a "
                           "case list (.csv)")
    data.add_argument("--output", required=True, metavar="FOLDER",
                      help="the training's folder (checkpoints, prepared cases, package, evaluation); the same "
                           "command continues an interrupted training there")
    data.add_argument("--labels", default="", metavar="SCHEMA.json",
                      help="a label schema giving the labels' colors and terminology (default: the case list's "
                           "labels.json; an export's names)")
    data.add_argument("--fold", default="0", metavar="N|none",
                      help="the export's fold whose validation patients validate (default 0); none: draw "
                           "--validation-fraction of the training patients")
    data.add_argument("--validation-fraction", type=float, default=DEFAULT_VALIDATION_FRACTION, metavar="F")
    data.add_argument("--folds", type=int, default=DEFAULT_FOLDS, help="folds of a case list's split")
    data.add_argument("--test-fraction", type=float, default=DEFAULT_TEST_FRACTION, metavar="F",
                      help="held-out test patients' share of a case list's cases")
    data.add_argument("--split-seed", type=int, default=0, metavar="S", help="the seed of a case list's split")
    network = train_parser.add_argument_group("network")
    network.add_argument("--network", choices=ARCHITECTURES, default=_NETWORK.architecture)
    network.add_argument("--channels", type=int, nargs="+", default=list(_NETWORK.channels), metavar="N",
                         help="U-Net channels per level")
    network.add_argument("--strides", type=int, nargs="+", default=list(_NETWORK.strides), metavar="N",
                         help="U-Net strides between levels")
    network.add_argument("--residual-units", type=int, default=_NETWORK.residual_units, metavar="N")
    network.add_argument("--norm", choices=NORMS, default=_NETWORK.norm)
    network.add_argument("--dropout", type=float, default=_NETWORK.dropout, metavar="P")
    network.add_argument("--init-filters", type=int, default=_NETWORK.init_filters, metavar="N", help="SegResNet")
    network.add_argument("--blocks-down", type=int, nargs="+", default=list(_NETWORK.blocks_down), metavar="N",
                         help="SegResNet")
    network.add_argument("--fine-tune", default="", metavar="ID[@VERSION]",
                         help="train an installed registry model's network further instead of a new one")
    loop = train_parser.add_argument_group("training")
    loop.add_argument("--epochs", type=int, default=_DEFAULTS.epochs)
    loop.add_argument("--steps-per-epoch", type=int, default=_DEFAULTS.steps_per_epoch)
    loop.add_argument("--batch-size", type=int, default=_DEFAULTS.batch_size)
    loop.add_argument("--patch-size", type=int, nargs=3, metavar=("X", "Y", "Z"),
                      help="voxels (default: planned from the cases)")
    loop.add_argument("--spacing", type=float, nargs=3, metavar=("X", "Y", "Z"),
                      help="mm (default: the training cases' median)")
    loop.add_argument("--normalization", choices=NORMALIZATIONS, default=_DEFAULTS.normalization,
                      help="auto: CT channels with the training cases' statistics, others z-score per image")
    loop.add_argument("--learning-rate", type=float, default=_DEFAULTS.learning_rate, metavar="LR")
    loop.add_argument("--weight-decay", type=float, default=_DEFAULTS.weight_decay, metavar="WD")
    loop.add_argument("--schedule", choices=SCHEDULES, default=_DEFAULTS.schedule)
    loop.add_argument("--patience", type=int, default=_DEFAULTS.patience,
                      help="validations without a better Dice before stopping (0: never stop early)")
    loop.add_argument("--validation-interval", type=int, default=_DEFAULTS.validation_interval, metavar="EPOCHS")
    loop.add_argument("--foreground-fraction", type=float, default=_DEFAULTS.foreground_fraction, metavar="F",
                      help="share of patches centred on a labelled voxel")
    loop.add_argument("--no-augmentation", action="store_true")
    loop.add_argument("--augmentation", default="", metavar="JSON_OR_FILE",
                      help="augmentation settings (TrainingDataExportLib.augmentation.AugmentationSettings fields)")
    loop.add_argument("--device", default=_DEFAULTS.device, help="auto, cpu, cuda, cuda:N or mps")
    loop.add_argument("--precision", choices=PRECISIONS, default=_DEFAULTS.precision,
                      help="auto: bfloat16 on CPUs that compute it natively, float16 on CUDA; float32: always")
    loop.add_argument("--threads", type=int, default=0, help="CPU threads for PyTorch (default: its choice)")
    loop.add_argument("--seed", type=int, default=0)
    result = train_parser.add_argument_group("result")
    result.add_argument("--model-id", default="", metavar="ID", help="default: from the data's name")
    result.add_argument("--title", default="")
    result.add_argument("--version", default="", metavar="X.Y.Z", help="default: the next one in the index")
    result.add_argument("--registry", default="", metavar="FOLDER",
                        help="the folder of the local registry index the model is added to (default: "
                             "trained-models in the model cache)")
    result.add_argument("--cache-dir", default="", help=f"model cache folder (default: {default_cache_dir()})")


def _augmentation(text: str) -> dict | None:
    if not text:
        return None
    try:
        if os.path.isfile(text):
            with open(text, encoding="utf-8") as file:
                return json.load(file)
        return json.loads(text)
    except (OSError, ValueError) as error:
        raise TrainingError(f"--augmentation is neither a JSON file nor JSON text: {error}") from None


def settings_from(arguments) -> TrainingSettings:
    """The :class:`TrainingSettings` the arguments ask for (checked)."""
    fold = arguments.fold.strip().lower()
    if fold != "none" and not fold.isdigit():
        raise TrainingError(f"--fold takes a fold number or none, not {arguments.fold!r}")
    network = NetworkSettings(architecture=arguments.network, channels=tuple(arguments.channels),
                              strides=tuple(arguments.strides), residual_units=arguments.residual_units,
                              norm=arguments.norm, dropout=arguments.dropout, init_filters=arguments.init_filters,
                              blocks_down=tuple(arguments.blocks_down), base_model=arguments.fine_tune)
    settings = TrainingSettings(
        data=arguments.data, output=arguments.output, labels=arguments.labels,
        fold=None if fold == "none" else int(fold), validation_fraction=arguments.validation_fraction,
        folds=arguments.folds, test_fraction=arguments.test_fraction, split_seed=arguments.split_seed,
        network=network, epochs=arguments.epochs, steps_per_epoch=arguments.steps_per_epoch,
        batch_size=arguments.batch_size, patch_size=arguments.patch_size, spacing=arguments.spacing,
        normalization=arguments.normalization, learning_rate=arguments.learning_rate,
        weight_decay=arguments.weight_decay, schedule=arguments.schedule, patience=arguments.patience,
        validation_interval=arguments.validation_interval, foreground_fraction=arguments.foreground_fraction,
        augment=not arguments.no_augmentation, augmentation=_augmentation(arguments.augmentation),
        device=arguments.device, precision=arguments.precision, threads=arguments.threads, seed=arguments.seed,
        model_id=arguments.model_id, title=arguments.title, version=arguments.version, registry=arguments.registry,
        cache_dir=arguments.cache_dir)
    check_settings(settings)
    return settings


class _Terminal:
    """Progress rewritten in place on standard error; epochs and other lines each on a line of their own."""

    def __init__(self) -> None:
        self.line_open = False

    def progress(self, fraction: float, text: str) -> None:
        print(f"\r{fraction * 100:5.1f}% {text}"[:120].ljust(80), end="", file=sys.stderr, flush=True)
        self.line_open = True

    def log(self, text: str, level: str = "info") -> None:
        if level != EPOCH_LOG_LEVEL:
            self.end_line()
            print(text, file=sys.stderr, flush=True)

    def end_line(self) -> None:
        if self.line_open:
            print("\r".ljust(81), end="\r", file=sys.stderr)
            self.line_open = False


def main_train(arguments) -> int:
    terminal = _Terminal()
    try:
        settings = settings_from(arguments)
        result = train(settings, progress=terminal.progress, log=terminal.log)
    except (TrainingError, NetworkError, ValueError, OSError) as error:
        terminal.end_line()
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 1
    except (TrainingCancelledError, KeyboardInterrupt):
        terminal.end_line()
        print("error: interrupted; run the same command again to continue from the last epoch", file=sys.stderr)
        return 130
    except Exception as error:  # a failure nobody foresaw is still one line; its type tells where to look
        terminal.end_line()
        print(f"error: {type(error).__name__}: {one_line(error)}", file=sys.stderr)
        return 1
    terminal.end_line()
    dice = ", ".join(f"{name} {value:.3f}" for name, value in result.test_dice.items() if value is not None)
    print(f"model {result.model_id}@{result.version} in {result.index}")
    print(f"best epoch {result.best_epoch} of {len(result.history)} ({result.stopped}); "
          f"held-out Dice: {dice or 'none'}")
    print(f"write the model's intended use and limitations in {result.index}")
    return 0

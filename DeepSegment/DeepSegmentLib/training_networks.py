"""The networks a training trains: a new one from MONAI, or an installed registry model's, fine-tuned.

- **New** (:func:`build_network`): MONAI's residual 3D U-Net (``monai.networks.nets.UNet``) or SegResNet, the
  well-kept implementations the field trains. MONAI is only needed for these: in Slicer it is installed on first
  use (``DeepSegmentLogic.installTrainingDependencies``).
- **Fine-tuned** (:func:`load_base_network`): the weights of a DeepSegment model package, loaded by the package's
  own safe loaders (``package.load_network``). What can be trained, found out on PyTorch 2.13 and 2.8:

  - TorchScript: a loaded ``ScriptModule`` trains like any module (its parameters take gradients and
    ``train()`` switches batch norm and dropout to training). The result stays TorchScript: PyTorch cannot
    turn a scripted network with loops into a ``torch.export`` program (its converter fails on ``prim::Loop``,
    which MONAI's U-Net has).
  - ``torch.export``: the program's ``module()`` has trainable parameters and back-propagates, but it was traced
    in inference mode and refuses ``train()``: its batch norm keeps the statistics it has (the usual practice
    when fine-tuning on few cases) and its dropout stays off. It is exported again after training.
  - ONNX: not trainable in PyTorch, refused; so are sigmoid (multi-label) models and models whose inputs or
    outputs do not match the data, since fine-tuning keeps the network's input and output channels.

:func:`export_program` makes the published ``torch.export`` program, with a dynamic batch dimension.

Example::

    >>> settings = NetworkSettings(architecture="unet", channels=(4, 8), strides=(2,), residual_units=1)
    >>> size_divisor(settings), describe(settings)
    (2, 'MONAI UNet, channels 4-8, strides 2, 1 residual unit(s), instance norm')
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .runtimes.dependencies import MONAI_REQUIREMENT

ARCHITECTURES = ("unet", "segresnet")
NORMS = ("instance", "batch")
# The largest batch the exported program accepts: the engine's batches are far smaller.
MAX_EXPORTED_BATCH = 1024


class NetworkError(ValueError):
    """A network that cannot be built, fine-tuned or exported; the message says why and what to do."""


@dataclass(frozen=True)
class NetworkSettings:
    """Which network: ``architecture`` ``unet`` (``channels`` per level, ``strides`` between levels,
    ``residual_units`` per block, ``norm``, ``dropout``) or ``segresnet`` (``init_filters``, ``blocks_down``,
    ``dropout``); or ``base_model``, the ``ID[@VERSION]`` of an installed registry model to fine-tune, which
    overrides the rest."""

    architecture: str = "unet"
    channels: tuple = (16, 32, 64, 128, 256)
    strides: tuple = (2, 2, 2, 2)
    residual_units: int = 2
    norm: str = "instance"
    dropout: float = 0.0
    init_filters: int = 16
    blocks_down: tuple = (1, 2, 2, 4)
    base_model: str = ""

    def __post_init__(self) -> None:
        for name in ("channels", "strides", "blocks_down"):
            object.__setattr__(self, name, tuple(int(value) for value in getattr(self, name)))
        if self.base_model:
            return
        if self.architecture not in ARCHITECTURES:
            raise NetworkError(f"unknown architecture {self.architecture!r}: use {' or '.join(ARCHITECTURES)}")
        if self.norm not in NORMS:
            raise NetworkError(f"unknown norm {self.norm!r}: use {' or '.join(NORMS)}")
        if self.architecture == "unet" and (len(self.channels) < 2 or len(self.strides) != len(self.channels) - 1):
            raise NetworkError("a U-Net needs 2 or more channel counts and one stride fewer than channel counts")
        if min(self.channels + self.strides + self.blocks_down) < 1 or self.init_filters < 1 or self.residual_units < 0:
            raise NetworkError("channel counts, strides, blocks and filters must be positive")
        if not 0 <= self.dropout < 1:
            raise NetworkError(f"dropout must be at least 0 and below 1, not {self.dropout}")


def size_divisor(settings: NetworkSettings) -> int:
    """What every patch side must be a multiple of for the network's downsampling (1 for a fine-tuned model,
    whose patch size is its package's)."""
    if settings.base_model:
        return 1
    if settings.architecture == "unet":
        return math.prod(settings.strides)
    return 2 ** (len(settings.blocks_down) - 1)


def describe(settings: NetworkSettings) -> str:
    """The network in a few words, for logs and model cards."""
    if settings.base_model:
        return f"fine-tuned {settings.base_model}"
    dropout = f", dropout {settings.dropout:g}" if settings.dropout else ""
    if settings.architecture == "unet":
        return (f"MONAI UNet, channels {'-'.join(map(str, settings.channels))}, strides "
                f"{'-'.join(map(str, settings.strides))}, {settings.residual_units} residual unit(s), "
                f"{settings.norm} norm{dropout}")
    return (f"MONAI SegResNet, {settings.init_filters} initial filters, blocks down "
            f"{'-'.join(map(str, settings.blocks_down))}{dropout}")


def monai_version() -> str:
    """MONAI's version, or "" when it is not installed."""
    try:
        import monai
    except ImportError:
        return ""
    return monai.__version__


def build_network(settings: NetworkSettings, in_channels: int, out_channels: int):
    """A new MONAI network (its weights drawn from PyTorch's generator: seed it first)."""
    try:
        from monai.networks import nets
    except ImportError:
        raise NetworkError(f"new networks come from MONAI, which is not installed: install {MONAI_REQUIREMENT} (in "
                           "Slicer, Deep Segment's Train section offers to), or fine-tune a registry model") from None
    if settings.architecture == "unet":
        return nets.UNet(spatial_dims=3, in_channels=in_channels, out_channels=out_channels,
                         channels=settings.channels, strides=settings.strides, num_res_units=settings.residual_units,
                         norm=settings.norm, dropout=settings.dropout)
    return nets.SegResNet(spatial_dims=3, in_channels=in_channels, out_channels=out_channels,
                          init_filters=settings.init_filters, blocks_down=settings.blocks_down,
                          dropout_prob=settings.dropout or None)


@dataclass
class Trainable:
    """A network being trained: the module, the format it is published in (``torch.export`` or
    ``torchscript``), and whether ``train()``/``eval()`` may switch its mode (an exported program's module may
    not: it stays as traced, in inference mode)."""

    module: object
    publish_format: str
    switches_mode: bool = True

    def set_training(self, training: bool) -> None:
        if self.switches_mode:
            self.module.train(training)


def load_base_network(package, channels: int, labels: int, device: str) -> Trainable:
    """The network of ``package`` (a ``ModelPackage``), checked for fine-tuning on data with ``channels`` input
    channels and ``labels`` labels; ``NetworkError`` says what cannot be fine-tuned and why."""
    from .package import load_network

    if package.format == "onnx":
        raise NetworkError("an ONNX model cannot be trained in PyTorch: fine-tune a TorchScript or torch.export model")
    if package.dimensions != 3:
        raise NetworkError("the model is 2D: this trainer fine-tunes 3D models")
    if package.inference.activation != "softmax":
        raise NetworkError("the model has sigmoid outputs (overlapping labels): fine-tuning trains softmax models")
    if len(package.inputs) != channels:
        raise NetworkError(f"the model takes {len(package.inputs)} input channel(s) and the data has {channels}")
    if len(package.labels) != labels:
        raise NetworkError(f"the model segments {len(package.labels)} label(s) and the data has {labels}: "
                           "fine-tuning keeps the network's outputs, so the labels must correspond one to one")
    module = load_network(package, device)
    if package.format == "torchscript":
        return Trainable(module, "torchscript")
    # load_network runs a program through ExportedNetwork (shape checks, batch splitting); training needs the
    # program's module itself.
    return Trainable(module.module, "torch.export", switches_mode=False)


def export_program(module, channels: int, patch_size_zyx: tuple):
    """``module`` (a trained network, put in inference mode first where it can be) as a ``torch.export`` program
    on the CPU taking N×C×Z×Y×X windows of the patch size, N dynamic."""
    import torch

    example = torch.zeros((2, channels, *patch_size_zyx))
    batch = torch.export.Dim("batch", min=1, max=MAX_EXPORTED_BATCH)
    try:
        return torch.export.export(module.to("cpu"), (example,), dynamic_shapes=({0: batch},))
    except Exception as error:  # torch.export raises many kinds (unsupported operators, guards...)
        raise NetworkError(f"the trained network cannot be exported with torch.export: {error}") from error

"""The ``auto3dseg`` runtime: SlicerMONAIAuto3DSeg's models, run as that extension runs them.

An archive holds ``model.pt``, a checkpoint dict with the Auto3DSeg SegResNet ``config`` and ``state_dict``, and
``labels.csv`` (label values, names, DICOM codes). The extension's inference script (``auto3dseg_segresnet_inference``
in lassoan/SlicerMONAIAuto3DSeg) is followed step by step with MONAI's own transforms:

- every input volume loaded by ``LoadImaged`` (here from memory, ``monai_io``) as ``image1``, ``image2``..., with
  channels first; volumes of another size than the first resized to it; each normalised by the config's
  ``normalize_mode`` (``range``/``ct``: ``intensity_bounds`` scaled to [-1, 1] then a sigmoid; ``meanstd``/``mri``:
  z-score of nonzero voxels; ``meanstdtanh``; ``pet``; ``none``), the main modality first, then ``extra_modalities``;
  concatenated into ``image``;
- ``Orientationd`` RAS when ``orientation_ras``; ``CropForegroundd`` (margin 10) unless ``crop_foreground`` is false;
  ``Spacingd`` to ``resample_resolution`` (kept within 0.75–1.25 of it);
- ``SlidingWindowInfererAdapt`` over ``roi_size`` (batch 1, overlap 0.625, Gaussian), mixed precision on CUDA;
  softmax and argmax, or a sigmoid over 0.5 when the config says ``sigmoid``;
- ``Invertd`` back onto the input grid (nearest), and, for the whole-head models, the largest connected component.

BraTS models (``brats`` in the model's path, as in the extension) take their four volumes as channels of one image,
are cropped on it, and their three overlapping sigmoid channels become labels 2 (any tumour), 1 (core) and 3
(enhancing), as the extension merges them.

``model.pt`` is loaded with ``torch.load(weights_only=True)`` (the extension unpickles it fully), and its network
configuration must name a class of ``monai.networks.nets`` with plain arguments: a configuration that would run code
(``$`` expressions, references, other targets) is refused.

Example (see ``DeepSegment/Testing/Python/test_runtime_auto3dseg.py``)::

    run(installed_folder, [ct_image], device="cpu", options=RunOptions(), progress=None, cancel=None, pool=None)
"""

from __future__ import annotations

import contextlib
import os
from collections import OrderedDict

import numpy as np
import torch
from ModelRegistryLib.importers import AUTO3DSEG_LABELS_FILE, labels_from_auto3dseg_csv
from ModelRegistryLib.index import parse_labels
from monai.bundle import ConfigParser
from monai.data import decollate_batch, list_data_collate
from monai.inferers import SlidingWindowInfererAdapt
from monai.transforms import (
    Compose,
    ConcatItemsd,
    CropForegroundd,
    EnsureTyped,
    Invertd,
    KeepLargestConnectedComponentd,
    Lambdad,
    LoadImaged,
    NormalizeIntensityd,
    Orientationd,
    Resized,
    ScaleIntensityRanged,
    Spacingd,
)
from monai.utils import convert_to_dst_type

from ..engine import EngineError
from .common import ModelRun, RunOptions, Stages, compute_device, find_root, finish, load_checkpoint, torch_threads
from .monai_bundle import CountingNetwork, label_map_from_prediction, network_calls
from .monai_io import MemoryImageReader, register_reader

_STAGES = {"loading": 0.1, "preprocessing": 0.1, "inferring": 0.7, "postprocessing": 0.1}
_MODEL_FILE = "model.pt"


def _network(config: dict):
    """The network of an Auto3DSeg config, refused unless it is a ``monai.networks.nets`` class with plain arguments."""
    import monai.networks.nets as nets

    network = config.get("network") if isinstance(config, dict) else None
    target = str(network.get("_target_", "")) if isinstance(network, dict) else ""
    name = target.rsplit(".", 1)[-1]
    if not (target in (name, f"monai.networks.nets.{name}") and isinstance(getattr(nets, name, None), type)):
        raise EngineError(f"The model's network {target or '(none)'} is not a MONAI network class: refused")

    def plain(value) -> bool:
        if isinstance(value, dict):
            return all(isinstance(key, str) and plain(item) for key, item in value.items())
        if isinstance(value, (list, tuple)):
            return all(plain(item) for item in value)
        return not (isinstance(value, str) and value[:1] in ("$", "@", "%"))

    arguments = {key: value for key, value in network.items() if key != "_target_"}
    if any(key.startswith("_") for key in arguments) or not plain(arguments):
        raise EngineError("The model's network configuration holds expressions or references that would run code: "
                          "refused")
    return ConfigParser(network).get_parsed_content()


def _normalization(key: str, mode: str, bounds) -> list:
    """The transforms of one of Auto3DSeg's ``normalize_mode`` values, as the extension's script applies them."""
    if mode == "none":
        return []
    if mode in ("range", "ct"):
        return [ScaleIntensityRanged(keys=key, a_min=bounds[0], a_max=bounds[1], b_min=-1, b_max=1, clip=False),
                Lambdad(keys=key, func=torch.sigmoid)]
    if mode in ("meanstd", "mri"):
        return [NormalizeIntensityd(keys=key, nonzero=True, channel_wise=True)]
    if mode == "meanstdtanh":
        return [NormalizeIntensityd(keys=key, nonzero=True, channel_wise=True),
                Lambdad(keys=key, func=lambda x: 3 * torch.tanh(x / 3))]
    if mode == "pet":
        return [Lambdad(keys=key, func=lambda x: torch.sigmoid((x - x.min()) / x.std()))]
    raise EngineError(f"The model's normalize_mode {mode!r} is not one Auto3DSeg has")


def _spatial(config: dict, crop_source: str) -> list:
    """Orientation, foreground crop and resampling, as the config asks."""
    transforms = []
    if config.get("orientation_ras", False):
        transforms.append(Orientationd(keys="image", axcodes="RAS"))
    if config.get("crop_foreground", True):
        transforms.append(CropForegroundd(keys="image", source_key=crop_source, margin=10, allow_smaller=True))
    if config.get("resample_resolution") is not None:
        pixdim = list(config["resample_resolution"])
        transforms.append(Spacingd(keys=["image"], pixdim=pixdim, mode=["bilinear"], dtype=torch.float,
                                   min_pixdim=np.array(pixdim) * 0.75, max_pixdim=np.array(pixdim) * 1.25,
                                   allow_missing_keys=True))
    return transforms


def _preprocessing(config: dict, keys: list, brats: bool) -> Compose:
    mode, bounds = config.get("normalize_mode", "none"), config.get("intensity_bounds")
    if brats:  # the four volumes are one image's channels; normalised after resampling
        return Compose([EnsureTyped(keys="image", data_type="tensor", dtype=torch.float, allow_missing_keys=True),
                        *_spatial(config, "image"), *_normalization("image", mode, bounds)])
    if len(keys) == 1:
        transforms = [ConcatItemsd(keys=keys, name="image", dim=0),
                      EnsureTyped(keys="image", data_type="tensor", dtype=torch.float, allow_missing_keys=True),
                      *_normalization("image", mode, bounds)]
    else:
        modes = [mode, *OrderedDict(config.get("extra_modalities") or {}).values()]
        if len(modes) < len(keys):
            raise EngineError(f"The model normalises {len(modes)} input(s), {len(keys)} given")
        transforms = [step for key, key_mode in zip(keys, modes) for step in _normalization(key, key_mode, bounds)]
        transforms += [ConcatItemsd(keys=keys, name="image", dim=0),
                       EnsureTyped(keys="image", data_type="tensor", dtype=torch.float, allow_missing_keys=True)]
    return Compose([*transforms, *_spatial(config, keys[0])])


def _predictions(logits, sigmoid: bool):
    """Class values (softmax, argmax) or channels over 0.5 (sigmoid), as the extension's logits2pred makes them."""
    if isinstance(logits, (list, tuple)):
        logits = logits[0]
    if sigmoid:
        return torch.sigmoid(logits) >= 0.5
    return torch.argmax(torch.softmax(logits, dim=1), dim=1, keepdim=True).to(dtype=torch.uint8)


def _brats_labels(segmentation):
    """Three overlapping channels (core, whole, enhancing) as labels 2, 1 and 3, merged as the extension merges them."""
    merged = 2 * segmentation.any(0).to(dtype=torch.uint8)
    merged[segmentation[1:].any(0)] = 1
    merged[segmentation[2:].any(0)] = 3
    return merged[None]


def run(folder: str, images: list, *, device, options: RunOptions, progress, cancel, pool) -> ModelRun:
    """Segment ``images`` (the model's inputs in Models.json order) with the Auto3DSeg model installed in ``folder``."""
    root = find_root(folder, AUTO3DSEG_LABELS_FILE, _MODEL_FILE)
    model_file = os.path.join(root, _MODEL_FILE)
    try:
        with open(os.path.join(root, AUTO3DSEG_LABELS_FILE), encoding="utf-8-sig") as file:
            labels = parse_labels({"labels": labels_from_auto3dseg_csv(file.read())})
    except (OSError, ValueError) as error:  # ImporterError and IndexValidationError are ValueErrors
        raise EngineError(f"The model's labels.csv cannot be used: {error}") from error
    chosen, torch_device = compute_device(device)
    stages = Stages(progress, cancel, _STAGES)
    # As in the extension: BraTS and whole-head models are told by the model's path.
    brats, whole_head = "brats" in model_file, "whole-head" in model_file
    with torch_threads(options.threads):
        with stages.stage("loading"):
            checkpoint = load_checkpoint(model_file)
            if not isinstance(checkpoint, dict) or "config" not in checkpoint or "state_dict" not in checkpoint:
                raise EngineError("model.pt holds no Auto3DSeg config and state_dict: not an Auto3DSeg SegResNet model")
            config = checkpoint["config"]
            network = _network(config)
            try:
                network.load_state_dict(checkpoint["state_dict"], strict=True)
            except RuntimeError as error:
                raise EngineError(f"model.pt's weights do not fit its network: {str(error).splitlines()[0]}") from error
            network = network.to(device=torch_device, memory_format=torch.channels_last_3d).eval()
        reader = MemoryImageReader()
        names = [reader.add(image) for image in images]
        with stages.stage("preprocessing"):
            if brats:
                keys, data = ["image"], {"image": names}
            else:
                keys = [f"image{number}" for number in range(1, len(images) + 1)]
                data = dict(zip(keys, names))
            loader = LoadImaged(keys=keys, ensure_channel_first=True, dtype=None, allow_missing_keys=True,
                                image_only=False)
            register_reader(loader, reader)
            loaded = loader(data)
            for key in keys[1:]:
                if tuple(loaded[key].shape[1:]) != tuple(loaded[keys[0]].shape[1:]):
                    loaded = Resized(keys=key, spatial_size=loaded[keys[0]].shape[1:], mode="bilinear")(loaded)
            preprocessing = _preprocessing(config, keys, brats)
            batch = list_data_collate([preprocessing(loaded)])
            inputs = batch["image"].as_subclass(torch.Tensor).to(memory_format=torch.channels_last_3d,
                                                                 device=torch_device)
        inferer = SlidingWindowInfererAdapt(roi_size=config["roi_size"], sw_batch_size=1, overlap=0.625,
                                            mode="gaussian", cache_roi_weight_map=False, progress=False)
        amp = torch_device.type == "cuda"
        counted = CountingNetwork(network, stages, network_calls(inferer, inputs.shape[2:]))
        with stages.stage("inferring"), torch.no_grad():
            with torch.autocast("cuda") if amp else contextlib.nullcontext():
                logits = inferer(inputs=inputs, network=counted)
            predictions = _predictions(logits, config.get("sigmoid", False) or brats)
            del logits
        with stages.stage("postprocessing"):
            postprocessing = [Invertd(keys="pred", orig_keys="image", transform=preprocessing, nearest_interp=True)]
            if whole_head and not brats:
                postprocessing.append(KeepLargestConnectedComponentd(keys="pred", num_components=2))
            batch["pred"] = convert_to_dst_type(predictions, batch["image"], dtype=predictions.dtype,
                                                device=predictions.device)[0]
            pred = Compose(postprocessing)(decollate_batch(batch)[0])["pred"]
            if brats:
                pred = convert_to_dst_type(_brats_labels(pred), pred)[0]
            labels_image = label_map_from_prediction(pred, images[0])
    messages = (f"Auto3DSeg {config['network'].get('_target_')} (epoch {checkpoint.get('epoch', '?')})",)
    return ModelRun(labels, finish(labels_image, images[0], [label.value for label in labels], stages,
                                   chosen.description, messages, "float16 (AMP)" if amp else "float32"), "auto3dseg")


"""The ``monai-bundle`` runtime: a MONAI bundle run with its own inference configuration, through MONAI's bundle API.

What the bundle's evaluator would do, step by step, with the bundle's own components, parsed by MONAI's
``ConfigParser`` from ``configs/inference.json`` (or ``.yaml``): its ``network`` (``network_def``) with its weights,
its ``preprocessing``, its ``inferer`` and its ``postprocessing``. Only what concerns files changes:

- the inputs come from memory: the pipeline's own ``LoadImaged`` reads the SimpleITK volumes through a reader
  registered with it (``monai_io.MemoryImageReader``), so orientation, spacing, intensity transforms and the final
  ``Invertd`` see exactly the ``MetaTensor`` a file would have given;
- ``SaveImaged`` is left out of the postprocessing (the labels come back in memory);
- ``bundle_root`` is the installed folder and ``device`` the chosen device (an inferer's own ``device`` follows it);
- the weights are the bundle's ``CheckpointLoader`` ``load_path`` (``models/model.pt`` by default), loaded with
  ``torch.load(weights_only=True)``; a bundle with only ``models/model.ts`` runs its TorchScript network;
- the bundle folder is on ``sys.path`` while it runs, for the ``scripts`` its configuration may name.

Mixed precision follows the evaluator's ``amp`` on CUDA, as MONAI's evaluator does. The label map is the
postprocessed ``pred``: one channel of class values (channels of independent binary maps are merged, a later
channel over an earlier one: label value = channel + 1, as the importer lists them), and it must lie on the input's
grid: a bundle whose postprocessing does not invert its spatial preprocessing is refused.

A bundle's configuration is a program: ``$`` expressions and ``_target_`` components are Python that MONAI evaluates.
It runs here as it runs under MONAI: install bundles from publishers you trust.

Example (see ``DeepSegment/Testing/Python/test_runtime_monai_bundle.py`` for the zoo's bundles)::

    run(installed_folder, [ct_image], device="cpu", options=RunOptions(), progress=None, cancel=None, pool=None)
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys

import numpy as np
import torch
from ModelRegistryLib.importers import BUNDLE_INFERENCE_FILES, BUNDLE_METADATA_FILE, bundle_labels
from ModelRegistryLib.index import parse_labels
from monai.bundle import ConfigParser
from monai.data import decollate_batch, list_data_collate
from monai.inferers import SlidingWindowInferer
from monai.utils import CommonKeys

from ..engine import EngineCancelled, EngineError
from ..geometry import image_from_array
from .common import ModelRun, RunOptions, Stages, compute_device, find_root, finish, load_checkpoint, torch_threads
from .monai_io import MemoryImageReader, loader_keys, register_reader

_STAGES = {"loading": 0.1, "preprocessing": 0.1, "inferring": 0.7, "postprocessing": 0.1}
_SAVERS = ("SaveImaged", "SaveImage")
DEFAULT_WEIGHTS = "models/model.pt"
TORCHSCRIPT_WEIGHTS = "models/model.ts"


def _bundle_root(folder: str) -> tuple:
    """``(root, inference configuration path)`` of the bundle installed in ``folder``."""
    for name in BUNDLE_INFERENCE_FILES:
        with contextlib.suppress(EngineError):
            root = find_root(folder, name)
            return root, os.path.join(root, *name.split("/"))
    raise EngineError(f"{folder} holds no MONAI bundle inference configuration ({', '.join(BUNDLE_INFERENCE_FILES)})")


def _labels(root: str) -> tuple:
    """The labels of the bundle's prediction channels, from ``configs/metadata.json`` (none when it has none)."""
    path = os.path.join(root, *BUNDLE_METADATA_FILE.split("/"))
    if not os.path.isfile(path):
        return ()
    try:
        with open(path, encoding="utf-8") as file:
            labels, _ = bundle_labels(json.load(file))
        return parse_labels({"labels": labels})
    except (OSError, ValueError) as error:  # IndexValidationError and ImporterError are ValueErrors
        raise EngineError(f"The bundle's {BUNDLE_METADATA_FILE} cannot be used: {error}") from error


@contextlib.contextmanager
def bundle_imports(root: str):
    """The bundle folder first on ``sys.path`` inside the block, for the modules its configuration names (usually
    ``scripts``); modules of those names are dropped before and after, so two bundles never share one."""
    names = {os.path.splitext(name)[0] for name in os.listdir(root)
             if name.endswith(".py") or os.path.isfile(os.path.join(root, name, "__init__.py"))}

    def forget() -> None:
        for module in [module for module in sys.modules if module.split(".")[0] in names]:
            del sys.modules[module]

    forget()
    sys.path.insert(0, root)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(root)
        forget()


def _target_name(item) -> str:
    return str(item.get("_target_", "")).rsplit(".", 1)[-1] if isinstance(item, dict) else ""


def _components(config, prefix: str = ""):
    """``(id, component)`` of every dict with a ``_target_`` in a configuration, ids as ConfigParser writes them."""
    items = config.items() if isinstance(config, dict) else enumerate(config) if isinstance(config, list) else ()
    for key, value in items:
        item_id = f"{prefix}#{key}" if prefix else str(key)
        if isinstance(value, dict) and "_target_" in value:
            yield item_id, value
        yield from _components(value, item_id)


def _parser(root: str, inference: str, device: torch.device) -> ConfigParser:
    """The bundle's inference configuration, set to run from ``root`` on ``device`` and to write no files."""
    parser = ConfigParser()
    parser.read_config(inference)
    metadata = os.path.join(root, *BUNDLE_METADATA_FILE.split("/"))
    if os.path.isfile(metadata):
        parser.read_meta(metadata)
    for key in ("preprocessing", "inferer", "postprocessing"):
        if key not in parser:
            raise EngineError(f"The bundle's {os.path.basename(inference)} has no '{key}': DeepSegment runs a bundle "
                              "through its preprocessing, inferer and postprocessing")
    parser["bundle_root"] = root
    parser["device"] = device
    inferer = parser["inferer"]
    if isinstance(inferer, dict) and "device" in inferer:
        parser["inferer#device"] = "@device"
    postprocessing = parser["postprocessing"]
    if isinstance(postprocessing, dict) and isinstance(postprocessing.get("transforms"), list):
        parser["postprocessing#transforms"] = [item for item in postprocessing["transforms"]
                                               if _target_name(item) not in _SAVERS]
    return parser


def _weights(parser: ConfigParser, root: str) -> tuple:
    """``(path, key)``: the checkpoint the bundle's ``CheckpointLoader`` loads and the key of the network in its
    ``load_dict`` (``models/model.pt`` and ``model`` when the configuration has no loader)."""
    for item_id, component in _components(parser.get()):
        if _target_name(component) == "CheckpointLoader" and "load_path" in component:
            load_dict = component.get("load_dict")
            key = next(iter(load_dict), "model") if isinstance(load_dict, dict) else "model"
            return str(parser.get_parsed_content(f"{item_id}#load_path")), key
    return os.path.join(root, *DEFAULT_WEIGHTS.split("/")), "model"


def _installed(path: str, root: str) -> str:
    """Where the weights the configuration names are: their path, or, for a bundle installed with its weights
    downloaded beside its configuration (from the zoo's large_files.yml), the same name in ``models/`` or the root."""
    name = os.path.basename(path)
    return next((candidate for candidate in (path, os.path.join(root, "models", name), os.path.join(root, name))
                 if os.path.isfile(candidate)), path)


def _network(parser: ConfigParser, root: str, device: torch.device):
    """The bundle's network with its weights, in evaluation mode on ``device``."""
    path, key = _weights(parser, root)
    path = _installed(path, root)
    torchscript = _installed(os.path.join(root, *TORCHSCRIPT_WEIGHTS.split("/")), root)
    if not os.path.isfile(path) and os.path.isfile(torchscript):
        return torch.jit.load(torchscript, map_location=device).eval()
    network = parser.get_parsed_content("network" if "network" in parser else "network_def")
    state = load_checkpoint(path)
    if isinstance(state, dict) and isinstance(state.get(key), dict):
        state = state[key]  # a checkpoint holding the network's state beside other things, as CheckpointLoader reads
    if isinstance(state, dict) and state and all(name.startswith("module.") for name in state):
        state = {name[len("module."):]: value for name, value in state.items()}  # saved from DataParallel
    try:
        network.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as error:
        raise EngineError(f"The bundle's weights {os.path.basename(path)} do not fit its network: "
                          f"{str(error).splitlines()[0]}") from error
    return network.to(device).eval()


def _made_with(root: str) -> str:
    """`` (made with MONAI 1.4.0; this is MONAI 1.6.1)`` where the bundle's metadata names another release."""
    import monai

    with contextlib.suppress(OSError, ValueError, AttributeError):
        with open(os.path.join(root, *BUNDLE_METADATA_FILE.split("/")), encoding="utf-8") as file:
            release = json.load(file).get("monai_version")
        if isinstance(release, str) and release != monai.__version__:
            return f" (it was made with MONAI {release}; this is MONAI {monai.__version__})"
    return ""


def _amp(parser: ConfigParser, device: torch.device) -> bool:
    """Whether the bundle's evaluator runs in mixed precision here (its ``amp``, on CUDA only, as MONAI's does)."""
    if device.type != "cuda" or "evaluator#amp" not in parser:
        return False
    return bool(parser.get_parsed_content("evaluator#amp"))


def network_calls(inferer, spatial_shape) -> int:
    """How many times a sliding-window inferer calls the network on a volume this size (0 for other inferers)."""
    if not isinstance(inferer, SlidingWindowInferer):
        return 0
    dimensions = len(spatial_shape)
    roi = list(np.atleast_1d(inferer.roi_size))
    if len(roi) == dimensions - 1 and hasattr(inferer, "spatial_dim"):
        roi.insert(int(inferer.spatial_dim), 1)  # SliceInferer: 2D windows, one slice thick
    roi = [int(r) if r and int(r) > 0 else int(s) for r, s in zip(np.broadcast_to(roi, dimensions), spatial_shape)]
    overlaps = np.broadcast_to(inferer.overlap, dimensions)
    windows = 1
    for size, patch, overlap in zip(spatial_shape, roi, overlaps):
        size = max(int(size), patch)  # smaller volumes are padded to the window
        interval = patch if patch == size else max(int(patch * (1 - float(overlap))), 1)
        windows *= 1 + max(0, math.ceil((size - patch) / interval))
    return math.ceil(windows / max(1, int(inferer.sw_batch_size)))


class CountingNetwork:
    """The network as the inferer calls it: each call checks cancel and reports progress."""

    def __init__(self, network, stages: Stages, calls: int) -> None:
        self.network, self.stages, self.calls, self.done = network, stages, calls, 0

    def __call__(self, *arguments, **keywords):
        self.stages.check_cancel()
        output = self.network(*arguments, **keywords)
        self.done += 1
        if self.calls:
            self.stages.report("inferring", self.done / self.calls)
        return output


def _input_data(keys: tuple, names: list) -> dict:
    """The data dictionary the bundle's loader reads: the volumes under its key (several: as channels), or one
    volume per key."""
    if len(keys) == 1:
        return {keys[0]: names[0] if len(names) == 1 else names}
    if len(keys) == len(names):
        return dict(zip(keys, names))
    raise EngineError(f"The bundle reads {len(keys)} images ({', '.join(keys)}), {len(names)} given")


def label_map_from_prediction(pred, reference):
    """The postprocessed prediction (channels × x × y × z, with its affine) as a SimpleITK label map."""
    array = pred.detach().cpu().numpy() if hasattr(pred, "detach") else np.asarray(pred)
    affine = np.asarray(pred.affine.detach().cpu().numpy() if hasattr(pred, "affine") else np.eye(4), dtype=float)
    if array.ndim == reference.GetDimension():
        array = array[None]
    if array.shape[0] == 1:
        values = np.rint(array[0])
    else:
        values = np.zeros(array.shape[1:], np.float32)
        for channel in range(array.shape[0]):
            values[array[channel] > 0.5] = channel + 1
    if values.min(initial=0) < 0:
        raise EngineError("The bundle's prediction holds negative values: it is not a label map")
    dtype = np.uint8 if values.max(initial=0) <= 255 else np.uint16
    return image_from_array(np.ascontiguousarray(values.transpose(2, 1, 0)).astype(dtype), affine)


def run(folder: str, images: list, *, device, options: RunOptions, progress, cancel, pool) -> ModelRun:
    """Segment ``images`` with the MONAI bundle installed in ``folder`` (see the module's description)."""
    root, inference = _bundle_root(folder)
    labels = _labels(root)
    chosen, torch_device = compute_device(device)
    stages = Stages(progress, cancel, _STAGES)
    with torch_threads(options.threads), bundle_imports(root):
        with stages.stage("loading"):
            try:
                parser = _parser(root, inference, torch_device)
                network = _network(parser, root, torch_device)
                preprocessing = parser.get_parsed_content("preprocessing")
                inferer = parser.get_parsed_content("inferer")
                postprocessing = parser.get_parsed_content("postprocessing")
                amp = _amp(parser, torch_device)
            except (EngineError, EngineCancelled):
                raise
            except Exception as error:  # the configuration is the bundle's code: anything may fail in it
                made_with = _made_with(root)
                raise EngineError(f"The bundle's configuration cannot be run{made_with}: "
                                  f"{str(error).strip().splitlines()[0]}") from error
        reader = MemoryImageReader()
        names = [reader.add(image) for image in images]
        if not register_reader(preprocessing, reader):
            raise EngineError("The bundle's preprocessing loads no image (no LoadImaged): DeepSegment cannot feed it")
        with stages.stage("preprocessing"):
            batch = list_data_collate([preprocessing(_input_data(loader_keys(preprocessing), names))])
        inputs = batch[CommonKeys.IMAGE].to(torch_device)
        counted = CountingNetwork(network, stages, network_calls(inferer, inputs.shape[2:]))
        mixed_precision = torch.autocast("cuda") if amp else contextlib.nullcontext()
        with stages.stage("inferring"), torch.no_grad(), mixed_precision:
            batch[CommonKeys.PRED] = inferer(inputs, counted)
        with stages.stage("postprocessing"):
            pred = postprocessing(decollate_batch(batch)[0])[CommonKeys.PRED]
            labels_image = label_map_from_prediction(pred, images[0])
    messages = (f"Ran the bundle's own {os.path.relpath(inference, root)} with MONAI",)
    values = [label.value for label in labels] or None
    return ModelRun(labels, finish(labels_image, images[0], values, stages, chosen.description, messages,
                                   "float16 (AMP)" if amp else "float32"), "monai-bundle")


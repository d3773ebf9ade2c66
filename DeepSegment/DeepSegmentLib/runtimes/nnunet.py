"""The ``nnunet-v2`` runtime: an nnU-Net v2 trained model folder, run by nnunetv2's own predictor.

The folder (``dataset.json``, ``plans.json``, ``fold_K/checkpoint_final.pth``: what ``nnUNetv2_train`` leaves, or
``nnUNetv2_export_model_to_zip`` packs) is run by ``nnUNetPredictor.predict_single_npy_array``: nnU-Net's own
preprocessing (cropping, resampling, its normalization for the channel's name), sliding window (step 0.5,
Gaussian), mirroring over the axes the trainer allowed, fold ensembling and resampling back. The inputs go in as
nnU-Net's ``SimpleITKIO`` reads a file: the channels stacked as (channel, z, y, x) float32 arrays with the spacing
reversed; the segmentation comes back in the same array order, so it lies on the input's grid by construction
(checked all the same). A model whose plans name another image reader (``NibabelIOWithReorient``...) is fed through
that reader instead, from temporary NIfTI files, since only its own code knows its axis order.

The checkpoints are loaded with ``torch.load(weights_only=True)`` (nnunetv2's own loader unpickles them fully), and
the network is built by nnU-Net's trainer class as its ``initialize_from_trained_model_folder`` builds it, then
handed to the predictor with ``manual_initialization``. Progress and cancel go through the predictor's window loop.

Example (see ``DeepSegment/Testing/Python/test_runtime_nnunet.py``)::

    run(installed_folder, [ct_image], device="cpu", options=RunOptions(), progress=None, cancel=None, pool=None)
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import sys
import tempfile

import numpy as np
import SimpleITK as sitk
from ModelRegistryLib.importers import nnunet_labels, nnunet_model_folders
from ModelRegistryLib.index import parse_labels
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from ..engine import EngineCancelled, EngineError
from ..geometry import geometry_mismatch
from .common import (
    ModelRun,
    RunOptions,
    Stages,
    compute_device,
    finish,
    label_image,
    load_checkpoint,
    torch_threads,
)

_STAGES = {"loading": 0.1, "inferring": 0.9}
IN_MEMORY_READERS = ("SimpleITKIO",)


def model_folder(folder: str) -> tuple:
    """``(path, folds, checkpoint name)`` of the nnU-Net trained model folder inside an installed ``folder``."""
    names = [os.path.relpath(os.path.join(directory, name), folder).replace(os.sep, "/")
             for directory, _, files in os.walk(folder) for name in files]
    found = nnunet_model_folders(names)
    if not found:
        raise EngineError(f"{folder} holds no nnU-Net v2 trained model folder (dataset.json, plans.json, "
                          "fold_K/checkpoint_final.pth)")
    if len(found) > 1:
        raise EngineError(f"{folder} holds {len(found)} nnU-Net trained model folders; install one per model version")
    root, folds, checkpoint = found[0]
    return os.path.join(folder, *root.split("/")), folds, checkpoint


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as file:
            return json.load(file)
    except (OSError, ValueError) as error:
        raise EngineError(f"The nnU-Net model's {os.path.basename(path)} cannot be read: {error}") from error


class _ReportingPredictor(nnUNetPredictor):
    """nnU-Net's predictor, reporting each window it predicts and stopping at the next one when cancelled."""

    def __init__(self, stages: Stages, **settings) -> None:
        super().__init__(**settings)
        self.stages = stages
        self.windows = self.done = 0

    def _internal_get_sliding_window_slicers(self, image_size):
        slicers = super()._internal_get_sliding_window_slicers(image_size)
        self.windows = len(slicers) * len(self.list_of_parameters)
        return slicers

    def _internal_maybe_mirror_and_predict(self, x):
        # EngineCancelled is no RuntimeError: the predictor's fallback to the CPU does not catch it.
        self.stages.check_cancel()
        prediction = super()._internal_maybe_mirror_and_predict(x)
        self.done += 1
        if self.windows:
            self.stages.report("inferring", self.done / self.windows)
        return prediction


def _initialize(predictor: nnUNetPredictor, root: str, folds: list, checkpoint: str, dataset_json: dict,
                plans: dict) -> None:
    """Load the folds' checkpoints without running code and give the predictor the network nnU-Net's trainer builds."""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    parameters, first = [], None
    for fold in folds:
        loaded = load_checkpoint(os.path.join(root, f"fold_{fold}", checkpoint))
        if not isinstance(loaded, dict) or "network_weights" not in loaded:
            raise EngineError(f"fold_{fold}/{checkpoint} is not an nnU-Net v2 checkpoint (no network_weights)")
        first = first or loaded
        parameters.append(loaded["network_weights"])
    try:
        trainer_name = first["trainer_name"]
        configuration = first["init_args"]["configuration"]
    except (KeyError, TypeError) as error:
        raise EngineError(f"fold_{folds[0]}/{checkpoint} does not name its trainer and configuration") from error
    plans_manager = PlansManager(plans)
    configuration_manager = plans_manager.get_configuration(configuration)
    inputs = determine_num_input_channels(plans_manager, configuration_manager, dataset_json)
    outputs = plans_manager.get_label_manager(dataset_json).num_segmentation_heads
    trainer = recursive_find_trainer_class_by_name(trainer_name)
    if trainer is None:
        raise EngineError(f"The model was trained with {trainer_name}, which this nnunetv2 does not have")
    if "plans_manager" in inspect.signature(trainer.build_network_architecture).parameters:
        network = trainer.build_network_architecture(plans_manager, configuration_manager, inputs, outputs,
                                                     enable_deep_supervision=False)
    else:  # trainers of earlier nnunetv2 releases
        network = trainer.build_network_architecture(
            configuration_manager.network_arch_class_name, configuration_manager.network_arch_init_kwargs,
            configuration_manager.network_arch_init_kwargs_req_import, inputs, outputs, enable_deep_supervision=False)
    network.load_state_dict(parameters[0])
    predictor.manual_initialization(network, plans_manager, configuration_manager, parameters, dataset_json,
                                    trainer_name, first.get("inference_allowed_mirroring_axes"))


def _channels(images: list) -> np.ndarray:
    """The inputs as nnU-Net's SimpleITKIO reads their files: (channel, z, y, x) float32, one grid for all."""
    for number, image in enumerate(images[1:], 2):
        mismatch = geometry_mismatch(images[0], image)
        if mismatch:
            raise EngineError(f"nnU-Net needs every input on one voxel grid: input {number}'s {mismatch}")
    return np.stack([sitk.GetArrayViewFromImage(image) for image in images]).astype(np.float32)


def _predict_in_memory(predictor: nnUNetPredictor, images: list) -> np.ndarray:
    properties = {"spacing": list(images[0].GetSpacing())[::-1]}
    return predictor.predict_single_npy_array(_channels(images), properties, None, None, False)


def _predict_through_reader(predictor: nnUNetPredictor, images: list, reader_name: str) -> np.ndarray:
    """The segmentation of a model whose plans name another image reader: the inputs written as NIfTI files and read,
    the result written and read back, by that reader."""
    from nnunetv2.imageio.reader_writer_registry import recursive_find_reader_writer_by_name

    reader = recursive_find_reader_writer_by_name(reader_name)()
    ending = predictor.dataset_json.get("file_ending", ".nii.gz")
    with tempfile.TemporaryDirectory(prefix="deepsegment-nnunet-") as folder:
        files = [os.path.join(folder, f"input_{number:04d}{ending}") for number in range(len(images))]
        for image, path in zip(images, files):
            sitk.WriteImage(image, path)
        data, properties = reader.read_images(files)
        segmentation = predictor.predict_single_npy_array(data, properties, None, None, False)
        output = os.path.join(folder, f"labels{ending}")
        reader.write_seg(segmentation, output, properties)
        return sitk.GetArrayFromImage(sitk.ReadImage(output))


def run(folder: str, images: list, *, device, options: RunOptions, progress, cancel, pool) -> ModelRun:
    """Segment ``images`` (one per channel of the model's dataset.json, in its order) with the nnU-Net v2 model
    installed in ``folder``; ``options.folds`` picks folds (all by default), ``quality`` fast leaves out mirroring."""
    root, folds, checkpoint = model_folder(folder)
    if options.folds:
        missing = [str(fold) for fold in options.folds if str(fold) not in folds]
        if missing:
            raise EngineError(f"The model has no fold {', '.join(missing)}; it has {', '.join(folds)}")
        folds = [str(fold) for fold in options.folds]
    dataset_json, plans = _read_json(os.path.join(root, "dataset.json")), _read_json(os.path.join(root, "plans.json"))
    labels = parse_labels({"labels": nnunet_labels(dataset_json)})
    channels = len(dataset_json.get("channel_names") or dataset_json.get("modality") or {})
    if channels and len(images) != channels:
        raise EngineError(f"The model needs {channels} input volume(s), {len(images)} given")
    chosen, torch_device = compute_device(device)
    stages = Stages(progress, cancel, _STAGES)
    reader_name = plans.get("image_reader_writer", IN_MEMORY_READERS[0])
    # nnU-Net prints what it does; standard output belongs to the caller (a command line's result, a worker's pipe).
    with torch_threads(options.threads), contextlib.redirect_stdout(sys.stderr):
        with stages.stage("loading"):
            predictor = _ReportingPredictor(
                stages, tile_step_size=0.5, use_gaussian=True, use_mirroring=options.quality != "fast",
                perform_everything_on_device=torch_device.type == "cuda", device=torch_device, verbose=False,
                verbose_preprocessing=False, allow_tqdm=False)
            _initialize(predictor, root, folds, checkpoint, dataset_json, plans)
        with stages.stage("inferring"):
            try:
                if reader_name in IN_MEMORY_READERS:
                    segmentation = _predict_in_memory(predictor, images)
                else:
                    segmentation = _predict_through_reader(predictor, images, reader_name)
            except (EngineError, EngineCancelled):
                raise
            except (RuntimeError, ValueError, AssertionError) as error:
                raise EngineError(f"nnU-Net could not segment the input: {str(error).strip().splitlines()[0]}") \
                    from error
    messages = (f"nnU-Net v2 {predictor.trainer_name}, folds {', '.join(folds)}"
                + (", mirrored" if predictor.use_mirroring and predictor.allowed_mirroring_axes else ""),)
    return ModelRun(labels, finish(label_image(segmentation, images[0]), images[0],
                                   [label.value for label in labels], stages, chosen.description, messages,
                                   "float16 (AMP)" if torch_device.type == "cuda" else "float32"), "nnunet-v2")


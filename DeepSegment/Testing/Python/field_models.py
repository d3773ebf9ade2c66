"""Models of the field made for tests, in their authors' own formats, with their own libraries.

- :func:`make_nnunet_model`: an nnU-Net v2 trained model folder (dataset.json, plans.json,
  fold_0/checkpoint_final.pth), planned and preprocessed by nnunetv2 from a tiny synthetic dataset and written by
  nnunetv2's own trainer (its network initialised by nnU-Net, not trained), in a separate process because
  nnunetv2 reads its folders from environment variables when first imported.
- :func:`make_bundle`: a copy of a MONAI model-zoo bundle's real configuration (``Testing/Data/FieldModels``) with
  random weights for its own network definition in ``models/model.pt``.
- :func:`make_auto3dseg_archive`: a SlicerMONAIAuto3DSeg model archive: ``model.pt`` (a dict holding an Auto3DSeg
  SegResNet configuration, its state dict and training bookkeeping with NumPy scalars, as Auto3DSeg saves it) and a
  ``labels.csv`` with DICOM codes.
- :func:`oblique_volume`: a seeded, tilted, anisotropic volume with structures to segment.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import SimpleITK as sitk

REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
FIELD_MODELS = os.path.join(REPOSITORY, "Testing", "Data", "FieldModels")
ZOO = os.path.join(FIELD_MODELS, "monai-model-zoo")
MODELS_JSON = os.path.join(FIELD_MODELS, "SlicerMONAIAuto3DSeg", "Models.json")


def oblique_volume(size=(28, 24, 18), spacing=(1.3, 0.9, 2.2), seed=0, angle=0.3) -> sitk.Image:
    """A CT-like int16 volume (a bright ball and a box in noise) on a grid tilted by ``angle`` radians."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.arange(n) for n in reversed(size)), indexing="ij")
    voxels = rng.normal(0, 30, tuple(reversed(size)))
    voxels[(x - size[0] / 2) ** 2 + (y - size[1] / 2) ** 2 + ((z - size[2] / 2) * 2) ** 2 < (min(size) / 3) ** 2] += 300
    voxels[2:6, 3:9, 4:12] -= 200
    image = sitk.GetImageFromArray(voxels.astype(np.int16))
    image.SetSpacing(spacing)
    image.SetOrigin((12.0, -40.0, 7.5))
    turn = np.array([[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, 1.0]])
    tilt = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(angle / 2), -np.sin(angle / 2)],
                     [0.0, np.sin(angle / 2), np.cos(angle / 2)]])
    image.SetDirection(tuple((turn @ tilt).ravel()))
    return image


def aligned_volume(size=(30, 26, 12), seed=1) -> sitk.Image:
    """A volume whose geometry a NIfTI file stores exactly (float32 affine): axes permuted and flipped, not tilted, so
    that a library reading it from a file sees the very grid a volume in memory has."""
    image = oblique_volume(size=size, spacing=(1.25, 0.75, 2.5), seed=seed, angle=0.0)
    image.SetDirection((0.0, 0.0, 1.0, -1.0, 0.0, 0.0, 0.0, -1.0, 0.0))
    image.SetOrigin((10.5, -20.25, 5.0))
    return image


# --------------------------------------------------------------------------------------------------- nnU-Net

_NNUNET_SCRIPT = textwrap.dedent('''
    import json, os, sys
    import numpy as np, SimpleITK as sitk, torch
    root = sys.argv[1]
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ[name] = os.path.join(root, name)
        os.makedirs(os.environ[name], exist_ok=True)
    os.environ["nnUNet_n_proc_DA"] = "1"
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiments, preprocess
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    raw = os.path.join(os.environ["nnUNet_raw"], "Dataset987_Tiny")
    for folder in ("imagesTr", "labelsTr"):
        os.makedirs(os.path.join(raw, folder), exist_ok=True)
    rng = np.random.default_rng(3)
    for case in range(2):
        shape = (16 + case, 24, 20)
        labels = np.zeros(shape, np.uint8)
        labels[4:10, 5:15, 6:14] = 1
        labels[8:14, 14:20, 2:8] = 2
        image = rng.normal(0, 20, shape) + labels * 100.0
        for array, folder, name in ((image.astype(np.float32), "imagesTr", f"tiny_{case:03d}_0000.nii.gz"),
                                    (labels, "labelsTr", f"tiny_{case:03d}.nii.gz")):
            volume = sitk.GetImageFromArray(array)
            volume.SetSpacing((0.9, 1.1, 2.0))
            sitk.WriteImage(volume, os.path.join(raw, folder, name))
    dataset = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "ball": 1, "box": 2}, "numTraining": 2,
               "file_ending": ".nii.gz", "name": "Tiny"}
    with open(os.path.join(raw, "dataset.json"), "w") as file:
        json.dump(dataset, file)
    extract_fingerprints([987], num_processes=1, check_dataset_integrity=False, verbose=False)
    plan_experiments([987])
    preprocess([987], configurations=("3d_fullres",), num_processes=(1,), show_progress_bar=False)
    with open(os.path.join(os.environ["nnUNet_preprocessed"], "Dataset987_Tiny", "nnUNetPlans.json")) as file:
        plans = json.load(file)
    # As nnU-Net's own run_training sets it: a new training, not a continued one.
    trainer = nnUNetTrainer({**plans, "continue_training": False}, "3d_fullres", 0, dataset, device=torch.device("cpu"))
    trainer.initialize()
    trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()  # sets the mirroring axes it saves
    model = os.path.join(os.environ["nnUNet_results"], "Dataset987_Tiny", "nnUNetTrainer__nnUNetPlans__3d_fullres")
    os.makedirs(os.path.join(model, "fold_0"), exist_ok=True)
    trainer.save_checkpoint(os.path.join(model, "fold_0", "checkpoint_final.pth"))
    for name, content in (("plans.json", plans), ("dataset.json", dataset)):
        with open(os.path.join(model, name), "w") as file:
            json.dump(content, file)
    print(model)
''')


def make_nnunet_model(folder: str) -> str:
    """An nnU-Net v2 trained model folder made under ``folder`` by nnunetv2 itself; returns its path."""
    # UTF-8 whatever the locale: nnunetv2 prints non-ASCII text, and a library loaded earlier in the test
    # process may have set the C locale (its ASCII codec failed on it in the full suite).
    process = subprocess.run([sys.executable, "-c", _NNUNET_SCRIPT, folder], capture_output=True,
                             encoding="utf-8", errors="replace", timeout=600, check=False)
    if process.returncode != 0:
        raise RuntimeError(f"making the nnU-Net model failed:\n{process.stdout}\n{process.stderr}")
    return process.stdout.strip().splitlines()[-1]


def nnunet_directly(model: str, image: sitk.Image, folder: str, mirroring: bool) -> sitk.Image:
    """nnunetv2's predictor from its model folder, reading a NIfTI file and writing one, as nnUNetv2_predict does."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    os.makedirs(os.path.join(folder, "output"), exist_ok=True)
    sitk.WriteImage(image, os.path.join(folder, "case_0000.nii.gz"))
    predictor = nnUNetPredictor(use_mirroring=mirroring, perform_everything_on_device=False,
                                device=torch.device("cpu"), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(model, use_folds=None)
    predictor.predict_from_files_sequential([[os.path.join(folder, "case_0000.nii.gz")]],
                                            os.path.join(folder, "output"), False, True, None)
    return sitk.ReadImage(os.path.join(folder, "output", "case.nii.gz"))


# ------------------------------------------------------------------------------------------------ MONAI bundles


def bundle_directly(bundle: str, input_path: str, output_folder: str) -> sitk.Image:
    """The bundle's own dataset, network, inferer and postprocessing (its SaveImaged included), reading the input
    file and writing the label file: what its evaluator does, without Ignite (which the environment lacks)."""
    import torch
    from monai.bundle import ConfigParser
    from monai.data import decollate_batch

    parser = ConfigParser()
    parser.read_config(os.path.join(bundle, "configs", "inference.json"))
    parser["bundle_root"] = bundle
    parser["device"] = "$torch.device('cpu')"
    parser["output_dir"] = output_folder
    parser["dataset#data"] = [{"image": input_path}]
    parser["dataloader#num_workers"] = 0
    network = parser.get_parsed_content("network")
    network.load_state_dict(torch.load(os.path.join(bundle, "models", "model.pt"), weights_only=True))
    network.eval()
    inferer, postprocessing = parser.get_parsed_content("inferer"), parser.get_parsed_content("postprocessing")
    with torch.no_grad():
        for batch in parser.get_parsed_content("dataloader"):
            batch["pred"] = inferer(batch["image"], network)
            for item in decollate_batch(batch):
                postprocessing(item)
    (written,) = glob.glob(os.path.join(output_folder, "**", "*.nii.gz"), recursive=True)
    return sitk.ReadImage(written)


def make_bundle(name: str, folder: str, seed: int = 0) -> str:
    """The zoo bundle ``name``'s real configuration copied to ``folder/name`` with random weights for its own network
    in ``models/model.pt``; returns the bundle's folder."""
    import torch
    from monai.bundle import ConfigParser

    bundle = os.path.join(folder, name)
    shutil.copytree(os.path.join(ZOO, name), bundle)
    parser = ConfigParser()
    parser.read_config(os.path.join(bundle, "configs", "inference.json"))
    torch.manual_seed(seed)
    network = parser.get_parsed_content("network_def")
    os.makedirs(os.path.join(bundle, "models"), exist_ok=True)
    torch.save(network.state_dict(), os.path.join(bundle, "models", "model.pt"))
    return bundle


def zip_folder(folder: str, archive: str, prefix: str = "") -> str:
    """A zip of every file under ``folder`` (names prefixed with ``prefix``); returns its path."""
    with zipfile.ZipFile(archive, "w") as output:
        for directory, _, names in os.walk(folder):
            for name in sorted(names):
                path = os.path.join(directory, name)
                output.write(path, prefix + os.path.relpath(path, folder).replace(os.sep, "/"))
    return archive


# ------------------------------------------------------------------------------------------------- Auto3DSeg

AUTO3DSEG_LABELS = (
    "LabelValue,Name,SegmentedPropertyCategoryCodeSequence.CodingSchemeDesignator,"
    "SegmentedPropertyCategoryCodeSequence.CodeValue,SegmentedPropertyCategoryCodeSequence.CodeMeaning,"
    "SegmentedPropertyTypeCodeSequence.CodingSchemeDesignator,SegmentedPropertyTypeCodeSequence.CodeValue,"
    "SegmentedPropertyTypeCodeSequence.CodeMeaning,SegmentedPropertyTypeModifierCodeSequence.CodingSchemeDesignator,"
    "SegmentedPropertyTypeModifierCodeSequence.CodeValue,SegmentedPropertyTypeModifierCodeSequence.CodeMeaning,"
    "AnatomicRegionSequence.CodingSchemeDesignator,AnatomicRegionSequence.CodeValue,AnatomicRegionSequence.CodeMeaning,"
    "AnatomicRegionModifierSequence.CodingSchemeDesignator,AnatomicRegionModifierSequence.CodeValue,"
    "AnatomicRegionModifierSequence.CodeMeaning\n"
    "1,liver,SCT,123037004,Anatomical Structure,SCT,10200004,Liver,,,,,,,,,\n"
    "2,left kidney,SCT,123037004,Anatomical Structure,SCT,64033007,Kidney,SCT,7771000,Left,,,,,,\n"
    "3,kidney cyst,SCT,49755003,Morphologically Altered Structure,SCT,367643001,Cyst,,,,SCT,64033007,Kidney,SCT,"
    "7771000,Left\n"
)


def auto3dseg_config(**changes) -> dict:
    """An Auto3DSeg SegResNet inference configuration as its checkpoints hold it (keys the extension's script reads),
    with a small network."""
    config = {
        "network": {"_target_": "SegResNetDS", "init_filters": 8, "blocks_down": [1, 1, 1], "norm": "INSTANCE",
                    "in_channels": 1, "out_channels": 4, "dsdepth": 2},
        "roi_size": [32, 32, 32],
        "resample_resolution": [1.5, 1.5, 1.5],
        "normalize_mode": "range",
        "intensity_bounds": [-200.0, 300.0],
        "crop_foreground": True,
        "orientation_ras": True,
        "sigmoid": False,
        "extra_modalities": {},
    }
    config.update(changes)
    return config


def make_auto3dseg_archive(folder: str, name: str = "tiny-organs-v1.0.0.zip", seed: int = 0, **changes) -> str:
    """A SlicerMONAIAuto3DSeg model archive in ``folder`` (random weights); returns its path."""
    import torch
    from monai.bundle import ConfigParser

    config = auto3dseg_config(**changes)
    torch.manual_seed(seed)
    network = ConfigParser(config["network"]).get_parsed_content()
    checkpoint = {"state_dict": network.state_dict(), "config": config, "epoch": 12,
                  "best_metric": np.float64(0.73)}
    model = os.path.join(folder, "model.pt")
    torch.save(checkpoint, model)
    archive = os.path.join(folder, name)
    with zipfile.ZipFile(archive, "w") as output:
        output.write(model, "model/model.pt")
        output.writestr("model/labels.csv", AUTO3DSEG_LABELS)
    os.remove(model)
    return archive


def write_json(path: str, content) -> str:
    with open(path, "w", encoding="utf-8") as file:
        json.dump(content, file)
    return path

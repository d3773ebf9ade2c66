"""The demo model's training script (DeepSegment/Demo/train_brain_tissue_demo.py) on the augmentation engine:
its crops and variants keep labels on the anatomy, and training steps run (the model itself is not retrained)."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch

DEMO_FOLDER = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "Demo"))
sys.path.insert(0, DEMO_FOLDER)

import train_brain_tissue_demo as demo  # noqa: E402
from mni_template import GRAY_MATTER, WHITE_MATTER, template_folder  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    # The template's files come from the nilearn package installed with the test environment (no download).
    return demo.TrainingData(template_folder(str(tmp_path_factory.mktemp("cache")), None))


def test_crops_come_from_one_engine_call_with_labels_on_the_anatomy(data):
    seeds = [demo.sample_seed(0, 0, index) for index in range(2)]
    images, labels = data.random_crops(seeds, torch.Generator().manual_seed(0), demo.AUGMENTATION)
    crop = (demo.CROP,) * 3
    assert images.shape == (2, 1, *crop) and labels.shape == (2, *crop)
    assert labels.dtype == torch.long and set(labels.unique().tolist()) <= {0, GRAY_MATTER, WHITE_MATTER}
    again, _ = data.random_crops(seeds, torch.Generator().manual_seed(0), demo.AUGMENTATION)
    assert torch.equal(images, again)
    # T1: white matter is brighter than gray matter wherever the crops put them, whatever the changes.
    for image, label in zip(images[:, 0], labels):
        if (label == WHITE_MATTER).any() and (label == GRAY_MATTER).any():
            assert image[label == WHITE_MATTER].mean() > image[label == GRAY_MATTER].mean()


def test_a_whole_volume_variant_lies_on_the_template_grid(data):
    image, labels = data.variant(demo.sample_seed(demo.VALIDATION_SEED, 0, 0), demo.AUGMENTATION)
    assert image.GetSize() == data.reference_image.GetSize() and image.GetSpacing() == data.reference_image.GetSpacing()
    assert labels.shape == data.labels.shape and labels.dtype == np.uint8
    array = sitk.GetArrayFromImage(image)
    assert array[labels == WHITE_MATTER].mean() > array[labels == GRAY_MATTER].mean()


def test_training_runs_steps_on_augmented_crops(data):
    network = demo.TissueUNet(channels=(4, 8))
    curve = demo.train(network, data, minutes=10.0, seed=1, batch=1, settings=demo.AUGMENTATION, steps=2)
    assert [step for step, _, _ in curve] == [2] and np.isfinite(curve[0][2])


@pytest.mark.parametrize("norm, window_wide", [("batch", ""), ("instance", "instance_norm")])
def test_the_published_network_is_local_and_its_instance_norm_variant_is_not(norm, window_wide):
    from DeepSegmentLib.window_plan import window_wide_operation

    network = demo.TissueUNet(channels=(4, 8), norm=norm).eval()
    assert window_wide_operation(torch.jit.script(network)) == window_wide


def test_the_instance_norm_variant_never_replaces_the_published_model(monkeypatch):
    def no_training(*args):  # were the run to go on, it would stop here, before writing anything
        raise AssertionError("the script went on to train")

    monkeypatch.setattr(demo, "TrainingData", no_training)
    with pytest.raises(SystemExit) as refused:
        demo.main(["--norm", "instance", "--steps", "1"])
    assert refused.value.code == 2

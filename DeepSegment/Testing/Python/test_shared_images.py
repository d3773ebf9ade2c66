"""DeepSegmentLib.shared_images: volumes through shared memory between processes, exact geometry, no tracker."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing.resource_tracker
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import SimpleITK as sitk

from DeepSegmentLib.shared_images import (
    NAME_PREFIX,
    SharedBlock,
    allocate_label_map,
    read_shared_image,
    share_image,
    write_shared_image,
)
from ModelRegistryLib.jobs import MODEL_REGISTRY_FOLDER, encode_value

DEEPSEGMENT_FOLDER = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def oblique_image(pixel_type=np.int16, shape=(7, 9, 11)):
    rng = np.random.default_rng(3)
    image = sitk.GetImageFromArray(rng.integers(-1000, 1000, shape).astype(pixel_type))
    angle = np.radians(23.0)
    direction = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, -1]])
    image.SetDirection(direction.ravel().tolist())
    image.SetSpacing((0.7123456789012345, 1.1, 2.4999999999999996))
    image.SetOrigin((12.000000000000002, -40.5, 7.1e-5))
    return image


def same_image(a, b):
    assert a.GetSize() == b.GetSize() and a.GetPixelID() == b.GetPixelID()
    assert (a.GetOrigin(), a.GetSpacing(), a.GetDirection()) == (b.GetOrigin(), b.GetSpacing(), b.GetDirection())
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(a), sitk.GetArrayViewFromImage(b))


def segments_on_disk():
    return {name for name in os.listdir("/dev/shm") if name.startswith(NAME_PREFIX)} if os.path.isdir("/dev/shm") \
        else set()


@pytest.mark.parametrize("pixel_type", [np.int16, np.float32, np.uint8])
def test_an_image_round_trips_with_exact_geometry(pixel_type):
    image = oblique_image(pixel_type)
    block, shared = share_image(image)
    try:
        same_image(read_shared_image(shared), image)
    finally:
        block.close()
        block.unlink()


def test_a_vector_image_keeps_its_components():
    image = sitk.Compose([sitk.Cast(oblique_image(), sitk.sitkFloat32)] * 3)
    block, shared = share_image(image)
    try:
        assert shared.vector
        same_image(read_shared_image(shared), image)
    finally:
        block.close()
        block.unlink()


def test_another_process_writes_the_label_map_and_its_exit_unlinks_nothing(monkeypatch):
    """The worker side attaches and exits; on Python < 3.13 a SharedMemory would unlink at its exit. Neither side
    involves multiprocessing's resource tracker, which would start ``sys.executable``: the Slicer application."""
    registered = []
    monkeypatch.setattr(multiprocessing.resource_tracker, "register", lambda *names: registered.append(names))
    reference = oblique_image()
    before = segments_on_disk()
    inputs, shared = share_image(reference)
    output, label_map = allocate_label_map(reference)
    script = textwrap.dedent(f"""
        import sys
        sys.path[:0] = [{DEEPSEGMENT_FOLDER!r}, {MODEL_REGISTRY_FOLDER!r}]
        import json, multiprocessing.resource_tracker, SimpleITK as sitk
        from DeepSegmentLib.shared_images import read_shared_image, write_shared_image
        from ModelRegistryLib.jobs import decode_value
        image = read_shared_image(decode_value(json.loads({json.dumps(encode_value(shared))!r})))
        labels = sitk.Cast(sitk.BinaryThreshold(image, 0, 10000), sitk.sitkUInt8)
        written = write_shared_image(labels, decode_value(json.loads({json.dumps(encode_value(label_map))!r})))
        print(written.dtype, multiprocessing.resource_tracker._resource_tracker._pid)
    """)
    try:
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["|u1", "None"], "the worker side started no resource tracker"
        labels = read_shared_image(dataclasses.replace(label_map, dtype="|u1"))
        np.testing.assert_array_equal(sitk.GetArrayViewFromImage(labels),
                                      (sitk.GetArrayViewFromImage(reference) >= 0).astype(np.uint8))
        assert labels.GetDirection() == reference.GetDirection()
        same_image(read_shared_image(shared), reference)  # still there after the other process exited
    finally:
        for block in (inputs, output):
            block.close()
            block.unlink()
    assert segments_on_disk() == before
    assert registered == [], "Slicer's side registered nothing with the resource tracker"


def test_a_label_map_off_the_input_size_or_too_wide_is_refused():
    reference = oblique_image()
    block, label_map = allocate_label_map(reference)
    try:
        with pytest.raises(ValueError, match="not the input's"):
            write_shared_image(sitk.Image(3, 3, 3, sitk.sitkUInt8), label_map)
        with pytest.raises(ValueError, match="cannot be sent back"):
            write_shared_image(sitk.Cast(reference, sitk.sitkInt32), label_map)
    finally:
        block.close()
        block.unlink()


def test_attaching_a_freed_segment_fails():
    block = SharedBlock.create(16)
    name = block.name
    block.close()
    block.unlink()
    with pytest.raises(FileNotFoundError):
        SharedBlock.attach(name)

"""The MNI ICBM152 2009a template (T1 and gray/white matter probabilities) and the demo's reference labels.

The three NIfTI files ship inside the ``nilearn`` wheel on PyPI. Installing nilearn would pull scipy,
scikit-learn, pandas, nibabel, joblib and requests into the environment for three data files, so the
demo reads them straight from the wheel (a zip) instead:

1. an importable ``nilearn`` (any version that has the files) is used as it is;
2. else files unpacked by an earlier run in ``<cache>/mni-icbm152-2009a`` are reused;
3. else the pinned wheel is fetched with ``pip download nilearn==0.14.1 --no-deps`` (about 11 MB,
   or taken from ``wheel`` when given), checked against its sha256, and the three files are unpacked.

Reference labels: background 0, gray matter 1, white matter 2. A voxel is tissue when the template says
it is more likely tissue than not (``gm + wm >= MIN_TISSUE_PROBABILITY``), and then the likelier tissue;
that is the argmax of (1 - gm - wm, gm, wm) except that a voxel where no class reaches one half (a
partial-volume voxel at the cortex) is decided by tissue versus background first.

Example::

    >>> import numpy as np
    >>> gm = np.array([0.6, 0.2, 0.3, 0.0]); wm = np.array([0.1, 0.7, 0.25, 0.0])
    >>> reference_labels(gm, wm).tolist()
    [1, 2, 1, 0]
    >>> dice_scores(np.array([1, 2, 2, 0]), np.array([1, 2, 1, 0]), [1, 2])
    {1: 0.6666666666666666, 2: 0.6666666666666666}
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

NILEARN_VERSION = "0.14.1"
NILEARN_WHEEL = f"nilearn-{NILEARN_VERSION}-py3-none-any.whl"
NILEARN_WHEEL_SHA256 = "725206484e9fb3f6691f9c2d20204a068759d5072f12055324702ee0cb2bbe8a"
DATA_FOLDER_IN_PACKAGE = "datasets/data"
TEMPLATE_FILES = {
    kind: f"mni_icbm152_{kind}_tal_nlin_sym_09a_converted.nii.gz" for kind in ("t1", "gm", "wm")
}
CACHE_SUBFOLDER = "mni-icbm152-2009a"

MIN_TISSUE_PROBABILITY = 0.5
BACKGROUND, GRAY_MATTER, WHITE_MATTER = 0, 1, 2

# The template's terms (nilearn lists its license as "unknown"; this is the COPYING file of the MNI archive).
TEMPLATE_NOTICE = (
    "Trained on the MNI ICBM152 2009a nonlinear symmetric template: Copyright (C) 1993-2004 Louis Collins, "
    "McConnell Brain Imaging Centre, Montreal Neurological Institute, McGill University. Permission to use, "
    "copy, modify, and distribute this software and its documentation for any purpose and without fee is hereby "
    "granted, provided that the above copyright notice appear in all copies. The authors and McGill University "
    "make no representations about the suitability of this software for any purpose. It is provided \"as is\" "
    "without express or implied warranty. The authors are not responsible for any data loss, equipment damage, "
    "property loss, or injury to subjects or patients resulting from the use or misuse of this software package."
)


class TemplateNotFoundError(RuntimeError):
    """The template files could be neither found nor fetched."""


def _nilearn_data_folder() -> str | None:
    # find_spec locates the package without importing it (importing nilearn is slow and needs its dependencies).
    spec = importlib.util.find_spec("nilearn")
    for location in (spec.submodule_search_locations or []) if spec else []:
        folder = os.path.join(location, *DATA_FOLDER_IN_PACKAGE.split("/"))
        if all(os.path.isfile(os.path.join(folder, name)) for name in TEMPLATE_FILES.values()):
            return folder
    return None


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download_wheel(folder: str) -> str:
    command = [sys.executable, "-m", "pip", "download", f"nilearn=={NILEARN_VERSION}", "--no-deps",
               "--only-binary=:all:", "--disable-pip-version-check", "--quiet", "--dest", folder]
    result = subprocess.run(command, capture_output=True, text=True)
    wheel = os.path.join(folder, NILEARN_WHEEL)
    if result.returncode != 0 or not os.path.isfile(wheel):
        raise TemplateNotFoundError(
            f"Could not download {NILEARN_WHEEL} from PyPI ({result.stderr.strip() or 'no wheel written'}). "
            f"On a machine with network access run `pip download nilearn=={NILEARN_VERSION} --no-deps` and pass "
            "the wheel with --nilearn-wheel."
        )
    return wheel


def _unpack_from_wheel(wheel: str, target: str) -> None:
    if sha256_of(wheel) != NILEARN_WHEEL_SHA256:
        raise TemplateNotFoundError(f"{wheel} is not the nilearn {NILEARN_VERSION} wheel (sha256 differs)")
    os.makedirs(target, exist_ok=True)
    with zipfile.ZipFile(wheel) as archive:
        for name in TEMPLATE_FILES.values():
            partial = os.path.join(target, name + ".part")
            with archive.open(f"nilearn/{DATA_FOLDER_IN_PACKAGE}/{name}") as source, open(partial, "wb") as out:
                shutil.copyfileobj(source, out)
            # Renamed only when complete, so an interrupted run never leaves a truncated file to reuse.
            os.replace(partial, os.path.join(target, name))


def template_folder(cache_dir: str, wheel: str | None = None) -> str:
    """The folder holding the three template files, fetching them into ``cache_dir`` when needed."""
    if wheel is None:
        found = _nilearn_data_folder()
        if found:
            return found
    target = os.path.join(cache_dir, CACHE_SUBFOLDER)
    if wheel is None and all(os.path.isfile(os.path.join(target, name)) for name in TEMPLATE_FILES.values()):
        return target
    if wheel is not None:
        _unpack_from_wheel(wheel, target)
        return target
    with tempfile.TemporaryDirectory(prefix="nilearn-wheel-") as download_folder:
        _unpack_from_wheel(_download_wheel(download_folder), target)
    return target


def read_template(folder: str) -> dict:
    """``{"t1", "gm", "wm"}`` → float32 SimpleITK images (probabilities scaled to 0..1)."""
    images = {}
    for kind, name in TEMPLATE_FILES.items():
        image = sitk.Cast(sitk.ReadImage(os.path.join(folder, name)), sitk.sitkFloat32)
        # The probability maps are stored as bytes, 255 meaning certain.
        images[kind] = image / 255.0 if kind != "t1" else image
    return images


def reference_labels(gm: np.ndarray, wm: np.ndarray) -> np.ndarray:
    """Background 0 / gray matter 1 / white matter 2 from the two probability maps (any shape)."""
    tissue = (gm + wm) >= MIN_TISSUE_PROBABILITY
    return np.where(tissue, np.where(wm > gm, WHITE_MATTER, GRAY_MATTER), BACKGROUND).astype(np.uint8)


def dice_scores(prediction: np.ndarray, reference: np.ndarray, values: Sequence[int]) -> dict:
    """Dice of each label value between two label arrays (1.0 where both lack the label)."""
    scores = {}
    for value in values:
        a, b = prediction == value, reference == value
        total = int(a.sum()) + int(b.sum())
        scores[value] = 2.0 * int(np.logical_and(a, b).sum()) / total if total else 1.0
    return scores


def reference_label_image(gm: sitk.Image, wm: sitk.Image) -> sitk.Image:
    """:func:`reference_labels` as an image on the probability maps' grid."""
    labels = sitk.GetImageFromArray(reference_labels(sitk.GetArrayFromImage(gm), sitk.GetArrayFromImage(wm)))
    labels.CopyInformation(gm)
    return labels


def resample_isotropic(image: sitk.Image, spacing: float, interpolator: int = sitk.sitkLinear) -> sitk.Image:
    """``image`` on a grid of the same extent, origin corner and direction with ``spacing`` mm voxels."""
    old_spacing = np.array(image.GetSpacing())
    old_size = np.array(image.GetSize())
    size = [int(n) for n in np.ceil(old_size * old_spacing / spacing)]
    direction = np.array(image.GetDirection()).reshape(3, 3)
    # Keep the outer corner of the first voxel where it was: the centre moves by half the spacing change.
    origin = np.array(image.GetOrigin()) + direction @ ((spacing - old_spacing) / 2.0)
    return sitk.Resample(image, size, sitk.Transform(), interpolator, tuple(origin), (spacing,) * 3,
                         image.GetDirection(), 0.0, image.GetPixelID())

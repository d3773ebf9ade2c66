"""SimpleITK images in memory, read by MONAI's own ``LoadImage(d)`` as if from files: no temporary files.

A MONAI pipeline starts with ``LoadImaged``, which takes file names, picks a reader, and makes a ``MetaTensor``
(array, affine in RAS, meta data) that every later transform, and ``Invertd`` at the end, relies on. Rather than
writing the volumes to disk, :class:`MemoryImageReader` is registered with the pipeline's own loaders and answers
for the names it hands out: it gives exactly what MONAI's ``ITKReader`` gives for the same image read from a NIfTI
or NRRD file (the array with x first, the affine in RAS, spacing, spatial shape, no channel
dimension; several images for one key stacked as channels), and ``LoadImage`` itself does the rest (dtype,
``ensure_channel_first``, ``image_only``, meta keys), so the pipeline runs unchanged.

Example::

    >>> import numpy as np, SimpleITK as sitk
    >>> from monai.transforms import LoadImaged
    >>> image = sitk.GetImageFromArray(np.arange(24, dtype=np.int16).reshape(2, 3, 4))
    >>> image.SetSpacing((0.5, 1.0, 2.0))
    >>> reader = MemoryImageReader()
    >>> name = reader.add(image)
    >>> loader = LoadImaged(keys="image", ensure_channel_first=True)
    >>> register_reader(loader, reader)
    1
    >>> loaded = loader({"image": name})["image"]
    >>> tuple(loaded.shape), loaded.affine.diagonal().tolist()
    ((1, 4, 3, 2), [-0.5, -1.0, 2.0, 1.0])
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk
from monai.data import ImageReader
from monai.transforms import Compose, LoadImage, LoadImaged
from monai.utils import MetaKeys, SpaceKeys

from ..geometry import ijk_to_ras_from_image

# Names without "/" or ":", which LoadImage turns into paths and Windows would read as a drive.
PREFIX = "DeepSegment-in-memory-image-"


class MemoryImageReader(ImageReader):
    """A MONAI image reader of SimpleITK images held in memory under names it gives out (:meth:`add`)."""

    def __init__(self) -> None:
        super().__init__()
        self.images: dict = {}

    def add(self, image: sitk.Image) -> str:
        """A name ``LoadImage`` can be given for ``image``."""
        name = f"{PREFIX}{len(self.images)}"
        self.images[name] = image
        return name

    @staticmethod
    def _names(data) -> list:
        return [str(name) for name in (data if isinstance(data, (list, tuple)) else [data])]

    def verify_suffix(self, filename) -> bool:
        return all(name in self.images for name in self._names(filename))

    def read(self, data, **kwargs):
        names = self._names(data)
        unknown = [name for name in names if name not in self.images]
        if unknown:
            raise ValueError(f"{unknown[0]} is not an image held in memory")
        images = [self.images[name] for name in names]
        return images if len(images) > 1 else images[0]

    def get_data(self, img) -> tuple:
        """``(array, meta)`` as ``ITKReader.get_data`` makes them for the same image read from a file."""
        arrays, meta = [], {}
        for image in img if isinstance(img, (list, tuple)) else [img]:
            # NumPy's view of a SimpleITK image is (z, y, x); MONAI's arrays are (x, y, z).
            arrays.append(sitk.GetArrayViewFromImage(image).T)
            affine = ijk_to_ras_from_image(image)
            spatial_shape = np.asarray(image.GetSize())
            if not meta:
                meta = {
                    "spacing": np.asarray(image.GetSpacing()),
                    MetaKeys.ORIGINAL_AFFINE: affine,
                    MetaKeys.AFFINE: affine.copy(),
                    MetaKeys.SPATIAL_SHAPE: spatial_shape,
                    MetaKeys.SPACE: SpaceKeys.RAS,
                    MetaKeys.ORIGINAL_CHANNEL_DIM: float("nan"),
                }
            elif not (np.allclose(affine, meta[MetaKeys.AFFINE]) and np.array_equal(spatial_shape,
                                                                                  meta[MetaKeys.SPATIAL_SHAPE])):
                raise ValueError("the input volumes stacked as channels of one image must share one voxel grid")
        if len(arrays) == 1:
            return arrays[0], meta
        # Several files for one key are channels, stacked first (as MONAI's readers stack them).
        meta[MetaKeys.ORIGINAL_CHANNEL_DIM] = 0
        return np.stack(arrays, axis=0), meta


def loaders(transform) -> list:
    """Every ``LoadImage`` and ``LoadImaged`` in a transform, inside Compose chains too."""
    if isinstance(transform, (LoadImage, LoadImaged)):
        return [transform]
    if isinstance(transform, Compose):
        return [found for inner in transform.transforms for found in loaders(inner)]
    if isinstance(transform, Sequence) and not isinstance(transform, str):
        return [found for inner in transform for found in loaders(inner)]
    return []


def register_reader(transform, reader: MemoryImageReader) -> int:
    """Register ``reader`` with every loader of ``transform``, ahead of its own readers; how many loaders there are.

    ``LoadImage`` tries its readers last registered first, whether it picks them by file suffix or tries those it
    was configured with, so the in-memory names reach this reader and nothing else changes.
    """
    found = loaders(transform)
    for loader in found:
        loader.register(reader)
    return len(found)


def loader_keys(transform) -> tuple:
    """The data keys the first ``LoadImaged`` of ``transform`` reads (``("image",)`` for most bundles)."""
    for loader in loaders(transform):
        if isinstance(loader, LoadImaged):
            return tuple(loader.keys)
    return ()

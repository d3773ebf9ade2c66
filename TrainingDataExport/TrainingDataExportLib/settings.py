"""How an export is written (:class:`ExportSettings`), the nnU-Net dataset folder it goes to, and the label values
and channel names nnU-Net and MONAI need.

- **nnU-Net dataset folder**: nnU-Net finds a dataset as ``nnUNet_raw/Dataset<NNN>_<Name>``, with an id unique on
  the machine. An output folder already named ``Dataset<NNN>_<Name>`` is that dataset folder itself; any other
  output folder is taken as ``nnUNet_raw`` and the dataset folder is made inside it from ``dataset_id`` (1 to
  999, default 1) and ``dataset_name`` (letters, digits, ``_`` and ``-``; default ``Export``). Settings that
  contradict the name of a dataset folder chosen as output are refused.
- **Consecutive label values**: nnU-Net needs the label values 0, 1, 2, ... without gaps and refuses a dataset
  otherwise. A schema with gaps (1, 3) is exported to nnU-Net with its labels numbered in schema value order
  (1, 2): ``dataset.json`` names each label with its new value, and the dataset card lists the mapping (its
  statistics keep the schema's values). Other formats keep the schema's values.
- **Channel names**: nnU-Net chooses each channel's intensity normalization by its name in ``dataset.json``:
  ``CT`` (dataset-wide percentiles, for Hounsfield units), ``noNorm``, ``zscore``, ``rescale_to_0_1``,
  ``rgb_to_0_1``; any other name gets z-score. ``channel_names`` gives one name per channel, in the case
  list's channel order; without it the case list's channel names are used and the export warns when
  nnU-Net does not know them (a CT would silently get z-score).

Example::

    >>> settings = ExportSettings("nnunet", dataset_id=42, dataset_name="Liver", channel_names=("CT",))
    >>> nnunet_dataset("/data/nnUNet_raw", settings)
    ('/data/nnUNet_raw/Dataset042_Liver', 'Dataset042_Liver', '')
    >>> nnunet_dataset("/data/nnUNet_raw/Dataset901_Liver", ExportSettings("nnunet"))
    ('/data/nnUNet_raw/Dataset901_Liver', 'Dataset901_Liver', '')
    >>> consecutive_label_values([1, 3, 7])
    {1: 1, 3: 2, 7: 3}
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from .segmentations import OVERLAP_POLICIES

FORMATS = ("nnunet", "monai", "pairs", "slices2d")
INTERPOLATIONS = ("linear", "bspline")
PAIRS_EXTENSIONS = (".nii.gz", ".nii", ".nrrd")
# The channel names nnU-Net v2 maps to a normalization (nnunetv2.preprocessing.normalization), as it compares them.
NNUNET_NORMALIZATION_NAMES = ("CT", "noNorm", "zscore", "rescale_to_0_1", "rgb_to_0_1")
DEFAULT_NNUNET_DATASET_ID = 1
DEFAULT_NNUNET_DATASET_NAME = "Export"
NNUNET_DATASET_FOLDER = re.compile(r"^Dataset(\d{3})_([A-Za-z0-9_\-]+)$")
_NNUNET_NAME = re.compile(r"^[A-Za-z0-9_\-]+$")
# A case resampled to the target spacing may hold at most this many voxels (2 GiB of 16-bit voxels): a typo in
# the spacing (0.001 mm) would otherwise fill the disk and the memory.
MAX_VOXELS_PER_CASE = 1 << 30


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class ExportSettings:
    """How to export; every setting is recorded in the manifest and the dataset card."""

    format: str  # "nnunet" | "monai" | "pairs" | "slices2d"
    spacing: tuple | None = None  # target (x, y, z) mm; None: the native grid
    crop_margin_mm: float | None = None  # crop to the labelled region plus this margin; None: no crop
    image_interpolation: str = "linear"  # "linear" | "bspline" (labels always nearest)
    compression_level: int = 1  # gzip level 0-9 for .nii.gz / .nrrd; 0: uncompressed
    resample_label_to_image: bool = False  # label grid differs from the image's: resample it instead of failing
    overlap: str = "error"  # overlapping segments: "error" | "schema-order" (later schema label wins)
    pairs_extension: str = ".nii.gz"  # pairs: ".nii.gz", ".nii" or ".nrrd"
    slice_axis: int = 2  # slices2d: voxel axis (0=i, 1=j, 2=k) of the exported grid
    slice_format: str = "png"  # slices2d: "png" or "npy"
    slices_with_labels_only: bool = False  # slices2d: skip slices without any labelled voxel
    dataset_id: int | None = None  # nnunet: 1-999; None: from an output folder named DatasetNNN_Name, else 1
    dataset_name: str | None = None  # nnunet: the Name of DatasetNNN_Name; None: from the folder, else "Export"
    channel_names: tuple = ()  # nnunet: one name per channel for dataset.json (CT, noNorm...); (): the case list's

    def problems(self) -> list:
        """What is wrong with these settings (empty when nothing)."""
        found = []
        if self.format not in FORMATS:
            found.append(f"format must be one of {', '.join(FORMATS)}, not {self.format!r}")
        if self.spacing is not None and (
            not isinstance(self.spacing, (tuple, list))
            or len(self.spacing) != 3
            or not all(_is_number(s) and s > 0 for s in self.spacing)
        ):
            found.append(f"spacing must be three positive, finite numbers (x, y, z mm), not {self.spacing!r}")
        if self.crop_margin_mm is not None and not (_is_number(self.crop_margin_mm) and self.crop_margin_mm >= 0):
            found.append(f"crop_margin_mm must be a finite number, 0 or more, not {self.crop_margin_mm!r}")
        if self.image_interpolation not in INTERPOLATIONS:
            found.append(f"image_interpolation must be linear or bspline, not {self.image_interpolation!r}")
        if isinstance(self.compression_level, bool) or self.compression_level not in range(10):
            found.append(f"compression_level must be 0 to 9, not {self.compression_level!r}")
        if self.overlap not in OVERLAP_POLICIES:
            found.append(f"overlap must be one of {', '.join(OVERLAP_POLICIES)}, not {self.overlap!r}")
        if self.pairs_extension not in PAIRS_EXTENSIONS:
            found.append(f"pairs_extension must be .nii.gz, .nii or .nrrd, not {self.pairs_extension!r}")
        if isinstance(self.slice_axis, bool) or self.slice_axis not in (0, 1, 2):
            found.append(f"slice_axis must be 0, 1 or 2, not {self.slice_axis!r}")
        if self.slice_format not in ("png", "npy"):
            found.append(f"slice_format must be png or npy, not {self.slice_format!r}")
        if self.dataset_id is not None and (
            isinstance(self.dataset_id, bool) or not isinstance(self.dataset_id, int) or not 1 <= self.dataset_id <= 999
        ):
            found.append(f"dataset_id must be a whole number from 1 to 999, not {self.dataset_id!r}")
        if self.dataset_name is not None:
            if not isinstance(self.dataset_name, str) or not _NNUNET_NAME.match(self.dataset_name):
                found.append(
                    f"dataset_name must be letters, digits, '_' or '-' (like Liver), not {self.dataset_name!r}"
                )
            elif NNUNET_DATASET_FOLDER.match(self.dataset_name):
                found.append(
                    f"dataset_name is the name part of the folder, not the folder: use dataset_id and a name like "
                    f"Liver instead of {self.dataset_name!r}"
                )
        if not isinstance(self.channel_names, (tuple, list)) or not all(
            isinstance(name, str) and name.strip() == name and name for name in self.channel_names
        ):
            found.append(
                f"channel_names must be non-empty names without surrounding spaces, not {self.channel_names!r}"
            )
        return found

    def to_json(self) -> dict:
        data = dataclasses.asdict(self)
        data["spacing"] = None if self.spacing is None else [float(s) for s in self.spacing]
        data["channel_names"] = list(self.channel_names)
        return data


def nnunet_dataset(output_dir: str, settings: ExportSettings) -> tuple:
    """``(dataset folder, its name DatasetNNN_Name, problem or "")`` of an nnU-Net export to ``output_dir`` (see the
    module description)."""
    output_dir = os.path.abspath(os.fspath(output_dir))
    match = NNUNET_DATASET_FOLDER.match(os.path.basename(output_dir))
    if match:
        folder_id, folder_name = int(match.group(1)), match.group(2)
        wanted_id = folder_id if settings.dataset_id is None else settings.dataset_id
        wanted_name = folder_name if settings.dataset_name is None else settings.dataset_name
        problem = ""
        if (wanted_id, wanted_name) != (folder_id, folder_name):
            problem = (
                f"the output folder {os.path.basename(output_dir)} is nnU-Net dataset {folder_id} {folder_name!r}, "
                f"but the settings ask for dataset {wanted_id} {wanted_name!r}: choose the nnUNet_raw folder as "
                "output, or settings that match the folder"
            )
        return output_dir, os.path.basename(output_dir), problem
    dataset_id = DEFAULT_NNUNET_DATASET_ID if settings.dataset_id is None else settings.dataset_id
    name = f"Dataset{dataset_id:03d}_{settings.dataset_name or DEFAULT_NNUNET_DATASET_NAME}"
    return os.path.join(output_dir, name), name, ""


def export_root(output_dir: str, settings: ExportSettings) -> str:
    """The folder an export owns: nnU-Net's dataset folder, else the output folder itself."""
    if settings.format == "nnunet":
        return nnunet_dataset(output_dir, settings)[0]
    return os.path.abspath(os.fspath(output_dir))


def consecutive_label_values(values: Sequence[int]) -> dict:
    """schema value -> 1, 2, 3... in increasing order: the values nnU-Net needs (0 stays the background)."""
    return {value: index for index, value in enumerate(sorted(v for v in values if v > 0), start=1)}


def nnunet_channel_names(settings: ExportSettings, channels: Sequence[str]) -> tuple:
    """``(names for dataset.json in channel order, problem or "", warning or "")``."""
    if settings.channel_names:
        if len(settings.channel_names) != len(channels):
            return (), (
                f"channel_names gives {len(settings.channel_names)} name(s) for {len(channels)} channel(s) "
                f"({', '.join(channels)})"
            ), ""
        return tuple(settings.channel_names), "", ""
    unknown = [name for name in channels if name.casefold() not in {n.casefold() for n in NNUNET_NORMALIZATION_NAMES}]
    warning = ""
    if unknown:
        warning = (
            f"nnU-Net chooses each channel's normalization by its name, and gives z-score to channel(s) "
            f"{', '.join(unknown)}; set the channel names ({', '.join(NNUNET_NORMALIZATION_NAMES)}, or any name for "
            "z-score) to say what they are: a CT needs CT"
        )
    return tuple(channels), "", warning

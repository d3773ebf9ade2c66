"""Image files checked before their voxels are trusted: data as long as the header says, and no NaN or infinity.

ITK's readers do not say everything: a NIfTI file (``.nii``, ``.nii.gz``) cut short is read with the missing
voxels set to 0, NaN and infinite values in a NIfTI file come back as 0, and ITK's NIfTI writer reports no
error when the disk fills up. A model would then segment zeros, and an export would train on them, without
a word. :func:`check_image_file` therefore reads the header of NIfTI-1/NIfTI-2 (single file, plain or
gzip), NRRD (attached or detached data; raw, gzip or bzip2) and MetaImage (``.mha``, ``.mhd``; raw or zlib)
files itself, and checks that the data holds every voxel the header announces and, for floating-point
voxels, that every one is a finite number. Compressed integer data is checked by the uncompressed size its
gzip trailer records (one read of 4 bytes); floating-point data is read once. Other formats (DICOM, PNG...)
are left to ITK's reader.

Such a file is refused with :class:`ImageFileError`, a one-line message naming the file; there is no option
to accept it, because a value a reader must invent (0 for a NaN) silently changes what a model sees.

Example::

    >>> import os, tempfile
    >>> import numpy as np, SimpleITK as sitk
    >>> path = os.path.join(tempfile.mkdtemp(), "ct.nii")
    >>> sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 4, 5), np.int16)), path)
    >>> check_image_file(path)
    False
    >>> with open(path, "r+b") as file:
    ...     _ = file.truncate(os.path.getsize(path) - 10)
    >>> check_image_file(path)
    Traceback (most recent call last):
    ...
    DeepSegmentLib.imagecheck.ImageFileError: .../ct.nii holds 110 bytes of image data where its header announces ...
"""

from __future__ import annotations

import bz2
import dataclasses
import gzip
import math
import os
import re
import struct
import zlib
from dataclasses import dataclass

import numpy as np

_CHUNK = 1 << 22
# A header larger than this is not one of the formats read here (or is damaged): ITK's reader decides.
_MAX_HEADER_BYTES = 1 << 20


class ImageFileError(ValueError):
    """An image file whose data cannot be trusted; the message (one line) names the file and says why."""


@dataclass(frozen=True)
class DataLayout:
    """Where an image file keeps its voxels, as its header says.

    ``offset`` is the first data byte in ``data_path`` (for compressed data, in the uncompressed stream, whose
    compressed bytes start at ``stream_start``); ``encoding`` is "raw", "gzip", "bzip2" or "zlib"; ``dtype`` is
    the voxel type with its byte order, or None when the values need no check (integers, or unknown).
    """

    data_path: str
    offset: int
    encoding: str
    element_count: int
    element_size: int
    dtype: np.dtype | None = None
    stream_start: int = 0
    compressed_size: int | None = None

    @property
    def data_bytes(self) -> int:
        return self.element_count * self.element_size


# --- NIfTI ---------------------------------------------------------------------------------------------------

_NIFTI_FLOAT_TYPES = {16: "f4", 64: "f8", 32: "c8", 1792: "c16"}


def _nifti_layout(path: str) -> DataLayout | None:
    compressed = path.lower().endswith(".gz")
    try:
        with (gzip.open(path, "rb") if compressed else open(path, "rb")) as file:
            header = file.read(540)
    except (EOFError, OSError, zlib.error) as error:
        raise ImageFileError(f"Cannot read {path} as NIfTI: {error}") from None
    for endian in "<>":
        if len(header) >= 348 and struct.unpack(endian + "i", header[:4])[0] == 348:
            if header[344:348] != b"n+1\x00":
                return None  # a header/image pair or an Analyze file: ITK's reader decides
            dims = struct.unpack(endian + "8h", header[40:56])
            datatype, bitpix = struct.unpack(endian + "2h", header[70:74])
            offset = int(struct.unpack(endian + "f", header[108:112])[0])
            break
        if len(header) >= 540 and struct.unpack(endian + "i", header[:4])[0] == 540:
            if header[4:8] != b"n+2\x00":
                return None
            datatype, bitpix = struct.unpack(endian + "2h", header[12:16])
            dims = struct.unpack(endian + "8q", header[16:80])
            offset = struct.unpack(endian + "q", header[168:176])[0]
            break
    else:
        return None
    if not 1 <= dims[0] <= 7 or any(d < 0 for d in dims[1 : dims[0] + 1]) or bitpix <= 0 or bitpix % 8:
        return None
    float_type = _NIFTI_FLOAT_TYPES.get(datatype)
    return DataLayout(
        data_path=path,
        offset=max(offset, 348),
        encoding="gzip" if compressed else "raw",
        element_count=math.prod(dims[1 : dims[0] + 1]),
        element_size=bitpix // 8,
        dtype=np.dtype(endian + float_type) if float_type else None,
    )


# --- NRRD ----------------------------------------------------------------------------------------------------


def _nrrd_types() -> dict:
    names = {
        1: ("signed char", "int8", "int8_t", "uchar", "unsigned char", "uint8", "uint8_t"),
        2: ("short", "short int", "signed short", "signed short int", "int16", "int16_t",
            "ushort", "unsigned short", "unsigned short int", "uint16", "uint16_t"),
        4: ("int", "signed int", "int32", "int32_t", "uint", "unsigned int", "uint32", "uint32_t"),
        8: ("longlong", "long long", "long long int", "signed long long", "signed long long int", "int64",
            "int64_t", "ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t"),
    }
    types = {name: (size, None) for size, aliases in names.items() for name in aliases}
    types.update({"float": (4, "f4"), "double": (8, "f8")})
    return types


_NRRD_TYPES = _nrrd_types()
_NRRD_ENCODINGS = {"raw": "raw", "gzip": "gzip", "gz": "gzip", "bzip2": "bzip2", "bz2": "bzip2"}


def _header_lines(path: str, last_line) -> tuple:
    """``(lines, bytes up to and including the last header line)`` of a text header ending where
    ``last_line(line)`` is true (None when no such line comes within the size limit)."""
    lines, length = [], 0
    with open(path, "rb") as file:
        for raw in file:
            length += len(raw)
            if length > _MAX_HEADER_BYTES:
                return None, 0
            line = raw.decode("latin-1").rstrip("\r\n")
            lines.append(line)
            if last_line(line):
                return lines, length
    return None, 0


def _nrrd_layout(path: str) -> DataLayout | None:
    with open(path, "rb") as file:
        if file.read(4) != b"NRRD":
            return None
    lines, header_bytes = _header_lines(path, lambda line: not line.strip())
    detached = path.lower().endswith(".nhdr")
    if lines is None and not detached:
        return None
    fields = {}
    for line in lines or _all_lines(path):
        if line.startswith("#") or ":=" in line:
            continue
        key, separator, value = line.partition(":")
        if separator:
            fields[" ".join(key.lower().split())] = value.strip()
    element = _NRRD_TYPES.get(" ".join(fields.get("type", "").lower().split()))
    encoding = _NRRD_ENCODINGS.get(fields.get("encoding", "").lower())
    try:
        sizes = [int(size) for size in fields.get("sizes", "").split()]
        byte_skip = int(fields.get("byte skip", fields.get("byteskip", "0")))
        line_skip = int(fields.get("line skip", fields.get("lineskip", "0")))
    except ValueError:
        return None
    if element is None or encoding is None or not sizes or byte_skip < 0 or line_skip:
        return None  # unusual layouts (data at the end, skipped lines, text encodings) are left to ITK
    data_file = fields.get("data file", fields.get("datafile"))
    if data_file is not None:
        if data_file.upper().startswith("LIST") or " " in data_file or "%" in data_file:
            return None
        data_path, stream_start = os.path.join(os.path.dirname(path), data_file), 0
    elif detached or lines is None:
        return None
    else:
        data_path, stream_start = path, header_bytes
    size, float_type = element
    endian = ">" if fields.get("endian", "little").lower() == "big" else "<"
    return DataLayout(
        data_path=data_path,
        offset=stream_start + byte_skip if encoding == "raw" else byte_skip,
        encoding=encoding,
        element_count=math.prod(sizes),
        element_size=size,
        dtype=np.dtype(endian + float_type) if float_type else None,
        stream_start=stream_start,
    )


def _all_lines(path: str) -> list:
    with open(path, "rb") as file:
        data = file.read(_MAX_HEADER_BYTES)
    return data.decode("latin-1").splitlines()


# --- MetaImage -----------------------------------------------------------------------------------------------

_META_TYPES = {
    "MET_CHAR": (1, None), "MET_UCHAR": (1, None), "MET_SHORT": (2, None), "MET_USHORT": (2, None),
    "MET_INT": (4, None), "MET_UINT": (4, None), "MET_LONG_LONG": (8, None), "MET_ULONG_LONG": (8, None),
    "MET_FLOAT": (4, "f4"), "MET_DOUBLE": (8, "f8"),
}
_META_KEY = re.compile(r"^\s*(\w+)\s*=\s*(.*?)\s*$")


def _meta_layout(path: str) -> DataLayout | None:
    lines, header_bytes = _header_lines(path, lambda line: line.strip().lower().startswith("elementdatafile"))
    if lines is None:
        return None
    fields = {}
    for line in lines:
        match = _META_KEY.match(line)
        if match:
            fields[match.group(1).lower()] = match.group(2)
    element = _META_TYPES.get(fields.get("elementtype", "").upper())
    try:
        sizes = [int(size) for size in fields.get("dimsize", "").split()]
        channels = int(fields.get("elementnumberofchannels", "1"))
        header_size = int(fields.get("headersize", "0"))
        compressed_size = int(fields["compresseddatasize"]) if "compresseddatasize" in fields else None
    except ValueError:
        return None
    data_file = fields.get("elementdatafile", "")
    if element is None or not sizes or header_size < 0 or data_file.upper().startswith("LIST") or "%" in data_file:
        return None
    if data_file.upper() == "LOCAL":
        data_path, start = path, header_bytes
    else:
        data_path, start = os.path.join(os.path.dirname(path), data_file), header_size
    compressed = fields.get("compresseddata", "false").lower() == "true"
    big_endian = fields.get("binarydatabyteordermsb", fields.get("elementbyteordermsb", "false")).lower() == "true"
    size, float_type = element
    return DataLayout(
        data_path=data_path,
        offset=0 if compressed else start,
        encoding="zlib" if compressed else "raw",
        element_count=math.prod(sizes) * channels,
        element_size=size,
        dtype=np.dtype((">" if big_endian else "<") + float_type) if float_type else None,
        stream_start=start,
        compressed_size=compressed_size,
    )


# --- the check -----------------------------------------------------------------------------------------------


def data_layout(path: str) -> DataLayout | None:
    """The :class:`DataLayout` of a NIfTI, NRRD or MetaImage file (by its name's ending), or None for any other
    file or one whose layout is unusual (then ITK's reader alone decides)."""
    lower = path.lower()
    if lower.endswith((".nii", ".nii.gz")):
        return _nifti_layout(path)
    if lower.endswith((".nrrd", ".nhdr")):
        return _nrrd_layout(path)
    if lower.endswith((".mha", ".mhd")):
        return _meta_layout(path)
    return None


class _Values:
    """Counts the non-finite values of a stream of voxel bytes fed in chunks of any length."""

    def __init__(self, dtype: np.dtype | None) -> None:
        self.dtype = dtype
        self.rest = b""
        self.non_finite = 0

    def feed(self, data: bytes) -> None:
        if self.dtype is None:
            return
        data = self.rest + data
        usable = len(data) - len(data) % self.dtype.itemsize
        self.rest = data[usable:]
        if usable:
            self.non_finite += int(np.count_nonzero(~np.isfinite(np.frombuffer(data[:usable], self.dtype))))


def _scan_raw(layout: DataLayout, values: _Values) -> int:
    """Bytes of data present after the offset (reading them only when their values are checked)."""
    available = max(0, os.path.getsize(layout.data_path) - layout.offset)
    if values.dtype is not None:
        with open(layout.data_path, "rb") as file:
            file.seek(layout.offset)
            remaining = min(available, layout.data_bytes)
            while remaining > 0:
                chunk = file.read(min(_CHUNK, remaining))
                if not chunk:
                    break
                values.feed(chunk)
                remaining -= len(chunk)
    return available


def _decompressor(encoding: str):
    if encoding == "gzip":
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if encoding == "zlib":
        return zlib.decompressobj()
    return bz2.BZ2Decompressor()


def _scan_compressed(layout: DataLayout, values: _Values) -> int:
    """Bytes of data the compressed stream holds after the offset; raises ImageFileError when it ends early."""
    decompressor = _decompressor(layout.encoding)
    total = 0
    skip = layout.offset
    with open(layout.data_path, "rb") as file:
        file.seek(layout.stream_start)
        while True:
            chunk = file.read(_CHUNK)
            if not chunk:
                break
            try:
                data = decompressor.decompress(chunk)
                # A gzip file may hold several members one after the other.
                while layout.encoding == "gzip" and decompressor.eof and decompressor.unused_data:
                    unused = decompressor.unused_data
                    decompressor = _decompressor("gzip")
                    data += decompressor.decompress(unused)
            except (zlib.error, OSError, EOFError) as error:
                raise ImageFileError(f"{layout.data_path}: its compressed data is damaged ({error})") from None
            if skip:
                dropped = min(skip, len(data))
                data, skip = data[dropped:], skip - dropped
            total += len(data)
            values.feed(data)
    if not decompressor.eof:
        raise ImageFileError(
            f"{layout.data_path}: its compressed data ends early (after {total} of {layout.data_bytes} bytes): "
            "the file is truncated or damaged"
        )
    return total


def _gzip_trailer_size(layout: DataLayout) -> int | None:
    """The uncompressed size (modulo 2**32) a gzip stream's last 4 bytes record, or None when unreadable."""
    with open(layout.data_path, "rb") as file:
        file.seek(0, os.SEEK_END)
        if file.tell() - layout.stream_start < 18:  # the smallest gzip member
            return None
        file.seek(-4, os.SEEK_END)
        return struct.unpack("<I", file.read(4))[0]


def check_image_file(path: str, values: bool = True) -> bool:
    """Raise :class:`ImageFileError` when the file at ``path`` holds less data than its header announces, or
    (with ``values``) non-finite floating-point voxels (see the module description). Returns whether the voxel
    values were checked (True for floating-point NIfTI, NRRD and MetaImage data), so that a caller knows
    whether the image it reads needs the check.
    """
    path = os.fspath(path)
    try:
        layout = data_layout(path)
        if layout is None:
            return False
        if not values:
            layout = dataclasses.replace(layout, dtype=None)
        if not os.path.isfile(layout.data_path):
            raise ImageFileError(f"{path}: its data file {layout.data_path} does not exist")
        values = _Values(layout.dtype)
        expected = layout.data_bytes
        where = path if layout.data_path == path else f"{layout.data_path} (the data of {path})"
        if layout.encoding == "raw":
            available = _scan_raw(layout, values)
        elif (
            layout.encoding == "gzip"
            and layout.dtype is None
            and _gzip_trailer_size(layout) == (layout.offset + expected) % (1 << 32)
        ):
            available = expected  # the trailer agrees: no need to decompress
        elif layout.encoding == "zlib" and layout.dtype is None and layout.compressed_size is not None:
            on_disk = os.path.getsize(layout.data_path) - layout.stream_start
            if on_disk < layout.compressed_size:
                raise ImageFileError(
                    f"{where} holds {on_disk} bytes of compressed image data where its header announces "
                    f"{layout.compressed_size}: the file is truncated or damaged"
                )
            available = expected
        else:
            available = _scan_compressed(layout, values)
    except OSError as error:
        raise ImageFileError(f"Cannot read {path}: {error.strerror or error}") from None
    if available < expected:
        raise ImageFileError(
            f"{where} holds {available} bytes of image data where its header announces {expected}: "
            "the file is truncated or damaged"
        )
    if values.non_finite:
        raise ImageFileError(non_finite_message(path, values.non_finite))
    return layout.dtype is not None


def non_finite_message(path: str, count: int) -> str:
    """The message for ``count`` NaN or infinite voxels in the image read from ``path``."""
    return (
        f"{path} holds {count} NaN or infinite voxel value(s): replace them with numbers (readers would turn "
        "them into 0 or pass them on) before using the image"
    )


def count_non_finite(array: np.ndarray) -> int:
    """How many values of ``array`` are NaN or infinite (0 for integer arrays, without looking at them).

    >>> count_non_finite(np.array([1.0, np.nan, np.inf])), count_non_finite(np.arange(3))
    (2, 0)
    """
    if array.dtype.kind not in "fc":
        return 0
    return int(array.size - np.count_nonzero(np.isfinite(array)))

"""Frame after frame with a 2D model: the per-frame inference of live streams, the network kept loaded.

``engine.segment`` is made for volumes: each call checks the package and the free memory, resolves the
device and its precision, loads (or wraps) the network, converts SimpleITK images and builds the model
grid. On a stream of 256×256 ultrasound frames those steps would repeat 30 times a second for nothing.
:class:`FrameSegmenter` does them once per model (device, precision, network loaded and warmed up) or once
per frame shape and spacing (model grid, memory check; kept in a small cache), and per frame only what a
frame needs: the pixels to a float32 tensor on the device, resampling when the model has its own spacing,
normalization, the windows through the network, argmax or thresholds, label values, and the clean-up the
model asks for. Its labels are those ``engine.segment`` gives for the same frame (the tests compare them).
Measured on one 256×256 frame and a small U-Net (single-thread CPU): 14.7 ms in the network, 1.9 ms around
it; ``engine.segment`` given the loaded network costs about 0.3 ms more, and without it loads the network
on every call.

It is plain computation (NumPy in, NumPy out, no files, no sockets, no threads of its own), so a stream
server and a persistent worker process behind Slicer's live mode can both hold one and call it per frame.

Frames are arrays in (k, j, i) order, as OpenIGTLink IMAGE messages and Slicer's ``arrayFromVolume`` give
them: ``(1, rows, columns)`` for a 2D frame (a single slice along k), or ``(rows, columns)``; frames with
several components per pixel (k, j, i, c) feed a model with as many input channels. Their geometry is an
IJK-to-RAS matrix; only spacing (and, for models that resample onto RAS or LPS axes, the axis
directions) matters to the result, never the frame's position, so a tracked probe moving every frame
reuses one plan.

Example (a "network" whose logits threshold the intensity at 0.5)::

    >>> import numpy as np, torch
    >>> from types import SimpleNamespace as Model
    >>> package = Model(
    ...     inputs=[Model(name="US")], dimensions=2, slice_axis=2, labels=[Model(value=1, name="bright")],
    ...     preprocessing=Model(spacing=None, orientation="native", normalization=(Model(kind="none"),)),
    ...     inference=Model(patch_size=(8, 8), overlap=0.5, blending="gaussian", batch_size=2,
    ...                     mirror_axes=(), activation="softmax", output_channels=2),
    ...     postprocessing=Model(mode="argmax", thresholds={}, keep_largest_component=(), fill_holes=(),
    ...                          minimum_size_mm3={}))
    >>> threshold = lambda x: torch.cat([0.5 - x, x - 0.5], dim=1)
    >>> segmenter = FrameSegmenter(package, threshold, device="cpu")
    >>> frame = np.zeros((1, 12, 20), np.float32); frame[0, 3:9, 5:15] = 1
    >>> labels = segmenter.segment(frame, np.diag([0.3, 0.3, 1.0, 1.0]))
    >>> labels.shape, labels.dtype, bool((labels == frame).all())
    ((1, 12, 20), dtype('uint8'), True)
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import numpy as np
import SimpleITK as sitk

from .devices import reduced_precision
from .engine import (
    DEFAULT_QUALITY,
    PRECISIONS,
    EngineError,
    _check_memory,
    _indices,
    _label_lookup,
    _mirror_dims,
    _mode,
    _model_grid,
    _network,
    _normalizations,
    _resolve_device,
    engine_network,
    infer,
    network_input_size,
    non_finite_value,
    normalize,
    quality_options,
    replace_non_finite,
)
from .geometry import LPS_FROM_RAS
from .postprocess import postprocess_steps
from .resample import Grid, resample, same_grid
from .sliding_window import OutOfDeviceMemoryError, Window, sliding_window

# Frame shapes and spacings whose plans are kept; a stream has one or two (a probe's depth setting).
PLAN_CACHE_SIZE = 8
# Spacing and direction are rounded to this many decimals in the plan key: float32 geometry from a
# tracker varies in its last bits between frames of one probe setting.
_KEY_DECIMALS = 6
# The frame size (x, y, z) a model that sizes its input per frame (whole-volume, resize) is warmed up on.
_WARM_UP_FRAME = (64, 64, 64)


class FrameError(EngineError):
    """A frame the model cannot segment (wrong shape, components or geometry); the message says why."""


@dataclass(frozen=True)
class FramePlan:
    """What one frame shape and spacing needs: the frame's grid (origin at zero), the model's grid, and
    whether they coincide (no resampling)."""

    source: Grid
    grid: Grid
    same: bool


def _axis_name(axis: int) -> str:
    return "xyz"[axis]


def require_2d_model(package) -> None:
    """Raise EngineError unless ``package`` is a 2D model, the only kind that segments frames.

    >>> from types import SimpleNamespace as Model
    >>> require_2d_model(Model(dimensions=3))
    Traceback (most recent call last):
    ...
    DeepSegmentLib.engine.EngineError: The model is a 3D model (dimensions 3): frames need a 2D model (dimensions 2)
    """
    if int(getattr(package, "dimensions", 3)) != 2:
        raise EngineError("The model is a 3D model (dimensions 3): frames need a 2D model (dimensions 2)")


class FrameSegmenter:
    """A 2D model ready to segment frame after frame (see the module documentation).

    Call :meth:`segment` on the thread that created and warmed it up: on the CPU, PyTorch's OpenMP threads
    belong to the thread that started them, and the same network run from another thread took twice as long
    per frame (see ``StreamServer.start``).

    Args:
        package: a 2D model package (``dimensions`` 2); a 3D model raises ``EngineError``.
        network: the network (N×C×H×W slices in, N×K×H×W logits out, H and W in the package's ``axisOrder``);
            loaded from the package when None.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps`` or a ``ComputeDevice``.
        threads: PyTorch's CPU threads for this process (a live worker owns its process); None leaves them.
        precision: ``auto`` (float16 on CUDA, bfloat16 on CPUs computing it natively) or ``float32``.
        quality: ``fast`` (no mirroring, overlap 0.25) or ``accurate`` (the model's mirroring, overlap 0.5).
    """

    def __init__(self, package, network: Callable | None = None, *, device="auto", threads: int | None = None,
                 precision: str = "auto", quality: str = DEFAULT_QUALITY) -> None:
        import torch

        require_2d_model(package)
        if precision not in PRECISIONS:
            raise EngineError(f"Unknown precision {precision!r}: use {' or '.join(PRECISIONS)}")
        if getattr(package.inference, "crop", None) is not None or getattr(package, "localizer", None) is not None:
            raise EngineError("The model crops its input (to the foreground or a localizer's box): it segments"
                              " volumes, not frames of a stream")
        self.package = package
        self.compute = _resolve_device(device)
        self.device = torch.device(self.compute.torch_name)
        if threads:
            torch.set_num_threads(int(threads))
        options = quality_options(package, quality)
        inference = package.inference
        self.window = Window(
            patch_size=tuple(reversed(network_input_size(package, _WARM_UP_FRAME))),
            overlap=float(options["overlap"]),
            blending=inference.blending,
            batch_size=int(inference.batch_size),
            mirror_dims=_mirror_dims(options["mirror_axes"]),
            autocast=reduced_precision(self.compute) if precision == "auto" else "",
            padding_value=float(getattr(inference, "padding_value", 0.0)),
        )
        self.precision = self.window.autocast or "float32"
        self.channels = len(package.inputs)
        self.slice_axis = int(getattr(package, "slice_axis", 2))
        self.normalizations = _normalizations(package, self.channels)
        self.lookup = _label_lookup(package)
        self.non_finite_value = non_finite_value(package)
        self.network = _network(package, network, self.compute)
        # What the sliding window calls: windows one pixel thick along the slice axis, in the engine's order.
        self.slices = engine_network(self.network, package)
        self._plans: OrderedDict = OrderedDict()

    @property
    def label_values(self) -> tuple:
        """The label values the model can give (0, the background, aside)."""
        return tuple(int(v) for v in self.lookup[1:])

    # ------------------------------------------------------------------------------------------- checks

    def _pixels(self, frame) -> np.ndarray:
        """The frame as (k, j, i, c), or FrameError saying why it cannot be."""
        array = np.asarray(frame)
        if array.ndim == 2:
            array = array[None]
        if array.ndim == 3:
            array = array[..., None]
        if array.ndim != 4 or 0 in array.shape:
            raise FrameError(f"A frame must be a 2D image (rows, columns) or (1, rows, columns), not {array.shape}")
        components = array.shape[3]
        if components != self.channels:
            kind = "color " if components in (3, 4) else ""
            raise FrameError(
                f"The frame has {components} components per pixel ({kind}{'×'.join(map(str, array.shape[:3]))});"
                f" the model takes {self.channels} (one per input channel: "
                f"{', '.join(getattr(i, 'name', '') or '?' for i in self.package.inputs)})"
            )
        if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
            raise FrameError(f"Frame pixels of type {array.dtype} cannot be segmented")
        thin = [axis for axis, n in enumerate(reversed(array.shape[:3])) if n == 1]
        if thin and self.slice_axis not in thin:
            raise FrameError(
                f"The model segments slices across {_axis_name(self.slice_axis)} (sliceAxis {self.slice_axis}) but"
                f" the frame is a single slice across {' and '.join(map(_axis_name, thin))}"
            )
        return array

    def _plan(self, shape: tuple, ijk_to_ras) -> FramePlan:
        matrix = np.eye(4) if ijk_to_ras is None else np.asarray(ijk_to_ras, dtype=float)
        if matrix.shape != (4, 4) or not np.isfinite(matrix).all():
            raise FrameError(f"The frame's IJK-to-RAS matrix must be a finite 4×4 matrix, not {matrix.shape}")
        axes = LPS_FROM_RAS @ matrix[:3, :3]
        spacing = np.linalg.norm(axes, axis=0)
        if abs(np.linalg.det(axes)) < 1e-12 or (spacing <= 0).any():
            raise FrameError("The frame's IJK-to-RAS matrix is singular (a pixel axis of zero length)")
        direction = axes / spacing
        # Where the frame lies never changes the plan; how it is turned matters only to models that
        # resample onto RAS or LPS axes.
        if self.package.preprocessing.orientation == "native":
            direction = np.eye(3)
        key = (shape, tuple(np.round(spacing, _KEY_DECIMALS)), tuple(np.round(direction, _KEY_DECIMALS).ravel()))
        plan = self._plans.get(key)
        if plan is not None:
            self._plans.move_to_end(key)
            return plan
        reference = sitk.Image([int(n) for n in reversed(shape)], sitk.sitkUInt8)
        reference.SetSpacing([float(s) for s in spacing])
        reference.SetDirection([float(v) for v in direction.ravel()])
        _check_memory([reference], self.package, self.compute, None)
        source = Grid.from_image(reference)
        grid = _model_grid([reference], self.package)
        plan = FramePlan(source, grid, same_grid(source, grid))
        self._plans[key] = plan
        if len(self._plans) > PLAN_CACHE_SIZE:
            self._plans.popitem(last=False)
        return plan

    # ---------------------------------------------------------------------------------------- inference

    def segment(self, frame, ijk_to_ras=None) -> np.ndarray:
        """The label map of ``frame`` (an array in (k, j, i) or (k, j, i, c) order, see the module
        documentation) whose voxel-to-RAS matrix is ``ijk_to_ras`` (identity when None): an array of
        ``frame``'s (k, j, i) shape holding label values (uint8, or uint16 for values over 255).

        Raises FrameError for a frame the model cannot take, EngineError when the device runs out of
        memory or the network does not give what the model declares.
        """
        import torch

        pixels = self._pixels(frame)
        shape = pixels.shape[:3]
        if self.non_finite_value is None and pixels.dtype.kind == "f" and not np.isfinite(pixels).all():
            raise FrameError("The frame contains NaN or infinite pixels")
        plan = self._plan(shape, ijk_to_ras)
        inference = self.package.inference
        out_of_memory = getattr(torch.cuda, "OutOfMemoryError", MemoryError)
        try:
            with torch.inference_mode():
                channels = np.ascontiguousarray(np.moveaxis(pixels, 3, 0), dtype=np.float32)
                volume = torch.from_numpy(channels).to(self.device)
                if self.non_finite_value is not None:
                    replace_non_finite(volume, self.non_finite_value)
                if not plan.same:
                    volume = resample(volume, plan.source, plan.grid)
                for c, step in enumerate(self.normalizations):
                    normalize(volume[c], step)
                if _mode(self.package) == "sliding-window":
                    probabilities = sliding_window(
                        volume, self.slices, self.window, activation=inference.activation,
                        output_channels=int(inference.output_channels),
                        background_channel=self.package.postprocessing.mode == "argmax")
                else:  # the whole frame, or the frame resized: sized per frame
                    probabilities = infer(volume, self.package, self.network, self.window)[0]
                labels = self.lookup[_indices(probabilities, self.package).cpu().numpy()]
                labels = postprocess_steps(labels, plan.grid.spacing, self.package.postprocessing)
                if not plan.same:
                    on_grid = torch.from_numpy(labels.astype(np.float32)).to(self.device)[None]
                    labels = resample(on_grid, plan.grid, plan.source, mode="nearest")[0].cpu().numpy()
                    labels = labels.astype(self.lookup.dtype)
        except (OutOfDeviceMemoryError, out_of_memory) as error:
            raise EngineError(f"{self.compute.description} ran out of memory ({error})") from error
        except ValueError as error:  # what sliding_window says of a network that breaks the model's contract
            raise EngineError(f"The model does not match its description: {error}") from error
        return labels

    def warm_up(self, shape: tuple | None = None, repeats: int = 2) -> None:
        """Run ``repeats`` blank frames of ``shape`` ((k, j, i); the model's patch by default) through the
        whole path, so the first real frame does not pay for lazy initialisation (TorchScript's profiling
        runs, the allocator, oneDNN kernels)."""
        if shape is None:
            shape = tuple(reversed(network_input_size(self.package, _WARM_UP_FRAME)))
        blank = np.zeros((*shape, self.channels), np.float32)
        for _ in range(repeats):
            self.segment(blank)


__all__ = ["PLAN_CACHE_SIZE", "FrameError", "FramePlan", "FrameSegmenter", "require_2d_model"]

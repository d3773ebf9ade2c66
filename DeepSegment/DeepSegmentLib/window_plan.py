"""Window plans: which windows the sliding window runs, how large they are, and which it skips.

The exact plan is the model's own: windows of its patch size tiling the whole volume with its overlap, as
its authors validated it (and as MONAI and nnU-Net run it). At overlap 0.5 that pushes about five times
the volume's voxels through the network. A plan does less work in two ways (what each costs is measured by
``Testing/benchmark_inference.py`` and stated in the README):

- **Larger windows.** A network made of local operations only (convolutions, pooling, batch norm with its
  running statistics, pointwise functions) computes each voxel from a bounded neighbourhood, whatever the
  window's size, so a window of any size the network accepts gives the same scores away from its border.
  Such a network runs on the largest windows that fit the memory budget (up to the whole volume), their
  sizes multiples of what the network accepts, overlapping by the band the model's own overlap gives
  (``overlap`` × patch voxels). A network that computes statistics over the whole window (instance, group
  or layer norm, attention, global pooling) or that cannot be inspected keeps its patch size: nnU-Net's
  authors report that changing the patch after training can destroy its accuracy.
- **Background.** A window whose input is background in every voxel and channel (at or near the darkest
  normalized intensity of the volume: air, or what a CT window or a percentile scaling clips) is not run,
  and voxels no window covers are given the background label, as a segmentation model labels air. With
  larger windows the tiled region is first cropped to the box holding every other voxel, plus a margin of
  real context.

:func:`window_wide_operation` tells the first operation that makes a network's output depend on its
window, by reading its TorchScript or torch.export graph. :func:`accepted_multiple` finds the window
sizes a network accepts: the package may declare them (``inference.sizeMultiple``), else the network is
probed with a few small inputs (a network exported with fixed shapes accepts none but its own).

Example::

    >>> plan = plan_windows((100, 120, 90), Window((64, 64, 64), overlap=0.5, batch_size=2), multiple=(8, 8, 8),
    ...                     max_window_voxels=2_000_000)
    >>> plan.window.patch_size, plan.origins, plan.summary
    ((104, 120, 96), ((0, 0, 0),), '1 window of 104×120×96 voxels (the model: 64×64×64)')
    >>> len(plan_windows((100, 120, 90), Window((64, 64, 64), overlap=0.5)).origins)   # the exact plan
    18
"""

from __future__ import annotations

import contextlib
import itertools
import math
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Callable

from .sliding_window import Window, padded_shape, window_starts

# Operations whose value at a voxel depends on a bounded neighbourhood of the input only (besides
# operations on sizes, lists and scalars). ``batch_norm`` is local only with running statistics.
LOCAL_OPERATIONS = frozenset({
    # convolutions and pooling with fixed kernels
    "conv1d", "conv2d", "conv3d", "convolution", "_convolution", "conv_transpose1d", "conv_transpose2d",
    "conv_transpose3d", "max_pool1d", "max_pool2d", "max_pool3d", "max_pool2d_with_indices",
    "max_pool3d_with_indices", "avg_pool1d", "avg_pool2d", "avg_pool3d", "batch_norm", "native_batch_norm",
    "_native_batch_norm_legit_no_training", "upsample_nearest1d", "upsample_nearest2d", "upsample_nearest3d",
    "upsample_bilinear2d", "upsample_trilinear3d", "pad", "constant_pad_nd", "reflection_pad3d",
    "replication_pad3d",
    # pointwise functions and arithmetic
    "relu", "relu_", "relu6", "leaky_relu", "leaky_relu_", "prelu", "_prelu_kernel", "elu", "elu_", "selu",
    "celu", "gelu", "silu", "silu_", "mish", "sigmoid", "sigmoid_", "tanh", "tanh_", "hardtanh", "hardtanh_",
    "hardswish", "hardswish_", "hardsigmoid", "softplus", "clamp", "clamp_", "clamp_min", "clamp_min_",
    "add", "add_", "sub", "sub_", "rsub", "mul", "mul_", "div", "div_", "neg", "exp", "log", "sqrt", "rsqrt",
    "pow", "abs", "where", "maximum", "minimum", "dropout", "dropout_", "feature_dropout", "alpha_dropout",
    "softmax", "_softmax", "log_softmax", "_log_softmax",
    # layout and copies
    "cat", "concat", "slice", "select", "narrow", "chunk", "split", "unbind", "contiguous", "clone", "to",
    "_to_copy", "detach", "alias", "type_as", "squeeze", "unsqueeze", "expand", "expand_as", "flip",
    "zeros_like", "ones_like", "full_like", "empty_like",
    # sizes, lists and scalars
    "size", "sym_size", "dim", "len", "numel", "__getitem__", "getitem", "append", "pop", "list", "format",
    "warn", "Int", "Float", "Bool", "ScalarImplicit", "eq", "ne", "lt", "le", "gt", "ge", "__is__", "__isnot__",
    "__not__", "__and__", "__or__", "__contains__", "__range_length", "__derive_index", "floordiv", "remainder",
    "floor", "ceil", "add_int", "mul_int", "_assert_async", "_assert_scalar", "sym_constrain_range_for_size",
    "_set_grad_enabled", "is_floating_point", "str", "__interpolate", "_assert",
})
# Operations whose output depends on the whole window, named for the message (the others are "unknown").
BATCH_NORM_OPERATIONS = frozenset({"batch_norm", "native_batch_norm"})
UNKNOWN = "an operation that cannot be inspected"
# A voxel is background when every channel is within this fraction of the channel's intensity range of
# the channel's darkest value (after normalization).
BACKGROUND_FRACTION = 0.02
# Window sizes probed are multiples of powers of two up to this exponent (2**6 = 64).
_LARGEST_PROBED_EXPONENT = 6


class PerNetwork:
    """Answers about a network kept per network object (weakly: they go with the network) and key, so a
    network from the model pool is inspected, probed or tuned once. A network that cannot be weakly
    referenced is answered afresh each time.

    >>> import torch
    >>> answers, network = PerNetwork(), torch.nn.ReLU()
    >>> answers.get(network, "key", lambda: 42), answers.get(network, "key", lambda: 0)
    (42, 42)
    """

    def __init__(self) -> None:
        self._answers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def get(self, network, key, compute: Callable):
        """The answer kept for (``network``, ``key``), else ``compute()``'s, kept."""
        with self._lock:
            try:
                known = self._answers.get(network, {})
            except TypeError:  # not weakly referenceable: not kept
                known = {}
        if key in known:
            return known[key]
        answer = compute()
        with self._lock, contextlib.suppress(TypeError):
            self._answers.setdefault(network, {})[key] = answer
        return answer


_accepted_multiples = PerNetwork()
# Reading a TorchScript graph takes about 12 ms: a run that takes tens of ms on a GPU must not repeat it.
_window_wide_operations = PerNetwork()


@dataclass(frozen=True)
class WindowPlan:
    """The windows to run: ``window`` (its ``patch_size`` is the windows' size, tensor order z, y, x),
    ``origins`` (each window's first voxel in the padded volume, see ``sliding_window.padded_shape``),
    ``tiled`` (windows the region needed before background windows were skipped) and a ``summary``."""

    window: Window
    origins: tuple
    tiled: int
    summary: str

    @property
    def skipped(self) -> int:
        return self.tiled - len(self.origins)


def _base_name(name: str) -> str:
    """``aten::conv3d`` / ``aten.conv3d.default`` → ``conv3d``; other namespaces keep theirs."""
    if name.startswith("aten::"):
        return name[len("aten::") :]
    if name.startswith("aten."):
        return name.split(".")[1]
    return name


def _torchscript_operations(network) -> list:
    """The kind of every node of a TorchScript module's or function's graph, blocks included."""
    graph = getattr(network, "inlined_graph", None) or network.graph
    found = []
    blocks = [graph]
    while blocks:
        block = blocks.pop()
        for node in block.nodes():
            found.append(node.kind())
            blocks.extend(node.blocks())
    return found


def _batch_statistics_in_torchscript(network) -> bool:
    """Whether a scripted batch norm normalizes with the window's own statistics (training, or no running
    statistics kept)."""
    for module in network.modules():
        batch_norm = "BatchNorm" in getattr(module, "original_name", "")
        if batch_norm and (module.training or getattr(module, "running_mean", None) is None):
            return True
    return False


def _fx_operations(network) -> list:
    """Operation names of a torch.fx graph (a torch.export program's module); batch norms in training
    mode are named ``batch_norm (training)``."""
    names = []
    for node in network.graph.nodes:
        if node.op in ("placeholder", "output", "get_attr") or node.target == "_guards_fn":
            continue  # inputs, outputs, weights, and the check of the input shapes torch.export adds
        if node.op != "call_function":
            names.append(f"{node.op} {node.target}")
            continue
        schema = getattr(node.target, "_schema", None)
        name = _base_name(schema.name) if schema is not None else getattr(node.target, "__name__", str(node.target))
        training = {"batch_norm": 5, "native_batch_norm": 5}.get(name)
        if training is not None and len(node.args) > training and node.args[training] is not False:
            name = "batch_norm (training)"
        names.append(name)
    return names


def network_operations(network: Callable) -> list | None:
    """The operations of a TorchScript or torch.fx (torch.export) network by name (``conv3d``, ...), in
    graph order, without the interpreter's own (``prim::``); ``None`` for a network that is neither. A
    loaded torch.export program (``programs.ExportedNetwork``) is read through its ``module``."""
    import torch

    if isinstance(getattr(network, "module", None), torch.fx.GraphModule):
        network = network.module
    if isinstance(network, (torch.jit.ScriptModule, torch.jit.ScriptFunction)):
        return [_base_name(kind) for kind in _torchscript_operations(network) if not kind.startswith("prim::")]
    if isinstance(network, torch.fx.GraphModule):
        return _fx_operations(network)
    return None


def window_wide_operation(network: Callable) -> str:
    """``""`` when ``network``'s output at a voxel depends only on a bounded neighbourhood of its input
    (so a larger window changes nothing but border effects); else the first operation that makes it
    depend on the whole window (``"instance_norm"``, ...), or ``UNKNOWN`` for a network that is neither
    TorchScript nor a torch.fx graph (an ONNX session, a Python function).

    >>> import torch
    >>> window_wide_operation(torch.jit.script(torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3), torch.nn.ReLU())))
    ''
    >>> window_wide_operation(torch.jit.script(torch.nn.InstanceNorm3d(2)))
    'instance_norm'
    """
    return _window_wide_operations.get(network, getattr(network, "training", None),
                                       lambda: _first_window_wide_operation(network))


def _first_window_wide_operation(network: Callable) -> str:
    import torch

    operations = network_operations(network)
    if operations is None:
        return UNKNOWN
    if isinstance(network, torch.jit.ScriptModule) and _batch_statistics_in_torchscript(network):
        return "batch_norm (batch statistics)"
    for operation in operations:
        if operation not in LOCAL_OPERATIONS:
            return operation
    return ""


def _largest_power_of_two_dividing(n: int) -> int:
    return n & -n


def _probe_size(multiple: int, patch: int) -> int:
    """A size that is a multiple of ``multiple`` but of no larger power of two (3 × multiple), below the
    patch where possible, so that probing costs less than one window."""
    size = 3 * multiple
    return size if size <= patch else patch + multiple


def _accepts(network: Callable, channels: int, size: tuple, device) -> bool:
    """Whether ``network`` maps a 1×C×``size`` input to an output of the same spatial size."""
    import torch

    generator = torch.Generator().manual_seed(0)
    probe = torch.randn((1, channels, *size), generator=generator).to(device)
    try:
        with torch.inference_mode():
            output = network(probe)
    except Exception:  # any refusal (shape guards, size errors in cat, ONNX shape checks) means "not this size"
        return False
    return getattr(output, "shape", None) is not None and tuple(output.shape[2:]) == tuple(size)


def accepted_multiple(network: Callable, channels: int, patch: Sequence, device, cache_key=None) -> tuple | None:
    """The smallest multiples (per tensor axis z, y, x) of which ``network`` accepts window sizes, found by
    running it on a few inputs of 3 × 2^k voxels per axis (k = 0, 1, ...), each a multiple of 2^k and of no
    larger power of two; ``None`` when it accepts none of them (a network traced or exported for its patch
    size only). Axes where the patch is one voxel (a 2D model's slice axis) stay one voxel. The answer is
    kept per network object (``cache_key``, by default the network).

    >>> import torch
    >>> unet_like = torch.nn.Sequential(torch.nn.MaxPool3d(4), torch.nn.Upsample(scale_factor=4))
    >>> accepted_multiple(unet_like, 1, (16, 16, 16), "cpu")
    (4, 4, 4)
    """
    patch = tuple(int(p) for p in patch)
    return _accepted_multiples.get(network if cache_key is None else cache_key, (channels, patch, str(device)),
                                   lambda: _smallest_accepted_multiple(network, channels, patch, device))


def _smallest_accepted_multiple(network: Callable, channels: int, patch: tuple, device) -> tuple | None:
    limits = [_largest_power_of_two_dividing(p) for p in patch]
    for exponent in range(_LARGEST_PROBED_EXPONENT + 1):
        multiple = tuple(1 if p == 1 else min(1 << exponent, limit) for p, limit in zip(patch, limits))
        size = tuple(1 if p == 1 else _probe_size(m, p) for m, p in zip(multiple, patch))
        if _accepts(network, channels, size, device):
            return multiple
        if all(m == limit for m, limit in zip(multiple, limits)):
            return None
    return None


# ------------------------------------------------------------------------------------------- background


def background_mask(volume, fraction: float = BACKGROUND_FRACTION):
    """Voxels (Z×Y×X bool tensor) whose every channel of ``volume`` (C×Z×Y×X, normalized) lies within
    ``fraction`` of the channel's intensity range above its darkest value; ``None`` when a channel is
    constant (nothing can be told apart).

    >>> import torch
    >>> volume = torch.zeros(1, 2, 2, 4); volume[0, :, :, 2:] = 1.0
    >>> background_mask(volume)[0].tolist()
    [[True, True, False, False], [True, True, False, False]]
    """
    mask = None
    for channel in volume:
        low, high = float(channel.min()), float(channel.max())
        if not high - low > 1e-6:
            return None
        dark = channel <= low + fraction * (high - low)
        mask = dark if mask is None else mask.logical_and_(dark)
    return mask


def _foreground_box(background, margin: Sequence) -> tuple | None:
    """(first, end) voxel per axis of the box holding every non-background voxel, grown by ``margin`` and
    kept inside the volume; ``None`` when every voxel is background."""
    foreground = ~background
    box = []
    for axis in range(foreground.dim()):
        along = foreground
        for other in reversed(range(foreground.dim())):  # one dimension at a time: older PyTorch takes no tuple
            if other != axis:
                along = along.any(dim=other)
        hits = along.nonzero()
        if hits.numel() == 0:
            return None
        first, last = int(hits[0]), int(hits[-1])
        size = foreground.shape[axis]
        box.append((max(0, first - int(margin[axis])), min(size, last + 1 + int(margin[axis]))))
    return tuple(box)


def _holds_foreground(background, origin: tuple, size: tuple, before: tuple) -> bool:
    """Whether the window at ``origin`` (padded coordinates) covers a non-background voxel of the volume."""
    import torch

    region = []
    for o, n, b, extent in zip(origin, size, before, background.shape):
        first, end = max(0, o - b), min(extent, o + n - b)
        if first >= end:
            return False
        region.append(slice(first, end))
    # The smallest byte, not .all(): on a window's strided view of the mask, 75× faster on the CPU (measured).
    return int(background[tuple(region)].view(torch.uint8).min()) == 0


class WindowRefusedError(RuntimeError):
    """The network failed on the first window of a plan's size, or gave an output of another size."""


class FirstWindowCheck:
    """``network``, whose first call must succeed and keep the window's size, else ``WindowRefusedError``
    (a shape guard, an error in a layer, too little memory): the caller then runs the model's own windows."""

    def __init__(self, network: Callable) -> None:
        self.network = network
        self.passed = False

    def __call__(self, batch):
        if self.passed:
            return self.network(batch)
        try:
            output = self.network(batch)
        except Exception as error:  # any failure on a new window size means the network refuses it
            lines = [line.strip() for line in str(error).splitlines() if line.strip()]
            raise WindowRefusedError(f"{type(error).__name__}: {lines[-1] if lines else ''}"[:300]) from error
        if tuple(output.shape[2:]) != tuple(batch.shape[2:]):
            size, given = _tensor_size(batch.shape[2:]), _tensor_size(output.shape[2:])
            raise WindowRefusedError(f"a {size} window gave a {given} output")
        self.passed = True
        return output


# ---------------------------------------------------------------------------------------------- planning


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _spread(first: int, end: int, size: int, count: int, limit: int) -> list:
    """``count`` starts of windows of ``size`` spread evenly over [first, end), kept within [0, limit - size]."""
    if count == 1:
        start = first + (end - first - size) // 2
        return [min(max(0, start), limit - size)]
    span = end - first - size
    return [min(max(0, first + round(i * span / (count - 1))), limit - size) for i in range(count)]


def _axis_options(extent: int, patch: int, multiple: int, overlap: int) -> list:
    """(windows, size) choices along one axis: ``windows`` windows of ``size`` voxels (a multiple of
    ``multiple``, at least the patch, so that a thin volume is padded as the model's windows pad it)
    covering ``extent`` voxels with at least ``overlap`` voxels shared between neighbours. A one-voxel
    patch (a 2D model's slice axis) stays one voxel: one window per slice."""
    if patch == 1:
        return [(extent, 1)]
    options = []
    count = 1
    while True:
        size = max(patch, _round_up(math.ceil((extent + (count - 1) * overlap) / count), multiple))
        if not options or size < options[-1][1]:
            options.append((count, size))
        if size <= patch:
            return options
        count += 1


def _tensor_size(size: Sequence) -> str:
    return "×".join(str(n) for n in size)


def plan_windows(
    shape: Sequence,
    window: Window,
    *,
    multiple: Sequence | None = None,
    max_window_voxels: int = 0,
    background=None,
    margin: Sequence | None = None,
) -> WindowPlan:
    """The windows to run over a volume of ``shape`` (z, y, x) for a model whose own windows are ``window``.

    Args:
        shape: the volume's size in voxels, tensor order (z, y, x).
        window: the model's windows: patch size, overlap (a fraction of the patch), blending, batch size,
            mirroring and precision. The exact plan tiles the volume with them, as ``sliding_window`` does.
        multiple: window sizes the network accepts are multiples of these (z, y, x); ``None`` keeps the
            model's patch size. Otherwise windows are as large as ``max_window_voxels`` allows (up to the
            whole region), as few as possible, at least the patch, overlapping by ``overlap`` × patch voxels.
        max_window_voxels: the most voxels one window may hold (the memory budget), for larger windows.
        background: a Z×Y×X bool tensor of background voxels (``background_mask``), or ``None`` to run
            every window. Windows holding only background are skipped; with larger windows the tiled region
            is the box holding the other voxels grown by ``margin`` voxels (default: the overlap band).

    >>> print(plan_windows((40, 40, 40), Window((16, 16, 16), overlap=0.5)).summary)
    64 windows of 16×16×16 voxels (the model's own)
    """
    shape = tuple(int(n) for n in shape)
    patch = tuple(int(p) for p in window.patch_size)
    overlap = tuple(round(window.overlap * p) if p > 1 else 0 for p in patch)
    if multiple is None:
        return _model_windows(shape, window, background)
    region = tuple((0, n) for n in shape)
    if background is not None:
        box = _foreground_box(background, overlap if margin is None else margin)
        if box is None:
            return WindowPlan(window, (), 0, "no window: the whole volume is background")
        region = box
    extents = tuple(end - first for first, end in region)
    options = [_axis_options(e, p, int(m), o) for e, p, m, o in zip(extents, patch, multiple, overlap)]
    fitting = [c for c in itertools.product(*options) if math.prod(s for _, s in c) <= max_window_voxels]
    if not fitting:  # not even the smallest larger window fits the budget: the model's windows do
        return _model_windows(shape, window, background)
    # The least work (voxels through the network), then the fewest windows.
    choice = min(fitting, key=lambda c: (math.prod(n for n, _ in c) * math.prod(s for _, s in c), math.prod(
        n for n, _ in c)))
    size = tuple(s for _, s in choice)
    padded = padded_shape(shape, size)
    before = tuple((p - s) // 2 for p, s in zip(padded, shape))
    per_axis = [
        _spread(first + b, end + b, n, count, limit)
        for (first, end), b, (count, n), limit in zip(region, before, choice, padded)
    ]
    tiled = list(itertools.product(*per_axis))
    origins = tiled if background is None else [o for o in tiled if _holds_foreground(background, o, size, before)]
    batch = max(1, min(int(window.batch_size), max_window_voxels // math.prod(size), len(origins)))
    planned = replace(window, patch_size=size, batch_size=batch)
    count = "1 window" if len(tiled) == 1 else f"{len(tiled)} windows"
    summary = f"{count} of {_tensor_size(size)} voxels (the model: {_tensor_size(patch)})"
    if region != tuple((0, n) for n in shape):
        summary += f", around the {_tensor_size(extents)}-voxel box that is not background"
    if len(origins) < len(tiled):
        summary += f", {len(tiled) - len(origins)} skipped as background"
    return WindowPlan(planned, tuple(origins), len(tiled), summary)


def _model_windows(shape: tuple, window: Window, background) -> WindowPlan:
    """The model's own windows tiling the (padded) volume, less those holding only background."""
    patch = tuple(int(p) for p in window.patch_size)
    padded = padded_shape(shape, patch)
    tiled = list(itertools.product(*(window_starts(s, p, window.overlap) for s, p in zip(padded, patch))))
    origins = tiled
    if background is not None:
        before = tuple((p - s) // 2 for p, s in zip(padded, shape))
        origins = [o for o in tiled if _holds_foreground(background, o, patch, before)]
    summary = f"{len(tiled)} windows of {_tensor_size(patch)} voxels (the model's own)"
    if len(tiled) == 1:
        summary = f"1 window of {_tensor_size(patch)} voxels (the model's own)"
    if len(origins) < len(tiled):
        summary += f", {len(tiled) - len(origins)} skipped as background"
    return WindowPlan(window, tuple(origins), len(tiled), summary)


__all__ = [
    "BACKGROUND_FRACTION",
    "LOCAL_OPERATIONS",
    "UNKNOWN",
    "FirstWindowCheck",
    "WindowPlan",
    "WindowRefusedError",
    "accepted_multiple",
    "background_mask",
    "network_operations",
    "plan_windows",
    "window_wide_operation",
]

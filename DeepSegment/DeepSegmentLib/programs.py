"""torch.export programs: exporting a network for a package, and running a program within its input shapes.

``torch.export`` is the format DeepSegment writes (TorchScript stays readable: bundles and older packages
ship it). A program records which input shapes it accepts: each dimension is fixed (a window size it was
exported for, a batch of 2) or a range of sizes, possibly multiples of a number (``8 * Dim("z")``). Called
on another shape, a program fails with a bare ``AssertionError`` ("Guard failed: input.size()[0] == 2") in
PyTorch 2.13, a ``RuntimeError`` in 2.8, or, for some shapes, not at all (2.13 lets a size of 9 through a
``2 * Dim`` axis and the network then gives an output of another size).

- :func:`export_network` exports an eager ``torch.nn.Module`` with a dynamic batch and, where the network
  allows, window sizes of any multiple it accepts (found by exporting it), from the module itself: PyTorch
  cannot convert a scripted network with loops into a program.
- :func:`input_extents` reads what a program accepts (from its input's symbolic shape and its range
  constraints), :func:`has_static_batch` whether its batch dimension is fixed.
- :class:`ExportedNetwork` runs a program: a batch of windows the program's batch size does not accept is
  split and its last part padded with zeros (the padding's outputs dropped), so a third-party program exported
  with a fixed batch still runs, and an input of a shape it does not accept raises :class:`NetworkInputError`
  (a ``ValueError``: the engine reports it as an ``EngineError``) saying which shapes it accepts and what it got.

Example::

    >>> import torch
    >>> network = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3, padding=1), torch.nn.MaxPool3d(2),
    ...                               torch.nn.Upsample(scale_factor=2)).eval()
    >>> program = export_network(network, (2, 1, 8, 8, 8))
    >>> describe_extents(input_extents(program)), has_static_batch(program)
    ('{1, 2, ...}×1×{2, 4, ...}×{2, 4, ...}×{2, 4, ...}', False)
    >>> fixed = ExportedNetwork(torch.export.export(network, (torch.zeros(2, 1, 8, 8, 8),)).module())
    >>> tuple(fixed(torch.zeros(3, 1, 8, 8, 8)).shape)      # a batch of 2, then 1 padded to 2
    (3, 2, 8, 8, 8)
    >>> fixed(torch.zeros(2, 1, 16, 8, 8))  # doctest: +NORMALIZE_WHITESPACE
    Traceback (most recent call last):
    ...
    DeepSegmentLib.programs.NetworkInputError: the torch.export program accepts inputs of 2×1×8×8×8
    voxels (batch×channels×z×y×x), not 2×1×16×8×8
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Callable

# Window sizes are tried as multiples of 2^k up to this exponent (2^6 = 64) when exporting with dynamic sizes.
_LARGEST_EXPORTED_EXPONENT = 6
_AXIS_NAMES = {3: ("batch", "channels", "x"), 4: ("batch", "channels", "y", "x"),
               5: ("batch", "channels", "z", "y", "x")}


class NetworkInputError(ValueError):
    """A torch.export program was given an input of a shape it was not exported for."""


@dataclass(frozen=True)
class Extent:
    """The sizes one input dimension accepts: ``low`` to ``high`` (``None``: no upper bound) in steps of
    ``multiple``; ``symbol`` names a dynamic dimension (dimensions sharing one must agree), "" for a fixed one."""

    low: int
    high: int | None
    multiple: int = 1
    symbol: str = ""

    @property
    def fixed(self) -> bool:
        return self.high == self.low

    def accepts(self, size: int) -> bool:
        return self.low <= size and (self.high is None or size <= self.high) and size % self.multiple == 0

    def __str__(self) -> str:
        if self.fixed:
            return str(self.low)
        first = max(-(-self.low // self.multiple) * self.multiple, self.multiple)
        sizes = [first, first + self.multiple]
        last = None if self.high is None else self.high // self.multiple * self.multiple
        if last is None:
            sizes.append("...")
        elif last <= first:
            sizes = [first]
        elif last > sizes[1]:
            sizes += [last] if last == sizes[1] + self.multiple else ["...", last]
        return "{" + ", ".join(str(size) for size in sizes) + "}"


def _bound(value) -> int | None:
    """An integer bound of a range constraint; ``None`` for PyTorch's unbounded ``int_oo``."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isinf(number) else int(number)


def _extent(size, range_constraints: dict) -> Extent:
    """The extent of one dimension of a program's input (an int, or a SymInt over the program's symbols)."""
    if isinstance(size, int):
        return Extent(size, size)
    expr = size.node.expr
    multiple, symbol = 1, expr
    if expr.is_Mul and len(expr.args) == 2 and expr.args[0].is_Integer and expr.args[1].is_Symbol:
        multiple, symbol = int(expr.args[0]), expr.args[1]
    if not symbol.is_Symbol:  # an expression this reading does not know: any size, not checked
        return Extent(0, None)
    low, high = 0, None
    if expr in range_constraints:  # bounds of the size itself
        low, high = _bound(range_constraints[expr].lower), _bound(range_constraints[expr].upper)
    elif symbol in range_constraints:  # bounds of the symbol the size is a multiple of
        low, high = (None if b is None else b * multiple for b in (
            _bound(range_constraints[symbol].lower), _bound(range_constraints[symbol].upper)))
    return Extent(max(low or 0, 0), high, multiple, str(symbol))


def input_extents(program) -> tuple:
    """Per dimension of a program's (first) input, the sizes it accepts (``Extent``); ``program`` is an
    ``ExportedProgram``."""
    names = program.graph_signature.user_inputs
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name == names[0]:
            return tuple(_extent(size, program.range_constraints) for size in node.meta["val"].shape)
    raise ValueError("the program has no input tensor")


def has_static_batch(program) -> bool:
    """Whether a program accepts one batch size only."""
    return input_extents(program)[0].fixed


def describe_extents(extents: Sequence) -> str:
    """``2×1×64×64×64``, ``{1, 2, ...}×1×{8, 16, ...}×...``: the sizes each dimension accepts."""
    return "×".join(str(extent) for extent in extents)


def _shape_problem(extents: Sequence, shape: Sequence) -> bool:
    """Whether ``shape`` breaks the extents: a size outside its dimension's, or symbols given two values."""
    if len(shape) != len(extents):
        return True
    values = {}
    for extent, size in zip(extents, shape):
        if not extent.accepts(int(size)):
            return True
        steps = int(size) // extent.multiple
        if extent.symbol and values.setdefault(extent.symbol, steps) != steps:
            return True
    return False


class ExportedNetwork:
    """A torch.export program's module (``program.module()``, on its device) called like a network: batches
    its batch dimension does not accept are split into accepted ones (the last padded with zeros), and inputs
    of other shapes raise ``NetworkInputError``. ``extents``: the program's ``input_extents``, read from the
    module's graph when not given. ``module`` stays inspectable (``window_plan`` reads its graph)."""

    def __init__(self, module, extents: Sequence | None = None) -> None:
        self.module = module
        self.extents = tuple(extents) if extents is not None else _module_extents(module)

    def parameters(self):
        return self.module.parameters()

    def buffers(self):
        return self.module.buffers()

    def state_dict(self):
        return self.module.state_dict()

    def _refusal(self, shape: Sequence, reason: str = "") -> NetworkInputError:
        names = _AXIS_NAMES.get(len(self.extents))
        axes = f" voxels ({'×'.join(names)})" if names else ""
        given = "×".join(str(int(n)) for n in shape)
        return NetworkInputError(f"the torch.export program accepts inputs of {describe_extents(self.extents)}"
                                 f"{axes}, not {given}{': ' + reason if reason else ''}")

    def _run(self, batch):
        import torch

        try:
            return self.module(batch)
        except torch.cuda.OutOfMemoryError:
            raise
        except (AssertionError, RuntimeError) as error:  # a shape guard of the program (2.13, 2.8)
            text = str(error)
            if isinstance(error, AssertionError) or "Expected input" in text or "Guard failed" in text:
                lines = [line.strip() for line in text.splitlines() if line.strip()]
                raise self._refusal(batch.shape, lines[0][:200] if lines else "") from error
            raise

    def __call__(self, batch):
        import torch

        count = int(batch.shape[0])
        if not self.extents or _shape_problem(self.extents[1:], batch.shape[1:]):
            if self.extents:
                raise self._refusal(batch.shape)
            return self._run(batch)
        batches = self.extents[0]
        if batches.accepts(count):
            return self._run(batch)
        size = batches.high if batches.high is not None and count > batches.high else max(batches.low, 1)
        outputs = []
        for first in range(0, count, size):
            part = batch[first : first + size]
            kept = int(part.shape[0])
            if kept < size:
                part = torch.cat([part, part.new_zeros((size - kept, *part.shape[1:]))])
            outputs.append(self._run(part)[:kept])
        return torch.cat(outputs)


def _module_extents(module) -> tuple:
    """The extents of a program's module, from its first placeholder's shape (no range constraints: ranges
    unknown, multiples and fixed sizes read)."""
    for node in module.graph.nodes:
        if node.op == "placeholder" and "val" in node.meta and hasattr(node.meta["val"], "shape"):
            return tuple(_extent(size, {}) for size in node.meta["val"].shape)
    return ()


def load_exported(path: str, device: str) -> ExportedNetwork:
    """The program saved at ``path`` (checked by the caller), on ``device``, as an ``ExportedNetwork``."""
    import torch

    program = torch.export.load(path)
    # Exported programs are traced in inference mode already; their modules refuse .eval().
    return ExportedNetwork(program.module().to(device), input_extents(program))


def _dynamic_shapes(example_shape: Sequence, multiple: int | None):
    import torch

    spatial = {}
    if multiple is not None:
        for axis in range(2, len(example_shape)):
            if example_shape[axis] > 1:
                spatial[axis] = multiple * torch.export.Dim(f"size{axis}", min=1)
    return ({0: torch.export.Dim("batch", min=1), **spatial},)


def _keeps_sizes(program, shape: tuple, multiple: int) -> bool:
    """Whether the program maps windows of 3 × ``multiple`` voxels (a multiple of no larger power of two) to
    outputs of the same size: exporting succeeds for sizes a network then crops or pads (pooling by 4 of an
    even size)."""
    import torch

    probe = torch.zeros((shape[0], shape[1], *(3 * multiple if n > 1 else 1 for n in shape[2:])))
    try:
        with torch.inference_mode():
            output = program.module()(probe)
    except Exception:  # a size the program refuses
        return False
    return tuple(output.shape[2:]) == tuple(probe.shape[2:])


def export_network(network, example_shape: Sequence, *, dynamic_sizes: bool = True):
    """``torch.export.export`` of an eager module (put in eval mode) for inputs like ``example_shape``
    (N×C×Z×Y×X or N×C×H×W; a batch of at least 2, as PyTorch fixes dimensions of size 1): the batch is
    dynamic, and with ``dynamic_sizes`` so are the window sizes, in the smallest multiple of 2^k
    (k = 0, 1, ...) the network exports with, else they are fixed to the example's.

    >>> import torch
    >>> program = export_network(torch.nn.Sequential(torch.nn.MaxPool3d(4), torch.nn.Upsample(scale_factor=4)),
    ...                          (2, 1, 16, 16, 16))
    >>> describe_extents(input_extents(program))
    '{1, 2, ...}×1×{4, 8, ...}×{4, 8, ...}×{4, 8, ...}'
    """
    import torch

    shape = tuple(int(n) for n in example_shape)
    if shape[0] < 2:
        shape = (2, *shape[1:])
    example = (torch.zeros(shape),)
    network = network.eval()
    if dynamic_sizes:
        limits = [n & -n for n in shape[2:] if n > 1]
        largest = min(limits) if limits else 1
        for exponent in range(_LARGEST_EXPORTED_EXPONENT + 1):
            multiple = 1 << exponent
            if multiple > largest:
                break
            try:
                program = torch.export.export(network, example, dynamic_shapes=_dynamic_shapes(shape, multiple))
            except Exception:  # a constraint violation: the network needs a coarser multiple
                continue
            if _keeps_sizes(program, shape, multiple):
                return program
    return torch.export.export(network, example, dynamic_shapes=_dynamic_shapes(shape, None))


def runs_like(network: Callable, program, example_shape: Sequence) -> float:
    """The largest difference between ``network``'s and ``program``'s outputs on a seeded input, relative to
    the outputs' largest magnitude (a check that an export computes what the network does)."""
    import torch

    generator = torch.Generator().manual_seed(0)
    probe = torch.rand(tuple(example_shape), generator=generator)
    with torch.inference_mode():
        expected, given = network(probe).float(), ExportedNetwork(program.module(), input_extents(program))(probe)
    return float((given.float() - expected).abs().max()) / (float(expected.abs().max()) or 1.0)


__all__ = [
    "ExportedNetwork",
    "Extent",
    "NetworkInputError",
    "describe_extents",
    "export_network",
    "has_static_batch",
    "input_extents",
    "load_exported",
    "runs_like",
]

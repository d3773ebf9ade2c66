"""Ways to make a given network's forward pass faster on a device, and the ones the engine adopts.

Each candidate returns a network computing the same function (up to floating-point rounding) or raises;
:func:`tuned_network` applies those the benchmark (``Testing/benchmark_inference.py``, part "forward")
showed to be faster for such a network, checks the result against the network itself on a seeded
input, and keeps the network as it is when a candidate fails or disagrees.

- ``frozen``: a TorchScript module frozen (weights become constants, batch norm folded into the
  convolutions) and optimized for inference (oneDNN convolutions with prepacked weights, even for the
  single-window batches PyTorch would otherwise run on its slow reference path). Measured on 2 CPU cores
  in float32: a quarter to a third less CPU time for the demo model (batch norm), a fifth more for MONAI's
  UNet (instance norm, nothing to fold); so it is adopted for networks with batch norm only. On the CPU
  in float32 only: the optimized graph refuses bfloat16 inputs under autocast. On CUDA (float32 and
  float16) the demo model's forward pass ran 2.6 to 2.75 times faster frozen: adopted for batch norm too.
- one window per call on the CPU under bfloat16 autocast (:func:`windows_per_call`): per window, 1.2 to 1.4
  times faster than the models' batches of 2 or 4 on 2 cores (in float32 the batches of 2 were faster than
  one window, and are kept).
- ``channels-last``: windows handed over in the channels-last 3D memory layout: no gain measured.
- ``compiled``: ``torch.compile`` (Inductor) of a torch.export program or a module: the compilation takes
  tens of seconds per window size on a CPU, more than a whole segmentation, so it is measured, not adopted.

- ``cudnn-autotune``: cuDNN's autotuner (``torch.backends.cudnn.benchmark``) on while the network runs: it
  times cuDNN's convolution algorithms on the first call of each shape and keeps the fastest. CUDA only.
- ``cuda-graphs``: the network's kernels captured once per input shape and precision in a CUDA graph and
  replayed, so launching them costs one call instead of one per kernel. CUDA only.
  Neither CUDA candidate is adopted: on an H200 they gained 2 to 54% per forward pass (the most on an
  instance-norm UNet's float16 batches) and 4 to 17% per segmentation, but the first call of each new
  window shape (larger windows change shape with every volume) cost about 0.8 s, more than a whole
  segmentation there.

A candidate is adopted only where the benchmark measured it faster; nothing unmeasured is adopted.

Example::

    >>> import torch
    >>> network = torch.jit.script(torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1),
    ...                                                torch.nn.BatchNorm3d(4), torch.nn.ReLU()).eval())
    >>> tuned, how = tuned_network(network, torch.device("cpu"), "", (1, 1, 8, 8, 8))
    >>> how
    'frozen'
    >>> probe = torch.rand(1, 1, 8, 8, 8)
    >>> bool(torch.allclose(tuned(probe), network(probe), atol=1e-5))
    True
"""

from __future__ import annotations

import contextlib
import threading
from typing import Callable

from .window_plan import PerNetwork, network_operations


def has_batch_norm(network: Callable) -> bool:
    """Whether the network's graph holds a batch norm (which freezing folds into a convolution)."""
    return "batch_norm" in (network_operations(network) or ())


# What the engine applies, per (device type, precision): the candidates measured to be faster there, each
# with the kind of network it was faster for.
ADOPTED = {("cpu", "float32"): (("frozen", has_batch_norm),),
           ("cuda", "float32"): (("frozen", has_batch_norm),),
           ("cuda", "float16"): (("frozen", has_batch_norm),)}
# A tuned network must give the network's outputs to this tolerance, relative to their largest magnitude, per
# arithmetic: float32 is exact to 1e-6 here, so 1e-3 leaves room; float16 keeps 10 mantissa bits, and the
# demo network frozen in float16 differed from itself unfrozen by 1.6e-3 (CPU; CUDA refused it at 1e-3), as
# float32 convolutions on CUDA in TF32 (PyTorch's default) may; bfloat16 keeps 7. A candidate that computes
# something else differs by the order of the outputs.
_RELATIVE_TOLERANCE = {"float32": 1e-3, "tf32": 1e-2, "float16": 1e-2, "bfloat16": 5e-2}
_tuned = PerNetwork()


def frozen(network: Callable) -> Callable:
    """A TorchScript module frozen and optimized for inference (raises for anything else)."""
    import torch

    if not isinstance(network, torch.jit.ScriptModule):
        raise TypeError("only TorchScript modules can be frozen")
    return torch.jit.optimize_for_inference(torch.jit.freeze(network.eval()))


class ChannelsLast:
    """``network`` given its windows in the channels-last 3D memory layout."""

    def __init__(self, network: Callable) -> None:
        self.network = network

    def __call__(self, batch):
        import torch

        return self.network(batch.contiguous(memory_format=torch.channels_last_3d))


def channels_last(network: Callable) -> Callable:
    return ChannelsLast(network)


def compiled(network: Callable) -> Callable:
    """``torch.compile`` of a module (a torch.export program's included); compiles on its first call."""
    import torch

    if not isinstance(network, torch.nn.Module) or isinstance(network, torch.jit.ScriptModule):
        raise TypeError("torch.compile takes torch.export programs and modules, not TorchScript")
    return torch.compile(network, dynamic=False)


class CudnnAutotuned:
    """``network`` run with cuDNN's autotuner on (and the previous setting restored after each call)."""

    def __init__(self, network: Callable) -> None:
        self.network = network

    def __call__(self, batch):
        import torch

        previous = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = True
        try:
            return self.network(batch)
        finally:
            torch.backends.cudnn.benchmark = previous


def cudnn_autotuned(network: Callable) -> Callable:
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("cuDNN's autotuner needs a CUDA device")
    return CudnnAutotuned(network)


class CudaGraphs:
    """``network`` replayed from CUDA graphs, one captured per input shape, dtype and autocast precision.

    The first call of a new kind warms the network up on a side stream (TorchScript's profiling executor and
    cuDNN's autotuner settle over the first runs) and captures it; later calls copy their input into the
    graph's own input tensor, replay the graph and return a copy of its output (callers may keep outputs
    across calls, e.g. mirrored passes). Inputs not on a CUDA device, and kinds beyond ``max_graphs`` (each
    graph keeps its own memory), run the network as it is.
    """

    WARM_UP_CALLS = 3

    def __init__(self, network: Callable, max_graphs: int = 4) -> None:
        self.network, self.max_graphs = network, max_graphs
        self._graphs: dict = {}
        self._lock = threading.Lock()

    def __call__(self, batch):
        import torch

        if batch.device.type != "cuda":
            return self.network(batch)
        autocast = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else None
        key = (tuple(batch.shape), batch.dtype, autocast, batch.device)
        with self._lock:
            captured = self._graphs.get(key)
            if captured is None:
                if len(self._graphs) >= self.max_graphs:
                    return self.network(batch)
                captured = self._graphs[key] = self._capture(batch, autocast)
            inputs, graph, outputs = captured
            inputs.copy_(batch)
            graph.replay()
            return outputs.clone()

    def _capture(self, batch, autocast) -> tuple:
        import torch

        inputs = batch.clone()
        # Autocast's cast-weight cache would hold tensors freed after capture: capture without it.
        context = (torch.autocast("cuda", dtype=autocast, cache_enabled=False) if autocast is not None
                   else contextlib.nullcontext())
        side = torch.cuda.Stream(batch.device)
        side.wait_stream(torch.cuda.current_stream(batch.device))
        with torch.cuda.stream(side), context:
            for _ in range(self.WARM_UP_CALLS):
                self.network(inputs)
        torch.cuda.current_stream(batch.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), context:
            outputs = self.network(inputs)
        return inputs, graph, outputs


def cuda_graphs(network: Callable) -> Callable:
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("CUDA graphs need a CUDA device")
    return CudaGraphs(network)


CANDIDATES = {"frozen": frozen, "channels-last": channels_last, "compiled": compiled,
              "cudnn-autotune": cudnn_autotuned, "cuda-graphs": cuda_graphs}


def windows_per_call(device, autocast: str, batch_size: int) -> int:
    """How many windows to hand the network at once: one on the CPU under bfloat16 autocast (measured
    faster per window), else the model's ``batch_size``."""
    return 1 if device.type == "cpu" and autocast == "bfloat16" else batch_size


def _agrees(tuned: Callable, network: Callable, example_shape: tuple, device, autocast: str) -> bool:
    import torch

    generator = torch.Generator().manual_seed(0)
    probe = torch.rand(example_shape, generator=generator).to(device)
    context = torch.autocast(device.type, dtype=getattr(torch, autocast)) if autocast else contextlib.nullcontext()
    with torch.inference_mode(), context:
        expected = network(probe).float()
        given = tuned(probe).float()
    if given.shape != expected.shape:
        return False
    scale = float(expected.abs().max()) or 1.0
    return bool((given - expected).abs().max() <= _RELATIVE_TOLERANCE[_arithmetic(device, autocast)] * scale)


def _arithmetic(device, autocast: str) -> str:
    """The precision the network's convolutions compute in: ``autocast``'s, else float32 or, on CUDA with
    cuDNN allowed to, TF32."""
    import torch

    if autocast:
        return autocast
    return "tf32" if device.type == "cuda" and torch.backends.cudnn.allow_tf32 else "float32"


def tuned_network(network: Callable, device, autocast: str, example_shape: tuple) -> tuple:
    """(the network to run, the candidates applied joined by "+", or "" when none): the candidates
    ``ADOPTED`` for ``device`` (a torch.device) and precision (``autocast`` "" for float32) that suit the
    network, each kept only if it applies to it and agrees with it on a seeded input of ``example_shape``
    (a window as the network takes it: N×C×Z×Y×X, or in the package's axis order). Kept per network object,
    so a network from the model pool is tuned once."""
    return _tuned.get(network, (str(device), autocast, tuple(example_shape)),
                      lambda: _tuned_for(network, device, autocast, example_shape))


def _tuned_for(network: Callable, device, autocast: str, example_shape: tuple) -> tuple:
    result, applied = network, []
    for name, suits in ADOPTED.get((device.type, autocast or "float32"), ()):
        try:
            if not suits(network):
                continue
            candidate = CANDIDATES[name](result)
            if _agrees(candidate, network, example_shape, device, autocast):
                result = candidate
                applied.append(name)
        except Exception:  # a network this candidate cannot handle runs without it
            continue
    return result, "+".join(applied)


__all__ = ["ADOPTED", "CANDIDATES", "ChannelsLast", "CudaGraphs", "CudnnAutotuned", "channels_last", "compiled",
           "cuda_graphs", "cudnn_autotuned", "frozen", "has_batch_norm", "tuned_network", "windows_per_call"]

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
- one window per call on the CPU under bfloat16 autocast (:func:`windows_per_call`; one per thread group
  where windows run across threads): per window, 1.2 to 1.4 times faster than the models' batches of 2 or 4
  on 2 cores (in float32 the batches of 2 were faster than one window, and are kept).
- ``windows-across-threads``: each call's windows split into groups run side by side, one per CPU thread,
  instead of two threads sharing each window's convolutions (on 2 cores, those reached 73% of twice one
  thread's speed). On 2 cores, MONAI's UNet (instance norm, 4 windows of 96³ per call): 1.20 to 1.32 times
  faster per call in float32 (outputs within 4e-6 of the network's: one thread sums in another order);
  whole runs, side by side without it (``--without windows-across-threads``), over five runs 1.04 to 1.26
  times faster in float32 (median 1.13) and 0.99 to 1.12 times in bfloat16 (median 1.04, within the noise:
  one window per thread instead of one window per call). A
  model taking one window per call gets one per thread: 0.167 s per window against 0.200 s (float32).
  Adopted on the CPU in float32 and bfloat16 for calls of several windows, at the thread counts measured
  (``_WINDOWS_ACROSS_THREADS_MEASURED``).
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
    >>> how  # one window per call: nothing to share out across threads
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


# The CPU thread counts at which windows across threads were measured faster (2 cores): at other counts
# the network gets its windows together, as before, until the benchmark has measured them.
_WINDOWS_ACROSS_THREADS_MEASURED = (2,)


def _thread_groups(threads: int) -> int:
    """How many groups of windows run side by side on ``threads`` CPU threads: one per thread where that
    was measured faster, else one."""
    return threads if threads in _WINDOWS_ACROSS_THREADS_MEASURED else 1


def has_batch_norm(network: Callable) -> bool:
    """Whether the network's graph holds a batch norm (which freezing folds into a convolution)."""
    return "batch_norm" in (network_operations(network) or ())


def batch_norm_to_fold(network: Callable, example_shape: tuple) -> bool:
    """Where freezing was measured faster: networks with batch norm, whatever their windows."""
    return has_batch_norm(network)


def windows_to_share_out(network: Callable, example_shape: tuple) -> bool:
    """Where windows across threads were measured faster: calls of several windows (``example_shape``'s first
    dimension), on a CPU thread count at which they run in several groups; any network."""
    import torch

    return example_shape[0] > 1 and _thread_groups(torch.get_num_threads()) > 1


# What the engine applies, per (device type, precision): the candidates measured to be faster there, each
# with where it was faster (the network, and an input of the shape it is given).
ADOPTED = {("cpu", "float32"): (("frozen", batch_norm_to_fold), ("windows-across-threads", windows_to_share_out)),
           ("cpu", "bfloat16"): (("windows-across-threads", windows_to_share_out),),
           ("cuda", "float32"): (("frozen", batch_norm_to_fold),),
           ("cuda", "float16"): (("frozen", batch_norm_to_fold),)}
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


class WindowsAcrossThreads:
    """``network`` given each call's windows in groups that run side by side, torch's CPU threads shared out
    among them (two windows on one thread each, where two threads would share one window's convolutions).

    One group per thread (at the thread counts measured), up to the windows in the call; calls with one
    window, or off the CPU, run the network as it is. Each group runs in the caller's precision (autocast),
    inference and grad mode, and the outputs are joined in window order, so the result does not depend on
    which group ends first.

    Example::

        >>> import torch
        >>> network = WindowsAcrossThreads(torch.nn.Conv3d(1, 2, 3, padding=1).eval())
        >>> with torch.inference_mode():
        ...     network(torch.rand(4, 1, 8, 8, 8)).shape
        torch.Size([4, 2, 8, 8, 8])
    """

    def __init__(self, network: Callable) -> None:
        self.network = network

    def __call__(self, batch):
        import torch

        threads = torch.get_num_threads()
        groups = min(_thread_groups(threads), int(batch.shape[0]))
        if batch.device.type != "cpu" or groups < 2:
            return self.network(batch)
        # Autocast, inference mode and grad mode are per thread: the groups take the caller's.
        autocast = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
        inference, grad = torch.is_inference_mode_enabled(), torch.is_grad_enabled()

        def run(windows):
            context = torch.autocast("cpu", dtype=autocast) if autocast is not None else contextlib.nullcontext()
            with torch.inference_mode(inference), torch.set_grad_enabled(grad), context:
                return self.network(windows)

        return torch.cat(list(_group_threads(threads, groups).map(run, batch.tensor_split(groups))))


# Threads for groups of windows, per (CPU threads, groups): shared by every network, which they hold no state of.
_group_pools: dict = {}
_group_pools_lock = threading.Lock()


def _group_threads(threads: int, groups: int):
    """A pool of ``groups`` threads, each set to its share of ``threads``. Setting a thread's count also sets
    the count new threads start with, so the caller's count is set again once all have theirs."""
    import concurrent.futures

    import torch

    with _group_pools_lock:
        pool = _group_pools.get((threads, groups))
        if pool is None:
            pool = concurrent.futures.ThreadPoolExecutor(groups, thread_name_prefix="windows")
            started = threading.Barrier(groups)

            def share(_):
                # A thread takes the process's count on its first parallel call: take it now, so that what
                # is set next stays this thread's.
                torch.get_num_threads()
                torch.set_num_threads(max(1, threads // groups))
                started.wait()

            list(pool.map(share, range(groups)))
            torch.set_num_threads(threads)
            _group_pools[(threads, groups)] = pool
        return pool


def windows_across_threads(network: Callable) -> Callable:
    return WindowsAcrossThreads(network)


CANDIDATES = {"frozen": frozen, "channels-last": channels_last, "compiled": compiled,
              "cudnn-autotune": cudnn_autotuned, "cuda-graphs": cuda_graphs,
              "windows-across-threads": windows_across_threads}


def windows_per_call(device, autocast: str, batch_size: int, across_threads: bool = False) -> int:
    """How many windows to hand the network at once: on the CPU under bfloat16 autocast one per thread
    group (measured faster per window than batches), else the model's ``batch_size``; with
    ``across_threads`` (``WindowsAcrossThreads`` applied) at least one window per group.

    >>> import torch
    >>> windows_per_call(torch.device("cpu"), "bfloat16", 4), windows_per_call(torch.device("cuda"), "", 4)
    (1, 4)
    """
    if device.type != "cpu":
        return batch_size
    import torch

    groups = _thread_groups(torch.get_num_threads()) if across_threads else 1
    return max(1 if autocast == "bfloat16" else batch_size, groups)


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
    (a window as the network takes it: N×C×Z×Y×X, or in the package's axis order). Kept per network object
    (and CPU thread count, which some candidates depend on), so a network from the model pool is tuned once."""
    import torch

    key = (str(device), autocast, tuple(example_shape), torch.get_num_threads() if device.type == "cpu" else 0)
    return _tuned.get(network, key, lambda: _tuned_for(network, device, autocast, example_shape))


def _tuned_for(network: Callable, device, autocast: str, example_shape: tuple) -> tuple:
    result, applied = network, []
    for name, suits in ADOPTED.get((device.type, autocast or "float32"), ()):
        try:
            if not suits(network, example_shape):
                continue
            candidate = CANDIDATES[name](result)
            if _agrees(candidate, network, example_shape, device, autocast):
                result = candidate
                applied.append(name)
        except Exception:  # a network this candidate cannot handle runs without it
            continue
    return result, "+".join(applied)


__all__ = ["ADOPTED", "CANDIDATES", "ChannelsLast", "CudaGraphs", "CudnnAutotuned", "WindowsAcrossThreads",
           "batch_norm_to_fold", "channels_last", "compiled", "cuda_graphs", "cudnn_autotuned", "frozen",
           "has_batch_norm", "tuned_network", "windows_across_threads", "windows_per_call", "windows_to_share_out"]

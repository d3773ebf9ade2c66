"""DeepSegmentLib.forward_pass: tuned networks compute the same function, and anything else falls back."""

from __future__ import annotations

import threading

import pytest
import torch

from DeepSegmentLib import forward_pass
from DeepSegmentLib.forward_pass import (
    CANDIDATES,
    CudaGraphs,
    WindowsAcrossThreads,
    channels_last,
    frozen,
    tuned_network,
    windows_per_call,
)

CPU = torch.device("cpu")


@pytest.fixture
def torch_threads():
    """Sets torch's CPU thread count for a test (some candidates depend on it) and restores it after."""
    previous = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(previous)


def conv_bn_network() -> torch.jit.ScriptModule:
    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.BatchNorm3d(4), torch.nn.ReLU(),
                                  torch.nn.Conv3d(4, 3, 1))
    with torch.no_grad():  # running statistics other than 0 and 1, so folding them into the convolution matters
        network[1].running_mean.uniform_(-1, 1)
        network[1].running_var.uniform_(0.5, 2)
    return torch.jit.script(network.eval())


def test_a_torchscript_network_is_frozen_once_and_computes_the_same(torch_threads):
    torch_threads(1)
    network = conv_bn_network()
    tuned, how = tuned_network(network, CPU, "", (1, 1, 8, 8, 8))
    assert how == "frozen" and tuned is not network
    batch = torch.randn(2, 1, 12, 10, 9, generator=torch.Generator().manual_seed(1))  # another size, a batch
    with torch.inference_mode():
        torch.testing.assert_close(tuned(batch), network(batch), rtol=1e-4, atol=1e-4)
    assert tuned_network(network, CPU, "", (1, 1, 8, 8, 8))[0] is tuned  # kept with the network


def test_reduced_precision_other_formats_and_networks_without_batch_norm_run_as_they_are(torch_threads):
    torch_threads(1)
    network = conv_bn_network()
    assert tuned_network(network, CPU, "bfloat16", (1, 1, 8, 8, 8)) == (network, "")
    instance_norm = torch.jit.script(torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3), torch.nn.InstanceNorm3d(2)))
    assert tuned_network(instance_norm, CPU, "", (1, 1, 8, 8, 8)) == (instance_norm, "")
    program = torch.export.export(torch.nn.Conv3d(1, 2, 3), (torch.zeros(1, 1, 8, 8, 8),)).module()
    assert tuned_network(program, CPU, "", (1, 1, 8, 8, 8)) == (program, "")
    with pytest.raises(TypeError):
        frozen(program)


def test_a_candidate_that_fails_or_disagrees_is_not_applied(monkeypatch):
    network = conv_bn_network()
    monkeypatch.setitem(CANDIDATES, "wrong", lambda net: (lambda batch: net(batch) + 1.0))
    monkeypatch.setitem(CANDIDATES, "failing", lambda net: (lambda batch: batch.view(-1, 7)))
    every = lambda net, shape: True  # noqa: E731
    monkeypatch.setitem(forward_pass.ADOPTED, ("cpu", "float32"),
                        (("wrong", every), ("failing", every), ("channels-last", every)))
    tuned, how = tuned_network(network, CPU, "", (1, 1, 6, 6, 6))
    assert how == "channels-last"
    assert tuned.network is network


@pytest.mark.parametrize(("autocast", "kept"), [("", False), ("bfloat16", True)])
def test_a_candidate_is_held_to_the_rounding_of_the_precision_it_runs_in(monkeypatch, autocast, kept):
    """Off by 0.5% of the outputs' largest magnitude: more than float32 arithmetic explains, less than
    bfloat16's (a folded batch norm in float16 already moves outputs by 0.16%)."""
    network = conv_bn_network()

    def off_by_half_a_percent(net):
        return lambda batch: (lambda out: out + 0.005 * out.abs().max())(net(batch))

    monkeypatch.setitem(CANDIDATES, "rounded", off_by_half_a_percent)
    monkeypatch.setitem(forward_pass.ADOPTED, ("cpu", autocast or "float32"), (("rounded", lambda net, shape: True),))
    _, how = tuned_network(network, CPU, autocast, (1, 1, 6, 6, 6))
    assert how == ("rounded" if kept else "")


def test_channels_last_hands_over_the_same_values():
    network = conv_bn_network()
    batch = torch.randn(2, 1, 8, 9, 10)
    with torch.inference_mode():
        torch.testing.assert_close(channels_last(network)(batch), network(batch))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA (test_cuda.py covers CUDA)")
@pytest.mark.parametrize("name", ["cudnn-autotune", "cuda-graphs"])
def test_the_cuda_candidates_refuse_without_cuda_and_the_engine_runs_the_network_as_it_is(name, monkeypatch):
    network = conv_bn_network()
    with pytest.raises(RuntimeError, match="CUDA"):
        CANDIDATES[name](network)
    monkeypatch.setitem(forward_pass.ADOPTED, ("cpu", "float32"), ((name, lambda n, shape: True),))
    assert tuned_network(network, CPU, "", (1, 1, 8, 8, 8)) == (network, "")


def test_cuda_graphs_run_inputs_off_the_gpu_as_they_are():
    network = conv_bn_network()
    graphs = CudaGraphs(network)
    batch = torch.rand(2, 1, 8, 8, 8)
    with torch.inference_mode():
        torch.testing.assert_close(graphs(batch), network(batch))
    assert graphs._graphs == {}


class ThreadsSeen(torch.nn.Module):
    """``network``, noting for each call the thread it ran on, that thread's torch thread count, and whether
    autocast, inference and grad mode were on there."""

    def __init__(self, network) -> None:
        super().__init__()
        self.network, self.calls = network, []

    def forward(self, batch):
        self.calls.append((threading.current_thread().name, torch.get_num_threads(), len(batch),
                           torch.is_autocast_enabled("cpu"), torch.is_inference_mode_enabled(),
                           torch.is_grad_enabled()))
        return self.network(batch)


def instance_norm_network():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.InstanceNorm3d(4, affine=True),
                               torch.nn.PReLU(), torch.nn.Conv3d(4, 3, 1)).eval()


def test_windows_across_threads_run_one_group_per_thread_with_the_same_outputs(torch_threads):
    torch_threads(2)
    seen = ThreadsSeen(torch.jit.script(instance_norm_network()))
    across = WindowsAcrossThreads(seen)
    batch = torch.randn(4, 1, 10, 9, 8, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        expected = seen.network(batch)
        for _ in range(2):  # the second call reuses the threads
            torch.testing.assert_close(across(batch), expected, rtol=1e-5, atol=1e-5)  # one thread sums otherwise
    groups = seen.calls
    assert len(groups) == 4 and {name for name, *_ in groups} == {"windows_0", "windows_1"}
    assert all(threads == 1 and size == 2 and inference and not autocast
               for _, threads, size, autocast, inference, _ in groups)
    # The caller's count, and the one new threads start with, are still 2.
    started = []
    thread = threading.Thread(target=lambda: started.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    assert torch.get_num_threads() == 2 and started == [2]


def test_windows_across_threads_keep_the_caller_s_precision_and_grad_mode(torch_threads):
    torch_threads(2)
    seen = ThreadsSeen(instance_norm_network())
    across = WindowsAcrossThreads(seen)
    batch = torch.rand(2, 1, 8, 8, 8)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        output = across(batch)
    assert output.dtype == torch.bfloat16
    assert [(size, autocast, inference, grad) for _, _, size, autocast, inference, grad in seen.calls] == [
        (1, True, False, False), (1, True, False, False)]


@pytest.mark.parametrize("threads", [1, 3])
def test_windows_across_threads_hand_all_windows_at_once_where_no_gain_was_measured(torch_threads, threads):
    torch_threads(threads)
    seen = ThreadsSeen(instance_norm_network())
    with torch.inference_mode():
        WindowsAcrossThreads(seen)(torch.rand(4, 1, 8, 8, 8))
    assert [(name, size) for name, _, size, *_ in seen.calls] == [(threading.current_thread().name, 4)]
    network = torch.jit.script(instance_norm_network())
    assert tuned_network(network, CPU, "", (2, 1, 8, 8, 8)) == (network, "")


@pytest.mark.parametrize(("autocast", "batch_size", "expected"), [
    ("", 4, 4), ("", 1, 2), ("bfloat16", 4, 2)])
def test_the_engine_adopts_windows_across_threads_on_two_threads(torch_threads, autocast, batch_size, expected):
    torch_threads(2)
    network = torch.jit.script(instance_norm_network())
    tuned, how = tuned_network(network, CPU, autocast, (2, 1, 8, 8, 8))
    assert how == "windows-across-threads" and tuned.network is network
    assert tuned_network(network, CPU, autocast, (1, 1, 8, 8, 8)) == (network, "")  # one window per call
    assert windows_per_call(CPU, autocast, batch_size, across_threads=True) == expected
    assert windows_per_call(CPU, autocast, batch_size) == (1 if autocast else batch_size)

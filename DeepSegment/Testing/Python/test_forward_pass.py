"""DeepSegmentLib.forward_pass: tuned networks compute the same function, and anything else falls back."""

from __future__ import annotations

import pytest
import torch

from DeepSegmentLib import forward_pass
from DeepSegmentLib.forward_pass import CANDIDATES, CudaGraphs, channels_last, frozen, tuned_network

CPU = torch.device("cpu")


def conv_bn_network() -> torch.jit.ScriptModule:
    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.BatchNorm3d(4), torch.nn.ReLU(),
                                  torch.nn.Conv3d(4, 3, 1))
    with torch.no_grad():  # running statistics other than 0 and 1, so folding them into the convolution matters
        network[1].running_mean.uniform_(-1, 1)
        network[1].running_var.uniform_(0.5, 2)
    return torch.jit.script(network.eval())


def test_a_torchscript_network_is_frozen_once_and_computes_the_same():
    network = conv_bn_network()
    tuned, how = tuned_network(network, CPU, "", (1, 1, 8, 8, 8))
    assert how == "frozen" and tuned is not network
    batch = torch.randn(2, 1, 12, 10, 9, generator=torch.Generator().manual_seed(1))  # another size, a batch
    with torch.inference_mode():
        torch.testing.assert_close(tuned(batch), network(batch), rtol=1e-4, atol=1e-4)
    assert tuned_network(network, CPU, "", (1, 1, 8, 8, 8))[0] is tuned  # kept with the network


def test_reduced_precision_other_formats_and_networks_without_batch_norm_run_as_they_are():
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
    every = lambda net: True  # noqa: E731
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
    monkeypatch.setitem(forward_pass.ADOPTED, ("cpu", autocast or "float32"), (("rounded", lambda net: True),))
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
    monkeypatch.setitem(forward_pass.ADOPTED, ("cpu", "float32"), ((name, lambda n: True),))
    assert tuned_network(network, CPU, "", (1, 1, 8, 8, 8)) == (network, "")


def test_cuda_graphs_run_inputs_off_the_gpu_as_they_are():
    network = conv_bn_network()
    graphs = CudaGraphs(network)
    batch = torch.rand(2, 1, 8, 8, 8)
    with torch.inference_mode():
        torch.testing.assert_close(graphs(batch), network(batch))
    assert graphs._graphs == {}

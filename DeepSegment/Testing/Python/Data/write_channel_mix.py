"""Write the channel-mix test network with the running PyTorch, as the test data of test_torch_versions.py.

Run once per PyTorch release whose files the tests load (2.13 on Python 3.11, 2.8 on Python 3.9)::

    .venv/bin/python DeepSegment/Testing/Python/Data/write_channel_mix.py DeepSegment/Testing/Python/Data
    .venv-py39/bin/python DeepSegment/Testing/Python/Data/write_channel_mix.py DeepSegment/Testing/Python/Data

Each run writes ``channel-mix-torch-<major>.<minor>.pt2`` (``torch.export.save``) and
``channel-mix-torch-<major>.<minor>.pt`` (``torch.jit.save``): a 1×1×1 convolution from 2 to 3 channels whose
output channel c is ``CHANNEL_WEIGHTS[c] · input + CHANNEL_BIAS[c]``, exactly.
"""

from __future__ import annotations

import os
import sys

CHANNEL_WEIGHTS = ((1.0, 0.0), (0.0, 2.0), (1.0, -1.0))
CHANNEL_BIAS = (0.0, 1.0, 2.0)


def channel_mix():
    """The network, in evaluation mode."""
    import torch

    network = torch.nn.Conv3d(2, 3, kernel_size=1)
    with torch.no_grad():
        network.weight.copy_(torch.tensor(CHANNEL_WEIGHTS).reshape(3, 2, 1, 1, 1))
        network.bias.copy_(torch.tensor(CHANNEL_BIAS))
    return network.eval()


def main(folder: str) -> None:
    import torch

    release = ".".join(torch.__version__.split("+")[0].split(".")[:2])
    sample = torch.zeros(2, 2, 4, 5, 6)
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(channel_mix(), (sample,), dynamic_shapes=({0: batch},))
    torch.export.save(program, os.path.join(folder, f"channel-mix-torch-{release}.pt2"))
    torch.jit.save(torch.jit.trace(channel_mix(), sample), os.path.join(folder, f"channel-mix-torch-{release}.pt"))


if __name__ == "__main__":
    main(sys.argv[1])

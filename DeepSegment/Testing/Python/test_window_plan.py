"""DeepSegmentLib.window_plan: which networks may run larger windows, which sizes they accept, and plans
that cover the volume with fewer windows and skip background."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from DeepSegmentLib.sliding_window import Window, padded_shape, sliding_window, window_starts
from DeepSegmentLib.window_plan import (
    UNKNOWN,
    FirstWindowCheck,
    WindowRefusedError,
    accepted_multiple,
    background_mask,
    plan_windows,
    window_wide_operation,
)


class SmallUNet(torch.nn.Module):
    """Two poolings by two (window sizes must be multiples of 4), batch norm or instance norm."""

    def __init__(self, norm: str = "batch", classes: int = 3) -> None:
        super().__init__()
        normalization = {"batch": torch.nn.BatchNorm3d, "instance": torch.nn.InstanceNorm3d,
                         "group": lambda c: torch.nn.GroupNorm(2, c)}[norm]
        self.down = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), normalization(4), torch.nn.ReLU())
        self.bottom = torch.nn.Sequential(torch.nn.MaxPool3d(2), torch.nn.Conv3d(4, 4, 3, padding=1),
                                          torch.nn.MaxPool3d(2), torch.nn.ConvTranspose3d(4, 4, 2, stride=2),
                                          torch.nn.ConvTranspose3d(4, 4, 2, stride=2))
        self.head = torch.nn.Conv3d(8, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.down(x)
        return self.head(torch.cat([self.bottom(skip), skip], dim=1))


# ------------------------------------------------------------------------------------- graph inspection


def test_a_network_of_local_operations_may_run_larger_windows():
    assert window_wide_operation(torch.jit.script(SmallUNet("batch").eval())) == ""
    program = torch.export.export(SmallUNet("batch").eval(), (torch.zeros(1, 1, 8, 8, 8),))
    assert window_wide_operation(program.module()) == ""


@pytest.mark.parametrize(("norm", "operation"), [("instance", "instance_norm"), ("group", "group_norm")])
def test_window_statistics_keep_the_model_s_windows(norm, operation):
    assert window_wide_operation(torch.jit.script(SmallUNet(norm).eval())) == operation
    program = torch.export.export(SmallUNet(norm).eval(), (torch.zeros(1, 1, 8, 8, 8),))
    assert window_wide_operation(program.module()) != ""


def test_monai_s_unet_normalizes_each_window():
    from monai.networks.nets import UNet

    network = UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=(4, 8), strides=(2,), num_res_units=1)
    assert window_wide_operation(torch.jit.script(network.eval())) == "instance_norm"


def test_batch_norm_with_batch_statistics_or_attention_is_window_wide():
    training = SmallUNet("batch")  # still in training mode
    assert window_wide_operation(torch.jit.script(training)) == "batch_norm (batch statistics)"
    untracked = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 1), torch.nn.BatchNorm3d(2, track_running_stats=False))
    assert window_wide_operation(torch.jit.script(untracked.eval())) == "batch_norm (batch statistics)"
    pooled = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 1), torch.nn.AdaptiveAvgPool3d(1))
    assert window_wide_operation(torch.jit.script(pooled.eval())) == "adaptive_avg_pool3d"


def test_a_network_that_cannot_be_inspected_is_not_trusted():
    assert window_wide_operation(lambda batch: batch) == UNKNOWN
    assert window_wide_operation(SmallUNet("batch").eval()) == UNKNOWN  # eager: functional calls are invisible


# ------------------------------------------------------------------------------------------ window sizes


def test_the_accepted_multiple_is_found_by_probing_and_kept():
    torch.manual_seed(0)
    network = torch.jit.script(SmallUNet("batch").eval())
    calls = []

    def counted(batch):
        calls.append(tuple(batch.shape[2:]))
        return network(batch)

    assert accepted_multiple(counted, 1, (16, 16, 16), "cpu") == (4, 4, 4)
    assert calls == [(3, 3, 3), (6, 6, 6), (12, 12, 12)]  # each a multiple of 2^k and of no larger power of two
    assert accepted_multiple(counted, 1, (16, 16, 16), "cpu") == (4, 4, 4) and len(calls) == 3  # kept
    pointwise = torch.jit.script(torch.nn.Conv3d(2, 3, 1))
    assert accepted_multiple(pointwise, 2, (8, 8, 8), "cpu") == (1, 1, 1)


def test_a_2d_model_s_slice_axis_stays_one_voxel():
    def slice_network(batch):  # a 2D network seen as 3D (windows one voxel thick along y)
        assert batch.shape[3] == 1
        return torch.nn.functional.max_pool3d(batch, (2, 1, 2)).repeat_interleave(2, 2).repeat_interleave(2, 4)

    assert accepted_multiple(slice_network, 1, (16, 1, 16), "cpu") == (2, 1, 2)


def test_a_program_exported_for_its_patch_only_accepts_no_other_size():
    program = torch.export.export(SmallUNet("batch").eval(), (torch.zeros(1, 1, 16, 16, 16),))
    assert accepted_multiple(program.module(), 1, (16, 16, 16), "cpu") is None


def test_the_first_window_of_a_new_size_is_checked():
    program = torch.export.export(SmallUNet("batch").eval(), (torch.zeros(1, 1, 16, 16, 16),)).module()
    with pytest.raises(WindowRefusedError):
        FirstWindowCheck(program)(torch.zeros(1, 1, 24, 24, 24))
    cropping = FirstWindowCheck(lambda batch: batch[:, :, 1:])
    with pytest.raises(WindowRefusedError, match="a 4×4×4 window gave a 3×4×4 output"):
        cropping(torch.zeros(1, 1, 4, 4, 4))
    passing = FirstWindowCheck(lambda batch: batch)
    passing(torch.zeros(1, 1, 4, 4, 4))
    assert passing.passed


# ------------------------------------------------------------------------------------------- background


def test_background_is_dark_in_every_channel():
    volume = torch.rand(2, 6, 6, 6, generator=torch.Generator().manual_seed(0)) + 1
    volume[:, :2] = 0  # air in both channels
    volume[1, 4:] = 0  # dark in one channel only: not background
    mask = background_mask(volume)
    assert mask[:2].all() and not mask[2:].any()
    assert background_mask(torch.ones(1, 4, 4, 4)) is None  # nothing to tell apart


# ---------------------------------------------------------------------------------------------- planning


def covered(plan, shape) -> torch.Tensor:
    padded = padded_shape(shape, plan.window.patch_size)
    cover = torch.zeros(padded, dtype=torch.bool)
    for origin in plan.origins:
        cover[tuple(slice(o, o + n) for o, n in zip(origin, plan.window.patch_size))] = True
    before = [(p - s) // 2 for p, s in zip(padded, shape)]
    return cover[tuple(slice(b, b + s) for b, s in zip(before, shape))]


def test_without_a_multiple_the_plan_is_the_model_s_tiling():
    window = Window((16, 12, 16), overlap=0.5, batch_size=3)
    plan = plan_windows((37, 30, 41), window)
    expected = list(itertools.product(*(window_starts(s, p, 0.5) for s, p in zip((37, 30, 41), (16, 12, 16)))))
    assert plan.window == window and list(plan.origins) == expected and plan.skipped == 0


def test_larger_windows_are_multiples_at_least_the_patch_covering_the_volume():
    plan = plan_windows((100, 37, 90), Window((32, 64, 32), overlap=0.5, batch_size=2), multiple=(8, 8, 8),
                        max_window_voxels=10**7)
    assert plan.window.patch_size == (104, 64, 96) and len(plan.origins) == 1
    assert plan.window.batch_size == 1  # one window
    assert covered(plan, (100, 37, 90)).all()


def test_a_memory_limit_splits_the_volume_into_few_overlapping_windows():
    shape, limit = (200, 150, 120), 64**3 * 4
    plan = plan_windows(shape, Window((64, 64, 64), overlap=0.5), multiple=(16, 16, 16), max_window_voxels=limit)
    size = plan.window.patch_size
    assert math.prod(size) <= limit and all(n % 16 == 0 and n >= 64 for n in size)
    assert covered(plan, shape).all()
    work = len(plan.origins) * math.prod(size)
    exact = len(plan_windows(shape, Window((64, 64, 64), overlap=0.5)).origins) * 64**3
    assert work < exact / 2
    for axis in range(3):  # neighbours share at least the model's overlap band (32 voxels)
        starts = sorted({o[axis] for o in plan.origins})
        assert all(b - a <= size[axis] - 32 for a, b in zip(starts, starts[1:]))


def test_when_no_larger_window_fits_the_model_s_windows_run():
    window = Window((64, 64, 64), overlap=0.5)
    plan = plan_windows((200, 200, 200), window, multiple=(16, 16, 16), max_window_voxels=64**3 - 1)
    assert plan.window == window


def test_background_windows_are_skipped_and_larger_windows_cropped():
    background = torch.ones(80, 80, 80, dtype=torch.bool)
    background[10:30, 40:60, 20:35] = False
    window = Window((16, 16, 16), overlap=0.5)
    model = plan_windows((80, 80, 80), window, background=background)
    assert model.tiled == 9**3 and 0 < len(model.origins) < 5**3 and model.window == window
    assert covered(model, (80, 80, 80))[10:30, 40:60, 20:35].all()
    larger = plan_windows((80, 80, 80), window, multiple=(4, 4, 4), max_window_voxels=10**6, background=background,
                          margin=(2, 2, 2))
    assert len(larger.origins) == 1 and larger.window.patch_size == (24, 24, 20)  # the 24×24×19 box
    assert covered(larger, (80, 80, 80))[10:30, 40:60, 20:35].all()
    assert "box that is not background" in larger.summary
    nothing = plan_windows((80, 80, 80), window, multiple=(4, 4, 4), max_window_voxels=10**6,
                           background=torch.ones(80, 80, 80, dtype=torch.bool))
    assert nothing.origins == () and "background" in nothing.summary


# ----------------------------------------------------------------------------------------- sliding window


def test_uncovered_voxels_get_the_background_and_a_pointwise_network_is_unchanged():
    torch.manual_seed(1)
    network = torch.jit.script(torch.nn.Sequential(torch.nn.Conv3d(1, 8, 1), torch.nn.Tanh(), torch.nn.Conv3d(8, 3, 1)))
    volume = torch.randn(1, 30, 26, 34, generator=torch.Generator().manual_seed(2))
    volume[:, :, :, :10] = -5  # air
    window = Window((8, 8, 8), overlap=0.5, batch_size=2)
    exact = sliding_window(volume, network, window)
    background = background_mask(volume)
    for multiple in (None, (1, 1, 1)):
        plan = plan_windows(tuple(volume.shape[1:]), window, multiple=multiple, max_window_voxels=10**6,
                            background=background, margin=(0, 0, 0))
        assert plan.skipped > 0 or plan.window.patch_size != (8, 8, 8)
        planned = sliding_window(volume, network, plan.window, origins=plan.origins)
        inside = ~background
        torch.testing.assert_close(planned[:, inside], exact[:, inside], rtol=0, atol=1e-5)
        uncovered = ~covered(plan, tuple(volume.shape[1:]))
        if uncovered.any():
            assert (planned[0][uncovered] == 1).all() and (planned[1:, uncovered] == 0).all()
    none = sliding_window(volume, network, window, activation="sigmoid", output_channels=3, origins=())
    assert none.shape == (3, 30, 26, 34) and not none.any()
    with pytest.raises(ValueError, match="output_channels"):
        sliding_window(volume, network, window, origins=())

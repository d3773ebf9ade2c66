"""DeepSegmentLib.sliding_window: stitched windows equal one pass over the whole volume."""

from __future__ import annotations

import pytest
import torch

from DeepSegmentLib.sliding_window import Window, importance_map, sliding_window, window_starts


@pytest.mark.parametrize(("size", "patch", "overlap"), [(160, 96, 0.5), (100, 32, 0.25), (33, 32, 0.0), (64, 16, 0.5)])
def test_windows_cover_the_volume_with_at_least_the_overlap(size, patch, overlap):
    starts = window_starts(size, patch, overlap)
    assert starts[0] == 0 and starts[-1] == size - patch
    steps = [b - a for a, b in zip(starts, starts[1:])]
    assert all(0 < step <= patch * (1 - overlap) for step in steps)
    assert max(steps) - min(steps) <= 1  # spread evenly


def test_a_volume_no_larger_than_the_patch_is_one_window():
    assert window_starts(20, 32, 0.5) == [0] and window_starts(32, 32, 0.5) == [0]


def pointwise_network(seed: int = 0) -> torch.jit.ScriptModule:
    """A translation-equivariant network with no reach beyond its voxel: exact under any tiling."""
    torch.manual_seed(seed)
    network = torch.nn.Sequential(torch.nn.Conv3d(2, 8, 1), torch.nn.Tanh(), torch.nn.Conv3d(8, 3, 1)).eval()
    return torch.jit.script(network)


def whole_image(network, volume, activation="softmax"):
    with torch.inference_mode():
        logits = network(volume[None])[0]
    return torch.softmax(logits, 0) if activation == "softmax" else torch.sigmoid(logits)


VOLUME = torch.randn(2, 37, 30, 41, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
def test_constant_blending_of_a_pointwise_network_equals_the_whole_image_pass(activation):
    network = pointwise_network()
    window = Window(patch_size=(16, 12, 16), overlap=0.5, blending="constant", batch_size=3)
    stitched = sliding_window(VOLUME, network, window, activation=activation)
    torch.testing.assert_close(stitched, whole_image(network, VOLUME, activation), rtol=0, atol=1e-6)


def test_gaussian_blending_of_a_pointwise_network_equals_the_whole_image_pass():
    network = pointwise_network()
    window = Window(patch_size=(16, 12, 16), overlap=0.5, blending="gaussian", batch_size=4)
    torch.testing.assert_close(sliding_window(VOLUME, network, window), whole_image(network, VOLUME), rtol=0, atol=1e-5)


def test_a_convolution_s_window_border_effects_are_averaged_away_from_the_inside():
    """A 3×3×3 convolution sees zeros beyond a window: with Gaussian blending, a window's border weighs
    little, so stitched scores stay close to the whole-image pass, and exactly equal to it inside a
    window that is the only one covering a voxel region (here: the whole volume is one window)."""
    torch.manual_seed(2)
    network = torch.jit.script(torch.nn.Conv3d(2, 3, 3, padding=1).eval())
    single = sliding_window(VOLUME[:, :16, :12, :16], network, Window((16, 12, 16), 0.5, "gaussian", 1))
    torch.testing.assert_close(single, whole_image(network, VOLUME[:, :16, :12, :16]), rtol=0, atol=1e-6)
    stitched = sliding_window(VOLUME, network, Window((16, 12, 16), 0.5, "gaussian", 2))
    assert (stitched - whole_image(network, VOLUME)).abs().mean() < 0.02


def test_windows_are_batched_and_a_small_volume_is_padded_and_cropped():
    batches = []

    def network(batch):
        batches.append((tuple(batch.shape), batch.data_ptr()))
        return torch.cat([-batch, batch], dim=1)

    volume = torch.ones(1, 5, 9, 7)
    result = sliding_window(volume, network, Window(patch_size=(8, 8, 8), batch_size=4))
    assert result.shape == (2, 5, 9, 7) and [b[0] for b in batches] == [(2, 1, 8, 8, 8)]  # 1×2×1 windows, 8×9×8
    torch.testing.assert_close(result[1], torch.full((5, 9, 7), torch.sigmoid(torch.tensor(2.0)).item()))
    batches.clear()
    sliding_window(torch.ones(1, 21, 21, 21), network, Window(patch_size=(8, 8, 8), overlap=0.5, batch_size=4))
    assert [b[0][0] for b in batches] == [4] * 31 + [1]  # 5³ windows
    assert len({b[1] for b in batches}) == 1  # all copied into one preallocated batch tensor


def test_mirroring_averages_every_flip_of_the_mirrored_axes():
    def position_dependent(batch):
        ramp = torch.arange(batch.shape[-1], dtype=batch.dtype).expand_as(batch)
        return torch.cat([torch.zeros_like(batch), ramp], dim=1)

    volume = torch.zeros(1, 4, 4, 8)
    plain = sliding_window(volume, position_dependent, Window((4, 4, 8), blending="constant"), activation="sigmoid")
    mirrored = sliding_window(volume, position_dependent, Window((4, 4, 8), blending="constant", mirror_dims=(4,)))
    ramp = torch.sigmoid(torch.arange(8.0))
    torch.testing.assert_close(plain[1, 0, 0], ramp)
    torch.testing.assert_close(
        sliding_window(volume, position_dependent, Window((4, 4, 8), blending="constant", mirror_dims=(4,)),
                       activation="sigmoid")[1, 0, 0],
        (ramp + ramp.flip(0)) / 2,
    )
    assert mirrored.shape == plain.shape


def test_the_importance_map_is_computed_once_and_never_zero():
    first = importance_map((8, 10, 12), "gaussian", torch.device("cpu"), torch.float32)
    assert importance_map((8, 10, 12), "gaussian", torch.device("cpu"), torch.float32) is first
    assert first.max() == 1.0 and first.min() >= 1e-3
    assert first[4, 5, 6] > first[0, 0, 0]
    assert torch.equal(importance_map((2, 2, 2), "constant", "cpu", torch.float32), torch.ones(2, 2, 2))
    with pytest.raises(ValueError, match="blending"):
        importance_map((2, 2, 2), "triangular", "cpu", torch.float32)


def test_cancel_before_a_batch_returns_nothing_and_progress_counts_windows():
    seen = []
    network = pointwise_network()
    window = Window(patch_size=(16, 12, 16), overlap=0.5, batch_size=8)
    progress = lambda *p: seen.append(p)  # noqa: E731
    assert sliding_window(VOLUME, network, window, progress=progress, cancelled=lambda: len(seen) > 1) is None
    assert seen == [(8, 80), (16, 80)]  # 4 × 4 × 5 windows


def test_a_wrong_output_channel_count_is_reported():
    with pytest.raises(ValueError, match="gives 3 output channels, the model says 4"):
        sliding_window(VOLUME, pointwise_network(), Window(patch_size=(16, 16, 16)), output_channels=4)


def test_bfloat16_autocast_runs_the_network_reduced_and_stitches_in_float32():
    torch.manual_seed(3)
    network = torch.jit.script(torch.nn.Conv3d(2, 3, 3, padding=1).eval())
    seen = []

    def recording(batch):
        logits = network(batch)
        seen.append(logits.dtype)
        return logits

    full = sliding_window(VOLUME, network, Window((16, 12, 16), 0.5, "gaussian", 2))
    reduced = sliding_window(VOLUME, recording, Window((16, 12, 16), 0.5, "gaussian", 2, autocast="bfloat16"))
    assert set(seen) == {torch.bfloat16} and reduced.dtype == torch.float32
    # bfloat16 keeps 8 bits of mantissa: probabilities agree to about 1%.
    assert (reduced - full).abs().max() < 0.02

"""DeepSegmentLib.live: real ultrasound frames segmented in a real live worker process, newest frame first, through
shared memory; a killed worker is reported and leaves nothing behind."""

from __future__ import annotations

import os
import signal

import numpy as np
import psutil
import pytest
from live_test_support import MODEL_3D_ID, SLOW_MODEL_ID, cine_frames, write_live_models
from stream_test_support import MODEL_ID, expected_labels

from DeepSegmentLib.live import FAILED, LIVE_WORKER_NAME, RUNNING, STOPPED, LiveStream
from DeepSegmentLib.shared_images import segment_prefix
from ModelRegistry import processEventsBriefly
from ModelRegistryLib import IndexSource, Registry


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    return write_live_models(str(tmp_path_factory.mktemp("live-models")))


@pytest.fixture()
def registry(index, tmp_path):
    registry = Registry([IndexSource(index)], str(tmp_path / "cache"))
    registry.refresh(offline=True)
    return registry


@pytest.fixture()
def open_stream(registry):
    """Starts LiveStreams of a model on the CPU (one thread); stops every one of them after the test."""
    streams = []

    def start(model_id: str = MODEL_ID, **options) -> LiveStream:
        entry, version = registry.resolve(model_id)
        stream = LiveStream(entry, version, registry.store.cache_dir, device="cpu", threads=1, **options)
        streams.append(stream)
        return stream

    yield start
    for stream in streams:
        stream.stop()


def segments_on_disk() -> set:
    return {name for name in os.listdir("/dev/shm") if name.startswith(segment_prefix())} \
        if os.path.isdir("/dev/shm") else set()


def poll_until(stream: LiveStream, condition, results: list, timeout: float = 120.0) -> None:
    """Poll ``stream`` as Slicer's timer does, collecting label maps, until ``condition()`` holds."""
    for _ in range(int(timeout / 0.02)):
        if condition():
            return
        stream.poll(results.append)
        processEventsBriefly()
    raise AssertionError(f"not reached in {timeout} s: {stream.statistics()}")


def settled(stream: LiveStream) -> bool:
    """Every frame offered has been segmented, dropped or rejected (none in the worker, none waiting)."""
    status = stream.statistics()
    return status.received == status.segmented + status.dropped + status.rejected


def test_every_frame_offered_one_after_another_gets_its_exact_label_map(open_stream):
    frames, matrices = cine_frames(12)
    stream = open_stream(warm_shape=frames[0].shape)
    assert stream.wait_until_started(120, processEventsBriefly), stream.statistics().message
    status = stream.statistics()
    assert status.state == RUNNING and status.message == (
        f"Segmenting with {MODEL_ID} 1.0.0 on {status.device.split(' (')[0]} ({status.device.split(' (')[1][:-1]}).")
    results = []
    for index, (frame, matrix) in enumerate(zip(frames, matrices)):
        stream.offer(frame, matrix, tag=("frame", index))
        poll_until(stream, lambda index=index: len(results) == index + 1, results)
    for index, result in enumerate(results):
        assert result.number == index + 1 and result.tag == ("frame", index)
        assert result.labels.shape == frames[index].shape and result.labels.dtype == np.uint8
        np.testing.assert_array_equal(result.labels, expected_labels(frames[index]))
        np.testing.assert_array_equal(result.ijk_to_ras, matrices[index])
        assert result.seconds > 0
    status = stream.statistics()
    assert (status.received, status.segmented, status.dropped, status.rejected) == (12, 12, 0, 0)
    assert 0 < status.latency_p50_ms <= status.latency_p99_ms
    final = stream.stop()
    assert final.state == STOPPED and final.message == "Stopped." and final.segmented == 12
    assert not stream.worker.alive and segments_on_disk() == set()


def test_frames_offered_while_the_worker_is_busy_replace_each_other_and_never_queue(open_stream):
    frames, matrices = cine_frames(10)
    stream = open_stream()
    assert stream.wait_until_started(120, processEventsBriefly), stream.statistics().message
    # Offered without polling in between: the first goes to the worker, which stays busy for this side until the
    # next poll; each later one replaces the one waiting.
    for frame, matrix in zip(frames, matrices):
        stream.offer(frame, matrix)
    results = []
    poll_until(stream, lambda: settled(stream), results)
    assert [result.number for result in results] == [1, 10]
    for result, index in zip(results, (0, 9)):
        np.testing.assert_array_equal(result.labels, expected_labels(frames[index]))
    status = stream.statistics()
    assert (status.received, status.segmented, status.dropped) == (10, 2, 8)


def test_a_frame_the_model_cannot_take_is_rejected_in_one_line_and_the_stream_goes_on(open_stream):
    frames, matrices = cine_frames(2)
    stream = open_stream()
    assert stream.wait_until_started(120, processEventsBriefly)
    color = np.repeat(frames[0][..., None], 3, axis=-1)
    results = []
    stream.offer(color, matrices[0])
    poll_until(stream, lambda: settled(stream), results)
    status = stream.statistics()
    assert status.rejected == 1 and results == []
    assert status.problem.startswith("The frame has 3 components per pixel (color 1×96×128); the model takes 1")
    stream.offer(frames[1], matrices[1])
    poll_until(stream, lambda: len(results) == 1, results)
    np.testing.assert_array_equal(results[0].labels, expected_labels(frames[1]))
    assert stream.statistics().state == RUNNING


def test_frames_that_come_while_the_model_loads_wait_newest_first(open_stream):
    frames, matrices = cine_frames(3)
    stream = open_stream()
    for frame, matrix in zip(frames, matrices):
        stream.offer(frame, matrix)
    results = []
    poll_until(stream, lambda: settled(stream), results)
    assert [result.number for result in results] == [3]
    np.testing.assert_array_equal(results[0].labels, expected_labels(frames[2]))
    status = stream.statistics()
    # A frame that waited for the model to load is segmented, but its wait is not a latency of the stream.
    assert (status.dropped, status.segmented, status.latency_p99_ms) == (2, 1, 0.0)


def test_a_bigger_frame_gets_bigger_shared_memory(open_stream):
    small, matrices = cine_frames(2)
    stream = open_stream()
    assert stream.wait_until_started(120, processEventsBriefly)
    big = np.tile(small[1], (1, 2, 3))
    results = []
    for count, frame in enumerate((small[0], big, small[1]), start=1):
        stream.offer(frame, matrices[0])
        poll_until(stream, lambda count=count: len(results) == count, results)
    for result, frame in zip(results, (small[0], big, small[1])):
        np.testing.assert_array_equal(result.labels, expected_labels(frame))


def test_a_3d_model_fails_to_start_in_one_line(open_stream):
    stream = open_stream(MODEL_3D_ID)
    assert not stream.wait_until_started(120, processEventsBriefly)
    status = stream.statistics()
    assert status.state == FAILED
    assert status.message == "The model is a 3D model (dimensions 3): frames need a 2D model (dimensions 2)"
    assert not stream.worker.alive and segments_on_disk() == set()


@pytest.mark.parametrize("when", ["idle", "segmenting"])
def test_a_killed_worker_fails_the_stream_in_plain_words_and_leaves_nothing(open_stream, when):
    frames, matrices = cine_frames(2)
    stream = open_stream(SLOW_MODEL_ID)
    assert stream.wait_until_started(120, processEventsBriefly)
    results = []
    stream.offer(frames[0], matrices[0])
    poll_until(stream, lambda: len(results) == 1, results)
    if when == "segmenting":
        stream.offer(frames[1], matrices[1])
    pid = stream.worker.pid
    os.kill(pid, signal.SIGKILL)
    poll_until(stream, lambda: stream.statistics().state == FAILED, results)
    status = stream.statistics()
    assert status.message.startswith(f"{LIVE_WORKER_NAME} stopped unexpectedly: it was killed (SIGKILL; the system"
                                     " may have run out of memory).")
    assert len(results) == 1 and status.segmented == 1
    assert segments_on_disk() == set()
    with pytest.raises(psutil.NoSuchProcess):
        psutil.Process(pid).status()
    stream.offer(frames[1], matrices[1])  # ignored once failed
    assert stream.statistics().received == status.received

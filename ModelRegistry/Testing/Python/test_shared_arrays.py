"""ModelRegistryLib.shared_arrays: arrays through shared memory, and the segments a killed process leaves removed."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from ModelRegistryLib.jobs import MODEL_REGISTRY_FOLDER, process_exists
from ModelRegistryLib.shared_arrays import (
    SEGMENT_FOLDER,
    SharedBlock,
    allocate_array,
    free_blocks,
    read_shared_array,
    remove_orphan_segments,
    segment_prefix,
    share_array,
    write_shared_array,
)

LISTS_SEGMENTS = os.path.isdir(SEGMENT_FOLDER)


def test_an_array_round_trips_and_a_written_one_takes_the_target_dtype():
    array = np.random.default_rng(0).normal(size=(3, 4, 5)).astype(np.float32)
    block, shared = share_array(array)
    output, target = allocate_array((3, 4, 5), np.uint8)
    try:
        np.testing.assert_array_equal(read_shared_array(shared), array)
        write_shared_array(array > 0, target)
        assert read_shared_array(target).dtype == np.uint8
        np.testing.assert_array_equal(read_shared_array(target), (array > 0).astype(np.uint8))
        with pytest.raises(ValueError, match="cannot be written"):
            write_shared_array(array[0], target)
    finally:
        free_blocks([block, output])


def test_process_exists_tells_a_live_process_from_one_that_is_gone():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert process_exists(os.getpid()) and process_exists(1)
    assert not process_exists(child.pid) and not process_exists(0)


def segments_of(pid):
    return sorted(name for name in os.listdir(SEGMENT_FOLDER) if name.startswith(segment_prefix(pid)))


def make_segments(count, then):
    """A process that creates ``count`` segments, prints its pid, then runs ``then`` (Python code)."""
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {MODEL_REGISTRY_FOLDER!r})
        from ModelRegistryLib.shared_arrays import SharedBlock
        blocks = [SharedBlock.create(4096) for _ in range({count})]
        print(os.getpid(), flush=True)
        {then}
    """)
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stdin=subprocess.PIPE,
                               text=True)
    return process, int(process.stdout.readline())


@pytest.mark.skipif(not LISTS_SEGMENTS, reason=f"no {SEGMENT_FOLDER}: this system does not list its segments")
def test_segments_of_a_killed_process_are_removed_and_those_of_live_ones_kept():
    killed, killed_pid = make_segments(2, "os.kill(os.getpid(), 9)")  # as a Slicer killed mid-run
    killed.wait()
    living, living_pid = make_segments(1, "sys.stdin.read()")  # until its stdin closes
    own = SharedBlock.create(16)
    try:
        assert len(segments_of(killed_pid)) == 2 and len(segments_of(living_pid)) == 1
        removed = remove_orphan_segments()  # other runs' leftovers on this machine may go too
        assert segments_of(killed_pid) == []
        assert sum(name.startswith(segment_prefix(killed_pid)) for name in removed) == 2
        assert len(segments_of(living_pid)) == 1 and segments_of(os.getpid()) == [own.name]
    finally:
        free_blocks([own])
        living.stdin.close()
        living.wait()
        # It exited without freeing its segment, as a killed process would.
        free_blocks([SharedBlock.attach(name) for name in segments_of(living_pid)])

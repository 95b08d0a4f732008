"""The allocator setting that training applies: freed buffers come back without page faults."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest

#: Rounds of three 20 MiB buffers held at once, then freed: the shape of a training step's
#: largest buffers. Prints the page faults of five rounds after a first one.
PATTERN = """
import resource, sys
from recsys.allocator import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
def rounds(n):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(n):
        held = [bytearray(b"1") * (20 * 2**20) for _ in range(3)]
        del held
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
rounds(1)
print(rounds(5))
"""


def page_faults(mode: str) -> int:
    """Minor page faults of the pattern in a fresh process (a fresh heap)."""
    done = subprocess.run(
        [sys.executable, "-c", PATTERN, mode],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],  # where `-c` finds the recsys package
    )
    return int(done.stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_freed_buffers_are_reused_instead_of_faulted_in_afresh():
    one_buffer = 20 * 2**20 // 4096  # its pages
    assert page_faults("default") > one_buffer  # glibc hands them back and faults them in again
    assert page_faults("keep") < one_buffer // 10


def test_without_glibc_it_says_so_and_changes_nothing(monkeypatch):
    from recsys import allocator

    monkeypatch.setattr(allocator.ctypes.util, "find_library", lambda name: None)
    assert allocator.keep_freed_memory() is False

"""How busy the CPU is with other processes' work, and the OpenMP wait policy that follows.

Torch-free: the wait policy must be chosen before torch loads its OpenMP runtime, which reads
``OMP_WAIT_POLICY`` once. OpenMP's default lets idle threads spin a moment between parallel
regions, which bridges the short gaps between a small model's many operators; on a CPU that
another process keeps busy, spinning threads take the cores from it and from each other, and a
training epoch gets several times slower than with PASSIVE, where idle threads sleep at once.
"""

from __future__ import annotations

import os
import sys

import psutil

#: Cores' worth of work from other processes under which the CPU counts as idle.
IDLE_CORES = 0.5


def cores_busy_elsewhere(window_s: float = 0.2) -> float:
    """Cores kept busy over ``window_s``, sampled while this process waits, so its own work
    does not count."""
    return psutil.cpu_percent(interval=window_s) / 100.0 * (psutil.cpu_count() or 1)


def choose_omp_wait_policy(window_s: float = 0.2) -> str | None:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` for this process (and its children) when other processes
    keep the CPU busy; on an idle machine leave OpenMP's default. Returns the policy set, or
    None when it left the setting alone: the user set one, torch has already loaded (too late
    to matter), or the machine is idle."""
    if "OMP_WAIT_POLICY" in os.environ or "torch" in sys.modules:
        return None
    if cores_busy_elsewhere(window_s) < IDLE_CORES:
        return None
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return "PASSIVE"

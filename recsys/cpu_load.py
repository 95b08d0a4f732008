"""How busy the CPU is with other processes' work, and the OpenMP wait policy that follows.

Torch-free: the wait policy must be chosen before torch loads its OpenMP runtime, which reads
``OMP_WAIT_POLICY`` once. Measured on 2 cores (ml-100k sasrec-ce, median epoch): alone, the
runtime's default (threads spin a moment between parallel regions) took 0.8-1.1 s against
1.35-1.47 s with PASSIVE, where one thread took 1.35 s; two such runs at once took 4.5-7.1 s
each with spinning threads against 1.3-1.7 s with PASSIVE.
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

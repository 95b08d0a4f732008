"""Benchmarks: long runs that measure speed and quality, kept out of the test suite."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from typing import Any


def exit_on_sigterm() -> None:
    """Make SIGTERM raise SystemExit in this process, as Ctrl-C raises KeyboardInterrupt.

    By default SIGTERM ends a Python process on the spot: a benchmark stopped that way left the
    training (or server) process it had started running on, with nobody to read its results.
    As an exception, it lets ``subprocess.run`` kill the child it waits on, and ``finally``
    blocks stop a server."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))


def run_child(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess:
    """``subprocess.run`` that takes its child down with it when the benchmark is stopped."""
    exit_on_sigterm()
    return subprocess.run(command, **kwargs)

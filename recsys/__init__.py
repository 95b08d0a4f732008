"""recsys: recommendation as sequence generation. ``from recsys import load_run`` serves a run."""

from __future__ import annotations

from typing import Any

__all__ = ["load_run", "Run"]


def __getattr__(name: str) -> Any:
    """Import the run API on first use, so that ``import recsys`` stays light for every stage."""
    if name == "load_run":
        from recsys.api.loading import load_run

        return load_run
    if name == "Run":
        from recsys.api.run import Run

        return Run
    raise AttributeError(f"module 'recsys' has no attribute {name!r}")

"""Shared fixtures: the MovieLens mirror for integration tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

PROJ_ROOT = Path(__file__).resolve().parents[1]
_DEFAULT_MIRROR = PROJ_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def mirror() -> Path:
    """The local MovieLens mirror; skipped on a user's machine without it, an error in CI."""
    path = Path(os.environ.get("RECSYS_DATA_MIRROR") or _DEFAULT_MIRROR)
    if not (path / "ml-100k").is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"CI must have the MovieLens mirror, but {path} has no ml-100k")
        pytest.skip(f"no MovieLens mirror at {path}; set RECSYS_DATA_MIRROR to run this test")
    return path

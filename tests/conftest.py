"""Shared fixtures: the MovieLens mirror for integration tests, and the tiny trained world
that the evaluation and prediction tests share."""

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


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    """Processed synthetic data with an ``id`` and a cold-start ``text`` run, built once."""
    from evaluate_helpers import tiny_world

    return tiny_world(tmp_path_factory)


@pytest.fixture(scope="session")
def data(world):
    from evaluate_helpers import DATASET

    from recsys.processed import load_processed

    return load_processed(DATASET, world.processed)

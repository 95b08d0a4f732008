"""Shared fixtures: the MovieLens mirror for integration tests, and the tiny trained world
that the evaluation and prediction tests share."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from recsys.config import REPORTS_DIR

PROJ_ROOT = Path(__file__).resolve().parents[1]
_DEFAULT_MIRROR = PROJ_ROOT.parent / "shared" / "data"
#: Found on PATH, as ``make browser-deps`` finds it (``command -v chromium``).
CHROMIUM = "chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
#: Where the browser tests leave their screenshots (git-ignored), for a person to look at.
SCREENSHOTS = REPORTS_DIR / "screenshots"


#: Fixtures that make a test one of a marked kind, so ``-m`` selects it without a mark by hand:
#: the MovieLens mirror, the browser, and the worlds that train models or run a study first.
MARKED_BY_FIXTURE = {
    "mirror": "integration",
    "browser": "browser",
    "tiger_world": "slow",
    "pruned": "slow",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for fixture, marker in MARKED_BY_FIXTURE.items():
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(marker)


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
def tiger(world, tmp_path_factory):
    """The tiny world's data with semantic IDs and a trained TIGER run, built once."""
    from evaluate_helpers import tiny_tiger

    return tiny_tiger(world, tmp_path_factory)


@pytest.fixture(scope="session")
def data(world):
    from evaluate_helpers import DATASET

    from recsys.processed import load_processed

    return load_processed(DATASET, world.processed)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium for the browser tests; missing is a skip here, a failure in CI.

    Module-scoped: playwright's sync API keeps an event loop running in this thread while the
    browser is open, which would break the asyncio tests that run after it."""
    executable = shutil.which(CHROMIUM)
    if executable is None:
        message = f"no {CHROMIUM} on PATH; run 'make browser-deps' (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture()
def single_thread() -> Iterator[None]:
    """Tiny tensors: on a busy CPU a second, spinning OpenMP thread made such tests 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

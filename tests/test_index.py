"""The item index: exact results, exact exclusion and filters under ANN, the run's index cache."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from loguru import logger

from recsys.api import index as idx
from recsys.cli import RecsysError

KINDS = ("exact", "faiss-ivf", "faiss-hnsw")


def clustered(n_rows: int, dim: int, seed: int = 0, clusters: int = 32) -> np.ndarray:
    """An item table: a gaussian mixture with varied norms; row 0 is padding (zeros)."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, dim))
    table = centers[rng.integers(0, clusters, n_rows)] + 0.6 * rng.standard_normal((n_rows, dim))
    table *= rng.lognormal(0.0, 0.25, (n_rows, 1))
    table[0] = 0.0
    return table.astype(np.float32)


def hidden_states(table: np.ndarray, n: int, seed: int = 1) -> np.ndarray:
    """Queries that look like a model's hidden states: noisy item vectors."""
    rng = np.random.default_rng(seed)
    rows = table[rng.integers(1, len(table), n)]
    return (rows + 0.5 * rng.standard_normal(rows.shape)).astype(np.float32)


def brute_force(table, queries, k, exclude=None, allowed=None):
    scores = queries.astype(np.float64) @ table.T.astype(np.float64)
    scores[:, 0] = -np.inf
    if allowed is not None:
        scores[:, ~allowed] = -np.inf
    for row, ids in enumerate(exclude or []):
        scores[row, ids] = -np.inf
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


@pytest.fixture(scope="module")
def table():
    return clustered(5000, 16)


@pytest.fixture(scope="module")
def indexes(table):
    return {kind: idx.build_index(table, kind=kind) for kind in KINDS}


def test_exact_index_equals_brute_force(table):
    queries = hidden_states(table, 20)
    ids, scores = idx.ExactIndex(table).search(queries, 10)
    np.testing.assert_array_equal(ids, brute_force(table, queries, 10))
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ table.T, ids, 1), rtol=1e-5)
    assert ids.dtype == np.int64 and scores.dtype == np.float32
    assert (np.diff(scores, axis=1) <= 0).all()


@pytest.mark.parametrize("share", [1.0, 0.01])
def test_exact_search_in_query_chunks_equals_one_pass(table, monkeypatch, share):
    """Many queries go a few at a time (scores within the budget), with the same answers."""
    rng = np.random.default_rng(4)
    queries = hidden_states(table, 23)
    exclude = [rng.integers(1, len(table), 50) for _ in range(23)]
    allowed = rng.random(len(table)) < share if share < 1 else None
    whole = idx.ExactIndex(table).search(queries, 10, exclude=exclude, allowed=allowed)
    monkeypatch.setattr(idx, "SCORE_BUDGET", 4 * len(table) * 5)  # 5 queries at a time
    chunked = idx.ExactIndex(table).search(queries, 10, exclude=exclude, allowed=allowed)
    np.testing.assert_array_equal(chunked[0], whole[0])
    # A matmul of another shape may round differently in the last bit (BLAS picks its kernel
    # by shape and CPU), so scores agree to float32 precision, not bit for bit.
    np.testing.assert_allclose(chunked[1], whole[1], rtol=1e-5)
    np.testing.assert_array_equal(whole[0], brute_force(table, queries, 10, exclude, allowed))


def test_auto_kind_follows_the_threshold(table, monkeypatch):
    assert idx.build_index(table).kind == "exact"
    monkeypatch.setattr(idx, "ANN_THRESHOLD", len(table))
    assert idx.build_index(table).kind == "faiss-ivf"
    with pytest.raises(RecsysError, match="index kind"):
        idx.build_index(table, kind="annoy")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("share", [1.0, 0.5, 0.01])
def test_exclusion_and_allowed_are_never_violated(table, indexes, kind, share):
    rng = np.random.default_rng(2)
    queries = hidden_states(table, 16)
    # Each row excludes its own true top 40 (forcing real over-fetch) plus random history.
    top = brute_force(table, queries, 40)
    exclude = [np.concatenate([top[b], rng.integers(1, len(table), 100)]) for b in range(16)]
    allowed = rng.random(len(table)) < share if share < 1 else None
    ids, scores = indexes[kind].search(queries, 10, exclude=exclude, allowed=allowed)
    for b in range(16):
        assert not np.isin(ids[b], exclude[b]).any()
        assert (ids[b] > 0).all()
        if allowed is not None:
            assert allowed[ids[b]].all()
    assert (np.diff(scores, axis=1) <= 0).all()
    if kind == "exact":
        np.testing.assert_array_equal(ids, brute_force(table, queries, 10, exclude, allowed))


@pytest.mark.parametrize("kind", KINDS)
def test_rows_with_fewer_than_k_items_left_are_padded(table, indexes, kind):
    allowed = np.zeros(len(table), dtype=bool)
    allowed[[0, 7, 8, 9]] = True
    queries = hidden_states(table, 2)
    ids, scores = indexes[kind].search(queries, 5, exclude=[[8], []], allowed=allowed)
    assert sorted(ids[0, :2]) == [7, 9] and (ids[0, 2:] == 0).all()
    assert sorted(ids[1, :3]) == [7, 8, 9] and (ids[1, 3:] == 0).all()
    assert np.isneginf(scores[0, 2:]).all() and np.isfinite(scores[0, :2]).all()
    ids, scores = indexes[kind].search(queries, 5, [[7], []], np.zeros(len(table), dtype=bool))
    assert (ids == 0).all() and np.isneginf(scores).all()


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS[1:])
def test_approximate_recall_against_exact(kind):
    table = clustered(10_000, 32, seed=3, clusters=64)
    queries = hidden_states(table, 200, seed=4)
    exact, _ = idx.ExactIndex(table).search(queries, 10)
    approx, _ = idx.build_index(table, kind=kind).search(queries, 10)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact)])
    assert recall >= 0.95


@pytest.mark.slow
def test_ivf_scans_more_lists_when_a_history_pushes_the_answer_down():
    """With each query's own top 40 excluded, the top 10 left lie deep in its ranking, in lists
    a fixed nprobe scans too few of; the bound fails with IVF_MAX_PROBE_GROWTH = 1."""
    table = clustered(20_000, 16, seed=3)
    queries = hidden_states(table, 300)
    history = list(brute_force(table, queries, 40))
    truth = brute_force(table, queries, 10, history)
    found, _ = idx.build_index(table, kind="faiss-ivf").search(queries, 10, history)
    assert np.mean([len(set(a) & set(t)) / 10 for a, t in zip(found, truth)]) >= 0.88


@pytest.mark.parametrize("kind", KINDS[1:])
def test_faiss_candidates_come_in_blocks_within_the_budget(table, indexes, kind, monkeypatch):
    """Rows go to faiss sorted by fetch depth, a block at a time, each block's candidates
    (rows x depth x 12 bytes) within the budget. A row fetched at the same depth gets the same
    answer as in one pass over all rows; a shallow row, no longer fetched at the deepest row's
    depth, still finds its true top 10."""
    rng = np.random.default_rng(5)
    queries = hidden_states(table, 40)
    # Short and long histories interleaved, so that sorting by depth matters.
    long = np.arange(40) % 2 == 0
    exclude = [rng.choice(len(table) - 1, 300 if b else 5, replace=False) + 1 for b in long]
    index = indexes[kind]
    whole = index.search(queries, 10, exclude=exclude)
    asked = []
    candidates = type(index)._candidates

    def spy(self, block_queries, n, k):
        asked.append((len(block_queries), n))
        return candidates(self, block_queries, n, k)

    monkeypatch.setattr(type(index), "_candidates", spy)
    monkeypatch.setattr(idx, "SCORE_BUDGET", 12 * 326 * 6)  # six rows at the longest depth
    blocked, _ = index.search(queries, 10, exclude=exclude)
    assert len(asked) >= 4 and sum(rows for rows, _ in asked) >= 40
    assert all(rows * n * 12 <= idx.SCORE_BUDGET for rows, n in asked)
    np.testing.assert_array_equal(blocked[long], whole[0][long])
    truth = brute_force(table, queries, 10, exclude)
    for b in range(40):
        assert not np.isin(blocked[b], exclude[b]).any()
    recall = np.mean([len(set(a) & set(t)) / 10 for a, t in zip(blocked[~long], truth[~long])])
    assert recall >= 0.9


@pytest.mark.parametrize("kind", KINDS)
def test_added_items_are_searchable(table, kind):
    index = idx.build_index(table, kind=kind)
    query = hidden_states(table, 1)
    index.add(np.stack([10 * query[0], -query[0]]))
    assert index.n_items == len(table) + 1
    ids, _ = index.search(query, 3)
    assert ids[0, 0] == len(table)
    ids, _ = index.search(query, 3, exclude=[[len(table)]])
    assert len(table) not in ids[0]


def test_cosine_metric_finds_the_item_itself_first(table):
    index = idx.build_index(table * np.arange(len(table))[:, None], kind="exact", metric="cosine")
    ids, scores = index.search(table[[42]], 3)
    assert ids[0, 0] == 42 and scores[0, 0] == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(np.linalg.norm(idx.normalized(table[1:]), axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_round_trip(table, indexes, kind, tmp_path):
    folder = idx.save_index(indexes[kind], tmp_path / "index", {"sha256": "abc", "size": 1})
    loaded = idx.load_index(folder)
    manifest = json.loads((folder / idx.MANIFEST).read_text())
    assert manifest["kind"] == kind and manifest["fingerprint"] == {"sha256": "abc", "size": 1}
    assert (manifest["n_items"], manifest["dim"]) == (len(table) - 1, 16)
    assert manifest["memory_bytes"] >= table.nbytes
    queries = hidden_states(table, 8)
    for got, want in zip(loaded.search(queries, 10), indexes[kind].search(queries, 10)):
        np.testing.assert_array_equal(got, want)


def _count_builds(monkeypatch) -> list:
    builds = []
    real = idx.build_index

    def counting(*args, **kwargs):
        builds.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(idx, "build_index", counting)
    return builds


@pytest.mark.slow
def test_open_run_index_caches_by_fingerprint(table, tmp_path, monkeypatch):
    builds = _count_builds(monkeypatch)
    first = idx.open_run_index(tmp_path, table, {"sha256": "a"}, kind="faiss-ivf")
    again = idx.open_run_index(tmp_path, table, {"sha256": "a"}, kind="faiss-ivf")
    assert len(builds) == 1 and again.kind == "faiss-ivf"
    queries = hidden_states(table, 4)
    np.testing.assert_array_equal(first.search(queries, 10)[0], again.search(queries, 10)[0])
    idx.open_run_index(tmp_path, table, {"sha256": "b"}, kind="faiss-ivf")
    idx.open_run_index(tmp_path, table[:-1], {"sha256": "b"}, kind="faiss-ivf")
    assert len(builds) == 3
    assert json.loads((tmp_path / "index" / idx.MANIFEST).read_text())["n_items"] == len(table) - 2


@pytest.fixture
def warnings():
    seen: list[str] = []
    handler = logger.add(lambda message: seen.append(str(message)), level="WARNING")
    yield seen
    logger.remove(handler)


@pytest.mark.slow
@pytest.mark.parametrize(
    "kind, damage",
    [("exact", "manifest.json"), ("exact", "vectors.npy")]
    + [(kind, name) for kind in KINDS[1:] for name in ("manifest.json", "index.faiss")],
)
def test_corrupt_index_is_rebuilt_with_a_warning(table, tmp_path, warnings, kind, damage):
    idx.open_run_index(tmp_path, table, {"sha256": "a"}, kind=kind)
    target = tmp_path / "index" / damage
    target.write_bytes(target.read_bytes()[: len(target.read_bytes()) // 2])
    with pytest.raises(RecsysError, match="unreadable|not valid JSON"):
        idx.load_index(tmp_path / "index")
    index = idx.open_run_index(tmp_path, table, {"sha256": "a"}, kind=kind)
    assert index.n_items == len(table) - 1 and any("rebuilding" in w for w in warnings)
    idx.load_index(tmp_path / "index")  # whole again


def test_index_lost_between_the_swap_renames_is_restored(table, tmp_path, monkeypatch):
    idx.open_run_index(tmp_path, table, {"sha256": "a"})
    os.replace(tmp_path / "index", tmp_path / ".index.old")
    builds = _count_builds(monkeypatch)
    idx.open_run_index(tmp_path, table, {"sha256": "a"})
    assert builds == [] and (tmp_path / "index" / idx.MANIFEST).exists()


# The child builds a new index over the run's old one and hangs halfway through writing the
# faiss file (faiss.write_index patched), so the SIGKILL lands mid-build every time.
KILLED_BUILD = """
import sys, time
from pathlib import Path
import faiss
import numpy as np
from recsys.api import index as idx

run_dir, vectors, marker = Path(sys.argv[1]), np.load(sys.argv[2]), Path(sys.argv[3])

real_write = faiss.write_index

def stalled_write(graph, path):
    real_write(graph, path)
    Path(path).write_bytes(Path(path).read_bytes()[:4096])
    marker.write_text("half written")
    time.sleep(120)

faiss.write_index = stalled_write
idx.build_run_index(run_dir, vectors, {"sha256": "new"}, kind="faiss-ivf")
"""


@pytest.mark.slow
def test_killed_build_leaves_the_previous_index_intact(table, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    idx.build_run_index(run_dir, table, {"sha256": "old"}, kind="faiss-ivf")
    queries = hidden_states(table, 8)
    before = idx.load_index(run_dir / "index").search(queries, 10)
    np.save(tmp_path / "new.npy", clustered(5000, 16, seed=9))
    marker = tmp_path / "marker"
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_BUILD, str(run_dir), str(tmp_path / "new.npy"), str(marker)]
    )
    try:  # however busy the machine, the child gets there or dies (the test timeout: a hang)
        while not marker.exists() and child.poll() is None:
            time.sleep(0.05)
        assert marker.exists(), "the child build died before its faiss write"
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    assert list(run_dir.glob(".index.*.tmp")), "the kill should have left a half-built folder"
    after = idx.load_index(run_dir / "index")
    for got, want in zip(after.search(queries, 10), before):
        np.testing.assert_array_equal(got, want)
    builds = _count_builds(monkeypatch)
    idx.open_run_index(run_dir, table, {"sha256": "old"}, kind="faiss-ivf")
    assert builds == [] and not list(run_dir.glob(".index.*.tmp"))

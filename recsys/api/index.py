"""The item index: each query's top-k items by inner product, exact or approximate (faiss).

A model's next-item scores are ``hidden @ table.T`` over its item table ``[n_catalogue + 1, d]``
(row 0 is padding, never returned), so the index serves maximum inner product over that table
and item ids are table rows. Catalogues below ``ANN_THRESHOLD`` rows are scored exactly (one
matmul and a masked top-k); larger ones through faiss IVF lists (an HNSW graph on request).
``benchmarks/bench_ann.py`` measured those choices and their parameters. Whichever kind, history
exclusion and ``allowed`` filters are exact: an excluded or filtered item is never returned.

A saved index is a folder: ``manifest.json`` (kind, metric, n_items, dim, build parameters,
fingerprint, build seconds, memory) and the vectors (``vectors.npy`` for exact, ``index.faiss``
for the faiss kinds). Exact folders keep their vectors too, so that ``load_index`` needs nothing
else and a folder can never be paired with the wrong table; below the threshold that is at most
a few MB. ``open_run_index`` keeps ``run_dir/index/`` in step with a checkpoint: the saved index
while its fingerprint matches, otherwise a rebuild swapped in atomically.
"""

from __future__ import annotations

import abc
import contextlib
import fcntl
import json
import math
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch
from loguru import logger

from recsys.arrays import sorted_member
from recsys.cli import RecsysError, fail
from recsys.config import SCORE_BUDGET
from recsys.io import atomic_dir, ensure_dir, read_json, write_json

#: Rows from which ``kind="auto"`` builds the approximate (IVF) index. Exact single-query time
#: grows with rows x dim (``exact_single_query_by_rows`` in reports/bench/ann.json); below this
#: it stays under about a millisecond, exact and free to build, so an approximation buys nothing.
ANN_THRESHOLD = 50_000
#: IVF inverted lists per sqrt(rows) (4,000 at 1M), the share of them a query scans and the
#: k-means training rows per list: bench_ann's pick on 1M x 64 for recall@10 >= 0.95 at a
#: single-query p50 <= 2 ms on 2 cores; reports/bench/ann.json has every setting tried.
IVF_LISTS_PER_SQRT = 4
IVF_PROBE_SHARE = 0.04
IVF_TRAIN_PER_LIST = 64
#: The most a deep fetch multiplies ``nprobe`` by (see ``IvfIndex._candidates``).
IVF_MAX_PROBE_GROWTH = 4.0
#: HNSW links per node, build beam and search beam (the ``faiss-hnsw`` kind), from the same grid.
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 256
#: Candidates fetched beyond ``k + len(exclude)``, so that a few filtered hits rarely force a
#: second search.
FETCH_MARGIN = 16
#: The most candidates a row asks faiss for; a row still short of k after filtering is scored
#: exactly instead.
MAX_FETCH = 2048
#: An ``allowed`` mask that keeps less than this share of the rows is scored on those rows only.
SPARSE_SHARE = 0.25
#: faiss's OpenMP threads: the serving machine's two cores. One query runs on one thread anyway;
#: builds and batches use both, and more would fight torch's threads for the same cores.
FAISS_THREADS = min(2, os.cpu_count() or 1)
METRICS = ("ip", "cosine")
MANIFEST = "manifest.json"


def normalized(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero): inner product becomes cosine."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.ascontiguousarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32)


def _as_rows(x: np.ndarray, metric: str, dim: int | None = None) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or (dim is not None and x.shape[1] != dim):
        raise ValueError(f"expected a float array [n, {dim or 'd'}], got shape {x.shape}")
    return normalized(x) if metric == "cosine" else x


def _clean_exclude(exclude: Sequence[np.ndarray] | None, n_queries: int, n_rows: int) -> list:
    """One sorted int64 array of in-range item ids per query (ids the index lacks cannot show)."""
    if exclude is None:
        return [np.empty(0, dtype=np.int64)] * n_queries
    if len(exclude) != n_queries:
        raise ValueError(f"exclude has {len(exclude)} rows for {n_queries} queries")
    out = []
    for ids in exclude:
        ids = np.asarray(ids, dtype=np.int64).ravel()
        out.append(np.unique(ids[(ids > 0) & (ids < n_rows)]))
    return out


def _pad(ids: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``k`` columns; where no item is left: id 0 and score -inf."""
    empty = ~np.isfinite(scores) & (scores < 0)
    ids, scores = np.where(empty, 0, ids), scores.astype(np.float32)
    missing = k - ids.shape[1]
    if missing > 0:
        ids = np.pad(ids, ((0, 0), (0, missing)))
        scores = np.pad(scores, ((0, 0), (0, missing)), constant_values=-np.inf)
    return ids.astype(np.int64), scores


@torch.inference_mode()
def _exact_top_k(
    table: np.ndarray,
    queries: np.ndarray,
    k: int,
    exclude: list[np.ndarray],
    allowed: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` of ``queries @ table.T``, never row 0, ``exclude[b]`` or a disallowed row.

    A sparse ``allowed`` mask scores only its rows, so the cost follows them, not the table.
    Queries go a chunk at a time, so their scores stay within :data:`SCORE_BUDGET` (every H&M
    customer at once would be 1.36M x 105k scores).
    """
    chunk = max(1, SCORE_BUDGET // (4 * len(table)))
    if len(queries) > chunk:
        parts = [
            _exact_top_k(table, queries[at : at + chunk], k, exclude[at : at + chunk], allowed)
            for at in range(0, len(queries), chunk)
        ]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    rows = None
    if allowed is not None and np.count_nonzero(allowed) < SPARSE_SHARE * len(allowed):
        rows = np.flatnonzero(allowed[1:]) + 1
    candidates = torch.from_numpy(table if rows is None else table[rows])
    scores = (torch.from_numpy(queries) @ candidates.T).nan_to_num_(nan=float("-inf"))
    if rows is None:
        scores[:, 0] = float("-inf")
        if allowed is not None:
            scores.masked_fill_(~torch.from_numpy(allowed), float("-inf"))
        positions = exclude
    else:
        positions = [np.searchsorted(rows, ids[sorted_member(ids, rows)]) for ids in exclude]
    counts = [len(p) for p in positions]
    if sum(counts):
        batch_rows = np.repeat(np.arange(len(queries)), counts)
        scores[torch.from_numpy(batch_rows), torch.from_numpy(np.concatenate(positions))] = float(
            "-inf"
        )
    top = scores.topk(min(k, scores.shape[1]), dim=1)
    ids = top.indices.numpy()
    return _pad(ids if rows is None else rows[ids], top.values.numpy(), k)


def _fetch_blocks(rows: np.ndarray, depths: np.ndarray) -> Iterator[np.ndarray]:
    """``rows`` (sorted by their non-decreasing ``depths``) in blocks whose candidate arrays,
    rows x deepest fetch x (id + score), stay within :data:`SCORE_BUDGET`: fetching every H&M
    customer's candidates at the longest history's depth at once ran out of memory."""
    at = 0
    while at < len(rows):
        window = depths[at : at + max(1, SCORE_BUDGET // (12 * int(depths[at])))]
        cost = np.arange(1, len(window) + 1) * window * 12
        size = max(1, int(np.searchsorted(cost, SCORE_BUDGET, side="right")))
        yield rows[at : at + size]
        at += size


def _survivors(
    found: np.ndarray, exclude: list[np.ndarray], allowed: np.ndarray | None, n_rows: int
) -> np.ndarray:
    """Which of each row's faiss candidates ``found [B, n]`` may be returned: real items (faiss
    pads with -1), allowed, and not in that row's sorted ``exclude``; one membership test for
    the whole block, on (row, item) keys."""
    keep = found > 0
    if allowed is not None:
        keep &= allowed[np.maximum(found, 0)]
    lengths = [len(ex) for ex in exclude]
    if sum(lengths):
        owner = np.repeat(np.arange(len(found), dtype=np.int64), lengths)
        excluded = owner * n_rows + np.concatenate(exclude)
        keys = np.arange(len(found), dtype=np.int64)[:, None] * n_rows + found
        keep &= ~sorted_member(np.where(keep, keys, -1), excluded)
    return keep


class ItemIndex(abc.ABC):
    """Top-k item ids by score for a batch of query vectors; ids are item table rows (0 = pad).

    An index may keep the float32 array it was given rather than a copy: do not modify it.
    """

    kind: str
    #: Seconds the build took (read back from the manifest when loaded).
    build_seconds: float = 0.0

    def __init__(self, metric: str) -> None:
        if metric not in METRICS:
            raise fail(f"index metric must be one of {', '.join(METRICS)}, got {metric!r}")
        self.metric = metric

    @property
    @abc.abstractmethod
    def table(self) -> np.ndarray:
        """The stored vectors ``[n_rows, d]`` (unit rows for cosine); valid until ``add``."""

    @property
    @abc.abstractmethod
    def memory_bytes(self) -> int:
        """Bytes the index holds in memory (vectors and, for a graph, its links)."""

    @property
    @abc.abstractmethod
    def params(self) -> dict[str, Any]:
        """The build parameters, recorded in the manifest; a change means a rebuild."""

    @staticmethod
    @abc.abstractmethod
    def build_params(n_rows: int) -> dict[str, Any]:
        """The parameters a build of ``n_rows`` would use now (a cache with others is rebuilt)."""

    @abc.abstractmethod
    def _search(
        self, queries: np.ndarray, k: int, exclude: list[np.ndarray], allowed: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]: ...

    @abc.abstractmethod
    def _add(self, rows: np.ndarray) -> None: ...

    @abc.abstractmethod
    def _save(self, folder: Path) -> None: ...

    @classmethod
    @abc.abstractmethod
    def _load(cls, folder: Path, metric: str) -> ItemIndex: ...

    @property
    def n_rows(self) -> int:
        return int(self.table.shape[0])

    @property
    def n_items(self) -> int:
        """Item ids run 1..n_items (row 0 is padding)."""
        return self.n_rows - 1

    @property
    def dim(self) -> int:
        return int(self.table.shape[1])

    def search(
        self,
        queries: np.ndarray,
        k: int,
        exclude: Sequence[np.ndarray] | None = None,
        allowed: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Each query's ``k`` best items: ids ``int64 [B, k]``, scores ``float32 [B, k]``.

        Sorted by score, best first; where fewer than ``k`` items are left, id 0 and score -inf.
        ``exclude[b]`` (item ids) are never returned for row ``b``; ``allowed`` (bool
        ``[n_rows]``) limits every row to its True items. Row 0 is never returned.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        queries = _as_rows(queries, self.metric, self.dim)
        if allowed is not None:
            allowed = np.asarray(allowed, dtype=bool)
            if allowed.shape != (self.n_rows,):
                raise ValueError(f"allowed must be a bool mask [{self.n_rows}]")
        return self._search(
            queries, k, _clean_exclude(exclude, len(queries), self.n_rows), allowed
        )

    def add(self, vectors: np.ndarray) -> None:
        """Append items: ``vectors[i]`` becomes item id ``n_rows + i``."""
        self._add(_as_rows(vectors, self.metric, self.dim))


class ExactIndex(ItemIndex):
    """Brute force: one matmul and a masked top-k. Exact, no build, for small catalogues."""

    kind = "exact"

    def __init__(self, vectors: np.ndarray, metric: str = "ip") -> None:
        super().__init__(metric)
        self._table = _as_rows(vectors, metric)

    @property
    def table(self) -> np.ndarray:
        return self._table

    @property
    def memory_bytes(self) -> int:
        return int(self._table.nbytes)

    @property
    def params(self) -> dict[str, Any]:
        return {}

    @staticmethod
    def build_params(n_rows: int) -> dict[str, Any]:
        return {}

    def _search(self, queries, k, exclude, allowed):
        return _exact_top_k(self._table, queries, k, exclude, allowed)

    def _add(self, rows: np.ndarray) -> None:
        self._table = np.concatenate([self._table, rows])

    def _save(self, folder: Path) -> None:
        np.save(folder / "vectors.npy", self._table, allow_pickle=False)

    @classmethod
    def _load(cls, folder: Path, metric: str) -> ExactIndex:
        table = np.load(folder / "vectors.npy", allow_pickle=False)
        if table.dtype != np.float32 or table.ndim != 2:
            raise ValueError(f"vectors.npy holds {table.dtype} {table.shape}, not float32 [n, d]")
        index = cls.__new__(cls)
        ItemIndex.__init__(index, metric)
        index._table = table
        return index


class _FaissIndex(ItemIndex):
    """What the faiss kinds share: exact exclusion and filters over approximate candidates.

    A row asks faiss for ``(k + FETCH_MARGIN) / share allowed + len(exclude)`` candidates, drops
    the excluded and disallowed ones, asks again for four times as many while fewer than ``k``
    survive, and past ``MAX_FETCH`` candidates is scored exactly instead (on the allowed rows
    only, when they are few). On IVF this measured a little faster than faiss's own
    ``IDSelector`` filtering at the same recall, and under a narrow filter (1 % allowed) it
    stays exact where the selector, ranking only the probed lists' allowed items, loses recall
    (bench_ann's ``filters``).
    """

    faiss: Any
    faiss_type: type

    def __init__(self, graph: Any, metric: str) -> None:
        super().__init__(metric)
        faiss.omp_set_num_threads(FAISS_THREADS)
        self.faiss = graph

    @abc.abstractmethod
    def _candidates(self, queries: np.ndarray, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """faiss's top ``n`` (scores, ids) per query, for a final top ``k``."""

    @property
    def n_rows(self) -> int:
        return int(self.faiss.ntotal)

    @property
    def dim(self) -> int:
        return int(self.faiss.d)

    def _search(self, queries, k, exclude, allowed):
        ids = np.zeros((len(queries), k), dtype=np.int64)
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        n_allowed = self.n_items if allowed is None else np.count_nonzero(allowed[1:])
        share = max(n_allowed, 1) / self.n_items
        fetch = math.ceil((k + FETCH_MARGIN) / share) + np.array([len(ex) for ex in exclude])
        pending = np.arange(len(queries))
        while pending.size:
            exact = pending[fetch[pending] > MAX_FETCH]
            if exact.size:
                ex = [exclude[b] for b in exact]
                ids[exact], scores[exact] = _exact_top_k(
                    self.table, queries[exact], k, ex, allowed
                )
            pending = pending[fetch[pending] <= MAX_FETCH]
            pending = pending[np.argsort(fetch[pending], kind="stable")]
            short = [np.empty(0, dtype=np.int64)]
            for block in _fetch_blocks(pending, fetch[pending]):
                found_scores, found = self._candidates(queries[block], int(fetch[block[-1]]), k)
                keep = _survivors(found, [exclude[b] for b in block], allowed, self.n_rows)
                enough = keep.sum(axis=1) >= k
                first_k = keep & (np.cumsum(keep, axis=1) <= k) & enough[:, None]
                ids[block[enough]] = found[first_k].reshape(-1, k)
                scores[block[enough]] = found_scores[first_k].reshape(-1, k)
                short.append(block[~enough])
            pending = np.concatenate(short)
            fetch[pending] *= 4
        return ids, scores

    def _save(self, folder: Path) -> None:
        faiss.write_index(self.faiss, str(folder / "index.faiss"))

    @classmethod
    def _load(cls, folder: Path, metric: str) -> _FaissIndex:
        graph = faiss.read_index(str(folder / "index.faiss"))
        if not isinstance(graph, cls.faiss_type):
            raise ValueError(f"index.faiss holds a {type(graph).__name__}, not a {cls.kind}")
        index = cls.__new__(cls)
        _FaissIndex.__init__(index, graph, metric)
        index._loaded()
        return index

    def _loaded(self) -> None:
        """Restore what the faiss file does not keep (search settings, a table)."""


def ivf_lists(n_rows: int) -> int:
    """Inverted lists for ``n_rows`` items: ``IVF_LISTS_PER_SQRT`` x sqrt(rows), each list of
    at least 39 items (faiss's k-means minimum)."""
    return max(1, min(round(IVF_LISTS_PER_SQRT * math.sqrt(n_rows)), n_rows // 39))


class IvfIndex(_FaissIndex):
    """faiss IVF-Flat (inner product): the chosen approximate kind for large catalogues.

    A query scores every item in the ``nprobe`` lists nearest to it exactly, so items deep in
    its ranking are found as reliably as its top ones: with a long history excluded the true
    top-k left are such items, and an inner-product HNSW graph reaches them far less often
    (bench_ann's ``filters``). The exact table is kept beside the lists for the fallback.
    """

    kind = "faiss-ivf"
    faiss_type = faiss.IndexIVFFlat

    def __init__(self, vectors: np.ndarray, metric: str = "ip", nlist: int | None = None) -> None:
        rows = _as_rows(vectors, metric)
        nlist = nlist or ivf_lists(len(rows))
        faiss.omp_set_num_threads(FAISS_THREADS)
        graph = faiss.IndexIVFFlat(
            faiss.IndexFlatIP(rows.shape[1]), rows.shape[1], nlist, faiss.METRIC_INNER_PRODUCT
        )
        sample = np.random.default_rng(0).permutation(len(rows))[: IVF_TRAIN_PER_LIST * nlist]
        graph.train(rows[np.sort(sample)])
        graph.add(rows)
        super().__init__(graph, metric)
        self._table = rows
        self.nprobe = math.ceil(IVF_PROBE_SHARE * nlist)

    @property
    def nprobe(self) -> int:
        """Lists scanned per query; more find more of the true top-k, slower."""
        return int(self.faiss.nprobe)

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        self.faiss.nprobe = int(value)

    @property
    def table(self) -> np.ndarray:
        return self._table

    @property
    def memory_bytes(self) -> int:
        lists = self.faiss.ntotal * (4 * self.faiss.d + 8) + 4 * self.faiss.nlist * self.faiss.d
        return int(self._table.nbytes + lists)

    @property
    def params(self) -> dict[str, Any]:
        return {"nlist": int(self.faiss.nlist)}

    @staticmethod
    def build_params(n_rows: int) -> dict[str, Any]:
        return {"nlist": ivf_lists(n_rows)}

    def _candidates(self, queries, n, k):
        """A deeper fetch (a history to skip, a filter) scans more lists: the items it must find
        lie further down the ranking, in lists further away. ``nprobe`` grows with the square
        root of the depth, up to ``IVF_MAX_PROBE_GROWTH`` times."""
        depth = max(1.0, n / (k + FETCH_MARGIN))
        growth = min(IVF_MAX_PROBE_GROWTH, math.sqrt(depth))
        nprobe = min(int(self.faiss.nlist), math.ceil(self.nprobe * growth))
        if nprobe == self.nprobe:
            return self.faiss.search(queries, n)
        return self.faiss.search(queries, n, params=faiss.SearchParametersIVF(nprobe=nprobe))

    def _add(self, rows: np.ndarray) -> None:
        self.faiss.add(rows)
        self._table = np.concatenate([self._table, rows])

    def _loaded(self) -> None:
        self.faiss.make_direct_map()
        self._table = self.faiss.reconstruct_n(0, self.faiss.ntotal)
        self.faiss.set_direct_map_type(faiss.DirectMap.NoMap)
        self.nprobe = math.ceil(IVF_PROBE_SHARE * self.faiss.nlist)


class HnswIndex(_FaissIndex):
    """faiss HNSW graph (inner product): the fastest unfiltered top-k, weaker deep down.

    Kept as an explicit kind: it beats IVF on plain queries (cosine "similar items", no
    history) but reaches items deep in a query's ranking less often, which is what a long
    excluded history asks for. Its storage doubles as the exact table (vectors held once).
    """

    kind = "faiss-hnsw"
    faiss_type = faiss.IndexHNSWFlat

    def __init__(
        self,
        vectors: np.ndarray,
        metric: str = "ip",
        m: int = HNSW_M,
        ef_construction: int = HNSW_EF_CONSTRUCTION,
    ) -> None:
        rows = _as_rows(vectors, metric)
        faiss.omp_set_num_threads(FAISS_THREADS)
        graph = faiss.IndexHNSWFlat(rows.shape[1], m, faiss.METRIC_INNER_PRODUCT)
        graph.hnsw.efConstruction = ef_construction
        graph.add(rows)
        super().__init__(graph, metric)
        self._loaded()

    @property
    def ef_search(self) -> int:
        """The search beam; a larger one finds more of the true top-k, slower."""
        return int(self.faiss.hnsw.efSearch)

    @ef_search.setter
    def ef_search(self, value: int) -> None:
        self.faiss.hnsw.efSearch = int(value)

    @property
    def table(self) -> np.ndarray:
        n, d = self.faiss.ntotal, self.faiss.d
        storage = faiss.downcast_index(self.faiss.storage)
        return faiss.rev_swig_ptr(storage.get_xb(), n * d).reshape(n, d)

    @property
    def memory_bytes(self) -> int:
        hnsw = self.faiss.hnsw
        links = 4 * hnsw.neighbors.size() + 8 * hnsw.offsets.size() + 4 * hnsw.levels.size()
        return int(4 * self.faiss.ntotal * self.faiss.d + links)

    @property
    def params(self) -> dict[str, Any]:
        hnsw = self.faiss.hnsw
        return {"M": int(hnsw.nb_neighbors(1)), "ef_construction": int(hnsw.efConstruction)}

    @staticmethod
    def build_params(n_rows: int) -> dict[str, Any]:
        return {"M": HNSW_M, "ef_construction": HNSW_EF_CONSTRUCTION}

    def _candidates(self, queries, n, k):
        # Widen the beam by the candidates that filtering will drop, so that the items kept
        # are searched for as deep as an unfiltered top-k (and n of them come back at all).
        params = faiss.SearchParametersHNSW(efSearch=self.ef_search + n - k)
        return self.faiss.search(queries, n, params=params)

    def _add(self, rows: np.ndarray) -> None:
        self.faiss.add(rows)

    def _loaded(self) -> None:
        self.ef_search = HNSW_EF_SEARCH


KINDS: dict[str, type[ItemIndex]] = {cls.kind: cls for cls in (ExactIndex, IvfIndex, HnswIndex)}


def resolve_kind(kind: str, n_rows: int) -> str:
    """``auto``: exact below ``ANN_THRESHOLD`` rows, IVF from there; else ``kind`` itself."""
    if kind == "auto":
        return IvfIndex.kind if n_rows >= ANN_THRESHOLD else ExactIndex.kind
    if kind not in KINDS:
        raise fail(f"index kind must be auto or one of {', '.join(KINDS)}, got {kind!r}")
    return kind


def build_index(vectors: np.ndarray, kind: str = "auto", metric: str = "ip") -> ItemIndex:
    """An index over the item table ``vectors [n_items + 1, d]`` (row 0 = padding)."""
    vectors = np.asarray(vectors)
    if vectors.ndim != 2 or len(vectors) < 2:
        raise ValueError(f"vectors must be an item table [n_items + 1, d], got {vectors.shape}")
    cls = KINDS[resolve_kind(kind, len(vectors))]
    start = time.perf_counter()
    index = cls(vectors, metric)
    index.build_seconds = time.perf_counter() - start
    return index


def _jsonable(fingerprint: dict) -> Any:
    """The fingerprint as the manifest will read back (tuples become lists, and so on)."""
    return json.loads(json.dumps(fingerprint, default=str))


def save_index(index: ItemIndex, folder: Path, fingerprint: dict) -> Path:
    """Write ``index`` and its manifest to ``folder``, atomically (whole, or the old one kept)."""
    manifest = {
        "kind": index.kind,
        "metric": index.metric,
        "n_items": index.n_items,
        "dim": index.dim,
        "params": index.params,
        "fingerprint": _jsonable(fingerprint),
        "build_seconds": index.build_seconds,
        "memory_bytes": index.memory_bytes,
    }
    with atomic_dir(Path(folder)) as tmp:
        index._save(tmp)
        write_json(manifest, tmp / MANIFEST)
    return Path(folder)


def load_index(folder: Path) -> ItemIndex:
    """The index saved in ``folder``; a missing or unreadable one is a one-line user error."""
    folder = Path(folder)
    manifest = read_json(folder / MANIFEST)
    try:
        index = KINDS[manifest["kind"]]._load(folder, manifest["metric"])
        if (index.n_items, index.dim) != (manifest["n_items"], manifest["dim"]):
            raise ValueError(
                f"it holds {index.n_items} x {index.dim}, the manifest says "
                f"{manifest['n_items']} x {manifest['dim']}"
            )
        index.build_seconds = float(manifest["build_seconds"])
    except (KeyError, TypeError, ValueError, RuntimeError, OSError) as err:
        raise fail(f"item index {folder} is unreadable ({err}); delete it to rebuild")
    return index


def run_index_folder(run_dir: Path, metric: str = "ip") -> Path:
    """Where a run keeps its index: ``index/`` (inner product) or ``index-cosine/``."""
    if metric not in METRICS:
        raise fail(f"index metric must be one of {', '.join(METRICS)}, got {metric!r}")
    return Path(run_dir) / ("index" if metric == "ip" else f"index-{metric}")


@contextlib.contextmanager
def _building(folder: Path) -> Iterator[None]:
    """Hold the run folder's lock (one builder at a time) and clear what killed builds left.

    ``atomic_dir`` leaves its temporary folder behind when killed, and a kill between its two
    renames leaves the previous index only under ``.NAME.old``: that one is put back. The lock
    (flock, released when its holder dies) makes both safe, and lets serving workers that start
    together build once: the others wait, then find the cache filled.
    """
    fd = os.open(ensure_dir(folder.parent), os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        old = folder.with_name(f".{folder.name}.old")
        if not folder.exists() and old.is_dir():
            os.replace(old, folder)
        for leftover in folder.parent.glob(f".{folder.name}.*.tmp"):
            shutil.rmtree(leftover, ignore_errors=True)
        yield
    finally:
        os.close(fd)


def _cached(
    folder: Path, vectors: np.ndarray, fingerprint: dict, kind: str, metric: str
) -> ItemIndex | None:
    """The saved index if it is the one a build would make now, else None (logged)."""
    if not folder.exists():
        return None
    kind = resolve_kind(kind, len(vectors))
    try:
        manifest = read_json(folder / MANIFEST)
        wanted = {
            "kind": kind,
            "metric": metric,
            "n_items": len(vectors) - 1,
            "dim": vectors.shape[1],
            "params": KINDS[kind].build_params(len(vectors)),
            "fingerprint": _jsonable(fingerprint),
        }
        stale = [key for key, value in wanted.items() if manifest.get(key) != value]
        if stale:
            logger.info(f"item index {folder} is stale ({', '.join(stale)} changed); rebuilding")
            return None
        return load_index(folder)
    except (RecsysError, AttributeError) as err:
        logger.warning(f"{err}; rebuilding it")
        return None


def _build_and_save(
    folder: Path, vectors: np.ndarray, fingerprint: dict, kind: str, metric: str
) -> ItemIndex:
    index = build_index(vectors, kind, metric)
    save_index(index, folder, fingerprint)
    logger.info(
        f"item index {folder}: {index.kind}, {index.n_items} items x {index.dim}, built in "
        f"{index.build_seconds:.1f} s, {index.memory_bytes / 2**20:.0f} MB"
    )
    return index


def build_run_index(
    run_dir: Path, vectors: np.ndarray, fingerprint: dict, kind: str = "auto", metric: str = "ip"
) -> Path:
    """Build the run's index from its item table and swap it in atomically; its folder."""
    folder = run_index_folder(run_dir, metric)
    with _building(folder):
        _build_and_save(folder, np.asarray(vectors), fingerprint, kind, metric)
    return folder


def open_run_index(
    run_dir: Path, vectors: np.ndarray, fingerprint: dict, kind: str = "auto", metric: str = "ip"
) -> ItemIndex:
    """The run's saved index when it matches ``fingerprint`` (the checkpoint's), else a rebuild.

    A corrupt index folder is rebuilt with a logged warning.
    """
    folder, vectors = run_index_folder(run_dir, metric), np.asarray(vectors)
    with _building(folder):
        cached = _cached(folder, vectors, fingerprint, kind, metric)
        if cached is not None:
            return cached
        return _build_and_save(folder, vectors, fingerprint, kind, metric)

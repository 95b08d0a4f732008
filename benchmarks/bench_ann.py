"""The item index at scale: ``make bench BENCH=ann``.

A synthetic catalogue of 1,000,000 items x 64 dims (a seeded gaussian mixture of 4,096 clusters
with Zipf-sized clusters and lognormal norms, as trained item tables have: popular items get
longer vectors) and 1,000 queries that stand in for model hidden states (item vectors plus
noise). The truth is the exact top-10 by inner product (brute force).

* Exact single-query latency by catalogue size (this sets ``ANN_THRESHOLD``) and at 1M.
* faiss IVF-Flat over nlist x nprobe and faiss HNSW over (M, efConstruction) x efSearch, both
  through ``recsys.api.index``: build seconds, index bytes, process RSS growth, Recall@10
  over the 1,000 queries, single-query latency p50/p95/p99 (1,000 calls, one query each), served
  (``search``) and faiss alone. The row marked ``default`` is what ``kind="auto"`` builds.
* Filters, on the default IVF index and the default HNSW graph: history exclusion (50 and 200
  items, half of them among the query's true top items, as a user's history is) and ``allowed``
  filters (30 % and 1 % of the items). Recall is against exact search with the same masks; the
  index's over-fetch is compared with faiss's own ``IDSelector`` filtering.
* LanceDB (IVF_PQ), when the package is installed (it is not a dependency): the same figures.

Targets: Recall@10 >= 0.95 and one query <= 2 ms p50 on 2 cores.
"""

from __future__ import annotations

import gc
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from recsys.api import index as idx
from recsys.config import REPORTS_DIR
from recsys.io import write_json

N_ITEMS = 1_000_000
DIM = 64
CLUSTERS = 4096
N_QUERIES = 1000
K = 10
TARGET_RECALL = 0.95
TARGET_P50_MS = 2.0
EXACT_ROWS = (10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000)
#: (M, efConstruction) x efSearch for HNSW; nlist (None: the module's default) x nprobe for IVF.
HNSW_GRID = ((16, 80), (32, 40), (32, 80))
EF_SEARCH = (64, 128, 256, 512)
IVF_GRID = ((None, (64, 128, 160, 192, 256)), (8192, (192, 256, 384)))
HISTORY_LENGTHS = (50, 200)
ALLOWED_SHARES = (0.3, 0.01)
LANCE_PARTITIONS = 1024
LANCE_PROBES = ((20, 10), (50, 10))  # (nprobes, refine_factor)
TRUTH_CHUNK = 50
KNOBS = ("M", "ef_construction", "ef_search", "nlist", "nprobe")


def catalogue(seed: int = 0) -> np.ndarray:
    """The item table ``[N_ITEMS + 1, DIM]``; row 0 is padding (zeros)."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((CLUSTERS, DIM), dtype=np.float32)
    sizes = 1.0 / np.arange(1, CLUSTERS + 1) ** 0.7
    table = np.zeros((N_ITEMS + 1, DIM), dtype=np.float32)
    table[1:] = centers[rng.choice(CLUSTERS, N_ITEMS, p=sizes / sizes.sum())]
    table[1:] += 0.8 * rng.standard_normal((N_ITEMS, DIM), dtype=np.float32)
    table[1:] *= rng.lognormal(0.0, 0.25, (N_ITEMS, 1)).astype(np.float32)
    return table


def hidden_states(table: np.ndarray, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = table[rng.integers(1, len(table), N_QUERIES)]
    return rows + 0.7 * rng.standard_normal(rows.shape, dtype=np.float32)


def _rss_bytes() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/self/status has no VmRSS")


def latency_ms(one_query: Callable[[int], Any], calls: int = N_QUERIES) -> dict[str, float]:
    """p50/p95/p99/mean of ``one_query(i)`` over ``calls`` calls, after a short warm-up."""
    for i in range(20):
        one_query(i)
    times = []
    for i in range(calls):
        start = time.perf_counter()
        one_query(i % N_QUERIES)
        times.append((time.perf_counter() - start) * 1000.0)
    p50, p95, p99 = np.percentile(times, [50, 95, 99])
    return {"calls": calls, "p50": p50, "p95": p95, "p99": p99, "mean": float(np.mean(times))}


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Recall@k: the share of each row's true top-k that was found, averaged over rows."""
    return float(np.mean([len(set(f) & set(t) - {0}) / K for f, t in zip(found, truth)]))


def exact_top(exact: idx.ExactIndex, queries, exclude=None, allowed=None) -> np.ndarray:
    """Exact top-K ids, in chunks so the score matrix stays small."""
    parts = []
    for start in range(0, len(queries), TRUTH_CHUNK):
        rows = slice(start, start + TRUTH_CHUNK)
        part = None if exclude is None else exclude[rows]
        parts.append(exact.search(queries[rows], K, part, allowed)[0])
    return np.concatenate(parts)


def bench_exact(table: np.ndarray, queries: np.ndarray) -> dict[str, Any]:
    out = {}
    for rows in EXACT_ROWS:
        exact = idx.ExactIndex(table[: rows + 1])
        calls = N_QUERIES if rows == N_ITEMS else 200
        out[str(rows)] = latency_ms(lambda i: exact.search(queries[i : i + 1], K), calls)
        print(f"exact single query, {rows} x {DIM}: p50 {out[str(rows)]['p50']:.3f} ms")
    small = idx.ExactIndex(table[:1684, :])
    out["ml-100k size (1683 x 64), history 50"] = latency_ms(
        lambda i: small.search(queries[i : i + 1], K, exclude=[np.arange(1, 51)])
    )
    print(f"exact, ml-100k size: p50 {out['ml-100k size (1683 x 64), history 50']['p50']:.3f} ms")
    return out


def _setting_row(index: Any, queries, truth, setting: dict[str, Any]) -> dict[str, Any]:
    """Recall and single-query latency of ``index`` as set now, served and faiss alone."""
    row = {
        **setting,
        "memory_bytes": index.memory_bytes,
        "recall_at_10": recall(index.search(queries, K)[0], truth),
        "faiss_latency_ms": latency_ms(lambda i: index.faiss.search(queries[i : i + 1], K)),
        "served_latency_ms": latency_ms(lambda i: index.search(queries[i : i + 1], K)),
    }
    shown = ", ".join(f"{key}={setting[key]}" for key in setting if key in KNOBS)
    print(
        f"{index.kind} {shown}: build {row['build_s']:.0f} s, {row['memory_bytes'] / 2**20:.0f} "
        f"MB, recall@10 {row['recall_at_10']:.4f}, p50 {row['served_latency_ms']['p50']:.3f} ms "
        f"(faiss alone {row['faiss_latency_ms']['p50']:.3f})"
    )
    return row


def _built(make: Callable[[], Any]) -> tuple[Any, dict[str, float]]:
    gc.collect()
    rss, start = _rss_bytes(), time.perf_counter()
    index = make()
    return index, {"build_s": time.perf_counter() - start, "rss_growth_bytes": _rss_bytes() - rss}


def bench_hnsw(table, queries, truth) -> tuple[list[dict[str, Any]], idx.HnswIndex]:
    """The HNSW grid; its rows and the graph of the module's default settings."""
    rows, default = [], None
    for m, ef_construction in HNSW_GRID:
        index, built = _built(lambda: idx.HnswIndex(table, m=m, ef_construction=ef_construction))
        for ef in EF_SEARCH:
            index.ef_search = ef
            setting = {"M": m, "ef_construction": ef_construction, "ef_search": ef, **built}
            rows.append(_setting_row(index, queries, truth, setting))
        if (m, ef_construction) == (idx.HNSW_M, idx.HNSW_EF_CONSTRUCTION):
            default = index
        del index
    default.ef_search = idx.HNSW_EF_SEARCH
    return rows, default


def bench_ivf(table, queries, truth) -> tuple[list[dict[str, Any]], idx.IvfIndex]:
    """The IVF grid; its rows and the index the module builds by default (row ``default``)."""
    rows, default = [], None
    for nlist, probes in IVF_GRID:
        index, built = _built(lambda: idx.IvfIndex(table, nlist=nlist))
        chosen = index.nprobe if nlist is None else None
        for probe in sorted({*probes, chosen} - {None}):
            index.nprobe = probe
            setting = {"nlist": index.faiss.nlist, "nprobe": probe, **built}
            rows.append(
                {**_setting_row(index, queries, truth, setting), "default": probe == chosen}
            )
        if chosen is not None:
            default, default.nprobe = index, chosen
        del index
    return rows, default


def histories(exact: idx.ExactIndex, queries: np.ndarray, length: int) -> list[np.ndarray]:
    """Per query: half its true top items (users have seen what they like), half random."""
    rng = np.random.default_rng(length)
    top = np.concatenate(
        [
            exact.search(queries[i : i + TRUTH_CHUNK], length)[0]
            for i in range(0, N_QUERIES, TRUTH_CHUNK)
        ]
    )
    random = rng.integers(1, exact.n_rows, (N_QUERIES, length - length // 2))
    return [np.concatenate([top[b, : length // 2], random[b]]) for b in range(N_QUERIES)]


def selector_search(index: Any, query, exclude, bits) -> np.ndarray:
    """faiss's own filtering: the search skips ids the selector rejects (row 0 included)."""
    batch = faiss.IDSelectorBatch(np.append(exclude, 0).astype(np.int64))
    selector = keep = faiss.IDSelectorNot(batch)
    if bits is not None:
        bitmap = faiss.IDSelectorBitmap(index.n_rows, faiss.swig_ptr(bits))
        selector = faiss.IDSelectorAnd(bitmap, keep)
    if isinstance(index, idx.IvfIndex):
        params = faiss.SearchParametersIVF(sel=selector, nprobe=index.nprobe)
    else:
        params = faiss.SearchParametersHNSW(sel=selector, efSearch=index.ef_search)
    return index.faiss.search(query, K, params=params)[1]


def filter_cases(exact: idx.ExactIndex, queries) -> list[dict[str, Any]]:
    """History exclusion and allowed filters, each with its exact answer."""
    rng = np.random.default_rng(3)
    specs = [(length, None) for length in (0, *HISTORY_LENGTHS)]
    specs += [(HISTORY_LENGTHS[0], share) for share in ALLOWED_SHARES]
    cases = []
    for length, share in specs:
        exclude = (
            histories(exact, queries, length) if length else [np.empty(0, np.int64)] * N_QUERIES
        )
        allowed = None if share is None else rng.random(exact.n_rows) < share
        truth = exact_top(exact, queries, exclude, allowed)
        cases.append({"history": length, "share": share, "exclude": exclude, "allowed": allowed})
        cases[-1]["truth"] = truth
    return cases


def bench_filters(index: Any, cases: list[dict[str, Any]], queries) -> list[dict[str, Any]]:
    """Over-fetch (``search``) against faiss's IDSelector on each case, for one index."""
    rows = []
    for case in cases:
        exclude, allowed = case["exclude"], case["allowed"]
        found = index.search(queries, K, exclude, allowed)[0]
        assert not any(np.isin(f, e).any() for f, e in zip(found, exclude))
        assert allowed is None or allowed[found[found > 0]].all()

        def selected(i: int) -> np.ndarray:
            # The bitmap is packed per call: a request's filter is not known in advance.
            bits = None if allowed is None else np.packbits(allowed, bitorder="little")
            return selector_search(index, queries[i : i + 1], exclude[i], bits)

        by_selector = np.concatenate([selected(i) for i in range(N_QUERIES)])
        row = {
            "kind": index.kind,
            "history": case["history"],
            "allowed_share": case["share"],
            "over_fetch": {
                "recall_at_10": recall(found, case["truth"]),
                "latency_ms": latency_ms(
                    lambda i: index.search(queries[i : i + 1], K, [exclude[i]], allowed)
                ),
            },
            "faiss_id_selector": {
                "recall_at_10": recall(by_selector, case["truth"]),
                "rows_short_of_k": int(((by_selector <= 0).sum(axis=1) > 0).sum()),
                "latency_ms": latency_ms(selected),
            },
        }
        rows.append(row)
        over, selector = row["over_fetch"], row["faiss_id_selector"]
        print(
            f"{index.kind}, history {case['history']}, allowed {case['share'] or 1.0:.0%}: "
            f"over-fetch recall@10 {over['recall_at_10']:.4f} p50 "
            f"{over['latency_ms']['p50']:.3f} ms; IDSelector recall@10 "
            f"{selector['recall_at_10']:.4f} p50 {selector['latency_ms']['p50']:.3f} ms"
        )
    return rows


def bench_lancedb(table, queries, truth, exact) -> dict[str, Any]:
    try:
        import lancedb
        import pyarrow as pa
        from lancedb.index import IvfPq
    except ImportError:
        print("LanceDB: skipped (pip install lancedb to measure it; it is not a dependency)")
        return {"skipped": "lancedb is not installed"}
    folder = tempfile.mkdtemp(prefix="bench-ann-lancedb-")
    db = lancedb.connect(folder)
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(table[1:].ravel()), DIM)
    gc.collect()
    rss = _rss_bytes()
    start = time.perf_counter()
    items = db.create_table("items", pa.table({"id": np.arange(1, len(table)), "vector": vectors}))
    config = IvfPq(distance_type="dot", num_partitions=LANCE_PARTITIONS, num_sub_vectors=DIM // 4)
    items.create_index("vector", config=config)
    out: dict[str, Any] = {
        "version": lancedb.__version__,
        "index": f"IVF_PQ dot, {LANCE_PARTITIONS} partitions, {DIM // 4} sub-vectors",
        "build_s": time.perf_counter() - start,
        "rss_growth_bytes": _rss_bytes() - rss,
        "disk_bytes": sum(f.stat().st_size for f in Path(folder).rglob("*")),
        "settings": [],
    }

    def query(i: int, nprobes: int, refine: int, where: str | None = None) -> np.ndarray:
        q = items.search(queries[i]).distance_type("dot").limit(K).nprobes(nprobes)
        q = q.refine_factor(refine).select(["id", "_distance"])
        if where:
            q = q.where(where, prefilter=True)
        return q.to_arrow().column("id").to_numpy()

    for nprobes, refine in LANCE_PROBES:
        found = np.stack([np.pad(query(i, nprobes, refine), (0, K))[:K] for i in range(N_QUERIES)])
        row = {
            "nprobes": nprobes,
            "refine_factor": refine,
            "recall_at_10": recall(found, truth),
            "latency_ms": latency_ms(lambda i: query(i, nprobes, refine)),
        }
        out["settings"].append(row)
        print(
            f"LanceDB nprobes={nprobes} refine={refine}: recall@10 {row['recall_at_10']:.4f}, "
            f"p50 {row['latency_ms']['p50']:.3f} ms"
        )
    exclude = histories(exact, queries, HISTORY_LENGTHS[0])
    where = [f"id NOT IN ({','.join(map(str, e))})" for e in exclude]
    nprobes, refine = LANCE_PROBES[-1]
    out["history_50_prefilter_latency_ms"] = latency_ms(
        lambda i: query(i, nprobes, refine, where[i])
    )
    print(f"LanceDB, history 50: p50 {out['history_50_prefilter_latency_ms']['p50']:.3f} ms")
    shutil.rmtree(folder, ignore_errors=True)
    return out


def main() -> None:
    load_start = os.getloadavg()[0]
    start = time.perf_counter()
    table = catalogue()
    queries = hidden_states(table)
    exact = idx.ExactIndex(table)
    truth = exact_top(exact, queries)
    print(f"catalogue {N_ITEMS} x {DIM}, {N_QUERIES} queries; exact truth ready")
    exact_by_rows = bench_exact(table, queries)
    cases = filter_cases(exact, queries)
    hnsw, hnsw_default = bench_hnsw(table, queries, truth)
    filters = bench_filters(hnsw_default, cases, queries)
    del hnsw_default
    ivf, chosen = bench_ivf(table, queries, truth)
    filters += bench_filters(chosen, cases, queries)
    lance = bench_lancedb(table, queries, truth, exact)
    served = next(row for row in ivf if row["default"])
    result = {
        "catalogue": {
            "items": N_ITEMS,
            "dim": DIM,
            "data": f"gaussian mixture, {CLUSTERS} Zipf-sized clusters, lognormal norms, seed 0",
            "queries": f"{N_QUERIES} noisy item vectors (noise sd 0.7), one per call for latency",
        },
        "targets": {"recall_at_10": TARGET_RECALL, "p50_ms": TARGET_P50_MS},
        "chosen": {
            **served,
            "kind": chosen.kind,
            "ann_threshold_rows": idx.ANN_THRESHOLD,
            "meets_targets": bool(
                served["recall_at_10"] >= TARGET_RECALL
                and served["served_latency_ms"]["p50"] <= TARGET_P50_MS
            ),
        },
        "exact_single_query_by_rows": exact_by_rows,
        "ivf_flat_grid": ivf,
        "hnsw_grid": hnsw,
        "filters": filters,
        "lancedb": lance,
        "machine": {
            "cpus": os.cpu_count(),
            "faiss_threads": idx.FAISS_THREADS,
            "platform": platform.platform(),
            "faiss": faiss.__version__,
            "load_average_1m_at_start": load_start,
            "load_average_1m_at_end": os.getloadavg()[0],
        },
        "total_s": time.perf_counter() - start,
    }
    path = write_json(result, REPORTS_DIR / "bench" / "ann.json")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

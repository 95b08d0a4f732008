"""Data pipeline speed: the ``make data`` chain on the mirror, and '::' parsing at ML-20M size.

* Chain: ``python -m recsys.dataset download|interim|process`` as subprocesses (so interpreter
  start and imports count, as in ``make data``) for ml-100k and ml-latest-small from the mirror
  into a temporary data folder, fresh each repeat. Target: whole chain <= 5 s per dataset.
* Parsing: a synthetic ML-10M-style ``user::item::rating::timestamp`` file of 20M rows (and its
  first 2M rows, to check that time grows linearly) is written once to a temporary folder and read
  by ``recsys.data.readers.read_ratings`` in a fresh child process that reports its own parse
  time and peak RSS. Targets: >= 2M rows/s and <= 2 GB peak. The files are deleted afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from benchmarks import run_child
from recsys.config import PROJ_ROOT, REPORTS_DIR
from recsys.io import write_json

DATASETS = ("ml-100k", "ml-latest-small")
STAGES = ("download", "interim", "process")
REPEATS = 3
ROWS = 20_000_000
SMALL_ROWS = 2_000_000
CHUNK_ROWS = 1_000_000

# Peak RSS is read from /proc (VmHWM): getrusage's ru_maxrss keeps the parent's peak across
# fork+exec, so it would count the benchmark's own memory.
PARSE_CHILD = """
import json, sys, time
from pathlib import Path
from recsys.data.readers import read_ratings

def vm(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024

after_imports = vm("VmHWM")
start = time.perf_counter()
frame = read_ratings(Path(sys.argv[1]), "::", ("u", "i", "r", "t"), header=False)
seconds = time.perf_counter() - start
print(json.dumps({
    "rows": len(frame),
    "parse_s": seconds,
    "peak_rss_mb": vm("VmHWM"),
    "rss_after_imports_mb": after_imports,
}))
"""


def _mirror() -> Path:
    return Path(os.environ.get("RECSYS_DATA_MIRROR") or PROJ_ROOT.parent / "shared" / "data")


def time_chain(dataset: str, mirror: Path, data_dir: Path) -> dict[str, float]:
    """Wall seconds of each stage command, run the way ``make data`` runs them."""
    env = {**os.environ, "RECSYS_DATA_DIR": str(data_dir), "RECSYS_DATA_MIRROR": str(mirror)}
    seconds = {}
    for stage in STAGES:
        start = time.perf_counter()
        run_child(
            [sys.executable, "-m", "recsys.dataset", stage, "--dataset", dataset],
            cwd=PROJ_ROOT,
            env=env,
            check=True,
            capture_output=True,
        )
        seconds[stage] = time.perf_counter() - start
    seconds["total"] = sum(seconds.values())
    return seconds


def bench_chain(mirror: Path, scratch: Path) -> dict[str, dict]:
    results = {}
    for dataset in DATASETS:
        runs = []
        for repeat in range(REPEATS):
            data_dir = scratch / f"{dataset}-{repeat}"
            runs.append(time_chain(dataset, mirror, data_dir))
            shutil.rmtree(data_dir)
        rerun_dir = scratch / f"{dataset}-warm"
        time_chain(dataset, mirror, rerun_dir)
        warm = time_chain(dataset, mirror, rerun_dir)  # download finds the data already there
        shutil.rmtree(rerun_dir)
        results[dataset] = {
            "cold_median_s": {s: statistics.median(r[s] for r in runs) for s in runs[0]},
            "cold_min_total_s": min(r["total"] for r in runs),
            "warm_s": warm,
            "repeats": REPEATS,
            "target_total_s": 5.0,
        }
        median = results[dataset]["cold_median_s"]
        print(
            f"{dataset}: make-data chain {median['total']:.2f} s median of {REPEATS} "
            f"(download {median['download']:.2f}, interim {median['interim']:.2f}, "
            f"process {median['process']:.2f}); with data already downloaded {warm['total']:.2f} s"
        )
    return results


def write_synthetic_ratings(path: Path, small_path: Path) -> int:
    """ML-10M-style '::' ratings, written in blocks; the first SMALL_ROWS also go to small_path."""
    rng = np.random.default_rng(0)
    written = 0
    options = pacsv.WriteOptions(include_header=False, delimiter="\t")
    with open(path, "wb") as out, open(small_path, "wb") as small:
        while written < ROWS:
            n = min(CHUNK_ROWS, ROWS - written)
            table = pa.table(
                {
                    "user": rng.integers(1, 71_568, n),
                    "item": rng.integers(1, 65_134, n),
                    "rating": (rng.integers(1, 11, n) / 2).astype(np.float64),
                    "timestamp": rng.integers(789_652_009, 1_231_131_736, n),
                }
            )
            sink = pa.BufferOutputStream()
            pacsv.write_csv(table, sink, write_options=options)
            block = sink.getvalue().to_pybytes().replace(b"\t", b"::")
            out.write(block)
            if written < SMALL_ROWS:
                small.write(block)
            written += n
    return path.stat().st_size


def parse_in_child(path: Path) -> dict[str, float]:
    start = time.perf_counter()
    proc = run_child(
        [sys.executable, "-c", PARSE_CHILD, str(path)],
        cwd=PROJ_ROOT,
        check=True,
        capture_output=True,
        text=True,
    )
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_s_with_startup"] = time.perf_counter() - start
    result["rows_per_s"] = result["rows"] / result["parse_s"]
    return result


def bench_parse(scratch: Path) -> dict[str, object]:
    big, small = scratch / "ratings-20m.dat", scratch / "ratings-2m.dat"
    start = time.perf_counter()
    size = write_synthetic_ratings(big, small)
    elapsed = time.perf_counter() - start
    print(f"wrote {ROWS:,} synthetic '::' rows ({size / 1e6:.0f} MB) in {elapsed:.1f} s")
    results: dict[str, object] = {"file_mb": size / 1e6}
    for label, path in (("2M", small), ("20M", big)):
        result = parse_in_child(path)
        results[label] = result
        print(
            f"parse {label}: {result['rows']:,} rows in {result['parse_s']:.2f} s = "
            f"{result['rows_per_s'] / 1e6:.2f}M rows/s, peak RSS {result['peak_rss_mb']:.0f} MB "
            f"(after imports {result['rss_after_imports_mb']:.0f} MB)"
        )
    ratio = results["20M"]["parse_s"] / results["2M"]["parse_s"]  # type: ignore[index]
    results["time_ratio_20M_over_2M"] = ratio
    results["targets"] = {"rows_per_s": 2_000_000, "peak_rss_mb": 2048}
    print(f"20M/2M parse time ratio {ratio:.1f} (10 = linear)")
    return results


def main() -> None:
    mirror = _mirror()
    if not (mirror / "ml-100k").is_dir():
        raise SystemExit(f"error: no MovieLens mirror at {mirror}; set RECSYS_DATA_MIRROR")
    report: dict[str, object] = {
        "note": "wall-clock on a shared 2-core machine: noisy; compare medians",
        "cpu_count": os.cpu_count(),
    }
    with tempfile.TemporaryDirectory(prefix="recsys-bench-data-") as scratch:
        report["make_data_chain"] = bench_chain(mirror, Path(scratch))
        report["parse_double_colon"] = bench_parse(Path(scratch))
    path = write_json(report, REPORTS_DIR / "bench" / "data.json")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

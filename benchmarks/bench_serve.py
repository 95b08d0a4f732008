"""Serving latency and throughput: ``make bench BENCH=serve``.

* The run API in process: one user's top-10 from a warm run, ``API_CALLS`` calls, p50/p99.
* A real server process (``python -m recsys.serve``) on 127.0.0.1 and a bounded async client
  in another process: at concurrency 1, 8 and 32, each for ``RECSYS_BENCH_SECONDS`` (default
  60) seconds of ``POST /v1/recommend`` for random users, the QPS, p50/p95/p99 end to end and
  the error count. Targets on 2 cores with the ml-100k sasrec-ce run: p50 <= 5 ms and p99 <=
  20 ms at concurrency 1; >= 500 requests/s at concurrency 32 with p99 <= 100 ms and no errors.
  The client is aiohttp, not httpx: both are bounded async clients, but at 32 connections httpx
  took most of a core of the two the server needs, and the figures measured the client. The
  client's own CPU share is recorded beside each level.

* The same for a generative (TIGER) run, ``models/ml-100k/tiger`` (or
  ``RECSYS_SERVE_TIGER_RUN``), where one is trained: one request's top-10 in process, by beam
  search at the run's beam size (20 in ``configs/tiger.yaml``), and the server at concurrency 1
  and 32, whose requests the batcher folds into shared beam searches.

The approximate item index at 1,000,000 items is its own benchmark, ``make bench BENCH=ann``
(its builds take many minutes).

Writes ``reports/bench/serve.json`` (the TIGER run's figures under ``tiger``). Uses
``models/ml-100k/sasrec-ce`` (or ``RECSYS_SERVE_RUN``).
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import exit_on_sigterm, run_child
from recsys.config import MODELS_DIR, PROJ_ROOT, REPORTS_DIR
from recsys.io import write_json

DATASET = "ml-100k"
RUN = "sasrec-ce"
TIGER_RUN = "tiger"
CONCURRENCY = (1, 8, 32)
TIGER_CONCURRENCY = (1, 32)
API_CALLS = 1000
WARMUP_S = 3.0
READY_TIMEOUT_S = 120.0


def seconds_per_level() -> float:
    return float(os.environ.get("RECSYS_BENCH_SECONDS", "60"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentiles(latencies_ms: list[float]) -> dict[str, float]:
    ordered = sorted(latencies_ms)

    def at(share: float) -> float:
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))]

    return {"p50_ms": at(0.50), "p95_ms": at(0.95), "p99_ms": at(0.99)}


def api_latency(run: Any) -> dict[str, Any]:
    """One user's top-10 through the run API in this process (no HTTP): the model's share."""
    users = list(run.users)
    rng = random.Random(0)
    for _ in range(20):
        run.recommend(user_id=rng.choice(users), k=10)
    times = []
    for _ in range(API_CALLS):
        user = rng.choice(users)
        start = time.perf_counter()
        run.recommend(user_id=user, k=10)
        times.append((time.perf_counter() - start) * 1000.0)
    return {"calls": API_CALLS, **percentiles(times), "mean_ms": statistics.fmean(times)}


async def _load(url: str, users: list[str], concurrency: int, seconds: float) -> dict[str, Any]:
    """``concurrency`` workers, each sending one request at a time for ``seconds``."""
    import aiohttp

    latencies: list[float] = []
    errors: dict[str, int] = {}
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=10.0)
    async with aiohttp.ClientSession(url, connector=connector, timeout=timeout) as session:

        async def worker(seed: int, until: float, record: bool) -> None:
            rng = random.Random(seed)
            while time.perf_counter() < until:
                body = {"user_id": rng.choice(users), "k": 10}
                start = time.perf_counter()
                try:
                    async with session.post("/v1/recommend", json=body) as response:
                        await response.read()
                        ok, why = response.status == 200, str(response.status)
                except (aiohttp.ClientError, asyncio.TimeoutError) as err:
                    ok, why = False, type(err).__name__
                if record:
                    if ok:
                        latencies.append((time.perf_counter() - start) * 1000.0)
                    else:
                        errors[why] = errors.get(why, 0) + 1

        warm_until = time.perf_counter() + WARMUP_S
        await asyncio.gather(*(worker(i, warm_until, False) for i in range(concurrency)))
        started, cpu_start = time.perf_counter(), time.process_time()
        until = started + seconds
        await asyncio.gather(*(worker(100 + i, until, True) for i in range(concurrency)))
        elapsed = time.perf_counter() - started
        client_cpu = time.process_time() - cpu_start
    return {
        "concurrency": concurrency,
        "seconds": round(elapsed, 2),
        "requests": len(latencies),
        "qps": len(latencies) / elapsed,
        **(percentiles(latencies) if latencies else {}),
        "max_ms": max(latencies, default=float("nan")),
        "errors": sum(errors.values()),
        "errors_by_kind": errors,
        "client_cpu_cores": client_cpu / elapsed,
    }


def client_main(url: str, users_json: str, concurrency: int, seconds: float) -> None:
    """The client process: prints one JSON line of results (keeps its CPU out of the server)."""
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # uvicorn[standard] brings it; the stdlib loop works too
        pass
    users = json.loads(Path(users_json).read_text())
    print(json.dumps(asyncio.run(_load(url, users, concurrency, seconds))))


def start_server(run_dir: Path, dataset: str, port: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "recsys.serve", "--dataset", dataset, "--run", str(run_dir)]
    exit_on_sigterm()  # so that the callers' finally blocks stop the server
    server = subprocess.Popen(
        [*command, "--port", str(port)], cwd=PROJ_ROOT, stdout=subprocess.DEVNULL
    )
    import httpx

    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"error: the server exited with {server.returncode} before ready")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1.0).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    server.kill()
    raise SystemExit(f"error: the server was not ready within {READY_TIMEOUT_S:.0f} s")


def load_levels(
    run_dir: Path, dataset: str, users_file: Path, concurrency_levels: tuple[int, ...]
) -> list[dict[str, Any]]:
    port = free_port()
    server = start_server(run_dir, dataset, port)
    levels = []
    try:
        for concurrency in concurrency_levels:
            client = run_child(
                [
                    sys.executable,
                    "-c",
                    "import sys; from benchmarks.bench_serve import client_main; "
                    "client_main(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))",
                    f"http://127.0.0.1:{port}",
                    str(users_file),
                    str(concurrency),
                    str(seconds_per_level()),
                ],
                cwd=PROJ_ROOT,
                capture_output=True,
                text=True,
                check=True,
            )
            level = json.loads(client.stdout.strip().splitlines()[-1])
            levels.append(level)
            print(
                f"concurrency {concurrency:>2}: {level['qps']:.0f} req/s, p50 "
                f"{level.get('p50_ms', float('nan')):.2f} ms, p95 "
                f"{level.get('p95_ms', float('nan')):.2f} ms, p99 "
                f"{level.get('p99_ms', float('nan')):.2f} ms, {level['errors']} errors "
                f"(client used {level['client_cpu_cores']:.2f} cores)",
                flush=True,
            )
    finally:
        server.terminate()
        server.wait(timeout=30)
    return levels


def bench_run(run_dir: Path, concurrency_levels: tuple[int, ...]) -> dict[str, Any]:
    """A trained run in process, then behind a real server at each concurrency level."""
    from recsys import load_run

    run = load_run(run_dir)
    out: dict[str, Any] = {"run": str(run_dir), "item_repr": run.item_repr}
    if hasattr(run, "beam_size"):
        out["beam_size"] = run.beam_size
    out["run_api_top10"] = api = api_latency(run)
    print(f"{run.name} top-10 in process: p50 {api['p50_ms']:.2f} ms, p99 {api['p99_ms']:.2f} ms")
    users_file = REPORTS_DIR / "bench" / ".serve-users.json"
    users_file.parent.mkdir(parents=True, exist_ok=True)
    users_file.write_text(json.dumps(list(run.users)))
    dataset = run.dataset
    del run
    try:
        out["load"] = load_levels(run_dir, dataset, users_file, concurrency_levels)
    finally:
        users_file.unlink(missing_ok=True)
    return out


def main() -> None:
    run_dir = Path(os.environ.get("RECSYS_SERVE_RUN") or MODELS_DIR / DATASET / RUN)
    tiger_dir = Path(os.environ.get("RECSYS_SERVE_TIGER_RUN") or MODELS_DIR / DATASET / TIGER_RUN)
    out: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "run": str(run_dir),
    }
    if not (run_dir / "checkpoints" / "best.ckpt").is_file():
        print(f"serve load: skipped, no trained run at {run_dir} (make train DATASET={DATASET})")
        out["load"] = {"skipped": f"no run at {run_dir}"}
    else:
        out |= bench_run(run_dir, CONCURRENCY)
    if not (tiger_dir / "checkpoints" / "best.ckpt").is_file():
        print(
            f"serve tiger: skipped, no trained run at {tiger_dir} "
            f"(make features train DATASET={DATASET} CONFIGS=tiger)"
        )
        out["tiger"] = {"skipped": f"no run at {tiger_dir}"}
    else:
        out["tiger"] = bench_run(tiger_dir, TIGER_CONCURRENCY)
    out["load_average_1m_at_end"] = os.getloadavg()[0]
    path = write_json(out, REPORTS_DIR / "bench" / "serve.json")
    print(f"wrote {path}")

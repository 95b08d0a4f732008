"""``make bench``: with no name the quick set, which says what it skipped; a name runs it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from benchmarks.__main__ import HOUR_LONG, benchmark_names, main, select
from recsys.config import PROJ_ROOT


def test_the_quick_set_leaves_out_the_hour_long_benchmarks_and_names_them(monkeypatch, capsys):
    names = benchmark_names()
    assert set(HOUR_LONG) < set(names)
    quick, skipped = select(None, names)
    assert quick == [n for n in names if n not in HOUR_LONG] and skipped == sorted(HOUR_LONG)
    ran: list[str] = []

    def imported(module: str) -> type[_NoBench]:
        ran.append(module)
        return _NoBench

    monkeypatch.setattr("importlib.import_module", imported)
    main([])
    assert ran == [f"benchmarks.bench_{n}" for n in quick]
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("== quick set: skipping") and all(n in first for n in HOUR_LONG)


def test_an_hour_long_benchmark_runs_when_named_and_all_runs_everything():
    names = benchmark_names()
    assert select("scale", names) == (["scale"], [])
    assert select("all", names) == (names, [])
    with pytest.raises(SystemExit, match="unknown benchmark 'nope'"):
        select("nope", names)


class _NoBench:
    @staticmethod
    def main() -> None:
        """Stands in for a benchmark module: the test checks the selection, not the run."""


def test_the_loss_study_chooses_each_losss_rate_on_validation_within_its_grid():
    from benchmarks.bench_losses import ARCHITECTURES, choose_rates

    low, high = ARCHITECTURES["mf"][1][0], ARCHITECTURES["mf"][1][-1]

    def run(loss: str, lr: float, val: float, test: float) -> dict:
        return {"dataset": "d", "architecture": "mf", "loss": loss, "lr": lr,
                "best_val_ndcg@10": val, "test_ndcg@10": test}  # fmt: skip

    runs = [
        run("bpr", low, 0.02, 0.09),  # the better test never decides
        run("bpr", high, 0.03, 0.01),
        run("ce", low, 0.05, 0.05),
        run("ce", low / 10, 0.09, 0.09),  # a rate outside the grid (an earlier study's) is not
    ]
    chosen = {r["loss"]: r["lr"] for r in choose_rates(runs)}
    assert chosen == {"bpr": high, "ce": low}


def test_a_resumed_tiger_benchmark_evaluates_only_the_runs_it_finished(tmp_path):
    from benchmarks.bench_tiger import drop_unfinished

    for name in ("tiger-seed42", "tiger-seed1", "tiger-t5-seed42"):
        (tmp_path / name / "checkpoints").mkdir(parents=True)
    finished = [{"name": "tiger", "seed": 42, "run_dir": str(tmp_path / "tiger-seed42")}]
    drop_unfinished(tmp_path, finished)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiger-seed42"]
    drop_unfinished(tmp_path / "not-there-yet", finished)  # nothing trained yet: nothing to do


def test_the_loss_study_trains_again_a_run_drawn_with_other_negatives():
    from benchmarks.bench_losses import LOSS_NEGATIVES, current_runs

    negatives, count = LOSS_NEGATIVES["bce"]
    earlier = {"loss": "bce"}  # an earlier study's: one shared pool of 256
    now = {"loss": "bce", "negatives": negatives, "n_negatives": count}
    shared = {"loss": "sampled", "negatives": "batch", "n_negatives": 256}
    assert current_runs([earlier, now, shared, {"loss": "ce"}]) == [now, shared, {"loss": "ce"}]


def test_a_benchmark_stopped_by_sigterm_takes_its_child_down(tmp_path):
    """A benchmark waits on a training child; SIGTERM to the benchmark must not orphan it."""
    child_pid = tmp_path / "child.pid"
    child = (
        f"import os, time; open({str(child_pid)!r}, 'w').write(str(os.getpid())); "
        "time.sleep(60)"
    )
    parent = (
        "import sys; from benchmarks import run_child; "
        f"run_child([sys.executable, '-c', {child!r}])"
    )
    benchmark = subprocess.Popen([sys.executable, "-c", parent], cwd=PROJ_ROOT)
    deadline = time.monotonic() + 30
    while not child_pid.exists() or not child_pid.read_text():
        assert time.monotonic() < deadline and benchmark.poll() is None
        time.sleep(0.05)
    benchmark.send_signal(signal.SIGTERM)
    assert benchmark.wait(timeout=30) == 128 + signal.SIGTERM
    pid = int(child_pid.read_text())
    with pytest.raises(ProcessLookupError):  # killed and reaped, not left running
        os.kill(pid, 0)

"""Scale: the design's own H&M data at full size (``make bench BENCH=scale``).

Every stage runs as its own process, the way ``make`` runs it, so interpreter start and imports
count. The inputs are the stand-ins of :mod:`benchmarks.synth` (``--rows``, default the real
31,788,324 H&M rows; the MovieLens stand-ins get the same share of their real size), written
into a scratch mirror (``RECSYS_DATA_MIRROR``) beside a scratch data, models and reports tree
(``RECSYS_DATA_DIR``, ``RECSYS_MODELS_DIR``, ``RECSYS_REPORTS_DIR``): nothing lands in the
repository but the result. Peak RSS is each stage's own high-water mark, ``ru_maxrss`` from
``wait4`` in a small wrapper process (:data:`WRAPPER`) that forks and execs the stage: the
wrapper's own few MB are the floor, and the bench's memory never counts. The wrapper also stops
a stage past ``--timeout-s`` or above ``--max-rss-gb`` (the machine is shared), which the
result then says.

Steps (``--skip`` any of them), with the targets on 2 cores at full size:

* ``data-hm``: ``python -m recsys.dataset download|interim|process --dataset hm``, the
  ``make data`` chain: <= 120 s wall and <= 8 GB (8,192 MiB) peak RSS in total.
* ``data-ml-20m``, ``data-ml-32m``: the same chain on the MovieLens stand-ins: <= 60 s wall.
* ``train``: training's defaults (a config file naming no key, so no loss: above 50,000 items
  the large-catalogue default, sampled softmax with logQ correction, applies; the result says
  which loss the run used, from the log line and its config.yaml), for one epoch cut to
  ``--train-batches`` batches and ``--val-batches`` validation batches by a callback given to
  :func:`recsys.modeling.training.train` (``python -m benchmarks.bench_scale train-child``).
  Targets/s is the run's own ``train_tokens / train_s`` (logs/metrics.csv); the full epoch's
  time is estimated from it.
* ``evaluate-sample``: ``python -m recsys.modeling.evaluate --dataset hm --sample-users 10000``;
  the report must list EASE as skipped, with the reason.
* ``evaluate-all``: every test user when the sample's timings say that fits ``--eval-budget-s``
  (600 s); otherwise the largest sample that does, labelled so, with the estimate for all users
  (the sample's ranking time scaled to every user, then a line through both measured sizes).
* ``predict``: ``python -m recsys.modeling.predict --dataset hm --all-users --output F.parquet``.

Each step records its exact command lines (run with the result's ``env``), wall and CPU
seconds, peak RSS, the load average around it and its rows, users and items; a failed step
records its exit and the tail of its log, and the steps that need it are skipped.
``reports/bench/scale.json`` is rewritten after every step. ``make bench`` passes no options:
``RECSYS_BENCH_ROWS``, ``RECSYS_BENCH_SKIP`` (comma-separated) and ``RECSYS_BENCH_SCRATCH`` (a
folder to keep, with every log) set them there; or ``python -m benchmarks.bench_scale --rows
1000000 --skip data-ml-32m``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.synth import HM, ML_20M, ML_32M, Scale
from recsys.config import PROJ_ROOT, REPORTS_DIR
from recsys.io import read_json, read_yaml, write_json

STEPS = (
    "data-hm",
    "data-ml-20m",
    "data-ml-32m",
    "train",
    "evaluate-sample",
    "evaluate-all",
    "predict",
)
#: What each step needs to have succeeded first.
NEEDS = {
    "train": "data-hm",
    "evaluate-sample": "train",
    "evaluate-all": "evaluate-sample",
    "predict": "train",
}
DATA_STAGES = ("download", "interim", "process")
SCALES = {scale.name: scale for scale in (HM, ML_20M, ML_32M)}
#: (step, figure) -> the largest value that meets the target.
TARGETS = {
    ("data-hm", "wall_s"): 120.0,
    ("data-hm", "peak_rss_mb"): 8 * 1024.0,
    ("data-ml-20m", "wall_s"): 60.0,
    ("data-ml-32m", "wall_s"): 60.0,
}
TRAIN_BATCHES = 200
VAL_BATCHES = 20
SAMPLE_USERS = 10_000
EVAL_BUDGET_S = 600.0
#: The budgeted evaluation aims below the budget: its unscaled part (bootstrap, metrics) grows
#: with the users too.
BUDGET_SHARE = 0.85
TIMEOUT_S = 3600.0
MAX_RSS_GB = 16.0
LOG_TAIL_LINES = 30
CONFIG_TEXT = "# No keys: training's defaults, and no loss, so the catalogue size picks it.\n"

# Forks the command, waits for it with wait4 (its own peak RSS, and that of its waited-for
# children, as ru_maxrss) and writes the figures to argv[1]. A watchdog thread kills the
# command's process group past the timeout or above the RSS limit.
WRAPPER = r"""
import json, os, signal, sys, threading, time
out, timeout, max_rss_kb, argv = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
killed = []
start = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.setpgid(0, 0)
    try:
        os.execvp(argv[0], argv)
    finally:
        os._exit(127)

def rss_kb():
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0

def watch():
    while not finished.wait(0.25):
        if time.perf_counter() - start > timeout:
            killed.append(f"killed: still running after the {timeout:.0f} s timeout")
        elif rss_kb() > max_rss_kb:
            killed.append(f"killed: RSS above the {max_rss_kb / 1048576:.1f} GiB limit")
        if killed:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            return

finished = threading.Event()
threading.Thread(target=watch, daemon=True).start()
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - start
finished.set()
with open(out, "w") as fh:
    json.dump({
        "rc": os.waitstatus_to_exitcode(status),
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "killed": killed[0] if killed else None,
    }, fh)
"""


class StepFailed(Exception):
    """A stage exited non-zero (or was killed); ``record`` says how, with its log's tail."""

    def __init__(self, record: dict[str, Any]) -> None:
        super().__init__(record.get("killed") or f"exit {record['rc']}")
        self.record = record


@dataclass(frozen=True)
class Scratch:
    """The scratch tree every stage runs against, and the limits a stage runs under."""

    root: Path
    timeout_s: float = TIMEOUT_S
    max_rss_gb: float = MAX_RSS_GB

    @property
    def mirror(self) -> Path:
        return self.root / "mirror"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def env(self) -> dict[str, str]:
        """The variables a stage gets on top of this process's environment."""
        return {
            "RECSYS_DATA_DIR": str(self.data),
            "RECSYS_DATA_MIRROR": str(self.mirror),
            "RECSYS_MODELS_DIR": str(self.models),
            "RECSYS_REPORTS_DIR": str(self.reports),
        }


def _load_1m() -> float:
    return round(os.getloadavg()[0], 2)


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> list[str]:
    return path.read_text(errors="replace").splitlines()[-lines:] if path.is_file() else []


def measure(name: str, argv: list[str], scratch: Scratch, timeout_s: float | None = None) -> dict:
    """Run ``argv`` through :data:`WRAPPER` in the scratch environment; its figures, or
    :class:`StepFailed` when it did not exit 0. Its output goes to ``logs/<name>.log``."""
    scratch.logs.mkdir(parents=True, exist_ok=True)
    log, figures = scratch.logs / f"{name}.log", scratch.logs / f"{name}.json"
    figures.unlink(missing_ok=True)
    # The scratch tree wins over any RECSYS_* path of this process (a test's, a user's).
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}
    env.update(scratch.env)
    timeout = timeout_s or scratch.timeout_s
    wrapper = [sys.executable, "-I", "-c", WRAPPER, str(figures), str(timeout)]
    wrapper.append(str(int(scratch.max_rss_gb * 1024 * 1024)))
    load_before = _load_1m()
    with open(log, "wb") as out:
        subprocess.run(
            wrapper + argv, cwd=PROJ_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    record = {"command": shlex.join(argv), "log": str(log)}
    figures = json.loads(figures.read_text()) if figures.is_file() else {"rc": None}
    record.update({k: round(v, 3) if isinstance(v, float) else v for k, v in figures.items()})
    record["load_1m"] = [load_before, _load_1m()]
    if record["rc"] != 0:
        raise StepFailed({**record, "log_tail": log_tail(log)})
    return record


def _python(*args: str) -> list[str]:
    return [sys.executable, "-m", *args]


# ------------------------------------------------------------------------------------ data
def scaled_rows(scale: Scale, hm_rows: int) -> int:
    """``scale``'s rows at the share of its real size that ``hm_rows`` is of H&M's."""
    return scale.rows if hm_rows == HM.rows else max(1_000, round(scale.rows * hm_rows / HM.rows))


def data_step(dataset: str, hm_rows: int, scratch: Scratch, keep: bool) -> dict[str, Any]:
    """Write the stand-in into the mirror, then time the three ``make data`` stages."""
    scale = SCALES[dataset]
    rows = scaled_rows(scale, hm_rows)
    source = scratch.mirror / dataset
    generate = measure(
        f"{dataset}-synth",
        _python("benchmarks.synth", dataset, "--rows", str(rows), "--out", str(source)),
        scratch,
    )
    synth = read_json(source / "synth.json")
    stages = {
        stage: measure(
            f"{dataset}-{stage}", _python("recsys.dataset", stage, "--dataset", dataset), scratch
        )
        for stage in DATA_STAGES
    }
    stats = read_json(scratch.data / "processed" / dataset / "stats.json")
    result = {
        "rows": rows,
        "full_size": rows == scale.rows,
        "generated": synth["counts"],
        "generate": generate,
        "stages": stages,
        "wall_s": sum(s["wall_s"] for s in stages.values()),
        "cpu_s": sum(s["cpu_s"] for s in stages.values()),
        "peak_rss_mb": max(s["peak_rss_mb"] for s in stages.values()),
        "processed": {
            key: stats[key] for key in ("n_users", "n_items", "n_catalogue", "n_interactions")
        },
        "processed_files": sorted(
            p.name for p in (scratch.data / "processed" / dataset).iterdir()
        ),
    }
    # Only the processed files of a dataset kept for the later steps stay: a full-size H&M is
    # 3.5 GB of CSV in the mirror and as much again in data/raw.
    for folder in [source, *(scratch.data / s / dataset for s in ("raw", "interim"))]:
        shutil.rmtree(folder, ignore_errors=True)
    if not keep:
        shutil.rmtree(scratch.data / "processed" / dataset, ignore_errors=True)
    return result


# ----------------------------------------------------------------------------------- train
def train_child(config: Path, batches: int, val_batches: int, out: Path) -> None:
    """``train-child``: :func:`recsys.modeling.training.train` on hm for one epoch cut to
    ``batches`` training and ``val_batches`` validation batches; writes the epoch's size."""
    import lightning.pytorch as pl

    from recsys.modeling.training import train

    class BatchLimit(pl.Callback):
        """Sets the Trainer's batch limits before its loops read them (and the LR schedule)."""

        def setup(self, trainer: pl.Trainer, pl_module: Any, stage: str) -> None:
            trainer.limit_train_batches, trainer.limit_val_batches = batches, val_batches

        def on_train_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
            windows = trainer.datamodule.train_set
            epoch = {
                "batches_run": trainer.global_step,
                "epoch_windows": len(windows),
                "epoch_batches": -(-len(windows) // pl_module.config["batch_size"]),
                "epoch_targets": windows.n_targets(),
                "loss": pl_module.config["loss"],
            }
            out.write_text(json.dumps(epoch))

    train(
        "hm", str(config), max_epochs=1, resume=False, progress_bar=False, callbacks=[BatchLimit()]
    )


def train_step(scratch: Scratch, batches: int, val_batches: int) -> dict[str, Any]:
    config, epoch_file = scratch.root / "default.yaml", scratch.logs / "train-epoch.json"
    config.write_text(CONFIG_TEXT)
    argv = _python("benchmarks.bench_scale", "train-child", "--config", str(config))
    argv += ["--batches", str(batches), "--val-batches", str(val_batches)]
    record = measure("train", argv + ["--out", str(epoch_file)], scratch)
    run_dir = scratch.models / "hm" / config.stem
    epoch = json.loads(epoch_file.read_text())
    with open(run_dir / "logs" / "metrics.csv") as fh:
        header, row = fh.readline().strip().split(","), fh.readline().strip().split(",")
    row_values = dict(zip(header, map(float, row)))
    tokens_per_s = row_values["train_tokens"] / row_values["train_s"]
    choice = re.findall(r"\| (loss .*)$", Path(record["log"]).read_text(), re.MULTILINE)
    return {
        **record,
        "equivalent": "python -m recsys.modeling.train --dataset hm --config default.yaml "
        f"--max-epochs 1, cut to {batches} training and {val_batches} validation batches",
        "config_file": CONFIG_TEXT.strip(),
        "loss": read_yaml(run_dir / "config.yaml")["loss"],
        "loss_log_line": choice[0] if choice else None,
        **epoch,
        "train_s": row_values["train_s"],
        "epoch_s": row_values["epoch_s"],
        "train_tokens": row_values["train_tokens"],
        "tokens_per_s": tokens_per_s,
        "outside_epoch_s": record["wall_s"] - row_values["epoch_s"],
        "full_epoch_train_s_estimate": epoch["epoch_targets"] / tokens_per_s,
        "run_metrics": read_json(run_dir / "metrics.json"),
    }


# -------------------------------------------------------------------------------- evaluate
def evaluate_run(
    name: str, scratch: Scratch, sample_users: int | None, timeout_s: float | None = None
) -> dict[str, Any]:
    """One ``python -m recsys.modeling.evaluate --dataset hm`` with what its report and log say:
    users scored, models, the skipped baselines and each model's ranking seconds."""
    argv = _python("recsys.modeling.evaluate", "--dataset", "hm")
    if sample_users is not None:
        argv += ["--sample-users", str(sample_users)]
    record = measure(name, argv, scratch, timeout_s)
    report = read_json(scratch.reports / "metrics" / "hm.json")
    log = Path(record["log"]).read_text()
    ranked = re.findall(r"\| (\S+): ranked (\d+) users in ([\d.]+) s", log)
    sample = report["user_sample"]
    return {
        **record,
        "n_users": report["n_users"],
        "n_test_users": sample["of"] if sample else report["n_users"],
        "n_items": report["n_items"],
        "user_sample": sample,
        "models": [m["name"] for m in report["models"]],
        "skipped": report["skipped"],
        "ease_skipped": any(s["name"] == "ease" for s in report["skipped"]),
        "skip_log_lines": re.findall(r"\| (skipping baseline .*)$", log, re.MULTILINE),
        "rank_s": [{"model": m, "users": int(n), "s": float(s)} for m, n, s in ranked],
        "rank_s_total": sum(float(s) for _, _, s in ranked),
    }


def evaluate_all_step(scratch: Scratch, sample: dict[str, Any], budget_s: float) -> dict:
    """Every test user if the sample says it fits ``budget_s``, else the largest sample that
    does; with the estimate for every user either way."""
    n_all, n = sample["n_test_users"], sample["n_users"]
    per_user = sample["rank_s_total"] / n
    fixed = max(0.0, sample["wall_s"] - sample["rank_s_total"])
    estimate = {
        "all_users_s_from_sample": fixed + per_user * n_all,
        "method": "the sample's wall with its ranking seconds scaled to every test user",
        "unscaled_s": fixed,
        "rank_s_per_user": per_user,
    }
    if estimate["all_users_s_from_sample"] <= budget_s:
        result = evaluate_run("evaluate-all", scratch, None, 2 * budget_s)
        return {**result, "label": "all test users", "budget_s": budget_s, "estimate": estimate}
    fit = min(n_all - 1, int((BUDGET_SHARE * budget_s - fixed) / per_user))
    base = {"budget_s": budget_s, "estimate": estimate, "n_test_users": n_all}
    if fit <= n:
        return {
            **base,
            "label": f"not run: no sample larger than {n} users fits {budget_s:.0f} s",
        }
    result = evaluate_run("evaluate-all", scratch, fit, 2 * budget_s)
    slope_s = (result["wall_s"] - sample["wall_s"]) / (result["n_users"] - n)
    slope_mb = (result["peak_rss_mb"] - sample["peak_rss_mb"]) / (result["n_users"] - n)
    estimate["all_users_s_two_sizes"] = sample["wall_s"] + slope_s * (n_all - n)
    estimate["all_users_peak_rss_mb_two_sizes"] = sample["peak_rss_mb"] + slope_mb * (n_all - n)
    estimate["two_sizes_method"] = f"a straight line through the runs of {n} and {fit} users"
    label = (
        f"NOT all users: the largest sample that fits {budget_s:.0f} s, {fit} of {n_all} users "
        f"(all users estimated at {estimate['all_users_s_two_sizes']:.0f} s)"
    )
    return {**result, **base, "label": label}


# --------------------------------------------------------------------------------- predict
def predict_step(scratch: Scratch) -> dict[str, Any]:
    import pyarrow.parquet as pq

    output = scratch.root / "recommendations.parquet"
    argv = _python("recsys.modeling.predict", "--dataset", "hm", "--all-users")
    record = measure("predict", argv + ["--output", str(output)], scratch)
    wrote = re.search(r"wrote top-(\d+) of (\d+) users", Path(record["log"]).read_text())
    stats = read_json(scratch.data / "processed" / "hm" / "stats.json")
    result = {
        **record,
        "output_rows": pq.read_metadata(output).num_rows,
        "output_mb": output.stat().st_size / 2**20,
        "k": int(wrote.group(1)) if wrote else None,
        "n_users": int(wrote.group(2)) if wrote else None,
        "n_items": stats["n_catalogue"],
    }
    output.unlink()
    return result


# ---------------------------------------------------------------------------------- runner
def check_targets(steps: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target with the measured value and whether it is met (None: step not measured)."""
    out = []
    for (step, figure), limit in TARGETS.items():
        value = steps.get(step, {}).get(figure)
        out.append(
            {
                "step": step,
                "figure": figure,
                "value": value,
                "target": f"<= {limit:g}",
                "met": None if value is None else value <= limit,
                "at_full_size": steps.get(step, {}).get("full_size"),
            }
        )
    return out


def run_bench(
    rows: int = HM.rows,
    skip: tuple[str, ...] = (),
    output: Path = REPORTS_DIR / "bench" / "scale.json",
    scratch_dir: Path | None = None,
    train_batches: int = TRAIN_BATCHES,
    val_batches: int = VAL_BATCHES,
    sample_users: int = SAMPLE_USERS,
    eval_budget_s: float = EVAL_BUDGET_S,
    timeout_s: float = TIMEOUT_S,
    max_rss_gb: float = MAX_RSS_GB,
) -> dict[str, Any]:
    """Every step not in ``skip``, in order; the result is written to ``output`` after each.

    ``scratch_dir`` (kept, with its logs) must be empty or absent; by default a temporary
    folder is used and deleted."""
    unknown = sorted(set(skip) - set(STEPS))
    if unknown:
        raise SystemExit(f"error: unknown step(s) {unknown} in --skip; steps: {', '.join(STEPS)}")
    if scratch_dir is not None and scratch_dir.exists() and any(scratch_dir.iterdir()):
        raise SystemExit(f"error: the scratch folder {scratch_dir} is not empty; give a new one")
    root = scratch_dir or Path(tempfile.mkdtemp(prefix="recsys-bench-scale-"))
    scratch = Scratch(root, timeout_s, max_rss_gb)
    steps: dict[str, Any] = {}
    result: dict[str, Any] = {
        "note": "wall-clock on a shared 2-core machine, other work running: see load_1m",
        "cpu_count": os.cpu_count(),
        "rows": rows,
        "full_size": rows == HM.rows,
        "settings": {
            "train_batches": train_batches,
            "val_batches": val_batches,
            "sample_users": sample_users,
            "eval_budget_s": eval_budget_s,
            "timeout_s": timeout_s,
            "max_rss_gb": max_rss_gb,
            "scratch": str(root) if scratch_dir else "temporary, deleted",
        },
        "env": {"note": "every command ran with these on top of the bench's environment"}
        | scratch.env,
        "steps": steps,
    }
    runners = {
        "data-hm": lambda: data_step("hm", rows, scratch, keep=True),
        "data-ml-20m": lambda: data_step("ml-20m", rows, scratch, keep=False),
        "data-ml-32m": lambda: data_step("ml-32m", rows, scratch, keep=False),
        "train": lambda: train_step(scratch, train_batches, val_batches),
        "evaluate-sample": lambda: evaluate_run("evaluate-sample", scratch, sample_users),
        "evaluate-all": lambda: evaluate_all_step(
            scratch, steps["evaluate-sample"], eval_budget_s
        ),
        "predict": lambda: predict_step(scratch),
    }
    try:
        for step in STEPS:
            needed = NEEDS.get(step)
            if step in skip:
                steps[step] = {"skipped": "--skip"}
            elif needed and "wall_s" not in steps.get(needed, {}):
                steps[step] = {"skipped": f"needs {needed}, which did not run"}
            else:
                print(f"== {step}", flush=True)
                try:
                    steps[step] = runners[step]()
                except StepFailed as failed:
                    steps[step] = {"failed": str(failed), **failed.record}
                    print(f"{step} FAILED ({failed}):", *failed.record["log_tail"], sep="\n")
                print(f"{step}: {summary(steps[step])}", flush=True)
            result["targets"] = check_targets(steps)
            write_json(result, output)
    finally:
        if scratch_dir is None:
            shutil.rmtree(root, ignore_errors=True)
    return result


def summary(step: dict[str, Any]) -> str:
    """One line of a step's main figures."""
    if "wall_s" not in step:
        return step.get("failed") or step.get("skipped") or step.get("label", "")
    parts = [f"{step['wall_s']:.1f} s wall", f"peak RSS {step['peak_rss_mb']:.0f} MB"]
    for key in ("tokens_per_s", "n_users", "label"):
        if key in step:
            value = step[key]
            parts.append(f"{key} {value:,.0f}" if isinstance(value, float) else f"{key} {value}")
    return ", ".join(parts)


def _env_default(name: str, default: str) -> str:
    return os.environ.get(name) or default


def main(argv: list[str] | None = None) -> None:
    """``make bench BENCH=scale`` (no options: the full measurement, or the RECSYS_BENCH_*
    variables), or the options below."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    child = sub.add_parser("train-child", help="one cut epoch of training (a step's process)")
    child.add_argument("--config", type=Path, required=True)
    child.add_argument("--batches", type=int, required=True)
    child.add_argument("--val-batches", type=int, required=True)
    child.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--rows", type=int, default=int(_env_default("RECSYS_BENCH_ROWS", str(HM.rows)))
    )
    parser.add_argument("--skip", default=_env_default("RECSYS_BENCH_SKIP", ""))
    parser.add_argument("--scratch", type=Path, default=os.environ.get("RECSYS_BENCH_SCRATCH"))
    parser.add_argument("--output", type=Path, default=REPORTS_DIR / "bench" / "scale.json")
    parser.add_argument("--train-batches", type=int, default=TRAIN_BATCHES)
    parser.add_argument("--val-batches", type=int, default=VAL_BATCHES)
    parser.add_argument("--sample-users", type=int, default=SAMPLE_USERS)
    parser.add_argument("--eval-budget-s", type=float, default=EVAL_BUDGET_S)
    parser.add_argument("--timeout-s", type=float, default=TIMEOUT_S)
    parser.add_argument("--max-rss-gb", type=float, default=MAX_RSS_GB)
    args = parser.parse_args([] if argv is None else argv)
    if args.command == "train-child":
        train_child(args.config, args.batches, args.val_batches, args.out)
        return
    result = run_bench(
        rows=args.rows,
        skip=tuple(s.strip() for s in args.skip.split(",") if s.strip()),
        output=args.output,
        scratch_dir=args.scratch,
        train_batches=args.train_batches,
        val_batches=args.val_batches,
        sample_users=args.sample_users,
        eval_budget_s=args.eval_budget_s,
        timeout_s=args.timeout_s,
        max_rss_gb=args.max_rss_gb,
    )
    for target in result["targets"]:
        print(f"target {target['step']} {target['figure']} {target['target']}: {target['value']}")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main(sys.argv[1:])

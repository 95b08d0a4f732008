"""Two-rank DDP training on CPU (gloo): one resume plan for all ranks, whichever launcher starts
them, and validation metrics of two ranks equal to those of one process on the same weights.

torchrun and a simulated ``srun`` start both ranks at once (the two ways the ranks meet in the
rendezvous store: torchrun's agent store, rank 0's own server); the ranks that Lightning starts
itself from one command replay rank 0's decisions (tested here in-process; the one-command DDP
run itself is in test_train.py)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import yaml
from ddp_worker import Probe

from recsys.cli import RecsysError
from recsys.modeling import distributed
from recsys.modeling import training
from recsys.modeling.runs import LAST_CKPT
from recsys.modeling.synthetic import write_synthetic_processed

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="torch.distributed with gloo is not available",
)

PROJ_ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("ddp_worker.py")
TINY = {"d_model": 16, "n_layers": 1, "max_len": 20, "batch_size": 16, "max_epochs": 2}
#: Variables of launchers and of Lightning's own DDP that must not leak into a launched job.
LAUNCH_VARS = ("RANK", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class Interrupt(pl.Callback):
    """Stops training as a kill would, after epoch 0 and its checkpoint."""

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == 1:
            raise RuntimeError("interrupted")


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    """Processed data, the config, and two runs: one interrupted after epoch 0, one finished."""
    root = tmp_path_factory.mktemp("ddp")
    write_synthetic_processed(root / "processed", "syn", n_users=60, n_items=40, n_events=1500)
    (root / "configs").mkdir()
    (root / "configs" / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    common = dict(
        processed_root=root / "processed",
        models_dir=root / "runs",
        configs_dir=root / "configs",
        accelerator="cpu",
        progress_bar=False,
    )
    with pytest.raises(RuntimeError, match="interrupted"):
        training.train("syn", "tiny", run_name="interrupted", callbacks=[Interrupt()], **common)
    training.train("syn", "tiny", run_name="finished", max_epochs=1, **common)
    return {"root": root, "runs": root / "runs" / "syn"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(launcher: str, spec: dict[str, Any], folder: Path) -> list[dict[str, Any]]:
    """Run the worker on two CPU ranks started by ``launcher``; each rank's records, by rank."""
    spec_path = folder / "spec.json"
    spec_path.write_text(json.dumps(spec))
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in LAUNCH_VARS and not k.startswith(("SLURM_", "TORCHELASTIC_"))
    }
    env.update(PYTHONPATH=str(PROJ_ROOT), OMP_NUM_THREADS="1")
    worker = [sys.executable, str(WORKER), str(spec_path)]
    if launcher == "torchrun":
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        commands = [[*torchrun, "--nproc-per-node", "2", *worker[1:]]]
        envs = [env]
    else:  # what srun sets for two tasks on one node
        job = {"SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2", "SLURM_NNODES": "1"}
        job.update(SLURM_JOB_ID="4242", SLURM_JOB_NAME="ddp-test", SLURM_NODEID="0")
        job.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
        commands = [worker, worker]
        envs = [{**env, **job, "SLURM_PROCID": str(r), "SLURM_LOCALID": str(r)} for r in (0, 1)]
    procs = [
        subprocess.Popen(c, env=e, cwd=PROJ_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for c, e in zip(commands, envs)
    ]
    outputs = [proc.communicate(timeout=240)[0].decode(errors="replace") for proc in procs]
    for proc, output in zip(procs, outputs):
        assert proc.returncode == 0, output[-4000:]
        assert "sync_dist" not in output  # the metrics are reduced before they are logged
    records = [json.loads((folder / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in records] == [0, 1]
    return [r["runs"] for r in records]


def one_process_validation(run_dir: Path, processed: Path) -> tuple[dict[str, float], list[int]]:
    """Validation metrics and scored users of one process on the weights of ``last.ckpt``."""
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    module, data = training.lightning_parts(cfg, training.build_inputs(cfg, processed))
    module.load_state_dict(torch.load(run_dir / LAST_CKPT, weights_only=True)["state_dict"])
    probe = Probe()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        callbacks=[probe],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.validate(module, datamodule=data, verbose=False)
    (epoch,) = probe.record["epochs"].values()
    return module.epoch_metrics, epoch["users"]


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["torchrun", "srun"])
def test_ranks_share_rank_zeros_plan_and_validate_like_one_process(setup, tmp_path, launcher):
    models = tmp_path / "models" / "syn"
    for name in ("bad", "changed", "resumed"):
        shutil.copytree(setup["runs"] / "interrupted", models / name)
    shutil.copytree(setup["runs"] / "finished", models / "finished")
    changed = {"lr": 0.01}
    runs = [
        {"name": "bad", "overrides": changed, "resume": True},  # --resume, other config: error
        {"name": "finished", "max_epochs": 1},  # finished with this config: done
        {"name": "changed", "overrides": changed, "slow": True},  # other config: fresh
        {"name": "resumed"},  # interrupted with this config: resume from last.ckpt
        {"name": "resumed"},  # now finished: done
    ]
    spec = {
        "runs": runs,
        "processed": str(setup["root"] / "processed"),
        "models": str(models.parent),
        "configs": str(setup["root"] / "configs"),
        "out": str(tmp_path),
    }
    zero, one = launch(launcher, spec, tmp_path)

    # rank 0 alone decides, and both ranks act on its decision
    assert [r["decided"] for r in zero] == [True] * 5
    assert [r["decided"] for r in one] == [False] * 5
    for r in (zero, one):
        assert "differs from" in r[0]["error"]
        assert [x.get("trained") for x in r[1:]] == [False, True, True, False]
        assert r[2]["ckpt_path"] is None and r[2]["start_epoch"] == 0
        assert r[3]["ckpt_path"] == str(models / "resumed" / LAST_CKPT)
        assert r[3]["start_epoch"] == 1
    assert zero[0]["error"] == one[0]["error"]
    assert yaml.safe_load((models / "changed" / "config.yaml").read_text())["lr"] == 0.01
    assert json.loads((models / "resumed" / "metrics.json").read_text())["epochs_run"] == 2

    processed = setup["root"] / "processed"
    for index, name in ((2, "changed"), (3, "resumed")):
        assert set(zero[index]["epochs"]) == {"1"} | ({"0"} if name == "changed" else set())
        for epoch in zero[index]["epochs"]:
            first, second = zero[index]["epochs"][epoch], one[index]["epochs"][epoch]
            # each validation example is scored once, on one of the ranks
            assert not set(first["users"]) & set(second["users"])
            # both ranks log the reduced metrics (early stopping and checkpoints agree)
            assert first["metrics"] == second["metrics"]
        # the last epoch's weights are last.ckpt: one process validates them the same, on the
        # same batches (only the float64 sums over them add up in another order)
        metrics, users = one_process_validation(models / name, processed)
        last = zero[index]["epochs"]["1"], one[index]["epochs"]["1"]
        assert sorted(last[0]["users"] + last[1]["users"]) == sorted(users)
        for key in ("val_loss", "val_ndcg@10", "val_hr@10"):
            assert last[0]["metrics"][key] == pytest.approx(metrics[key], rel=1e-12)


def test_slurm_ranks_other_than_zero_are_not_global_zero(monkeypatch):
    job = {"SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2", "SLURM_JOB_NAME": "train"}
    for key, value in {**job, "SLURM_PROCID": "1", "SLURM_LOCALID": "1"}.items():
        monkeypatch.setenv(key, value)
    for key in LAUNCH_VARS:
        monkeypatch.delenv(key, raising=False)
    assert not distributed.is_global_zero()
    monkeypatch.setenv("SLURM_PROCID", "0")
    assert distributed.is_global_zero()


@pytest.fixture()
def no_launcher(monkeypatch) -> None:
    for key in (*LAUNCH_VARS, "TORCHELASTIC_RUN_ID", "SLURM_NTASKS"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv(distributed.PLANS_ENV, "")  # and what the test leaves there goes


def test_ranks_lightning_starts_take_rank_zeros_decisions_in_order(
    no_launcher, monkeypatch, tmp_path
):
    """Lightning starts ranks 1.. from rank 0's first ``fit`` as copies of the command: they take
    the decisions rank 0 made up to it (errors and finished runs before it too), in order."""
    runs = [tmp_path / name for name in ("bad", "finished", "changed", "later")]

    def refused() -> str:
        raise RecsysError("--resume: the config differs")

    with pytest.raises(RecsysError, match="differs"):
        distributed.agree_on_plan(runs[0], refused)
    for run, plan in zip(runs[1:], ("done", "fresh", "resume")):
        assert distributed.agree_on_plan(run, lambda plan=plan: plan) == plan

    def never() -> str:
        raise AssertionError("a rank other than 0 decided")

    rank0 = os.getpid()
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(os, "getppid", lambda: rank0)  # started by rank 0, with its environment
    with pytest.raises(RecsysError, match="differs"):
        distributed.agree_on_plan(runs[0], never)
    assert distributed.agree_on_plan(runs[1], never) == "done"
    assert distributed.agree_on_plan(runs[2], never) == "fresh"
    # after the first fit the process group exists, and decisions go by broadcast
    with pytest.raises(RecsysError, match="cannot learn"):
        distributed.agree_on_plan(runs[3], never)


def test_a_rank_started_without_a_launcher_cannot_decide_alone(no_launcher, monkeypatch, tmp_path):
    """A second node started by hand (NODE_RANK=1) has nobody to learn rank 0's plan from, and
    nor has a process whose environment holds another process's decisions."""
    assert distributed.agree_on_plan(tmp_path, lambda: "fresh") == "fresh"  # rank 0 keeps it
    monkeypatch.setenv("NODE_RANK", "1")
    with pytest.raises(RecsysError, match="torchrun or srun"):
        distributed.agree_on_plan(tmp_path, lambda: pytest.fail("rank 1 must not decide"))


def test_exit_destroys_the_process_group_before_the_stores_go(monkeypatch):
    """What the exit handler does in every rank of a job, on a one-rank gloo group and a store."""
    store = torch.distributed.TCPStore("127.0.0.1", free_port(), 1, is_master=True)
    monkeypatch.setattr(distributed, "_stores", [store])
    torch.distributed.init_process_group("gloo", store=store, rank=0, world_size=1)
    destroyed = []
    real_destroy = torch.distributed.destroy_process_group

    def destroy(*args: Any) -> None:
        destroyed.append(len(distributed._stores))  # the stores are still held at this point
        real_destroy(*args)

    monkeypatch.setattr(torch.distributed, "destroy_process_group", destroy)
    distributed._close_connections()
    assert destroyed == [1]
    assert not torch.distributed.is_initialized() and distributed._stores == []
    distributed._close_connections()  # a second call (or one with no group) does nothing
    assert destroyed == [1]


@pytest.mark.slow
def test_num_nodes_below_one_is_a_user_error(setup):
    with pytest.raises(RecsysError, match="--num-nodes must be at least 1"):
        training.train("syn", "tiny", num_nodes=0, configs_dir=setup["root"] / "configs")

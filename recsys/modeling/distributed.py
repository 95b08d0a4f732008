"""Which rank of a distributed (DDP) training job this process is, and one resume plan for all.

Every rank runs ``train()`` from the start. Each used to decide on its own whether to start the
run afresh, resume it or skip it, reading a folder that rank 0 was changing at the same time
(deleting a stale run, rewriting ``config.yaml``), and under SLURM every rank took itself for
rank 0 and changed it too: that the ranks agreed hung on the order of those reads and writes.
Now global rank 0 alone decides (and alone deletes and writes), and every other rank takes its
decision, or its error.

The decision has to be known before ``Trainer.fit``, which takes the checkpoint to resume from,
and Lightning builds the process group only inside ``fit``. So the decision travels by what
exists at that point for each way the ranks are started:

* A process group already exists (the next run of ``--seeds`` in the same processes): a
  broadcast over it.
* torchrun or SLURM (``srun``) start every rank at once: they meet in torch.distributed's own
  rendezvous store at the address Lightning's process group will use (torchrun's agent store; or
  rank 0's server, which the process group then shares, so no other port is opened).
* ``--devices N --strategy ddp`` from one command: Lightning starts ranks 1..N-1 from rank 0's
  ``Trainer.fit``, after rank 0 decided, as copies of the command; they inherit rank 0's decisions
  through the environment and take them in order.

Files in the run folder would serve every launcher, but a decision left there by an earlier job
cannot be told from this job's without a job id, which torchrun does not give by default.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from recsys.cli import RecsysError, fail

#: Rank 0's decisions, for the ranks Lightning starts from its ``Trainer.fit``.
PLANS_ENV = "RECSYS_RANK0_PLANS"
#: Rendezvous stores stay open: rank 0's server carries the process group built later.
_stores: list[Any] = []


@atexit.register
def _close_connections() -> None:
    """Destroy the process group, then let go of the stores, while the interpreter still runs.

    Lightning destroys only NCCL groups at exit. Left to interpreter teardown, a gloo group and
    rank 0's store server are freed in no fixed order, and now and then a rank's exit aborted
    ("terminate called without an active exception", exit 134).
    """
    dist = sys.modules.get("torch.distributed")  # never imported: nothing to close
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _stores.clear()


def launcher() -> Any | None:
    """Lightning's cluster environment when torchrun or SLURM started this process, else None."""
    if not {"TORCHELASTIC_RUN_ID", "SLURM_NTASKS"} & os.environ.keys():
        return None  # neither launcher: spare the seconds of importing Lightning
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    # Lightning's own order: torchrun may run inside a SLURM allocation.
    for environment in (TorchElasticEnvironment, SLURMEnvironment):
        if environment.detect():
            return environment()
    return None


def is_global_zero() -> bool:
    """Rank zero of a (possibly launched) distributed job, known before the Trainer exists."""
    found = launcher()
    if found is not None:
        return found.global_rank() == 0
    return (
        int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", 0))) == 0
        and int(os.environ.get("NODE_RANK", 0)) == 0
    )


def agree_on_plan(run_dir: Path, decide: Callable[[], str]) -> str:
    """Run ``decide`` on global rank 0 only; every rank returns its plan (or raises its error)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        box = [_decision(decide) if dist.get_rank() == 0 else None]
        dist.broadcast_object_list(box, src=0)
        return _outcome(box[0])
    found = launcher()
    if found is not None and found.world_size() > 1:
        return _outcome(_meet(found, run_dir, decide))
    if not is_global_zero():
        return _outcome(_inherit(run_dir))
    decision = _decision(decide)
    _pass_on(run_dir, decision)
    return _outcome(decision)


def _decision(decide: Callable[[], str]) -> dict[str, str]:
    """Rank 0's plan, or the user error it raised, so that no rank waits for a plan in vain."""
    try:
        return {"plan": decide()}
    except RecsysError as err:
        return {"error": str(err)}


def _outcome(decision: dict[str, str]) -> str:
    if "error" in decision:
        raise fail(decision["error"])
    return decision["plan"]


def _meet(found: Any, run_dir: Path, decide: Callable[[], str]) -> dict[str, str]:
    """Rank 0's decision through the rendezvous store of this torchrun or SLURM job."""
    import torch.distributed as dist

    rank, world = found.global_rank(), found.world_size()
    # The address Lightning sets before it builds the process group (SLURM derives it).
    os.environ["MASTER_ADDR"] = found.main_address
    os.environ["MASTER_PORT"] = str(found.main_port)
    store, _, _ = next(dist.rendezvous("env://", rank=rank, world_size=world))
    # One key per decision of this process (every rank asks in the same order) and per attempt:
    # torchrun restarts failed workers against the same agent store.
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    key = f"recsys/plan/{attempt}/{len(_stores)}/{run_dir}"
    _stores.append(store)
    if rank == 0:
        decision = _decision(decide)
        store.set(key, json.dumps(decision))
        # rank 0 may exit right after (a finished run), which closes its server: wait for all
        store.wait([f"{key}/read/{other}" for other in range(1, world)])
    else:
        decision = json.loads(store.get(key))
        store.set(f"{key}/read/{rank}", "1")
    return decision


def _pass_on(run_dir: Path, decision: dict[str, str]) -> None:
    """Keep rank 0's decisions in its environment for the ranks Lightning may start.

    They start at the first ``fit`` and run the command again from the start, so they need the
    decisions up to that one (finished runs and errors before it); later ones go by broadcast.
    """
    shared = json.loads(os.environ.get(PLANS_ENV) or "{}")
    plans = shared["plans"] if shared.get("parent") == os.getpid() else []
    if all(earlier.get("plan", "done") == "done" for _, earlier in plans):
        plans.append([str(run_dir), decision])
        os.environ[PLANS_ENV] = json.dumps({"parent": os.getpid(), "plans": plans})


def _inherit(run_dir: Path) -> dict[str, str]:
    """The next decision of rank 0, for a rank that Lightning started from rank 0's ``fit``."""
    shared = json.loads(os.environ.get(PLANS_ENV) or "{}")
    plans = shared["plans"] if shared.get("parent") == os.getppid() else []
    if not plans or plans[0][0] != str(run_dir):
        raise fail(
            f"this process is not rank 0 and cannot learn rank 0's resume decision for {run_dir}; "
            "start multi-node training with torchrun or srun (see the README)"
        )
    os.environ[PLANS_ENV] = json.dumps({**shared, "plans": plans[1:]})
    return plans[0][1]

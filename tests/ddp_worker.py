"""One rank of the two-process training jobs of test_ddp.py: ``python ddp_worker.py SPEC``.

Started by torchrun or by a simulated ``srun``, it trains
the runs the JSON file SPEC lists, one after another, and writes what this rank did to
``<out>/rank<R>.json``: whether it decided the plan itself, the checkpoint it resumed from, and
per epoch the validation users it scored and the metrics it logged.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch.distributed as dist

from recsys.cli import RecsysError
from recsys.modeling import training


class Probe(pl.Callback):
    """What one rank resumed from, and per epoch the validation users it saw and the metrics."""

    def __init__(self) -> None:
        self.record: dict[str, Any] = {"epochs": {}}

    def _epoch(self, trainer: pl.Trainer) -> dict[str, Any]:
        return self.record["epochs"].setdefault(str(trainer.current_epoch), {"users": []})

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.record["ckpt_path"] = str(trainer.ckpt_path) if trainer.ckpt_path else None
        self.record["start_epoch"] = trainer.current_epoch

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, *_) -> None:
        self._epoch(trainer)["users"].extend(batch["users"].tolist())

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch(trainer)["metrics"] = dict(pl_module.epoch_metrics)


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    plan_resume, current = training.plan_resume, {}

    def recording_plan_resume(*args: Any) -> str:
        current["decided"] = True
        if current["slow"]:  # rank 0 decides late: the other rank must wait, not decide alone
            time.sleep(0.5)
        return plan_resume(*args)

    training.plan_resume = recording_plan_resume
    records = []
    for run in spec["runs"]:
        probe = Probe()
        current.update(decided=False, slow=run.get("slow", False))
        record: dict[str, Any] = {"run": run["name"]}
        try:
            training.train(
                "syn",
                "tiny",
                overrides=run.get("overrides"),
                resume=run.get("resume"),
                max_epochs=run.get("max_epochs"),
                run_name=run["name"],
                accelerator="cpu",
                devices="2",
                strategy="ddp",
                processed_root=Path(spec["processed"]),
                models_dir=Path(spec["models"]),
                configs_dir=Path(spec["configs"]),
                progress_bar=False,
                callbacks=[probe],
            )
            record.update(probe.record, trained="start_epoch" in probe.record)
        except RecsysError as err:
            record["error"] = str(err)
        records.append({**record, "decided": current["decided"]})
    rank = dist.get_rank() if dist.is_initialized() else 0
    path = Path(spec["out"]) / f"rank{rank}.json"
    path.write_text(json.dumps({"rank": rank, "runs": records}))


if __name__ == "__main__":
    main(sys.argv[1])

"""Where one training epoch's time goes, per dataset and precision, and the whole epoch.

The parts are timed one after another in one process, over the epoch's real batches: reading
the batches, the blocks' forward and backward (the encoder alone), the full-softmax output
layer's forward and backward (the loss minus the encoder), the optimizer step, and validation
(full ranking of every validation user). The whole epoch is then timed through the Trainer
(``train`` for a few epochs, median epoch of ``logs/metrics.csv``), so what the parts leave out
of it is Lightning's own work (callbacks, EMA, clipping, checkpoints, logging).

Both use the config ``make train`` trains: the dataset's tuned one where it exists.
``make bench BENCH=epoch`` writes ``reports/bench/epoch.json``;
``python -m benchmarks.bench_epoch --datasets amazon-beauty --set batch_size=256`` one case.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.bench_train import peak_rates
from recsys.config import PROCESSED_DATA_DIR, REPORTS_DIR
from recsys.io import write_json
from recsys.modeling.configs import parse_sets
from recsys.modeling.training import build_inputs, lightning_parts, train, training_config

DATASETS = ("ml-100k", "amazon-beauty")
CONFIG = "sasrec-ce"


def epoch_parts(cfg: dict[str, Any], precision: str) -> dict[str, float]:
    """Seconds of each part of one epoch, measured on the epoch's own batches."""
    module, data = lightning_parts(cfg, build_inputs(cfg))
    model = module.model.train()
    optimizer = torch.optim.AdamW(model.param_groups(cfg["weight_decay"]), lr=cfg["lr"])
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed")
    parts = dict.fromkeys(("data", "blocks", "output_layer", "optimizer", "validation"), 0.0)
    start = time.perf_counter()
    batches = list(data.train_dataloader())
    parts["data"] = time.perf_counter() - start
    for batch in batches:
        start = time.perf_counter()
        with autocast:
            hidden = model.encode(batch["items"], None, model.item_table())
        hidden.float().sum().backward()
        encoder = time.perf_counter() - start
        optimizer.zero_grad(set_to_none=True)
        start = time.perf_counter()
        with autocast:
            loss = model.loss(batch["items"], batch["targets"])
        loss.backward()
        parts["output_layer"] += time.perf_counter() - start - encoder
        parts["blocks"] += encoder
        start = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        parts["optimizer"] += time.perf_counter() - start
    model.eval()
    start = time.perf_counter()
    with torch.no_grad():
        for index, batch in enumerate(data.val_dataloader()):
            module.validation_step(batch, index)
    parts["validation"] = time.perf_counter() - start
    return parts


def trainer_epoch(dataset: str, overrides: dict[str, Any], precision: str, epochs: int) -> dict:
    """Median epoch and training seconds of a real run of ``epochs`` epochs."""
    with tempfile.TemporaryDirectory() as models:
        run_dir = train(
            dataset,
            CONFIG,
            {**overrides, "max_epochs": epochs},
            resume=False,
            precision=precision,
            accelerator="cpu",
            models_dir=Path(models),
            progress_bar=False,
        )
        with open(run_dir / "logs" / "metrics.csv") as rows:
            table = list(csv.DictReader(rows))
    return {
        key: statistics.median(float(row[key]) for row in table) for key in ("epoch_s", "train_s")
    }


def bench(datasets: list[str], sets: list[str], epochs: int) -> dict[str, Any]:
    overrides = parse_sets(sets)
    out: dict[str, Any] = {
        "config": CONFIG,
        "overrides": overrides,
        "threads": torch.get_num_threads(),
        "matmul_gflops": peak_rates(),
        "datasets": {},
    }
    for dataset in datasets:
        if not (PROCESSED_DATA_DIR / dataset / "stats.json").exists():
            print(f"skip {dataset}: run 'make data DATASET={dataset}' first", flush=True)
            continue
        cfg = training_config(CONFIG, dataset, overrides)  # what the Trainer run trains too
        result = {}
        for precision in out["matmul_gflops"]:
            parts = epoch_parts(cfg, precision)
            whole = trainer_epoch(dataset, overrides, precision, epochs)
            measured = sum(parts.values())
            result[precision] = {
                "parts_s": parts,
                **whole,
                "lightning_and_rest_s": whole["epoch_s"] - measured,
            }
            print(f"{dataset} {precision}: {result[precision]}", flush=True)
        out["datasets"][dataset] = result
    return out


def main() -> None:
    """``make bench BENCH=epoch``: the shipped sasrec-ce on ml-100k and amazon-beauty."""
    write_json(bench(list(DATASETS), [], epochs=3), REPORTS_DIR / "bench" / "epoch.json")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--set", action="append", default=[], help="override: --set lr=0.002")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of the Trainer run")
    parser.add_argument("--output", default=None, help="write the JSON here (default: print)")
    args = parser.parse_args()
    names = [name.strip() for name in args.datasets.split(",") if name.strip()]
    result = bench(names, args.set, args.epochs)
    if args.output:
        write_json(result, Path(args.output))

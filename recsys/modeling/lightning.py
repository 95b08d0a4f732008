"""Lightning wiring for :mod:`recsys.modeling.models`: data windows, the training module, records.

Data go in as :class:`recsys.processed.Sequences` (training pieces, validation histories): slices
of one flat item array each, never per-user arrays or paths, so tests build them synthetically
and the windows of an epoch are index rows into that array.

* Training: each user's sequence is cut, from its end backwards, into windows of at most
  ``max_len + 1`` items; a window predicts every item from the ones before it, so one epoch
  predicts every training item exactly once (``train_windows: last`` keeps only the most recent
  window per user, like the original SASRec). Batches hold windows of similar length and are
  trimmed to their longest window, which the model's padding invariance makes exact.
* Validation: full-ranking NDCG@10 and HR@10 of the held-out item over items 1..n_items with the
  user's history masked, ties counted against the target.
"""

from __future__ import annotations

import csv
import io
import math
import resource
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.plugins import MixedPrecision
from lightning.pytorch.plugins.io import TorchCheckpointIO
from loguru import logger
from torch import Tensor
from torch.optim.swa_utils import get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Dataset, Sampler

from recsys.io import atomic_path, write_json, write_text
from recsys.modeling.metrics import hit_rate_at_k, ndcg_at_k, next_item_ranks
from recsys.modeling.models import ModelConfig, build_model
from recsys.processed import EvalExamples, Sequences, left_pad

METRIC = "val_ndcg@10"
CSV_COLUMNS = (
    "epoch",
    "train_loss",
    "val_loss",
    "val_ndcg@10",
    "val_hr@10",
    "lr",
    "epoch_s",
    "train_s",
    "train_tokens",
)


# -------------------------------------------------------------------------------------- data
class SequenceWindows(Dataset):
    """Training windows over users' sequences; item ``i`` predicts item ``i + 1``.

    A window is a ``[user, start, end)`` row into the one items array of ``sequences``, so the
    windows of every user cost three integers each, and a sequence (or cold-start piece) of one
    item yields none.
    """

    def __init__(self, sequences: Sequences, max_len: int, last_only: bool = False) -> None:
        kept = sequences.take(sequences.lengths() >= 2)
        self.items = kept.items
        self.windows = cut_windows(kept.users, kept.starts, kept.lengths(), max_len, last_only)

    def __len__(self) -> int:
        return len(self.windows)

    def lengths(self) -> np.ndarray:
        return self.windows[:, 2] - self.windows[:, 1]

    def n_targets(self) -> int:
        return int((self.lengths() - 1).sum())

    def __getitem__(self, index: int) -> tuple[int, np.ndarray]:
        user, start, end = self.windows[index]
        return int(user), self.items[start:end]


def cut_windows(
    users: np.ndarray,
    starts: np.ndarray,
    lengths: np.ndarray,
    max_len: int,
    last_only: bool = False,
) -> np.ndarray:
    """``[user, start, end)`` rows of the sequences at ``starts`` (each of ``lengths`` >= 2):
    per sequence, windows of at most ``max_len + 1`` items cut back from its end, ``max_len``
    apart, so every item but the first is a target exactly once. No loop over users."""
    per_user = np.ones_like(lengths) if last_only else (lengths - 2) // max_len + 1
    owner = np.repeat(np.arange(len(lengths)), per_user)
    back = np.arange(len(owner)) - np.repeat(np.cumsum(per_user) - per_user, per_user)
    ends = lengths[owner] - back * max_len
    rows = [users[owner], starts[owner] + np.maximum(0, ends - max_len - 1), starts[owner] + ends]
    return np.stack(rows, axis=1).astype(np.int64).reshape(-1, 3)


def collate_windows(batch: list[tuple[int, np.ndarray]]) -> dict[str, Tensor]:
    """Left-pad windows to the longest one; inputs are items[:-1], targets items[1:]."""
    width = max(len(tokens) for _, tokens in batch)
    tokens = np.zeros((len(batch), width), dtype=np.int64)
    for row, (_, seq) in enumerate(batch):
        tokens[row, width - len(seq) :] = seq
    tokens = torch.from_numpy(tokens)
    items = tokens[:, :-1]
    return {
        "items": items,
        "targets": tokens[:, 1:].masked_fill(items == 0, 0),  # the first item has no input
        "users": torch.tensor([user for user, _ in batch], dtype=torch.long),
    }


class ValidationExamples(Dataset):
    """Held-out next items with their (full) histories, for masking and for the model input."""

    def __init__(self, examples: EvalExamples, max_len: int) -> None:
        self.examples, self.max_len = examples, max_len

    def __len__(self) -> int:
        return len(self.examples.targets)

    def lengths(self) -> np.ndarray:
        return np.minimum(self.examples.histories.lengths(), self.max_len)

    def __getitem__(self, index: int) -> tuple[int, np.ndarray, int]:
        examples = self.examples
        return int(examples.users[index]), examples.histories[index], int(examples.targets[index])


def make_collate_examples(max_len: int):
    """Collate for validation: the last ``max_len`` history items and the whole history."""

    def collate(batch: list[tuple[int, np.ndarray, int]]) -> dict[str, Tensor]:
        histories = [h for _, h, _ in batch]
        longest = max(1, max(len(h) for h in histories))
        return {
            "items": torch.from_numpy(left_pad(histories, max(1, min(longest, max_len)))),
            "history": torch.from_numpy(left_pad(histories, longest)),
            "targets": torch.tensor([t for _, _, t in batch], dtype=torch.long),
            "users": torch.tensor([u for u, _, _ in batch], dtype=torch.long),
        }

    return collate


def _world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class BucketSampler(Sampler[int]):
    """Seeded, epoch-dependent order in which consecutive ``batch_size`` indices have similar
    lengths (less padding), split across distributed ranks by whole batches.

    Each rank gets the same number of batches (a few are repeated when they do not divide),
    which DDP needs. Only the very last batch may be short, so DataLoader batching lines up.
    """

    def __init__(
        self, lengths: np.ndarray, batch_size: int, seed: int, shuffle: bool = True
    ) -> None:
        self.lengths, self.batch_size = np.asarray(lengths), batch_size
        self.seed, self.shuffle, self.epoch = seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[np.ndarray]:
        n, size = len(self.lengths), self.batch_size
        if not self.shuffle:
            return [np.arange(i, min(i + size, n)) for i in range(0, n, size)]
        rng = np.random.default_rng((self.seed, self.epoch))
        order = rng.permutation(n)
        chunk = size * 32
        batches = []
        for start in range(0, n, chunk):
            part = order[start : start + chunk]
            part = part[np.argsort(-self.lengths[part], kind="stable")]
            batches.extend(part[i : i + size] for i in range(0, len(part), size))
        full = [b for b in batches if len(b) == size]
        short = [b for b in batches if len(b) < size]
        return [full[i] for i in rng.permutation(len(full))] + short

    def _rank_batches(self) -> list[np.ndarray]:
        rank, world = _world()
        batches = self._batches()
        if world > 1 and batches:
            per_rank = math.ceil(len(batches) / world)
            batches = (batches * world)[: per_rank * world]
            batches = batches[rank::world]
            # the (single) short batch goes last so DataLoader batching stays aligned
            batches.sort(key=lambda b: len(b) < self.batch_size)
        return batches

    def __iter__(self) -> Iterator[int]:
        for batch in self._rank_batches():
            yield from batch.tolist()

    def __len__(self) -> int:
        return sum(len(b) for b in self._rank_batches())


class SeqDataModule(pl.LightningDataModule):
    """Training windows and validation examples, over the flat item arrays they slice."""

    def __init__(
        self,
        train_sequences: Sequences,
        valid: EvalExamples,
        max_len: int,
        batch_size: int,
        seed: int = 0,
        num_workers: int = 0,
        last_window_only: bool = False,
        val_batch_size: int = 0,
    ) -> None:
        super().__init__()
        self.train_set = SequenceWindows(train_sequences, max_len, last_window_only)
        self.valid_set = ValidationExamples(valid, max_len)
        self.max_len, self.batch_size = max_len, batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.seed, self.num_workers = seed, num_workers

    def mean_batch_targets(self) -> float:
        """Training targets per batch, averaged over an epoch (``loss_weighting: token``)."""
        n_batches = max(1, math.ceil(len(self.train_set) / self.batch_size))
        return max(1.0, self.train_set.n_targets() / n_batches)

    def _loader(self, dataset: Dataset, sampler: Sampler, collate, batch_size: int) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            collate_fn=collate,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        sampler = BucketSampler(self.train_set.lengths(), self.batch_size, self.seed)
        return self._loader(self.train_set, sampler, collate_windows, self.batch_size)

    def val_dataloader(self) -> DataLoader:
        order = np.argsort(self.valid_set.lengths(), kind="stable")
        sampler = _RankSlice(order, self.val_batch_size)
        collate = make_collate_examples(self.max_len)
        return self._loader(self.valid_set, sampler, collate, self.val_batch_size)


class _RankSlice(Sampler[int]):
    """A fixed order split by whole batches across ranks (validation sums are reduced later)."""

    def __init__(self, order: np.ndarray, batch_size: int) -> None:
        self.order, self.batch_size = order, batch_size

    def _indices(self) -> list[int]:
        rank, world = _world()
        size = self.batch_size
        batches = [self.order[i : i + size] for i in range(0, len(self.order), size)]
        mine = batches[rank::world]
        # the short batch (if any) must be last on this rank for DataLoader batching
        mine = [b for b in mine if len(b) == size] + [b for b in mine if len(b) < size]
        return [int(i) for b in mine for i in b]

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices())

    def __len__(self) -> int:
        return len(self._indices())


# ------------------------------------------------------------------------------------ module
def lr_factor(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Linear warmup, then cosine decay to ``min_ratio`` of the peak learning rate."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class SeqRecModule(pl.LightningModule):
    """Trains any model family (a :class:`~recsys.modeling.models.Recommender`); the run config
    travels in the checkpoint as plain dicts."""

    def __init__(
        self,
        config: dict[str, Any],
        model_config: dict[str, Any],
        item_features: Tensor | None = None,
        item_counts: Tensor | None = None,
        cold_items: np.ndarray | None = None,
        item_codes: Tensor | None = None,
    ) -> None:
        super().__init__()
        self.config, self.model_config = dict(config), dict(model_config)
        self.model = build_model(ModelConfig.from_dict(model_config), item_features, item_codes)
        if item_counts is not None:
            self.model.set_item_counts(item_counts)
        # A scoring model's loss ranks a candidate set; the generative one only ever sees the
        # items of the (cold-cut) training sequences as targets.
        if not self.model.generative and cold_items is not None and len(cold_items):
            self.model.candidate_mask[torch.as_tensor(cold_items, dtype=torch.long)] = False
        self._sums: dict[str, Tensor] = {}
        self.epoch_metrics: dict[str, float] = {}
        self._mean_batch_targets = 1.0

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["recsys"] = {"config": self.config, "model_config": self.model_config}

    def configure_optimizers(self) -> dict[str, Any]:
        cfg = self.config
        # Fused: one kernel per tensor instead of a dozen small ops, which add up over many
        # small steps. Lightning refuses gradient clipping with it under mixed precision.
        fused = not isinstance(self.trainer.precision_plugin, MixedPrecision)
        optimizer = torch.optim.AdamW(
            self.model.param_groups(cfg["weight_decay"]),
            lr=cfg["lr"],
            betas=(0.9, cfg["adam_beta2"]),
            fused=fused or None,
            foreach=None if fused else True,
        )
        total = int(self.trainer.estimated_stepping_batches)
        per_epoch = max(1, total // max(1, self.trainer.max_epochs))
        warmup = max(1, int(round(cfg["warmup_epochs"] * per_epoch)))
        min_ratio = cfg["min_lr_ratio"] if cfg["schedule"] == "cosine" else 1.0
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(step, warmup, total, min_ratio)
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def _add(self, name: str, value: Tensor) -> None:
        value = value.detach().double()
        self._sums[name] = self._sums.get(name, torch.zeros_like(value)) + value

    def on_train_epoch_start(self) -> None:
        self._sums = {}

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = self.model.loss(batch["items"], batch["targets"], batch["users"])
        n_targets = (batch["targets"] > 0).sum()
        self._add("train_loss", loss * n_targets)
        self._add("train_tokens", n_targets)
        # No per-step self.log: with many small steps its bookkeeping is a visible share of the
        # step; the epoch's exact train_loss is logged with the validation metrics.
        if self.config["loss_weighting"] == "token":
            return loss * n_targets / self._mean_batch_targets
        return loss

    def on_train_start(self) -> None:
        self._mean_batch_targets = self.trainer.datamodule.mean_batch_targets()

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        # Scored in float32 under any precision, as evaluate and the service score, so the
        # epoch chosen on validation is the one evaluation would choose.
        with torch.autocast(self.device.type, enabled=False):
            self._validate(batch)

    def _validate(self, batch: dict[str, Tensor]) -> None:
        n_items = self.model.config.n_items
        items, targets = batch["items"], batch["targets"]
        scores = self.model.score(items, batch["users"], batch["history"]).float()
        self._add("val_loss", self.model.validation_loss(items, targets, scores))
        ranks = next_item_ranks(scores, targets, exclude=batch["history"], n_rank=n_items)
        self._add("val_ndcg@10", ndcg_at_k(ranks, 10).sum())
        self._add("val_hr@10", hit_rate_at_k(ranks, 10).sum())
        self._add("val_count", torch.tensor(float(len(targets)), device=targets.device))

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        names = ["train_loss", "train_tokens", "val_loss", "val_ndcg@10", "val_hr@10", "val_count"]
        sums = torch.stack(
            [self._sums.get(n, torch.zeros((), device=self.device)).to(self.device) for n in names]
        ).double()
        sums = self.trainer.strategy.reduce(sums, reduce_op="sum")
        values = dict(zip(names, sums.tolist()))
        tokens, count = max(values["train_tokens"], 1.0), max(values["val_count"], 1.0)
        metrics = {
            "train_loss": values["train_loss"] / tokens,
            "val_loss": values["val_loss"] / count,
            "val_ndcg@10": values["val_ndcg@10"] / count,
            "val_hr@10": values["val_hr@10"] / count,
            "train_tokens": values["train_tokens"],
        }
        self.epoch_metrics = metrics
        self.log_dict(metrics, prog_bar=False, sync_dist=False)
        self._sums = {}


def ema_averaging(decay: float) -> WeightAveraging:
    """EMA of the weights, updated after every step with one foreach ``lerp`` over all tensors.

    Lightning's ``EMAWeightAveraging`` computes ``decay * ema + (1 - decay) * weight`` tensor by
    tensor, two temporaries each per step; this is the same average without them.
    """
    return WeightAveraging(use_buffers=False, multi_avg_fn=get_ema_multi_avg_fn(decay))


# --------------------------------------------------------------------------------- recording
class AtomicCheckpointIO(TorchCheckpointIO):
    """Write checkpoints through a temp file and rename, so a kill -9 never leaves half a file."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options=None) -> None:
        with atomic_path(Path(path)) as tmp:
            super().save_checkpoint(checkpoint, tmp, storage_options)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class RunRecorder(pl.Callback):
    """One row per epoch in ``logs/metrics.csv`` and a running ``metrics.json``.

    Its rows live in the checkpoint (callback state), so after a resume the files are rewritten
    from the epochs the checkpoint has, and a lost epoch's row disappears with it. Epochs that
    are not validated (``val_every`` > 1) have no row, but their time counts in ``elapsed_s``.
    """

    def __init__(self, run_dir: Path, n_params: int, extra: dict[str, Any] | None = None) -> None:
        self.run_dir, self.n_params, self.extra = Path(run_dir), n_params, extra or {}
        self.rows: list[dict[str, float]] = []
        self.elapsed_s, self.peak_rss_mb = 0.0, 0.0
        self._epoch_start = self._train_end = self._counted_until = 0.0

    def state_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "elapsed_s": self.elapsed_s,
            "peak_rss_mb": self.peak_rss_mb,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = [dict(r) for r in state_dict["rows"]]
        self.elapsed_s = float(state_dict["elapsed_s"])
        self.peak_rss_mb = float(state_dict["peak_rss_mb"])

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_start = self._counted_until = time.perf_counter()

    def _count_time(self) -> float:
        """Add the time since it was last counted to ``elapsed_s``; returns now."""
        now = time.perf_counter()
        self.elapsed_s += now - self._counted_until
        self._counted_until = now
        return now

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._count_time()  # after this epoch's validation, if it had one

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._train_end = time.perf_counter()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = getattr(pl_module, "epoch_metrics", {})
        if trainer.sanity_checking or METRIC not in metrics:
            return
        now = self._count_time()  # counted here too: the checkpoint saved next keeps it
        self.peak_rss_mb = max(self.peak_rss_mb, peak_rss_mb())
        row = {
            "epoch": trainer.current_epoch,
            **{k: metrics[k] for k in CSV_COLUMNS[1:5]},
            "lr": trainer.optimizers[0].param_groups[0]["lr"],
            "epoch_s": now - self._epoch_start,
            "train_s": self._train_end - self._epoch_start,
            "train_tokens": metrics["train_tokens"],
            "elapsed_s": self.elapsed_s,
        }
        self.rows = [r for r in self.rows if r["epoch"] < row["epoch"]] + [row]
        if trainer.is_global_zero:
            self.write()
            logger.info(
                f"epoch {row['epoch']}: train_loss {row['train_loss']:.4f} "
                f"val_loss {row['val_loss']:.4f} val_ndcg@10 {row['val_ndcg@10']:.4f} "
                f"val_hr@10 {row['val_hr@10']:.4f} ({row['epoch_s']:.1f} s)"
            )

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero and self.rows:
            self.write(finished=True)

    def summary(self, finished: bool = False) -> dict[str, Any]:
        best = max(self.rows, key=lambda r: (r[METRIC], -r["epoch"]))
        train_s = sum(r["train_s"] for r in self.rows)
        epochs_run = int(self.rows[-1]["epoch"]) + 1  # up to the last validated epoch
        return {
            **self.extra,
            "finished": finished,
            "best_epoch": int(best["epoch"]),
            "best_val_ndcg@10": best["val_ndcg@10"],
            "best_val_hr@10": best["val_hr@10"],
            "epochs_run": epochs_run,
            "seconds_per_epoch": self.rows[-1]["elapsed_s"] / epochs_run,
            "train_seconds_per_epoch": train_s / len(self.rows),
            "tokens_per_s": sum(r["train_tokens"] for r in self.rows) / max(train_s, 1e-9),
            "peak_rss_mb": self.peak_rss_mb,
            "n_params": self.n_params,
            "time_to_best_s": best["elapsed_s"],
            "total_time_s": self.elapsed_s,
        }

    def write(self, finished: bool = False) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(self.rows)
        write_text(buffer.getvalue(), self.run_dir / "logs" / "metrics.csv")
        write_json(self.summary(finished), self.run_dir / "metrics.json")

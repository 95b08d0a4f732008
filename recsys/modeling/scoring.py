"""Scoring and ranking library: next-item scores in batches of users, reduced at once.

Every model (trained run or baseline) is a *scorer*: ``score(item_seq[B, L]) -> [B, C]``.
:func:`rank_examples` scores a split batch by batch and reduces each batch's score matrix to the
target's pessimistic rank and the top list (:func:`recsys.modeling.metrics.rank_batch`), so memory
grows with batch x catalogue, never with users x items. Evaluation, predict, the figures, the
service and the benchmarks all score through here, on the device that
:func:`recsys.devices.resolve_device` picks.

Memory: a batch's float32 scores are ``batch x (n_catalogue + 1) x 4`` bytes, and ranking holds
one more matrix of that size (the masked copy; the comparison with the target's score is counted
a few rows at a time). :func:`fitting_batch_size` shrinks the batch so that one score matrix
stays within :data:`SCORE_BUDGET` (256 MiB): 128 users of a 105,542-item catalogue (H&M) take
54 MB and keep their batch, while ``--batch-size 4096`` there drops to 635 users, and ranking then
peaks at about twice the budget. The sampled negatives need no padded users x history matrix
either (:func:`split_negatives`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from loguru import logger

from recsys.cli import fail
from recsys.cpu_load import IDLE_CORES, cores_busy_elsewhere
from recsys.config import SCORE_BUDGET
from recsys.devices import default_device
from recsys.modeling import metrics
from recsys.modeling.models import Recommender
from recsys.processed import EvalExamples, Sequences

#: Users per scoring batch: on 2 CPU cores 128 beat 256 and 512 (smaller attention buffers).
BATCH_SIZE = 128


@dataclass
class Ranked:
    """One model on one split: per-user target ranks and top lists (CPU tensors)."""

    users: np.ndarray
    ranks: torch.Tensor  # [U] pessimistic 0-based rank of the target
    top_items: torch.Tensor  # [U, k_max]
    sampled_ranks: torch.Tensor | None = None  # [U] rank among the user's sampled negatives


def context_length(scorer: Any) -> int | None:
    """How many recent items the scorer reads: a trained model's max_len, else all (None)."""
    config = getattr(scorer, "config", None)
    return getattr(config, "max_len", None)


def score_columns(scorer: Any, n_items: int) -> int:
    """Columns of the scorer's score matrix: its catalogue plus padding. Trained decoders (in
    their config) and baselines know their catalogue; any other scorer counts ``n_items``."""
    config = getattr(scorer, "config", None)
    n_catalogue = getattr(scorer, "n_catalogue", None) or getattr(config, "n_catalogue", None)
    return int(n_catalogue or n_items) + 1


def fitting_batch_size(batch_size: int, n_columns: int, budget: int = SCORE_BUDGET) -> int:
    """``batch_size``, shrunk so that a ``[batch, n_columns]`` float32 score matrix fits in
    ``budget`` bytes; one user at least."""
    if batch_size < 1:
        raise fail(f"--batch-size must be >= 1, got {batch_size}")
    return max(1, min(batch_size, budget // (4 * n_columns)))


def score_batch(
    scorer: Any,
    item_seq: torch.Tensor,
    users: torch.Tensor,
    exclude: torch.Tensor | None = None,
) -> torch.Tensor:
    """Scores in float32 from a trained model (``exclude``: the history a generative one prunes)
    or a baseline."""
    if isinstance(scorer, Recommender):
        return scorer.score(item_seq, users, exclude).float()
    return scorer.score(item_seq).float()


@torch.inference_mode()
def batched_scores(
    scorer: Any,
    histories: Sequences,
    users: np.ndarray,
    *,
    keep_history: bool = False,
    batch_size: int = BATCH_SIZE,
    device: torch.device | str | None = None,
) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor | None]]:
    """Next-item scores for ``histories``, one batch of users at a time.

    Yields ``(rows, scores [b, C] float32, exclude)``: ``rows`` are the batch's positions in
    ``histories`` (batches hold similar lengths, so little compute goes to padding); ``exclude``
    is the left-padded full history to mask (None with ``keep_history``), while the scorer reads
    only its last ``max_len`` items.
    """
    device = torch.device(device) if device is not None else default_device()
    max_len = context_length(scorer)
    lengths = histories.lengths()
    order = np.argsort(lengths, kind="stable")
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        padded = torch.from_numpy(histories.padded(max(1, int(lengths[rows].max())), rows))
        item_seq = padded[:, -max_len:].contiguous() if max_len else padded
        exclude = None if keep_history else padded.to(device)
        batch_users = torch.from_numpy(users[rows]).to(device)
        yield rows, score_batch(scorer, item_seq.to(device), batch_users, exclude), exclude


def in_input_order(rows: list[np.ndarray], parts: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate per-batch results and put them back in the order of the input."""
    return torch.cat(parts)[torch.from_numpy(np.argsort(np.concatenate(rows)))]


def rank_examples(
    scorer: Any,
    examples: EvalExamples,
    n_items: int,
    *,
    keep_history: bool = False,
    k_max: int = max(metrics.KS),
    batch_size: int = BATCH_SIZE,
    device: torch.device | str | None = None,
    n_negatives: int = metrics.N_NEGATIVES,
    negatives_seed: int = 0,
    cpu_threads: int | None = 1,
    score_budget: int = SCORE_BUDGET,
) -> Ranked:
    """Rank every example's target over items ``1..n_items`` (full ranking, batched), and among
    ``n_negatives`` items sampled per user (0: none), from the same score matrices.

    A batch's scores stay within ``score_budget`` bytes (:func:`fitting_batch_size`). On the CPU,
    scoring and ranking run on ``cpu_threads`` intra-op threads (None: as set); see
    :func:`cpu_threads_for`."""
    n_columns = score_columns(scorer, n_items)
    fitting = fitting_batch_size(batch_size, n_columns, score_budget)
    if fitting < batch_size:
        logger.info(
            f"scoring {fitting} users per batch instead of {batch_size}: {n_columns} float32 "
            f"scores per user would exceed the {score_budget / 2**20:g} MiB budget"
        )
    negatives = split_negatives(examples, n_items, n_negatives, negatives_seed)
    seen, ranks, tops, sampled = [], [], [], []
    device = torch.device(device) if device is not None else default_device()
    batches = batched_scores(
        scorer,
        examples.histories,
        examples.users,
        keep_history=keep_history,
        batch_size=fitting,
        device=device,
    )
    with cpu_threads_for(device, cpu_threads):
        for rows, scores, exclude in batches:
            targets = torch.from_numpy(examples.targets[rows])
            batch_negatives = None if negatives is None else negatives[rows].to(scores.device)
            out = metrics.rank_batch(scores, targets, k_max, exclude, n_items, batch_negatives)
            seen.append(rows)
            ranks.append(out.ranks.cpu())
            tops.append(out.top_items.cpu())
            if out.sampled is not None:
                sampled.append(out.sampled.cpu())
    return Ranked(
        examples.users,
        in_input_order(seen, ranks),
        in_input_order(seen, tops),
        in_input_order(seen, sampled) if sampled else None,
    )


def ranking_threads(window_s: float = 0.2) -> int | None:
    """Intra-op threads for an evaluation's scoring and ranking on the CPU: all of them (None)
    when other processes keep less than :data:`~recsys.cpu_load.IDLE_CORES` busy over
    ``window_s``, else one (see :func:`cpu_threads_for`). Asked once per evaluation, before its
    ranking."""
    busy = cores_busy_elsewhere(window_s)
    threads = None if busy < IDLE_CORES else 1
    shown = torch.get_num_threads() if threads is None else threads
    logger.info(f"scoring and ranking on {shown} CPU thread(s): {busy:.2f} cores busy elsewhere")
    return threads


@contextmanager
def cpu_threads_for(device: torch.device, threads: int | None) -> Iterator[None]:
    """Run on ``threads`` intra-op threads on the CPU, then restore the setting. One thread is
    the safe default for ranking: on a busy machine more threads lose several times over, as
    OpenMP threads wait for each other, while on an idle one they gain (``make bench
    BENCH=evaluate`` times one thread and the default; see :func:`ranking_threads`)."""
    if device.type != "cpu" or threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def split_negatives(
    examples: EvalExamples, n_items: int, n_negatives: int, seed: int
) -> torch.Tensor | None:
    """Each example's sampled negatives (none for ``n_negatives`` 0), never from its history or
    target. Drawn once per process for the same examples: every model of a split meets the same
    negatives, and the draw is not repeated for each model."""
    if not n_negatives:
        return None
    n_rows = len(examples.targets)
    lengths = examples.histories.lengths()
    # Each row's history, then every row's target, as (row, item) pairs: no padded matrix.
    rows = np.concatenate([np.repeat(np.arange(n_rows), lengths), np.arange(n_rows)])
    items = np.concatenate([examples.histories.flat(), examples.targets]).astype(np.int64)
    digest = hashlib.blake2b(lengths.tobytes() + items.tobytes(), digest_size=16).hexdigest()
    key = (digest, n_rows, n_items, n_negatives, seed)
    if key not in _NEGATIVES:
        if len(_NEGATIVES) >= 4:  # valid and test of one or two datasets
            _NEGATIVES.pop(next(iter(_NEGATIVES)))
        _NEGATIVES[key] = metrics.sample_negatives_excluding(
            rows, items, n_rows, n_items, n_negatives, seed
        )
    return _NEGATIVES[key]


_NEGATIVES: dict[tuple, torch.Tensor] = {}

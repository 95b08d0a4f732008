"""``python -m recsys.modeling.predict``: recommendations a person can read.

* ``--user ID`` (repeatable) or ``--all-users``: each user's recent history and top-K, as rich
  tables with titles, genres, year and scores; ``--output recs.parquet|.csv`` writes every
  selected user's top-K instead (all users when no user is named).
* ``--history "Toy Story (1995); Heat (1995)"`` (titles, matched fuzzily) or ``--items 1,2,3``
  (original item ids): recommendations for an ad-hoc sequence.
* ``--generate N --strategy greedy|sample|beam``: the model continues the sequence, feeding its
  own picks back and never repeating an item: a "viewing session".

Items already in the history are not recommended (``--keep-history`` allows them). Text and
hybrid runs also rank item-table-only items (no interactions yet), because their item vectors
come from text; id runs rank only the items they were trained on. A generative (TIGER) run
recommends by beam search, at most its beam size of items, scored by log-probability; it has no
item-table scores for ``--generate`` to sample from.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import typer
from loguru import logger

from recsys.api.generative import GenerativeRun
from recsys.api.run import Run
from recsys.api.loading import load_run
from recsys.catalogue import Catalogue
from recsys.cli import fail, run
from recsys.config import DEFAULT_DATASET, MODELS_DIR, PROCESSED_DATA_DIR
from recsys.io import atomic_path, write_parquet
from recsys.devices import resolve_device
from recsys.modeling.scoring import context_length, score_batch
from recsys.options import DatasetOpt, DeviceOpt, ModelsDirOpt, ProcessedDirOpt
from recsys.processed import Sequences, left_pad

OUTPUT_SUFFIXES = (".parquet", ".csv")

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True)


class Strategy(str, enum.Enum):
    greedy = "greedy"
    sample = "sample"
    beam = "beam"


# ------------------------------------------------------------------------------ generation


@dataclass
class Step:
    item: int
    probability: float


@dataclass
class _Beam:
    items: list[int]
    log_prob: float
    probabilities: list[float]


@torch.inference_mode()
def generate(
    model: Any,
    history: np.ndarray,
    n_steps: int,
    candidates: torch.Tensor,
    *,
    strategy: Strategy = Strategy.greedy,
    temperature: float = 1.0,
    seed: int = 0,
    beam_width: int = 5,
    user: int = 0,
    device: torch.device | str = "cpu",
) -> list[Step]:
    """Continue ``history`` by ``n_steps`` items, never repeating one (history included).

    ``greedy`` takes the most likely item, ``sample`` draws from the softmax at ``temperature``
    (seeded), ``beam`` keeps the ``beam_width`` most likely continuations by total log-probability.
    Each step reports the probability the model gave its pick among the allowed items.
    """
    if n_steps < 1:
        raise fail(f"--generate must be >= 1, got {n_steps}")
    if temperature <= 0:
        raise fail(f"--temperature must be > 0, got {temperature}")
    if beam_width < 1:
        raise fail(f"--beam-width must be >= 1, got {beam_width}")
    history = np.asarray(history, dtype=np.int64)
    allowed = candidates.clone()
    allowed[history[history < len(allowed)]] = False
    if n_steps > int(allowed.sum()):
        raise fail(f"--generate {n_steps} is more than the {int(allowed.sum())} unseen items left")
    width = beam_width if strategy is Strategy.beam else 1
    scale = temperature if strategy is Strategy.sample else 1.0
    gen = torch.Generator().manual_seed(seed)
    beams = [_Beam([], 0.0, [])]
    for step in range(n_steps):
        seqs = [np.concatenate([history, beam.items]).astype(np.int64) for beam in beams]
        length = min(len(history) + step, context_length(model) or len(history) + step)
        item_seq = torch.from_numpy(left_pad(seqs, max(1, length))).to(device)
        users = torch.full((len(beams),), user, dtype=torch.long, device=device)
        scores = score_batch(model, item_seq, users).cpu()
        mask = allowed.expand(len(beams), -1).clone()
        for row, beam in enumerate(beams):
            mask[row, beam.items] = False
        log_probs = torch.log_softmax(scores.masked_fill(~mask, float("-inf")) / scale, dim=1)
        if strategy is Strategy.sample:
            picks = torch.multinomial(log_probs.exp(), 1, generator=gen)
        else:
            picks = log_probs.topk(min(width, int(mask[0].sum())), dim=1).indices
        expanded = [
            _Beam(
                beam.items + [int(item)],
                beam.log_prob + float(log_probs[row, item]),
                beam.probabilities + [float(log_probs[row, item].exp())],
            )
            for row, beam in enumerate(beams)
            for item in picks[row]
        ]
        beams = sorted(expanded, key=lambda b: b.log_prob, reverse=True)[:width]
    best = beams[0]
    return [Step(item, p) for item, p in zip(best.items, best.probabilities)]


# --------------------------------------------------------------------------------- lookups


def adhoc_history(catalogue: Catalogue, titles: str | None, item_ids: str | None) -> np.ndarray:
    """The sequence of ``--history`` or ``--items``, unknown entries reported and dropped."""
    text = titles if titles is not None else item_ids
    option = "--history" if titles is not None else "--items"
    if not str(text).strip(" ;,"):
        raise fail(f"{option} is empty; give at least one item")
    found, warnings = catalogue.titles(text) if titles is not None else catalogue.item_ids(text)
    if not found:
        raise fail(f"{option}: nothing known in it: " + " / ".join(warnings))
    for line in warnings:
        logger.warning(line)
    return np.asarray(found, dtype=np.int64)


# ---------------------------------------------------------------------------------- output


def recommendations_frame(
    run: Run, user_ids: list[str], items: np.ndarray, scores: np.ndarray
) -> pd.DataFrame:
    """One row per (user, rank): user_id, then the run API's fields (rank, item_id, title, the
    dataset's text fields, score)."""
    rows, frame = run.frames(items, scores)
    frame.insert(0, "user_id", np.asarray(user_ids, dtype=object)[rows])
    return frame


def write_recommendations(frame: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".parquet":
        return write_parquet(frame, path)
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    return path


def item_table(
    title: str, catalogue: Catalogue, items: list[int], values: dict[str, list[str]] | None = None
):
    """A rich table of items (title, genres, year) plus optional value columns."""
    from rich.table import Table

    values = values or {}
    table = Table(title=title, title_justify="left")
    table.add_column("#", justify="right")
    for column in ("title", "genres"):
        table.add_column(column)
    table.add_column("year", justify="right")
    for column in values:
        table.add_column(column, justify="right")
    for row, item in enumerate(items):
        info = catalogue.describe(item)
        extra = [column[row] for column in values.values()]
        table.add_row(str(row + 1), str(info["title"]), info["genres"], info["year"], *extra)
    return table


def show(
    console: Any,
    catalogue: Catalogue,
    label: str,
    history: np.ndarray,
    n_history: int,
    picks_title: str,
    picks: list[int],
    values: dict[str, list[str]],
) -> None:
    """Print the recent history and the picks of one user or sequence."""
    recent = [int(i) for i in history[-n_history:]] if n_history else []
    if recent:
        heading = f"{label}: history (last {len(recent)} of {len(history)})"
        console.print(item_table(heading, catalogue, recent))
    console.print(item_table(f"{label}: {picks_title}", catalogue, picks, values))


# ------------------------------------------------------------------------------------- CLI


def open_run(
    dataset: str,
    run_dir: Path | None,
    processed_dir: Path | None,
    models_dir: Path | None,
    device: torch.device,
) -> Run:
    """``run_dir`` (default: the dataset's best run) through the run API, checked against
    ``dataset``: the same code path as the service."""
    return load_run(
        run_dir,
        dataset,
        processed_dir=processed_dir,
        models_dir=models_dir,
        device=str(device),
    )


@dataclass
class Requests:
    """The sequences to recommend for: dataset users (``user_idx`` > 0) or one ad-hoc one."""

    labels: list[str]
    user_ids: list[str | None]
    user_idx: np.ndarray
    histories: Sequences


def check_options(
    users: list[str],
    all_users: bool,
    history: str | None,
    items: str | None,
    output: Path | None,
    n_generate: int,
    n_history: int,
) -> bool:
    """Reject contradictory options; returns whether every user is meant."""
    sources = [bool(users) or all_users, history is not None, items is not None]
    if sum(sources) > 1:
        raise fail("give one of --user/--all-users, --history or --items, not several")
    if users and all_users:
        raise fail("give --user IDs or --all-users, not both")
    if output is not None:
        if output.suffix not in OUTPUT_SUFFIXES:
            raise fail(f"--output {output}: use a .parquet or .csv file name")
        if history is not None or items is not None or n_generate:
            raise fail("--output writes users' top-K; drop --history, --items and --generate")
    elif not any(sources):
        raise fail("say whom to recommend for: --user ID, --all-users, --history or --items")
    if n_history < 0:
        raise fail(f"--show-history must be >= 0, got {n_history}")
    return all_users or not any(sources)


def build_requests(
    run: Run,
    users: list[str],
    all_users: bool,
    history: str | None,
    items: str | None,
) -> Requests:
    """The sequences asked for: an ad-hoc one, or the named (or all) users' whole histories.

    All users take the run's histories as they are (one array for all), with no per-user step.
    """
    if history is not None or items is not None:
        run.check_ad_hoc_history()
        sequence = Sequences.of([adhoc_history(run.catalogue, history, items)], np.zeros(1))
        return Requests(["your sequence"], [None], sequence.users, sequence)
    if all_users:
        ids = run.user_ids_of(run.histories.users)
        return Requests([f"user {u}" for u in ids], ids, run.histories.users, run.histories)
    found = [run.user_history(u) for u in users]
    for user, (_, seq) in zip(users, found):
        if not len(seq):
            raise fail(f"user {user} has an empty history; nothing to recommend from")
    user_idx = np.array([i for i, _ in found], dtype=np.int64)
    histories = Sequences.of([seq for _, seq in found], user_idx)
    return Requests([f"user {u}" for u in users], [str(u) for u in users], user_idx, histories)


def predict(
    dataset: str,
    *,
    users: list[str] | None = None,
    all_users: bool = False,
    history: str | None = None,
    items: str | None = None,
    k: int = 10,
    run_dir: Path | None = None,
    output: Path | None = None,
    n_generate: int = 0,
    strategy: Strategy = Strategy.greedy,
    temperature: float = 1.0,
    seed: int = 0,
    beam_width: int = 5,
    keep_history: bool = False,
    n_history: int = 10,
    processed_dir: Path | None = None,
    models_dir: Path | None = None,
    device: str = "auto",
    console: Any = None,
) -> pd.DataFrame | None:
    """Run one prediction request; returns the written frame when ``output`` is given."""
    from rich.console import Console

    users = list(users or [])
    all_users = check_options(users, all_users, history, items, output, n_generate, n_history)
    console = console or Console()
    torch_device = resolve_device(device)
    run = open_run(dataset, run_dir, processed_dir, models_dir, torch_device)
    catalogue = run.catalogue
    candidates = torch.from_numpy(run.rankable)
    run.check_k(k, "--k")
    if n_generate and isinstance(run, GenerativeRun):
        raise fail(
            f"--generate samples from an item table's scores, which generative run {run.name} "
            "does not have (it recommends by beam search); leave out --generate"
        )
    requests = build_requests(run, users, all_users, history, items)
    if output is None:
        console.print(f"run: {run.run_dir}")

    if n_generate:
        for label, user_idx, sequence in zip(
            requests.labels, requests.user_idx, requests.histories
        ):
            steps = generate(
                run.model,
                sequence,
                n_generate,
                candidates,
                strategy=strategy,
                temperature=temperature,
                seed=seed,
                beam_width=beam_width,
                user=int(user_idx),
                device=torch_device,
            )
            show(
                console,
                catalogue,
                label,
                sequence,
                n_history,
                f"generated session ({strategy.value})",
                [s.item for s in steps],
                {"p": [f"{s.probability:.3f}" for s in steps]},
            )
        return None

    histories = requests.histories
    top, scores = run.top_k(
        histories, requests.user_idx, k, exclude=None if keep_history else histories
    )
    if output is not None:
        frame = recommendations_frame(run, requests.user_ids, top, scores)
        write_recommendations(frame, output)
        logger.info(f"wrote top-{k} of {len(histories)} users to {output}")
        return frame
    for label, sequence, row_items, row_scores in zip(
        requests.labels, histories, top.tolist(), scores.tolist()
    ):
        picks = [i for i in row_items if i]
        show(
            console,
            catalogue,
            label,
            sequence,
            n_history,
            f"top {k} recommendations",
            picks,
            {"score": [f"{s:.3f}" for s in row_scores[: len(picks)]]},
        )
    return None


@app.command()
def main(
    dataset: DatasetOpt = DEFAULT_DATASET,
    user: list[str] = typer.Option([], "--user", help="Original user id (repeatable)."),
    all_users: bool = typer.Option(False, "--all-users", help="Every user of the dataset."),
    history: str | None = typer.Option(
        None, help='Ad-hoc sequence of titles: "Toy Story (1995); Heat (1995)".'
    ),
    items: str | None = typer.Option(None, help="Ad-hoc sequence of original item ids: 1,2,3."),
    k: int = typer.Option(10, "--k", help="Recommendations per user."),
    run_dir: Path | None = typer.Option(
        None, "--run", help="Run folder (default: the dataset's best run)."
    ),
    output: Path | None = typer.Option(
        None, help="Write every selected user's top-K to this .parquet or .csv file."
    ),
    generate_n: int = typer.Option(
        0, "--generate", help="Continue the sequence by N items instead of ranking."
    ),
    strategy: Strategy = typer.Option(Strategy.greedy, help="How --generate picks items."),
    temperature: float = typer.Option(1.0, help="Softmax temperature for --strategy sample."),
    seed: int = typer.Option(0, help="Seed for --strategy sample."),
    beam_width: int = typer.Option(5, help="Beams kept by --strategy beam."),
    keep_history: bool = typer.Option(
        False, "--keep-history", help="Allow items already in the history."
    ),
    show_history: int = typer.Option(10, help="How many recent history items to print."),
    device: DeviceOpt = "auto",
    processed_dir: ProcessedDirOpt = PROCESSED_DATA_DIR,
    models_dir: ModelsDirOpt = MODELS_DIR,
) -> None:
    """Print readable recommendations, or write them to a file."""
    predict(
        dataset,
        users=user,
        all_users=all_users,
        history=history,
        items=items,
        k=k,
        run_dir=run_dir,
        output=output,
        n_generate=generate_n,
        strategy=strategy,
        temperature=temperature,
        seed=seed,
        beam_width=beam_width,
        keep_history=keep_history,
        n_history=show_history,
        processed_dir=processed_dir,
        models_dir=models_dir,
        device=device,
    )


if __name__ == "__main__":
    run(app)

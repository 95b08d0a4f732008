"""A trained run as an object an application calls, without HTTP::

    from recsys import load_run

    run = load_run("models/ml-100k/sasrec-ce")
    run.recommend(user_id="1", k=10)
    run.recommend(titles=["Toy Story (1995)", "Heat (1995)"], exclude_items=["50"])
    run.similar("50", k=10)

``predict`` and the HTTP service sit on it, so a recommendation is computed one way: the
decoder's last hidden state, then a top-K over the run's item table through an
:class:`~recsys.api.index.ItemIndex` (exact below a size threshold, approximate above it,
history and filters exact either way). A generative (TIGER) run answers the same calls by beam
search over its items' semantic IDs instead (:class:`~recsys.api.generative.GenerativeRun`).
Every answer is a DataFrame with the service's fields.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from recsys.api.index import ItemIndex, normalized, open_run_index
from recsys.arrays import length_groups
from recsys.catalogue import Catalogue
from recsys.cli import RecsysError, fail
from recsys.io import atomic_path
from recsys.modeling.models import CONTENT_REPRS, TEXT_REPRS
from recsys.processed import ProcessedData, Sequences, user_histories

#: Items added at run time (their fields and text vectors), replayed when the run loads again.
ADDED_ITEMS_FILE = "added_items.parquet"
#: Histories scored in one forward pass: similar lengths batch together, so little is padding.
BATCH_SIZE = 128
#: A length group closes when a history is this many times longer than its shortest (+ slack).
BUCKET_GROWTH, BUCKET_SLACK = 1.5, 16


class NotFound(RecsysError):
    """An unknown user, item or title; ``nearest`` holds the closest titles where they help."""

    def __init__(self, message: str, nearest: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.nearest = list(nearest)


class Unsupported(RecsysError):
    """A well-formed request this run cannot answer (new items for an id run, an empty history)."""


@dataclass(frozen=True)
class Query:
    """Whom to recommend for: a dataset user, or an ad-hoc history by original ids or titles."""

    user_id: str | None = None
    items: Sequence[str] | None = None
    titles: Sequence[str] | None = None
    k: int = 10
    exclude_seen: bool = True
    exclude_items: Sequence[str] = ()
    categories: Sequence[str] | None = None


@dataclass
class Resolved:
    """A query in internal indices, ready to score."""

    history: np.ndarray
    user_idx: int
    k: int
    exclude: np.ndarray
    allowed: np.ndarray | None = None


def rankable_items(model: Any, n_items: int, n_catalogue: int) -> torch.Tensor:
    """Bool ``[n_catalogue + 1]``: the items this model can meaningfully recommend.

    Text, hybrid and codes runs: every catalogue item (their rows come from its text). Id runs:
    the items trained on (the model's ``candidate_mask``, which leaves out a cold-start run's cold
    items).
    """
    config = getattr(model, "config", None)
    if getattr(config, "item_repr", "id") in CONTENT_REPRS:
        mask = torch.ones(n_catalogue + 1, dtype=torch.bool)
    elif hasattr(model, "candidate_mask"):
        mask = model.candidate_mask.detach().cpu().clone()
    else:
        mask = torch.zeros(n_catalogue + 1, dtype=torch.bool)
        mask[1 : n_items + 1] = True
    mask[0] = False
    return mask


def as_sequences(histories: Sequence[np.ndarray]) -> Sequences:
    """Histories as :class:`~recsys.processed.Sequences` (a list of arrays is copied into one)."""
    if isinstance(histories, Sequences):
        return histories
    return Sequences.of([np.asarray(h, dtype=np.int64) for h in histories])


def item_vectors(model: Any) -> torch.Tensor:
    """The model's item table as the index holds it: float32 ``[n_catalogue + 1, d]``."""
    with torch.inference_mode():
        return model.item_table().detach().float().contiguous()


def table_fingerprint(checkpoint: Path, vectors: np.ndarray) -> dict[str, Any]:
    """What a saved index must have been built from: this checkpoint and exactly these item
    vectors (hashing them costs a fraction of a second where an ANN build costs minutes)."""
    stat = Path(checkpoint).stat()
    return {
        "checkpoint": Path(checkpoint).name,
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "table_sha256": hashlib.sha256(np.ascontiguousarray(vectors).tobytes()).hexdigest(),
    }


class Run:
    """A loaded run: its model, item table, catalogue and users; safe to call from threads."""

    def __init__(
        self,
        model: Any,
        config: dict[str, Any],
        data: ProcessedData,
        run_dir: Path,
        checkpoint: Path,
        *,
        processed_root: Path | None = None,
        device: str = "cpu",
    ) -> None:
        self.model = model.to(device).eval()
        self.config = config
        self.dataset = data.name
        self.run_dir = Path(run_dir)
        self.name = self.run_dir.name
        self.item_repr = str(getattr(model.config, "item_repr", config.get("item_repr", "id")))
        self.device = torch.device(device)
        self.processed_root = processed_root
        self.catalogue = Catalogue(data.items)
        self.users = {
            str(u): int(i) for u, i in zip(data.users["user_id"], data.users["user_idx"])
        }
        self._user_ids = np.empty(
            int(data.users["user_idx"].to_numpy().max(initial=0)) + 1, dtype=object
        )
        self._user_ids[data.users["user_idx"].to_numpy()] = data.users["user_id"].astype(str)
        self.histories = user_histories(data.events)
        self.max_len = int(model.config.max_len)
        self.uses_users = model.reads_users
        self.table = item_vectors(self.model)
        self.rankable = rankable_items(model, data.n_items, data.n_catalogue).numpy()
        self.index = self._open_index(checkpoint)
        self._similar: ItemIndex | None = None
        self._lock = threading.RLock()
        self._adding = threading.Lock()
        #: Turns new items' sentences into text vectors; loaded on first use (tests inject one).
        self.text_encoder: Callable[[list[str]], np.ndarray] | None = None
        self._replay_added_items()

    # ----------------------------------------------------------------------------- facts
    @property
    def n_items(self) -> int:
        """Rows of the item table, padding excluded (grows as items are added)."""
        return int(self.table.shape[0]) - 1

    @property
    def accepts_new_items(self) -> bool:
        return self.item_repr in TEXT_REPRS

    @property
    def _new_items_refusal(self) -> str:
        """Why :meth:`add_items` is refused, where it is."""
        return (
            f"run {self.name} (item_repr {self.item_repr}) has no text encoder in its item "
            "table: a new item gets an id row, or semantic IDs, only by retraining. Serve a "
            "text or hybrid run to add items by their text"
        )

    @property
    def ranking(self) -> str:
        """How answers are found: the kind of item index."""
        assert self.index is not None
        return self.index.kind

    @property
    def max_k(self) -> int:
        """The most items one answer can hold: every rankable item."""
        return int(self.rankable.sum())

    def check_k(self, k: int, name: str = "k") -> None:
        """``k`` (an option called ``name``) checked against :attr:`max_k`."""
        if not 1 <= k <= self.max_k:
            raise fail(f"{name} must be between 1 and the {self.max_k} rankable items, got {k}")

    def info(self) -> dict[str, Any]:
        """What answers: the run, its model and the index (shown by the service)."""
        return {
            "run": self.name,
            "run_dir": str(self.run_dir),
            "dataset": self.dataset,
            "item_repr": self.item_repr,
            "model": str(self.config.get("config_name") or self.name),
            "n_items": self.n_items,
            "index": self.ranking,
        }

    def _open_index(self, checkpoint: Path) -> ItemIndex | None:
        """The top-k index over the item table, in step with ``checkpoint``."""
        vectors = self.table.cpu().numpy()
        return open_run_index(self.run_dir, vectors, table_fingerprint(checkpoint, vectors))

    # --------------------------------------------------------------------------- lookups
    def item_index(self, item_id: Any) -> int:
        """The internal index of an original item id; unknown -> :class:`NotFound`."""
        found = self.catalogue.by_id.get(str(item_id))
        if found is None:
            raise NotFound(
                f"unknown item id {str(item_id)!r}; it is not in {self.dataset}'s items"
            )
        return found

    def title_index(self, title: str) -> int:
        """The item a typed title means; unknown -> :class:`NotFound` with the nearest titles."""
        found = self.catalogue.match_title(title)
        if found is None:
            nearest = self.catalogue.nearest(title)
            shown = ", ".join(f'"{t}"' for t in nearest)
            raise NotFound(f"unknown title {title!r}; nearest: {shown}", nearest)
        return found

    def check_ad_hoc_history(self) -> None:
        """A history without a known user is refused by a run that scores users, not histories."""
        if self.model.user_based:
            raise Unsupported(
                f"run {self.name} is family {self.model.config.family}: it recommends for the "
                "users it trained on (give a user); for ad-hoc histories train it with "
                "fold_in_l2 above 0, or train a sequence family"
            )

    def user_ids_of(self, user_idx: np.ndarray) -> list[str]:
        """The original ids of internal user indices (vectorised)."""
        return self._user_ids[np.asarray(user_idx, dtype=np.int64)].tolist()

    def user_history(self, user_id: Any) -> tuple[int, np.ndarray]:
        """``(user_idx, history)`` of an original user id; unknown -> :class:`NotFound`."""
        user_idx = self.users.get(str(user_id))
        if user_idx is None:
            examples = ", ".join(list(self.users)[:3])
            raise NotFound(
                f"unknown user id {str(user_id)!r} for {self.dataset!r}; ids are the dataset's "
                f"original user ids, e.g. {examples}"
            )
        row = int(np.searchsorted(self.histories.users, user_idx))
        if row < len(self.histories) and self.histories.users[row] == user_idx:
            return user_idx, self.histories[row]
        return user_idx, np.zeros(0, dtype=np.int64)

    def resolve(self, query: Query) -> Resolved:
        """A :class:`Query` in internal indices, checked; bad parts raise one clear error."""
        given = [query.user_id is not None, query.items is not None, query.titles is not None]
        if sum(given) != 1:
            raise fail("give exactly one of user_id, items or titles")
        if query.user_id is not None:
            user_idx, history = self.user_history(query.user_id)
            label = f"user {query.user_id}"
        else:
            user_idx, label = 0, "the given history"
            if query.items is not None:
                history = np.asarray([self.item_index(i) for i in query.items], dtype=np.int64)
            else:
                history = np.asarray([self.title_index(t) for t in query.titles], dtype=np.int64)
        if not len(history):
            raise Unsupported(f"{label} has no history; there is nothing to recommend from")
        if not user_idx:
            self.check_ad_hoc_history()
        exclude = [self.item_index(i) for i in query.exclude_items]
        if query.exclude_seen:
            exclude.extend(int(i) for i in history)
        allowed = None
        if query.categories:
            if self.catalogue.category_column is None:
                raise Unsupported(f"{self.dataset} has no categories to filter by")
            allowed = self.catalogue.in_categories(list(query.categories))
            if not allowed.any():
                known = ", ".join(self.catalogue.categories()[:20])
                raise NotFound(f"no item has categories {list(query.categories)}; known: {known}")
        self.check_k(query.k)
        return Resolved(
            history, user_idx, query.k, np.unique(np.asarray(exclude, np.int64)), allowed
        )

    # --------------------------------------------------------------------------- scoring
    def _batches(self, histories: Sequences) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """The rows of ``histories`` in groups of similar length (:func:`length_groups`), each
        with its last ``max_len`` items left-padded to the group's longest, on the run's device."""
        lengths = np.minimum(histories.lengths(), self.max_len)
        for rows in length_groups(lengths, BUCKET_GROWTH, BUCKET_SLACK, BATCH_SIZE):
            item_seq = histories.padded(max(1, int(lengths[rows].max())), rows)
            yield rows, torch.from_numpy(item_seq).to(self.device)

    @torch.inference_mode()
    def hidden_states(self, histories: Sequence[np.ndarray], users: np.ndarray) -> np.ndarray:
        """The decoder's state after each history's last item, float32 ``[B, d]``.

        A next-item score is this state's inner product with the item's table row, so this is
        the query vector for the item index. Reads each history's last ``max_len`` items.
        """
        histories = as_sequences(histories)
        out = np.zeros((len(histories), self.table.shape[1]), dtype=np.float32)
        for rows, item_seq in self._batches(histories):
            user_ids = torch.from_numpy(np.asarray(users, dtype=np.int64)[rows])
            hidden = self.model.query(
                item_seq, user_ids.to(self.device) if self.uses_users else None, self.table
            )
            out[rows] = hidden.float().cpu().numpy()
        return out

    def top_k(
        self,
        histories: Sequence[np.ndarray],
        users: np.ndarray,
        k: int,
        *,
        exclude: Sequence[np.ndarray] | None = None,
        allowed: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` item indices and scores per history, ``[B, k]`` each (0 / -inf: none left).

        ``exclude[b]`` are items row ``b`` must not get (its history, unless kept); ``allowed``
        narrows the rankable items further (a category filter).
        """
        with self._lock:  # items added meanwhile grow rankable past a mask made before them
            mask = self.rankable
            if allowed is not None:
                mask = mask & np.pad(allowed[: len(mask)], (0, max(0, len(mask) - len(allowed))))
            return self._rank(histories, users, k, exclude, mask)

    def _rank(
        self,
        histories: Sequence[np.ndarray],
        users: np.ndarray,
        k: int,
        exclude: Sequence[np.ndarray] | None,
        allowed: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`top_k` over the ``allowed`` items (lock held): the item index's top-k of the
        decoder's states."""
        assert self.index is not None
        queries = self.hidden_states(histories, users)
        return self.index.search(queries, k, exclude=exclude, allowed=allowed)

    def recommend_many(self, queries: Sequence[Query]) -> list[pd.DataFrame]:
        """Answer many queries in as few forward passes as their filters allow."""
        answers = self.recommend_resolved([self.resolve(q) for q in queries])
        return [pd.DataFrame(rows, columns=self.columns) for rows in answers]

    def recommend_resolved(self, resolved: Sequence[Resolved]) -> list[list[dict[str, Any]]]:
        """Records (rank, fields, score) per resolved query; one forward pass per filter.

        Queries of one filter share a top-k search at their largest k; a sorted top-k cut to a
        smaller k is that k's answer.
        """
        out: list[list[dict[str, Any]]] = [[] for _ in resolved]
        groups: dict[bytes | None, list[int]] = {}
        for row, r in enumerate(resolved):
            key = None if r.allowed is None else np.packbits(r.allowed).tobytes()
            groups.setdefault(key, []).append(row)
        for rows in groups.values():
            ids, scores = self.top_k(
                [resolved[r].history for r in rows],
                np.asarray([resolved[r].user_idx for r in rows], dtype=np.int64),
                max(resolved[r].k for r in rows),
                exclude=[resolved[r].exclude for r in rows],
                allowed=resolved[rows[0]].allowed,
            )
            for row, row_ids, row_scores in zip(rows, ids, scores):
                k = resolved[row].k
                out[row] = self.records(row_ids[:k], row_scores[:k])
        return out

    def recommend(
        self,
        user_id: Any = None,
        items: Sequence[Any] | None = None,
        titles: Sequence[str] | None = None,
        k: int = 10,
        exclude_seen: bool = True,
        exclude_items: Sequence[Any] = (),
        categories: Sequence[str] | None = None,
    ) -> pd.DataFrame:
        """Top-``k`` items for a user (``user_id``) or an ad-hoc history (``items``/``titles``).

        Columns: rank, item_id, title, the dataset's text fields, score (the model's logit; for
        a generative run, the log-probability of the item's semantic ID).
        """
        query = Query(
            None if user_id is None else str(user_id),
            None if items is None else [str(i) for i in items],
            None if titles is None else list(titles),
            k,
            exclude_seen,
            [str(i) for i in exclude_items],
            None if categories is None else list(categories),
        )
        return self.recommend_many([query])[0]

    def similar(self, item_id: Any, k: int = 10) -> pd.DataFrame:
        """The ``k`` items whose table rows are nearest (cosine) to ``item_id``'s."""
        return pd.DataFrame(self.similar_records(item_id, k), columns=self.columns)

    def similar_records(self, item_id: Any, k: int = 10) -> list[dict[str, Any]]:
        """:meth:`similar` as records, as the service answers (a DataFrame would turn a missing
        year into NaN and every year into a float)."""
        item = self.item_index(item_id)
        rankable = int(self.rankable.sum())
        if not 1 <= k < rankable:
            raise fail(f"k must be between 1 and {rankable - 1}, got {k}")
        with self._lock:
            if self._similar is None:
                self._similar = self._build_similar_index()
            query = normalized(self.table[item : item + 1].cpu().numpy())
            ids, scores = self._similar.search(
                query, k, exclude=[np.asarray([item])], allowed=self.rankable
            )
        return self.records(ids[0], scores[0])

    def _build_similar_index(self) -> ItemIndex:
        from recsys.api.index import build_index

        return build_index(normalized(self.table.cpu().numpy()))

    @property
    def columns(self) -> list[str]:
        """The fields of every answer: rank, the item's shown fields, score."""
        return ["rank", *self.catalogue.fields, "score"]

    def records(self, ids: np.ndarray, scores: np.ndarray) -> list[dict[str, Any]]:
        """One dict per non-empty ``ids`` entry: rank, item_id, title, text fields, score."""
        catalogue = self.catalogue
        return [
            {"rank": rank, **catalogue.record(int(item)), "score": float(score)}
            for rank, (item, score) in enumerate(zip(ids, scores), start=1)
            if item > 0
        ]

    def frame(self, ids: np.ndarray, scores: np.ndarray) -> pd.DataFrame:
        """:meth:`records` as a DataFrame (the run API's answer)."""
        return pd.DataFrame(self.records(ids, scores), columns=self.columns)

    def frames(self, ids: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, pd.DataFrame]:
        """:meth:`frame` of many rows of ``ids`` ``[B, k]`` at once, stacked, and the row of
        each line: the items' fields come from one vectorised lookup, not one per row."""
        rows, ranks = np.nonzero(ids > 0)
        frame = self.catalogue.fields_of(ids[rows, ranks])
        frame.insert(0, "rank", ranks + 1)
        frame["score"] = scores[rows, ranks].astype(np.float64)
        return rows, frame[self.columns]

    # ------------------------------------------------------------------------- new items
    def add_items(self, items: pd.DataFrame | Sequence[dict[str, Any]]) -> pd.DataFrame:
        """Make new items rankable at once from their text (text and hybrid runs).

        ``items`` need ``item_id`` and ``title`` and may carry the dataset's other text fields.
        They are embedded with the run's text encoder, appended to the item table and index,
        and saved beside the checkpoint so that they survive a restart or a reload.
        """
        if not self.accepts_new_items:
            raise Unsupported(self._new_items_refusal)
        from recsys.text_features import item_sentences, item_text_fields

        fields = item_text_fields(self.dataset, self.processed_root)
        # One add at a time (ids and new rows are numbered from the table's size), while
        # recommendations go on: only the append itself takes the scoring lock.
        with self._adding:
            new = self._check_new_items(
                pd.DataFrame(list(items) if not isinstance(items, pd.DataFrame) else items),
                fields or [],
            )
            texts = item_sentences(new, self.dataset, fields).table["text"].tolist()
            vectors = np.asarray(self._encoder()(texts), dtype=np.float32)
            expected = self.text_dim
            if vectors.shape != (len(new), expected):
                raise fail(
                    f"the text encoder gave vectors of shape {vectors.shape}, but run "
                    f"{self.name} was trained on {expected}-dim text vectors; use the encoder "
                    "it was trained with"
                )
            with self._lock:
                added = self._append(new, vectors)
            self._save_added(added, vectors)
        return added

    def _check_new_items(self, new: pd.DataFrame, text_fields: Sequence[str]) -> pd.DataFrame:
        """``new`` checked and numbered; ``text_fields`` are those the catalogue's item texts
        were built from, so a new item's text is built from the same ones."""
        if new.empty:
            raise fail("no items given; send at least one item with item_id and title")
        needed = ["item_id", "title", *[f for f in text_fields if f != "title"]]
        missing = [c for c in needed if c not in new.columns]
        if missing:
            raise fail(
                f"new items of {self.dataset} need the fields {', '.join(needed)}; "
                f"missing: {', '.join(missing)}"
            )
        new = new.assign(item_id=new["item_id"].astype(str))
        blank = new["title"].isna() | new["title"].astype(str).str.strip().eq("")
        if blank.any():
            raise fail(
                f"new item {new['item_id'][blank].iloc[0]!r} has an empty title; an item is "
                "ranked by its text, so give it one"
            )
        taken = [i for i in new["item_id"] if i in self.catalogue.by_id]
        if taken:
            raise Unsupported(f"item id {taken[0]!r} already exists; choose a new id")
        if new["item_id"].duplicated().any():
            raise fail(f"item id {new['item_id'][new['item_id'].duplicated()].iloc[0]!r} repeats")
        unknown = sorted(set(new.columns) - set(self.catalogue.fields))
        if unknown:
            known = ", ".join(self.catalogue.fields)
            raise fail(f"unknown item field(s) {', '.join(unknown)}; {self.dataset} has {known}")
        return self._numbered(new)

    def _numbered(self, new: pd.DataFrame) -> pd.DataFrame:
        """``new`` with the ``item_idx`` that continue the item table."""
        start = self.n_items + 1
        return new.reset_index(drop=True).assign(
            item_idx=np.arange(start, start + len(new), dtype=np.int32)
        )

    @property
    def text_dim(self) -> int:
        """The width of the text vectors a new item needs."""
        return int(self.model.item_features.shape[1])

    def _encoder(self) -> Callable[[list[str]], np.ndarray]:
        if self.text_encoder is None:
            self.text_encoder = self._load_text_encoder()
        return self.text_encoder

    def _load_text_encoder(self) -> Callable[[list[str]], np.ndarray]:
        """The encoder of the feature file the run was trained on."""
        from recsys.text_features import features_encoder

        model = self.config.get("feature_model")
        return features_encoder(self.dataset, model, self.processed_root).encode

    @torch.inference_mode()
    def _new_rows(self, new: pd.DataFrame, vectors: np.ndarray) -> torch.Tensor:
        """The item table rows of ``new`` items from their text ``vectors`` (lock held)."""
        return self.model.text_proj(torch.from_numpy(vectors).to(self.device)).float()

    def _append(self, new: pd.DataFrame, vectors: np.ndarray) -> pd.DataFrame:
        """Grow the item table, index, rankable mask and catalogue by ``new`` (lock held), whose
        ``item_idx`` continue the table."""
        rows = self._new_rows(new, vectors)
        self.table = torch.cat([self.table, rows]).contiguous()
        if self.index is not None:
            self.index.add(rows.cpu().numpy())
        if self._similar is not None:
            self._similar.add(normalized(rows.cpu().numpy()))
        self.rankable = np.concatenate([self.rankable, np.ones(len(new), dtype=bool)])
        items = pd.concat([self.catalogue.items.reset_index(drop=True), new], ignore_index=True)
        self.catalogue = Catalogue(items)
        return new[["item_idx", *[c for c in self.catalogue.fields if c in new.columns]]]

    def _save_added(self, added: pd.DataFrame, vectors: np.ndarray) -> None:
        path = self.run_dir / ADDED_ITEMS_FILE
        frame = added.drop(columns="item_idx").assign(text_vector=list(vectors))
        if path.is_file():
            frame = pd.concat([pd.read_parquet(path), frame], ignore_index=True)
        with atomic_path(path) as tmp:
            frame.to_parquet(tmp, index=False)

    def _replay_added_items(self) -> None:
        path = self.run_dir / ADDED_ITEMS_FILE
        if not path.is_file() or not self.accepts_new_items:
            return
        try:
            frame = pd.read_parquet(path)
            vectors = np.stack(frame.pop("text_vector").to_numpy()).astype(np.float32)
        except Exception as err:  # pyarrow raises several types for a damaged file
            raise fail(f"{path} is unreadable ({err}); delete it to serve without added items")
        keep = ~frame["item_id"].astype(str).isin(self.catalogue.by_id).to_numpy()
        if keep.any():
            self._append(self._numbered(frame[keep]), vectors[keep])

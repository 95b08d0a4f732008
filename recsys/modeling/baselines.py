"""Non-neural baselines that a sequence model must beat, behind the trained model's interface.

Each baseline is fitted on training sequences (of item ids, 1..n_items) and then answers
``score(item_seq: LongTensor[B, L]) -> FloatTensor[B, n_catalogue + 1]`` for left-padded
sequences, exactly like ``SeqRecModel.score``; column 0 (padding) is ``-inf``. Evaluation and
prediction code can therefore treat baselines and trained runs alike.

The three similarity baselines break exact ties (mostly items they cannot score at all) by
training popularity, with a weight far below any real score difference: the usual
"back off to popularity" that makes them usable recommenders, instead of leaving those items to
the pessimistic tie rule of the metrics.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import scipy.linalg.lapack
import scipy.sparse as sp
import torch

from recsys.processed import Sequences

#: Weight of the popularity tie-breaker (popularity is scaled into [0, 1) first).
TIE_BREAK = 1e-6
#: Items above which a baseline that holds a dense item x item matrix (EASE) is not fitted. At
#: 20,000 items the matrix takes 1.6 GB of float32 and its fit, with the sparse co-occurrence
#: product it starts from, up to about four times that; H&M's 105,542 items would take 45 GB.
MAX_DENSE_ITEMS = 20_000


def _interactions(sequences: Sequences, n_cols: int) -> sp.csr_matrix:
    """Binary sequences x items matrix of the training sequences."""
    rows = np.repeat(np.arange(len(sequences)), sequences.lengths())
    cols = sequences.flat()
    data = np.ones(len(cols), dtype=np.float32)
    matrix = sp.csr_matrix((data, (rows, cols)), shape=(len(sequences), n_cols))
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    return matrix


def _multi_hot(item_seq: torch.Tensor, n_cols: int) -> sp.csr_matrix:
    """Binary rows x items matrix of left-padded sequences (padding and ids >= n_cols dropped)."""
    seq = item_seq.detach().cpu().numpy()
    rows, cols = np.nonzero((seq > 0) & (seq < n_cols))
    data = np.ones(len(rows), dtype=np.float32)
    matrix = sp.csr_matrix((data, (rows, seq[rows, cols])), shape=(len(seq), n_cols))
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    return matrix


class Baseline:
    """Shared fitting state: catalogue size and training popularity."""

    name = "baseline"
    #: Whether fitting holds a dense n_items x n_items matrix (see :data:`MAX_DENSE_ITEMS`).
    dense = False
    #: The constructor's arguments that change the model (not only how fast it is fitted).
    tunable: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.n_items = 0
        self.n_catalogue = 0
        self.popularity = np.zeros(1, dtype=np.float32)

    def fit(
        self, sequences: Sequences | Iterable[np.ndarray], n_items: int, n_catalogue: int
    ) -> Baseline:
        """Learn from training sequences of item ids in ``1..n_items`` (a list of arrays will do
        as well as :class:`~recsys.processed.Sequences`)."""
        self._fit(self._learn_popularity(sequences, n_items, n_catalogue))
        return self

    @classmethod
    def fit_grid(
        cls,
        sequences: Sequences | Iterable[np.ndarray],
        n_items: int,
        n_catalogue: int,
        settings: Iterable[Mapping[str, Any]],
    ) -> Iterator[Baseline]:
        """The baseline fitted with each of ``settings`` in turn, each yielded before the next is
        fitted, so a caller that drops one before asking for the next holds one at a time. A
        baseline whose settings share costly work overrides this to do that work once."""
        for setting in settings:
            yield cls(**setting).fit(sequences, n_items, n_catalogue)

    def settings(self) -> dict[str, Any]:
        """The values of its :attr:`tunable` arguments, for the report."""
        return {key: getattr(self, key) for key in self.tunable}

    def _learn_popularity(
        self, sequences: Sequences | Iterable[np.ndarray], n_items: int, n_catalogue: int
    ) -> Sequences:
        """Check the training sequences and learn the catalogue size and popularity from them;
        returns them as :class:`~recsys.processed.Sequences`."""
        seqs = sequences if isinstance(sequences, Sequences) else Sequences.of(list(sequences))
        items = seqs.flat().astype(np.int64)
        if not len(items):
            raise ValueError(f"{self.name}: no training interactions to fit on")
        if int(items.max()) > n_items:
            raise ValueError(f"{self.name}: training items must be in 1..{n_items}")
        self.n_items, self.n_catalogue = n_items, n_catalogue
        self.popularity = np.bincount(items, minlength=n_catalogue + 1).astype(np.float32)
        self.popularity[0] = 0.0
        return seqs

    def _fit(self, sequences: Sequences) -> None:
        """Baseline-specific fitting; popularity is already known."""

    def _tie_break(self) -> np.ndarray:
        return TIE_BREAK * self.popularity / (self.popularity.max() + 1.0)

    def _scores(self, item_seq: torch.Tensor) -> np.ndarray:
        raise NotImplementedError

    @torch.inference_mode()
    def score(self, item_seq: torch.Tensor) -> torch.Tensor:
        """Next-item scores for left-padded ``item_seq``: ``[B, n_catalogue + 1]``."""
        if not self.n_catalogue:
            raise RuntimeError(f"{self.name}: call fit() before score()")
        item_seq = item_seq.long().clamp(0, self.n_catalogue)
        scores = torch.from_numpy(np.ascontiguousarray(self._scores(item_seq), dtype=np.float32))
        scores[:, 0] = float("-inf")
        return scores.to(item_seq.device)


class MostPopular(Baseline):
    """The same list for everyone: items by training interaction count."""

    name = "most-popular"

    def _scores(self, item_seq: torch.Tensor) -> np.ndarray:
        return np.broadcast_to(self.popularity, (len(item_seq), len(self.popularity))).copy()


class Transitions(Baseline):
    """First-order Markov chain: how often each item followed the user's last item in training."""

    name = "transitions"

    def _fit(self, sequences: Sequences) -> None:
        src, dst = sequences.flat(skip_last=True), sequences.flat(skip_first=True)
        size = self.n_catalogue + 1
        data = np.ones(len(src), dtype=np.float32)
        self.counts = sp.csr_matrix((data, (src, dst)), shape=(size, size))
        self.counts.sum_duplicates()

    def _scores(self, item_seq: torch.Tensor) -> np.ndarray:
        last = item_seq[:, -1].cpu().numpy()
        return self.counts[last].toarray() + self._tie_break()


class ItemKNN(Baseline):
    """Item-to-item cosine similarity of co-occurrence in users' training histories, summed over
    the items of the input sequence; each item keeps its ``neighbors`` most similar items."""

    name = "item-knn"
    tunable = ("neighbors",)

    def __init__(self, neighbors: int = 200, block: int = 1024) -> None:
        super().__init__()
        self.neighbors = neighbors
        self.block = block

    def _fit(self, sequences: Sequences) -> None:
        users_items = _interactions(sequences, self.n_catalogue + 1)
        items_users = users_items.T.tocsr()
        norms = np.sqrt(np.asarray(users_items.sum(0)).ravel())
        norms[norms == 0] = 1.0
        keep = min(self.neighbors, users_items.shape[1] - 1)
        rows, cols, vals = [], [], []
        # Row blocks bound memory to block x catalogue, whatever the catalogue size.
        for start in range(0, items_users.shape[0], self.block):
            stop = min(start + self.block, items_users.shape[0])
            block = (items_users[start:stop] @ users_items).toarray()
            block /= norms[start:stop, None] * norms[None, :]
            block[np.arange(stop - start), np.arange(start, stop)] = 0.0
            # torch's top-k: several times faster than numpy's argpartition on a wide block
            top_vals, top = (t.numpy() for t in torch.from_numpy(block).topk(keep, dim=1))
            nonzero = top_vals > 0
            rows.append(np.nonzero(nonzero)[0] + start)
            cols.append(top[nonzero])
            vals.append(top_vals[nonzero])
        size = self.n_catalogue + 1
        self.similarity = sp.csr_matrix(
            (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
            shape=(size, size),
        )

    def _scores(self, item_seq: torch.Tensor) -> np.ndarray:
        history = _multi_hot(item_seq, self.n_catalogue + 1)
        return (history @ self.similarity).toarray() + self._tie_break()


class EASE(Baseline):
    """Embarrassingly Shallow Autoencoder (Steck, 2019): a closed-form item-item regression with
    a zero diagonal, B = I - P / diag(P) with P = (X'X + lambda I)^-1. Dense in the number of
    items, so evaluation fits it up to :data:`MAX_DENSE_ITEMS` items only."""

    name = "ease"
    dense = True
    tunable = ("l2",)

    def __init__(self, l2: float = 500.0) -> None:
        super().__init__()
        self.l2 = l2

    def _fit(self, sequences: Sequences) -> None:
        self._solve(self._co_occurrence(sequences))

    @classmethod
    def fit_grid(
        cls,
        sequences: Sequences | Iterable[np.ndarray],
        n_items: int,
        n_catalogue: int,
        settings: Iterable[Mapping[str, Any]],
    ) -> Iterator[Baseline]:
        """EASE with each setting (``{"l2": ...}``) in turn, from one Gram matrix X'X.

        Each l2 then costs a copy of the Gram matrix and its Cholesky inverse. Reusing one
        eigendecomposition instead (P = V diag(1 / (w + l2)) V') is slower: timed on
        amazon-beauty's 12,101 items, the eigendecomposition alone took as long as several
        Cholesky inverses, and rebuilding P from it for one l2 (a dense product) took no less
        than that l2's own Cholesky inverse, so it loses at any grid size.
        """
        gram: np.ndarray | None = None
        for setting in settings:
            model = cls(**setting)
            seqs = model._learn_popularity(sequences, n_items, n_catalogue)
            if gram is None:
                gram = model._co_occurrence(seqs)
            model._solve(gram.copy())
            yield model

    def _co_occurrence(self, sequences: Sequences) -> np.ndarray:
        """X'X, dense float32 (co-occurrence counts are exact in float32)."""
        users_items = _interactions(sequences, self.n_items + 1)
        return (users_items.T @ users_items).toarray()

    def _solve(self, gram: np.ndarray) -> None:
        """The weights from X'X, computed in its memory: B = I - P / diag(P) with
        P = (X'X + l2 I)^-1."""
        gram[np.diag_indices_from(gram)] += self.l2
        weights = _spd_inverse(gram)
        weights /= -np.diag(weights)[None, :]
        np.fill_diagonal(weights, 0.0)
        self.weights = torch.from_numpy(weights)

    def _scores(self, item_seq: torch.Tensor) -> np.ndarray:
        # A history holds a handful of items: summing their rows of the dense weights (sparse
        # times dense) costs a few rows per user, where a dense multi-hot product costs them all.
        scores = _multi_hot(item_seq, self.n_items + 1) @ self.weights.numpy()
        if self.n_catalogue > self.n_items:  # item-table-only items: no weights, tie-break only
            scores = np.pad(scores, ((0, 0), (0, self.n_catalogue - self.n_items)))
        scores += self._tie_break()
        return scores


def _spd_inverse(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a symmetric positive definite float32 matrix, computed in place.

    Cholesky, then LAPACK's inverse from the factor (potrf, potri): half the work of a general
    (LU) inverse, and float32 halves it again, which matters at ten thousand items and more.
    EASE's ridge term keeps the Gram matrix well conditioned enough for float32.
    """
    # The transpose of a C-ordered symmetric matrix is the same matrix in Fortran order, which
    # lets LAPACK work in place; its lower triangle is the C-ordered upper one.
    lapack_view = matrix.T
    factor, info = scipy.linalg.lapack.spotrf(lapack_view, lower=1, clean=0, overwrite_a=1)
    if info != 0:
        raise ValueError(f"ease: the Gram matrix is not positive definite (LAPACK info {info})")
    inverse, info = scipy.linalg.lapack.spotri(factor, lower=1, overwrite_c=1)
    if info != 0:
        raise ValueError(f"ease: inverting the Gram matrix failed (LAPACK info {info})")
    upper = np.ascontiguousarray(inverse.T)  # no copy: the memory of ``matrix``
    _mirror_upper(upper)
    return upper


def _mirror_upper(matrix: np.ndarray, tile: int = 512) -> None:
    """Copy the upper triangle of a square C-ordered matrix onto its lower one, in place (tile
    by tile, so the transposed reads stay in cache)."""
    n = len(matrix)
    for i in range(0, n, tile):
        for j in range(0, i, tile):
            matrix[i : i + tile, j : j + tile] = matrix[j : j + tile, i : i + tile].T
        block = matrix[i : i + tile, i : i + tile]
        block[np.tril_indices(len(block), -1)] = block.T[np.tril_indices(len(block), -1)]


BASELINES: dict[str, type[Baseline]] = {
    cls.name: cls for cls in (MostPopular, Transitions, ItemKNN, EASE)
}


def too_large(n_items: int, max_dense_items: int = MAX_DENSE_ITEMS) -> dict[str, str]:
    """The baselines that cannot be fitted on ``n_items`` items, each with the reason."""
    if n_items <= max_dense_items:
        return {}
    size = 4 * n_items**2 / 1e9
    return {
        name: f"{n_items} items are more than --max-dense-items {max_dense_items}: its dense "
        f"item x item matrix would take {size:.1f} GB of float32; raise --max-dense-items to "
        "fit it anyway"
        for name, cls in BASELINES.items()
        if cls.dense
    }


def fit_baselines(
    sequences: Sequences | Sequence[np.ndarray],
    n_items: int,
    n_catalogue: int,
    max_dense_items: int = MAX_DENSE_ITEMS,
    settings: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Baseline]:
    """Every baseline, fitted on the same training sequences, but those :func:`too_large` for
    the catalogue; with its ``settings`` (by name, e.g. ``{"ease": {"l2": 100.0}}``) where given,
    else its defaults."""
    skipped = too_large(n_items, max_dense_items)
    settings = settings or {}
    return {
        name: cls(**settings.get(name, {})).fit(sequences, n_items, n_catalogue)
        for name, cls in BASELINES.items()
        if name not in skipped
    }

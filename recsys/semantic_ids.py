"""Semantic IDs: a short tuple of codes per item, quantised from its frozen text vector.

Generative retrieval (TIGER) names an item by tokens a decoder can emit one at a time; items with
similar texts share their leading tokens. ``python -m recsys.features semantic-ids`` writes
``data/processed/<ds>/semantic_ids/<slug>.npy`` (int64 ``[n_catalogue + 1, L + 1]``, row i = item
i) with a ``<slug>.json`` manifest and the quantiser that made the codes, ``<slug>.quantiser.npz``,
beside it. Columns 0..L-1 are the L residual-quantiser codes,
column L tells apart items whose L codes collide (0, 1, 2, ... within a group, 0 when alone; it
stays below the manifest's ``largest_collision_group``), so every ID is unique. Row 0, the
padding item, is all -1: it can never be read as a real code, and an embedding lookup of it fails
loudly instead of silently aliasing code 0.

Two quantisers: ``rqvae`` (default) trains a residual-quantised autoencoder whose codebooks start
from k-means and restart dead codes; ``rqkmeans`` runs k-means on the residual level by level,
with no network, as a fast baseline. Either is stored as a :class:`Quantiser` (the encoder MLP,
if any, and the codebooks), and the codes are what it gives: a TIGER run keeps a copy
(:func:`store_run_quantiser`), so that an item added to the service later gets its codes by the
very function its catalogue did.
"""

from __future__ import annotations

import hashlib
import time
import warnings
import zipfile
from dataclasses import asdict, dataclass
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
from loguru import logger

from recsys.cli import RecsysError, fail
from recsys.text_features import cpu_cores, load_features_and_manifest, model_slug
from recsys.io import atomic_path, read_array_and_manifest, read_json, write_array_and_manifest
from recsys.io import write_json
from recsys.processed import processed_dir

SEMANTIC_IDS_DIR = "semantic_ids"
QUANTISER_SUFFIX = ".quantiser.npz"
#: A TIGER run's copy of its quantiser, and what it must match (written by training).
RUN_QUANTISER, RUN_QUANTISER_MANIFEST = "quantiser.npz", "quantiser.json"
#: The features manifest's settings that turn an item's sentence into its text vector.
ENCODER_KEYS = ("encoder", "pooling", "max_length", "normalize", "dim")
PADDING_CODE = -1
_MANIFEST_KEYS = ("method", "levels", "codebook_size", "dataset", "n_items", "features_sha256")


class Method(str, Enum):
    rqvae = "rqvae"
    rqkmeans = "rqkmeans"


@dataclass(frozen=True)
class SemanticIdOptions:
    """How semantic IDs are made; the fields that apply to the method form the cache key."""

    method: str = Method.rqvae.value
    levels: int = 3
    codebook_size: int = 256
    model: str | None = None  # the feature model (None: the bundled default)
    seed: int = 42
    # rqvae only
    steps: int = 240  # optimiser steps, whatever the catalogue size: few epochs of a big one
    lr: float = 1e-2
    batch_size: int = 1024
    hidden_dim: int = 256
    latent_dim: int = 32
    commitment_weight: float = 0.25
    dead_code_threshold: float = 2.0
    # rqkmeans only
    kmeans_iters: int = 100

    @property
    def slug(self) -> str:
        return f"{self.method}-{self.levels}x{self.codebook_size}-{model_slug(self.model)}"

    def settings(self) -> dict[str, Any]:
        """The options that decide the codes (those of the other method are left out)."""
        rqvae_only = ("steps", "lr", "batch_size", "hidden_dim", "latent_dim")
        rqvae_only += ("commitment_weight", "dead_code_threshold")
        skip = ("model", "kmeans_iters") if self.method == Method.rqvae else ("model", *rqvae_only)
        return {k: v for k, v in asdict(self).items() if k not in skip}


@dataclass
class SemanticIdResult:
    path: Path
    ids: np.ndarray
    manifest: dict
    cached: bool


def semantic_id_paths(
    dataset: str, slug: str, processed_root: Path | None = None
) -> tuple[Path, Path]:
    folder = processed_dir(dataset, processed_root) / SEMANTIC_IDS_DIR
    return folder / f"{slug}.npy", folder / f"{slug}.json"


def quantiser_path(dataset: str, slug: str, processed_root: Path | None = None) -> Path:
    """Where the quantiser that made the ``slug`` IDs is kept, beside them."""
    return processed_dir(dataset, processed_root) / SEMANTIC_IDS_DIR / f"{slug}{QUANTISER_SUFFIX}"


def built_slugs(dataset: str, processed_root: Path | None = None) -> list[str]:
    """The slugs of the semantic IDs built for ``dataset``, the default first, then newest."""
    folder = processed_dir(dataset, processed_root) / SEMANTIC_IDS_DIR
    manifests = sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    slugs = [p.stem for p in manifests if p.with_suffix(".npy").is_file()]
    default = SemanticIdOptions().slug
    return sorted(slugs, key=lambda slug: slug != default)


def _check_options(options: SemanticIdOptions, n_items: int, dataset: str) -> None:
    if options.method not in tuple(m.value for m in Method):
        raise fail(f"--method must be rqvae or rqkmeans, got {options.method!r}")
    if options.levels < 1:
        raise fail(f"--levels must be at least 1, got {options.levels}")
    if options.codebook_size < 1:
        raise fail(f"--codebook-size must be at least 1, got {options.codebook_size}")
    if options.codebook_size > n_items:
        raise fail(
            f"--codebook-size {options.codebook_size} exceeds the {n_items} items of "
            f"{dataset!r}; choose at most {n_items}"
        )
    positive = ("steps", "lr", "batch_size", "hidden_dim", "latent_dim", "kmeans_iters")
    for name in positive:
        if getattr(options, name) <= 0:
            flag = name.replace("_", "-")
            raise fail(f"--{flag} must be positive, got {getattr(options, name)}")
    if options.dead_code_threshold < 0:
        raise fail(f"--dead-code-threshold must be 0 or more, got {options.dead_code_threshold}")


# ---------------------------------------------------------------------------------------------
# Quantisers: vectors [n, dim] -> a Quantiser (codes [n, L]) and the reconstruction [n, dim]
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Quantiser:
    """Text vectors to codes: the encoder MLP (rqvae; none for rqkmeans), then at each level the
    codebook row nearest to what the levels before left of the vector.

    Plain arrays, so that a run can keep it without the training libraries and load it without
    unpickling anything.
    """

    codebooks: np.ndarray  # [L, codebook_size, latent]
    layers: tuple[tuple[np.ndarray, np.ndarray], ...] = ()  # (weight [out, in], bias [out])

    @property
    def levels(self) -> int:
        return int(self.codebooks.shape[0])

    @property
    def codebook_size(self) -> int:
        return int(self.codebooks.shape[1])

    @property
    def dim(self) -> int:
        """The width of the text vectors it reads."""
        return int(self.layers[0][0].shape[1] if self.layers else self.codebooks.shape[2])

    def latent(self, x: np.ndarray) -> np.ndarray:
        """``x`` through the encoder (Linear layers with SiLU between, as :func:`_mlp`)."""
        h = np.asarray(x, dtype=self.codebooks.dtype)
        for depth, (weight, bias) in enumerate(self.layers):
            h = h @ weight.T + bias
            if depth < len(self.layers) - 1:
                h = h / (1.0 + np.exp(-h))
        return h

    def encode(self, x: np.ndarray) -> np.ndarray:
        """int64 codes ``[n, L]`` of text vectors ``x`` ``[n, dim]``."""
        residual = self.latent(x)
        codes = np.empty((len(residual), self.levels), dtype=np.int64)
        for level, book in enumerate(self.codebooks):
            # |r - c|^2 = |r|^2 - 2 r.c + |c|^2, and |r|^2 is the same for every code
            codes[:, level] = ((book**2).sum(1) - 2.0 * residual @ book.T).argmin(1)
            residual = residual - book[codes[:, level]]
        return codes

    def save(self, path: Path) -> Path:
        arrays = {"codebooks": self.codebooks}
        for depth, (weight, bias) in enumerate(self.layers):
            arrays |= {f"weight_{depth}": weight, f"bias_{depth}": bias}
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
        return path

    @classmethod
    def load(cls, path: Path) -> Quantiser:
        """The quantiser saved at ``path``; missing or damaged is a one-line user error."""
        try:
            with np.load(path, allow_pickle=False) as arrays:
                depth = sum(name.startswith("weight_") for name in arrays.files)
                layers = tuple((arrays[f"weight_{i}"], arrays[f"bias_{i}"]) for i in range(depth))
                quantiser = cls(arrays["codebooks"], layers)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
            raise fail(f"quantiser {path} is missing or unreadable ({err})")
        if quantiser.codebooks.ndim != 3:
            raise fail(f"quantiser {path} has codebooks of shape {quantiser.codebooks.shape}")
        return quantiser


def rq_kmeans(x: np.ndarray, options: SemanticIdOptions) -> tuple[Quantiser, np.ndarray]:
    """k-means on the input, then on what is left of it, L times."""
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    residual = x.astype(np.float64)
    codes = np.empty((len(x), options.levels), dtype=np.int64)
    centres = []
    for level in range(options.levels):
        km = KMeans(
            options.codebook_size,
            n_init=1,
            max_iter=options.kmeans_iters,
            random_state=options.seed + level,
        )
        with warnings.catch_warnings():  # few distinct residuals at deep levels: fewer clusters
            warnings.simplefilter("ignore", ConvergenceWarning)
            codes[:, level] = km.fit_predict(residual)
        residual = residual - km.cluster_centers_[codes[:, level]]
        centres.append(km.cluster_centers_)
    return Quantiser(np.stack(centres)), (x - residual).astype(np.float32)


def _mlp(sizes: list[int]) -> Any:
    from torch import nn

    layers: list[Any] = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


def _batches(n: int, size: int, steps: int, seed: int) -> Iterator[Any]:
    """``steps`` batches of row indices, reshuffling after each pass over the ``n`` rows."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    done = 0
    while True:
        for batch in torch.randperm(n, generator=generator).split(size):
            if done == steps:
                return
            done += 1
            yield batch


def rq_vae(x: np.ndarray, options: SemanticIdOptions) -> tuple[Quantiser, np.ndarray]:
    """Train encoder, residual codebooks and decoder on ``x``; the quantiser (encoder and
    codebooks) and the decoded vectors.

    Codebooks are EMA-updated, start from k-means on the whole table's latents (not on one
    batch), and a code whose running count falls under ``dead_code_threshold`` is restarted on a
    batch vector, which keeps codebooks from collapsing onto a few entries.
    """
    import torch
    from vector_quantize_pytorch import ResidualVQ

    torch.set_num_threads(cpu_cores())
    torch.manual_seed(options.seed)
    dim = x.shape[1]
    encoder = _mlp([dim, options.hidden_dim, options.hidden_dim // 2, options.latent_dim])
    decoder = _mlp([options.latent_dim, options.hidden_dim // 2, options.hidden_dim, dim])
    quantizer = ResidualVQ(
        dim=options.latent_dim,
        num_quantizers=options.levels,
        codebook_size=options.codebook_size,
        kmeans_init=True,
        kmeans_iters=10,
        threshold_ema_dead_code=options.dead_code_threshold,
        commitment_weight=options.commitment_weight,
    )
    data = torch.from_numpy(x)
    with torch.no_grad():  # k-means initialisation of every level on all items at once
        quantizer(encoder(data).unsqueeze(0))
    params = [*encoder.parameters(), *decoder.parameters()]
    optimiser = torch.optim.AdamW(params, lr=options.lr)
    for batch in _batches(len(x), options.batch_size, options.steps, options.seed):
        rows = data[batch]
        quantised, _, commit = quantizer(encoder(rows).unsqueeze(0))
        recon = ((decoder(quantised[0]) - rows) ** 2).sum(-1).mean()
        loss = recon + commit.sum()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    quantizer.eval()
    with torch.no_grad():
        quantised, _, _ = quantizer(encoder(data).unsqueeze(0))
        decoded = decoder(quantised[0])
    layers = tuple(
        (layer.weight.detach().numpy(), layer.bias.detach().numpy())
        for layer in encoder
        if isinstance(layer, torch.nn.Linear)
    )
    return Quantiser(quantizer.codebooks.detach().numpy(), layers), decoded.numpy()


_QUANTISERS = {Method.rqvae.value: rq_vae, Method.rqkmeans.value: rq_kmeans}


# ---------------------------------------------------------------------------------------------
# IDs and their statistics
# ---------------------------------------------------------------------------------------------


def disambiguate(codes: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """Append to each code tuple its rank among the items sharing it (in item order).

    The collision rate is the share of items whose L-tuple some other item also has.
    """
    _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    order = np.argsort(inverse, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(len(codes), dtype=np.int64)
    rank[order] = np.arange(len(codes)) - np.repeat(starts, counts)
    stats = {
        "n_unique_tuples": int(len(counts)),
        "collision_rate": round(float(counts[counts > 1].sum() / len(codes)), 6),
        "collision_rate_definition": "items whose L-tuple another item shares / items",
        "largest_collision_group": int(counts.max()),
    }
    return np.column_stack([codes, rank]), stats


def code_usage(codes: np.ndarray, codebook_size: int) -> list[float]:
    """Per level, the share of the codebook that at least one item uses."""
    return [round(len(np.unique(col)) / codebook_size, 6) for col in codes.T]


def array_sha256(array: np.ndarray) -> str:
    """Fingerprint of an array: semantic IDs are only valid for these exact vectors, and a run's
    quantiser for these exact IDs."""
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


def _read_files(npy: Path, manifest_path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    """A semantic-ID array and its manifest, checked against each other."""
    ids, manifest = read_array_and_manifest(npy, manifest_path, _MANIFEST_KEYS)
    expected = (manifest["n_items"] + 1, manifest["levels"] + 1)
    if ids.dtype != np.int64 or ids.shape != expected:
        raise fail(f"{npy} holds {ids.dtype} {ids.shape} but its manifest says int64 {expected}")
    return ids, manifest


def _hint(dataset: str, model: str | None) -> str:
    extra = f' FEATURES_ARGS="--model {model}"' if model else ""
    return f"run 'make features DATASET={dataset}{extra}'"


def build_semantic_ids(
    dataset: str,
    options: SemanticIdOptions = SemanticIdOptions(),
    force: bool = False,
    processed_root: Path | None = None,
) -> SemanticIdResult:
    """Quantise ``dataset``'s text vectors into unique item IDs unless they exist for these
    vectors and options; the manifest is removed first and written last (the commit mark)."""
    vectors, features_manifest = load_features_and_manifest(dataset, options.model, processed_root)
    n_items = len(vectors) - 1
    _check_options(options, n_items, dataset)
    npy, manifest_path = semantic_id_paths(dataset, options.slug, processed_root)
    stored_quantiser = quantiser_path(dataset, options.slug, processed_root)
    wanted = {
        **options.settings(),
        "dataset": dataset,
        "n_items": n_items,
        "features_sha256": array_sha256(vectors),
    }
    if not force and npy.exists():
        try:
            ids, old = _read_files(npy, manifest_path)
        except RecsysError as err:
            logger.warning(f"cached semantic IDs unusable ({err}); recomputing")
        else:
            changed = [k for k in wanted if old.get(k) != wanted[k]]
            if not stored_quantiser.is_file():
                changed.append("the quantiser (not stored with them)")
            if not changed:
                logger.info(
                    f"semantic IDs up to date (same vectors and options), cache hit: {npy}"
                )
                return SemanticIdResult(npy, ids, old, cached=True)
            logger.info(f"recomputing semantic IDs: {', '.join(changed)} changed")
    started = time.perf_counter()
    logger.info(f"quantising {n_items} items of {dataset} with {options.slug}")
    x = vectors[1:]
    quantiser, decoded = _QUANTISERS[options.method](x, options)
    codes = quantiser.encode(x)
    seconds = time.perf_counter() - started
    unique, stats = disambiguate(codes)
    ids = np.vstack([np.full((1, options.levels + 1), PADDING_CODE, np.int64), unique])
    error = ((decoded - x) ** 2).sum(-1)
    manifest = {
        **wanted,
        "slug": options.slug,
        "features": {
            "slug": model_slug(options.model),
            "model": features_manifest["model"],
            "texts_sha256": features_manifest["texts_sha256"],
            "dim": features_manifest["dim"],
        },
        "padding_row": PADDING_CODE,
        "reconstruction_mse": round(float(error.mean() / x.shape[1]), 8),
        "reconstruction_relative": round(float(error.sum() / (x**2).sum()), 6),
        "code_usage": code_usage(codes, options.codebook_size),
        **stats,
        "seconds": round(seconds, 3),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    manifest_path.unlink(missing_ok=True)  # the manifest commits the IDs and their quantiser
    quantiser.save(stored_quantiser)
    write_array_and_manifest(ids, npy, manifest, manifest_path)
    logger.info(
        f"{n_items} items -> {ids.shape} in {seconds:.1f}s: code usage "
        f"{', '.join(f'{u:.0%}' for u in manifest['code_usage'])}, collision rate "
        f"{stats['collision_rate']:.2%} (largest group {stats['largest_collision_group']}), "
        f"relative reconstruction error {manifest['reconstruction_relative']:.3f}: {npy}"
    )
    return SemanticIdResult(npy, ids, manifest, cached=False)


def load_semantic_ids(
    dataset: str,
    slug_or_options: str | SemanticIdOptions = SemanticIdOptions(),
    processed_root: Path | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Semantic IDs int64 [n_catalogue + 1, L + 1] (row 0 = -1) and their manifest, checked to
    come from ``dataset``'s current feature file; anything else is a one-line user error."""
    given = isinstance(slug_or_options, SemanticIdOptions)
    slug = slug_or_options.slug if given else slug_or_options
    npy, manifest_path = semantic_id_paths(dataset, slug, processed_root)
    hint = _hint(dataset, slug_or_options.model if given else None)
    try:
        ids, manifest = _read_files(npy, manifest_path)
    except RecsysError as err:
        raise fail(f"semantic IDs {slug!r} of {dataset!r} are unusable: {err}; {hint}")
    model = slug_or_options.model if given else _feature_model(manifest)
    vectors, _ = load_features_and_manifest(dataset, model, processed_root)
    if manifest["dataset"] != dataset or manifest["n_items"] != len(vectors) - 1:
        raise fail(
            f"{npy} was built for {manifest['dataset']!r} ({manifest['n_items']} items), not "
            f"{dataset!r} ({len(vectors) - 1} items); {hint}"
        )
    if manifest["features_sha256"] != array_sha256(vectors):
        raise fail(f"{npy} was built from another feature file than the current one; {hint}")
    return ids, manifest


def _feature_model(manifest: dict[str, Any]) -> str | None:
    """The --model value of the feature file a manifest names (None: the bundled default)."""
    features = manifest.get("features") or {}
    return (
        None if features.get("slug", model_slug(None)) == model_slug(None) else features["model"]
    )


# ---------------------------------------------------------------------------------------------
# A TIGER run's own quantiser
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunQuantiser:
    """A run's quantiser and its manifest: the IDs it made and the text encoder settings of the
    vectors it reads (``features``: the ``--model`` value, None for the default, and
    :data:`ENCODER_KEYS`)."""

    quantiser: Quantiser
    manifest: dict[str, Any]

    def new_ids(self, vectors: np.ndarray, taken: np.ndarray) -> np.ndarray:
        """IDs ``[m, L + 1]`` for new items' text vectors, after the items of ``taken`` (their
        IDs ``[n, L + 1]``): the collision digit continues each code tuple's count, in the order
        given, as :func:`disambiguate` numbers the catalogue. Whether the run's last level can
        spell that digit is the caller's to check."""
        codes = self.quantiser.encode(vectors)
        counts: dict[tuple[int, ...], int] = {}
        for row in taken[:, :-1].tolist():
            counts[tuple(row)] = counts.get(tuple(row), 0) + 1
        digits = np.empty(len(codes), dtype=np.int64)
        for i, row in enumerate(codes.tolist()):
            digits[i] = counts.get(tuple(row), 0)
            counts[tuple(row)] = digits[i] + 1
        return np.column_stack([codes, digits])

    def text_encoder(self, device: str = "cpu") -> Callable[[list[str]], np.ndarray]:
        """The encoder, with the settings, that made the vectors this quantiser reads."""
        from recsys.text_features import load_text_encoder, resolve_model

        features = self.manifest["features"]
        return load_text_encoder(resolve_model(features["model"]), features, device).encode


def store_run_quantiser(
    run_dir: Path, dataset: str, slug: str, processed_root: Path | None = None
) -> None:
    """Keep the quantiser of the ``slug`` IDs in a TIGER run, with what it must match there.

    IDs built before quantisers were stored have none: the run then takes no new items, and a
    warning says how to rebuild them.
    """
    ids, manifest = load_semantic_ids(dataset, slug, processed_root)
    source = quantiser_path(dataset, slug, processed_root)
    target, target_manifest = run_dir / RUN_QUANTISER, run_dir / RUN_QUANTISER_MANIFEST
    target_manifest.unlink(missing_ok=True)  # the manifest commits the pair, as for the IDs
    if not source.is_file():
        target.unlink(missing_ok=True)
        logger.warning(
            f"semantic IDs {slug} of {dataset} were built before their quantiser was kept, so "
            f"run {run_dir.name} cannot give new items codes; rebuild them with "
            f"'make features DATASET={dataset}' and retrain to add items to it"
        )
        return
    model = _feature_model(manifest)
    _, features = load_features_and_manifest(dataset, model, processed_root)
    Quantiser.load(source).save(target)
    levels = int(manifest["levels"])
    vocab = [int(manifest["codebook_size"])] * levels + [int(manifest["largest_collision_group"])]
    run_manifest = {
        "dataset": dataset,
        "slug": slug,
        "method": manifest["method"],
        "code_vocab": vocab,
        "n_items": int(manifest["n_items"]),
        "ids_sha256": array_sha256(ids),
        "features": {"model": model, **{k: features.get(k) for k in ENCODER_KEYS}},
    }
    write_json(run_manifest, target_manifest)


def load_run_quantiser(
    run_dir: Path, code_vocab: tuple[int, ...], item_codes: np.ndarray
) -> RunQuantiser | None:
    """A TIGER run's quantiser, checked to be the one that made ``item_codes`` (its checkpoint's
    IDs, ``[n_catalogue + 1, L + 1]``) for its ``code_vocab``; None where the run has none (it
    was trained before runs kept one). Files that do not fit the run are a one-line error."""
    path, manifest_path = run_dir / RUN_QUANTISER, run_dir / RUN_QUANTISER_MANIFEST
    if not path.exists() and not manifest_path.exists():
        return None
    hint = "retrain the run to store its quantiser again"
    manifest = read_json(manifest_path)
    lacking = [k for k in ("code_vocab", "n_items", "ids_sha256", "features") if k not in manifest]
    if lacking:
        raise fail(f"{manifest_path} lacks {', '.join(lacking)}; {hint}")
    quantiser = Quantiser.load(path)
    width = manifest["features"].get("dim")
    checks = [
        ("code levels", quantiser.levels, len(code_vocab) - 1),
        ("codebook sizes", [quantiser.codebook_size] * quantiser.levels, list(code_vocab[:-1])),
        ("vocabulary sizes", list(manifest["code_vocab"]), list(code_vocab)),
        ("items", manifest["n_items"], len(item_codes) - 1),
        ("text vector width", quantiser.dim, quantiser.dim if width is None else int(width)),
    ]
    for what, stored, expected in checks:
        if stored != expected:
            raise fail(
                f"the quantiser of run {run_dir} does not match it: {what} {stored}, expected "
                f"{expected}; {hint}"
            )
    if manifest["ids_sha256"] != array_sha256(np.ascontiguousarray(item_codes, np.int64)):
        raise fail(f"the quantiser of run {run_dir} made other semantic IDs than its own; {hint}")
    return RunQuantiser(quantiser, manifest)

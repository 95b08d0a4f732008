"""Semantic IDs (recsys.semantic_ids): quantisers, uniqueness, the cache and its error paths.

Feature files here are synthetic: well-separated gaussian clusters written with a features
manifest whose texts fingerprint matches a tiny item_text.parquet, so no encoder runs.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recsys import features, text_features
from recsys.cli import RecsysError, run
from recsys.text_features import feature_paths, texts_sha256, write_item_texts
from recsys.io import write_json
from recsys.semantic_ids import (
    Quantiser,
    SemanticIdOptions,
    build_semantic_ids,
    disambiguate,
    load_semantic_ids,
    quantiser_path,
    rq_kmeans,
    rq_vae,
)

DATASET = "toy"
N_CLUSTERS, PER_CLUSTER, DIM = 8, 25, 16
FAST = SemanticIdOptions(levels=2, codebook_size=N_CLUSTERS, steps=60, batch_size=64)


def clusters(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``N_CLUSTERS`` tight gaussian blobs far apart: vectors [n, DIM] and their cluster."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(N_CLUSTERS, DIM)) * 4
    label = np.repeat(np.arange(N_CLUSTERS), PER_CLUSTER)
    x = centres[label] + rng.normal(scale=0.1, size=(len(label), DIM))
    return x.astype(np.float32), label


def write_dataset(root: Path, dataset: str = DATASET, seed: int = 0, title: str = "item") -> None:
    """items.parquet, item_text.parquet and a default-model feature file of clustered vectors."""
    x, _ = clusters(seed)
    folder = root / dataset
    folder.mkdir(parents=True, exist_ok=True)
    n = len(x)
    pd.DataFrame(
        {"item_idx": np.arange(1, n + 1), "item_id": np.arange(n), "title": [title] * n}
    ).to_parquet(folder / "items.parquet", index=False)
    write_features(root, dataset, x)


def write_features(root: Path, dataset: str, x: np.ndarray) -> None:
    """The dataset's item texts and a default-model feature file of ``x`` ``[n_items, dim]``
    (the padding row added), with a manifest that matches the texts."""
    texts = write_item_texts(dataset, processed_root=root).table["text"].tolist()
    npy, manifest_path = feature_paths(dataset, text_features.DEFAULT_MODEL_SLUG, root)
    npy.parent.mkdir(exist_ok=True)
    np.save(npy, np.vstack([np.zeros((1, x.shape[1]), np.float32), x]))
    manifest = {k: None for k in text_features._MANIFEST_KEYS}
    manifest |= {
        "model": "synthetic",
        "dim": int(x.shape[1]),
        "n_items": len(x),
        "texts_sha256": texts_sha256(texts),
    }
    write_json(manifest, manifest_path)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    write_dataset(tmp_path)
    return tmp_path


def purity(codes: np.ndarray, label: np.ndarray) -> tuple[int, bool]:
    """How many distinct first-level codes, and whether each cluster has exactly one."""
    one_each = all(len(np.unique(codes[label == c, 0])) == 1 for c in range(N_CLUSTERS))
    return len(np.unique(codes[:, 0])), one_each


@pytest.mark.slow
@pytest.mark.parametrize("quantise", [rq_vae, rq_kmeans], ids=["rqvae", "rqkmeans"])
def test_separated_clusters_get_distinct_first_codes(quantise) -> None:
    x, label = clusters()
    quantiser, decoded = quantise(x, FAST)
    codes = quantiser.encode(x)
    assert codes.shape == (len(x), FAST.levels)
    assert purity(codes, label) == (N_CLUSTERS, True)
    # the decoded vectors are much closer to the input than the input is to its mean
    assert ((decoded - x) ** 2).sum() < 0.1 * ((x - x.mean(0)) ** 2).sum()


@pytest.mark.slow
def test_rqvae_is_seeded() -> None:
    x, _ = clusters()
    first = rq_vae(x, FAST)[0].encode(x)
    assert np.array_equal(first, rq_vae(x, FAST)[0].encode(x))


def test_disambiguation_makes_every_id_unique() -> None:
    codes = np.array([[1, 2], [1, 2], [0, 5], [1, 2], [0, 5], [3, 3]])
    ids, stats = disambiguate(codes)
    assert ids[:, -1].tolist() == [0, 1, 0, 2, 1, 0]
    assert len({tuple(r) for r in ids}) == len(ids)
    assert stats["collision_rate"] == pytest.approx(5 / 6)
    assert stats["largest_collision_group"] == 3 and stats["n_unique_tuples"] == 3


@pytest.mark.slow
@pytest.mark.parametrize("method", ["rqvae", "rqkmeans"])
def test_build_writes_unique_ids_and_a_manifest(root: Path, method: str) -> None:
    result = build_semantic_ids(DATASET, replace(FAST, method=method), processed_root=root)
    ids, manifest = result.ids, result.manifest
    n = N_CLUSTERS * PER_CLUSTER
    assert result.path.name == f"{method}-2x{N_CLUSTERS}-all-MiniLM-L6-v2.npy"
    assert ids.dtype == np.int64 and ids.shape == (n + 1, FAST.levels + 1)
    assert (ids[0] == -1).all() and (ids[1:] >= 0).all()
    assert len({tuple(r) for r in ids[1:]}) == n
    assert manifest["code_usage"][0] == 1.0 and len(manifest["code_usage"]) == 2
    for key in ("reconstruction_mse", "collision_rate", "largest_collision_group", "seconds"):
        assert key in manifest
    assert manifest["features"]["texts_sha256"] and manifest["seed"] == FAST.seed
    # the quantiser kept beside them gives every item its codes again, from its vector alone
    quantiser = Quantiser.load(quantiser_path(DATASET, manifest["slug"], root))
    assert quantiser.levels == FAST.levels and quantiser.codebook_size == N_CLUSTERS
    assert np.array_equal(quantiser.encode(clusters()[0]), ids[1:, :-1])
    loaded, _ = load_semantic_ids(DATASET, replace(FAST, method=method), root)
    assert np.array_equal(loaded, ids)
    assert np.array_equal(load_semantic_ids(DATASET, result.manifest["slug"], root)[0], ids)


def test_rerun_is_a_cache_hit_and_force_or_new_options_recompute(root: Path) -> None:
    options = replace(FAST, method="rqkmeans")
    first = build_semantic_ids(DATASET, options, processed_root=root)
    assert not first.cached
    again = build_semantic_ids(DATASET, options, processed_root=root)
    assert again.cached and again.manifest["created_at"] == first.manifest["created_at"]
    assert not build_semantic_ids(DATASET, options, force=True, processed_root=root).cached
    assert not build_semantic_ids(DATASET, replace(options, seed=1), processed_root=root).cached
    quantiser_path(DATASET, options.slug, root).unlink()  # IDs built before quantisers were kept
    assert not build_semantic_ids(DATASET, options, processed_root=root).cached
    assert quantiser_path(DATASET, options.slug, root).is_file()


def test_ids_from_another_feature_file_are_refused(root: Path) -> None:
    options = replace(FAST, method="rqkmeans")
    build_semantic_ids(DATASET, options, processed_root=root)
    write_dataset(root, seed=1, title="other")  # texts and vectors rebuilt
    with pytest.raises(RecsysError, match="another feature file.*make features") as err:
        load_semantic_ids(DATASET, options, root)
    assert "\n" not in str(err.value)
    # a file copied in from another dataset is refused too
    write_dataset(root, "other-ds")
    src = root / DATASET / "semantic_ids"
    dst = root / "other-ds" / "semantic_ids"
    dst.mkdir()
    for path in src.iterdir():
        (dst / path.name).write_bytes(path.read_bytes())
    with pytest.raises(RecsysError, match="built for 'toy'.*make features DATASET=other-ds"):
        load_semantic_ids("other-ds", options, root)


def test_corrupt_or_missing_files_are_one_line_errors(root: Path) -> None:
    options = replace(FAST, method="rqkmeans")
    with pytest.raises(RecsysError, match="does not exist.*make features"):
        load_semantic_ids(DATASET, options, root)
    result = build_semantic_ids(DATASET, options, processed_root=root)
    result.path.write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(RecsysError, match="is corrupt") as err:
        load_semantic_ids(DATASET, options, root)
    assert "\n" not in str(err.value)
    # a damaged cache is recomputed rather than trusted
    assert not build_semantic_ids(DATASET, options, processed_root=root).cached
    np.save(result.path, np.zeros((3, 3), np.int64))
    with pytest.raises(RecsysError, match=r"holds int64 \(3, 3\)"):
        load_semantic_ids(DATASET, options, root)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"levels": 0}, "--levels must be at least 1, got 0"),
        ({"codebook_size": -1}, "--codebook-size must be at least 1, got -1"),
        ({"codebook_size": 10_000}, "--codebook-size 10000 exceeds the 200 items"),
        ({"method": "pq"}, "--method must be rqvae or rqkmeans"),
        ({"steps": 0}, "--steps must be positive"),
    ],
)
def test_bad_options_are_user_errors(root: Path, change: dict, message: str) -> None:
    with pytest.raises(RecsysError, match=message):
        build_semantic_ids(DATASET, replace(FAST, **change), processed_root=root)
    assert not (root / DATASET / "semantic_ids").exists()


def test_missing_features_name_make_features(tmp_path: Path) -> None:
    write_dataset(tmp_path)
    (tmp_path / DATASET / "features" / "all-MiniLM-L6-v2.npy").unlink()
    with pytest.raises(RecsysError, match="make features DATASET=toy"):
        build_semantic_ids(DATASET, FAST, processed_root=tmp_path)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--levels", "0"], "error: --levels must be at least 1, got 0"),
        (["--codebook-size", "0"], "error: --codebook-size must be at least 1, got 0"),
        (["--dataset", "no-such-dataset-xyz"], "make data DATASET=no-such-dataset-xyz"),
    ],
)
def test_cli_errors_are_one_line(
    root: Path, monkeypatch: pytest.MonkeyPatch, capsys, args: list[str], message: str
) -> None:
    argv = ["features", "semantic-ids", "--dataset", DATASET, "--processed-dir", str(root)]
    monkeypatch.setattr(sys, "argv", [*argv, *args])
    with pytest.raises(SystemExit) as exit_info:
        run(features.app)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 1
    assert message in err and len(err.splitlines()) == 1


def test_a_write_killed_before_the_manifest_leaves_no_usable_pair(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from recsys import io

    options = replace(FAST, method="rqkmeans")
    result = build_semantic_ids(DATASET, options, processed_root=root)
    manifest_path = result.path.with_suffix(".json")

    def killed(*_: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(io, "write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        build_semantic_ids(DATASET, options, force=True, processed_root=root)
    assert not manifest_path.exists()
    with pytest.raises(RecsysError, match="does not exist"):
        load_semantic_ids(DATASET, options, root)
    monkeypatch.undo()
    assert not build_semantic_ids(DATASET, options, processed_root=root).cached

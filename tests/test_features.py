"""Item texts, pooling, the feature cache and its error paths (recsys.features).

Pooling and caching run on a tiny random BERT built here (the transformers Auto path) and on the
same BERT wrapped as a sentence-transformers model, so they take seconds; one test loads the real
bundled all-MiniLM-L6-v2 on a handful of texts.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from recsys import features, text_features
from recsys.cli import RecsysError, run
from recsys.text_features import (
    build_item_texts,
    embed_items,
    encode_texts,
    feature_paths,
    load_item_features,
    model_slug,
    read_item_texts,
    resolve_model,
    write_item_texts,
)

PROJ_ROOT = Path(__file__).resolve().parents[1]
WORDS = (
    "toy story schindler list godfather the item fun pixar genres tags animation comedy drama "
    "crime war children 1972 1993 1995 1999 2"
).split()
PUNCTUATION = list(".,:()'") + ["s"]


def ml_items() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "item_idx": np.array([1, 2, 3, 4], dtype="int32"),
            "item_id": [10, 20, 30, 40],
            "title": ["Toy Story (1995)", "Godfather, The (1972)", "Schindler's List", None],
            "year": pd.array([1995, 1972, 1993, None], dtype="Int32"),
            "genres": ["Animation|Children's|Comedy", "Crime|Drama", "Drama|War", ""],
            "tags": ["pixar|fun|Pixar", "", None, ""],
            "n_interactions": [5, 3, 2, 0],
        }
    )


def write_items(root: Path, dataset: str, items: pd.DataFrame) -> Path:
    folder = root / dataset
    folder.mkdir(parents=True, exist_ok=True)
    items.to_parquet(folder / "items.parquet", index=False)
    return folder


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A processed root holding the movie dataset 'ml-toy' with its item texts."""
    write_items(tmp_path, "ml-toy", ml_items())
    write_item_texts("ml-toy", processed_root=tmp_path)
    return tmp_path


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A random 2-layer BERT with a small WordPiece vocab, saved and reloadable by Auto classes."""
    from transformers import AutoTokenizer, BertConfig, BertModel, BertTokenizer

    folder = tmp_path_factory.mktemp("tiny-bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *PUNCTUATION, *WORDS]
    BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(folder)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    ids = tokenizer(" ".join(WORDS), add_special_tokens=False)["input_ids"]
    # transformers 5 can silently map every word to [UNK]: make sure the vocab really loaded.
    assert len(set(ids)) == len(WORDS) and tokenizer.unk_token_id not in ids
    return str(folder)


@pytest.fixture(scope="module")
def tiny_sentence(tiny_bert: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The tiny BERT as a sentence encoder (mean pooling, normalised, 24 tokens), saved."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import (
        Normalize,
        Pooling,
        Transformer,
    )

    folder = tmp_path_factory.mktemp("tiny-sentence")
    body = Transformer(tiny_bert, max_seq_length=24)
    SentenceTransformer(modules=[body, Pooling(16, "mean"), Normalize()]).save(str(folder))
    assert (folder / "modules.json").is_file()
    return str(folder)


def embed_tiny(root: Path, tiny_bert: str, **options) -> text_features.EmbedResult:
    options = {"max_length": 32, "progress": False, **options}
    return embed_items("ml-toy", model=tiny_bert, processed_root=root, **options)


def embed_sentence(root: Path, model: str, **options) -> text_features.EmbedResult:
    return embed_items("ml-toy", model=model, processed_root=root, progress=False, **options)


# --- texts ----------------------------------------------------------------------------------


def test_movielens_texts_read_naturally() -> None:
    result = build_item_texts(ml_items(), "ml-toy")
    assert result.table["text"].tolist() == [
        "Toy Story (1995). Genres: Animation, Children's, Comedy. Tags: pixar, fun.",
        "The Godfather (1972). Genres: Crime, Drama.",
        "Schindler's List (1993). Genres: Drama, War.",
        "item 40",
    ]
    assert result.table["source"].tolist() == ["fields", "fields", "fields", "id"]
    assert result.fields == ["title", "genres", "tags"]


def test_readable_title_keeps_alternate_titles() -> None:
    assert (
        text_features.readable_title(
            "City of Lost Children, The (Cité des enfants perdus, La) (1995)"
        )
        == "The City of Lost Children (Cité des enfants perdus, La) (1995)"
    )
    assert text_features.readable_title("Heat", 1995.0) == "Heat (1995)"


def test_hm_texts_join_the_article_columns() -> None:
    row = {
        "item_idx": [1],
        "item_id": ["0108775015"],
        "prod_name": ["Strap top"],
        "product_type_name": ["Vest top"],
        "product_group_name": ["Garment Upper body"],
        "graphical_appearance_name": ["Solid"],
        "colour_group_name": ["Black"],
        "perceived_colour_value_name": ["Dark"],
        "index_name": ["Ladieswear"],
        "section_name": ["Womens Everyday Basics"],
        "detail_desc": ["Jersey top with narrow shoulder straps."],
    }
    text = build_item_texts(pd.DataFrame(row), "hm").table["text"].iloc[0]
    assert text == (
        "Strap top. Type: Vest top. Group: Garment Upper body. Appearance: Solid. Colour: Black. "
        "Colour value: Dark. Index: Ladieswear. Section: Womens Everyday Basics. "
        "Jersey top with narrow shoulder straps."
    )


def test_custom_fields_fall_back_to_title_then_id_and_report_it(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    items = pd.DataFrame(
        {
            "item_idx": [1, 2, 3],
            "item_id": ["a", "b", "c"],
            "title": ["Red shoe", "Blue hat", None],
            "description": ["Soft  leather", "   ", None],
            "brand": ["Acme", None, None],
        }
    )
    write_items(tmp_path, "shop", items)
    result = write_item_texts("shop", ["description"], processed_root=tmp_path)
    assert result.table["text"].tolist() == ["Description: Soft leather.", "Blue hat", "item c"]
    assert result.n_fallback == 2
    assert "2 of 3 items have no text in those fields: 1 use their title, 1 their id" in (
        capsys.readouterr().err
    )
    default = build_item_texts(items, "shop").table["text"].tolist()
    assert default[0] == "Red shoe. Description: Soft leather. Brand: Acme."
    with pytest.raises(RecsysError, match="--fields names column.*colour.*choose from"):
        build_item_texts(items, "shop", ["colour"])


@pytest.mark.parametrize(
    "items, message",
    [
        (ml_items().drop(columns="item_id"), "lacks column.*item_id"),
        (ml_items().iloc[:0], "has no items"),
        (ml_items().assign(item_idx=[1, 2, 4, 5]), "item_idx must run 1..4"),
    ],
)
def test_bad_items_table_is_a_user_error(tmp_path: Path, items: pd.DataFrame, message) -> None:
    write_items(tmp_path, "ml-toy", items)
    with pytest.raises(RecsysError, match=message):
        write_item_texts("ml-toy", processed_root=tmp_path)


def test_missing_or_damaged_inputs_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(RecsysError, match="make data DATASET=ml-toy"):
        write_item_texts("ml-toy", processed_root=tmp_path)
    folder = write_items(tmp_path, "ml-toy", ml_items())
    with pytest.raises(RecsysError, match="item_text.parquet does not exist.*make features"):
        read_item_texts("ml-toy", processed_root=tmp_path)
    (folder / "item_text.parquet").write_bytes(b"not parquet")
    with pytest.raises(RecsysError, match="not a readable parquet.*make features"):
        read_item_texts("ml-toy", processed_root=tmp_path)


def test_texts_are_stale_when_items_change(root: Path) -> None:
    assert len(read_item_texts("ml-toy", processed_root=root)) == 4
    write_items(root, "ml-toy", ml_items().assign(title=["A", "B", "C", "D"]))
    with pytest.raises(RecsysError, match="older than .*items.parquet.*make features"):
        read_item_texts("ml-toy", processed_root=root)


# --- pooling ----------------------------------------------------------------------------------


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_pooling_matches_a_manual_computation_despite_padding(tiny_bert: str, pooling) -> None:
    tokenizer, model = text_features.load_encoder(resolve_model(tiny_bert))
    texts = ["toy story", "schindler's list (1993). genres: drama, war. tags: fun", "item 2"]
    batched = encode_texts(texts, tokenizer, model, pooling=pooling, batch_size=3, progress=False)
    with torch.inference_mode():
        for row, text in enumerate(texts):
            ids = torch.tensor([tokenizer(text)["input_ids"]])
            hidden = model(input_ids=ids).last_hidden_state[0]  # one text: no padding at all
            manual = hidden.mean(dim=0) if pooling == "mean" else hidden[0]
            np.testing.assert_allclose(batched[row], manual.numpy(), rtol=1e-4, atol=1e-5)
    assert not np.allclose(batched[0], batched[2])
    normalized = encode_texts(texts, tokenizer, model, normalize=True, progress=False)
    np.testing.assert_allclose(np.linalg.norm(normalized, axis=1), 1.0, rtol=1e-5)


# --- embedding and the cache ------------------------------------------------------------------


def test_embed_writes_matrix_and_manifest(root: Path, tiny_bert: str) -> None:
    result = embed_tiny(root, tiny_bert)
    array = np.load(result.path)
    manifest = json.loads(result.path.with_suffix(".json").read_text())
    assert not result.cached
    assert array.dtype == np.float32 and array.shape == (5, 16)
    assert not array[0].any() and np.isfinite(array).all() and np.abs(array[1:]).sum(1).all()
    assert manifest["dim"] == 16 and manifest["n_items"] == 4 and manifest["n_fallback"] == 1
    assert manifest["pooling"] == "mean" and manifest["max_length"] == 32
    assert manifest["encoder"] == "transformers" and manifest["normalize"] is False
    assert manifest["path"] == str(Path(tiny_bert).resolve()) and manifest["items_per_s"] > 0
    assert re.fullmatch(r"tiny-bert\w*-[0-9a-f]{8}\.npy", result.path.name)
    np.testing.assert_array_equal(load_item_features("ml-toy", tiny_bert, root), array)


def test_same_texts_and_settings_are_a_cache_hit(
    root: Path, tiny_bert: str, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    first = embed_tiny(root, tiny_bert)
    stamp = first.path.stat().st_mtime_ns
    write_item_texts("ml-toy", processed_root=root)  # rewriting identical texts keeps the cache

    def no_model(*_):
        raise AssertionError("the model must not load on a cache hit")

    monkeypatch.setattr(text_features, "load_encoder", no_model)
    capsys.readouterr()
    second = embed_tiny(root, tiny_bert)
    assert second.cached and first.path.stat().st_mtime_ns == stamp
    assert len([line for line in capsys.readouterr().err.splitlines() if "cache hit" in line]) == 1


@pytest.mark.slow
def test_changed_texts_or_settings_recompute(root: Path, tiny_bert: str) -> None:
    before = np.load(embed_tiny(root, tiny_bert).path)
    items = ml_items()
    items.loc[0, "title"] = "Godfather: Part II, The (1974)"
    write_items(root, "ml-toy", items)
    write_item_texts("ml-toy", processed_root=root)
    after = embed_tiny(root, tiny_bert)
    changed = np.load(after.path)
    assert not after.cached
    assert not np.allclose(changed[1], before[1]) and np.allclose(changed[2:], before[2:])
    assert not embed_tiny(root, tiny_bert, pooling="cls").cached
    assert not embed_tiny(root, tiny_bert, pooling="cls", normalize=True).cached
    assert embed_tiny(root, tiny_bert, pooling="cls", normalize=True).cached


def _corrupt_npy(npy: Path, _: Path) -> None:
    npy.write_bytes(npy.read_bytes()[:100])


def _drop_last_row(npy: Path, _: Path) -> None:
    np.save(npy, np.load(npy)[:-1])


def _wrong_dim_in_manifest(_: Path, manifest: Path) -> None:
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "dim": 8}))


def _manifest_not_json(_: Path, manifest: Path) -> None:
    manifest.write_text("{truncated")


@pytest.mark.parametrize(
    "damage, reason",
    [
        (_corrupt_npy, "is corrupt"),
        (_drop_last_row, "manifest says float32 \\(5, 16\\)"),
        (_wrong_dim_in_manifest, "manifest says float32 \\(5, 8\\)"),
        (_manifest_not_json, "not valid JSON"),
    ],
)
def test_damaged_cache_recomputes_with_a_warning_and_load_refuses_it(
    root: Path, tiny_bert: str, capsys: pytest.CaptureFixture, damage, reason
) -> None:
    good = np.load(embed_tiny(root, tiny_bert).path)
    npy, manifest = feature_paths("ml-toy", model_slug(tiny_bert), root)
    damage(npy, manifest)
    with pytest.raises(RecsysError, match=f"{reason}.*make features DATASET=ml-toy"):
        load_item_features("ml-toy", tiny_bert, root)
    capsys.readouterr()
    again = embed_tiny(root, tiny_bert)
    warning = capsys.readouterr().err
    assert not again.cached and re.search(f"WARNING.*{reason}.*recomputing", warning)
    np.testing.assert_allclose(load_item_features("ml-toy", tiny_bert, root), good, rtol=1e-5)


def test_load_item_features_missing_or_stale(root: Path, tiny_bert: str) -> None:
    with pytest.raises(RecsysError, match=r"does not exist; run 'make features DATASET=ml-toy'"):
        load_item_features("ml-toy", processed_root=root)
    embed_tiny(root, tiny_bert)
    text_file = root / "ml-toy" / "item_text.parquet"
    table = pd.read_parquet(text_file)
    table.loc[0, "text"] = "a different text"
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pq.read_schema(text_file)  # keep the metadata: only the texts went out of date
    pq.write_table(pa.Table.from_pandas(table, preserve_index=False, schema=schema), text_file)
    stale = f"older item texts; run .make features.*--model {re.escape(tiny_bert)}"
    with pytest.raises(RecsysError, match=stale):
        load_item_features("ml-toy", tiny_bert, root)


# --- sentence encoders ------------------------------------------------------------------------


def test_a_sentence_encoder_follows_its_card(root: Path, tiny_sentence: str) -> None:
    from sentence_transformers import SentenceTransformer

    result = embed_sentence(root, tiny_sentence)
    manifest = result.manifest
    assert manifest["encoder"] == "sentence-transformers"
    assert (manifest["pooling"], manifest["normalize"], manifest["max_length"]) == (
        "mean",
        True,
        24,
    )
    vectors = load_item_features("ml-toy", tiny_sentence, root)
    texts = read_item_texts("ml-toy", processed_root=root)["text"].tolist()
    reference = SentenceTransformer(tiny_sentence, device="cpu").encode(texts)
    np.testing.assert_allclose(vectors[1:], reference, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(vectors[1:], axis=1), 1.0, rtol=1e-5)
    assert embed_sentence(root, tiny_sentence).cached


def test_a_changed_card_or_encoder_kind_recomputes(
    root: Path, tiny_bert: str, tiny_sentence: str, tmp_path: Path
) -> None:
    import shutil

    copy = tmp_path / "sentence-copy"
    shutil.copytree(tiny_sentence, copy)
    first = embed_sentence(root, str(copy))
    config = copy / "sentence_bert_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "max_seq_length": 12}))
    second = embed_sentence(root, str(copy))
    assert not second.cached and second.manifest["max_length"] == 12
    assert second.manifest["card_sha256"] != first.manifest["card_sha256"]
    # Vectors written before the encoder kind was recorded are not reused (nor loaded).
    npy, manifest_path = feature_paths("ml-toy", model_slug(tiny_bert), root)
    embed_tiny(root, tiny_bert)
    old = json.loads(manifest_path.read_text())
    del old["encoder"]
    manifest_path.write_text(json.dumps(old))
    with pytest.raises(RecsysError, match="lacks encoder.*make features"):
        load_item_features("ml-toy", tiny_bert, root)
    assert not embed_tiny(root, tiny_bert).cached


@pytest.mark.parametrize(
    "options, named",
    [({"pooling": "cls"}, "--pooling"), ({"max_length": 64, "normalize": False}, "--max-length")],
)
def test_auto_path_options_for_a_sentence_encoder_are_user_errors(
    root: Path, tiny_sentence: str, options, named
) -> None:
    with pytest.raises(RecsysError, match=f"card sets its pooling.*leave out .*{named}"):
        embed_sentence(root, tiny_sentence, **options)


# --- models and options -----------------------------------------------------------------------


def test_model_names_give_filesystem_safe_slugs(tmp_path: Path) -> None:
    first, second = tmp_path / "a" / "my bert", tmp_path / "b" / "my bert"
    names = ("bert-base-cased", "org/some.model_v2", "odd:name", str(first), str(second))
    slugs = [model_slug(name) for name in names]
    assert slugs[:3] == ["bert-base-cased", "org--some.model_v2", "odd-name"]
    assert all(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", s) for s in slugs)
    assert slugs[3] != slugs[4] and slugs[3].startswith("my-bert-")
    assert model_slug(None) == "all-MiniLM-L6-v2"


def test_unknown_models_are_one_line_errors(tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(RecsysError, match="model folder '/no/such/model' does not exist"):
        resolve_model("/no/such/model")
    with pytest.raises(RecsysError, match="has no config.json"):
        resolve_model(str(tmp_path))
    with pytest.raises(RecsysError, match="neither a local folder nor a valid hub id"):
        resolve_model("bad model name!")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RecsysError) as err:
        text_features.load_encoder(resolve_model("no-org/no-such-model-xyz"))
    message = str(err.value)
    assert "'no-org/no-such-model-xyz'" in message and "--model" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "options, message",
    [
        ({"batch_size": 0}, "--batch-size must be at least 1"),
        ({"max_length": 1}, "--max-length must be at least 2"),
        ({"max_length": 65}, "--max-length 65 exceeds the 64 positions"),
        ({"pooling": "max"}, "--pooling must be mean or cls"),
        ({"device": "tpu"}, "--device .tpu. is not a device; use auto, cpu, cuda"),
    ],
)
def test_bad_options_are_user_errors(root: Path, tiny_bert: str, options, message) -> None:
    with pytest.raises(RecsysError, match=message):
        embed_tiny(root, tiny_bert, **options)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")
def test_cuda_without_gpu_is_a_user_error(root: Path, tiny_bert: str) -> None:
    with pytest.raises(RecsysError, match="no CUDA GPU is visible"):
        embed_tiny(root, tiny_bert, device="cuda")


@pytest.mark.slow
def test_cli_errors_are_one_line(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr(sys, "argv", ["features", "embed", "--dataset", "no-such-dataset-xyz"])
    with pytest.raises(SystemExit) as exit_info:
        run(features.app)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 1
    assert err.startswith("error: ") and "make data DATASET=no-such-dataset-xyz" in err
    assert len(err.splitlines()) == 1
    monkeypatch.setattr(sys, "argv", ["features", "embed", "--pooling", "max"])
    with pytest.raises(SystemExit) as exit_info:  # a typer usage error: no traceback either
        run(features.app)
    assert exit_info.value.code == 2
    assert "Invalid value for '--pooling'" in capsys.readouterr().err
    proc = subprocess.run(
        [sys.executable, "-m", "recsys.features", "text", "--dataset", "no-such-dataset-xyz"],
        cwd=PROJ_ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "RECSYS_LOG_LEVEL": "WARNING"},
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        line for line in proc.stderr.strip().splitlines() if line.startswith("error: ")
    ]
    assert "make data DATASET=no-such-dataset-xyz" in proc.stderr


# --- the real default model -------------------------------------------------------------------


@pytest.mark.slow
def test_default_model_follows_its_card_and_puts_sequels_close(tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer

    items = pd.DataFrame(
        {
            "item_idx": [1, 2, 3],
            "item_id": [1, 2, 3],
            "title": ["Toy Story (1995)", "Toy Story 2 (1999)", "Schindler's List (1993)"],
        }
    )
    write_items(tmp_path, "custom-films", items)
    write_item_texts("custom-films", processed_root=tmp_path)
    result = embed_items("custom-films", processed_root=tmp_path, progress=False)
    vectors = load_item_features("custom-films", processed_root=tmp_path)
    assert vectors.shape == (4, result.manifest["dim"]) and result.manifest["dim"] == 384
    assert np.isfinite(vectors).all() and not vectors[0].any()
    manifest = result.manifest
    assert manifest["encoder"] == "sentence-transformers"
    assert (manifest["pooling"], manifest["normalize"], manifest["max_length"]) == (
        "mean",
        True,
        256,
    )
    np.testing.assert_allclose(np.linalg.norm(vectors[1:], axis=1), 1.0, rtol=1e-5)
    texts = read_item_texts("custom-films", processed_root=tmp_path)["text"].tolist()
    reference = SentenceTransformer(resolve_model().location, device="cpu").encode(texts)
    np.testing.assert_allclose(vectors[1:], reference, rtol=1e-4, atol=1e-5)
    toy_story_2, schindler = vectors[1] @ vectors[2], vectors[1] @ vectors[3]
    assert toy_story_2 > schindler + 0.1, (toy_story_2, schindler)

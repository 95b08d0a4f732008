"""``python -m recsys.features text|embed|semantic-ids``: the features stage.

``text`` writes one readable sentence per item, ``embed`` encodes them with a frozen sentence
encoder (:mod:`recsys.text_features`) and ``semantic-ids`` quantises the vectors into short unique
code tuples (:mod:`recsys.semantic_ids`).
"""

from __future__ import annotations

import typer

from recsys.cli import run
from recsys.config import DEFAULT_DATASET, PROCESSED_DATA_DIR
from recsys.options import DatasetOpt, DeviceOpt, ProcessedDirOpt
from recsys.processed import ITEMS_FILE, require_processed
from recsys.semantic_ids import SemanticIdOptions, build_semantic_ids
from recsys.text_features import (
    DEFAULT_MAX_LENGTH,
    DEFAULT_MODEL_SLUG,
    Pooling,
    embed_items,
    write_item_texts,
)

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True)


@app.command()
def text(
    dataset: DatasetOpt = DEFAULT_DATASET,
    fields: str = typer.Option(
        "",
        "--fields",
        help="Comma-separated items.parquet columns to use (default: the dataset's text fields).",
    ),
    processed_dir: ProcessedDirOpt = PROCESSED_DATA_DIR,
) -> None:
    """Write one readable sentence per item to data/processed/DATASET/item_text.parquet."""
    require_processed(dataset, processed_dir, [ITEMS_FILE])
    chosen = [f.strip() for f in fields.split(",") if f.strip()] or None
    write_item_texts(dataset, chosen, processed_root=processed_dir)


@app.command()
def embed(
    dataset: DatasetOpt = DEFAULT_DATASET,
    model: str | None = typer.Option(
        None, "--model", help=f"Hub id or local folder (default: bundled {DEFAULT_MODEL_SLUG})."
    ),
    pooling: Pooling | None = typer.Option(
        None, "--pooling", help="Plain transformers models: token pooling (default mean)."
    ),
    batch_size: int = typer.Option(64, "--batch-size", help="Texts per forward pass."),
    max_length: int | None = typer.Option(
        None,
        "--max-length",
        help=f"Plain transformers models: tokens kept per text (default {DEFAULT_MAX_LENGTH}).",
    ),
    device: DeviceOpt = "auto",
    normalize: bool | None = typer.Option(
        None,
        "--normalize/--no-normalize",
        help="Plain transformers models: L2-normalize (default no). Sentence encoders: the card.",
    ),
    force: bool = typer.Option(False, "--force", help="Recompute even on a cache hit."),
    processed_dir: ProcessedDirOpt = PROCESSED_DATA_DIR,
) -> None:
    """Encode the item texts into data/processed/DATASET/features/<model>.npy + .json."""
    require_processed(dataset, processed_dir, [ITEMS_FILE])
    embed_items(
        dataset,
        model=model,
        pooling=pooling.value if pooling else None,
        batch_size=batch_size,
        max_length=max_length,
        device=device,
        normalize=normalize,
        force=force,
        processed_root=processed_dir,
    )


@app.command("semantic-ids")
def semantic_ids(
    dataset: DatasetOpt = DEFAULT_DATASET,
    method: str | None = typer.Option(
        None, "--method", help="Quantiser: rqvae (default) or rqkmeans."
    ),
    levels: int | None = typer.Option(
        None, "--levels", help="Codes per item before the last token."
    ),
    codebook_size: int | None = typer.Option(None, "--codebook-size", help="Codes per level."),
    model: str | None = typer.Option(
        None, "--model", help="The feature model whose vectors to quantise (as for embed)."
    ),
    seed: int | None = typer.Option(None, "--seed", help="Seed of initialisation and shuffling."),
    steps: int | None = typer.Option(
        None, "--steps", help="For rqvae: optimiser steps (batches)."
    ),
    lr: float | None = typer.Option(None, "--lr", help="For rqvae: the AdamW learning rate."),
    latent_dim: int | None = typer.Option(
        None, "--latent-dim", help="For rqvae: size of the latent."
    ),
    dead_code_threshold: float | None = typer.Option(
        None, "--dead-code-threshold", help="For rqvae: restart codes used less often (0: never)."
    ),
    force: bool = typer.Option(False, "--force", help="Recompute even on a cache hit."),
    processed_dir: ProcessedDirOpt = PROCESSED_DATA_DIR,
) -> None:
    """Quantise the item vectors into unique semantic IDs: data/processed/DATASET/semantic_ids/.

    Options left out take the defaults of recsys.semantic_ids.SemanticIdOptions (3 levels of 256
    codes, rqvae); the manifest records every value used.
    """
    given = {
        "method": method,
        "levels": levels,
        "codebook_size": codebook_size,
        "seed": seed,
        "steps": steps,
        "lr": lr,
        "latent_dim": latent_dim,
        "dead_code_threshold": dead_code_threshold,
    }
    require_processed(dataset, processed_dir, [ITEMS_FILE])
    options = SemanticIdOptions(model=model, **{k: v for k, v in given.items() if v is not None})
    build_semantic_ids(dataset, options, force=force, processed_root=processed_dir)


if __name__ == "__main__":
    run(app)

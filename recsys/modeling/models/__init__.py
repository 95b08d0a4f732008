"""The model families, one module each, behind one config and one contract
(:class:`~recsys.modeling.models.base.Recommender`).

To add a family: write a module with a :class:`Recommender` subclass (an
:class:`~recsys.modeling.models.items.ItemScorer` if it scores the item table), name it in
:data:`~recsys.modeling.models.config.FAMILIES` and the losses it takes in ``FAMILY_LOSSES``,
add it to :data:`FAMILY_CLASSES` below, and ship a ``configs/<name>.yaml``.
"""

from __future__ import annotations

from torch import Tensor

from recsys.modeling.models.base import Recommender
from recsys.modeling.models.config import (
    BLOCKS,
    CODE_REPRS,
    COLD_CAPABLE,
    CONTENT_REPRS,
    FAMILIES,
    FAMILY_LOSSES,
    ITEM_REPRS,
    LOSSES,
    TEXT_REPRS,
    ModelConfig,
)
from recsys.modeling.models.bert4rec import BERT4Rec
from recsys.modeling.models.gru4rec import GRU4Rec
from recsys.modeling.models.mf import MatrixFactorization
from recsys.modeling.models.sasrec import SeqRecModel
from recsys.modeling.models.tiger import SemanticDecoder
from recsys.modeling.models.tiger_t5 import T5Generator

#: The class of each family that scores an item table.
FAMILY_CLASSES: dict[str, type[Recommender]] = {
    "sasrec": SeqRecModel,
    "gru4rec": GRU4Rec,
    "bert4rec": BERT4Rec,
    "mf": MatrixFactorization,
}


def build_model(
    config: ModelConfig, item_features: Tensor | None = None, item_codes: Tensor | None = None
) -> Recommender:
    """The model a config asks for: semantic-ID generation, or a family scoring an item table."""
    if config.item_repr == "semantic":
        generator = T5Generator if config.generator == "t5" else SemanticDecoder
        return generator(config, item_codes)
    return FAMILY_CLASSES[config.family](config, item_features, item_codes)


__all__ = [
    "BERT4Rec",
    "GRU4Rec",
    "MatrixFactorization",
    "BLOCKS",
    "FAMILY_CLASSES",
    "CODE_REPRS",
    "COLD_CAPABLE",
    "CONTENT_REPRS",
    "FAMILIES",
    "FAMILY_LOSSES",
    "ITEM_REPRS",
    "LOSSES",
    "TEXT_REPRS",
    "ModelConfig",
    "Recommender",
    "SemanticDecoder",
    "T5Generator",
    "SeqRecModel",
    "build_model",
]

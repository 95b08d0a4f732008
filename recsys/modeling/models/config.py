"""What shapes a model and its loss: one config dataclass for every family, plain values only,
so a checkpoint stays safe to load and a run's YAML maps onto it key by key."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

ITEM_REPRS = ("id", "text", "hybrid", "codes", "semantic")
#: Representations with a projection of the frozen text vectors.
TEXT_REPRS = ("text", "hybrid")
#: Representations that read the items' semantic IDs: ``codes`` scores a table whose rows are
#: sums of code embeddings; ``semantic`` generates the codes (:class:`SemanticDecoder`).
CODE_REPRS = ("codes", "semantic")
#: Representations whose item rows come from the item's content (text vectors or the codes made
#: from them), not from its interactions: every catalogue item is rankable by them.
CONTENT_REPRS = (*TEXT_REPRS, "codes")
COLD_CAPABLE = (*CONTENT_REPRS, "semantic")
#: The model families, one module each; ``item_repr=semantic`` turns the ``sasrec`` decoder into
#: TIGER's generative one.
FAMILIES = ("sasrec", "gru4rec", "bert4rec", "mf")
#: ``ce``: full softmax; ``sampled``: sampled softmax with logQ (SSM); ``bce``, ``bpr``,
#: ``gbce`` (gSASRec), ``ccl`` (SimpleX) against sampled negatives; ``directau``: alignment and
#: uniformity over the batch. See :mod:`recsys.modeling.models.losses`.
LOSSES = ("ce", "sampled", "bce", "bpr", "gbce", "ccl", "directau")
#: The losses each family takes: BERT4Rec's Cloze targets are softmax targets.
FAMILY_LOSSES = {
    "sasrec": LOSSES,
    "gru4rec": LOSSES,
    "mf": LOSSES,
    "bert4rec": ("ce", "sampled"),
}
SAMPLERS = ("uniform", "popularity", "in-batch")
#: batch: one pool of negatives shared by every position of a batch; position: each position
#: draws its own (as SASRec and gSASRec do), so every step reaches much more of the catalogue.
NEGATIVES = ("batch", "position")
#: How ``item_repr=semantic`` generates: the decoder-only model on the shared blocks, or a
#: T5 encoder-decoder from ``transformers``.
GENERATORS = ("decoder", "t5")
#: How a semantic run orders its list: by the beam's log-probabilities, by those plus the dense
#: head's (over the beam and the dense side's own best items), or by the dense head alone.
RANKINGS = ("beam", "rescored", "dense")
POSITIONS = ("learned", "sinusoidal")
POSITION_ORIGINS = ("start", "end")
BLOCKS = ("pre-ln", "sasrec", "gated")


@dataclass
class ModelConfig:
    """Everything that shapes the network and its loss; plain values so checkpoints stay safe."""

    n_items: int  # items 1..n_items have interactions (training targets, ranked by metrics)
    n_catalogue: int  # items 1..n_catalogue have a row in the item table (cold ones included)
    family: str = "sasrec"
    item_repr: str = "id"
    max_len: int = 200
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 1
    d_ff: int = 0  # MLP width; 0 means 4 * d_model
    dropout: float = 0.2
    attn_dropout: float = 0.0  # on attention weights; > 0 makes CPU attention ~5x slower
    positions: str = "learned"
    # Count positions from the sequence's first item (``start``) or back from its most recent
    # one (``end``: SASRec's right-aligned positions, where the position says how recent it is).
    position_origin: str = "start"
    # ``pre-ln``: GPT's x + attn(ln(x)); ``sasrec``: Kang & McAuley's block, whose residual
    # stream restarts from the normalised query, so raw item embeddings do not run through;
    # ``gated``: eSASRec's (LiGR) block, pre-ln with sigmoid-gated residuals and a SwiGLU MLP.
    block: str = "pre-ln"
    # BSARec (Shin et al., 2024), made causal: the share of each block's token mixing done by a
    # fixed low-pass filter over the last max_len positions, whose high band a learned gain
    # scales, instead of by attention; 0 is attention alone.
    filter_alpha: float = 0.0
    filter_cutoff: int = 5  # BSARec's c: the filter keeps the c // 2 + 1 lowest frequencies
    feature_dim: int = 0  # width of the frozen text vectors (text and hybrid)
    scale_embeddings: bool = True  # multiply input item vectors by sqrt(d_model), as SASRec
    n_users: int = 0
    use_user: bool = False
    loss: str = "ce"
    sampler: str = "uniform"  # where the sampled losses draw their negatives from
    negatives: str = "batch"  # one pool per batch, or n_negatives for each position
    n_negatives: int = 256  # the sampled losses' negatives: per batch, or per position
    gbce_t: float = 0.75  # gbce: calibration; 0 is plain BCE, 1 fully calibrated to the softmax
    ccl_margin: float = 0.8  # ccl: negatives count only above this cosine
    ccl_negative_weight: float = 150.0  # ccl: the negatives' weight against the positive
    directau_gamma: float = 1.0  # directau: weight of uniformity against alignment
    mask_ratio: float = 0.2  # bert4rec: the share of a training sequence's items masked
    # bert4rec: the share of training windows that hide their most recent item alone, as the
    # next-item task does at inference (Sun et al.'s own addition to the Cloze task)
    mask_last_share: float = 0.0
    # mf: 0 scores a user by their trained vector; above 0, by a ridge fit of their history
    # against the item table (this l2, relative to the table's mean eigenvalue)
    fold_in_l2: float = 0.0
    # item_repr=semantic: the vocabulary of each semantic-ID level (the last one tells apart
    # items whose codes collide), and the beams kept while generating the next item (>= 10,
    # the K of validation NDCG@10; evaluation can report K up to it only).
    code_vocab: tuple[int, ...] = ()
    beam_size: int = 20
    # semantic: the share of beams kept for items never trained on (TIGER's epsilon for cold
    # start); they take every 1 / cold_share-th place of the list.
    cold_share: float = 0.0
    generator: str = "decoder"  # semantic: decoder (decoder-only) or t5 (encoder-decoder)
    dense_weight: float = 0.0  # semantic decoder: weight of the dense head's loss (0: no head)
    ranking: str = "beam"  # semantic: beam | rescored | dense (the last two need the head)

    def __post_init__(self) -> None:
        choices = {
            "item_repr": ITEM_REPRS,
            "family": FAMILIES,
            "generator": GENERATORS,
            "ranking": RANKINGS,
            "loss": LOSSES,
            "sampler": SAMPLERS,
            "negatives": NEGATIVES,
            "positions": POSITIONS,
            "position_origin": POSITION_ORIGINS,
            "block": BLOCKS,
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ValueError(
                    f"{key} must be one of {', '.join(allowed)}, got {getattr(self, key)!r}"
                )
        positive = ("n_items", "n_catalogue", "max_len", "d_model", "n_layers", "n_heads")
        for key in positive:
            if int(getattr(self, key)) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)!r}")
        if self.n_catalogue < self.n_items:
            raise ValueError(
                f"n_catalogue ({self.n_catalogue}) must be >= n_items ({self.n_items})"
            )
        if self.d_model % self.n_heads:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})"
            )
        for key in ("dropout", "attn_dropout"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ValueError(f"{key} must be in [0, 1), got {getattr(self, key)!r}")
        self._check_filter()
        if self.item_repr in TEXT_REPRS and self.feature_dim < 1:
            raise ValueError(f"item_repr={self.item_repr} needs text features (feature_dim >= 1)")
        self.code_vocab = tuple(int(v) for v in self.code_vocab)
        if self.item_repr in CODE_REPRS and (not self.code_vocab or min(self.code_vocab) < 1):
            raise ValueError(
                f"item_repr={self.item_repr} needs code_vocab sizes >= 1, got {self.code_vocab}"
            )
        if self.item_repr == "semantic":
            self._check_semantic()
        if self.negatives == "position" and self.sampler == "in-batch":
            raise ValueError(
                "sampler=in-batch mixes the batch's targets into one shared pool: it needs "
                "negatives=batch"
            )
        if self.use_user and self.n_users < 1:
            raise ValueError("use_user needs n_users >= 1")
        if self.n_negatives < 1:
            raise ValueError(f"n_negatives must be >= 1, got {self.n_negatives!r}")
        self._check_family()

    def _check_family(self) -> None:
        if self.loss not in FAMILY_LOSSES[self.family]:
            raise ValueError(
                f"family {self.family} does not take loss={self.loss}; it takes "
                f"{', '.join(FAMILY_LOSSES[self.family])}"
            )
        if self.item_repr == "semantic" and self.family != "sasrec":
            raise ValueError(
                f"item_repr=semantic (TIGER's beam search over semantic IDs) needs family "
                f"sasrec, got {self.family}: {self.family} scores an item table; give it "
                "item_repr codes to read the semantic IDs"
            )
        if self.generator != "decoder" and self.item_repr != "semantic":
            raise ValueError(
                f"generator={self.generator} generates semantic IDs: it needs item_repr "
                f"semantic, got {self.item_repr}"
            )
        if self.family == "bert4rec" and not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {self.mask_ratio!r}")
        if not 0.0 <= self.mask_last_share <= 1.0:
            raise ValueError(f"mask_last_share must be in [0, 1], got {self.mask_last_share!r}")
        if self.fold_in_l2 < 0:
            raise ValueError(f"fold_in_l2 must be >= 0, got {self.fold_in_l2!r}")
        if self.family == "mf" and self.n_users < 1:
            raise ValueError("family mf needs n_users >= 1: it learns a vector per user")

    def _check_filter(self) -> None:
        if not 0.0 <= self.filter_alpha <= 1.0:
            raise ValueError(f"filter_alpha must be in [0, 1], got {self.filter_alpha!r}")
        if self.filter_alpha > 0 and not 1 <= self.filter_cutoff // 2 + 1 <= self.max_len // 2:
            raise ValueError(
                f"filter_cutoff must keep between 1 and max_len // 2 ({self.max_len // 2}) "
                f"frequencies (it keeps filter_cutoff // 2 + 1), got {self.filter_cutoff!r}"
            )
        if self.filter_alpha > 0 and (self.family != "sasrec" or self.item_repr == "semantic"):
            raise ValueError(
                "filter_alpha > 0 (the causal low-pass filter) is built for the sasrec "
                f"family's item decoder, not family={self.family} item_repr={self.item_repr}"
            )

    def _check_semantic(self) -> None:
        if self.dense_weight < 0:
            raise ValueError(f"dense_weight must be >= 0, got {self.dense_weight!r}")
        if self.dense_weight > 0 and self.generator != "decoder":
            raise ValueError(
                f"the dense head is the decoder's; generator={self.generator} has none"
            )
        if self.ranking != "beam" and self.dense_weight == 0:
            raise ValueError(
                f"ranking={self.ranking} reads the dense head: set dense_weight > 0 (e.g. 1.0)"
            )
        if self.beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {self.beam_size!r}")
        if not 0.0 <= self.cold_share < 1.0:
            raise ValueError(f"cold_share must be in [0, 1), got {self.cold_share!r}")
        unsupported = {
            "loss": (self.loss, "ce"),
            "use_user": (self.use_user, False),
            "position_origin": (self.position_origin, "start"),
        }
        for key, (value, needed) in unsupported.items():
            if value != needed:
                raise ValueError(f"item_repr=semantic supports {key}={needed} only, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ModelConfig":
        """Build from a (larger) config dict, taking only the keys this dataclass has."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

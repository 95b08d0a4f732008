"""Synthetic stand-ins for H&M, MovieLens 20M and 32M: the real files' schemas and formats.

H&M is Kaggle-hosted (no download here) and the MovieLens 20M/32M archives are too big for the
mirror, so the scale tests run on generated files that the project's readers
(``recsys.data.readers.parse_hm`` / ``parse_ml_csv``) accept unchanged::

    python -m benchmarks.synth hm --rows 1000000 --out data/raw/hm
    python -m benchmarks.synth ml-20m --out /tmp/ml-20m --seed 1

Files written into ``data/raw/<dataset>/`` are then taken up by ``python -m recsys.dataset
download --dataset hm`` as files placed by hand (recorded, not md5-verified), and ``interim`` and
``process`` run on them as on the originals.

What is modelled, because the pipeline and the models are sensitive to it: long-tailed item
popularity (Zipf-like with an offset, so the head is not one item), heavy-tailed activity per
user (lognormal), and for H&M same-day baskets (several rows of a customer on one day, the
timestamp ties the tie policy has to break) and the file order of the original (by day, then
customer). MovieLens users rate each movie at most once, every user has at least 20 ratings,
and ratings.csv is sorted by userId, then movieId, as the originals are (the reason for
``--ties shuffle``). Not modelled: item life cycles and trends, taste (which items a user buys
does not depend on the user), links.csv and tags.csv (optional for the reader).

Size rule: ``--rows N`` (default: the real row count). Users scale in proportion to N (the real
mean events per user at every size: 23.3 purchases per H&M customer, 144 / 159 ratings per
MovieLens user) and items with sqrt(N / real rows), so 5,000 H&M rows still spread over 1,324
articles with a long tail rather than over 17. MovieLens keeps at least 4x the mean ratings per
user in movies, so that no user needs more than half the catalogue. The same seed gives the same
bytes; files are written in blocks of 1M rows, each atomically, plus ``synth.json`` (the
settings and the counts).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import typer
from loguru import logger

from recsys.cli import fail, run
from recsys.io import atomic_path, ensure_dir, write_json

CHUNK_ROWS = 1_000_000
SYNTH_FILE = "synth.json"


@dataclass(frozen=True)
class Scale:
    """The real dataset's size, from which ``--rows N`` scales users and items."""

    name: str
    rows: int
    users: int
    items: int

    def users_for(self, rows: int) -> int:
        return max(1, round(self.users * rows / self.rows))

    def items_for(self, rows: int) -> int:
        return max(1, round(self.items * math.sqrt(rows / self.rows)))


HM = Scale("hm", rows=31_788_324, users=1_362_281, items=105_542)
ML_20M = Scale("ml-20m", rows=20_000_263, users=138_493, items=27_278)
ML_32M = Scale("ml-32m", rows=32_000_204, users=200_948, items=87_585)


# --------------------------------------------------------------------------------------------
# Shared pieces
# --------------------------------------------------------------------------------------------


def zipf_cdf(n: int, rng: np.random.Generator, offset_share: float = 0.002) -> np.ndarray:
    """Cumulative popularity of ``n`` items in random order: weight 1 / (rank + c), c ~ n/500.

    The offset keeps the head realistic (the top item holds ~0.2-0.7 %, not 1 / ln n).
    """
    weights = 1.0 / (np.arange(n) + 1.0 + offset_share * n)
    return _cdf(rng.permutation(weights))


def _cdf(weights: Any) -> np.ndarray:
    cdf = np.cumsum(np.asarray(weights, dtype=np.float64))
    return cdf / cdf[-1]


def draw(cdf: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` indices drawn with the probabilities whose cumulative sums are ``cdf``."""
    index = np.searchsorted(cdf, rng.random(n), side="right")
    return np.minimum(index, len(cdf) - 1).astype(np.int32)


def hex_ids(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` distinct 64-character lowercase hex ids (like SHA-256 digests), sorted."""
    digits = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    raw = rng.integers(0, 256, size=(n, 32), dtype=np.uint8)
    chars = np.empty((n, 64), dtype=np.uint8)
    chars[:, 0::2], chars[:, 1::2] = digits[raw >> 4], digits[raw & 15]
    return np.sort(chars.view("S64").ravel())


def fixed_strings(values: np.ndarray) -> pa.Array:
    """An Arrow string array over a numpy ``S<width>`` array without copying each value."""
    width = values.dtype.itemsize
    offsets = np.arange(0, width * (len(values) + 1), width, dtype=np.int32)
    return pa.Array.from_buffers(
        pa.string(), len(values), [None, pa.py_buffer(offsets), pa.py_buffer(values.tobytes())]
    )


def zero_padded(values: np.ndarray, width: int) -> np.ndarray:
    """Non-negative integers as ``S<width>`` strings with leading zeros (0108775015)."""
    digits = (values[:, None] // 10 ** np.arange(width - 1, -1, -1)) % 10
    return (digits + ord("0")).astype(np.uint8).view(f"S{width}").ravel()


def coded(codes: np.ndarray, labels: list[str]) -> pa.DictionaryArray:
    """Labels by code as a dictionary column: written as the label, stored as the code."""
    return pa.DictionaryArray.from_arrays(pa.array(codes, pa.int32()), pa.array(labels))


def allocate(
    total: int, weights: np.ndarray, low: int, high: int, rng: np.random.Generator
) -> np.ndarray:
    """Split ``total`` into counts in [low, high], distributed in proportion to ``weights``.

    Counts above ``high`` are cut and the excess goes, again by weight, to those below it.
    """
    counts = low + rng.multinomial(total - low * len(weights), weights / weights.sum())
    while (over := counts > high).any():
        excess = int((counts[over] - high).sum())
        counts[over] = high
        room = np.where(counts < high, weights, 0.0)
        counts += rng.multinomial(excess, room / room.sum())
    return counts


def write_chunks(path: Path, header: str, tables: Iterator[pa.Table]) -> None:
    """Write a header line and then each table's rows unquoted, as the originals are."""
    options = pacsv.WriteOptions(include_header=False, quoting_style="none")
    with atomic_path(path) as tmp, pa.OSFile(str(tmp), "wb") as sink:
        sink.write(header.encode() + b"\n")
        writer = None
        for table in tables:
            if writer is None:
                writer = pacsv.CSVWriter(sink, table.schema, write_options=options)
            writer.write_table(table)
        if writer is not None:
            writer.close()


def write_frame(path: Path, frame: pd.DataFrame) -> None:
    """Write a small text table, quoting only the fields that need it (titles with commas)."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, lineterminator="\n")


def pick(rng: np.random.Generator, n: int, options: dict[Any, float]) -> np.ndarray:
    """``n`` draws from ``options`` (value -> weight)."""
    weights = np.array(list(options.values()), dtype=np.float64)
    return np.array(list(options))[rng.choice(len(options), n, p=weights / weights.sum())]


def check_rows(rows: int) -> None:
    if rows < 1:
        raise fail(f"--rows must be at least 1, got {rows:,}; pass the number of rows to write")


# --------------------------------------------------------------------------------------------
# H&M
# --------------------------------------------------------------------------------------------

HM_FIRST_DAY = date(2018, 9, 20)
HM_LAST_DAY = date(2020, 9, 22)
HM_MEAN_BASKET = 2.7  # rows per customer-day, as in the real file
HM_ONLINE_SHARE = 0.7  # sales_channel_id 2
HM_VARIANTS_PER_PRODUCT = 2.235  # 105,542 articles / 47,224 product codes
HM_PRODUCT_CODES = (108_775, 959_461)  # the real range
HM_PRICE_DIVISOR = 590.0  # the real prices look like SEK prices divided by 590
HM_DISCOUNTS = {1.0: 0.8, 0.7: 0.12, 0.5: 0.08}

HM_TRANSACTION_HEADER = "t_dat,customer_id,article_id,price,sales_channel_id"
HM_ARTICLE_COLUMNS = [
    "article_id",
    "product_code",
    "prod_name",
    "product_type_no",
    "product_type_name",
    "product_group_name",
    "graphical_appearance_no",
    "graphical_appearance_name",
    "colour_group_code",
    "colour_group_name",
    "perceived_colour_value_id",
    "perceived_colour_value_name",
    "perceived_colour_master_id",
    "perceived_colour_master_name",
    "department_no",
    "department_name",
    "index_code",
    "index_name",
    "index_group_no",
    "index_group_name",
    "section_no",
    "section_name",
    "garment_group_no",
    "garment_group_name",
    "detail_desc",
]
HM_CUSTOMER_HEADER = (
    "customer_id,FN,Active,club_member_status,fashion_news_frequency,age,postal_code"
)


# The article vocabulary: made-up but consistent H&M-style codes and names, one table per level,
# columns named as in articles.csv (plus a weight: how often it is drawn).
def vocabulary(columns: str, rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=columns.split())


HM_INDEXES = vocabulary(
    "index_code index_name index_group_no index_group_name",
    [
        ("A", "Ladieswear", 1, "Ladieswear"),
        ("B", "Lingeries/Tights", 1, "Ladieswear"),
        ("C", "Ladies Accessories", 1, "Ladieswear"),
        ("D", "Divided", 2, "Divided"),
        ("F", "Menswear", 3, "Menswear"),
        ("G", "Baby Sizes 50-98", 4, "Baby/Children"),
        ("H", "Children Sizes 92-140", 4, "Baby/Children"),
        ("J", "Children Accessories, Swimwear", 4, "Baby/Children"),
        ("S", "Sport", 26, "Sport"),
    ],
).set_index("index_code")
# price: the usual price in SEK; a product's is 0.7, 1 or 1.3 times it, ending in .99
HM_TYPES = vocabulary(
    "product_type_name product_type_no product_group_name garment_group_no garment_group_name "
    "price",
    [
        ("Vest top", 253, "Garment Upper body", 1002, "Jersey Basic", 9.99),
        ("T-shirt", 255, "Garment Upper body", 1005, "Jersey Fancy", 12.99),
        ("Sweater", 252, "Garment Upper body", 1003, "Knitwear", 29.99),
        ("Cardigan", 245, "Garment Upper body", 1003, "Knitwear", 29.99),
        ("Shirt", 259, "Garment Upper body", 1011, "Shirts", 24.99),
        ("Blouse", 258, "Garment Upper body", 1010, "Blouses", 24.99),
        ("Hoodie", 308, "Garment Upper body", 1005, "Jersey Fancy", 24.99),
        ("Jacket", 264, "Garment Upper body", 1007, "Outdoor", 49.99),
        ("Coat", 262, "Garment Upper body", 1007, "Outdoor", 79.99),
        ("Trousers", 272, "Garment Lower body", 1009, "Trousers", 29.99),
        ("Jeans", 271, "Garment Lower body", 1016, "Trousers Denim", 29.99),
        ("Shorts", 274, "Garment Lower body", 1025, "Shorts", 17.99),
        ("Skirt", 275, "Garment Lower body", 1012, "Skirts", 19.99),
        ("Leggings", 273, "Garment Lower body", 1002, "Jersey Basic", 12.99),
        ("Dress", 265, "Garment Full body", 1013, "Dresses Ladies", 29.99),
        ("Jumpsuit", 267, "Garment Full body", 1013, "Dresses Ladies", 34.99),
        ("Bra", 306, "Underwear", 1017, "Under-, Nightwear", 17.99),
        ("Briefs", 286, "Underwear", 1017, "Under-, Nightwear", 6.99),
        ("Pyjama set", 298, "Nightwear", 1017, "Under-, Nightwear", 19.99),
        ("Socks", 304, "Socks & Tights", 1021, "Socks and Tights", 4.99),
        ("Tights", 303, "Socks & Tights", 1021, "Socks and Tights", 6.99),
        ("Bikini top", 60, "Swimwear", 1018, "Swimwear", 14.99),
        ("Swimsuit", 59, "Swimwear", 1018, "Swimwear", 24.99),
        ("Sneakers", 87, "Shoes", 1020, "Shoes", 29.99),
        ("Bag", 66, "Accessories", 1019, "Accessories", 19.99),
        ("Hat", 72, "Accessories", 1019, "Accessories", 9.99),
        ("Scarf", 83, "Accessories", 1019, "Accessories", 12.99),
    ],
).set_index("product_type_name", drop=False)
# types: the product types a department sells
HM_DEPARTMENTS = vocabulary(
    "department_name department_no index_code section_no section_name weight types",
    [
        ("Jersey Basic", 1676, "A", 16, "Womens Everyday Basics", 8, "Vest top|T-shirt"),
        ("Blouse & Shirt", 1722, "A", 15, "Womens Everyday Collection", 5, "Blouse|Shirt"),
        ("Knitwear", 1626, "A", 15, "Womens Everyday Collection", 4, "Sweater|Cardigan"),
        ("Dresses", 1643, "A", 18, "Womens Trend", 6, "Dress|Jumpsuit|Skirt"),
        ("Trousers", 1747, "A", 15, "Womens Everyday Collection", 6, "Trousers|Jeans"),
        ("Outdoor", 1515, "A", 14, "Womens Outerwear", 2, "Jacket|Coat"),
        ("Lingerie", 1339, "B", 61, "Womens Lingerie", 6, "Bra|Briefs"),
        ("Nightwear", 1334, "B", 62, "Womens Nightwear, Socks & Tights", 3, "Pyjama set|Socks"),
        ("Tights", 1336, "B", 62, "Womens Nightwear, Socks & Tights", 1, "Tights"),
        ("Swimwear", 3608, "B", 60, "Womens Swimwear, beachwear", 3, "Bikini top|Swimsuit"),
        ("Accessories", 4242, "C", 65, "Womens Big accessories", 3, "Bag|Hat|Scarf"),
        ("Shoes", 3509, "C", 64, "Womens Shoes", 1, "Sneakers"),
        ("Divided Basics", 8716, "D", 51, "Divided Basics", 7, "Vest top|T-shirt|Hoodie"),
        ("Divided Trend", 1949, "D", 52, "Divided Projects", 4, "Dress|Skirt|Jeans"),
        ("Men Jersey", 5883, "F", 21, "Contemporary Casual", 4, "T-shirt|Hoodie|Shirt"),
        ("Men Trousers", 7389, "F", 20, "Contemporary Smart", 3, "Trousers|Jeans|Shorts"),
        ("Men Outdoor", 3936, "F", 23, "Men Outerwear", 1, "Jacket|Coat"),
        ("Baby Basics", 6515, "G", 44, "Baby Essentials", 3, "T-shirt|Trousers|Pyjama set"),
        ("Kids Girl", 7920, "H", 77, "Young Girl", 3, "Dress|Leggings|T-shirt"),
        ("Kids Boy", 7657, "H", 46, "Kids Boy", 2, "T-shirt|Shorts|Hoodie"),
        ("Kids Accessories", 4344, "J", 41, "Kids Accessories", 1, "Hat|Socks|Swimsuit"),
        ("Sport", 8310, "S", 5, "Ladies H&M Sport", 2, "Vest top|Leggings|Bra"),
    ],
)
HM_COLOURS = vocabulary(
    "colour_group_name colour_group_code perceived_colour_value_id perceived_colour_value_name "
    "perceived_colour_master_id perceived_colour_master_name weight",
    [
        ("Black", "09", 2, "Dark", 5, "Black", 20),
        ("White", "10", 3, "Light", 9, "White", 10),
        ("Off White", "11", 1, "Dusty Light", 9, "White", 4),
        ("Light Beige", "12", 3, "Light", 11, "Beige", 3),
        ("Beige", "13", 1, "Dusty Light", 11, "Beige", 4),
        ("Light Grey", "06", 3, "Light", 12, "Grey", 3),
        ("Grey", "07", 4, "Medium Dusty", 12, "Grey", 3),
        ("Dark Grey", "08", 2, "Dark", 12, "Grey", 3),
        ("Light Blue", "71", 3, "Light", 2, "Blue", 4),
        ("Blue", "72", 6, "Medium", 2, "Blue", 4),
        ("Dark Blue", "73", 2, "Dark", 2, "Blue", 8),
        ("Red", "42", 5, "Bright", 18, "Red", 3),
        ("Light Pink", "51", 3, "Light", 4, "Pink", 4),
        ("Pink", "52", 6, "Medium", 4, "Pink", 3),
        ("Dark Green", "93", 2, "Dark", 19, "Green", 2),
        ("Greenish Khaki", "19", 4, "Medium Dusty", 20, "Khaki green", 2),
        ("Dark Yellow", "23", 4, "Medium Dusty", 8, "Yellow", 1),
        ("Light Turquoise", "82", 3, "Light", 13, "Turquoise", 1),
        ("Dark Orange", "63", 5, "Bright", 14, "Orange", 1),
    ],
)
HM_APPEARANCES = vocabulary(
    "graphical_appearance_name graphical_appearance_no weight",
    [
        ("Solid", 1010016, 50),
        ("All over pattern", 1010001, 12),
        ("Stripe", 1010017, 8),
        ("Melange", 1010010, 7),
        ("Placement print", 1010023, 8),
        ("Denim", 1010005, 4),
        ("Check", 1010008, 2),
        ("Dot", 1010014, 2),
        ("Lace", 1010021, 2),
    ],
)
HM_NAMES = (
    "Mira Tilly Jade Luna Noah Elsa Ivy Oscar Felix Nora Alma Vera Ruby Leo Maja Ella Stella "
    "Hugo Iris Juno Theo Cleo Ada Otto Liv Saga Milo Freya Edith Sol"
).split()
HM_MATERIALS = (
    "cotton jersey",
    "organic cotton",
    "linen",
    "viscose",
    "rib-knit jersey",
    "fine-knit wool blend",
    "recycled polyester",
    "satin",
    "corduroy",
    "lyocell",
    "cotton twill",
    "soft sweatshirt fabric",
)
HM_FITS = ("Regular", "Relaxed", "Slim", "Oversized", "Fitted", "Loose")
# detail_desc: two slots of features by product group (garments by body part, and the rest)
HM_FEATURES = {
    "Garment Upper body": (
        ("a round neckline", "a V-neck", "a collar", "a hood", "a high neck"),
        ("long sleeves", "short sleeves", "dropped shoulders", "ribbed cuffs", "a chest pocket"),
    ),
    "Garment Lower body": (
        ("an elasticated waist", "a high waist", "a zip fly and button", "a drawstring waist"),
        ("side pockets", "straight legs", "wide legs", "tapered legs", "a slit at the hem"),
    ),
    "Garment Full body": (
        ("a wrapover front", "a V-neck", "narrow shoulder straps", "a round neckline"),
        ("a tie belt", "a concealed zip at the back", "a flared skirt", "short puff sleeves"),
    ),
    "other": (
        ("adjustable straps", "a soft lining", "a press-stud fastening", "a zip closure"),
        ("a ribbed trim", "a small metal logo", "a fold-over edge", "a woven label"),
    ),
}


def write_hm(out: Path, rows: int, seed: int) -> dict[str, Any]:
    """Write transactions_train.csv, articles.csv and customers.csv of ``rows`` purchases."""
    check_rows(rows)
    start = time.perf_counter()
    n_customers, n_articles = HM.users_for(rows), HM.items_for(rows)
    customer_rng, article_rng, purchase_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)
    )
    ensure_dir(out)
    customer_ids = hex_ids(n_customers, customer_rng)
    write_chunks(
        out / "customers.csv",
        HM_CUSTOMER_HEADER,
        iter([hm_customers(customer_ids, customer_rng)]),
    )
    articles, popularity, prices = hm_articles(n_articles, article_rng)
    write_frame(out / "articles.csv", articles)
    write_chunks(
        out / "transactions_train.csv",
        HM_TRANSACTION_HEADER,
        hm_transactions(
            rows,
            fixed_strings(customer_ids),
            pa.array(articles["article_id"]),
            popularity,
            prices,
            purchase_rng,
        ),
    )
    counts = {"transactions": rows, "customers": n_customers, "articles": n_articles}
    return finish(out, HM, rows, seed, counts, start)


def hm_customers(ids: np.ndarray, rng: np.random.Generator) -> pa.Table:
    """customers.csv: club and newsletter status, age, and a heavily shared postal code."""
    n = len(ids)
    member = rng.random(n) < 0.35
    status = pick(rng, n, {0: 92.7, 1: 6.8, 2: 0.03, 3: 0.44})
    news = pick(rng, n, {0: 64.0, 1: 35.0, 2: 0.06, 3: 1.2})
    young = rng.random(n) < 0.55
    age = np.where(young, rng.normal(24, 4, n), rng.normal(48, 11, n))
    postal = hex_ids(max(1, n // 4), rng)
    return pa.table(
        {
            "customer_id": fixed_strings(ids),
            "FN": pa.array(np.where(member, "1.0", None)),
            "Active": pa.array(np.where(member & (rng.random(n) < 0.97), "1.0", None)),
            "club_member_status": coded(status, ["ACTIVE", "PRE-CREATE", "LEFT CLUB", ""]),
            "fashion_news_frequency": coded(news, ["NONE", "Regularly", "Monthly", ""]),
            "age": pa.array(np.clip(age, 16, 99).astype(np.int64), mask=rng.random(n) < 0.012),
            "postal_code": pa.DictionaryArray.from_arrays(
                pa.array(draw(zipf_cdf(len(postal), rng, 0.0), n, rng)), fixed_strings(postal)
            ),
        }
    )


def hm_articles(n: int, rng: np.random.Generator) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """articles.csv, and each article's popularity (cumulative) and base price.

    Articles are colour variants of products (article_id = product_code + 3 digits); variants
    share the product's name, type, department and description and differ in colour and print.
    Popularity is Zipf over products times a decay over a product's variants.
    """
    variants = np.minimum(rng.geometric(1 / HM_VARIANTS_PER_PRODUCT, n), 999)
    n_products = int(np.searchsorted(np.cumsum(variants), n)) + 1
    variants = variants[:n_products]
    variants[-1] -= variants.sum() - n
    low, high = HM_PRODUCT_CODES[0], max(HM_PRODUCT_CODES[1], HM_PRODUCT_CODES[0] + 2 * n)
    codes = np.sort(rng.choice(high - low, n_products, replace=False) + low)
    product = np.repeat(np.arange(n_products), variants)
    variant = np.arange(n) - np.repeat(np.cumsum(variants) - variants, variants)

    products = rows_of(HM_DEPARTMENTS, draw(_cdf(HM_DEPARTMENTS["weight"]), n_products, rng))
    offered = products.pop("types").str.split("|")
    kinds = [kind[int(u * len(kind))] for kind, u in zip(offered, rng.random(n_products))]
    products = side_by_side(products, HM_TYPES.loc[kinds], HM_INDEXES.loc[products["index_code"]])
    lower = products["product_type_name"].str.lower()
    given = np.array(HM_NAMES)[rng.integers(0, len(HM_NAMES), n_products)]
    products["prod_name"] = given + " " + lower
    slots = [HM_FEATURES.get(g, HM_FEATURES["other"]) for g in products["product_group_name"]]
    first, second = rng.random(n_products), rng.random(n_products)
    features = [
        f"{a[int(u * len(a))]} and {b[int(v * len(b))]}"
        for (a, b), u, v in zip(slots, first, second)
    ]
    fit = np.array(HM_FITS)[rng.integers(0, len(HM_FITS), n_products)]
    material = np.array(HM_MATERIALS)[rng.integers(0, len(HM_MATERIALS), n_products)]
    products["detail_desc"] = np.where(
        rng.random(n_products) < 0.004,  # a few are missing, as in the original
        "",
        fit + "-fit " + lower + " in " + material + " with " + np.array(features) + ".",
    )
    tier = products["price"].to_numpy() * rng.choice([0.7, 1.0, 1.3], n_products)
    price = (np.floor(tier) + 0.99) / HM_PRICE_DIVISOR

    articles = side_by_side(
        rows_of(products, product),
        rows_of(HM_COLOURS, draw(_cdf(HM_COLOURS["weight"]), n, rng)),
        rows_of(HM_APPEARANCES, draw(_cdf(HM_APPEARANCES["weight"]), n, rng)),
    )
    articles["article_id"] = zero_padded(codes[product] * 1000 + variant + 1, 10).astype(str)
    articles["product_code"] = zero_padded(codes[product], 7).astype(str)
    product_weight = np.diff(zipf_cdf(n_products, rng), prepend=0.0)
    popularity = _cdf(product_weight[product] * 0.6**variant)
    return articles[HM_ARTICLE_COLUMNS], popularity, price[product]


def rows_of(table: pd.DataFrame, index: np.ndarray) -> pd.DataFrame:
    return table.iloc[index].reset_index(drop=True)


def side_by_side(*tables: pd.DataFrame) -> pd.DataFrame:
    """Tables of the same length as one, row by row (their indexes ignored)."""
    return pd.concat([t.reset_index(drop=True) for t in tables], axis=1)


def hm_days(rng: np.random.Generator, n: int) -> np.ndarray:
    """Visit days (0 = 2018-09-20): a summer peak and busier weekends."""
    n_days = (HM_LAST_DAY - HM_FIRST_DAY).days + 1
    day = np.arange(n_days)
    weekday = (day + HM_FIRST_DAY.weekday()) % 7
    weights = (1 + 0.3 * np.cos(2 * np.pi * (day - 280) / 365.25)) * np.where(weekday >= 5, 1.2, 1)
    days = draw(_cdf(weights), n, rng)
    days[0], days[-1] = 0, n_days - 1  # any N spans the real period
    return days.astype(np.int16)


def hm_transactions(
    rows: int,
    customer_ids: pa.Array,
    article_ids: pa.Array,
    popularity: np.ndarray,
    prices: np.ndarray,
    rng: np.random.Generator,
) -> Iterator[pa.Table]:
    """transactions_train.csv in blocks of about CHUNK_ROWS rows, sorted by day then customer.

    Purchases come in visits (a customer, a day, a channel, 1+ articles): every customer makes
    at least one, the rest go to customers by a lognormal activity. Visits are sorted once;
    their articles and prices are drawn block by block, so no per-row array is ever whole.
    """
    n_customers = len(customer_ids)
    sizes = rng.geometric(1 / HM_MEAN_BASKET, int(rows / HM_MEAN_BASKET * 1.05) + 10)
    while sizes.sum() < rows:
        sizes = np.concatenate([sizes, rng.geometric(1 / HM_MEAN_BASKET, len(sizes) // 10 + 10)])
    n_visits = int(np.searchsorted(np.cumsum(sizes), rows)) + 1
    sizes = sizes[:n_visits]
    sizes[-1] -= sizes.sum() - rows
    activity = _cdf(rng.lognormal(0.0, 1.1, n_customers))
    customer = np.arange(min(n_visits, n_customers), dtype=np.int32)
    customer = np.concatenate([customer, draw(activity, n_visits - len(customer), rng)])
    day = hm_days(rng, n_visits)
    online = rng.beta(2 * HM_ONLINE_SHARE, 2 * (1 - HM_ONLINE_SHARE), n_customers)
    channel = np.where(rng.random(n_visits) < online[customer], 2, 1).astype(np.int8)
    order = np.argsort(day.astype(np.int64) * n_customers + customer, kind="stable")
    day, customer, channel, sizes = day[order], customer[order], channel[order], sizes[order]
    del order
    first_day = np.datetime64(HM_FIRST_DAY.isoformat(), "D").astype(np.int64)
    ends = np.cumsum(sizes)
    cuts = np.searchsorted(ends, np.arange(CHUNK_ROWS, rows, CHUNK_ROWS), side="right")
    for lo, hi in zip(np.concatenate([[0], cuts]), np.concatenate([cuts, [n_visits]])):
        repeat = sizes[lo:hi]
        n = int(repeat.sum())
        article = draw(popularity, n, rng)
        discount = pick(rng, n, HM_DISCOUNTS)
        yield pa.table(
            {
                "t_dat": pa.array(
                    (np.repeat(day[lo:hi], repeat) + first_day).astype(np.int32), pa.date32()
                ),
                "customer_id": pa.DictionaryArray.from_arrays(
                    pa.array(np.repeat(customer[lo:hi], repeat)), customer_ids
                ),
                "article_id": pa.DictionaryArray.from_arrays(pa.array(article), article_ids),
                "price": pa.array(prices[article] * discount),
                "sales_channel_id": pa.array(np.repeat(channel[lo:hi], repeat)),
            }
        )


# --------------------------------------------------------------------------------------------
# MovieLens
# --------------------------------------------------------------------------------------------

ML_MIN_RATINGS = 20
ML_FIRST_TIME = 789_652_009  # 1995-01-09, the first rating of both
ML_LAST_TIME = {"ml-20m": 1_427_784_002, "ml-32m": 1_697_155_199}  # 2015-03-31, 2023-10-12
ML_HALF_STARS_FROM = 1_045_526_400  # 2003-02-18: MovieLens ratings were whole stars before
ML_ID_SPREAD = {"ml-20m": 131_262 / 27_278, "ml-32m": 292_757 / 87_585}  # max movieId / movies
ML_MEAN_RATING = 3.53
ML_RATING_LABELS = [f"{r / 2:.1f}" for r in range(1, 11)]
ML_GENRES = {
    "Action": 0.13,
    "Adventure": 0.08,
    "Animation": 0.04,
    "Children": 0.05,
    "Comedy": 0.31,
    "Crime": 0.11,
    "Documentary": 0.09,
    "Drama": 0.49,
    "Fantasy": 0.05,
    "Film-Noir": 0.01,
    "Horror": 0.1,
    "IMAX": 0.01,
    "Musical": 0.03,
    "Mystery": 0.06,
    "Romance": 0.15,
    "Sci-Fi": 0.06,
    "Thriller": 0.16,
    "War": 0.04,
    "Western": 0.02,
}
ML_NO_GENRES = "(no genres listed)"
ML_ADJECTIVES = (
    "Silent Last Broken Golden Hidden Lost Dark Wild Crimson Endless Quiet Burning Frozen "
    "Secret Little Midnight Electric Distant Savage Hollow"
).split()
ML_NOUNS = (
    "River Garden Empire Road Kingdom Summer Witness Stranger Harbor Storm Island Promise "
    "Machine Mountain Detective Letter Winter Circus Frontier Heart Mirror Station"
).split()
ML_PLACES = "Paris Tokyo Brooklyn Berlin Texas Mars Rome Alaska Cairo Havana".split()


def write_movielens(out: Path, scale: Scale, rows: int, seed: int) -> dict[str, Any]:
    """Write ratings.csv (sorted by userId, then movieId) and movies.csv of ``rows`` ratings."""
    check_rows(rows)
    start = time.perf_counter()
    n_users = scale.users_for(rows)
    least = min(ML_MIN_RATINGS, rows // n_users)
    n_movies = max(scale.items_for(rows), 4 * math.ceil(rows / n_users), 2 * least)
    movie_rng, rating_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2)
    )
    ensure_dir(out)
    movies = ml_movies(scale, n_movies, movie_rng)
    write_frame(out / "movies.csv", movies)
    counts = allocate(
        rows, rating_rng.lognormal(0.0, 1.38, n_users), least, n_movies // 2, rating_rng
    )
    keys = distinct_pairs(counts, zipf_cdf(n_movies, rating_rng), n_movies, rating_rng)
    write_chunks(
        out / "ratings.csv",
        "userId,movieId,rating,timestamp",
        ml_ratings(keys, movies["movieId"].to_numpy(), n_users, scale, rating_rng),
    )
    summary = {"ratings": rows, "users": n_users, "movies": n_movies}
    return finish(out, scale, rows, seed, summary, start)


def ml_movies(scale: Scale, n: int, rng: np.random.Generator) -> pd.DataFrame:
    """movies.csv: sparse increasing movieIds, "Title (Year)" titles, sorted '|' genres.

    A leading "The" moves to the end as in MovieLens ("Silent River, The (1994)"), so some
    titles hold commas and are quoted.
    """
    spread = ML_ID_SPREAD[scale.name]
    ids = np.sort(rng.choice(max(n, int(n * spread)), n, replace=False) + 1)
    adjective = np.array(ML_ADJECTIVES)[rng.integers(0, len(ML_ADJECTIVES), n)]
    noun = np.array(ML_NOUNS)[rng.integers(0, len(ML_NOUNS), n)]
    place = np.array(ML_PLACES)[rng.integers(0, len(ML_PLACES), n)]
    pattern = rng.choice(4, n, p=[0.4, 0.25, 0.2, 0.15])
    titles = np.select(
        [pattern == 0, pattern == 1, pattern == 2],
        [
            np.char.add(np.char.add(adjective, " "), noun),
            np.char.add(np.char.add(np.char.add(adjective, " "), noun), ", The"),
            np.char.add(np.char.add(noun, " in "), place),
        ],
        np.char.add(np.char.add(noun, " "), (rng.integers(2, 5, n)).astype(str)),
    )
    last_year = datetime.fromtimestamp(ML_LAST_TIME[scale.name], timezone.utc).year
    years = np.maximum(last_year - rng.exponential(15, n).astype(int), 1902)
    names = list(ML_GENRES)
    flags = rng.random((n, len(names))) < np.array(list(ML_GENRES.values()))
    none = rng.random(n) < 0.01
    masks = (flags * (1 << np.arange(len(names)))).sum(axis=1) * ~none
    labels = {
        m: "|".join(g for i, g in enumerate(names) if m >> i & 1) or ML_NO_GENRES
        for m in np.unique(masks)
    }
    return pd.DataFrame(
        {
            "movieId": ids,
            "title": np.char.add(np.char.add(np.char.add(titles, " ("), years.astype(str)), ")"),
            "genres": [labels[m] for m in masks],
        }
    )


def distinct_pairs(
    counts: np.ndarray, cdf: np.ndarray, n_items: int, rng: np.random.Generator
) -> np.ndarray:
    """Sorted keys ``user * n_items + item``: ``counts[user]`` distinct items per user.

    Items are drawn by popularity with replacement and duplicates dropped; the users left short
    draw again (twice what they miss, popularity for a few rounds, then uniformly, which always
    finishes as no user needs more than half the items). Later rounds touch only the short users.
    """
    keys = sorted_unique(
        np.repeat(np.arange(len(counts), dtype=np.int64), counts) * n_items
        + draw(cdf, int(counts.sum()), rng)
    )
    extra = np.empty(0, dtype=np.int64)
    missing = counts - np.bincount(keys // n_items, minlength=len(counts))
    for round_ in range(100):
        if not missing.any():
            break
        users = np.repeat(np.arange(len(counts), dtype=np.int64), 2 * missing)
        items = (
            draw(cdf, len(users), rng)
            if round_ < 5
            else rng.integers(0, n_items, len(users), dtype=np.int64)
        )
        fresh = sorted_unique(users * n_items + items)
        fresh = fresh[~_contains(keys, fresh) & ~_contains(extra, fresh)]
        owner = fresh // n_items
        rank = np.arange(len(fresh)) - np.searchsorted(owner, owner, side="left")
        fresh = fresh[rank < missing[owner]]
        missing -= np.bincount(fresh // n_items, minlength=len(counts))
        extra = np.sort(np.concatenate([extra, fresh]))
    assert not missing.any(), "distinct_pairs did not converge"
    return np.sort(np.concatenate([keys, extra]), kind="stable")


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """``np.unique`` of int64 keys by a sort: numpy 2.4's own took 34 s on 20M keys here, the
    sort 0.3 s."""
    values = np.sort(values)
    keep = np.ones(len(values), dtype=bool)
    keep[1:] = values[1:] != values[:-1]
    return values[keep]


def _contains(sorted_keys: np.ndarray, values: np.ndarray) -> np.ndarray:
    if not len(sorted_keys):
        return np.zeros(len(values), dtype=bool)
    at = np.minimum(np.searchsorted(sorted_keys, values), len(sorted_keys) - 1)
    return sorted_keys[at] == values


def ml_ratings(
    keys: np.ndarray,
    movie_ids: np.ndarray,
    n_users: int,
    scale: Scale,
    rng: np.random.Generator,
) -> Iterator[pa.Table]:
    """ratings.csv blocks: half stars from a movie quality, a user bias and noise; timestamps
    from a per-user active span (lognormal, median a day: many users rate in one sitting, so
    seconds tie as in the originals)."""
    n_movies = len(movie_ids)
    last = ML_LAST_TIME[scale.name]
    quality = rng.normal(0.0, 0.5, n_movies)
    bias = rng.normal(0.0, 0.4, n_users)
    first = rng.integers(ML_FIRST_TIME, last, n_users)
    span = np.minimum(rng.lognormal(np.log(86_400), 2.5, n_users), last - first).astype(np.int64)
    for lo in range(0, len(keys), CHUNK_ROWS):
        block = keys[lo : lo + CHUNK_ROWS]
        user, movie = block // n_movies, block % n_movies
        stamp = first[user] + (rng.random(len(block)) * (span[user] + 1)).astype(np.int64)
        score = ML_MEAN_RATING + quality[movie] + bias[user] + rng.normal(0.0, 0.9, len(block))
        halves = np.where(stamp < ML_HALF_STARS_FROM, 2 * np.rint(score), np.rint(2 * score))
        halves = np.clip(halves, np.where(stamp < ML_HALF_STARS_FROM, 2, 1), 10).astype(np.int32)
        yield pa.table(
            {
                "userId": pa.array((user + 1).astype(np.int32)),
                "movieId": pa.array(movie_ids[movie]),
                "rating": coded(halves - 1, ML_RATING_LABELS),
                "timestamp": pa.array(stamp),
            }
        )


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def finish(
    out: Path, scale: Scale, rows: int, seed: int, counts: dict[str, int], start: float
) -> dict[str, Any]:
    """Record what was generated in ``synth.json`` beside the files and log it."""
    summary = {
        "dataset": scale.name,
        "synthetic": True,
        "generator": "python -m benchmarks.synth",
        "rows": rows,
        "seed": seed,
        "counts": counts,
        "real_size": {"rows": scale.rows, "users": scale.users, "items": scale.items},
    }
    write_json(summary, out / SYNTH_FILE)
    described = ", ".join(f"{v:,} {k}" for k, v in counts.items())
    logger.info(f"{scale.name}: wrote {described} to {out} in {time.perf_counter() - start:.1f} s")
    return summary


app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True)
OutOpt = Annotated[Path, typer.Option("--out", help="Folder to write the files into.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Same seed, same bytes.")]


def rows_option(scale: Scale) -> Any:
    return typer.Option("--rows", help=f"Rows of the interaction file (real: {scale.rows:,}).")


@app.command("hm")
def hm_command(
    out: OutOpt,
    rows: Annotated[int, rows_option(HM)] = HM.rows,
    seed: SeedOpt = 0,
) -> None:
    """H&M: transactions_train.csv, articles.csv, customers.csv."""
    write_hm(out, rows, seed)


@app.command("ml-20m")
def ml_20m_command(
    out: OutOpt,
    rows: Annotated[int, rows_option(ML_20M)] = ML_20M.rows,
    seed: SeedOpt = 0,
) -> None:
    """MovieLens 20M: ratings.csv and movies.csv."""
    write_movielens(out, ML_20M, rows, seed)


@app.command("ml-32m")
def ml_32m_command(
    out: OutOpt,
    rows: Annotated[int, rows_option(ML_32M)] = ML_32M.rows,
    seed: SeedOpt = 0,
) -> None:
    """MovieLens 32M: ratings.csv and movies.csv."""
    write_movielens(out, ML_32M, rows, seed)


if __name__ == "__main__":
    run(app)

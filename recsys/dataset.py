"""Data pipeline: original files -> canonical interim parquet -> processed training data.

Three stages (``make data`` runs them in order), each a plain function with explicit folders and a
thin Typer command:

* ``download``: put a dataset's original files in ``data/raw/<dataset>/``, from the official URL
  or from a local mirror (``--mirror DIR`` / ``RECSYS_DATA_MIRROR``), checking archive size and
  md5 and each file's md5 where the original is known. A manifest of what was installed (with
  md5s) makes a second run a no-op and gives later stages the provenance of every raw file.
* ``interim``: parse the raw files with vectorized readers into ``interactions.parquet``
  (user_id, item_id, timestamp, rating; original ids) and ``items.parquet`` (item_id, title and
  every text field) in ``data/interim/<dataset>/``. Exact duplicate rows and interactions whose
  item is not in the item table are dropped and counted (``--strict`` refuses the latter).
* ``main``: filter, map ids to contiguous integers (0 = padding), order each user's events by
  time, split, and write the contract of :mod:`recsys.processed`. A user's events with the same
  timestamp are put in a seeded random order (``--ties shuffle``, the default) because the file
  order often follows the item id (ml-latest-small is sorted by user, then movie id), which
  would let the split's last item be guessed from the numbering; ``--ties file`` keeps the file
  order, as some papers do. stats.json records the policy and how many targets were tied.

Sequence files (``amazon-beauty``, and ``custom --format sequences``) hold one user per line,
``user item item ...`` in time order and no timestamps: an event's position in its line stands in
for its time, so no two events of a user tie.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Callable, Optional

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import typer
from loguru import logger
from tqdm import tqdm

from recsys.cli import fail, run
from recsys.config import DEFAULT_DATASET, INTERIM_DATA_DIR, RAW_DATA_DIR
from recsys.io import atomic_dir, atomic_path, ensure_dir, read_json
from recsys.processed import (
    EVENTS_FILE,
    ITEMS_FILE,
    STATS_FILE,
    TEST,
    TRAIN,
    USERS_FILE,
    VALID,
)
from recsys.processed import processed_dir as processed_folder

MANIFEST_FILE = ".recsys-manifest.json"
INTERIM_MANIFEST = "manifest.json"
INTERACTIONS_FILE = "interactions.parquet"
INTERACTION_COLUMNS = ["user_id", "item_id", "timestamp", "rating"]
# What the timestamp column holds (interim manifest and stats.json).
UNIX_TIME = "unix seconds"
POSITION_TIME = "position in the user's sequence (the file has no timestamps)"
MIRROR_ENV = "RECSYS_DATA_MIRROR"
HTTP_TIMEOUT_S = 60
HASH_BLOCK = 8 << 20
# '::' in text files becomes this one-byte separator (never in MovieLens text) for the C parser.
UNIT_SEPARATOR = b"\x1f"
GROUPLENS = "https://files.grouplens.org/datasets/movielens/{}.zip"
HM_URL = "https://www.kaggle.com/competitions/h-and-m-personalized-fashion-recommendations/data"
# amazon-beauty's items.tsv after item_id; the asin (Amazon's own id) maps items to the source.
AMAZON_ITEM_COLUMNS = ("asin", "title", "brand", "categories")
HM_TEXT_COLUMNS = [
    "prod_name",
    "product_type_name",
    "product_group_name",
    "graphical_appearance_name",
    "colour_group_name",
    "perceived_colour_value_name",
    "index_name",
    "section_name",
    "detail_desc",
]


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetSpec:
    """What a dataset's raw folder must hold, how to check it, and which parser reads it."""

    name: str
    parser: str
    #: Parsed, must exist. The first holds the interactions, the second the item table.
    required: tuple[str, ...] = ()
    #: Parsed when present (tags, links).
    extras: tuple[str, ...] = ()
    #: Copied along when present (READMEs, user tables), not parsed.
    companions: tuple[str, ...] = ()
    url: str | None = None
    archive_bytes: int | None = None
    archive_md5: str | None = None
    file_md5: dict[str, str] = field(default_factory=dict)
    hints: dict[str, str] = field(default_factory=dict)
    homepage: str | None = None
    #: False for sequence files: the order in the line is the time order, there is no clock.
    has_timestamps: bool = True

    @property
    def archive_name(self) -> str | None:
        return self.url.rsplit("/", 1)[-1] if self.url else None

    @property
    def item_table(self) -> str:
        return self.required[1]


ML_CSV_REQUIRED = ("ratings.csv", "movies.csv")
ML_CSV_EXTRAS = ("tags.csv", "links.csv")

DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in [
        DatasetSpec(
            name="ml-100k",
            parser="ml-100k",
            required=("u.data", "u.item", "u.genre"),
            companions=("u.user", "u.info", "u.occupation", "README"),
            url=GROUPLENS.format("ml-100k"),
            archive_bytes=4_924_029,
            archive_md5="0e33842e24a9c977be4e0107933c0723",
            # Every member of the original archive (../shared/data/SOURCES.md).
            file_md5={
                "README": "364aae5a5037ed015864d55c04f1f476",
                "allbut.pl": "7111b21765584d73b2c0c446f3213013",
                "mku.sh": "65560d0b2f71ce70d1fadd266d9afcce",
                "u.data": "6e47046882bad158b0efbb84cd5cb987",
                "u.genre": "a7578bdb37758741ae9429d2c736af18",
                "u.info": "6cae0afd8c0341aff31b631a192e57e6",
                "u.item": "c9e7f390115d79079537301d5204f3f7",
                "u.occupation": "035abaa2165f35cebce4b91e03481e0a",
                "u.user": "1b53539edc13caad0282c8500608a319",
                "u1.base": "4325f44281c9f8c119a3694662d63fc2",
                "u1.test": "62d5d837e7c8e36550cc956b09c2ecc8",
                "u2.base": "79541afecccbd5365bb2c09b123a01c7",
                "u2.test": "1951a71b7e1f4ed254508007fa2f6b70",
                "u3.base": "55c67a63f516fa9e593d68c3be779970",
                "u3.test": "cb3e4d0a9152041772285232ca002d4f",
                "u4.base": "66f64a75eeeffd20ff09533bcd31adcf",
                "u4.test": "328acfca94e85d01b1d7e92c7d73df3b",
                "u5.base": "0becb3392339231c08ba316944c79095",
                "u5.test": "bec898f7091dba3b7bdf793d1998d2d6",
                "ua.base": "346eb46a756be3b382bdef4f7dcf3a01",
                "ua.test": "52e5d0355092dc1596899855b220508f",
                "ub.base": "e4ce94f6e01e45f65b91a70bb9e8da2f",
                "ub.test": "5292d1e388d156aa0c19c384cdf35aca",
            },
        ),
        DatasetSpec(
            name="ml-1m",
            parser="ml-dat",
            required=("ratings.dat", "movies.dat"),
            companions=("users.dat", "README"),
            url=GROUPLENS.format("ml-1m"),
            archive_bytes=5_917_549,
            archive_md5="c4d9eecfca2ab87c1945afe126590906",
            file_md5={
                "README": "6a3f626147ec67b732a69beccae0aaa8",
                "movies.dat": "ef9fd9ff8d1b33faf73e2122c371e910",
                "users.dat": "681c0711d0d4548cd3d4718a49c2dcd8",
            },
            hints={"ratings.dat": "1,000,209 lines, about 24.6 MB, inside ml-1m.zip"},
        ),
        DatasetSpec(
            name="ml-20m",
            parser="ml-csv",
            required=ML_CSV_REQUIRED,
            extras=ML_CSV_EXTRAS,
            companions=("README.txt",),
            url=GROUPLENS.format("ml-20m"),
            archive_bytes=198_702_078,
            archive_md5="cd245b17a1ae2cc31bb14903e1204af3",
        ),
        DatasetSpec(
            name="ml-32m",
            parser="ml-csv",
            required=ML_CSV_REQUIRED,
            extras=ML_CSV_EXTRAS,
            companions=("README.txt",),
            url=GROUPLENS.format("ml-32m"),
            archive_bytes=238_950_008,
            archive_md5="d472be332d4daa821edc399621853b57",
        ),
        DatasetSpec(
            name="ml-latest-small",
            parser="ml-csv",
            required=ML_CSV_REQUIRED,
            extras=ML_CSV_EXTRAS,
            companions=("README.txt",),
            # No published archive md5 was found; the extracted files are checked instead.
            url=GROUPLENS.format("ml-latest-small"),
            file_md5={
                "README.txt": "9bc20a696092024abe52696ee6c5837f",
                "links.csv": "316913f95cdad64c745ca22f3630e230",
                "movies.csv": "ed94fab72b62442ef8150d9446e000d6",
                "ratings.csv": "325a6f09399d1c45671f187505e1a100",
                "tags.csv": "1b2d21a7be1cc23d327b11155a4a6aea",
            },
        ),
        DatasetSpec(
            name="hm",
            parser="hm",
            required=("transactions_train.csv", "articles.csv"),
            companions=("customers.csv",),
            homepage=HM_URL,
        ),
        DatasetSpec(
            name="amazon-beauty",
            parser="amazon-beauty",
            required=("Beauty.txt", "items.tsv"),
            # No public download: the files come from a mirror or are placed by hand.
            file_md5={
                "Beauty.txt": "cb03635343187f36526ed4ba48102b53",
                "items.tsv": "25c11e338d887cd1157e1334005a1c9c",
            },
            hints={
                "Beauty.txt": "the 5-core Amazon Beauty sequences of S3-Rec/ICLRec",
                "items.tsv": "item_id, asin, title, brand, categories",
            },
            has_timestamps=False,
        ),
        DatasetSpec(name="custom", parser="custom"),
    ]
}


def get_spec(dataset: str | DatasetSpec) -> DatasetSpec:
    """The registry entry for ``dataset``; an unknown name is a user error listing the choices."""
    if isinstance(dataset, DatasetSpec):
        return dataset
    if dataset not in DATASETS:
        raise fail(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[dataset]


# --------------------------------------------------------------------------------------------
# download
# --------------------------------------------------------------------------------------------


def md5_of(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        while chunk := fh.read(HASH_BLOCK):
            digest.update(chunk)
    return digest.hexdigest()


def mirror_dir(mirror: Path | None = None) -> Path | None:
    """``--mirror`` if given, else ``RECSYS_DATA_MIRROR`` read at call time, not import time."""
    value = mirror if mirror is not None else os.environ.get(MIRROR_ENV)
    return Path(value).expanduser() if value else None


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The download manifest of a raw folder, or None when absent or unreadable."""
    try:
        return json.loads((folder / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return None


def _is_installed(spec: DatasetSpec, target: Path) -> bool:
    """True when the manifest lists every required file and each still has its recorded size."""
    manifest = read_manifest(target)
    if not manifest or not set(spec.required) <= set(manifest.get("files", {})):
        return False
    return all(
        (target / name).is_file() and (target / name).stat().st_size == entry["bytes"]
        for name, entry in manifest["files"].items()
    )


def download(
    dataset: str | DatasetSpec,
    raw_root: Path | None = None,
    mirror: Path | None = None,
    force: bool = False,
) -> Path:
    """Install ``dataset``'s original files in ``raw_root/<dataset>/`` and return that folder.

    Sources, first match wins: complete files already in the folder (placed by the user), the
    archive in ``raw_root`` / the folder / the mirror, the files in the folder plus the mirror's
    ``<dataset>/``, and finally the official URL. With a mirror nothing is fetched from the
    network, so an incomplete mirror is an error that names the missing file.
    """
    spec = get_spec(dataset)
    raw_root = Path(raw_root or RAW_DATA_DIR)
    target = raw_root / spec.name
    if spec.parser == "custom":
        logger.info("custom: nothing to download; 'main --interactions FILE ...' reads your files")
        return target
    if not force and _is_installed(spec, target):
        logger.info(f"{spec.name} is already in {target}; nothing to do (--force checks again)")
        return target
    mirror_root = mirror_dir(mirror)
    if mirror_root is not None and not mirror_root.is_dir():
        raise fail(
            f"the mirror folder {mirror_root} does not exist; fix --mirror or {MIRROR_ENV}, "
            "or unset it to download from the internet"
        )
    local = _find_files(spec, [target])
    if set(spec.required) <= set(local):
        return _install_files(spec, target, local, origin=f"files placed in {target}")
    archive = _find_archive(spec, raw_root, target, mirror_root)
    if archive is not None:
        return _install_archive(spec, target, archive)
    folders = [target] + ([mirror_root / spec.name] if mirror_root else [])
    found = _find_files(spec, folders)
    missing = [name for name in spec.required if name not in found]
    if not missing:
        return _install_files(spec, target, found, origin=f"mirror {mirror_root / spec.name}")
    if mirror_root is not None or spec.url is None:
        raise fail(_missing_message(spec, missing, target, mirror_root))
    archive = fetch(spec, raw_root / spec.archive_name, target)
    return _install_archive(spec, target, archive)


def _find_files(spec: DatasetSpec, folders: list[Path]) -> dict[str, Path]:
    """Each wanted file (listed in the spec or with a known md5) from the first folder with it."""
    found: dict[str, Path] = {}
    wanted = spec.required + spec.extras + spec.companions + tuple(spec.file_md5)
    for name in dict.fromkeys(wanted):
        for folder in folders:
            if (folder / name).is_file():
                found[name] = folder / name
                break
    return found


def _find_archive(
    spec: DatasetSpec, raw_root: Path, target: Path, mirror_root: Path | None
) -> Path | None:
    if spec.archive_name is None:
        return None
    places = [raw_root, target]
    if mirror_root is not None:
        places += [mirror_root / spec.name, mirror_root]
    return next((p / spec.archive_name for p in places if (p / spec.archive_name).is_file()), None)


def _missing_message(
    spec: DatasetSpec, missing: list[str], target: Path, mirror_root: Path | None
) -> str:
    """One line: which files are missing, where they were looked for, and how to get them."""
    names = ", ".join(
        f"{name} ({spec.hints[name]})" if name in spec.hints else name for name in missing
    )
    verb = "is" if len(missing) == 1 else "are"
    looked = f"{target}/" + (f" and the mirror {mirror_root / spec.name}/" if mirror_root else "")
    if spec.url is None and spec.homepage is None:
        return (
            f"{spec.name}: {names} {verb} missing from {looked}; there is no public download: "
            f"put {' and '.join(missing)} in {target}/, or in <mirror>/{spec.name}/ with "
            f"--mirror <mirror> or {MIRROR_ENV}=<mirror>"
        )
    if spec.url is None:
        return (
            f"{spec.name}: {names} {verb} missing from {looked}; download them from "
            f"{spec.homepage} and place them in {target}/"
        )
    return (
        f"{spec.name}: {names} {verb} missing from {looked}; put {' and '.join(missing)} in "
        f"{target}/, or the original {spec.archive_name} ({spec.url}) in {target.parent}/"
        + (f", or unset {MIRROR_ENV} and drop --mirror to download it" if mirror_root else "")
    )


def fetch(spec: DatasetSpec, dest: Path, target: Path) -> Path:
    """Download ``spec.url`` to ``dest`` with a progress bar; size and md5 are checked first."""
    logger.info(f"downloading {spec.url}")
    offline_hint = (
        f"offline? put {spec.archive_name} in {dest.parent}/ or its files "
        f"({', '.join(spec.required)}) in {target}/, or point --mirror or {MIRROR_ENV} at a "
        f"folder holding {spec.name}/"
    )
    request = urllib.request.Request(spec.url, headers={"User-Agent": "recsys-data"})
    try:
        response = urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S)
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise fail(f"could not download {spec.url} ({reason}); {offline_hint}")
    total = spec.archive_bytes or int(response.headers.get("Content-Length") or 0) or None
    digest = hashlib.md5()
    with response, atomic_path(dest) as tmp:
        try:
            with (
                open(tmp, "wb") as out,
                tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=None) as bar,
            ):
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
        except OSError as err:
            raise fail(f"download of {spec.url} broke off ({err}); run download again")
        check_archive(spec, tmp, digest.hexdigest(), shown_as=spec.url)
    return dest


def check_archive(
    spec: DatasetSpec, path: Path, md5: str | None = None, shown_as: str = ""
) -> None:
    """Refuse an archive whose size or md5 differs from the original's."""
    shown_as = shown_as or str(path)
    size = path.stat().st_size
    redo = "delete it and run download again, or replace it with the original"
    if spec.archive_bytes is not None and size != spec.archive_bytes:
        raise fail(
            f"{shown_as} is {size:,} bytes but the original {spec.archive_name} is "
            f"{spec.archive_bytes:,} (truncated or a different file); {redo}"
        )
    if spec.archive_md5 is not None:
        md5 = md5 or md5_of(path)
        if md5 != spec.archive_md5:
            raise fail(
                f"{shown_as} has md5 {md5} but the original {spec.archive_name} has "
                f"{spec.archive_md5} (corrupted or a different file); {redo}"
            )


def _install_archive(spec: DatasetSpec, target: Path, archive: Path) -> Path:
    check_archive(spec, archive)
    logger.info(f"{spec.name}: extracting {archive}")
    with _staged_raw_folder(target) as staging:
        extract_zip(archive, staging)
        _finish_install(spec, staging, origin=f"archive {archive}")
    return target


def _install_files(spec: DatasetSpec, target: Path, files: dict[str, Path], origin: str) -> Path:
    logger.info(f"{spec.name}: taking {', '.join(files)} from {origin}")
    with _staged_raw_folder(target) as staging:
        for name, source in files.items():
            # A mirror file is copied: a hard link would let edits in data/raw reach the mirror.
            _link_or_copy(source, staging / name, link=source.parent == target)
        _finish_install(spec, staging, origin=origin)
    return target


@contextlib.contextmanager
def _staged_raw_folder(target: Path) -> Iterator[Path]:
    """A temporary copy of ``target`` that replaces it on success; the user's files are kept."""
    with atomic_dir(target) as staging:
        if target.is_dir():
            for entry in target.iterdir():
                if entry.name != MANIFEST_FILE and entry.is_file():
                    _link_or_copy(entry, staging / entry.name)
                elif entry.is_dir():
                    shutil.copytree(entry, staging / entry.name, copy_function=_link_or_copy)
        yield staging


def _link_or_copy(source: Path | str, dest: Path | str, link: bool = True) -> None:
    """Hard-link when asked and possible (instant, no extra space), else copy.

    ``dest`` is unlinked first: staged files may be hard links to the live folder's, and writing
    through one would change the live file before the swap.
    """
    Path(dest).unlink(missing_ok=True)
    if link:
        with contextlib.suppress(OSError):
            os.link(source, dest)
            return
    shutil.copyfile(source, dest)


def extract_zip(archive: Path, dest: Path) -> None:
    """Extract ``archive`` into ``dest``, dropping the single top folder MovieLens zips have."""
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [
                m
                for m in zf.infolist()
                if not m.is_dir() and not m.filename.startswith("__MACOSX/")
            ]
            tops = {PurePosixPath(m.filename).parts[0] for m in members}
            strip = 1 if len(tops) == 1 and all("/" in m.filename for m in members) else 0
            for member in members:
                relative = PurePosixPath(*PurePosixPath(member.filename).parts[strip:])
                if relative.is_absolute() or ".." in relative.parts:
                    raise fail(f"{archive} holds an unsafe path {member.filename!r}; refused")
                out = dest / relative
                out.parent.mkdir(parents=True, exist_ok=True)
                # ``out`` may be a hard link to a live file: replace it, never write through it.
                out.unlink(missing_ok=True)
                with zf.open(member) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
    except (zipfile.BadZipFile, zlib.error, EOFError) as err:
        raise fail(f"{archive} is corrupt or truncated ({err}); delete it and run download again")


def _finish_install(spec: DatasetSpec, staging: Path, origin: str) -> None:
    """Check the staged files (presence, known md5s) and write the manifest with every md5."""
    missing = [name for name in spec.required if not (staging / name).is_file()]
    if missing:
        raise fail(f"{spec.name}: {origin} lacks {', '.join(missing)}; it is not the original")
    files: dict[str, dict[str, Any]] = {}
    for path in sorted(p for p in staging.iterdir() if p.is_file()):
        md5 = md5_of(path)
        expected = spec.file_md5.get(path.name)
        if expected is not None and md5 != expected:
            raise fail(
                f"{spec.name}: {path.name} from {origin} has md5 {md5} but the original has "
                f"{expected} (damaged or modified copy); replace it with the original file"
            )
        files[path.name] = {
            "bytes": path.stat().st_size,
            "md5": md5,
            "verified": expected is not None,
        }
    unverified = [name for name in spec.required if not files[name]["verified"]]
    if unverified:
        logger.warning(
            f"{spec.name}: no reference md5 for {', '.join(unverified)}; recorded, not verified"
        )
    manifest = {"dataset": spec.name, "source": origin, "files": files}
    (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    logger.info(
        f"{spec.name}: {len(files)} files installed from {origin} "
        f"({sum(f['verified'] for f in files.values())} md5-verified)"
    )


# --------------------------------------------------------------------------------------------
# Vectorized readers
# --------------------------------------------------------------------------------------------


def _arrow_message(err: Exception) -> str:
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    text = text.replace("\t", "\\t").replace("\x1f", "::")
    return text if len(text) <= 200 else text[:200] + "..."


def read_delimited(
    path: Path,
    columns: dict[str, pa.DataType | None],
    delimiter: str,
    header: bool = False,
    encoding: str = "utf8",
    quoted: bool = True,
) -> pa.Table:
    """Parse a delimited text file with Arrow's multi-threaded C reader.

    ``columns`` names the columns (in file order when there is no header; the wanted subset when
    there is one) and their types (None: inferred). The C reader takes one-byte separators only,
    and pandas' python engine is far too slow for ML-10M-sized files, so '::' files are read
    either with ':' as separator and a must-be-empty column between each pair of fields (numeric
    files such as ratings.dat: no copy of the data), or, when text may hold ':' (movies.dat,
    small), with '::' rewritten to one byte in memory.
    """
    path = Path(path)
    if not path.is_file():
        raise fail(f"{path} does not exist; run download first")
    if path.stat().st_size == 0:
        raise fail(f"{path} is empty; replace it with the original file")
    types = {name: kind for name, kind in columns.items() if kind is not None}
    numeric = len(types) == len(columns) and all(
        pa.types.is_integer(kind) or pa.types.is_floating(kind) for kind in types.values()
    )
    names, separator, source = list(columns), delimiter, path
    if delimiter == "::" and numeric and not header:
        names = [name for column in columns for name in (column, f"{column}::")][:-1]
        types.update({name: pa.null() for name in names if name not in columns})
        separator = ":"
    elif delimiter == "::":
        source = pa.BufferReader(path.read_bytes().replace(b"::", UNIT_SEPARATOR))
        separator = UNIT_SEPARATOR.decode()
    expected = f"columns {', '.join(columns)} separated by {delimiter!r}"
    try:
        table = pacsv.read_csv(
            source,
            read_options=pacsv.ReadOptions(
                column_names=None if header else names, encoding=encoding, block_size=8 << 20
            ),
            parse_options=pacsv.ParseOptions(
                delimiter=separator, quote_char='"' if quoted else False
            ),
            convert_options=pacsv.ConvertOptions(column_types=types, include_columns=names),
        )
    except (pa.ArrowInvalid, pa.ArrowKeyError) as err:
        raise fail(f"cannot parse {path}: {_arrow_message(err)}; expected {expected}")
    if table.num_rows == 0:
        raise fail(f"{path} has no data rows; replace it with the original file")
    return table.select(list(columns))


def read_ratings(
    path: Path, delimiter: str, names: tuple[str, str, str, str], header: bool
) -> pd.DataFrame:
    """A MovieLens ratings file as canonical interactions (user_id, item_id, timestamp, rating).

    ``names`` are the file's column names for user, item, rating and timestamp, in file order.
    """
    user, item, rating, timestamp = names
    types = {user: pa.int64(), item: pa.int64(), rating: pa.float32(), timestamp: pa.int64()}
    table = read_delimited(path, types, delimiter=delimiter, header=header)
    table = table.rename_columns(["user_id", "item_id", "rating", "timestamp"])
    table = table.select(INTERACTION_COLUMNS)
    # self_destruct frees each Arrow column once converted: peak memory ~ one copy, not two.
    return table.to_pandas(split_blocks=True, self_destruct=True)


def read_sequences(path: Path) -> pd.DataFrame:
    """A sequences file as canonical interactions: one user per line, ``user item item ...``.

    The order in a line is the time order and there are no timestamps, so an event's position in
    its line (1, 2, ...) becomes its timestamp: a user's events never tie, and no tie policy can
    reorder them. Ids must be plain non-negative integers (as in the benchmark files), each user
    has one line, and every line has at least one item; anything else is a one-line error naming
    the line. Splitting and the id check run in Arrow's C kernels, not per token in Python.
    """
    path = Path(path)
    layout = "each line must be 'user item item ...' (integer ids, whitespace-separated)"
    if not path.is_file():
        raise fail(f"{path} does not exist; check the path")
    data = path.read_bytes()
    if not data.strip():
        raise fail(f"{path} is empty; {layout}")
    try:
        text = data.decode("utf8")
    except UnicodeDecodeError as err:
        raise fail(f"{path} is not UTF-8 text (byte {err.start:,}); {layout}")
    lines = text.split("\n")
    if lines[-1] == "":  # the newline that ends the last line
        lines.pop()
    trimmed = pc.utf8_trim_whitespace(pa.array(lines, pa.string()))
    tokens = pc.split_pattern_regex(trimmed, r"\s+")
    counts = pc.list_value_length(tokens).to_numpy().astype(np.int64)
    counts[pc.equal(trimmed, "").to_numpy(False)] = 0  # '' splits into one empty token
    short = np.flatnonzero(counts < 2)
    if short.size:
        row = int(short[0])
        what = (
            "is empty" if counts[row] == 0 else f"has the user {lines[row].strip()} but no items"
        )
        raise fail(f"{path} line {row + 1} {what}; {layout}")
    flat = pc.list_flatten(tokens)
    plain = pc.match_substring_regex(flat, r"^(0|[1-9][0-9]{0,17})$").to_numpy(False)
    ends = np.cumsum(counts)
    if not plain.all():
        first = int(np.argmin(plain))
        row = int(np.searchsorted(ends, first, side="right"))
        raise fail(
            f"{path} line {row + 1}: {flat[first].as_py()!r} is not a plain integer id; {layout}"
        )
    ids = pc.cast(flat, pa.int64()).to_numpy()
    starts = ends - counts
    users = ids[starts]
    repeated = pd.Series(users).duplicated().to_numpy()
    if repeated.any():
        row = int(np.argmax(repeated))
        earlier = int(np.flatnonzero(users == users[row])[0])
        raise fail(
            f"{path} line {row + 1}: user {users[row]} already has line {earlier + 1}; "
            "give each user one line with all their items in time order"
        )
    position = np.arange(len(ids), dtype=np.int64) - np.repeat(starts, counts)
    is_item = position > 0
    return pd.DataFrame(
        {
            "user_id": np.repeat(users, counts - 1),
            "item_id": ids[is_item],
            "timestamp": position[is_item],
            "rating": np.full(int(is_item.sum()), np.nan, dtype=np.float32),
        }
    )


# --------------------------------------------------------------------------------------------
# Parsers: raw folder -> (interactions, items)
# --------------------------------------------------------------------------------------------

YEAR_IN_TITLE = r"\((\d{4})\)\s*$"


def _years(titles: pd.Series) -> pd.Series:
    return pd.to_numeric(titles.str.extract(YEAR_IN_TITLE)[0], errors="coerce").astype("Int32")


def _text(series: pd.Series) -> pd.Series:
    """Text fields as plain strings, missing ones as '' so consumers never see nulls."""
    return series.astype("string").fillna("").str.strip().astype(str)


def parse_ml_100k(raw: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    interactions = read_ratings(
        raw / "u.data", "\t", ("user", "item", "rating", "timestamp"), header=False
    )
    genre_table = read_delimited(
        raw / "u.genre", {"genre": pa.string(), "index": pa.int64()}, "|", quoted=False
    ).to_pandas()
    genre_names = genre_table.sort_values("index")["genre"].to_numpy()
    flag_columns = {f"g{i}": pa.int8() for i in range(len(genre_names))}
    columns = {
        "item_id": pa.int64(),
        "title": pa.string(),
        "release_date": pa.string(),
        "video_release_date": pa.string(),
        "imdb_url": pa.string(),
        **flag_columns,
    }
    raw_items = read_delimited(
        raw / "u.item", columns, "|", encoding="latin-1", quoted=False
    ).to_pandas()
    flags = raw_items[list(flag_columns)].to_numpy().astype(bool)
    release = _text(raw_items["release_date"])
    year = _years(raw_items["title"]).fillna(
        pd.to_numeric(release.str[-4:], errors="coerce").astype("Int32")
    )
    items = pd.DataFrame(
        {
            "item_id": raw_items["item_id"],
            "title": _text(raw_items["title"]),
            "year": year,
            "genres": ["|".join(genre_names[row]) for row in flags],
            "release_date": release,
            "imdb_url": _text(raw_items["imdb_url"]),
        }
    )
    return interactions, items


def parse_ml_dat(raw: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """ml-1m style: ``ratings.dat`` and Latin-1 ``movies.dat``, both '::'-separated."""
    interactions = read_ratings(
        raw / "ratings.dat", "::", ("user", "item", "rating", "timestamp"), header=False
    )
    movies = read_delimited(
        raw / "movies.dat",
        {"item_id": pa.int64(), "title": pa.string(), "genres": pa.string()},
        "::",
        encoding="latin-1",
        quoted=False,
    ).to_pandas()
    return interactions, _movie_table(movies)


def _movie_table(movies: pd.DataFrame, **extra: pd.Series) -> pd.DataFrame:
    title = _text(movies["title"])
    items = pd.DataFrame(
        {
            "item_id": movies["item_id"],
            "title": title,
            "year": _years(title),
            "genres": _text(movies["genres"]),
        }
    )
    for name, values in extra.items():
        items[name] = _text(values.reindex(items["item_id"]).reset_index(drop=True))
    return items


def parse_ml_csv(raw: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """ml-latest-small / ml-20m / ml-32m: ratings.csv, movies.csv, and tags.csv, links.csv."""
    interactions = read_ratings(
        raw / "ratings.csv", ",", ("userId", "movieId", "rating", "timestamp"), header=True
    )
    movies = read_delimited(
        raw / "movies.csv",
        {"movieId": pa.int64(), "title": pa.string(), "genres": pa.string()},
        ",",
        header=True,
    ).to_pandas()
    movies = movies.rename(columns={"movieId": "item_id"})
    extra: dict[str, pd.Series] = {}
    if (raw / "tags.csv").is_file():
        extra["tags"] = aggregate_tags(
            read_delimited(
                raw / "tags.csv", {"movieId": pa.int64(), "tag": pa.string()}, ",", header=True
            ).to_pandas()
        )
    if (raw / "links.csv").is_file():
        links = read_delimited(
            raw / "links.csv",
            {"movieId": pa.int64(), "imdbId": pa.string(), "tmdbId": pa.string()},
            ",",
            header=True,
        ).to_pandas()
        links = links.drop_duplicates("movieId").set_index("movieId")
        extra["imdb_id"], extra["tmdb_id"] = links["imdbId"], links["tmdbId"]
    return interactions, _movie_table(movies, **extra)


def aggregate_tags(tags: pd.DataFrame) -> pd.Series:
    """One '|'-joined string of distinct tags per movie, most used first (ties: first seen).

    Tags differing only in case count as one, spelled as first seen.
    """
    tags = tags.assign(tag=tags["tag"].astype("string").str.strip()).dropna()
    tags = tags[tags["tag"] != ""].reset_index(drop=True)
    tags["key"] = tags["tag"].str.lower()
    tags["order"] = np.arange(len(tags))
    grouped = tags.groupby(["movieId", "key"], sort=False).agg(
        tag=("tag", "first"), uses=("tag", "size"), first=("order", "min")
    )
    grouped = grouped.reset_index().sort_values(
        ["movieId", "uses", "first"], ascending=[True, False, True]
    )
    return grouped.groupby("movieId", sort=True)["tag"].agg("|".join)


def parse_amazon_beauty(raw: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Amazon Beauty 5-core: ``Beauty.txt`` sequences and ``items.tsv`` (title, brand, categories).

    items.tsv is read with quoting off: its titles hold unbalanced double quotes.
    """
    interactions = read_sequences(raw / "Beauty.txt")
    columns = {"item_id": pa.int64(), **dict.fromkeys(AMAZON_ITEM_COLUMNS, pa.string())}
    table = read_delimited(raw / "items.tsv", columns, "\t", header=True, quoted=False)
    raw_items = table.to_pandas()
    items = pd.DataFrame({"item_id": raw_items["item_id"]})
    for name in AMAZON_ITEM_COLUMNS:
        items[name] = _text(raw_items[name])
    return interactions, items


def parse_hm(raw: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """H&M: purchases (day resolution, so many same-day ties) and article descriptions."""
    ids = pa.dictionary(pa.int32(), pa.string())
    transactions = read_delimited(
        raw / "transactions_train.csv",
        {"t_dat": pa.timestamp("s"), "customer_id": ids, "article_id": ids},
        ",",
        header=True,
    )
    interactions = pd.DataFrame(
        {
            "user_id": transactions["customer_id"].to_pandas(),
            "item_id": transactions["article_id"].to_pandas(),
            "timestamp": transactions["t_dat"].cast(pa.int64()).to_numpy(),
            "rating": np.full(transactions.num_rows, np.nan, dtype=np.float32),
        }
    )
    articles = read_delimited(
        raw / "articles.csv",
        {"article_id": pa.string(), **{name: pa.string() for name in HM_TEXT_COLUMNS}},
        ",",
        header=True,
    ).to_pandas()
    items = pd.DataFrame(
        {"item_id": articles["article_id"].astype(str), "title": _text(articles["prod_name"])}
    )
    for name in HM_TEXT_COLUMNS[1:]:
        items[name] = _text(articles[name])
    return interactions, items


CUSTOM_FORMATS = ("events", "sequences")


@dataclass(frozen=True)
class CustomSource:
    """Where a custom dataset's files are and which columns mean what."""

    interactions: Path
    items: Path | None = None
    user_col: str = "user_id"
    item_col: str = "item_id"
    time_col: str = "timestamp"
    rating_col: str | None = None
    items_id_col: str | None = None
    title_col: str = "title"
    text_cols: tuple[str, ...] | None = None
    delimiter: str = ","
    #: ``events``: one interaction per row, columns mapped above. ``sequences``: one user per
    #: line, ``user item item ...`` in time order (see :func:`read_sequences`).
    format: str = "events"

    def raw_files(self) -> list[Path]:
        return [p for p in (self.interactions, self.items) if p is not None]


def _read_any(
    path: Path, columns: dict[str, pa.DataType | None] | None, delimiter: str
) -> pd.DataFrame:
    """A CSV or parquet file with the named columns checked (all columns, as text, if None).

    CSV columns typed None are inferred by Arrow.
    """
    if not path.is_file():
        raise fail(f"{path} does not exist; check the path given on the command line")
    if path.suffix == ".parquet":
        try:
            frame = pd.read_parquet(path)
        except (pa.ArrowInvalid, OSError) as err:
            raise fail(f"cannot read {path} as parquet: {_arrow_message(err)}")
        absent = [c for c in columns or [] if c not in frame.columns]
        if absent:
            raise fail(
                f"{path} has no column {', '.join(absent)} (it has {', '.join(frame.columns)}); "
                "fix the column options"
            )
        if frame.empty:
            raise fail(f"{path} has no data rows")
        return frame[list(columns)] if columns else frame
    names = columns
    if names is None:  # every column: learn the names from the header line
        with open(path, encoding="utf8", errors="replace") as fh:
            first = fh.readline().strip()
        if not first:
            raise fail(f"{path} is empty; it needs a header line and data rows")
        names = dict.fromkeys((c.strip('"') for c in first.split(delimiter)), pa.string())
    return read_delimited(path, names, delimiter, header=True).to_pandas()


def _seconds(values: pd.Series, path: Path, column: str) -> np.ndarray:
    """Timestamps as int64 unix seconds: numbers as they are, date strings parsed as UTC."""
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        if values.isna().any():
            raise fail(f"{path}: column {column!r} has empty timestamps; fill or drop those rows")
        return values.to_numpy().astype(np.int64)
    try:
        parsed = pd.to_datetime(values, utc=True, format="mixed")
    except (ValueError, TypeError) as err:
        raise fail(
            f"{path}: column {column!r} holds non-numeric timestamps that are not dates "
            f"({str(err).splitlines()[0][:120]}); use unix seconds or ISO dates"
        )
    if parsed.isna().any():
        raise fail(f"{path}: column {column!r} has empty timestamps; fill or drop those rows")
    return ((parsed - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy(np.int64)


def _ids(values: pd.Series) -> np.ndarray:
    """Ids exactly as written: integers when every one is a plain integer, else text.

    CSV ids are read as text first so that zero-padded ids ('0108775015') keep their padding.
    """
    if values.dtype.kind in "iu":
        return values.to_numpy()
    text = values.astype(str)
    if text.str.fullmatch(r"0|-?[1-9]\d{0,17}").all():
        return text.astype(np.int64).to_numpy()
    return text.to_numpy()


def parse_custom(source: CustomSource) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Interactions (and optionally items) from user files, mapped by the column options."""
    if source.format not in CUSTOM_FORMATS:
        raise fail(
            f"unknown --format {source.format!r}; choose events (one interaction per row) or "
            "sequences (one line per user: 'user item item ...')"
        )
    if source.format == "sequences":
        interactions = read_sequences(source.interactions)
    else:
        interactions = _custom_events(source)
    if source.items is None:
        ids = pd.unique(interactions["item_id"])
        return interactions, pd.DataFrame({"item_id": ids, "title": [str(i) for i in ids]})
    items = _custom_items(source.items, source)
    if interactions["item_id"].dtype.kind != items["item_id"].dtype.kind:
        # e.g. numeric ids in one file and zero-padded strings in the other: compare as text.
        interactions["item_id"] = interactions["item_id"].astype(str)
        items["item_id"] = items["item_id"].astype(str)
    return interactions, items


def _custom_events(source: CustomSource) -> pd.DataFrame:
    """A custom interactions table (CSV or parquet), one event per row, mapped to our columns."""
    wanted = {source.user_col: pa.string(), source.item_col: pa.string(), source.time_col: None}
    wanted |= {source.rating_col: None} if source.rating_col else {}
    raw = _read_any(source.interactions, wanted, source.delimiter)
    for column in (source.user_col, source.item_col):
        if raw[column].isna().any() or (raw[column].astype(str).str.strip() == "").any():
            raise fail(f"{source.interactions}: column {column!r} has empty ids")
    return pd.DataFrame(
        {
            "user_id": _ids(raw[source.user_col]),
            "item_id": _ids(raw[source.item_col]),
            "timestamp": _seconds(raw[source.time_col], source.interactions, source.time_col),
            "rating": (
                pd.to_numeric(raw[source.rating_col], errors="coerce").astype(np.float32)
                if source.rating_col
                else np.float32(np.nan)
            ),
        }
    )


def _custom_items(path: Path, source: CustomSource) -> pd.DataFrame:
    """The custom item table at ``path``: ids as written, title and the chosen text columns."""
    id_col = source.items_id_col or source.item_col
    columns = dict.fromkeys([id_col, source.title_col, *(source.text_cols or ())], pa.string())
    raw_items = _read_any(
        path, columns if source.text_cols is not None else None, source.delimiter
    )
    for column in (id_col, source.title_col):
        if column not in raw_items.columns:
            raise fail(f"{path} has no column {column!r}; fix --items-id-col/--title-col")
    items = pd.DataFrame({"item_id": _ids(raw_items[id_col])})
    items["title"] = _text(raw_items[source.title_col])
    for name in raw_items.columns:
        if name not in (id_col, source.title_col):
            items[name] = _text(raw_items[name])
    return items


PARSERS: dict[str, Callable[[Path], tuple[pd.DataFrame, pd.DataFrame]]] = {
    "amazon-beauty": parse_amazon_beauty,
    "ml-100k": parse_ml_100k,
    "ml-dat": parse_ml_dat,
    "ml-csv": parse_ml_csv,
    "hm": parse_hm,
}


# --------------------------------------------------------------------------------------------
# interim
# --------------------------------------------------------------------------------------------


@dataclass
class CleanReport:
    """What cleaning removed, kept in the interim manifest and in stats.json."""

    duplicates_dropped: int = 0
    unknown_item_interactions_dropped: int = 0
    unknown_item_examples: list[Any] = field(default_factory=list)


def clean(
    interactions: pd.DataFrame, items: pd.DataFrame, strict: bool, items_file: str
) -> tuple[pd.DataFrame, pd.DataFrame, CleanReport]:
    """Drop exact duplicate rows and interactions whose item is not in the item table.

    Row order (the raw file order) is kept: ``--ties file`` orders same-time events by it, and
    ``--ties shuffle`` draws its seeded order over it, so both are reproducible.
    """
    duplicated_ids = items["item_id"].duplicated()
    if duplicated_ids.any():
        example = _plain(items.loc[duplicated_ids, "item_id"].iloc[0])
        raise fail(
            f"{items_file} lists item id {example} more than once "
            f"({int(duplicated_ids.sum())} repeated ids); each item must appear once"
        )
    report = CleanReport()
    duplicates = interactions.duplicated(keep="first")
    report.duplicates_dropped = int(duplicates.sum())
    if report.duplicates_dropped:
        logger.warning(f"dropped {report.duplicates_dropped:,} exact duplicate interaction rows")
        interactions = interactions[~duplicates.to_numpy()]
    unknown = ~interactions["item_id"].isin(items["item_id"]).to_numpy()
    if unknown.any():
        examples = pd.unique(interactions["item_id"].to_numpy()[unknown])[:5].tolist()
        report.unknown_item_interactions_dropped = int(unknown.sum())
        report.unknown_item_examples = [_plain(x) for x in examples]
        message = (
            f"{int(unknown.sum()):,} interactions refer to item ids missing from {items_file} "
            f"(e.g. {', '.join(map(str, report.unknown_item_examples))})"
        )
        if strict:
            raise fail(f"{message}; fix the files, or run without --strict to drop them")
        logger.warning(f"{message}; dropped them (--strict refuses instead)")
        interactions = interactions[~unknown]
    return interactions.reset_index(drop=True), items.reset_index(drop=True), report


def _plain(value: Any) -> Any:
    """A JSON-friendly copy of a numpy scalar."""
    return value.item() if isinstance(value, np.generic) else value


def _raw_provenance(files: list[Path], manifest: dict[str, Any] | None) -> dict[str, Any]:
    """Where the raw files came from and each one's bytes and md5 (from the download manifest
    when it still matches, which saves re-hashing big files)."""
    known = (manifest or {}).get("files", {})
    out = {}
    for path in files:
        entry = known.get(path.name)
        size = path.stat().st_size
        if entry is None or entry["bytes"] != size:
            entry = {"bytes": size, "md5": md5_of(path), "verified": False}
        out[path.name] = entry
    source = manifest["source"] if manifest else ", ".join(str(p) for p in files)
    return {"raw_source": source, "raw_files": out}


def interim(
    dataset: str | DatasetSpec,
    raw_root: Path | None = None,
    interim_root: Path | None = None,
    strict: bool = False,
    custom: CustomSource | None = None,
) -> Path:
    """Parse raw files into ``interim_root/<dataset>/`` (interactions, items, manifest)."""
    spec = get_spec(dataset)
    out = Path(interim_root or INTERIM_DATA_DIR) / spec.name
    if custom is not None and spec.parser != "custom":
        raise fail(
            f"--interactions and the other custom options need --dataset custom, not {spec.name}"
        )
    if spec.parser == "custom":
        if custom is None:
            raise fail(
                "custom needs its input files: pass --interactions FILE (and --items FILE, "
                "--user-col, --item-col, --time-col, ...); see 'python -m recsys.dataset main "
                "--help'"
            )
        interactions, items = parse_custom(custom)
        used = custom.raw_files()
        manifest = None
        items_file = str(custom.items or custom.interactions)
        timed = custom.format == "events"
    else:
        raw = Path(raw_root or RAW_DATA_DIR) / spec.name
        manifest = read_manifest(raw)
        if manifest is None:
            raise fail(
                f"{raw} has no verified raw data; run 'python -m recsys.dataset download "
                f"--dataset {spec.name}' (or 'make data DATASET={spec.name}') first"
            )
        interactions, items = PARSERS[spec.parser](raw)
        used = [raw / name for name in spec.required + spec.extras if (raw / name).is_file()]
        items_file = str(raw / spec.item_table)
        timed = spec.has_timestamps
    interactions, items, report = clean(interactions, items, strict, items_file)
    if interactions.empty:
        raise fail(f"{spec.name}: no interactions are left after cleaning; check the raw files")
    interactions["timestamp"] = interactions["timestamp"].astype(np.int64)
    interactions["rating"] = interactions["rating"].astype(np.float32)
    info = {
        "dataset": spec.name,
        "interactions": len(interactions),
        "items": len(items),
        "time": UNIX_TIME if timed else POSITION_TIME,
        **asdict(report),
        **_raw_provenance(used, manifest),
    }
    with atomic_dir(out) as staging:
        interactions[INTERACTION_COLUMNS].to_parquet(staging / INTERACTIONS_FILE, index=False)
        items.to_parquet(staging / ITEMS_FILE, index=False)
        (staging / INTERIM_MANIFEST).write_text(json.dumps(info, indent=2, default=str) + "\n")
    logger.info(f"{spec.name}: {len(interactions):,} interactions, {len(items):,} items -> {out}")
    return out


# --------------------------------------------------------------------------------------------
# main: filter, ids, order, split, stats
# --------------------------------------------------------------------------------------------

SPLITS = ("leave-one-out", "temporal")
TIES = ("shuffle", "file")


@dataclass(frozen=True)
class FilterSettings:
    """Minimum interactions per user and item; ``k_core`` repeats both until nothing changes."""

    min_user_interactions: int = 3
    min_item_interactions: int = 1
    k_core: int | None = None


@dataclass(frozen=True)
class SplitSettings:
    """Leave-one-out, or a global temporal split at cut-off times (or at event-count fractions).

    ``ties`` orders a user's events that share a timestamp, which decides which of them is the
    held-out last item: ``shuffle`` (seeded by ``ties_seed``) or ``file`` (raw file order).
    """

    kind: str = "leave-one-out"
    valid_start: str | None = None
    test_start: str | None = None
    valid_frac: float = 0.1
    test_frac: float = 0.1
    ties: str = "shuffle"
    ties_seed: int = 0


def filter_mask(
    user_codes: np.ndarray, item_codes: np.ndarray, settings: FilterSettings
) -> np.ndarray:
    """Which interactions survive the filters.

    Without ``k_core``: items below the item minimum go first, then users below the user
    minimum (one pass each). With ``k_core=k``: both minimums are raised to at least k and the two
    filters repeat until every kept user and item meets them.
    """
    min_user, min_item = settings.min_user_interactions, settings.min_item_interactions
    if settings.k_core:
        min_user, min_item = max(min_user, settings.k_core), max(min_item, settings.k_core)
    keep = np.ones(len(user_codes), dtype=bool)
    while True:
        before = int(keep.sum())
        item_counts = np.bincount(item_codes[keep], minlength=item_codes.max(initial=-1) + 1)
        keep &= item_counts[item_codes] >= min_item
        user_counts = np.bincount(user_codes[keep], minlength=user_codes.max(initial=-1) + 1)
        keep &= user_counts[user_codes] >= min_user
        if not settings.k_core or int(keep.sum()) == before:
            return keep


def _time_option(value: str, option: str) -> int:
    """A cut-off given as unix seconds or an ISO date/time (UTC when no zone is given)."""
    if re.fullmatch(r"-?\d+", value.strip()):
        return int(value)
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise fail(f"{option} {value!r} is neither unix seconds nor an ISO date like 2018-01-31")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return int(moment.timestamp())


def _iso(seconds: int) -> str:
    return datetime.fromtimestamp(int(seconds), tz=timezone.utc).isoformat()


def check_settings(filters: FilterSettings, split: SplitSettings) -> None:
    """Refuse option combinations that cannot produce a usable split, before any work."""
    if split.kind not in SPLITS:
        raise fail(f"unknown --split {split.kind!r}; choose leave-one-out or temporal")
    if split.ties not in TIES:
        raise fail(
            f"unknown --ties {split.ties!r}; choose shuffle (same-time events in a seeded random "
            "order) or file (in raw file order)"
        )
    if split.ties_seed < 0:
        raise fail(f"--ties-seed must be a non-negative integer, got {split.ties_seed}")
    if filters.min_user_interactions < 1 or filters.min_item_interactions < 1:
        raise fail("--min-user-interactions and --min-item-interactions must be at least 1")
    if filters.k_core is not None and filters.k_core < 1:
        raise fail(f"--k-core must be at least 1, got {filters.k_core}")
    min_user = max(filters.min_user_interactions, filters.k_core or 0)
    if split.kind == "leave-one-out" and min_user < 3:
        raise fail(
            "leave-one-out needs at least 3 interactions per user (train, valid, test); "
            f"use --min-user-interactions 3 or more, not {filters.min_user_interactions}"
        )
    if split.kind == "temporal":
        for name, value in (("--valid-frac", split.valid_frac), ("--test-frac", split.test_frac)):
            if not 0.0 < value < 1.0:
                raise fail(f"{name} must be between 0 and 1, got {value}")
        if split.valid_frac + split.test_frac >= 1.0:
            raise fail("--valid-frac plus --test-frac must leave some events for training")
        for name, value in (
            ("--valid-start", split.valid_start),
            ("--test-start", split.test_start),
        ):
            if value is not None:
                _time_option(value, name)


def temporal_cutoffs(timestamps: np.ndarray, split: SplitSettings) -> tuple[int, int]:
    """(valid_start, test_start): the given times, else the times at the requested fractions."""
    ordered = np.sort(timestamps)
    n = len(ordered)
    test_start = (
        _time_option(split.test_start, "--test-start")
        if split.test_start is not None
        else int(ordered[min(n - 1, int(n * (1.0 - split.test_frac)))])
    )
    valid_start = (
        _time_option(split.valid_start, "--valid-start")
        if split.valid_start is not None
        else int(ordered[min(n - 1, int(n * (1.0 - split.test_frac - split.valid_frac)))])
    )
    if valid_start > test_start:
        raise fail(
            f"the validation cut-off {_iso(valid_start)} is after the test cut-off "
            f"{_iso(test_start)}; give --valid-start before --test-start"
        )
    return valid_start, test_start


def assign_splits(
    user_idx: np.ndarray, timestamps: np.ndarray, split: SplitSettings
) -> tuple[np.ndarray, dict[str, Any]]:
    """Split codes for events sorted by user then time, and the settings actually used."""
    if split.kind == "leave-one-out":
        is_last = np.r_[user_idx[1:] != user_idx[:-1], True]
        is_second_last = np.r_[is_last[1:], False] & ~is_last
        codes = np.full(len(user_idx), TRAIN, dtype=np.int8)
        codes[is_second_last] = VALID
        codes[is_last] = TEST
        return codes, {"kind": split.kind}
    valid_start, test_start = temporal_cutoffs(timestamps, split)
    codes = np.where(
        timestamps >= test_start, TEST, np.where(timestamps >= valid_start, VALID, TRAIN)
    ).astype(np.int8)
    for code, name in ((TRAIN, "training"), (TEST, "test")):
        if not (codes == code).any():
            raise fail(
                f"the temporal cut-offs (valid {_iso(valid_start)}, test {_iso(test_start)}) "
                f"leave no {name} events; the data spans {_iso(timestamps.min())} to "
                f"{_iso(timestamps.max())}"
            )
    used = {
        "kind": split.kind,
        "valid_start": valid_start,
        "valid_start_iso": _iso(valid_start),
        "test_start": test_start,
        "test_start_iso": _iso(test_start),
        "valid_frac": None if split.valid_start is not None else split.valid_frac,
        "test_frac": None if split.test_start is not None else split.test_frac,
    }
    return codes, used


@dataclass
class Processed:
    """The processed tables and their statistics, before they are written."""

    events: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame
    stats: dict[str, Any]


def _length_stats(lengths: np.ndarray) -> dict[str, float]:
    """Sequence-length summary: what max_len choices would truncate."""
    percentiles = {f"p{q}": float(np.percentile(lengths, q)) for q in (5, 25, 50, 75, 90, 95, 99)}
    return {
        "min": int(lengths.min()),
        **percentiles,
        "max": int(lengths.max()),
        "mean": float(lengths.mean()),
    }


def _split_counts(user_idx: np.ndarray, split_codes: np.ndarray) -> dict[str, dict[str, int]]:
    names = (("train", TRAIN), ("valid", VALID), ("test", TEST))
    return {
        "events": {name: int((split_codes == code).sum()) for name, code in names},
        "users": {
            name: int(np.unique(user_idx[split_codes == code]).size) for name, code in names
        },
    }


def event_order(
    user_idx: np.ndarray, timestamps: np.ndarray, ties: str = "shuffle", seed: int = 0
) -> np.ndarray:
    """Row order by user, then time; a user's same-time events in ``ties`` order.

    ``file`` keeps the given row order among them (the sort is stable). ``shuffle`` breaks them
    by a seeded random key per row: only events that share user and timestamp change places.
    """
    if ties == "file":
        return np.lexsort((timestamps, user_idx))
    key = np.random.default_rng(seed).permutation(len(user_idx))
    return np.lexsort((key, timestamps, user_idx))


def tie_counts(
    user_idx: np.ndarray, timestamps: np.ndarray, split_codes: np.ndarray
) -> dict[str, int]:
    """How many evaluation targets share their timestamp with the event before them.

    For such a user the order of the tied pair, not time, decides which item is held out. Rows
    are sorted by user then time; a split's target is its first event of each user.
    """
    same_user = np.r_[False, user_idx[1:] == user_idx[:-1]]
    tied_prev = same_user & np.r_[False, timestamps[1:] == timestamps[:-1]]
    in_group = tied_prev | np.r_[tied_prev[1:], False]

    def tied_targets(code: int) -> int:
        first = (split_codes == code) & ~(same_user & np.r_[False, split_codes[:-1] == code])
        return int((first & tied_prev).sum())

    return {
        "users_test_target_tied": tied_targets(TEST),
        "users_valid_target_tied": tied_targets(VALID),
        "events_in_tied_groups": int(in_group.sum()),
    }


def build_processed(
    interactions: pd.DataFrame,
    items: pd.DataFrame,
    filters: FilterSettings = FilterSettings(),
    split: SplitSettings = SplitSettings(),
) -> Processed:
    """Filter, give contiguous ids, order each user's events by time, split, and count.

    ``interactions`` must be in raw file order: ``split.ties`` orders same-time events from it
    (see :func:`event_order`). Users and items are numbered in order of their original ids;
    items without kept interactions follow as cold items (n_items+1..n_catalogue).
    """
    check_settings(filters, split)
    user_codes, _ = pd.factorize(interactions["user_id"], sort=False)
    item_codes, _ = pd.factorize(interactions["item_id"], sort=False)
    keep = filter_mask(user_codes, item_codes, filters)
    kept = interactions[keep]
    if kept.empty:
        raise fail(
            "filtering left no interactions; lower --min-user-interactions, "
            "--min-item-interactions or --k-core"
        )
    user_local, user_ids = pd.factorize(kept["user_id"], sort=True)
    item_local, item_ids = pd.factorize(kept["item_id"], sort=True)
    n_users, n_items = len(user_ids), len(item_ids)
    cold = items.loc[~items["item_id"].isin(item_ids), "item_id"].sort_values()
    catalogue = pd.Index(np.concatenate([np.asarray(item_ids), cold.to_numpy()]))

    user_idx = (user_local + 1).astype(np.int32)
    item_idx = (item_local + 1).astype(np.int32)
    timestamps = kept["timestamp"].to_numpy(np.int64)
    order = event_order(user_idx, timestamps, split.ties, split.ties_seed)
    user_idx, item_idx, timestamps = user_idx[order], item_idx[order], timestamps[order]
    split_codes, split_used = assign_splits(user_idx, timestamps, split)
    events = pd.DataFrame(
        {"user_idx": user_idx, "item_idx": item_idx, "timestamp": timestamps, "split": split_codes}
    )

    item_table = items.set_index("item_id").loc[catalogue].reset_index()
    item_table.insert(0, "item_idx", np.arange(1, len(catalogue) + 1, dtype=np.int32))
    counts = np.bincount(item_idx, minlength=len(catalogue) + 1)[1:]
    item_table["n_interactions"] = counts.astype(np.int64)
    users = pd.DataFrame(
        {"user_idx": np.arange(1, n_users + 1, dtype=np.int32), "user_id": np.asarray(user_ids)}
    )

    stats = {
        "n_users": n_users,
        "n_items": n_items,
        "n_catalogue": len(catalogue),
        "n_cold_items": len(catalogue) - n_items,
        "n_interactions": len(events),
        "density": len(events) / (n_users * n_items),
        "sequence_length": _length_stats(np.bincount(user_idx, minlength=n_users + 1)[1:]),
        "time_range": {"first": _iso(timestamps.min()), "last": _iso(timestamps.max())},
        "split": {**split_used, **_split_counts(user_idx, split_codes)},
        "ties": {
            "policy": split.ties,
            "seed": split.ties_seed if split.ties == "shuffle" else None,
            **tie_counts(user_idx, timestamps, split_codes),
        },
        "filter": {
            **asdict(filters),
            "order": "k-core until stable" if filters.k_core else "items, then users",
            "interactions_before": len(interactions),
            "interactions_removed": int(len(interactions) - len(events)),
            "users_removed": int(user_codes.max(initial=-1) + 1 - n_users),
            "items_removed": int(item_codes.max(initial=-1) + 1 - n_items),
        },
        "id_order": "users and items numbered by ascending original id; 0 is padding",
    }
    return Processed(events=events, items=item_table, users=users, stats=stats)


def process(
    dataset: str | DatasetSpec,
    interim_root: Path | None = None,
    processed_root: Path | None = None,
    filters: FilterSettings = FilterSettings(),
    split: SplitSettings = SplitSettings(),
    strict: bool = False,
) -> Path:
    """Build ``processed_root/<dataset>/`` from the interim files; returns that folder."""
    spec = get_spec(dataset)
    check_settings(filters, split)
    source = Path(interim_root or INTERIM_DATA_DIR) / spec.name
    missing = [
        name
        for name in (INTERACTIONS_FILE, ITEMS_FILE, INTERIM_MANIFEST)
        if not (source / name).is_file()
    ]
    if missing:
        fix = (
            "pass your files: 'python -m recsys.dataset main --dataset custom --interactions "
            "FILE [--items FILE] --user-col ...'"
            if spec.parser == "custom"
            else f"run 'python -m recsys.dataset interim --dataset {spec.name}' "
            f"(or 'make data DATASET={spec.name}') first"
        )
        raise fail(f"{source} lacks {', '.join(missing)}; {fix}")
    info = read_json(source / INTERIM_MANIFEST)
    if strict and info.get("unknown_item_interactions_dropped"):
        raise fail(
            f"interim dropped {info['unknown_item_interactions_dropped']:,} interactions whose "
            f"item is not in the item table (e.g. {info['unknown_item_examples']}); --strict "
            "refuses that: fix the raw files, or run without --strict"
        )
    try:
        interactions = pd.read_parquet(source / INTERACTIONS_FILE)
        items = pd.read_parquet(source / ITEMS_FILE)
    except (pa.ArrowInvalid, OSError) as err:
        raise fail(
            f"cannot read the interim files in {source} ({_arrow_message(err)}); "
            f"run 'python -m recsys.dataset interim --dataset {spec.name}' again"
        )
    time = info.get("time", UNIX_TIME)
    if time == POSITION_TIME and split.kind == "temporal":
        raise fail(
            f"{spec.name} has no timestamps (each user's line is in time order, nothing more), "
            "so --split temporal has no common clock to cut at; use --split leave-one-out"
        )
    result = build_processed(interactions, items, filters, split)
    stats = {
        "dataset": spec.name,
        **result.stats,
        "time": time,
        "interim": {k: info.get(k) for k in asdict(CleanReport())},
        "raw_source": info.get("raw_source"),
        "raw_files": info.get("raw_files", {}),
    }
    if time == POSITION_TIME:
        stats["time_range"] = None  # positions 1, 2, ... are not dates
    out = ensure_dir(processed_folder(spec.name, processed_root))
    write_together(
        out,
        {EVENTS_FILE: result.events, ITEMS_FILE: result.items, USERS_FILE: result.users},
        stats,
    )
    ties = stats["ties"]
    logger.info(
        f"{spec.name}: {stats['n_users']:,} users, {stats['n_items']:,} items "
        f"({stats['n_catalogue']:,} in the catalogue), {stats['n_interactions']:,} events, "
        f"split {split.kind}; {ties['users_test_target_tied']:,} test and "
        f"{ties['users_valid_target_tied']:,} valid targets share their timestamp with the "
        f"event before (--ties {split.ties}) -> {out}"
    )
    return out


def write_together(folder: Path, tables: dict[str, pd.DataFrame], stats: dict[str, Any]) -> None:
    """Write the tables and stats.json so that all are renamed into place only if all succeed.

    The folder itself is not swapped: other stages keep files there (features/). stats.json is
    renamed last, so a reader that finds it also finds the tables it describes.
    """
    with contextlib.ExitStack() as stack:
        stats_tmp = stack.enter_context(atomic_path(folder / STATS_FILE))
        for name, table in tables.items():
            table.to_parquet(stack.enter_context(atomic_path(folder / name)), index=False)
        stats_tmp.write_text(json.dumps(stats, indent=2, default=_plain) + "\n")


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True)

DatasetOpt = Annotated[
    str,
    typer.Option(
        "--dataset", "-d", help=f"One of {', '.join(DATASETS)}.", show_default=DEFAULT_DATASET
    ),
]
RawDirOpt = Annotated[Optional[Path], typer.Option(help="Root of raw data (default data/raw).")]
InterimDirOpt = Annotated[
    Optional[Path], typer.Option(help="Root of interim data (default data/interim).")
]
StrictOpt = Annotated[
    bool, typer.Option(help="Fail instead of dropping interactions with unknown item ids.")
]
InteractionsOpt = Annotated[
    Optional[Path], typer.Option(help="custom: interactions file (.csv or .parquet).")
]
ItemsOpt = Annotated[
    Optional[Path], typer.Option(help="custom: item table (.csv or .parquet); optional.")
]
UserColOpt = Annotated[str, typer.Option(help="custom: user id column.")]
ItemColOpt = Annotated[str, typer.Option(help="custom: item id column of the interactions.")]
TimeColOpt = Annotated[str, typer.Option(help="custom: time column (unix seconds or dates).")]
RatingColOpt = Annotated[Optional[str], typer.Option(help="custom: rating column, if any.")]
ItemsIdColOpt = Annotated[
    Optional[str],
    typer.Option(help="custom: item id column of the item table (default: --item-col)."),
]
TitleColOpt = Annotated[str, typer.Option(help="custom: title column of the item table.")]
TextColsOpt = Annotated[
    Optional[str],
    typer.Option(help="custom: comma-separated text columns to keep (default: all others)."),
]
DelimiterOpt = Annotated[str, typer.Option(help="custom: CSV delimiter.")]
FormatOpt = Annotated[
    str,
    typer.Option(
        "--format",
        help="custom: events (one interaction per row, the columns above) or sequences (one "
        "line per user: 'user item item ...' in time order, integer ids, no timestamps).",
    ),
]


def _custom_source(  # one argument per CLI option: the mapping of a custom dataset
    interactions: Path | None,
    items: Path | None,
    user_col: str,
    item_col: str,
    time_col: str,
    rating_col: str | None,
    items_id_col: str | None,
    title_col: str,
    text_cols: str | None,
    delimiter: str,
    format_: str,
) -> CustomSource | None:
    if interactions is None:
        return None
    return CustomSource(
        interactions=interactions,
        items=items,
        user_col=user_col,
        item_col=item_col,
        time_col=time_col,
        rating_col=rating_col,
        items_id_col=items_id_col,
        title_col=title_col,
        text_cols=(
            tuple(c.strip() for c in text_cols.split(",") if c.strip())
            if text_cols is not None
            else None
        ),
        delimiter=delimiter,
        format=format_,
    )


@app.command("download")
def download_command(
    dataset: DatasetOpt = DEFAULT_DATASET,
    mirror: Annotated[
        Optional[Path],
        typer.Option(
            help=f"Local folder with <dataset>/ files or archives [env {MIRROR_ENV}]; "
            "nothing is fetched from the network when it is set."
        ),
    ] = None,
    force: Annotated[bool, typer.Option(help="Check and install again even if present.")] = False,
    raw_dir: RawDirOpt = None,
) -> None:
    """Put the original files in data/raw/<dataset>/ (verified by size and md5)."""
    download(dataset, raw_root=raw_dir, mirror=mirror, force=force)


@app.command("interim")
def interim_command(
    dataset: DatasetOpt = DEFAULT_DATASET,
    strict: StrictOpt = False,
    raw_dir: RawDirOpt = None,
    interim_dir: InterimDirOpt = None,
) -> None:
    """Parse raw files into data/interim/<dataset>/ interactions.parquet and items.parquet."""
    if get_spec(dataset).parser == "custom":
        logger.info("custom: 'main --dataset custom --interactions FILE ...' parses your files")
        return
    interim(dataset, raw_root=raw_dir, interim_root=interim_dir, strict=strict)


@app.command("main")
def main_command(
    dataset: DatasetOpt = DEFAULT_DATASET,
    split: Annotated[str, typer.Option(help="leave-one-out or temporal.")] = "leave-one-out",
    min_user_interactions: Annotated[int, typer.Option(help="Drop users with fewer.")] = 3,
    min_item_interactions: Annotated[int, typer.Option(help="Drop items with fewer.")] = 1,
    k_core: Annotated[
        Optional[int], typer.Option(help="Repeat both filters at >= K until stable.")
    ] = None,
    valid_start: Annotated[
        Optional[str], typer.Option(help="temporal: validation from this time (unix s or ISO).")
    ] = None,
    test_start: Annotated[
        Optional[str], typer.Option(help="temporal: test from this time (unix s or ISO).")
    ] = None,
    valid_frac: Annotated[
        float, typer.Option(help="temporal, no --valid-start: share of events for validation.")
    ] = 0.1,
    test_frac: Annotated[
        float, typer.Option(help="temporal, no --test-start: share of latest events for test.")
    ] = 0.1,
    ties: Annotated[
        str,
        typer.Option(
            help="Order of a user's events with the same timestamp: shuffle (seeded random) or "
            "file (raw file order, which often follows the item id)."
        ),
    ] = "shuffle",
    ties_seed: Annotated[int, typer.Option(help="Seed of --ties shuffle.")] = 0,
    strict: StrictOpt = False,
    raw_dir: RawDirOpt = None,
    interim_dir: InterimDirOpt = None,
    processed_dir: Annotated[
        Optional[Path], typer.Option(help="Root of processed data (default data/processed).")
    ] = None,
    interactions: InteractionsOpt = None,
    items: ItemsOpt = None,
    user_col: UserColOpt = "user_id",
    item_col: ItemColOpt = "item_id",
    time_col: TimeColOpt = "timestamp",
    rating_col: RatingColOpt = None,
    items_id_col: ItemsIdColOpt = None,
    title_col: TitleColOpt = "title",
    text_cols: TextColsOpt = None,
    delimiter: DelimiterOpt = ",",
    format_: FormatOpt = "events",
) -> None:
    """Filter, index and split into data/processed/<dataset>/ (events, items, users, stats)."""
    filters = FilterSettings(min_user_interactions, min_item_interactions, k_core)
    split_settings = SplitSettings(
        split, valid_start, test_start, valid_frac, test_frac, ties, ties_seed
    )
    check_settings(filters, split_settings)
    custom = _custom_source(
        interactions,
        items,
        user_col,
        item_col,
        time_col,
        rating_col,
        items_id_col,
        title_col,
        text_cols,
        delimiter,
        format_,
    )
    if custom is not None:
        interim(dataset, raw_root=raw_dir, interim_root=interim_dir, strict=strict, custom=custom)
    process(dataset, interim_dir, processed_dir, filters, split_settings, strict=strict)


if __name__ == "__main__":
    run(app)

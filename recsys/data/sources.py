"""Where a dataset's original files come from: the registry of datasets, and ``download``.

``download`` puts a dataset's original files in ``data/raw/<dataset>/``, from the official URL or
from a local mirror (``--mirror DIR`` / ``RECSYS_DATA_MIRROR``), checking archive size and md5
and each file's md5 where the original is known. A manifest of what was installed (with md5s)
makes a second run a no-op and gives later stages the provenance of every raw file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from loguru import logger
from tqdm import tqdm

from recsys.cli import fail
from recsys.config import RAW_DATA_DIR
from recsys.io import atomic_dir, atomic_path

MANIFEST_FILE = ".recsys-manifest.json"
MIRROR_ENV = "RECSYS_DATA_MIRROR"
HTTP_TIMEOUT_S = 60
HASH_BLOCK = 8 << 20
GROUPLENS = "https://files.grouplens.org/datasets/movielens/{}.zip"
HM_URL = "https://www.kaggle.com/competitions/h-and-m-personalized-fashion-recommendations/data"


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
        logger.info(
            "custom: nothing to download; 'process --interactions FILE ...' reads your files"
        )
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

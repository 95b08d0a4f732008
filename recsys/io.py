"""Atomic writes: every output appears whole or not at all, even if the process is killed."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from recsys.cli import fail


def ensure_dir(path: Path) -> Path:
    """Create ``path`` (and parents), turning permission problems into a user error."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise fail(f"cannot create output folder {path}: {err.strerror}; choose a writable path")
    if not os.access(path, os.W_OK):
        raise fail(f"output folder {path} is not writable; fix its permissions or choose another")
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``target``; rename it onto ``target`` only on success."""
    target = Path(target)
    ensure_dir(target.parent)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp makes 0600 files; give the output the permissions a plain open() would.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; swap it in for ``target`` only on success."""
    target = Path(target)
    ensure_dir(target.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(obj: Any, target: Path) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
    return Path(target)


def write_text(text: str, target: Path) -> Path:
    """Write ``text`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text)
    return Path(target)


def write_parquet(df: Any, target: Path) -> Path:
    """Write a pandas DataFrame to parquet atomically (no index)."""
    with atomic_path(target) as tmp:
        df.to_parquet(tmp, index=False)
    return Path(target)


def read_json(path: Path) -> Any:
    """Read JSON, turning a missing or corrupt file into a user error."""
    path = Path(path)
    if not path.exists():
        raise fail(f"{path} does not exist")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise fail(
            f"{path} is not valid JSON ({err}); delete it and re-run the stage that writes it"
        )


def read_yaml(path: Path, what_to_do: str = "fix it or delete it") -> Any:
    """Read YAML (None for an empty file); a missing or corrupt file is a user error.

    A corrupt file must never read as "no value": callers would act on the missing value (a run
    folder read as "config changed" deletes its checkpoints).
    """
    path = Path(path)
    if not path.is_file():
        raise fail(f"{path} does not exist")
    try:
        return yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise fail(f"{path} is not valid YAML ({first}); {what_to_do}")


def read_array_and_manifest(
    npy: Path, manifest_path: Path, keys: tuple[str, ...]
) -> tuple[Any, dict[str, Any]]:
    """A ``.npy`` array and the JSON manifest beside it that must hold ``keys``; a missing file,
    a manifest without them or an unreadable array is a user error saying which."""
    import numpy as np

    for path in (npy, manifest_path):
        if not Path(path).exists():
            raise fail(f"{path} does not exist")
    manifest = read_json(manifest_path)
    lacking = [k for k in keys if not isinstance(manifest, dict) or k not in manifest]
    if lacking:
        raise fail(f"{manifest_path} lacks {', '.join(lacking)}")
    try:
        array = np.load(npy, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise fail(f"{npy} is corrupt ({err})")
    return array, manifest


def write_array_and_manifest(array: Any, npy: Path, manifest: dict, manifest_path: Path) -> None:
    """Write a ``.npy`` array, then its manifest: the manifest is the commit mark, removed first,
    so a kill mid-write never pairs a new array with an old manifest."""
    import numpy as np

    Path(manifest_path).unlink(missing_ok=True)
    with atomic_path(npy) as tmp, open(tmp, "wb") as fh:
        np.save(fh, array)
    write_json(manifest, manifest_path)

"""Project paths and logging, shared by every stage.

Each path can be moved with an environment variable (``RECSYS_DATA_DIR``,
``RECSYS_MODELS_DIR``, ...) so tests and users can point a stage at another tree without
touching code.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from loguru import logger


def _env_path(name: str, default: Path) -> Path:
    value = os.environ.get(name)
    return Path(value).expanduser().resolve() if value else default


PROJ_ROOT = _env_path("RECSYS_PROJ_ROOT", Path(__file__).resolve().parents[1])
DATA_DIR = _env_path("RECSYS_DATA_DIR", PROJ_ROOT / "data")
RAW_DATA_DIR = _env_path("RECSYS_RAW_DATA_DIR", DATA_DIR / "raw")
INTERIM_DATA_DIR = _env_path("RECSYS_INTERIM_DATA_DIR", DATA_DIR / "interim")
PROCESSED_DATA_DIR = _env_path("RECSYS_PROCESSED_DATA_DIR", DATA_DIR / "processed")
EXTERNAL_DATA_DIR = _env_path("RECSYS_EXTERNAL_DATA_DIR", DATA_DIR / "external")
MODELS_DIR = _env_path("RECSYS_MODELS_DIR", PROJ_ROOT / "models")
REPORTS_DIR = _env_path("RECSYS_REPORTS_DIR", PROJ_ROOT / "reports")
FIGURES_DIR = _env_path("RECSYS_FIGURES_DIR", REPORTS_DIR / "figures")
METRICS_DIR = _env_path("RECSYS_METRICS_DIR", REPORTS_DIR / "metrics")
TUNING_DIR = _env_path("RECSYS_TUNING_DIR", REPORTS_DIR / "tuning")
BENCH_DIR = _env_path("RECSYS_BENCH_DIR", REPORTS_DIR / "bench")
CONFIGS_DIR = _env_path("RECSYS_CONFIGS_DIR", PROJ_ROOT / "configs")
DOCS_DIR = _env_path("RECSYS_DOCS_DIR", PROJ_ROOT / "docs")


def shown_path(path: Path) -> str:
    """A path as reports and pages show it: relative to the project when inside it."""
    path = Path(path).resolve()
    return str(path.relative_to(PROJ_ROOT)) if path.is_relative_to(PROJ_ROOT) else str(path)


#: Local folder holding already-downloaded datasets (archives or extracted folders).
DATA_MIRROR = os.environ.get("RECSYS_DATA_MIRROR") or None

DEFAULT_DATASET = os.environ.get("RECSYS_DATASET", "ml-1m")

#: Bytes of float32 scores one pass may hold, shared by evaluation's scoring batches and the item
#: index's query chunks: larger batches shrink to fit (see :mod:`recsys.modeling.scoring`).
SCORE_BUDGET = 256 * 2**20

# One log style for every stage: loguru through tqdm.write so progress bars stay intact.
try:
    from tqdm import tqdm

    logger.remove()
    logger.add(
        lambda msg: tqdm.write(msg, end="", file=sys.stderr),
        colorize=sys.stderr.isatty(),
        level=os.environ.get("RECSYS_LOG_LEVEL", "INFO"),
        format="<green>{time:HH:mm:ss}</green> | <level>{level: <7}</level> | {message}",
    )
except ModuleNotFoundError:  # pragma: no cover - tqdm is a hard dependency
    pass

"""The command-line options that several stages share, declared once so that every stage spells,
defaults and explains them alike.

Typer takes the default from the parameter, so a stage writes ``dataset: DatasetOpt =
DEFAULT_DATASET`` and ``processed_dir: ProcessedDirOpt = PROCESSED_DATA_DIR``;
``tests/test_cli_options.py`` checks that every stage does. Help texts are sentences: upper-case
first letter, a full stop at the end. A stage whose work reads processed data checks it with
:func:`recsys.processed.require_processed`, so a dataset that ``make data`` has not made is the
same one-line error everywhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from recsys.data.sources import DATASETS

_DATASET_NAMES = f"Dataset name: one of {', '.join(DATASETS)}."
_METRICS_HELP = "Folder of the evaluation reports (<dataset>.json)."

DatasetOpt = Annotated[
    str, typer.Option("--dataset", "-d", help=f"{_DATASET_NAMES} RECSYS_DATASET sets the default.")
]
#: The report's: several datasets in one site.
DatasetsOpt = Annotated[
    Optional[list[str]],
    typer.Option(
        "--dataset",
        "-d",
        help=f"{_DATASET_NAMES} Repeat it for several (default: every dataset with a metrics "
        "report, else the one RECSYS_DATASET names or ml-1m).",
    ),
]
RawDirOpt = Annotated[
    Path, typer.Option("--raw-dir", help="Folder of the original files, one folder per dataset.")
]
InterimDirOpt = Annotated[
    Path, typer.Option("--interim-dir", help="Folder of the interim tables, one per dataset.")
]
ProcessedDirOpt = Annotated[
    Path, typer.Option("--processed-dir", help="Folder of the processed datasets.")
]
ModelsDirOpt = Annotated[
    Path, typer.Option("--models-dir", help="Folder of the trained runs, one folder per dataset.")
]
MetricsDirOpt = Annotated[Path, typer.Option("--metrics-dir", help=_METRICS_HELP)]
#: Evaluation writes the reports there; ``--output-dir`` is its former name, still accepted.
MetricsOutDirOpt = Annotated[
    Path, typer.Option("--metrics-dir", "--output-dir", help=_METRICS_HELP)
]
FiguresDirOpt = Annotated[
    Path, typer.Option("--figures-dir", help="Folder of the figures, one folder per dataset.")
]
DeviceOpt = Annotated[
    str,
    typer.Option(
        "--device", help="Where to compute: auto (a GPU when there is one), cpu, cuda or cuda:N."
    ),
]

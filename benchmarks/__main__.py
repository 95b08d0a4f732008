"""``python -m benchmarks [NAME]``: run one benchmark module (``bench_NAME``), ``all`` of them,
or, with no name, the quick set: every benchmark that ends in minutes, and a line naming the
hour-long ones it skipped."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path

#: Benchmarks that take an hour or more on 2 cores; they run only when named (or with ``all``).
HOUR_LONG = {
    "ann": "faiss builds over 1,000,000 items",
    "losses": "two architectures trained with every loss and a few learning rates per dataset",
    "scale": "every stage on H&M at full size",
    "tiger": "TIGER and sasrec-ce trained with three seeds per dataset",
    "train": "every shipped config trained with three seeds",
}


def benchmark_names() -> list[str]:
    return sorted(
        m.name.removeprefix("bench_")
        for m in pkgutil.iter_modules([str(Path(__file__).parent)])
        if m.name.startswith("bench_")
    )


def select(which: str | None, names: list[str]) -> tuple[list[str], list[str]]:
    """The benchmarks to run for ``which`` (a name, ``all``, or None: the quick set), and those
    the quick set leaves out."""
    if which is None:
        return [n for n in names if n not in HOUR_LONG], [n for n in names if n in HOUR_LONG]
    if which == "all":
        return names, []
    if which not in names:
        raise SystemExit(f"error: unknown benchmark {which!r}; choose one of {names} or all")
    return [which], []


def main(argv: list[str]) -> None:
    selected, skipped = select(argv[0] if argv else None, benchmark_names())
    if skipped:
        shown = "; ".join(f"{name} ({HOUR_LONG[name]})" for name in skipped)
        print(f"== quick set: skipping the hour-long {shown}; run one with make bench BENCH=NAME")
    for name in selected:
        print(f"== benchmark {name}", flush=True)
        importlib.import_module(f"benchmarks.bench_{name}").main()


if __name__ == "__main__":
    main(sys.argv[1:])

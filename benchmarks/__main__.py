"""``python -m benchmarks NAME``: run one benchmark module (``bench_NAME``) or all of them."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def main(argv: list[str]) -> None:
    which = argv[0] if argv else "all"
    names = sorted(
        m.name.removeprefix("bench_")
        for m in pkgutil.iter_modules([str(Path(__file__).parent)])
        if m.name.startswith("bench_")
    )
    selected = names if which == "all" else [which]
    unknown = [n for n in selected if n not in names]
    if unknown:
        raise SystemExit(f"error: unknown benchmark {unknown[0]!r}; choose one of {names} or all")
    for name in selected:
        print(f"== benchmark {name}", flush=True)
        importlib.import_module(f"benchmarks.bench_{name}").main()


if __name__ == "__main__":
    main(sys.argv[1:])

"""The search space of a tuning study: ``configs/search/<config>.yaml`` read into one
:class:`ParamSpec` per searched config key, each bound and choice checked against the base config
before any trial runs, so a bad space fails at once instead of in a trial."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna

from recsys.cli import RecsysError, fail
from recsys.io import read_yaml
from recsys.modeling.configs import DEFAULTS, check_type, resolve_config

SPEC_FIELDS = ("low", "high", "log", "step", "choices")


@dataclass(frozen=True)
class ParamSpec:
    """One searched config key: a range ``low..high`` (``log`` or ``step``) or ``choices``."""

    key: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] | None = None

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(self.key, list(self.choices))
        if _kind(self.key) == "int":
            step = int(self.step or 1)
            return trial.suggest_int(self.key, self.low, self.high, step=step, log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def to_dict(self) -> dict[str, Any]:
        """The spec as written in the search-space file (for the report)."""
        spec = {k: v for k, v in asdict(self).items() if k != "key" and v is not None}
        if not self.log:
            del spec["log"]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in spec.items()}


def _kind(key: str) -> str:
    """``int`` or ``float`` for numeric config keys, ``choice`` for the rest (text, bool)."""
    default = DEFAULTS[key]
    if isinstance(default, bool) or not isinstance(default, (int, float)):
        return "choice"
    return "int" if isinstance(default, int) else "float"


def load_space(
    path: Path,
    config: str,
    dataset: str,
    fixed: dict[str, Any] | None = None,
    configs_dir: Path | None = None,
) -> list[ParamSpec]:
    """The search space of ``path``, every value checked against the base ``config``.

    Each bound and choice must resolve as a config on its own (with the ``fixed`` overrides);
    combinations are checked when a trial samples them.
    """
    path = Path(path)
    if not path.is_file():
        raise fail(
            f"search space {path} does not exist; write one (see configs/search/sasrec-ce.yaml) "
            "or pass --space FILE"
        )
    loaded = read_yaml(path, "fix it")
    if not isinstance(loaded, dict) or not loaded:
        raise fail(
            f"search space {path} must map config keys to ranges or choices, e.g. "
            "'lr: {low: 3.0e-4, high: 1.0e-2, log: true}'"
        )
    fixed = dict(fixed or {})
    return [
        _param(path, key, spec, config, dataset, fixed, configs_dir)
        for key, spec in loaded.items()
    ]


def _param(
    path: Path,
    key: str,
    spec: Any,
    config: str,
    dataset: str,
    fixed: dict[str, Any],
    configs_dir: Path | None,
) -> ParamSpec:
    where = f"search space {path}, key {key!r}"
    if key not in DEFAULTS:
        raise fail(f"{where}: not a config key; use one of {', '.join(DEFAULTS)}")
    if key in fixed:
        raise fail(f"{where}: also fixed by --set or --max-epochs; search it or fix it, not both")
    if not isinstance(spec, dict):
        raise fail(
            f"{where}: expected a mapping such as {{low: 1, high: 3}} or {{choices: [a, b]}}, "
            f"got {spec!r}"
        )
    unknown = [field for field in spec if field not in SPEC_FIELDS]
    if unknown:
        raise fail(
            f"{where}: unknown field {', '.join(map(repr, unknown))}; "
            f"a spec has low and high (with log or step) or choices"
        )

    def allowed(value: Any) -> None:
        try:
            resolve_config(config, dataset, {**fixed, key: value}, configs_dir)
        except RecsysError as err:
            raise fail(f"{where}: the value {value!r} is not allowed ({err}); change it") from None

    if "choices" in spec:
        others = [field for field in spec if field != "choices"]
        if others:
            raise fail(f"{where}: choices cannot have {', '.join(others)}; keep one of the two")
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise fail(f"{where}: choices must be a non-empty list, got {choices!r}")
        for value in choices:
            check_type(key, value, f"{where}, choices")
        if len({json.dumps(c) for c in choices}) < len(choices):
            raise fail(f"{where}: choices {choices!r} repeat a value; list each value once")
        for value in choices:
            allowed(value)
        return ParamSpec(key, choices=tuple(choices))
    if _kind(key) == "choice":
        raise fail(
            f"{where}: {key} is not a number (default {DEFAULTS[key]!r}); "
            "list its values with choices: [...]"
        )
    if "low" not in spec or "high" not in spec:
        raise fail(f"{where}: a range needs both low and high (or use choices: [...])")
    low, high = (check_type(key, spec[f], f"{where}, {f}") for f in ("low", "high"))
    step = None if spec.get("step") is None else check_type(key, spec["step"], f"{where}, step")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise fail(f"{where}: log must be true or false, got {log!r}")
    if low >= high:
        raise fail(
            f"{where}: empty range, low {low!r} >= high {high!r}; make low smaller than high "
            "(fix a single value with --set instead)"
        )
    if log and low <= 0:
        raise fail(f"{where}: log: true needs low > 0, got {low!r}")
    if step is not None and (log or step <= 0):
        raise fail(f"{where}: step must be > 0 and cannot be combined with log, got {step!r}")
    allowed(low)
    allowed(high)
    return ParamSpec(key, low, high, log, step)


def file_hash(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()

"""The search space of `sft sweep`: a YAML mapping of recipe keys (dotted, as in `key=value` overrides) to what
Optuna draws them from.

    optim.lr: {log: [1e-5, 1e-2]}          log-uniform float
    optim.weight_decay: {uniform: [0, 0.1]}
    trainer.epochs: {int: [2, 6]}          integer (`step: 2` and `log: true` as Optuna takes them)
    strategy.name: [linear-probe, two-stage, full]   one of these

Every key is checked when the space is read: its distribution, and the recipe validated with its bounds and each of
its choices, so a misspelt key or a value the task refuses stops the sweep before its first trial.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from sft.errors import UserError

KINDS = ("log", "uniform", "int")
FORM = ("`{log: [low, high]}`, `{uniform: [low, high]}`, `{int: [low, high]}` (with `step:` or `log: true`) or a "
        "list of choices")


@dataclass(frozen=True)
class Dimension:
    key: str
    kind: str  # log, uniform, int or choice
    low: float | int | None = None
    high: float | int | None = None
    step: int | None = None
    log: bool = False
    choices: tuple = ()

    def suggest(self, trial):
        if self.kind == "choice":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.key, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, log=self.kind == "log")

    def values(self) -> list:
        """The values a recipe is checked with: the bounds, or every choice."""
        return list(self.choices) if self.kind == "choice" else [self.low, self.high]


def read_space(path: str | Path) -> list[Dimension]:
    """The dimensions of the space file at `path`, each checked for its form (not yet against a recipe)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: search space file not found (a YAML mapping of recipe keys to distributions)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict) or not raw:
        raise UserError(f"{path}: expected a mapping of recipe keys to distributions, e.g. "
                        f"`optim.lr: {{log: [1e-5, 1e-2]}}`")
    return [_dimension(path, str(key), value) for key, value in raw.items()]


def _dimension(path: Path, key: str, value) -> Dimension:
    where = f"{path}: {key}"
    if key in ("task", "run_dir", "seed") or key.startswith("data.train") or key.startswith("data.test"):
        raise UserError(f"{where}: is not searched (the task, the run folder, the seed and the data stay fixed)")
    if isinstance(value, list):
        if len(value) < 2 or len({json.dumps(v, sort_keys=True) for v in value}) != len(value):
            raise UserError(f"{where}: a list of choices needs two or more different values, got {value}")
        if not all(v is None or isinstance(v, (bool, int, float, str)) for v in value):
            raise UserError(f"{where}: choices must be numbers, strings, booleans or null, got {value}")
        return Dimension(key, "choice", choices=tuple(value))
    kinds = [k for k in KINDS if isinstance(value, dict) and k in value]
    if len(kinds) != 1:
        raise UserError(f"{where}: expected {FORM}, got {value!r}")
    kind = kinds[0]
    extra = set(value) - {kind, "step", "log"} if kind == "int" else set(value) - {kind}
    if extra:
        raise UserError(f"{where}: unknown setting(s) {sorted(extra)}; expected {FORM}")
    bounds = [_number(b) for b in value[kind]] if isinstance(value[kind], list) else value[kind]
    numbers = (int,) if kind == "int" else (int, float)
    if (not isinstance(bounds, list) or len(bounds) != 2
            or not all(isinstance(b, numbers) and not isinstance(b, bool) for b in bounds)):
        raise UserError(f"{where}: {kind} takes [low, high] ({'integers' if kind == 'int' else 'numbers'}), "
                        f"got {bounds!r}")
    low, high = bounds
    if not low < high:
        raise UserError(f"{where}: low {low} must be below high {high}")
    if kind == "log" and low <= 0:
        raise UserError(f"{where}: a log-uniform range must be above 0, got low {low}")
    step, log = value.get("step"), bool(value.get("log", False))
    if step is not None and (not isinstance(step, int) or step < 1 or log):
        raise UserError(f"{where}: step must be a positive integer (and not with log: true), got {step!r}")
    if kind == "int" and log and low < 1:
        raise UserError(f"{where}: an integer range with log: true must start at 1 or above, got {low}")
    return Dimension(key, kind, float(low) if kind != "int" else low, float(high) if kind != "int" else high,
                     step, log)


def _number(value):
    """YAML reads `1e-4` (no dot) as a string: a string that is a number is that number."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def overrides(params: dict) -> list[str]:
    """`key=value` overrides of drawn parameters (JSON values: YAML reads them back as they were)."""
    return [f"{key}={json.dumps(value)}" for key, value in params.items()]


def check_space(space: list[Dimension], check) -> None:
    """Every dimension's bounds or choices through `check(overrides)` (which validates a recipe), one at a time, so
    the error names the key and the value."""
    for d in space:
        for value in d.values():
            try:
                check(overrides({d.key: value}))
            except UserError as e:
                raise UserError(f"search space: {d.key} = {value!r} is refused by the recipe: {e}") from None

"""What every task's split-conformal guarantee shares: the rank of the validation score that guarantees a coverage
(k = ceil((n + 1) * coverage), Vovk et al.; Angelopoulos & Bates 2021), and storing a fit in a run's model.json so any
coverage is read off it later, without the validation data. Classification's prediction sets and regression's
intervals are both fitted this way, each on its own score (a set's class mass, a residual's absolute value)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from sft.core.atomic import atomic_write_json, check_writable
from sft.errors import UserError


def quantile_rank(n: int, coverage: float) -> int:
    """k = ceil((n + 1) * coverage), the rank of the validation score that guarantees `coverage`; a UserError
    naming n when the validation split is too small for it (k > n)."""
    k = math.ceil((n + 1) * coverage - 1e-9)  # 0.9 * 10 is 9.000000000000002 in floats
    if k > n:
        need = math.ceil(coverage / (1 - coverage) - 1e-9)
        raise UserError(f"coverage {coverage} cannot be guaranteed from the run's {n} validation samples (it needs "
                        f"at least {need}; {n} guarantee at most {n / (n + 1):.4f}): ask for less, or train with a "
                        f"larger validation split (data.val or data.val_fraction)")
    return max(k, 1)


def store_fit(run_dir: str | Path, key: str, fit: dict, extra: dict) -> None:
    """`fit` as model.json's extra[key] (and in `extra`, the run info's own copy), written atomically; a UserError
    saying how to make the run folder writable when it is not."""
    path = Path(run_dir) / "model.json"
    check_writable(run_dir, f"`sft eval` stores the conformal fit in {path}; make the run folder writable "
                            f"(chmod -R u+w {run_dir}) or evaluate a writable copy of it")
    raw = json.loads(path.read_text(encoding="utf-8"))
    raw.setdefault("extra", {})[key] = extra[key] = fit
    atomic_write_json(path, raw)

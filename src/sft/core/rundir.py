"""Folders sft writes (runs, evaluations, audits, rankings, LR range tests): one guard before writing, one marker
inside, one lock while a run trains.

A folder sft made carries `.sft-run`, a small JSON file naming its kind. `--overwrite` only ever replaces a folder
that carries the marker of the same kind (or a run directory of an earlier sft version: recipe.yaml beside
checkpoints/ or model.json); anything else is refused with a message that says what is there. A folder that is, or
lies above, the current directory, the home directory or the data being used is never removed.

The run directory's layout (the task adds its model files):

    .sft-run               {"kind": "run", "task": ...}
    recipe.yaml            the resolved recipe
    checkpoints/           best.ckpt (weights only), last.ckpt (Lightning; resume from last)
    logs/                  metrics.csv (CSV logger), tensorboard/
    metrics.json           validation/test metrics, train seconds, samples/s
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from sft.core.atomic import atomic_write_json
from sft.errors import UserError

MARKER = ".sft-run"
KIND_NAMES = {"run": "a run", "eval": "an evaluation", "audit": "an audit", "rank": "a ranking",
              "lr-find": "an LR range test", "predictions": "predictions",
              "export": "an export"}


# where each launcher says which process this is: Lightning's own (LOCAL_RANK, NODE_RANK), torchrun (RANK,
# GROUP_RANK), SLURM (SLURM_PROCID), LSF/jsrun (JSM_NAMESPACE_RANK)
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")


def is_child_process() -> bool:
    """True in every training process but the first (global rank 0), however they were launched: they share rank
    0's run directory, which rank 0 alone checks, locks and writes."""
    return any(os.environ.get(name, "0") != "0" for name in RANK_VARIABLES)


def folder_kind(path: Path) -> str | None:
    """The kind of sft folder `path` is ("run", "eval", ...), or None when sft did not write it."""
    marker = path / MARKER
    if marker.is_file():
        try:
            return str(json.loads(marker.read_text()).get("kind"))
        except (OSError, ValueError, AttributeError):
            return None
    if (path / "recipe.yaml").is_file() and ((path / "checkpoints").is_dir() or (path / "model.json").is_file()):
        return "run"  # written before markers existed
    if (path / "results.json").is_file() and (path / "metrics.json").is_file() and not (path / "recipe.yaml").exists():
        return "eval"
    return None


def mark(path: Path, kind: str, **facts) -> None:
    atomic_write_json(path / MARKER, {"kind": kind, **facts})


def check_replaceable(path: str | Path, kind: str, *, overwrite: bool, keep: tuple = (), state: str = "",
                      hint: str = "pass --overwrite to replace it") -> bool:
    """Whether `path` may receive a new `kind` folder: True when it is absent or empty, or (with `overwrite`) holds
    an sft folder of that kind. Otherwise a UserError that says what is there (`state`: a closer description of
    the folder of that kind). `keep`: paths (the data) that must survive. Returns whether something is replaced."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{path} is a file, not a folder; choose another folder")
    if not path.exists() or not any(path.iterdir()):
        return False
    found = folder_kind(path)
    what = KIND_NAMES.get(found, f"an sft {found} folder") if found else None
    if found == kind and overwrite:
        _check_not_protected(path, keep)
        return True
    if found == kind:
        raise UserError(f"{path} already holds {state or what}; {hint}, or choose another folder")
    entries = sorted(p.name for p in path.iterdir())
    listing = ", ".join(entries[:5]) + (f", ... ({len(entries)} entries)" if len(entries) > 5 else "")
    if what:
        raise UserError(f"{path} holds {what}, not {KIND_NAMES.get(kind, kind)}; choose another folder")
    raise UserError(f"{path} is not empty and was not written by sft ({listing}); it is left untouched, even with "
                    f"--overwrite: choose an empty or new folder")


def replace_folder(path: str | Path, kind: str, keep: tuple = (), **facts) -> None:
    """Empty `path` (checked by check_replaceable) and mark it as a new `kind` folder."""
    path = Path(path)
    if path.exists() and any(path.iterdir()):
        _check_not_protected(path, keep)
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    mark(path, kind, **facts)


def _check_not_protected(path: Path, keep: tuple) -> None:
    target = path.resolve()
    for name, other in (("the current directory", Path.cwd()), ("your home directory", Path.home()),
                        *(("the data", Path(k)) for k in keep)):
        other = Path(other).expanduser().resolve()
        if target == other or target in other.parents:
            raise UserError(f"{path} is {name} or holds it; sft never removes it: choose another folder")


@dataclass
class RunDir:
    path: Path

    def __post_init__(self):
        self.path = Path(self.path)
        self.created = False  # by `start` in this process, for a new run

    recipe = property(lambda self: self.path / "recipe.yaml")
    checkpoints = property(lambda self: self.path / "checkpoints")
    last_checkpoint = property(lambda self: self.path / "checkpoints" / "last.ckpt")
    best_checkpoint = property(lambda self: self.path / "checkpoints" / "best.ckpt")
    metrics = property(lambda self: self.path / "metrics.json")

    def check(self, *, overwrite: bool, resume: bool, keep: tuple = ()) -> None:
        """Refuse to touch an existing run unless the user asked to continue or replace it."""
        if overwrite and resume:
            raise UserError("--overwrite and --resume exclude each other")
        if resume:
            if not self.last_checkpoint.exists():
                raise UserError(f"{self.path}: nothing to resume (no checkpoints/last.ckpt); train without --resume")
            return
        check_replaceable(self.path, "run", overwrite=overwrite, keep=keep,
                          state="a finished run" if self.metrics.exists() else "an unfinished run",
                          hint="pass --resume to continue it, --overwrite to replace it")

    def start(self, *, overwrite: bool, resume: bool, task: str, keep: tuple = ()) -> None:
        """Create the folder (after `check` and after the inputs proved valid, so a typo leaves nothing behind)."""
        try:
            if resume:
                mark(self.path, "run", task=task)
            else:
                replace_folder(self.path, "run", keep, task=task)
                self.created = True
        except OSError as e:
            raise unwritable(self.path, e) from None

    def discard_if_empty(self) -> None:
        """Remove the folder `start` created when the run ended without a checkpoint (bad input found late, an
        interruption before the first step): it holds only what sft wrote, and a rerun must not be refused."""
        if self.created and not self.last_checkpoint.exists() and not self.metrics.exists():
            shutil.rmtree(self.path, ignore_errors=True)
        self.created = False

    def lock(self) -> FileLock:
        """Held from the check to the end of training: a second `sft train` into the same folder is refused. The
        lock file lies beside the folder, so replacing the folder keeps it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.path.parent / f".{self.path.name}.lock"), timeout=0)

    def write_metrics(self, metrics: dict) -> None:
        atomic_write_json(self.metrics, metrics)

    def read_metrics(self) -> dict:
        return json.loads(self.metrics.read_text()) if self.metrics.exists() else {}


def locked(run: RunDir) -> FileLock:
    """The run's lock, acquired, or a UserError naming the folder another process is training into."""
    try:
        lock = run.lock()
        lock.acquire()
    except Timeout:
        raise UserError(f"{run.path}: another sft process is training into this folder; wait for it to finish or "
                        f"choose another run_dir") from None
    except OSError as e:
        raise unwritable(run.path, e) from None
    return lock


def unwritable(path: Path, error: OSError) -> UserError:
    return UserError(f"{path}: cannot write there ({error.strerror or error}); choose a run_dir you can write to")

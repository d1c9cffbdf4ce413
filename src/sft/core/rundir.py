"""Folders sft writes (runs, evaluations, audits, rankings, LR range tests): one guard before writing, one marker
inside, one lock while a run trains.

A folder sft made carries `.sft-run`, a small JSON file naming its kind. `--overwrite` only ever replaces a folder
that carries the marker of the same kind, or an unmarked run or evaluation of an earlier sft version when everything
in it is something sft writes there; anything else is refused with a message that lists what is there. A folder
that is, or holds, the current directory, the home directory, the data or the recipe being used is never removed.

The run directory's layout (the task adds its model files):

    .sft-run               {"kind": "run", "task": ...}
    recipe.yaml            the resolved recipe
    checkpoints/           best.ckpt (weights only), last.ckpt (Lightning; resume from last)
    logs/                  metrics.csv (CSV logger), tensorboard/, trackers.json (MLflow / W&B run ids)
    mlruns/, wandb/        the trackers' local folders (trainer.loggers mlflow, wandb)
    metrics.json           validation/test metrics, train seconds, samples/s
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

from sft.core.atomic import atomic_write_json
from sft.core.lock import FolderLock
from sft.errors import UserError

MARKER = ".sft-run"
KIND_NAMES = {"run": "a run", "eval": "an evaluation", "audit": "an audit", "rank": "a ranking",
              "lr-find": "an LR range test", "predictions": "predictions",
              "export": "an export", "sweep": "a sweep"}


# where each launcher says which process this is: Lightning's own (LOCAL_RANK, NODE_RANK), torchrun (RANK,
# GROUP_RANK), SLURM (SLURM_PROCID), LSF/jsrun (JSM_NAMESPACE_RANK)
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")


def is_child_process() -> bool:
    """True in every training process but the first (global rank 0), however they were launched: they share rank
    0's run directory, which rank 0 alone checks, locks and writes."""
    return any(os.environ.get(name, "0") != "0" for name in RANK_VARIABLES)


# the files sft writes in a run or an evaluation (paths inside it; `*` spans folders): an unmarked folder (written
# before markers existed) is taken for one only when it holds no other file, at any depth
_EVAL = ("results.json", "metrics.json", "report.html", ".sft-run")
WRITES = {
    "run": ("recipe.yaml", "metrics.json", "model.json", "model.safetensors", "classes.txt", "checkpoints/*.ckpt",
            "logs/metrics*.csv", "logs/hparams.yaml", "logs/tensorboard/*", "logs/trackers.json", "mlruns/*",
            "wandb/*", "lr-find/lr_find.*", "lr-find/.sft-run",
            "backbone/*.json", "backbone/*.txt", "adapter/adapter_*", "adapter/README.md", "model/*.json",
            "model/*.safetensors", "model/*.txt", "model/*.jinja",
            *(f"{folder}/{name}" for folder in ("export", "export-*") for name in (
                "model.onnx", "model.json", "parity.json", ".sft-run", "*.json", "*.txt", "*.model", "*.safetensors",
                "modeling_sft.py")),
            *(f"{folder}/{name}" for folder in ("eval", "eval-*") for name in _EVAL)),
    "eval": _EVAL,
}


def folder_kind(path: Path) -> str | None:
    """The kind of sft folder `path` is ("run", "eval", ...), or None when sft did not write it."""
    marker = path / MARKER
    if marker.is_file():
        try:
            return str(json.loads(marker.read_text()).get("kind"))
        except (OSError, ValueError, AttributeError):
            return None
    legacy = _legacy_kind(path)
    return legacy if legacy and not foreign_entries(path, legacy) else None


def _legacy_kind(path: Path) -> str | None:
    """What an unmarked folder looks like sft wrote, from the files sft writes there (None: nothing alike)."""
    if (path / "recipe.yaml").is_file() and ((path / "checkpoints").is_dir() or (path / "model.json").is_file()):
        return "run"
    if (path / "results.json").is_file() and (path / "metrics.json").is_file() and not (path / "recipe.yaml").exists():
        return "eval"
    return None


def foreign_entries(path: Path, kind: str) -> list[str]:
    """The files in `path` (at any depth, relative to it) that sft never writes into a `kind` folder."""
    files = (p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file() or p.is_symlink())
    return sorted(f for f in files if not any(fnmatch(f, w) for w in WRITES.get(kind, ("*",))))


def run_of_recipe(path: str | Path) -> Path | None:
    """The run directory whose own recipe `path` is (RUN/recipe.yaml, written by `sft train`), else None."""
    path = Path(path)
    return path.parent if path.name == "recipe.yaml" and folder_kind(path.parent) == "run" else None


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
    if what:
        raise UserError(f"{path} holds {what}, not {KIND_NAMES.get(kind, kind)}; choose another folder")
    legacy = _legacy_kind(path)
    if legacy:  # an earlier sft's folder, with files of the user's in it
        raise UserError(f"{path} looks like {KIND_NAMES[legacy]} of an earlier sft but also holds files sft does not "
                        f"write ({_listing(foreign_entries(path, legacy))}); it is left untouched, even with "
                        f"--overwrite: move those files out, or choose an empty or new folder")
    raise UserError(f"{path} is not empty and was not written by sft ({_listing(sorted(p.name for p in path.iterdir()))})"
                    f"; it is left untouched, even with --overwrite: choose an empty or new folder")


def _listing(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f", ... ({len(names)} entries)" if len(names) > 5 else "")


def replace_folder(path: str | Path, kind: str, keep: tuple = (), **facts) -> None:
    """Empty `path` (checked by check_replaceable) and mark it as a new `kind` folder."""
    path = Path(path)
    if path.exists() and any(path.iterdir()):
        _check_not_protected(path, keep)
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    mark(path, kind, **facts)


def _check_not_protected(path: Path, keep: tuple) -> None:
    """`keep`: what the command reads (the data, the recipe file): never inside a folder it removes."""
    target = path.resolve()
    for name, other in (("the current directory", Path.cwd()), ("your home directory", Path.home())):
        if target == other.resolve() or target in other.resolve().parents:
            raise UserError(f"{path} is {name} or holds it; sft never removes it: choose another folder")
    for k in keep:
        other = Path(k).expanduser().resolve()
        if target == other or target in other.parents:
            raise UserError(f"{path} holds {k}, which this command reads; sft never removes it: choose another "
                            f"folder, or move {k} out of it first")


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

    def lock(self) -> FolderLock:
        """Held from the check to the end of training: a second `sft train` into the same folder is refused."""
        return FolderLock(self.path)

    def write_metrics(self, metrics: dict) -> None:
        atomic_write_json(self.metrics, metrics)

    def read_metrics(self) -> dict:
        return json.loads(self.metrics.read_text()) if self.metrics.exists() else {}


@contextlib.contextmanager
def locked(run: RunDir):
    """The run's lock, held for the block, or a UserError naming the folder another process is training into."""
    lock = run.lock()
    try:
        taken = lock.acquire()
    except OSError as e:
        raise UserError(f"{lock.path}: cannot take the lock of {run.path} ({e.strerror or e})") from None
    if not taken:
        raise UserError(f"{run.path}: another sft process is training into this folder; wait for it to finish or "
                        f"choose another run_dir")
    try:
        yield lock
    finally:
        lock.release()


def unwritable(path: Path, error: OSError) -> UserError:
    return UserError(f"{path}: cannot write there ({error.strerror or error}); choose a run_dir you can write to")

"""`sft sweep`: trials of a recipe over a search space, each a normal run, chosen by Optuna and judged on validation.

Optuna does the searching (TPE, which keeps several workers apart with its constant liar), the pruning (the median
rule on the task's monitored value after each epoch, through optuna-integration's Lightning callback) and the
bookkeeping: the study lives in Optuna storage — a journal file in the sweep folder, or any database URL Optuna takes
— so worker processes on this machine, or the same command on other machines against one database, share it
without a scheduler of ours.

The sweep folder:

    .sft-run           {"kind": "sweep"}
    sweep.json         what was asked: the recipe, its overrides, the trials, the storage, the study's name
    space.yaml         the search space (a resumed sweep must be given the same one)
    study.journal      the Optuna study (without --storage)
    trials/NNN/        trial NNN's run directory (markers, lock, checkpoints, resume as for any run); a pruned
                       trial's is an unfinished run `sft train --resume` can finish (none when pruned after its
                       first epoch, before any checkpoint)
    trials.csv         one row per trial: state, value, parameters, epochs, seconds, run folder
    best.yaml          the best trial's recipe, a file `sft train` takes (test split included)
    best-test/         the best trial's evaluation on the test split: the one time test data is scored
    summary.json, sweep.html

A killed sweep resumes with --resume: finished and pruned trials are kept; a trial whose process died (or was
stopped by Ctrl-C) is queued again with its parameters, and its run folder continues from its last checkpoint.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import re
import socket
import time
import warnings
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import optuna
import torch
from optuna.trial import TrialState
from optuna_integration import PyTorchLightningPruningCallback
from pydantic import BaseModel

from sft.core.atomic import atomic_write_json, atomic_write_text
from sft.core.hardware import usable_cores
from sft.core.rundir import check_replaceable, folder_kind, replace_folder
from sft.errors import Interrupted, UserError
from sft.sweep.page import best_recipe_text, sweep_page, trials_table
from sft.sweep.space import Dimension, check_space, overrides, read_space
from sft.sweep.tracking import adopt, close_parent, open_parent, trial_overrides
from sft.tasks import get_task, load_recipe
from sft.training.fit import fine_tune
from sft.training.interrupt import die_with_launcher

log = logging.getLogger("sft")
INTERRUPTED, RETRY_OF, RUN_DIR, HOST, PID, ERROR = ("sft.interrupted", "sft.retry_of", "sft.run_dir", "sft.host",
                                                    "sft.pid", "sft.error")


@dataclass
class Settings:
    """What a sweep was asked to do; every worker process gets a copy."""
    recipe: str
    overrides: list[str]
    trials: int
    workers: int
    folder: str
    storage: str | None
    study: str
    seed: int

    @property
    def journal(self) -> Path:
        return Path(self.folder) / "study.journal"


def run_sweep(recipe: Path, given: list[str], space_file: Path, *, trials: int, workers: int, storage: str | None,
              out: Path | None, resume: bool, overwrite: bool, say: Callable[[str], None] = print) -> dict:
    """Run (or, with `resume`, continue or join) the sweep; write its folder; return summary.json's content."""
    if overwrite and resume:
        raise UserError("--overwrite and --resume exclude each other")
    base = load_recipe(recipe, given)
    space = read_space(space_file)
    check_space(space, lambda extra: load_recipe(recipe, [*given, *extra]))
    folder = Path(out) if out else Path(f"{base.run_dir}-sweep")
    settings = Settings(str(recipe), list(given), trials, workers, str(folder), storage, folder.name, base.seed)
    mode = get_task(base.task).monitor.mode
    shared = open_study(settings, mode) if storage else None  # a URL Optuna cannot open stops before any folder
    _open_folder(settings, space_file, resume, overwrite, keep=(recipe, space_file))
    study = shared or open_study(settings, mode)
    open_parent(folder, settings.study, load_recipe(recipe, [*given, *trial_overrides(folder, settings.study, base)]))
    if resume:
        for line in retry_interrupted(study):
            say(line)
    started = time.perf_counter()
    work_together(settings, say)
    return finish(settings, study, seconds=time.perf_counter() - started, say=say)


def _open_folder(s: Settings, space_file: Path, resume: bool, overwrite: bool, keep: tuple) -> None:
    folder, space_text = Path(s.folder), Path(space_file).read_text()
    if resume:
        if folder_kind(folder) != "sweep":
            raise UserError(f"{folder}: no sweep to resume or join here; start one without --resume")
        kept = (folder / "space.yaml").read_text()
        if kept != space_text:
            raise UserError(f"{space_file} differs from the space the sweep in {folder} searches ({folder}/space.yaml)"
                            f"; give that space, or --overwrite to start again")
        return
    check_replaceable(folder, "sweep", overwrite=overwrite, keep=keep,
                      hint="pass --resume to continue or join it, --overwrite to start again")
    replace_folder(folder, "sweep", keep)
    atomic_write_text(folder / "space.yaml", space_text)
    atomic_write_json(folder / "sweep.json", asdict(s))


def open_study(s: Settings, mode: str):
    """The sweep's Optuna study, created or loaded: its direction is the task's monitored value's."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return optuna.create_study(storage=_storage(s), study_name=s.study, load_if_exists=True,
                                   direction="maximize" if mode == "max" else "minimize")
    except Exception as e:  # noqa: BLE001 - SQLAlchemy, a driver or Optuna: each has its own types
        if not s.storage:
            raise
        raise UserError(f"--storage {s.storage}: Optuna cannot open it ({type(e).__name__}: {e}); give a URL such "
                        f"as sqlite:///sweep.db or postgresql://user@host/db, or leave --storage out") from None


def _storage(s: Settings):
    if s.storage:
        return s.storage
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(s.journal)))


def retry_interrupted(study) -> list[str]:
    """Queue again, with their parameters and run folders, the trials stopped by Ctrl-C and those left running by a
    process of this machine that no longer exists (killed); trials of live processes and of other machines are left
    alone. Returns a line per trial queued."""
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get(RETRY_OF) for t in trials}
    lines = []
    for t in trials:
        dead = (t.state == TrialState.RUNNING and t.user_attrs.get(HOST) == socket.gethostname()
                and not _alive(t.user_attrs.get(PID)))
        stopped = t.state == TrialState.FAIL and t.user_attrs.get(INTERRUPTED)
        if not (dead or stopped) or _origin(t) in retried:
            continue
        if dead:
            study._storage.set_trial_user_attr(t._trial_id, INTERRUPTED, True)
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs={RETRY_OF: _origin(t), RUN_DIR: t.user_attrs.get(RUN_DIR)},
                            skip_if_exists=False)
        retried.add(_origin(t))
        lines.append(f"trial {t.number} was interrupted: queued again, its run continues from its last checkpoint")
    return lines


def _origin(trial) -> int:
    return trial.user_attrs.get(RETRY_OF, trial.number)


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (TypeError, ValueError, ProcessLookupError):
        return False
    except PermissionError:  # another user's process holds the number
        return True
    return True


def work_together(s: Settings, say: Callable[[str], None]) -> None:
    """`s.workers` processes (this one and the rest spawned) take trials until the sweep has its count."""
    threads = max(1, usable_cores() // s.workers)
    context = multiprocessing.get_context("spawn")  # never fork a process that has started torch's threads
    others = [context.Process(target=_worker_main, args=(asdict(s), i, threads), name=f"sft-sweep-{i}")
              for i in range(1, s.workers)]
    for p in others:
        p.start()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)  # this process's share while it runs trials, given back after
    try:
        work(s, 0, say)
    finally:
        torch.set_num_threads(before)
        for p in others:
            p.join()
    failed = [f"worker {i} (exit code {p.exitcode})" for i, p in enumerate(others, 1) if p.exitcode]
    if failed:
        raise UserError(f"sweep: {', '.join(failed)} stopped early; its message is above. Fix it and continue "
                        f"with --resume")


def _worker_main(settings: dict, index: int, threads: int) -> None:
    die_with_launcher()  # the sweep's first process killed: its workers end too
    try:
        torch.set_num_threads(threads)
        work(Settings(**settings), index, print)
    except Interrupted as e:
        raise SystemExit(e.exit_code) from None
    except UserError as e:
        print(f"error: {e}", flush=True)
        raise SystemExit(2) from None


def work(s: Settings, index: int, say: Callable[[str], None]) -> None:
    """Take trials (queued retries first) until the study holds `s.trials` of them, then return."""
    base = load_recipe(s.recipe, s.overrides)
    task = get_task(base.task)
    space = read_space(Path(s.folder) / "space.yaml")
    study = open_study(s, task.monitor.mode)
    study.sampler = optuna.samplers.TPESampler(
        seed=zlib.crc32(f"{s.seed}:{socket.gethostname()}:{index}".encode()),  # workers and machines draw apart
        n_startup_trials=max(2, min(10, s.trials // 3)), constant_liar=True)
    study.pruner = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        tracked = trial_overrides(Path(s.folder), s.study, base)
        while taken(study) < s.trials or waiting(study):
            study.optimize(lambda trial: objective(trial, s, task, space, tracked, say), n_trials=1, catch=())


def taken(study) -> int:
    """Trials that count towards the sweep's number: all but those interrupted (each is queued again)."""
    return sum(not (t.state == TrialState.FAIL and t.user_attrs.get(INTERRUPTED))
               for t in study.get_trials(deepcopy=False))


def waiting(study) -> bool:
    return bool(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


def objective(trial, s: Settings, task, space: list[Dimension], tracked: list[str],
              say: Callable[[str], None]) -> float:
    """One trial: a run with the drawn parameters, on train and validation only; its best monitored value.
    `tracked`: the overrides that put its tracker runs beside the sweep's."""
    params = {d.key: d.suggest(trial) for d in space}
    run_dir = Path(trial.user_attrs.get(RUN_DIR) or Path(s.folder) / "trials" / f"{trial.number:03d}")
    for key, value in ((RUN_DIR, str(run_dir)), (HOST, socket.gethostname()), (PID, os.getpid())):
        trial.set_user_attr(key, value)
    if RETRY_OF in trial.user_attrs:  # the pruner compares its epochs with those the interrupted trial reported
        for step, value in trial.study.trials[trial.user_attrs[RETRY_OF]].intermediate_values.items():
            trial.report(value, step)
    recipe = load_recipe(s.recipe, [*s.overrides, *tracked, *overrides(params), f"run_dir={run_dir}",
                                    "data.test=null", "trainer.progress=false"])
    resume = (run_dir / "checkpoints" / "last.ckpt").exists()
    drawn = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
    say(f"trial {trial.number}{' (resumed)' if resume else ''}: {drawn}")
    started = time.perf_counter()
    try:
        run = fine_tune(task, recipe, overwrite=not resume, resume=resume, keep=(s.recipe,),
                        callbacks=[PyTorchLightningPruningCallback(trial, monitor=task.monitor.name)])
    except Interrupted:
        trial.set_user_attr(INTERRUPTED, True)
        raise
    except optuna.TrialPruned as e:
        trial.set_user_attr("sft.seconds", round(time.perf_counter() - started, 1))
        epoch = re.search(r"epoch (\d+)", str(e))  # the callback's message names the 0-based epoch
        say(f"trial {trial.number}: pruned after epoch {int(epoch.group(1)) + 1 if epoch else '?'} "
            f"(below the median of the earlier trials there)")
        raise
    except UserError as e:
        trial.set_user_attr(ERROR, str(e))
        say(f"trial {trial.number}: failed: {e}")
        return float("nan")  # a failed trial: Optuna records it and the sweep goes on
    finally:
        adopt(Path(s.folder), run_dir)
    trial.set_user_attr("sft.seconds", round(time.perf_counter() - started, 1))
    trial.set_user_attr("sft.epochs", run.metrics.get("epochs"))
    value = run.metrics.get(task.monitor.name)
    say(f"trial {trial.number}: {task.monitor.name} {value:.4g}" if value is not None else
        f"trial {trial.number}: no {task.monitor.name}")
    return float("nan") if value is None else float(value)


def finish(s: Settings, study, *, seconds: float, say: Callable[[str], None]) -> dict:
    """trials.csv, best.yaml, the best trial's test evaluation, summary.json and sweep.html in the sweep folder."""

    folder, trials = Path(s.folder), study.get_trials()
    atomic_write_text(folder / "trials.csv", trials_table(trials))
    states = {state.name.lower(): sum(t.state == state for t in trials) for state in TrialState}
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if not complete:
        errors = sorted({t.user_attrs[ERROR] for t in trials if ERROR in t.user_attrs})
        raise UserError(f"sweep: no trial finished ({states}){'; errors: ' + ' | '.join(errors) if errors else ''}")
    best = study.best_trial
    base = load_recipe(s.recipe, s.overrides)
    task = get_task(base.task)
    atomic_write_text(folder / "best.yaml", best_recipe_text(s.recipe, [*s.overrides, *overrides(best.params)]))
    summary = {
        "best_trial": best.number, "best_value": best.value, "monitor": task.monitor.name,
        "best_params": best.params, "best_run": best.user_attrs.get(RUN_DIR), "trials": states,
        "pruned_share": round(states["pruned"] / max(1, len(trials) - states["fail"]), 3),
        "seconds": round(seconds, 1), "folder": s.folder, "storage": s.storage or str(s.journal), "study": s.study,
    }
    if base.data.test is not None:
        options = task.options.get("eval")
        source = base.data.test.model_dump()
        out, test = task.evaluate(best.user_attrs[RUN_DIR], source, folder / "best-test",
                                  options() if options else BaseModel(), overwrite=True,
                                  batch_size=base.data.batch_size, progress=False)
        summary["test"] = test
        say(f"best trial {best.number} on the test split: " + ", ".join(
            f"{k} {v:.4g}" for k, v in list((k, v) for k, v in test.items() if isinstance(v, float))[:4]))
    atomic_write_json(folder / "summary.json", summary)
    atomic_write_text(folder / "sweep.html", sweep_page(study, summary))
    close_parent(folder, summary)
    return summary


"""A sweep in the experiment trackers its recipe names (`trainer.loggers`): every trial logs to one place and shows
as a child of the sweep.

MLflow: the trials log to the sweep folder's file store (unless `trainer.mlflow_uri` or MLFLOW_TRACKING_URI names
another) in an experiment named after the sweep (unless `trainer.experiment` names one); the sweep has its own run
there, and each trial's run is tagged with it as `mlflow.parentRunId`, which MLflow's UI nests. W&B: the trials share
the sweep's name as their run group (WANDB_RUN_GROUP) and project.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from sft.recipe import Recipe
from sft.training.trackers import IDS, mlflow_uri

PARENT = "mlflow-run.json"  # in the sweep folder: the sweep's own MLflow run


def trial_overrides(folder: Path, study: str, base: Recipe) -> list[str]:
    """What every trial's recipe gets so that its tracker runs land beside the sweep's."""
    t, extra = base.trainer, []
    if "mlflow" in t.loggers and not t.mlflow_uri and not os.environ.get("MLFLOW_TRACKING_URI"):
        extra.append(f"trainer.mlflow_uri={(folder.resolve() / 'mlruns').as_uri()}")
    if not t.experiment and {"mlflow", "wandb"} & set(t.loggers):
        extra.append(f"trainer.experiment={study}")
    if "wandb" in t.loggers:
        os.environ.setdefault("WANDB_RUN_GROUP", study)
    return extra


def open_parent(folder: Path, study: str, recipe: Recipe) -> None:
    """The sweep's MLflow run (created once, kept in the folder for --resume), where the trial's runs nest."""
    if "mlflow" not in recipe.trainer.loggers or (folder / PARENT).exists():
        return
    from mlflow.tracking import MlflowClient  # deferred: mlflow is optional (the trackers extra)
    uri = mlflow_uri(recipe.trainer.mlflow_uri, folder)
    client = MlflowClient(uri)
    name = recipe.trainer.experiment
    experiment = client.get_experiment_by_name(name)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(name)
    run = client.create_run(experiment_id, run_name=study, tags={"sft.sweep": str(folder.resolve())})
    (folder / PARENT).write_text(json.dumps({"run_id": run.info.run_id, "tracking_uri": uri}))


def adopt(folder: Path, run_dir: Path) -> None:
    """Tag a trial's MLflow run as a child of the sweep's (a trial that never started its tracker has none)."""
    try:
        parent = json.loads((folder / PARENT).read_text())
        child = json.loads((run_dir / IDS).read_text())["mlflow"]["run_id"]
    except (OSError, ValueError, KeyError, TypeError):
        return
    from mlflow.tracking import MlflowClient
    MlflowClient(parent["tracking_uri"]).set_tag(child, "mlflow.parentRunId", parent["run_id"])


def close_parent(folder: Path, summary: dict) -> None:
    """The sweep's result on its MLflow run: the best parameters (as tags: a resumed sweep may change them, an MLflow
    parameter cannot), the best and test values, summary.json as an artifact."""
    try:
        parent = json.loads((folder / PARENT).read_text())
    except (OSError, ValueError):
        return
    from mlflow.tracking import MlflowClient
    client = MlflowClient(parent["tracking_uri"])
    run_id = parent["run_id"]
    for key, value in summary["best_params"].items():
        client.set_tag(run_id, f"best.{key}", value)
    client.set_tag(run_id, "best.trial", summary["best_trial"])
    client.log_metric(run_id, f"best/{summary['monitor']}", summary["best_value"])
    for key, value in (summary.get("test") or {}).items():
        if isinstance(value, float):
            client.log_metric(run_id, f"test/{key}", value)
    client.log_artifact(run_id, str(folder / "summary.json"))
    client.set_terminated(run_id)

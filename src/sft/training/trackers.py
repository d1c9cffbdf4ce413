"""The loggers a run writes to (`trainer.loggers`): csv and tensorboard under RUN/logs, and the experiment trackers
people use, MLflow and Weights & Biases, through Lightning's own MLFlowLogger and WandbLogger.

No tracker reaches the network unless the user points it at a server: MLflow writes to a file store inside the run
(RUN/mlruns) unless `trainer.mlflow_uri` or MLFLOW_TRACKING_URI names another; W&B runs offline (RUN/wandb, for
`wandb sync`) unless WANDB_MODE or WANDB_API_KEY says the user has set it up. A tracker's run gets the flattened
recipe as parameters, the epoch metrics Lightning logs, metrics.json's values (as `final/KEY`) and the run's files
(model, recipe, metrics) as artifacts; `sft eval` adds its evaluation folder. The tracker runs' ids are kept in
RUN/logs/trackers.json, so `--resume` continues the same tracker runs instead of starting new ones. Rank 0 alone
logs: Lightning's loggers do so, and the steps here run in rank 0 only.

mlflow and wandb are imported on use (each is large, and optional: the `trackers` extra); Lightning's
loggers import them only when they start a run.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import math
import os
import re
import time
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger, Logger, MLFlowLogger, TensorBoardLogger, WandbLogger

from sft.core.atomic import atomic_write_json
from sft.errors import UserError
from sft.recipe import Recipe, Trainer
from sft.training.resume import flat_keys

log = logging.getLogger("sft")

TRACKERS = {"mlflow": "mlflow-skinny", "wandb": "wandb"}  # tracker -> the package that brings it
IDS = Path("logs") / "trackers.json"  # inside the run: the tracker runs to continue
NOT_LOGGED = {"checkpoints", "logs", "mlruns", "wandb", ".sft-run"}  # run entries never sent as artifacts


def local_loggers(t: Trainer, run_path: Path) -> list[Logger]:
    """The loggers that write inside the run (csv, tensorboard); the trackers named are checked to be installed,
    before any folder is made."""
    for name in t.loggers:
        if name in TRACKERS and importlib.util.find_spec(name) is None:
            raise UserError(f"trainer.loggers: {name} is not installed; pip install {TRACKERS[name]} (sft's trackers "
                            f"extra), or leave {name} out of trainer.loggers")
    loggers: list[Logger] = []
    if "csv" in t.loggers:
        loggers.append(CSVLogger(run_path, name="logs", version=""))
    if "tensorboard" in t.loggers:
        loggers.append(TensorBoardLogger(run_path / "logs", name="tensorboard", version=""))
    return loggers


def open_trackers(recipe: Recipe, run_path: Path, resume: bool, rank_zero: bool) -> list[Logger]:
    """The trackers' loggers, built once the run folder exists (a local MLflow store lives in it). In rank 0 their
    runs are started (or, on resume, continued), their ids recorded and the recipe logged as parameters."""
    t = recipe.trainer
    saved = _read_ids(run_path) if resume else {}
    name = Path(recipe.run_dir).name
    experiment = t.experiment or name
    loggers: list[Logger] = []
    if "mlflow" in t.loggers:
        uri = mlflow_uri(t.mlflow_uri, run_path)
        run_id = saved.get("mlflow", {}).get("run_id")
        if run_id and rank_zero and not _mlflow_run_exists(uri, run_id):
            log.warning(f"MLflow run {run_id} of {run_path} is not in {uri}: a new MLflow run is started")
            run_id = None
        loggers.append(MLFlowLogger(experiment_name=experiment, run_name=name, tracking_uri=uri, run_id=run_id,
                                    tags={"sft.run_dir": str(run_path.resolve())}))
    if "wandb" in t.loggers:
        mode = wandb_mode()  # passed to wandb.init: offline=True would set WANDB_MODE for the whole process
        loggers.append(WandbLogger(name=name, project=experiment, save_dir=str(run_path),
                                   id=saved.get("wandb", {}).get("id"), **({"mode": mode} if mode else {})))
    if rank_zero and loggers:
        _start(loggers, recipe, run_path, t.mlflow_uri)
    return loggers


def close_trackers(loggers: list[Logger], run_path: Path, metrics: dict | None) -> None:
    """At the end of training (rank 0): metrics.json's values and the run's files to each tracker, then its run is
    closed (`metrics` None: an interrupted run, only closed). A tracker that fails here is a warning: the run itself
    is complete."""
    for logger in loggers:
        try:
            if metrics is None:
                if isinstance(logger, WandbLogger):
                    logger.experiment.finish()  # Lightning leaves it open until the process ends
            elif isinstance(logger, MLFlowLogger):
                _mlflow_log(logger.experiment, logger.run_id, metrics, "final", _run_files(run_path))
            elif isinstance(logger, WandbLogger):
                _wandb_log(logger.experiment, metrics, "final", _run_files(run_path), "model")
                logger.experiment.finish()
        except Exception as e:  # noqa: BLE001 - a server gone or a full disk must not fail a finished run
            log.warning(f"{type(logger).__name__}: could not log the final metrics and files: {e}")


def log_evaluation(run_path: str | Path, folder: Path, summary: dict) -> None:
    """`sft eval`: the evaluation's metrics (`eval/KEY`, or `eval-NAME/KEY`) and its folder to the tracker runs
    the training recorded, if any; a tracker that fails is a warning, the evaluation is written."""
    run_path = Path(run_path)
    saved, prefix = _read_ids(run_path), Path(folder).name
    for name, ids in saved.items():
        try:
            if name == "mlflow":
                from mlflow.tracking import MlflowClient
                uri = ids.get("tracking_uri") or mlflow_uri(None, run_path)
                _mlflow_log(MlflowClient(_allow_file_store(uri)), ids["run_id"], summary, prefix, [Path(folder)])
            elif name == "wandb":
                import wandb
                mode = ids.get("mode")
                run = wandb.init(id=ids["id"], project=ids.get("project"), dir=str(run_path), resume="allow",
                                 **({"mode": mode} if mode else {}))
                _wandb_log(run, summary, prefix, [Path(folder)], "evaluation")
                run.finish()
        except Exception as e:  # noqa: BLE001 - not installed, a server gone: the evaluation itself is complete
            log.warning(f"{name}: could not log the evaluation {folder} to the run's tracker: {e}")


def mlflow_uri(setting: str | None, run_path: Path) -> str:
    """Where MLflow logs: `trainer.mlflow_uri`, else MLFLOW_TRACKING_URI, else a file store in the run (RUN/mlruns)."""
    uri = setting or os.environ.get("MLFLOW_TRACKING_URI") or (run_path.resolve() / "mlruns").as_uri()
    return _allow_file_store(uri)


def _allow_file_store(uri: str) -> str:
    """MLflow 3 keeps its file store (a folder, no database and no server: what a local run needs) in maintenance
    mode and refuses it unless MLFLOW_ALLOW_FILE_STORE is set; a user's own setting is kept."""
    if uri.startswith("file:") or "://" not in uri:
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return uri


def wandb_mode() -> str | None:
    """offline unless the user has set W&B up (WANDB_MODE, or an API key in WANDB_API_KEY): then wandb decides."""
    return None if os.environ.get("WANDB_MODE") or os.environ.get("WANDB_API_KEY") else "offline"


def _start(loggers: list[Logger], recipe: Recipe, run_path: Path, uri_setting: str | None) -> None:
    """Start or continue each tracker's run, keep its id in the run, log the recipe as dotted parameters."""
    params = flat_keys(recipe.model_dump(mode="json"))
    ids = _read_ids(run_path)
    for logger in loggers:
        try:
            if isinstance(logger, MLFlowLogger):
                with _tracking_uri_kept():
                    client, run_id = logger.experiment, logger.run_id
                logged = client.get_run(run_id).data.params
                if logged:  # continued: MLflow refuses a changed value (a resume may change trainer.epochs)
                    client.update_run(run_id, status="RUNNING")
                logger.log_hyperparams({k: v for k, v in params.items() if k not in logged})
                ids["mlflow"] = {"run_id": run_id, "experiment_id": logger.experiment_id,
                                 "tracking_uri": uri_setting or os.environ.get("MLFLOW_TRACKING_URI")}
            elif isinstance(logger, WandbLogger):
                logger.log_hyperparams(params)
                ids["wandb"] = {"id": logger.experiment.id, "project": logger.experiment.project, "mode": wandb_mode()}
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - a server that cannot be reached, a refused store: say which
            raise UserError(f"trainer.loggers: {type(logger).__name__} could not start its run: {e}") from None
    atomic_write_json(run_path / IDS, ids)


@contextlib.contextmanager
def _tracking_uri_kept():
    """Lightning's MLFlowLogger starts its run with mlflow.set_tracking_uri, which also sets MLFLOW_TRACKING_URI for
    the whole process: the next run in this process would log into this run's store. The user's own is put back."""
    import mlflow
    before = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)


def _mlflow_log(client, run_id: str, metrics: dict, prefix: str, files: list[Path]) -> None:
    from mlflow.entities import Metric
    stamp = int(time.time() * 1000)
    values = [Metric(key=k, value=v, timestamp=stamp, step=0) for k, v in _numbers(metrics, prefix).items()]
    for start in range(0, len(values), 500):  # MLflow takes at most 1000 metrics per batch
        client.log_batch(run_id, metrics=values[start:start + 500])
    for path in files:
        if path.is_dir():
            client.log_artifacts(run_id, str(path), artifact_path=path.name)
        else:
            client.log_artifact(run_id, str(path))


def _wandb_log(run, metrics: dict, prefix: str, files: list[Path], kind: str) -> None:
    import wandb
    run.summary.update(_numbers(metrics, prefix))
    artifact = wandb.Artifact(re.sub(r"[^\w.-]", "-", f"{run.name or run.id}-{kind}"), type=kind)
    for path in files:
        if path.is_dir():
            artifact.add_dir(str(path), name=path.name)
        else:
            artifact.add_file(str(path))
    run.log_artifact(artifact)


def _run_files(run_path: Path) -> list[Path]:
    """What a tracker keeps of the run: its model files, recipe.yaml, metrics.json, an LR range test, evaluations."""
    return [p for p in sorted(run_path.iterdir()) if p.name not in NOT_LOGGED and not p.name.startswith(".")]


def _numbers(metrics: dict, prefix: str) -> dict:
    """The finite numbers of a metrics.json as `prefix/dotted.key` (names in the characters trackers allow)."""
    return {f"{prefix}/{re.sub(r'[^A-Za-z0-9_./ -]', '_', k)}": float(v) for k, v in flat_keys(metrics).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def _mlflow_run_exists(uri: str, run_id: str) -> bool:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient
    try:
        return MlflowClient(uri).get_run(run_id).info.lifecycle_stage == "active"
    except MlflowException:
        return False


def _read_ids(run_path: Path) -> dict:
    try:
        ids = json.loads((run_path / IDS).read_text())
    except (OSError, ValueError):
        return {}
    return ids if isinstance(ids, dict) else {}


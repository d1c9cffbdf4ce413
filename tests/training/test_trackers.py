"""The experiment trackers (`trainer.loggers`): a tiny run logs to MLflow's local store and to W&B offline, read back
with each library's own tools; `--resume` continues the same tracker run; `sft eval` adds its evaluation."""

import json
import os
import sys

import pytest

from sft import fine_tune
from sft.errors import UserError
from sft.recipe import dump_recipe
from sft.training import trackers
from tests.conftest import sft, tiny_recipe

FAST = ("strategy.name=linear-probe", "trainer.epochs=1")


def test_an_mlflow_run_holds_the_recipe_the_metrics_and_the_files_and_resume_continues_it(tmp_path, fashion_slice,
                                                                                         monkeypatch):
    from mlflow.tracking import MlflowClient
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    first = fine_tune(tiny_recipe(tmp_path, fashion_slice, *FAST, "trainer.loggers=[csv, mlflow]"))
    store = (first.dir / "mlruns").as_uri()  # the default: a file store inside the run
    assert "MLFLOW_TRACKING_URI" not in os.environ  # MLflow's set_tracking_uri would point the next run here
    client = MlflowClient(store)
    run_id = json.loads((first.dir / "logs" / "trackers.json").read_text())["mlflow"]["run_id"]
    run = client.get_run(run_id)
    assert run.info.run_name == "run" and run.info.status == "FINISHED"
    params = run.data.params
    assert params["optim.lr"] == "0.01" and params["data.batch_size"] == "32"
    assert params["model.backbone"] == "timm/test_efficientnet" and params["data.train.path"].endswith("train.npz")
    assert "val_acc" in run.data.metrics  # the epochs' metrics, as Lightning logs them
    assert run.data.metrics["final/test_acc"] == pytest.approx(first.metrics["test_acc"])  # metrics.json's
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"model.json", "model.safetensors", "recipe.yaml", "metrics.json"} <= artifacts
    assert not artifacts & {"checkpoints", "mlruns", "logs"}
    assert (first.dir / "logs" / "metrics.csv").exists() and not (first.dir / "logs" / "tensorboard").exists()

    resumed = fine_tune(tiny_recipe(tmp_path, fashion_slice, *FAST[:1], "trainer.epochs=2",
                                    "trainer.loggers=[csv, mlflow]"), resume=True)
    assert resumed.metrics["resumed_from_epoch"] == 1
    [again] = client.search_runs([run.info.experiment_id])  # the same run, continued: no second one
    assert again.info.run_id == run_id and again.info.status == "FINISHED"
    assert len(client.get_metric_history(run_id, "val_acc")) == 2  # epoch 1's value, then the resumed epoch 2's
    assert again.data.params["trainer.epochs"] == "1"  # MLflow keeps a parameter's first value

    result = sft("eval", first.dir)
    assert result.exit_code == 0, result.output
    assert {"eval/report.html", "eval/metrics.json"} <= {a.path for a in client.list_artifacts(run_id, "eval")}
    assert "eval/accuracy" in client.get_run(run_id).data.metrics


def test_a_wandb_run_is_offline_and_resume_continues_its_id(tmp_path, fashion_slice, monkeypatch):
    pytest.importorskip("wandb")
    for name in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    for name in ("WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))  # wandb's own folders, out of the home directory
    first = fine_tune(tiny_recipe(tmp_path, fashion_slice, *FAST, "trainer.loggers=[wandb]"))
    run_id = json.loads((first.dir / "logs" / "trackers.json").read_text())["wandb"]["id"]
    fine_tune(tiny_recipe(tmp_path, fashion_slice, *FAST[:1], "trainer.epochs=2", "trainer.loggers=[wandb]"),
              resume=True)
    runs = sorted((first.dir / "wandb").glob("offline-run-*"))  # offline: kept for `wandb sync`, nothing sent
    assert len(runs) == 2 and all(f"-{run_id}" in r.name for r in runs)
    logged = [(r / f"run-{run_id}.wandb").read_bytes() for r in runs]
    for needle in (b"optim.lr", b"val_acc", b"final/test_acc", b"model.json", b"model.safetensors"):
        assert needle in logged[0], needle
    assert b"val_acc" in logged[1] and b"final/test_acc" in logged[1]
    assert not (first.dir / "logs" / "metrics.csv").exists()  # csv left out of trainer.loggers


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="two_ranks reads /proc")
def test_two_processes_log_one_mlflow_run_from_rank_0(tmp_path, fashion_slice, monkeypatch):
    from mlflow.tracking import MlflowClient
    from tests.training.test_ddp import DDP_ARGS, two_ranks
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # what sft sets in its own process, to read the store here
    recipe = tmp_path / "run.yaml"
    recipe.write_text(dump_recipe(tiny_recipe(tmp_path, fashion_slice, *DDP_ARGS, "trainer.epochs=1",
                                              "trainer.loggers=[csv, mlflow]")))
    code, err = two_ranks(tmp_path, recipe)
    assert code == 0, err[-3000:]
    client = MlflowClient((tmp_path / "run" / "mlruns").as_uri())
    [run] = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]  # rank 0's only
    assert run.info.status == "FINISHED" and run.data.params["trainer.devices"] == "2"
    ids = json.loads((tmp_path / "run" / "logs" / "trackers.json").read_text())
    assert ids["mlflow"]["run_id"] == run.info.run_id  # what a resume continues
    assert "final/test_acc" in run.data.metrics and len(client.get_metric_history(run.info.run_id, "val_acc")) == 1
    assert "model.json" in {a.path for a in client.list_artifacts(run.info.run_id)}


def test_an_unknown_logger_is_a_recipe_error_with_the_known_ones(tmp_path, fashion_slice):
    with pytest.raises(UserError) as e:
        tiny_recipe(tmp_path, fashion_slice, "trainer.loggers=[csv, mlfow]")
    assert "trainer.loggers.1" in str(e.value) and "'mlflow'" in str(e.value) and "'wandb'" in str(e.value)
    with pytest.raises(UserError, match="trainer.loggers"):
        tiny_recipe(tmp_path, fashion_slice, "trainer.loggers=[]")


def test_a_tracker_not_installed_says_what_to_install_and_writes_nothing(tmp_path, fashion_slice, monkeypatch):
    real = trackers.importlib.util.find_spec
    monkeypatch.setattr(trackers.importlib.util, "find_spec", lambda name: None if name == "mlflow" else real(name))
    with pytest.raises(UserError, match=r"mlflow is not installed; pip install mlflow-skinny"):
        fine_tune(tiny_recipe(tmp_path, fashion_slice, *FAST, "trainer.loggers=[csv, mlflow]"))
    assert not (tmp_path / "run").exists()


def test_the_tracking_uri_is_the_recipe_s_then_the_environment_s_then_the_run_s_own(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert trackers.mlflow_uri("sqlite:///x.db", tmp_path) == "sqlite:///x.db"
    assert trackers.mlflow_uri(None, tmp_path) == "http://127.0.0.1:5000"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert trackers.mlflow_uri(None, tmp_path) == (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("WANDB_API_KEY", "set up")
    assert trackers.wandb_mode() is None  # the user's own W&B set-up decides
    monkeypatch.delenv("WANDB_API_KEY")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert trackers.wandb_mode() == "offline"

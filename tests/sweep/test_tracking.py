"""A sweep in MLflow, read back with MLflow's own client: the sweep's run, each trial's run nested under it."""

import json

from sft.sweep.tracking import PARENT
from tests.conftest import sft
from tests.sweep.test_study import setup


def test_trials_are_mlflow_children_of_the_sweep(tmp_path, fashion_slice, monkeypatch):
    from mlflow.tracking import MlflowClient
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    recipe, args = setup(tmp_path, fashion_slice, "trainer.loggers=[csv, mlflow]", "trainer.epochs=1")
    folder = tmp_path / "sweep"
    result = sft("sweep", recipe, *args, "--space", tmp_path / "space.yaml", "--trials", "2", "--out", folder)
    assert result.exit_code == 0, result.output
    client = MlflowClient((folder / "mlruns").as_uri())  # the sweep's own store: one place for every trial
    experiment = client.get_experiment_by_name("sweep")
    runs = client.search_runs([experiment.experiment_id])
    parent = json.loads((folder / PARENT).read_text())["run_id"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent]
    assert len(runs) == 3 and len(children) == 2
    summary = json.loads((folder / "summary.json").read_text())
    sweep_run = client.get_run(parent)
    assert sweep_run.info.status == "FINISHED" and sweep_run.data.tags["best.trial"] == str(summary["best_trial"])
    assert sweep_run.data.metrics[f"best/{summary['monitor']}"] == summary["best_value"]
    for child in children:  # each trial's recipe as parameters, its epochs' metrics
        assert "optim.lr" in child.data.params and "val_acc" in child.data.metrics

"""`sft export` of a multi-label run: the ONNX graph gives the labels' sigmoid probabilities, matches the PyTorch
model within 1e-4 on the run's own samples (batch 1 and 32), keeps the run's thresholds, and `sft predict --engine
onnx` and the `sft serve` predictor give the labels the PyTorch model gives."""

import json

import pytest

from sft.tasks import get_task
from sft.tasks.multilabel.options import ServeOptions
from tests.conftest import sft


def test_onnx_export_matches_pytorch_and_predicts_and_serves_alike(tiny_multilabel_run, mosaics):
    run = tiny_multilabel_run
    result = sft("export", run, "--overwrite")
    assert result.exit_code == 0, result.output
    parity = json.loads((run / "export" / "parity.json").read_text())
    assert parity["passed"] and parity["max_abs_diff"] < 1e-4 and set(parity["batch_sizes"]) == {"1", "32"}
    assert parity["samples"] == 100  # val + test
    meta, info = json.loads((run / "export" / "model.json").read_text()), json.loads((run / "model.json").read_text())
    assert meta["outputs"] == ["probabilities"] and meta["thresholds"] == info["thresholds"]
    files = sorted((mosaics / "test").glob("*.png"))[:4]
    rows = {}
    for engine in ("torch", "onnx"):
        result = sft("predict", run, *files, "--engine", engine, "--format", "json")
        assert result.exit_code == 0, result.output
        rows[engine] = json.loads(result.output)
    for t, o in zip(rows["torch"], rows["onnx"]):
        assert o["file"] == t["file"] and o["labels"] == t["labels"]
        assert [float(q) for q in o["probabilities"].split("|") if q] == pytest.approx(
            [float(q) for q in t["probabilities"].split("|") if q], abs=1e-3)
    task = get_task("image-multilabel")
    predictor = task.predictor(run, ServeOptions(engine="onnx"))
    assert predictor.metadata()["thresholds"] == dict(zip(info["classes"], info["thresholds"]))
    outputs = predictor.run([predictor.prepare(f.read_bytes()) for f in files])
    for out, row in zip(outputs, rows["torch"]):
        answer = predictor.answer(out, predictor.params())
        assert "|".join(answer["labels"]) == row["labels"] and len(answer["probabilities"]) == len(info["classes"])
        guaranteed = predictor.answer(out, predictor.params(fnr=0.2))
        assert guaranteed["labels"] == [n for n, p in sorted(answer["probabilities"].items(), key=lambda x: -x[1])
                                        if p >= guaranteed["threshold"]]

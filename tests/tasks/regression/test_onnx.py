"""`sft export` of a regression run: the ONNX graph gives the targets' units, matches the PyTorch model within 1e-4
training standard deviations on the run's own samples (batch 1 and 32), and `sft predict --engine onnx` gives the
values and intervals the PyTorch model gives."""

import json

import pytest

from tests.conftest import sft


def test_onnx_export_matches_pytorch_and_predicts_alike(tiny_regression_run, angles):
    run = tiny_regression_run
    result = sft("export", run, "--overwrite")
    assert result.exit_code == 0, result.output
    parity = json.loads((run / "export" / "parity.json").read_text())
    assert parity["passed"] and parity["max_abs_diff"] < 1e-4 and set(parity["batch_sizes"]) == {"1", "32"}
    assert parity["units"] == "standard deviations of the targets" and parity["samples"] == 120  # val + test
    meta = json.loads((run / "export" / "model.json").read_text())
    assert meta["outputs"] == ["values"] and meta["targets"] == ["angle"] and "values" in meta
    files = sorted((angles / "test").glob("*.png"))[:3]
    rows = {}
    for engine in ("torch", "onnx"):
        result = sft("predict", run, *files, "--engine", engine, "--coverage", "0.9", "--format", "json")
        assert result.exit_code == 0, result.output
        rows[engine] = json.loads(result.output)
    for t, o in zip(rows["torch"], rows["onnx"]):
        assert o["file"] == t["file"] and o["angle"] == pytest.approx(t["angle"], abs=1e-3)
        assert o["angle_high"] - o["angle_low"] == pytest.approx(t["angle_high"] - t["angle_low"], abs=1e-3)

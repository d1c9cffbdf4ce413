"""`sft export` of a segmentation run: ONNX with a dynamic batch axis, per-pixel parity on the run's own images, and
`sft predict --engine onnx` giving the PyTorch path's masks."""

import json

import numpy as np
import pytest
from PIL import Image

from sft.models.export import session
from tests.conftest import sft
from tests.tasks.segmentation.conftest import recipe


def test_export_parity_and_onnx_predict(tmp_path, segmentation_set, monkeypatch):
    path = recipe(tmp_path, segmentation_set, "model:", "  backbone: timm/test_efficientnet", "  weights: none",
                  "  decoder: unet", "  decoder_channels: 32", "strategy:", "  name: full")
    assert sft("train", path, "trainer.epochs=1").exit_code == 0
    run = tmp_path / "run"
    result = sft("export", run)
    assert result.exit_code == 0, result.output
    parity = json.loads((run / "export" / "parity.json").read_text())
    assert parity["passed"] and parity["samples"] == 16 and set(parity["batch_sizes"]) == {"1", "8"}
    assert parity["pixels_per_image"] == 64 * 64 and parity["top1_agreement"] >= 0.99
    meta = json.loads((run / "export" / "model.json").read_text())
    assert meta["task"] == "segmentation" and meta["image_size"] == 64 and meta["dynamic_axes"]["input"] == {"0": "batch"}
    for batch in (1, 3):
        out = session(run / "export" / "model.onnx").run(None, {"input": np.zeros((batch, 3, 64, 64), np.float32)})[0]
        assert out.shape == (batch, len(meta["classes"]), 64, 64)
    images = sorted((segmentation_set / "test" / "images").glob("*.png"))[:2]
    masks = {}
    for engine in ("torch", "onnx"):
        result = sft("predict", run, *images, "--out", tmp_path / engine, "--engine", engine, "--format", "json")
        assert result.exit_code == 0, result.output
        masks[engine] = [np.asarray(Image.open(tmp_path / engine / f"{p.stem}.png")) for p in images]
    agree = np.mean([np.mean(a == b) for a, b in zip(masks["torch"], masks["onnx"])])
    assert agree >= 0.999
    from sft.tasks.segmentation import task as segmentation_task  # onnx reads model.json, builds no torch model
    monkeypatch.setattr(segmentation_task, "create_backbone", lambda *a, **k: pytest.fail("the torch model was built"))
    result = sft("predict", run, images[0], "--engine", "onnx", "--format", "json")
    assert result.exit_code == 0 and json.loads(result.output)[0]["file"] == str(images[0])
    refused = sft("export", run, "--format", "hf", "--out", tmp_path / "x")  # the parser knows its formats
    assert refused.exit_code == 2 and "'hf'" in refused.output and "onnx" in refused.output

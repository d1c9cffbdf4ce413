"""`sft export` of a detection run: one ONNX graph with a dynamic batch axis (box decoding, NMS and top-k inside),
checked box by box against PyTorch on the run's own images, and `sft predict --engine onnx` giving PyTorch's boxes."""

import json
import shutil

import numpy as np
import pytest
import torch

from sft.models.export import session, to_onnx
from sft.models.vision import create_backbone
from sft.tasks.detection import onnx
from sft.tasks.detection.module import auto_anchor_sizes, build_detector
from sft.tasks.detection.task import TrainedDetector
from tests.conftest import sft
from tests.tasks.detection.conftest import recipe


@pytest.fixture(scope="module")
def exported(tmp_path_factory, detection_set):
    """A 1-epoch FCOS run (the default detector) on the shipped MobileNetV2, exported through the CLI."""
    tmp_path = tmp_path_factory.mktemp("det-onnx")
    result = sft("train", recipe(tmp_path, detection_set, "model:", "  fpn_channels: 64", "strategy:",
                                 "  name: linear-probe"))
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"
    result = sft("export", run)
    assert result.exit_code == 0, result.output
    assert "boxes matched" in result.output and "mAP50 torch / onnx" in result.output
    return run


def test_export_parity_and_onnx_predict(exported, detection_set, tmp_path, monkeypatch):
    parity = json.loads((exported / "export" / "parity.json").read_text())
    assert parity["passed"] and parity["samples"] == 16 and set(parity["batch_sizes"]) == {"1", "8"}
    assert parity["boxes"] > 0 and parity["matched_share"] == 1.0 and parity["worst_iou"] >= onnx.MIN_IOU
    assert parity["worst_score_diff"] <= onnx.SCORE_TOL and parity["map50_diff"] <= onnx.MAP50_TOL
    assert parity["figures"]["passed"] is True and parity["figures"]["samples"] == 16
    meta = json.loads((exported / "export" / "model.json").read_text())
    assert meta["task"] == "detection" and meta["detector"] == "fcos" and meta["outputs"] == onnx.OUTPUTS
    assert all(meta["dynamic_axes"][name] == {"0": "batch"} for name in ["input", *onnx.OUTPUTS])
    images = sorted((detection_set / "test" / "images").glob("*.png"))[:3]
    rows = {}
    for engine in ("torch", "onnx"):
        result = sft("predict", exported, *images, "--engine", engine, "--format", "json", "--score", "0.05")
        assert result.exit_code == 0, result.output
        rows[engine] = [r for r in json.loads(result.output) if r["class"] is not None]
    assert len(rows["torch"]) > 0 and len(rows["torch"]) == len(rows["onnx"])
    for a in rows["torch"]:  # in any order: scores a few 1e-7 apart may swap
        assert any(a["file"] == b["file"] and a["class"] == b["class"] and abs(a["score"] - b["score"]) <= 1e-3
                   and np.allclose(a["xyxy"], b["xyxy"], atol=0.11) for b in rows["onnx"])  # rows round to 0.1 px
    from sft.tasks.detection import task as detection_task  # onnx builds no torch model
    monkeypatch.setattr(detection_task, "create_backbone", lambda *a, **k: pytest.fail("the torch model was built"))
    result = sft("predict", exported, images[0], "--engine", "onnx", "--format", "json")
    assert result.exit_code == 0 and json.loads(result.output)[0]["file"] == str(images[0])


def test_the_batch_axis_is_dynamic(exported):
    """Traced at batch 2, run at 1 and 3: each image gets the same answer alone as in the batch."""
    model = session(exported / "export" / "model.onnx")
    x = np.random.default_rng(0).random((3, 3, 64, 64), dtype=np.float32)
    together = model.run(None, {"input": x})
    alone = [model.run(None, {"input": x[i:i + 1]}) for i in range(3)]
    assert together[0].shape == (3, 100, 4) and together[2].dtype == np.int64
    for i in range(3):
        assert np.array_equal(together[2][i], alone[i][2][0])
        assert np.allclose(together[0][i], alone[i][0][0], atol=1e-3)
        assert np.allclose(together[1][i], alone[i][1][0], atol=1e-5)


def test_a_swapped_or_damaged_model_is_refused(exported, detection_set, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(exported, run)
    image = sorted((detection_set / "test" / "images").glob("*.png"))[0]
    model = run / "export" / "model.onnx"
    for damage in (lambda data: data[:-10], lambda data: data + b"\0"):
        model.write_bytes(damage((exported / "export" / "model.onnx").read_bytes()))
        result = sft("predict", run, image, "--engine", "onnx")
        assert result.exit_code == 2 and "not the file this export wrote" in result.output


def test_a_failing_parity_writes_nothing_unless_forced(exported, tmp_path, monkeypatch):
    forward = onnx.OnnxDetector.forward

    def shifted(self, x):  # boxes 1 px off: IoU well under 0.99 for these small boxes
        return [d | {"boxes": d["boxes"] + 1.0} for d in forward(self, x)]
    monkeypatch.setattr(onnx.OnnxDetector, "forward", shifted)
    monkeypatch.setattr(onnx, "PARITY_IMAGES", 4)  # enough to fail: the check's cost is not what is tested here
    out = tmp_path / "x"
    result = sft("export", exported, "--out", out)
    assert result.exit_code == 2 and "nothing written" in result.output and "worst IoU" in result.output
    assert not out.exists()
    result = sft("export", exported, "--out", out, "--force")
    assert result.exit_code == 0 and "parity check failed" in result.output
    parity = json.loads((out / "parity.json").read_text())
    assert not parity["passed"] and parity["matched_share"] < 1 and (out / "model.onnx").is_file()


@pytest.mark.parametrize("kind", ["fcos", "retinanet", "fasterrcnn", "ssdlite"])
def test_every_detector_exports_with_its_own_post_processing(kind, tmp_path):
    """An untrained detector of each kind (PyTorch's default initialisation, which spreads the scores more than
    torchvision's): the graph gives torchvision's boxes, in PyTorch and through onnxruntime, at batch sizes other than
    the traced one."""
    torch.manual_seed(0)
    backbone = create_backbone("timm/test_efficientnet", None, out="maps")
    anchors = auto_anchor_sizes(np.array([10.0, 20.0, 30.0]), kind, backbone.reductions, backbone.module)
    head = build_detector(kind, backbone.module, backbone.channels, 3, fpn_channels=32, anchor_sizes=anchors,
                          size=64, preprocess=backbone.preprocess, score_threshold=0.05, detections=30)
    for m in head.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            m.reset_parameters()
    model = TrainedDetector(backbone.module, head).eval()
    graph = onnx.DetectionGraph(model, 64, 3)
    x = torch.rand(3, 3, 64, 64)
    to_onnx(graph, (x[:2],), tmp_path / "model.onnx", ["input"], onnx.OUTPUTS,
            {name: {0: "batch"} for name in ["input", *onnx.OUTPUTS]})
    exported = onnx.OnnxDetector(tmp_path / "model.onnx")
    with torch.no_grad():
        reference, mine = model(x), graph(x)
        answers = {size: [d for i in range(0, 3, size) for d in exported(x[i:i + size])] for size in (1, 3)}
    assert sum(len(r["boxes"]) for r in reference) > 0
    for i, r in enumerate(reference):
        real = mine[2][i] >= 0
        graph_found = {"boxes": mine[0][i][real], "scores": mine[1][i][real], "labels": mine[2][i][real]}
        rows = onnx.match_image(r, graph_found, -1.0, 10**9)  # nothing borderline: the same boxes, in PyTorch
        assert len(rows) == int(real.sum()) and all(iou > 0.9999 and diff < 1e-5 for iou, diff in rows)
        for size in (1, 3):
            rows = onnx.match_image(r, answers[size][i], -1.0, 10**9)
            assert len(answers[size][i]["boxes"]) == len(rows)
            assert all(iou >= onnx.MIN_IOU and diff <= onnx.SCORE_TOL for iou, diff in rows)


def test_a_module_that_is_no_known_detector_is_refused_by_name():
    from sft.errors import UserError
    with pytest.raises(UserError, match="fcos, retinanet, ssdlite, fasterrcnn"):
        onnx.kind_of(torch.nn.Identity())

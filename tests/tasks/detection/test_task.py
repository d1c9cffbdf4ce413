"""Detection through `sft train / eval / predict` on real Fashion-MNIST composites, and its three detectors."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from sft.models.vision import create_backbone
from sft.tasks.base import score_batches
from sft.tasks.detection.module import auto_anchor_sizes, build_detector, from_detector, to_detector
from tests.conftest import sft
from tests.tasks.detection.conftest import recipe


@pytest.fixture(scope="module")
def frozen_run(tmp_path_factory, detection_set):
    """ImageNet MobileNetV2 (shipped), frozen: only the FPN and the FCOS heads train."""
    tmp_path = tmp_path_factory.mktemp("det-run")
    result = sft("train", recipe(tmp_path, detection_set, "model:", "  fpn_channels: 64", "strategy:",
                                 "  name: linear-probe"))
    assert result.exit_code == 0, result.output
    return tmp_path / "run"


def test_a_frozen_backbone_trains_its_heads_and_stays_pretrained(frozen_run):
    metrics = json.loads((frozen_run / "metrics.json").read_text())
    assert 0 <= metrics["val_map50"] <= 1 and 0 <= metrics["test_map"] <= 1 and metrics["epochs"] == 1
    assert metrics["boxes"]["train"]["images"] == 16 and metrics["anchor_sizes"] == [8.0, 16.0, 32.0, 64.0, 128.0]
    if metrics["val_map50"] < 0.05:  # one epoch from scratch heads: the run says what it checked
        assert "box sizes against the anchors" in metrics["diagnosis"]["checked"]
    weights = load_file(frozen_run / "model.safetensors")
    shipped = create_backbone("torchvision/mobilenet_v2", "imagenet", out="maps").module.state_dict()
    assert all(torch.equal(weights[f"backbone.{k}"], v) for k, v in shipped.items())  # BatchNorm statistics too
    assert any(k.startswith("head.backbone.fpn.") for k in weights) and any(k.startswith("head.head.")
                                                                             for k in weights)


def test_eval_and_predict_a_finished_run(frozen_run, detection_set, tmp_path, monkeypatch):
    from sft.tasks.detection.task import Detection
    calls, load = [], Detection.load_run

    def counted(self, run_dir, info, engine="torch"):
        model = load(self, run_dir, info, engine)
        model.register_forward_hook(lambda *_: calls.append(1))
        return model
    monkeypatch.setattr(Detection, "load_run", counted)
    result = sft("eval", frozen_run, "--top-losses", "2")
    assert result.exit_code == 0, result.output
    assert len(calls) == 1  # one batch of 8: the report draws the worst images from that pass, not a second run
    worst = json.loads((frozen_run / "eval" / "results.json").read_text())["worst"]
    assert len(worst) == 2 and all("boxes" in row for row in worst)
    metrics = json.loads((frozen_run / "eval" / "metrics.json").read_text())
    trained = json.loads((frozen_run / "metrics.json").read_text())
    assert metrics["samples"] == 8 and abs(metrics["map"] - trained["test_map"]) < 1e-6
    page = (frozen_run / "eval" / "report.html").read_text()
    assert all(f"id={s}" in page for s in ("per-class", "pr", "confusion", "worst"))
    images = sorted((detection_set / "test" / "images").glob("*.png"))[:2]
    result = sft("predict", frozen_run, *images, "--out", tmp_path / "found", "--format", "json", "--score", "0")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert {r["file"] for r in rows} == {str(p) for p in images}
    assert all(len(r["xyxy"]) == 4 and 0 <= r["score"] <= 1 for r in rows if r["class"] is not None)
    drawn = Image.open(tmp_path / "found" / f"{images[0].stem}.png")
    assert drawn.size == (96, 96)  # boxes are drawn on the image at its own size
    assert json.loads((tmp_path / "found" / f"{images[0].stem}.json").read_text()) == [
        r for r in rows if r["file"] == str(images[0]) and r["class"] is not None]
    high = json.loads(sft("predict", frozen_run, *images, "--format", "json", "--score", "1").output)
    assert all(r["class"] is None for r in high)


def test_flip_tta_merges_the_boxes_of_both_views(frozen_run, detection_set, tmp_path):
    result = sft("eval", frozen_run, "--tta", "flip", "--out", tmp_path / "tta", "--top-losses", "0")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "tta" / "metrics.json").read_text())["samples"] == 8
    images = sorted((detection_set / "test" / "images").glob("*.png"))[:2]
    plain = json.loads(sft("predict", frozen_run, *images, "--format", "json", "--score", "0").output)
    both = json.loads(sft("predict", frozen_run, *images, "--format", "json", "--score", "0", "--tta", "flip").output)
    assert both != plain and all(0 <= r["score"] <= 1 for r in both if r["class"] is not None)
    assert max(r["score"] for r in both if r["class"]) >= max(r["score"] for r in plain if r["class"])


def test_full_fine_tune_of_faster_rcnn_and_errors(tmp_path, detection_set):
    path = recipe(tmp_path, detection_set, "model:", "  backbone: timm/test_efficientnet", "  weights: none",
                  "  detector: fasterrcnn", "  fpn_channels: 64", "strategy:", "  name: gradual")
    result = sft("train", path)
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["strategy"] == "gradual" and len(metrics["anchor_sizes"]) == 4
    result = sft("train", path, "strategy.name=lora", f"run_dir={tmp_path / 'other'}")
    assert result.exit_code == 2 and "strategy.name (line 20)" in result.output and "got 'lora'" in result.output
    result = sft("train", path, "model.anchor_sizes=[8, 16]", f"run_dir={tmp_path / 'other'}")
    assert result.exit_code == 2 and "4 FPN levels" in result.output and not (tmp_path / "other").exists()


@pytest.mark.parametrize("kind", ["fcos", "retinanet", "fasterrcnn", "ssdlite"])
def test_detectors_train_on_empty_and_full_targets_and_return_zero_based_classes(kind):
    backbone = create_backbone("timm/test_efficientnet", None, out="maps")
    anchors = auto_anchor_sizes(np.array([10.0, 20.0, 30.0]), kind, backbone.reductions)
    detector = build_detector(kind, backbone.module, backbone.channels, 3, fpn_channels=64, anchor_sizes=anchors,
                              size=64, preprocess=backbone.preprocess, score_threshold=0.0, detections=20)
    assert not any(p is q for p in detector.parameters() for q in backbone.module.parameters())
    targets = [{"boxes": torch.tensor([[4.0, 4, 30, 30]]), "labels": torch.tensor([0])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    losses = detector(list(torch.rand(2, 3, 64, 64)), to_detector(targets))
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    detector.eval()
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        found = from_detector(detector(images))
        listed = from_detector(detector(list(images)))  # torchvision's own input transform
    assert all(((f["labels"] >= 0) & (f["labels"] < 3)).all() for f in found)
    for f, g in zip(found, listed):
        assert f.keys() == g.keys() and all(torch.allclose(f[k], g[k], atol=1e-5) for k in f)
    assert detector.transform.min_size == (64,) and detector.transform.max_size == 64  # not torchvision's 800 px


def test_recipe_keys_and_a_checkpoint_of_another_class_count(tmp_path):
    result = sft("recipe", "--task", "detection")
    assert result.exit_code == 0 and "detector: fcos" in result.output and "precision: '32'" in result.output
    from safetensors.torch import save_file
    from sft.tasks.detection.starting_weights import load_detector_start
    backbone = create_backbone("timm/test_efficientnet", None, out="maps")
    make = lambda classes: build_detector(  # noqa: E731
        "retinanet", backbone.module, backbone.channels, classes, fpn_channels=64, anchor_sizes=[8, 16, 32, 64, 128],
        size=64, preprocess=backbone.preprocess, score_threshold=0.05, detections=10)
    pretrained, mine = make(80), make(3)
    save_file({k: v.contiguous() for k, v in pretrained.state_dict().items()}, tmp_path / "coco.safetensors")
    load = lambda head, name: load_detector_start(  # noqa: E731
        backbone.module, head, str(tmp_path / name), "retinanet")
    counts = load(mine, "coco.safetensors")
    assert counts["head"] > 0 and len(counts["class_sized"]) == 2  # the class logits' weight and bias
    fpn = "backbone.fpn.inner_blocks.0.0.weight"
    assert torch.equal(mine.state_dict()[fpn], pretrained.state_dict()[fpn])
    # torchvision's references save {"model": state, "args": Namespace}: the state is used, the Namespace refused
    torch.save({"model": pretrained.state_dict()}, tmp_path / "wrapped.pth")
    assert load(make(3), "wrapped.pth")["head"] == counts["head"]
    import argparse
    from sft.errors import UserError
    torch.save({"model": pretrained.state_dict(), "args": argparse.Namespace(lr=0.1)}, tmp_path / "refs.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a pickle")
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
    torch.save({"model": 3}, tmp_path / "number.pth")
    for name in ("refs.pth", "junk.pth", "junk.safetensors", "number.pth"):
        with pytest.raises(UserError, match=name) as raised:
            load(make(3), name)
        assert "weights_only=False" not in str(raised.value)


class Fixed(torch.nn.Module):
    """Finds each image's box, with class 0."""
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return [{"boxes": torch.tensor([[4.0, 4.0, 20.0, 20.0]]), "scores": torch.tensor([0.9]),
                 "labels": torch.tensor([0])} for _ in x]


def fixed_data() -> list:
    """Five images whose one box Fixed finds; the odd ones are class 1, so Fixed gets those wrong."""
    return [(torch.rand(3, 32, 32), {"boxes": torch.tensor([[4.0, 4.0, 20.0, 20.0]]),
                                     "labels": torch.tensor([i % 2])}) for i in range(5)]


def test_evaluate_matches_only_when_the_report_needs_it(monkeypatch):
    """final_metrics asks for the mAP alone: no per-image matching; the report's evaluation matches on the CPU."""
    from sft.tasks.detection import metrics
    from sft.tasks.detection.data import collate
    data = fixed_data()
    devices = []
    real = metrics.match
    monkeypatch.setattr(metrics, "match", lambda p, t, s: devices.append(p["boxes"].device) or real(p, t, s))
    brief = score_batches(Fixed(), data, metrics.DetectionScorer(["a", "b"]), batch_size=2, collate_fn=collate)
    assert brief["samples"] == 5 and "confusion" not in brief and devices == []
    full = score_batches(Fixed(), data, metrics.DetectionScorer(["a", "b"], extended=True, top_n=2), batch_size=2,
                         collate_fn=collate)
    assert full["samples"] == 5 and full["map50"] == brief["map50"] and len(devices) == 5
    assert all(d.type == "cpu" for d in devices) and [w["index"] for w in full["worst"]] == [1, 3]
    assert full["confusion"][0][0] == 3 and full["confusion"][1][0] == 2


def test_the_report_draws_the_worst_images_from_the_evaluation_pass(monkeypatch):
    """`sft eval` runs the model once per batch: the report draws the worst images' boxes kept from that pass."""
    from types import SimpleNamespace
    from sft.tasks.detection import report
    from sft.tasks.detection.data import DetectionSamples, collate
    from sft.tasks.detection.metrics import DetectionScorer
    model, data, calls = Fixed(), fixed_data(), []
    model.register_forward_hook(lambda *_: calls.append(1))
    result = score_batches(model, data, DetectionScorer(["a", "b"], extended=True, top_n=2), batch_size=2,
                           collate_fn=collate)
    assert len(calls) == 3 and [w["index"] for w in result["worst"]] == [1, 3]
    assert result["worst"][0] | {"index": 0} == {"index": 0, "errors": 2, "boxes": [[4.0, 4.0, 20.0, 20.0]],
                                                  "scores": [0.9], "labels": [0]}
    json.dumps(result)  # results.json holds them
    drawn, real = [], report.draw
    monkeypatch.setattr(report, "draw", lambda image, boxes, labels, colour: drawn.append(
        (colour, boxes.tolist(), labels)) or real(image, boxes, labels, colour))
    samples = DetectionSamples([f"{i}.png" for i in range(5)], np.zeros(5), ["a", "b"], [str(i) for i in range(5)],
                               "image", [t["boxes"].numpy() for _, t in data], [t["labels"].numpy() for _, t in data],
                               [(32, 32)] * 5)
    page = report.render_report(Path("run"), "data", SimpleNamespace(classes=["a", "b"]), samples, data, result)
    assert len(calls) == 3 and "1.png: 2 errors" in page and "3.png: 2 errors" in page
    assert [d for d in drawn if d[0] == "red"] == [("red", [[4.0, 4.0, 20.0, 20.0]], ["a 0.90"])] * 2


def test_faster_rcnn_reads_torchvision_maps_per_backbone_kind():
    """ResNet: layer1-4 + pool, one anchor size per level; torchvision's MobileNetV3: its two stride-32 maps + pool,
    five octaves per level; others: the last three maps + pool, three scales. Auto anchors are sized by the trunk;
    FCOS's stay its strides."""
    from types import SimpleNamespace

    from sft.tasks.detection.module import Detector
    from sft.tasks.detection.recipe import DetectionRecipe
    from sft.training.strategies import Schedule
    sides = np.array([10.0, 20.0, 30.0])
    cases = {"torchvision/resnet18": ([10.08, 20.16, 40.32, 80.63, 161.27], 3),
             "torchvision/mobilenet_v3_large": ([10.08] * 3, 15), "timm/test_efficientnet": (None, 9)}
    for name, (sizes, per_location) in cases.items():
        backbone = create_backbone(name, None, out="maps")
        sized = auto_anchor_sizes(sides, "fasterrcnn", backbone.reductions, backbone.module)  # as the task does
        blind = auto_anchor_sizes(sides, "fasterrcnn", backbone.reductions)  # the last three maps' rule
        assert auto_anchor_sizes(sides, "fcos", backbone.reductions, backbone.module) == [8.0, 16, 32, 64, 128]
        recipe = DetectionRecipe(model={"backbone": name, "weights": "none", "detector": "fasterrcnn",
                                        "fpn_channels": 128})
        splits = SimpleNamespace(classes=["a", "b"], train=SimpleNamespace(box_sides=lambda size: sides))
        detector = Detector(backbone, splits, Schedule(recipe.strategy, backbone.groups), recipe, 64, sized)
        assert detector.anchor_sizes == sized == (sizes or blind) and len(blind) == 4
        assert detector.head.rpn.anchor_generator.num_anchors_per_location()[0] == per_location
        assert len(detector.head.backbone(torch.rand(1, 3, 64, 64))) == len(detector.anchor_sizes)

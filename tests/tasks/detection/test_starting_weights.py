"""Detector checkpoints from a file (torchvision detection state dicts) or a torchvision weights name: what loads,
what stays initialised, and the refusals that name what does not fit. No COCO checkpoint ships, so the files are
torchvision detectors built with random weights (ResNet-18 trunks: torchvision's resnet50 ones, smaller). Faster
R-CNN's proof that maps, anchors and heads line up: sft's detector with a torchvision file's tensors finds the same
boxes as torchvision's detector (91 classes, eval mode, one image)."""

import pytest
import torch
from safetensors.torch import load_file
from torchvision.models.detection import (
    FCOS,
    FasterRCNN,
    RetinaNet,
    fasterrcnn_mobilenet_v3_large_fpn,
)
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from sft.errors import UserError
from sft.models.vision import create_backbone
from sft.tasks.detection.starting_weights import load_detector_start
from sft.tasks.detection.module import build_detector, fpn_levels
from tests.conftest import sft
from tests.tasks.detection.conftest import recipe


def torchvision_detector(kind: str) -> torch.nn.Module:
    """What torchvision's fcos/retinanet/fasterrcnn_resnet50_fpn build, on ResNet-18, 91 COCO classes."""
    torch.manual_seed(0)
    if kind == "fasterrcnn":
        return FasterRCNN(resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5), 91)
    body = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5, returned_layers=[2, 3, 4],
                               extra_blocks=LastLevelP6P7(256, 256))
    return (FCOS if kind == "fcos" else RetinaNet)(body, 91)


@pytest.fixture(scope="module")
def fcos_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "fcos_coco.pth"
    model = torchvision_detector("fcos")
    torch.save(model.state_dict(), path)
    return path, model.state_dict()


def ours(detector="fcos", backbone="torchvision/resnet18", fpn=256, classes=3, sizes=None, size=64, score=0.05,
         detections=10):
    trunk = create_backbone(backbone, None, out="maps")
    levels, _ = fpn_levels(detector, trunk.module, trunk.channels)
    sizes = sizes or [8.0, 16, 32, 64, 128][:levels]
    head = build_detector(detector, trunk.module, trunk.channels, classes, fpn_channels=fpn, anchor_sizes=sizes,
                          size=size, preprocess=trunk.preprocess, score_threshold=score, detections=detections)
    return trunk, head


def test_a_torchvision_fcos_file_loads_trunk_fpn_and_box_regression(fcos_file):
    path, saved = fcos_file
    trunk, head = ours()
    counts = load_detector_start(trunk.module, head, str(path), "fcos", trunk.name)
    assert counts["class_sized"] == ["head.classification_head.cls_logits.weight",
                                     "head.classification_head.cls_logits.bias"] and counts["skipped"] == []
    mine = trunk.module.state_dict()
    body = {k: v for k, v in saved.items() if k.startswith("backbone.body.")}
    assert counts["trunk"] == len(body) and all(torch.equal(mine["model." + k[14:]], v) for k, v in body.items())
    own = head.state_dict()
    shared = [k for k in saved if k in own and k not in counts["class_sized"]]
    assert any(k.startswith("backbone.fpn.") for k in shared) and "head.regression_head.bbox_reg.weight" in shared
    assert counts["head"] == len(shared) and all(torch.equal(own[k], saved[k]) for k in shared)
    assert own["head.classification_head.cls_logits.weight"].shape[0] == 4  # 3 classes + the background


def test_a_run_from_the_file_starts_from_its_tensors(fcos_file, detection_set, tmp_path):
    """Frozen backbone: the finished run's trunk is the file's, tensor for tensor."""
    path, saved = fcos_file
    result = sft("train", recipe(tmp_path, detection_set, "model:", "  backbone: torchvision/resnet18",
                                 "  weights: none", "  fpn_channels: 256", f"  checkpoint: {path}", "strategy:",
                                 "  name: linear-probe"))
    assert result.exit_code == 0, result.output
    state = load_file(tmp_path / "run" / "model.safetensors")
    body = {k[14:]: v for k, v in saved.items() if k.startswith("backbone.body.")}
    assert all(torch.equal(state["backbone.model." + k], v) for k, v in body.items())


def test_a_torchvision_weights_name_is_fetched_through_torchvision(fcos_file, monkeypatch):
    from torchvision.models._api import WeightsEnum
    _, saved = fcos_file
    monkeypatch.setattr(WeightsEnum, "get_state_dict", lambda self, **kw: saved)  # offline: the file's tensors
    trunk, head = ours()
    counts = load_detector_start(trunk.module, head, "FCOS_ResNet50_FPN_Weights.COCO_V1", "fcos", trunk.name)
    assert counts["source"] == "FCOS_ResNet50_FPN_Weights.COCO_V1" and counts["trunk"] > 0
    with pytest.raises(UserError, match="neither a file nor a torchvision weights name"):
        load_detector_start(trunk.module, head, "FCOS_ResNet50_FPN_Weights.NOPE", "fcos", trunk.name)


def test_files_that_do_not_fit_name_what_differs(fcos_file, tmp_path):
    path, _ = fcos_file
    torch.save(torchvision_detector("retinanet").state_dict(), tmp_path / "retinanet.pth")
    three = FasterRCNN(resnet_fpn_backbone(backbone_name="resnet18", weights=None, returned_layers=[2, 3, 4]), 91)
    torch.save(three.state_dict(), tmp_path / "three.pth")
    v2 = {**three.state_dict(), "backbone.fpn.inner_blocks.0.1.weight": torch.ones(256)}  # v2's BatchNorm FPN
    torch.save(v2, tmp_path / "v2.pth")
    faster = ours("fasterrcnn")
    cases = [
        (ours("retinanet"), path, "retinanet", "holds a fcos detector.*model.detector: fcos"),
        (ours(fpn=128), path, "fcos", "FPN is 256 wide, this one 128 .set model.fpn_channels: 256"),
        (ours(backbone="timm/test_efficientnet"), path, "fcos",
         "backbone does not fit model.backbone timm/test_efficientnet"),
        (faster, tmp_path / "three.pth", "fasterrcnn", "FPN reads 3 backbone maps, this detector's 4"),
        (faster, tmp_path / "v2.pth", "fasterrcnn", "fasterrcnn_resnet50_fpn_v2.*ResNet50_FPN_Weights"),
    ]
    for (trunk, head), file, detector, message in cases:
        with pytest.raises(UserError, match=message):
            load_detector_start(trunk.module, head, str(file), detector, trunk.name)
    trunk, head = ours("retinanet")  # the right detector: loads, COCO's class logits left as initialised
    counts = load_detector_start(trunk.module, head, str(tmp_path / "retinanet.pth"), "retinanet", trunk.name)
    assert len(counts["class_sized"]) == 2 and counts["skipped"] == []


def spread(theirs: torch.nn.Module, size: int) -> None:
    """Random weights give near-constant maps and tied scores; BatchNorm statistics of a few random images make the
    detections depend on the image (and their order strict)."""
    for m in theirs.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad():
        theirs.train()
        theirs.backbone.body(torch.randn(4, 3, size, size))
    theirs.eval()


def mobilenet_v3_file(tmp_path, size):
    """torchvision's fasterrcnn_mobilenet_v3_large_fpn (random weights, COCO's 91 classes) run at sft's settings for
    `size` px inputs, and its state dict saved."""
    torch.manual_seed(0)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    theirs = fasterrcnn_mobilenet_v3_large_fpn(
        weights=None, weights_backbone=None, num_classes=91, min_size=size, max_size=size, image_mean=mean,
        image_std=std, rpn_pre_nms_top_n_test=300, rpn_post_nms_top_n_test=150, rpn_score_thresh=0.0,
        box_score_thresh=0.0, box_detections_per_img=20)
    spread(theirs, size)
    torch.save(theirs.state_dict(), tmp_path / "fasterrcnn_mobilenet_v3.pth")
    return theirs, tmp_path / "fasterrcnn_mobilenet_v3.pth"


def same_detections(mine: dict, theirs: dict) -> float:
    """The largest difference between two detectors' detections of one image (boxes and scores, same labels)."""
    assert len(theirs["boxes"]) > 0 and torch.equal(mine["labels"], theirs["labels"])
    assert theirs["scores"].unique().numel() == len(theirs["scores"])  # no ties: the order means something
    return max((mine["boxes"] - theirs["boxes"]).abs().max().item(),
               (mine["scores"] - theirs["scores"]).abs().max().item())


def test_a_torchvision_mobilenet_v3_faster_rcnn_loads_whole_and_finds_the_same_boxes(tmp_path):
    size = 128
    theirs, path = mobilenet_v3_file(tmp_path, size)
    trunk, head = ours("fasterrcnn", "torchvision/mobilenet_v3_large", classes=90, sizes=[32.0] * 3, size=size,
                       score=0.0, detections=20)
    counts = load_detector_start(trunk.module, head, str(path), "fasterrcnn", trunk.name)
    assert counts["class_sized"] == [] and counts["skipped"] == []
    saved, own, body = theirs.state_dict(), head.state_dict(), trunk.module.state_dict()
    assert counts["trunk"] + counts["head"] == len(saved)
    assert all(torch.equal(body["model.features." + k[14:]], v) for k, v in saved.items()
               if k.startswith("backbone.body."))
    assert all(torch.equal(own[k], v) for k, v in saved.items() if not k.startswith("backbone.body."))
    trunk.module.eval(), head.eval()
    image = torch.rand(3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        normalised = theirs.transform([image])[0].tensors
        maps, their_maps = head.backbone(normalised), theirs.backbone(normalised)
        assert list(maps) == list(their_maps) == ["0", "1", "pool"]  # features.13 and .16, both stride 32, + pool
        assert max((maps[k] - their_maps[k]).abs().max().item() for k in maps) < 1e-4
        assert (head.backbone(normalised.flip(-1))["0"] - maps["0"]).abs().max() > 0.1  # the maps see the image
        assert same_detections(head([image])[0], theirs([image])[0]) < 1e-3
    mine3 = ours("fasterrcnn", "torchvision/mobilenet_v3_large", classes=3, sizes=[32.0] * 3)  # another class count
    counts = load_detector_start(mine3[0].module, mine3[1], str(path), "fasterrcnn", "mobilenet_v3_large")
    assert sorted(counts["class_sized"]) == sorted(k for k in saved if k.startswith("roi_heads.box_predictor."))
    assert counts["skipped"] == [] and mine3[1].roi_heads.box_predictor.cls_score.out_features == 4


def test_a_torchvision_resnet_fpn_faster_rcnn_finds_the_same_boxes(tmp_path):
    """fasterrcnn_resnet50_fpn's layout on ResNet-18: layer1-4 (strides 4-32) + pool, one anchor size per level."""
    size = 96
    torch.manual_seed(0)
    body = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5,
                               norm_layer=torch.nn.BatchNorm2d)  # not frozen: spread() sets its statistics
    theirs = FasterRCNN(body, 91, min_size=size, max_size=size, rpn_pre_nms_top_n_test=300,
                        rpn_post_nms_top_n_test=150, box_score_thresh=0.0, box_detections_per_img=20)
    spread(theirs, size)
    torch.save(theirs.state_dict(), tmp_path / "fasterrcnn_resnet.pth")
    trunk, head = ours("fasterrcnn", classes=90, sizes=[32.0, 64, 128, 256, 512], size=size, score=0.0,
                       detections=20)
    counts = load_detector_start(trunk.module, head, str(tmp_path / "fasterrcnn_resnet.pth"), "fasterrcnn",
                                      trunk.name)
    assert counts["class_sized"] == counts["skipped"] == [] and counts["trunk"] + counts["head"] == len(
        theirs.state_dict())
    trunk.module.eval(), head.eval()
    image = torch.rand(3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert list(head.backbone(image[None])) == ["0", "1", "2", "3", "pool"]
        assert same_detections(head([image])[0], theirs([image])[0]) < 1e-3

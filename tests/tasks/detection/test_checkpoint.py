"""Detector checkpoints from a file (torchvision detection state dicts) or a torchvision weights name: what loads,
what stays initialised, and the refusals that name what does not fit. No COCO checkpoint ships, so the files are
torchvision detectors built with random weights (ResNet-18 trunks: torchvision's resnet50 ones, smaller)."""

import pytest
import torch
from safetensors.torch import load_file
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from sft.errors import UserError
from sft.models.vision import create_backbone
from sft.tasks.detection.checkpoint import load_detector_checkpoint
from sft.tasks.detection.module import build_detector
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


def ours(detector="fcos", backbone="torchvision/resnet18", fpn=256, classes=3):
    trunk = create_backbone(backbone, None, out="maps")
    sizes = [8.0, 16, 32, 64, 128][:5 if detector in ("fcos", "retinanet") else 4]
    head = build_detector(detector, trunk.module, trunk.channels, classes, fpn_channels=fpn, anchor_sizes=sizes,
                          size=64, preprocess=trunk.preprocess, score_threshold=0.05, detections=10)
    return trunk, head


def test_a_torchvision_fcos_file_loads_trunk_fpn_and_box_regression(fcos_file):
    path, saved = fcos_file
    trunk, head = ours()
    counts = load_detector_checkpoint(trunk.module, head, str(path), "fcos", trunk.name)
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
    counts = load_detector_checkpoint(trunk.module, head, "FCOS_ResNet50_FPN_Weights.COCO_V1", "fcos", trunk.name)
    assert counts["source"] == "FCOS_ResNet50_FPN_Weights.COCO_V1" and counts["trunk"] > 0
    with pytest.raises(UserError, match="neither a file nor a torchvision weights name"):
        load_detector_checkpoint(trunk.module, head, "FCOS_ResNet50_FPN_Weights.NOPE", "fcos", trunk.name)


def test_files_that_do_not_fit_name_what_differs(fcos_file, tmp_path):
    path, _ = fcos_file
    for kind in ("retinanet", "fasterrcnn"):
        torch.save(torchvision_detector(kind).state_dict(), tmp_path / f"{kind}.pth")
    cases = [
        (ours("retinanet"), path, "retinanet", "holds a fcos detector.*model.detector: fcos"),
        (ours(fpn=128), path, "fcos", "FPN is 256 wide, this one 128 .set model.fpn_channels: 256"),
        (ours(backbone="timm/test_efficientnet"), path, "fcos",
         "backbone does not fit model.backbone timm/test_efficientnet"),
        (ours("fasterrcnn"), tmp_path / "fasterrcnn.pth", "fasterrcnn", "FPN reads 4 backbone maps, this detector's 3"),
    ]
    for (trunk, head), file, detector, message in cases:
        with pytest.raises(UserError, match=message):
            load_detector_checkpoint(trunk.module, head, str(file), detector, trunk.name)
    trunk, head = ours("retinanet")  # the right detector: loads, COCO's class logits left as initialised
    counts = load_detector_checkpoint(trunk.module, head, str(tmp_path / "retinanet.pth"), "retinanet", trunk.name)
    assert len(counts["class_sized"]) == 2 and counts["skipped"] == []

"""Detector checkpoints (e.g. COCO-pretrained) loaded into sft's detector before training: a torchvision detection
state dict from a file, or, online, a torchvision weights enum name (`FCOS_ResNet50_FPN_Weights.COCO_V1`).

torchvision names its detectors' tensors `backbone.body.*` (the trunk: an IntermediateLayerGetter over the ImageNet
model, or over its `features`), `backbone.fpn.*` and the heads (`head.*`, `rpn.*`, `roi_heads.*`). sft's detector keeps
the trunk apart (the backbone's own names under `model.`) and the FPN and heads under the same names as torchvision,
so the file maps on by name: the trunk and the FPN must fit whole (a partly loaded trunk would train from a
mixture without saying so), the heads load where name and shape fit, and the class-sized layers (another class
count, e.g. COCO's 91) stay as initialised, as in torchvision's fine-tuning tutorial. A file that does not fit the
recipe (another detector, backbone, FPN width or number of maps) is a UserError naming what differs.

What fits (COCO_V1 files of these builders, or their weights names online), with `model.fpn_channels: 256`:
- `fcos_resnet50_fpn`, `retinanet_resnet50_fpn`, `fasterrcnn_resnet50_fpn`: `model.backbone: torchvision/resnet50`;
- `fasterrcnn_mobilenet_v3_large_fpn` and `..._320_fpn` (the same tensors): `torchvision/mobilenet_v3_large`.
sft's Faster R-CNN reads the maps, anchors per location and box-head width torchvision's does for these backbones
(sft.tasks.detection.module), so all but its class-sized box predictor loads. Not `fasterrcnn_resnet50_fpn_v2`
(BatchNorm in its FPN, a four-conv box head, a two-conv RPN head: refused, naming the file to use instead).
torchvision's COCO files were trained with frozen BatchNorm: its MobileNetV3 Faster R-CNN with eps 1e-5, which sft's
Faster R-CNN uses on that backbone too (the classifier's is 1e-3); fasterrcnn_resnet50_fpn's COCO_V1 with eps 0, where
sft keeps ResNet's 1e-5, a difference only for channels of near-zero variance.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from sft.errors import UserError
from sft.models.starting_weights import fit_whole, read_state_dict

BODY = "backbone.body."
FPN = "backbone.fpn."
TRUNK_PREFIXES = ("model.", "model.features.")  # torchvision's body wraps the model itself or its `features`
CLASS_SIZED = ("head.classification_head.cls_logits.", "roi_heads.box_predictor.",
               "head.classification_head.module_list.")  # SSD's: only the last conv of each level differs in shape
ENUM = re.compile(r"^[A-Za-z0-9_]+_Weights\.[A-Za-z0-9_]+$")
HINT = ("model.checkpoint takes a torchvision detection state dict (.pth/.pt, or .safetensors; a training "
        "checkpoint {\"model\": state} works too) or, online, a torchvision weights name such as "
        "FCOS_ResNet50_FPN_Weights.COCO_V1")


def read_checkpoint(source: str) -> tuple[str, dict[str, torch.Tensor]]:
    """(what to call it in messages, its state dict) of a file or a torchvision weights enum name."""
    file = Path(source).expanduser()
    if not file.exists() and ENUM.match(source):
        return source, _torchvision_weights(source)
    return str(file), read_state_dict(file, HINT)


def _torchvision_weights(name: str) -> dict[str, torch.Tensor]:
    """torchvision's weights enum `name` (downloaded into torch's hub cache, so online once)."""
    import torchvision
    try:
        weights = torchvision.models.get_weight(name)
    except (ValueError, KeyError, AttributeError):
        raise UserError(f"model.checkpoint: {name} is neither a file nor a torchvision weights name (e.g. "
                        f"FCOS_ResNet50_FPN_Weights.COCO_V1, RetinaNet_ResNet50_FPN_Weights.COCO_V1)") from None
    try:
        return weights.get_state_dict(progress=False)
    except OSError as e:  # urllib's URLError is an OSError: offline, or the hub refused
        raise UserError(f"model.checkpoint: could not download {name} ({e}); offline, download {weights.url} "
                        f"elsewhere and give its path") from None


def detector_kind(state: dict) -> str | None:
    """Which torchvision detector a state dict comes from, by its head's names (None: not recognised)."""
    if any(k.startswith(("rpn.", "roi_heads.")) for k in state):
        return "fasterrcnn"
    if any(k.startswith("head.regression_head.bbox_ctrness") for k in state):
        return "fcos"
    if any(k.startswith("head.classification_head.module_list.") for k in state):
        return "ssdlite"
    if any(k.startswith("head.classification_head.cls_logits") for k in state):
        return "retinanet"
    return None


def load_detector_start(trunk: nn.Module, head: nn.Module, source: str, detector: str,
                             backbone: str = "the backbone") -> dict:
    """Load a checkpoint into sft's detector (trunk: the backbone's module; head: FPN + heads); returns counts and
    the names of the head tensors left as initialised. UserError when it does not fit (see the module docstring)."""
    shown, state = read_checkpoint(source)
    kind = detector_kind(state)
    if kind is not None and kind != detector:
        raise UserError(f"model.checkpoint: {shown} holds a {kind} detector; the recipe's model.detector is "
                        f"{detector} (set model.detector: {kind})")
    if kind == "fasterrcnn" and (FPN + "inner_blocks.0.1.weight" in state or "roi_heads.box_head.0.0.weight" in state):
        raise UserError(f"model.checkpoint: {shown} is a fasterrcnn_resnet50_fpn_v2 (BatchNorm FPN, four-conv box "
                        f"head); sft's Faster R-CNN has torchvision's first layout: use fasterrcnn_resnet50_fpn's "
                        f"(FasterRCNN_ResNet50_FPN_Weights.COCO_V1)")
    trunk_state = _fit_trunk(trunk.state_dict(), {k[len(BODY):]: v for k, v in state.items() if k.startswith(BODY)},
                             shown, backbone)
    own = head.state_dict()
    _check_fpn(own, {k: v for k, v in state.items() if k.startswith(FPN)}, shown)
    usable, skipped = {}, []
    for name, value in state.items():
        if name.startswith(BODY):
            continue
        if name in own and own[name].shape == value.shape:
            usable[name] = value
        elif name in own or not name.endswith("num_batches_tracked"):
            skipped.append(name)
    if not usable and not trunk_state:
        raise UserError(f"model.checkpoint: {shown} shares no tensor (name and shape) with this detector; was it "
                        f"saved from another detector or FPN width? {HINT}")
    head.load_state_dict(usable, strict=False)
    trunk.load_state_dict(trunk_state, strict=False)
    return {"source": shown, "trunk": len(trunk_state), "head": len(usable),
            "class_sized": [k for k in skipped if k.startswith(CLASS_SIZED)],
            "skipped": [k for k in skipped if not k.startswith(CLASS_SIZED)]}


def _fit_trunk(own: dict, body: dict, shown: str, backbone: str) -> dict:
    """The file's trunk under the backbone's own names, or a UserError naming the first tensor that differs. A body
    over `features` (names "0.0.weight", ...) holds only those: what follows them (a kept classifier layer) is not
    asked for."""
    if body and all(k.split(".")[0].isdigit() for k in body):
        own = {k: v for k, v in own.items() if k.startswith("model.features.")} or own
    return fit_whole(own, body, shown=shown, what=f"backbone does not fit model.backbone {backbone}",
                     fix="set model.backbone to the one the checkpoint was trained on", prefixes=TRUNK_PREFIXES,
                     file_prefix=BODY)


def _check_fpn(own: dict, fpn: dict, shown: str) -> None:
    """The file's FPN must fit whole: same number of input maps, same width, same input channels."""
    if not fpn:
        return
    def count(state: dict) -> int:
        return len({k.split(".")[3] for k in state if k.startswith(FPN + "inner_blocks.")})

    def width(state: dict) -> int:
        return state[FPN + "inner_blocks.0.0.weight"].shape[0]

    if count(fpn) != count(own):
        raise UserError(f"model.checkpoint: {shown}'s FPN reads {count(fpn)} backbone maps, this detector's "
                        f"{count(own)} (sft's Faster R-CNN reads torchvision's maps on a ResNet or a torchvision "
                        f"MobileNetV3, every other detector and backbone the last three; set the backbone the file "
                        f"was trained on)")
    if width(fpn) != width(own):
        raise UserError(f"model.checkpoint: {shown}'s FPN is {width(fpn)} wide, this one {width(own)} (set "
                        f"model.fpn_channels: {width(fpn)})")
    for name, value in fpn.items():
        if name not in own or own[name].shape != value.shape:
            here = list(own[name].shape) if name in own else "absent"
            raise UserError(f"model.checkpoint: {shown}'s FPN tensor {name} is {list(value.shape)} in the file, "
                            f"{here} here (another backbone's channels, or another extra level)")

"""`model.checkpoint` for segmentation: a finished run's model.safetensors or an smp model as the starting point, the
classifier of another class count left initialised, and the files that do not fit refused by name."""

import pytest
import segmentation_models_pytorch as smp
import torch
from safetensors.torch import load_file

from sft import load_recipe
from sft.errors import UserError
from sft.models.vision import create_backbone
from sft.tasks import get_task
from sft.tasks.segmentation.starting_weights import load_segmentation_start
from sft.tasks.segmentation.module import DecoderHead, segment
from sft.training.prepare import prepare
from tests.conftest import sft
from tests.tasks.segmentation.conftest import recipe


def test_a_run_starts_from_a_finished_runs_model(frozen_run, segmentation_set, tmp_path):
    file = frozen_run / "model.safetensors"
    loaded = load_recipe(recipe(tmp_path, segmentation_set), [f"model.checkpoint={file}", "model.weights=none",
                                                             "model.decoder=unet", "model.decoder_channels=256"])
    model = prepare(get_task("segmentation"), loaded).model  # step 0: what the first batch would train
    saved, state = load_file(file), model.state_dict()
    assert saved and all(torch.equal(state[k], v) for k, v in saved.items())


def test_other_class_counts_keep_their_classifier_and_misfits_are_refused(frozen_run, segmentation_set, tmp_path):
    file = str(frozen_run / "model.safetensors")
    backbone = create_backbone("torchvision/mobilenet_v2", None, out="maps")
    head = DecoderHead("unet", backbone.channels, backbone.reductions, 5)
    fresh = head.head[0].weight.clone()
    c = load_segmentation_start(backbone.module, head, file)
    assert c["format"] == "sft" and c["decoder"] > 0 and not c["classifier"] and torch.equal(head.head[0].weight, fresh)
    narrow = DecoderHead("unet", backbone.channels, backbone.reductions, 11, 128)
    with pytest.raises(UserError, match="decoder does not fit model.decoder and model.decoder_channels"):
        load_segmentation_start(backbone.module, narrow, file)
    path = recipe(tmp_path, segmentation_set)  # through the CLI: exit 2, the encoder named
    result = sft("train", path, f"model.checkpoint={file}", "model.backbone=timm/test_efficientnet",
                 "model.weights=none")
    assert result.exit_code == 2 and "encoder does not fit model.backbone timm/test_efficientnet" in result.output
    result = sft("train", path, f"model.checkpoint={tmp_path / 'missing.pth'}", f"run_dir={tmp_path / 'other'}")
    assert result.exit_code == 2 and "not found" in result.output


def test_an_smp_unet_loads_whole_and_computes_the_same_logits(tmp_path):
    torch.manual_seed(0)
    theirs = smp.Unet("mobilenet_v2", encoder_weights=None, classes=11).eval()
    torch.save(theirs.state_dict(), tmp_path / "unet.pth")
    backbone = create_backbone("torchvision/mobilenet_v2", None, out="maps")
    head = DecoderHead("unet", backbone.channels, backbone.reductions, 11, 256)
    c = load_segmentation_start(backbone.module, head, str(tmp_path / "unet.pth"))
    assert c["format"] == "smp" and c["classifier"] and c["skipped"] == []
    x = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        ours = segment(backbone.module.eval(), head.eval(), x, False)
        assert torch.allclose(ours, theirs(x), atol=1e-5)

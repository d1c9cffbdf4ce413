"""Segmentation through `sft train / eval / predict` on real Fashion-MNIST composites, and its decoders."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from sft.models.vision import create_backbone
from sft.tasks.segmentation.module import DecoderHead
from tests.conftest import sft
from tests.tasks.segmentation.conftest import recipe


def test_a_frozen_encoder_trains_its_decoder_and_stays_pretrained(frozen_run):
    metrics = json.loads((frozen_run / "metrics.json").read_text())
    assert 0 <= metrics["val_miou"] <= 1 and 0 <= metrics["test_miou"] <= 1 and metrics["epochs"] == 2
    assert set(metrics["test_iou"]) == {"background", "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"}
    weights = load_file(frozen_run / "model.safetensors")
    shipped = create_backbone("torchvision/mobilenet_v2", "imagenet", out="maps").module.state_dict()
    assert all(torch.equal(weights[f"backbone.{k}"], v) for k, v in shipped.items())  # BatchNorm statistics too
    assert any(k.startswith("head.decoder.") for k in weights)


def test_eval_and_predict_a_finished_run(frozen_run, segmentation_set, tmp_path):
    result = sft("eval", frozen_run, "--top-losses", "3")
    assert result.exit_code == 0, result.output
    metrics = json.loads((frozen_run / "eval" / "metrics.json").read_text())
    trained = json.loads((frozen_run / "metrics.json").read_text())
    assert metrics["samples"] == 8 and abs(metrics["miou"] - trained["test_miou"]) < 1e-6
    page = (frozen_run / "eval" / "report.html").read_text()
    assert 'id=per-class' in page and 'id=confusion' in page and 'id=calibration' in page
    assert page.count("<img") == 1 + 9  # the reliability diagram, 3 x image|truth|pred
    # per-pixel calibration: the temperature is fitted on validation pixels once and kept in model.json
    fitted = json.loads((frozen_run / "model.json").read_text())
    assert fitted["temperature"] == metrics["temperature"] > 0 and 0 <= metrics["ece_calibrated"] <= 1
    assert fitted["extra"]["temperature_fitted"]["val_images"] == 8
    results = json.loads((frozen_run / "eval" / "results.json").read_text())
    assert sum(results["reliability"]["count"]) == sum(results["pixels"]) == 8 * 64 * 64
    images = sorted((segmentation_set / "test" / "images").glob("*.png"))[:2]
    result = sft("predict", frozen_run, *images, "--out", tmp_path / "masks", "--format", "json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert len(rows) == 2 and abs(sum(v for k, v in rows[0].items() if k not in ("file", "mask")) - 1) < 1e-3
    mask = np.asarray(Image.open(rows[0]["mask"]))
    assert mask.shape == (64, 64) and mask.max() <= 10
    assert (tmp_path / "masks" / f"{images[0].stem}-overlay.png").exists()
    help = sft("predict", frozen_run, "--help").output  # the options of segmentation runs, not classification's
    assert "--out" in help and "--engine" in help and "--top-k" not in help and "--text" not in help
    result = sft("predict", frozen_run, *images, "--top-k", "2")
    assert result.exit_code == 2 and "No such option: --top-k" in result.output


def test_flip_tta_scores_and_predicts_the_mirror_averaged_logits(frozen_run, segmentation_set, tmp_path):
    result = sft("eval", frozen_run, "--tta", "flip", "--out", tmp_path / "tta", "--top-losses", "0")
    assert result.exit_code == 0, result.output
    flipped = json.loads((tmp_path / "tta" / "metrics.json").read_text())
    trained = json.loads((frozen_run / "metrics.json").read_text())
    assert flipped["samples"] == 8 and flipped["miou"] != trained["test_miou"]  # another model's answers
    images = sorted((segmentation_set / "test" / "images").glob("*.png"))[:2]
    rows = json.loads(sft("predict", frozen_run, *images, "--format", "json", "--tta", "flip").output)
    from sft.models.tta import FlipAverage
    from sft.tasks import get_task
    task = get_task("segmentation")
    info = task.run_info(frozen_run)
    model = FlipAverage(task.load_run(frozen_run, info), dense=True)
    expected = task.predict_rows(model, info, [str(images[0])], task.options["predict"](), None, None)[0]
    assert rows[0] == expected


@pytest.mark.parametrize("decoder", ["unet", "fpn", "deeplabv3plus"])
def test_decoders_give_logits_at_the_input_size(decoder):
    backbone = create_backbone("timm/test_efficientnet", None, out="maps")
    head = DecoderHead(decoder, backbone.channels, backbone.reductions, 11)
    x = torch.rand(2, 3, 64, 64)
    assert head([x, *backbone.module(x)]).shape == (2, 11, 64, 64)


def test_full_fine_tune_with_fpn_and_errors(tmp_path, segmentation_set):
    path = recipe(tmp_path, segmentation_set, "model:", "  backbone: timm/test_efficientnet", "  weights: none",
                  "  decoder: fpn", "strategy:", "  name: gradual", "optim:", "  loss: focal")
    result = sft("train", path, "data.class_weights=inverse")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["strategy"] == "gradual"
    result = sft("train", path, "data.image_size=72", f"run_dir={tmp_path / 'other'}")
    assert result.exit_code == 2 and "multiple of 32" in result.output and not (tmp_path / "other").exists()
    result = sft("train", path, "strategy.name=lora", f"run_dir={tmp_path / 'other'}")
    assert result.exit_code == 2 and "strategy.name (line" in result.output and "got 'lora'" in result.output


def test_eval_of_other_data_does_not_replace_an_evaluation(frozen_run, segmentation_set, tmp_path):
    out = tmp_path / "evaluation"
    assert sft("eval", frozen_run, "--out", out, "--top-losses", "0").exit_code == 0
    result = sft("eval", frozen_run, "--data", segmentation_set / "val", "--out", out, "--top-losses", "0")
    assert result.exit_code == 2 and "other data" in result.output
    assert json.loads((out / "results.json").read_text())["data"].endswith("test")
    assert sft("eval", frozen_run, "--out", out, "--top-losses", "0").exit_code == 0  # the same data: re-evaluated
    (out / "results.json").write_text("{not json")  # a damaged evaluation: a message, not a traceback
    result = sft("eval", frozen_run, "--out", out, "--top-losses", "0")
    assert result.exit_code == 2 and "results.json cannot be read" in result.output
    assert sft("eval", frozen_run, "--out", out, "--top-losses", "0", "--overwrite").exit_code == 0
    foreign = tmp_path / "foreign"  # not sft's: its results.json is not read, and the folder is left untouched
    foreign.mkdir()
    (foreign / "results.json").write_text("[1, 2]")
    result = sft("eval", frozen_run, "--out", foreign, "--top-losses", "0", "--overwrite")
    assert result.exit_code == 2 and "not written by sft" in result.output
    assert (foreign / "results.json").read_text() == "[1, 2]"


def test_evaluate_keeps_the_masks_it_predicted_for_the_worst_images():
    """The report draws the worst images from the evaluation's own predictions, not from a second forward pass."""
    from sft.tasks.base import score_batches
    from sft.tasks.segmentation.metrics import SegmentationScorer
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 4, 3, padding=1)
    data = [(torch.rand(3, 16, 16), torch.randint(0, 4, (16, 16))) for _ in range(7)]
    scorer = SegmentationScorer(["a", "b", "c", "d"], 255, top_n=3)
    result = score_batches(model, data, scorer, batch_size=3)
    worst_masks = scorer.worst_masks()
    assert len(result["worst"]) == len(worst_masks) == 3 and result["samples"] == 7
    everyone = [score_batches(model, [item], SegmentationScorer(["a", "b", "c", "d"], 255), batch_size=1)["miou"]
                for item in data]
    assert [row["miou"] for row in result["worst"]] == pytest.approx(sorted(everyone)[:3])
    for row, mask in zip(result["worst"], worst_masks):
        with torch.inference_mode():
            expected = model(data[row["index"]][0][None]).argmax(1)[0].numpy()
        assert np.array_equal(mask, expected)

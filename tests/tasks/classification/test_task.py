"""Image classification's flip test-time augmentation: `sft eval --tta flip` scores the mirror-averaged logits with a
temperature and prediction sets fitted on the validation split's averaged logits, never stored over the plain
model's; `sft predict --tta flip` gives the same probabilities; texts have no such option."""

import json
import shutil

import torch
from PIL import Image

from tests.conftest import sft
from sft.data.images import read_samples
from sft.models.tta import FlipAverage
from sft.tasks import get_task
from sft.tasks.base import score_batches
from sft.tasks.classification.metrics import Scores


def test_flip_tta_scores_calibrates_and_predicts_the_mirror_averaged_logits(tiny_image_run, fashion_slice, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_image_run, run, ignore=shutil.ignore_patterns("export*", "eval*"))
    stored = (run / "model.json").read_bytes()
    result = sft("eval", run, "--tta", "flip", "--top-losses", "0", "--out", tmp_path / "tta")
    assert result.exit_code == 0, result.output
    flipped = json.loads((tmp_path / "tta" / "metrics.json").read_text())
    assert flipped["tta"] == "flip" and flipped["coverage_target"] == 0.9
    assert (run / "model.json").read_bytes() == stored  # the stored fits are the plain model's
    assert "flip-averaged logits, for this evaluation only" in (tmp_path / "tta" / "report.html").read_text()

    task = get_task("image-classification")
    info = task.run_info(run)
    model = task.load_run(run, info)
    dataset = task.run_inputs(model, info).eval(read_samples(fashion_slice["test"], classes=info.classes))
    expected = score_batches(FlipAverage(model), dataset, Scores(4, temperature=flipped["temperature"]),
                             batch_size=128)
    plain = score_batches(model, dataset, Scores(4), batch_size=128)
    assert flipped["loss"] == expected["loss"] != plain["loss"]
    assert flipped["accuracy"] == expected["accuracy"] and flipped["samples"] == 120

    assert sft("eval", run, "--top-losses", "0").exit_code == 0  # the plain fits, stored
    assert json.loads((run / "eval" / "metrics.json").read_text())["temperature"] != flipped["temperature"]
    image = tmp_path / "a.png"
    Image.fromarray((torch.rand(28, 28) * 255).byte().numpy()).save(image)
    rows = json.loads(sft("predict", run, image, "--tta", "flip", "--coverage", "0.9", "--top-k", "4",
                          "--format", "json").output)
    assert len(rows) == 4 and rows[0]["set"][0] == rows[0]["label"]
    with torch.no_grad():
        logits = FlipAverage(model)(dataset.transform(Image.open(image).convert("RGB")).unsqueeze(0))
    assert abs(rows[0]["probability"] - float((logits / flipped["temperature"]).softmax(-1).max())) < 1e-4


def test_only_image_runs_take_tta():
    assert "tta" in get_task("image-classification").options["predict"].model_fields
    assert "tta" not in get_task("text-classification").options["predict"].model_fields
    assert "tta" not in get_task("text-classification").options["eval"].model_fields

"""`sft eval` / `sft report` on one tiny trained run: the evaluation folder, the calibrated `predict`, bad input, and
report.html opened in headless Chromium (every section present, every image decodes)."""

import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from sft.cli import app
from sft import fine_tune
from sft.tasks.base import score_batches
from sft.tasks.classification.metrics import Scores
from sft.tasks.classification.report import SECTIONS, render
from sft.data.samples import Samples
from tests.conftest import tiny_recipe

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def sft(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output
    return result


@pytest.fixture(scope="module")
def run(tmp_path_factory, fashion_slice):
    """One tiny run (2 epochs, 32 px), evaluated once with the CLI."""
    tmp = tmp_path_factory.mktemp("report")
    run = fine_tune(tiny_recipe(tmp, fashion_slice, "strategy.name=linear-probe")).dir
    result = sft("eval", run)
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.output and "report.html" in result.output
    return run


def test_eval_folder(run):
    out = run / "eval"
    metrics = json.loads((out / "metrics.json").read_text())
    results = json.loads((out / "results.json").read_text())
    assert metrics["samples"] == 120 and sum(c["support"] for c in metrics["per_class"].values()) == 120
    assert np.array(results["metrics"]["confusion_matrix"]).sum() == 120
    assert set(metrics["per_class"]) == {"T-shirt", "Trouser", "Sneaker", "Bag"}
    assert metrics["top_k"] == 4 and metrics["top_k_accuracy"] == pytest.approx(1.0)
    losses = [r["loss"] for r in results["metrics"]["top_losses"]]
    assert len(losses) == 16 and losses == sorted(losses, reverse=True)
    # the temperature was fitted on the validation split and stored in the run
    info = json.loads((run / "model.json").read_text())
    fitted = info["extra"]["temperature_fitted"]
    assert info["temperature"] == metrics["temperature"] == fitted["temperature"] != 1.0
    assert fitted["val_samples"] == 24 and fitted["val_nll_after"] <= fitted["val_nll_before"] + 1e-6
    page = (out / "report.html").read_text()
    for section in SECTIONS["image"]:
        assert f'id="{section}"' in page
    assert page.count("<img src=\"data:image/png;base64,") == 3 + 2 * 16 + 2 * (2 * 4)  # figures, 2 galleries


def test_eval_again_keeps_the_temperature_and_refuses_other_data(run, fashion_slice, tmp_path):
    before = (run / "model.json").read_text()
    other = tmp_path / "other"
    assert sft("eval", run, "--out", other, "--top-losses", 2).exit_code == 0
    assert json.loads((other / "results.json").read_text())["calibration"]["fitted_now"] is False
    assert (run / "model.json").read_text() == before  # fitted once, then reused
    result = sft("eval", run, "--data", fashion_slice["train"], "--out", other)
    assert result.exit_code == 2 and "holds the evaluation of other data" in result.output
    assert json.loads((other / "metrics.json").read_text())["samples"] == 120  # untouched
    assert sft("eval", run, "--data", fashion_slice["train"], "--out", other, "--overwrite",
               "--top-losses", 2).exit_code == 0
    assert json.loads((other / "metrics.json").read_text())["samples"] == 240
    assert sft("eval", run, "--data", fashion_slice["train"], "--top-losses", 0).exit_code == 0
    assert (run / "eval-train" / "report.html").exists()  # other data's default folder, beside eval/
    (other / "results.json").write_text("{not json")  # a damaged evaluation: a message, not a traceback
    result = sft("eval", run, "--out", other)
    assert result.exit_code == 2 and "results.json cannot be read" in result.output
    foreign = tmp_path / "foreign"  # not sft's: its results.json is not read, and the folder is left untouched
    foreign.mkdir()
    (foreign / "results.json").write_text("[1, 2]")
    result = sft("eval", run, "--out", foreign, "--overwrite")
    assert result.exit_code == 2 and "not written by sft" in result.output
    assert (foreign / "results.json").read_text() == "[1, 2]"
    for folder in (run, run.parent):
        result = sft("eval", run, "--out", folder, "--overwrite")
        assert result.exit_code == 2 and "run directory itself" in result.output


def test_predict_returns_calibrated_probabilities(run, tmp_path):
    from sft.data.images import build_transforms
    from sft.tasks import get_task
    image = tmp_path / "x.png"
    Image.fromarray(np.full((28, 28), 200, np.uint8)).save(image)
    result = sft("predict", run, image, "--top-k", 4, "--format", "json")
    assert result.exit_code == 0, result.output
    got = {row["label"]: row["probability"] for row in json.loads(result.output)}
    model, info = get_task("image-classification").load_trained(run)
    assert info.temperature != 1.0
    _, tf = build_transforms(info.preprocess, None, "none")
    with torch.no_grad():
        probs = (model(tf(Image.open(image).convert("RGB"))[None]) / info.temperature).softmax(-1)[0]
    for name, p in zip(info.classes, probs.tolist()):
        assert got[name] == pytest.approx(p, abs=1e-4)


def test_report_rebuilds_from_the_stored_results(run):
    (run / "eval" / "report.html").unlink()
    result = sft("report", run)
    assert result.exit_code == 0, result.output
    page = (run / "eval" / "report.html").read_text()
    assert 'id="gradcam"' in page and "Most confused pairs" in page


def test_bad_input_exit_code_2(run, tmp_path, fashion_slice):
    result = sft("eval", tmp_path / "nothing")
    assert result.exit_code == 2 and "no such run directory" in result.output
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    shutil.copy(run / "recipe.yaml", unfinished)
    result = sft("eval", unfinished)
    assert result.exit_code == 2 and "no finished model" in result.output
    assert f"sft train {unfinished / 'recipe.yaml'} --resume" in " ".join(result.output.split())
    assert sft("report", unfinished).exit_code == 2
    folder = tmp_path / "other-classes"
    for name in ("T-shirt", "Boot"):
        (folder / name).mkdir(parents=True)
        Image.fromarray(np.zeros((28, 28), np.uint8)).save(folder / name / "a.png")
    result = sft("eval", run, "--data", folder)
    assert result.exit_code == 2 and "'Boot'" in result.output and "T-shirt" in result.output
    result = sft("report", run, "--eval", tmp_path)
    assert result.exit_code == 2 and "no results.json" in result.output
    for out in (run, run.parent):
        result = sft("eval", run, "--out", out, "--overwrite")
        assert result.exit_code == 2 and "would replace the run directory" in result.output
    assert (run / "model.safetensors").exists()


def chromium(page, tmp_path, screenshot):
    """(body attributes, dom) of `page` after load in headless Chromium; a screenshot is written to `screenshot`."""
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000",
           "--window-size=1200,3000", f"--screenshot={screenshot}", "--dump-dom", page.as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path).stdout
    body = re.search(r"<body([^>]*)>", dom)
    assert body, dom[:500]
    return dict(re.findall(r'data-(\w+)="(\d+)"', body.group(1))), dom


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="chromium is not installed (make data)")
def test_report_opens_in_headless_chromium(run, tmp_path):
    page = run / "eval" / "report.html"
    shot = tmp_path / "report.png"
    attrs, dom = chromium(page, tmp_path, shot)
    for section in SECTIONS["image"]:
        assert f'<section id="{section}">' in dom
    assert int(attrs["images"]) == dom.count("<img ") > 40 and attrs["broken"] == "0"
    with Image.open(shot) as im:
        assert im.size == (1200, 3000)
    if os.environ.get("SFT_REPORT_SCREENSHOT"):
        shutil.copy(shot, os.environ["SFT_REPORT_SCREENSHOT"])
    # the check can fail: a page with one image that does not decode
    broken = tmp_path / "broken.html"
    broken.write_text(page.read_text().replace("<nav>", '<nav><img src="data:image/png;base64,AAAA" alt="x">', 1))
    attrs, _ = chromium(broken, tmp_path, tmp_path / "broken.png")
    assert attrs["broken"] == "1"


def test_text_report_escapes_texts_and_shows_token_attributions():
    """The text path on a toy tokenized-text model (dict inputs, a collate_fn with a tokenizer)."""
    from tests.tasks.classification.test_interpret import BagOfTokens, Tokenizer

    texts = ["w5 w3 <b>bold</b>", "w5 w7", "w3 w3", "w7 & w5"]
    samples = Samples(texts, np.array([0, 1, 1, 0]), ["neg", "pos"], [f"t{i}" for i in range(4)], kind="text")

    class Collate:
        tokenizer = Tokenizer()

        def __call__(self, batch):
            ids = [[int(w[1:]) for w in t.split() if re.fullmatch(r"w\d", w)] for t, _ in batch]
            width = max(map(len, ids))
            return ({"input_ids": torch.tensor([i + [0] * (width - len(i)) for i in ids]),
                     "attention_mask": torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids])},
                    torch.tensor([y for _, y in batch]))

    dataset = [(t, int(y)) for t, y in zip(texts, samples.labels)]
    model = BagOfTokens()
    metrics = score_batches(model, dataset, Scores(2, top_losses=2), batch_size=128, collate_fn=Collate())
    results = {"run_dir": "/nonexistent/run", "kind": "text", "classes": samples.classes, "metrics": metrics,
               "calibration": {"temperature": 1.0}, "class_samples": [0, 3],
               "data": {"source": {"path": "texts.csv"}, "samples": 4}}
    page = render(results, model, None, samples, dataset, Collate())
    for section in SECTIONS["text"]:
        assert f'<section id="{section}">' in page
    assert "&lt;b&gt;bold&lt;/b&gt;" in page and "<b>bold</b>" not in page and "w7 &amp; w5" in page
    assert re.search(r'class="tok" style="background:rgba\(0,160,0,1.00\)" title="\+1.000">w3<', page)
    assert "No training logs" in page


def test_report_from_a_damaged_results_file_is_a_clear_error(run, tmp_path):
    import shutil
    out = tmp_path / "eval"
    shutil.copytree(run / "eval", out)
    for text in ("{not json", '{"data": 3}'):
        (out / "results.json").write_text(text)
        result = sft("report", run, "--eval", out)
        assert result.exit_code == 2 and "results.json: damaged or not an evaluation of sft" in result.output

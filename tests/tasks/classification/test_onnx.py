"""`sft export` of classification runs (ONNX for images and texts, LoRA merged; the Hugging Face folder for texts) and
`sft predict --engine onnx`, on tiny runs trained here."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.conftest import sft
from sft.models import export as export_module
from sft.models.export import session
from sft.tasks.classification.task import ImageClassification, TextClassification


@pytest.fixture
def image_run(tiny_image_run):
    return tiny_image_run


@pytest.fixture
def text_runs(tiny_text_runs):
    return tiny_text_runs


def predictions(run, *args):
    result = sft("predict", run, *args, "--top-k", "3", "--format", "json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_image_export_dynamic_batch_parity_and_onnx_predict(image_run, fashion_slice, tmp_path):
    result = sft("export", image_run, "--format", "onnx")
    assert result.exit_code == 0, result.output
    folder = image_run / "export"
    parity = json.loads((folder / "parity.json").read_text())
    assert parity["passed"] and parity["samples"] >= 64 and parity["max_abs_diff"] < 1e-4
    assert set(parity["batch_sizes"]) == {"1", "32"} and parity["top1_agreement"] == 1.0
    meta = json.loads((folder / "model.json").read_text())
    assert meta["classes"] == ["T-shirt", "Trouser", "Sneaker", "Bag"] and meta["preprocess"]["input_size"] == [32, 32]
    assert meta["weights_id"].startswith("sha256:") and "Normalize" in meta["transform"]
    ort = session(folder / "model.onnx")
    for batch in (1, 5):  # the batch axis is free
        assert ort.run(None, {"input": np.zeros((batch, 3, 32, 32), np.float32)})[0].shape == (batch, 4)
    files = []
    for i, image in enumerate(np.load(fashion_slice["test"])["x"][::15][:6]):
        from PIL import Image
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(image).save(files[-1])
    torch_rows, onnx_rows = predictions(image_run, *files), predictions(image_run, *files, "--engine", "onnx")
    assert [r["label"] for r in torch_rows] == [r["label"] for r in onnx_rows]
    assert max(abs(a["probability"] - b["probability"]) for a, b in zip(torch_rows, onnx_rows)) <= 1e-4

    # an export is never written over: not again without --overwrite, never into the run itself
    with pytest.MonkeyPatch.context() as mp:  # refused before the model is loaded
        mp.setattr(ImageClassification, "load_run", lambda *a: pytest.fail("loaded the model"))
        again = sft("export", image_run)
    assert again.exit_code == 2 and "already holds an export" in again.output
    assert sft("export", image_run, "--overwrite").exit_code == 0
    assert "run directory itself" in sft("export", image_run, "--out", image_run).output

    # timm's Hugging Face folder: transformers (and timm) alone load it and give the run's logits
    assert sft("export", image_run, "--format", "hf").exit_code == 0
    assert json.loads((image_run / "export-hf" / "parity.json").read_text())["passed"]
    import timm
    from transformers import AutoModelForImageClassification
    model, _ = ImageClassification().load_trained(image_run)
    hf = AutoModelForImageClassification.from_pretrained(str(image_run / "export-hf")).eval()
    plain = timm.create_model(f"local-dir:{image_run / 'export-hf'}", pretrained=True).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert (hf(x).logits - model(x)).abs().max() < 1e-5 and (plain(x) - model(x)).abs().max() < 1e-5
    assert hf.config.id2label == {0: "T-shirt", 1: "Trouser", 2: "Sneaker", 3: "Bag"}

    # an export of other weights is refused by --engine onnx
    meta["weights_id"] = "sha256:other"
    (folder / "model.json").write_text(json.dumps(meta))
    stale = sft("predict", image_run, files[0], "--engine", "onnx")
    assert stale.exit_code == 2 and "other weights" in stale.output
    for damage in ("{not json", None):  # a damaged or missing model.json is an error naming it, not a traceback
        (folder / "model.json").write_text(damage) if damage else (folder / "model.json").unlink()
        broken = sft("predict", image_run, files[0], "--engine", "onnx")
        assert broken.exit_code == 2 and "model.json: missing or damaged" in broken.output


def test_a_failing_parity_check_writes_nothing_unless_forced(image_run, tmp_path, monkeypatch):
    real = export_module.to_onnx

    def off_by_a_bit(module, example, path, *args):  # an exporter that shifts the logits: the check must catch it
        class Shifted(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.inner = module

            def forward(self, x):
                logits = self.inner(x)
                return logits + torch.linspace(0, 0.05, logits.shape[1])
        real(Shifted(), example, path, *args)

    monkeypatch.setattr(export_module, "to_onnx", off_by_a_bit)
    out = tmp_path / "bad"
    result = sft("export", image_run, "--out", out)
    assert result.exit_code == 2 and "max |Δprobability|" in result.output and "× over" in result.output
    assert not out.exists()
    forced = sft("export", image_run, "--out", out, "--force")
    assert forced.exit_code == 0 and "parity check failed" in forced.output
    assert not json.loads((out / "parity.json").read_text())["passed"]


@pytest.mark.parametrize("kind", ["full", "lora"])
def test_text_export_dynamic_sequence_and_onnx_predict(text_runs, kind):
    run = text_runs[kind]
    assert sft("export", run, "--overwrite").exit_code == 0  # the run is shared with the serve tests
    parity = json.loads((run / "export" / "parity.json").read_text())
    assert parity["passed"] and parity["lora_merged"] == (kind == "lora")
    assert (run / "export" / "tokenizer.json").is_file()
    ort = session(run / "export" / "model.onnx")
    names = [i.name for i in ort.get_inputs()]
    for shape in ((1, 5), (3, 17)):  # batch and sequence axes are free
        assert ort.run(None, {n: np.ones(shape, np.int64) for n in names})[0].shape == (shape[0], 4)
    texts = ["--text", "My cat sleeps on the keyboard", "--text", "The court found the defendant guilty"]
    torch_rows, onnx_rows = predictions(run, *texts), predictions(run, *texts, "--engine", "onnx")
    assert [r["label"] for r in torch_rows] == [r["label"] for r in onnx_rows]
    assert max(abs(a["probability"] - b["probability"]) for a, b in zip(torch_rows, onnx_rows)) <= 1e-4


LOAD_WITH_TRANSFORMERS_ALONE = """
import json, sys, torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
folder, texts = sys.argv[1], json.loads(sys.argv[2])
model = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True).eval()
batch = AutoTokenizer.from_pretrained(folder)(texts, padding=True, truncation=True, max_length=48, return_tensors="pt")
with torch.no_grad():
    logits = model(**batch).logits
assert not any(name.startswith("sft") for name in sys.modules)
print(json.dumps({"logits": logits.tolist(), "labels": [model.config.id2label[int(i)] for i in logits.argmax(-1)]}))
"""


@pytest.mark.parametrize("kind", ["full", "lora"])
def test_hf_folder_loads_with_transformers_alone_and_gives_the_run_logits(text_runs, kind, tmp_path, monkeypatch):
    """...and the export's own parity check leaves no copy of modeling_sft.py in the user's modules cache."""
    from transformers import dynamic_module_utils
    monkeypatch.setattr(dynamic_module_utils, "HF_MODULES_CACHE", str(tmp_path / "home-modules"))  # read at import
    run = text_runs[kind]
    result = sft("export", run, "--format", "hf")
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "home-modules").exists()
    folder = run / "export-hf"
    assert json.loads((folder / "parity.json").read_text())["passed"]
    texts = ["My cat sleeps on the keyboard", "Lawyers and judges", "A computer is a fast idiot"]
    user = tmp_path / "user-modules"  # the user's load goes through trust_remote_code: its copy lands here
    out = subprocess.run([sys.executable, "-c", LOAD_WITH_TRANSFORMERS_ALONE, str(folder), json.dumps(texts)],
                         capture_output=True, text=True, cwd=folder, timeout=300,
                         env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(user)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert list(user.rglob("modeling_sft.py"))
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    model, info = TextClassification().load_trained(run)
    batch = model.backbone.tokenizer(texts, padding=True, truncation=True, max_length=48, return_tensors="pt")
    with torch.no_grad():
        expected = model(dict(batch))
    assert np.abs(np.array(loaded["logits"]) - expected.numpy()).max() < 1e-4
    assert loaded["labels"] == [info.classes[i] for i in expected.argmax(-1)]

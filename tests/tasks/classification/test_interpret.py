"""Grad-CAM's layer is found generically (convnets and ViTs) and points where the evidence is; captum's token
attributions single out the token that decides the class."""

import numpy as np
import pytest
import timm
import torch
from torch import nn

from sft.tasks.classification.interpret import cam_maps, find_target_layer, grad_cam, token_attributions


class Spot(nn.Module):
    """Class 0 = brightness of the input, summed over space, through a conv map: the evidence is where it is bright."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        nn.init.constant_(self.conv.weight, 0.1), nn.init.zeros_(self.conv.bias)
        self.fc = nn.Linear(4, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[1.0] * 4, [-1.0] * 4])), self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


def test_grad_cam_points_at_the_evidence():
    x = torch.zeros(2, 3, 32, 32)
    x[0, :, 2:10, 3:11] = 1.0  # top-left square
    x[1, :, 20:28, 22:30] = 1.0  # bottom-right square
    model = Spot()
    layer, reshape = find_target_layer(model, x[:1])
    assert layer is model.conv and reshape is None
    maps = cam_maps(model, x, [0, 0], (layer, reshape))
    assert maps.shape == (2, 32, 32)
    for m, (rows, cols) in zip(maps, ((slice(2, 10), slice(3, 11)), (slice(20, 28), slice(22, 30)))):
        assert m[rows, cols].mean() > 5 * m.mean() / 2  # the heat lies on the bright square
        y, xx = np.unravel_index(m.argmax(), m.shape)
        assert rows.start - 1 <= y <= rows.stop and cols.start - 1 <= xx <= cols.stop
    overlays = grad_cam(model, x, [0, 0], (0.0,) * 3, (1.0,) * 3, (layer, reshape))
    assert overlays[0].shape == (32, 32, 3) and overlays[0].dtype == np.uint8


def test_target_layer_of_a_timm_convnet():
    backbone = timm.create_model("test_efficientnet", pretrained=False, num_classes=0)
    model = nn.Sequential(backbone, nn.Linear(backbone.num_features, 3))
    layer, reshape = find_target_layer(model, torch.randn(1, 3, 64, 64))
    assert reshape is None and layer is backbone.bn2  # the last map before global pooling (2x2 at 64 px)
    layer, _ = find_target_layer(model, torch.randn(1, 3, 32, 32))  # there 1x1: a map of one pixel shows nothing
    assert layer is backbone.blocks[4][0].bn1  # the last 2x2 map: before the stride of the last stage


def test_target_layer_of_a_vit_is_its_last_block_norm_with_a_reshape():
    vit = timm.create_model("test_vit", pretrained=False, num_classes=3)  # class-token pooling, 16 px patches
    x = torch.randn(1, 3, 160, 160)
    layer, reshape = find_target_layer(vit, x)
    assert layer is vit.blocks[-1].norm1
    assert reshape(torch.zeros(2, 101, 64)).shape == (2, 64, 10, 10)  # 1 class token + a 10x10 grid
    maps = cam_maps(vit, x, [1], (layer, reshape))
    assert maps.shape == (1, 160, 160) and maps.max() > 0


class BagOfTokens(nn.Module):
    """Texts as dicts of input_ids / attention_mask; class 1 is decided by token 3 alone."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.fc = nn.Linear(4, 2)
        with torch.no_grad():
            self.embed.weight.normal_(0, 0.05), self.embed.weight[3].copy_(torch.tensor([3.0, 0, 0, 0]))
            self.embed.weight[0].zero_()  # padding
            self.fc.weight.copy_(torch.tensor([[-1.0, 0, 0, 0], [1.0, 0, 0, 0]])), self.fc.bias.zero_()

    def forward(self, batch):
        mask = batch["attention_mask"].unsqueeze(-1).float()
        return self.fc((self.embed(batch["input_ids"]) * mask).sum(1) / mask.sum(1))


class Tokenizer:
    pad_token_id = 0

    def convert_ids_to_tokens(self, ids):
        return [f"w{i}" for i in ids]


def test_token_attributions_single_out_the_deciding_token():
    inputs = {"input_ids": torch.tensor([[5, 3, 7, 0, 0]]), "attention_mask": torch.tensor([[1, 1, 1, 0, 0]])}
    pairs = token_attributions(BagOfTokens(), inputs, 1, tokenizer=Tokenizer())
    assert [t for t, _ in pairs] == ["w5", "w3", "w7"]  # padding dropped
    scores = dict(pairs)
    assert scores["w3"] == pytest.approx(1.0) and abs(scores["w5"]) < 0.2 and abs(scores["w7"]) < 0.2


# -- a real text run (tiny BERT on fortunes), end to end -------------------------------------------------------------

@pytest.fixture(scope="module")
def text_run(tmp_path_factory, tiny_bert, fortunes_slice):
    from sft import fine_tune
    from tests.conftest import tiny_text_recipe
    return fine_tune(tiny_text_recipe(tmp_path_factory.mktemp("text"), fortunes_slice, tiny_bert)).dir


def test_text_run_eval_report_and_calibrated_predict(text_run):
    import json
    from typer.testing import CliRunner
    from sft.cli import app
    from sft.tasks.classification.report import SECTIONS
    result = CliRunner().invoke(app, ["eval", str(text_run), "--top-losses", "4"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((text_run / "eval" / "metrics.json").read_text())
    assert metrics["samples"] == 48 and sum(c["support"] for c in metrics["per_class"].values()) == 48
    page = (text_run / "eval" / "report.html").read_text()
    for section in SECTIONS["text"]:
        assert f'<section id="{section}">' in page
    assert page.count('class="tok"') > 50 and "not available" not in page  # captum attributions, named tokens
    assert "[CLS]" in page and "<img" in page  # MiniLM's word pieces; figures only (no Grad-CAM for texts)
    temperature = json.loads((text_run / "model.json").read_text())["temperature"]
    assert temperature == metrics["temperature"] != 1.0
    result = CliRunner().invoke(app, ["predict", str(text_run), "--text", "The compiler crashed", "--top-k", "4",
                                      "--format", "json"])
    assert result.exit_code == 0, result.output
    from sft.tasks import get_task
    from sft.tasks.classification.serving import predict_top_k
    task = get_task("text-classification")
    model, info = task.load_trained(text_run)
    inputs = task.run_inputs(model, info)
    samples = task.prediction_samples(info, ["The compiler crashed"])
    batch = inputs.collate([inputs.eval(samples)[0]])[0]
    expected = dict(predict_top_k(model, batch, info.classes, 4, temperature=temperature)[0])
    assert {r["label"]: r["probability"] for r in json.loads(result.output)} == pytest.approx(
        {k: round(v, 4) for k, v in expected.items()}, abs=1e-4)

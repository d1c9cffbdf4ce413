"""tasks.base's model files: what every task's export writes at the end of training and its load reads back."""

import json
from dataclasses import dataclass

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from sft.core.rundir import folder_kind
from sft.errors import UserError
from sft.models.backbone import Preprocess
from sft.tasks.base import load_model_files, read_run_info, write_evaluation, write_model_files

PRE = Preprocess((32, 32), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "bilinear", 1.0)


@dataclass
class Info:
    backbone: str
    classes: list[str]
    preprocess: Preprocess
    task: str = "toy"


class Parts(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone, self.head, self.loss = nn.Linear(4, 3), nn.Linear(3, 2), nn.Linear(1, 1)


def test_model_files_round_trip_backbone_and_head_only(tmp_path):
    model = Parts()
    model.head.weight.data = model.head.weight.data.t().contiguous().t()  # a non-contiguous view is written whole
    write_model_files(tmp_path, model, Info("timm/x", ["a", "b"], PRE))
    assert json.loads((tmp_path / "model.json").read_text())["preprocess"]["input_size"] == [32, 32]
    assert read_run_info(tmp_path, Info) == Info("timm/x", ["a", "b"], PRE)  # tuples again, not JSON lists
    state = load_file(tmp_path / "model.safetensors")
    assert set(state) == {"backbone.weight", "backbone.bias", "head.weight", "head.bias"}
    backbone, head = load_model_files(tmp_path, nn.Linear(4, 3), nn.Linear(3, 2))
    assert all(torch.equal(a, b) for a, b in zip([*backbone.state_dict().values(), *head.state_dict().values()],
                                                 [*model.backbone.state_dict().values(),
                                                  *model.head.state_dict().values()]))
    with pytest.raises(UserError, match="does not fit"):
        load_model_files(tmp_path, nn.Linear(4, 5), nn.Linear(5, 2))
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_missing_or_damaged_model_files_are_named(tmp_path):
    with pytest.raises(UserError, match="no such run directory"):
        read_run_info(tmp_path / "nowhere", Info)
    with pytest.raises(UserError, match="no finished model .*--resume"):
        read_run_info(tmp_path, Info)
    write_model_files(tmp_path, Parts(), Info("timm/x", [], PRE))
    with pytest.raises(UserError, match=r"model.json: damaged \(no class list\).*--resume"):
        read_run_info(tmp_path, Info)


def test_an_evaluation_folder_is_replaced_whole_and_marked(tmp_path):
    out = tmp_path / "eval"
    write_evaluation(out, {"data": "a", "miou": 0.5}, {"miou": 0.5}, "<html>first</html>")
    (out / "worst.png").write_bytes(b"old")  # something only the first evaluation wrote
    write_evaluation(out, {"data": "b", "miou": 0.6}, {"miou": 0.6}, "<html>second</html>")
    assert json.loads((out / "results.json").read_text()) == {"data": "b", "miou": 0.6}
    assert json.loads((out / "metrics.json").read_text()) == {"miou": 0.6}
    assert (out / "report.html").read_text() == "<html>second</html>\n"
    assert not (out / "worst.png").exists() and folder_kind(out) == "eval"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval"]  # no temporary folder left beside it

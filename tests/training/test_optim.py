import pytest
import torch
from torch import nn

from sft.training.optim import AUTO_EPOCHS, AUTO_STEPS, auto_epochs, auto_lr, build_optimizer, build_scheduler
from sft.recipe import HeadStrategy as Strategy
from sft.recipe import Optim, VisionRecipe
from sft.training.strategies import Schedule


def parts():
    backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3))
    groups = [["0.weight", "0.bias", "1.weight", "1.bias"], ["2.weight", "2.bias"]]
    return backbone, nn.Linear(4, 2), groups


def test_groups_lr_scales_and_no_decay_on_norms_and_biases():
    backbone, head, groups = parts()
    schedule = Schedule(Strategy(name="full", lr_decay=0.5), groups)
    optimizer = build_optimizer(Optim(lr=1.0, weight_decay=0.1), backbone, head, schedule)
    by_param = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    assert by_param[id(backbone[0].weight)]["lr"] == 0.25 and by_param[id(backbone[2].weight)]["lr"] == 0.5
    assert by_param[id(head.weight)]["lr"] == 1.0
    assert by_param[id(backbone[1].weight)]["weight_decay"] == 0.0  # BatchNorm weight
    assert by_param[id(head.bias)]["weight_decay"] == 0.0 and by_param[id(head.weight)]["weight_decay"] == 0.1
    n_params = len(list(backbone.parameters())) + len(list(head.parameters()))
    assert sum(len(g["params"]) for g in optimizer.param_groups) == n_params  # frozen or not, all are in


def test_frozen_parameters_are_skipped_by_the_optimizer():
    backbone, head, groups = parts()
    schedule = Schedule(Strategy(name="linear-probe"), groups)
    optimizer = build_optimizer(Optim(name="adamw", lr=0.1), backbone, head, schedule)
    schedule.apply(backbone, 0)
    before = backbone[0].weight.clone()
    head(backbone(torch.randn(2, 3, 8, 8)).mean((2, 3))).sum().backward()
    optimizer.step()
    assert torch.equal(before, backbone[0].weight)


@pytest.mark.parametrize("name", ["cosine", "onecycle", "step", "constant"])
def test_schedulers_run_their_course(name):
    backbone, head, groups = parts()
    recipe = VisionRecipe.model_validate({"optim": {"scheduler": name, "lr": 1.0, "warmup": 0.1, "step_epochs": 1},
                                          "trainer": {"epochs": 4}})
    optimizer = build_optimizer(recipe.optim, backbone, head, Schedule(recipe.strategy, groups))
    scheduler = build_scheduler(recipe.optim, recipe.trainer.epochs, optimizer, total_steps=40)
    lrs = []
    for _ in range(40):
        optimizer.step()
        scheduler.step()
        lrs.append(optimizer.param_groups[-1]["lr"])
    if name == "constant":
        assert set(lrs) == {1.0}
    else:
        assert lrs[-1] < 0.05 * max(lrs)
    if name == "cosine":
        assert lrs[0] < lrs[5]  # warm-up


def test_auto_lr_by_strategy_and_model_kind():
    convnet = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU())
    transformer = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, batch_first=True), 1)
    assert auto_lr("full", "adamw", convnet) == (1e-3, "convnet")
    assert auto_lr("two-stage", "adamw", transformer) == (5e-5, "transformer")
    assert auto_lr("linear-probe", "adamw", transformer) == (1e-3, "head")
    assert auto_lr("lora", "adamw", transformer) == (5e-4, "lora")
    assert auto_lr("full", "sgd", convnet) == (1e-2, "convnet")


def test_auto_epochs_give_a_small_set_enough_steps_and_a_large_one_its_epochs():
    epochs, why = auto_epochs(20, 8)  # 3 steps an epoch
    assert epochs * 3 >= AUTO_STEPS > (epochs - 1) * 3 and epochs > AUTO_EPOCHS and "steps" in why
    assert auto_epochs(10_000, 8) == (AUTO_EPOCHS, f"{AUTO_EPOCHS} epochs of 1250 optimizer steps")
    assert auto_epochs(3, 64)[0] == AUTO_STEPS  # one step an epoch

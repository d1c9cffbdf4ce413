import torch
from torch import nn

from sft.recipe import HeadStrategy as Strategy  # the strategies of a new head
from sft.training.strategies import Schedule, set_frozen_modules_eval

GROUPS = [["0.weight", "1.weight", "1.bias"], ["2.weight", "3.weight", "3.bias"], ["4.weight"]]


def backbone():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4),
                         nn.Conv2d(4, 4, 3, bias=False))


def trainable(module):
    return {n for n, p in module.named_parameters() if p.requires_grad}


def test_schedules():
    cases = {"linear-probe": [0, 0, 0, 0], "full": [3, 3, 3, 3], "partial": [2, 2, 2, 2],
             "two-stage": [0, 3, 3, 3], "gradual": [0, 1, 2, 3]}
    for name, expected in cases.items():
        schedule = Schedule(Strategy(name=name), GROUPS)
        assert [schedule.trainable_groups(e) for e in range(4)] == expected, name


def test_apply_freezes_from_the_bottom_and_puts_frozen_batchnorm_in_eval():
    model = backbone()
    Schedule(Strategy(name="partial", trainable_groups=1), GROUPS).apply(model, 0)
    assert trainable(model) == {"4.weight"}
    assert not model[1].training and not model[3].training and model[4].training
    Schedule(Strategy(name="full"), GROUPS).apply(model, 0)
    assert all(m.training for m in model.modules())


def test_frozen_batchnorm_statistics_do_not_move():
    model = backbone()
    Schedule(Strategy(name="partial", trainable_groups=1), GROUPS).apply(model, 0)
    before = model[1].running_mean.clone(), model[3].running_var.clone()
    model(torch.randn(8, 3, 16, 16)).sum().backward()
    assert torch.equal(before[0], model[1].running_mean) and torch.equal(before[1], model[3].running_var)


def test_lr_scales():
    assert Schedule(Strategy(name="full", lr_decay=0.5), GROUPS).lr_scales() == [0.125, 0.25, 0.5]
    two_stage = Schedule(Strategy(name="two-stage"), GROUPS).lr_scales()
    assert abs(two_stage[0] - 0.1) < 1e-9 and two_stage[-1] > two_stage[0]


def test_parameter_free_modules_follow_their_parent():
    model = nn.Sequential(nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5)), nn.Dropout(0.5), nn.Linear(2, 2))
    model[0][0].weight.requires_grad_(False)
    model[0][0].bias.requires_grad_(False)
    set_frozen_modules_eval(model)
    assert not model[0].training and not model[0][1].training and model[1].training

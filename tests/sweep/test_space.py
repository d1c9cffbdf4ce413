"""The search space file: every form Optuna draws from, and a clear error for each mistake before any trial."""

import pytest

from sft import load_recipe
from sft.errors import UserError
from sft.sweep.space import check_space, overrides, read_space


def space(tmp_path, text):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


def test_each_form_is_read(tmp_path):
    dims = {d.key: d for d in read_space(space(tmp_path, """
optim.lr: {log: [1e-5, 1e-2]}
optim.weight_decay: {uniform: [0, 0.1]}
trainer.epochs: {int: [2, 6], step: 2}
strategy.name: [linear-probe, two-stage, full]
"""))}
    assert (dims["optim.lr"].kind, dims["optim.lr"].low, dims["optim.lr"].high) == ("log", 1e-5, 1e-2)  # "1e-5": a str
    assert dims["optim.weight_decay"].kind == "uniform" and dims["trainer.epochs"].step == 2
    assert dims["strategy.name"].choices == ("linear-probe", "two-stage", "full")
    assert overrides({"optim.lr": 0.001, "strategy.name": "full"}) == ['optim.lr=0.001', 'strategy.name="full"']


@pytest.mark.parametrize("text, message", [
    ("optim.lr: {log: [0, 1]}", "must be above 0"),
    ("optim.lr: {log: [0.1, 0.01]}", "low 0.1 must be below high 0.01"),
    ("optim.lr: {normal: [0, 1]}", "expected `{log: [low, high]}`"),
    ("trainer.epochs: {int: [1.5, 3]}", "int takes [low, high] (integers)"),
    ("strategy.name: [full]", "two or more different values"),
    ("optim.lr: 0.01", "expected"),
    ("data.train: [a, b]", "is not searched"),
    ("- optim.lr", "expected a mapping"),
])
def test_a_bad_space_names_the_key(tmp_path, text, message):
    with pytest.raises(UserError, match=r"space\.yaml") as e:
        read_space(space(tmp_path, text))
    assert message in str(e.value)


def test_a_key_or_value_the_recipe_refuses_stops_the_sweep_before_a_trial(tmp_path):
    def check(extra):
        return load_recipe(None, ["data.train=x", *extra])
    check_space(read_space(space(tmp_path, "optim.lr: {log: [1e-4, 1e-1]}")), check)
    for text, message in (("optim.lrr: {log: [1e-4, 1e-1]}", "did you mean 'lr'"),
                          ("strategy.name: [full, everything]", "strategy.name = 'everything'")):
        with pytest.raises(UserError, match="refused by the recipe") as e:
            check_space(read_space(space(tmp_path, text)), check)
        assert message in str(e.value)

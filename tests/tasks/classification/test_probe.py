import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from torch import nn

from sft.tasks import get_task
from sft.training.prepare import prepare
from sft.models.backbone import last_linear
from sft.tasks.classification.probe import fit_probe, load_probe
from tests.conftest import tiny_recipe, tiny_text_recipe


def blobs(n: int, seed: int, classes: int = 3, dim: int = 8):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(0)) * 2
    y = torch.arange(n) % classes
    return centres[y] + torch.randn(n, dim, generator=g), y


def test_one_strength_is_scikit_learns_logistic_regression():
    """mean CE + l2/2 |W|^2 is sklearn's C * sum CE + 1/2 |W|^2 divided by C * n: the same minimiser."""
    x, y = blobs(300, 1)
    l2 = 1e-2
    fit = fit_probe(x, y, x, y, classes=3, l2_path=(l2,), max_iter=500)
    ref = LogisticRegression(C=1 / (l2 * len(x)), max_iter=5000, tol=1e-10).fit(x.numpy(), y.numpy())
    ours = torch.softmax(x @ fit.weight.T + fit.bias, 1).numpy()
    assert np.abs(ours - ref.predict_proba(x.numpy())).max() < 2e-3


def test_the_path_keeps_the_strength_that_scores_best_on_validation():
    x, y = blobs(200, 2)
    vx, vy = blobs(200, 3)
    fit = fit_probe(x, y, vx, vy, classes=3)
    assert fit.val_acc == pytest.approx((((vx @ fit.weight.T + fit.bias).argmax(1)) == vy).float().mean().item())
    for l2 in (1e-1, 1e-3):
        other = fit_probe(x, y, vx, vy, classes=3, l2_path=(l2,))
        assert other.val_acc <= fit.val_acc
    head = nn.Sequential(nn.Dropout(0.1), nn.Linear(8, 3))
    load_probe(head, fit)
    assert torch.equal(last_linear(head).weight, fit.weight)


def test_a_head_only_start_loads_the_probe_and_random_does_not(tmp_path, fashion_slice):
    recipe = tiny_recipe(tmp_path, fashion_slice, "strategy.name=two-stage", "strategy.head_init=probe")
    p = prepare(get_task(recipe.task), recipe)
    assert set(p.notes["probe"]) == {"l2", "val_acc", "seconds"}
    x = p.data.features("val", p.data.eval_sets["val"])
    with torch.no_grad():
        accuracy = (p.model.head(x).argmax(1).numpy() == p.splits.val.labels).mean()
    assert accuracy == pytest.approx(p.notes["probe"]["val_acc"], abs=1e-6)
    recipe = tiny_recipe(tmp_path, fashion_slice, "strategy.name=two-stage", "strategy.head_init=random")
    assert "probe" not in prepare(get_task(recipe.task), recipe).notes
    recipe = tiny_recipe(tmp_path, fashion_slice, "strategy.name=two-stage")  # auto: not for a convnet
    assert "probe" not in prepare(get_task(recipe.task), recipe).notes
    recipe = tiny_recipe(tmp_path, fashion_slice, "strategy.name=linear-probe")
    assert "probe" in prepare(get_task(recipe.task), recipe).notes
    recipe = tiny_recipe(tmp_path, fashion_slice, "strategy.name=full", "strategy.head_init=probe")
    assert "probe" not in prepare(get_task(recipe.task), recipe).notes


def test_auto_starts_a_transformer_from_the_probe(tmp_path, fortunes_slice, tiny_bert):
    """Its fine-tuning LR (5e-5) would barely move a new head in the head-only epoch."""
    recipe = tiny_text_recipe(tmp_path, fortunes_slice, tiny_bert, "strategy.name=two-stage")
    assert "probe" in prepare(get_task(recipe.task), recipe).notes
    recipe = tiny_text_recipe(tmp_path, fortunes_slice, tiny_bert, "strategy.name=two-stage",
                              "strategy.head_init=random")
    assert "probe" not in prepare(get_task(recipe.task), recipe).notes

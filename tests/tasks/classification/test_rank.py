"""`sft rank`: every candidate scored from cached features, sorted; a broken candidate is named, the rest ranked."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from sft.cli import app
from sft.errors import UserError
from sft.tasks import get_task
from sft.tasks.classification.tools.rank import SCORES, candidate_features, parse_candidate, rank_backbones, rank_sample, score
from tests.conftest import tiny_recipe

__import__("sft.training.fit")  # imports Lightning now, so its log handler binds to the real stderr, not the runner's
runner = CliRunner()

TASK = get_task("image-classification")


def test_rank_cli_ranks_the_rest_and_names_the_broken_candidate(tmp_path, fashion_slice):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("strategy:\n  name: two-stage\n")
    overrides = [f"data.train={fashion_slice['train']}", "data.classes=[T-shirt, Trouser, Sneaker, Bag]",
                 "data.image_size=32", "model.backbone=timm/test_efficientnet", "model.weights=none",
                 f"run_dir={tmp_path / 'run'}", f"cache_dir={tmp_path / 'cache'}"]
    missing = tmp_path / "missing.pth"
    candidates = f"timm/test_efficientnet,timm/test_efficientnet@{missing},timm/test_resnet@none"
    args = ["rank", str(recipe), *overrides, "--candidates", candidates, "--limit", "120"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "missing.pth" in result.output and "weights file not found" in result.output
    ranking = json.loads((tmp_path / "run-rank" / "rank.json").read_text())
    assert [f["candidate"] for f in ranking["failed"]] == [f"timm/test_efficientnet@{missing}"]
    assert {r["candidate"] for r in ranking["ranked"]} == {"timm/test_efficientnet", "timm/test_resnet@none"}
    logmes = [r["logme"] for r in ranking["ranked"]]
    assert logmes == sorted(logmes, reverse=True) and [r["rank"] for r in ranking["ranked"]] == [1, 2]
    assert ranking["samples"] == 120
    for row in ranking["ranked"]:
        assert row["weights"] == "none"  # the recipe's own backbone keeps the recipe's weights
        assert all(row[s] is not None for s in SCORES), row  # timm test models have a 1000-class head: LEEP, NCE
        assert row["seconds"] > 0 and 0 <= row["knn_acc"] <= 1
    # a second ranking refuses to replace the first, unless asked
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "--overwrite" in again.output
    assert runner.invoke(app, [*args, "--overwrite", "--by", "knn_acc"]).exit_code == 0
    ranking = json.loads((tmp_path / "run-rank" / "rank.json").read_text())
    assert ranking["by"] == "knn_acc"


def test_rank_fails_when_no_candidate_loads(tmp_path, fashion_slice):
    recipe = tiny_recipe(tmp_path, fashion_slice)
    result = runner.invoke(app, ["rank", "--help"])
    assert "--candidates" in result.output
    with pytest.raises(UserError, match="(?s)no candidate could be loaded.*timm/nope: unknown backbone"):
        rank_backbones(TASK, recipe, ["timm/nope"], tmp_path / "out", limit=40)
    with pytest.raises(UserError, match="--by"):
        rank_backbones(TASK, recipe, ["timm/test_efficientnet"], tmp_path / "out", by="accuracy")


def test_scores_see_the_difference_between_a_trained_and_a_scrambled_feature_map(tmp_path, fashion_slice):
    """The same features, then with the rows shuffled against the labels: every feature score must drop. (LEEP and
    NCE read the source head, which is random here: tests/test_transfer.py checks them.)"""
    recipe = tiny_recipe(tmp_path, fashion_slice)
    sample = rank_sample(TASK, recipe, 200)
    cf = candidate_features(TASK, recipe, "timm/test_efficientnet", "none", sample)
    real = score(cf, sample.labels, seed=0)
    cf.features = cf.features[np.random.default_rng(0).permutation(len(cf.features))]
    scrambled = score(cf, sample.labels, seed=0)
    for key in ("logme", "hscore", "knn_acc", "probe_acc"):
        assert real[key] > scrambled[key], (key, real[key], scrambled[key])


def test_parse_candidate(tmp_path, fashion_slice):
    recipe = tiny_recipe(tmp_path, fashion_slice)  # backbone timm/test_efficientnet, weights none
    assert parse_candidate("timm/test_efficientnet", recipe) == ("timm/test_efficientnet", "none")
    assert parse_candidate("torchvision/mobilenet_v2", recipe) == ("torchvision/mobilenet_v2", "imagenet")
    assert parse_candidate(" timm/x@/w@1.pth", recipe) == ("timm/x", "/w@1.pth")

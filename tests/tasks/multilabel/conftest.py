"""The multi-label tests' data and run: examples/multilabel/build.py's 2×2 Fashion-MNIST mosaics, trained briefly on
the tiny timm backbone."""

from pathlib import Path

import pytest

from tests.conftest import built_example, sft


@pytest.fixture(scope="session")
def mosaics(tmp_path_factory) -> Path:
    """120 train, 60 val, 40 test mosaics at 32 px, labelled with the garments they show."""
    return built_example("multilabel", tmp_path_factory, train=120, val=60, test=40, size=32)


@pytest.fixture(scope="session")
def tiny_multilabel_run(tmp_path_factory, mosaics) -> Path:
    """One trained tiny image-multilabel run (fp32, two-stage from the one-vs-rest probe); tests write only under
    RUN/eval*, RUN/export* or in copies."""
    tmp = tmp_path_factory.mktemp("multilabel-run")
    recipe = tmp / "mosaics.yaml"
    recipe.write_text("\n".join([
        "task: image-multilabel", "data:", *(f"  {s}: {mosaics / s}.csv" for s in ("train", "val", "test")),
        "  image_size: 32", "  augment: none", "  batch_size: 32", "model:", "  backbone: timm/test_efficientnet",
        "  weights: none", "strategy:", "  name: two-stage", "  head_init: probe", "optim:", "  lr: 0.01",
        "trainer:", "  epochs: 2", "  precision: 32-true", "  progress: false", f"run_dir: {tmp / 'run'}",
        f"cache_dir: {tmp / 'cache'}"]) + "\n")
    result = sft("train", recipe)
    assert result.exit_code == 0, result.output
    return tmp / "run"

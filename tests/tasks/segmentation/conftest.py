"""The segmentation tests' recipe file and one finished run that eval, audit and checkpoint tests share."""

import pytest

from tests.conftest import sft


def recipe(tmp_path, data, *lines):
    path = tmp_path / "seg.yaml"
    path.write_text("\n".join([
        "task: segmentation", "data:", f"  train: {data / 'train'}", f"  val: {data / 'val'}",
        f"  test: {data / 'test'}", "  image_size: 64", "  batch_size: 8", "trainer:", "  epochs: 2",
        "  progress: false", f"run_dir: {tmp_path / 'run'}", f"cache_dir: {tmp_path / 'cache'}", *lines]) + "\n")
    return path


@pytest.fixture(scope="session")
def frozen_run(tmp_path_factory, segmentation_set):
    """ImageNet MobileNetV2, frozen (linear-probe: only the new Unet decoder trains). Tests may write RUN/eval and
    the temperature into model.json, nothing else."""
    tmp_path = tmp_path_factory.mktemp("seg-run")
    result = sft("train", recipe(tmp_path, segmentation_set, "strategy:", "  name: linear-probe", "optim:",
                                 "  loss: ce+dice"))
    assert result.exit_code == 0, result.output
    return tmp_path / "run"

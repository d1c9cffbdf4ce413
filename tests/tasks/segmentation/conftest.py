"""The segmentation tests' recipe file and one finished run that eval, audit and checkpoint tests share."""

import pytest

from tests.conftest import sft, task_recipe


def recipe(tmp_path, data, *lines):
    return task_recipe(tmp_path, "segmentation", data / "train", data / "val", data / "test", 2, *lines)


@pytest.fixture(scope="session")
def frozen_run(tmp_path_factory, segmentation_set):
    """ImageNet MobileNetV2, frozen (linear-probe: only the new Unet decoder trains). Tests may write RUN/eval and
    the temperature into model.json, nothing else."""
    tmp_path = tmp_path_factory.mktemp("seg-run")
    result = sft("train", recipe(tmp_path, segmentation_set, "model:", "  decoder: unet", "  decoder_channels: 256",
                                 "strategy:", "  name: linear-probe", "optim:", "  loss: ce+dice"))
    assert result.exit_code == 0, result.output
    return tmp_path / "run"

"""The detection tests' composites and recipe file."""

from pathlib import Path

import pytest

from tests.conftest import built_example, task_recipe


@pytest.fixture(scope="module")
def detection_set(tmp_path_factory) -> Path:
    """examples/detection/build.py's composites: 16 train, 8 val, 8 test canvases of 96 px."""
    return built_example("detection", tmp_path_factory, train=16, val=8, test=8, size=96)


def recipe(tmp_path, data, *lines):
    return task_recipe(tmp_path, "detection", data / "train", data / "val" / "annotations.json", data / "test", 1,
                       *lines)

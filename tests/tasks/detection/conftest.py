"""The detection tests' composites and recipe file."""

from pathlib import Path

import pytest

from tests.conftest import built_example


@pytest.fixture(scope="module")
def detection_set(tmp_path_factory) -> Path:
    """examples/detection/build.py's composites: 16 train, 8 val, 8 test canvases of 96 px."""
    return built_example("detection", tmp_path_factory, train=16, val=8, test=8, size=96)


def recipe(tmp_path, data, *lines):
    path = tmp_path / "det.yaml"
    path.write_text("\n".join([
        "task: detection", "data:", f"  train: {data / 'train'}", f"  val: {data / 'val' / 'annotations.json'}",
        f"  test: {data / 'test'}", "  image_size: 64", "  batch_size: 8", "trainer:", "  epochs: 1",
        "  progress: false", f"run_dir: {tmp_path / 'run'}", f"cache_dir: {tmp_path / 'cache'}", *lines]) + "\n")
    return path

"""The detection tests' composites and recipe file."""

import importlib.util
from pathlib import Path

import pytest

FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="module")
def detection_set(tmp_path_factory) -> Path:
    """examples/detection/build.py's composites: 16 train, 8 val, 8 test canvases of 96 px."""
    if not FASHION.exists():
        pytest.skip("dataset-fashion-mnist is not installed")
    spec = importlib.util.spec_from_file_location("detection_build", Path(__file__).parents[3] / "examples" /
                                                  "detection" / "build.py")
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    out = tmp_path_factory.mktemp("detection") / "data"
    builder.build(out, train=16, val=8, test=8, size=96, seed=0)
    return out


def recipe(tmp_path, data, *lines):
    path = tmp_path / "det.yaml"
    path.write_text("\n".join([
        "task: detection", "data:", f"  train: {data / 'train'}", f"  val: {data / 'val' / 'annotations.json'}",
        f"  test: {data / 'test'}", "  image_size: 64", "  batch_size: 8", "trainer:", "  epochs: 1",
        "  progress: false", f"run_dir: {tmp_path / 'run'}", f"cache_dir: {tmp_path / 'cache'}", *lines]) + "\n")
    return path

"""The README's examples, run as written on the real assets (MobileNetV2 ImageNet weights, Fashion-MNIST)."""

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import sft.training.fit  # noqa: F401  (Lightning's log handler binds to the real stderr)
from sft.cli import app

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text()


def in_a_copy(tmp_path, monkeypatch, needs: str) -> None:
    """Work in a copy of examples/ (without built data), as a user in a fresh checkout would; skip without `needs`."""
    if not Path(needs).exists():
        pytest.skip(f"{needs} is not installed")
    shutil.copytree(ROOT / "examples", tmp_path / "examples", ignore=shutil.ignore_patterns("data"))
    monkeypatch.chdir(tmp_path)


def run_block(block: str, script_args: list[str], train_args: list[str]):
    """Each line of a bash block as written: `python` scripts with `script_args`, `sft train` with `train_args`
    (shorter runs), other `sft` commands as they are; returns the last command's result."""
    result = None
    for line in block.splitlines():
        line = line.split("  #")[0].strip()
        if line.startswith("python "):
            subprocess.run([sys.executable, *shlex.split(line)[1:], *script_args], check=True)
            continue
        args = shlex.split(line)[1:]
        if args[0] == "train":
            args += train_args
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, (line, result.output)
    return result


@pytest.mark.slow
def test_readme_python_block_and_cli_lines(tmp_path, monkeypatch):
    if not Path("/usr/share/datasets/fashion-mnist").exists():
        pytest.skip("dataset-fashion-mnist is not installed")
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    monkeypatch.chdir(tmp_path)
    block = re.search(r"```python\n(.*?)```", README, re.S).group(1)
    scope: dict = {}
    exec(block, scope)
    run = scope["run"]
    assert run.metrics["test_acc"] > 0.75  # one head-only epoch on real ImageNet features
    for name, value in (("shoe.png", 0), ("coat.png", 255)):
        Image.fromarray(np.full((28, 28), value, np.uint8)).save(name)
    for line in re.findall(r"^sft (eval|predict) runs/fashion_mnist(.*?)(?:\s+#.*)?$", README, re.M):
        command, rest = line
        result = CliRunner().invoke(app, [command, str(run.dir), *rest.split()])
        assert result.exit_code == 0, result.output
    # the imbalanced/noisy-data block: audit as written, then the two trainings shortened to their first epoch
    block = re.search(r"```bash\n(sft audit.*?)```", README, re.S).group(1)
    for line in block.splitlines():
        args = line.split("#")[0].split()[1:]
        args.append("data.test_limit=2000")  # as in the python block: a slice of the 10k test images
        if args[0] == "train":
            args.append("trainer.epochs=1")
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, (line, result.output)
    assert Path("runs/fashion_mnist-audit/audit.html").exists()
    assert Path("runs/cleaned/metrics.json").exists() and Path("runs/balanced/metrics.json").exists()


@pytest.mark.slow
def test_readme_text_block(tmp_path, monkeypatch):
    """The text-classification block as written, with the real MiniLM and fortunes; the trainings are shortened
    (a head-only epoch on a slice) so the test takes seconds, not the recipe's minutes."""
    if not Path("/usr/share/games/fortunes/computers").exists():
        pytest.skip("fortunes is not installed")
    shutil.copytree(ROOT / "examples", tmp_path / "examples", ignore=shutil.ignore_patterns("data"))
    monkeypatch.chdir(tmp_path)
    block = re.search(r"```bash\n(python examples/fortunes/build.py.*?)```", README, re.S).group(1)
    shorter = ["strategy.name=linear-probe", "trainer.epochs=1", "data.train_limit=200", "data.test_limit=60",
               f"cache_dir={tmp_path / 'cache'}"]
    result = run_block(block, [], shorter)
    assert Path("examples/fortunes/data/train.csv").exists()
    assert "pets" in result.output and "law" in result.output  # the predict line's table
    assert Path("runs/fortunes-lora/metrics.json").exists()


@pytest.mark.slow
def test_readme_lr_find_rank_auto_block(tmp_path, monkeypatch):
    in_a_copy(tmp_path, monkeypatch, "/usr/share/datasets/fashion-mnist")
    block = re.search(r"```bash\n(sft lr-find.*?)```", README, re.S).group(1)
    for line in block.splitlines():
        args = shlex.split(line.split("  #")[0])[1:]
        if args[0] == "train":
            args += ["trainer.epochs=1", "data.test_limit=2000"]  # the choice is what is tested, not the training
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, (line, result.output)
    assert Path("runs/fashion_mnist-lr-find/lr_find.png").exists() and Path("runs/fashion_mnist-rank/rank.json").exists()
    metrics = json.loads(Path("runs/auto/metrics.json").read_text())
    assert metrics["strategy_auto"]["chosen"] == metrics["strategy"] and metrics["lr_find"]["suggestion"] > 0


@pytest.mark.slow
def test_readme_segmentation_block(tmp_path, monkeypatch):
    """The segmentation block as written: a smaller composite set and one short epoch, the same commands."""
    in_a_copy(tmp_path, monkeypatch, "/usr/share/datasets/fashion-mnist")
    Image.fromarray(np.full((100, 80, 3), 60, np.uint8)).save("img.png")
    block = re.search(r"```bash\n(python examples/segmentation/build.py.*?)```", README, re.S).group(1)
    run_block(block, ["--train", "32", "--val", "8", "--test", "8"],
              ["trainer.epochs=1", "data.image_size=64", f"cache_dir={tmp_path / 'cache'}"])
    assert Path("runs/segmentation/eval/report.html").exists()
    assert Image.open("masks/img.png").size == (80, 100)

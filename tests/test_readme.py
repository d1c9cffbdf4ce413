"""The commands of README.md and docs/*.md, run as written on the real assets (shipped weights, Fashion-MNIST,
fortunes). Every ```bash block that holds an `sft` line is run by a test here, its trainings shortened (RUN_BY);
a docs/ block that cannot run here (a server) names the test that covers it instead (NOT_RUN). The first test
checks that no block is left out, so a command added to the docs without a test fails."""

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
FASHION = "/usr/share/datasets/fashion-mnist"
FORTUNES = "/usr/share/games/fortunes/computers"

RUN_BY = {  # (document, how the block's first line starts): the test below that runs that block
    ("README.md", ". .venv/bin/activate"): "test_recipe_blocks",
    ("docs/recipe.md", "sft recipe > my.yaml"): "test_recipe_blocks",
    ("README.md", "sft train examples/fashion_mnist.yaml"): "test_image_classification_blocks",
    ("docs/evaluation.md", "sft report runs/fashion_mnist"): "test_image_classification_blocks",
    ("docs/deploy.md", "sft export runs/fashion_mnist"): "test_image_classification_blocks",
    ("docs/image-classification.md", "sft audit examples/fashion_mnist.yaml"): "test_audit_block",
    ("docs/recipe.md", "sft lr-find"): "test_lr_find_rank_auto_block",
    ("docs/sweeps.md", "sft sweep examples/fashion_mnist.yaml"): "test_sweep_block",
    ("README.md", "python examples/fortunes/build.py"): "test_text_classification_blocks",
    ("docs/text-classification.md", "sft train examples/fortunes/fortunes.yaml"): "test_text_classification_blocks",
    ("README.md", "python examples/regression/build.py"): "test_regression_blocks",
    ("docs/regression.md", "sft export runs/regression"): "test_regression_blocks",
    ("README.md", "python examples/multilabel/build.py"): "test_multilabel_blocks",
    ("docs/multilabel.md", "sft export runs/multilabel"): "test_multilabel_blocks",
    ("README.md", "python examples/segmentation/build.py"): "test_segmentation_blocks",
    ("docs/segmentation.md", "sft audit examples/segmentation/segmentation.yaml"): "test_segmentation_blocks",
    ("README.md", "python examples/detection/build.py"): "test_detection_block",
    ("docs/deploy.md", "sft export runs/detection"): "test_detection_block",
    ("README.md", "python examples/instruct/build.py"): "test_instruction_tuning_block",
    ("docs/deploy.md", "sft export runs/instruct-fortunes"): "test_instruction_tuning_block",
}
NOT_RUN = {  # docs/ blocks (never README.md's) that no test here runs, and what covers them
    ("docs/deploy.md", "sft serve runs/fashion_mnist"): "a server that runs until stopped: tests/serve/test_server.py "
                                                        "starts `sft serve` and talks HTTP to it",
    ("docs/deploy.md", "sft serve runs/segmentation"): "servers: tests/serve/test_segmentation.py and "
                                                       "tests/serve/test_detection.py serve such runs over HTTP",
    ("docs/deploy.md", "sft serve runs/instruct-fortunes"): "a server: tests/serve/test_openai_api.py serves a "
                                                            "causal-LM run and runs deploy.md's Python example on it",
    ("docs/regression.md", "sft serve runs/regression"): "a server: tests/serve/test_regression.py serves a "
                                                         "regression run and asks it for intervals",
}


def documents() -> list[str]:
    return ["README.md", *sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md"))]


def bash_blocks(doc: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", (ROOT / doc).read_text(), re.S)


def block(doc: str, first: str) -> str:
    """The ```bash block of `doc` whose first line starts with `first`."""
    found = [b for b in bash_blocks(doc) if b.startswith(first)]
    assert len(found) == 1, f"{doc}: {len(found)} bash blocks start with {first!r}"
    return found[0]


def command(line: str) -> str:
    return line.split("  #")[0].strip()


def test_every_command_in_the_docs_is_run_by_a_test():
    for key, test in RUN_BY.items():
        block(*key)  # each names exactly one block
        assert test.startswith("test_") and callable(globals().get(test)), f"{key}: no test {test}"
    for key in NOT_RUN:
        assert key[0] != "README.md", f"{key}: every command of README.md is run by a test"
        block(*key)
    for doc in documents():
        for text in bash_blocks(doc):
            if not any(command(line).startswith("sft ") for line in text.splitlines()):
                continue
            keys = [k for k in (*RUN_BY, *NOT_RUN) if k[0] == doc and text.startswith(k[1])]
            assert len(keys) == 1, f"{doc}: no test runs the block\n{text}"
    assert len(re.findall(r"```python\n", (ROOT / "README.md").read_text())) == 1  # the one the image test runs


def in_a_copy(tmp_path, monkeypatch, needs: str) -> None:
    """Work in a copy of examples/ (without built data), as a user in a fresh checkout would; skip without `needs`."""
    if not Path(needs).exists():
        pytest.skip(f"{needs} is not installed")
    shutil.copytree(ROOT / "examples", tmp_path / "examples", ignore=shutil.ignore_patterns("data"))
    monkeypatch.chdir(tmp_path)


def run_block(text: str, script_args: list[str] = (), extra: dict[str, list[str]] | None = None):
    """Each line of a bash block as written: `python` scripts with `script_args` appended, `sft COMMAND ...` with
    `extra[COMMAND]` appended (shorter trainings), `> FILE` writing the output; returns the last command's result."""
    result = None
    for line in text.splitlines():
        line = command(line)
        if not line or line.startswith(". "):  # activating the venv: the test already runs in it
            continue
        words = shlex.split(line)
        out = None
        if ">" in words:
            words, out = words[:words.index(">")], words[words.index(">") + 1]
        if words[0] == "python":
            subprocess.run([sys.executable, *words[1:], *script_args], check=True)
            continue
        assert words[0] == "sft", f"not a command this test runs: {line}"
        result = CliRunner().invoke(app, [*words[1:], *(extra or {}).get(words[1], [])])
        assert result.exit_code == 0 and "Traceback" not in result.output, (line, result.output)
        if out:
            Path(out).write_text(result.output)
    return result


def test_recipe_blocks(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_block(block("README.md", ". .venv/bin/activate"))
    assert "task: segmentation" in Path("my.yaml").read_text()
    result = run_block(block("docs/recipe.md", "sft recipe > my.yaml"))
    assert "task: image-classification" in Path("my.yaml").read_text()
    assert "task: causal-lm" in result.output and "generation:" in result.output


@pytest.mark.slow
def test_image_classification_blocks(tmp_path, monkeypatch):
    """README's image block and Python block, then the evaluation and export pages' blocks on the same run; the
    trainings are one head-only epoch on ImageNet features of the real data."""
    in_a_copy(tmp_path, monkeypatch, FASHION)
    for name, value in (("shoe.png", 0), ("coat.png", 255)):
        Image.fromarray(np.full((28, 28), value, np.uint8)).save(name)
    shorter = {"train": ["trainer.epochs=1", "data.test_limit=2000"]}
    run_block(block("README.md", "sft train examples/fashion_mnist.yaml"), extra=shorter)
    assert Path("runs/fashion_mnist/eval/report.html").exists() and Path("runs/probe/metrics.json").exists()

    scope: dict = {}
    exec(re.search(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1), scope)
    assert scope["run"].metrics["test_acc"] > 0.75

    run_block(block("docs/evaluation.md", "sft report runs/fashion_mnist"))
    assert Path("compare.html").exists()
    run_block(block("docs/deploy.md", "sft export runs/fashion_mnist"))
    assert json.loads(Path("runs/fashion_mnist/export/parity.json").read_text())


@pytest.mark.slow
def test_audit_block(tmp_path, monkeypatch):
    """The imbalanced/noisy-data block: the audit as written, the two trainings shortened to their first epoch."""
    in_a_copy(tmp_path, monkeypatch, FASHION)
    limit = ["data.test_limit=2000"]  # a slice of the 10k test images
    run_block(block("docs/image-classification.md", "sft audit examples/fashion_mnist.yaml"),
              extra={"audit": limit, "train": [*limit, "trainer.epochs=1"]})
    assert Path("runs/fashion_mnist-audit/audit.html").exists()
    assert Path("runs/cleaned/metrics.json").exists() and Path("runs/balanced/metrics.json").exists()


@pytest.mark.slow
def test_lr_find_rank_auto_block(tmp_path, monkeypatch):
    in_a_copy(tmp_path, monkeypatch, FASHION)
    run_block(block("docs/recipe.md", "sft lr-find"),  # the choice is what is tested, not the training
              extra={"train": ["trainer.epochs=1", "data.test_limit=2000"]})
    assert Path("runs/fashion_mnist-lr-find/lr_find.png").exists()
    assert Path("runs/fashion_mnist-rank/rank.json").exists()
    metrics = json.loads(Path("runs/auto/metrics.json").read_text())
    assert metrics["strategy_auto"]["chosen"] == metrics["strategy"] and metrics["lr_find"]["suggestion"] > 0


@pytest.mark.slow
def test_sweep_block(tmp_path, monkeypatch):
    """The sweeps page's block: 3 trials of the demo's space on a slice, then the best recipe trained."""
    in_a_copy(tmp_path, monkeypatch, FASHION)
    data = ["data.train_limit=300", "data.test_limit=300", f"cache_dir={tmp_path / 'cache'}"]
    run_block(block("docs/sweeps.md", "sft sweep examples/fashion_mnist.yaml"),
              extra={"sweep": ["--trials", "3", *data], "train": [*data, "trainer.epochs=1"]})
    summary = json.loads(Path("runs/fashion_mnist-sweep/summary.json").read_text())
    assert sum(summary["trials"].values()) == 3 and summary["test"]["accuracy"] > 0.4
    assert json.loads(Path("runs/best/metrics.json").read_text())["strategy"] == summary["best_params"]["strategy.name"]


@pytest.mark.slow
def test_text_classification_blocks(tmp_path, monkeypatch):
    """README's text block with the real MiniLM and fortunes, then the text page's LoRA run and Hugging Face
    export; the trainings are shortened (one epoch on a slice; README's run a head-only one) to take seconds."""
    in_a_copy(tmp_path, monkeypatch, FORTUNES)
    shorter = ["trainer.epochs=1", "data.test_limit=60", f"cache_dir={tmp_path / 'cache'}"]
    result = run_block(block("README.md", "python examples/fortunes/build.py"),
                       extra={"train": ["strategy.name=linear-probe", "data.train_limit=200", *shorter]})
    assert Path("examples/fortunes/data/train.csv").exists()
    assert "pets" in result.output and "law" in result.output  # the predict line's table
    run_block(block("docs/text-classification.md", "sft train examples/fortunes/fortunes.yaml"),
              extra={"train": ["data.train_limit=100", *shorter]})
    assert json.loads(Path("runs/fortunes-lora/metrics.json").read_text())["strategy"] == "lora"
    assert Path("runs/fortunes/export-hf/config.json").exists()


@pytest.mark.slow
def test_regression_blocks(tmp_path, monkeypatch):
    """README's regression block (a smaller set of rotated garments, one epoch at 32 px), then the regression page's
    ONNX export and prediction through it on that run."""
    in_a_copy(tmp_path, monkeypatch, FASHION)
    result = run_block(block("README.md", "python examples/regression/build.py"),
                       ["--train", "96", "--val", "32", "--test", "32"],
                       {"train": ["trainer.epochs=1", "data.image_size=32", f"cache_dir={tmp_path / 'cache'}"]})
    assert "angle_low" in result.output and "angle_high" in result.output  # the predict line's intervals
    assert Path("runs/regression/eval/report.html").exists()
    result = run_block(block("docs/regression.md", "sft export runs/regression"))
    assert json.loads(Path("runs/regression/export/parity.json").read_text())["passed"]
    assert "angle_low" in result.output


@pytest.mark.slow
def test_multilabel_blocks(tmp_path, monkeypatch):
    """README's multi-label block (a smaller set of mosaics, one epoch at 32 px), then the multi-label page's ONNX
    export and prediction through it on that run."""
    in_a_copy(tmp_path, monkeypatch, FASHION)
    result = run_block(block("README.md", "python examples/multilabel/build.py"),
                       ["--train", "96", "--val", "32", "--test", "32"],
                       {"train": ["trainer.epochs=1", "data.image_size=32", f"cache_dir={tmp_path / 'cache'}"]})
    assert '"labels"' in result.output and '"probabilities"' in result.output
    assert Path("runs/multilabel/eval/report.html").exists()
    result = run_block(block("docs/multilabel.md", "sft export runs/multilabel"))
    assert json.loads(Path("runs/multilabel/export/parity.json").read_text())["passed"]
    assert "labels" in result.output


@pytest.mark.slow
def test_segmentation_blocks(tmp_path, monkeypatch):
    """README's segmentation block and the segmentation page's audit: a smaller composite set and one short epoch."""
    in_a_copy(tmp_path, monkeypatch, FASHION)
    Image.fromarray(np.full((100, 80, 3), 60, np.uint8)).save("img.png")
    run_block(block("README.md", "python examples/segmentation/build.py"),
              ["--train", "32", "--val", "8", "--test", "8"],
              {"train": ["trainer.epochs=1", "data.image_size=64", f"cache_dir={tmp_path / 'cache'}"]})
    assert Path("runs/segmentation/eval/report.html").exists()
    assert Image.open("masks/img.png").size == (80, 100)
    run_block(block("docs/segmentation.md", "sft audit examples/segmentation/segmentation.yaml"))
    assert Path("runs/segmentation-audit/audit.html").exists()


@pytest.mark.slow
def test_detection_block(tmp_path, monkeypatch):
    """README's detection block (16 training composites and one head-only epoch at 64 px), then the deploy page's
    detection export on that run."""
    in_a_copy(tmp_path, monkeypatch, FASHION)
    Image.fromarray(np.full((100, 80, 3), 60, np.uint8)).save("img.png")
    run_block(block("README.md", "python examples/detection/build.py"),
              ["--train", "16", "--val", "8", "--test", "8", "--size", "96"],
              {"train": ["trainer.epochs=1", "data.image_size=64", "data.batch_size=8",
                         f"cache_dir={tmp_path / 'cache'}"]})
    assert Path("runs/detection/eval/report.html").exists() and Image.open("found/img.png").size == (80, 100)
    run_block(block("docs/deploy.md", "sft export runs/detection"))
    assert json.loads(Path("runs/detection/export/parity.json").read_text())["passed"]


@pytest.mark.slow
def test_instruction_tuning_block(tmp_path, monkeypatch, tiny_causal_lm):
    """README's instruction-tuning block on the real fortunes questions, with a tiny random Llama that has SmolLM2's
    tokenizer in place of SmolLM2 (whose first conversion takes minutes), on a slice; then the deploy page's GGUF
    export of that run."""
    in_a_copy(tmp_path, monkeypatch, FORTUNES)
    build, *commands = block("README.md", "python examples/instruct/build.py").splitlines()
    run_block(build, ["--only", "fortunes"])
    test = Path("examples/instruct/data/fortunes/test.jsonl")  # sft eval scores (and generates for) all of it
    test.write_text("".join(test.read_text().splitlines(keepends=True)[:4]))
    result = run_block("\n".join(commands), extra={"train": [
        f"model.backbone={tiny_causal_lm}", "trainer.epochs=1", "data.train_limit=24", "generation.samples=2",
        f"cache_dir={tmp_path / 'cache'}"]})
    assert ">>>" in result.output  # the prompt, then its streamed answer
    summary = json.loads(Path("runs/instruct-fortunes/eval/metrics.json").read_text())
    assert {"exact_match", "exact_match_before", "perplexity"} <= set(summary)
    run_block(block("docs/deploy.md", "sft export runs/instruct-fortunes"))
    assert json.loads(Path("runs/instruct-fortunes/export-gguf/parity.json").read_text())["passed"]
    assert Path("runs/instruct-fortunes/export-gguf/Modelfile").is_file()

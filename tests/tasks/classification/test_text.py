import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from safetensors.torch import load_file

from tests.conftest import tiny_text_recipe
from sft import fine_tune
from sft.training.prepare import prepare
from sft.errors import UserError
from sft.models.lora import is_lora_parameter
from sft import load_recipe
from sft.tasks import get_task
from sft.data.texts import Tokenize, read_texts, token_lengths
from sft.models.text_encoder import create_text_encoder, layer_groups

TASK = get_task("text-classification")


def write(path, text):
    path.write_text(text)
    return path


# -- reading -------------------------------------------------------------------------------------------------------
def test_reads_csv_tsv_jsonl_and_pairs(tmp_path):
    csv_ = read_texts(write(tmp_path / "a.csv", 'text,label\n"hello, world",b\nbye,a\n'))
    assert csv_.items == ["hello, world", "bye"] and csv_.classes == ["a", "b"] and list(csv_.labels) == [1, 0]
    assert csv_.kind == "text" and csv_.ids == [f"{tmp_path}/a.csv:2", f"{tmp_path}/a.csv:3"]
    tsv = read_texts(write(tmp_path / "a.tsv", "label\ttext\tother\nx\tone\ttwo\n"), pair_column="other")
    assert tsv.items == [("one", "two")] and tsv.text(0) == "one\ttwo"
    jsonl = read_texts(write(tmp_path / "a.jsonl", '{"body": "hi", "y": 3}\n\n{"body": "ho", "y": 4}\n'),
                       text_column="body", label_column="y", classes=["3", "4"])
    assert jsonl.items == ["hi", "ho"] and list(jsonl.labels) == [0, 1]


@pytest.mark.parametrize("name, content, kwargs, message", [
    ("a.csv", "body,label\nhi,a\n", {}, "no column 'text'; the columns are ['body', 'label']"),
    ("a.csv", "text,label\nhi,a\n  ,b\nho,a\n,a\n", {}, "2 empty text(s), at line(s) [3, 5]"),
    ("a.jsonl", '{"text": "hi", "label": "a"}\n{"text": oops}\n', {}, "a.jsonl:2: not valid JSON"),
    ("a.csv", "text,label\nhi,a\nho,c\n", {"classes": ["a", "b"]}, "a.csv:3: label 'c' is not one of the classes"),
    ("a.txt", "hi\n", {}, "texts are read from csv, tsv, jsonl files"),
])
def test_bad_text_files_name_the_problem(tmp_path, name, content, kwargs, message):
    with pytest.raises(UserError, match=None) as e:
        read_texts(write(tmp_path / name, content), **kwargs)
    assert message in str(e.value)


def test_a_label_seen_once_cannot_be_split(tmp_path, tiny_bert):
    data = write(tmp_path / "t.csv", "text,label\n" + "".join(f"text {i},a\n" for i in range(6)) + "lonely,b\n")
    recipe = tiny_text_recipe(tmp_path, {"train": data, "test": data}, tiny_bert)
    with pytest.raises(UserError, match=r"class\(es\) \['b'\] have a single sample"):
        fine_tune(recipe)
    assert not (tmp_path / "run").exists()


# -- the encoder and its inputs --------------------------------------------------------------------------------------
def test_layer_groups_are_embeddings_then_one_per_layer_also_with_lora(tmp_path, tiny_bert, fortunes_slice):
    encoder = create_text_encoder(str(tiny_bert), "pretrained", "mean")[0]
    groups = layer_groups(encoder, 2)
    assert len(groups) == 3 and all("embeddings" in n for n in groups[0])
    assert all(".layer.0." in n for n in groups[1]) and all(".layer.1." in n for n in groups[2])
    assert not any("pooler" in n for g in groups for n in g)
    lora = TASK.build_backbone(tiny_text_recipe(tmp_path, fortunes_slice, tiny_bert, "strategy.name=lora"))
    assert len(lora.groups) == 3
    adapters = [n for g in lora.groups for n in g if is_lora_parameter(n)]
    assert adapters and not any(is_lora_parameter(n) for n in lora.groups[0])  # query/value of each layer


def test_padding_is_per_batch_and_long_texts_are_truncated_and_counted(tiny_bert, fortunes_slice):
    encoder = create_text_encoder(str(tiny_bert), "pretrained", "mean")[0]
    collate = Tokenize(encoder.tokenizer, max_length=12)
    short, labels = collate([("a b", 0), ("a b c d", 1)])
    assert short["input_ids"].shape == (2, 6) and labels.tolist() == [0, 1]  # [CLS] a b c d [SEP]
    long, _ = collate([("word " * 50, 0)])
    assert long["input_ids"].shape == (1, 12)
    samples = read_texts(fortunes_slice["train"])
    lengths = [len(encoder.tokenizer(t)["input_ids"]) for t in samples.items]
    assert token_lengths(encoder.tokenizer, samples).tolist() == lengths and sum(n > 32 for n in lengths) > 0


def test_mean_pooling_ignores_padding(tiny_bert):
    encoder = create_text_encoder(str(tiny_bert), "pretrained", "mean")[0].eval()
    collate = Tokenize(encoder.tokenizer, 48)
    alone = encoder(collate([("a short text", 0)])[0])
    padded = encoder(collate([("a short text", 0), ("a much longer text " * 5, 0)])[0])
    torch.testing.assert_close(alone[0], padded[0], atol=1e-5, rtol=1e-4)


def test_a_tokenizer_that_does_not_match_the_model_is_refused(tmp_path, tiny_bert):
    import shutil
    from transformers import BertConfig
    folder = tmp_path / "mismatch"
    shutil.copytree(tiny_bert, folder)
    config = BertConfig.from_pretrained(folder)
    config.vocab_size = 1000
    config.save_pretrained(folder)
    with pytest.raises(UserError, match="tokenizer has 30522 tokens but the model's embedding has 1000"):
        create_text_encoder(str(folder), "none", "mean")


def test_an_unknown_hub_name_offline_says_so(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)  # read at import (else 23 s of retries)
    with pytest.raises(UserError, match="hub name \\(needs internet"):
        create_text_encoder("someone/no-such-model", "pretrained", "mean")


# -- batches grouped by length ---------------------------------------------------------------------------------------
def train_order(data, epoch: int, world: int = 1, rank: int = 0) -> list[int]:
    """The training sample indices of one epoch on one of `world` simulated processes, as Lightning would draw them."""
    data.trainer = SimpleNamespace(world_size=world, global_rank=rank, current_epoch=epoch)
    data.kept.clear()  # a fresh process (a run keeps its phase's loader across epochs)
    sampler = data.train_dataloader().sampler
    sampler.set_epoch(epoch)
    return list(sampler)


def padded_tokens(data, order: list[int]) -> int:
    batches = [order[i:i + data.batch_size] for i in range(0, len(order), data.batch_size)]
    return sum(int((data.collate([data.train_set[i] for i in b])[0]["attention_mask"] == 0).sum()) for b in batches)


def test_grouped_batches_pad_less_are_reproducible_and_split_across_processes(tmp_path, tiny_bert, fortunes_slice):
    p = prepare(TASK, tiny_text_recipe(tmp_path, fortunes_slice, tiny_bert, "strategy.name=full", "data.batch_size=4"))
    data, n = p.data, len(p.splits.train)
    assert p.recipe.data.group_by_length and len(data.lengths) == n  # the text default
    first, second = train_order(data, 0), train_order(data, 1)
    assert sorted(first) == sorted(second) == list(range(n)) and first != second
    assert train_order(data, 1) == second  # a function of (seed, epoch): a resumed run draws the same batches
    halves = [train_order(data, 1, world=2, rank=r) for r in (0, 1)]
    assert len(halves[0]) == len(halves[1]) == n // 2 and sorted(halves[0] + halves[1]) == list(range(n))
    grouped = padded_tokens(data, first)
    data.lengths = None  # the same run with plain shuffled batches
    shuffled = [train_order(data, epoch) for epoch in (0, 1)]
    assert sorted(shuffled[0]) == list(range(n))
    assert grouped < 0.5 * min(padded_tokens(data, order) for order in shuffled)
    data.trainer = None
    assert list(data.val_dataloader().sampler) == list(range(len(p.splits.val)))  # evaluation keeps its order


class SamplerPerEpoch(Callback):
    def __init__(self):
        self.samplers = []

    def on_train_epoch_start(self, trainer, module):
        self.samplers.append(type(trainer.train_dataloader.sampler).__name__)


def test_a_text_run_trains_on_grouped_batches_after_its_cached_head_epoch(tmp_path, tiny_bert, fortunes_slice):
    seen = SamplerPerEpoch()
    run = fine_tune(tiny_text_recipe(tmp_path, fortunes_slice, tiny_bert, "data.batch_size=8"), callbacks=[seen])
    assert seen.samplers == ["DistributedSampler", "DistributedLengthGroupedSampler"]  # two-stage: head, then all
    assert 0 <= run.metrics["test_acc"] <= 1 and run.metrics["truncated_train_texts"] >= 1


# -- training, every strategy ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", ["linear-probe", "full", "partial", "two-stage", "gradual", "lora"])
def test_every_strategy_trains_text_and_the_run_predicts(tmp_path, tiny_bert, fortunes_slice, strategy):
    recipe = tiny_text_recipe(tmp_path, fortunes_slice, tiny_bert, f"strategy.name={strategy}",
                              "strategy.trainable_groups=1")
    run = fine_tune(recipe)
    assert 0 <= run.metrics["test_acc"] <= 1 and run.metrics["test_samples"] == 48
    assert run.metrics["truncated_train_texts"] >= 1
    model, info = TASK.load_trained(run.dir)
    assert info.task == "text-classification" and info.classes == ["computers", "food", "law", "pets"]
    exported = load_file(run.dir / "model.safetensors")
    last = torch.load(run.dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]  # best may be epoch 0
    start = TASK.build_backbone(recipe).module.state_dict()  # lora: wrapped the same way, base weights as loaded
    changed = {k for k, v in start.items() if not torch.equal(v, last[f"backbone.{k}"])}
    if strategy == "linear-probe":
        assert not changed
    elif strategy in ("partial", "gradual"):  # gradual: the last layer joins at epoch 1
        assert changed and all(".layer.1." in k for k in changed)
    elif strategy == "lora":  # only the adapters (lora_B starts at zero) move
        assert any("lora_B" in k for k in changed) and all(is_lora_parameter(k) for k in changed)
        assert (run.dir / "adapter" / "adapter_config.json").exists() and any(is_lora_parameter(k) for k in exported)
    else:
        assert any("embeddings" in k for k in changed)


def test_text_run_evaluates_and_predicts_from_the_cli(tmp_path, tiny_bert, fortunes_slice):
    from typer.testing import CliRunner
    from sft.cli import app
    run = fine_tune(tiny_text_recipe(tmp_path, fortunes_slice, tiny_bert, "strategy.name=lora"))
    texts = tmp_path / "texts.txt"
    texts.write_text("The compiler crashed again\n\nMy cat sleeps all day\n")
    result = CliRunner().invoke(app, ["predict", str(run.dir), "--file", str(texts), "--text", "Tax law",
                                      "--format", "json", "--top-k", "2"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["text"] for r in rows[::2]] == ["Tax law", "The compiler crashed again", "My cat sleeps all day"]
    assert all(r["label"] in ("computers", "food", "law", "pets") for r in rows)
    wrong = CliRunner().invoke(app, ["predict", str(run.dir), str(texts)])
    assert wrong.exit_code == 2 and "unexpected extra argument" in wrong.output  # texts come by --text or --file


def test_real_minilm_linear_probe_on_real_fortunes(tmp_path, fortunes_slice):
    """The shipped all-MiniLM-L6-v2 embeddings separate real fortune topics far above chance (0.25)."""
    recipe = load_recipe(None, [
        "task=text-classification", f"data.train={fortunes_slice['train']}", f"data.test={fortunes_slice['test']}",
        "strategy.name=linear-probe", "trainer.epochs=15", "optim.lr=0.01", "data.batch_size=16",
        "trainer.progress=false", f"run_dir={tmp_path / 'run'}", f"cache_dir={tmp_path / 'cache'}"])
    assert recipe.model.backbone == "minilm" and recipe.model.weights == "pretrained"
    run = fine_tune(recipe)
    assert run.metrics["test_acc"] >= 0.6, run.metrics
    assert np.isfinite(run.metrics["test_loss"])


def test_audit_of_text_data_shows_snippets(tmp_path, tiny_bert, fortunes_slice):
    from typer.testing import CliRunner
    from sft.cli import app
    recipe = tmp_path / "text.yaml"
    recipe.write_text(f"task: text-classification\ndata:\n  train: {fortunes_slice['train']}\n"
                      f"  test: {fortunes_slice['test']}\nmodel:\n  backbone: {tiny_bert}\ncache_dir: {tmp_path}/c\n")
    result = CliRunner().invoke(app, ["audit", str(recipe), "--out", str(tmp_path / "audit")])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "audit" / "audit.html").read_text()
    assert "<img" not in page and "computers" in page
    report = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert report["counts"]["train"] == {"computers": 27, "food": 27, "law": 27, "pets": 27}

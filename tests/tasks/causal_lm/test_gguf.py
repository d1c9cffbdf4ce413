"""`sft export RUN --format gguf` on a tiny LoRA run: transformers, loading the GGUF file alone, gives the run's
log-probabilities within the stated tolerance and its greedy answers; Q8_0 keeps the answers' top-1 tokens; a file
whose template or tokenizer was damaged on the way is refused (nothing written), and --force writes it with
parity.json saying so; the Modelfile carries the template and the stop tokens."""

import json

import gguf
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from sft.tasks.causal_lm.export import load_tuned
from sft.tasks.causal_lm.gguf import F16_TOLERANCE, FILE, tensor_types
from tests.conftest import sft


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_causal_lm):
    """A LoRA run on short varied conversations with a system turn; its val and test splits hold held-out ones."""
    tmp = tmp_path_factory.mktemp("gguf-run")
    words = ["red", "blue", "green", "cat", "dog", "sun", "moon", "tree"]
    for name, numbers in (("train", range(40)), ("val", range(100, 108)), ("test", range(200, 206))):
        rows = [{"messages": [{"role": "system", "content": "Answer with one word."},
                              {"role": "user", "content": f"Item {n}: {words[n % 8]}?"},
                              {"role": "assistant", "content": words[(n + 1) % 8].title() + "."}]} for n in numbers]
        (tmp / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = tmp / "r.yaml"
    recipe.write_text("task: causal-lm\ngeneration:\n  max_new_tokens: 12\n")
    result = sft("train", recipe, f"data.train={tmp / 'train.jsonl'}", f"data.val={tmp / 'val.jsonl'}",
                 f"data.test={tmp / 'test.jsonl'}", f"model.backbone={tiny_causal_lm}", "data.max_length=96",
                 "data.batch_size=8", "trainer.epochs=4", "optim.lr=1e-1", "trainer.progress=false",
                 f"run_dir={tmp / 'run'}", f"cache_dir={tmp / 'cache'}")
    assert result.exit_code == 0, result.output
    return tmp / "run"


def test_f16_reads_back_with_the_run_logits_answers_template_and_stop_tokens(run):
    result = sft("export", run, "--format", "gguf")
    assert result.exit_code == 0, result.output
    out = run / "export-gguf"
    assert "max |Δ log-prob|" in result.output and "greedy answers equal" in result.output
    parity = json.loads((out / "parity.json").read_text())
    assert parity["passed"] and parity["max_abs_logprob_diff"] <= F16_TOLERANCE == parity["tolerance"]
    assert parity["greedy_same"] == "6/6" and parity["conversations"] == 14  # val, then test
    # norms F32; token_embd and 7 matrices a layer F16; no output.weight (tied embeddings)
    assert tensor_types(out / FILE) == {"F32": 5, "F16": 15}

    # transformers, loading the GGUF file alone: the run's tokenizer, template, stop tokens and log-probabilities
    model, tokenizer = load_tuned(run)
    file_tokenizer = AutoTokenizer.from_pretrained(out, gguf_file=FILE)
    file_model = AutoModelForCausalLM.from_pretrained(out, gguf_file=FILE).eval()
    chat = [{"role": "system", "content": "Answer with one word."}, {"role": "user", "content": "Item 7: tree?"}]
    text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert file_tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) == text
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    assert file_tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"].equal(ids)
    assert file_tokenizer.eos_token == tokenizer.eos_token == "<|im_end|>"
    with torch.no_grad():
        a, b = model(ids).logits.log_softmax(-1), file_model(ids).logits.log_softmax(-1)
    assert 0 < (a - b).abs().max() <= F16_TOLERANCE

    reader = gguf.GGUFReader(str(out / FILE))
    field = lambda key: reader.fields[key].contents()  # noqa: E731
    assert field("general.architecture") == "llama" and field("tokenizer.ggml.pre") == "smollm"
    assert field("tokenizer.chat_template") == tokenizer.chat_template
    assert field("tokenizer.ggml.eot_token_id") == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert field("tokenizer.ggml.padding_token_id") == tokenizer.pad_token_id != tokenizer.eos_token_id

    meta = json.loads((out / "model.json").read_text())
    assert meta["quant"] == "f16" and meta["gguf_id"].startswith("sha256:") and meta["weights_id"].startswith("sha256:")
    modelfile = (out / "Modelfile").read_text()
    assert "FROM ./model.gguf" in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile
    assert '<|im_start|>assistant\n{{ end }}' in modelfile and "{{ $m.Content }}<|im_end|>\n" in modelfile
    assert "PARAMETER temperature 0" in modelfile and "PARAMETER num_predict 12" in modelfile

    again = sft("export", run, "--format", "gguf")
    assert again.exit_code == 2 and "--overwrite" in again.output


def test_q8_0_keeps_the_answers_top1_tokens(run, tmp_path):
    out = tmp_path / "q8"
    result = sft("export", run, "--format", "gguf", "--quant", "q8_0", "--out", out)
    assert result.exit_code == 0, result.output
    parity = json.loads((out / "parity.json").read_text())
    assert parity["passed"] and parity["top1_agreement"] >= 0.99 and parity["quant"] == "q8_0"
    assert tensor_types(out / FILE) == {"F32": 5, "Q8_0": 15}
    tensors = gguf.GGUFReader(str(out / FILE)).tensors
    assert sum(int(t.n_bytes) for t in tensors) < 0.55 * sum(2 * int(t.n_elements) for t in tensors)  # F16's


@pytest.mark.parametrize("damage", ["template", "tokenizer"])
def test_a_damaged_template_or_tokenizer_is_refused_and_force_writes_it_flagged(run, tmp_path, monkeypatch, damage):
    """The file is damaged as it is written (the gguf package's own writer): the read-back check sees it."""
    if damage == "template":
        add = gguf.GGUFWriter.add_chat_template
        monkeypatch.setattr(gguf.GGUFWriter, "add_chat_template",
                            lambda self, t: add(self, t.replace("'<|im_start|>' + message['role']",
                                                                "'<|im_start|> ' + message['role']")))
    else:
        add = gguf.GGUFWriter.add_token_merges
        monkeypatch.setattr(gguf.GGUFWriter, "add_token_merges", lambda self, m: add(self, m[:5000]))
    out = tmp_path / "damaged"
    result = sft("export", run, "--format", "gguf", "--out", out)
    said = " ".join(result.output.split())
    assert result.exit_code == 2 and f"{damage} differs" in said and "nothing written" in said, result.output
    assert not out.exists()

    if damage == "tokenizer":
        return  # --force is the same path for either damage
    result = sft("export", run, "--format", "gguf", "--out", out, "--force")
    assert result.exit_code == 0 and "parity check failed" in result.output, result.output
    parity = json.loads((out / "parity.json").read_text())
    assert not parity["passed"] and any(damage in f for f in parity["failures"])
    assert (out / FILE).is_file()


def test_other_architectures_are_refused_by_name(run, tmp_path):
    import shutil
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("export-gguf"))
    config = json.loads((copy / "model" / "config.json").read_text())
    (copy / "model" / "config.json").write_text(json.dumps(config | {"model_type": "gpt2"}))
    result = sft("export", copy, "--format", "gguf")
    assert result.exit_code == 2 and "converts llama models" in " ".join(result.output.split()), result.output
    assert not (copy / "export-gguf").exists()

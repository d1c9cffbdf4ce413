"""Causal LMs: a GGUF file converted once into a cache folder keyed by its digest (concurrent callers convert it
once), any Hugging Face folder loaded with its tokenizer (pad distinct from eos, a chat template required)."""

import json
import re
import threading
import time

import pytest

from sft.errors import UserError
from sft.models import causal_lm
from sft.models.causal_lm import MARKER, converted_gguf, create_causal_lm, load_causal_lm
from sft.recipe import Lora


def test_conversion_cached_by_digest_and_done_once_under_concurrency(tmp_path, monkeypatch):
    calls = []

    def fake_convert(gguf, digest, out, shipped=None):
        calls.append(digest)
        time.sleep(0.3)  # long enough for the other thread to wait on the lock
        (out / "config.json").write_text("{}")
        (out / MARKER).write_text(json.dumps({"sha256": digest}))
    monkeypatch.setattr(causal_lm, "_convert", fake_convert)
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"weights v1")
    found = []
    threads = [threading.Thread(target=lambda: found.append(converted_gguf(gguf, tmp_path / "cache")))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and found[0] == found[1] and (found[0] / MARKER).is_file()
    assert converted_gguf(gguf, tmp_path / "cache") == found[0] and len(calls) == 1  # cached
    gguf.write_bytes(b"weights v2")  # another file content: another folder
    assert converted_gguf(gguf, tmp_path / "cache") != found[0] and len(calls) == 2
    assert not list((tmp_path / "cache" / "causal-lm").glob(".*.tmp"))  # nothing half-written left behind


def test_folder_loads_with_distinct_pad_and_layer_groups(tiny_causal_lm):
    backbone = create_causal_lm(str(tiny_causal_lm), "pretrained", 128, True, "unused",
                                lora=Lora(lora_rank=4))
    tokenizer = backbone.module.tokenizer
    assert tokenizer.pad_token_id != tokenizer.eos_token_id and tokenizer.chat_template
    assert len(backbone.groups) == 3  # embeddings, then each layer (the final norm with the last)
    lora = [n for n, _ in backbone.module.named_parameters() if "lora_" in n]
    assert lora and all(any(n in g for g in backbone.groups) for n in lora)


def test_no_chat_template_and_unknown_hub_name_are_user_errors(tiny_causal_lm, tmp_path):
    import shutil
    folder = tmp_path / "plain"
    shutil.copytree(tiny_causal_lm, folder)
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="no chat template"):
        load_causal_lm(str(folder), "pretrained", tmp_path)
    with pytest.raises(UserError, match="no such GGUF file"):
        load_causal_lm(str(tmp_path / "missing.gguf"), "pretrained", tmp_path)


def test_a_mistyped_local_folder_is_not_sent_to_the_hub(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    for typo in ("./my-modle", str(tmp_path / "modle"), "models/my/modle"):
        with pytest.raises(UserError, match=re.escape(f"model.backbone {typo}: no such model folder") + ".*smollm2"):
            load_causal_lm(typo, "pretrained", tmp_path)
    with pytest.raises(UserError, match="model.weights must be 'pretrained' or 'none'"):
        load_causal_lm("./my-modle", "/some/folder", tmp_path)

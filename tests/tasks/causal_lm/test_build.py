"""examples/instruct/build.py: the fortunes topics as single-label questions on the text-classification split, and
chatterbot-corpus conversations; both read back by sft's chat reader."""

import importlib.util
import json
from pathlib import Path

import pytest

from sft.data.chat import final_answers, label_set, read_chats

BUILD = Path(__file__).resolve().parents[3] / "examples" / "instruct" / "build.py"


@pytest.fixture(scope="module")
def builder():
    spec = importlib.util.spec_from_file_location("instruct_build", BUILD)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not Path("/usr/share/games/fortunes/computers").exists(), reason="fortunes is not installed")
def test_fortunes_questions_have_the_ten_topics_as_labels(builder, tmp_path):
    counts = builder.fortunes(tmp_path)
    assert counts == {"train": 2098, "test": 711}  # the text-classification split's quotes of at most 300 characters
    train = read_chats(tmp_path / "train.jsonl")
    assert label_set(final_answers(train)) == sorted(builder.TOPICS.split(","))
    assert train.items[0][0]["content"].startswith("Which topic is this quote from? Answer with one word from:")


@pytest.mark.skipif(importlib.util.find_spec("chatterbot_corpus") is None, reason="chatterbot-corpus not installed")
def test_chatterbot_conversations_end_with_answers(builder, tmp_path):
    counts = builder.chatterbot(tmp_path)
    chats = read_chats(tmp_path / "train.jsonl")
    assert len(chats) == counts["train"] > 1000 and counts["test"] > 100
    assert all(chat[-1]["role"] == "assistant" for chat in chats.items)
    assert any(len(chat) > 2 for chat in chats.items)  # multi-turn where the corpus has it
    assert json.loads((tmp_path / "test.jsonl").read_text().splitlines()[0])["topic"]

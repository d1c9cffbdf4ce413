"""Chat data: reading with line-numbered errors, answer-only labels from the template's growing prefixes, the EOS
of every answer trained, truncation counted, examples with nothing to train refused, packed and padded batches."""

import json

import pytest
from transformers import AutoTokenizer

from sft.data.chat import IGNORE, ChatCollate, ChatDataset, encode_chat, label_set, read_chats
from sft.errors import UserError


@pytest.fixture(scope="module")
def tokenizer(tiny_causal_lm):
    return AutoTokenizer.from_pretrained(tiny_causal_lm)


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def trained_text(tokenizer, encoded):
    return tokenizer.decode([t for t, label in zip(encoded.input_ids, encoded.labels) if label != IGNORE])


def test_reads_messages_prompt_completion_and_two_column_csv(tmp_path):
    chats = read_chats(write_jsonl(tmp_path / "a.jsonl", [
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
                      {"role": "assistant", "content": "hello"}]},
        {"prompt": "2+2?", "completion": "4"}]))
    assert chats.items[1] == [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    assert chats.ids == [f"{tmp_path / 'a.jsonl'}:1", f"{tmp_path / 'a.jsonl'}:2"]
    (tmp_path / "b.csv").write_text("question,answer\nwhat colour is the sky?,blue\n")
    assert read_chats(tmp_path / "b.csv").items[0][1]["content"] == "blue"


@pytest.mark.parametrize("row, message", [
    ('{"messages": [', "not valid JSON"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "unknown role 'robot'"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": " "}]}, "empty answer"),
    ({"messages": [{"role": "user", "content": "x"}]}, "no assistant turn"),
    ({"prompt": "x", "completion": ""}, "empty answer"),
    ({"question": "x"}, "expected `messages` or `prompt`"),
])
def test_errors_name_the_line(tmp_path, row, message):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "ok", "completion": "fine"}, row])
    with pytest.raises(UserError, match=message) as e:
        read_chats(path)
    assert f"{path}:2" in str(e.value)


def test_only_answers_and_their_end_of_turn_are_trained(tokenizer):
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello there"}, {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"}]
    encoded = encode_chat(tokenizer, chat, 512)
    assert trained_text(tokenizer, encoded) == "hello there<|im_end|>4<|im_end|>"
    assert encoded.trainable == sum(label != IGNORE for label in encoded.labels)
    assert tokenizer.pad_token_id != tokenizer.eos_token_id


def test_template_without_generation_prompt_and_without_end_token(tokenizer):
    """A stock template that knows no add_generation_prompt and closes answers with no special token: the answer
    (with its header) is still found, and the EOS is appended and trained."""
    plain = tokenizer.chat_template
    try:
        tokenizer.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        encoded = encode_chat(tokenizer, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
                              64)
        assert trained_text(tokenizer, encoded).strip() == f"assistant: yo{tokenizer.eos_token}"
    finally:
        tokenizer.chat_template = plain


def test_truncation_counted_and_examples_without_answer_tokens_refused(tmp_path, tokenizer):
    chats = read_chats(write_jsonl(tmp_path / "d.jsonl", [
        {"prompt": "short", "completion": "yes"}, {"prompt": "long " * 200, "completion": "no"}]))
    with pytest.raises(UserError, match="1 of 2 example\\(s\\) have no answer token.*d.jsonl:2"):
        ChatDataset(chats, tokenizer, 64).check("data.train", 64)
    facts = ChatDataset(chats, tokenizer, 1000).check("data.train", 1000)
    assert facts["truncated"] == 0 and facts["examples"] == 2
    labels = ChatDataset(chats.subset([0]), tokenizer, 1000).encoded[0].labels
    end = max(i for i, label in enumerate(labels) if label != IGNORE)  # the end-of-turn token is cut
    cut = ChatDataset(chats.subset([0]), tokenizer, end)
    assert cut.check("data.train", end)["truncated"] == 1 and cut.encoded[0].trainable == 1


def test_packed_batch_restarts_positions_and_padded_batch_masks_padding(tokenizer):
    a = encode_chat(tokenizer, [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], 64)
    b = encode_chat(tokenizer, [{"role": "user", "content": "longer"}, {"role": "assistant", "content": "c d"}], 64)
    packed = ChatCollate(tokenizer.pad_token_id, pack=True)([a, b])
    assert packed["input_ids"].shape == (1, len(a.input_ids) + len(b.input_ids)) and "attention_mask" not in packed
    assert packed["position_ids"][0, len(a.input_ids)] == 0
    padded = ChatCollate(tokenizer.pad_token_id, pack=False)([a, b])
    assert padded["attention_mask"].sum() == len(a.input_ids) + len(b.input_ids)
    assert (padded["labels"][padded["attention_mask"] == 0] == IGNORE).all()


def test_label_set_only_for_label_like_answers():
    assert label_set(["food", "law", "food", "law"]) == ["food", "law"]
    assert label_set(["a long free answer of many words", "another one"]) is None


def test_a_csv_row_with_more_fields_than_the_header_is_an_error_not_cut(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("prompt,completion\nhi,hello\nsay hi,hi, there\n")
    with pytest.raises(UserError, match="3 fields but the header has 2; quote fields") as e:
        read_chats(path)
    assert f"{path}:3:" in str(e.value)

"""Reading text data: line numbers where a row starts (quoted fields may span lines), long texts read the same from
CSV and JSONL, and bytes that are not UTF-8 named by line and column."""

import json

import pytest

from sft.data.texts import read_texts
from sft.errors import UserError


def test_line_numbers_count_quoted_multi_line_fields(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text('text,label\n"first\nsecond\nthird line",a\n\nplain,b\n"two\nlines",c\n')
    samples = read_texts(path)
    assert samples.ids == [f"{path}:2", f"{path}:6", f"{path}:7"]  # where each row starts, blank line skipped
    assert samples.items[0] == "first\nsecond\nthird line"
    with pytest.raises(UserError, match=r"t.csv:7: label 'c' is not one of the classes"):
        read_texts(path, classes=["a", "b"])


def test_a_long_text_reads_the_same_from_csv_and_jsonl(tmp_path):
    text = "word " * 200_000  # 1 MB, beyond the csv module's default field limit
    (tmp_path / "t.csv").write_text(f"text,label\n{text},a\nshort,b\n")
    (tmp_path / "t.jsonl").write_text(json.dumps({"text": text, "label": "a"}) + "\n"
                                      + json.dumps({"text": "short", "label": "b"}) + "\n")
    from_csv, from_jsonl = read_texts(tmp_path / "t.csv"), read_texts(tmp_path / "t.jsonl")
    assert from_csv.items == from_jsonl.items and len(from_csv.items[0]) == len(text)


@pytest.mark.parametrize("name, data, where", [
    ("t.csv", b"text,label\nok,a\nbad \xff,b\n", "t.csv:3: not UTF-8 text (byte 0xff at column 5)"),
    ("t.tsv", b"text\tlabel\n\xc3(\ta\n", "t.tsv:2: not UTF-8 text (byte 0xc3 at column 1)"),
    ("t.jsonl", b'{"text": "ok", "label": "a"}\n{"text": "caf\xe9", "label": "b"}\n',
     "t.jsonl:2: not UTF-8 text (byte 0xe9 at column 14)"),
])
def test_bytes_that_are_not_utf8_are_named(tmp_path, name, data, where):
    (tmp_path / name).write_bytes(data)
    with pytest.raises(UserError) as e:
        read_texts(tmp_path / name)
    assert where in str(e.value) and "save the file as UTF-8" in str(e.value)


def test_a_byte_order_mark_is_not_part_of_the_header(tmp_path):
    (tmp_path / "t.csv").write_bytes("\ufefftext,label\nhi,a\nho,b\n".encode())
    assert read_texts(tmp_path / "t.csv").items == ["hi", "ho"]


def test_a_row_with_more_fields_than_the_header_is_an_error_not_cut(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text('text,label\n"a, quoted text",pos\nan unquoted, comma,neg\n')
    with pytest.raises(UserError, match="3 fields but the header has 2; quote fields") as e:
        read_texts(path)
    assert f"{path}:3:" in str(e.value)

"""A text-regression run through the commands beside training: `sft export` (ONNX over free batch and sequence axes,
its parity check passed, `sft predict --engine onnx` giving the PyTorch values for a short and a long text, alone or
padded into one batch), `sft audit` (planted wrong word counts are the suspects, shown as text snippets) and `sft
serve` (POST /predict answers `sft predict`'s values and intervals)."""

import csv
import json

import numpy as np
import pytest

from tests.conftest import LONG_TEXT, SHORT_TEXT, assert_text_cards, exported_text_checks, sft
from tests.serve.conftest import Server

SHORT, LONG = SHORT_TEXT, LONG_TEXT


def predictions(run, *args) -> list[dict]:
    result = sft("predict", run, *args, "--coverage", "0.9", "--format", "json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def assert_same_values(got: list[dict], expected: list[dict]):
    assert [r["text"] for r in got] == [r["text"] for r in expected]
    for g, e in zip(got, expected):
        for column in ("words", "words_low", "words_high", "letters", "letters_low", "letters_high"):
            assert g[column] == pytest.approx(e[column], abs=1e-3), column


def test_text_export_dynamic_sequence_parity_and_onnx_predict(tiny_text_regression_run):
    run = tiny_text_regression_run
    result = sft("export", run, "--overwrite")  # the run is shared with the other text-regression tests
    assert result.exit_code == 0, result.output
    parity = json.loads((run / "export" / "parity.json").read_text())
    assert parity["passed"] and parity["max_abs_diff"] < 1e-4
    assert parity["units"] == "standard deviations of the targets"
    assert set(parity["batch_sizes"]) == {"1", "32"} and parity["samples"] == 30 + 48  # val + test
    assert (run / "export" / "tokenizer.json").is_file()
    ort, names, meta, both_torch, batch = exported_text_checks(run, predictions, assert_same_values, 2)
    assert meta["outputs"] == ["values"] and meta["targets"] == ["words", "letters"]
    assert both_torch[0]["words"] != both_torch[1]["words"]  # two different texts, two different answers
    # the graph alone, on the export's own tokenizer: the short text padded to the long one's 48 tokens
    values = ort.run(None, batch)[0]
    np.testing.assert_allclose(values, [[r["words"], r["letters"]] for r in both_torch], rtol=0, atol=1e-3)


def test_sft_audit_ranks_inflated_word_counts_first(quote_lengths, tiny_bert, tmp_path):
    """The first six quotes of 30 words or more get ten times their word count (300 and up, where the longest quote
    has under 200): the out-of-fold ridge cannot explain them whatever the tiny BERT's random features say, so they
    are the `words` suspects, ranked first; the page shows their texts."""
    rows = [json.loads(line) for line in quote_lengths["train"].read_text().splitlines()]
    planted = [i for i, r in enumerate(rows) if r["words"] >= 30][:6]
    assert len(planted) == 6 and max(r["words"] for r in rows) * 1.5 < min(rows[i]["words"] * 10 for i in planted)
    for i in planted:
        rows[i]["words"] *= 10
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = tmp_path / "quotes.yaml"
    recipe.write_text("\n".join([
        "task: text-regression", "data:", f"  train: {train}", f"  test: {quote_lengths['test']}",
        "  target_columns: [words, letters]", "  val_fraction: 0.25", "  batch_size: 16", "  max_length: 48",
        "model:", f"  backbone: {tiny_bert}", "trainer:", "  progress: false", f"run_dir: {tmp_path / 'run'}",
        f"cache_dir: {tmp_path / 'cache'}"]) + "\n")
    result = sft("audit", recipe, "--out", tmp_path / "audit")
    assert result.exit_code == 0, result.output
    out = tmp_path / "audit"
    with open(out / "suspects.csv", newline="") as f:
        suspects = list(csv.DictReader(f))
    summary = json.loads((out / "audit.json").read_text())
    assert summary["samples"] == len(rows)  # train and val, both from train.jsonl
    assert summary["suspects"]["words"] + summary["suspects"]["letters"] == len(suspects)

    def line(r):  # the row of train.jsonl a suspect is (ids are file:line, counted from 1)
        file, number = r["sample"].rsplit(":", 1)
        assert file == str(train)
        return int(number) - 1
    words = [r for r in suspects if r["given_label"].startswith("words=")]
    print([(line(r), r["given_label"], r["score"]) for r in words])
    assert {line(r) for r in words} >= set(planted) and len(words) <= 2 * len(planted)
    assert {line(r) for r in suspects[:3]} <= set(planted)  # the worst first
    for r in words:
        if line(r) in planted:
            assert float(r["given_label"].split("=")[1]) == rows[line(r)]["words"]
            assert float(r["suggested_label"].split("=")[1]) < rows[line(r)]["words"] / 2
    assert_text_cards((out / "audit.html").read_text(), suspects, rows[line(suspects[0])]["text"])


@pytest.fixture(scope="module")
def server(tiny_text_regression_run, tmp_path_factory):
    s = Server(tiny_text_regression_run, tmp_path_factory.mktemp("logs"))
    yield s
    s.stop()


def test_served_values_and_intervals_are_sft_predict_s(server, tiny_text_regression_run):
    status, meta = server.get("/metadata")
    assert status == 200 and meta["task"] == "text-regression" and meta["targets"] == ["words", "letters"]
    texts = [SHORT, LONG, "My cat sleeps on the keyboard"]
    status, answer = server.post_json({"texts": texts, "coverage": 0.9})
    assert status == 200 and len(answer["results"]) == 3, answer
    rows = predictions(tiny_text_regression_run, *sum((["--text", t] for t in texts), []))
    for served, row in zip(answer["results"], rows):
        for name in ("words", "letters"):
            assert served["values"][name] == pytest.approx(row[name], abs=1e-3)
            assert served["intervals"][name] == pytest.approx([row[f"{name}_low"], row[f"{name}_high"]], abs=1e-3)
    assert len({r["values"]["words"] for r in answer["results"]}) == 3
    status, plain = server.post_json({"texts": [LONG]})
    assert status == 200 and "intervals" not in plain["results"][0]
    for name, value in plain["results"][0]["values"].items():  # alone or batched with shorter texts
        assert value == pytest.approx(answer["results"][1]["values"][name], abs=1e-3)
    assert server.post_json({"texts": [SHORT], "coverage": 1})[0] == 422
    assert server.post_json({"texts": [""]})[0] == 422
    assert server.get("/health")[0] == 200

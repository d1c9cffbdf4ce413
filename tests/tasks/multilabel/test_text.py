"""A text-multilabel run through the commands beside training: `sft export` (ONNX over free batch and sequence axes,
its parity check passed, `sft predict --engine onnx` giving the PyTorch labels and probabilities for a short and a
long text, alone or padded into one batch), `sft audit` (flipped labels rank among the suspects, shown as text
snippets) and `sft serve` (POST /predict answers `sft predict`'s labels, with and without an fnr)."""

import csv
import json

import pytest

from tests.conftest import LONG_TEXT, SHORT_TEXT, assert_text_cards, exported_text_checks, sft
from tests.serve.conftest import Server
from tests.tasks.multilabel.conftest import topic_rows, topics_recipe

SHORT, LONG = SHORT_TEXT, LONG_TEXT


def predictions(run, *args) -> list[dict]:
    result = sft("predict", run, *args, "--format", "json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def probabilities(row: dict) -> list[float]:
    """The probabilities of a prediction row's labels (the row gives them '|'-joined, in its labels' order)."""
    return [float(p) for p in row["probabilities"].split("|") if p]


def assert_same_labels(got: list[dict], expected: list[dict]):
    assert [(r["text"], r["labels"]) for r in got] == [(r["text"], r["labels"]) for r in expected]
    for g, e in zip(got, expected):
        assert probabilities(g) == pytest.approx(probabilities(e), abs=2e-4)  # both rounded to 4 digits


def test_text_export_dynamic_sequence_parity_and_onnx_predict(tiny_text_multilabel_run):
    run = tiny_text_multilabel_run
    result = sft("export", run, "--overwrite")
    assert result.exit_code == 0, result.output
    parity = json.loads((run / "export" / "parity.json").read_text())
    assert parity["passed"] and parity["max_abs_diff"] < 1e-4 and set(parity["batch_sizes"]) == {"1", "32"}
    assert parity["samples"] == 30 + 48 and (run / "export" / "tokenizer.json").is_file()  # val + test
    ort, names, meta, both_torch, batch = exported_text_checks(run, predictions, assert_same_labels, 2)
    info = json.loads((run / "model.json").read_text())
    assert meta["outputs"] == ["probabilities"] and meta["thresholds"] == info["thresholds"]
    assert info["classes"] == ["long", "the"]
    # the graph alone, on the export's own tokenizer: every label's probability, the short text padded to 48 tokens
    probs = ort.run(None, batch)[0]
    assert probs.shape == (2, 2) and ((probs >= 0) & (probs <= 1)).all()  # sigmoids (a random tiny BERT may saturate)
    for p, row in zip(probs, both_torch):
        ranked = sorted(zip(info["classes"], p, info["thresholds"]), key=lambda x: -round(float(x[1]), 4))  # as shown
        picked = [c for c, q, t in ranked if q >= t]
        assert row["labels"] == "|".join(picked)
        assert probabilities(row) == pytest.approx([p[info["classes"].index(c)] for c in picked], abs=2e-4)


def test_sft_audit_ranks_flipped_labels_among_suspects(fortunes_slice, tiny_bert, tmp_path):
    """Every 12th training quote's `long` label flipped (10 of 120). The tiny BERT's random features still tell a long
    quote from a short one (out-of-fold mAP about 0.9 over random inits), so most flipped quotes are flagged and the
    top of the list is mostly theirs; chance would put under one flipped quote in the top ten."""
    rows = topic_rows(fortunes_slice["train"])
    planted = list(range(5, len(rows), 12))
    for i in planted:
        rows[i]["long"] = 1 - rows[i]["long"]
    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    test.write_text("".join(json.dumps(r) + "\n" for r in topic_rows(fortunes_slice["test"])))
    recipe = topics_recipe(tmp_path, train, test, tiny_bert)
    result = sft("audit", recipe, "--out", tmp_path / "audit")
    assert result.exit_code == 0, result.output
    out = tmp_path / "audit"
    with open(out / "suspects.csv", newline="") as f:
        suspects = list(csv.DictReader(f))
    summary = json.loads((out / "audit.json").read_text())
    assert summary["samples"] == len(rows) and summary["suspects"] == len(suspects)  # train and val, from train.jsonl
    assert all(r["kind"] == "label_issue" and r["split"] in ("train", "val") for r in suspects)

    def line(r):  # the row of train.jsonl a suspect is (ids are file:line, counted from 1)
        file, number = r["sample"].rsplit(":", 1)
        assert file == str(train)
        return int(number) - 1
    for r in suspects:  # the given label set is the row's, as written
        assert r["given_label"] == "|".join(c for c in ("long", "the") if rows[line(r)][c])
    hits = [k for k, r in enumerate(suspects) if line(r) in planted]
    chance = len(planted) * len(suspects) / summary["samples"]
    print(f"planted at ranks {hits} of {len(suspects)} suspects (chance {chance:.2f}), map "
          f"{summary['out_of_fold_map']:.3f}")
    assert summary["out_of_fold_map"] > 0.7
    assert len(hits) >= 5 and len(hits) > 2 * chance
    assert sum(k < 10 for k in hits) >= 3
    assert_text_cards((out / "audit.html").read_text(), suspects, rows[line(suspects[0])]["text"])


@pytest.fixture(scope="module")
def server(tiny_text_multilabel_run, tmp_path_factory):
    s = Server(tiny_text_multilabel_run, tmp_path_factory.mktemp("logs"))
    yield s
    s.stop()


def test_served_labels_are_sft_predict_s_with_and_without_an_fnr(server, tiny_text_multilabel_run):
    run = tiny_text_multilabel_run
    status, meta = server.get("/metadata")
    assert status == 200 and meta["task"] == "text-multilabel" and list(meta["thresholds"]) == ["long", "the"]
    texts = [SHORT, LONG, "My cat sleeps on the keyboard"]
    status, answer = server.post_json({"texts": texts})
    assert status == 200 and len(answer["results"]) == 3, answer
    rows = predictions(run, *sum((["--text", t] for t in texts), []))
    for served, row in zip(answer["results"], rows):
        assert "|".join(served["labels"]) == row["labels"] and set(served["probabilities"]) == {"long", "the"}
        assert [served["probabilities"][n] for n in served["labels"]] == pytest.approx(probabilities(row), abs=2e-4)
    status, loose = server.post_json({"texts": texts, "fnr": 0.05})
    assert status == 200 and all(r["fnr"] == 0.05 for r in loose["results"])
    strict = predictions(run, *sum((["--text", t] for t in texts), []), "--fnr", "0.05")
    assert ["|".join(r["labels"]) for r in loose["results"]] == [r["labels"] for r in strict]
    assert all(p >= r["threshold"] - 1e-4 for r in loose["results"]  # the probabilities are rounded to 4 digits
               for p in (r["probabilities"][n] for n in r["labels"]))
    status, error = server.post_json({"texts": [SHORT], "fnr": 1.5})
    assert status == 422 and "fnr" in error["error"]
    assert server.post_json({"texts": [""]})[0] == 422
    assert server.get("/health")[0] == 200

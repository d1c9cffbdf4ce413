"""`sft serve` of an image-multilabel run over HTTP: the labels and probabilities `sft predict` gives, the labels an
`fnr` asks for, and an fnr out of range answered 422 while the server goes on."""

import json

import pytest

from tests.conftest import sft
from tests.serve.conftest import Server


@pytest.fixture(scope="module")
def server(tiny_multilabel_run, tmp_path_factory):
    s = Server(tiny_multilabel_run, tmp_path_factory.mktemp("logs"))
    yield s
    s.stop()


def test_served_labels_are_sft_predict_s_with_and_without_an_fnr(server, tiny_multilabel_run, mosaics):
    status, meta = server.get("/metadata")
    assert status == 200 and meta["task"] == "image-multilabel" and len(meta["thresholds"]) == len(meta["classes"])
    files = sorted((mosaics / "test").glob("*.png"))[:3]
    status, answer = server.post_files([f.read_bytes() for f in files])
    assert status == 200 and len(answer["results"]) == 3, answer
    rows = json.loads(sft("predict", tiny_multilabel_run, *files, "--format", "json").output)
    for served, row in zip(answer["results"], rows):
        assert "|".join(served["labels"]) == row["labels"]
        assert [served["probabilities"][n] for n in served["labels"]] == pytest.approx(
            [float(p) for p in row["probabilities"].split("|") if p], abs=1e-3)
    status, loose = server.post_files([f.read_bytes() for f in files], {"fnr": "0.05"})
    assert status == 200 and all(r["fnr"] == 0.05 for r in loose["results"])
    strict = json.loads(sft("predict", tiny_multilabel_run, *files, "--fnr", "0.05", "--format", "json").output)
    assert ["|".join(r["labels"]) for r in loose["results"]] == [r["labels"] for r in strict]
    status, error = server.post_files([files[0].read_bytes()], {"fnr": "1.5"})
    assert status == 422 and "fnr" in error["error"]
    assert server.get("/health")[0] == 200

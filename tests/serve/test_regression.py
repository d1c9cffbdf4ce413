"""`sft serve` of an image-regression run over HTTP: the values `sft predict` gives, the intervals a `coverage`
asks for, and a coverage out of range answered 422 while the server goes on."""

import json

import pytest

from tests.conftest import sft
from tests.serve.conftest import Server


@pytest.fixture(scope="module")
def server(tiny_regression_run, tmp_path_factory):
    s = Server(tiny_regression_run, tmp_path_factory.mktemp("logs"))
    yield s
    s.stop()


def test_served_values_and_intervals_are_sft_predict_s(server, tiny_regression_run, angles):
    status, meta = server.get("/metadata")
    assert status == 200 and meta["task"] == "image-regression" and meta["targets"] == ["angle"]
    assert "classes" not in meta and meta["preprocess"]["input_size"] == [32, 32]
    files = sorted((angles / "test").glob("*.png"))[:2]
    status, answer = server.post_files([f.read_bytes() for f in files], {"coverage": "0.9"})
    assert status == 200 and len(answer["results"]) == 2, answer
    rows = json.loads(sft("predict", tiny_regression_run, *files, "--coverage", "0.9", "--format", "json").output)
    for served, row in zip(answer["results"], rows):
        assert served["values"]["angle"] == pytest.approx(row["angle"], abs=1e-3)
        assert served["intervals"]["angle"] == pytest.approx([row["angle_low"], row["angle_high"]], abs=1e-3)
    status, plain = server.post_files([files[0].read_bytes()])
    assert status == 200 and "intervals" not in plain["results"][0]
    status, error = server.post_files([files[0].read_bytes()], {"coverage": "1"})
    assert status == 422 and "coverage" in error["error"]
    assert server.get("/health")[0] == 200

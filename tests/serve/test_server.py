"""`sft serve`: the real server process on a free loopback port, spoken to over HTTP — good requests (multipart,
base64, texts on the ONNX engine), concurrent ones that get batched, and bad ones that get 4xx JSON while the server
keeps serving."""

import base64
import http.client
import json
import shutil
import socket
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from tests.conftest import sft
from tests.serve.conftest import Server, png


@pytest.fixture(scope="module")
def image_run(tiny_image_run, tmp_path_factory):
    """A copy of the tiny run, evaluated: its model.json holds a temperature and a prediction-set fit."""
    run = tmp_path_factory.mktemp("served") / "run"
    shutil.copytree(tiny_image_run, run, ignore=shutil.ignore_patterns("export*", "eval*"))
    assert sft("eval", run, "--top-losses", "0").exit_code == 0
    return run


@pytest.fixture(scope="module")
def images(fashion_slice):
    return [png(a) for a in np.load(fashion_slice["test"])["x"][::10][:12]]


@pytest.fixture(scope="module")
def server(image_run, tmp_path_factory):
    s = Server(image_run, tmp_path_factory.mktemp("logs"), "--max-wait-ms", "20", "--max-items", "4",
               "--max-body-mb", "0.05")
    yield s
    s.stop()


def test_health_metadata_openapi_and_loopback_by_default(server, image_run):
    status, health = server.get("/health")
    assert status == 200 and health["status"] == "ok"
    status, meta = server.get("/metadata")
    assert status == 200 and meta["task"] == "image-classification" and meta["engine"] == "torch"
    assert meta["classes"] == ["T-shirt", "Trouser", "Sneaker", "Bag"] and meta["weights_id"].startswith("sha256:")
    assert meta["preprocess"]["input_size"] == [32, 32] and meta["limits"]["max_items"] == 4
    status, spec = server.get("/openapi.json")
    assert status == 200 and set(spec["paths"]["/predict"]["post"]["requestBody"]["content"]) == {
        "application/json", "multipart/form-data"}
    assert server.request("/docs")[0] == 200
    assert f"on http://127.0.0.1:{server.port}" in server.log.read_text()


def test_multipart_and_base64_answer_as_sft_predict_does(server, image_run, images, tmp_path):
    status, answer = server.post_files(images[:2], {"top_k": "2"})
    assert status == 200 and len(answer["results"]) == 2
    files = []
    for i, data in enumerate(images[:2]):
        files.append(tmp_path / f"{i}.png")
        files[-1].write_bytes(data)
    rows = json.loads(sft("predict", image_run, *files, "--top-k", "2", "--format", "json").output)
    served = [p for r in answer["results"] for p in r["predictions"]]
    assert [p["label"] for p in served] == [r["label"] for r in rows]
    assert max(abs(p["probability"] - r["probability"]) for p, r in zip(served, rows)) < 1e-4
    status, again = server.post_json({"images": [base64.b64encode(d).decode() for d in images[:2]], "top_k": 2})
    assert status == 200 and again == answer


def test_a_coverage_adds_the_prediction_set_sft_predict_gives(server, image_run, images, tmp_path):
    b64 = base64.b64encode(images[0]).decode()
    status, answer = server.post_json({"images": [b64], "coverage": 0.9})
    assert status == 200 and answer["results"][0]["set"][0] == answer["results"][0]["predictions"][0]["label"]
    (tmp_path / "0.png").write_bytes(images[0])
    rows = json.loads(sft("predict", image_run, tmp_path / "0.png", "--coverage", "0.9", "--format", "json").output)
    assert answer["results"][0]["set"] == rows[0]["set"]
    status, wide = server.post_files(images[:1], {"coverage": "0.95"})
    assert status == 200 and set(answer["results"][0]["set"]) <= set(wide["results"][0]["set"])
    assert "set" not in server.post_json({"images": [b64]})[1]["results"][0]
    status, error = server.post_json({"images": [b64], "coverage": 1})
    assert status == 422 and "parameter coverage: should be less than 1" in error["error"]
    status, error = server.post_json({"images": [b64], "coverage": 0.99})  # 24 validation samples: at most 0.96
    assert status == 422 and "24 validation samples" in error["error"]


def test_concurrent_requests_are_batched_and_answered_alike(server, images):
    alone = [server.post_json({"images": [base64.b64encode(d).decode()]})[1] for d in images]
    before = server.get("/health")[1]
    with ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(lambda i: server.post_json({"images": [base64.b64encode(images[i % 12]).decode()]}),
                                range(48)))
    assert all(status == 200 for status, _ in answers)
    for i, (_, answer) in enumerate(answers):
        assert answer["results"][0]["predictions"][0]["label"] == alone[i % 12]["results"][0]["predictions"][0]["label"]
        assert abs(answer["results"][0]["predictions"][0]["probability"]
                   - alone[i % 12]["results"][0]["predictions"][0]["probability"]) < 1e-5
    after = server.get("/health")[1]
    assert after["items"] - before["items"] == 48
    assert after["batches"] - before["batches"] < 48 and after["largest_batch"] >= 2


def test_bad_requests_get_4xx_json_and_the_server_keeps_serving(server, images):
    b64 = base64.b64encode(images[0]).decode()
    cases = [
        (server.post_json({"images": [base64.b64encode(b"hello, not an image").decode()]}), 422, "not an image"),
        (server.request("/predict", b"", "application/json"), 400, "empty request body"),
        (server.request("/predict", b"{not json", "application/json"), 400, "not valid JSON"),
        (server.post_json({"imgs": [b64]}), 422, "unknown field(s) ['imgs']"),
        (server.post_json({"texts": ["hello"]}), 422, "unknown field(s) ['texts']"),
        (server.post_json({"images": [b64] * 5}), 422, "too many items: 5"),
        (server.post_json({"images": [b64], "top_k": 0}), 422, "top_k"),
        (server.post_json({"images": [b64], "top_k": True}), 422, "parameter top_k: should be a valid integer"),
        (server.post_files(images[:1], {"top_k": "two"}), 422, "parameter top_k"),
        (server.post_json({"images": ["%%%"]}), 400, "not valid base64"),
        (server.post_json({"images": []}), 422, "no items"),
        (server.post_files(images[:1], name="image"), 422, "unknown field(s) ['image']"),
        (server.request("/predict", b"x" * 60_000, "application/json"), 413, "over the limit"),
        (server.request("/predict", b"hello", "text/plain"), 415, "content type"),
        (server.request("/nowhere"), 404, "Not Found"),
    ]
    for (status, body), expected, message in cases:
        body = body if isinstance(body, dict) else json.loads(body)
        assert status == expected and message in body["error"], (status, body)
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)  # declared too large: refused
    connection.putrequest("POST", "/predict")  # before the body is sent
    connection.putheader("Content-Type", "application/json")
    connection.putheader("Content-Length", str(10 * 2**20))
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 413 and "over the limit" in json.loads(response.read())["error"]
    connection.close()
    assert server.process.poll() is None
    status, answer = server.post_json({"images": [b64], "top_k": "2"})  # a number as a JSON string is taken
    assert status == 200 and len(answer["results"][0]["predictions"]) == 2


def test_text_run_on_the_onnx_engine(tmp_path, tiny_text_runs):
    run = tiny_text_runs["full"]
    shutil.rmtree(run / "export", ignore_errors=True)  # the run is shared with the export tests
    missing = sft("serve", run, "--engine", "onnx")
    assert missing.exit_code == 2 and "sft export" in missing.output
    assert sft("export", run).exit_code == 0
    server = Server(run, tmp_path, "--engine", "onnx")
    try:
        texts = ["My cat sleeps on the keyboard", "The court found the defendant guilty"]
        status, answer = server.post_json({"texts": texts, "top_k": 3})
        assert status == 200 and [len(r["predictions"]) for r in answer["results"]] == [3, 3]
        rows = json.loads(sft("predict", run, *sum((["--text", t] for t in texts), []), "--top-k", "3",
                              "--format", "json").output)
        served = [p for r in answer["results"] for p in r["predictions"]]
        assert [p["label"] for p in served] == [r["label"] for r in rows]
        assert server.get("/metadata")[1]["engine"] == "onnx"
        assert server.post_json({"texts": [""]})[0] == 422
        assert server.post_files([b"abc"])[0] == 422  # multipart is for images
    finally:
        server.stop()


def test_a_taken_port_is_a_one_line_error(image_run):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = sft("serve", image_run, "--port", taken.getsockname()[1])
    assert result.exit_code == 2 and "cannot listen there" in result.output


def test_an_unknown_engine_is_refused_by_the_parser(image_run):
    for command in ("serve", "predict"):
        result = sft(command, image_run, "--engine", "tensorrt")
        assert result.exit_code == 2 and "tensorrt" in result.output and "onnx" in result.output

"""`sft serve` of a detection run: the real server answers each image with the boxes (xyxy in the image's own pixels),
scores and labels that `sft predict` gives, under the `score` and `max_detections` asked for; concurrent requests are
batched; bad parameters and items get 4xx JSON while the server keeps serving."""

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from tests.conftest import built_example, sft
from tests.serve.conftest import Server, b64, image_files, png
from tests.tasks.detection.conftest import recipe

LOW = 0.05  # the detector's own threshold: an untrained run's boxes are all low


@pytest.fixture(scope="module")
def detection_set(tmp_path_factory):
    """examples/detection/build.py's composites, as the detection tests build them."""
    return built_example("detection", tmp_path_factory, train=16, val=8, test=8, size=96)


@pytest.fixture(scope="module")
def run(tmp_path_factory, detection_set):
    tmp_path = tmp_path_factory.mktemp("det-serve")
    path = recipe(tmp_path, detection_set, "model:", "  backbone: timm/test_efficientnet", "  weights: none",
                  "  fpn_channels: 64", "strategy:", "  name: full")
    result = sft("train", path)
    assert result.exit_code == 0, result.output
    return tmp_path / "run"


@pytest.fixture(scope="module")
def files(detection_set, tmp_path_factory):
    """Two test composites (96 px; the run sees 64 px) and one at 120 x 70: boxes come back in each image's pixels."""
    return image_files(detection_set, tmp_path_factory.mktemp("det-images"), (120, 70))


@pytest.fixture(scope="module")
def server(run, tmp_path_factory):
    s = Server(run, tmp_path_factory.mktemp("logs"), "--max-wait-ms", "20", "--max-items", "4")
    yield s
    s.stop()


def same_boxes(found: list[dict], rows: list[dict], tolerance: float) -> None:
    """Detections of one image equal (labels, scores, boxes), each row matched to its own detection: in a batch,
    float rounding may swap boxes of near-equal scores; `rows` are sft predict's (rounded: 4 decimals, 0.1 px)."""
    rows = [r for r in rows if r["class"] is not None]
    assert len(found) == len(rows)
    left = list(found)
    for r in rows:
        match = [d for d in left if d["label"] == r["class"] and abs(d["score"] - r["score"]) <= 6e-5 + tolerance
                 and max(abs(a - b) for a, b in zip(d["xyxy"], r["xyxy"])) <= 0.06 + tolerance * 100]
        assert match, f"no served detection matches {r}"
        left.remove(match[0])


def test_answers_are_sft_predicts_boxes(server, run, files):
    rows = json.loads(sft("predict", run, *files, "--score", str(LOW), "--format", "json").output)
    answers = [server.post_files([f.read_bytes()], {"score": str(LOW)})[1]["results"][0] for f in files]
    for f, answer in zip(files, answers):
        same_boxes(answer["detections"], [r for r in rows if r["file"] == str(f)], 0)
    assert [(a["width"], a["height"]) for a in answers] == [(96, 96), (96, 96), (120, 70)]
    assert sum(len(a["detections"]) for a in answers) > 0, "an empty answer tests nothing: train more"
    wide = answers[2]["detections"]
    assert all(0 <= b[0] <= b[2] <= 120 and 0 <= b[1] <= b[3] <= 70 for b in (d["xyxy"] for d in wide))
    status, body = server.post_json({"images": [b64(f) for f in files], "score": LOW})  # several items batched
    assert status == 200
    for f, answer in zip(files, body["results"]):
        same_boxes(answer["detections"], [r for r in rows if r["file"] == str(f)], 1e-3)


def test_score_and_max_detections(server, files):
    image = b64(files[0])
    everything = server.post_json({"images": [image], "score": LOW})[1]["results"][0]["detections"]
    assert [d["score"] for d in everything] == sorted((d["score"] for d in everything), reverse=True)
    best = server.post_json({"images": [image], "score": LOW, "max_detections": 2})[1]["results"][0]["detections"]
    assert best == everything[:2]
    default = server.post_json({"images": [image]})[1]["results"][0]["detections"]  # sft predict's default: 0.3
    assert default == [d for d in everything if d["score"] >= 0.3]
    assert server.post_files([files[0].read_bytes()], {"score": "1", "max_detections": "3"})[1]["results"] == [
        {"detections": [], "width": 96, "height": 96}]


def test_metadata_and_docs_show_the_runs_parameters(server):
    meta = server.get("/metadata")[1]
    assert meta["task"] == "detection" and meta["engine"] == "torch" and len(meta["classes"]) == 10
    assert meta["image_size"] == 64 and meta["weights_id"].startswith("sha256:") and meta["limits"]["max_items"] == 4
    body = server.get("/openapi.json")[1]["paths"]["/predict"]["post"]["requestBody"]["content"]
    props = body["application/json"]["schema"]["properties"]
    assert set(props) == {"images", "score", "max_detections"} and props["score"]["default"] == 0.3
    assert set(body["multipart/form-data"]["schema"]["properties"]) == {"file", "score", "max_detections"}


def test_concurrent_requests_are_batched_and_answered_alike(server, files):
    alone = [server.post_json({"images": [b64(f)], "score": LOW})[1]["results"][0] for f in files]
    before = server.get("/health")[1]
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda i: server.post_json({"images": [b64(files[i % 3])], "score": LOW}),
                                range(24)))
    assert all(status == 200 for status, _ in answers)
    for i, (_, answer) in enumerate(answers):
        expected = [{"class": d["label"], "score": d["score"], "xyxy": d["xyxy"]} for d in alone[i % 3]["detections"]]
        same_boxes(answer["results"][0]["detections"], expected, 1e-3)
    after = server.get("/health")[1]
    assert after["items"] - before["items"] == 24 and after["batches"] - before["batches"] < 24


def test_bad_parameters_and_items_get_4xx_json_and_the_server_keeps_serving(server, files):
    image = b64(files[0])
    cases = [
        (server.post_json({"images": [image], "score": 2}), 422, "parameter score: should be less than or equal to 1"),
        (server.post_json({"images": [image], "score": "high"}), 422, "parameter score"),
        (server.post_json({"images": [image], "max_detections": 0}), 422, "parameter max_detections"),
        (server.post_json({"images": [image], "max_detections": 2.5}), 422, "parameter max_detections"),
        (server.post_json({"images": [image], "overlay": True}), 422, "unknown field(s) ['overlay']; this run takes "
                                                                     '{"images": [...], "score": 0.3, '
                                                                     '"max_detections": null}'),
        (server.post_files([files[0].read_bytes()], {"max_detections": "many"}), 422, "parameter max_detections"),
        (server.post_files([files[0].read_bytes()], {"top_k": "1"}), 422, "unknown field(s) ['top_k']"),
        (server.post_files([b"GIF89a broken"]), 422, "item 0: not an image"),
        (server.post_json({"images": []}), 422, "no items"),
    ]
    for (status, body), expected, message in cases:
        assert status == expected and message in body["error"], (status, body)
    status, body = server.post_files([png(np.zeros((10, 30, 3), np.uint8))])
    assert status == 200 and (body["results"][0]["width"], body["results"][0]["height"]) == (30, 10)
    assert server.process.poll() is None


def test_onnx_engine_answers_as_torch(run, files, server, tmp_path):
    result = sft("export", run)
    if result.exit_code != 0 and "no `sft export`" in result.output:
        pytest.skip("detection runs have no ONNX export here")
    assert result.exit_code == 0, result.output
    onnx = Server(run, tmp_path, "--engine", "onnx")
    try:
        assert onnx.get("/metadata")[1]["engine"] == "onnx"
        body = {"images": [b64(f) for f in files], "score": LOW}
        torch_answers, onnx_answers = server.post_json(body)[1]["results"], onnx.post_json(body)[1]["results"]
        for a, b in zip(torch_answers, onnx_answers):
            assert [d["label"] for d in a["detections"]] == [d["label"] for d in b["detections"]]
            assert np.allclose([d["xyxy"] for d in a["detections"]], [d["xyxy"] for d in b["detections"]], atol=0.5)
    finally:
        onnx.stop()

"""`sft serve` of a segmentation run: the real server answers each image with the class shares and the mask (a PNG of
class indices at the image's own size) that `sft predict` gives, an overlay when asked, on torch and onnx;
concurrent requests are batched; bad parameters and items get 4xx JSON while the server keeps serving."""

import base64
import io
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from tests.conftest import sft
from tests.serve.conftest import Server, b64, image_files, png
from tests.tasks.segmentation.conftest import recipe


@pytest.fixture(scope="module")
def run(tmp_path_factory, segmentation_set):
    tmp_path = tmp_path_factory.mktemp("seg-serve")
    path = recipe(tmp_path, segmentation_set, "model:", "  backbone: timm/test_efficientnet", "  weights: none",
                  "  decoder: unet", "  decoder_channels: 32", "strategy:", "  name: full")
    result = sft("train", path, "trainer.epochs=1")
    assert result.exit_code == 0, result.output
    return tmp_path / "run"


@pytest.fixture(scope="module")
def files(segmentation_set, tmp_path_factory):
    """Two test composites (64 px, the run's size) and one of them at 90 x 50: masks come back at each image's size."""
    return image_files(segmentation_set, tmp_path_factory.mktemp("seg-images"), (90, 50))


@pytest.fixture(scope="module")
def server(run, tmp_path_factory):
    s = Server(run, tmp_path_factory.mktemp("logs"), "--max-wait-ms", "20", "--max-items", "4")
    yield s
    s.stop()


def unpng(text: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(text))))


def predicted(run, files, out, *args) -> list[dict]:
    result = sft("predict", run, *files, "--out", out, "--format", "json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def same_as_predict(answers: list[dict], rows: list[dict], classes: list[str]) -> None:
    for answer, row in zip(answers, rows):
        mask, expected = unpng(answer["mask"]), np.asarray(Image.open(row["mask"]))
        assert mask.shape == expected.shape == (answer["height"], answer["width"])
        assert np.mean(mask == expected) >= 0.999
        assert max(abs(answer["shares"][c] - row[c]) for c in classes) < 2e-3


def test_answers_are_sft_predicts_masks_and_shares(server, run, files, tmp_path):
    classes = server.get("/metadata")[1]["classes"]
    rows = predicted(run, files, tmp_path / "masks")
    answers = [server.post_files([f.read_bytes()], {"overlay": "true"})[1]["results"][0] for f in files]
    same_as_predict(answers, rows, classes)
    assert [a["width"] for a in answers] == [64, 64, 90] and answers[2]["height"] == 50
    shown = unpng(answers[2]["overlay"])
    assert shown.shape == (50, 90, 3)
    assert np.array_equal(shown, np.asarray(Image.open(tmp_path / "masks" / "wide-overlay.png")))
    status, body = server.post_json({"images": [b64(f) for f in files]})  # JSON, several items, no overlay
    assert status == 200 and all("overlay" not in r for r in body["results"])
    same_as_predict(body["results"], rows, classes)
    status, body = server.post_json({"images": [b64(files[0])], "overlay": True})
    assert status == 200 and unpng(body["results"][0]["overlay"]).shape == (64, 64, 3)


def test_metadata_and_docs_show_the_runs_parameters(server):
    meta = server.get("/metadata")[1]
    assert meta["task"] == "segmentation" and meta["engine"] == "torch" and meta["classes"][0] == "background"
    assert meta["image_size"] == 64 and meta["weights_id"].startswith("sha256:") and meta["limits"]["max_items"] == 4
    body = server.get("/openapi.json")[1]["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert set(body["application/json"]["schema"]["properties"]) == {"images", "overlay"}
    assert set(body["multipart/form-data"]["schema"]["properties"]) == {"file", "overlay"}


def test_concurrent_requests_are_batched_and_answered_alike(server, files):
    alone = [server.post_json({"images": [b64(f)]})[1]["results"][0] for f in files]
    before = server.get("/health")[1]
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda i: server.post_json({"images": [b64(files[i % 3])]}), range(24)))
    assert all(status == 200 for status, _ in answers)
    for i, (_, answer) in enumerate(answers):
        assert np.mean(unpng(answer["results"][0]["mask"]) == unpng(alone[i % 3]["mask"])) >= 0.999
    after = server.get("/health")[1]
    assert after["items"] - before["items"] == 24 and after["batches"] - before["batches"] < 24


def test_bad_parameters_and_items_get_4xx_json_and_the_server_keeps_serving(server, files):
    image = b64(files[0])
    cases = [
        (server.post_json({"images": [image], "overlay": "maybe"}), 422, "parameter overlay: should be a valid boolean"),
        (server.post_json({"images": [image], "overlay": 1}), 422, "parameter overlay"),
        (server.post_json({"images": [image], "top_k": 2}), 422, "unknown field(s) ['top_k']; this run takes "
                                                                 '{"images": [...], "overlay": false}'),
        (server.post_files([files[0].read_bytes()], {"score": "0.5"}), 422, "unknown field(s) ['score']"),
        (server.post_files([files[0].read_bytes()], {"overlay": "perhaps"}), 422, "parameter overlay"),
        (server.post_json({"images": [image, base64.b64encode(b"no image").decode()]}), 422, "item 1: not an image"),
        (server.post_json({"images": [image] * 5}), 422, "too many items: 5"),
    ]
    for (status, body), expected, message in cases:
        assert status == expected and message in body["error"], (status, body)
    status, body = server.post_files([png(np.zeros((8, 8, 3), np.uint8))])
    assert status == 200 and body["results"][0]["width"] == 8 and server.process.poll() is None


def test_onnx_engine_answers_as_torch(run, files, server, tmp_path):
    result = sft("export", run)
    assert result.exit_code == 0, result.output
    onnx = Server(run, tmp_path, "--engine", "onnx")
    try:
        assert onnx.get("/metadata")[1]["engine"] == "onnx"
        body = {"images": [b64(f) for f in files]}
        torch_answers, onnx_answers = server.post_json(body)[1]["results"], onnx.post_json(body)[1]["results"]
        for a, b in zip(torch_answers, onnx_answers):
            assert np.mean(unpng(a["mask"]) == unpng(b["mask"])) >= 0.999
    finally:
        onnx.stop()

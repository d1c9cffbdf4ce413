"""The serve tests' server: the real `sft serve` process on a free loopback port, spoken to over HTTP."""

import base64
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

from PIL import Image


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, run, tmp_path, *args, env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp_path / f"serve-{self.port}.log"
        with open(self.log, "w") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "sft.cli", "serve", str(run), "--port",
                                             str(self.port), *args], stdout=log, stderr=subprocess.STDOUT,
                                            env={**os.environ, **(env or {})})
        deadline = time.time() + 180
        while time.time() < deadline:
            assert self.process.poll() is None, self.log.read_text()
            try:
                if self.get("/health")[0] == 200:
                    return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise AssertionError(f"server did not start: {self.log.read_text()}")

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()

    def request(self, path, body=None, content_type=None, method=None):
        headers = {"Content-Type": content_type} if content_type else {}
        req = urllib.request.Request(self.url + path, data=body, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def get(self, path):
        status, body = self.request(path)
        return status, json.loads(body) if body.startswith(b"{") else body

    def post_json(self, data):
        status, body = self.request("/predict", json.dumps(data).encode(), "application/json")
        return status, json.loads(body)

    def post_files(self, files, fields=None, name="file"):
        boundary = uuid.uuid4().hex
        parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{i}.png"\r\n'
                 f"Content-Type: image/png\r\n\r\n".encode() + data + b"\r\n" for i, data in enumerate(files)]
        parts += [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
                  for k, v in (fields or {}).items()]
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        status, answer = self.request("/predict", body, f"multipart/form-data; boundary={boundary}")
        return status, json.loads(answer)


def image_files(dataset, folder, wide: tuple[int, int]) -> list:
    """Two test images of a built example and the second again at `wide` (w, h) in `folder`: answers come back in
    each image's own pixels."""
    images = sorted((dataset / "test" / "images").glob("*.png"))[:2]
    other = folder / "wide.png"
    Image.open(images[1]).resize(wide).save(other)
    return [*images, other]


def b64(path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def png(array) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return out.getvalue()

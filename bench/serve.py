"""`sft serve` under load: the server on loopback with a demo-like run (ImageNet MobileNetV2 fine-tuned on
Fashion-MNIST at 64 px, as examples/fashion_mnist.yaml; a one-epoch fine-tune on 2,000 images is trained here when no run is given),
K concurrent clients posting one real test image each, again and again, for a fixed time — once with dynamic
batching (max_batch 32) and once with max_batch=1.

    .venv/bin/python bench/serve.py [--run RUN_DIR] [--clients 16] [--seconds 20] [--engine torch|onnx]

Clients keep their HTTP connection open and send each image as base64 JSON; the latency is the full round trip.
The clients run on the same CPU as the server, so on a small machine they take part of it: the figures are a floor.
Last line: JSON with throughput_rps, p50_ms, p99_ms (batching), batching_speedup (throughput with batching / without;
target >= 2.0), errors (target 0), and what the server is measured against: limit_rps (the run's predictor in this
process, prepare + run on the same images in batches of max_batch, no HTTP, no clients: the ceiling the server can
approach), http_over_limit (throughput_rps / limit_rps: the share HTTP, JSON and batching leave) and startup_s (from
launching `sft serve` until /health answers).
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import itertools
import json
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from common import OUT, read_fashion, report
from sft import fine_tune, load_recipe
from sft.tasks import task_of_run

RECIPE = Path(__file__).parents[1] / "examples" / "fashion_mnist.yaml"


def demo_run(run: str | None) -> Path:
    if run:
        return Path(run)
    path = OUT / "serve-run"
    if not (path / "model.json").is_file():
        fine_tune(load_recipe(RECIPE, ["strategy.name=full", "trainer.epochs=1", "data.train_limit=2000",
                                       "data.test_limit=500", "trainer.progress=false", f"run_dir={path}",
                                       f"cache_dir={OUT / 'cache'}"]), overwrite=True)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(run: Path, engine: str, max_batch: int, max_wait_ms: float) -> tuple[subprocess.Popen, int, float]:
    """The server process, its port, and the seconds from launch until /health answered."""
    port = free_port()
    launched = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "sft.cli", "serve", str(run), "--port", str(port), "--engine",
                                engine, "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    for _ in range(240):
        if process.poll() is not None:
            raise SystemExit(f"the server did not start: {process.stderr.read().decode()[-2000:]}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/health")
            if connection.getresponse().status == 200:
                return process, port, time.perf_counter() - launched
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise SystemExit("the server did not answer /health in 120 s")


def load(port: int, bodies: list[bytes], clients: int, seconds: float) -> dict:
    """`clients` threads, each posting bodies in turn on its own keep-alive connection until the time is up."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def client(k: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        mine, failed, i = [], 0, k
        while time.perf_counter() < deadline:  # bounded: the loop ends with the time
            body = bodies[i % len(bodies)]
            i += clients
            started = time.perf_counter()
            try:
                connection.request("POST", "/predict", body, {"Content-Type": "application/json"})
                response = connection.getresponse()
                ok = response.status == 200 and b"predictions" in response.read()
            except (OSError, http.client.HTTPException):
                ok = False
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            if ok:
                mine.append(time.perf_counter() - started)
            else:
                failed += 1
        with lock:
            latencies.extend(mine)
            errors[0] += failed

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {"requests": len(latencies), "throughput_rps": round(len(latencies) / elapsed, 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 1) if len(ms) else None,
            "p99_ms": round(float(np.percentile(ms, 99)), 1) if len(ms) else None, "errors": errors[0]}


def measure(run: Path, engine: str, bodies: list[bytes], clients: int, seconds: float, max_batch: int,
            max_wait_ms: float) -> dict:
    process, port, startup = start(run, engine, max_batch, max_wait_ms)
    try:
        load(port, bodies, clients, 2.0)  # warm-up: first calls allocate
        result = load(port, bodies, clients, seconds)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("GET", "/health")
        health = json.loads(connection.getresponse().read())
        result["mean_batch"], result["startup_s"] = health["mean_batch"], round(startup, 2)
        return result
    finally:
        process.terminate()
        process.wait(30)


def limit(run: Path, engine: str, images: list[bytes], seconds: float, max_batch: int) -> float:
    """Items per second of the run's predictor in this process: each image prepared (decoded, eval transform) and
    run in batches of `max_batch`, what the server does minus HTTP, JSON and the batcher. The model runs on one
    worker thread, as the server's batcher runs it: torch's intra-op threading differs off the main thread (here,
    3x faster on the main thread's busy 2-core CPU), so the main thread would not be a like-for-like ceiling."""
    task = task_of_run(run)
    predictor = task.predictor(run, task.options["serve"](engine=engine))
    batches = [images[i:i + max_batch] for i in range(0, len(images), max_batch)]

    def measure_here() -> float:
        predictor.run([predictor.prepare(b) for b in batches[0]])  # warm-up: first calls allocate
        items, started = 0, time.perf_counter()
        for batch in itertools.cycle(batches):
            if time.perf_counter() - started >= seconds:
                break
            predictor.run([predictor.prepare(b) for b in batch])
            items += len(batch)
        return items / (time.perf_counter() - started)

    with ThreadPoolExecutor(max_workers=1) as worker:
        return worker.submit(measure_here).result()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", help="a run directory (default: train a short demo-like run in bench/out)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--engine", default="torch", choices=["torch", "onnx"])
    args = parser.parse_args()
    run = demo_run(args.run)
    if args.engine == "onnx" and not (run / "export" / "model.onnx").is_file():
        subprocess.run([sys.executable, "-m", "sft.cli", "export", str(run)], check=True)
    x, _ = read_fashion("t10k")
    images = []
    for image in x[:64]:
        out = io.BytesIO()
        Image.fromarray(image).save(out, format="PNG")
        images.append(out.getvalue())
    bodies = [json.dumps({"images": [base64.b64encode(png).decode()]}).encode() for png in images]
    batched = measure(run, args.engine, bodies, args.clients, args.seconds, max_batch=32, max_wait_ms=5)
    single = measure(run, args.engine, bodies, args.clients, args.seconds, max_batch=1, max_wait_ms=0)
    limit_rps = limit(run, args.engine, images, args.seconds, max_batch=32)
    report({"run": str(run), "engine": args.engine, "clients": args.clients, "seconds": args.seconds,
            "throughput_rps": batched["throughput_rps"], "p50_ms": batched["p50_ms"], "p99_ms": batched["p99_ms"],
            "mean_batch": batched["mean_batch"], "unbatched_throughput_rps": single["throughput_rps"],
            "unbatched_p50_ms": single["p50_ms"], "unbatched_p99_ms": single["p99_ms"],
            "batching_speedup": round(batched["throughput_rps"] / max(single["throughput_rps"], 1e-9), 2),
            "errors": batched["errors"] + single["errors"], "limit_rps": round(limit_rps, 1),
            "http_over_limit": round(batched["throughput_rps"] / max(limit_rps, 1e-9), 2),
            "startup_s": batched["startup_s"]})


if __name__ == "__main__":
    main()

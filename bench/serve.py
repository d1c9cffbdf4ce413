"""`sft serve` under load, for each image task: the server on loopback with a demo-like run, K concurrent clients
posting one real test image each, again and again, for a fixed time — once with dynamic batching (max_batch 32) and
once with max_batch=1.

    .venv/bin/python bench/serve.py [--task all|classification|segmentation|detection] [--run RUN_DIR]
                                    [--clients 16] [--seconds 10] [--engine torch|onnx]

The runs, trained here when no --run is given (each once, kept in bench/out):
  classification  ImageNet MobileNetV2 fine-tuned on Fashion-MNIST at 64 px (examples/fashion_mnist.yaml; one epoch on
                  2,000 images); the requests are 28 px Fashion-MNIST test images.
  segmentation    examples/segmentation/segmentation.yaml (MobileNetV2 + FPN decoder at 128 px), one epoch on 200
                  composites of examples/segmentation/build.py; the requests are 128 px test composites, the answers
                  carry the mask as PNG.
  detection       examples/detection/detection.yaml (MobileNetV2 + FPN + FCOS at 128 px), one epoch on 200 composites
                  of examples/detection/build.py; the requests are 160 px test composites.

Clients keep their HTTP connection open and send each image as base64 JSON; the latency is the full round trip.
The clients run on the same CPU as the server, so on a small machine they take part of it: the figures are a floor.
Last line: JSON with, per task, <task>_throughput_rps, <task>_p50_ms, <task>_p99_ms, <task>_mean_batch (batching),
<task>_unbatched_throughput_rps, <task>_batching_speedup (throughput with batching / without; target >= 2.0),
<task>_errors (target 0), <task>_limit_rps (the run's predictor in this process, prepare + run + answer on the same
images in batches of max_batch, no HTTP, no clients: the ceiling the server can approach), <task>_limit_split (the
share of that time in prepare, run and answer) and <task>_startup_s (from launching `sft serve` until /health
answers); classification's figures also under the unprefixed keys (throughput_rps, batching_speedup, errors, ...).
"""

from __future__ import annotations

import argparse
import base64
import http.client
import importlib.util
import io
import itertools
import json
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from common import OUT, read_fashion, get_json, report, run_clients, serving
from sft import fine_tune, load_recipe
from sft.tasks import task_of_run

EXAMPLES = Path(__file__).parents[1] / "examples"
TASKS = ("classification", "segmentation", "detection")
COMPOSITES = {"segmentation": 128, "detection": 160}  # the canvas side of each task's composites (its examples')


def built(kind: str) -> Path:
    """examples/<kind>/build.py's composites for the bench's run: 200 train, 40 val, 64 test, built once."""
    spec = importlib.util.spec_from_file_location(f"{kind}_build", EXAMPLES / kind / "build.py")
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    out = OUT / f"serve-{kind}-data"
    if not (out / builder.MARKER).exists():
        builder.build(out, train=200, val=40, test=64, size=COMPOSITES[kind], seed=0)
    return out


def demo_run(task: str) -> Path:
    """The task's demo-like run (the module docstring), trained once into bench/out."""
    path = OUT / ("serve-run" if task == "classification" else f"serve-run-{task}")
    if (path / "model.json").is_file():
        return path
    common = ["trainer.epochs=1", "trainer.progress=false", f"run_dir={path}", f"cache_dir={OUT / 'cache'}"]
    if task == "classification":
        recipe = load_recipe(EXAMPLES / "fashion_mnist.yaml", ["strategy.name=full", "data.train_limit=2000",
                                                               "data.test_limit=500", *common])
    else:
        data, coco = built(task), "/annotations.json" if task == "detection" else ""
        recipe = load_recipe(EXAMPLES / task / f"{task}.yaml", [f"data.{split}={data}/{split}{coco}"
                                                                for split in ("train", "val", "test")]
                             + ["strategy.name=full", *common])
    fine_tune(recipe, overwrite=True)
    return path


def request_images(task: str) -> list[bytes]:
    """64 real test images as PNG bytes: Fashion-MNIST's for classification, the composites' for the others."""
    if task != "classification":
        return [p.read_bytes() for p in sorted((built(task) / "test" / "images").glob("*.png"))[:64]]
    x, _ = read_fashion("t10k")
    images = []
    for image in x[:64]:
        out = io.BytesIO()
        Image.fromarray(image).save(out, format="PNG")
        images.append(out.getvalue())
    return images


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
                ok = response.status == 200 and response.read().startswith(b'{"results"')
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

    elapsed = run_clients(client, clients)
    ms = np.array(latencies) * 1000
    return {"requests": len(latencies), "throughput_rps": round(len(latencies) / elapsed, 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 1) if len(ms) else None,
            "p99_ms": round(float(np.percentile(ms, 99)), 1) if len(ms) else None, "errors": errors[0]}


def measure(run: Path, engine: str, bodies: list[bytes], clients: int, seconds: float, max_batch: int,
            max_wait_ms: float) -> dict:
    with serving(run, "--engine", engine, "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms)) as (
            port, startup):
        load(port, bodies, clients, 2.0)  # warm-up: first calls allocate
        result = load(port, bodies, clients, seconds)
        result["mean_batch"], result["startup_s"] = get_json(port, "/health")["mean_batch"], round(startup, 2)
    return result


def limit(run: Path, engine: str, images: list[bytes], seconds: float, max_batch: int) -> tuple[float, dict]:
    """Items per second of the run's predictor in this process, and the share of its time in each step: each image
    prepared (decoded, eval transform), run in batches of `max_batch` and answered, what the server does minus HTTP,
    JSON and the batcher. The model runs on one worker thread, as the server's batcher runs it: torch's intra-op
    threading differs off the main thread (here, 3x faster on the main thread's busy 2-core CPU), so the main thread
    would not be a like-for-like ceiling."""
    task = task_of_run(run)
    predictor = task.predictor(run, task.options["serve"](engine=engine))
    params = predictor.params()
    batches = [images[i:i + max_batch] for i in range(0, len(images), max_batch)]
    spent = {"prepare": 0.0, "run": 0.0, "answer": 0.0}

    def one(batch: list[bytes]) -> None:
        t0 = time.perf_counter()
        prepared = [predictor.prepare(b) for b in batch]
        t1 = time.perf_counter()
        outputs = predictor.run(prepared)
        t2 = time.perf_counter()
        [predictor.answer(o, params) for o in outputs]
        t3 = time.perf_counter()
        for key, t in zip(spent, (t1 - t0, t2 - t1, t3 - t2)):
            spent[key] += t

    def measure_here() -> float:
        one(batches[0])  # warm-up: first calls allocate
        for key in spent:
            spent[key] = 0.0
        items, started = 0, time.perf_counter()
        for batch in itertools.cycle(batches):
            if time.perf_counter() - started >= seconds:
                break
            one(batch)
            items += len(batch)
        return items / (time.perf_counter() - started)

    with ThreadPoolExecutor(max_workers=1) as worker:
        rps = worker.submit(measure_here).result()
    total = sum(spent.values()) or 1.0
    return rps, {k: round(v / total, 3) for k, v in spent.items()}


def bench_task(task: str, run: Path, engine: str, clients: int, seconds: float) -> dict:
    """The task's figures, keys prefixed with the task's name."""
    if engine == "onnx" and not (run / "export" / "model.onnx").is_file():
        subprocess.run([sys.executable, "-m", "sft.cli", "export", str(run)], check=True)
    images = request_images(task)
    bodies = [json.dumps({"images": [base64.b64encode(png).decode()]}).encode() for png in images]
    batched = measure(run, engine, bodies, clients, seconds, max_batch=32, max_wait_ms=5)
    single = measure(run, engine, bodies, clients, seconds, max_batch=1, max_wait_ms=0)
    limit_rps, split = limit(run, engine, images, seconds, max_batch=32)
    figures = {"run": str(run), "throughput_rps": batched["throughput_rps"], "p50_ms": batched["p50_ms"],
               "p99_ms": batched["p99_ms"], "mean_batch": batched["mean_batch"],
               "unbatched_throughput_rps": single["throughput_rps"], "unbatched_p50_ms": single["p50_ms"],
               "unbatched_p99_ms": single["p99_ms"],
               "batching_speedup": round(batched["throughput_rps"] / max(single["throughput_rps"], 1e-9), 2),
               "errors": batched["errors"] + single["errors"], "limit_rps": round(limit_rps, 1), "limit_split": split,
               "http_over_limit": round(batched["throughput_rps"] / max(limit_rps, 1e-9), 2),
               "startup_s": batched["startup_s"]}
    return {f"{task}_{k}": v for k, v in figures.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="all", choices=["all", *TASKS])
    parser.add_argument("--run", help="a run directory of the one --task (default: train a demo-like run in bench/out)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--engine", default="torch", choices=["torch", "onnx"])
    args = parser.parse_args()
    tasks = TASKS if args.task == "all" else (args.task,)
    if args.run and len(tasks) > 1:
        parser.error("--run needs the --task it belongs to")
    runs = {task: Path(args.run) if args.run else demo_run(task) for task in tasks}  # trained before any load
    figures = {"engine": args.engine, "clients": args.clients, "seconds": args.seconds}
    for task in tasks:
        figures.update(bench_task(task, runs[task], args.engine, args.clients, args.seconds))
    if "classification" in tasks:  # the keys the docs quote from before the other tasks were served
        figures.update({k.removeprefix("classification_"): v for k, v in figures.items()
                        if k.startswith("classification_")})
    report(figures)


if __name__ == "__main__":
    main()

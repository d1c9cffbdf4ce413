"""Shared by the benchmarks: real Fashion-MNIST slices written as .npz sources, `sft serve` started on a free port,
and the JSON last line."""

from __future__ import annotations

import gzip
import http.client
import json
import socket
import statistics
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

FASHION = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
OUT = Path(__file__).parent / "out"


def read_fashion(split: str) -> tuple[np.ndarray, np.ndarray]:
    """The official split: 'train' (60k) or 't10k' (10k), as uint8 (N,28,28) images and int64 labels."""
    with gzip.open(FASHION / f"{split}-images-idx3-ubyte.gz") as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(FASHION / f"{split}-labels-idx1-ubyte.gz") as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8).astype(np.int64)
    return x, y


def fashion_npz(split: str, n: int | None, seed: int = 0) -> Path:
    """A stratified slice of n samples of an official split, as an .npz sft can read (all of it when n is None)."""
    from sft.data.samples import stratified_subset

    x, y = read_fashion(split)
    if n is not None:
        idx = stratified_subset(y, n, seed)
        x, y = x[idx], y[idx]
    OUT.mkdir(exist_ok=True)
    path = OUT / f"fashion_{split}_{n or 'all'}_{seed}.npz"
    if not path.exists():
        np.savez(path, x=x, y=y)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(run: Path, *args: str, env: dict | None = None):
    """`sft serve RUN ARGS` on a free loopback port, stopped on leaving: yields its port and the seconds from launch
    until /health answered."""
    port = free_port()
    launched = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "sft.cli", "serve", str(run), "--port", str(port), *args],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        for _ in range(480):
            if process.poll() is not None:
                raise SystemExit(f"the server did not start: {process.stderr.read().decode()[-2000:]}")
            try:
                get_json(port, "/health")
                break
            except OSError:
                time.sleep(0.25)
        else:
            raise SystemExit("the server did not answer /health in 120 s")
        yield port, time.perf_counter() - launched
    finally:
        process.terminate()
        process.wait(30)


def get_json(port: int, path: str):
    """GET a path of the local server on a new connection, its JSON answer."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", path)
    return json.loads(connection.getresponse().read())


def run_clients(client, clients: int) -> float:
    """client(k) on `clients` threads at once; the seconds until the last returned."""
    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - started


def report(figures: dict) -> None:
    """Print the figures, then one line of JSON holding them (the line the docs quote)."""
    for key, value in figures.items():
        print(f"{key:>28}: {value}")
    print(json.dumps(figures))


def against_the_loop(sft: dict, plain: dict, metric: str) -> dict:
    """The figures both dense throughput benches report: `sft` and `plain` are each side's result (sft's metrics under
    "metrics"), `metric` the quality key (miou, map50) its test_/val_ values are read under."""
    m = sft["metrics"]
    return {"ratio": round(sft["images_per_second"] / plain["images_per_second"], 3),
            "quality_gap": round(m[f"test_{metric}"] - plain[f"test_{metric}"], 4),
            "sft_images_per_second": round(sft["images_per_second"], 1),
            "plain_images_per_second": round(plain["images_per_second"], 1),
            **{f"{side}_{split}_{metric}": round(values[f"{split}_{metric}"], 4)
               for split in ("test", "val") for side, values in (("sft", m), ("plain", plain))},
            # the whole job: sft's also validates every epoch, scores val and test and writes the model
            "sft_seconds": round(sft["seconds"], 1), "plain_seconds": round(plain["seconds"], 1),
            "sft_epoch_seconds": [round(s, 1) for s in sft["epoch_seconds"]],
            "plain_epoch_seconds": [round(s, 1) for s in plain["epoch_seconds"]],
            "sft_best_epoch": m["best_epoch"], "train_images": m["train_samples"], "lr": m["lr_auto"]["lr"],
            "precision": m["precision"], "sft_num_workers": m.get("num_workers")}


def steady_rate(images: int, epoch_seconds: list[float]) -> float:
    """Images/s over the epochs after the first (which pays for start-up: worker processes, first allocations), from
    their median epoch: one slow epoch on a shared machine moves it less than a single epoch's figure."""
    return images / statistics.median(epoch_seconds[1:])


def held_out(train: int) -> int:
    """Composites in each of val and test beside `train` training ones: a fifth, 16 to 200."""
    return min(200, max(16, train // 5))


def example_composites(kind: str, root: Path, train: int, canvas: int, seed: int = 0) -> Path:
    """examples/<kind>/build.py's composites of real Fashion-MNIST garments (train, and held_out(train) each for val
    and test, `canvas` px) built into `root`."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(f"{kind}_build", Path(__file__).parents[1] / "examples" / kind /
                                                  "build.py")
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    builder.build(root, train=train, val=held_out(train), test=held_out(train), size=canvas, seed=seed)
    return root


def trained(overrides: list[str], run_dir: Path, cache_dir: Path) -> tuple:
    """(run, minutes) of `fine_tune` on a recipe of `overrides` alone (progress off), timed whole."""
    from sft import fine_tune, load_recipe
    started = time.perf_counter()
    run = fine_tune(load_recipe(None, [*overrides, "trainer.progress=false", f"run_dir={run_dir}",
                                       f"cache_dir={cache_dir}"]))
    return run, round((time.perf_counter() - started) / 60, 2)


def defaults_against_tuned(tuned: list[str], given: list[str], metric: str, ema: float | None = 0.999) -> dict:
    """The dense benches' `defaults` mode: a recipe of only `given` ("task=NAME" first, then data and epochs: every
    other key sft's default), the bench's tuned recipe (`tuned` overrides; not trained again when the defaults
    resolved to exactly it) and the defaults with `trainer.ema`, each trained whole and scored on its test split
    (metrics.json's test_<metric>; no EMA run when `ema` is None or 0); then the defaults run evaluated again with
    `--tta flip`. Returns each score, the minutes, and what `auto` chose."""
    import tempfile

    from sft import load_recipe
    from sft.recipe import dump_recipe
    from sft.tasks import get_task

    scores, minutes, task = {}, {}, get_task(given[0].removeprefix("task="))
    with tempfile.TemporaryDirectory() as tmp:
        def train(name: str, overrides: list[str]):
            run, minutes[name] = trained(overrides, Path(tmp) / name, Path(tmp) / "cache")
            scores[name] = round(run.metrics[f"test_{metric}"], 4)
            print(f"{name}: test {metric} {scores[name]} in {minutes[name]} min", flush=True)
            return run

        run = train("defaults", given)
        chosen = {k: v["value"] for k, v in run.metrics.get("auto", {}).items()}
        as_tuned = load_recipe(None, [*tuned, "trainer.progress=false", f"run_dir={tmp}/defaults",
                                      f"cache_dir={tmp}/cache"])
        same = (run.dir / "recipe.yaml").read_text() == dump_recipe(as_tuned)
        if same:
            scores["tuned"] = scores["defaults"]
        else:
            train("tuned", tuned)
        _, summary = task.evaluate(run.dir, None, Path(tmp) / "tta", task.options["eval"](tta="flip", top_losses=0),
                                   overwrite=True, batch_size=32, progress=False)
        scores["tta"] = round(summary[metric], 4)
        if ema:
            train("ema", [*given, f"trainer.ema={ema}"])
    figures = {f"ema_{metric}": scores["ema"], "ema_gain": round(scores["ema"] - scores["defaults"], 4)} if ema else {}
    return {f"tuned_{metric}": scores["tuned"], f"defaults_{metric}": scores["defaults"],
            "defaults_gap": round(scores["defaults"] - scores["tuned"], 4), "defaults_are_the_tuned_recipe": same,
            **figures, f"tta_{metric}": scores["tta"], "tta_gain": round(scores["tta"] - scores["defaults"], 4),
            "auto": chosen, "minutes": minutes}

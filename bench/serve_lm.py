"""`sft serve` on a causal-LM run under load: the shipped SmolLM2-135M-Instruct (LoRA, one step on 16 conversations:
a real run that still answers like the base model), 8 concurrent chat clients streaming answers of up to 32 new
tokens, each asking its prompts one after another — with continuous batching (the default), with static batches
(`--batching static`: a batch runs to its end before the next starts) and one request at a time (`--max-batch 1`).
Then a mixed load, continuous against static: the same clients, each request asking for its own length, from a
quarter of --max-tokens up to all of it, so that rows finish at different steps and the next requests arrive while a
batch runs.

    .venv/bin/python bench/serve_lm.py [--clients 8] [--rounds 2] [--max-tokens 32] [--threads N] [--run RUN_DIR]

--threads sets the server's OMP_NUM_THREADS (default: torch's own, one per core): on a CPU shared with other work,
two intra-op threads on two busy cores wait on each other, a single step taking several times longer than on one.

Clients speak raw HTTP (server-sent events, keep-alive), lighter than the `openai` client on a 2-core machine where
they share the CPU with the server; tokens are counted from each answer's usage (stream_options.include_usage), and
the time to first token is from sending the request to the first chunk with content.
Last line: JSON with lm_tokens_per_s, lm_ttft_p50_ms, lm_latency_p50_ms, lm_mean_batch (continuous), the same with
lm_static_ and lm_unbatched_ prefixes, lm_batching_speedup (continuous over one at a time; target >= 2.0),
lm_static_speedup, lm_errors (all modes; target 0) and lm_startup_s; the mixed load's lm_mixed_tokens_per_s,
lm_mixed_ttft_p50_ms, the same with lm_mixed_static_, and lm_mixed_continuous_over_static.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

from common import OUT, get_json, report, run_clients, serving
from sft import fine_tune, load_recipe

TOPICS = ["the ocean", "autumn leaves", "a busy train station", "learning to cook", "the moon", "old libraries",
          "mountain hiking", "city bicycles", "rainy mornings", "honey bees", "a lighthouse", "winter markets",
          "desert plants", "jazz music", "paper maps", "a small bakery", "thunderstorms", "chess", "coral reefs",
          "street food", "a violin", "migrating birds", "glaciers", "the printing press"]


def lm_run() -> Path:
    """SmolLM2 with LoRA, one optimizer step on 16 short conversations, trained once into bench/out."""
    path = OUT / "serve-lm-run"
    if (path / "model.json").is_file():
        return path
    OUT.mkdir(exist_ok=True)
    data = OUT / "serve-lm-train.jsonl"
    rows = [{"prompt": f"Say something about {t}.", "completion": f"Here is a thought about {t}: it is worth a "
                                                                   f"closer look."} for t in TOPICS[:18]]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = load_recipe(None, ["task=causal-lm", f"data.train={data}", "data.batch_size=16", "data.max_length=256",
                                "trainer.epochs=1", "trainer.progress=false", "generation.max_new_tokens=32",
                                f"run_dir={path}"])
    fine_tune(recipe, overwrite=True)
    return path


def chat(connection: http.client.HTTPConnection, model: str, prompt: str, max_tokens: int) -> tuple[float, int]:
    """One streamed answer: (seconds to the first content chunk, completion tokens)."""
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
                       "stream": True, "stream_options": {"include_usage": True}})
    sent = time.perf_counter()
    connection.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    response = connection.getresponse()
    if response.status != 200:
        raise RuntimeError(f"{response.status}: {response.read()[:200]!r}")
    first, tokens, done = None, None, False
    while not done:
        line = response.readline()
        if not line:
            break
        if not line.startswith(b"data: "):
            continue
        data = line[6:].strip()
        if data == b"[DONE]":
            done = True
            continue
        chunk = json.loads(data)
        if chunk.get("error"):
            raise RuntimeError(chunk["error"]["message"])
        if first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
            first = time.perf_counter() - sent
        if chunk.get("usage"):
            tokens = chunk["usage"]["completion_tokens"]
    response.read()
    if not done or tokens is None:
        raise RuntimeError("the stream ended without usage and [DONE]")
    return first if first is not None else time.perf_counter() - sent, tokens


def load(port: int, model: str, clients: int, rounds: int, max_tokens: int, mixed: bool = False) -> dict:
    """`clients` threads, each asking `rounds` prompts one after another on its own keep-alive connection; `mixed`:
    request i of n asks for max_tokens / 4 + i * (3 * max_tokens / 4) / (n - 1) tokens, in an order that mixes them."""
    n = clients * rounds
    lengths = [max_tokens // 4 + (i * 7 % n) * (max_tokens - max_tokens // 4) // max(n - 1, 1) if mixed
               else max_tokens for i in range(n)]
    ttft, latency, tokens, errors = [], [], [0], [0]
    lock = threading.Lock()
    start_line = threading.Barrier(clients)

    def client(k: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        start_line.wait()
        for r in range(rounds):
            topic = TOPICS[(k * rounds + r) % len(TOPICS)]
            began = time.perf_counter()
            try:
                first, n = chat(connection, model, f"Write a short paragraph about {topic}.",
                                lengths[k * rounds + r])
            except (OSError, http.client.HTTPException, RuntimeError, ValueError) as e:
                print(f"client {k}: {e}", file=sys.stderr)
                with lock:
                    errors[0] += 1
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
                continue
            with lock:
                ttft.append(first)
                latency.append(time.perf_counter() - began)
                tokens[0] += n

    elapsed = run_clients(client, clients)
    ms = lambda xs: round(float(np.percentile(np.array(xs) * 1000, 50)), 1) if xs else None  # noqa: E731
    return {"tokens": tokens[0], "seconds": round(elapsed, 2), "tokens_per_s": round(tokens[0] / elapsed, 2),
            "ttft_p50_ms": ms(ttft), "latency_p50_ms": ms(latency), "errors": errors[0]}


def measure(run: Path, args, *serve_args: str, mixed: bool = False) -> dict:
    env = {**os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})}
    with serving(run, "--max-wait-ms", "10", *serve_args, env=env) as (port, startup):
        model = get_json(port, "/v1/models")["data"][0]["id"]
        chat(http.client.HTTPConnection("127.0.0.1", port, timeout=60), model, "Hello!", 4)  # warm-up: allocates
        result = load(port, model, args.clients, args.rounds, args.max_tokens, mixed)
        result["mean_batch"], result["startup_s"] = get_json(port, "/health")["mean_batch"], round(startup, 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2, help="requests per client, one after another")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, help="the server's OMP_NUM_THREADS (default: torch's own)")
    parser.add_argument("--run", type=Path, help="a causal-LM run (default: trained once into bench/out)")
    args = parser.parse_args()
    run = args.run or lm_run()
    busy = round(os.getloadavg()[0], 2)  # other work on the machine when the measurement starts
    modes = {"": ("--max-batch", "32"), "static_": ("--max-batch", "32", "--batching", "static"),
             "unbatched_": ("--max-batch", "1")}
    figures = {}
    for prefix, serve_args in modes.items():
        result = measure(run, args, *serve_args)
        print(f"{prefix or 'continuous_'}: {result}", flush=True)
        for key in ("tokens_per_s", "ttft_p50_ms", "latency_p50_ms", "mean_batch", "tokens", "errors"):
            figures[f"lm_{prefix}{key}"] = result[key]
        figures.setdefault("lm_startup_s", result["startup_s"])
    figures["lm_batching_speedup"] = round(figures["lm_tokens_per_s"] / figures["lm_unbatched_tokens_per_s"], 2)
    figures["lm_static_speedup"] = round(figures["lm_static_tokens_per_s"] / figures["lm_unbatched_tokens_per_s"], 2)
    for prefix, serve_args in (("mixed_", modes[""]), ("mixed_static_", modes["static_"])):
        result = measure(run, args, *serve_args, mixed=True)
        print(f"{prefix}: {result}", flush=True)
        for key in ("tokens_per_s", "ttft_p50_ms", "latency_p50_ms", "tokens", "errors"):
            figures[f"lm_{prefix}{key}"] = result[key]
    figures["lm_mixed_continuous_over_static"] = round(figures["lm_mixed_tokens_per_s"]
                                                       / figures["lm_mixed_static_tokens_per_s"], 2)
    figures["lm_errors"] = sum(figures.pop(f"lm_{prefix}errors")
                               for prefix in ("", "static_", "unbatched_", "mixed_", "mixed_static_"))
    figures.update({"lm_clients": args.clients, "lm_rounds": args.rounds, "lm_max_tokens": args.max_tokens,
                    "lm_threads": args.threads or "default", "load_average_1m": busy})
    report(figures)


if __name__ == "__main__":
    main()

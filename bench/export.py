"""`sft export` on a run of every task, with the figures of its parity check (what parity.json records and `sft export`
prints): classification, segmentation and detection as ONNX (bench/serve.py's demo-like runs), and the shipped
SmolLM2-135M-Instruct tuned on the fortunes topics (examples/instruct/fortunes.yaml: LoRA, one epoch on the first 48
training questions; 16 test questions) as GGUF, F16 and Q8_0.

    .venv/bin/python bench/export.py [--task all|classification|segmentation|detection|causal-lm]

With llama-cpp-python installed (`pip install llama-cpp-python`, which builds llama.cpp from source; never a
dependency of sft), each GGUF file also runs in llama.cpp, a third reader besides PyTorch and transformers: its greedy
chat answers to the test questions (llama.cpp renders the chat template stored in the file, and stops at the file's
stop tokens) against the run's own greedy answers through sft. Where llama.cpp's AMX kernels crash on quantised
files (they did in a virtual machine with AMX), build it without them: CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX512=ON
-DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" pip install llama-cpp-python.

Last line: JSON with classification_/segmentation_ max_abs_diff (probabilities) and top1_agreement (per pixel for
segmentation), detection_ matched_share (torch boxes found by ONNX), worst_iou, worst_score_diff and map50_diff, and
lm_f16_ / lm_q8_0_ max_abs_logprob_diff, top1_agreement (answer tokens), greedy_same and seconds; lm_llama_cpp_f16 /
lm_llama_cpp_q8_0: the share of test answers equal to the run's (null without llama-cpp-python, the exit code
where llama.cpp failed); each <task>_passed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

from common import OUT, report
from serve import demo_run
from sft import fine_tune, load_recipe
from sft.tasks import get_task

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT / "examples" / "instruct"))
from build import fortunes  # noqa: E402

KEYS = {"classification": ("max_abs_diff", "top1_agreement"), "segmentation": ("max_abs_diff", "top1_agreement"),
        "detection": ("matched_share", "worst_iou", "worst_score_diff", "map50_diff", "map50_torch", "boxes")}
LM_KEYS = ("max_abs_logprob_diff", "max_abs_logprob_diff_vocab", "top1_agreement", "greedy_same")


def export(run: Path, out: Path, *args: str) -> tuple[dict, float]:
    """`sft export RUN --out OUT ARGS` as a user runs it (over an earlier bench export); parity.json and seconds."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "sft.cli", "export", str(run), "--out", str(out), "--overwrite",
                           *args], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    print(done.stdout[-3000:], file=sys.stderr)
    if done.returncode != 0:
        raise SystemExit(f"sft export {run} failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads((out / "parity.json").read_text()), seconds


def lm_run() -> Path:
    """The fortunes run (module docstring), trained once into bench/out."""
    path = OUT / "export-lm-run"
    if (path / "model.json").is_file():
        return path
    data = OUT / "instruct"
    fortunes(data)
    for split, n in (("train", 48), ("test", 16)):
        rows = (data / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()[:n]
        (data / f"{split}-export.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    recipe = load_recipe(ROOT / "examples" / "instruct" / "fortunes.yaml", [
        f"data.train={data / 'train-export.jsonl'}", f"data.test={data / 'test-export.jsonl'}", "trainer.epochs=1",
        "trainer.progress=false", f"run_dir={path}"])
    fine_tune(recipe, overwrite=True)
    return path


LLAMA_CPP = """
import json, sys
from llama_cpp import Llama
path, max_tokens = sys.argv[1], int(sys.argv[2])
llm = Llama(model_path=path, n_ctx=512, n_threads=2, verbose=False)
print(json.dumps([llm.create_chat_completion(messages=p, temperature=0.0, top_k=1, max_tokens=max_tokens)
                  ["choices"][0]["message"]["content"].strip() for p in json.load(sys.stdin)]))
"""


def llama_cpp_answers(gguf: Path, run: Path) -> float | str | None:
    """The share of the run's test questions that llama.cpp answers (greedy) as the run does, llama.cpp in its own
    process (apart from torch, and a crash there stops only it); None without llama-cpp-python."""
    if importlib.util.find_spec("llama_cpp") is None:
        return None
    from sft.tasks.causal_lm.export import load_tuned
    from sft.tasks.causal_lm.generation import generate, prompt_of

    recipe = load_recipe(run / "recipe.yaml")
    prompts = [prompt_of(chat) for chat in get_task("causal-lm").load_splits(recipe).test.items]
    model, tokenizer = load_tuned(run)
    max_tokens = recipe.generation.max_new_tokens
    ours = generate(model, tokenizer, prompts, max_new_tokens=max_tokens, temperature=0.0, batch_size=8)
    done = subprocess.run([sys.executable, "-c", LLAMA_CPP, str(gguf), str(max_tokens)], input=json.dumps(prompts),
                          capture_output=True, text=True)
    if done.returncode != 0:
        print(f"llama.cpp failed on {gguf} ({done.returncode}): {done.stderr[-1000:]}", file=sys.stderr)
        return f"llama.cpp exited with {done.returncode}"
    theirs = json.loads(done.stdout)
    for p, a, b in zip(prompts, ours, theirs):
        if a != b:
            print(f"llama.cpp differs on {p[-1]['content'][:60]!r}: run {a!r}, llama.cpp {b!r}", file=sys.stderr)
    return round(sum(a == b for a, b in zip(ours, theirs)) / max(len(prompts), 1), 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="all", choices=["all", *KEYS, "causal-lm"])
    args = parser.parse_args()
    figures: dict = {}
    for task in KEYS if args.task == "all" else (() if args.task == "causal-lm" else (args.task,)):
        parity, seconds = export(demo_run(task), OUT / f"export-{task}")
        figures.update({f"{task}_{k}": parity[k] for k in KEYS[task]})
        figures.update({f"{task}_passed": parity["passed"], f"{task}_seconds": round(seconds, 1)})
    if args.task in ("all", "causal-lm"):
        run = lm_run()
        for quant in ("f16", "q8_0"):
            out = OUT / f"export-gguf-{quant}"
            parity, seconds = export(run, out, "--format", "gguf", "--quant", quant)
            figures.update({f"lm_{quant}_{k}": parity[k] for k in LM_KEYS})
            figures.update({f"lm_{quant}_passed": parity["passed"], f"lm_{quant}_seconds": round(seconds, 1),
                            f"lm_{quant}_mb": round((out / "model.gguf").stat().st_size / 2**20, 1),
                            f"lm_llama_cpp_{quant}": llama_cpp_answers(out / "model.gguf", run)})
    report(figures)


if __name__ == "__main__":
    main()

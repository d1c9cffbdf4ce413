"""Training throughput of instruction tuning, sft against TRL's SFTTrainer on the same model, training
conversations (sft is given a separate validation file, so it holds none of them out), LoRA configuration, batch,
sequence length, packing (both padding-free: a batch's examples back to back in one row with restarting positions,
TRL's padding_free) and precision (bf16 mixed where the GPU supports it, else fp32 on both).

Reported: tokens per second over the training steps (the first step, a warm-up, left out; on both sides the tokens
are those of the collated batches, counted the same way), the whole job's wall seconds (sft: `fine_tune`, which also
validates and exports; TRL: SFTTrainer construction, `train()` and `save_model()`), and peak memory (CUDA allocations
on a GPU, else the process's peak resident memory). Each side runs in its own process.

Each side runs `rounds` times, alternating which goes first (a machine's state drifts between runs); `speedup` is
the median of the rounds' ratios, each round's beside it.

    .venv/bin/python bench/instruct_throughput.py [model] [conversations] [batch] [rounds]   # default smollm2 256 8 2
    model: smollm2, a Hugging Face folder, or tiny (a random 4-layer, 256-wide Llama with SmolLM2's tokenizer)
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import OUT, report

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT / "examples" / "instruct"))
from build import fortunes  # noqa: E402

LORA = dict(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
MAX_LENGTH, LR = 256, 5e-4


def bf16() -> bool:
    """The precision both sides train in: bf16 mixed on a GPU that has it, fp32 otherwise (CPU included)."""
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def peak_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def model_folder(name: str, tmp: Path) -> str:
    from sft.models.causal_lm import SMOLLM2, distinct_pad, model_folder as resolve, shipped_gguf
    if name != "tiny":
        return resolve(name, "~/.cache/sft")
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    gguf = shipped_gguf(SMOLLM2)
    tokenizer = distinct_pad(AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name))
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(tmp / "tiny")
    tokenizer.save_pretrained(tmp / "tiny")
    return str(tmp / "tiny")


def run_sft(folder: str, data: Path, val: Path, batch: int) -> dict:
    import lightning as L
    from sft import load_recipe
    from sft.tasks import get_task
    from sft.training.fit import fine_tune

    class Steps(L.Callback):
        times: list = []
        tokens: list = []

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            self.started = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            self.times.append(time.perf_counter() - self.started)
            self.tokens.append(int(batch["input_ids"].numel()))

    steps = Steps()
    with tempfile.TemporaryDirectory() as tmp:
        recipe = load_recipe(None, [
            "task=causal-lm", f"data.train={data}", f"data.val={val}", f"data.max_length={MAX_LENGTH}",
            f"data.batch_size={batch}", "data.pack=true", f"model.backbone={folder}", "trainer.epochs=1",
            "trainer.progress=false", "strategy.name=lora", f"strategy.lora_rank={LORA['r']}",
            f"strategy.lora_alpha={LORA['lora_alpha']}", "strategy.lora_dropout=0.0",
            f"strategy.lora_targets=[{','.join(LORA['target_modules'])}]", f"optim.lr={LR}", f"run_dir={tmp}/run",
            f"trainer.precision={'bf16-mixed' if bf16() else repr('32')}"])
        started = time.perf_counter()
        fine_tune(get_task("causal-lm"), recipe, callbacks=[steps])
        job = time.perf_counter() - started
    return {"tokens": sum(steps.tokens[1:]), "seconds": sum(steps.times[1:]), "steps": len(steps.times),
            "job_seconds": job, "peak_mb": peak_mb()}


def run_trl(folder: str, data: Path, val: Path, batch: int) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    rows = [json.loads(line) for line in data.read_text().splitlines()]
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}],
                                  "completion": [{"role": "assistant", "content": r["completion"]}]} for r in rows])

    class Steps(TrainerCallback):
        times: list = []

        def on_step_begin(self, args, state, control, **kw):
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter() - self.started)

    steps, tokens = Steps(), []

    def counted(collate):
        """The collator, recording each batch's tokens as sft's callback does (padding-free: all real tokens)."""
        def call(examples):
            out = collate(examples)
            tokens.append(int(out["input_ids"].numel()))
            return out
        return call

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        # max_length None: TRL refuses a limit it cannot enforce without packing; none of these conversations is cut
        config = SFTConfig(output_dir=tmp, max_length=None, packing=False, padding_free=True,
                           per_device_train_batch_size=batch, num_train_epochs=1, learning_rate=LR,
                           lr_scheduler_type="cosine", warmup_steps=0.03, logging_steps=1000, save_strategy="no",
                           report_to=[], bf16=bf16(), use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0,
                           completion_only_loss=True, seed=0)
        trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(folder), args=config, train_dataset=dataset,
                             processing_class=AutoTokenizer.from_pretrained(folder),
                             peft_config=LoraConfig(**LORA, task_type="CAUSAL_LM"), callbacks=[steps])
        trainer.data_collator = counted(trainer.data_collator)
        trainer.train()
        trainer.save_model(f"{tmp}/model")
        job = time.perf_counter() - started
    if len(tokens) != len(steps.times):  # one collated batch per step, or the count is not per step
        raise SystemExit(f"trl: {len(tokens)} batches collated for {len(steps.times)} steps")
    return {"tokens": sum(tokens[1:]), "seconds": sum(steps.times[1:]), "steps": len(steps.times),
            "job_seconds": job, "peak_mb": peak_mb()}


def main(model: str = "smollm2", conversations: int = 256, batch: int = 8, rounds: int = 2) -> None:
    data = OUT / "instruct"
    fortunes(data)
    source = [line for line in (data / "train.jsonl").read_text().splitlines()
              if len(json.loads(line)["prompt"]) <= 500][:conversations]
    subset, val = data / f"throughput-{conversations}.jsonl", data / "throughput-val.jsonl"
    subset.write_text("\n".join(source) + "\n")
    held = [line for line in (data / "test.jsonl").read_text().splitlines() if len(json.loads(line)["prompt"]) <= 500]
    val.write_text("\n".join(held[:8]) + "\n")  # not from train: both sides train on all of `subset`
    runs: dict[str, list[dict]] = {"sft": [], "trl": []}
    with tempfile.TemporaryDirectory() as tmp:
        folder = model_folder(model, Path(tmp))
        for r in range(int(rounds)):
            for side in (("trl", "sft") if r % 2 else ("sft", "trl")):
                out = subprocess.run([sys.executable, __file__, "--side", side, folder, str(subset), str(val),
                                      str(batch)], capture_output=True, text=True)
                if out.returncode:
                    raise SystemExit(f"{side} failed:\n{out.stderr[-3000:]}")
                runs[side].append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(f"round {r} {side}: {tokens_per_second(runs[side][-1]):.1f} tokens/s", flush=True)
    ratios = [tokens_per_second(s) / tokens_per_second(t) for s, t in zip(runs["sft"], runs["trl"])]
    sft, trl = runs["sft"][0], runs["trl"][0]
    report({"speedup": round(statistics.median(ratios), 3), "round_speedups": [round(x, 3) for x in ratios],
            "sft_tokens_per_second": round(statistics.median(map(tokens_per_second, runs["sft"])), 1),
            "trl_tokens_per_second": round(statistics.median(map(tokens_per_second, runs["trl"])), 1),
            "sft_peak_mb": round(max(x["peak_mb"] for x in runs["sft"])),
            "trl_peak_mb": round(max(x["peak_mb"] for x in runs["trl"])), "model": model,
            "conversations": len(source), "batch": batch, "max_length": MAX_LENGTH, "rounds": int(rounds),
            "sft_steps": sft["steps"], "trl_steps": trl["steps"], "device": "cuda" if torch.cuda.is_available() else "cpu",
            "precision": "bf16-mixed" if bf16() else "32", "threads": torch.get_num_threads(),
            "sft_job_seconds": round(sft["job_seconds"], 1), "trl_job_seconds": round(trl["job_seconds"], 1)})


def tokens_per_second(side: dict) -> float:
    return side["tokens"] / side["seconds"]

if __name__ == "__main__":
    if sys.argv[1:2] == ["--side"]:
        side, folder, data, val, batch = sys.argv[2], sys.argv[3], Path(sys.argv[4]), Path(sys.argv[5]), int(sys.argv[6])
        print(json.dumps((run_sft if side == "sft" else run_trl)(folder, data, val, batch)))
    else:
        main(sys.argv[1] if len(sys.argv) > 1 else "smollm2", *(int(a) for a in sys.argv[2:5]))

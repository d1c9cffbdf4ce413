"""Training throughput, in real (non-padding) tokens per second, of sft against the Hugging Face Trainer: the same
encoder (all-MiniLM-L6-v2), texts (the fortunes training split), batch size, max length, precision and number of
steps, full fine-tuning, one after the other in one run. The step clock runs from the end of the first step to the
end of the last one, so start-up and the first step's one-off costs are out of those figures; the job clock
(`*_job_seconds`, `job_speedup`) covers what a user waits for on each side, from the call to its return: reading and
tokenising the texts, loading the model, every step, and for sft also its validation pass and writing the run (the
Trainer's job here neither validates nor saves).

sft groups its text batches by length by default (`data.group_by_length`), the Trainer does not, so the Trainer runs
twice: with its defaults and with `train_sampling_strategy="group_by_length"`. `speedup` is sft against the Trainer
with the same grouping (the loops compared); `speedup_over_hf_defaults` is what a user switching with default
settings gets. The `*_padding_share` figures are the share of padding among the tokens each run computed.

sft and the grouped Trainer run `rounds` times each, alternating which goes first (a machine's state drifts: caches,
clocks, other load), and `speedup` is the median of the rounds' ratios, with every round's ratio beside it.

    .venv/bin/python bench/text_throughput.py [steps] [rounds]      # default 60 3
"""

from __future__ import annotations

import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

from common import OUT, report
from sft import fine_tune, load_recipe
from sft.tasks import get_task
from sft.training.prepare import prepare

sys.path.insert(0, str(Path(__file__).parents[1] / "examples" / "fortunes"))
from build import TOPICS, build  # noqa: E402

BATCH, MAX_LENGTH, LR = 32, 128, 1e-4


class Clock:
    """Real tokens and seconds of every step after the first; real and padded tokens of every step."""

    def __init__(self):
        self.tokens, self.steps, self.started = 0, 0, None
        self.real, self.padded = 0, 0
        self.called, self.job_seconds = time.perf_counter(), None

    def returned(self) -> Clock:
        self.job_seconds = time.perf_counter() - self.called
        return self

    def step_end(self, mask) -> None:
        self.steps += 1
        tokens = int(mask.sum())
        self.real, self.padded = self.real + tokens, self.padded + mask.numel()
        if self.started is None:
            self.started = time.perf_counter()
        else:
            self.tokens += tokens
            self.seconds = time.perf_counter() - self.started

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds


class LightningClock(L.Callback):
    def __init__(self, clock: Clock):
        self.clock = clock

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.clock.step_end(batch[0]["attention_mask"])


def run_sft(base: list[str], tmp: str) -> Clock:
    clock = Clock()
    recipe = load_recipe(None, base + ["strategy.name=full", "trainer.epochs=1", f"run_dir={tmp}"])
    fine_tune(recipe, callbacks=[LightningClock(clock)])
    return clock.returned()


def run_hf_trainer(base: list[str], tmp: str, group_by_length: bool) -> Clock:
    clock = Clock()
    from transformers import (AutoModelForSequenceClassification, DataCollatorWithPadding, Trainer, TrainerCallback,
                              TrainingArguments)
    p = prepare(get_task("text-classification"), load_recipe(None, base + ["strategy.name=full"]))
    tokenizer, train = p.backbone.module.tokenizer, p.splits.train
    folder = p.backbone.weights_id.split(":", 1)[1]
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=len(train.classes))
    encoded = [dict(tokenizer(text, truncation=True, max_length=MAX_LENGTH), labels=int(label))
               for text, label in zip(train.items, train.labels)]
    pad = DataCollatorWithPadding(tokenizer)
    masks = []

    def collate(features):
        batch = pad(features)
        masks.append(batch["attention_mask"])
        return batch

    class Callback(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            clock.step_end(masks[-1])

    steps = math.ceil(len(train.items) / BATCH)  # one epoch of sft's training split, as sft's run: the same steps
    args = TrainingArguments(output_dir=tmp, per_device_train_batch_size=BATCH, max_steps=steps,
                             learning_rate=LR, weight_decay=0.01, lr_scheduler_type="cosine",
                             warmup_steps=max(1, steps // 20),
                             save_strategy="no", eval_strategy="no", report_to=[], use_cpu=True, logging_steps=10_000,
                             dataloader_num_workers=0, disable_tqdm=True, seed=0,
                             train_sampling_strategy="group_by_length" if group_by_length else "random")
    Trainer(model=model, args=args, train_dataset=encoded, data_collator=collate, callbacks=[Callback()]).train()
    return clock.returned()


def main(steps: int = 60, rounds: int = 3) -> None:
    data = OUT / "fortunes"
    build(TOPICS.split(","), data)
    with tempfile.TemporaryDirectory() as tmp:
        # one epoch of sft is about `steps` steps (val takes a tenth); the Trainer runs as many on the same texts
        base = ["task=text-classification", f"data.train={data}/train.csv",
                f"data.train_limit={int(steps * BATCH / 0.9) + BATCH}", f"data.max_length={MAX_LENGTH}",
                f"data.batch_size={BATCH}", f"optim.lr={LR}", "trainer.precision=32-true", "trainer.progress=false",
                f"cache_dir={tmp}/cache"]
        hf = run_hf_trainer(base, f"{tmp}/hf", group_by_length=False)
        sfts, grouped = [], []
        for r in range(rounds):
            for side in (("sft", "hf") if r % 2 else ("hf", "sft")):
                if side == "sft":
                    sfts.append(run_sft(base, f"{tmp}/sft{r}"))
                else:
                    grouped.append(run_hf_trainer(base, f"{tmp}/hf{r}", group_by_length=True))
                last = (sfts if side == "sft" else grouped)[-1]
                print(f"round {r} {side}: {last.tokens_per_second:.1f} tokens/s, job {last.job_seconds:.1f} s",
                      flush=True)
    ratios = [s.tokens_per_second / g.tokens_per_second for s, g in zip(sfts, grouped)]
    sft_tps = statistics.median(c.tokens_per_second for c in sfts)
    grouped_tps = statistics.median(c.tokens_per_second for c in grouped)
    report({"steps": sfts[0].steps, "rounds": rounds, "batch_size": BATCH, "max_length": MAX_LENGTH,
            "precision": "32-true",
            "threads": torch.get_num_threads(),
            "hf_trainer_tokens_per_second": round(hf.tokens_per_second, 1),
            "hf_trainer_grouped_tokens_per_second": round(grouped_tps, 1),
            "sft_tokens_per_second": round(sft_tps, 1),
            "speedup": round(statistics.median(ratios), 3), "round_speedups": [round(r, 3) for r in ratios],
            "speedup_over_hf_defaults": round(sft_tps / hf.tokens_per_second, 3),
            "hf_trainer_job_seconds": round(hf.job_seconds, 1),
            "hf_trainer_grouped_job_seconds": round(statistics.median(c.job_seconds for c in grouped), 1),
            "sft_job_seconds": round(statistics.median(c.job_seconds for c in sfts), 1),
            "job_speedup": round(statistics.median(g.job_seconds / s.job_seconds for s, g in zip(sfts, grouped)), 3),
            **{f"{name}_padding_share": round(1 - c.real / c.padded, 3)
               for name, c in (("hf_trainer", hf), ("hf_trainer_grouped", grouped[0]), ("sft", sfts[0]))}})


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))

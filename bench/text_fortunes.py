"""The 10-way fortunes task (examples/fortunes: the seeded 75/25 split of build.py), in one run: TF-IDF + logistic
regression, frozen all-MiniLM-L6-v2 mean-pooled + logistic regression, and sft's linear probe, full fine-tune and
two-stage and LoRA on the same encoder. Test accuracy and minutes of each.

`defaults` puts a user's first try side by side: `sft train` with nothing set but the data (`sft_defaults`) against
the Hugging Face Trainer with its own defaults (`hf_trainer_defaults`: AutoModelForSequenceClassification on the same
encoder, TrainingArguments left as they are: lr 5e-5, 3 epochs, batch 8, linear decay), trained on sft's training
split (sft holds a tenth of it out for validation; the Trainer gets that tenth too) and scored on the same test texts.

    .venv/bin/python bench/text_fortunes.py [epochs] [strategies]    # e.g. 3 linear-probe,lora (default: all)
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from common import OUT, report
from sft import fine_tune, load_recipe
from sft.tasks import get_task
from sft.core.hardware import training_device
from sft.training.prepare import prepare, split_features

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT / "examples" / "fortunes"))
from build import TOPICS, build  # noqa: E402

STRATEGIES = {  # lr per strategy: the head alone takes a large one, the whole encoder a small one
    "linear-probe": ["strategy.name=linear-probe", "optim.lr=0.003"],
    "full": ["strategy.name=full", "optim.lr=0.0002"],
    "two-stage": ["strategy.name=two-stage", "optim.lr=0.0003"],  # the head on cached embeddings, then all layers
    "lora": ["strategy.name=lora", "optim.lr=0.001", "strategy.lora_rank=16", "strategy.lora_alpha=32"],
    "defaults": [],  # nothing set: what a new user gets, against the Trainer's defaults
}


def logistic(train_x, train_y, test_x, test_y, C: float) -> float:
    from sklearn.linear_model import LogisticRegression
    return float(LogisticRegression(C=C, max_iter=3000).fit(train_x, train_y).score(test_x, test_y))


def hf_trainer_defaults(p, tmp: str) -> float:
    """Test accuracy of the Hugging Face Trainer with its defaults on the same encoder and texts."""
    import numpy as np
    from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding, Trainer, TrainingArguments
    tokenizer, train, test = p.backbone.module.tokenizer, p.splits.train, p.splits.test
    folder = p.backbone.weights_id.split(":", 1)[1]
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=len(train.classes))

    def encode(samples, with_val=None):
        items, labels = list(samples.items), list(samples.labels)
        if with_val is not None:
            items, labels = items + list(with_val.items), labels + list(with_val.labels)
        return [dict(tokenizer(text, truncation=True, max_length=128), labels=int(label))
                for text, label in zip(items, labels)]

    args = TrainingArguments(output_dir=f"{tmp}/hf", save_strategy="no", report_to=[], use_cpu=True, seed=0,
                             disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=encode(train, p.splits.val),
                      data_collator=DataCollatorWithPadding(tokenizer))
    trainer.train()
    logits = trainer.predict(encode(test)).predictions
    return float((np.argmax(logits, axis=1) == np.asarray(test.labels)).mean())


def main(epochs: int = 3, strategies: str = ",".join(STRATEGIES)) -> None:
    unknown = set(strategies.split(",")) - set(STRATEGIES)
    if unknown:
        raise SystemExit(f"unknown strategies {sorted(unknown)}; expected some of {','.join(STRATEGIES)}")
    data = OUT / "fortunes"
    build(TOPICS.split(","), data)
    figures: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        base = ["task=text-classification", f"data.train={data}/train.csv", f"data.test={data}/test.csv",
                "data.max_length=128", "data.batch_size=32", "trainer.progress=false", f"cache_dir={tmp}/cache"]

        started = time.perf_counter()
        p = prepare(get_task("text-classification"), load_recipe(None, base + ["strategy.name=linear-probe"]))
        train, test = p.splits.train, p.splits.test
        from sklearn.feature_extraction.text import TfidfVectorizer
        tfidf = TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), min_df=2)
        figures["tfidf_accuracy"] = round(logistic(tfidf.fit_transform(train.items), train.labels,
                                                   tfidf.transform(test.items), test.labels, C=10.0), 4)
        figures["tfidf_minutes"] = round((time.perf_counter() - started) / 60, 2)

        started = time.perf_counter()  # the frozen encoder's embeddings, through sft's own cache (reused below)
        features = split_features(p.recipe, p.backbone.name, p.backbone.module, p.splits, p.inputs, p.precision,
                                  False, training_device(p.recipe.trainer.accelerator), p.notes["num_workers"])
        train_x, test_x = (features(s, p.inputs.eval(getattr(p.splits, s))).numpy() for s in ("train", "test"))
        figures["frozen_lr_accuracy"] = round(logistic(train_x, train.labels, test_x, test.labels, C=10.0), 4)
        figures["frozen_lr_minutes"] = round((time.perf_counter() - started) / 60, 2)
        print(f"train {len(train)} (val {len(p.splits.val)} held out of the 75 %), test {len(test)}", flush=True)

        for name in strategies.split(","):
            overrides = STRATEGIES[name]
            started = time.perf_counter()
            epochs_of = 20 if name == "linear-probe" else epochs  # head-only epochs on cached embeddings are cheap
            settings = base + overrides + [f"trainer.epochs={epochs_of}"] if name != "defaults" else base[:3] + [
                "trainer.progress=false", f"cache_dir={tmp}/cache"]  # the data, and nothing else
            recipe = load_recipe(None, settings + [f"run_dir={tmp}/{name}"])
            m = fine_tune(recipe).metrics
            key = name.replace("-", "_")
            figures[f"sft_{key}_accuracy"] = m["test_acc"]
            figures[f"sft_{key}_minutes"] = round((time.perf_counter() - started) / 60, 2)
            print(f"{name:>14}: test accuracy {m['test_acc']:.4f}", flush=True)
            if name == "defaults":
                started = time.perf_counter()
                figures["sft_defaults"] = m["test_acc"]
                figures["hf_trainer_defaults"] = round(hf_trainer_defaults(p, tmp), 4)
                figures["hf_trainer_defaults_minutes"] = round((time.perf_counter() - started) / 60, 2)
                figures["sft_defaults_strategy"], figures["sft_defaults_lr"] = m["strategy"], m.get("lr_auto")
                print(f"{'hf trainer':>14}: test accuracy {figures['hf_trainer_defaults']:.4f}", flush=True)
    best = max((n for n in strategies.split(",") if n != "defaults"),
               key=lambda n: figures[f"sft_{n.replace('-', '_')}_accuracy"], default="defaults")
    figures["sft_best_accuracy"] = figures[f"sft_{best.replace('-', '_')}_accuracy"]
    figures["sft_best_strategy"] = best
    figures["gain_over_frozen_lr"] = round(figures["sft_best_accuracy"] - figures["frozen_lr_accuracy"], 4)
    report(figures)


if __name__ == "__main__":
    main(*(int(a) if a.isdigit() else a for a in sys.argv[1:]))

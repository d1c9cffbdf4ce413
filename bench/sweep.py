"""`sft sweep` against what a user has without it: `sft train` with the defaults, and the same trials run one after
another to the end (a shell loop over settings).

Fashion-MNIST at a budget this CPU can sweep in minutes — 2,000 training images (a tenth held out for validation),
2,000 test images of the official test split, 64 px, ImageNet MobileNetV2 — rather than fortunes, where one epoch of
a MiniLM fine-tune takes minutes on 2 cores and 12 trials of it an hour.

1. defaults: `sft train` with only the data and the budget (image size, batch): its test accuracy.
2. sweep: `sft sweep --trials 12 --workers 2` over optim.lr (log-uniform 1e-4..1e-2), strategy.name (linear-probe,
   two-stage, full) and trainer.epochs (1..4): the wall time of the whole command, the best trial's test accuracy
   (the test split scored once, for it), the share of trials pruned.
3. one after another: the sweep's own 12 parameter sets, each trained to its last epoch (no pruning) in one process
   with every core, after one another: the wall time. speedup = that time / the sweep's.
The sweep and the sequential trials each start from an empty feature cache.

    .venv/bin/python bench/sweep.py [trials] [workers]
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import CLASSES, fashion_npz, report
from sft import fine_tune, load_recipe

SPACE = """optim.lr: {log: [1.0e-4, 1.0e-2]}
strategy.name: [linear-probe, two-stage, full]
trainer.epochs: {int: [1, 4]}
"""


def main() -> None:
    trials = int(sys.argv[1]) if len(sys.argv) > 1 else 12
    workers = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    train, test = fashion_npz("train", 2000), fashion_npz("t10k", 2000)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        recipe = tmp / "fashion.yaml"
        recipe.write_text(f"""data:
  train: {train}
  test: {test}
  classes: {json.dumps(CLASSES)}
  image_size: 64
  batch_size: 64
model:
  backbone: torchvision/mobilenet_v2
  weights: imagenet
trainer:
  progress: false
""")
        (tmp / "space.yaml").write_text(SPACE)

        started = time.perf_counter()
        defaults = fine_tune(load_recipe(recipe, [f"run_dir={tmp / 'defaults'}", f"cache_dir={tmp / 'cache-d'}"]))
        defaults_seconds = time.perf_counter() - started
        print(f"defaults: test accuracy {defaults.metrics['test_acc']:.4f} ({defaults.metrics['strategy']}, "
              f"{defaults_seconds:.0f} s)", flush=True)

        folder = tmp / "sweep"
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "sft.cli", "sweep", str(recipe), f"cache_dir={tmp / 'cache-s'}",
                        "--space", str(tmp / "space.yaml"), "--trials", str(trials), "--workers", str(workers),
                        "--out", str(folder)], check=True)
        sweep_seconds = time.perf_counter() - started
        summary = json.loads((folder / "summary.json").read_text())

        import optuna
        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
            str(folder / "study.journal")))
        study = optuna.load_study(study_name="sweep", storage=storage)
        started = time.perf_counter()
        for t in study.trials:
            params = [f"{k}={json.dumps(v)}" for k, v in t.params.items()]
            fine_tune(load_recipe(recipe, [
                *params, f"run_dir={tmp / 'one-by-one' / str(t.number)}", f"cache_dir={tmp / 'cache-o'}",
                "data.test=null"]))
        sequential_seconds = time.perf_counter() - started

    print(f"sweep: {sweep_seconds:.0f} s, trials {summary['trials']}, best {summary['best_params']}; "
          f"one after another, unpruned: {sequential_seconds:.0f} s", flush=True)
    report({
        "trials": trials, "workers": workers,
        "best_test_accuracy": round(summary["test"]["accuracy"], 4),
        "defaults_test_accuracy": round(defaults.metrics["test_acc"], 4),
        "best_val_acc": round(summary["best_value"], 4), "best_params": summary["best_params"],
        "pruned_share": summary["pruned_share"],
        "sweep_seconds": round(sweep_seconds, 1), "sequential_seconds": round(sequential_seconds, 1),
        "defaults_seconds": round(defaults_seconds, 1),
        "speedup": round(sequential_seconds / sweep_seconds, 2),
    })


if __name__ == "__main__":
    main()

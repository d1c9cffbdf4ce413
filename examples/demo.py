"""`make demo`: ImageNet MobileNetV2 -> Fashion-MNIST, before and after fine-tuning, on the official test split.

"Before" is a linear probe of the pretrained backbone (frozen, its features computed once and cached); "after" is the
two-stage fine-tune of examples/fashion_mnist.yaml (the head on those cached features, then every layer with
discriminative learning rates). Both runs are left in runs/demo/ for `sft eval` and `sft predict`.
"""

from pathlib import Path

from rich.console import Console
from rich.table import Table

from sft import fine_tune, load_recipe

RECIPE = Path(__file__).with_name("fashion_mnist.yaml")
RUNS = [
    ("before: linear probe", ["strategy.name=linear-probe", "trainer.epochs=10", "run_dir=runs/demo/linear-probe"]),
    ("after: fine-tuned", ["run_dir=runs/demo/two-stage"]),
]


def main() -> None:
    console = Console(width=max(Console().width, 110))
    results = []
    for title, overrides in RUNS:
        console.rule(title)
        results.append((title, fine_tune(load_recipe(RECIPE, overrides), overwrite=True)))
    table = Table(title="MobileNetV2 (ImageNet) on Fashion-MNIST, official test split (10,000 images)")
    for column in ("run", "test accuracy", "test loss", "train minutes", "run directory"):
        table.add_column(column, no_wrap=True)
    for title, run in results:
        m = run.metrics
        table.add_row(title, f"{m['test_acc']:.4f}", f"{m['test_loss']:.4f}", f"{m['train_seconds'] / 60:.1f}",
                      str(run.dir))
    console.print(table)
    console.print(f"Try: sft predict {results[-1][1].dir} IMAGE.png --top-k 3    sft eval {results[-1][1].dir}")


if __name__ == "__main__":
    main()

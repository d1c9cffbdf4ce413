"""The `sft` command. User mistakes end with a one-paragraph message and exit code 2, never a traceback."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from sft.errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Supervised fine-tuning of pretrained models.")
console = Console()
errors = Console(stderr=True)


def _fail(error: UserError) -> None:
    errors.print(f"[bold red]error:[/] {error}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(2)


@app.command()
def train(recipe: Path = typer.Argument(..., help="recipe YAML"),
          overrides: Optional[list[str]] = typer.Argument(None, help="dotted.key=value overrides"),
          overwrite: bool = typer.Option(False, help="replace an existing run directory"),
          resume: bool = typer.Option(False, help="continue the run in run_dir from its last checkpoint")):
    """Fine-tune as RECIPE says; writes a run directory."""
    try:
        from sft.engine import fine_tune
        from sft.recipe import load_recipe
        result = fine_tune(load_recipe(recipe, overrides or []), overwrite=overwrite, resume=resume)
    except UserError as e:
        _fail(e)
    if result.metrics:
        _print_metrics(result.dir, result.metrics)


@app.command("eval")
def eval_(run_dir: Path = typer.Argument(..., help="a run directory"),
          data: Optional[str] = typer.Option(None, help="labelled data to evaluate on; default: the run's test split"),
          batch_size: int = typer.Option(128)):
    """Evaluate a trained run on its test split or on other labelled data."""
    try:
        from sft.data import ImageDataset, build_transforms, read_source
        from sft.evaluate import evaluate
        from sft.recipe import Source, load_recipe
        from sft.run import RunDir, load_model
        model, info = load_model(run_dir)
        recipe = load_recipe(RunDir(run_dir).recipe)
        source = Source(path=data) if data else recipe.data.test
        if source is None:
            raise UserError(f"{run_dir}: the run has no test split; pass --data FOLDER|CSV|IDX|NPZ")
        samples = read_source(source, info.classes)
        if samples.classes != info.classes:
            raise UserError(f"{source.path}: classes differ from the run's (data only: "
                            f"{sorted(set(samples.classes) - set(info.classes))}; run only: "
                            f"{sorted(set(info.classes) - set(samples.classes))})")
        _, eval_tf = build_transforms(info.preprocess, None, "none")
        result = evaluate(model, ImageDataset(samples, eval_tf), len(info.classes), batch_size=batch_size,
                          progress=True)
    except UserError as e:
        _fail(e)
    result["per_class_recall"] = dict(zip(info.classes, result["per_class_recall"]))
    _print_metrics(run_dir, result)


@app.command()
def predict(run_dir: Path = typer.Argument(..., help="a run directory"),
            files: list[Path] = typer.Argument(..., help="image files"),
            top_k: int = typer.Option(1, "--top-k", min=1),
            format: str = typer.Option("table", "--format", help="table | json | csv")):
    """Classify image files with a trained run."""
    try:
        if format not in ("table", "json", "csv"):
            raise UserError(f"--format {format}: expected table, json or csv")
        import torch
        from sft.data import build_transforms
        from sft.evaluate import predict as predict_batch
        from sft.run import load_model
        from sft.sources import read_image
        model, info = load_model(run_dir)
        _, eval_tf = build_transforms(info.preprocess, None, "none")
        batch = torch.stack([eval_tf(read_image(f)) for f in files])
        results = predict_batch(model, batch, info.classes, top_k)
    except UserError as e:
        _fail(e)
    rows = [{"file": str(f), "rank": r + 1, "label": label, "probability": round(p, 4)}
            for f, preds in zip(files, results) for r, (label, p) in enumerate(preds)]
    if format == "json":
        print(json.dumps(rows, indent=2))
    elif format == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        sys.stdout.write(out.getvalue())
    else:
        table = Table("file", "rank", "label", "probability")
        for row in rows:
            table.add_row(row["file"], str(row["rank"]), row["label"], f"{row['probability']:.4f}")
        console.print(table)


@app.command()
def audit(recipe: Path = typer.Argument(..., help="recipe YAML (its data, backbone and weights are audited)"),
          overrides: Optional[list[str]] = typer.Argument(None, help="dotted.key=value overrides"),
          out: Optional[Path] = typer.Option(None, help="output folder; default: <run_dir>-audit"),
          overwrite: bool = typer.Option(False, help="replace an existing audit")):
    """Find label issues, duplicates, train/test leakage, outliers and class imbalance in the recipe's data."""
    try:
        from sft.engine import audit_data
        from sft.recipe import load_recipe
        loaded = load_recipe(recipe, overrides or [])
        out = out or Path(f"{loaded.run_dir}-audit")
        report = audit_data(loaded, out, overwrite=overwrite)
    except UserError as e:
        _fail(e)
    kinds: dict[str, int] = {}
    for suspect in report.suspects:
        kinds[suspect.kind] = kinds.get(suspect.kind, 0) + 1
    _print_metrics(out, {"imbalance_ratio": report.imbalance_ratio, "out_of_fold_accuracy": report.oof_accuracy,
                         "suspects": kinds, "train_counts": report.counts["train"]})
    console.print(f"suspects.csv and audit.html are in {out}; train without them: data.exclude={out}/suspects.csv")


@app.command()
def recipe():
    """Print the default recipe, every key documented."""
    from sft.recipe import documented_defaults
    sys.stdout.write(documented_defaults())


def _print_metrics(run_dir, metrics: dict) -> None:
    table = Table(title=str(run_dir), show_header=False)
    for key, value in metrics.items():
        for name, item in (value.items() if isinstance(value, dict) else [(None, value)]):
            label = f"{key} {name}" if name is not None else key
            table.add_row(label, f"{item:.4f}" if isinstance(item, float) else str(item))
    console.print(table)


if __name__ == "__main__":
    app()

"""The `sft` command. User mistakes end with a one-paragraph message and exit code 2, never a traceback."""

from __future__ import annotations

import csv
import inspect
import io
import json
import sys
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from sft.core.rundir import is_child_process
from sft.errors import UserError
from sft.recipe import documented_defaults
from sft.tasks import DEFAULT as DEFAULT_TASK
from sft.tasks import get_task, load_recipe, task_of_run
from sft.tasks import names as task_names

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Supervised fine-tuning of pretrained models.")
console = Console()
errors = Console(stderr=True)


def _fail(error: UserError) -> None:
    errors.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(error.exit_code)  # 2; 130 or 143 for a run stopped by Ctrl-C or SIGTERM


@app.command()
def train(recipe: Path = typer.Argument(..., help="recipe YAML"),
          overrides: Optional[list[str]] = typer.Argument(None, help="dotted.key=value overrides"),
          overwrite: bool = typer.Option(False, help="replace an existing run directory"),
          resume: bool = typer.Option(False, help="continue the run in run_dir from its last checkpoint")):
    """Fine-tune as RECIPE says; writes a run directory."""
    try:
        from sft.training.fit import fine_tune  # deferred here and below: `sft --help` stays instant
        from sft.training.resume import check_own_run
        loaded = load_recipe(recipe, overrides or [])
        check_own_run(recipe, loaded, resume)
        result = fine_tune(get_task(loaded.task), loaded, overwrite=overwrite, resume=resume,
                           keep=(*_data_paths(loaded), recipe))
    except UserError as e:
        _fail(e)
    if result.metrics and not result.finished_before:
        _print_metrics(result.dir, result.metrics)


@app.command("eval")
def eval_(run_dir: Path = typer.Argument(..., help="a run directory"),
          data: Optional[str] = typer.Option(None, help="labelled data to evaluate on; default: the run's test split"),
          out: Optional[Path] = typer.Option(None, help="output folder; default: RUN_DIR/eval (RUN_DIR/eval-NAME "
                                                         "for --data NAME)"),
          overwrite: bool = typer.Option(False, help="replace an evaluation of other data in the output folder"),
          top_losses: int = typer.Option(16, min=0, help="samples of highest loss shown, with Grad-CAM"),
          batch_size: int = typer.Option(128)):
    """Evaluate a trained run: metrics per class, calibration (fits the temperature on the validation split once),
    top losses and Grad-CAM, written as metrics.json and a self-contained report.html."""
    try:
        out, summary = task_of_run(run_dir).evaluate(run_dir, data, out, overwrite=overwrite, batch_size=batch_size,
                                                     top_n=top_losses, progress=True)
    except UserError as e:
        _fail(e)
    _print_metrics(out, summary)
    console.print(f"metrics.json and report.html are in {escape(str(out))}")


@app.command()
def report(run_dir: Path = typer.Argument(..., help="a run directory"),
           eval_dir: Optional[Path] = typer.Option(None, "--eval", help="evaluation folder; default: RUN_DIR/eval")):
    """Rebuild report.html from a stored evaluation (re-runs Grad-CAM)."""
    try:
        path = task_of_run(run_dir).report(run_dir, eval_dir)
    except UserError as e:
        _fail(e)
    console.print(f"wrote {escape(str(path))}")


@app.command()
def compare(run_dirs: list[Path] = typer.Argument(..., help="run directories"),
            out: Optional[Path] = typer.Option(None, help="also write the table as an HTML file"),
            overwrite: bool = typer.Option(False, help="replace an earlier --out page of sft compare")):
    """Runs side by side: their metrics and the recipe keys that differ."""
    try:
        from sft.tasks.compare import compare_runs, write_html
        header, rows = compare_runs(run_dirs)
        if out:
            write_html(out, header, rows, overwrite=overwrite)
    except UserError as e:
        _fail(e)
    table = Table(*header)
    for row in rows:
        table.add_row(*row)
    console.print(table)


class Engine(str, Enum):
    """What runs the model for predict and serve: the parser rejects anything else (exit 2)."""
    torch = "torch"
    onnx = "onnx"


@app.command()
def predict(run_dir: Path = typer.Argument(..., help="a run directory"),
            files: Optional[list[Path]] = typer.Argument(None, help="image files (image runs)"),
            text: Optional[list[str]] = typer.Option(None, "--text", "--prompt", help="text runs: a text to classify; "
                                                                         "causal-lm: a prompt (repeat for more)"),
            lines: Optional[Path] = typer.Option(None, "--file", help="text runs: a file with one text per line"),
            top_k: int = typer.Option(1, "--top-k", min=1),
            out: Optional[Path] = typer.Option(None, help="segmentation: a folder for the masks and overlays"),
            format: str = typer.Option("table", "--format", help="table | json | csv"),
            max_new_tokens: Optional[int] = typer.Option(None, min=1, help="causal-lm: tokens per answer at most"),
            temperature: Optional[float] = typer.Option(None, min=0, help="causal-lm: 0 greedy, else sampling"),
            top_p: Optional[float] = typer.Option(None, min=0, max=1, help="causal-lm: nucleus sampling share"),
            seed: int = typer.Option(0, help="causal-lm: sampling seed"),
            engine: Engine = typer.Option(Engine.torch, help="onnx: the run's `sft export --format onnx`"),
            score: Optional[float] = typer.Option(None, "--score", min=0, max=1,
                                                  help="detection: the lowest score shown (default 0.3)")):
    """Classify image files or texts, or segment images, with a trained run."""
    try:
        if format not in ("table", "json", "csv"):
            raise UserError(f"--format {format}: expected table, json or csv")
        texts = list(text or []) + (_text_lines(lines) if lines else [])
        task = task_of_run(run_dir)
        generation = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed,
                          stream=format == "table") if getattr(task, "generates", False) else {}
        options = {k: v for k, v in (("engine", engine.value if engine != Engine.torch else None), ("score", score))
                   if v is not None}
        unknown = [k for k in options if k not in inspect.signature(task.predict).parameters]
        if unknown:
            raise UserError(f"--{unknown[0]}: not an option of {task.name} runs")
        rows = task.predict(run_dir, [str(f) for f in files or []], texts, top_k, out=out, **generation, **options)
    except UserError as e:
        _fail(e)
    if generation.get("stream"):  # the answers were printed as they were generated
        return
    if format == "json":
        print(json.dumps(rows, indent=2))
    elif format == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        sys.stdout.write(out.getvalue())
    else:
        table = Table(*rows[0])
        for row in rows:
            table.add_row(*(escape(f"{v:.4f}" if isinstance(v, float) else str(v)) for v in row.values()))
        console.print(table)


@app.command("export")
def export_(run_dir: Path = typer.Argument(..., help="a run directory"),
            format: str = typer.Option("onnx", "--format", help="onnx | hf (text classification)"),
            out: Optional[Path] = typer.Option(None, help="output folder; default: RUN_DIR/export (onnx), "
                                                         "RUN_DIR/export-hf (hf)"),
            force: bool = typer.Option(False, help="write the export even when it fails the parity check"),
            overwrite: bool = typer.Option(False, help="replace an earlier export in the output folder")):
    """Export a trained run (ONNX with dynamic batch/sequence axes, or a Hugging Face folder), checked against the
    PyTorch model on the run's own validation/test samples (parity.json)."""
    try:
        if format not in ("onnx", "hf"):
            raise UserError(f"--format {format}: expected onnx or hf")
        folder, parity = task_of_run(run_dir).export_model(run_dir, format, out, force=force, overwrite=overwrite)
    except UserError as e:
        _fail(e)
    _print_metrics(folder, {"passed": parity["passed"], "max |Δprobability|": f"{parity['max_abs_diff']:.2e}",
                            "top-1 agreement": parity["top1_agreement"], "samples": parity["samples"]})
    if not parity.get("passed", True):
        errors.print("[yellow]warning:[/] written with --force although the parity check failed (parity.json)",
                     highlight=False)


@app.command()
def serve(run_dir: Path = typer.Argument(..., help="a run directory"),
          engine: Engine = typer.Option(Engine.torch, help="onnx: the run's `sft export --format onnx`"),
          host: str = typer.Option("127.0.0.1", help="address to bind; 0.0.0.0 exposes it to the network"),
          port: int = typer.Option(8000),
          max_batch: int = typer.Option(32, min=1, help="most items the model runs at once"),
          max_wait_ms: float = typer.Option(5.0, min=0, help="how long a batch waits for more items"),
          max_items: int = typer.Option(64, min=1, help="most items one request may carry"),
          max_body_mb: float = typer.Option(16.0, help="largest request body")):
    """Serve a trained run over HTTP: POST /predict (dynamic batching), GET /health, GET /metadata, /docs."""
    try:
        from sft.serve.server import Limits, run_server
        limits = Limits(max_batch, max_wait_ms, max_items, int(max_body_mb * 2**20))
        run_server(run_dir, engine.value, host, port, limits,
                   announce=lambda url: console.print(f"serving {escape(str(run_dir))} on {url} (API docs: "
                                                      f"{url}/docs)", soft_wrap=True))  # one line: logs keep the URL whole
    except UserError as e:
        _fail(e)


@app.command()
def audit(recipe: Path = typer.Argument(..., help="recipe YAML (its data, backbone and weights are audited)"),
          overrides: Optional[list[str]] = typer.Argument(None, help="dotted.key=value overrides"),
          out: Optional[Path] = typer.Option(None, help="output folder; default: <run_dir>-audit"),
          also: Optional[list[str]] = typer.Option(None, "--also", help="another backbone (backbone or "
                                                   "backbone@weights) whose probe joins the label-issue vote; "
                                                   "repeatable"),
          overwrite: bool = typer.Option(False, help="replace an existing audit")):
    """Find label issues, duplicates, train/test leakage, outliers and class imbalance in the recipe's data
    (segmentation: the masks the recipe's finished run disagrees with)."""
    try:
        loaded = load_recipe(recipe, overrides or [])
        out = out or Path(f"{loaded.run_dir}-audit")
        summary = get_task(loaded.task).audit(loaded, out, overwrite=overwrite, also=also or [])
    except UserError as e:
        _fail(e)
    _print_metrics(out, summary)
    console.print(escape(f"suspects.csv and audit.html are in {out}"))


@app.command("lr-find")
def lr_find(recipe: Path = typer.Argument(..., help="recipe YAML (its model, strategy and data are swept)"),
            overrides: Optional[list[str]] = typer.Argument(None, help="dotted.key=value overrides"),
            start: float = typer.Option(1e-7, help="first learning rate (of the head; groups keep their ratios)"),
            end: float = typer.Option(10.0, help="last learning rate"),
            steps: int = typer.Option(100, help="optimizer steps of the sweep"),
            out: Optional[Path] = typer.Option(None, help="output folder; default: <run_dir>-lr-find"),
            overwrite: bool = typer.Option(False, help="replace an existing LR range test")):
    """LR range test: suggests optim.lr for the recipe (plot and JSON in the output folder)."""
    try:
        from sft.training.lr_find import find_lr
        loaded = load_recipe(recipe, overrides or [])
        out = out or Path(f"{loaded.run_dir}-lr-find")
        result = find_lr(get_task(loaded.task), loaded, out, start=start, end=end, steps=steps, overwrite=overwrite)
    except UserError as e:
        _fail(e)
    if is_child_process():
        return
    shown = ("suggestion", "valley", "steep", "strategy", "steps_done", "stopped_early")
    _print_metrics(out, {k: result[k] for k in shown})
    console.print(escape(f"lr_find.png and lr_find.json are in {out}; train with optim.lr={result['suggestion']:.3g}"))


@app.command()
def rank(recipe: Path = typer.Argument(..., help="recipe YAML (its data and inputs are used)"),
         overrides: Optional[list[str]] = typer.Argument(None, help="dotted.key=value overrides"),
         candidates: str = typer.Option(..., help="comma-separated backbone or backbone@weights, e.g. "
                                                  "torchvision/mobilenet_v2@imagenet,timm/tf_efficientnet_lite0@none"),
         by: str = typer.Option("logme", help="sort key: logme, hscore, nce, leep, knn_acc, probe_acc"),
         limit: int = typer.Option(2000, help="stratified sample of the training data to score"),
         out: Optional[Path] = typer.Option(None, help="output folder; default: <run_dir>-rank"),
         overwrite: bool = typer.Option(False, help="replace an existing ranking")):
    """Rank pretrained backbones for the recipe's data by transferability (LogME, H-score, NCE, LEEP, kNN)."""
    try:
        from sft.tasks.classification.tools.rank import SCORES, rank_backbones
        loaded = load_recipe(recipe, overrides or [])
        task = _classification(loaded, "rank")

        def progress(candidate, row):
            if row is None:
                errors.print(f"[yellow]{escape(candidate)}: cannot be loaded[/]", highlight=False)
            else:
                errors.print(f"{candidate}: scored in {row['seconds']:.1f} s", highlight=False)

        result = rank_backbones(task, loaded, [c for c in candidates.split(",") if c.strip()], out, by=by, limit=limit,
                                overwrite=overwrite, progress=progress)
    except UserError as e:
        _fail(e)
    table = Table("#", "candidate", *SCORES, "seconds",
                  title=f"{result['samples']} samples, sorted by {by} (higher is better)")
    for row in result["ranked"]:
        table.add_row(str(row["rank"]), escape(row["candidate"]),
                      *("-" if row[s] is None else f"{row[s]:.3f}" for s in SCORES), f"{row['seconds']:.1f}")
    console.print(table)
    for row in result["ranked"]:
        if row.get("note"):
            errors.print(f"[yellow]note:[/] {escape(row['candidate'])}: {escape(row['note'])}", highlight=False,
                         soft_wrap=True)
    for failed in result["failed"]:
        errors.print(f"[yellow]not ranked:[/] {escape(failed['candidate'])}: {escape(failed['error'])}",
                     highlight=False, soft_wrap=True)
    console.print(f"rank.json is in {escape(result['out'])}")


@app.command()
def recipe(task: str = typer.Option(DEFAULT_TASK, help=f"the task whose recipe to print: {', '.join(task_names())}")):
    """Print a task's default recipe, every key documented (its own keys included)."""
    try:
        chosen = get_task(task)
    except UserError as e:
        _fail(e)
    sys.stdout.write(f"# {chosen.name}: {chosen.description}\n# tasks: {', '.join(task_names())}\n")
    sys.stdout.write(documented_defaults(chosen.recipe, chosen.name))


def _classification(recipe, command: str):
    task = get_task(recipe.task)
    if not hasattr(task, "read_split"):
        raise UserError(f"sft {command} is a classification tool; task {recipe.task} has none")
    return task


def _data_paths(recipe) -> tuple:
    """The recipe's data: replacing a run directory must never remove it."""
    return tuple(s.path for s in (recipe.data.train, recipe.data.val, recipe.data.test) if s is not None)


def _text_lines(path: Path) -> list[str]:
    from sft.core.textfile import need_file, read_utf8
    return [line for line in read_utf8(need_file(path, "a text file with one text per line")).splitlines()
            if line.strip()]


def _print_metrics(run_dir, metrics: dict) -> None:
    """A two-column table; names come from the user's data (class names), so rich markup in them is escaped."""
    table = Table(title=escape(str(run_dir)), show_header=False)
    for key, value in metrics.items():
        for name, item in (value.items() if isinstance(value, dict) else [(None, value)]):
            label = f"{key} {name}" if name is not None else key
            table.add_row(escape(label), escape(f"{item:.4f}" if isinstance(item, float) else str(item)))
    console.print(table)


if __name__ == "__main__":
    app()

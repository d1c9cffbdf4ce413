"""The `sft` command. User mistakes end with a one-paragraph message and exit code 2, never a traceback."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from typing import Literal, Optional

import typer
from pydantic import BaseModel, Field
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from sft.cli_options import ARGUMENT, command_function, flags
from sft.cli_options import command as build_command
from sft.core.rundir import is_child_process
from sft.errors import UserError
from sft.recipe import documented_defaults
from sft.tasks import DEFAULT as DEFAULT_TASK
from sft.tasks import get_task, load, load_recipe, task_of_run, tools
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


# -- the commands on a finished run: the CLI's own options, and those RUN_DIR's task declares (its options.py) -------

class NoOptions(BaseModel):
    """A command without options of the task's own."""


class FileInputs(BaseModel):
    files: list[Path] = Field([], description="the files to predict on", json_schema_extra=ARGUMENT)

    def items(self) -> list[str]:
        return [str(f) for f in self.files]


class TextInputs(BaseModel):
    text: list[str] = Field([], description="a text (a prompt) to predict on; repeat for more",
                            json_schema_extra=flags("--text", "--prompt"))
    file: Optional[Path] = Field(None, description="a file with one text per line")

    def items(self) -> list[str]:
        return list(self.text) + (_text_lines(self.file) if self.file else [])


INPUTS = {"files": FileInputs, "texts": TextInputs}  # what a task's `sft predict` reads -> how it is given


class Output(BaseModel):
    format: Literal["table", "json", "csv"] = Field("table", description="how the results are printed")


class Evaluation(BaseModel):
    data: Optional[str] = Field(None, description="labelled data to evaluate on; default: the run's test split")
    out: Optional[Path] = Field(None, description="output folder; default: RUN_DIR/eval (RUN_DIR/eval-NAME for "
                                                  "--data NAME)")
    overwrite: bool = Field(False, description="replace an evaluation of other data in the output folder")
    batch_size: int = Field(128, ge=1, description="samples per batch")


class Exporting(BaseModel):
    out: Optional[Path] = Field(None, description="output folder; default: RUN_DIR/export (onnx), RUN_DIR/export-hf "
                                                  "(hf)")
    force: bool = Field(False, description="write the export even when it fails the parity check")
    overwrite: bool = Field(False, description="replace an earlier export in the output folder")


class Serving(BaseModel):
    host: str = Field("127.0.0.1", description="address to bind; 0.0.0.0 exposes it to the network")
    port: int = Field(8000, ge=0, le=65535, description="port to listen on")
    max_batch: int = Field(32, ge=1, description="most items the model runs at once")
    max_wait_ms: float = Field(5.0, ge=0, description="how long a batch waits for more items")
    max_items: int = Field(64, ge=1, description="most items one request may carry")
    max_body_mb: float = Field(16.0, description="largest request body")


def on_a_run(name: str, help: str):
    """Register `sft NAME RUN_DIR ...`, whose options are known once RUN_DIR's task is: the decorated function gives,
    for the task and the run, the command's models (its options) and the function they are passed to. The arguments
    after RUN_DIR are parsed then, so `sft NAME RUN_DIR --help` lists that task's options."""
    def register(build):
        @app.command(name, help=help, add_help_option=False,
                     context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
        def run_command(ctx: typer.Context):
            args = list(ctx.args)
            if not args or args[0].startswith("-"):
                _without_a_run(name, help, args)
            try:
                task = task_of_run(args[0])
            except UserError as e:
                _fail(e)
            models, body = build(task, Path(args[0]))
            command = build_command(name, f"{help}\n\nThe options of {task.name} runs ({task.description}).",
                                    models, _reported(body))
            with command.make_context(f"{ctx.info_name} {args[0]}", args[1:], parent=ctx.parent) as run_ctx:
                command.invoke(run_ctx)
        return build
    return register


def _without_a_run(name: str, help: str, args: list[str]) -> None:
    usage = f"sft {name} RUN_DIR [OPTIONS]"
    if args and args[0] == "--help":
        console.print(escape(f"Usage: {usage}\n\n{help}\n\nGive a run directory first: its task decides the options "
                             f"(`sft {name} RUN_DIR --help` lists them). Tasks: {', '.join(task_names())}."),
                      highlight=False)
        raise typer.Exit(0)
    _fail(UserError(f"give a run directory first: {usage}; its task decides the options (`sft {name} RUN_DIR "
                    f"--help` lists them)"))


def _reported(body):
    """`body`, its UserError printed as one paragraph with exit code 2."""
    def run(*options):
        try:
            body(*options)
        except UserError as e:
            _fail(e)
    return run


@on_a_run("eval", "Evaluate a trained run on its test split or other labelled data: metrics.json and a "
                  "self-contained report.html.")
def _eval(task, run_dir: Path):
    def body(shared: Evaluation, options):
        out, summary = task.evaluate(run_dir, shared.data, shared.out, options, overwrite=shared.overwrite,
                                     batch_size=shared.batch_size, progress=True)
        from sft.training.trackers import log_evaluation  # deferred: `sft --help` stays instant
        log_evaluation(run_dir, out, summary)  # to the MLflow / W&B runs the training logged to, if any
        _print_metrics(out, summary)
        console.print(f"metrics.json and report.html are in {escape(str(out))}")
    return [Evaluation, task.options.get("eval", NoOptions)], body


@on_a_run("predict", "Predict with a trained run: one row per result, printed as a table, JSON or CSV.")
def _predict(task, run_dir: Path):
    def body(given, output: Output, options):
        rows = task.predict(run_dir, given.items(), options, stream=sys.stdout if output.format == "table" else None)
        if rows is not None:  # None: printed as they were computed
            _print_rows(rows, output.format)
    return [INPUTS[task.inputs], Output, task.options.get("predict", NoOptions)], body


@on_a_run("export", "Export a trained run (ONNX with dynamic axes, or a Hugging Face folder), checked against the "
                    "PyTorch model on the run's own validation/test samples (parity.json).")
def _export(task, run_dir: Path):
    def body(shared: Exporting, options):
        folder, parity = task.export(run_dir, shared.out, options, force=shared.force,
                                           overwrite=shared.overwrite)
        _print_metrics(folder, parity.get("figures") or {  # a task's own parity figures, or the probabilities'
            "passed": parity["passed"], "max |Δprobability|": f"{parity['max_abs_diff']:.2e}",
            "top-1 agreement": parity["top1_agreement"], "samples": parity["samples"]})
        if not parity.get("passed", True):
            errors.print("[yellow]warning:[/] written with --force although the parity check failed (parity.json)",
                         highlight=False)
    return [Exporting, task.options.get("export", NoOptions)], body


@on_a_run("serve", "Serve a trained run over HTTP with dynamic batching: POST /predict, or the API the run's task "
                   "speaks (OpenAI-compatible POST /v1/chat/completions and GET /v1/models for a tuned language "
                   "model); GET /health, GET /metadata, /docs.")
def _serve(task, run_dir: Path):
    def body(s: Serving, options):
        from sft.serve.limits import Limits
        from sft.serve.server import run_server
        limits = Limits(s.max_batch, s.max_wait_ms, s.max_items, int(s.max_body_mb * 2**20))
        run_server(run_dir, options, s.host, s.port, limits,  # the URL on one line: logs keep it whole
                   announce=lambda url: console.print(f"serving {escape(str(run_dir))} on {url} (API docs: "
                                                      f"{url}/docs)", soft_wrap=True))
    return [Serving, task.options.get("serve", NoOptions)], body


@app.command()
def report(run_dir: Path = typer.Argument(..., help="a run directory"),
           eval_dir: Optional[Path] = typer.Option(None, "--eval", help="evaluation folder; default: RUN_DIR/eval")):
    """Rebuild report.html from a stored evaluation."""
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


@app.command()
def audit(recipe: Path = typer.Argument(..., help="recipe YAML (its data, backbone and weights are audited)"),
          overrides: Optional[list[str]] = typer.Argument(None, help="dotted.key=value overrides"),
          out: Optional[Path] = typer.Option(None, help="output folder; default: <run_dir>-audit"),
          also: Optional[list[str]] = typer.Option(None, "--also", help="another backbone (backbone or "
                                                   "backbone@weights) whose probe joins the label-issue vote; "
                                                   "repeatable"),
          overwrite: bool = typer.Option(False, help="replace an existing audit")):
    """Audit the recipe's labels, as its task does: label issues, duplicates, train/test leakage, outliers and class
    imbalance, or the masks the recipe's finished run disagrees with."""
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
def sweep(recipe: Path = typer.Argument(..., help="recipe YAML (what the trials share)"),
          overrides: Optional[list[str]] = typer.Argument(None, help="dotted.key=value overrides"),
          space: Path = typer.Option(..., help="search space YAML: recipe keys and their ranges or choices"),
          trials: int = typer.Option(20, min=1, help="trials in all (workers and machines together)"),
          workers: int = typer.Option(1, min=1, help="processes on this machine, each running trials"),
          storage: Optional[str] = typer.Option(None, help="Optuna storage URL shared by machines (e.g. "
                                                           "postgresql://...); default: a journal file in the folder"),
          out: Optional[Path] = typer.Option(None, help="sweep folder; default: <run_dir>-sweep"),
          resume: bool = typer.Option(False, help="continue the sweep in the folder (interrupted trials run again) "
                                                  "or join it from another process"),
          overwrite: bool = typer.Option(False, help="replace an existing sweep")):
    """Search the recipe's settings with Optuna (TPE, median pruning): each trial a run, chosen on validation; the
    best trial's recipe (best.yaml) scored once on the test split; trials.csv and sweep.html in the folder."""
    try:
        from sft.sweep.study import run_sweep
        summary = run_sweep(recipe, overrides or [], space, trials=trials, workers=workers, storage=storage, out=out,
                            resume=resume, overwrite=overwrite, say=lambda line: console.print(escape(line)))
    except UserError as e:
        _fail(e)
    shown = {"best trial": summary["best_trial"], summary["monitor"]: summary["best_value"],
             **summary["best_params"], "trials": {k: n for k, n in summary["trials"].items() if n}}
    _print_metrics(summary["folder"], shown)
    console.print(escape(f"best.yaml, trials.csv and sweep.html are in {summary['folder']}"))


class RecipeArguments(BaseModel):
    recipe: Path = Field(description="recipe YAML", json_schema_extra=ARGUMENT)
    overrides: list[str] = Field([], description="dotted.key=value overrides", json_schema_extra=ARGUMENT)


def _tool_command(name: str, tool) -> None:
    """Register a tool some tasks have (sft.tasks.tools): RECIPE, its overrides and the tool's options."""
    def body(given: RecipeArguments, options):
        load(tool.run)(load_recipe(given.recipe, given.overrides), options, console, errors)
    app.command(name, help=tool.help)(command_function([RecipeArguments, tool.options], _reported(body)))


for _name, _tool in tools().items():
    _tool_command(_name, _tool)


@app.command()
def recipe(task: str = typer.Option(DEFAULT_TASK, help=f"the task whose recipe to print: {', '.join(task_names())}")):
    """Print a task's default recipe, every key documented (its own keys included)."""
    try:
        chosen = get_task(task)
    except UserError as e:
        _fail(e)
    sys.stdout.write(f"# {chosen.name}: {chosen.description}\n# tasks: {', '.join(task_names())}\n")
    sys.stdout.write(documented_defaults(chosen.recipe, chosen.name))


def _data_paths(recipe) -> tuple:
    """The recipe's data: replacing a run directory must never remove it."""
    return tuple(s.path for s in (recipe.data.train, recipe.data.val, recipe.data.test) if s is not None)


def _text_lines(path: Path) -> list[str]:
    from sft.core.textfile import need_file, read_utf8
    return [line for line in read_utf8(need_file(path, "a text file with one text per line")).splitlines()
            if line.strip()]


def _print_rows(rows: list[dict], format: str) -> None:
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

"""The Task protocol: everything that differs between what is being learned (classification, segmentation, ...).

The training path (sft.training) asks a task for its parts through `TrainingTask`: splits, backbone, inputs, the
LightningModule with its loss and metrics, the monitored value, the loader options, whether head-only epochs may
train on cached features, the choice of `strategy: auto`, the model files of a finished run and its final metrics. A
`Task` adds its recipe class (`task:` picks it) and the commands that act on a finished run: evaluation with its
report, and prediction. `TaskBase` gives the defaults a new task can keep, and the after-training skeleton: `sft eval`
and `sft predict` as fixed steps (read the run's model.json, read the data, check the output folder, load the model,
score or predict, write), a task giving only the steps that differ (`run_info`, `eval_samples`, `load_run`,
`score_run`, `predict_rows`); `score_batches` runs a model over a split for a task's `Scorer`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Literal, Protocol, TextIO

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from pydantic import BaseModel
from safetensors.torch import save_file

from sft.core.atomic import atomic_write, atomic_write_dir, atomic_write_json, check_writable
from sft.core.precision import autocast_for
from sft.core.rundir import RunDir, check_replaceable, folder_kind, mark
from sft.core.torchfile import load_safetensors
from sft.data.loaders import Inputs, eval_batches
from sft.data.samples import Samples
from sft.data.splits import Splits
from sft.errors import UserError
from sft.models.backbone import Preprocess
from sft.recipe import Recipe, Source
from sft.tasks import load_recipe
from sft.training.prepare import Prepared, TrainingTask


class Task(TrainingTask, Protocol):
    recipe: type[Recipe]  # the task's recipe class: the shared sections extended with its own keys
    description: str  # one line for `sft recipe --task` and the docs
    # The commands on a finished run: "predict", "eval", "export", "serve" -> the model of the task's own options
    # (its options.py; the CLI builds each command's options and --help from it, and passes one instance). The options
    # every task has (--data, --out, --overwrite, --batch-size, --force, --format table|json|csv, serve's host, port
    # and limits) are the CLI's; those a method needs come as its other parameters.
    options: dict[str, type[BaseModel]]
    inputs: Literal["files", "texts"]  # what `sft predict` reads: FILES... arguments, or --text/--prompt and --file

    def evaluate(self, run_dir: Path, data: str | None, out: Path | None, options: BaseModel, *, overwrite: bool,
                 batch_size: int, progress: bool) -> tuple[Path, dict]:
        """`sft eval`: score a finished run; returns the evaluation folder and the summary to print."""

    def report(self, run_dir: Path, eval_dir: Path | None) -> Path:
        """`sft report`: rebuild an evaluation's page; returns its path."""

    def predict(self, run_dir: Path, inputs: list[str], options: BaseModel,
                stream: TextIO | None = None) -> list[dict] | None:
        """`sft predict`: one row (a flat dict) per result, for a table, JSON or CSV. `inputs`: file paths or texts,
        as `inputs` says. `stream` (given for a table): where a task may print each result as it is computed instead,
        returning None."""

    def export(self, run_dir: Path, out: Path | None, options: BaseModel, *, force: bool,
               overwrite: bool) -> tuple[Path, dict]:
        """`sft export`: the run's model in the format the options name (onnx, hf) in its own folder, checked against
        the PyTorch model on the run's own samples; returns the folder and the parity result. (`write_model` writes
        the run's own model files at the end of training; this ships them out.)"""

    def predictor(self, run_dir: Path, options: BaseModel) -> "Predictor":
        """`sft serve`: the run's model behind the calls the server makes (on the engine the options name)."""

    def audit(self, recipe: Recipe, out: Path, *, overwrite: bool, also: list[str]) -> dict:
        """`sft audit` of a task's own labels: writes suspects.csv and audit.html to `out`, returns the summary to
        print."""


class Predictor(Protocol):
    """What `sft serve` asks of a task's finished model: decode one request item, run a batch, shape one answer.
    Shared parts: sft.tasks.serving. A predictor with `api = "openai"` (causal LM's ChatPredictor) is served as the
    OpenAI chat completions API instead (sft.serve.openai_api), which asks other things of it."""
    inputs: str  # "image" | "text": what POST /predict takes
    # The request's parameters besides its items (classification's top_k, ...): the server validates a request's
    # JSON fields or form fields against this model (extra fields forbidden) and /docs shows it.
    params: type[BaseModel]

    def metadata(self) -> dict:
        """GET /metadata: task, classes, preprocessing, weights id, engine."""

    def prepare(self, item: bytes | str) -> object:
        """One request item (image bytes, a text) as the model's input; a UserError when it is not one."""

    def run(self, prepared: list) -> list:
        """One output per prepared item, computed as one batch."""

    def answer(self, output, params: BaseModel) -> dict:
        """The JSON answer for one item, as the request's validated `params` ask."""


class TaskBase:
    """Defaults for a task: no feature cache, plain loaders, no `strategy: auto`, and commands that say they are not
    available. A task overrides what it has."""

    name = ""
    description = ""
    recipe: type[Recipe] = Recipe
    options: dict[str, type[BaseModel]] = {}  # no options of its own for any command
    inputs = "files"

    def uses_feature_cache(self, recipe: Recipe) -> bool:
        return False

    def resolve_auto(self, recipe: Recipe, splits: Splits, device: torch.device, notes: dict) -> Recipe:
        return recipe

    def loader_options(self, recipe: Recipe, splits: Splits, inputs: Inputs, notes: dict) -> dict:
        return {}

    def choose_strategy(self, recipe: Recipe, splits: Splits, train_features: torch.Tensor, notes: dict) -> Recipe:
        raise UserError(f"strategy auto is not available for task {self.name}; choose one of linear-probe, full, "
                        f"partial, two-stage, gradual")

    def start_head(self, recipe: Recipe, model, splits: Splits, features) -> dict | None:
        return None

    def final_metrics(self, prepared: Prepared, cached: bool) -> dict:
        return {}

    # -- a finished run: the skeleton's steps ---------------------------------------------------------------------
    def evaluate(self, run_dir, data, out, options, *, overwrite, batch_size, progress):
        """`sft eval`: the data is read and the output folder checked before the model loads (bad input fails fast);
        the task scores; the evaluation folder is written whole."""
        run, recipe, source, out = evaluation_target(run_dir, data, out)
        info = self.run_info(run.path)
        samples = self.eval_samples(recipe, source, info)
        check_eval_out(out, source.path, run.path, overwrite, self.same_data(source, samples))
        model = self.load_run(run.path, info)
        result, summary, page = self.score_run(run, recipe, source, samples, model, info, options,
                                               batch_size=batch_size, progress=progress)
        write_evaluation(out, result, summary, page)
        return out, summary

    def predict(self, run_dir, inputs, options, stream=None):
        """`sft predict`: the run's model (on the engine the options name) over the inputs, with a predictions folder
        when the options give `out`."""
        if not inputs:
            raise UserError(f"this {self.name} run needs inputs: "
                            f"{'image files' if self.inputs == 'files' else '--text TEXT or --file FILE'}")
        info = self.run_info(run_dir)
        out = getattr(options, "out", None)
        folder = predictions_folder(out) if out else None  # a refused folder before the model loads
        model = self.load_run(Path(run_dir), info, getattr(options, "engine", "torch"))
        model, info = self.inference_model(Path(run_dir), model, info, options)
        return self.predict_rows(model, info, inputs, options, folder, stream)

    def inference_model(self, run_dir: Path, model, info, options) -> tuple:
        """(model, record) `sft predict` runs, from the loaded ones: as they are, unless the options change what
        the model is (the image tasks' --tta flip)."""
        return model, info

    def run_info(self, run_dir: Path):
        """The finished run's model.json, as the task's own record (classes, preprocessing, ...)."""
        raise UserError(f"task {self.name} has no `sft eval` or `sft predict` yet")

    def eval_samples(self, recipe: Recipe, source: Source, info) -> Samples:
        """The labelled data `sft eval` scores, read and checked."""
        raise UserError(f"task {self.name} has no `sft eval` yet")

    def same_data(self, source: Source, samples: Samples) -> Callable[[object], bool] | None:
        """Whether an earlier evaluation's "data" is this one (it is then replaced without --overwrite); None: the
        same path."""
        return None

    def load_run(self, run_dir: Path, info, engine: str = "torch"):
        """The finished run's model (what `score_run` and `predict_rows` take), on `engine`."""
        raise UserError(f"task {self.name} has no `sft eval` or `sft predict` yet")

    def score_run(self, run: RunDir, recipe: Recipe, source: Source, samples: Samples, model, info, options, *,
                  batch_size: int, progress: bool) -> tuple[dict, dict, str]:
        """`sft eval`'s own part: (results.json, metrics.json's summary, report.html's page)."""
        raise UserError(f"task {self.name} has no `sft eval` yet")

    def predict_rows(self, model, info, inputs: list[str], options, folder: Path | None,
                     stream: TextIO | None) -> list[dict] | None:
        """`sft predict`'s own part: one row per result; files for them in `folder` when there is one."""
        raise UserError(f"task {self.name} has no `sft predict` yet")

    def report(self, run_dir, eval_dir):
        raise UserError(f"task {self.name} has no `sft report` yet")

    def export(self, run_dir, out, options, *, force, overwrite):
        raise UserError(f"task {self.name} has no `sft export` yet")

    def predictor(self, run_dir, options):
        raise UserError(f"task {self.name} cannot be served by `sft serve` yet")

    def audit(self, recipe, out, *, overwrite, also):
        raise UserError(f"task {self.name} has no `sft audit` yet (classification, regression, multi-label and "
                        f"segmentation have one)")


def evaluation_target(run_dir: str | Path, data: str | Path | dict | None,
                      out: str | Path | None) -> tuple[RunDir, Recipe, Source, Path]:
    """What `sft eval` scores: the run, its recipe, the labelled data (default: the run's test split) and the
    output folder (default RUN_DIR/eval, or RUN_DIR/eval-<data name> for other data)."""
    run = RunDir(run_dir)
    if not run.recipe.is_file():
        raise UserError(f"{run.path}: no recipe.yaml; not a run directory")
    recipe = load_recipe(run.recipe)
    source = source_of(recipe, data if isinstance(data, dict) else Path(data).resolve()) if data else recipe.data.test
    if source is None:
        raise UserError(f"{run.path}: the run has no test split; pass --data with labelled data")
    return run, recipe, source, Path(out) if out else default_eval_dir(run.path, data)


def source_of(recipe: Recipe, source: str | Path | dict) -> Source:
    """A path (or a stored {path, format, ...}) as a split of the recipe's task, in the task's own Source class."""
    return type(recipe.data)(test=source if isinstance(source, dict) else str(source)).test


def data_identity(source: Source, samples: Samples) -> dict:
    """results.json's "data": the source as the recipe gives it, the samples' fingerprint and count."""
    return {"source": source.model_dump(), "fingerprint": samples.fingerprint(), "samples": len(samples)}


def check_eval_out(out: Path, source_path: str, run_path: Path, overwrite: bool,
                   same: Callable[[object], bool] | None = None) -> None:
    """Whether `sft eval` may write `out`: an evaluation of the same data is replaced, one of other data only with
    --overwrite; anything else goes to check_replaceable, which says what is there. `same(data)`: whether the "data"
    of the results.json there is this evaluation's (default: equal to `source_path`)."""
    if out.resolve() == run_path.resolve() or out.resolve() in run_path.resolve().parents:
        raise UserError(f"--out {out}: would replace the run directory itself; choose a folder for the evaluation")
    previous, is_same = out / "results.json", False
    if folder_kind(out) == "eval" and previous.is_file():
        try:
            data, what = json.loads(previous.read_text(encoding="utf-8"))["data"], "the evaluation of other data"
            is_same = same(data) if same else data == source_path
        except (OSError, ValueError, LookupError, TypeError):  # unreadable, or not what sft writes: not the same
            what = "an evaluation whose results.json cannot be read"
        if not is_same and not overwrite:
            raise UserError(f"{out} holds {what}; pass --overwrite to replace it or --out another folder")
    check_replaceable(out, "eval", overwrite=overwrite or is_same, keep=(source_path, run_path))
    check_writable(out.parent, f"the evaluation goes to {out}: pass --out a folder you can write to")


def write_evaluation(out: Path, results: dict, summary: dict, report: str) -> None:
    """An evaluation folder as every task writes it: results.json, metrics.json and report.html, swapped in whole
    (the old evaluation or the complete new one, never a mix) and marked as an evaluation."""
    def write(folder: str) -> None:
        for name, text in (("results.json", json.dumps(results, indent=2) + "\n"),
                           ("metrics.json", json.dumps(summary, indent=2) + "\n"), ("report.html", report + "\n")):
            (Path(folder) / name).write_text(text, encoding="utf-8")
        mark(Path(folder), "eval")
    atomic_write_dir(out, write)


class Scorer(Protocol):
    """A split's scores counted batch by batch, so nothing holds every output (a task's metrics, its worst samples)."""

    def update(self, outputs, targets, first: int) -> None:
        """One batch: the model's outputs, the targets and the index of the batch's first sample in the split."""

    def result(self) -> dict:
        """The scores of every batch so far."""


@torch.inference_mode()
def score_batches(model: torch.nn.Module, dataset, scorer: Scorer, *, batch_size: int, collate_fn=None,
                  precision: str = "32-true", progress: bool = False, what: str = "evaluating") -> dict:
    """`model` over `dataset` in order, on the model's device, each batch handed to `scorer`; its result. Training's
    final metrics and `sft eval` both score this way."""
    model.eval()
    device = next(model.parameters(), torch.empty(0)).device  # a model without parameters (onnxruntime's) runs here
    first = 0
    with autocast_for(precision, device):
        for x, y in eval_batches(dataset, batch_size, collate_fn, progress, what):
            scorer.update(model(move_data_to_device(x, device)), move_data_to_device(y, device), first)
            first += len(y)
    return scorer.result()


def predictions_folder(out: str | Path) -> Path:
    """`sft predict --out`: a folder of earlier predictions takes more files; any other non-empty folder is
    refused."""
    check_replaceable(out, "predictions", overwrite=True)
    Path(out).mkdir(parents=True, exist_ok=True)
    mark(Path(out), "predictions")
    return Path(out)


def default_eval_dir(run_dir: str | Path, data: str | Path | None) -> Path:
    """RUN_DIR/eval for the run's test split, RUN_DIR/eval-<data file or folder name> for other data."""
    if data is None:
        return Path(run_dir) / "eval"
    name = Path(str(data)).name.split(".")[0]
    return Path(run_dir) / ("eval-" + ("".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name) or "data"))


# a finished run's checkpoints rebuild its model files: resuming it trains no more epochs, it exports the best one
REBUILD = "rebuild the model files from the run's checkpoints with `sft train RUN_DIR/recipe.yaml --resume`"


def unfinished(run: Path) -> UserError:
    """The error for a run directory without its finished model: how to resume it, with the run's own recipe."""
    return UserError(f"{run}: no finished model (model.safetensors, model.json); the run did not complete — resume it "
                     f"with `sft train {run / 'recipe.yaml'} --resume`")


def write_model_files(run_dir: str | Path, model: torch.nn.Module, info) -> None:
    """A finished run's model.safetensors (the model's backbone.* and head.* on the CPU) and model.json (`info`, a
    dataclass), each atomic; the weights first, so a model.json never stands beside missing weights."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()
             if k.startswith(("backbone.", "head."))}
    atomic_write(Path(run_dir) / "model.safetensors", lambda tmp: save_file(state, tmp))
    atomic_write_json(Path(run_dir) / "model.json", asdict(info))


def with_preprocess(raw: dict, kind: type = Preprocess) -> dict:
    """model.json's preprocess as `kind` (JSON lists back to tuples): the `convert` of an image task's read_info."""
    raw["preprocess"] = kind(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw["preprocess"].items()})
    return raw


def read_run_info(run_dir: str | Path, info_type: type, convert=with_preprocess):
    """A finished run's model.json as `info_type` (a `run_info`), its model.safetensors checked to be there but not
    read, or a UserError naming the missing or damaged file."""
    run = Path(run_dir)
    if not run.is_dir():
        raise UserError(f"{run}: no such run directory")
    if not ((run / "model.safetensors").is_file() and (run / "model.json").is_file()):
        raise unfinished(run)
    return read_info(run / "model.json", info_type, convert)


def load_model_files(run_dir: str | Path, backbone: torch.nn.Module,
                     head: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    """A finished run's model.safetensors (as write_model_files wrote it: backbone.*, head.*) loaded into the
    backbone and head its model.json describes, or a UserError saying the files disagree; the two, loaded."""
    parts = torch.nn.ModuleDict({"backbone": backbone, "head": head})
    load_parts(parts, load_safetensors(Path(run_dir) / "model.safetensors", REBUILD), run_dir)
    return parts["backbone"], parts["head"]


def read_info(info_file: Path, info_type: type, convert=lambda raw: raw):
    """A run's model.json as `info_type` (a dataclass; `convert` rebuilds nested values), or a UserError naming it
    (an info with classes needs a non-empty list of them)."""
    try:
        raw = convert(json.loads(info_file.read_text(encoding="utf-8")))
        info = info_type(**{k: v for k, v in raw.items() if k in info_type.__dataclass_fields__})
    except (ValueError, TypeError, KeyError, AttributeError) as e:  # not JSON, or not the keys sft writes
        raise UserError(f"{info_file}: damaged ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                        f"{REBUILD}") from None
    classes = getattr(info, "classes", [None])
    if not isinstance(classes, list) or not classes:
        raise UserError(f"{info_file}: damaged (no class list); {REBUILD}")
    return info


def load_parts(parts: torch.nn.Module, state: dict[str, torch.Tensor], run_dir: str | Path) -> None:
    """Load a run's weights into the model its model.json describes, or a UserError saying the files disagree."""
    try:
        parts.load_state_dict(state)
    except RuntimeError as e:  # "Error(s) in loading state_dict ...", then what is missing or unexpected
        detail = (str(e).splitlines()[1:] or [str(e)])[0].strip()[:300]
        raise UserError(f"{Path(run_dir) / 'model.safetensors'} does not fit {Path(run_dir) / 'model.json'} "
                        f"({detail}); {REBUILD}") from None

"""A recipe: one typed, validated object that describes a whole run (YAML file + `dotted.key=value` overrides).

This module holds the sections every task shares and the machinery (reading, overrides, error messages); each task
extends the sections with its own keys in its recipe class, and `task:` picks that class (see `sft.tasks`). Every
field carries its documentation, so `sft recipe` can print the defaults with their meaning, and a mistake in
the file is reported with its line, its key and a did-you-mean instead of a traceback.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Generic, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sft.errors import UserError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)  # NaN passes every check


class Source(Section):
    """Where one split's samples come from; a task narrows `format` to the forms it reads."""

    path: str = Field(description="the split's file or folder (the task's page lists the forms it reads)")
    format: str = Field("auto", description="how to read `path`; auto: from its name and contents")


SourceT = TypeVar("SourceT", bound=Source)


class Data(Section, Generic[SourceT]):
    train: SourceT | None = Field(None, description="training data (required); a path or {path, format}")
    val: SourceT | None = Field(None, description="validation data; default: a seeded share of train")
    test: SourceT | None = Field(None, description="test data, evaluated once with the best checkpoint")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="share of train held out when `val` is not given")
    train_limit: int | None = Field(None, gt=0, description="use a subset of this many training samples (val is "
                                                            "held out of it)")
    val_limit: int | None = Field(None, gt=0, description="use a subset of this many validation samples")
    test_limit: int | None = Field(None, gt=0, description="use a subset of this many test samples")
    batch_size: int = Field(64, gt=0, description="samples per step and process")
    num_workers: Annotated[int, Field(ge=0)] | Literal["auto"] = Field(
        "auto", description="data-loading processes (0: in the training process); auto: from the device and the "
                            "inputs")

    @field_validator("train", "val", "test", mode="before")
    @classmethod
    def _path_shorthand(cls, value: Any) -> Any:
        return {"path": str(value)} if isinstance(value, (str, Path)) else value


class Model(Section):
    backbone: str = Field(description="the pretrained model to start from")
    weights: str | None = Field(description="its weights")


class Strategy(Section):
    """Which backbone groups train when; a task narrows `name` to the strategies it supports, and adds the settings
    of those that have some (HeadFirst, Lora, FeatureCache)."""

    name: str = Field(description="which backbone groups (the model's own stages/layers) train when")
    trainable_groups: int = Field(2, ge=1, description="partial: how many of the last groups train")
    unfreeze_every: int = Field(1, ge=1, description="gradual: epochs between unfreezing one more group")
    lr_decay: float | Literal["auto"] = Field(
        "auto", description="group k below the head trains at lr * lr_decay**k; auto: 1, or the first group at "
                            "lr/10 for two-stage")

    @field_validator("lr_decay")
    @classmethod
    def _positive(cls, value: Any) -> Any:
        if value != "auto" and not 0 < value <= 1:
            raise ValueError("must be in (0, 1] or 'auto'")
        return value


class HeadFirst(Section):
    """Tasks with a new head: two-stage trains it alone first."""

    head_epochs: int = Field(1, ge=1, description="two-stage: epochs of head-only training")


class Lora(Section):
    """Tasks whose backbones take low-rank adapters (peft)."""

    lora_rank: int = Field(8, ge=1, description="lora: rank of the adapters")
    lora_alpha: float = Field(16.0, gt=0, description="lora: scaling (alpha / rank)")
    lora_dropout: float = Field(0.1, ge=0, lt=1, description="lora: dropout on the adapters' input")
    lora_targets: list[str] | Literal["auto"] = Field(
        "auto", description="lora: module names to adapt; auto: peft's default for the architecture")


class FeatureCache(Section):
    """Tasks whose head-only epochs train on the frozen backbone's cached features."""

    cache: Literal["disk", "memory", "none"] = Field(
        "disk", description="cache frozen-backbone features for head-only epochs (disk: reused across runs)")
    head_init: Literal["auto", "probe", "random"] = Field(
        "auto", description="probe: head-only epochs start from a converged linear probe; random; auto: probe for "
                            "linear-probe runs and transformers")


class Optim(Section):
    name: Literal["sgd", "adam", "adamw"] = Field("adamw", description="optimizer")
    lr: float | Literal["auto", "find"] = Field(
        "auto", description="learning rate of the head (groups: strategy.lr_decay); auto: by strategy and model; "
                            "find: LR range test")
    weight_decay: float = Field(0.01, ge=0, description="not applied to norm layers and biases")
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd momentum")
    nesterov: bool = Field(True, description="sgd Nesterov momentum")
    scheduler: Literal["cosine", "onecycle", "step", "constant"] = Field("cosine", description="LR schedule per step")
    warmup: float = Field(0.05, ge=0, lt=1, description="cosine: share of all steps with linear warm-up")
    step_epochs: int = Field(3, ge=1, description="step: epochs between LR drops")
    step_gamma: float = Field(0.1, gt=0, le=1, description="step: LR factor at each drop")
    grad_clip: float | None = Field(None, gt=0, description="clip the gradient norm to this value")
    accumulate: int = Field(1, ge=1, description="accumulate gradients over this many steps")

    @field_validator("lr")
    @classmethod
    def _positive_lr(cls, value: Any) -> Any:
        if value not in ("auto", "find") and value <= 0:
            raise ValueError("must be > 0, 'auto' or 'find'")
        return value


class Trainer(Section):
    epochs: int = Field(5, ge=1, description="training epochs")
    precision: str = Field("auto", description="auto: bf16-mixed where the CPU/GPU supports it, else 32; or any "
                                               "Lightning precision (32, bf16-mixed, 16-mixed)")
    accelerator: str = Field("auto", description="Lightning accelerator: auto, cpu, gpu")
    devices: int | str = Field(1, description="processes/devices, e.g. 2 with strategy=ddp")
    num_nodes: int = Field(1, ge=1, description="machines, each running `devices` processes (torchrun, SLURM)")
    strategy: str = Field("auto", description="Lightning strategy: auto, ddp, fsdp")
    deterministic: bool = Field(False, description="deterministic algorithms (slower); runs are always seeded")
    ema: float | None = Field(None, gt=0, lt=1, description="decay of a moving average of the weights, which "
                                                            "validation scores and the model keeps (e.g. 0.999)")
    early_stopping: int | None = Field(None, ge=1, description="stop after this many epochs without gain in the monitored value")
    progress: bool = Field(True, description="rich progress bars")
    log_every_n_steps: int = Field(10, ge=1, description="how often train metrics are logged")
    checkpoint_minutes: float = Field(5.0, gt=0, description="also write checkpoints/last.ckpt inside an epoch this "
                                                             "often, so an interrupted run loses at most this much")
    checkpoint_steps: int | None = Field(None, ge=1, description="instead: inside an epoch every this many steps")
    loggers: list[Literal["csv", "tensorboard", "mlflow", "wandb"]] = Field(
        ["csv", "tensorboard"], min_length=1, description="where metrics go: csv and tensorboard in RUN/logs; the "
                                                          "trackers mlflow, wandb (docs/tracking.md)")
    experiment: str | None = Field(None, description="mlflow experiment / wandb project; default: the run folder's "
                                                     "name")
    mlflow_uri: str | None = Field(None, description="MLflow tracking URI (a server, a folder); default: "
                                                     "$MLFLOW_TRACKING_URI, else RUN/mlruns")


class Recipe(Section):
    """The sections every task shares; a task's recipe class narrows them and adds its own keys (`task:` picks it)."""

    task: str = Field("image-classification", description="what is being learned (`sft recipe --task NAME`)")
    data: Data
    model: Model
    strategy: Strategy
    optim: Optim = Field(default_factory=Optim)
    trainer: Trainer = Field(default_factory=Trainer)
    seed: int = Field(0, description="seeds Python, NumPy, torch and the data order")
    run_dir: str | None = Field(None, description="where the run is written; default runs/<recipe file name>")
    cache_dir: str = Field("~/.cache/sft", description="sft's caches: features, converted models")


# -- the sections the image tasks share (classification, segmentation, detection) ---------------------------------

class ImageData(Data[SourceT], Generic[SourceT]):
    """An image task's input size and augmentation (VisionData adds the class names)."""
    image_size: int | None = Field(None, gt=0, description="input size in pixels; default: the backbone's own")
    augment: Literal["none", "light", "strong"] = Field(
        "light", description="none: resize only; light: random resized crop + flip; strong: + colour and more")


class VisionData(ImageData[SourceT], Generic[SourceT]):
    classes: list[str] | None = Field(None, description="class names in label order")


class DenseInput(Section):
    """The dense tasks' input size and augmentation, `auto` from the data and the machine (tasks.dense_auto)."""
    image_size: Annotated[int, Field(gt=0)] | Literal["auto"] = Field(
        "auto", description="square input side in pixels; auto: the images' median side, at most 512 on a CPU")
    augment: Literal["auto", "none", "light", "strong"] = Field(
        "auto", description="none: resize only; light: random resized crop + flip; strong: + colour; auto: none on "
                            "a CPU")
    batch_size: int = Field(16, gt=0, description="images per step and process")


class TextColumns(Section):
    """A text task's columns and lengths."""
    text_column: str = Field("text", description="the column (CSV/TSV header or JSONL key) of the text")
    text_pair_column: str | None = Field(None, description="a second text column, for sentence pairs")
    max_length: int = Field(128, gt=0, description="tokens per text; longer ones are truncated and counted")


class TextModel(Model):
    """A pooled Hugging Face encoder as the backbone."""
    backbone: str = Field("minilm", description="minilm (the shipped all-MiniLM-L6-v2), a Hugging Face encoder "
                                                "folder, or a hub name (online)")
    weights: Literal["pretrained", "none"] = Field("pretrained", description="pretrained, or none (random init)")
    pooling: Literal["mean", "cls"] = Field("mean", description="how token states become one vector")


class VisionModel(Model):
    backbone: str = Field("torchvision/mobilenet_v2", description="timm/<name> or torchvision/<name>")
    weights: str | None = Field(
        "imagenet", description="imagenet (shipped packages), a .pth/.safetensors file, hub (online), or none")


class PooledHead(Section):
    """The new head on a backbone's pooled vector (a class, a label set or numbers per sample)."""
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout before the new head")


class VisionHeadModel(PooledHead, VisionModel):
    """An image backbone with a new pooled head."""


class TextHeadModel(PooledHead, TextModel):
    """A text encoder with a new pooled head."""


class VisionTrainer(Trainer):
    channels_last: bool | Literal["auto"] = Field("auto", description="auto: on for convnets (faster in oneDNN/cuDNN)")


class HeadStrategy(HeadFirst, Strategy):
    name: Literal["linear-probe", "full", "partial", "two-stage", "gradual"] = Field(
        "two-stage", description="which backbone groups (the model's own stages/layers) train when; the head always "
                                 "trains")


class VisionRecipe(Recipe):
    """An image task's recipe with nothing of its own: the vision sections and the strategies of a new head."""

    data: VisionData[Source] = Field(default_factory=VisionData[Source])
    model: VisionModel = Field(default_factory=VisionModel)
    strategy: HeadStrategy = Field(default_factory=HeadStrategy)
    trainer: VisionTrainer = Field(default_factory=VisionTrainer)


def read_raw(path: str | Path | None = None, overrides: list[str] = ()) -> tuple[dict, str]:
    """The YAML mapping of a recipe file (or {}) with `dotted.key=value` overrides applied, and the file's text."""
    raw: dict = {}
    text = ""
    if path is not None:
        path = Path(path)
        if path.is_dir():
            inside = f" (it holds {path / 'recipe.yaml'}: give that)" if (path / "recipe.yaml").is_file() else ""
            raise UserError(f"{path}: is a folder; expected a recipe YAML file{inside}")
        if not path.is_file():
            raise UserError(f"{path}: recipe file not found")
        text = path.read_text()
        try:
            raw = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise UserError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(raw, dict):
            raise UserError(f"{path}: a recipe is a mapping of sections (data, model, strategy, ...)")
    for item in overrides:
        _apply_override(raw, item)
    return raw, text


def validate(raw: dict, schema: type[Recipe], path: str | Path | None = None, text: str = "") -> Recipe:
    """The raw mapping validated against a task's recipe class; errors name the key, its line and a did-you-mean."""
    path = Path(path) if path is not None else None
    try:
        recipe = schema.model_validate(raw)
    except ValidationError as e:
        raise UserError(_explain(e, path, text, schema)) from None
    if recipe.run_dir is None:
        recipe.run_dir = str(Path("runs") / (path.stem if path else "default"))
    if recipe.data.train is None:
        train = type(recipe.data).model_fields["train"].description
        raise UserError(f"{path or 'recipe'}: data.train is required ({train})")
    return recipe


def unknown_value(path: str | Path | None, text: str, key: list[str], value: object, known: list[str]) -> UserError:
    """The error for a value outside a known list (e.g. `task:`), with its line and a did-you-mean."""
    close = difflib.get_close_matches(str(value), known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return UserError(f"{path or 'recipe'}: 1 problem(s)\n  {'.'.join(key)}{_line_of(text, key)}: unknown value "
                     f"{value!r}{hint}; known: {', '.join(known)}")


def _apply_override(raw: dict, item: str) -> None:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise UserError(f"override {item!r}: expected dotted.key=value, e.g. optim.lr=0.01")
    *parents, leaf = key.split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError(f"override {item!r}: {part} is not a section")
    try:
        node[leaf] = yaml.safe_load(value) if value else None
    except yaml.YAMLError:
        node[leaf] = value


def _explain(error: ValidationError, path: Path | None, text: str, schema: type[BaseModel]) -> str:
    lines = [f"{path or 'recipe'}: {error.error_count()} problem(s)"]
    for err in error.errors():
        loc = [str(part) for part in err["loc"] if not str(part).startswith(("function-", "literal["))]
        key = ".".join(loc)
        where = _line_of(text, loc)
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown key" + _did_you_mean(loc, schema)
        elif err["type"] == "literal_error":
            message = f"expected {err['ctx']['expected']}, got {err['input']!r}"
        elif "input" in err and not isinstance(err["input"], dict):
            message += f" (got {err['input']!r})"
        lines.append(f"  {key}{where}: {message}")
    return "\n".join(lines)


def _did_you_mean(loc: list[str], schema: type[BaseModel]) -> str:
    model: type[BaseModel] = schema
    for part in loc[:-1]:
        field = model.model_fields.get(part)
        annotation = getattr(field, "annotation", None)
        model = next((a for a in getattr(annotation, "__args__", (annotation,))
                      if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if model is None:
            return ""
    close = difflib.get_close_matches(loc[-1], list(model.model_fields), n=1)
    known = ", ".join(model.model_fields)
    return f" (did you mean {close[0]!r}?)" if close else f" (known keys: {known})"


def _line_of(text: str, loc: list[str]) -> str:
    """The YAML line of a key, so the message points into the file."""
    if not text:
        return ""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return ""
    line = None
    for part in loc:
        if not isinstance(node, yaml.MappingNode):
            break
        match = next(((k, v) for k, v in node.value if k.value == part), None)
        if match is None:
            break
        key_node, node = match
        line = key_node.start_mark.line + 1
    return f" (line {line})" if line else ""


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)


def documented_defaults(schema: type[Recipe], task: str) -> str:
    """A task's default recipe as YAML, each key with its meaning as a comment (what `sft recipe` prints)."""
    out: list[str] = []

    def walk(model: type[BaseModel], indent: str) -> None:
        for name, field in model.model_fields.items():
            annotation = field.annotation
            nested = next((a for a in getattr(annotation, "__args__", (annotation,))
                           if isinstance(a, type) and issubclass(a, BaseModel)), None)
            if nested is not None and not issubclass(nested, Source):  # a task's own Source is a leaf too
                out.append(f"{indent}{name}:")
                walk(nested, indent + "  ")
                continue
            default = field.get_default(call_default_factory=True)
            value = yaml.safe_dump(default, default_flow_style=True).strip().removesuffix("...").strip()
            out.append(f"{indent}{name}: {value}".ljust(36) + f"  # {field.description}")

    walk(schema, "")
    out[0] = f"task: {task}".ljust(36) + f"  # {schema.model_fields['task'].description}"
    return "\n".join(out) + "\n"

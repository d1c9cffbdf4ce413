"""A recipe: one typed, validated object that describes a whole run (YAML file + `dotted.key=value` overrides).

Every field carries its documentation, so `sft recipe` can print the defaults with their meaning, and a mistake in
the file is reported with its line, its key and a did-you-mean instead of a traceback.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from sft.errors import UserError


SAMPLED_BALANCE = ("oversample", "undersample")  # data.balance modes that draw the batches with their own sampler


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Source(_Section):
    """Where one split's labelled samples come from."""

    path: str = Field(description="images: a folder (one subfolder per class), CSV manifest (path,label), IDX or "
                                   ".npz/.npy; texts: CSV, TSV or JSONL")
    labels: str | None = Field(None, description="labels file for IDX or .npy images (IDX: derived from the name)")
    format: Literal["auto", "folder", "csv", "tsv", "jsonl", "idx", "numpy"] = Field(
        "auto", description="how to read `path`")


class Data(_Section):
    train: Source | None = Field(None, description="training data (required); a path or {path, labels, format}")
    val: Source | None = Field(None, description="validation data; default: a seeded stratified split of train")
    test: Source | None = Field(None, description="test data, evaluated once with the best checkpoint")
    classes: list[str] | None = Field(None, description="class names in label order (IDX/numpy labels are indices)")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="share of each class held out when `val` is not given")
    train_limit: int | None = Field(None, gt=0, description="use a stratified subset of this many training samples (val is split from it)")
    val_limit: int | None = Field(None, gt=0, description="stratified subset size of the validation split")
    test_limit: int | None = Field(None, gt=0, description="stratified subset size of the test split")
    image_size: int | None = Field(None, gt=0, description="input size in pixels; default: the backbone's own")
    augment: Literal["none", "light", "strong"] = Field(
        "light", description="none: resize+crop; light: random resized crop + flip; strong: + RandAugment, erasing")
    balance: Literal["none", "class-weights", "oversample", "undersample"] = Field(
        "none", description="imbalanced classes: weight the loss, or draw class-balanced epochs (works under DDP)")
    class_weights: Literal["inverse", "effective"] | dict[str, float] = Field(
        "inverse", description="class-weights: inverse frequency, effective number of samples, or {class: weight}")
    exclude: str | None = Field(None, description="CSV with a `sample` column (e.g. sft audit's suspects.csv): "
                                                   "train and validate without those samples")
    relabel: str | None = Field(None, description="CSV with `sample` and `label` (or `suggested_label`) columns: "
                                                   "corrected labels")
    text_column: str = Field("text", description="texts: the column (CSV/TSV header or JSONL key) of the text")
    text_pair_column: str | None = Field(None, description="texts: a second text column, for sentence pairs")
    label_column: str = Field("label", description="texts: the column of the label")
    max_length: int = Field(128, gt=0, description="texts: tokens per text; longer ones are truncated and counted")
    group_by_length: bool = Field(
        False, description="texts: training batches of similar token length, so they pad less; on by default for "
                           "texts unless balance over/undersamples (it has its own sampler)")
    batch_size: int = Field(64, gt=0, description="samples per step and process")
    num_workers: int = Field(0, ge=0, description="data-loading processes (0: in the training process)")

    @field_validator("train", "val", "test", mode="before")
    @classmethod
    def _path_shorthand(cls, value: Any) -> Any:
        return {"path": str(value)} if isinstance(value, (str, Path)) else value

    @field_validator("group_by_length")
    @classmethod
    def _one_training_sampler(cls, value: bool, info: ValidationInfo) -> bool:
        balance = info.data.get("balance")
        if value and balance in SAMPLED_BALANCE:
            raise ValueError(f"data.balance={balance} draws the training batches with its own sampler; set "
                             f"data.group_by_length=false, or data.balance=class-weights to keep grouping")
        return value


class Model(_Section):
    backbone: str = Field("torchvision/mobilenet_v2", description="images: timm/<name> or torchvision/<name>; texts: "
                                                                  "minilm (shipped; the text default), a Hugging "
                                                                  "Face model folder, or a hub name (online)")
    weights: str | None = Field(
        "imagenet", description="images: imagenet (shipped packages), a .pth/.safetensors file, hub (online), or "
                                "none; texts: pretrained (the text default) or none")
    pooling: Literal["mean", "cls"] = Field("mean", description="texts: how token states become one vector")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout before the new head")


class Strategy(_Section):
    name: Literal["auto", "linear-probe", "full", "partial", "two-stage", "gradual", "lora"] = Field(
        "two-stage", description="which backbone groups train when (groups are the model's own stages/layers); "
                                 "lora: low-rank adapters (peft); auto: chosen from the data and the backbone")
    trainable_groups: int = Field(2, ge=1, description="partial: how many of the last groups train")
    head_epochs: int = Field(1, ge=1, description="two-stage: epochs of head-only training (on cached features)")
    unfreeze_every: int = Field(1, ge=1, description="gradual: epochs between unfreezing one more group")
    lr_decay: float | Literal["auto"] = Field(
        "auto", description="group k below the head trains at lr * lr_decay**k; auto: 1.0, or 0.1**(1/groups) "
                            "for two-stage (discriminative LRs, first group at lr/10)")
    lora_rank: int = Field(8, ge=1, description="lora: rank of the adapters")
    lora_alpha: float = Field(16.0, gt=0, description="lora: scaling (alpha / rank)")
    lora_dropout: float = Field(0.1, ge=0, lt=1, description="lora: dropout on the adapters' input")
    lora_targets: list[str] | Literal["auto"] = Field(
        "auto", description="lora: module names to adapt; auto: peft's default for the architecture")
    cache: Literal["disk", "memory", "none"] = Field(
        "disk", description="cache frozen-backbone features for head-only epochs (disk: reused across runs)")

    @field_validator("lr_decay")
    @classmethod
    def _positive(cls, value: Any) -> Any:
        if value != "auto" and not 0 < value <= 1:
            raise ValueError("must be in (0, 1] or 'auto'")
        return value


class Optim(_Section):
    name: Literal["sgd", "adam", "adamw"] = Field("adamw", description="optimizer")
    lr: float | Literal["find"] = Field(
        1e-3, description="learning rate of the head (backbone groups: see strategy.lr_decay); find: run the LR "
                          "range test first and use its suggestion")
    weight_decay: float = Field(0.01, ge=0, description="not applied to norm layers and biases")
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd momentum")
    nesterov: bool = Field(True, description="sgd Nesterov momentum")
    scheduler: Literal["cosine", "onecycle", "step", "constant"] = Field("cosine", description="LR schedule per step")
    warmup: float = Field(0.05, ge=0, lt=1, description="cosine: share of all steps with linear warm-up")
    step_epochs: int = Field(3, ge=1, description="step: epochs between LR drops")
    step_gamma: float = Field(0.1, gt=0, le=1, description="step: LR factor at each drop")
    loss: Literal["cross-entropy", "focal"] = Field("cross-entropy", description="focal: down-weights easy samples")
    focal_gamma: float = Field(2.0, ge=0, description="focal loss gamma (0 = cross-entropy)")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="label smoothing of the loss")
    grad_clip: float | None = Field(None, gt=0, description="clip the gradient norm to this value")
    accumulate: int = Field(1, ge=1, description="accumulate gradients over this many steps")

    @field_validator("lr")
    @classmethod
    def _positive_lr(cls, value: Any) -> Any:
        if value != "find" and value <= 0:
            raise ValueError("must be > 0 or 'find'")
        return value


class Trainer(_Section):
    epochs: int = Field(5, ge=1, description="training epochs")
    precision: str = Field("auto", description="auto: bf16-mixed where the CPU/GPU supports it, else 32; or any "
                                               "Lightning precision (32, bf16-mixed, 16-mixed)")
    channels_last: bool | Literal["auto"] = Field("auto", description="auto: on for convnets (faster in oneDNN/cuDNN)")
    accelerator: str = Field("auto", description="Lightning accelerator: auto, cpu, gpu")
    devices: int | str = Field(1, description="processes/devices, e.g. 2 with strategy=ddp")
    strategy: str = Field("auto", description="Lightning strategy: auto, ddp, fsdp")
    deterministic: bool = Field(False, description="deterministic algorithms (slower); runs are always seeded")
    early_stopping: int | None = Field(None, ge=1, description="stop after this many epochs without val_acc gain")
    progress: bool = Field(True, description="rich progress bars")
    log_every_n_steps: int = Field(10, ge=1, description="how often train metrics are logged")


class Recipe(_Section):
    task: Literal["image-classification", "text-classification"] = Field(
        "image-classification", description="what is being learned")
    data: Data = Field(default_factory=Data)
    model: Model = Field(default_factory=Model)
    strategy: Strategy = Field(default_factory=Strategy)
    optim: Optim = Field(default_factory=Optim)
    trainer: Trainer = Field(default_factory=Trainer)
    seed: int = Field(0, description="seeds Python, NumPy, torch and the data order")
    run_dir: str | None = Field(None, description="where the run is written; default runs/<recipe file name>")
    cache_dir: str = Field("~/.cache/sft", description="feature cache (keyed by backbone, weights, transform, data)")

    @model_validator(mode="after")
    def _text_defaults(self) -> "Recipe":
        """A text recipe that names no backbone gets the shipped MiniLM with its pretrained weights, and batches
        grouped by length unless data.balance draws them."""
        if self.task == "text-classification":
            if "backbone" not in self.model.model_fields_set:
                self.model.backbone = "minilm"
            if "weights" not in self.model.model_fields_set:
                self.model.weights = "pretrained"
            if "group_by_length" not in self.data.model_fields_set:
                self.data.group_by_length = self.data.balance not in SAMPLED_BALANCE
        return self


def load_recipe(path: str | Path | None = None, overrides: list[str] = ()) -> Recipe:
    """Read a YAML recipe (or the defaults), apply `dotted.key=value` overrides, validate everything."""
    raw: dict = {}
    text = ""
    if path is not None:
        path = Path(path)
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
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as e:
        raise UserError(_explain(e, path, text)) from None
    if recipe.run_dir is None:
        recipe.run_dir = str(Path("runs") / (path.stem if path else "default"))
    if recipe.data.train is None:
        raise UserError(f"{path or 'recipe'}: data.train is required (an image folder, CSV, IDX or numpy file)")
    return recipe


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


def _explain(error: ValidationError, path: Path | None, text: str) -> str:
    lines = [f"{path or 'recipe'}: {error.error_count()} problem(s)"]
    for err in error.errors():
        loc = [str(part) for part in err["loc"] if not str(part).startswith(("function-", "literal["))]
        key = ".".join(loc)
        where = _line_of(text, loc)
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown key" + _did_you_mean(loc)
        elif err["type"] == "literal_error":
            message = f"expected {err['ctx']['expected']}, got {err['input']!r}"
        elif "input" in err and not isinstance(err["input"], dict):
            message += f" (got {err['input']!r})"
        lines.append(f"  {key}{where}: {message}")
    return "\n".join(lines)


def _did_you_mean(loc: list[str]) -> str:
    model: type[BaseModel] = Recipe
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


def documented_defaults() -> str:
    """The default recipe as YAML, each key with its meaning as a comment (what `sft recipe` prints)."""
    out: list[str] = []

    def walk(model: type[BaseModel], indent: str) -> None:
        for name, field in model.model_fields.items():
            annotation = field.annotation
            nested = next((a for a in getattr(annotation, "__args__", (annotation,))
                           if isinstance(a, type) and issubclass(a, BaseModel)), None)
            if nested is not None and nested is not Source:
                out.append(f"{indent}{name}:")
                walk(nested, indent + "  ")
                continue
            default = field.get_default(call_default_factory=True)
            value = yaml.safe_dump(default, default_flow_style=True).strip().removesuffix("...").strip()
            out.append(f"{indent}{name}: {value}".ljust(36) + f"  # {field.description}")

    walk(Recipe, "")
    return "\n".join(out) + "\n"

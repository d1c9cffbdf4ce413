"""`sft export RUN --format hf` for text classification: a folder that `transformers` alone loads with
`AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)` and that gives the run's logits.

    RUN/export-hf/         (or --out)
      config.json          the encoder's config + labels, the pooling, auto_map to modeling_sft.py
      modeling_sft.py      30 lines: the encoder, the run's pooling, its linear head
      model.safetensors    encoder.* (a LoRA run's adapters merged in) and classifier.*
      tokenizer files, parity.json (the loaded folder against the run's PyTorch model)

Image runs on a timm backbone go through timm's own Hugging Face format instead (`timm.models.save_for_hf`):
config.json (architecture, classes, the run's input size, mean/std, crop) and model.safetensors, the new head as the
model's classifier, loaded by `AutoModelForImageClassification.from_pretrained(FOLDER)` (transformers' timm wrapper)
or `timm.create_model("local-dir:FOLDER", pretrained=True)`. torchvision backbones have no such format.

Why remote code for texts: sft pools the encoder's tokens itself (mean, or the first token without BERT's tanh
pooler), and no built-in `*ForSequenceClassification` class does that, so a built-in class would load but give other
logits.
"""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from sft.core.rundir import RunDir
from sft.errors import UserError
from sft.models.export import check_export_dir, default_folder, export_checked, file_id
from sft.tasks.pooled import PARITY_BATCH, model_files, parity_samples, sample_batches

MODELING = '''"""Written by `sft export --format hf`: the fine-tuned encoder, its pooling ({pooling}) and its linear
head. Load with AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)."""

import torch
from torch import nn
from transformers import AutoModel, PreTrainedModel, {config_class}
from transformers.modeling_outputs import SequenceClassifierOutput


class SftTextClassifier(PreTrainedModel):
    config_class = {config_class}
    base_model_prefix = "sft"

    def __init__(self, config):
        super().__init__(config)
        try:
            self.encoder = AutoModel.from_config(config, add_pooling_layer=False)
        except TypeError:
            self.encoder = AutoModel.from_config(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        states = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
        if self.config.sft_pooling == "cls":
            pooled = states[:, 0]
        else:
            mask = attention_mask.unsqueeze(-1).to(states.dtype)
            pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1)
        logits = self.classifier(pooled)
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)
'''


class _Logits(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: dict | torch.Tensor) -> torch.Tensor:
        return self.model(**batch).logits if isinstance(batch, dict) else self.model(batch).logits


def load_hf(folder: str | Path, kind: str = "text") -> nn.Module:
    """The exported folder through transformers alone, as its user loads it, except that a text model's class comes
    straight from the file its config.json's auto_map names: `trust_remote_code` would copy modeling_sft.py into
    the user's ~/.cache/huggingface/modules (HF_MODULES_CACHE, which transformers reads once, at import) on every
    export. The folder's own `AutoModelForSequenceClassification` load is tested in a subprocess."""
    from transformers import AutoModelForImageClassification  # deferred
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no "Loading weights" bar in the middle of `sft export`'s output
    try:
        if kind == "image":
            return AutoModelForImageClassification.from_pretrained(str(folder)).eval()
        return remote_class(Path(folder), "AutoModelForSequenceClassification").from_pretrained(str(folder)).eval()
    finally:
        hf_logging.enable_progress_bar()


def remote_class(folder: Path, auto: str) -> type:
    """The class config.json's auto_map gives `auto` ("module.Class", a file of the folder), imported from that file
    under a private name, not registered in sys.modules."""
    module_name, _, class_name = json.loads((folder / "config.json").read_text())["auto_map"][auto].rpartition(".")
    spec = importlib.util.spec_from_file_location(f"_sft_export_{module_name}", folder / f"{module_name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, class_name)


def _checked(out: Path, save, task, run: RunDir, model: nn.Module, info, parts: list, force: bool, **facts) -> dict:
    """The folder `save` writes, its model loaded back and checked against the run's on the parity samples."""
    facts = {"samples": sum(len(p) for p in parts), **facts, "weights_id": file_id(model_files(run)[0])}
    return export_checked(out, save, reference=model, batches=sample_batches(task.run_inputs(model, info), parts),
                          sizes=(1, PARITY_BATCH), temperature=info.temperature, force=force, facts=facts,
                          format="hf", task=info.task)


def export_text_hf(task, run_dir: str | Path, out: str | Path | None, *, force: bool,
              overwrite: bool) -> tuple[Path, dict]:
    """Write the run's text classifier as a transformers folder, checked against the run's PyTorch model."""
    run = RunDir(run_dir)
    out = Path(out) if out else default_folder(run.path, "hf")
    check_export_dir(out, run.path, overwrite)  # before loading the model: a refused rerun costs nothing
    model, info = task.load_trained(run.path)
    parts = parity_samples(task, run)
    encoder = model.backbone.model
    if info.lora:  # merged in a copy: the parity check compares with the unmerged run model
        encoder = copy.deepcopy(encoder).merge_and_unload()
    linear = model.head[-1]

    def save(folder: Path) -> nn.Module:
        config = copy.deepcopy(encoder.config)
        config.architectures = ["SftTextClassifier"]
        config.auto_map = {"AutoModelForSequenceClassification": "modeling_sft.SftTextClassifier"}
        config.id2label = dict(enumerate(info.classes))
        config.label2id = {c: i for i, c in enumerate(info.classes)}
        config.sft_pooling, config.sft_temperature = info.preprocess.pooling, info.temperature
        config.save_pretrained(folder)
        (folder / "modeling_sft.py").write_text(MODELING.format(pooling=info.preprocess.pooling,
                                                                config_class=type(config).__name__))
        state = {f"encoder.{k}": v.detach().cpu().contiguous().clone() for k, v in encoder.state_dict().items()}
        state |= {"classifier.weight": linear.weight.detach().clone(), "classifier.bias": linear.bias.detach().clone()}
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
        model.backbone.tokenizer.save_pretrained(folder)
        return _Logits(load_hf(folder))

    return out, _checked(out, save, task, run, model, info, parts, force, lora_merged=bool(info.lora))


def export_timm_hf(task, run_dir: str | Path, out: str | Path | None, *, force: bool,
                   overwrite: bool) -> tuple[Path, dict]:
    """An image run on a timm backbone as timm's Hugging Face folder, checked against the run's PyTorch model."""
    import timm  # deferred: only this export needs timm's hub helpers here

    run = RunDir(run_dir)
    out = Path(out) if out else default_folder(run.path, "hf")
    check_export_dir(out, run.path, overwrite)  # before loading the model: a refused rerun costs nothing
    model, info = task.load_trained(run.path)
    lib, _, arch = info.backbone.partition("/")
    if lib != "timm":
        raise UserError(f"--format hf for images is timm's Hugging Face format, which holds timm models only; "
                        f"{info.backbone} is not one: use --format onnx")
    full = timm.create_model(arch, pretrained=False, num_classes=len(info.classes)).eval()
    classifier = full.pretrained_cfg.get("classifier", "classifier")
    linear = model.head[-1]
    state = {k: v.detach().clone() for k, v in model.backbone.state_dict().items()}
    state |= {f"{classifier}.weight": linear.weight.detach().clone(),
              f"{classifier}.bias": linear.bias.detach().clone()}
    full.load_state_dict(state)
    pre = info.preprocess
    data = {"input_size": (3, *pre.input_size), "mean": tuple(pre.mean), "std": tuple(pre.std),
            "interpolation": pre.interpolation, "crop_pct": pre.crop_pct}
    parts = parity_samples(task, run)

    def save(folder: Path) -> nn.Module:
        timm.models.save_for_hf(full, str(folder), model_config={"num_classes": len(info.classes),
                                                                 "label_names": list(info.classes)},
                                safe_serialization=True, data_config=data)
        config = json.loads((folder / "config.json").read_text())
        config.get("model_args", {}).pop("num_classes", None)  # kept at the top level; transformers' TimmWrapper
        (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")  # passes it a second time else
        return _Logits(load_hf(folder, "image"))

    return out, _checked(out, save, task, run, model, info, parts, force,
                         load='AutoModelForImageClassification.from_pretrained(FOLDER) or '
                              'timm.create_model("local-dir:FOLDER", pretrained=True)')

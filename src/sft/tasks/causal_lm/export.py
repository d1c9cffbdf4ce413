"""A finished causal-LM run's model files, written at the end of training and read by eval, predict and export:

    model/        the merged model (LoRA folded in) with its tokenizer: a Hugging Face folder transformers alone loads
    adapter/      lora runs: the peft adapter alone (adapter_config.json, adapter_model.safetensors)
    model.json    the base model, sequence length, packing, the answers' label set (when answers are labels)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from torch import nn

from sft.core.atomic import atomic_write_dir, atomic_write_json
from sft.errors import UserError
from sft.models.causal_lm import load_causal_lm
from sft.tasks.base import read_info


@dataclass
class ChatInfo:
    """What a finished run needs beside its model folder (model.json)."""
    backbone: str  # as the recipe named it
    base: str | None  # the base model's folder, for generations "before" (None: not available offline)
    max_length: int
    pack: bool
    labels: list[str] | None  # the distinct training answers, when they are labels
    strategy: str
    task: str = "causal-lm"


def export_run(path: Path, lm: nn.Module, tokenizer, info: ChatInfo) -> None:
    """model/ (merged), adapter/ (lora) and model.json, each written atomically."""
    is_peft = hasattr(lm, "merge_adapter")
    if is_peft:
        atomic_write_dir(path / "adapter", lambda tmp: lm.save_pretrained(tmp))

    def write_model(tmp: str) -> None:
        if is_peft:
            _save_merged(lm, tmp)
        else:
            lm.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    atomic_write_dir(path / "model", write_model)
    atomic_write_json(path / "model.json", asdict(info))


def _save_merged(lm, folder: str) -> None:
    """Save the model with its adapters folded in, as the plain architecture: merged in place for the save, then
    unmerged (no copy of the whole model); the LoRA wrappers' names are mapped back to the plain layers'."""
    lm.merge_adapter()
    try:
        model = lm.get_base_model()
        state = {k.replace(".base_layer.", "."): v for k, v in model.state_dict().items() if ".lora_" not in k}
        model.save_pretrained(folder, state_dict=state)
    finally:
        lm.unmerge_adapter()


def read_chat_info(run_dir: str | Path) -> ChatInfo:
    """A finished run's model.json (its model/ folder checked to be there)."""
    run = Path(run_dir)
    if not ((run / "model").is_dir() and (run / "model.json").is_file()):
        raise UserError(f"{run}: no finished model (model/, model.json); the run did not complete")
    return read_info(run / "model.json", ChatInfo)


def load_tuned(run_dir: str | Path) -> tuple[nn.Module, object]:
    """A finished run's merged model (eval mode) and its tokenizer."""
    model, tokenizer, _ = load_causal_lm(str(Path(run_dir) / "model"), "pretrained", "")
    return model.eval(), tokenizer


def load_base(info: ChatInfo):
    """The model before tuning, when its folder is still there."""
    if not info.base or not Path(info.base).is_dir():
        return None
    model, tokenizer, _ = load_causal_lm(info.base, "pretrained", "")
    return model.eval(), tokenizer

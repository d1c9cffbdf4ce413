"""Instruction tuning behind the Task protocol: conversations in, a causal LM trained on its answers out (LoRA by
default; full, partial, gradual and layer-wise LR decay act on the transformer layers), held-out answer loss
monitored (val_loss, min), the merged model exported as a Hugging Face folder, and a finished run that evaluates
(loss, perplexity, generations before and after, exact match when answers are labels) and generates.

There is no head and no feature cache: the whole output of the model is what is trained. Every data file is read
and checked (each line, each key) before the model loads (training reads the data first), since loading takes up to
a minute and a bad line should not wait for it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from sft.core.rundir import RunDir
from sft.data.chat import ChatCollate, ChatDataset, final_answers, label_set, read_chats
from sft.data.loaders import Inputs
from sft.data.samples import Samples
from sft.data.splits import Splits, load_splits
from sft.errors import UserError
from sft.models.backbone import Backbone
from sft.models.causal_lm import create_causal_lm, model_folder
from sft.tasks import load_recipe
from sft.tasks.base import TaskBase
from sft.tasks.causal_lm.export import ChatInfo, export_run, load_base, load_tuned, read_chat_info
from sft.tasks.causal_lm.generation import generate, prompt_of
from sft.tasks.causal_lm.gguf import export_gguf
from sft.tasks.causal_lm.metrics import answer_distribution, held_out_loss, label_scores
from sft.tasks.causal_lm.module import ChatLM
from sft.tasks.causal_lm.serving import ChatPredictor
from sft.tasks.causal_lm.options import OPTIONS
from sft.tasks.causal_lm.recipe import CausalLMRecipe, Generation
from sft.tasks.causal_lm.report import render_report
from sft.training.prepare import Prepared
from sft.training.trainer import Monitor

log = logging.getLogger("sft")


class CausalLM(TaskBase):
    name = "causal-lm"
    description = "instruction tuning: a causal language model trained on the answers of chat conversations"
    recipe = CausalLMRecipe
    monitor = Monitor("val_loss", "min")
    options = OPTIONS
    inputs = "texts"

    # -- training ------------------------------------------------------------------------------------------------
    def load_splits(self, recipe: CausalLMRecipe) -> Splits:
        d = recipe.data
        read = lambda source, _: read_chats(source.path, format=source.format, prompt_column=d.prompt_column,  # noqa
                                            completion_column=d.completion_column)
        return load_splits(d, recipe.seed, read)

    def build_backbone(self, recipe: CausalLMRecipe) -> Backbone:
        s, m, d = recipe.strategy, recipe.model, recipe.data
        return create_causal_lm(m.backbone, m.weights, d.max_length, d.pack is not False, recipe.cache_dir,
                                lora=s if s.name == "lora" else None)

    def build_inputs(self, backbone: Backbone, recipe: CausalLMRecipe | None) -> Inputs:
        pre, tokenizer = backbone.preprocess, backbone.module.tokenizer
        encoded: dict[int, tuple] = {}  # each split is tokenized once, though RunData asks for train twice

        def dataset(samples) -> ChatDataset:
            if id(samples) not in encoded:
                encoded[id(samples)] = (samples, ChatDataset(samples, tokenizer, pre.max_length))
            return encoded[id(samples)][1]
        return Inputs(dataset, dataset, ChatCollate(tokenizer.pad_token_id, pre.pack),
                      key=f"chat {pre} {tokenizer.name_or_path} {len(tokenizer)}", decodes=False)

    def loader_options(self, recipe: CausalLMRecipe, splits: Splits, inputs: Inputs, notes: dict) -> dict:
        """Count answer tokens and truncation; stop when an example keeps no answer token."""
        limit = recipe.data.max_length
        for name, samples in (("train", splits.train), ("val", splits.val)):
            facts = inputs.train(samples).check(f"data.{name}", limit)
            notes[f"{name}_answer_tokens"], notes[f"{name}_tokens"] = facts["trainable_tokens"], facts["tokens"]
            notes[f"truncated_{name}_examples"] = facts["truncated"]
            if facts["truncated"]:
                notes.setdefault("warnings", []).append(
                    f"{facts['truncated']} of {facts['examples']} {name} conversations are longer than "
                    f"data.max_length={limit} tokens and are cut at the end")
        return {}

    def build_module(self, recipe, backbone, splits, schedule, channels_last) -> ChatLM:
        return ChatLM(backbone, schedule, recipe)

    def write_model(self, run: RunDir, p: Prepared) -> None:
        r = p.recipe
        base = model_folder(r.model.backbone, r.cache_dir) if r.model.weights == "pretrained" else None
        info = ChatInfo(r.model.backbone, base if base and Path(base).is_dir() else None, r.data.max_length,
                        p.backbone.preprocess.pack, label_set(final_answers(p.splits.train)), r.strategy.name)
        export_run(run.path, p.model.backbone.model, p.model.backbone.tokenizer, info)

    def final_metrics(self, p: Prepared, cached: bool) -> dict:
        metrics = {}
        for split in ("val", "test"):
            samples = getattr(p.splits, split)
            if samples is not None:
                s = held_out_loss(p.model.backbone.model, p.model.backbone.tokenizer, samples,
                                  p.recipe.data.max_length, p.recipe.data.batch_size)
                metrics.update({f"{split}_loss": s["loss"], f"{split}_perplexity": s["perplexity"]})
        return metrics

    # -- a finished run ------------------------------------------------------------------------------------------
    def run_info(self, run_dir: Path) -> ChatInfo:
        return read_chat_info(run_dir)

    def eval_samples(self, recipe: CausalLMRecipe, source, info: ChatInfo) -> Samples:
        d = recipe.data
        return read_chats(source.path, format=source.format, prompt_column=d.prompt_column,
                          completion_column=d.completion_column)

    def load_run(self, run_dir: Path, info: ChatInfo, engine: str = "torch"):
        if engine != "torch":
            raise UserError(f"--engine {engine}: causal-lm runs generate with PyTorch")
        return load_tuned(run_dir)

    def score_run(self, run, recipe, source, samples, model, info, options, *, batch_size, progress):
        """Answer loss and perplexity, and generations before and after tuning: when the answers are labels every one
        is generated, scored and stored, with how often each label is answered against how often it is right (a
        collapse onto one answer shows at a glance); otherwise the shown ones."""
        (model, tokenizer), gen = model, recipe.generation
        batch_size = min(batch_size, 16)
        summary = {"samples": len(samples), **held_out_loss(model, tokenizer, samples, info.max_length, batch_size,
                                                           progress)}
        truth = final_answers(samples)
        prompts = [prompt_of(chat) for chat in samples.items]
        top_n = options.top_losses
        scored = len(samples) if info.labels else min(len(samples), top_n or gen.samples)
        budget = gen.max_new_tokens
        if info.labels:
            budget = min(budget, max(len(tokenizer(x, add_special_tokens=False)["input_ids"]) for x in info.labels) + 4)
        settings = dict(max_new_tokens=budget, temperature=gen.temperature, top_p=gen.top_p, seed=recipe.seed,
                        batch_size=batch_size)
        after = generate(model, tokenizer, prompts[:scored], **settings)
        base = load_base(info)
        before = generate(*base, prompts[:scored], **settings) if base else None
        if info.labels:
            summary.update(label_scores(after, truth, info.labels))
            if before is not None:
                summary.update({f"{k}_before": v for k, v in label_scores(before, truth, info.labels).items()})
        rows = [{"id": samples.ids[i], "prompt": prompts[i][-1]["content"], "reference": truth[i],
                 "before": before[i] if before else None, "after": after[i]} for i in range(scored)]
        spread = answer_distribution(truth[:scored], after, before, info.labels) if info.labels else None
        result = {"data": source.path, **summary, "labels": info.labels, "answers": spread, "generations": rows}
        shown = rows[:min(scored, top_n or gen.samples)]
        return result, summary, render_report(run.path, source.path, summary, shown, spread)

    def predict(self, run_dir, inputs, options, stream=None):
        """One answer per prompt, generated with the chat template; with `stream`, printed there as it is generated."""
        if not inputs:
            raise UserError("this run generates text: pass --prompt \"...\" (repeat for more) or --file PROMPTS.txt")
        model, tokenizer = self.load_run(Path(run_dir), self.run_info(run_dir))
        gen, o = _recipe_generation(run_dir), options
        settings = dict(max_new_tokens=o.max_new_tokens or gen.max_new_tokens,
                        temperature=gen.temperature if o.temperature is None else o.temperature,
                        top_p=gen.top_p if o.top_p is None else o.top_p, seed=o.seed)
        prompts = [[{"role": "user", "content": text}] for text in inputs]
        if stream is None:
            answers = generate(model, tokenizer, prompts, **settings)
            return [{"prompt": t, "answer": a} for t, a in zip(inputs, answers)]
        for text, prompt in zip(inputs, prompts):
            stream.write(f">>> {text}\n")
            generate(model, tokenizer, [prompt], **settings, stream=stream)
        return None

    def export(self, run_dir, out, options, *, force: bool, overwrite: bool) -> tuple:
        """`sft export --format gguf`: the merged model as GGUF with its chat template and stop tokens, checked by
        reading it back (tasks.causal_lm.gguf)."""
        return export_gguf(self, run_dir, out, options.quant, force=force, overwrite=overwrite)

    def predictor(self, run_dir, options):
        """`sft serve`: the OpenAI-compatible chat API; settings a request leaves out are the run's own."""
        return ChatPredictor(run_dir, _recipe_generation(run_dir), options.batching)


def _recipe_generation(run_dir) -> Generation:
    """The run's own generation settings (its recipe.yaml), the defaults without one."""
    path = Path(run_dir) / "recipe.yaml"
    return load_recipe(path).generation if path.is_file() else Generation()

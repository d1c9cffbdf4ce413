"""The causal-LM recipe: the shared sections plus chat data columns, sequence length, packing, generation settings,
and defaults that suit instruction tuning (the shipped SmolLM2, LoRA, a LoRA learning rate, a few epochs)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from sft.recipe import Data, Lora, Model, Optim, Recipe, Section, Source, Strategy, Trainer


class ChatSource(Source):
    path: str = Field(description="a JSONL file of conversations (messages, or prompt and completion) or a CSV/TSV "
                                  "file")
    format: Literal["auto", "jsonl", "csv", "tsv"] = Field("auto", description="how to read `path`")


class ChatData(Data[ChatSource]):
    max_length: int = Field(1024, gt=1, description="tokens per conversation; longer ones are cut at the end and "
                                                    "counted (examples left with no answer token are an error)")
    pack: bool | Literal["auto"] = Field(
        "auto", description="a batch's conversations back to back in one row, each attending to itself: no padding; "
                            "auto: on")
    prompt_column: str = Field("prompt", description="JSONL key or CSV column of the prompt (no `messages`)")
    completion_column: str = Field("completion", description="JSONL key or CSV column of the answer")
    batch_size: int = Field(8, gt=0, description="conversations per step and process")


class ChatModel(Model):
    backbone: str = Field("smollm2", description="smollm2 (shipped SmolLM2-135M-Instruct), gemma3-270m, a .gguf file, "
                                                 "a Hugging Face folder or hub name")
    weights: Literal["pretrained", "none"] | None = Field("pretrained",
                                                          description="pretrained, or none (random init, for tests)")


class ChatLora(Lora):
    lora_rank: int = Field(16, ge=1, description="lora: rank of the adapters")
    lora_alpha: float = Field(32.0, gt=0, description="lora: scaling (alpha / rank)")
    lora_targets: list[str] | Literal["auto"] = Field(
        "auto", description="lora: module names to adapt; auto: every linear projection of the transformer blocks")


class ChatStrategy(ChatLora, Strategy):
    name: Literal["lora", "full", "partial", "gradual"] = Field(
        "lora", description="lora: low-rank adapters (peft); full; partial/gradual: the last transformer layers")


class ChatOptim(Optim):
    lr: float | Literal["auto", "find"] = Field(
        "auto", description="learning rate; auto: 5e-4 for LoRA, 5e-5 for a full or partial fine-tune; find: LR range test")
    weight_decay: float = Field(0.0, ge=0, description="not applied to norm layers and biases")
    warmup: float = Field(0.03, ge=0, lt=1, description="cosine: share of all steps with linear warm-up")


class Generation(Section):
    max_new_tokens: int = Field(64, gt=0, description="eval/predict: tokens generated per answer at most")
    temperature: float = Field(0.0, ge=0, description="0: greedy; otherwise sampling at this temperature")
    top_p: float = Field(1.0, gt=0, le=1, description="sampling: nucleus share")
    samples: int = Field(16, ge=0, description="eval: conversations shown with their answers before and after")


class ChatTrainer(Trainer):
    epochs: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        "auto", description="training epochs; auto: 3, or more to make at least 32 optimizer steps")


class CausalLMRecipe(Recipe):
    data: ChatData = Field(default_factory=ChatData)
    model: ChatModel = Field(default_factory=ChatModel)
    strategy: ChatStrategy = Field(default_factory=ChatStrategy)
    optim: ChatOptim = Field(default_factory=ChatOptim)
    trainer: ChatTrainer = Field(default_factory=ChatTrainer)
    generation: Generation = Field(default_factory=Generation)

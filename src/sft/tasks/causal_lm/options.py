"""The options of instruction tuning's commands on a finished run, declared as models: the CLI builds each command's
options and --help from them. A generation setting left out is the run's own (its recipe's `generation:`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class PredictOptions(BaseModel):
    max_new_tokens: int | None = Field(None, ge=1, description="tokens per answer at most; default: the run's "
                                                                 "generation.max_new_tokens")
    temperature: float | None = Field(None, ge=0, description="0 greedy, else sampling; default: the run's "
                                                               "generation.temperature")
    top_p: float | None = Field(None, ge=0, le=1, description="nucleus sampling share; default: the run's "
                                                              "generation.top_p")
    seed: int = Field(0, description="sampling seed")


class EvalOptions(BaseModel):
    top_losses: int = Field(16, ge=0, description="generations shown before and after tuning (0: the recipe's "
                                                  "generation.samples)")


class ServeOptions(BaseModel):
    batching: Literal["continuous", "static"] = Field(
        "continuous", description="continuous: requests join the running batch at the next token; static: a batch "
                                  "runs to its end before the next starts (always, for models with sliding-window "
                                  "layers such as Gemma 3)")


class ExportOptions(BaseModel):
    format: Literal["gguf"] = Field("gguf", description="gguf: one file for llama.cpp, Ollama and LM Studio, with the "
                                                        "chat template and stop tokens, and an Ollama Modelfile")
    quant: Literal["f16", "q8_0"] = Field("f16", description="f16, or q8_0 (about half the size; checked by top-1 "
                                                             "agreement)")


OPTIONS = {"predict": PredictOptions, "eval": EvalOptions, "serve": ServeOptions, "export": ExportOptions}

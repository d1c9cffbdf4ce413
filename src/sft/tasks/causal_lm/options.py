"""The options of instruction tuning's commands on a finished run, declared as models: the CLI builds each command's
options and --help from them. A generation setting left out is the run's own (its recipe's `generation:`)."""

from __future__ import annotations

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


OPTIONS = {"predict": PredictOptions, "eval": EvalOptions}

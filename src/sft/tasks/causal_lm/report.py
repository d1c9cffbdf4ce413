"""`sft eval`'s page for a causal-LM run: the scores, and each shown prompt's reference beside the answers before
and after tuning."""

from __future__ import annotations

from pathlib import Path

from sft.core.html import esc, page, table


def render_report(run: Path, data: str, summary: dict, rows: list[dict], spread: list[dict] | None = None) -> str:
    """The scores, the answers per label against the references (when answers are labels), and the shown
    generations."""
    facts = ", ".join(f"{k} {v}" for k, v in summary.items())
    answers = ""
    if spread:
        before = "answered_before" in spread[0]
        answers = ("<h2>Answers per label</h2><p>How often each label is the reference and how often the model "
                   "answers it: one label answered for most questions is a model that learned the prior, not the "
                   "task.</p>" + table(["label", "references", *(["answered before"] if before else []),
                                        "answered after", "right after"],
                                       [[r["label"], r["references"], *([r["answered_before"]] if before else []),
                                         r["answered"], r["right"]] for r in spread]))
    body = (f"<h1>Instruction-tuning evaluation of {esc(run)}</h1><p>Data: {esc(data)}. {esc(facts)}.</p>{answers}"
            f"<h2>Generations before and after tuning</h2>"
            + table(["sample", "prompt", "reference", "before", "after"],
                    [[r["id"], r["prompt"], r["reference"], r["before"] if r["before"] is not None else "-",
                      r["after"]] for r in rows]))
    css = "body{font-family:sans-serif;margin:2em}td{vertical-align:top;border-top:1px solid #ddd;padding:4px;" \
          "white-space:pre-wrap;max-width:40em}"
    return page(f"sft eval {run}", body, css)

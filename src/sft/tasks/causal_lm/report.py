"""`sft eval`'s page for a causal-LM run: the scores, and each shown prompt's reference beside the answers before
and after tuning."""

from __future__ import annotations

from pathlib import Path

from sft.core.html import esc, page, table


def render_report(run: Path, data: str, summary: dict, rows: list[dict]) -> str:
    facts = ", ".join(f"{k} {v}" for k, v in summary.items())
    body = (f"<h1>Instruction-tuning evaluation of {esc(run)}</h1><p>Data: {esc(data)}. {esc(facts)}.</p>"
            f"<h2>Generations before and after tuning</h2>"
            + table(["sample", "prompt", "reference", "before", "after"],
                    [[r["id"], r["prompt"], r["reference"], r["before"] if r["before"] is not None else "-",
                      r["after"]] for r in rows]))
    css = "body{font-family:sans-serif;margin:2em}td{vertical-align:top;border-top:1px solid #ddd;padding:4px;" \
          "white-space:pre-wrap;max-width:40em}"
    return page(f"sft eval {run}", body, css)

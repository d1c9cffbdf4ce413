"""`sft rank` on the command line (a tool of the classification tasks): rank.py ranks, this prints; apart from
rank.py because the task it checks for imports the audit, which uses rank.py's features."""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table

from sft.errors import UserError
from sft.recipe import Recipe
from sft.tasks import get_task
from sft.tasks.classification.task import ImageClassification, TextClassification
from sft.tasks.classification.tools.rank import SCORES, rank_backbones


def rank_command(recipe: Recipe, options, console, errors) -> None:
    """`sft rank` (a tool of the classification tasks): each candidate's time on `errors` as it is scored, then the
    ranking on `console` (rich consoles), with the notes and the candidates that could not be ranked."""
    task = get_task(recipe.task)
    if not isinstance(task, ImageClassification):
        raise UserError(f"sft rank is a tool of {ImageClassification.name} and {TextClassification.name}; task "
                        f"{recipe.task} has none")

    def progress(candidate, row):
        if row is None:
            errors.print(f"[yellow]{escape(candidate)}: cannot be loaded[/]", highlight=False)
        else:
            errors.print(f"{candidate}: scored in {row['seconds']:.1f} s", highlight=False)

    by = options.by
    result = rank_backbones(task, recipe, [c for c in options.candidates.split(",") if c.strip()], options.out, by=by,
                            limit=options.limit, overwrite=options.overwrite, progress=progress)
    table = Table("#", "candidate", *SCORES, "seconds",
                  title=f"{result['samples']} samples, sorted by {by} (higher is better)")
    for row in result["ranked"]:
        table.add_row(str(row["rank"]), escape(row["candidate"]),
                      *("-" if row[s] is None else f"{row[s]:.3f}" for s in SCORES), f"{row['seconds']:.1f}")
    console.print(table)
    for row in result["ranked"]:
        if row.get("note"):
            errors.print(f"[yellow]note:[/] {escape(row['candidate'])}: {escape(row['note'])}", highlight=False,
                         soft_wrap=True)
    for failed in result["failed"]:
        errors.print(f"[yellow]not ranked:[/] {escape(failed['candidate'])}: {escape(failed['error'])}",
                     highlight=False, soft_wrap=True)
    console.print(f"rank.json is in {escape(result['out'])}")

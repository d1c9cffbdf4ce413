"""Command-line parameters from pydantic models, so a task declares its command options as it declares its recipe.

A field becomes an option `--field-name` (or the flags its `json_schema_extra={"cli": [...]}` lists; `{"cli":
"argument"}` makes it a positional argument) with the field's type, default and description as its help: ge/le bounds
become a checked range (gt/lt are checked when the model validates), a Literal a choice, a list a repeatable option,
a bool a `--x/--no-x` flag. Typer builds the command from a function signature, so this module writes one: the parser
then rejects a wrong option or value with click's usage message (exit 2), and `--help` lists the fields.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Optional, get_origin

import annotated_types
import typer
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

ARGUMENT = {"cli": "argument"}  # json_schema_extra of a field given as a positional argument


def flags(*names: str) -> dict:
    """json_schema_extra of a field whose option has other names than --field-name (aliases included)."""
    return {"cli": list(names)}


def command_function(models: Sequence[type[BaseModel]], body: Callable[..., object]) -> Callable[..., object]:
    """A function typer turns into a command with one parameter per field of `models`; calling it validates each
    model's values and calls body(*instances, one per model)."""
    params, owner = [], {}
    for model in models:
        for name, field in model.model_fields.items():
            if name in owner:
                raise ValueError(f"option {name} is declared by both {owner[name].__name__} and {model.__name__}")
            owner[name] = model
            params.append(_parameter(name, field))

    def function(**values):
        instances = []
        for model in models:
            given = {k: values[k] for k in model.model_fields if values[k] is not None}  # None: the field's default
            try:
                instances.append(model(**given))
            except ValidationError as e:  # a model's own check beyond what the parser knows
                error = e.errors()[0]
                raise typer.BadParameter(f"--{'-'.join(map(str, error['loc'])).replace('_', '-')}: {error['msg']}") \
                    from None
        return body(*instances)

    function.__signature__ = inspect.Signature(params)
    function.__annotations__ = {p.name: p.annotation for p in params}
    return function


def command(name: str, help: str, models: Sequence[type[BaseModel]], body: Callable[..., object]):
    """The click command `name` built from `models` (see command_function), to be parsed and invoked by the caller."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command(name, help=help)(command_function(models, body))
    return typer.main.get_command(app)


def _parameter(name: str, field: FieldInfo) -> inspect.Parameter:
    cli = field.json_schema_extra.get("cli") if isinstance(field.json_schema_extra, dict) else None
    annotation = field.annotation
    many = get_origin(annotation) is list
    default = ... if field.is_required() else (None if many else field.get_default(call_default_factory=True))
    if many:
        annotation = Optional[annotation]  # not given: None, then the field's default
    if cli == "argument":
        return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation,
                                 default=typer.Argument(default, help=field.description, show_default=False))
    bounds = {}
    for rule in field.metadata:
        if isinstance(rule, annotated_types.Ge):
            bounds["min"] = rule.ge
        elif isinstance(rule, annotated_types.Le):
            bounds["max"] = rule.le
        elif isinstance(rule, (annotated_types.Gt, annotated_types.Lt)):
            continue  # open bounds (typer's ranges are closed): the model's validation checks them, also exit 2
        else:
            raise TypeError(f"option {name}: {rule!r} has no command-line form; use ge/le bounds")
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation,
                             default=typer.Option(default, *(cli or ()), help=field.description, **bounds))

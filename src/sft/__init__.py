"""sft: supervised fine-tuning of pretrained models.

    from sft import load_recipe, fine_tune
    run = fine_tune(load_recipe("examples/fashion_mnist.yaml", ["trainer.epochs=1"]))
    print(run.metrics["test_acc"])
"""

from sft.errors import UserError
from sft.recipe import Recipe

__all__ = ["Recipe", "UserError", "fine_tune", "load_recipe"]


def load_recipe(path=None, overrides=()):
    """Read a YAML recipe (or the defaults) with `dotted.key=value` overrides, validated by its task's recipe class;
    see sft.tasks.load_recipe."""
    from sft.tasks import load_recipe as _load_recipe  # deferred: `import sft` stays light

    return _load_recipe(path, list(overrides))


def fine_tune(recipe, **kwargs):
    """Run a recipe (a Recipe, or a path to a YAML file) and return the finished run; see sft.training.fit."""
    from sft.tasks import get_task  # deferred: `import sft` stays light
    from sft.training.fit import fine_tune as _fine_tune

    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    return _fine_tune(get_task(recipe.task), recipe, **kwargs)

"""sft: supervised fine-tuning of pretrained models.

    from sft import load_recipe, fine_tune
    run = fine_tune(load_recipe("examples/fashion_mnist.yaml", ["trainer.epochs=1"]))
    print(run.metrics["test_acc"])
"""

from sft.errors import UserError
from sft.recipe import Recipe, load_recipe

__all__ = ["Recipe", "UserError", "fine_tune", "load_recipe"]


def fine_tune(recipe, **kwargs):
    """Run a recipe (a Recipe, or a path to a YAML file) and return the finished run; see sft.engine.fine_tune."""
    from sft.engine import fine_tune as _fine_tune

    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    return _fine_tune(recipe, **kwargs)

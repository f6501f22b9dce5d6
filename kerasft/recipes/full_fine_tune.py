"""Full fine-tuning: every weight trains."""

from kerasft.recipes.base import Recipe, mark_applied, register_recipe


@register_recipe("full")
class FullFineTune(Recipe):
    """Trains every weight of the model."""

    def apply(self, model):
        # The setter re-enables exactly the variables created trainable.
        model.trainable = True
        mark_applied(model, self)
        return model

"""Mixed precision for recipes: loss scaling for float16 models.

`keras.Model.compile` wraps the optimizer in a `LossScaleOptimizer` only when
the outer model's own policy is `mixed_float16`. A keras-hub causal LM built
with `dtype="mixed_float16"` has it, but a model whose float16 layers sit
inside a float32 outer model (a classifier or functional model built around a
float16 backbone, a model whose layers were re-typed after construction, a
`compile(auto_scale_loss=False)`) trains with unscaled float16 gradients,
which underflow to zero. `loss_scale_optimizer` looks at every layer instead.
"""

import keras

from kerasft.targeting import iter_layers


def compute_dtypes(model):
    """The set of compute dtypes of `model` and every layer under it."""
    layers = iter_layers(model, include_self=True)
    return {keras.backend.standardize_dtype(layer.compute_dtype) for layer in layers}


def needs_loss_scaling(model):
    """Whether any layer of `model` computes in float16."""
    return "float16" in compute_dtypes(model)


def loss_scale_optimizer(model, optimizer, loss_scale="auto"):
    """Wraps `optimizer` in a `keras.optimizers.LossScaleOptimizer` when float16 needs it.

    Args:
        model: the model to be compiled.
        optimizer: a `keras.optimizers.Optimizer`.
        loss_scale: `"auto"` (wrap if any layer computes in float16), True
            (always wrap) or False (never).

    Returns:
        The optimizer, wrapped or not; an optimizer already wrapped is
        returned as is.

    Raises:
        ValueError: for another `loss_scale`.
    """
    if loss_scale not in ("auto", True, False):
        raise ValueError(
            f"`loss_scale` must be 'auto', True or False. Received: loss_scale={loss_scale!r}"
        )
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return optimizer
    if loss_scale is False or (loss_scale == "auto" and not needs_loss_scaling(model)):
        return optimizer
    return keras.optimizers.LossScaleOptimizer(optimizer)

import keras
import numpy as np
import pytest

from kerasft import testing
from kerasft.recipes import LoRA
from kerasft.recipes.precision import loss_scale_optimizer, needs_loss_scaling


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_lora_trains_float32_adapters(batch, policy):
    model = testing.tiny_causal_lm("gemma3", dtype=policy)
    x, y, w = batch
    recipe = LoRA(rank=4, alpha=8, targets=("query", "value"))
    recipe.apply(model)
    for variable in model.trainable_weights:
        assert keras.backend.standardize_dtype(variable.dtype) == "float32"
    recipe.compile(model, learning_rate=1e-2)
    # What the proposed `Recipe.compile(..., loss_scale="auto")` does (here
    # keras already wrapped it: the CausalLM itself is mixed_float16).
    model.optimizer = loss_scale_optimizer(model, model.optimizer)
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer) == (
        policy == "mixed_float16"
    )
    history = model.fit(x, y, sample_weight=w, batch_size=4, epochs=3, verbose=0)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses))
    assert losses[-1] < losses[0]


def test_loss_scale_choice():
    # A float32 outer model around float16 layers: keras's own auto scaling,
    # which reads the outer policy only, would not wrap its optimizer.
    float16 = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, dtype="mixed_float16")])
    assert float16.dtype_policy.name == "float32"
    float32 = testing.tiny_causal_lm("gemma")
    assert needs_loss_scaling(float16)
    assert not needs_loss_scaling(float32)
    adam = keras.optimizers.Adam()
    assert loss_scale_optimizer(float32, adam) is adam
    forced = loss_scale_optimizer(float32, adam, True)
    assert isinstance(forced, keras.optimizers.LossScaleOptimizer)
    assert loss_scale_optimizer(float16, adam, False) is adam
    wrapped = loss_scale_optimizer(float16, adam)
    assert loss_scale_optimizer(float16, wrapped) is wrapped
    with pytest.raises(ValueError, match="loss_scale='yes'"):
        loss_scale_optimizer(float16, adam, "yes")

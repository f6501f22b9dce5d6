import keras
import numpy as np
import pytest

from kerasft import testing
from kerasft.recipes import Classifier, FullFineTune, LoRA
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


def test_recipe_compile_scales_the_loss_when_float16_layers_sit_in_a_float32_model():
    labels = np.array([0, 1, 2, 1], "int32")
    x, _, _ = testing.random_token_batch(pad_last=0)
    recipe = Classifier(3, base=LoRA(rank=2, alpha=4, targets=("query", "value")))
    model = recipe.apply(testing.tiny_causal_lm("gemma3", dtype="mixed_float16"))
    assert model.dtype_policy.name == "float32"  # keras would not scale it
    recipe.compile(model, learning_rate=1e-2)
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    before = {v.path: keras.ops.convert_to_numpy(v).copy() for v in model.trainable_weights}
    losses = model.fit(x, labels, batch_size=4, epochs=3, verbose=0).history["loss"]
    assert np.all(np.isfinite(losses))
    for v in model.trainable_weights:
        assert not np.array_equal(keras.ops.convert_to_numpy(v), before[v.path]), v.path

    recipe.compile(model, loss_scale=False)
    assert not isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    float32 = FullFineTune().apply(testing.tiny_causal_lm("gemma"))
    FullFineTune().compile(float32)
    assert not isinstance(float32.optimizer, keras.optimizers.LossScaleOptimizer)
    with pytest.raises(ValueError, match="loss_scale='on'"):
        FullFineTune().compile(float32, loss_scale="on")

import keras
import numpy as np
import pytest

from kerasft.optimizers import adamw, warmup_cosine_schedule


def test_warmup_then_cosine_values():
    schedule = warmup_cosine_schedule(1e-3, total_steps=110, warmup_steps=10)
    values = [float(schedule(step)) for step in (0, 5, 10, 60, 110)]
    np.testing.assert_allclose(values, [0.0, 5e-4, 1e-3, 5e-4, 0.0], atol=1e-9)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"total_steps": 0}, "total_steps=0"),
        ({"total_steps": 10, "warmup_steps": 10}, "warmup_steps=10"),
    ],
)
def test_schedule_arguments_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        warmup_cosine_schedule(1e-3, **kwargs)


def test_no_weight_decay_on_norm_scales_and_embeddings():
    optimizer = adamw(learning_rate=0.1, weight_decay=0.5, clipnorm=None)
    kernel = keras.Variable(np.ones((2, 2), "float32"), name="kernel")
    scale = keras.Variable(np.ones((2,), "float32"), name="scale")
    embeddings = keras.Variable(np.ones((3, 2), "float32"), name="embeddings")
    variables = [kernel, scale, embeddings]
    grads = [keras.ops.convert_to_tensor(np.zeros(v.shape, "float32")) for v in variables]
    optimizer.apply_gradients(zip(grads, variables))
    # Zero gradients: only weight decay can move a weight.
    assert float(keras.ops.convert_to_numpy(kernel).max()) == pytest.approx(1 - 0.1 * 0.5)
    assert float(keras.ops.convert_to_numpy(scale).max()) == 1.0
    assert float(keras.ops.convert_to_numpy(embeddings).max()) == 1.0


def test_gradient_accumulation_steps_are_checked():
    assert adamw(gradient_accumulation_steps=4).gradient_accumulation_steps == 4
    assert adamw(gradient_accumulation_steps=1).gradient_accumulation_steps is None
    with pytest.raises(ValueError, match="gradient_accumulation_steps=0"):
        adamw(gradient_accumulation_steps=0)


def test_weight_decay_is_dropped_when_no_variable_takes_it():
    from kerasft.optimizers import drop_unused_weight_decay

    embeddings = keras.Variable(np.ones((3, 2), "float32"), name="embeddings")
    optimizer = drop_unused_weight_decay(adamw(weight_decay=0.1), [embeddings])
    assert optimizer.weight_decay is None
    grads = [keras.ops.convert_to_tensor(np.ones((3, 2), "float32"))]
    optimizer.apply_gradients(zip(grads, [embeddings]))  # crashed on torch before
    kernel = keras.Variable(np.ones((2, 2), "float32"), name="kernel")
    assert drop_unused_weight_decay(adamw(weight_decay=0.1), [kernel]).weight_decay == 0.1

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


class _RecordSteps(keras.callbacks.Callback):
    """Records the learning rate each micro-batch runs with and the weights after it."""

    def __init__(self):
        super().__init__()
        self.rates = []
        self.weights = []

    def on_train_batch_begin(self, batch, logs=None):
        # `optimizer.learning_rate` evaluates the schedule at the counter the
        # coming train step reads, so this is the rate that step applies.
        self.rates.append(float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))

    def on_train_batch_end(self, batch, logs=None):
        self.weights.append([np.array(keras.ops.convert_to_numpy(v)) for v in self.model.trainable_weights])


@pytest.mark.parametrize("warmup_steps", [0, 2])
def test_accumulation_schedule_counts_optimizer_steps(warmup_steps):
    from kerasft import testing
    from kerasft.losses import TokenNormalizedBatches
    from kerasft.recipes import LoRA

    k, total_steps = 4, 5
    model = testing.tiny_causal_lm("gemma3")
    recipe = LoRA(rank=4, targets=("query", "value"))
    recipe.apply(model)
    recipe.compile(
        model,
        learning_rate=1e-2,
        total_steps=total_steps,
        warmup_steps=warmup_steps,
        gradient_accumulation_steps=k,
    )
    data = TokenNormalizedBatches(
        [testing.random_token_batch(seed=i) for i in range(k * total_steps)], accumulation_steps=k
    )
    record = _RecordSteps()
    # keras-hub's CausalLM.fit turns its input into tf.data; keras.Model.fit takes the PyDataset.
    keras.Model.fit(model, data, epochs=1, shuffle=False, verbose=0, callbacks=[record])

    expected = warmup_cosine_schedule(1e-2, total_steps, warmup_steps)
    applied = [record.rates[step * k + k - 1] for step in range(total_steps)]
    np.testing.assert_allclose(
        applied, [float(expected(step)) for step in range(total_steps)], rtol=1e-6, atol=1e-12
    )
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == total_steps

    def moved(before, after):
        return max(float(np.abs(a - b).max()) for a, b in zip(before, after))

    # Weights change at every optimizer step whose rate is not zero (step 0
    # of a warm-up starts at zero) and never inside an accumulation window.
    first_moving_step = 1 if warmup_steps else 0
    for step in range(first_moving_step, total_steps):
        applying = step * k + k - 1
        before = record.weights[applying - 1]
        assert moved(before, record.weights[applying]) > 1e-7, f"optimizer step {step}"
    for micro in range(1, k * total_steps):
        if micro % k != k - 1:
            assert moved(record.weights[micro - 1], record.weights[micro]) == 0.0, f"micro-batch {micro}"


def test_user_schedule_is_evaluated_at_optimizer_steps_and_serializes():
    from kerasft.optimizers import OptimizerStepSchedule

    schedule = keras.optimizers.schedules.PiecewiseConstantDecay([1, 2], [3.0, 2.0, 1.0])
    optimizer = adamw(learning_rate=schedule, gradient_accumulation_steps=4)
    assert isinstance(optimizer._learning_rate, OptimizerStepSchedule)
    # Micro-batch counter 0..3 is optimizer step 0, 4..7 step 1, 8.. step 2.
    values = [float(optimizer._learning_rate(i)) for i in (0, 3, 4, 7, 8, 11, 12)]
    assert values == [3.0, 3.0, 3.0, 3.0, 2.0, 2.0, 1.0]
    rebuilt = keras.optimizers.AdamW.from_config(optimizer.get_config())
    assert isinstance(rebuilt._learning_rate, OptimizerStepSchedule)
    assert [float(rebuilt._learning_rate(i)) for i in (0, 3, 4, 7, 8, 11, 12)] == values
    # Without accumulation a schedule is used as given.
    assert adamw(learning_rate=schedule)._learning_rate is schedule
    # Wrapping is not repeated.
    assert adamw(learning_rate=optimizer._learning_rate, gradient_accumulation_steps=4)._learning_rate is optimizer._learning_rate


def test_micro_batch_count_and_schedule_see_through_loss_scaling():
    from kerasft.optimizers import OptimizerStepSchedule, learning_rate_schedule, micro_batch_count

    inner = adamw(learning_rate=1e-3, total_steps=4, gradient_accumulation_steps=2)
    variable = keras.Variable(np.ones((2,), "float32"))
    inner.build([variable])
    for _ in range(3):
        inner.apply([keras.ops.ones((2,))], [variable])
    optimizer = keras.optimizers.LossScaleOptimizer(inner)
    assert micro_batch_count(optimizer) == micro_batch_count(inner) == 3
    assert int(keras.ops.convert_to_numpy(inner.iterations)) == 1  # one full optimizer step
    assert isinstance(learning_rate_schedule(optimizer), OptimizerStepSchedule)

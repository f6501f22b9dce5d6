import numpy as np
import pytest

from kerasft import TrainingCheckpoint, testing
from kerasft.callbacks import read_checkpoint_metadata
from kerasft.recipes import LoRA
from tests.conftest import to_numpy


def batches(n):
    return [testing.random_token_batch(seed=i) for i in range(n)]


def new_run(total_steps):
    model = testing.tiny_causal_lm("gemma3")
    recipe = LoRA(rank=4, targets=("query", "value", "ffw_linear"))
    recipe.apply(model)
    recipe.compile(model, learning_rate=1e-2, total_steps=total_steps, warmup_steps=min(2, total_steps - 1))
    return model


def fit_on(model, data, callbacks=()):
    # One fit() call per list of batches, steps in order, no shuffling.
    x = {k: np.concatenate([b[0][k] for b in data]) for k in data[0][0]}
    y = np.concatenate([b[1] for b in data])
    w = np.concatenate([b[2] for b in data])
    model.fit(x, y, sample_weight=w, batch_size=4, epochs=1, shuffle=False, verbose=0, callbacks=list(callbacks))


class StopAfter(TrainingCheckpoint.__mro__[1]):
    """Simulates a killed run: stops training after `steps` batches."""

    def __init__(self, steps):
        super().__init__()
        self.steps = steps

    def on_train_batch_end(self, batch, logs=None):
        if batch + 1 >= self.steps:
            self.model.stop_training = True


def test_resumed_run_reaches_the_uninterrupted_weights(tmp_path):
    data = batches(6)
    reference = new_run(total_steps=6)
    fit_on(reference, data)
    expected = [to_numpy(v) for v in reference.trainable_weights]

    killed = new_run(total_steps=6)
    fit_on(killed, data, [TrainingCheckpoint(tmp_path, save_every_steps=2), StopAfter(3)])
    # Stopped after step 3; the last checkpoint is from step 2.
    assert read_checkpoint_metadata(tmp_path)["step"] in (2, 3)
    step = read_checkpoint_metadata(tmp_path)["step"]

    resumed = new_run(total_steps=6)
    checkpoint = TrainingCheckpoint(tmp_path, save_every_steps=2)
    fit_on(resumed, data[step:], [checkpoint])
    assert checkpoint.restored["step"] == step
    assert int(to_numpy(resumed.optimizer.iterations)) == 6
    for value, reference_value in zip(resumed.trainable_weights, expected):
        np.testing.assert_allclose(to_numpy(value), reference_value, rtol=1e-5, atol=1e-6)


def test_checkpoint_leaves_no_temporary_files(tmp_path):
    model = new_run(total_steps=2)
    fit_on(model, batches(2), [TrainingCheckpoint(tmp_path, save_every_steps=1)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["training_checkpoint.safetensors"]


def test_save_every_steps_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="save_every_steps=0"):
        TrainingCheckpoint(tmp_path, save_every_steps=0)

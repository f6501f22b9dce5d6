import json
import warnings

import numpy as np
import pytest

from kerasft import TrainingCheckpoint, testing
from kerasft.callbacks import CHECKPOINT_FILE, read_checkpoint_metadata, restore_training_checkpoint
from kerasft.recipes import LoRA
from tests.conftest import to_numpy


def batches(n):
    return [testing.random_token_batch(seed=i) for i in range(n)]


def new_run(total_steps, rank=4, alpha=16.0, learning_rate=1e-2, accumulation=1):
    model = testing.tiny_causal_lm("gemma3")
    recipe = LoRA(rank=rank, alpha=alpha, targets=("query", "value", "ffw_linear"))
    recipe.apply(model)
    recipe.compile(
        model,
        learning_rate=learning_rate,
        total_steps=total_steps,
        warmup_steps=min(2, total_steps - 1),
        gradient_accumulation_steps=accumulation,
    )
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


class Killed(Exception):
    pass


class KillAfter(TrainingCheckpoint.__mro__[1]):
    """Simulates a SIGKILL: raises after `batches` batches, with no epoch-end save."""

    def __init__(self, batches):
        super().__init__()
        self.batches = batches

    def on_train_batch_end(self, batch, logs=None):
        if batch + 1 >= self.batches:
            raise Killed()


class CountBatches(TrainingCheckpoint.__mro__[1]):
    def __init__(self):
        super().__init__()
        self.batches = 0

    def on_train_batch_end(self, batch, logs=None):
        self.batches += 1


def trained(model):
    return [to_numpy(v).copy() for v in model.trainable_weights]


def test_resume_under_accumulation_counts_micro_batches(tmp_path):
    data = batches(8)
    reference = new_run(total_steps=4, accumulation=2)
    fit_on(reference, data)
    expected = trained(reference)

    killed = new_run(total_steps=4, accumulation=2)
    with pytest.raises(Killed):
        fit_on(killed, data, [TrainingCheckpoint(tmp_path, save_every_steps=2), KillAfter(5)])
    metadata = read_checkpoint_metadata(tmp_path)
    # 4 micro-batches seen, 2 optimizer steps taken; `step` is the micro-batch count too.
    assert (metadata["batches"], metadata["optimizer_steps"], metadata["step"]) == (4, 2, 4)

    resumed = new_run(total_steps=4, accumulation=2)
    checkpoint = TrainingCheckpoint(tmp_path, save_every_steps=2)
    fit_on(resumed, data[metadata["batches"]:], [checkpoint])
    assert checkpoint.restored == {"batches": 4, "optimizer_steps": 2, "epoch": 0, "step": 4}
    assert int(to_numpy(resumed.optimizer.iterations)) == 4
    assert read_checkpoint_metadata(tmp_path)["batches"] == 8
    for value, reference_value in zip(trained(resumed), expected):
        np.testing.assert_allclose(value, reference_value, rtol=1e-5, atol=1e-6)


def test_a_run_with_another_config_is_not_resumed(tmp_path):
    data = batches(4)
    first = new_run(total_steps=4, alpha=8.0, learning_rate=1e-2)
    fit_on(first, data[:2], [TrainingCheckpoint(tmp_path, data_config={"split": "train[:8]"})])

    other = new_run(total_steps=4, alpha=32.0, learning_rate=3e-3)
    before = trained(other)
    checkpoint = TrainingCheckpoint(tmp_path, data_config={"split": "train[8:16]"})
    with pytest.raises(ValueError) as error:
        fit_on(other, data[2:], [checkpoint])
    message = str(error.value)
    assert str(tmp_path) in message
    assert "recipe" in message and "alpha" in message
    assert "optimizer" in message and "warmup_target" in message
    assert "data" in message and "split" in message
    assert "on_mismatch" in message
    assert checkpoint.restored is None
    for value, start in zip(trained(other), before):
        np.testing.assert_array_equal(value, start)

    # Only the data differs: named alone.
    same = new_run(total_steps=4, alpha=8.0, learning_rate=1e-2)
    with pytest.raises(ValueError, match="data") as error:
        fit_on(same, data[2:], [TrainingCheckpoint(tmp_path, data_config={"split": "train[8:16]"})])
    assert "recipe differs" not in str(error.value) and "optimizer differs" not in str(error.value)


def test_on_mismatch_restart_and_resume(tmp_path):
    data = batches(4)
    fit_on(new_run(total_steps=4, alpha=8.0), data[:2], [TrainingCheckpoint(tmp_path)])
    saved = read_checkpoint_metadata(tmp_path)

    # restart: trains from scratch, as a run without a checkpoint would.
    fresh = new_run(total_steps=4, alpha=32.0)
    fit_on(fresh, data, [])
    restarted = new_run(total_steps=4, alpha=32.0)
    checkpoint = TrainingCheckpoint(tmp_path, on_mismatch="restart")
    with pytest.warns(UserWarning, match="alpha"):
        fit_on(restarted, data, [checkpoint])
    assert checkpoint.restored is None
    for value, reference_value in zip(trained(restarted), trained(fresh)):
        np.testing.assert_allclose(value, reference_value, rtol=1e-6, atol=1e-7)
    assert read_checkpoint_metadata(tmp_path)["batches"] == 4

    # resume: restores the (now alpha=32) checkpoint into an alpha=8 run, with a warning.
    resumed = new_run(total_steps=8, alpha=8.0)
    checkpoint = TrainingCheckpoint(tmp_path, on_mismatch="resume")
    with pytest.warns(UserWarning, match="alpha"):
        fit_on(resumed, data[:1], [checkpoint])
    assert checkpoint.restored["batches"] == 4 and saved["batches"] == 2
    assert int(to_numpy(resumed.optimizer.iterations)) == 5

    with pytest.raises(ValueError, match="on_mismatch='sometimes'"):
        TrainingCheckpoint(tmp_path, on_mismatch="sometimes")
    with pytest.raises(ValueError, match="data_config"):
        TrainingCheckpoint(tmp_path, data_config={"rows": object()})


def test_the_fingerprint_is_a_sha256_of_the_recorded_config(tmp_path):
    import hashlib

    from safetensors import safe_open

    model = new_run(total_steps=2)
    fit_on(model, batches(2), [TrainingCheckpoint(tmp_path, data_config={"rows": 8})])
    with safe_open(str(tmp_path / CHECKPOINT_FILE), framework="numpy") as f:
        metadata = f.metadata()
    config = json.loads(metadata["config"])
    assert sorted(config) == ["data", "optimizer", "recipe"]
    assert config["data"] == {"rows": 8}
    assert config["recipe"]["alpha"] == 16.0
    assert hashlib.sha256(metadata["config"].encode()).hexdigest() == metadata["fingerprint"]


def test_a_finished_run_is_not_resumed_at_learning_rate_zero(tmp_path):
    data = batches(2)
    fit_on(new_run(total_steps=2), data, [TrainingCheckpoint(tmp_path)])
    again = new_run(total_steps=2)
    before = trained(again)
    with pytest.raises(ValueError, match="end of its learning-rate schedule") as error:
        fit_on(again, data, [TrainingCheckpoint(tmp_path)])
    assert str(tmp_path) in str(error.value) and "resume=False" in str(error.value)
    for value, start in zip(trained(again), before):
        np.testing.assert_array_equal(value, start)


def test_an_unwritable_directory_is_reported_before_training(tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    directory = blocker / "checkpoint"
    counter = CountBatches()
    with pytest.raises(OSError, match="directory=") as error:
        fit_on(new_run(total_steps=2), batches(2), [TrainingCheckpoint(directory), counter])
    assert str(directory) in str(error.value)
    assert counter.batches == 0


def test_a_checkpoint_of_another_rank_names_the_tensor_and_shapes(tmp_path):
    fit_on(new_run(total_steps=4, rank=4), batches(2), [TrainingCheckpoint(tmp_path)])
    other = new_run(total_steps=4, rank=8)
    before = trained(other)
    pattern = r"lora_a.*\(16, 4\).*\(16, 8\)"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match=pattern) as error:
            fit_on(other, batches(2), [TrainingCheckpoint(tmp_path, on_mismatch="resume")])
    assert str(tmp_path) in str(error.value)
    # Checked before anything is assigned.
    for value, start in zip(trained(other), before):
        np.testing.assert_array_equal(value, start)
    with pytest.raises(ValueError, match=pattern):
        restore_training_checkpoint(other, tmp_path)

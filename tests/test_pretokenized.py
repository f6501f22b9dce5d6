import numpy as np
import pytest

import kerasft
from kerasft import testing


class Marker:
    pass


def test_preprocessor_is_detached_inside_and_restored_after_an_error(batch):
    model = testing.tiny_causal_lm("gemma")
    marker = Marker()
    model.preprocessor = marker
    with pytest.raises(RuntimeError):
        with kerasft.pretokenized(model):
            assert model.preprocessor is None
            x, y, w = batch
            logs = model.evaluate(x, y, sample_weight=w, verbose=0, return_dict=True) if model.compiled else None
            raise RuntimeError("boom")
    assert model.preprocessor is marker
    assert logs is None or np.isfinite(logs["loss"])


# Issue 13 item 7: inside `pretokenized`, fit/evaluate/predict are Keras's own,
# so `shuffle=True` shuffles numpy input each epoch and a SequenceBatches
# PyDataset can be passed straight to `model.fit`.

import keras  # noqa: E402

from kerasft.data import SequenceBatches  # noqa: E402

NUM_ROWS = 8


def _identified_rows(seed=0):
    """Rows whose first token is the row's number (1..8), so a batch names its rows."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(10, testing.TINY_VOCABULARY_SIZE, (NUM_ROWS, 7)).astype("int32")
    ids[:, 0] = np.arange(1, NUM_ROWS + 1)
    return ids, np.ones_like(ids, dtype="float32"), np.full(NUM_ROWS, 7)


def _compiled_lm():
    keras.utils.set_random_seed(0)
    model = testing.tiny_causal_lm("gemma3")
    # Eager, so that train_step sees concrete batches on JAX too.
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        weighted_metrics=[],
        run_eagerly=True,
    )
    return model


def _record_rows(model):
    """Makes `model.train_step` append the row numbers of every batch it gets."""
    seen = []
    train_step = model.train_step

    def recording_train_step(*args):
        x = keras.utils.unpack_x_y_sample_weight(args[-1])[0]
        seen.append(keras.ops.convert_to_numpy(x["token_ids"])[:, 0].tolist())
        return train_step(*args)

    object.__setattr__(model, "train_step", recording_train_step)
    return seen


def _epochs(seen, batches_per_epoch):
    flat = [row for batch in seen for row in batch]
    size = NUM_ROWS
    assert len(seen) % batches_per_epoch == 0
    return [flat[i : i + size] for i in range(0, len(flat), size)]


def _fit_arrays(seed, shuffle, epochs=2):
    x, y, w = SequenceBatches(*_identified_rows(), batch_size=2, shuffle=False).as_arrays()
    model = _compiled_lm()
    seen = _record_rows(model)
    keras.utils.set_random_seed(seed)
    with kerasft.pretokenized(model):
        model.fit(x, y, sample_weight=w, batch_size=2, epochs=epochs, shuffle=shuffle, verbose=0)
    return _epochs(seen, 4)


def test_arrays_fit_with_shuffle_true_shuffles_each_epoch_reproducibly():
    first, second = _fit_arrays(seed=7, shuffle=True)
    identity = list(range(1, NUM_ROWS + 1))
    assert sorted(first) == sorted(second) == identity  # every row once per epoch
    assert first != identity
    assert first != second  # a new order each epoch
    # keras.utils.set_random_seed governs Keras's array shuffling.
    assert _fit_arrays(seed=7, shuffle=True) == [first, second]
    assert _fit_arrays(seed=8, shuffle=True) != [first, second]
    assert _fit_arrays(seed=7, shuffle=False) == [identity, identity]


def test_fit_on_sequence_batches_follows_their_seeded_order_and_trains_as_the_arrays():
    batches = SequenceBatches(*_identified_rows(), batch_size=2, shuffle=True, seed=3)
    model = _compiled_lm()
    seen = _record_rows(model)
    with kerasft.pretokenized(model):
        history = model.fit(batches, epochs=2, verbose=0)
    # Keras's fit calls on_epoch_end once before its first epoch too
    # (EpochIterator.reset), so the two epochs follow permutations 1 and 2.
    orders = [list(np.random.default_rng([3, e]).permutation(NUM_ROWS) + 1) for e in (1, 2)]
    assert _epochs(seen, 4) == orders
    assert len(history.history["loss"]) == 2
    # The same rows, in the same order, fed as arrays without shuffling.
    x, y, w = SequenceBatches(*_identified_rows(), batch_size=2, shuffle=False).as_arrays()
    rows = np.concatenate(orders) - 1
    reference = _compiled_lm()
    with kerasft.pretokenized(reference):
        reference.fit({k: v[rows] for k, v in x.items()}, y[rows], sample_weight=w[rows],
                      batch_size=2, epochs=1, shuffle=False, verbose=0)
    for trained, expected in zip(model.weights, reference.weights):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(trained), keras.ops.convert_to_numpy(expected),
            atol=1e-6, err_msg=trained.path,
        )


def test_evaluate_and_predict_take_sequence_batches_and_the_bypass_ends_with_the_block():
    batches = SequenceBatches(*_identified_rows(), batch_size=4, shuffle=False)
    x, y, w = batches.as_arrays()
    model = _compiled_lm()
    keras_hub_fit = type(model).fit
    with kerasft.pretokenized(model):
        from_batches = model.evaluate(batches, verbose=0, return_dict=True)
        from_arrays = model.evaluate(x, y, sample_weight=w, batch_size=4, verbose=0,
                                     return_dict=True)
        logits = model.predict(batches, verbose=0)
    np.testing.assert_allclose(from_batches["loss"], from_arrays["loss"], rtol=1e-6)
    assert logits.shape == (NUM_ROWS, 6, testing.TINY_VOCABULARY_SIZE)
    assert "fit" not in vars(model) and type(model).fit is keras_hub_fit
    assert hasattr(keras_hub_fit, "_kerasft_keras_hub_method")  # the dispatcher


def test_nested_blocks_restore_everything_once():
    model = _compiled_lm()
    with kerasft.pretokenized(model):
        with kerasft.pretokenized(model):
            pass
        assert "fit" in vars(model)  # the outer block still bypasses keras-hub
    assert "fit" not in vars(model)


# Issue 14 item 3: kerasft batch objects go straight into `model.fit` of a
# keras-hub causal LM that has a preprocessor, with no `pretokenized` block.

from kerasft.data import packed_text_batches  # noqa: E402
from kerasft.finetune.models import load_model  # noqa: E402
from kerasft.losses import TokenNormalizedBatches  # noqa: E402


def _lm_with_preprocessor():
    keras.utils.set_random_seed(0)
    model = load_model("tiny")  # Gemma3CausalLM + Gemma3CausalLMPreprocessor
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        weighted_metrics=[],
        run_eagerly=True,
    )
    return model


def _weights(model):
    return [keras.ops.convert_to_numpy(v).copy() for v in model.weights]


def test_fit_on_batches_with_a_preprocessor_attached_follows_their_seeded_order():
    batches = SequenceBatches(*_identified_rows(), batch_size=2, shuffle=True, seed=3)
    model = _lm_with_preprocessor()
    preprocessor = model.preprocessor
    assert preprocessor is not None
    seen = _record_rows(model)
    # shuffle=True is Keras's batch-index shuffle: off for kerasft batch
    # objects, which shuffle their rows themselves (numpy, so the same order
    # on every backend).
    history = model.fit(batches, epochs=2, verbose=0, shuffle=True)
    orders = [list(np.random.default_rng([3, e]).permutation(NUM_ROWS) + 1) for e in (1, 2)]
    assert _epochs(seen, 4) == orders
    assert len(history.history["loss"]) == 2
    assert model.preprocessor is preprocessor and "fit" not in vars(model)
    # Trains exactly as the same rows fed as arrays inside the explicit block.
    x, y, w = SequenceBatches(*_identified_rows(), batch_size=2, shuffle=False).as_arrays()
    rows = np.concatenate(orders) - 1
    reference = _lm_with_preprocessor()
    with kerasft.pretokenized(reference):
        reference.fit({k: v[rows] for k, v in x.items()}, y[rows], sample_weight=w[rows],
                      batch_size=2, epochs=1, shuffle=False, verbose=0)
    for trained, expected in zip(_weights(model), _weights(reference)):
        np.testing.assert_allclose(trained, expected, atol=1e-6)


def test_validation_batches_evaluate_and_predict_through_the_same_path():
    train = SequenceBatches(*_identified_rows(0), batch_size=4, seed=1)
    held_out = SequenceBatches(*_identified_rows(1), batch_size=4, shuffle=False)
    model = _lm_with_preprocessor()
    history = model.fit(train, validation_data=held_out, epochs=2, verbose=0)
    assert len(history.history["val_loss"]) == 2
    # The last validation ran on the final weights: evaluate gives the same loss.
    loss = model.evaluate(held_out, verbose=0)
    x, y, w = held_out.as_arrays()
    with kerasft.pretokenized(model):
        from_arrays = model.evaluate(x, y, sample_weight=w, batch_size=4, verbose=0)
    np.testing.assert_allclose(history.history["val_loss"][-1], loss, rtol=1e-6)
    np.testing.assert_allclose(loss, from_arrays, rtol=1e-6)
    logits = model.predict(held_out, verbose=0)
    assert logits.shape == (NUM_ROWS, 6, model.backbone.vocabulary_size)
    # Positional arguments keep keras-hub's meaning (x, y, batch_size, ...).
    assert np.isfinite(model.evaluate(held_out, None, None, verbose=0))


def test_token_normalized_and_packed_text_batches_fit_directly():
    from kerasft.data.testing_tokenizer import tiny_gemma_tokenizer

    batches = SequenceBatches(*_identified_rows(), batch_size=2, shuffle=True, seed=5)
    normalized = TokenNormalizedBatches(batches, accumulation_steps=2)
    model = _lm_with_preprocessor()
    seen = _record_rows(model)
    model.fit(normalized, epochs=1, verbose=0, shuffle=True)
    # Batches 0,1 and 2,3 form the optimizer steps: consecutive, never permuted.
    order = list(np.random.default_rng([5, 1]).permutation(NUM_ROWS) + 1)
    assert _epochs(seen, 4) == [order]
    # cross_attention=True: this plainly compiled model reads no segment ids (refused:
    # tests/data/test_packed_batches.py).
    text = packed_text_batches(["a dog barks at the cat", "the cat sleeps"] * 4,
                               tiny_gemma_tokenizer(), sequence_length=8, batch_size=2, seed=0,
                               cross_attention=True)
    history = model.fit(text, epochs=1, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))


def test_fit_on_batches_never_builds_a_tf_data_pipeline(monkeypatch):
    """keras-hub's path slices input with tf.data, where the end-of-fit stall lives."""
    import tensorflow as tf

    def refuse(*args, **kwargs):
        raise AssertionError("tf.data used")

    monkeypatch.setattr(tf.data.Dataset, "from_tensor_slices", refuse)
    model = _lm_with_preprocessor()
    batches = SequenceBatches(*_identified_rows(), batch_size=4)
    model.fit(batches, validation_data=batches, epochs=1, verbose=0)
    model.evaluate(batches, verbose=0)
    x, y, w = batches.as_arrays()
    with pytest.raises(AssertionError, match="tf.data used"):  # the check can fail
        model.fit(x, y, sample_weight=w, epochs=1, verbose=0)


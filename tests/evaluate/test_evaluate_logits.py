import keras
import numpy as np
import pytest

from kerasft.evaluate import model_logits
from kerasft.testing import random_token_batch, tiny_causal_lm


@pytest.mark.parametrize("kind", ["gemma", "gemma3"])
def test_equals_float32_model_output_for_every_batch_form(kind):
    """A dict, an `(x, y, sample_weight)` tuple and a bare token array give the
    model's own output as float32 numpy (a bare array: every position real)."""
    model = tiny_causal_lm(kind)
    batch = random_token_batch()
    x = batch[0]
    expected = keras.ops.convert_to_numpy(keras.ops.cast(model(x), "float32"))

    logits = model_logits(model, x)
    assert isinstance(logits, np.ndarray) and logits.dtype == np.float32
    np.testing.assert_array_equal(logits, expected)
    np.testing.assert_array_equal(model_logits(model, batch), expected)

    all_real = {"token_ids": x["token_ids"], "padding_mask": np.ones(x["token_ids"].shape, bool)}
    np.testing.assert_array_equal(
        model_logits(model, x["token_ids"]), keras.ops.convert_to_numpy(model(all_real))
    )


def test_casts_bfloat16_logits_to_float32():
    model = tiny_causal_lm("gemma3", dtype="bfloat16")
    x = random_token_batch()[0]
    logits = model_logits(model, x)
    assert logits.dtype == np.float32
    expected = keras.ops.convert_to_numpy(keras.ops.cast(model(x), "float32"))
    np.testing.assert_array_equal(logits, expected)

import keras
import numpy as np
import pytest

from kerasft.quantization.calibration import (
    calibration_batches,
    calibration_inputs,
    check_hessian_positions,
    collect_hessians,
    hessian_positions,
    input_rows,
    relative_output_error,
)


def test_calibration_inputs_accepts_dicts_tuples_and_arrays():
    ids = np.arange(6).reshape(2, 3)
    from_array = calibration_inputs(ids)
    assert from_array["padding_mask"].all() and from_array["token_ids"].dtype == np.int32
    mask = np.array([[1, 1, 0], [1, 1, 1]], bool)
    from_tuple = calibration_inputs(({"token_ids": ids, "padding_mask": mask}, None, None))
    np.testing.assert_array_equal(from_tuple["padding_mask"], mask)
    with pytest.raises(ValueError, match=r"shape=\(3,\)"):
        calibration_inputs(np.arange(3))
    with pytest.raises(ValueError, match="keys=\\['ids'\\]"):
        calibration_inputs({"ids": ids})


def test_input_rows_follow_the_kernel_order_and_drop_padding():
    x = np.arange(2 * 3 * 4 * 5, dtype="float32").reshape(2, 3, 4, 5)  # b, t, n, h
    mask = np.array([[True, True, False], [True, False, False]])
    rows = input_rows(x, "btnh,nhd->btd", mask)
    assert rows.shape == (3, 20)
    np.testing.assert_array_equal(rows[2], x[1, 0].reshape(-1))
    # Contracted letters in kernel order (h before n here).
    rows = input_rows(x, "btnh,hnd->btd")
    np.testing.assert_array_equal(rows[0], x[0, 0].T.reshape(-1))


def test_collect_hessians_records_real_inputs_without_padding():
    keras.utils.set_random_seed(0)
    token_ids = keras.Input((None,), dtype="int32", name="token_ids")
    padding_mask = keras.Input((None,), dtype="bool", name="padding_mask")
    embedding = keras.layers.Embedding(11, 8)
    dense = keras.layers.EinsumDense("btd,df->btf", output_shape=(None, 4))
    model = keras.Model(
        {"token_ids": token_ids, "padding_mask": padding_mask}, dense(embedding(token_ids))
    )
    ids = np.array([[1, 2, 3, 4], [5, 6, 0, 0]], "int32")
    mask = ids > 0
    (hessian,) = collect_hessians(model, [dense], [{"token_ids": ids, "padding_mask": mask}])
    table = keras.ops.convert_to_numpy(embedding.embeddings).astype("float64")
    rows = table[[2, 3, 4, 6]]  # real tokens, each row's first (the attention sink) left out
    np.testing.assert_allclose(hessian, rows.T @ rows / 4, rtol=1e-6)
    (every,) = collect_hessians(model, [dense], [{"token_ids": ids, "padding_mask": mask}],
                                skip_first_position=False)
    rows = table[ids[mask]]
    np.testing.assert_allclose(every, rows.T @ rows / 6, rtol=1e-6)
    assert "call" not in vars(dense)  # the hook is removed
    with pytest.raises(ValueError, match="calibration_data=\\[\\]"):
        collect_hessians(model, [dense], [])


def test_hessian_positions_leave_out_each_rows_first_real_token():
    mask = np.array([[1, 1, 1, 0], [0, 0, 1, 1], [0, 0, 0, 0], [1, 0, 0, 0]], bool)
    np.testing.assert_array_equal(
        hessian_positions(mask),
        [[0, 1, 1, 0], [0, 0, 0, 1], [0, 0, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(hessian_positions(mask, skip_first_position=False), mask)
    assert mask[0, 0]  # the input is not changed
    with pytest.raises(ValueError, match="rows of length 1"):
        check_hessian_positions([hessian_positions(mask[3:])])


def test_relative_output_error_matches_direct_computation():
    rng = np.random.default_rng(0)
    x, w = rng.normal(size=(100, 6)), rng.normal(size=(6, 3))
    q = w + 0.01 * rng.normal(size=w.shape)
    expected = np.linalg.norm(x @ (q - w)) / np.linalg.norm(x @ w)
    np.testing.assert_allclose(relative_output_error(w, q, x.T @ x / 100), expected, rtol=1e-10)


def tiny_preprocessed_model():
    import keras_hub

    from kerasft import testing
    from kerasft.data.testing_tokenizer import tiny_gemma_tokenizer

    model = testing.tiny_causal_lm("gemma3")
    model.preprocessor = keras_hub.models.Gemma3CausalLMPreprocessor(
        tokenizer=tiny_gemma_tokenizer(), sequence_length=16
    )
    return model


def test_calibration_batches_tokenise_strings_with_the_preprocessor():
    model = tiny_preprocessed_model()
    texts = ["The cat sat.", "A lantern is a lamp in a case.", "Hi"]
    batches = calibration_batches(model, iter(texts), batch_size=2)
    assert [b["token_ids"].shape for b in batches] == [(2, 16), (1, 16)]
    tokenizer = model.preprocessor.tokenizer
    expected = [2] + [int(t) for t in keras.ops.convert_to_numpy(tokenizer("Hi"))] + [1]
    np.testing.assert_array_equal(batches[1]["token_ids"][0, : len(expected)], expected)
    assert batches[1]["padding_mask"][0].sum() == len(expected)


def test_calibration_batches_keep_token_batches_and_reject_bad_data():
    model = tiny_preprocessed_model()
    ids = np.arange(6).reshape(2, 3)
    batches = calibration_batches(model, (b for b in [ids, {"token_ids": ids}]))
    assert len(batches) == 2
    np.testing.assert_array_equal(batches[1]["token_ids"], ids)
    with pytest.raises(ValueError, match="calibration_data=\\[\\]"):
        calibration_batches(model, [])
    with pytest.raises(ValueError, match="calibration_data=None"):
        calibration_batches(model, None)
    with pytest.raises(ValueError, match="1 strings and 1 other"):
        calibration_batches(model, ["text", ids])
    model.preprocessor = None
    with pytest.raises(ValueError, match="preprocessor=None"):
        calibration_batches(model, ["text"])

"""`gemma3_from_gguf(keep_quantized=True)`: the GGUF's own blocks as the frozen base.

The tiny Gemma 3 of `tests/models/conftest.py` is written with a different
block type per kernel (rows of 32 values: the 32-value block types; the
K-quants, which need rows of 256, are checked on `GGUFEinsumDense` alone).
"""

import gguf
import keras
import numpy as np
import pytest

from kerasft.evaluate import model_logits
from kerasft.models import gemma3_from_gguf, read_gguf, write_gemma3_gguf
from kerasft.quantization.gguf_dense import GGUFEinsumDense
from kerasft.quantization.gguf_embedding import GGUFEmbedding
from kerasft.recipes import LoRA
from tests.quantization.test_gguf_blocks import random_blocks

TENSOR_TYPES = {
    "token_embd.weight": "Q8_0",
    "blk.0.attn_q.weight": "Q4_0",
    "blk.0.attn_k.weight": "Q4_1",
    "blk.0.attn_v.weight": "Q5_0",
    "blk.0.attn_output.weight": "Q5_1",
    "blk.1.ffn_gate.weight": "F16",
    "blk.1.ffn_up.weight": "BF16",
    "blk.2.ffn_down.weight": "F32",
}


@pytest.fixture(scope="module")
def gguf_path(causal_lm, tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "tiny-mixed.gguf"
    return write_gemma3_gguf(causal_lm, path, TENSOR_TYPES, default_tensor_type="Q8_0")


@pytest.fixture(scope="module")
def float_model(gguf_path):
    return gemma3_from_gguf(gguf_path)


def _quantized(gguf_path):
    return gemma3_from_gguf(gguf_path, keep_quantized=True)


def _weight_bytes(model):
    return sum(
        int(np.prod(v.shape)) * np.dtype(keras.backend.standardize_dtype(v.dtype)).itemsize
        if keras.backend.standardize_dtype(v.dtype) != "bfloat16" else 2 * int(np.prod(v.shape))
        for v in model.weights
    )  # fmt: skip


def test_blocks_are_the_file_bytes_and_kernels_equal_the_float_load(gguf_path, float_model):
    model = _quantized(gguf_path)
    from keras.src.backend.common import global_state

    assert not global_state.get_global_attribute("uninitialized_variables", [])
    backbone = model.backbone
    embedding = backbone.token_embedding
    assert isinstance(embedding, GGUFEmbedding) and embedding.tensor_type == "Q8_0"
    tensors = read_gguf(gguf_path).tensors
    np.testing.assert_array_equal(embedding.gguf_data(), tensors["token_embd.weight"].data)
    attention = backbone.get_layer("decoder_block_0").attention
    assert isinstance(attention.query_dense, GGUFEinsumDense)
    assert attention.query_dense.tensor_type == "Q4_0"
    assert attention.query_dense.blocks.path == "decoder_block_0/attention/query/blocks"
    np.testing.assert_array_equal(
        attention.query_dense.gguf_data(), tensors["blk.0.attn_q.weight"].data
    )
    assert backbone.get_layer("decoder_block_1").gating_ffw_2.tensor_type == "BF16"
    # Every dequantized kernel equals the float load's kernel exactly.
    float_weights = {v.path: v for v in float_model.backbone.weights}
    count = 0
    for layer in backbone._flatten_layers():
        if isinstance(layer, GGUFEinsumDense):
            expected = float_weights[layer.blocks.path.replace("/blocks", "/kernel")]
            np.testing.assert_array_equal(
                keras.ops.convert_to_numpy(layer.dequantized_kernel()), expected.numpy()
            )
            count += 1
    assert count == 6 * 7
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(embedding.dequantized_embeddings()),
        float_weights["token_embedding/embeddings"].numpy(),
    )
    # No weight is trainable until an adapter recipe adds some.
    assert not [v.path for v in backbone.trainable_weights if "norm" not in v.path]


def test_logits_equal_the_float_load_at_a_fraction_of_the_bytes(gguf_path, float_model, token_batch):
    model = _quantized(gguf_path)
    np.testing.assert_allclose(
        model_logits(model, token_batch), model_logits(float_model, token_batch),
        rtol=0, atol=2e-5,
    )  # fmt: skip
    # Mostly Q8_0 (34 bytes per 32 values) against float32.
    ratio = _weight_bytes(model) / _weight_bytes(float_model)
    assert 0.2 < ratio < 0.45, ratio


def train_lora(model, token_batch, epochs=8):
    """Applies LoRA to `model` and fits it on `token_batch`; returns the fit history."""
    recipe = LoRA(rank=4, alpha=8.0, targets=("query", "value", "ffw_linear"))
    recipe.apply(model)
    recipe.compile(model, learning_rate=1e-2)
    x = dict(token_batch)
    y = np.roll(x["token_ids"], -1, axis=1)
    w = x["padding_mask"].astype("float32")
    preprocessor, model.preprocessor = model.preprocessor, None  # token ids in
    try:
        return model.fit(x, y, sample_weight=w, batch_size=2, epochs=epochs, verbose=0)
    finally:
        model.preprocessor = preprocessor


def test_lora_trains_over_the_gguf_base_and_leaves_its_blocks(gguf_path, token_batch):
    model = _quantized(gguf_path)
    before = {v.path: keras.ops.convert_to_numpy(v).copy() for v in model.weights}
    base = model_logits(model, token_batch)
    history = train_lora(model, token_batch)
    losses = history.history["loss"]
    assert losses[-1] < 0.95 * losses[0] and all(np.diff(losses) < 0), losses
    changed = {
        v.path for v in model.weights
        if v.path not in before or not np.array_equal(keras.ops.convert_to_numpy(v), before[v.path])
    }  # fmt: skip
    assert changed and all("lora_" in path for path in changed), sorted(changed)
    assert not np.allclose(model_logits(model, token_batch), base, atol=1e-4)


@pytest.mark.parametrize("tensor_type", ["Q4_K", "Q5_K", "Q6_K", "Q2_K", "Q3_K", "Q8_0"])
def test_gguf_dense_equals_a_float_layer_with_the_dequantized_kernel(tensor_type):
    float_layer = keras.layers.EinsumDense("btd,ndh->btnh", output_shape=(None, 2, 8), name="q")
    float_layer.build((None, None, 256))  # kernel (n=2, d=256, h=8); GGUF rows (16, 256)
    data = random_blocks(tensor_type, rows=16, row_size=256, seed=5)
    layer = GGUFEinsumDense.from_gguf(float_layer, data, tensor_type)
    rows = gguf.quants.dequantize(data, gguf.GGMLQuantizationType[tensor_type])
    # The GGUF row n * 8 + h holds kernel[n, :, h].
    float_layer.kernel.assign(rows.reshape(2, 8, 256).transpose(0, 2, 1))
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(layer.dequantized_kernel()), float_layer.kernel.numpy()
    )
    x = np.random.default_rng(0).normal(size=(2, 3, 256)).astype("float32")
    expected = keras.ops.convert_to_numpy(float_layer(x))
    # Equal kernels; only the matmul's summation order may differ.
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(layer(x)), expected, rtol=0, atol=1e-6 * np.abs(expected).max()
    )
    assert layer.quantized_bytes() == layer.expected_quantized_bytes() == data.nbytes
    restored = GGUFEinsumDense.from_config(layer.get_config())
    restored.build()
    restored.assign_gguf(data)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(restored(x)), keras.ops.convert_to_numpy(layer(x))
    )


def test_requantize_rounds_into_the_type_and_refuses_k_quants():
    float_layer = keras.layers.Dense(4, use_bias=False)
    float_layer.build((None, 256))
    kernel = np.random.default_rng(2).normal(0, 0.1, (256, 4)).astype("float32")
    q8 = GGUFEinsumDense.from_gguf(float_layer, gguf.quants.quantize(kernel.T, gguf.GGMLQuantizationType.Q8_0), "Q8_0")
    q8.requantize(kernel * 2)
    expected = gguf.quants.dequantize(
        gguf.quants.quantize(kernel.T * 2, gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0
    )
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(q8.dequantized_kernel()), expected.T)
    q4k = GGUFEinsumDense.from_gguf(float_layer, random_blocks("Q4_K", 4, 256), "Q4_K")
    with pytest.raises(ValueError, match=r"cannot quantize to Q4_K"):
        q4k.requantize(kernel)
    with pytest.raises(ValueError, match=r"must have shape \(4, 144\). Received: data.shape=\(4, 140\)"):
        q4k.assign_gguf(np.zeros((4, 140), np.uint8))


def test_recipe_merge_rounds_into_the_gguf_type_and_qlora_refuses(gguf_path, token_batch):
    model = _quantized(gguf_path)
    recipe = LoRA(rank=2, alpha=4.0, targets=("decoder_block_0/attention/value",))  # Q5_0
    recipe.apply(model)
    (wrapper,) = [w for w in model.backbone._flatten_layers() if hasattr(w, "lora_b")]
    wrapper.lora_b.assign(np.full(wrapper.lora_b.shape, 0.05, "float32"))
    from kerasft.layers.lora import float_kernel

    expected_kernel = keras.ops.convert_to_numpy(float_kernel(wrapper.layer) + wrapper.delta_kernel())
    recipe.merge(model)
    value = model.backbone.get_layer("decoder_block_0").attention.value_dense
    assert isinstance(value, GGUFEinsumDense) and value.tensor_type == "Q5_0"
    rows = expected_kernel.transpose(0, 2, 1).reshape(16, 32)  # (heads * head_dim, hidden)
    np.testing.assert_array_equal(
        value.gguf_data(), gguf.quants.quantize(rows, gguf.GGMLQuantizationType.Q5_0)
    )
    from kerasft.recipes import QLoRA

    with pytest.raises(ValueError, match="float dense layer"):
        QLoRA(rank=2).apply(_quantized(gguf_path))

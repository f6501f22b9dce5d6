"""`AdapterWrapper.merged_layer` and `adapter_weights` on every shipped wrapper."""

import keras
import numpy as np
import pytest
from keras import ops

from kerasft.layers.bottleneck import BottleneckAdapter
from kerasft.layers.dora import DoRADense
from kerasft.layers.fake_quant import FakeQuantDense
from kerasft.layers.ia3 import IA3Dense
from kerasft.layers.lora import LoRADense
from kerasft.layers.qlora import QLoRADense
from kerasft.quantization.quantized_dense import QuantizedEinsumDense
from tests.conftest import to_numpy
from tests.test_einsum import build_einsum


def query_layer(seed=0):
    keras.utils.set_random_seed(seed)
    return build_einsum("btd,ndh->btnh", (None, 2, 8), 16)


def inputs(seed=3):
    return np.random.default_rng(seed).normal(size=(2, 3, 16)).astype("float32")


def randomized(wrapper, seed=1):
    """`wrapper`, built, with every weight of its own moved off its initial value."""
    wrapper.build()
    rng = np.random.default_rng(seed)
    for variable in wrapper.adapter_weights().values():
        variable.assign(to_numpy(variable) + rng.normal(size=variable.shape).astype("float32") * 0.1)
    return wrapper


FOLDING = {
    "lora": lambda layer: LoRADense(layer, rank=3),
    "dora": lambda layer: DoRADense(layer, rank=3),
    "ia3-output": lambda layer: IA3Dense(layer, side="output"),
    "ia3-input": lambda layer: IA3Dense(layer, side="input"),
}


@pytest.mark.parametrize("make", FOLDING.values(), ids=FOLDING.keys())
def test_folding_wrappers_merge_into_their_layer_and_twice_is_a_no_op(make):
    layer = query_layer()
    wrapper = randomized(make(layer))
    x = inputs()
    expected = to_numpy(wrapper(x))
    assert not np.allclose(expected, to_numpy(layer(x)), atol=1e-4)
    merged = wrapper.merged_layer()
    assert merged is layer
    np.testing.assert_allclose(to_numpy(merged(x)), expected, atol=1e-5)
    kernel = to_numpy(layer.kernel).copy()
    assert wrapper.merged_layer() is layer
    np.testing.assert_array_equal(to_numpy(layer.kernel), kernel)


def test_adapter_weights_are_the_wrappers_own_weights():
    layer = query_layer()
    names = {
        "lora": (LoRADense(layer, rank=2), ["lora_a", "lora_b"]),
        "dora": (DoRADense(query_layer(), rank=2), ["lora_a", "lora_b", "magnitude"]),
        "ia3": (IA3Dense(query_layer()), ["ia3_vector"]),
        "bottleneck": (BottleneckAdapter(query_layer(), bottleneck=2),
                       ["down_bias", "down_kernel", "up_bias", "up_kernel"]),
    }
    for method, (wrapper, expected) in names.items():
        wrapper.build()
        weights = wrapper.adapter_weights()
        assert sorted(v.name for v in weights.values()) == expected, method
        assert not {id(v) for v in weights.values()} & {id(v) for v in wrapper.layer.weights}
    # LoRA's keys are the wrapped layer's path, as adapter files always had them.
    lora = names["lora"][0]
    assert sorted(lora.adapter_weights()) == [f"{layer.path}/lora_a", f"{layer.path}/lora_b"]


def test_a_bottleneck_adapter_has_no_merged_layer():
    wrapper = BottleneckAdapter(query_layer(), bottleneck=2)
    wrapper.build()
    with pytest.raises(ValueError, match="BottleneckAdapter cannot be merged.*Received: layer at"):
        wrapper.merged_layer()


def test_fake_quant_merges_to_the_quantized_layer_and_saves_its_kernel():
    layer = query_layer()
    wrapper = FakeQuantDense(layer, mode="int4", group_size=8)
    assert wrapper.mergeable
    assert wrapper.adapter_weights() == {layer.kernel.path: layer.kernel}
    x = inputs()
    expected = to_numpy(wrapper(x))
    merged = wrapper.merged_layer()
    assert isinstance(merged, QuantizedEinsumDense) and merged.mode == "int4"
    np.testing.assert_allclose(to_numpy(merged(x)), expected, rtol=1e-5, atol=1e-5)


def quantized_qlora(seed=0):
    base = QuantizedEinsumDense.from_float(query_layer(seed), mode="int8")
    wrapper = QLoRADense(base, rank=2, alpha=2.0, residual_rank=3)
    return randomized(wrapper)


def qlora_sum_kernel(wrapper):
    """dequantized + update + frozen correction, in numpy."""
    layer = wrapper.layer
    return (to_numpy(layer.dequantized_kernel("float32")) + to_numpy(wrapper.delta_kernel())
            + to_numpy(wrapper.residual_kernel()))


def test_qlora_float_merge_holds_base_correction_and_update_exactly():
    wrapper = quantized_qlora()
    x = inputs()
    expected = to_numpy(wrapper(x))
    merged = wrapper.merged_layer(requantize=False)
    assert not isinstance(merged, QuantizedEinsumDense)
    np.testing.assert_allclose(to_numpy(merged.kernel), qlora_sum_kernel(wrapper), atol=1e-6)
    np.testing.assert_allclose(to_numpy(merged(x)), expected, rtol=1e-5, atol=1e-5)


def test_qlora_requantized_merge_rounds_base_correction_and_update_once():
    wrapper = quantized_qlora()
    reference = QuantizedEinsumDense.from_float(query_layer(0), mode="int8")
    reference.requantize(ops.convert_to_tensor(qlora_sum_kernel(wrapper)))
    with pytest.warns(UserWarning, match="requantizes"):
        merged = wrapper.merged_layer()  # the default, as `merge_adapters`
    assert merged is wrapper.layer
    np.testing.assert_array_equal(to_numpy(merged.dequantized_kernel("float32")),
                                  to_numpy(reference.dequantized_kernel("float32")))

import numpy as np
import pytest
from keras import ops

from kerasft.evaluate import perplexity
from kerasft.quantization import quantize_model
from kerasft.quantization.sensitivity import (
    quantization_sensitivity,
    reconstructed_kernels,
    sensitivity_table,
)
from kerasft.recipes import LoRA
from kerasft.testing import random_token_batch, tiny_causal_lm

KINDS = ["query", "key", "value", "attention_output", "ffw_gating", "ffw_gating_2", "ffw_linear"]


def batches():
    return [random_token_batch(seed=seed) for seed in range(2)]


def snapshot(model):
    return {v.path: np.array(ops.convert_to_numpy(v)) for v in model.variables}


def ppl(model):
    return perplexity(model, batches(), progress=False)["perplexity"]


@pytest.mark.parametrize("by, keys", [("kind", KINDS), ("block", [0, 1])])
def test_each_group_equals_quantizing_that_group_and_weights_come_back(by, keys):
    model = tiny_causal_lm("gemma3", seed=3)
    before = snapshot(model)

    result = quantization_sensitivity(
        model, batches(), mode="int4", group_size=16, by=by, progress=False
    )

    assert list(result["groups"]) == keys
    assert result["float"] == pytest.approx(ppl(model), rel=1e-6)
    after = snapshot(model)
    assert all(np.array_equal(before[p], after[p]) for p in before)
    # The reported figure is the perplexity of the model quantized for real.
    group = "*decoder_block_1/*" if by == "block" else "ffw_linear"
    key = 1 if by == "block" else "ffw_linear"
    quantize_model(model, "int4", targets=[group], group_size=16)
    assert result["groups"][key] == pytest.approx(ppl(model), rel=1e-4)
    assert result["groups"][key] != pytest.approx(result["float"], rel=1e-4)


def test_all_equals_the_fully_quantized_model():
    model = tiny_causal_lm("gemma", seed=5)
    result = quantization_sensitivity(
        model, batches(), mode="nf4", group_size=16, double_quantize=True, progress=False
    )
    quantize_model(model, "nf4", group_size=16, double_quantize=True)
    assert result["all"] == pytest.approx(ppl(model), rel=1e-4)


def test_quantizes_the_kernels_under_lora_and_keeps_the_adapters():
    model = tiny_causal_lm("gemma3", seed=1)
    LoRA(rank=2, targets=["query", "value"]).apply(model)
    wrapper = model.backbone.transformer_layers[0].attention.query_dense
    wrapper.lora_b.assign(np.full(wrapper.lora_b.shape, 0.05, "float32"))
    lora_before = ops.convert_to_numpy(wrapper.lora_b)

    result = quantization_sensitivity(
        model, batches(), mode="int4", group_size=16, targets=["query"], progress=False
    )

    assert list(result["groups"]) == ["query"]
    assert result["all"] == result["groups"]["query"]
    assert result["all"] != pytest.approx(result["float"], rel=1e-4)
    np.testing.assert_array_equal(ops.convert_to_numpy(wrapper.lora_b), lora_before)


def test_kernels_come_back_when_evaluation_fails():
    model = tiny_causal_lm("gemma3")
    before = snapshot(model)
    layers = [model.backbone.transformer_layers[0].ffw_linear]
    with pytest.raises(RuntimeError, match="boom"):
        with reconstructed_kernels(layers, dict(mode="int4", group_size=16)):
            changed = ops.convert_to_numpy(layers[0].kernel)
            assert not np.array_equal(changed, before[layers[0].kernel.path])
            raise RuntimeError("boom")
    after = snapshot(model)
    assert all(np.array_equal(before[p], after[p]) for p in before)


def test_bad_arguments_are_named():
    model = tiny_causal_lm("gemma3")
    with pytest.raises(ValueError, match="by='layer'"):
        quantization_sensitivity(model, batches(), by="layer", progress=False)
    with pytest.raises(ValueError, match="mode"):
        quantization_sensitivity(model, batches(), mode="int3", progress=False)
    with pytest.raises(ValueError, match=r"targets=\['nothing'\]"):
        quantization_sensitivity(model, batches(), targets=["nothing"], progress=False)


def test_table_reports_change_against_float():
    table = sensitivity_table({"float": 10.0, "groups": {0: 11.0, "query": 9.5}, "all": 12.0})
    assert "| block 0 | 11.00 | +10.0% |" in table
    assert "| query | 9.50 | -5.0% |" in table
    assert table.endswith("| all | 12.00 | +20.0% |")


def test_kernels_come_back_when_a_later_layer_cannot_be_quantized():
    model = tiny_causal_lm("gemma3")
    before = snapshot(model)
    block = model.backbone.transformer_layers[0]
    # Group 32 divides the FFN's 32 inputs but not the query's 16.
    layers = [block.ffw_linear, block.attention.query_dense]
    with pytest.raises(ValueError, match="group_size=32"):
        with reconstructed_kernels(layers, dict(mode="int4", group_size=32)):
            pass
    after = snapshot(model)
    assert all(np.array_equal(before[p], after[p]) for p in before)


def test_calibrated_groups_equal_quantizing_that_group_with_gptq():
    calibration = [random_token_batch(4, 12, seed=20)[0]]
    model = tiny_causal_lm("gemma3", seed=3)
    before = snapshot(model)
    scheme = dict(mode="int4", group_size=16)
    calibrated = quantization_sensitivity(
        model, batches(), by="block", progress=False, calibration_data=calibration, **scheme
    )
    rounded = quantization_sensitivity(model, batches(), by="block", progress=False, **scheme)
    after = snapshot(model)
    assert all(np.array_equal(before[p], after[p]) for p in before)
    assert calibrated["float"] == rounded["float"]
    assert calibrated["groups"][1] != pytest.approx(rounded["groups"][1], rel=1e-4)
    # Block 1 alone: its GPTQ Hessians come through the float block 0, as here.
    quantize_model(
        model, targets=["*decoder_block_1/*"], calibration_data=calibration,
        method="gptq", progress=False, **scheme,
    )
    assert calibrated["groups"][1] == pytest.approx(ppl(model), rel=1e-4)
    with pytest.raises(ValueError, match="method='rtn', calibration_data=given"):
        quantization_sensitivity(model, batches(), method="rtn", calibration_data=calibration)
    with pytest.raises(ValueError, match="method='gptq', calibration_data=None"):
        quantization_sensitivity(model, batches(), method="gptq")
